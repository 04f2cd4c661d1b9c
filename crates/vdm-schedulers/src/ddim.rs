//! DDIM (Song et al. 2021, "Denoising Diffusion Implicit Models"), mirroring diffusers'
//! `scheduling_ddim.py`.

use burn::tensor::Tensor;
use serde::{Deserialize, Serialize};
use vdm_core::error::ensure_non_negative;
use vdm_core::layout::expect_same_shape;
use vdm_core::noise::draw;
use vdm_core::{Error, NoiseSource, PredictionType, Result};

use crate::options::TimestepSpacing;
use crate::prediction::{Scales, check_epsilon_timesteps, to_x0_and_eps};
use crate::schedule::{BetaConfig, NoiseSchedule};
use crate::scheduler::{Scheduler, StepOutput};
use crate::spacing::discrete_timesteps;
use crate::threshold::SampleClipping;

/// The fields of a diffusers `DDIMScheduler` `scheduler_config.json`, with its defaults
/// (linear betas 1e-4 → 0.02, `clip_sample = true`, `set_alpha_to_one = true`, `leading`
/// spacing). Keys missing from the JSON take these defaults, flattened ones included.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, remote = "Self")]
pub struct DdimConfig {
    /// Training noise schedule.
    #[serde(flatten)]
    pub betas: BetaConfig,
    /// `x̂₀` clipping / thresholding.
    #[serde(flatten)]
    pub clipping: SampleClipping,
    /// Use `ᾱ = 1` for the step after the last timestep (else `ᾱ_0`).
    pub set_alpha_to_one: bool,
    /// Added to `leading` timesteps.
    pub steps_offset: usize,
    /// What the model predicts.
    pub prediction_type: PredictionType,
    /// How inference timesteps are spaced.
    pub timestep_spacing: TimestepSpacing,
}

impl Default for DdimConfig {
    fn default() -> Self {
        Self {
            betas: BetaConfig::default(),
            clipping: SampleClipping {
                clip_sample: true,
                ..SampleClipping::default()
            },
            set_alpha_to_one: true,
            steps_offset: 0,
            prediction_type: PredictionType::Epsilon,
            timestep_spacing: TimestepSpacing::Leading,
        }
    }
}

crate::config::serde_over_defaults!(DdimConfig);

impl DdimConfig {
    /// Builds the scheduler.
    pub fn build(&self) -> Result<Ddim> {
        Ddim::new(self.clone())
    }
}

/// The DDIM sampler. `eta = 0` (the default) is deterministic; `eta = 1` is DDPM-like.
#[derive(Debug, Clone)]
pub struct Ddim {
    config: DdimConfig,
    schedule: NoiseSchedule,
    final_alpha_cumprod: f32,
    timesteps: Vec<f64>,
    /// Stochasticity `η ∈ [0, 1]` (diffusers' `step(eta=...)`).
    eta: f64,
    /// Recompute `ε̂` from the clipped `x̂₀` (diffusers' `use_clipped_model_output`).
    use_clipped_model_output: bool,
}

impl Ddim {
    /// A DDIM scheduler for `config`.
    pub fn new(config: DdimConfig) -> Result<Self> {
        config.clipping.validate()?;
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
            eta: 0.0,
            use_clipped_model_output: false,
        })
    }

    /// Sets `η` (0 = deterministic DDIM, 1 = DDPM-like ancestral sampling).
    pub fn with_eta(mut self, eta: f64) -> Result<Self> {
        ensure_non_negative("eta", eta)?;
        self.eta = eta;
        Ok(self)
    }

    /// Recomputes `ε̂` from the clipped `x̂₀` (diffusers' `use_clipped_model_output`).
    pub fn with_clipped_model_output(mut self, on: bool) -> Self {
        self.use_clipped_model_output = on;
        self
    }

    /// The configuration.
    pub fn config(&self) -> &DdimConfig {
        &self.config
    }

    /// `ᾱ` used after the last timestep.
    pub fn final_alpha_cumprod(&self) -> f32 {
        self.final_alpha_cumprod
    }

    /// The previous timestep of DDIM: `t − T//N` for every spacing (diffusers behaviour).
    pub fn previous_timestep(&self, timestep: f64) -> Result<f64> {
        let n = self.timesteps.len();
        if n == 0 {
            return Err(Error::invalid(
                "num_inference_steps",
                "call set_timesteps before step",
            ));
        }
        Ok(timestep - (self.schedule.num_train_timesteps() / n) as f64)
    }

    fn alpha_at(&self, t: f64) -> Result<f32> {
        if t < 0.0 {
            return Ok(self.final_alpha_cumprod);
        }
        self.schedule.alpha_cumprod_at(t)
    }
}

impl Scheduler for Ddim {
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
        expect_same_shape("model_output", &model_output, &sample)?;
        let prev_t = self.previous_timestep(timestep)?;
        let alpha_t = self.alpha_at(timestep)?;
        let alpha_prev = self.alpha_at(prev_t)? as f64;
        let scales = Scales::from_alpha_cumprod(alpha_t);
        let (x0, mut eps) = to_x0_and_eps(
            self.config.prediction_type,
            model_output,
            sample.clone(),
            scales,
        )?;
        let x0 = self.config.clipping.apply(x0)?;

        // As diffusers' `_get_variance`, in f32.
        let a_prev32 = alpha_prev as f32;
        let variance = (1.0 - a_prev32) / (1.0 - alpha_t) * (1.0 - alpha_t / a_prev32);
        let std_dev = (self.eta as f32 * variance.sqrt()) as f64;

        if self.use_clipped_model_output {
            eps = (sample - x0.clone().mul_scalar(scales.alpha as f32))
                .div_scalar(scales.sigma as f32);
        }
        let direction = (1.0 - a_prev32 - (std_dev * std_dev) as f32)
            .max(0.0)
            .sqrt();
        let mut prev = x0.clone().mul_scalar(a_prev32.sqrt()) + eps.mul_scalar(direction);
        if self.eta > 0.0 {
            let z: Tensor<5> = draw(noise, prev.dims(), &prev.device())?;
            prev = prev + z.mul_scalar(std_dev as f32);
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
