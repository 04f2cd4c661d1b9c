//! The small trait every scheduler implements (after candle's `stable_diffusion::schedulers`
//! and diffusers' `SchedulerMixin`).

use burn::tensor::Tensor;
use vdm_core::{NoiseSource, PredictionType, Result};

use crate::schedule::NoiseSchedule;

/// What one [`Scheduler::step`] returns.
#[derive(Debug, Clone)]
pub struct StepOutput {
    /// The sample at the next (less noisy) timestep, `x_{t−1}`.
    pub prev_sample: Tensor<5>,
    /// The scheduler's estimate of the clean sample `x̂₀` at this step (LCM: its `denoised`),
    /// if it computes one.
    pub pred_original_sample: Option<Tensor<5>>,
}

/// A diffusion sampler: a sequence of timesteps and an update rule.
///
/// The usual loop is:
///
/// ```text
/// scheduler.set_timesteps(n)?;
/// let mut x = initial_noise * scheduler.init_noise_sigma();
/// for &t in scheduler.timesteps().to_vec().iter() {
///     let x_in = scheduler.scale_model_input(x.clone(), t)?;
///     let out = model(x_in, t);
///     x = scheduler.step(out, t, x, &mut noise)?.prev_sample;
/// }
/// ```
///
/// Two-stage samplers (Heun) need two model calls per step. They list every timestep after
/// the first twice, and each [`Scheduler::step`] consumes one model output: the first call of a
/// pair returns the predictor's sample, which the model must see next, the second the
/// corrected one. The loop above drives them unchanged; count model calls as
/// `timesteps().len()`, not as the number of steps.
///
/// Scheduler state (multistep history, step index) is part of the value: clone a scheduler
/// (see [`Scheduler::box_clone`]) to keep separate state per frame window.
///
/// Timesteps are `f64` training-timestep values (integers for DDIM / DDPM / DPM-Solver /
/// LCM, possibly fractional for Euler).
pub trait Scheduler: Send + Sync + std::fmt::Debug {
    /// Computes the inference timesteps for `num_inference_steps` steps and resets any
    /// multistep state.
    fn set_timesteps(&mut self, num_inference_steps: usize) -> Result<()>;

    /// The inference timesteps, in sampling order (descending). Empty until
    /// [`Scheduler::set_timesteps`] is called.
    fn timesteps(&self) -> &[f64];

    /// The standard deviation of the initial noise: multiply unit Gaussian noise by it. 1 (the
    /// default) for variance-preserving schedulers; sigma-space schedulers (Euler and its
    /// family) override it with their largest sigma.
    fn init_noise_sigma(&self) -> f64 {
        1.0
    }

    /// Scales the sample before it is fed to the model: the identity (the default) for
    /// variance-preserving schedulers; sigma-space schedulers such as Euler override it to
    /// divide by `sqrt(σ² + 1)`.
    fn scale_model_input(&self, sample: Tensor<5>, timestep: f64) -> Result<Tensor<5>> {
        let _ = timestep;
        Ok(sample)
    }

    /// Advances `sample` from `timestep` to the next timestep of the schedule given the model
    /// output. Stochastic schedulers draw their noise from `noise`.
    ///
    /// # Shapes
    /// `model_output` and `sample`: `[B, C, F, H, W]` (DDPM with learned variance: the model
    /// output has `2C` channels).
    fn step(
        &mut self,
        model_output: Tensor<5>,
        timestep: f64,
        sample: Tensor<5>,
        noise: &mut dyn NoiseSource,
    ) -> Result<StepOutput>;

    /// Noises a clean sample to `timestep` the way this scheduler's samples are scaled:
    /// `α_t·x₀ + σ_t·ε` for variance-preserving schedulers, `x₀ + σ_t·ε` for Euler and other
    /// sigma-space schedulers.
    fn add_noise(&self, original: Tensor<5>, noise: Tensor<5>, timestep: f64) -> Result<Tensor<5>>;

    /// What the model this scheduler drives predicts.
    fn prediction_type(&self) -> PredictionType;

    /// The training noise schedule (`β_t`, `ᾱ_t`).
    fn noise_schedule(&self) -> &NoiseSchedule;

    /// Number of training timesteps `T`.
    fn num_train_timesteps(&self) -> usize {
        self.noise_schedule().num_train_timesteps()
    }

    /// Whether samples live in sigma space (`x = x₀ + σ·ε`, as Euler) rather than the
    /// variance-preserving space (`x = α·x₀ + σ·ε`). Algorithms that re-noise latents
    /// (FreeInit) use it to stay consistent with the scheduler.
    fn is_sigma_space(&self) -> bool {
        false
    }

    /// Whether this scheduler runs the diffusion forwards, from a clean sample to noise with
    /// ascending timesteps (DDIM inversion), instead of sampling. Samplers refuse it.
    fn inverts(&self) -> bool {
        false
    }

    /// A boxed copy, state included.
    fn box_clone(&self) -> Box<dyn Scheduler>;
}

impl Clone for Box<dyn Scheduler> {
    fn clone(&self) -> Self {
        self.box_clone()
    }
}
