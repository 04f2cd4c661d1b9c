//! FreeNoise window fusion as a [`TemporalHook`] (Qiu et al. 2024, §3.2 "Window-based Attention
//! Fusion", Eq. 9; diffusers' `FreeNoiseTransformerBlock.forward` in
//! `src/diffusers/models/attention.py`; VideoCrafter's `CrossAttention.forward` in
//! `lvdm/modules/attention_freenoise.py` of AILab-CVC/FreeNoise).

use std::collections::HashMap;
use std::ops::Range;
use std::sync::{Arc, Mutex};

use burn::tensor::ops::PadMode;
use burn::tensor::{IndexingUpdateOp, Int, Tensor, TensorData};
use vdm_core::temporal::{FrameWindow, TemporalHook, TemporalSite, TemporalStages, run_chain};
use vdm_core::{Error, Result};

use super::windows::{WeightingScheme, WindowPlan};

/// Where the windows are fused relative to the temporal layer's stages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum FusionVariant {
    /// diffusers / AnimateDiff (`FreeNoiseTransformerBlock`, FreeNoise-AnimateDiff's
    /// `TemporalTransformerBlock(local_window=True)`): every window runs **all** stages in
    /// order (e.g. `attn1 → attn2` with their residuals) on its own frames, and the windows are
    /// fused once, after the chain.
    #[default]
    Chain,
    /// VideoCrafter / LongerCrafter (the official FreeNoise code): **each** stage is run on
    /// every window and fused before the next stage sees the frames.
    ///
    /// VideoCrafter fuses inside the attention operator, before `to_out` and the residual;
    /// since the fusion weights are normalised and `to_out` and the residual are affine, fusing
    /// the whole stage output is the same thing. Unlike VideoCrafter (whose frames after the
    /// last full window come out as 0), the ragged last window is used here as in `Chain`.
    PerStage,
}

/// How windows are handed to the stages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WindowBatching {
    /// Windows are stacked along the token dimension: one stage call on `[N·m, L, C]` for up to
    /// `max_windows` windows `m` (`None`: all windows in one call), at the memory cost of about
    /// `L/S` times the layer's activations. Fewer, larger calls: the better choice where the
    /// number of kernel launches dominates (GPU backends). On the flex CPU backend it is slower
    /// than [`Self::Sequential`]: the windowed stages of the bench-size AnimateDiff UNet took
    /// 1.3–1.9× as long with all windows stacked (the larger tensors fall out of cache; see
    /// `examples/bench_freenoise.rs` and `docs/benchmarks.md`).
    ///
    /// When a call holds more than one window, the stage gets
    /// `FrameWindow { start: 0, end: L, positions: 0..L, mask: None }`, and the rows of its
    /// input are `n·m + j` for token `n` and window `j`. Valid for every stage that treats the
    /// leading dimension as independent sequences and uses only `positions` (and `mask`) of
    /// the window — attention, norms and per-token layers do. Stages that need the absolute
    /// frame range or a per-row side input of exactly `N` rows must use [`Self::Sequential`].
    Stacked {
        /// Most windows per stage call (`None`: all); `Some(0)` is invalid.
        max_windows: Option<usize>,
    },
    /// One stage call per window on `[N, L, C]` with the window's own
    /// `FrameWindow { start, end, positions: 0..L }` (as diffusers loops). The default: the
    /// fastest on CPU, and the least memory (no stacked copy of the tokens).
    Sequential,
}

impl Default for WindowBatching {
    /// One window per stage call ([`WindowBatching::Sequential`]).
    fn default() -> Self {
        Self::Sequential
    }
}

/// Configuration of [`FreeNoiseHook`].
///
/// Defaults are diffusers' `enable_free_noise()` defaults: `L = 16`, `S = 4`, pyramid weights,
/// the `Chain` variant, the correct tail normaliser, one window per stage call.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FreeNoiseConfig {
    /// Window length `L`: the number of frames the model was trained on (16 for AnimateDiff
    /// and VideoCrafter). Must not exceed the layer's positional-embedding table.
    pub context_length: usize,
    /// Stride `S` between window starts, `1 ≤ S ≤ L`.
    pub context_stride: usize,
    /// Frame weights inside a window.
    pub weighting_scheme: WeightingScheme,
    /// Fuse after the whole chain of stages, or after every stage.
    pub variant: FusionVariant,
    /// Reproduce diffusers' ragged-window normaliser bug B3 (see [`WindowPlan`]); for parity
    /// tests only.
    pub compat_diffusers_tail_bug: bool,
    /// How windows are handed to the stages.
    pub batching: WindowBatching,
}

impl Default for FreeNoiseConfig {
    fn default() -> Self {
        Self {
            context_length: 16,
            context_stride: 4,
            weighting_scheme: WeightingScheme::Pyramid,
            variant: FusionVariant::Chain,
            compat_diffusers_tail_bug: false,
            batching: WindowBatching::default(),
        }
    }
}

impl FreeNoiseConfig {
    /// The defaults with window `context_length` and stride `context_stride`.
    pub fn new(context_length: usize, context_stride: usize) -> Self {
        Self {
            context_length,
            context_stride,
            ..Self::default()
        }
    }

    /// Sets the weighting scheme.
    pub fn with_weighting_scheme(mut self, scheme: WeightingScheme) -> Self {
        self.weighting_scheme = scheme;
        self
    }

    /// Sets the fusion variant.
    pub fn with_variant(mut self, variant: FusionVariant) -> Self {
        self.variant = variant;
        self
    }

    /// Reproduces (or not) diffusers' ragged-window normaliser bug.
    pub fn with_compat_diffusers_tail_bug(mut self, compat: bool) -> Self {
        self.compat_diffusers_tail_bug = compat;
        self
    }

    /// Sets how windows are batched.
    pub fn with_batching(mut self, batching: WindowBatching) -> Self {
        self.batching = batching;
        self
    }

    /// Checks `1 ≤ L`, `1 ≤ S ≤ L` and `max_windows ≠ Some(0)`, naming the field.
    pub fn validate(&self) -> Result<()> {
        let (l, s) = (self.context_length, self.context_stride);
        if l == 0 {
            return Err(Error::invalid("context_length", "must be at least 1"));
        }
        if s == 0 || s > l {
            return Err(Error::invalid(
                "context_stride",
                format!("must be in 1..={l} (context_length), got {s}"),
            ));
        }
        if self.batching
            == (WindowBatching::Stacked {
                max_windows: Some(0),
            })
        {
            return Err(Error::invalid(
                "max_windows",
                "must be at least 1 (or None for all)",
            ));
        }
        Ok(())
    }
}

/// FreeNoise window fusion for the temporal layers of **any** model that routes them through
/// [`TemporalHook`] — pass it with
/// [`DenoiserInput::with_temporal`](vdm_core::DenoiserInput::with_temporal).
///
/// For a sequence of `F` frames, the layer's frame-mixing stages run on the windows of a
/// [`WindowPlan`] (`[kS, kS + L)` plus a ragged window `[F − L, F)` flush with the end), each
/// with window-relative positions `0..L`, and the window outputs are averaged per frame with
/// the weights of the [`WeightingScheme`] (Eq. 9 of the paper). Per-frame layers (feed-forward,
/// `proj_out`) stay in the layer and run once on the fused sequence, as in diffusers.
///
/// - **Videos longer than the positional table** work: windows only use positions `0..L`; the
///   hook errors (naming `context_length`) if `L` exceeds the layer's
///   [`TemporalSite::max_positions`].
/// - **`F < L`**: the hook falls back to all frames at once (positions `0..F`), which is what
///   plain inference of a short clip does (diffusers crashes with an `IndexError`, bug B7).
///   `F = L` is one window, i.e. plain inference too.
/// - Window plans (windows, weights, normalisers, accumulation runs) are computed once per `F`
///   and cached.
/// - The accumulation is deterministic on every backend: windows are accumulated in groups of
///   non-overlapping windows (slice-adds, or a `select_assign` that never sees a duplicate
///   index).
/// - Memory: with the default [`WindowBatching::Sequential`] a stage call holds one window
///   (`L` frames); [`WindowBatching::Stacked`] windows hold about `L/S` times the layer's
///   tokens (4× for 16/4), capped by `max_windows`.
///
/// ```
/// use burn::tensor::{Device, Tensor};
/// use vdm_core::temporal::{FrameWindow, TemporalHook, TemporalSite, TemporalStages};
/// use vdm_core::Result;
/// use vdm_longvideo::freenoise::{FreeNoiseConfig, FreeNoiseHook};
///
/// /// A stage that writes each frame's window-relative position.
/// struct Positions;
/// impl TemporalStages for Positions {
///     fn num_stages(&self) -> usize { 1 }
///     fn run_stage(&self, _: usize, x: Tensor<3>, w: &FrameWindow) -> Result<Tensor<3>> {
///         let [n, f, c] = x.dims();
///         let pos: Vec<f32> = w.positions.clone().map(|p| p as f32).collect();
///         Ok(Tensor::<1>::from_floats(pos.as_slice(), &x.device()).reshape([1, f, 1]).expand([n, f, c]))
///     }
/// }
///
/// let hook = FreeNoiseHook::new(FreeNoiseConfig::new(4, 2)).unwrap();
/// let x = Tensor::<3>::zeros([1, 6, 1], &Device::flex());
/// let y = hook.apply(&TemporalSite::new("toy", 6).with_max_positions(4), x, &Positions).unwrap();
/// // Windows [0,4) [2,6), pyramid weights [1,2,2,1]: frame 2 = (2·2 + 1·0)/3.
/// let y: Vec<f32> = y.into_data().try_to_vec().unwrap();
/// assert!((y[2] - 4.0 / 3.0).abs() < 1e-6);
/// ```
pub struct FreeNoiseHook {
    config: FreeNoiseConfig,
    schedules: Mutex<HashMap<usize, Arc<Schedule>>>,
}

impl std::fmt::Debug for FreeNoiseHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FreeNoiseHook")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Clone for FreeNoiseHook {
    fn clone(&self) -> Self {
        Self {
            config: self.config,
            schedules: Mutex::new(self.lock().clone()),
        }
    }
}

impl FreeNoiseHook {
    /// A hook with `config` (validated).
    pub fn new(config: FreeNoiseConfig) -> Result<Self> {
        config.validate()?;
        Ok(Self {
            config,
            schedules: Mutex::new(HashMap::new()),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &FreeNoiseConfig {
        &self.config
    }

    /// The window plan used for `num_frames ≥ L` frames.
    pub fn plan(&self, num_frames: usize) -> Result<WindowPlan> {
        Ok(self.schedule(num_frames)?.plan.clone())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<usize, Arc<Schedule>>> {
        self.schedules.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn schedule(&self, num_frames: usize) -> Result<Arc<Schedule>> {
        if let Some(s) = self.lock().get(&num_frames) {
            return Ok(s.clone());
        }
        let c = &self.config;
        let plan = WindowPlan::new(
            num_frames,
            c.context_length,
            c.context_stride,
            c.weighting_scheme,
            c.compat_diffusers_tail_bug,
        )?;
        let schedule = Arc::new(Schedule::new(plan, c.batching));
        self.lock().insert(num_frames, schedule.clone());
        Ok(schedule)
    }
}

impl TemporalHook for FreeNoiseHook {
    fn apply(
        &self,
        site: &TemporalSite<'_>,
        tokens: Tensor<3>,
        stages: &dyn TemporalStages,
    ) -> Result<Tensor<3>> {
        let [_, frames, _] = tokens.dims();
        let l = self.config.context_length;
        if frames <= l {
            // Short clip: plain inference over all frames (positions 0..F).
            let window = FrameWindow::full(frames);
            site.check_positions(&window.positions)?;
            return run_chain(stages, tokens, &window);
        }
        if let Some(max) = site.max_positions
            && l > max
        {
            return Err(Error::invalid(
                "context_length",
                format!(
                    "{l} exceeds the {max} positional embeddings of temporal layer `{}`",
                    site.layer
                ),
            ));
        }
        if stages.num_stages() == 0 {
            return Ok(tokens);
        }
        let schedule = self.schedule(frames)?;
        match self.config.variant {
            FusionVariant::Chain => schedule.fuse(tokens, &|x, w| run_chain(stages, x, w), site),
            FusionVariant::PerStage => {
                let mut x = tokens;
                for stage in 0..stages.num_stages() {
                    x = schedule.fuse(x, &|x, w| stages.run_stage(stage, x, w), site)?;
                }
                Ok(x)
            }
        }
    }
}

/// The windows of one stage call, their value weights and accumulation runs.
#[derive(Debug, Clone)]
struct Chunk {
    /// Number of windows `m`.
    windows: usize,
    /// The one window of a single-window call (sliced with `narrow`, real `FrameWindow`).
    single: Option<Range<usize>>,
    /// Frame of every stacked position (`m·L`): the indices of the one `select` that stacks
    /// the windows (much cheaper than concatenating `m` strided slices).
    gather: Vec<i64>,
    /// Value weight of every stacked position divided by its frame's normaliser (`m·L`; 0
    /// where nothing is accumulated), so that the accumulated sum is already the average.
    weights: Vec<f32>,
    /// Groups of non-overlapping contributions, each a contiguous range of stacked positions.
    runs: Vec<Run>,
}

/// Stacked positions `offset..offset + frames.len()` are added to `frames` (all distinct).
#[derive(Debug, Clone)]
struct Run {
    offset: usize,
    frames: Vec<i64>,
    /// `frames` as a range when they are consecutive (then a slice-add is used, cheaper than
    /// a scatter).
    contiguous: Option<Range<usize>>,
}

/// A [`WindowPlan`] turned into stage calls.
#[derive(Debug, Clone)]
struct Schedule {
    plan: WindowPlan,
    chunks: Vec<Chunk>,
}

impl Schedule {
    fn new(plan: WindowPlan, batching: WindowBatching) -> Self {
        let l = plan.context_length();
        let n_regular = plan.regular_windows().len();
        // Windows j and j + G never overlap (G·S ≥ L): order windows group by group so that
        // consecutive windows in a call are disjoint; the ragged window comes last.
        let groups = l.div_ceil(plan.context_stride());
        let mut order: Vec<usize> = (0..groups)
            .flat_map(|g| (g..n_regular).step_by(groups))
            .collect();
        if plan.tail_len().is_some() {
            order.push(n_regular);
        }
        let per_call = match batching {
            WindowBatching::Sequential => 1,
            WindowBatching::Stacked { max_windows } => max_windows.unwrap_or(order.len()).max(1),
        };
        let chunks = order
            .chunks(per_call)
            .map(|ids| {
                let mut weights = vec![0.0f32; ids.len() * l];
                let mut runs: Vec<Run> = Vec::new();
                let mut run_frames: Vec<bool> = vec![false; plan.num_frames()];
                for (slot, &j) in ids.iter().enumerate() {
                    let window = &plan.windows()[j];
                    let acc = plan.accumulated(j);
                    for o in acc.clone() {
                        weights[slot * l + o] =
                            plan.weights()[o] / plan.normaliser()[window.start + o];
                    }
                    let start = slot * l + acc.start;
                    let frames: Vec<i64> = acc.map(|o| (window.start + o) as i64).collect();
                    let joins = runs.last().is_some_and(|r| {
                        r.offset + r.frames.len() == start
                            && frames.iter().all(|&f| !run_frames[f as usize])
                    });
                    if !joins {
                        run_frames.iter_mut().for_each(|b| *b = false);
                        runs.push(Run {
                            offset: start,
                            frames: Vec::new(),
                            contiguous: None,
                        });
                    }
                    frames.iter().for_each(|&f| run_frames[f as usize] = true);
                    runs.last_mut().expect("a run").frames.extend(frames);
                }
                for r in &mut runs {
                    let first = r.frames[0] as usize;
                    let consecutive = r
                        .frames
                        .iter()
                        .enumerate()
                        .all(|(i, &f)| f as usize == first + i);
                    r.contiguous = consecutive.then(|| first..first + r.frames.len());
                }
                Chunk {
                    windows: ids.len(),
                    single: (ids.len() == 1).then(|| plan.windows()[ids[0]].clone()),
                    gather: ids
                        .iter()
                        .flat_map(|&j| plan.windows()[j].clone().map(|f| f as i64))
                        .collect(),
                    weights,
                    runs,
                }
            })
            .collect();
        Self { plan, chunks }
    }

    /// Runs `run` on every window of `tokens` (`[N, F, C]`) and fuses the outputs.
    fn fuse(
        &self,
        tokens: Tensor<3>,
        run: &dyn Fn(Tensor<3>, &FrameWindow) -> Result<Tensor<3>>,
        site: &TemporalSite<'_>,
    ) -> Result<Tensor<3>> {
        let [n, f, c] = tokens.dims();
        let l = self.plan.context_length();
        let device = tokens.device();
        let ints = |v: &[i64]| {
            Tensor::<1, Int>::from_data(TensorData::new(v.to_vec(), [v.len()]), &device)
        };
        let mut acc: Option<Tensor<3>> = None;
        for chunk in &self.chunks {
            let m = chunk.windows;
            let (x, window) = match &chunk.single {
                Some(r) => (
                    tokens.clone().narrow(1, r.start, l),
                    FrameWindow::relative(r.start, r.end),
                ),
                None => (
                    // Gathered frames: [N, m·L, C], row n holds token n's m windows.
                    tokens
                        .clone()
                        .select(1, ints(&chunk.gather))
                        .reshape([n * m, l, c]),
                    FrameWindow::relative(0, l),
                ),
            };
            let y = run(x, &window)?;
            if y.dims() != [n * m, l, c] {
                return Err(Error::shape(
                    format!("output of a temporal stage of `{}`", site.layer),
                    format!("[{}, {l}, {c}] (the shape of its input)", n * m),
                    &y.dims(),
                ));
            }
            let w =
                Tensor::<1>::from_data(TensorData::new(chunk.weights.clone(), [m * l]), &device)
                    .reshape([1, m * l, 1]);
            let y = y.reshape([n, m * l, c]) * w;
            for r in &chunk.runs {
                let values = y.clone().narrow(1, r.offset, r.frames.len());
                acc = Some(match (acc, &r.contiguous) {
                    (None, Some(range)) => values.pad(
                        [(0, 0), (range.start, f - range.end), (0, 0)],
                        PadMode::Constant(0.0),
                    ),
                    (Some(acc), Some(range)) => {
                        let slice = [0..n, range.clone(), 0..c];
                        acc.clone()
                            .slice_assign(slice.clone(), acc.slice(slice) + values)
                    }
                    (acc, None) => acc.unwrap_or_else(|| tokens.zeros_like()).select_assign(
                        1,
                        ints(&r.frames),
                        values,
                        IndexingUpdateOp::Add,
                    ),
                });
            }
        }
        // The weights already include the normaliser.
        Ok(acc.expect("every plan has a window"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::Device;

    /// Stage `s` maps `x ↦ (s + 2)·x + position` (position window-relative): linear, so its
    /// fusion is easy to reason about, and different stages do different things.
    struct Affine(usize);

    impl TemporalStages for Affine {
        fn num_stages(&self) -> usize {
            self.0
        }
        fn run_stage(&self, stage: usize, x: Tensor<3>, w: &FrameWindow) -> Result<Tensor<3>> {
            let [n, f, c] = x.dims();
            let pos: Vec<f32> = w.positions.clone().map(|p| p as f32).collect();
            let pos = Tensor::<1>::from_floats(pos.as_slice(), &x.device())
                .reshape([1, f, 1])
                .expand([n, f, c]);
            Ok(x.mul_scalar(stage as f32 + 2.0) + pos)
        }
    }

    fn ramp(n: usize, f: usize, c: usize) -> Tensor<3> {
        let v: Vec<f32> = (0..n * f * c).map(|i| (i as f32 * 0.37).sin()).collect();
        Tensor::from_data(TensorData::new(v, [n, f, c]), &Device::flex())
    }

    fn max_diff(a: Tensor<3>, b: Tensor<3>) -> f32 {
        (a - b).abs().max().into_scalar()
    }

    #[test]
    fn batching_modes_agree() {
        let x = ramp(3, 37, 4);
        let site = TemporalSite::new("t", 37);
        let mut outs = Vec::new();
        for batching in [
            WindowBatching::Stacked { max_windows: None },
            WindowBatching::Stacked {
                max_windows: Some(3),
            },
            WindowBatching::Sequential,
        ] {
            for variant in [FusionVariant::Chain, FusionVariant::PerStage] {
                let hook = FreeNoiseHook::new(
                    FreeNoiseConfig::new(8, 3)
                        .with_batching(batching)
                        .with_variant(variant),
                )
                .unwrap();
                outs.push(hook.apply(&site, x.clone(), &Affine(2)).unwrap());
            }
        }
        for i in 2..outs.len() {
            assert!(max_diff(outs[i].clone(), outs[i % 2].clone()) < 1e-5);
        }
    }

    #[test]
    fn short_clips_fall_back_to_all_frames() {
        let x = ramp(2, 5, 3);
        let hook = FreeNoiseHook::new(FreeNoiseConfig::new(8, 4)).unwrap();
        let site = TemporalSite::new("t", 5).with_max_positions(8);
        let y = hook.apply(&site, x.clone(), &Affine(2)).unwrap();
        let z = vdm_core::AllFrames.apply(&site, x, &Affine(2)).unwrap();
        assert_eq!(max_diff(y, z), 0.0);
    }

    #[test]
    fn window_longer_than_position_table_is_an_error() {
        let hook = FreeNoiseHook::new(FreeNoiseConfig::new(16, 4)).unwrap();
        let site = TemporalSite::new("mid.motion", 40).with_max_positions(8);
        let e = hook
            .apply(&site, ramp(1, 40, 2), &Affine(1))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("context_length") && e.contains("mid.motion"),
            "{e}"
        );
    }

    #[test]
    fn invalid_configs_are_named() {
        let e = |c: FreeNoiseConfig| FreeNoiseHook::new(c).unwrap_err().to_string();
        assert!(e(FreeNoiseConfig::new(0, 1)).contains("context_length"));
        assert!(e(FreeNoiseConfig::new(8, 0)).contains("context_stride"));
        assert!(e(FreeNoiseConfig::new(8, 9)).contains("context_stride"));
        assert!(
            e(
                FreeNoiseConfig::new(8, 4).with_batching(WindowBatching::Stacked {
                    max_windows: Some(0)
                })
            )
            .contains("max_windows")
        );
    }

    #[test]
    fn runs_never_repeat_a_frame() {
        for (f, l, s) in [(64, 16, 4), (35, 16, 4), (30, 8, 3), (40, 16, 6), (9, 4, 1)] {
            let plan = WindowPlan::new(f, l, s, WeightingScheme::Pyramid, false).unwrap();
            let sched = Schedule::new(plan, WindowBatching::Stacked { max_windows: None });
            let mut count = vec![0usize; f];
            for chunk in &sched.chunks {
                for r in &chunk.runs {
                    let mut fr = r.frames.clone();
                    fr.sort_unstable();
                    fr.dedup();
                    assert_eq!(fr.len(), r.frames.len());
                    fr.iter().for_each(|&i| count[i as usize] += 1);
                }
                assert!(chunk.runs.len() <= l.div_ceil(s) + 1);
            }
            assert!(count.iter().all(|&c| c > 0));
        }
    }
}
