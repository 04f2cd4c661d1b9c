//! Classifier-free guidance (Ho & Salimans 2022) and how the samplers call the model: the
//! guided model output with the unconditional and conditional passes batched into one call
//! (`[uncond; cond]`, as diffusers does), the hooks and routed conditioning handed to the
//! model, and the conditioning helpers (negative batching, per-frame selection).

use burn::tensor::Tensor;
use vdm_core::{
    BlockKind, Conditioning, CrossFrameHook, Denoiser, DenoiserInput, NoiseSource, Result,
    TemporalHook, Timesteps,
};
use vdm_schedulers::Scheduler;

use super::{At, check_model_output};

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

/// The conditioning of several windows stacked along the batch for one guided model call:
/// `[negatives of every window; own conditionings of every window]` (`negatives` is empty
/// without guidance), as [`stacked_guided_prediction`] expects. One part is returned as it is.
pub(crate) fn stacked_conditioning(
    negatives: impl IntoIterator<Item = Conditioning>,
    owns: impl IntoIterator<Item = Conditioning>,
) -> Result<Conditioning> {
    let mut parts: Vec<Conditioning> = negatives.into_iter().chain(owns).collect();
    if parts.len() == 1 {
        return Ok(parts.pop().expect("one part"));
    }
    Conditioning::cat(parts)
}

/// The guided outputs of several windows from one model call, their inputs stacked along the
/// batch (window after window); [`StackedOutput::window`] takes each window's part back out.
///
/// `conditioning` is [`stacked_conditioning`] of the same windows in the same order; the
/// timesteps are those of the stacked batch. Co-denoising and FIFO-Diffusion call the model
/// this way so that a model spread over devices runs several windows at once.
///
/// # Shapes
/// - `inputs`: `k` tensors `[B, C, F, H, W]` (the same shape)
/// - output: `[k·B, C, F, H, W]`
pub(crate) fn stacked_guided_prediction(
    denoiser: &dyn Denoiser,
    inputs: Vec<Tensor<5>>,
    timesteps: Timesteps,
    conditioning: &Conditioning,
    guidance: Option<&Guidance>,
) -> Result<StackedOutput> {
    let windows = inputs.len();
    let input = if windows == 1 {
        inputs.into_iter().next().expect("one window")
    } else {
        Tensor::cat(inputs, 0)
    };
    let output = guided_prediction(
        denoiser,
        input,
        timesteps,
        conditioning,
        Routing::default(),
        guidance,
    )?;
    Ok(StackedOutput { output, windows })
}

/// The output of [`stacked_guided_prediction`]: `windows` windows stacked along the batch.
pub(crate) struct StackedOutput {
    output: Tensor<5>,
    windows: usize,
}

impl StackedOutput {
    /// Every window's output, stacked (`[k·B, C, F, H, W]`).
    pub fn all(&self) -> &Tensor<5> {
        &self.output
    }

    /// The output of window `k` (`[B, C, F, H, W]`).
    pub fn window(&self, k: usize) -> Tensor<5> {
        if self.windows == 1 {
            return self.output.clone();
        }
        let batch = self.output.dims()[0] / self.windows;
        self.output.clone().narrow(0, k * batch, batch)
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
