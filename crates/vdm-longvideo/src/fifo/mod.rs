//! FIFO-Diffusion (Kim et al. 2024, "FIFO-Diffusion: Generating Infinite Videos from Text
//! without Training", NeurIPS; reference code `jjihwan/FIFO-Diffusion_public`,
//! `scripts/evaluation/funcs.py` and `lvdm/models/samplers/ddim.py`, see
//! `shared/reference/algorithms.md` §8).
//!
//! **Diagonal denoising.** A queue holds `S = window · partitions` frames at increasing noise
//! levels: position `i` sits at the `i`-th smallest of the `S` inference timesteps. Every
//! iteration denoises each frame of the queue by one level, `window` frames per model call,
//! each frame with its own timestep ([`Timesteps::PerFrame`]); then the head of the queue is
//! clean and leaves it, every frame moves one place forward and fresh noise enters at the
//! tail. One clean frame per iteration, for as long as the caller wants: the queue, and with it
//! the memory, does not grow with the video ([`FifoStream`] yields frames one by one, so a
//! caller can decode and write each while sampling continues).
//!
//! **Lookahead denoising** (the reference's default): `window/2` already clean frames are kept
//! in front of the queue as context, and the windows advance by `window/2`, each writing only
//! its second half, so every frame is denoised with `window/2` less noisy frames before it.
//! It doubles the model calls (`2·partitions` per frame instead of `partitions`).
//!
//! **Windows per call.** The windows of one iteration read only what the iteration started
//! from (each writes frames no later window reads), so [`Fifo::windows_per_call`] of them can
//! be stacked along the batch into one model call, the same video (tested): a model spread over
//! several devices by its batch then keeps more of them busy.
//!
//! **Start.** As the reference: a `window`-frame clip is first sampled by ordinary DDIM over
//! the same `S` timesteps; queue position `i` is that clip's frame `max(0, i − (S − window))`
//! noised to level `i` (the lookahead context holds its clean frame 0). The first `S − window`
//! frames that leave the queue are re-noised copies of frame 0 and are dropped, so the video's
//! first `window` frames are the clip's frames denoised again along the diagonal.
//!
//! The update of a frame at level `i` is DDIM with `η` (`eta`; the reference uses 1) from
//! `ᾱ(t_i)` to `ᾱ(t_{i−1})`, on the scheduler's training schedule and its `S` timesteps (its
//! spacing), for any prediction type. Unlike the reference:
//! - the frame at the lowest level steps to `ᾱ = 1`, to its clean estimate `x̂₀` (the
//!   reference stops at `ᾱ(t_0)` and decodes that slightly noisy latent), and the context frames
//!   of lookahead are these clean frames (labelled `t_0` for the model, as the reference does);
//! - a per-frame conditioning (`[B, N, S, D]` for an `N`-frame video: prompt travel) gives each
//!   queue position the context of the video frame it will become, instead of one prompt for
//!   the whole queue switched when the dequeued frame passes a boundary.
//!
//! Invariant (tested): for a model that treats frames independently, every frame equals
//! ordinary DDIM sampling of that frame alone from its initial noise, with or without
//! lookahead.

use burn::tensor::{Device, Tensor};
use vdm_core::error::ensure_non_negative;
use vdm_core::noise::draw;
use vdm_core::{
    Conditioning, Denoiser, Error, NoiseSource, PredictionType, Result, Timesteps, VideoShape,
};
use vdm_schedulers::prediction::{Scales, to_x0_and_eps};

use crate::sampler::{
    Control, Guidance, MethodSampler, Progress, StackedOutput, check_model_output, report,
    select_frames, stacked_conditioning, stacked_guided_prediction,
};

/// The FIFO-Diffusion plan: the model's clip length, the number of partitions, lookahead and
/// the DDIM `η`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Fifo {
    /// Frames per model call: the clip length the model was trained on (e.g. 16).
    pub window: usize,
    /// Partitions `n` of the queue: `window · n` noise levels (inference steps) and `n` model
    /// calls per frame (`2n` with lookahead). The reference uses 4.
    pub partitions: usize,
    /// Lookahead denoising: windows advance by `window/2` and write their second half
    /// (`window` must be even).
    pub lookahead: bool,
    /// DDIM `η`: 0 deterministic, 1 (the reference) DDPM-like noise at every update.
    pub eta: f64,
    /// Windows denoised together in one model call, stacked along the batch (1: one call per
    /// window, as the reference; the same video for any value, larger batches per call).
    pub windows_per_call: usize,
}

impl Fifo {
    /// The reference's settings for a model of clip length `window`: `partitions` levels
    /// groups, lookahead on, `η = 1`.
    pub fn new(window: usize, partitions: usize) -> Self {
        Self {
            window,
            partitions,
            lookahead: true,
            eta: 1.0,
            windows_per_call: 1,
        }
    }

    /// The plan with `n` windows stacked into each model call (see
    /// [`windows_per_call`](Self::windows_per_call)).
    pub fn windows_per_call(self, n: usize) -> Self {
        Self {
            windows_per_call: n,
            ..self
        }
    }

    /// # Errors
    /// [`Error::InvalidConfig`] naming `window`, `partitions`, `eta` or `windows_per_call`.
    pub fn validate(&self) -> Result<()> {
        if self.window == 0 {
            return Err(Error::invalid("window", "must be ≥ 1"));
        }
        if self.lookahead && (self.window < 2 || !self.window.is_multiple_of(2)) {
            return Err(Error::invalid(
                "window",
                format!(
                    "lookahead denoising advances by half a window: {} is not even",
                    self.window
                ),
            ));
        }
        if self.partitions == 0 {
            return Err(Error::invalid("partitions", "must be ≥ 1"));
        }
        if self.windows_per_call == 0 {
            return Err(Error::invalid("windows_per_call", "must be ≥ 1"));
        }
        ensure_non_negative("eta", self.eta)?;
        Ok(())
    }

    /// Noise levels in the queue (the inference steps): `window · partitions`.
    pub fn num_levels(&self) -> usize {
        self.window * self.partitions
    }

    /// Clean context frames in front of the queue: `window/2` with lookahead, else 0.
    pub fn context(&self) -> usize {
        if self.lookahead { self.window / 2 } else { 0 }
    }

    /// Frames held at any time: the levels and the context.
    pub fn queue_len(&self) -> usize {
        self.context() + self.num_levels()
    }

    /// Windows denoised per video frame: `partitions`, twice that with lookahead.
    pub fn windows_per_frame(&self) -> usize {
        if self.lookahead {
            2 * self.partitions
        } else {
            self.partitions
        }
    }

    /// Model calls per video frame: the windows in groups of `windows_per_call` (each call on
    /// `window` frames of up to `windows_per_call` stacked batches, twice that with guidance).
    pub fn calls_per_frame(&self) -> usize {
        self.windows_per_frame()
            .div_ceil(self.windows_per_call.max(1))
    }

    /// The windows of one iteration in the order they run (back to front), as queue positions
    /// `(start, write_from, end)`: the model sees `start..end`, the update is kept for
    /// `write_from..end`.
    pub fn windows(&self) -> Vec<(usize, usize, usize)> {
        let step = if self.lookahead {
            self.window / 2
        } else {
            self.window
        };
        (0..self.windows_per_frame())
            .rev()
            .map(|r| {
                let start = r * step;
                let write_from = if self.lookahead { start + step } else { start };
                (start, write_from, start + self.window)
            })
            .collect()
    }

    /// The noise level (index into the ascending timesteps) of queue position `p`.
    pub fn level_of(&self, position: usize) -> usize {
        position.saturating_sub(self.context())
    }
}

/// The FIFO-Diffusion sampler over any [`Denoiser`] that accepts per-frame timesteps.
pub type FifoSampler<'a> = MethodSampler<'a, Fifo>;

impl FifoSampler<'_> {
    /// A stream of the `shape.frames` clean latent frames (`[B, C, 1, H, W]` each) of a video
    /// of `shape`. `conditioning` is shared, or per frame with `shape.frames` frames; `noise`
    /// provides every random number. The model runs only when frames are pulled.
    ///
    /// # Errors
    /// Before any model work: a bad plan, a prediction-type mismatch, an inversion scheduler,
    /// a scheduler whose timesteps are not `num_levels()` distinct integers, a per-frame
    /// conditioning of another length, a non-finite guidance scale.
    pub fn stream<'s>(
        &'s self,
        shape: VideoShape,
        conditioning: Conditioning,
        noise: &'s mut dyn NoiseSource,
        device: &Device,
    ) -> Result<FifoStream<'s>> {
        self.plan.validate()?;
        let levels = self.plan.num_levels();
        let guided = self.check(levels)?;
        let mut scheduler = self.scheduler.box_clone();
        scheduler.set_timesteps(levels)?;
        let mut timesteps = scheduler.timesteps().to_vec();
        let distinct = timesteps.windows(2).all(|p| p[0] > p[1]);
        if timesteps.len() != levels || !distinct {
            return Err(Error::invalid(
                "scheduler",
                format!(
                    "FIFO-Diffusion needs {levels} distinct timesteps for {levels} levels, the \
                     scheduler lists {} ({}); use a DDIM-style scheduler",
                    timesteps.len(),
                    if distinct { "distinct" } else { "with repeats" }
                ),
            ));
        }
        timesteps.reverse();
        let alphas = timesteps
            .iter()
            .map(|&t| {
                scheduler.noise_schedule().alpha_cumprod_at(t).map_err(|_| {
                    Error::invalid(
                        "scheduler",
                        format!(
                            "FIFO-Diffusion steps on integer training timesteps, the scheduler \
                             lists {t}"
                        ),
                    )
                })
            })
            .collect::<Result<Vec<f32>>>()?;
        let mut given = vec![("conditioning", &conditioning)];
        if let Some(g) = &guided {
            given.push(("negative", &g.negative));
        }
        for (name, c) in given {
            if let Conditioning::PerFrame(ctx) = c
                && ctx.dims()[1] != shape.frames
            {
                return Err(Error::shape(
                    name,
                    format!(
                        "[B, F, S, D] with F = {} (the video's frames)",
                        shape.frames
                    ),
                    &ctx.dims(),
                ));
            }
        }
        Ok(FifoStream {
            denoiser: self.denoiser,
            prediction_type: self.denoiser.prediction_type(),
            plan: self.plan,
            timesteps,
            alphas,
            guidance: guided,
            conditioning,
            shape,
            device: device.clone(),
            noise,
            queue: None,
            iteration: 0,
            emitted: 0,
            finite_checks: self.finite_checks,
        })
    }

    /// Samples the whole video `[B, C, F, H, W]` (`F = shape.frames`), reporting every warm-up
    /// step (pass 0) and every emitted frame (pass 1) to `progress`, which may cancel.
    ///
    /// # Errors
    /// As [`FifoSampler::stream`]; the model's errors; [`Error::Cancelled`].
    pub fn sample(
        &self,
        shape: VideoShape,
        conditioning: Conditioning,
        noise: &mut dyn NoiseSource,
        device: &Device,
        progress: &mut dyn FnMut(Progress<'_>) -> Control,
    ) -> Result<Tensor<5>> {
        let mut stream = self.stream(shape, conditioning, noise, device)?;
        let mut frames = Vec::with_capacity(shape.frames);
        while let Some(frame) = stream.next_frame(progress) {
            frames.push(frame?);
        }
        Ok(Tensor::cat(frames, 2))
    }
}

/// One window of a model call: its latents `[B, C, w, H, W]`, the level of each of its frames
/// and the video frame each becomes (for per-frame conditioning).
struct WindowInput {
    x: Tensor<5>,
    levels: Vec<usize>,
    outputs: Vec<usize>,
}

/// The frames of a FIFO-Diffusion video, produced as they leave the queue (an [`Iterator`] of
/// `[B, C, 1, H, W]` clean latents; [`FifoStream::next_frame`] also reports progress).
pub struct FifoStream<'s> {
    denoiser: &'s dyn Denoiser,
    prediction_type: PredictionType,
    plan: Fifo,
    /// The `S` timesteps, ascending (level `i` = `timesteps[i]`).
    timesteps: Vec<f64>,
    /// `ᾱ` of each level.
    alphas: Vec<f32>,
    guidance: Option<Guidance>,
    conditioning: Conditioning,
    shape: VideoShape,
    device: Device,
    noise: &'s mut dyn NoiseSource,
    /// `[B, C, queue_len, H, W]`, `None` before the warm-up.
    queue: Option<Tensor<5>>,
    /// Iterations run (frames dequeued, dropped ones included).
    iteration: usize,
    /// Frames handed to the caller.
    emitted: usize,
    /// Whether model outputs and latents are checked for NaN and infinity.
    finite_checks: bool,
}

impl FifoStream<'_> {
    /// The queue `[B, C, queue_len, H, W]` (`None` before the first frame is asked for).
    pub fn queue(&self) -> Option<&Tensor<5>> {
        self.queue.as_ref()
    }

    /// Frames dequeued before the video starts (`S − window`, or fewer when `S < window`).
    fn dropped(&self) -> usize {
        self.plan.num_levels().saturating_sub(self.plan.window)
    }

    /// The next clean frame `[B, C, 1, H, W]`, `None` after the last; `progress` sees every
    /// warm-up step and every emitted frame and may cancel. After an error the stream ends.
    pub fn next_frame(
        &mut self,
        progress: &mut dyn FnMut(Progress<'_>) -> Control,
    ) -> Option<Result<Tensor<5>>> {
        if self.emitted >= self.shape.frames {
            return None;
        }
        let result = self.advance(progress);
        if result.is_err() {
            self.emitted = self.shape.frames;
        }
        Some(result)
    }

    fn advance(&mut self, progress: &mut dyn FnMut(Progress<'_>) -> Control) -> Result<Tensor<5>> {
        if self.queue.is_none() {
            let queue = self.warm_up(progress)?;
            self.queue = Some(queue);
        }
        loop {
            let frame = self.iterate()?;
            self.iteration += 1;
            if self.iteration > self.dropped() {
                let step = self.emitted;
                self.emitted += 1;
                report(
                    progress,
                    Progress {
                        iteration: 1,
                        iterations: 2,
                        step,
                        num_steps: self.shape.frames,
                        timestep: self.timesteps[0],
                        latents: self.queue.as_ref().expect("set above"),
                        pred_original: Some(&frame),
                    },
                    self.finite_checks,
                )?;
                return Ok(frame);
            }
        }
    }

    /// Samples the starting clip by DDIM over the `S` levels and builds the queue from it.
    fn warm_up(&mut self, progress: &mut dyn FnMut(Progress<'_>) -> Control) -> Result<Tensor<5>> {
        let plan = self.plan;
        let levels = plan.num_levels();
        let clip_shape = self.shape.with_frames(plan.window);
        let mut clip = draw(self.noise, clip_shape.dims(), &self.device)?;
        // Clip frame j becomes video frame j (see the module doc).
        let outputs: Vec<usize> = (0..plan.window)
            .map(|j| j.min(self.shape.frames - 1))
            .collect();
        for (step, level) in (0..levels).rev().enumerate() {
            let frame_levels = vec![level; plan.window];
            let output = self.predict(&[WindowInput {
                x: clip.clone(),
                levels: frame_levels.clone(),
                outputs: outputs.clone(),
            }])?;
            clip = self.update(clip, output.window(0), &frame_levels)?;
            report(
                progress,
                Progress {
                    iteration: 0,
                    iterations: 2,
                    step,
                    num_steps: levels,
                    timestep: self.timesteps[level],
                    latents: &clip,
                    pred_original: None,
                },
                self.finite_checks,
            )?;
        }
        let fresh = draw(
            self.noise,
            self.shape.with_frames(levels).dims(),
            &self.device,
        )?;
        let mut parts = Vec::with_capacity(plan.queue_len());
        for _ in 0..plan.context() {
            parts.push(clip.clone().narrow(2, 0, 1));
        }
        for level in 0..levels {
            let source = (level + plan.window)
                .saturating_sub(levels)
                .min(plan.window - 1);
            let scales = Scales::from_alpha_cumprod(self.alphas[level]);
            let x0 = clip.clone().narrow(2, source, 1);
            let eps = fresh.clone().narrow(2, level, 1);
            parts.push(x0.mul_scalar(scales.alpha as f32) + eps.mul_scalar(scales.sigma as f32));
        }
        Ok(Tensor::cat(parts, 2))
    }

    /// One iteration: every level denoised once (windows back to front, `windows_per_call`
    /// per model call), the head dequeued and fresh noise enqueued. Returns the dequeued
    /// (clean) frame.
    fn iterate(&mut self) -> Result<Tensor<5>> {
        let plan = self.plan;
        let mut queue = self.queue.take().expect("warmed up");
        for group in plan.windows().chunks(plan.windows_per_call) {
            // Every window of the group reads the queue before any of them writes: no window
            // reads the frames another of the iteration writes (see `Fifo::windows`).
            let windows: Vec<WindowInput> = group
                .iter()
                .map(|&(start, _, end)| WindowInput {
                    x: queue.clone().narrow(2, start, end - start),
                    levels: (start..end).map(|p| plan.level_of(p)).collect(),
                    outputs: (start..end).map(|p| self.output_frame(p)).collect(),
                })
                .collect();
            let output = self.predict(&windows)?;
            for (k, (window, &(start, write_from, end))) in
                windows.into_iter().zip(group).enumerate()
            {
                let own = output.window(k);
                let keep = write_from - start;
                let written = end - write_from;
                let updated = self.update(
                    window.x.narrow(2, keep, written),
                    own.narrow(2, keep, written),
                    &window.levels[keep..],
                )?;
                let [b, c, _, h, w] = queue.dims();
                queue = queue.slice_assign([0..b, 0..c, write_from..end, 0..h, 0..w], updated);
            }
        }
        let head = plan.context();
        let frame = queue.clone().narrow(2, head, 1);
        let fresh = draw(self.noise, self.shape.with_frames(1).dims(), &self.device)?;
        let len = plan.queue_len();
        self.queue = Some(Tensor::cat(vec![queue.narrow(2, 1, len - 1), fresh], 2));
        Ok(frame)
    }

    /// The video frame that queue position `p` becomes (clamped to the video), for per-frame
    /// conditioning.
    fn output_frame(&self, position: usize) -> usize {
        let emitted = (self.iteration + position) as i64 - self.plan.context() as i64;
        let frame = emitted - self.dropped() as i64;
        frame.clamp(0, self.shape.frames as i64 - 1) as usize
    }

    /// The guided model output of `windows` stacked along the batch in one call
    /// (`[k·B, C, w, H, W]` for `k` windows, window after window): in each, frame `j` at level
    /// `levels[j]` with the conditioning of video frame `outputs[j]`.
    fn predict(&self, windows: &[WindowInput]) -> Result<StackedOutput> {
        let frames = windows[0].levels.len();
        let values: Vec<f64> = windows
            .iter()
            .flat_map(|w| {
                (0..self.shape.batch).flat_map(|_| w.levels.iter().map(|&l| self.timesteps[l]))
            })
            .collect();
        let timesteps = Timesteps::PerFrame { frames, values };
        let negatives = self.guidance.iter().flat_map(|g| {
            windows
                .iter()
                .map(|w| select_frames(&g.negative, &w.outputs, &self.device))
        });
        let owns = windows
            .iter()
            .map(|w| select_frames(&self.conditioning, &w.outputs, &self.device));
        let conditioning = stacked_conditioning(negatives, owns)?;
        let output = stacked_guided_prediction(
            self.denoiser,
            windows.iter().map(|w| w.x.clone()).collect(),
            timesteps,
            &conditioning,
            self.guidance.as_ref(),
        )?;
        if self.finite_checks {
            let (lo, hi) = windows
                .iter()
                .flat_map(|w| &w.levels)
                .fold((f64::MAX, f64::MIN), |(lo, hi), &l| {
                    (lo.min(self.timesteps[l]), hi.max(self.timesteps[l]))
                });
            let at = format!("the per-frame timesteps {lo}..={hi} of a FIFO window");
            check_model_output(true, output.all(), at)?;
        }
        Ok(output)
    }

    /// DDIM with `η` for every frame from its level to the level below (level 0: to `ᾱ = 1`).
    fn update(
        &mut self,
        x: Tensor<5>,
        output: Tensor<5>,
        frame_levels: &[usize],
    ) -> Result<Tensor<5>> {
        let z = if self.plan.eta > 0.0 {
            Some(draw(self.noise, x.dims(), &self.device)?)
        } else {
            None
        };
        let mut frames = Vec::with_capacity(frame_levels.len());
        for (j, &level) in frame_levels.iter().enumerate() {
            let a = f64::from(self.alphas[level]);
            let a_prev = if level == 0 {
                1.0
            } else {
                f64::from(self.alphas[level - 1])
            };
            let (x0, eps) = to_x0_and_eps(
                self.prediction_type,
                output.clone().narrow(2, j, 1),
                x.clone().narrow(2, j, 1),
                Scales::from_alpha_cumprod(self.alphas[level]),
            )?;
            let variance = (1.0 - a_prev) / (1.0 - a) * (1.0 - a / a_prev);
            let std = self.plan.eta * variance.max(0.0).sqrt();
            let direction = (1.0 - a_prev - std * std).max(0.0).sqrt();
            let mut prev = x0.mul_scalar(a_prev.sqrt() as f32) + eps.mul_scalar(direction as f32);
            if let Some(z) = &z {
                prev = prev + z.clone().narrow(2, j, 1).mul_scalar(std as f32);
            }
            frames.push(prev);
        }
        Ok(Tensor::cat(frames, 2))
    }
}

impl Iterator for FifoStream<'_> {
    type Item = Result<Tensor<5>>;

    fn next(&mut self) -> Option<Self::Item> {
        self.next_frame(&mut |_| Control::Continue)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let left = self.shape.frames - self.emitted;
        (left, Some(left))
    }
}

#[cfg(test)]
mod tests;
