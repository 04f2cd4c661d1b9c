//! Heun's second-order sampler (Karras et al. 2022, "Elucidating the Design Space of
//! Diffusion-Based Generative Models", Algorithm 1), mirroring diffusers'
//! `HeunDiscreteScheduler` (`src/diffusers/schedulers/scheduling_heun_discrete.py`).
//!
//! # Two model calls per step, in the ordinary loop
//!
//! A Heun step from `σ_i` to `σ_{i+1}` evaluates the model twice: at `σ_i` (an Euler
//! predictor) and at `σ_{i+1}` on the predicted sample (the trapezoidal corrector). As in
//! diffusers, the scheduler exposes this through its timesteps: every timestep after the first
//! appears twice (`t_0, t_1, t_1, …, t_{N−1}, t_{N−1}`: `2N − 1` model calls for `N` steps),
//! and each [`Scheduler::step`] consumes one model output. The usual loop over
//! [`Scheduler::timesteps`] (and so every vdm sampler, the long-video one included) drives it
//! unchanged; the intermediate `prev_sample` of a predictor stage is the sample the model must
//! see next. The last step (to `σ = 0`) is a plain Euler step.
//!
//! The sigmas and timesteps are [`EulerDiscrete`]'s (diffusers computes them with the same
//! code), including Karras, exponential and beta sigmas.
//!
//! # Deviations from diffusers
//!
//! - `rescale_betas_zero_snr: true` is honoured (the last `ᾱ` patched to 2⁻²⁴ as in Euler);
//!   diffusers' Heun silently ignores the key.
//! - The `exp` beta schedule is a typed error (not implemented).
//! - As for [`EulerDiscrete`]: [`Scheduler::scale_model_input`] does not initialise the step
//!   index, and there is no `set_begin_index` or custom timestep list.

use burn::tensor::Tensor;
use serde::{Deserialize, Serialize};
use vdm_core::layout::expect_same_shape;
use vdm_core::{Error, NoiseSource, PredictionType, Result};

use crate::euler::{
    EulerDiscrete, EulerDiscreteConfig, exhausted, first_index, index_for_timestep, predict_x0,
    sigma_space_add_noise,
};
use crate::options::{BetaSchedule, TimestepSpacing};
use crate::schedule::{BetaConfig, NoiseSchedule};
use crate::scheduler::{Scheduler, StepOutput};
use crate::threshold::SampleClipping;
use crate::torch_sqrt::torch_sqrt;

/// The fields of a diffusers `HeunDiscreteScheduler` `scheduler_config.json`, with its
/// defaults (linear betas 0.00085 → 0.012, ε-prediction, `linspace` spacing). Keys missing from
/// the JSON take these defaults, flattened ones included.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, remote = "Self")]
pub struct HeunDiscreteConfig {
    /// Training noise schedule.
    #[serde(flatten)]
    pub betas: BetaConfig,
    /// What the model predicts.
    pub prediction_type: PredictionType,
    /// Use the Karras et al. 2022 sigma schedule (`ρ = 7`).
    #[serde(deserialize_with = "crate::euler::bool_or_null")]
    pub use_karras_sigmas: bool,
    /// Use sigmas evenly spaced in `log σ`.
    #[serde(deserialize_with = "crate::euler::bool_or_null")]
    pub use_exponential_sigmas: bool,
    /// The beta-distribution sigma schedule (`Beta(0.6, 0.6)` quantiles; Lee et al. 2024).
    #[serde(deserialize_with = "crate::euler::bool_or_null")]
    pub use_beta_sigmas: bool,
    /// Clamp `x̂₀` to `±clip_sample_range`.
    pub clip_sample: bool,
    /// The clamp range of `clip_sample`.
    pub clip_sample_range: f64,
    /// How inference timesteps are spaced.
    pub timestep_spacing: TimestepSpacing,
    /// Added to `leading` timesteps.
    pub steps_offset: usize,
}

impl Default for HeunDiscreteConfig {
    fn default() -> Self {
        Self {
            betas: BetaConfig {
                beta_start: 0.00085,
                beta_end: 0.012,
                beta_schedule: BetaSchedule::Linear,
                ..BetaConfig::default()
            },
            prediction_type: PredictionType::Epsilon,
            use_karras_sigmas: false,
            use_exponential_sigmas: false,
            use_beta_sigmas: false,
            clip_sample: false,
            clip_sample_range: 1.0,
            timestep_spacing: TimestepSpacing::Linspace,
            steps_offset: 0,
        }
    }
}

crate::serde_defaults::serde_over_defaults!(HeunDiscreteConfig);

impl HeunDiscreteConfig {
    /// The [`EulerDiscreteConfig`] with the same sigmas and timesteps.
    pub fn euler(&self) -> EulerDiscreteConfig {
        EulerDiscreteConfig {
            betas: self.betas.clone(),
            prediction_type: self.prediction_type,
            use_karras_sigmas: self.use_karras_sigmas,
            use_exponential_sigmas: self.use_exponential_sigmas,
            use_beta_sigmas: self.use_beta_sigmas,
            timestep_spacing: self.timestep_spacing,
            steps_offset: self.steps_offset,
            ..EulerDiscreteConfig::default()
        }
    }

    fn clipping(&self) -> SampleClipping {
        SampleClipping {
            clip_sample: self.clip_sample,
            clip_sample_range: self.clip_sample_range,
            ..SampleClipping::default()
        }
    }

    /// Checks the fields, naming the first bad one.
    pub fn validate(&self) -> Result<()> {
        self.clipping().validate()?;
        self.euler().validate()
    }

    /// Builds the scheduler (without timesteps; call [`Scheduler::set_timesteps`]).
    pub fn build(&self) -> Result<HeunDiscrete> {
        HeunDiscrete::new(self.clone())
    }

    /// Builds the scheduler, boxed.
    pub fn build_boxed(&self) -> Result<Box<dyn Scheduler>> {
        Ok(Box::new(self.build()?))
    }
}

/// The predictor stage's results, kept for the corrector.
#[derive(Debug, Clone)]
struct Predictor {
    derivative: Tensor<5>,
    dt: f32,
    sample: Tensor<5>,
}

/// Heun's sampler, as diffusers' `HeunDiscreteScheduler`: deterministic, two model calls per
/// step (see the module docs for how the ordinary loop drives them).
#[derive(Debug, Clone)]
pub struct HeunDiscrete {
    config: HeunDiscreteConfig,
    clipping: SampleClipping,
    euler: EulerDiscrete,
    /// `t_0, t_1, t_1, …, t_{N−1}, t_{N−1}`.
    timesteps: Vec<f64>,
    /// `σ_0, σ_1, σ_1, …, σ_{N−1}, σ_{N−1}, 0`.
    sigmas: Vec<f32>,
    step_index: Option<usize>,
    predictor: Option<Predictor>,
}

impl HeunDiscrete {
    /// A Heun scheduler for `config`.
    ///
    /// # Errors
    /// [`HeunDiscreteConfig::validate`]'s, and an error naming `beta_schedule` when `ᾱ`
    /// reaches 0.
    pub fn new(config: HeunDiscreteConfig) -> Result<Self> {
        let clipping = config.clipping();
        clipping.validate()?;
        let euler = EulerDiscrete::new(config.euler())?;
        Ok(Self {
            config,
            clipping,
            euler,
            timesteps: Vec::new(),
            sigmas: Vec::new(),
            step_index: None,
            predictor: None,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &HeunDiscreteConfig {
        &self.config
    }

    /// The sigmas, one per model call plus the final 0 (diffusers' `sigmas`).
    pub fn sigmas(&self) -> &[f32] {
        &self.sigmas
    }

    /// Whether the next [`Scheduler::step`] is a predictor (first-order) stage.
    pub fn in_first_order(&self) -> bool {
        self.predictor.is_none()
    }

    /// The position of `timestep` in the schedule: compared in `f32`, the second occurrence
    /// when it occurs more than once (diffusers' `index_for_timestep`).
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] before [`Scheduler::set_timesteps`] or for a timestep that is
    /// not in the schedule.
    pub fn index_for_timestep(&self, timestep: f64) -> Result<usize> {
        index_for_timestep(&self.timesteps, timestep)
    }

    /// The step index, or on the first step the position of `timestep`: 0 when it is the
    /// schedule's first timestep (a run from the start), else [`Self::index_for_timestep`].
    fn current_index(&self, timestep: f64) -> Result<usize> {
        match self.step_index {
            Some(i) => Ok(i),
            None => first_index(&self.timesteps, timestep),
        }
    }
}

impl Scheduler for HeunDiscrete {
    fn set_timesteps(&mut self, num_inference_steps: usize) -> Result<()> {
        self.euler.set_timesteps(num_inference_steps)?;
        let (t, s) = (self.euler.timesteps(), self.euler.sigmas());
        let n = t.len();
        self.timesteps = std::iter::once(t[0])
            .chain(t[1..].iter().flat_map(|&x| [x, x]))
            .collect();
        self.sigmas = std::iter::once(s[0])
            .chain(s[1..n].iter().flat_map(|&x| [x, x]))
            .chain(std::iter::once(s[n]))
            .collect();
        self.step_index = None;
        self.predictor = None;
        Ok(())
    }

    fn timesteps(&self) -> &[f64] {
        &self.timesteps
    }

    /// `σ_max` for `linspace` / `trailing` spacing, `sqrt(σ_max² + 1)` for `leading` (diffusers).
    fn init_noise_sigma(&self) -> f64 {
        self.euler.init_noise_sigma()
    }

    /// `x / sqrt(σ² + 1)` with the sigma of this model call.
    fn scale_model_input(&self, sample: Tensor<5>, timestep: f64) -> Result<Tensor<5>> {
        let index = self.current_index(timestep)?;
        let sigma = *self.sigmas.get(index).ok_or_else(|| exhausted(index))?;
        Ok(sample.div_scalar(torch_sqrt(sigma * sigma + 1.0)))
    }

    /// One stage: the predictor (an Euler step, whose `prev_sample` the model must see next)
    /// or the corrector (the trapezoidal update from the predictor's starting sample).
    fn step(
        &mut self,
        model_output: Tensor<5>,
        timestep: f64,
        sample: Tensor<5>,
        _noise: &mut dyn NoiseSource,
    ) -> Result<StepOutput> {
        expect_same_shape("model_output", &model_output, &sample)?;
        let index = self.current_index(timestep)?;
        if index >= self.timesteps.len() {
            return Err(exhausted(index));
        }
        let first_order = self.predictor.is_none();
        let (sigma, sigma_next) = if first_order {
            (self.sigmas[index], self.sigmas[index + 1])
        } else {
            (self.sigmas[index - 1], self.sigmas[index])
        };
        // diffusers: ε and v convert with σ in the predictor and σ_next in the corrector.
        let sigma_input = if first_order { sigma } else { sigma_next };
        if sigma_input == 0.0 {
            return Err(Error::NonFinite {
                what: "derivative".into(),
                reason: format!("sigma is 0 at step {index}: the derivative divides by sigma"),
            });
        }
        let pred_original = predict_x0(
            self.config.prediction_type,
            model_output,
            sample.clone(),
            sigma_input,
            sigma_input,
        );
        let pred_original = self.clipping.apply(pred_original)?;
        let derivative = (sample.clone() - pred_original.clone()).div_scalar(sigma_input);
        let prev_sample = match self.predictor.take() {
            None => {
                let dt = sigma_next - sigma;
                self.predictor = Some(Predictor {
                    derivative: derivative.clone(),
                    dt,
                    sample: sample.clone(),
                });
                sample + derivative.mul_scalar(dt)
            }
            Some(p) => {
                let derivative = (p.derivative + derivative).div_scalar(2.0);
                p.sample + derivative.mul_scalar(p.dt)
            }
        };
        self.step_index = Some(index + 1);
        Ok(StepOutput {
            prev_sample,
            pred_original_sample: Some(pred_original),
        })
    }

    /// `x₀ + σ·ε`, `σ` at the position of `timestep` in the schedule.
    fn add_noise(&self, original: Tensor<5>, noise: Tensor<5>, timestep: f64) -> Result<Tensor<5>> {
        sigma_space_add_noise(&self.timesteps, &self.sigmas, original, noise, timestep)
    }

    fn prediction_type(&self) -> PredictionType {
        self.config.prediction_type
    }

    fn noise_schedule(&self) -> &NoiseSchedule {
        self.euler.noise_schedule()
    }

    fn is_sigma_space(&self) -> bool {
        true
    }

    fn box_clone(&self) -> Box<dyn Scheduler> {
        Box::new(self.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::Device;
    use proptest::prelude::*;

    use crate::test_support::{distance_after_exact_x0_model, gaussian_ode_error, ramp, spacings};

    #[test]
    fn defaults_are_diffusers_defaults() {
        let c: HeunDiscreteConfig = serde_json::from_str("{}").unwrap();
        assert_eq!(c, HeunDiscreteConfig::default());
        assert_eq!((c.betas.beta_start, c.betas.beta_end), (0.00085, 0.012));
        let c: HeunDiscreteConfig =
            serde_json::from_str(r#"{"beta_schedule": "scaled_linear"}"#).unwrap();
        assert_eq!(c.betas.beta_start, 0.00085);
    }

    #[test]
    fn timesteps_repeat_for_the_corrector() {
        let mut s = HeunDiscreteConfig::default().build().unwrap();
        s.set_timesteps(3).unwrap();
        let t = s.timesteps().to_vec();
        assert_eq!(t.len(), 5);
        assert_eq!((t[1], t[3]), (t[2], t[4]));
        let sig = s.sigmas();
        assert_eq!(sig.len(), 6);
        assert_eq!((sig[1], sig[3], sig[5]), (sig[2], sig[4], 0.0));
    }

    #[test]
    fn bad_configs_name_the_field() {
        let e = HeunDiscreteConfig {
            clip_sample_range: 0.0,
            ..HeunDiscreteConfig::default()
        }
        .build()
        .unwrap_err()
        .to_string();
        assert!(e.contains("clip_sample_range"), "{e}");
        let e = HeunDiscreteConfig {
            use_karras_sigmas: true,
            use_exponential_sigmas: true,
            ..HeunDiscreteConfig::default()
        }
        .build()
        .unwrap_err()
        .to_string();
        assert!(e.contains("use_karras_sigmas"), "{e}");
    }

    /// An exact x₀ model lands on x₀, and Heun integrates the probability-flow ODE of a
    /// Gaussian to second order: its error falls ~4× when the steps double.
    #[test]
    fn exact_model_lands_and_converges_to_second_order() {
        let x0 = ramp(&Device::flex());
        let config = HeunDiscreteConfig {
            prediction_type: PredictionType::Sample,
            ..HeunDiscreteConfig::default()
        };
        let run = |steps: usize| {
            let mut s = config.build().unwrap();
            s.set_timesteps(steps).unwrap();
            s
        };
        let d = distance_after_exact_x0_model(&mut run(10), &x0, x0.clone().add_scalar(3.0));
        assert!(d < 1e-5, "{d}");
        let (e10, e20) = (
            gaussian_ode_error(&mut run(10), &x0, 4.0),
            gaussian_ode_error(&mut run(20), &x0, 4.0),
        );
        eprintln!("Heun on a Gaussian ODE: error {e10:e} at 10 steps, {e20:e} at 20");
        assert!(e20 < e10 / 3.0, "errors {e10} (10 steps), {e20} (20 steps)");
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(32))]

        /// 2N − 1 timesteps, non-increasing, in range; sigmas non-increasing to 0.
        #[test]
        fn schedule_invariants(
            steps in 1usize..150,
            spacing in spacings(),
            karras in any::<bool>(),
        ) {
            let mut s = HeunDiscreteConfig {
                timestep_spacing: spacing,
                use_karras_sigmas: karras,
                steps_offset: 1,
                ..HeunDiscreteConfig::default()
            }
            .build()
            .unwrap();
            s.set_timesteps(steps).unwrap();
            let t = s.timesteps();
            prop_assert_eq!(t.len(), 2 * steps - 1);
            prop_assert!(t.windows(2).all(|w| w[0] >= w[1]));
            prop_assert!(t.iter().all(|&x| (0.0..1000.0).contains(&x)));
            let sig = s.sigmas();
            prop_assert_eq!(sig.len(), 2 * steps);
            prop_assert!(sig.windows(2).all(|w| w[0] >= w[1]));
            prop_assert_eq!(sig[2 * steps - 1], 0.0);
        }
    }
}
