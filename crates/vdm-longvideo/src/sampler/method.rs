//! The sampler shared by the long-video methods ([`MethodSampler`]: a model, a scheduler, the
//! method's plan and optional classifier-free guidance) and the checks every sampler runs on
//! a request before any model work.

use vdm_core::{Denoiser, Error, Result};
use vdm_schedulers::Scheduler;

use super::Guidance;
#[cfg(doc)]
use super::LongVideoSampler;

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

    /// [`check_request`] on this sampler's model, scheduler and guidance for
    /// `num_inference_steps`: the prologue of every method's `sample`. Returns the guidance
    /// that applies.
    pub(crate) fn check(&self, num_inference_steps: usize) -> Result<Option<Guidance>> {
        check_request(
            self.denoiser,
            self.scheduler.as_ref(),
            num_inference_steps,
            self.guidance.as_ref(),
        )
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
