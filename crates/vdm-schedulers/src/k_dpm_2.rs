//! The second-order DPM-Solver-2 sampler in Karras et al.'s sigma form (k-diffusion's
//! `sample_dpm_2`; Lu et al. 2022, "DPM-Solver", with the midpoint in `log σ`), mirroring
//! diffusers' `KDPM2DiscreteScheduler` (`src/diffusers/schedulers/scheduling_k_dpm_2_discrete.py`).
//!
//! A step from `σ_i` to `σ_{i+1}` calls the model twice: at `σ_i`, then, after an Euler step to
//! the log-midpoint `σ̃ = exp((ln σ_i + ln σ_{i+1})/2)`, at `σ̃`, whose derivative carries the
//! sample from `σ_i` all the way to `σ_{i+1}`. Like [`HeunDiscrete`](crate::HeunDiscrete), the
//! timesteps list drives the ordinary loop: `t_0, t̃_1, t_1, t̃_2, …, t̃_{N−1}, t_{N−1}` (the
//! midpoint's timestep by log-sigma interpolation; `2N − 1` model calls); the last step, to
//! `σ = 0`, is a plain Euler step.
//!
//! # Deviations from diffusers
//!
//! - `prediction_type: "sample"` is supported (`x̂₀` is the model output); diffusers raises.
//! - `rescale_betas_zero_snr: true` is honoured (as [`EulerDiscrete`]); diffusers ignores it.
//! - The midpoints' timesteps are interpolated in `f64` where diffusers mixes `f32`: they
//!   agree to ~1e-4 of a timestep (they only reach the model as its timestep input).

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
use crate::torch_sqrt::torch_sqrt;

/// The fields of a diffusers `KDPM2DiscreteScheduler` `scheduler_config.json`, with its
/// defaults (linear betas 0.00085 → 0.012, ε-prediction, `linspace` spacing).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, remote = "Self")]
pub struct KDpm2DiscreteConfig {
    /// Training noise schedule.
    #[serde(flatten)]
    pub betas: BetaConfig,
    /// What the model predicts.
    pub prediction_type: PredictionType,
    /// Use the Karras et al. 2022 sigma schedule (`ρ = 7`; its timesteps rounded, as diffusers).
    #[serde(deserialize_with = "crate::euler::bool_or_null")]
    pub use_karras_sigmas: bool,
    /// Use sigmas evenly spaced in `log σ`.
    #[serde(deserialize_with = "crate::euler::bool_or_null")]
    pub use_exponential_sigmas: bool,
    /// The beta-distribution sigma schedule (`Beta(0.6, 0.6)` quantiles; Lee et al. 2024).
    #[serde(deserialize_with = "crate::euler::bool_or_null")]
    pub use_beta_sigmas: bool,
    /// How inference timesteps are spaced.
    pub timestep_spacing: TimestepSpacing,
    /// Added to `leading` timesteps.
    pub steps_offset: usize,
}

impl Default for KDpm2DiscreteConfig {
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
            timestep_spacing: TimestepSpacing::Linspace,
            steps_offset: 0,
        }
    }
}

crate::serde_defaults::serde_over_defaults!(KDpm2DiscreteConfig);

impl KDpm2DiscreteConfig {
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

    /// Checks the fields, naming the first bad one.
    pub fn validate(&self) -> Result<()> {
        self.euler().validate()
    }

    /// Builds the scheduler (without timesteps; call [`Scheduler::set_timesteps`]).
    pub fn build(&self) -> Result<KDpm2Discrete> {
        KDpm2Discrete::new(self.clone())
    }

    /// Builds the scheduler, boxed.
    pub fn build_boxed(&self) -> Result<Box<dyn Scheduler>> {
        Ok(Box::new(self.build()?))
    }
}

/// DPM-Solver-2 in sigma space, as diffusers' `KDPM2DiscreteScheduler`: deterministic, two
/// model calls per step (see the module docs).
#[derive(Debug, Clone)]
pub struct KDpm2Discrete {
    config: KDpm2DiscreteConfig,
    euler: EulerDiscrete,
    /// `t_0, t̃_1, t_1, …, t̃_{N−1}, t_{N−1}`.
    timesteps: Vec<f64>,
    /// `σ_0, σ_1, σ_1, …, σ_{N−1}, σ_{N−1}, 0, 0, 0` (diffusers' layout).
    sigmas: Vec<f32>,
    /// The log-midpoints in the same layout (`σ̃_i` between `σ_{i−1}` and `σ_i`).
    sigmas_interpol: Vec<f32>,
    step_index: Option<usize>,
    /// The sample at `σ_i` while the midpoint call is pending.
    start: Option<Tensor<5>>,
}

impl KDpm2Discrete {
    /// A KDPM2 scheduler for `config`.
    ///
    /// # Errors
    /// [`KDpm2DiscreteConfig::validate`]'s, and an error naming `beta_schedule` when `ᾱ`
    /// reaches 0.
    pub fn new(config: KDpm2DiscreteConfig) -> Result<Self> {
        let euler = EulerDiscrete::new(config.euler())?;
        Ok(Self {
            config,
            euler,
            timesteps: Vec::new(),
            sigmas: Vec::new(),
            sigmas_interpol: Vec::new(),
            step_index: None,
            start: None,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &KDpm2DiscreteConfig {
        &self.config
    }

    /// The sigmas in diffusers' layout (see the field docs).
    pub fn sigmas(&self) -> &[f32] {
        &self.sigmas
    }

    /// The log-midpoint sigmas in diffusers' layout.
    pub fn sigmas_interpol(&self) -> &[f32] {
        &self.sigmas_interpol
    }

    /// The position of `timestep` in the schedule (the second occurrence if repeated).
    ///
    /// # Errors
    /// Before [`Scheduler::set_timesteps`], or for a timestep not in the schedule.
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

/// `[x_0, x_1, x_1, …, x_n, x_n, x_n]` from `[x_0, …, x_n]` (diffusers'
/// `cat([x[:1], x[1:].repeat_interleave(2), x[-1:]])`).
fn doubled(x: &[f32]) -> Vec<f32> {
    std::iter::once(x[0])
        .chain(x[1..].iter().flat_map(|&v| [v, v]))
        .chain(std::iter::once(x[x.len() - 1]))
        .collect()
}

impl Scheduler for KDpm2Discrete {
    fn set_timesteps(&mut self, num_inference_steps: usize) -> Result<()> {
        self.euler.set_timesteps(num_inference_steps)?;
        let sigmas = self.euler.sigmas().to_vec();
        let n = sigmas.len() - 1;
        let mut timesteps = self.euler.timesteps().to_vec();
        if self.config.use_karras_sigmas {
            // diffusers rounds the Karras timesteps of this class (not the midpoints').
            for t in &mut timesteps {
                *t = t.round_ties_even();
            }
        }
        // torch: exp(lerp(ln σ_i, ln σ_{i−1}, 0.5)) in f32, σ_{−1} = σ_n (roll): entry 0 is
        // NaN and never used; the last is 0.
        let interpol: Vec<f32> = (0..=n)
            .map(|i| {
                let (a, b) = (sigmas[i].ln(), sigmas[(i + n) % (n + 1)].ln());
                (b - (b - a) * 0.5).exp()
            })
            .collect();
        self.timesteps = std::iter::once(timesteps[0])
            .chain((1..n).flat_map(|i| {
                let midpoint = self.euler.sigma_to_t(interpol[i] as f64) as f32 as f64;
                [midpoint, timesteps[i]]
            }))
            .collect();
        self.sigmas = doubled(&sigmas);
        self.sigmas_interpol = doubled(&interpol);
        self.step_index = None;
        self.start = None;
        Ok(())
    }

    fn timesteps(&self) -> &[f64] {
        &self.timesteps
    }

    /// `σ_max` for `linspace` / `trailing` spacing, `sqrt(σ_max² + 1)` for `leading` (diffusers).
    fn init_noise_sigma(&self) -> f64 {
        self.euler.init_noise_sigma()
    }

    /// `x / sqrt(σ² + 1)` with `σ_i` for the first call of a step and `σ̃` for the midpoint's.
    fn scale_model_input(&self, sample: Tensor<5>, timestep: f64) -> Result<Tensor<5>> {
        let index = self.current_index(timestep)?;
        let table = if self.start.is_none() {
            &self.sigmas
        } else {
            &self.sigmas_interpol
        };
        let sigma = *table.get(index).ok_or_else(|| exhausted(index))?;
        Ok(sample.div_scalar(torch_sqrt(sigma * sigma + 1.0)))
    }

    /// One stage: the Euler step to the midpoint (its `prev_sample` is what the model sees
    /// next), or the full step from `σ_i` with the midpoint's derivative.
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
        let first_order = self.start.is_none();
        let (sigma, sigma_interpol, sigma_next) = if first_order {
            (
                self.sigmas[index],
                self.sigmas_interpol[index + 1],
                self.sigmas[index + 1],
            )
        } else {
            (
                self.sigmas[index - 1],
                self.sigmas_interpol[index],
                self.sigmas[index],
            )
        };
        let sigma_input = if first_order { sigma } else { sigma_interpol };
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
        let derivative = (sample.clone() - pred_original.clone()).div_scalar(sigma_input);
        let prev_sample = match self.start.take() {
            None => {
                self.start = Some(sample.clone());
                sample + derivative.mul_scalar(sigma_interpol - sigma)
            }
            Some(start) => start + derivative.mul_scalar(sigma_next - sigma),
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
        let c: KDpm2DiscreteConfig = serde_json::from_str("{}").unwrap();
        assert_eq!(c, KDpm2DiscreteConfig::default());
        assert_eq!((c.betas.beta_start, c.betas.beta_end), (0.00085, 0.012));
    }

    #[test]
    fn midpoints_are_log_midpoints() {
        let mut s = KDpm2DiscreteConfig::default().build().unwrap();
        s.set_timesteps(4).unwrap();
        assert_eq!(s.timesteps().len(), 7);
        let (sig, mid) = (s.sigmas(), s.sigmas_interpol());
        assert_eq!(sig.len(), 10);
        for i in [1, 3, 5] {
            let expected = (sig[i - 1] * sig[i + 1]).sqrt();
            assert!((mid[i] - expected).abs() <= 1e-5 * expected, "{i}");
        }
        // The midpoint timesteps lie between their neighbours.
        let t = s.timesteps();
        assert!(t[0] > t[1] && t[1] > t[2] && t[2] > t[3]);
    }

    /// An exact x₀ model lands on x₀; on a Gaussian's probability-flow ODE the error falls
    /// ~4× when the steps double (second order).
    #[test]
    fn exact_model_lands_and_converges_to_second_order() {
        let x0 = ramp(&Device::flex());
        let config = KDpm2DiscreteConfig {
            prediction_type: PredictionType::Sample,
            ..KDpm2DiscreteConfig::default()
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
        eprintln!("KDPM2 on a Gaussian ODE: error {e10:e} at 10 steps, {e20:e} at 20");
        assert!(e20 < e10 / 3.0, "errors {e10} (10 steps), {e20} (20 steps)");
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(32))]

        /// 2N − 1 timesteps, decreasing, in range; sigmas and midpoints non-increasing.
        #[test]
        fn schedule_invariants(
            steps in 1usize..150,
            spacing in spacings(),
        ) {
            let mut s = KDpm2DiscreteConfig {
                timestep_spacing: spacing,
                steps_offset: 1,
                ..KDpm2DiscreteConfig::default()
            }
            .build()
            .unwrap();
            s.set_timesteps(steps).unwrap();
            let t = s.timesteps();
            prop_assert_eq!(t.len(), 2 * steps - 1);
            prop_assert!(t.windows(2).all(|w| w[0] > w[1]));
            prop_assert!(t.iter().all(|&x| (0.0..1000.0).contains(&x)));
            prop_assert!(s.sigmas().windows(2).all(|w| w[0] >= w[1]));
            prop_assert!(s.sigmas_interpol()[1..].windows(2).all(|w| w[0] >= w[1]));
        }
    }
}
