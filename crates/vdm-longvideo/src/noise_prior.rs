//! Initial-noise strategies: where the `z_T` of a video comes from.
//!
//! - [`Gaussian`]: i.i.d. standard normal per frame (what every model is trained on);
//! - [`PyocoMixed`] / [`PyocoProgressive`]: the correlated priors of PYoCo (Ge et al. 2023,
//!   "Preserve Your Own Correlation", ICCV) — models fine-tuned with them must be sampled with
//!   them;
//! - [`SameNoise`]: one noise frame repeated over time (the α → ∞ limit of PYoCo; ControlVideo's
//!   `same_frame_noise`);
//! - FreeNoise rescheduling lives in [`crate::freenoise`].
//!
//! All draw from an injected [`NoiseSource`], so a seed gives the same video on every backend.

use burn::tensor::{Device, Tensor};
use vdm_core::error::ensure_non_negative;
use vdm_core::noise::draw;
use vdm_core::{NoiseSource, Result, VideoShape};

/// A strategy for the initial latent noise of a video (unit variance per element; the sampler
/// multiplies by the scheduler's `init_noise_sigma`).
pub trait InitialNoise: Send + Sync {
    /// Draws the initial noise `[B, C, F, H, W]`.
    fn sample(
        &self,
        shape: VideoShape,
        noise: &mut dyn NoiseSource,
        device: &Device,
    ) -> Result<Tensor<5>>;
}

/// Independent standard-normal noise for every element.
#[derive(Debug, Clone, Copy, Default)]
pub struct Gaussian;

impl InitialNoise for Gaussian {
    fn sample(
        &self,
        shape: VideoShape,
        noise: &mut dyn NoiseSource,
        device: &Device,
    ) -> Result<Tensor<5>> {
        draw(noise, shape.dims(), device)
    }
}

/// The same noise frame for every frame (perfectly correlated over time).
#[derive(Debug, Clone, Copy, Default)]
pub struct SameNoise;

impl InitialNoise for SameNoise {
    fn sample(
        &self,
        shape: VideoShape,
        noise: &mut dyn NoiseSource,
        device: &Device,
    ) -> Result<Tensor<5>> {
        let frame: Tensor<5> = draw(noise, shape.with_frames(1).dims(), device)?;
        Ok(frame.expand(shape.dims()))
    }
}

/// PYoCo's mixed prior: `ε_f = ε_shared + ε_f^ind` with `ε_shared ~ N(0, α²/(1+α²))` and
/// `ε_f^ind ~ N(0, 1/(1+α²))`: unit variance, correlation `α²/(1+α²)` between any two frames.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PyocoMixed {
    /// `α ≥ 0`; 0 gives i.i.d. noise, large values nearly identical frames (paper default 1).
    pub alpha: f64,
}

impl InitialNoise for PyocoMixed {
    fn sample(
        &self,
        shape: VideoShape,
        noise: &mut dyn NoiseSource,
        device: &Device,
    ) -> Result<Tensor<5>> {
        let a = ensure_non_negative("alpha", self.alpha)?;
        let shared_std = (a * a / (1.0 + a * a)).sqrt();
        let ind_std = (1.0 / (1.0 + a * a)).sqrt();
        let shared: Tensor<5> = draw(noise, shape.with_frames(1).dims(), device)?;
        let independent: Tensor<5> = draw(noise, shape.dims(), device)?;
        Ok(shared.mul_scalar(shared_std as f32).expand(shape.dims())
            + independent.mul_scalar(ind_std as f32))
    }
}

/// PYoCo's progressive prior: `ε_0 ~ N(0, 1)`, `ε_f = (α/√(1+α²))·ε_{f−1} + ε_f^ind` with
/// `ε_f^ind ~ N(0, 1/(1+α²))`: unit variance, correlation `(α/√(1+α²))^|i−j|` (an AR(1)
/// process over frames).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PyocoProgressive {
    /// `α ≥ 0`; 0 gives i.i.d. noise (paper default 2).
    pub alpha: f64,
}

impl InitialNoise for PyocoProgressive {
    fn sample(
        &self,
        shape: VideoShape,
        noise: &mut dyn NoiseSource,
        device: &Device,
    ) -> Result<Tensor<5>> {
        let a = ensure_non_negative("alpha", self.alpha)?;
        let carry = (a / (1.0 + a * a).sqrt()) as f32;
        let ind_std = (1.0 / (1.0 + a * a)).sqrt() as f32;
        let independent: Tensor<5> = draw(noise, shape.dims(), device)?;
        let mut prev = independent.clone().narrow(2, 0, 1);
        let mut frames = vec![prev.clone()];
        for f in 1..shape.frames {
            let next =
                prev.mul_scalar(carry) + independent.clone().narrow(2, f, 1).mul_scalar(ind_std);
            frames.push(next.clone());
            prev = next;
        }
        Ok(Tensor::cat(frames, 2))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vdm_core::SeededNoise;

    /// Sample correlation between frames `i` and `j` over all other dimensions.
    fn corr(x: &Tensor<5>, i: usize, j: usize) -> f64 {
        let a: Vec<f32> = x.clone().narrow(2, i, 1).into_data().try_to_vec().unwrap();
        let b: Vec<f32> = x.clone().narrow(2, j, 1).into_data().try_to_vec().unwrap();
        let n = a.len() as f64;
        let (ma, mb) = (
            a.iter().sum::<f32>() as f64 / n,
            b.iter().sum::<f32>() as f64 / n,
        );
        let cov: f64 = a
            .iter()
            .zip(&b)
            .map(|(&x, &y)| (x as f64 - ma) * (y as f64 - mb))
            .sum::<f64>()
            / n;
        let va: f64 = a.iter().map(|&x| (x as f64 - ma).powi(2)).sum::<f64>() / n;
        let vb: f64 = b.iter().map(|&y| (y as f64 - mb).powi(2)).sum::<f64>() / n;
        cov / (va * vb).sqrt()
    }

    fn shape() -> VideoShape {
        VideoShape::new([1, 4, 6, 64, 64])
    }

    #[test]
    fn mixed_prior_has_the_stated_correlation() {
        let x = PyocoMixed { alpha: 1.0 }
            .sample(shape(), &mut SeededNoise::new(3), &Device::flex())
            .unwrap();
        assert!((corr(&x, 0, 5) - 0.5).abs() < 0.03, "{}", corr(&x, 0, 5));
        let var: f32 = x.clone().powi_scalar(2).mean().into_scalar();
        assert!((var - 1.0).abs() < 0.03);
    }

    #[test]
    fn progressive_prior_decays_geometrically() {
        let x = PyocoProgressive { alpha: 2.0 }
            .sample(shape(), &mut SeededNoise::new(4), &Device::flex())
            .unwrap();
        let m = 2.0 / 5f64.sqrt();
        assert!((corr(&x, 0, 1) - m).abs() < 0.03);
        assert!((corr(&x, 0, 3) - m.powi(3)).abs() < 0.03);
        let var: f32 = x.narrow(2, 5, 1).powi_scalar(2).mean().into_scalar();
        assert!((var - 1.0).abs() < 0.05);
    }

    #[test]
    fn same_noise_repeats_one_frame_and_bad_alpha_is_named() {
        let x = SameNoise
            .sample(shape(), &mut SeededNoise::new(5), &Device::flex())
            .unwrap();
        assert!((corr(&x, 0, 4) - 1.0).abs() < 1e-9);
        let e = PyocoMixed { alpha: -1.0 }
            .sample(shape(), &mut SeededNoise::new(5), &Device::flex())
            .unwrap_err()
            .to_string();
        assert!(e.contains("alpha"), "{e}");
    }
}
