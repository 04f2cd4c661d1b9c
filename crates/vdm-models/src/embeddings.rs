//! Sinusoidal timestep embeddings (Vaswani et al. 2017; Ho et al. 2020), mirroring diffusers'
//! `get_timestep_embedding` / `Timesteps` in `models/embeddings.py`, the learned
//! [`TimestepEmbedding`] MLP and AnimateDiff's [`SinusoidalPositionalEmbedding`] (same file).

use std::ops::Range;

use burn::config::Config;
use burn::module::{Module, Param};
use burn::nn::{Linear, LinearConfig};
use burn::tensor::activation::silu;
use burn::tensor::{Device, Tensor, TensorData};
use vdm_core::{Error, Result};

/// Configuration of the sinusoidal projection of diffusers' `Timesteps` module.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TimestepProjection {
    /// Output width (diffusers' `num_channels`, the first block's channel count in UNets).
    pub num_channels: usize,
    /// Emit `[cos, sin]` instead of `[sin, cos]` (`True` in every SD-family UNet).
    pub flip_sin_to_cos: bool,
    /// Frequency shift `s` in `exp(−ln(10000)·i/(half − s))` (0 in SD-family UNets).
    pub downscale_freq_shift: f64,
    /// Multiplier on the angles.
    pub scale: f64,
    /// Longest period.
    pub max_period: f64,
}

impl TimestepProjection {
    /// The SD-family UNet setting: `flip_sin_to_cos = true`, `downscale_freq_shift = 0`.
    pub fn unet(num_channels: usize) -> Self {
        Self {
            num_channels,
            flip_sin_to_cos: true,
            downscale_freq_shift: 0.0,
            scale: 1.0,
            max_period: 10000.0,
        }
    }

    /// Embeds `timesteps` (one per row).
    ///
    /// The computation runs on the host in `f32` exactly as PyTorch does (`exp` of an `f32`
    /// exponent, angles `t·f` rounded to `f32`), then uploads `[N, num_channels]`.
    ///
    /// ```
    /// use burn::tensor::Device;
    /// use vdm_models::embeddings::TimestepProjection;
    ///
    /// let emb = TimestepProjection::unet(32).embed(&[0.0, 500.0], &Device::flex()).unwrap();
    /// assert_eq!(emb.dims(), [2, 32]);
    /// // t = 0: cos(0) = 1 in the first half, sin(0) = 0 in the second.
    /// let row0 = emb.slice([0..1, 0..32]).into_data().try_to_vec::<f32>().unwrap();
    /// assert!(row0[..16].iter().all(|&v| v == 1.0) && row0[16..].iter().all(|&v| v == 0.0));
    /// ```
    ///
    /// # Shapes
    /// - output: `[timesteps.len(), num_channels]`
    pub fn embed(&self, timesteps: &[f64], device: &Device) -> Result<Tensor<2>> {
        let half = self.num_channels / 2;
        if half == 0 {
            return Err(Error::invalid(
                "num_channels",
                format!("must be at least 2, got {}", self.num_channels),
            ));
        }
        let denom = half as f64 - self.downscale_freq_shift;
        if denom <= 0.0 || !denom.is_finite() {
            return Err(Error::invalid(
                "downscale_freq_shift",
                format!("must be below num_channels / 2 = {half}"),
            ));
        }
        let log_max = -(self.max_period.ln()) as f32;
        let freqs: Vec<f32> = (0..half)
            .map(|i| ((log_max * i as f32) / denom as f32).exp())
            .collect();
        let mut out = Vec::with_capacity(timesteps.len() * self.num_channels);
        for &t in timesteps {
            if !t.is_finite() {
                return Err(Error::invalid(
                    "timesteps",
                    format!("must be finite, got {t}"),
                ));
            }
            let angles: Vec<f32> = freqs
                .iter()
                .map(|&f| self.scale as f32 * (t as f32 * f))
                .collect();
            let sin = angles.iter().map(|a| a.sin());
            let cos = angles.iter().map(|a| a.cos());
            if self.flip_sin_to_cos {
                out.extend(cos);
                out.extend(sin);
            } else {
                out.extend(sin);
                out.extend(cos);
            }
            if self.num_channels % 2 == 1 {
                out.push(0.0);
            }
        }
        Ok(Tensor::from_data(
            TensorData::new(out, [timesteps.len(), self.num_channels]),
            device,
        ))
    }
}

/// Configuration of a [`TimestepEmbedding`] (diffusers `TimestepEmbedding`,
/// `embeddings.py`, with `act_fn="silu"`).
#[derive(Config, Debug)]
pub struct TimestepEmbeddingConfig {
    /// Width of the sinusoidal projection (`in_channels`).
    pub in_channels: usize,
    /// Hidden width (`time_embed_dim`, 4× the first block's channels in SD-family UNets).
    pub time_embed_dim: usize,
    /// Output width (`out_dim`); defaults to `time_embed_dim`.
    #[config(default = "None")]
    pub out_dim: Option<usize>,
}

impl TimestepEmbeddingConfig {
    /// Checks the configuration, naming the offending field.
    pub fn validate(&self) -> Result<()> {
        for (field, v) in [
            ("in_channels", self.in_channels),
            ("time_embed_dim", self.time_embed_dim),
            ("out_dim", self.out_dim.unwrap_or(1)),
        ] {
            if v == 0 {
                return Err(Error::invalid(field, "must be > 0"));
            }
        }
        Ok(())
    }

    /// Validates and builds the module.
    pub fn try_init(&self, device: &Device) -> Result<TimestepEmbedding> {
        self.validate()?;
        Ok(TimestepEmbedding {
            linear_1: LinearConfig::new(self.in_channels, self.time_embed_dim).init(device),
            linear_2: LinearConfig::new(
                self.time_embed_dim,
                self.out_dim.unwrap_or(self.time_embed_dim),
            )
            .init(device),
        })
    }
}

/// The timestep MLP `linear_2(silu(linear_1(x)))` (diffusers `TimestepEmbedding`).
///
/// Checkpoint keys: `linear_1`, `linear_2`.
#[derive(Module, Debug)]
pub struct TimestepEmbedding {
    /// `in_channels → time_embed_dim`.
    pub linear_1: Linear,
    /// `time_embed_dim → out_dim`.
    pub linear_2: Linear,
}

impl TimestepEmbedding {
    /// Embeds projected timesteps.
    ///
    /// # Shapes
    /// - `x`: `[N, in_channels]` (e.g. from [`TimestepProjection::embed`])
    /// - output: `[N, out_dim]`
    pub fn forward(&self, x: Tensor<2>) -> Result<Tensor<2>> {
        let [d_in, _] = self.linear_1.weight.dims();
        let dims = x.dims();
        if dims[1] != d_in || dims[0] == 0 {
            return Err(Error::shape(
                "timestep projection",
                format!("[N, {d_in}] with N > 0"),
                &dims,
            ));
        }
        Ok(self.linear_2.forward(silu(self.linear_1.forward(x))))
    }
}

/// Configuration of a [`SinusoidalPositionalEmbedding`] (diffusers
/// `SinusoidalPositionalEmbedding`, `embeddings.py`).
#[derive(Config, Debug)]
pub struct SinusoidalPositionalEmbeddingConfig {
    /// Channels (`embed_dim`); must be even.
    pub embed_dim: usize,
    /// Number of positions in the table (`max_seq_length`, AnimateDiff's
    /// `motion_max_seq_length`: 32 for v2 / v3 adapters, 24 for v1).
    #[config(default = 32)]
    pub max_seq_length: usize,
}

impl SinusoidalPositionalEmbeddingConfig {
    /// Checks the configuration, naming the offending field.
    pub fn validate(&self) -> Result<()> {
        if self.embed_dim == 0 || !self.embed_dim.is_multiple_of(2) {
            return Err(Error::invalid(
                "embed_dim",
                format!(
                    "the sinusoidal table interleaves sin/cos and needs an even, non-zero width, \
                     got {}",
                    self.embed_dim
                ),
            ));
        }
        if self.max_seq_length == 0 {
            return Err(Error::invalid("max_seq_length", "must be > 0"));
        }
        Ok(())
    }

    /// The table diffusers registers as the `pe` buffer, `[1, max_seq_length, embed_dim]`:
    /// `pe[p, 2i] = sin(p·d_i)`, `pe[p, 2i+1] = cos(p·d_i)`,
    /// `d_i = exp(2i · (−ln 10000 / embed_dim))`, computed in `f32` like PyTorch.
    pub fn table(&self) -> Result<Vec<f32>> {
        self.validate()?;
        let dim = self.embed_dim;
        let factor = (-(10000.0f64.ln()) / dim as f64) as f32;
        let div: Vec<f32> = (0..dim / 2)
            .map(|i| ((2 * i) as f32 * factor).exp())
            .collect();
        let mut pe = Vec::with_capacity(self.max_seq_length * dim);
        for p in 0..self.max_seq_length {
            for &d in &div {
                let a = p as f32 * d;
                pe.push(a.sin());
                pe.push(a.cos());
            }
        }
        Ok(pe)
    }

    /// Validates and builds the module with diffusers' default table (checkpoints overwrite
    /// it with their saved `pe` buffer).
    pub fn try_init(&self, device: &Device) -> Result<SinusoidalPositionalEmbedding> {
        let pe = Tensor::from_data(
            TensorData::new(self.table()?, [1, self.max_seq_length, self.embed_dim]),
            device,
        );
        Ok(SinusoidalPositionalEmbedding {
            pe: Param::from_tensor(pe).set_require_grad(false),
        })
    }
}

/// A fixed sinusoidal table added to a token sequence (diffusers
/// `SinusoidalPositionalEmbedding`, used by AnimateDiff motion modules).
///
/// Checkpoint key: `pe` (a persistent buffer saved in AnimateDiff state dicts, loaded like a
/// parameter; never trained).
#[derive(Module, Debug)]
pub struct SinusoidalPositionalEmbedding {
    /// The table `[1, max_seq_length, embed_dim]`.
    pub pe: Param<Tensor<3>>,
}

impl SinusoidalPositionalEmbedding {
    /// Number of positions in the table.
    pub fn max_seq_length(&self) -> usize {
        self.pe.dims()[1]
    }

    /// Adds table rows `positions` to the sequence (diffusers uses `0..L`; windowed temporal
    /// strategies pass window-relative positions).
    ///
    /// # Shapes
    /// - `x`: `[N, L, embed_dim]` with `L = positions.len()`
    /// - output: `[N, L, embed_dim]`
    pub fn forward(&self, x: Tensor<3>, positions: Range<usize>) -> Result<Tensor<3>> {
        let [_, _, dim] = self.pe.dims();
        let [_, l, c] = x.dims();
        if c != dim || l != positions.len() {
            return Err(Error::shape(
                "hidden_states",
                format!(
                    "[N, L, {dim}] with L = {} (the number of positions)",
                    positions.len()
                ),
                &x.dims(),
            ));
        }
        let l = positions.len();
        Ok(x + self.rows(positions)?.reshape([1, l, dim]))
    }

    /// Table rows `positions`.
    ///
    /// # Shapes
    /// - output: `[positions.len(), embed_dim]`
    pub fn rows(&self, positions: Range<usize>) -> Result<Tensor<2>> {
        let [_, max, dim] = self.pe.dims();
        if positions.end > max {
            return Err(Error::invalid(
                "num_frames",
                format!(
                    "positions {}..{} exceed the {max}-row positional embedding table; use a \
                     windowed temporal strategy (e.g. FreeNoise) for longer videos",
                    positions.start, positions.end
                ),
            ));
        }
        let l = positions.len();
        Ok(self
            .pe
            .val()
            .slice([0..1, positions, 0..dim])
            .reshape([l, dim]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keymap::test_support::{assert_close, load, tensor};

    #[test]
    fn sinusoidal_table_follows_the_formula() {
        let cfg = SinusoidalPositionalEmbeddingConfig::new(6).with_max_seq_length(5);
        let pe = cfg.table().unwrap();
        for p in 0..5 {
            for i in 0..3 {
                let d = (-(2.0 * i as f64) * 10000f64.ln() / 6.0).exp();
                let a = p as f64 * d;
                assert!((pe[p * 6 + 2 * i] as f64 - a.sin()).abs() < 1e-5);
                assert!((pe[p * 6 + 2 * i + 1] as f64 - a.cos()).abs() < 1e-5);
            }
        }
        let e = SinusoidalPositionalEmbeddingConfig::new(5)
            .validate()
            .unwrap_err()
            .to_string();
        assert!(e.contains("embed_dim"), "{e}");
        let e = SinusoidalPositionalEmbeddingConfig::new(4)
            .with_max_seq_length(0)
            .validate()
            .unwrap_err()
            .to_string();
        assert!(e.contains("max_seq_length"), "{e}");
    }

    #[test]
    fn positional_embedding_adds_the_requested_rows() {
        let d = Device::flex();
        let pe = SinusoidalPositionalEmbeddingConfig::new(4)
            .with_max_seq_length(8)
            .try_init(&d)
            .unwrap();
        assert_eq!(pe.max_seq_length(), 8);
        let x = Tensor::<3>::zeros([2, 3, 4], &d);
        let y = pe.forward(x.clone(), 5..8).unwrap();
        let rows = pe.pe.val().slice([0..1, 5..8, 0..4]).expand([2, 3, 4]);
        y.into_data().assert_eq(&rows.into_data(), true);
        let e = pe.forward(x.clone(), 6..9).unwrap_err().to_string();
        assert!(e.contains("num_frames") && e.contains("8-row"), "{e}");
        assert!(pe.forward(x, 0..2).is_err());
    }

    #[test]
    fn timestep_embedding_matches_diffusers() {
        let d = Device::flex();
        let emb = TimestepEmbeddingConfig::new(32, 128).try_init(&d).unwrap();
        let emb = load(emb, "unet3d_weights.safetensors", "time_embedding.");
        let proj = tensor::<2>("unet3d_io.safetensors", "small.act.time_proj", &d);
        // The projection itself (t = 500) matches diffusers' `Timesteps`.
        let ours = TimestepProjection::unet(32).embed(&[500.0], &d).unwrap();
        assert_close("time_proj", ours, proj.clone(), 1e-6);
        let want = tensor::<2>("unet3d_io.safetensors", "small.act.time_embedding", &d);
        assert_close("time_embedding", emb.forward(proj).unwrap(), want, 1e-5);
        assert!(emb.forward(Tensor::zeros([1, 31], &d)).is_err());
        let e = TimestepEmbeddingConfig::new(0, 4)
            .validate()
            .unwrap_err()
            .to_string();
        assert!(e.contains("in_channels"), "{e}");
    }
}
