//! Progress reporting and the finite checks shared by every sampler: what the progress
//! callback sees after each step and its answer, the report that checks the latents for NaN
//! and infinity before handing them to the callback, and the check of each guided model
//! output before the scheduler sees it.

use std::fmt;

use burn::tensor::Tensor;
use vdm_core::finite::ensure_all_finite;
use vdm_core::{Error, Result};

#[cfg(doc)]
use super::LongVideoSampler;

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
