//! The long-video sampler: one denoising loop that composes, through vdm-core traits only, an
//! initial-noise strategy, any [`Denoiser`] (with classifier-free guidance and per-frame
//! conditioning), any [`Scheduler`], an optional temporal strategy handed to the model's
//! temporal layers (FreeNoise windows, ...), and an optional refinement loop around the whole
//! sampling (FreeInit).

use std::fmt;

use burn::tensor::{Device, Tensor};
use vdm_core::finite::ensure_all_finite;
use vdm_core::{
    Conditioning, CrossFrameHook, Denoiser, DenoiserInput, Error, NoiseSource, Result,
    TemporalHook, Timesteps, VideoShape,
};
use vdm_schedulers::Scheduler;

use crate::freeinit::FreeInit;
use crate::freenoise::prompts::{MotionInjection, PromptContext};
use crate::noise_prior::{Gaussian, InitialNoise};
use crate::smoother::InterleavedSmoother;
use vdm_core::BlockKind;

/// Classifier-free guidance (Ho & Salimans 2022): `ε = ε_u + s·(ε_c − ε_u)`, with the
/// unconditional and conditional passes batched into one model call (`[uncond; cond]`, as
/// diffusers does).
#[derive(Debug, Clone)]
pub struct Guidance {
    /// Guidance scale `s`; `s ≤ 1` disables guidance (one conditional pass).
    pub scale: f64,
    /// The negative (unconditional) conditioning: the empty prompt or a negative prompt,
    /// shared or per frame.
    pub negative: Conditioning,
}

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

/// What the progress callback sees after every step.
#[derive(Debug)]
pub struct Progress<'a> {
    /// Refinement pass (0 without refinement).
    pub iteration: usize,
    /// Number of refinement passes (1 without refinement).
    pub iterations: usize,
    /// Step index within the pass.
    pub step: usize,
    /// Number of steps of this pass.
    pub num_steps: usize,
    /// The timestep just denoised.
    pub timestep: f64,
    /// The latents after this step.
    pub latents: &'a Tensor<5>,
    /// The scheduler's clean-sample estimate at this step, if it computes one.
    pub pred_original: Option<&'a Tensor<5>>,
}

impl<'a> Progress<'a> {
    /// Step `step` of `num_steps` of a sampler without refinement passes (pass 0 of 1).
    pub(crate) fn single_pass(
        step: usize,
        num_steps: usize,
        timestep: f64,
        latents: &'a Tensor<5>,
        pred_original: Option<&'a Tensor<5>>,
    ) -> Self {
        Self {
            iteration: 0,
            iterations: 1,
            step,
            num_steps,
            timestep,
            latents,
            pred_original,
        }
    }
}

/// The callback's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    /// Go on.
    Continue,
    /// Stop; [`LongVideoSampler::sample`] returns [`Error::Cancelled`].
    Cancel,
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

/// Checks a sampling request before any model work: the model and the scheduler predict the
/// same thing, at least one step, a sampling (not inverting) scheduler and a finite guidance
/// scale. Returns the guidance that applies (`None` when the scale is `≤ 1`).
///
/// # Errors
/// [`Error::InvalidConfig`] naming `prediction_type`, `num_inference_steps`, `scheduler` or
/// `guidance_scale`.
pub(crate) fn check_request(
    denoiser: &dyn Denoiser,
    scheduler: &dyn Scheduler,
    num_inference_steps: usize,
    guidance: Option<&Guidance>,
) -> Result<Option<Guidance>> {
    if denoiser.prediction_type() != scheduler.prediction_type() {
        return Err(Error::invalid(
            "prediction_type",
            format!(
                "the model predicts {} but the scheduler is configured for {}; set the \
                 scheduler config's prediction_type to match the model",
                denoiser.prediction_type().as_str(),
                scheduler.prediction_type().as_str()
            ),
        ));
    }
    if num_inference_steps == 0 {
        return Err(Error::invalid("num_inference_steps", "must be at least 1"));
    }
    if scheduler.inverts() {
        return Err(Error::invalid(
            "scheduler",
            "an inversion scheduler (DDIMInverseScheduler) turns videos into noise and \
             cannot sample",
        ));
    }
    let guided = guidance.filter(|g| g.scale > 1.0).cloned();
    if let Some(g) = &guided
        && !g.scale.is_finite()
    {
        return Err(Error::invalid(
            "guidance_scale",
            format!("must be finite, got {}", g.scale),
        ));
    }
    Ok(guided)
}

/// A long-video method's sampler: a model, a scheduler, the method's plan and optional
/// classifier-free guidance. Each method implements its own `sample` on its plan type
/// ([`crate::fifo::FifoSampler`] is `MethodSampler<'_, Fifo>`, and so on).
pub struct MethodSampler<'a, P> {
    pub(crate) denoiser: &'a dyn Denoiser,
    pub(crate) scheduler: Box<dyn Scheduler>,
    pub(crate) plan: P,
    pub(crate) guidance: Option<Guidance>,
    pub(crate) finite_checks: bool,
}

impl<'a, P> MethodSampler<'a, P> {
    /// A sampler for `plan` on `scheduler` (its training schedule, spacing and prediction
    /// type), without guidance.
    pub fn new(denoiser: &'a dyn Denoiser, scheduler: Box<dyn Scheduler>, plan: P) -> Self {
        Self {
            denoiser,
            scheduler,
            plan,
            guidance: None,
            finite_checks: true,
        }
    }

    /// Enables classifier-free guidance.
    pub fn with_guidance(mut self, guidance: Guidance) -> Self {
        self.guidance = Some(guidance);
        self
    }

    /// Whether to check every model output and the latents after every step for NaN and
    /// infinity, stopping with [`Error::NonFinite`] naming the step, the timestep and the
    /// component (on by default; see [`LongVideoSampler`]). Each check is one reduction over
    /// the tensor and one host read.
    pub fn with_finite_checks(mut self, enabled: bool) -> Self {
        self.finite_checks = enabled;
        self
    }

    /// The plan.
    pub fn plan(&self) -> &P {
        &self.plan
    }
}

/// Hands `p` to `progress`; [`Error::Cancelled`] naming its step when `progress` cancels.
/// With `finite_checks`, first [`Error::NonFinite`] naming the step when `p.latents` holds NaN
/// or infinity (the model outputs of the step having been checked, the scheduler step or the
/// method's own update produced them).
pub(crate) fn report(
    progress: &mut dyn FnMut(Progress<'_>) -> Control,
    p: Progress<'_>,
    finite_checks: bool,
) -> Result<()> {
    if finite_checks {
        ensure_all_finite(
            p.latents,
            || {
                let pass = if p.iterations > 1 {
                    format!(" in pass {} of {}", p.iteration, p.iterations)
                } else {
                    String::new()
                };
                format!(
                    "the latents after step {} of {}{pass} (timestep {})",
                    p.step, p.num_steps, p.timestep
                )
            },
            "the model output of this step was finite, so the scheduler step (or the \
             method's own update of the latents) produced them",
        )?;
    }
    let step = p.step;
    match progress(p) {
        Control::Cancel => Err(Error::Cancelled { step }),
        Control::Continue => Ok(()),
    }
}

/// `conditioning` batched after the negative one when guidance applies (`[negative; positive]`,
/// as [`guided_prediction`] expects).
pub(crate) fn with_negative(
    guidance: Option<&Guidance>,
    conditioning: Conditioning,
) -> Result<Conditioning> {
    match guidance {
        Some(g) => Conditioning::cat(vec![g.negative.clone(), conditioning]),
        None => Ok(conditioning),
    }
}

/// [`Error::InvalidConfig`] naming `scheduler` when `method` (which re-noises latents the
/// variance-preserving way) is given a sigma-space scheduler.
pub(crate) fn require_variance_preserving(scheduler: &dyn Scheduler, method: &str) -> Result<()> {
    if scheduler.is_sigma_space() {
        return Err(Error::invalid(
            "scheduler",
            format!(
                "{method} noises latents the variance-preserving way; use a \
                 variance-preserving scheduler (DDIM, DPM-Solver++, …)"
            ),
        ));
    }
    Ok(())
}

/// `conditioning` for the video frames `frames` (per-frame contexts are gathered in that order;
/// shared ones are kept).
pub(crate) fn select_frames(
    conditioning: &Conditioning,
    frames: &[usize],
    device: &burn::tensor::Device,
) -> Conditioning {
    match conditioning {
        Conditioning::PerFrame(ctx) => {
            let idx: Vec<i64> = frames.iter().map(|&f| f as i64).collect();
            let idx = Tensor::<1, burn::tensor::Int>::from_data(
                burn::tensor::TensorData::new(idx, [frames.len()]),
                device,
            );
            Conditioning::PerFrame(ctx.clone().select(1, idx))
        }
        other => other.clone(),
    }
}

/// Where a sampler is (for the finite checks' messages): step `step` (0-based, as
/// [`Progress::step`]) of `num_steps`, at the shared timestep `timestep`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct At {
    pub step: usize,
    pub num_steps: usize,
    pub timestep: f64,
}

impl At {
    pub fn new(step: usize, num_steps: usize, timestep: f64) -> Self {
        Self {
            step,
            num_steps,
            timestep,
        }
    }
}

impl fmt::Display for At {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "step {} of {} (timestep {})",
            self.step, self.num_steps, self.timestep
        )
    }
}

/// With `enabled`, [`Error::NonFinite`] naming "the model output at `at`" when `output` (a
/// guided model output, before any scheduler step) holds NaN or infinity.
pub(crate) fn check_model_output(
    enabled: bool,
    output: &Tensor<5>,
    at: impl fmt::Display,
) -> Result<()> {
    if !enabled {
        return Ok(());
    }
    ensure_all_finite(
        output,
        || format!("the model output at {at}"),
        "the model (with classifier-free guidance) returned them before any scheduler step; \
         check its weights, its dtype (f16 overflows above 65504) and the guidance scale",
    )
}

/// A denoiser with its classifier-free guidance, as the samplers call it.
#[derive(Clone, Copy)]
pub(crate) struct GuidedModel<'a> {
    /// The model.
    pub denoiser: &'a dyn Denoiser,
    /// Guidance, when it applies.
    pub guidance: Option<&'a Guidance>,
    /// Whether to check the model output for NaN and infinity ([`check_model_output`]).
    pub finite_checks: bool,
}

impl GuidedModel<'_> {
    /// One scheduler step of `x` at the shared timestep `at.timestep`: the scheduler's input
    /// scaling, the guided model output (with `routing`; checked when `finite_checks`) and the
    /// scheduler's update.
    pub fn step(
        &self,
        scheduler: &mut dyn Scheduler,
        x: Tensor<5>,
        at: At,
        conditioning: &Conditioning,
        routing: Routing<'_>,
        noise: &mut dyn NoiseSource,
    ) -> Result<vdm_schedulers::StepOutput> {
        let t = at.timestep;
        let input = scheduler.scale_model_input(x.clone(), t)?;
        let output = guided_prediction(
            self.denoiser,
            input,
            Timesteps::Shared(t),
            conditioning,
            routing,
            self.guidance,
        )?;
        check_model_output(self.finite_checks, &output, at)?;
        scheduler.step(output, t, x, noise)
    }
}

/// What a model call hands to the model besides its inputs: the temporal hook, the
/// cross-frame hook and conditioning routed to some blocks (all optional).
#[derive(Default)]
pub(crate) struct Routing<'a> {
    /// Handed to the model's temporal layers.
    pub temporal: Option<&'a dyn TemporalHook>,
    /// Handed to the model's spatial self-attention layers.
    pub cross_frame: Option<&'a dyn CrossFrameHook>,
    /// Conditioning for the listed blocks.
    pub blocks: Option<(Conditioning, Vec<BlockKind>)>,
}

/// One model evaluation at `timesteps` (those of `model_input`'s batch): with `guidance`, the
/// unconditional and conditional passes batched into one call (`conditioning` is then
/// `[negative; positive]`, the timesteps repeated for both halves) and combined as
/// `ε_u + s·(ε_c − ε_u)`; the hooks and routed conditioning of `routing` handed to the model.
pub(crate) fn guided_prediction(
    denoiser: &dyn Denoiser,
    model_input: Tensor<5>,
    timesteps: Timesteps,
    conditioning: &Conditioning,
    routing: Routing<'_>,
    guidance: Option<&Guidance>,
) -> Result<Tensor<5>> {
    let (input, timesteps) = match guidance {
        Some(_) => (
            Tensor::cat(vec![model_input.clone(), model_input], 0),
            match timesteps {
                Timesteps::Shared(t) => Timesteps::Shared(t),
                Timesteps::PerItem(ts) => Timesteps::PerItem(ts.repeat(2)),
                Timesteps::PerFrame { frames, values } => Timesteps::PerFrame {
                    frames,
                    values: values.repeat(2),
                },
            },
        ),
        None => (model_input, timesteps),
    };
    let mut call = DenoiserInput::new(input, timesteps, conditioning.clone());
    if let Some(hook) = routing.temporal {
        call = call.with_temporal(hook);
    }
    if let Some(hook) = routing.cross_frame {
        call = call.with_cross_frame(hook);
    }
    if let Some((single, blocks)) = routing.blocks {
        call = call.with_block_conditioning(single, &blocks);
    }
    let output = denoiser.predict(call)?;
    match guidance {
        Some(g) => {
            let batch = output.dims()[0] / 2;
            let uncond = output.clone().narrow(0, 0, batch);
            let cond = output.narrow(0, batch, batch);
            Ok(uncond.clone() + (cond - uncond).mul_scalar(g.scale as f32))
        }
        None => Ok(output),
    }
}

/// A test model for the finite checks: `ε = 0.1·x`, except from its model call `bad_call` on
/// (0-based) where every value is `bad_value` (NaN, or a finite value large enough to make
/// the scheduler step overflow).
#[cfg(test)]
pub(crate) struct BadAfter {
    pub bad_call: usize,
    pub bad_value: f32,
    pub calls: std::sync::atomic::AtomicUsize,
}

#[cfg(test)]
impl BadAfter {
    pub fn new(bad_call: usize, bad_value: f32) -> Self {
        Self {
            bad_call,
            bad_value,
            calls: Default::default(),
        }
    }
}

#[cfg(test)]
impl Denoiser for BadAfter {
    fn prediction_type(&self) -> vdm_core::PredictionType {
        vdm_core::PredictionType::Epsilon
    }
    fn predict(&self, input: DenoiserInput<'_>) -> Result<Tensor<5>> {
        let call = self.calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Ok(if call >= self.bad_call {
            input.latents.full_like(self.bad_value)
        } else {
            input.latents.mul_scalar(0.1)
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;
    use vdm_core::temporal::{FrameWindow, TemporalSite, TemporalStages};
    use vdm_core::{PredictionType, SeededNoise};
    use vdm_schedulers::from_config_json;

    const DDIM: &str =
        r#"{"_class_name": "DDIMScheduler", "clip_sample": false, "set_alpha_to_one": false}"#;

    /// ε = mean of the conditioning over (S, D) per batch item (0 without conditioning),
    /// broadcast; records the batch sizes it saw; runs one temporal stage through the hook.
    struct Probe {
        batches: std::sync::Mutex<Vec<usize>>,
        prediction: PredictionType,
    }

    struct AddOne;
    impl TemporalStages for AddOne {
        fn num_stages(&self) -> usize {
            1
        }
        fn run_stage(&self, _: usize, x: Tensor<3>, _: &FrameWindow) -> Result<Tensor<3>> {
            Ok(x.add_scalar(1.0))
        }
    }

    impl Denoiser for Probe {
        fn prediction_type(&self) -> PredictionType {
            self.prediction
        }
        fn predict(&self, input: DenoiserInput<'_>) -> Result<Tensor<5>> {
            let shape = input.shape()?;
            self.batches.lock().unwrap().push(shape.batch);
            let device = input.latents.device();
            let marker = input
                .temporal
                .apply(
                    &TemporalSite::new("probe", shape.frames),
                    Tensor::zeros([1, shape.frames, 1], &device),
                    &AddOne,
                )?
                .mean()
                .into_scalar::<f32>();
            let per_item: Vec<f32> =
                match input.conditioning.per_frame(shape.batch, shape.frames)? {
                    Some(ctx) => {
                        let means = ctx
                            .mean_dim(2)
                            .mean_dim(1)
                            .reshape([shape.batch, shape.frames]);
                        means.mean_dim(1).into_data().try_to_vec().unwrap()
                    }
                    None => vec![0.0; shape.batch],
                };
            let values: Vec<Tensor<5>> = per_item
                .iter()
                .map(|&v| {
                    Tensor::<5>::full(
                        shape.with_frames(shape.frames).dims(),
                        v + marker - 1.0,
                        &device,
                    )
                    .narrow(0, 0, 1)
                })
                .collect();
            Ok(Tensor::cat(values, 0))
        }
    }

    fn probe() -> Probe {
        Probe {
            batches: Default::default(),
            prediction: PredictionType::Epsilon,
        }
    }

    fn ctx(value: f32) -> Conditioning {
        Conditioning::Shared(Tensor::full([1, 2, 3], value, &Device::flex()))
    }

    fn run(
        sampler: &mut LongVideoSampler<'_>,
        cond: Conditioning,
        steps: usize,
    ) -> Result<Tensor<5>> {
        sampler.sample(
            VideoShape::new([1, 2, 3, 2, 2]),
            cond,
            steps,
            &mut SeededNoise::new(1),
            &Device::flex(),
            &mut |_| Control::Continue,
        )
    }

    #[test]
    fn guidance_batches_uncond_and_cond_and_extrapolates() {
        // With ε constant, DDIM's result is affine in ε: compare against an unguided run with
        // the guided ε = u + s(c − u) = 0 + 3·(2 − 0) = 6.
        let model = probe();
        let mut guided = LongVideoSampler::new(&model, from_config_json(DDIM).unwrap())
            .with_guidance(Guidance {
                scale: 3.0,
                negative: ctx(0.0),
            });
        let a = run(&mut guided, ctx(2.0), 4).unwrap();
        assert!(model.batches.lock().unwrap().iter().all(|&b| b == 2));
        let plain_model = probe();
        let mut plain = LongVideoSampler::new(&plain_model, from_config_json(DDIM).unwrap());
        let b = run(&mut plain, ctx(6.0), 4).unwrap();
        assert!(plain_model.batches.lock().unwrap().iter().all(|&b| b == 1));
        let diff: f32 = (a - b).abs().max().into_scalar();
        assert!(diff < 1e-5, "{diff}");
    }

    #[test]
    fn cancellation_and_progress() {
        let model = probe();
        let mut sampler = LongVideoSampler::new(&model, from_config_json(DDIM).unwrap());
        let mut seen = Vec::new();
        let e = sampler
            .sample(
                VideoShape::new([1, 2, 3, 2, 2]),
                Conditioning::None,
                10,
                &mut SeededNoise::new(9),
                &Device::flex(),
                &mut |p| {
                    seen.push((p.step, p.num_steps, p.latents.dims()));
                    if p.step == 3 {
                        Control::Cancel
                    } else {
                        Control::Continue
                    }
                },
            )
            .unwrap_err();
        assert!(matches!(e, Error::Cancelled { step: 3 }), "{e}");
        assert_eq!(seen.len(), 4);
        assert_eq!(seen[0], (0, 10, [1, 2, 3, 2, 2]));
    }

    #[test]
    fn prediction_type_mismatch_is_named() {
        let model = Probe {
            batches: Default::default(),
            prediction: PredictionType::VPrediction,
        };
        let mut sampler = LongVideoSampler::new(&model, from_config_json(DDIM).unwrap());
        let e = run(&mut sampler, Conditioning::None, 3)
            .unwrap_err()
            .to_string();
        assert!(e.contains("prediction_type"), "{e}");
    }

    #[test]
    fn an_inversion_scheduler_is_refused() {
        let model = Probe {
            batches: Default::default(),
            prediction: PredictionType::Epsilon,
        };
        let inverse = DDIM.replace("DDIMScheduler", "DDIMInverseScheduler");
        let mut sampler = LongVideoSampler::new(&model, from_config_json(&inverse).unwrap());
        let e = run(&mut sampler, Conditioning::None, 3)
            .unwrap_err()
            .to_string();
        assert!(e.contains("inversion"), "{e}");
    }

    /// A two-stage scheduler (Heun) runs in the ordinary loop: 2N − 1 model calls for N steps,
    /// every call with the guided batch, and the result is finite.
    #[test]
    fn a_two_stage_scheduler_calls_the_model_per_stage() {
        let model = probe();
        let heun = r#"{"_class_name": "HeunDiscreteScheduler"}"#;
        let mut sampler = LongVideoSampler::new(&model, from_config_json(heun).unwrap())
            .with_guidance(Guidance {
                scale: 2.0,
                negative: ctx(0.0),
            });
        let out = run(&mut sampler, ctx(1.0), 4).unwrap();
        assert_eq!(*model.batches.lock().unwrap(), vec![2; 7]);
        let max: f32 = out.abs().max().into_scalar();
        assert!(max.is_finite());
    }

    /// A hook that runs each stage twice: the probe's marker becomes 2 instead of 1.
    struct Twice;
    impl TemporalHook for Twice {
        fn apply(
            &self,
            _: &TemporalSite<'_>,
            x: Tensor<3>,
            stages: &dyn TemporalStages,
        ) -> Result<Tensor<3>> {
            let w = FrameWindow::full(x.dims()[1]);
            let y = stages.run_stage(0, x, &w)?;
            stages.run_stage(0, y, &w)
        }
    }

    #[test]
    fn the_temporal_strategy_reaches_the_model() {
        let model = probe();
        let mut with_hook =
            LongVideoSampler::new(&model, from_config_json(DDIM).unwrap()).with_temporal(&Twice);
        let a = run(&mut with_hook, ctx(1.0), 3).unwrap();
        // Marker 2 adds one to ε: the same as conditioning 2 without the hook.
        let model2 = probe();
        let mut plain = LongVideoSampler::new(&model2, from_config_json(DDIM).unwrap());
        let b = run(&mut plain, ctx(2.0), 3).unwrap();
        let diff: f32 = (a - b).abs().max().into_scalar();
        assert!(diff < 1e-5, "{diff}");
    }

    struct CountPasses {
        reinits: AtomicUsize,
    }
    impl Refinement for CountPasses {
        fn iterations(&self) -> usize {
            3
        }
        fn steps_for_iteration(&self, iteration: usize, n: usize) -> Result<usize> {
            Ok((n * (iteration + 1) / 3).max(1))
        }
        fn reinitialize(
            &self,
            _: usize,
            scheduler: &dyn Scheduler,
            clean: Tensor<5>,
            initial: &Tensor<5>,
            _: &mut dyn NoiseSource,
        ) -> Result<Tensor<5>> {
            self.reinits.fetch_add(1, Ordering::SeqCst);
            let t = scheduler.num_train_timesteps() as f64 - 1.0;
            scheduler.add_noise(clean, initial.clone(), t)
        }
    }

    #[test]
    fn refinement_runs_every_pass_with_its_step_count() {
        let model = probe();
        let refine = CountPasses {
            reinits: AtomicUsize::new(0),
        };
        let mut sampler =
            LongVideoSampler::new(&model, from_config_json(DDIM).unwrap()).with_refinement(refine);
        let mut passes = Vec::new();
        sampler
            .sample(
                VideoShape::new([1, 2, 3, 2, 2]),
                Conditioning::None,
                9,
                &mut SeededNoise::new(2),
                &Device::flex(),
                &mut |p| {
                    if p.step == 0 {
                        passes.push((p.iteration, p.num_steps));
                    }
                    Control::Continue
                },
            )
            .unwrap();
        assert_eq!(passes, [(0, 3), (1, 6), (2, 9)]);
        assert_eq!(model.batches.lock().unwrap().len(), 18);
    }

    /// Records, per call, the mean of the encoder and decoder conditioning.
    struct RouteProbe(std::sync::Mutex<Vec<(f32, f32)>>);
    impl Denoiser for RouteProbe {
        fn prediction_type(&self) -> PredictionType {
            PredictionType::Epsilon
        }
        fn predict(&self, input: DenoiserInput<'_>) -> Result<Tensor<5>> {
            let mean = |c: &Conditioning| match c {
                Conditioning::Shared(t) => t.clone().mean().into_scalar::<f32>(),
                Conditioning::PerFrame(t) => t.clone().mean().into_scalar::<f32>(),
                Conditioning::None => f32::NAN,
            };
            self.0.lock().unwrap().push((
                mean(input.conditioning_for(BlockKind::Encoder)),
                mean(input.conditioning_for(BlockKind::Decoder)),
            ));
            Ok(input.latents.zeros_like())
        }
    }

    #[test]
    fn motion_injection_routes_the_single_prompt_by_step_and_block() {
        let model = RouteProbe(Default::default());
        let schedule = MotionInjection::videocrafter_scaled(10);
        let mut sampler = LongVideoSampler::new(&model, from_config_json(DDIM).unwrap())
            .with_motion_injection(ctx(7.0), schedule.clone());
        run(&mut sampler, ctx(1.0), 10).unwrap();
        let calls = model.0.lock().unwrap().clone();
        assert_eq!(calls.len(), 10);
        for (step, (enc, dec)) in calls.into_iter().enumerate() {
            let expected = match schedule.context_for(step, BlockKind::Encoder) {
                PromptContext::Single => 7.0,
                PromptContext::Travelling => 1.0,
            };
            assert_eq!(enc, expected, "step {step}");
            assert_eq!(dec, 1.0, "step {step}: the decoder always travels");
        }
    }

    #[test]
    fn freeinit_refines_through_the_sampler_with_any_scheduler() {
        use crate::freeinit::FreeInit;
        for config in [
            DDIM,
            r#"{"_class_name": "EulerDiscreteScheduler", "timestep_spacing": "trailing"}"#,
            r#"{"_class_name": "DPMSolverMultistepScheduler", "timestep_spacing": "linspace"}"#,
        ] {
            let model = probe();
            let freeinit = FreeInit::default().with_fast_sampling(true);
            let mut sampler = LongVideoSampler::new(&model, from_config_json(config).unwrap())
                .with_refinement(freeinit);
            let mut passes = Vec::new();
            let video = sampler
                .sample(
                    VideoShape::new([1, 2, 6, 4, 4]),
                    ctx(0.1),
                    6,
                    &mut SeededNoise::new(3),
                    &Device::flex(),
                    &mut |p| {
                        if p.step == 0 {
                            passes.push((p.iteration, p.num_steps));
                        }
                        Control::Continue
                    },
                )
                .unwrap();
            assert_eq!(passes, [(0, 2), (1, 4), (2, 6)], "{config}");
            let finite: Vec<f32> = video.into_data().try_to_vec().unwrap();
            assert!(finite.iter().all(|v| v.is_finite()), "{config}");
        }
        // `leading` DPM-Solver cannot reach T − 1: a typed error, not silent garbage.
        let model = probe();
        let mut sampler = LongVideoSampler::new(
            &model,
            from_config_json(
                r#"{"_class_name": "DPMSolverMultistepScheduler", "timestep_spacing": "leading"}"#,
            )
            .unwrap(),
        )
        .with_refinement(FreeInit::default());
        let e = run(&mut sampler, ctx(0.1), 5).unwrap_err().to_string();
        assert!(e.contains("timestep_spacing"), "{e}");
    }

    /// A NaN model output stops the loop at its step, naming the step and the timestep, before
    /// the scheduler sees it; with the checks off the same run returns NaN latents.
    #[test]
    fn a_nan_model_output_is_named_with_its_step_and_timestep() {
        let model = BadAfter::new(3, f32::NAN);
        let mut sampler = LongVideoSampler::new(&model, from_config_json(DDIM).unwrap());
        let mut reported = Vec::new();
        let e = sampler
            .sample(
                VideoShape::new([1, 2, 3, 2, 2]),
                Conditioning::None,
                10,
                &mut SeededNoise::new(1),
                &Device::flex(),
                &mut |p| {
                    reported.push(p.step);
                    Control::Continue
                },
            )
            .unwrap_err();
        let t = sampler.scheduler().timesteps()[3];
        assert!(matches!(e, Error::NonFinite { .. }), "{e}");
        let msg = e.to_string();
        let want = format!("non-finite value in the model output at step 3 of 10 (timestep {t}): ");
        assert!(msg.starts_with(&want), "{msg}");
        assert!(msg.contains("24 NaN and 0 infinite of 24 values"), "{msg}");
        assert_eq!(reported, [0, 1, 2]);
        assert_eq!(model.calls.load(Ordering::SeqCst), 4);

        let model = BadAfter::new(3, f32::NAN);
        let mut unchecked = LongVideoSampler::new(&model, from_config_json(DDIM).unwrap())
            .with_finite_checks(false);
        let video = run(&mut unchecked, Conditioning::None, 10).unwrap();
        assert!(!vdm_core::finite::all_finite(&video));
        assert_eq!(model.calls.load(Ordering::SeqCst), 10);
    }

    /// A finite model output so large that DDIM's `x̂₀ = (x − √(1−ᾱ)·ε)/√ᾱ` overflows: the
    /// model output passes its check and the latents after the step are named instead.
    #[test]
    fn a_scheduler_step_that_overflows_is_named_as_the_latents_after_it() {
        let model = BadAfter::new(0, f32::MAX / 4.0);
        let mut sampler = LongVideoSampler::new(&model, from_config_json(DDIM).unwrap())
            .with_refinement(CountPasses {
                reinits: AtomicUsize::new(0),
            });
        let e = run(&mut sampler, Conditioning::None, 3).unwrap_err();
        // Passes of 1, 2 and 3 steps (timesteps [0], [500, 0], [666, 333, 0]): x̂₀ first
        // overflows at t = 666 (the first √ᾱ small enough), the first step of the last pass (as
        // `Progress`); the scheduler keeps that pass's timesteps.
        let t = sampler.scheduler().timesteps()[0];
        assert_eq!(t, 666.0);
        assert!(matches!(e, Error::NonFinite { .. }), "{e}");
        let msg = e.to_string();
        let want = format!(
            "non-finite value in the latents after step 0 of 3 in pass 2 of 3 (timestep {t}): "
        );
        assert!(msg.starts_with(&want), "{msg}");
        assert!(msg.contains("the scheduler step"), "{msg}");
    }

    #[test]
    fn same_seed_same_video() {
        let model = probe();
        let mut s1 = LongVideoSampler::new(&model, from_config_json(DDIM).unwrap());
        let a = run(&mut s1, ctx(0.5), 5).unwrap();
        let b = run(&mut s1, ctx(0.5), 5).unwrap();
        a.into_data().assert_eq(&b.into_data(), true);
    }
}
