//! The GEGLU feed-forward, [`FeedForwardConfig`] and [`FeedForward`], mirroring diffusers'
//! `FeedForward` (`models/attention.py`) with `GEGLU` (`models/activations.py`). Its fused
//! flex-backend path is in `attention/feed_forward/cpu_fused.rs`.

mod cpu_fused;

use burn::config::Config;
use burn::module::Module;
use burn::nn::{Linear, LinearConfig};
use burn::tensor::activation::gelu;
use burn::tensor::{Device, Tensor};
use vdm_core::Result;

use super::ensure_nonzero;
use crate::cpu;

/// Configuration of a [`FeedForward`] (diffusers `FeedForward` with `activation_fn="geglu"`).
#[derive(Config, Debug)]
pub struct FeedForwardConfig {
    /// Input channels (`dim`).
    pub dim: usize,
    /// Output channels (`dim_out`); defaults to `dim`.
    #[config(default = "None")]
    pub dim_out: Option<usize>,
    /// Hidden width multiplier (`mult`), used when `inner_dim` is `None`.
    #[config(default = 4)]
    pub mult: usize,
    /// Hidden width (`inner_dim`); defaults to `dim · mult`.
    #[config(default = "None")]
    pub inner_dim: Option<usize>,
    /// Bias on both projections (`bias`).
    #[config(default = true)]
    pub bias: bool,
}

impl FeedForwardConfig {
    /// Hidden width.
    pub fn hidden(&self) -> usize {
        self.inner_dim.unwrap_or(self.dim * self.mult)
    }

    /// Checks the configuration, naming the offending field.
    pub fn validate(&self) -> Result<()> {
        ensure_nonzero("dim", self.dim)?;
        if let Some(d) = self.dim_out {
            ensure_nonzero("dim_out", d)?;
        }
        ensure_nonzero("inner_dim", self.hidden())
    }

    /// Validates and builds the layer.
    pub fn try_init(&self, device: &Device) -> Result<FeedForward> {
        self.validate()?;
        let hidden = self.hidden();
        Ok(FeedForward {
            proj: LinearConfig::new(self.dim, 2 * hidden)
                .with_bias(self.bias)
                .init(device),
            proj_out: LinearConfig::new(hidden, self.dim_out.unwrap_or(self.dim))
                .with_bias(self.bias)
                .init(device),
        })
    }
}

/// GEGLU feed-forward: `proj_out(a · gelu(g))` with `[a, g] = proj(x).chunk(2, -1)` and the
/// exact (erf) GELU (diffusers `FeedForward` = `[GEGLU, Dropout, Linear]`, `attention.py`;
/// `GEGLU` in `activations.py`).
///
/// Checkpoint keys: `net.0.proj` (→ `proj`) and `net.2` (→ `proj_out`), see [`crate::keymap`].
#[derive(Module, Debug)]
pub struct FeedForward {
    /// GEGLU input projection `dim → 2·hidden` (checkpoint `net.0.proj`).
    pub proj: Linear,
    /// Output projection `hidden → dim_out` (checkpoint `net.2`).
    pub proj_out: Linear,
}

impl FeedForward {
    /// `[x +] self(LN(x))` on the flex backend's fused kernels (`cpu_fused.rs`): the optional
    /// pre-LayerNorm `norm` (with its epsilon) and the residual folded into row blocks whose
    /// hidden activations stay in cache. Only call when [`cpu::enabled`].
    ///
    /// # Shapes
    /// - `x`: `[..., dim]`
    /// - output: `[..., dim_out]` (`dim_out = dim` with `residual`)
    pub(super) fn forward_fused<const D: usize>(
        &self,
        norm: Option<(&burn::nn::LayerNorm, f64)>,
        x: Tensor<D>,
        residual: bool,
    ) -> Tensor<D> {
        cpu_fused::feed_forward(norm, self, x, residual)
    }

    /// Applies the feed-forward to every token.
    ///
    /// # Shapes
    /// - `x`: `[..., dim]`
    /// - output: `[..., dim_out]`
    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        if cpu::enabled(&x.device(), x.dtype()) {
            return self.forward_fused(None, x, false);
        }
        let h = self.proj.forward(x);
        let hidden = h.dims()[D - 1] / 2;
        let mut halves = h.chunk(2, D - 1);
        debug_assert_eq!(halves.len(), 2);
        let gate = halves.pop().expect("GEGLU chunk");
        let value = halves.pop().expect("GEGLU chunk");
        debug_assert_eq!(gate.dims()[D - 1], hidden);
        self.proj_out.forward(value * gelu(gate))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::attention::test_support::dev;

    #[test]
    fn geglu_matches_hand_computation() {
        // dim 1 → hidden 1: proj gives [a, g] = [2x + 1, -x + 0.5]; out = 3·a·gelu(g) - 1.
        let d = dev();
        let mut ff = FeedForwardConfig::new(1)
            .with_inner_dim(Some(1))
            .try_init(&d)
            .unwrap();
        ff.proj.weight = burn::module::Param::from_tensor(Tensor::from_floats([[2.0, -1.0]], &d));
        ff.proj.bias = Some(burn::module::Param::from_tensor(Tensor::from_floats(
            [1.0, 0.5],
            &d,
        )));
        ff.proj_out.weight = burn::module::Param::from_tensor(Tensor::from_floats([[3.0]], &d));
        ff.proj_out.bias = Some(burn::module::Param::from_tensor(Tensor::from_floats(
            [-1.0],
            &d,
        )));
        let xs = [-2.0f64, -0.3, 0.0, 0.7, 1.5];
        let y = ff
            .forward(Tensor::<2>::from_floats([xs.map(|v| v as f32)], &d).reshape([5, 1]))
            .into_data()
            .try_to_vec::<f32>()
            .unwrap();
        // erf via its Taylor series (exact GELU, not the tanh approximation).
        let erf = |z: f64| {
            let mut sum = 0.0;
            let mut term = z;
            for n in 0..60 {
                sum += term / (2 * n + 1) as f64;
                term *= -z * z / (n + 1) as f64;
            }
            sum * 2.0 / std::f64::consts::PI.sqrt()
        };
        for (x, got) in xs.iter().zip(y) {
            let a = 2.0 * x + 1.0;
            let g = -x + 0.5;
            let gelu = 0.5 * g * (1.0 + erf(g / std::f64::consts::SQRT_2));
            let want = 3.0 * a * gelu - 1.0;
            assert!((got as f64 - want).abs() < 1e-5, "x={x}: {got} vs {want}");
        }
    }
}
