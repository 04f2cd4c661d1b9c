//! DDIM inversion: the deterministic DDIM path run backwards, from a clean latent video to the
//! noise that DDIM would turn back into it (Song et al. 2021, "Denoising Diffusion Implicit
//! Models", §4.3; used for video editing by Tune-A-Video, Wu et al. 2023, and by
//! structure-preserving edits). Mirrors diffusers' `DDIMInverseScheduler`
//! (`src/diffusers/schedulers/scheduling_ddim_inverse.py`).
//!
//! Timesteps ascend. A step to timestep `t` starts from the level `s = t − T//N` (`ᾱ_s` is
//! `1` or `ᾱ_0` before the first timestep, by `set_alpha_to_one`), reads the model's output
//! *at `t`* on the sample at `s` (the usual approximation `ε(x_s, t) ≈ ε(x_t, t)`), and moves
//! `x̂₀` and `ε̂` to level `t`:
//!
//! ```text
//! x_t = sqrt(ᾱ_t)·x̂₀ + sqrt(1 − ᾱ_t)·ε̂
//! ```
//!
//! Sampling the result with [`Ddim`](crate::Ddim) on the same timesteps (descending) and the
//! same model approximately reconstructs the input; the error shrinks with more steps.
//!
//! # Deviations from diffusers
//!
//! - `linspace` spacing is accepted (the ascending DDIM `linspace` timesteps: the spacing of
//!   AnimateDiff's DDIM config); diffusers' inverse raises for it.
//! - `trailing` with an inexact `T/N` keeps `N` timesteps (numpy's `arange` yields `N + 1`,
//!   the extra one being timestep −1), as our [`Ddim`](crate::Ddim).
//! - `x₀`-prediction with `ᾱ_s = 1` (the first step with `set_alpha_to_one`) divides by zero in
//!   diffusers (NaN); here it is [`Error::NonFinite`] before any work.

use burn::tensor::Tensor;
use serde::{Deserialize, Serialize};
use vdm_core::layout::expect_same_shape;
use vdm_core::{Error, NoiseSource, PredictionType, Result};

use crate::options::TimestepSpacing;
use crate::prediction::{Scales, to_x0_and_eps};
use crate::schedule::{BetaConfig, NoiseSchedule};
use crate::scheduler::{Scheduler, StepOutput};
use crate::spacing::discrete_timesteps;
use crate::threshold::SampleClipping;

/// The fields of a diffusers `DDIMInverseScheduler` `scheduler_config.json`, with its defaults
/// (linear betas 1e-4 → 0.02, `clip_sample = true`, `set_alpha_to_one = true`, `leading`
/// spacing). Keys missing from the JSON take these defaults, flattened ones included.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, remote = "Self")]
pub struct DdimInverseConfig {
    /// Training noise schedule.
    #[serde(flatten)]
    pub betas: BetaConfig,
    /// Clamp `x̂₀` to `±clip_sample_range`.
    pub clip_sample: bool,
    /// The clamp range of `clip_sample`.
    pub clip_sample_range: f64,
    /// Use `ᾱ = 1` for the level before the first timestep (else `ᾱ_0`).
    pub set_alpha_to_one: bool,
    /// Added to `leading` timesteps.
    pub steps_offset: usize,
    /// What the model predicts.
    pub prediction_type: PredictionType,
    /// How inference timesteps are spaced.
    pub timestep_spacing: TimestepSpacing,
}

impl Default for DdimInverseConfig {
    fn default() -> Self {
        Self {
            betas: BetaConfig::default(),
            clip_sample: true,
            clip_sample_range: 1.0,
            set_alpha_to_one: true,
            steps_offset: 0,
            prediction_type: PredictionType::Epsilon,
            timestep_spacing: TimestepSpacing::Leading,
        }
    }
}

crate::serde_defaults::serde_over_defaults!(DdimInverseConfig);

impl DdimInverseConfig {
    /// The inverse of a DDIM sampler's configuration (the same betas, spacing, offset,
    /// prediction type and clipping), as diffusers' `DDIMInverseScheduler.from_config(
    /// pipe.scheduler.config)`.
    pub fn from_ddim(ddim: &crate::DdimConfig) -> Self {
        Self {
            betas: ddim.betas.clone(),
            clip_sample: ddim.clipping.clip_sample,
            clip_sample_range: ddim.clipping.clip_sample_range,
            set_alpha_to_one: ddim.set_alpha_to_one,
            steps_offset: ddim.steps_offset,
            prediction_type: ddim.prediction_type,
            timestep_spacing: ddim.timestep_spacing,
        }
    }

    fn clipping(&self) -> SampleClipping {
        SampleClipping {
            clip_sample: self.clip_sample,
            clip_sample_range: self.clip_sample_range,
            ..SampleClipping::default()
        }
    }

    /// Builds the scheduler (without timesteps; call [`Scheduler::set_timesteps`]).
    ///
    /// # Errors
    /// The beta schedule's errors; [`Error::InvalidConfig`] naming `clip_sample_range`.
    pub fn build(&self) -> Result<DdimInverse> {
        DdimInverse::new(self.clone())
    }

    /// Builds the scheduler, boxed.
    pub fn build_boxed(&self) -> Result<Box<dyn Scheduler>> {
        Ok(Box::new(self.build()?))
    }
}

/// DDIM inversion (deterministic; draws no noise). Its [`Scheduler::timesteps`] ascend, and
/// [`Scheduler::step`] moves a sample to the *next, noisier* timestep.
#[derive(Debug, Clone)]
pub struct DdimInverse {
    config: DdimInverseConfig,
    clipping: SampleClipping,
    schedule: NoiseSchedule,
    initial_alpha_cumprod: f32,
    timesteps: Vec<f64>,
}

impl DdimInverse {
    /// A DDIM inverse scheduler for `config`.
    ///
    /// # Errors
    /// As [`DdimInverseConfig::build`].
    pub fn new(config: DdimInverseConfig) -> Result<Self> {
        let clipping = config.clipping();
        clipping.validate()?;
        let schedule = NoiseSchedule::new(&config.betas)?;
        let initial_alpha_cumprod = if config.set_alpha_to_one {
            1.0
        } else {
            schedule.alphas_cumprod[0]
        };
        Ok(Self {
            config,
            clipping,
            schedule,
            initial_alpha_cumprod,
            timesteps: Vec::new(),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &DdimInverseConfig {
        &self.config
    }

    /// The level a step to `timestep` starts from: `t − T//N` (diffusers, every spacing).
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] before [`Scheduler::set_timesteps`].
    pub fn source_timestep(&self, timestep: f64) -> Result<f64> {
        let n = self.timesteps.len();
        if n == 0 {
            return Err(Error::invalid(
                "num_inference_steps",
                "call set_timesteps before step",
            ));
        }
        let t = self.schedule.num_train_timesteps();
        Ok((timestep - (t / n) as f64).min((t - 1) as f64))
    }

    fn alpha_at(&self, t: f64) -> Result<f32> {
        if t < 0.0 {
            return Ok(self.initial_alpha_cumprod);
        }
        self.schedule.alpha_cumprod_at(t)
    }
}

impl Scheduler for DdimInverse {
    /// The DDIM timesteps of the spacing, ascending.
    fn set_timesteps(&mut self, num_inference_steps: usize) -> Result<()> {
        let mut timesteps = discrete_timesteps(
            self.config.timestep_spacing,
            num_inference_steps,
            self.schedule.num_train_timesteps(),
            self.config.steps_offset,
        )?;
        timesteps.reverse();
        self.timesteps = timesteps;
        Ok(())
    }

    fn timesteps(&self) -> &[f64] {
        &self.timesteps
    }

    // init_noise_sigma: the default 1 (inversion starts from a clean sample, not from noise).

    /// Moves `sample` (at the level before `timestep`) to `timestep`, given the model output at
    /// `timestep`. `pred_original_sample` is `x̂₀`.
    ///
    /// # Errors
    /// [`Error::NonFinite`] where the conversion of the model output divides by zero (see
    /// [`to_x0_and_eps`]); an error naming `num_inference_steps` before `set_timesteps`.
    fn step(
        &mut self,
        model_output: Tensor<5>,
        timestep: f64,
        sample: Tensor<5>,
        _noise: &mut dyn NoiseSource,
    ) -> Result<StepOutput> {
        expect_same_shape("model_output", &model_output, &sample)?;
        let source = self.source_timestep(timestep)?;
        let alpha_source = self.alpha_at(source)?;
        let alpha_target = self.alpha_at(timestep)?;
        let (x0, eps) = to_x0_and_eps(
            self.config.prediction_type,
            model_output,
            sample,
            Scales::from_alpha_cumprod(alpha_source),
        )?;
        let x0 = self.clipping.apply(x0)?;
        // diffusers: `(1 − ᾱ_t) ** 0.5 · ε̂ + ᾱ_t ** 0.5 · x̂₀` on f32 tensors (torch's root).
        let target = Scales::from_alpha_cumprod(alpha_target);
        let prev = x0.clone().mul_scalar(target.alpha as f32) + eps.mul_scalar(target.sigma as f32);
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

    fn inverts(&self) -> bool {
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
    use vdm_core::noise::NoNoise;

    use crate::options::BetaSchedule;
    use crate::{Ddim, DdimConfig};

    fn ddim_config(spacing: TimestepSpacing, pred: PredictionType) -> DdimConfig {
        DdimConfig {
            betas: BetaConfig::sd(BetaSchedule::ScaledLinear),
            clipping: SampleClipping::default(),
            set_alpha_to_one: false,
            steps_offset: 1,
            prediction_type: pred,
            timestep_spacing: spacing,
        }
    }

    #[test]
    fn defaults_are_diffusers_defaults() {
        let c: DdimInverseConfig = serde_json::from_str("{}").unwrap();
        assert_eq!(c, DdimInverseConfig::default());
        assert!(c.clip_sample && c.set_alpha_to_one);
        assert_eq!(c.timestep_spacing, TimestepSpacing::Leading);
    }

    #[test]
    fn timesteps_are_ddims_reversed() {
        for spacing in [
            TimestepSpacing::Leading,
            TimestepSpacing::Trailing,
            TimestepSpacing::Linspace,
        ] {
            let ddim_cfg = ddim_config(spacing, PredictionType::Epsilon);
            let mut ddim = Ddim::new(ddim_cfg.clone()).unwrap();
            let mut inv = DdimInverseConfig::from_ddim(&ddim_cfg).build().unwrap();
            for n in [1, 7, 25, 227] {
                ddim.set_timesteps(n).unwrap();
                inv.set_timesteps(n).unwrap();
                let mut forward = ddim.timesteps().to_vec();
                forward.reverse();
                assert_eq!(inv.timesteps(), forward.as_slice(), "{spacing:?} {n}");
            }
        }
    }

    #[test]
    fn sample_prediction_from_alpha_one_is_a_typed_error() {
        let mut inv = DdimInverseConfig {
            prediction_type: PredictionType::Sample,
            ..DdimInverseConfig::default()
        }
        .build()
        .unwrap();
        inv.set_timesteps(10).unwrap();
        let x = Tensor::<5>::zeros([1, 1, 1, 2, 2], &Device::flex());
        let t = inv.timesteps()[0];
        let e = inv.step(x.clone(), t, x, &mut NoNoise).unwrap_err();
        assert!(matches!(e, Error::NonFinite { .. }), "{e}");
    }

    /// DDIM inverted, then sampled again with the exact ε-predictor of Gaussian data
    /// `x₀ ~ N(0, s²)` (`ε̂(x, t) = sqrt(1 − ᾱ)·x / (ᾱ·s² + 1 − ᾱ)`, whose probability-flow ODE
    /// DDIM discretises): the latent has the marginal's unit variance at `T`, and the
    /// reconstruction error is small and shrinks with the number of steps.
    fn round_trip(spacing: TimestepSpacing, steps: usize) -> (f32, f32) {
        let device = Device::flex();
        let s2 = 0.25f32;
        let values: Vec<f32> = (0..96)
            .map(|i| ((i * 37) % 23) as f32 / 22.0 - 0.5)
            .collect();
        let x0 = Tensor::<5>::from_data(TensorData::new(values, [1, 2, 3, 4, 4]), &device);
        let mut cfg = ddim_config(spacing, PredictionType::Epsilon);
        cfg.set_alpha_to_one = true;
        let mut ddim = Ddim::new(cfg.clone()).unwrap();
        let mut inv = DdimInverseConfig::from_ddim(&cfg).build().unwrap();
        ddim.set_timesteps(steps).unwrap();
        inv.set_timesteps(steps).unwrap();
        let schedule = ddim.noise_schedule().clone();
        let model = |x: &Tensor<5>, t: f64| {
            let a = schedule.alpha_cumprod_at(t).unwrap();
            x.clone().mul_scalar((1.0 - a).sqrt() / (a * s2 + 1.0 - a))
        };
        let mut x = x0.clone();
        for t in inv.timesteps().to_vec() {
            let out = model(&x, t);
            x = inv.step(out, t, x, &mut NoNoise).unwrap().prev_sample;
        }
        // The data's std is 0.29 (uniform on [-0.5, 0.5]); at T the marginal is ~N(0, 1), so
        // the latent's RMS is about 0.29 / 0.5 = 0.58 of the prior's, scaled as the ODE does.
        let latent_rms: f32 = x.clone().powf_scalar(2.0).mean().sqrt().into_scalar();
        for t in ddim.timesteps().to_vec() {
            let out = model(&x, t);
            x = ddim.step(out, t, x, &mut NoNoise).unwrap().prev_sample;
        }
        let err: f32 = (x - x0).abs().max().into_scalar();
        (latent_rms, err)
    }

    #[test]
    fn invert_then_sample_reconstructs_the_input() {
        for spacing in [TimestepSpacing::Leading, TimestepSpacing::Trailing] {
            let (rms, err50) = round_trip(spacing, 50);
            let (_, err10) = round_trip(spacing, 10);
            assert!((0.4..0.8).contains(&rms), "{spacing:?}: latent rms {rms}");
            assert!(err50 < 0.02, "{spacing:?}: error at 50 steps {err50}");
            assert!(
                err50 < err10,
                "{spacing:?}: {err50} (50 steps) vs {err10} (10)"
            );
        }
    }
}
