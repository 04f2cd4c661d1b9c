//! DDPM (Ho et al. 2020, "Denoising Diffusion Probabilistic Models"), ancestral sampling from
//! the posterior `q(x_{t−1} | x_t, x̂₀)`, mirroring diffusers' `scheduling_ddpm.py`.
//!
//! The learned-variance types follow Nichol & Dhariwal 2021, "Improved Denoising Diffusion
//! Probabilistic Models" (the model's extra output channels give the variance).

use burn::tensor::Tensor;
use serde::{Deserialize, Serialize};
use vdm_core::layout::expect_same_shape;
use vdm_core::noise::draw;
use vdm_core::{Error, NoiseSource, PredictionType, Result};

use crate::options::{TimestepSpacing, VarianceType};
use crate::prediction::{Scales, check_epsilon_timesteps, epsilon_without_signal};
use crate::schedule::{BetaConfig, NoiseSchedule};
use crate::scheduler::{Scheduler, StepOutput};
use crate::spacing::discrete_timesteps;
use crate::threshold::SampleClipping;
use crate::torch_sqrt::torch_sqrt;

/// The fields of a diffusers `DDPMScheduler` `scheduler_config.json`, with its defaults
/// (linear betas 1e-4 → 0.02, `fixed_small` variance, `clip_sample = true`, `leading`
/// spacing). Keys missing from the JSON take these defaults, flattened ones included.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, remote = "Self")]
pub struct DdpmConfig {
    /// Training noise schedule.
    #[serde(flatten)]
    pub betas: BetaConfig,
    /// `x̂₀` clipping / thresholding.
    #[serde(flatten)]
    pub clipping: SampleClipping,
    /// Variance of the ancestral noise.
    pub variance_type: VarianceType,
    /// What the model predicts.
    pub prediction_type: PredictionType,
    /// How inference timesteps are spaced.
    pub timestep_spacing: TimestepSpacing,
    /// Added to `leading` timesteps.
    pub steps_offset: usize,
}

impl Default for DdpmConfig {
    fn default() -> Self {
        Self {
            betas: BetaConfig::default(),
            clipping: SampleClipping {
                clip_sample: true,
                ..SampleClipping::default()
            },
            variance_type: VarianceType::FixedSmall,
            prediction_type: PredictionType::Epsilon,
            timestep_spacing: TimestepSpacing::Leading,
            steps_offset: 0,
        }
    }
}

crate::serde_defaults::serde_over_defaults!(DdpmConfig);

impl DdpmConfig {
    /// Builds the scheduler.
    pub fn build(&self) -> Result<Ddpm> {
        Ddpm::new(self.clone())
    }

    /// Builds the scheduler, boxed.
    pub fn build_boxed(&self) -> Result<Box<dyn Scheduler>> {
        Ok(Box::new(self.build()?))
    }
}

/// The DDPM ancestral sampler: `x_{t−1} = μ̃_t(x_t, x̂₀) + σ_t·z` (Ho et al. 2020, eq. 6–7),
/// where the previous timestep is the next entry of the inference schedule. Noise is drawn on
/// every step with `t > 0`.
///
/// One deliberate difference from diffusers: with `variance_type = "fixed_large_log"`
/// diffusers takes the square root of `log β_t` (NaN); this sampler treats `log β_t` as the
/// log-variance it is (GLIDE's `max_log`), i.e. `σ_t = exp(½·log β_t) = √β_t`.
#[derive(Debug, Clone)]
pub struct Ddpm {
    config: DdpmConfig,
    schedule: NoiseSchedule,
    timesteps: Vec<f64>,
}

/// The per-step scalars of diffusers' `DDPMScheduler.step`, in `f32` as diffusers computes
/// them on 0-d `float32` tensors.
#[derive(Debug, Clone, Copy)]
struct StepCoefficients {
    /// `ᾱ_t`.
    alpha_prod_t: f32,
    /// `ᾱ_{prev}` (1 after the last step).
    alpha_prod_t_prev: f32,
    /// `β_t = 1 − ᾱ_t/ᾱ_{prev}`.
    current_beta_t: f32,
}

impl StepCoefficients {
    fn new(alpha_prod_t: f32, alpha_prod_t_prev: f32) -> Self {
        Self {
            alpha_prod_t,
            alpha_prod_t_prev,
            current_beta_t: 1.0 - alpha_prod_t / alpha_prod_t_prev,
        }
    }

    /// `(√ᾱ_prev·β_t/(1 − ᾱ_t), √α_t·(1 − ᾱ_prev)/(1 − ᾱ_t))`: the weights of `x̂₀` and `x_t`
    /// in the posterior mean.
    fn mean_coefficients(&self) -> (f32, f32) {
        let beta_prod_t = 1.0 - self.alpha_prod_t;
        let beta_prod_t_prev = 1.0 - self.alpha_prod_t_prev;
        let current_alpha_t = self.alpha_prod_t / self.alpha_prod_t_prev;
        (
            torch_sqrt(self.alpha_prod_t_prev) * self.current_beta_t / beta_prod_t,
            torch_sqrt(current_alpha_t) * beta_prod_t_prev / beta_prod_t,
        )
    }

    /// The posterior variance `β̃_t = (1 − ᾱ_prev)/(1 − ᾱ_t)·β_t`, clamped at `1e-20`.
    fn posterior_variance(&self) -> f32 {
        ((1.0 - self.alpha_prod_t_prev) / (1.0 - self.alpha_prod_t) * self.current_beta_t)
            .max(1e-20)
    }
}

impl Ddpm {
    /// A DDPM scheduler for `config`.
    pub fn new(config: DdpmConfig) -> Result<Self> {
        config.clipping.validate()?;
        let schedule = NoiseSchedule::new(&config.betas)?;
        Ok(Self {
            config,
            schedule,
            timesteps: Vec::new(),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &DdpmConfig {
        &self.config
    }

    /// The timestep after `timestep`: the next entry of the inference schedule (`−1` after the
    /// last one, where `ᾱ = 1`), or `timestep − 1` before [`Scheduler::set_timesteps`] (the
    /// full training chain), as diffusers' `previous_timestep`.
    ///
    /// Errors when the schedule is set and does not contain `timestep`.
    pub fn previous_timestep(&self, timestep: f64) -> Result<f64> {
        if self.timesteps.is_empty() {
            return Ok(timestep - 1.0);
        }
        let index = self
            .timesteps
            .iter()
            .position(|&t| t == timestep)
            .ok_or_else(|| {
                Error::invalid(
                    "timestep",
                    format!("{timestep} is not one of the inference timesteps"),
                )
            })?;
        Ok(self.timesteps.get(index + 1).copied().unwrap_or(-1.0))
    }

    /// The velocity target `v = √ᾱ_t·ε − √(1 − ᾱ_t)·x₀` (Salimans & Ho 2022; diffusers'
    /// `get_velocity`).
    ///
    /// # Shapes
    /// `x0` and `noise`: the same shape; the output likewise.
    pub fn get_velocity(
        &self,
        x0: Tensor<5>,
        noise: Tensor<5>,
        timestep: f64,
    ) -> Result<Tensor<5>> {
        self.schedule.velocity(x0, noise, timestep)
    }

    fn alpha_at(&self, t: f64) -> Result<f32> {
        if t < 0.0 {
            return Ok(1.0);
        }
        self.schedule.alpha_cumprod_at(t)
    }

    /// Splits a learned-variance model output `[B, 2C, ...]` into the prediction and the
    /// variance channels; other variance types need an output shaped like the sample.
    fn split_model_output(
        &self,
        model_output: Tensor<5>,
        sample: &Tensor<5>,
    ) -> Result<(Tensor<5>, Option<Tensor<5>>)> {
        let learned = matches!(
            self.config.variance_type,
            VarianceType::Learned | VarianceType::LearnedRange
        );
        if !learned {
            expect_same_shape("model_output", &model_output, sample)?;
            return Ok((model_output, None));
        }
        let [b, c, f, h, w] = sample.dims();
        if model_output.dims() != [b, 2 * c, f, h, w] {
            return Err(Error::shape(
                "model_output",
                format!(
                    "[{b}, {}, {f}, {h}, {w}] (prediction and variance channels, variance_type \
                     \"{}\")",
                    2 * c,
                    self.config.variance_type
                ),
                &model_output.dims(),
            ));
        }
        let variance = model_output.clone().narrow(1, c, c);
        Ok((model_output.narrow(1, 0, c), Some(variance)))
    }

    /// The noise term `σ_t·z` for the configured variance type (diffusers' `_get_variance`
    /// and the `t > 0` branch of `step`).
    fn noise_term(
        &self,
        coefficients: StepCoefficients,
        predicted_variance: Option<Tensor<5>>,
        z: Tensor<5>,
    ) -> Tensor<5> {
        let beta = coefficients.current_beta_t;
        let std = match (self.config.variance_type, predicted_variance) {
            (VarianceType::Learned, Some(v)) => return z * v.sqrt(),
            (VarianceType::LearnedRange, Some(v)) => {
                let min_log = coefficients.posterior_variance().ln();
                let max_log = beta.ln();
                let frac = v.add_scalar(1.0f32).div_scalar(2.0f32);
                let log_variance = frac.clone().mul_scalar(max_log)
                    + frac.neg().add_scalar(1.0f32).mul_scalar(min_log);
                return z * log_variance.mul_scalar(0.5f32).exp();
            }
            (VarianceType::FixedSmall, _) => torch_sqrt(coefficients.posterior_variance()),
            (VarianceType::FixedSmallLog, _) => {
                (0.5f32 * coefficients.posterior_variance().ln()).exp()
            }
            (VarianceType::FixedLarge, _) => torch_sqrt(beta),
            // diffusers takes `sqrt(log β_t)` here (NaN); we use the log-variance as intended.
            (VarianceType::FixedLargeLog, _) => (0.5f32 * beta.ln()).exp(),
            (VarianceType::Learned | VarianceType::LearnedRange, None) => {
                unreachable!("split_model_output returns the variance channels")
            }
        };
        z.mul_scalar(std)
    }
}

/// `x̂₀` from a model output as diffusers' DDPM / LCM `step` computes it (only `x̂₀`, no `ε̂`).
///
/// Errors with [`Error::NonFinite`] for `ε`-prediction at `ᾱ_t = 0` (zero terminal SNR), where
/// diffusers divides by zero.
pub(crate) fn predicted_x0(
    prediction_type: PredictionType,
    model_output: Tensor<5>,
    sample: Tensor<5>,
    s: Scales,
) -> Result<Tensor<5>> {
    Ok(match prediction_type {
        PredictionType::Epsilon => {
            if s.alpha == 0.0 {
                return Err(epsilon_without_signal("pred_original_sample"));
            }
            (sample - model_output.mul_scalar(s.sigma as f32)).div_scalar(s.alpha as f32)
        }
        PredictionType::Sample => model_output,
        PredictionType::VPrediction => {
            sample.mul_scalar(s.alpha as f32) - model_output.mul_scalar(s.sigma as f32)
        }
    })
}

impl Scheduler for Ddpm {
    fn set_timesteps(&mut self, num_inference_steps: usize) -> Result<()> {
        let timesteps = discrete_timesteps(
            self.config.timestep_spacing,
            num_inference_steps,
            self.schedule.num_train_timesteps(),
            self.config.steps_offset,
        )?;
        check_epsilon_timesteps(self.prediction_type(), &timesteps, |t| {
            self.schedule.alpha_cumprod_at(t)
        })?;
        self.timesteps = timesteps;
        Ok(())
    }

    fn timesteps(&self) -> &[f64] {
        &self.timesteps
    }

    fn step(
        &mut self,
        model_output: Tensor<5>,
        timestep: f64,
        sample: Tensor<5>,
        noise: &mut dyn NoiseSource,
    ) -> Result<StepOutput> {
        let (model_output, predicted_variance) = self.split_model_output(model_output, &sample)?;
        let prev_t = self.previous_timestep(timestep)?;
        let coefficients = StepCoefficients::new(self.alpha_at(timestep)?, self.alpha_at(prev_t)?);
        let scales = Scales::from_alpha_cumprod(coefficients.alpha_prod_t);
        let x0 = predicted_x0(
            self.config.prediction_type,
            model_output,
            sample.clone(),
            scales,
        )?;
        let x0 = self.config.clipping.apply(x0)?;

        let (x0_coeff, sample_coeff) = coefficients.mean_coefficients();
        let mut prev = x0.clone().mul_scalar(x0_coeff) + sample.mul_scalar(sample_coeff);
        if timestep > 0.0 {
            let z: Tensor<5> = draw(noise, prev.dims(), &prev.device())?;
            prev = prev + self.noise_term(coefficients, predicted_variance, z);
        }
        Ok(StepOutput {
            prev_sample: prev,
            pred_original_sample: Some(x0),
        })
    }

    fn add_noise(&self, original: Tensor<5>, noise: Tensor<5>, timestep: f64) -> Result<Tensor<5>> {
        self.schedule.add_noise(original, noise, timestep)
    }

    fn prediction_type(&self) -> PredictionType {
        self.config.prediction_type
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
    use burn::tensor::{Device, TensorData};
    use vdm_core::noise::{NoNoise, SeededNoise};

    fn field_of(e: Error) -> String {
        match e {
            Error::InvalidConfig { field, .. } | Error::UnknownVariant { field, .. } => field,
            other => panic!("expected a config error, got {other}"),
        }
    }

    fn ones(dims: [usize; 5]) -> Tensor<5> {
        Tensor::ones(dims, &Device::flex())
    }

    #[test]
    fn defaults_match_diffusers() {
        let c = DdpmConfig::default();
        assert!(c.clipping.clip_sample);
        assert_eq!(c.variance_type, VarianceType::FixedSmall);
        assert_eq!(c.betas.beta_end, 0.02);
        let parsed = SchedulerConfig::from_json(r#"{"_class_name": "DDPMScheduler"}"#).unwrap();
        assert_eq!(parsed, SchedulerConfig::Ddpm(c.clone()));
        // Given keys override, flattened or not; unknown keys are ignored.
        let json = r#"{"_class_name": "DDPMScheduler", "_diffusers_version": "0.42.1",
            "clip_sample": false, "beta_schedule": "scaled_linear", "steps_offset": 1}"#;
        let SchedulerConfig::Ddpm(parsed) = SchedulerConfig::from_json(json).unwrap() else {
            panic!("expected DDPM");
        };
        assert!(!parsed.clipping.clip_sample);
        assert_eq!(
            parsed.betas.beta_schedule,
            crate::BetaSchedule::ScaledLinear
        );
        assert_eq!(parsed.steps_offset, 1);
        assert_eq!(parsed.betas.beta_end, 0.02);
        let round_trip: DdpmConfig =
            serde_json::from_value(serde_json::to_value(&parsed).unwrap()).unwrap();
        assert_eq!(round_trip, parsed);
        let tagged = serde_json::to_string(&SchedulerConfig::Ddpm(parsed.clone())).unwrap();
        assert_eq!(
            SchedulerConfig::from_json(&tagged).unwrap(),
            SchedulerConfig::Ddpm(parsed)
        );
    }

    #[test]
    fn bad_configs_name_the_field() {
        let bad = |f: fn(&mut DdpmConfig)| {
            let mut c = DdpmConfig::default();
            f(&mut c);
            field_of(c.build().unwrap_err())
        };
        assert_eq!(
            bad(|c| c.clipping.clip_sample_range = 0.0),
            "clip_sample_range"
        );
        assert_eq!(
            bad(|c| c.clipping.sample_max_value = f64::NAN),
            "sample_max_value"
        );
        assert_eq!(
            bad(|c| c.clipping.dynamic_thresholding_ratio = 1.5),
            "dynamic_thresholding_ratio"
        );
        assert_eq!(bad(|c| c.betas.beta_end = -0.1), "beta_end");
        assert_eq!(
            bad(|c| c.betas.num_train_timesteps = 1),
            "num_train_timesteps"
        );
        let e = SchedulerConfig::from_json(
            r#"{"_class_name": "DDPMScheduler", "variance_type": "fixed"}"#,
        )
        .unwrap_err();
        assert!(e.to_string().contains("variance_type"), "{e}");
        let mut s = DdpmConfig {
            steps_offset: 100,
            ..DdpmConfig::default()
        }
        .build()
        .unwrap();
        assert_eq!(field_of(s.set_timesteps(10).unwrap_err()), "steps_offset");
        assert_eq!(
            field_of(s.set_timesteps(0).unwrap_err()),
            "num_inference_steps"
        );
    }

    #[test]
    fn previous_timestep_is_the_next_entry() {
        let mut s = DdpmConfig {
            timestep_spacing: TimestepSpacing::Linspace,
            ..DdpmConfig::default()
        }
        .build()
        .unwrap();
        assert_eq!(s.previous_timestep(500.0).unwrap(), 499.0);
        s.set_timesteps(25).unwrap();
        assert_eq!(s.previous_timestep(957.0).unwrap(), 916.0);
        assert_eq!(s.previous_timestep(0.0).unwrap(), -1.0);
        assert_eq!(
            field_of(s.previous_timestep(958.0).unwrap_err()),
            "timestep"
        );
    }

    fn values(t: Tensor<5>) -> Vec<f32> {
        t.to_data().convert::<f32>().try_to_vec::<f32>().unwrap()
    }

    fn run_step(variance_type: VarianceType, model_output: Tensor<5>, seed: u64) -> Vec<f32> {
        let mut s = DdpmConfig {
            variance_type,
            clipping: SampleClipping::default(),
            ..DdpmConfig::default()
        }
        .build()
        .unwrap();
        s.set_timesteps(10).unwrap();
        let x = ones([1, 2, 1, 2, 2]);
        let out = s.step(model_output, 900.0, x, &mut SeededNoise::new(seed));
        values(out.unwrap().prev_sample)
    }

    fn assert_close(a: &[f32], b: &[f32]) {
        for (x, y) in a.iter().zip(b) {
            assert!((x - y).abs() < 1e-5, "{x} vs {y}");
        }
    }

    #[test]
    fn learned_variance_splits_the_channels() {
        let x = ones([1, 2, 1, 2, 2]);
        let mut s = DdpmConfig {
            variance_type: VarianceType::Learned,
            ..DdpmConfig::default()
        }
        .build()
        .unwrap();
        s.set_timesteps(10).unwrap();
        let e = s
            .step(x.clone(), 900.0, x.clone(), &mut NoNoise)
            .unwrap_err();
        assert!(matches!(e, Error::Shape { .. }), "{e}");

        let with_variance = |v: f32| Tensor::cat(vec![x.clone(), x.clone().mul_scalar(v)], 1);
        // `learned` with zero variance is the posterior mean, whatever the noise.
        assert_close(
            &run_step(VarianceType::Learned, with_variance(0.0), 1),
            &run_step(VarianceType::Learned, with_variance(0.0), 2),
        );
        // `learned_range` interpolates log β̃_t (frac 0) .. log β_t (frac 1).
        assert_close(
            &run_step(VarianceType::LearnedRange, with_variance(1.0), 3),
            &run_step(VarianceType::FixedLarge, x.clone(), 3),
        );
        assert_close(
            &run_step(VarianceType::LearnedRange, with_variance(-1.0), 4),
            &run_step(VarianceType::FixedSmall, x.clone(), 4),
        );
        assert_close(
            &run_step(VarianceType::FixedSmallLog, x.clone(), 5),
            &run_step(VarianceType::FixedSmall, x.clone(), 5),
        );
        assert_close(
            &run_step(VarianceType::FixedLargeLog, x.clone(), 6),
            &run_step(VarianceType::FixedLarge, x.clone(), 6),
        );
    }

    #[test]
    fn no_noise_at_t0_and_velocity() {
        let mut s = DdpmConfig {
            timestep_spacing: TimestepSpacing::Linspace,
            ..DdpmConfig::default()
        }
        .build()
        .unwrap();
        s.set_timesteps(5).unwrap();
        let x = ones([1, 1, 1, 1, 2]);
        s.step(x.clone(), 0.0, x.clone(), &mut NoNoise).unwrap();
        let a = s.noise_schedule().alphas_cumprod[250];
        let v = s.get_velocity(x.clone(), x.mul_scalar(2.0), 250.0).unwrap();
        let v = values(v);
        let expect = 2.0 * a.sqrt() - (1.0 - a).sqrt();
        assert!((v[0] - expect).abs() < 1e-6);
        let data = TensorData::new(vec![0.5f32; 2], [1, 1, 1, 1, 2]);
        let half = Tensor::<5>::from_data(data, &Device::flex());
        assert!(s.get_velocity(half, ones([1, 1, 1, 2, 1]), 250.0).is_err());
    }
}
