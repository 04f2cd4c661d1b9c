//! The ancestral Euler sampler ("Euler a"), mirroring diffusers'
//! `EulerAncestralDiscreteScheduler`
//! (`src/diffusers/schedulers/scheduling_euler_ancestral_discrete.py`), after k-diffusion's
//! `sample_euler_ancestral` (Karras et al. 2022, "Elucidating the Design Space of
//! Diffusion-Based Generative Models"; Crowson's ancestral variant).
//!
//! It shares [`EulerDiscrete`]'s sigma space, timesteps, sigmas, model-input scaling and
//! `add_noise` (diffusers' two classes compute them identically for the options the ancestral
//! one has). A step from `σ` to `σ'` splits `σ'` into a deterministic part and fresh noise:
//!
//! ```text
//! σ_up   = sqrt(σ'² · (σ² − σ'²) / σ²)        σ_down = sqrt(σ'² − σ_up²)
//! x'     = x + (x − x̂₀)/σ · (σ_down − σ) + σ_up · z,    z ~ N(0, I)
//! ```
//!
//! so every step draws one noise tensor (the last one too, where `σ_up = 0`: diffusers draws it,
//! and so do we, to replay the same noise stream). The arithmetic is `f32`, as torch's.
//!
//! # Deviations from diffusers
//!
//! - `prediction_type: "sample"` (x₀) is supported (`x̂₀` is the model output); diffusers raises
//!   `NotImplementedError`.
//! - `σ'² − σ_up²`, zero in exact arithmetic when `σ' = 0`, is clamped at 0 before its square
//!   root, where `f32` rounding could make torch's a NaN.
//! - As for [`EulerDiscrete`]: [`Scheduler::scale_model_input`] does not initialise the step
//!   index, and there is no `set_begin_index`.

use burn::tensor::Tensor;
use serde::{Deserialize, Serialize};
use vdm_core::layout::expect_same_shape;
use vdm_core::noise::draw;
use vdm_core::{Error, NoiseSource, PredictionType, Result};

use crate::euler::{EulerDiscrete, EulerDiscreteConfig, exhausted, predict_x0};
use crate::options::TimestepSpacing;
use crate::schedule::{BetaConfig, NoiseSchedule};
use crate::scheduler::{Scheduler, StepOutput};
use crate::torch_sqrt::torch_sqrt;

/// The fields of a diffusers `EulerAncestralDiscreteScheduler` `scheduler_config.json`, with its
/// defaults (linear betas 1e-4 → 0.02, ε-prediction, `linspace` spacing).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct EulerAncestralDiscreteConfig {
    /// Training noise schedule, with `rescale_betas_zero_snr` (`sigmoid` is rejected, as
    /// diffusers does).
    #[serde(flatten)]
    pub betas: BetaConfig,
    /// What the model predicts.
    pub prediction_type: PredictionType,
    /// How inference timesteps are spaced.
    pub timestep_spacing: TimestepSpacing,
    /// Added to `leading` timesteps.
    pub steps_offset: usize,
}

impl Default for EulerAncestralDiscreteConfig {
    fn default() -> Self {
        Self {
            betas: BetaConfig::default(),
            prediction_type: PredictionType::Epsilon,
            timestep_spacing: TimestepSpacing::Linspace,
            steps_offset: 0,
        }
    }
}

impl EulerAncestralDiscreteConfig {
    /// The [`EulerDiscreteConfig`] with the same sigmas and timesteps (linear interpolation,
    /// no Karras / exponential sigmas, final sigma 0).
    pub fn euler(&self) -> EulerDiscreteConfig {
        EulerDiscreteConfig {
            betas: self.betas.clone(),
            prediction_type: self.prediction_type,
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
    pub fn build(&self) -> Result<EulerAncestralDiscrete> {
        EulerAncestralDiscrete::new(self.clone())
    }

    /// Builds the scheduler, boxed.
    pub fn build_boxed(&self) -> Result<Box<dyn Scheduler>> {
        Ok(Box::new(self.build()?))
    }
}

/// The ancestral Euler sampler, as diffusers' `EulerAncestralDiscreteScheduler`: stochastic,
/// one model call per step, its noise drawn from the [`NoiseSource`] passed to
/// [`Scheduler::step`].
///
/// The step index is state, as in diffusers: set from the timestep on the first step, then
/// incremented; [`Scheduler::set_timesteps`] resets it.
#[derive(Debug, Clone)]
pub struct EulerAncestralDiscrete {
    config: EulerAncestralDiscreteConfig,
    euler: EulerDiscrete,
}

impl EulerAncestralDiscrete {
    /// An ancestral Euler scheduler for `config`.
    ///
    /// # Errors
    /// [`EulerAncestralDiscreteConfig::validate`]'s, and an error naming `beta_schedule` when
    /// `ᾱ` reaches 0 (an infinite sigma).
    pub fn new(config: EulerAncestralDiscreteConfig) -> Result<Self> {
        let euler = EulerDiscrete::new(config.euler())?;
        Ok(Self { config, euler })
    }

    /// The configuration.
    pub fn config(&self) -> &EulerAncestralDiscreteConfig {
        &self.config
    }

    /// The inference sigmas, one per timestep plus the final 0 (diffusers' `sigmas`).
    pub fn sigmas(&self) -> &[f32] {
        self.euler.sigmas()
    }

    /// The current step index (`None` before the first step after
    /// [`Scheduler::set_timesteps`]).
    pub fn step_index(&self) -> Option<usize> {
        self.euler.step_index()
    }

    /// The position of `timestep` in the schedule (see [`EulerDiscrete::index_for_timestep`]).
    pub fn index_for_timestep(&self, timestep: f64) -> Result<usize> {
        self.euler.index_for_timestep(timestep)
    }
}

/// `(σ_up, σ_down)` of a step from `sigma_from` to `sigma_to`, in torch's `f32` order of
/// operations.
pub(crate) fn ancestral_sigmas(sigma_from: f32, sigma_to: f32) -> (f32, f32) {
    let (from2, to2) = (sigma_from * sigma_from, sigma_to * sigma_to);
    let up = torch_sqrt(to2 * (from2 - to2) / from2);
    let down = torch_sqrt((to2 - up * up).max(0.0));
    (up, down)
}

impl Scheduler for EulerAncestralDiscrete {
    fn set_timesteps(&mut self, num_inference_steps: usize) -> Result<()> {
        self.euler.set_timesteps(num_inference_steps)
    }

    fn timesteps(&self) -> &[f64] {
        self.euler.timesteps()
    }

    /// `σ_max` for `linspace` / `trailing` spacing, `sqrt(σ_max² + 1)` for `leading` (diffusers).
    fn init_noise_sigma(&self) -> f64 {
        self.euler.init_noise_sigma()
    }

    /// `x / sqrt(σ² + 1)`.
    fn scale_model_input(&self, sample: Tensor<5>, timestep: f64) -> Result<Tensor<5>> {
        self.euler.scale_model_input(sample, timestep)
    }

    fn step(
        &mut self,
        model_output: Tensor<5>,
        timestep: f64,
        sample: Tensor<5>,
        noise: &mut dyn NoiseSource,
    ) -> Result<StepOutput> {
        expect_same_shape("model_output", &model_output, &sample)?;
        let index = match self.euler.step_index {
            Some(i) => i,
            None => self.euler.index_for_timestep(timestep)?,
        };
        let sigmas = &self.euler.sigmas;
        let (sigma, sigma_to) = match (sigmas.get(index), sigmas.get(index + 1)) {
            (Some(&s), Some(&next)) => (s, next),
            _ => return Err(exhausted(index)),
        };
        if sigma == 0.0 {
            return Err(Error::NonFinite {
                what: "derivative".into(),
                reason: format!(
                    "sigma is 0 at step {index}: the Euler derivative divides by sigma"
                ),
            });
        }
        let pred_original = predict_x0(
            self.config.prediction_type,
            model_output,
            sample.clone(),
            sigma,
            sigma,
        );
        let (sigma_up, sigma_down) = ancestral_sigmas(sigma, sigma_to);
        let derivative = (sample.clone() - pred_original.clone()).div_scalar(sigma);
        let z: Tensor<5> = draw(noise, sample.dims(), &sample.device())?;
        let prev_sample =
            sample + derivative.mul_scalar(sigma_down - sigma) + z.mul_scalar(sigma_up);
        self.euler.step_index = Some(index + 1);
        Ok(StepOutput {
            prev_sample,
            pred_original_sample: Some(pred_original),
        })
    }

    /// `x₀ + σ·ε`, `σ` at the position of `timestep` in the schedule.
    fn add_noise(&self, original: Tensor<5>, noise: Tensor<5>, timestep: f64) -> Result<Tensor<5>> {
        self.euler.add_noise(original, noise, timestep)
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
    use burn::tensor::{Device, TensorData};
    use proptest::prelude::*;
    use vdm_core::noise::{NoNoise, SeededNoise};

    use crate::options::BetaSchedule;
    use crate::test_support::spacings;

    fn config(pred: PredictionType, spacing: TimestepSpacing) -> EulerAncestralDiscreteConfig {
        EulerAncestralDiscreteConfig {
            betas: BetaConfig::sd(BetaSchedule::ScaledLinear),
            prediction_type: pred,
            timestep_spacing: spacing,
            steps_offset: 1,
        }
    }

    #[test]
    fn defaults_are_diffusers_defaults() {
        let c: EulerAncestralDiscreteConfig = serde_json::from_str("{}").unwrap();
        assert_eq!(c, EulerAncestralDiscreteConfig::default());
        assert_eq!(c.betas.beta_end, 0.02);
        assert_eq!(c.timestep_spacing, TimestepSpacing::Linspace);
    }

    #[test]
    fn sigmoid_betas_are_rejected_by_name() {
        let c = EulerAncestralDiscreteConfig {
            betas: BetaConfig {
                beta_schedule: BetaSchedule::Sigmoid,
                ..BetaConfig::default()
            },
            ..EulerAncestralDiscreteConfig::default()
        };
        let e = c.build().unwrap_err().to_string();
        assert!(e.contains("sigmoid"), "{e}");
    }

    #[test]
    fn each_step_draws_exactly_one_noise_tensor() {
        let device = Device::flex();
        let mut s = config(PredictionType::Epsilon, TimestepSpacing::Trailing)
            .build()
            .unwrap();
        s.set_timesteps(10).unwrap();
        let mut x: Tensor<5> = draw(&mut SeededNoise::new(1), [1, 2, 2, 3, 5], &device).unwrap();
        // A source that refuses to draw makes the step fail with its error.
        let t = s.timesteps()[0];
        let e = s.step(x.clone(), t, x.clone(), &mut NoNoise).unwrap_err();
        assert!(!e.to_string().is_empty());
        /// Counts the tensors drawn.
        struct Counting(SeededNoise, usize);
        impl NoiseSource for Counting {
            fn normal(&mut self, shape: &[usize]) -> Result<TensorData> {
                self.1 += 1;
                self.0.normal(shape)
            }
            fn permutation(&mut self, n: usize) -> Result<Vec<usize>> {
                self.0.permutation(n)
            }
        }
        let mut noise = Counting(SeededNoise::new(7), 0);
        for t in s.timesteps().to_vec() {
            let out = x.clone().mul_scalar(0.1);
            x = s.step(out, t, x, &mut noise).unwrap().prev_sample;
        }
        assert_eq!(noise.1, 10);
        // Past the last step: an error, not a panic.
        assert!(s.step(x.clone(), 0.0, x, &mut noise).is_err());
    }

    #[test]
    fn ancestral_split_keeps_the_target_variance() {
        for (from, to) in [(14.6f32, 10.0f32), (1.0, 0.5), (0.3, 0.0), (80.0, 79.9)] {
            let (up, down) = ancestral_sigmas(from, to);
            assert!((up * up + down * down - to * to).abs() <= 1e-5 * to * to + 1e-12);
            assert!(up <= to && down <= to);
        }
        assert_eq!(ancestral_sigmas(0.3, 0.0), (0.0, 0.0));
    }

    /// With a model that always predicts x₀ (`prediction_type: "sample"`) the sampler lands on
    /// x₀: every step mixes x with x₀ and adds noise of scale σ_up, which is 0 on the last step.
    #[test]
    fn exact_sample_model_lands_on_x0() {
        let device = Device::flex();
        let x0 = Tensor::<5>::from_data(
            TensorData::new(
                (0..12).map(|i| i as f32 / 6.0 - 1.0).collect(),
                [1, 1, 2, 2, 3],
            ),
            &device,
        );
        let mut s = config(PredictionType::Sample, TimestepSpacing::Leading)
            .build()
            .unwrap();
        s.set_timesteps(20).unwrap();
        let mut noise = SeededNoise::new(3);
        let mut x: Tensor<5> = draw(&mut noise, [1, 1, 2, 2, 3], &device)
            .unwrap()
            .mul_scalar(s.init_noise_sigma() as f32);
        for t in s.timesteps().to_vec() {
            x = s.step(x0.clone(), t, x, &mut noise).unwrap().prev_sample;
        }
        let d: f32 = (x - x0).abs().max().into_scalar();
        assert!(d < 1e-5, "{d}");
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]

        /// Timesteps strictly decrease within the training range; sigmas decrease to 0;
        /// σ_up² + σ_down² = σ'² at every step.
        #[test]
        fn schedule_invariants(
            steps in 1usize..200,
            spacing in spacings(),
            zero_snr in any::<bool>(),
        ) {
            let mut c = config(PredictionType::VPrediction, spacing);
            c.betas.rescale_betas_zero_snr = zero_snr;
            let mut s = c.build().unwrap();
            s.set_timesteps(steps).unwrap();
            let t = s.timesteps();
            prop_assert_eq!(t.len(), steps);
            prop_assert!(t.windows(2).all(|w| w[0] > w[1]));
            prop_assert!(t.iter().all(|&x| (0.0..1000.0).contains(&x)));
            let sig = s.sigmas();
            prop_assert_eq!(sig.len(), steps + 1);
            prop_assert!(sig.windows(2).all(|w| w[0] > w[1]));
            prop_assert_eq!(sig[steps], 0.0);
            for w in sig.windows(2) {
                let (up, down) = ancestral_sigmas(w[0], w[1]);
                let target = w[1] * w[1];
                prop_assert!((up * up + down * down - target).abs() <= 1e-4 * target + 1e-12);
            }
        }
    }
}
