//! TCD, the sampler of Trajectory Consistency Distillation (Zheng et al. 2024, "Trajectory
//! Consistency Distillation: Improved Latent Consistency Distillation by Semi-Linear
//! Consistency Function with Trajectory Mapping", Algorithm 4, "strategic stochastic
//! sampling"), mirroring diffusers' `TCDScheduler` (`scheduling_tcd.py`).
//!
//! From `x_t`, each step maps to the model's estimate at an *intermediate* timestep
//! `s = ⌊(1 − γ)·t_prev⌋` along the DDIM path, `x̂_s = √ᾱ_s·x̂₀ + √(1 − ᾱ_s)·ε̂`, then re-noises
//! it forward to the next timestep, `x_prev = √(ᾱ_prev/ᾱ_s)·x̂_s + √(1 − ᾱ_prev/ᾱ_s)·z`.
//! `γ = 0` is deterministic (DDIM on the distillation grid); `γ = 1` is LCM-like, jumping to
//! `x̂₀` and re-noising fully. The timesteps are LCM's (a subset of the
//! `original_inference_steps` distillation grid).
//!
//! # Deviations from diffusers
//!
//! - `γ` (diffusers' `step(eta=0.3)`) is set once with [`Tcd::with_gamma`] (default 0.3).
//! - `clip_sample` / `thresholding` apply to `x̂₀`; diffusers accepts them and ignores them.
//! - Epsilon prediction at `ᾱ_t = 0` (zero terminal SNR) is `Error::NonFinite`, not NaN.

use burn::tensor::Tensor;
use serde::{Deserialize, Serialize};
use vdm_core::layout::expect_same_shape;
use vdm_core::noise::draw;
use vdm_core::{Error, NoiseSource, PredictionType, Result};

use crate::ddpm::predicted_x0;
use crate::lcm::{LcmConfig, lcm_timesteps};
use crate::prediction::{Scales, check_epsilon_timesteps};
use crate::schedule::NoiseSchedule;
use crate::scheduler::{Scheduler, StepOutput};
use crate::torch_sqrt::torch_sqrt;

/// A diffusers `TCDScheduler` `scheduler_config.json`: exactly the keys and defaults of
/// `LCMScheduler` (`scaled_linear` betas 0.00085 → 0.012, `original_inference_steps = 50`, no
/// clipping), which diffusers' `TCDScheduler.__init__` mirrors. `timestep_scaling` and
/// `set_alpha_to_one` have no effect on TCD's step; `clip_sample` / `thresholding` apply to
/// `x̂₀` here (diffusers ignores them).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(transparent)]
pub struct TcdConfig(pub LcmConfig);

impl TcdConfig {
    /// Checks the fields, naming the first bad one.
    pub fn validate(&self) -> Result<()> {
        self.0.validate()
    }

    /// Builds the scheduler (`γ = 0.3`, diffusers' default).
    pub fn build(&self) -> Result<Tcd> {
        Tcd::new(self.clone())
    }

    /// Builds the scheduler, boxed.
    pub fn build_boxed(&self) -> Result<Box<dyn Scheduler>> {
        Ok(Box::new(self.build()?))
    }
}

/// The TCD sampler: stochastic for `γ > 0` (one noise draw per step but the last).
#[derive(Debug, Clone)]
pub struct Tcd {
    config: TcdConfig,
    schedule: NoiseSchedule,
    gamma: f64,
    timesteps: Vec<f64>,
    step_index: Option<usize>,
}

impl Tcd {
    /// A TCD scheduler for `config`, with `γ = 0.3`.
    pub fn new(config: TcdConfig) -> Result<Self> {
        config.validate()?;
        let schedule = NoiseSchedule::new(&config.0.betas)?;
        Ok(Self {
            config,
            schedule,
            gamma: 0.3,
            timesteps: Vec::new(),
            step_index: None,
        })
    }

    /// Sets the stochasticity `γ ∈ [0, 1]` (diffusers' `step(eta=...)`): 0 is deterministic,
    /// larger values re-noise more of each step (TCD's paper recommends lower `γ` for more
    /// steps).
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] naming `gamma` outside `[0, 1]`.
    pub fn with_gamma(mut self, gamma: f64) -> Result<Self> {
        if !(0.0..=1.0).contains(&gamma) {
            return Err(Error::invalid(
                "gamma",
                format!("must be in [0, 1], got {gamma}"),
            ));
        }
        self.gamma = gamma;
        Ok(self)
    }

    /// The stochasticity `γ`.
    pub fn gamma(&self) -> f64 {
        self.gamma
    }

    /// The configuration.
    pub fn config(&self) -> &TcdConfig {
        &self.config
    }

    /// The intermediate timestep `s = ⌊(1 − γ)·t_prev⌋` (in `f32`, as diffusers multiplies the
    /// integer timestep tensor by a Python float).
    pub fn intermediate_timestep(&self, prev_timestep: f64) -> f64 {
        ((1.0 - self.gamma) as f32 * prev_timestep as f32).floor() as f64
    }
}

impl Scheduler for Tcd {
    fn set_timesteps(&mut self, num_inference_steps: usize) -> Result<()> {
        let timesteps = lcm_timesteps(
            num_inference_steps,
            self.config.0.original_inference_steps,
            self.schedule.num_train_timesteps(),
        )?;
        check_epsilon_timesteps(self.prediction_type(), &timesteps, |t| {
            self.schedule.alpha_cumprod_at(t)
        })?;
        self.timesteps = timesteps;
        self.step_index = None;
        Ok(())
    }

    fn timesteps(&self) -> &[f64] {
        &self.timesteps
    }

    /// One TCD step; `pred_original_sample` is `x̂₀`.
    fn step(
        &mut self,
        model_output: Tensor<5>,
        timestep: f64,
        sample: Tensor<5>,
        noise: &mut dyn NoiseSource,
    ) -> Result<StepOutput> {
        expect_same_shape("model_output", &model_output, &sample)?;
        let index = match self.step_index {
            Some(i) => i,
            None => crate::euler::index_for_timestep(&self.timesteps, timestep)?,
        };
        let n = self.timesteps.len();
        if index >= n {
            return Err(crate::euler::exhausted(index));
        }
        let prev_t = self.timesteps.get(index + 1).copied().unwrap_or(0.0);
        let s_t = self.intermediate_timestep(prev_t);
        let alpha_t = self.schedule.alpha_cumprod_at(timestep)?;
        let alpha_prev = self.schedule.alpha_cumprod_at(prev_t)?;
        let alpha_s = self.schedule.alpha_cumprod_at(s_t)?;
        let at = Scales::from_alpha_cumprod(alpha_t);
        let x0 = predicted_x0(
            self.config.0.prediction_type,
            model_output.clone(),
            sample.clone(),
            at,
        )?;
        let eps = match self.config.0.prediction_type {
            PredictionType::Epsilon => model_output,
            PredictionType::Sample => {
                (sample - x0.clone().mul_scalar(at.alpha as f32)).div_scalar(at.sigma as f32)
            }
            PredictionType::VPrediction => {
                model_output.mul_scalar(at.alpha as f32) + sample.mul_scalar(at.sigma as f32)
            }
        };
        let x0 = self.config.0.clipping.apply(x0)?;
        let to_s = Scales::from_alpha_cumprod(alpha_s);
        let noised = x0.clone().mul_scalar(to_s.alpha as f32) + eps.mul_scalar(to_s.sigma as f32);
        let prev_sample = if self.gamma > 0.0 && index + 1 < n {
            let z: Tensor<5> = draw(noise, noised.dims(), &noised.device())?;
            let ratio = alpha_prev / alpha_s;
            noised.mul_scalar(torch_sqrt(ratio)) + z.mul_scalar(torch_sqrt(1.0 - ratio))
        } else {
            noised
        };
        self.step_index = Some(index + 1);
        Ok(StepOutput {
            prev_sample,
            pred_original_sample: Some(x0),
        })
    }

    fn add_noise(&self, original: Tensor<5>, noise: Tensor<5>, timestep: f64) -> Result<Tensor<5>> {
        self.schedule.add_noise(original, noise, timestep)
    }

    fn prediction_type(&self) -> PredictionType {
        self.config.0.prediction_type
    }

    fn noise_schedule(&self) -> &NoiseSchedule {
        &self.schedule
    }

    fn box_clone(&self) -> Box<dyn Scheduler> {
        Box::new(self.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::SchedulerConfig;
    use burn::tensor::Device;
    use proptest::prelude::*;
    use vdm_core::noise::NoNoise;

    use crate::test_support::ramp;

    #[test]
    fn defaults_match_diffusers() {
        let parsed = SchedulerConfig::from_json(r#"{"_class_name": "TCDScheduler"}"#).unwrap();
        assert_eq!(parsed, SchedulerConfig::Tcd(TcdConfig::default()));
        let s = TcdConfig::default().build().unwrap();
        assert_eq!(s.gamma(), 0.3);
        assert_eq!(
            s.config().0.betas.beta_schedule,
            crate::BetaSchedule::ScaledLinear
        );
    }

    #[test]
    fn bad_inputs_name_the_field() {
        let e = TcdConfig(LcmConfig {
            original_inference_steps: 0,
            ..LcmConfig::default()
        })
        .build()
        .unwrap_err();
        assert!(e.to_string().contains("original_inference_steps"), "{e}");
        let s = TcdConfig::default().build().unwrap();
        for bad in [-0.1, 1.5, f64::NAN] {
            let e = s.clone().with_gamma(bad).unwrap_err();
            assert!(e.to_string().contains("gamma"), "{e}");
        }
        let mut s = s;
        let e = s.set_timesteps(51).unwrap_err();
        assert!(e.to_string().contains("num_inference_steps"), "{e}");
        let x = ramp(&Device::flex());
        let e = s.step(x.clone(), 999.0, x, &mut NoNoise).unwrap_err();
        assert!(e.to_string().contains("set_timesteps"), "{e}");
    }

    /// `γ = 0`: no noise is drawn and an exact x₀ model follows the DDIM path `α·x₀ + σ·ε`
    /// down to timestep 0.
    #[test]
    fn gamma_zero_is_deterministic_ddim() {
        let device = Device::flex();
        let target = ramp(&device);
        let mut s = TcdConfig(LcmConfig {
            prediction_type: PredictionType::Sample,
            ..LcmConfig::default()
        })
        .build()
        .unwrap()
        .with_gamma(0.0)
        .unwrap();
        s.set_timesteps(6).unwrap();
        let acp = s.noise_schedule().alphas_cumprod.clone();
        let first = Scales::from_alpha_cumprod(acp[s.timesteps()[0] as usize]);
        let start = target.clone().add_scalar(2.0);
        let eps = (start.clone() - target.clone().mul_scalar(first.alpha as f32))
            .div_scalar(first.sigma as f32);
        let mut x = start;
        for t in s.timesteps().to_vec() {
            // NoNoise fails if a draw is attempted.
            x = s
                .step(target.clone(), t, x, &mut NoNoise)
                .unwrap()
                .prev_sample;
        }
        let end = Scales::from_alpha_cumprod(acp[0]);
        let expected = target.mul_scalar(end.alpha as f32) + eps.mul_scalar(end.sigma as f32);
        let d: f32 = (x - expected).abs().max().into_scalar();
        assert!(d < 1e-5, "{d}");
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// The intermediate timestep lies in `[0, t_prev]`, at `t_prev` for `γ = 0` and 0 for
        /// `γ = 1`; timesteps strictly decrease within range.
        #[test]
        fn intermediate_timesteps_are_between(
            steps in 1usize..=50,
            gamma in 0.0f64..=1.0,
        ) {
            let mut s = TcdConfig::default().build().unwrap().with_gamma(gamma).unwrap();
            s.set_timesteps(steps).unwrap();
            let t = s.timesteps().to_vec();
            prop_assert!(t.windows(2).all(|w| w[0] > w[1]));
            prop_assert!(t.iter().all(|&x| (0.0..1000.0).contains(&x)));
            for &prev in t.iter().skip(1).chain([0.0].iter()) {
                let s_t = s.intermediate_timestep(prev);
                prop_assert!((0.0..=prev).contains(&s_t));
            }
            let deterministic = TcdConfig::default().build().unwrap().with_gamma(0.0).unwrap();
            prop_assert_eq!(deterministic.intermediate_timestep(t[0]), t[0]);
            let full = TcdConfig::default().build().unwrap().with_gamma(1.0).unwrap();
            prop_assert_eq!(full.intermediate_timestep(t[0]), 0.0);
        }
    }
}
