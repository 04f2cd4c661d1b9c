//! Gen-L-Video temporal co-denoising (Wang et al. 2023, "Gen-L-Video: Multi-Text to Long Video
//! Generation via Temporal Co-Denoising"; reference code `glv/pipelines/pipeline_tuning_free.py`,
//! see `shared/reference/algorithms.md` §7).
//!
//! The video is covered by windows of the model's clip length. At every timestep each window is
//! denoised on its own (one guided model call and one scheduler step), and the video's
//! `x_{t−1}` is the per-frame weighted average of the windows' results: the least-squares
//! solution of `min_x Σ_i ‖W_i ⊙ (F_i(x) − x^i_{t−1})‖²` of the paper. FreeNoise fuses features
//! inside the model instead; co-denoising needs nothing from the model but the
//! [`Denoiser`] trait, at one model call per window per step, or several windows stacked
//! along the batch in one call ([`CoDenoising::windows_per_call`]: larger products, and the
//! windows spread over the devices of a [`ShardedDenoiser`](vdm_core::ShardedDenoiser)).
//!
//! Unlike the reference code:
//! - every window keeps **its own scheduler state** (a clone), so multistep solvers
//!   (DPM-Solver++, UniPC, DEIS) and two-stage ones (Heun) stay correct;
//! - **any frame count** works: a last window flush with the end covers the frames the stride
//!   leaves out (the reference leaves them at 0);
//! - windows may **loop** around the end (seamless cyclic videos);
//! - the weights may be flat (the reference), pyramid, or linear cross-fades over each overlap.
//!
//! Invariant (tested): with one window covering the video it equals [`LongVideoSampler`]
//! exactly.
//!
//! [`LongVideoSampler`]: crate::sampler::LongVideoSampler

use std::ops::Range;

use burn::tensor::{Device, Tensor, TensorData};
use vdm_core::{Conditioning, Denoiser, Error, NoiseSource, Result, Timesteps, VideoShape};
use vdm_schedulers::Scheduler;

use crate::freenoise::context_windows;
use crate::noise_prior::{Gaussian, InitialNoise};
use crate::sampler::{
    At, Control, Guidance, Progress, check_model_output, check_request, report,
    stacked_conditioning, stacked_guided_prediction,
};

/// How the windows' results are weighted frame by frame before averaging.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CoWeights {
    /// Every frame of every window weighs 1 (the reference code).
    #[default]
    Flat,
    /// `min(j + 1, L − j)`: a window's middle frames count most.
    Pyramid,
    /// Linear cross-fades: over the frames a window shares with its neighbour, its weight rises
    /// (falls) linearly, `(j + 1)/(overlap + 1)`; the frames it alone covers weigh 1.
    OverlapLinear,
}

/// The window plan of co-denoising: window length, stride, weights and looping.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CoDenoising {
    /// Frames per window (the model's clip length, e.g. 16).
    pub window: usize,
    /// Frames between window starts (≤ `window`; e.g. 8, or 4 for more overlap).
    pub stride: usize,
    /// How results are weighted.
    pub weights: CoWeights,
    /// Windows wrap around the end, so the last frames blend into the first (cyclic videos).
    pub looped: bool,
    /// Windows denoised together in one model call, stacked along the batch (1: one call per
    /// window, the reference). More per call means larger matrix products and, on a model
    /// spread over devices ([`ShardedDenoiser`](vdm_core::ShardedDenoiser) splits calls along
    /// the batch), windows running on several devices at once; the results are the same
    /// (each batch item is computed alone), the memory of a call grows with it.
    pub windows_per_call: usize,
}

/// One window: its frames as one or two (when it wraps) contiguous ranges, in window order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Window {
    /// The contiguous pieces of the window.
    pub pieces: Vec<Range<usize>>,
}

impl Window {
    /// The video frame of each window position.
    pub fn frames(&self) -> Vec<usize> {
        self.pieces.iter().flat_map(|r| r.clone()).collect()
    }
}

impl CoDenoising {
    /// A plan of `window`-frame windows every `stride` frames, flat weights, not looped.
    pub fn new(window: usize, stride: usize) -> Self {
        Self {
            window,
            stride,
            weights: CoWeights::Flat,
            looped: false,
            windows_per_call: 1,
        }
    }

    /// The same plan denoising `n` windows per model call (see
    /// [`windows_per_call`](Self::windows_per_call)).
    pub fn windows_per_call(self, n: usize) -> Self {
        Self {
            windows_per_call: n,
            ..self
        }
    }

    /// The windows over `num_frames` frames: `[s, s + L)` for `s = 0, S, 2S, …` plus one flush
    /// with the end (not looped), or `s = 0, S, …` below `F`, wrapping (looped).
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] naming `window` (0 or longer than the video), `stride`
    /// (0 or longer than the window) or `windows_per_call` (0): the plan's one check, which
    /// the sampler and `Generation::validate` both reach through here.
    #[allow(clippy::single_range_in_vec_init)] // a window is a list of one or two ranges
    pub fn windows(&self, num_frames: usize) -> Result<Vec<Window>> {
        if self.windows_per_call == 0 {
            return Err(Error::invalid("windows_per_call", "must be ≥ 1"));
        }
        if self.window == 0 || self.window > num_frames {
            return Err(Error::invalid(
                "window",
                format!(
                    "must be in 1..={num_frames} (the number of frames), got {}",
                    self.window
                ),
            ));
        }
        if self.stride == 0 || self.stride > self.window {
            return Err(Error::invalid(
                "stride",
                format!(
                    "must be in 1..={} (window), got {}",
                    self.window, self.stride
                ),
            ));
        }
        if !self.looped {
            // FreeNoise's windows, whose own checks are the ones above.
            return Ok(context_windows(num_frames, self.window, self.stride)?
                .into_iter()
                .map(|r| Window { pieces: vec![r] })
                .collect());
        }
        Ok((0..num_frames)
            .step_by(self.stride)
            .map(|s| {
                let end = s + self.window;
                let pieces = if end <= num_frames {
                    vec![s..end]
                } else {
                    vec![s..num_frames, 0..end - num_frames]
                };
                Window { pieces }
            })
            .collect())
    }

    /// Each window's weight per position, divided by the per-frame sum over the windows
    /// covering that frame (so a frame's weights sum to 1, and a frame only one window covers
    /// takes that window's value exactly).
    pub fn normalized_weights(&self, windows: &[Window], num_frames: usize) -> Vec<Vec<f32>> {
        let frames: Vec<Vec<usize>> = windows.iter().map(Window::frames).collect();
        let raw: Vec<Vec<f32>> = (0..windows.len())
            .map(|i| self.raw_weights(&frames, i))
            .collect();
        let mut total = vec![0.0f32; num_frames];
        for (f, w) in frames.iter().zip(&raw) {
            for (&frame, &v) in f.iter().zip(w) {
                total[frame] += v;
            }
        }
        frames
            .iter()
            .zip(raw)
            .map(|(f, w)| {
                f.iter()
                    .zip(w)
                    .map(|(&frame, v)| v / total[frame])
                    .collect()
            })
            .collect()
    }

    fn raw_weights(&self, frames: &[Vec<usize>], i: usize) -> Vec<f32> {
        let len = frames[i].len();
        match self.weights {
            CoWeights::Flat => vec![1.0; len],
            CoWeights::Pyramid => (0..len).map(|j| (j + 1).min(len - j) as f32).collect(),
            CoWeights::OverlapLinear => {
                let shared = |other: Option<&Vec<usize>>| {
                    other.map_or(0, |o| frames[i].iter().filter(|f| o.contains(f)).count())
                };
                let n = frames.len();
                let (prev, next) = if self.looped && n > 1 {
                    (frames.get((i + n - 1) % n), frames.get((i + 1) % n))
                } else {
                    (
                        i.checked_sub(1).and_then(|p| frames.get(p)),
                        frames.get(i + 1),
                    )
                };
                let (left, right) = (shared(prev), shared(next));
                (0..len)
                    .map(|j| {
                        let up = if j < left {
                            (j + 1) as f32 / (left + 1) as f32
                        } else {
                            1.0
                        };
                        let down = if len - j <= right {
                            (len - j) as f32 / (right + 1) as f32
                        } else {
                            1.0
                        };
                        up.min(down)
                    })
                    .collect()
            }
        }
    }
}

/// The frames of `window` out of `x` (`[B, C, F, H, W]` or a per-frame conditioning
/// `[B, F, S, D]`, frames on `dim`).
fn gather<const D: usize>(x: &Tensor<D>, window: &Window, dim: usize) -> Tensor<D> {
    let parts: Vec<Tensor<D>> = window
        .pieces
        .iter()
        .map(|r| x.clone().narrow(dim, r.start, r.end - r.start))
        .collect();
    if parts.len() == 1 {
        parts.into_iter().next().expect("one piece")
    } else {
        Tensor::cat(parts, dim)
    }
}

/// `fused + window_frames` at the frames of `window` (the inverse of [`gather`] on latents
/// `[B, C, F, H, W]`: `window_frames` is `[B, C, w, H, W]`, its frames in window order).
fn scatter_add(fused: Tensor<5>, window_frames: Tensor<5>, window: &Window) -> Tensor<5> {
    let [b, c, _, h, w] = fused.dims();
    let mut fused = fused;
    let mut offset = 0;
    for r in &window.pieces {
        let len = r.end - r.start;
        let part = window_frames.clone().narrow(2, offset, len);
        let ranges = [0..b, 0..c, r.clone(), 0..h, 0..w];
        let current = fused.clone().slice(ranges.clone());
        fused = fused.slice_assign(ranges, current + part);
        offset += len;
    }
    fused
}

/// `conditioning` for the frames of `window` (per-frame contexts are sliced; shared ones are
/// kept).
fn window_conditioning(conditioning: &Conditioning, window: &Window) -> Conditioning {
    match conditioning {
        Conditioning::PerFrame(ctx) => Conditioning::PerFrame(gather(ctx, window, 1)),
        other => other.clone(),
    }
}

/// The co-denoising sampler: Gaussian initial noise, optional classifier-free guidance, one
/// scheduler clone per window.
pub struct CoDenoisingSampler<'a> {
    denoiser: &'a dyn Denoiser,
    scheduler: Box<dyn Scheduler>,
    plan: CoDenoising,
    guidance: Option<Guidance>,
    window_prompts: Option<Vec<Conditioning>>,
    finite_checks: bool,
}

impl<'a> CoDenoisingSampler<'a> {
    /// A co-denoising sampler for `plan`, stepping a clone of `scheduler` per window.
    pub fn new(
        denoiser: &'a dyn Denoiser,
        scheduler: Box<dyn Scheduler>,
        plan: CoDenoising,
    ) -> Self {
        Self {
            denoiser,
            scheduler,
            plan,
            guidance: None,
            window_prompts: None,
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
    /// component (on by default; see [`LongVideoSampler`](crate::sampler::LongVideoSampler)).
    /// Each check is one reduction over the tensor and one host read.
    pub fn with_finite_checks(mut self, enabled: bool) -> Self {
        self.finite_checks = enabled;
        self
    }

    /// One conditioning per window (Gen-L-Video's multi-text mode: window `i` sees
    /// `prompts[i]`), instead of the conditioning passed to [`CoDenoisingSampler::sample`].
    pub fn with_window_prompts(mut self, prompts: Vec<Conditioning>) -> Self {
        self.window_prompts = Some(prompts);
        self
    }

    /// Samples a video of `shape`. `conditioning` is shared by every window, or per frame
    /// (`[B, F, S, D]`, sliced per window); `noise` provides every random number; `progress`
    /// is called after every step with the fused latents and may cancel.
    ///
    /// # Errors
    /// Typed errors naming the parameter for a bad plan, a prediction-type mismatch, zero
    /// steps, an inversion scheduler or a window-prompt count that does not match the windows;
    /// the model's and scheduler's errors.
    pub fn sample(
        &mut self,
        shape: VideoShape,
        conditioning: Conditioning,
        num_inference_steps: usize,
        noise: &mut dyn NoiseSource,
        device: &Device,
        progress: &mut dyn FnMut(Progress<'_>) -> Control,
    ) -> Result<Tensor<5>> {
        let windows = self.plan.windows(shape.frames)?;
        let guided = check_request(
            self.denoiser,
            self.scheduler.as_ref(),
            num_inference_steps,
            self.guidance.as_ref(),
        )?;
        if let Some(prompts) = &self.window_prompts
            && prompts.len() != windows.len()
        {
            return Err(Error::invalid(
                "window_prompts",
                format!(
                    "{} prompts for {} windows (window {}, stride {}, {} frames)",
                    prompts.len(),
                    windows.len(),
                    self.plan.window,
                    self.plan.stride,
                    shape.frames
                ),
            ));
        }
        let per_call = self.plan.windows_per_call;
        let weights = self.plan.normalized_weights(&windows, shape.frames);
        // The windows in groups of `per_call` (the last may be smaller), each group one model
        // call: its conditioning is the windows' own stacked after their negatives when
        // guidance applies (`[negatives; owns]`, as the guided call expects).
        let groups: Vec<Range<usize>> = (0..windows.len())
            .step_by(per_call)
            .map(|start| start..(start + per_call).min(windows.len()))
            .collect();
        let group_conditioning: Vec<Conditioning> = groups
            .iter()
            .map(|group| {
                let owns = windows[group.clone()].iter().enumerate().map(|(k, w)| {
                    match &self.window_prompts {
                        Some(p) => p[group.start + k].clone(),
                        None => window_conditioning(&conditioning, w),
                    }
                });
                let negatives = guided.iter().flat_map(|g| {
                    windows[group.clone()]
                        .iter()
                        .map(|w| window_conditioning(&g.negative, w))
                });
                stacked_conditioning(negatives, owns)
            })
            .collect::<Result<_>>()?;
        let weight_tensors: Vec<Tensor<5>> = weights
            .iter()
            .map(|w| Tensor::from_data(TensorData::new(w.clone(), [1, 1, w.len(), 1, 1]), device))
            .collect();

        self.scheduler.set_timesteps(num_inference_steps)?;
        let mut schedulers: Vec<Box<dyn Scheduler>> =
            windows.iter().map(|_| self.scheduler.box_clone()).collect();
        let mut latents = Gaussian
            .sample(shape, noise, device)?
            .mul_scalar(self.scheduler.init_noise_sigma() as f32);
        let timesteps = self.scheduler.timesteps().to_vec();
        for (step, &t) in timesteps.iter().enumerate() {
            let at = At::new(step, timesteps.len(), t);
            let mut fused = Tensor::<5>::zeros(shape.dims(), device);
            for (group, cond) in groups.iter().zip(&group_conditioning) {
                let xs: Vec<Tensor<5>> = windows[group.clone()]
                    .iter()
                    .map(|w| gather(&latents, w, 2))
                    .collect();
                let inputs = xs
                    .iter()
                    .zip(&schedulers[group.clone()])
                    .map(|(x, s)| s.scale_model_input(x.clone(), t))
                    .collect::<Result<Vec<_>>>()?;
                let output = stacked_guided_prediction(
                    self.denoiser,
                    inputs,
                    Timesteps::Shared(t),
                    cond,
                    guided.as_ref(),
                )?;
                check_model_output(self.finite_checks, output.all(), at)?;
                for (k, (i, x)) in group.clone().zip(xs).enumerate() {
                    let own = output.window(k);
                    let prev = schedulers[i]
                        .step(own, t, x, noise)?
                        .prev_sample
                        .mul(weight_tensors[i].clone());
                    fused = scatter_add(fused, prev, &windows[i]);
                }
            }
            latents = fused;
            report(
                progress,
                Progress::single_pass(step, timesteps.len(), t, &latents, None),
                self.finite_checks,
            )?;
        }
        Ok(latents)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use vdm_core::{DenoiserInput, PredictionType, SeededNoise};
    use vdm_schedulers::from_config_json;

    use crate::sampler::LongVideoSampler;

    const DDIM: &str =
        r#"{"_class_name": "DDIMScheduler", "clip_sample": false, "set_alpha_to_one": false}"#;
    const DPMPP: &str = r#"{"_class_name": "DPMSolverMultistepScheduler", "solver_order": 2}"#;

    /// A frame-local toy model: `ε = 0.1·x + c_f`, `c_f` the mean of frame `f`'s context.
    struct FrameLocal;

    impl Denoiser for FrameLocal {
        fn prediction_type(&self) -> PredictionType {
            PredictionType::Epsilon
        }
        fn predict(&self, input: DenoiserInput<'_>) -> Result<Tensor<5>> {
            let shape = input.shape()?;
            let out = input.latents.clone().mul_scalar(0.1);
            Ok(
                match input.conditioning.per_frame(shape.batch, shape.frames)? {
                    Some(ctx) => {
                        let c = ctx.mean_dim(2).mean_dim(1).reshape([
                            shape.batch,
                            1,
                            shape.frames,
                            1,
                            1,
                        ]);
                        out + c
                    }
                    None => out,
                },
            )
        }
    }

    fn context(values: &[f32], device: &Device) -> Conditioning {
        // [1, F, 1, 2]: frame f's context is (v_f, v_f).
        let data: Vec<f32> = values.iter().flat_map(|&v| [v, v]).collect();
        Conditioning::PerFrame(Tensor::from_data(
            TensorData::new(data, [1, values.len(), 1, 2]),
            device,
        ))
    }

    fn host(t: &Tensor<5>) -> Vec<f32> {
        t.to_data().convert::<f32>().try_to_vec::<f32>().unwrap()
    }

    /// Two windows, two model calls per step: the fourth call's NaN is step 1's, named before
    /// any fusion; with the checks off the run ends with NaN latents.
    #[test]
    fn a_nan_window_output_stops_co_denoising_at_its_step() {
        use crate::sampler::BadAfter;
        let device = Device::flex();
        let shape = VideoShape::new([1, 2, 6, 2, 2]);
        let model = BadAfter::new(3, f32::NAN);
        let plan = CoDenoising::new(4, 2);
        let mut s = CoDenoisingSampler::new(&model, from_config_json(DDIM).unwrap(), plan.clone());
        let run = |s: &mut CoDenoisingSampler<'_>| {
            s.sample(
                shape,
                Conditioning::None,
                5,
                &mut SeededNoise::new(7),
                &device,
                &mut |_| Control::Continue,
            )
        };
        let e = run(&mut s).unwrap_err();
        let t = s.scheduler.timesteps()[1];
        assert!(matches!(e, Error::NonFinite { .. }), "{e}");
        let want = format!("non-finite value in the model output at step 1 of 5 (timestep {t})");
        assert!(e.to_string().starts_with(&want), "{e}");

        let model = BadAfter::new(3, f32::NAN);
        let mut s = CoDenoisingSampler::new(&model, from_config_json(DDIM).unwrap(), plan)
            .with_finite_checks(false);
        let video = run(&mut s).unwrap();
        assert!(host(&video).iter().any(|v| v.is_nan()));
    }

    fn direct(
        config: &str,
        shape: VideoShape,
        cond: Conditioning,
        guidance: Option<Guidance>,
    ) -> Vec<f32> {
        let device = Device::flex();
        let mut s = LongVideoSampler::new(&FrameLocal, from_config_json(config).unwrap());
        if let Some(g) = guidance {
            s = s.with_guidance(g);
        }
        let v = s
            .sample(
                shape,
                cond,
                8,
                &mut SeededNoise::new(7),
                &device,
                &mut |_| Control::Continue,
            )
            .unwrap();
        host(&v)
    }

    fn co(
        config: &str,
        plan: CoDenoising,
        shape: VideoShape,
        cond: Conditioning,
        guidance: Option<Guidance>,
    ) -> Vec<f32> {
        let device = Device::flex();
        let mut s = CoDenoisingSampler::new(&FrameLocal, from_config_json(config).unwrap(), plan);
        if let Some(g) = guidance {
            s = s.with_guidance(g);
        }
        let v = s
            .sample(
                shape,
                cond,
                8,
                &mut SeededNoise::new(7),
                &device,
                &mut |_| Control::Continue,
            )
            .unwrap();
        host(&v)
    }

    #[test]
    #[allow(clippy::single_range_in_vec_init)]
    fn windows_cover_any_frame_count_and_loop() {
        let plain = CoDenoising::new(16, 4).windows(25).unwrap();
        let starts: Vec<Vec<Range<usize>>> = plain.iter().map(|w| w.pieces.clone()).collect();
        assert_eq!(starts, [vec![0..16], vec![4..20], vec![8..24], vec![9..25]]);
        let looped = CoDenoising {
            looped: true,
            ..CoDenoising::new(16, 8)
        }
        .windows(32)
        .unwrap();
        assert_eq!(looped.len(), 4);
        assert_eq!(looped[3].pieces, [24..32, 0..8]);
        assert_eq!(looped[3].frames().len(), 16);
        for (plan, field) in [
            (CoDenoising::new(0, 1), "window"),
            (CoDenoising::new(40, 4), "window"),
            (CoDenoising::new(16, 0), "stride"),
            (CoDenoising::new(16, 17), "stride"),
        ] {
            for looped in [false, true] {
                let e = CoDenoising {
                    looped,
                    ..plan.clone()
                }
                .windows(32)
                .unwrap_err();
                assert!(
                    matches!(&e, Error::InvalidConfig { field: f, .. } if f == field),
                    "{plan:?} looped {looped}: {e}"
                );
            }
        }
    }

    #[test]
    fn overlap_linear_cross_fades() {
        let plan = CoDenoising {
            weights: CoWeights::OverlapLinear,
            ..CoDenoising::new(8, 4)
        };
        let windows = plan.windows(16).unwrap();
        let w = plan.normalized_weights(&windows, 16);
        // First window: alone on frames 0..4 (weight 1), then fading out over the overlap.
        assert_eq!(&w[0][..4], &[1.0; 4]);
        assert!(w[0][4..].windows(2).all(|p| p[0] > p[1]), "{:?}", w[0]);
        assert!(w[1][..4].windows(2).all(|p| p[0] < p[1]), "{:?}", w[1]);
    }

    /// One window covering the video is direct sampling, bit for bit, with guidance and with a
    /// multistep solver.
    #[test]
    fn one_window_equals_direct_sampling() {
        let device = Device::flex();
        let shape = VideoShape::new([1, 2, 6, 3, 2]);
        let cond = context(&[0.1, 0.2, 0.3, 0.4, 0.5, 0.6], &device);
        let guidance = Guidance {
            scale: 3.0,
            negative: context(&[0.0; 6], &device),
        };
        for config in [DDIM, DPMPP] {
            for weights in [
                CoWeights::Flat,
                CoWeights::Pyramid,
                CoWeights::OverlapLinear,
            ] {
                let plan = CoDenoising {
                    weights,
                    ..CoDenoising::new(6, 3)
                };
                let a = direct(config, shape, cond.clone(), Some(guidance.clone()));
                let b = co(config, plan, shape, cond.clone(), Some(guidance.clone()));
                assert_eq!(a, b, "{config} {weights:?}");
            }
        }
    }

    /// With a frame-local model every window computes the same value for a shared frame, so
    /// any window plan (looped or not, any weights) reproduces direct sampling up to the
    /// rounding of the weighted average (1e-5 relative); per-window scheduler state keeps this true for a
    /// multistep solver, and per-frame conditioning is sliced per window.
    #[test]
    fn frame_local_model_is_unchanged_by_windows() {
        let device = Device::flex();
        let shape = VideoShape::new([1, 2, 10, 2, 2]);
        let values: Vec<f32> = (0..10).map(|f| 0.05 * f as f32).collect();
        let cond = context(&values, &device);
        for config in [DDIM, DPMPP] {
            let a = direct(config, shape, cond.clone(), None);
            for looped in [false, true] {
                for weights in [
                    CoWeights::Flat,
                    CoWeights::Pyramid,
                    CoWeights::OverlapLinear,
                ] {
                    let plan = CoDenoising {
                        weights,
                        looped,
                        ..CoDenoising::new(4, 3)
                    };
                    let b = co(config, plan, shape, cond.clone(), None);
                    let d = a
                        .iter()
                        .zip(&b)
                        .map(|(x, y)| (x - y).abs())
                        .fold(0.0, f32::max);
                    let scale = a.iter().map(|x| x.abs()).fold(0.0, f32::max);
                    assert!(
                        d < 1e-5 * scale,
                        "{config} looped {looped} {weights:?}: {d} of {scale}"
                    );
                }
            }
        }
    }

    /// Windows stacked into one model call (2, 3, or more than there are windows) make the
    /// video of one call per window, bit for bit (the toy model computes each batch item
    /// alone): with guidance, a multistep and an ancestral solver (whose noise is drawn in
    /// the same window order), window prompts and looped windows. 0 per call is refused.
    #[test]
    fn windows_per_call_do_not_change_the_video() {
        const ANCESTRAL: &str = r#"{"_class_name": "EulerAncestralDiscreteScheduler"}"#;
        let device = Device::flex();
        let shape = VideoShape::new([1, 2, 10, 2, 2]);
        let guidance = Guidance {
            scale: 3.0,
            negative: context(&[0.0; 10], &device),
        };
        // Windows of 4 every 3 frames: 4 windows (5 when looped).
        let prompts = |n: usize| -> Vec<Conditioning> {
            (0..n)
                .map(|i| context(&[0.1 * i as f32 + 0.05; 4], &device))
                .collect()
        };
        for config in [DPMPP, ANCESTRAL] {
            for looped in [false, true] {
                let run = |per_call: usize| {
                    let plan = CoDenoising {
                        weights: CoWeights::Pyramid,
                        looped,
                        ..CoDenoising::new(4, 3)
                    };
                    let windows = plan.windows(shape.frames).unwrap().len();
                    let plan = plan.windows_per_call(per_call);
                    let mut s = CoDenoisingSampler::new(
                        &FrameLocal,
                        from_config_json(config).unwrap(),
                        plan,
                    )
                    .with_guidance(guidance.clone())
                    .with_window_prompts(prompts(windows));
                    s.sample(
                        shape,
                        Conditioning::None,
                        5,
                        &mut SeededNoise::new(9),
                        &device,
                        &mut |_| Control::Continue,
                    )
                    .map(|v| host(&v))
                };
                let one = run(1).unwrap();
                for per_call in [2, 3, 8] {
                    assert_eq!(
                        run(per_call).unwrap(),
                        one,
                        "{config} looped {looped} {per_call}"
                    );
                }
                let e = run(0).unwrap_err();
                assert!(e.to_string().contains("windows_per_call"), "{e}");
            }
        }
    }

    #[test]
    fn window_prompts_must_match_the_windows() {
        let device = Device::flex();
        let shape = VideoShape::new([1, 2, 10, 2, 2]);
        let mut s = CoDenoisingSampler::new(
            &FrameLocal,
            from_config_json(DDIM).unwrap(),
            CoDenoising::new(4, 3),
        )
        .with_window_prompts(vec![context(&[0.0; 4], &device)]);
        let e = s
            .sample(
                shape,
                Conditioning::None,
                4,
                &mut SeededNoise::new(0),
                &device,
                &mut |_| Control::Continue,
            )
            .unwrap_err();
        assert!(e.to_string().contains("window_prompts"), "{e}");
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// Every frame is covered, and its normalised weights sum to 1.
        #[test]
        fn weights_normalise(
            frames in 1usize..60,
            window in 1usize..20,
            stride in 1usize..20,
            looped in any::<bool>(),
            kind in 0usize..3,
        ) {
            let weights = [CoWeights::Flat, CoWeights::Pyramid, CoWeights::OverlapLinear][kind];
            let plan = CoDenoising { window, stride, weights, looped, windows_per_call: 1 };
            prop_assume!(window <= frames && stride <= window);
            let windows = plan.windows(frames).unwrap();
            let w = plan.normalized_weights(&windows, frames);
            let mut total = vec![0.0f32; frames];
            for (win, ws) in windows.iter().zip(&w) {
                for (f, v) in win.frames().into_iter().zip(ws) {
                    prop_assert!(*v > 0.0);
                    total[f] += v;
                }
            }
            for t in total {
                prop_assert!((t - 1.0).abs() < 1e-5, "{}", t);
            }
        }
    }
}
