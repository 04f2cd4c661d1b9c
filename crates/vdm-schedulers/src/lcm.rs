//! LCM, the multistep sampler of Latent Consistency Models (Luo et al. 2023, "Latent
//! Consistency Models: Synthesizing High-Resolution Images with Few-Step Inference", Algorithm
//! 3), mirroring diffusers' `scheduling_lcm.py`.
//!
//! Each step maps `x_t` to the consistency function's clean estimate
//! `f(x_t, t) = c_skip(t)·x_t + c_out(t)·x̂₀` (Song et al. 2023, "Consistency Models", eq. 7
//! with `σ_data = 0.5`), then re-noises it to the next timestep with fresh noise.

use burn::tensor::Tensor;
use serde::{Deserialize, Serialize};
use vdm_core::error::ensure_positive;
use vdm_core::layout::expect_same_shape;
use vdm_core::noise::draw;
use vdm_core::{Error, NoiseSource, PredictionType, Result};

use crate::ddpm::predicted_x0;
use crate::options::{BetaSchedule, TimestepSpacing};
use crate::prediction::{Scales, check_epsilon_timesteps};
use crate::schedule::{BetaConfig, NoiseSchedule};
use crate::scheduler::{Scheduler, StepOutput};
use crate::spacing::validate_steps;
use crate::threshold::SampleClipping;
use crate::torch_sqrt::torch_sqrt;

/// `σ_data` of the consistency boundary condition (fixed at 0.5 in diffusers).
const SIGMA_DATA: f32 = 0.5;

/// The fields of a diffusers `LCMScheduler` `scheduler_config.json`, with its defaults
/// (`scaled_linear` betas 0.00085 → 0.012, `original_inference_steps = 50`,
/// `timestep_scaling = 10`, no clipping). Keys missing from the JSON take these defaults,
/// flattened ones included.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, remote = "Self")]
pub struct LcmConfig {
    /// Training noise schedule.
    #[serde(flatten)]
    pub betas: BetaConfig,
    /// `x̂₀` clipping / thresholding.
    #[serde(flatten)]
    pub clipping: SampleClipping,
    /// Number of steps of the distillation schedule the inference timesteps are picked from.
    pub original_inference_steps: usize,
    /// Use `ᾱ = 1` after the last timestep (else `ᾱ_0`). Kept for config compatibility: the LCM
    /// step never reaches a negative timestep, so it has no effect.
    pub set_alpha_to_one: bool,
    /// Unused by LCM (its timesteps come from the distillation grid); kept for config
    /// compatibility.
    pub steps_offset: usize,
    /// What the model predicts.
    pub prediction_type: PredictionType,
    /// Unused by LCM (its timesteps come from the distillation grid); kept for config
    /// compatibility.
    pub timestep_spacing: TimestepSpacing,
    /// The factor on `t` in the boundary-condition scalings `c_skip`, `c_out`.
    pub timestep_scaling: f64,
}

impl Default for LcmConfig {
    fn default() -> Self {
        Self {
            betas: BetaConfig::sd(BetaSchedule::ScaledLinear),
            clipping: SampleClipping::default(),
            original_inference_steps: 50,
            set_alpha_to_one: true,
            steps_offset: 0,
            prediction_type: PredictionType::Epsilon,
            timestep_spacing: TimestepSpacing::Leading,
            timestep_scaling: 10.0,
        }
    }
}

crate::serde_defaults::serde_over_defaults!(LcmConfig);

impl LcmConfig {
    /// Checks the fields, naming the first bad one.
    pub fn validate(&self) -> Result<()> {
        self.betas.validate()?;
        self.clipping.validate()?;
        ensure_positive("timestep_scaling", self.timestep_scaling)?;
        let t = self.betas.num_train_timesteps;
        if !(1..=t).contains(&self.original_inference_steps) {
            return Err(Error::invalid(
                "original_inference_steps",
                format!(
                    "must be in 1..={t} (num_train_timesteps), got {}",
                    self.original_inference_steps
                ),
            ));
        }
        Ok(())
    }

    /// Builds the scheduler.
    pub fn build(&self) -> Result<Lcm> {
        Lcm::new(self.clone())
    }

    /// Builds the scheduler, boxed.
    pub fn build_boxed(&self) -> Result<Box<dyn Scheduler>> {
        Ok(Box::new(self.build()?))
    }
}

/// The LCM multistep sampler. Stateful like diffusers': the step index is taken from the
/// first timestep passed to [`Scheduler::step`] and then advances by one per step.
#[derive(Debug, Clone)]
pub struct Lcm {
    config: LcmConfig,
    schedule: NoiseSchedule,
    final_alpha_cumprod: f32,
    timesteps: Vec<f64>,
    step_index: Option<usize>,
    begin_index: Option<usize>,
}

impl Lcm {
    /// An LCM scheduler for `config`.
    pub fn new(config: LcmConfig) -> Result<Self> {
        config.validate()?;
        let schedule = NoiseSchedule::new(&config.betas)?;
        let final_alpha_cumprod = if config.set_alpha_to_one {
            1.0
        } else {
            schedule.alphas_cumprod[0]
        };
        Ok(Self {
            config,
            schedule,
            final_alpha_cumprod,
            timesteps: Vec::new(),
            step_index: None,
            begin_index: None,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &LcmConfig {
        &self.config
    }

    /// The index of the next step in [`Scheduler::timesteps`], once the first step is taken.
    pub fn step_index(&self) -> Option<usize> {
        self.step_index
    }

    /// Makes the first step start at schedule position `begin_index` instead of looking the
    /// timestep up (diffusers' `set_begin_index`, used by image-to-image pipelines). Reset by
    /// [`Scheduler::set_timesteps`].
    pub fn set_begin_index(&mut self, begin_index: usize) {
        self.begin_index = Some(begin_index);
    }

    /// The boundary-condition scalings `(c_skip, c_out)` at `timestep`, with `s = t·scaling`:
    /// `c_skip = σ_data²/(s² + σ_data²)`, `c_out = s/sqrt(s² + σ_data²)` (in `f32`, as diffusers
    /// computes them on the `int64` timestep tensor).
    pub fn boundary_scalings(&self, timestep: f64) -> (f32, f32) {
        let scaled = timestep as f32 * self.config.timestep_scaling as f32;
        let denominator = scaled * scaled + SIGMA_DATA * SIGMA_DATA;
        // torch evaluates `float / tensor` as `tensor.reciprocal() * float`.
        let c_skip = denominator.recip() * (SIGMA_DATA * SIGMA_DATA);
        let c_out = scaled / torch_sqrt(denominator);
        (c_skip, c_out)
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

    /// diffusers' `index_for_timestep`: the position of `timestep` in the schedule (the second
    /// one if it occurs twice).
    fn index_for_timestep(&self, timestep: f64) -> Result<usize> {
        let mut matches = self
            .timesteps
            .iter()
            .enumerate()
            .filter(|(_, t)| **t == timestep)
            .map(|(i, _)| i);
        let first = matches.next().ok_or_else(|| {
            Error::invalid(
                "timestep",
                format!("{timestep} is not one of the inference timesteps"),
            )
        })?;
        Ok(matches.next().unwrap_or(first))
    }

    fn alpha_at(&self, t: f64) -> Result<f32> {
        if t < 0.0 {
            return Ok(self.final_alpha_cumprod);
        }
        self.schedule.alpha_cumprod_at(t)
    }
}

/// The LCM inference timesteps: from the distillation grid `k·i − 1` (`i = 1..=orig`,
/// `k = T // orig`) reversed, the entries at `floor(linspace(0, orig, n, endpoint=False))`.
pub(crate) fn lcm_timesteps(
    num_inference_steps: usize,
    original_steps: usize,
    num_train_timesteps: usize,
) -> Result<Vec<f64>> {
    validate_steps(num_inference_steps, num_train_timesteps)?;
    if num_inference_steps > original_steps {
        return Err(Error::invalid(
            "num_inference_steps",
            format!(
                "{num_inference_steps} exceeds original_inference_steps ({original_steps}): LCM \
                 timesteps are a subset of the original_inference_steps schedule"
            ),
        ));
    }
    let k = num_train_timesteps / original_steps;
    let step = original_steps as f64 / num_inference_steps as f64;
    Ok((0..num_inference_steps)
        .map(|i| {
            let index = (i as f64 * step).floor() as usize;
            ((original_steps - index) * k - 1) as f64
        })
        .collect())
}

impl Scheduler for Lcm {
    fn set_timesteps(&mut self, num_inference_steps: usize) -> Result<()> {
        let timesteps = lcm_timesteps(
            num_inference_steps,
            self.config.original_inference_steps,
            self.schedule.num_train_timesteps(),
        )?;
        check_epsilon_timesteps(self.prediction_type(), &timesteps, |t| {
            self.schedule.alpha_cumprod_at(t)
        })?;
        self.timesteps = timesteps;
        self.step_index = None;
        self.begin_index = None;
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
        expect_same_shape("model_output", &model_output, &sample)?;
        if self.timesteps.is_empty() {
            return Err(Error::invalid(
                "num_inference_steps",
                "call set_timesteps before step",
            ));
        }
        let index = match (self.step_index, self.begin_index) {
            (Some(i), _) | (None, Some(i)) => i,
            (None, None) => self.index_for_timestep(timestep)?,
        };
        // As diffusers: no noise on the last step only (`step_index == num_inference_steps − 1`).
        let last = index + 1 == self.timesteps.len();
        let prev_t = self.timesteps.get(index + 1).copied().unwrap_or(timestep);
        let alpha_t = self.alpha_at(timestep)?;
        let alpha_prev = self.alpha_at(prev_t)?;

        let (c_skip, c_out) = self.boundary_scalings(timestep);
        let x0 = predicted_x0(
            self.config.prediction_type,
            model_output,
            sample.clone(),
            Scales::from_alpha_cumprod(alpha_t),
        )?;
        let x0 = self.config.clipping.apply(x0)?;
        let denoised = x0.mul_scalar(c_out) + sample.mul_scalar(c_skip);

        let prev = if last {
            denoised.clone()
        } else {
            let z: Tensor<5> = draw(noise, denoised.dims(), &denoised.device())?;
            let to = Scales::from_alpha_cumprod(alpha_prev);
            denoised.clone().mul_scalar(to.alpha as f32) + z.mul_scalar(to.sigma as f32)
        };
        self.step_index = Some(index + 1);
        Ok(StepOutput {
            prev_sample: prev,
            pred_original_sample: Some(denoised),
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
    use burn::tensor::Device;
    use vdm_core::noise::NoNoise;

    fn field_of(e: Error) -> String {
        match e {
            Error::InvalidConfig { field, .. } | Error::UnknownVariant { field, .. } => field,
            other => panic!("expected a config error, got {other}"),
        }
    }

    #[test]
    fn defaults_match_diffusers() {
        let c = LcmConfig::default();
        assert_eq!(c.betas.beta_schedule, BetaSchedule::ScaledLinear);
        assert_eq!(c.betas.beta_start, 0.00085);
        assert!(!c.clipping.clip_sample);
        assert!(c.set_alpha_to_one);
        assert_eq!(c.original_inference_steps, 50);
        assert_eq!(c.timestep_scaling, 10.0);
        let parsed = SchedulerConfig::from_json(r#"{"_class_name": "LCMScheduler"}"#).unwrap();
        assert_eq!(parsed, SchedulerConfig::Lcm(c));
        let json = r#"{"_class_name": "LCMScheduler", "beta_end": 0.02, "timestep_scaling": 5}"#;
        let SchedulerConfig::Lcm(parsed) = SchedulerConfig::from_json(json).unwrap() else {
            panic!("expected LCM");
        };
        assert_eq!(parsed.betas.beta_end, 0.02);
        assert_eq!(parsed.betas.beta_schedule, BetaSchedule::ScaledLinear);
        assert_eq!(parsed.timestep_scaling, 5.0);
    }

    #[test]
    fn reference_timesteps() {
        // shared/reference/algorithms.md §1.2 and shared/oracle gotcha 9.
        assert_eq!(
            lcm_timesteps(4, 50, 1000).unwrap(),
            [999., 759., 499., 259.]
        );
        assert_eq!(
            lcm_timesteps(8, 50, 1000).unwrap(),
            [999., 879., 759., 639., 499., 379., 259., 139.]
        );
        assert_eq!(lcm_timesteps(1, 50, 1000).unwrap(), [999.]);
        assert_eq!(lcm_timesteps(50, 50, 1000).unwrap().last(), Some(&19.0));
    }

    #[test]
    fn bad_configs_name_the_field() {
        let bad = |f: fn(&mut LcmConfig)| {
            let mut c = LcmConfig::default();
            f(&mut c);
            field_of(c.build().unwrap_err())
        };
        assert_eq!(
            bad(|c| c.original_inference_steps = 0),
            "original_inference_steps"
        );
        assert_eq!(
            bad(|c| c.original_inference_steps = 1001),
            "original_inference_steps"
        );
        assert_eq!(bad(|c| c.timestep_scaling = f64::NAN), "timestep_scaling");
        assert_eq!(bad(|c| c.timestep_scaling = -1.0), "timestep_scaling");
        assert_eq!(
            bad(|c| c.clipping.clip_sample_range = -1.0),
            "clip_sample_range"
        );
        assert_eq!(bad(|c| c.betas.beta_start = 0.5), "beta_start");
        let mut s = LcmConfig::default().build().unwrap();
        assert_eq!(
            field_of(s.set_timesteps(51).unwrap_err()),
            "num_inference_steps"
        );
        assert_eq!(
            field_of(s.set_timesteps(0).unwrap_err()),
            "num_inference_steps"
        );
        let x: Tensor<5> = Tensor::ones([1, 1, 1, 1, 1], &Device::flex());
        let e = s.step(x.clone(), 999.0, x, &mut NoNoise).unwrap_err();
        assert_eq!(field_of(e), "num_inference_steps");
    }

    #[test]
    fn step_index_and_last_step() {
        let mut s = LcmConfig::default().build().unwrap();
        s.set_timesteps(2).unwrap();
        let x: Tensor<5> = Tensor::ones([1, 1, 1, 1, 2], &Device::flex());
        assert!(s.step(x.clone(), 7.0, x.clone(), &mut NoNoise).is_err());
        assert_eq!(s.step_index(), None);
        // The first step draws noise, the last does not and returns `denoised`.
        assert!(s.step(x.clone(), 999.0, x.clone(), &mut NoNoise).is_err());
        s.set_begin_index(1);
        let out = s.step(x.clone(), 499.0, x, &mut NoNoise).unwrap();
        assert_eq!(s.step_index(), Some(2));
        let (c_skip, c_out) = s.boundary_scalings(499.0);
        assert!((c_skip - 0.25 / (4990.0f32 * 4990.0 + 0.25)).abs() < 1e-12);
        assert!((c_out - 1.0).abs() < 1e-6);
        let values = |t: Tensor<5>| t.to_data().convert::<f32>().try_to_vec::<f32>().unwrap();
        assert_eq!(
            values(out.prev_sample),
            values(out.pred_original_sample.unwrap())
        );
    }
}
