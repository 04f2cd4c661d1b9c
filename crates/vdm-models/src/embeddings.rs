//! Sinusoidal timestep embeddings (Vaswani et al. 2017; Ho et al. 2020), mirroring diffusers'
//! `get_timestep_embedding` / `Timesteps` in `models/embeddings.py`.

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
