//! Conversions between the three things a model may predict: the clean sample `x₀`, the noise
//! `ε` and the velocity `v` (Salimans & Ho 2022, "Progressive Distillation"), including the
//! angular form of v-prediction.
//!
//! With `α = sqrt(ᾱ_t)` and `σ = sqrt(1 − ᾱ_t)`, a noisy sample is `x_t = α·x₀ + σ·ε` and
//! `v = α·ε − σ·x₀`. Writing `α = cos φ`, `σ = sin φ` (`φ = atan2(σ, α)`), `x_t` and `v` are
//! `(x₀, ε)` rotated by `φ`: `x_t = cos φ·x₀ + sin φ·ε`, `v = cos φ·ε − sin φ·x₀ = dx_t/dφ`,
//! so `x₀ = cos φ·x_t − sin φ·v` and `ε = sin φ·x_t + cos φ·v`. A deterministic DDIM step from
//! `φ_t` to `φ_s` is then the rotation `x_s = cos(φ_t − φ_s)·x_t − sin(φ_t − φ_s)·v̂`.

use burn::tensor::Tensor;
use vdm_core::{Error, PredictionType, Result};

use crate::torch_sqrt::torch_sqrt;

/// Signal and noise scales at one timestep: `α = sqrt(ᾱ)`, `σ = sqrt(1 − ᾱ)` (variance
/// preserving).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Scales {
    /// `α = sqrt(ᾱ_t)`.
    pub alpha: f64,
    /// `σ = sqrt(1 − ᾱ_t)`.
    pub sigma: f64,
}

impl Scales {
    /// Scales for `ᾱ_t` (given in `f32`, as stored in the schedule), computed in `f32` like
    /// diffusers' `alpha_prod_t ** 0.5` and `(1 - alpha_prod_t) ** 0.5` on `f32` tensors, with
    /// PyTorch's (MKL) square root (see `torch_sqrt`).
    pub fn from_alpha_cumprod(alpha_cumprod: f32) -> Self {
        Self {
            alpha: torch_sqrt(alpha_cumprod) as f64,
            sigma: torch_sqrt(1.0f32 - alpha_cumprod) as f64,
        }
    }

    /// Scales from the angle `φ`: `α = cos φ`, `σ = sin φ`.
    pub fn from_angle(phi: f64) -> Self {
        Self {
            alpha: phi.cos(),
            sigma: phi.sin(),
        }
    }

    /// The angle `φ = atan2(σ, α)` in `[0, π/2]`.
    pub fn angle(&self) -> f64 {
        self.sigma.atan2(self.alpha)
    }
}

/// Scalar conversions (for host-side math and property tests).
pub mod scalar {
    use super::Scales;

    /// `x_t = α·x₀ + σ·ε`.
    pub fn noisy(x0: f64, eps: f64, s: Scales) -> f64 {
        s.alpha * x0 + s.sigma * eps
    }
    /// `v = α·ε − σ·x₀`.
    pub fn velocity(x0: f64, eps: f64, s: Scales) -> f64 {
        s.alpha * eps - s.sigma * x0
    }
    /// `x₀ = α·x_t − σ·v`.
    pub fn x0_from_v(x_t: f64, v: f64, s: Scales) -> f64 {
        s.alpha * x_t - s.sigma * v
    }
    /// `ε = σ·x_t + α·v`.
    pub fn eps_from_v(x_t: f64, v: f64, s: Scales) -> f64 {
        s.sigma * x_t + s.alpha * v
    }
    /// `x₀ = (x_t − σ·ε)/α`.
    pub fn x0_from_eps(x_t: f64, eps: f64, s: Scales) -> f64 {
        (x_t - s.sigma * eps) / s.alpha
    }
    /// `ε = (x_t − α·x₀)/σ`.
    pub fn eps_from_x0(x_t: f64, x0: f64, s: Scales) -> f64 {
        (x_t - s.alpha * x0) / s.sigma
    }
}

/// The error of recovering `x̂₀` from an `ε`-prediction where `ᾱ_t = 0` (the last timestep of
/// a zero-terminal-SNR schedule): the conversion divides by zero, where diffusers returns NaN.
/// `what` names the quantity (and, before sampling, the timestep).
pub(crate) fn epsilon_without_signal(what: &str) -> Error {
    Error::NonFinite {
        what: what.into(),
        reason: "epsilon prediction at a timestep with alphas_cumprod = 0 (zero terminal SNR) \
                 divides by zero; use prediction_type \"v_prediction\" with \
                 rescale_betas_zero_snr, or a timestep_spacing that starts below the last \
                 training timestep (\"leading\")"
            .into(),
    }
}

/// The error of a `sample` prediction at a timestep without noise (`ε̂` would divide by zero).
pub(crate) fn sample_without_noise() -> Error {
    Error::NonFinite {
        what: "pred_epsilon".into(),
        reason: "sample prediction at a timestep with alphas_cumprod = 1".into(),
    }
}

/// Refuses, when the timesteps are set and so before any model call, an `ε`-prediction
/// schedule that visits a timestep with `ᾱ_t = 0`: the step there would fail with
/// [`epsilon_without_signal`] after the model has run. For the schedulers that recover `x̂₀`
/// at `ᾱ_t` of the timestep itself (DDIM, DDPM, LCM, TCD); `alpha_cumprod_at` is the
/// scheduler's own lookup.
pub(crate) fn check_epsilon_timesteps(
    prediction_type: PredictionType,
    timesteps: &[f64],
    alpha_cumprod_at: impl Fn(f64) -> Result<f32>,
) -> Result<()> {
    if prediction_type != PredictionType::Epsilon {
        return Ok(());
    }
    for &t in timesteps {
        if alpha_cumprod_at(t)? == 0.0 {
            return Err(epsilon_without_signal(&format!(
                "pred_original_sample at timestep {t} of the {}-step schedule",
                timesteps.len()
            )));
        }
    }
    Ok(())
}

/// Recovers `(x̂₀, ε̂)` from a model output, as diffusers' DDIM / DDPM / LCM do.
///
/// Errors with [`Error::NonFinite`] where the conversion divides by zero: `ε`-prediction at
/// `ᾱ_t = 0` (the last timestep of a zero-terminal-SNR schedule, where diffusers returns NaN),
/// and `x₀`-prediction at `ᾱ_t = 1`.
///
/// # Shapes
/// `model_output` and `sample`: the same shape; outputs likewise.
pub fn to_x0_and_eps<const D: usize>(
    prediction_type: PredictionType,
    model_output: Tensor<D>,
    sample: Tensor<D>,
    s: Scales,
) -> Result<(Tensor<D>, Tensor<D>)> {
    match prediction_type {
        PredictionType::Epsilon => {
            if s.alpha == 0.0 {
                return Err(epsilon_without_signal("pred_original_sample"));
            }
            let x0 = (sample - model_output.clone().mul_scalar(s.sigma as f32))
                .div_scalar(s.alpha as f32);
            Ok((x0, model_output))
        }
        PredictionType::Sample => {
            if s.sigma == 0.0 {
                return Err(sample_without_noise());
            }
            let eps = (sample - model_output.clone().mul_scalar(s.alpha as f32))
                .div_scalar(s.sigma as f32);
            Ok((model_output, eps))
        }
        PredictionType::VPrediction => {
            let x0 = sample.clone().mul_scalar(s.alpha as f32)
                - model_output.clone().mul_scalar(s.sigma as f32);
            let eps = model_output.mul_scalar(s.alpha as f32) + sample.mul_scalar(s.sigma as f32);
            Ok((x0, eps))
        }
    }
}

/// `v = α·ε − σ·x₀` (diffusers' `get_velocity`).
pub fn velocity<const D: usize>(x0: Tensor<D>, eps: Tensor<D>, s: Scales) -> Tensor<D> {
    eps.mul_scalar(s.alpha as f32) - x0.mul_scalar(s.sigma as f32)
}

/// `x_t = α·x₀ + σ·ε` (diffusers' `add_noise` for variance-preserving schedulers).
pub fn add_noise<const D: usize>(x0: Tensor<D>, eps: Tensor<D>, s: Scales) -> Tensor<D> {
    x0.mul_scalar(s.alpha as f32) + eps.mul_scalar(s.sigma as f32)
}

/// Converts a model output between prediction types at scales `s`.
pub fn convert<const D: usize>(
    from: PredictionType,
    to: PredictionType,
    model_output: Tensor<D>,
    sample: Tensor<D>,
    s: Scales,
) -> Result<Tensor<D>> {
    if from == to {
        return Ok(model_output);
    }
    let (x0, eps) = to_x0_and_eps(from, model_output, sample, s)?;
    Ok(match to {
        PredictionType::Epsilon => eps,
        PredictionType::Sample => x0,
        PredictionType::VPrediction => velocity(x0, eps, s),
    })
}

/// A deterministic DDIM step written as a rotation in the `(x₀, ε)` plane:
/// `x_s = cos(φ_t − φ_s)·x_t − sin(φ_t − φ_s)·v̂`.
///
/// Equals [`crate::Ddim`]'s η = 0 step with `v_prediction` (up to float rounding).
pub fn ddim_rotation_step<const D: usize>(
    x_t: Tensor<D>,
    v: Tensor<D>,
    from: Scales,
    to: Scales,
) -> Tensor<D> {
    let delta = from.angle() - to.angle();
    x_t.mul_scalar(delta.cos() as f32) - v.mul_scalar(delta.sin() as f32)
}

#[cfg(test)]
mod tests {
    use super::Scales;
    use super::scalar::*;
    use proptest::prelude::*;

    /// ε-prediction on a zero-terminal-SNR schedule: refused by `set_timesteps` (before any
    /// model call) exactly when the schedule visits `ᾱ = 0`, naming the timestep; v-prediction
    /// and schedules that start below the last training timestep are accepted.
    #[test]
    fn epsilon_at_zero_snr_is_refused_when_the_timesteps_are_set() {
        use vdm_core::Error;
        // (class, spacing, prediction, accepted): LCM and TCD always visit timestep 999.
        let cases = [
            ("DDIMScheduler", "trailing", "epsilon", false),
            ("DDIMScheduler", "leading", "epsilon", true),
            ("DDIMScheduler", "trailing", "v_prediction", true),
            ("DDPMScheduler", "trailing", "epsilon", false),
            ("DDPMScheduler", "leading", "epsilon", true),
            ("DDPMScheduler", "trailing", "v_prediction", true),
            ("LCMScheduler", "trailing", "epsilon", false),
            ("LCMScheduler", "trailing", "v_prediction", true),
            ("TCDScheduler", "trailing", "epsilon", false),
            ("TCDScheduler", "trailing", "v_prediction", true),
        ];
        for (class, spacing, prediction, accepted) in cases {
            let json = format!(
                r#"{{"_class_name":"{class}","rescale_betas_zero_snr":true,
                    "timestep_spacing":"{spacing}","prediction_type":"{prediction}"}}"#
            );
            let mut s = crate::from_config_json(&json).unwrap();
            let case = format!("{class} {spacing} {prediction}");
            match s.set_timesteps(8) {
                Ok(()) => {
                    assert!(accepted, "{case}: accepted");
                    assert_eq!(s.timesteps().len(), 8, "{case}");
                }
                Err(Error::NonFinite { what, reason }) => {
                    assert!(!accepted, "{case}: {what}: {reason}");
                    assert!(what.contains("timestep 999"), "{case}: {what}");
                    assert!(reason.contains("v_prediction"), "{case}: {reason}");
                    assert!(s.timesteps().is_empty(), "{case}: timesteps kept");
                }
                Err(e) => panic!("{case}: {e}"),
            }
        }
    }

    proptest! {
        #[test]
        fn round_trips(x0 in -10.0f64..10.0, eps in -10.0f64..10.0, phi in 0.01f64..1.56) {
            let s = Scales::from_angle(phi);
            let x_t = noisy(x0, eps, s);
            let v = velocity(x0, eps, s);
            prop_assert!((x0_from_v(x_t, v, s) - x0).abs() < 1e-9);
            prop_assert!((eps_from_v(x_t, v, s) - eps).abs() < 1e-9);
            prop_assert!((x0_from_eps(x_t, eps, s) - x0).abs() < 1e-6 / s.alpha);
            prop_assert!((eps_from_x0(x_t, x0, s) - eps).abs() < 1e-6 / s.sigma);
            // The angular form: x_t and v are (x0, eps) rotated by φ.
            prop_assert!((s.angle() - phi).abs() < 1e-12);
            prop_assert!((x_t - (phi.cos() * x0 + phi.sin() * eps)).abs() < 1e-9);
            prop_assert!((v - (phi.cos() * eps - phi.sin() * x0)).abs() < 1e-9);
        }
    }
}
