//! The long-video sampler: one denoising loop that composes, through vdm-core traits only, an
//! initial-noise strategy, any [`Denoiser`] (with classifier-free guidance and per-frame
//! conditioning), any [`Scheduler`], an optional temporal strategy handed to the model's
//! temporal layers (FreeNoise windows, ...), and an optional refinement loop around the whole
//! sampling (FreeInit).
//!
//! The pieces shared by every long-video method's sampler live in submodules: classifier-free
//! guidance and model routing (`sampler/guidance.rs`), the progress callback and the finite
//! checks (`sampler/progress.rs`), and the per-method sampler with its request checks
//! (`sampler/method.rs`).

use burn::tensor::{Device, Tensor};
use vdm_core::{
    Conditioning, CrossFrameHook, Denoiser, Error, NoiseSource, Result, TemporalHook, VideoShape,
};
use vdm_schedulers::Scheduler;

use crate::freeinit::FreeInit;
use crate::freenoise::prompts::{MotionInjection, PromptContext};
use crate::noise_prior::{Gaussian, InitialNoise};
use crate::smoother::InterleavedSmoother;
use vdm_core::BlockKind;

mod guidance;
mod method;
mod progress;
#[cfg(test)]
mod tests;

pub use guidance::Guidance;
pub(crate) use guidance::{
    GuidedModel, Routing, StackedOutput, guided_prediction, select_frames, stacked_conditioning,
    stacked_guided_prediction, with_negative,
};
pub use method::MethodSampler;
pub(crate) use method::{check_request, require_variance_preserving};
pub(crate) use progress::{At, check_model_output, report};
pub use progress::{Control, Progress};
#[cfg(test)]
pub(crate) use tests::BadAfter;

/// A refinement loop around the whole sampling, such as FreeInit: the video is sampled
/// `iterations()` times, each time from a latent re-initialised from the previous result.
pub trait Refinement: Send + Sync {
    /// Number of sampling passes (≥ 1).
    fn iterations(&self) -> usize;

    /// Inference steps of pass `iteration` out of the requested `num_inference_steps`
    /// (coarse-to-fine schedules use fewer steps in early passes).
    fn steps_for_iteration(&self, iteration: usize, num_inference_steps: usize) -> Result<usize>;

    /// The starting latent of pass `iteration ≥ 1`, already scaled for `scheduler` (whose
    /// timesteps are set for this pass), from the previous pass's result `clean` and the
    /// unit-variance `initial_noise` of pass 0.
    fn reinitialize(
        &self,
        iteration: usize,
        scheduler: &dyn Scheduler,
        clean: Tensor<5>,
        initial_noise: &Tensor<5>,
        noise: &mut dyn NoiseSource,
    ) -> Result<Tensor<5>>;
}

/// FreeInit as the sampler's refinement loop: each pass after the first starts from the previous
/// result re-noised to `T − 1` with the first pass's noise, low frequencies kept and high
/// frequencies fresh (see [`FreeInit::reinitialize`]).
impl Refinement for FreeInit {
    fn iterations(&self) -> usize {
        self.num_iters
    }

    fn steps_for_iteration(&self, iteration: usize, num_inference_steps: usize) -> Result<usize> {
        FreeInit::steps_for_iteration(self, iteration, num_inference_steps)
    }

    fn reinitialize(
        &self,
        _iteration: usize,
        scheduler: &dyn Scheduler,
        clean: Tensor<5>,
        initial_noise: &Tensor<5>,
        noise: &mut dyn NoiseSource,
    ) -> Result<Tensor<5>> {
        FreeInit::reinitialize(self, scheduler, clean, initial_noise.clone(), noise)
    }
}

/// A denoising loop assembled from interchangeable parts.
///
/// By default the loop stops at the first NaN or infinity with [`Error::NonFinite`]: every
/// model output is checked before the scheduler sees it ("the model output at step 3 of 25
/// (timestep 879)"), and the latents after every step ("the latents after step 3 of 25
/// (timestep 879)", then produced by the scheduler step, the model output being finite). Each
/// check is one reduction and one host read; [`with_finite_checks`](Self::with_finite_checks)
/// turns them off.
///
/// ```
/// use burn::tensor::{Device, Tensor};
/// use vdm_core::{Conditioning, Denoiser, DenoiserInput, PredictionType, Result, SeededNoise, VideoShape};
/// use vdm_longvideo::sampler::{Control, LongVideoSampler};
/// use vdm_schedulers::from_config_json;
///
/// struct Shrink; // predicts ε = 0.1·x
/// impl Denoiser for Shrink {
///     fn prediction_type(&self) -> PredictionType { PredictionType::Epsilon }
///     fn predict(&self, input: DenoiserInput<'_>) -> Result<Tensor<5>> {
///         Ok(input.latents.mul_scalar(0.1))
///     }
/// }
///
/// let scheduler = from_config_json(r#"{"_class_name": "DDIMScheduler", "clip_sample": false}"#).unwrap();
/// let mut sampler = LongVideoSampler::new(&Shrink, scheduler);
/// let video = sampler
///     .sample(
///         VideoShape::new([1, 4, 32, 8, 8]),
///         Conditioning::None,
///         10,
///         &mut SeededNoise::new(0),
///         &Device::flex(),
///         &mut |p| if p.step < 100 { Control::Continue } else { Control::Cancel },
///     )
///     .unwrap();
/// assert_eq!(video.dims(), [1, 4, 32, 8, 8]);
/// ```
pub struct LongVideoSampler<'a> {
    denoiser: &'a dyn Denoiser,
    scheduler: Box<dyn Scheduler>,
    initial_noise: Box<dyn InitialNoise + 'a>,
    temporal: Option<&'a dyn TemporalHook>,
    cross_frame: Option<&'a dyn CrossFrameHook>,
    smoother: Option<InterleavedSmoother>,
    refinement: Option<Box<dyn Refinement + 'a>>,
    guidance: Option<Guidance>,
    injection: Option<(Conditioning, MotionInjection)>,
    finite_checks: bool,
}

impl<'a> LongVideoSampler<'a> {
    /// A sampler with Gaussian initial noise, no guidance, no temporal strategy and no
    /// refinement.
    pub fn new(denoiser: &'a dyn Denoiser, scheduler: Box<dyn Scheduler>) -> Self {
        Self {
            denoiser,
            scheduler,
            initial_noise: Box::new(Gaussian),
            temporal: None,
            cross_frame: None,
            smoother: None,
            refinement: None,
            guidance: None,
            injection: None,
            finite_checks: true,
        }
    }

    /// Whether to check every model output and the latents after every step for NaN and
    /// infinity, stopping with [`Error::NonFinite`] naming the step, the timestep and the
    /// component (on by default). Each check is one reduction over the tensor and one host
    /// read (a few per cent of a step of a small model, negligible beside a real UNet; see
    /// `docs/reliability.md`).
    pub fn with_finite_checks(mut self, enabled: bool) -> Self {
        self.finite_checks = enabled;
        self
    }

    /// FreeNoise motion injection (multi-prompt): in the steps and blocks `schedule` selects,
    /// the model sees `single` (one prompt for every frame) instead of the travelling
    /// per-frame conditioning passed to [`LongVideoSampler::sample`]. Step indices count
    /// within each pass; use [`MotionInjection::videocrafter_scaled`] for step counts other
    /// than 50.
    pub fn with_motion_injection(
        mut self,
        single: Conditioning,
        schedule: MotionInjection,
    ) -> Self {
        self.injection = Some((single, schedule));
        self
    }

    /// Sets the initial-noise strategy.
    pub fn with_initial_noise(mut self, strategy: impl InitialNoise + 'a) -> Self {
        self.initial_noise = Box::new(strategy);
        self
    }

    /// Hands a temporal strategy to the model's temporal layers at every call.
    pub fn with_temporal(mut self, hook: &'a dyn TemporalHook) -> Self {
        self.temporal = Some(hook);
        self
    }

    /// Hands a cross-frame attention pattern to the model's spatial self-attention at every
    /// call (see [`vdm_core::cross_frame`]).
    pub fn with_cross_frame(mut self, hook: &'a dyn CrossFrameHook) -> Self {
        self.cross_frame = Some(hook);
        self
    }

    /// Smooths the clean estimate over time at the smoother's steps (ControlVideo's
    /// interleaved-frame smoother, see [`crate::smoother`]; needs a variance-preserving
    /// scheduler that reports its `x̂₀`).
    pub fn with_smoother(mut self, smoother: InterleavedSmoother) -> Self {
        self.smoother = Some(smoother);
        self
    }

    /// Wraps the sampling in a refinement loop (e.g. FreeInit).
    pub fn with_refinement(mut self, refinement: impl Refinement + 'a) -> Self {
        self.refinement = Some(Box::new(refinement));
        self
    }

    /// Enables classifier-free guidance.
    pub fn with_guidance(mut self, guidance: Guidance) -> Self {
        self.guidance = Some(guidance);
        self
    }

    /// The scheduler (its timesteps are those of the last pass after sampling).
    pub fn scheduler(&self) -> &dyn Scheduler {
        self.scheduler.as_ref()
    }

    /// Samples a video of `shape` conditioned on `conditioning`.
    ///
    /// `noise` provides every random number (initial noise, stochastic scheduler steps,
    /// refinement noise); `progress` is called after every step and may cancel.
    pub fn sample(
        &mut self,
        shape: VideoShape,
        conditioning: Conditioning,
        num_inference_steps: usize,
        noise: &mut dyn NoiseSource,
        device: &Device,
        progress: &mut dyn FnMut(Progress<'_>) -> Control,
    ) -> Result<Tensor<5>> {
        let guided = check_request(
            self.denoiser,
            self.scheduler.as_ref(),
            num_inference_steps,
            self.guidance.as_ref(),
        )?;
        let batch = |c: Conditioning| with_negative(guided.as_ref(), c);
        let batched_conditioning = batch(conditioning)?;
        let injection = match &self.injection {
            Some((single, schedule)) => Some((batch(single.clone())?, schedule.clone())),
            None => None,
        };

        if self.smoother.is_some() {
            require_variance_preserving(self.scheduler.as_ref(), "the interleaved-frame smoother")?;
        }
        let iterations = self.refinement.as_ref().map_or(1, |r| r.iterations());
        if iterations == 0 {
            return Err(Error::invalid(
                "num_iters",
                "a refinement needs at least one pass",
            ));
        }
        let initial_noise = self.initial_noise.sample(shape, noise, device)?;
        let mut latents = initial_noise.clone();
        for iteration in 0..iterations {
            let steps = match &self.refinement {
                Some(r) => r.steps_for_iteration(iteration, num_inference_steps)?,
                None => num_inference_steps,
            };
            self.scheduler.set_timesteps(steps)?;
            latents = match (&self.refinement, iteration) {
                (Some(r), k) if k > 0 => {
                    r.reinitialize(k, self.scheduler.as_ref(), latents, &initial_noise, noise)?
                }
                _ => initial_noise
                    .clone()
                    .mul_scalar(self.scheduler.init_noise_sigma() as f32),
            };
            let timesteps = self.scheduler.timesteps().to_vec();
            let model = GuidedModel {
                denoiser: self.denoiser,
                guidance: guided.as_ref(),
                finite_checks: self.finite_checks,
            };
            for (step, &t) in timesteps.iter().enumerate() {
                let routed = injection.as_ref().and_then(|(single, schedule)| {
                    let blocks: Vec<BlockKind> = BlockKind::ALL
                        .into_iter()
                        .filter(|&k| schedule.context_for(step, k) == PromptContext::Single)
                        .collect();
                    (!blocks.is_empty()).then(|| (single.clone(), blocks))
                });
                let routing = Routing {
                    temporal: self.temporal,
                    cross_frame: self.cross_frame,
                    blocks: routed,
                };
                let smoothing = self.smoother.as_ref().filter(|s| s.applies(step));
                let x_t = smoothing.map(|_| latents.clone());
                let out = model.step(
                    self.scheduler.as_mut(),
                    latents,
                    At::new(step, timesteps.len(), t),
                    &batched_conditioning,
                    routing,
                    noise,
                )?;
                latents = match (smoothing, x_t, &out.pred_original_sample) {
                    (Some(smoother), Some(x_t), Some(x0)) => {
                        let schedule = self.scheduler.noise_schedule();
                        let alpha_t = f64::from(schedule.alpha_cumprod_at(t)?);
                        let alpha_prev = match timesteps.get(step + 1) {
                            Some(&next) => f64::from(schedule.alpha_cumprod_at(next)?),
                            None => 1.0,
                        };
                        smoother.recompose(step, x_t, x0.clone(), alpha_t, alpha_prev)?
                    }
                    (Some(_), _, None) => {
                        return Err(Error::invalid(
                            "smoother",
                            "the scheduler does not report its clean estimate x̂₀",
                        ));
                    }
                    _ => out.prev_sample,
                };
                report(
                    progress,
                    Progress {
                        iteration,
                        iterations,
                        step,
                        num_steps: timesteps.len(),
                        timestep: t,
                        latents: &latents,
                        pred_original: out.pred_original_sample.as_ref(),
                    },
                    self.finite_checks,
                )?;
            }
        }
        Ok(latents)
    }
}
