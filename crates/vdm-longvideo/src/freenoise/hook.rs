//! FreeNoise window fusion as a [`TemporalHook`] (Qiu et al. 2024, §3.2 "Window-based Attention
//! Fusion", Eq. 9; diffusers' `FreeNoiseTransformerBlock.forward` in
//! `src/diffusers/models/attention.py`; VideoCrafter's `CrossAttention.forward` in
//! `lvdm/modules/attention_freenoise.py` of AILab-CVC/FreeNoise).

use std::collections::HashMap;
use std::ops::Range;
use std::sync::{Arc, Mutex};

use burn::tensor::ops::PadMode;
use burn::tensor::{IndexingUpdateOp, Int, Tensor, TensorData};
use vdm_core::host::{HostF32, cpu_kernels};
use vdm_core::temporal::{
    AttentionStage, FrameWindow, TemporalHook, TemporalSite, TemporalStages, WindowAttention,
    cut_window, run_chain,
};
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
///   index). On the flex CPU backend ([`vdm_core::host::cpu_kernels`]) windows are cut out
///   and accumulated on the host instead, one pass each, adding the windows of every frame in
///   the same order.
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
        // Sharing per-token work between windows relies on the fused weights of every frame
        // summing to 1 (then the fused residual is the input and the output projection can
        // follow the fusion); the compat normaliser breaks that, so it runs every window in full.
        let share = schedule.weights_sum_to_one;
        let k = stages.num_stages();
        // With one stage the two variants are the same computation.
        if self.config.variant == FusionVariant::PerStage || k == 1 {
            let mut x = tokens;
            for stage in 0..k {
                x = match stages.attention_stage(stage) {
                    Some(a) if share => schedule.fuse_attention(x, a.as_ref(), site)?,
                    _ => schedule.fuse_one(x, &|x, w| stages.run_stage(stage, x, w), site)?,
                };
            }
            return Ok(x);
        }
        if share
            && let (Some(first), Some(last)) =
                (stages.attention_stage(0), stages.attention_stage(k - 1))
        {
            return schedule.fuse_chain(tokens, stages, first.as_ref(), last.as_ref(), site);
        }
        schedule.fuse_one(tokens, &|x, w| run_chain(stages, x, w), site)
    }
}

/// An input of [`Schedule::fuse`].
struct WindowInput {
    /// `[N, F, C]`.
    tokens: Tensor<3>,
    /// Rows `[L, C]` added to every window (positional terms).
    rows: Option<Tensor<2>>,
    /// Whether a call with one window gets the whole input to read in place
    /// ([`WindowView::Whole`]) instead of a copy of its window.
    in_place: bool,
}

impl WindowInput {
    /// An input whose windows are cut out for every call.
    fn cut(tokens: Tensor<3>) -> Self {
        Self {
            tokens,
            rows: None,
            in_place: false,
        }
    }

    /// An input read in place by single-window calls, with its per-position rows (the
    /// positional terms of projections).
    fn in_place(tokens: Tensor<3>, rows: Option<Tensor<2>>) -> Self {
        Self {
            tokens,
            rows,
            in_place: true,
        }
    }
}

/// One input of a window call, as the call gets it (a few short-lived values per window,
/// hence no boxing of the larger variant).
#[allow(clippy::large_enum_variant)]
enum WindowView {
    /// The call's windows cut out and stacked, `[N·m, L, C]`, rows added.
    Cut(Tensor<3>),
    /// The whole input `[N, F, C]` and its rows; the call has one window, to be read in
    /// place at the frames of its `FrameWindow`.
    Whole(Tensor<3>, Option<Tensor<2>>),
}

impl WindowView {
    /// [`AttentionStage::attend`] on the call's windows (in place for a whole input).
    fn attend(self, stage: &dyn AttentionStage, window: &FrameWindow) -> Result<Tensor<3>> {
        match self {
            Self::Cut(p) => stage.attend(p, window.mask.as_ref()),
            Self::Whole(p, rows) => stage.attend_at(
                &p,
                window.start..window.end,
                rows.as_ref(),
                window.mask.as_ref(),
            ),
        }
    }

    /// [`AttentionStage::output`] of `attended` with the call's windows of this input as the
    /// residual (read in place for a whole input).
    fn output(
        self,
        stage: &dyn AttentionStage,
        attended: Tensor<3>,
        window: &FrameWindow,
    ) -> Result<Tensor<3>> {
        match self {
            Self::Whole(x, None) => stage.output_at(attended, &x, window.start..window.end),
            view => stage.output(attended, view.into_cut(window)?),
        }
    }

    /// The call's windows as one tensor (cut out here for a whole input).
    fn into_cut(self, window: &FrameWindow) -> Result<Tensor<3>> {
        match self {
            Self::Cut(x) => Ok(x),
            Self::Whole(x, rows) => cut_window(&x, window.start..window.end, rows.as_ref()),
        }
    }
}

/// A window function over several inputs sliced alike, with several outputs.
type WindowFn<'a> = dyn Fn(Vec<WindowView>, &FrameWindow) -> Result<Vec<Tensor<3>>> + 'a;

/// The windows of one stage call, their value weights and accumulation runs.
#[derive(Debug, Clone)]
struct Chunk {
    /// Number of windows `m`.
    windows: usize,
    /// The one window of a single-window call (its call gets the real `FrameWindow`).
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

impl Chunk {
    /// The `FrameWindow` its stage call gets: the real one for a single window, else the
    /// window-relative `0..L` of stacked windows.
    fn window(&self, l: usize) -> FrameWindow {
        match &self.single {
            Some(r) => FrameWindow::relative(r.start, r.end),
            None => FrameWindow::relative(0, l),
        }
    }

    /// `input` whole, when it is read in place and this call has a single window.
    fn whole(&self, input: &WindowInput) -> Option<WindowView> {
        (input.in_place && self.single.is_some())
            .then(|| WindowView::Whole(input.tokens.clone(), input.rows.clone()))
    }
}

/// A stage output of the expected `[N·m, L, C]`, or a shape error naming the layer.
fn check_output(y: &Tensor<3>, want: [usize; 3], site: &TemporalSite<'_>) -> Result<()> {
    if y.dims() == want {
        return Ok(());
    }
    Err(Error::shape(
        format!("output of a temporal stage of `{}`", site.layer),
        format!("[{}, {}, {}]", want[0], want[1], want[2]),
        &y.dims(),
    ))
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
    /// Whether every frame's fused weights sum to 1 (false with the compat normaliser).
    weights_sum_to_one: bool,
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
            .collect::<Vec<Chunk>>();
        let mut sums = vec![0.0f64; plan.num_frames()];
        for chunk in &chunks {
            for r in &chunk.runs {
                for (i, &f) in r.frames.iter().enumerate() {
                    sums[f as usize] += f64::from(chunk.weights[r.offset + i]);
                }
            }
        }
        let weights_sum_to_one = sums.iter().all(|s| (s - 1.0).abs() < 1e-5);
        Self {
            plan,
            chunks,
            weights_sum_to_one,
        }
    }

    /// Runs `run` on every window of `tokens` (`[N, F, C]`) and fuses the outputs.
    fn fuse_one(
        &self,
        tokens: Tensor<3>,
        run: &dyn Fn(Tensor<3>, &FrameWindow) -> Result<Tensor<3>>,
        site: &TemporalSite<'_>,
    ) -> Result<Tensor<3>> {
        let c = tokens.dims()[2];
        let fused = self.fuse(
            vec![WindowInput::cut(tokens)],
            &|mut x, w| Ok(vec![run(x.remove(0).into_cut(w)?, w)?]),
            &[c],
            site,
        )?;
        Ok(fused.into_iter().next().expect("one output"))
    }

    /// One attention stage over every window, its per-token projections computed once for
    /// all frames and its output projection once after the fusion (exact when the weights
    /// of every frame sum to 1; VideoCrafter fuses at the same point).
    fn fuse_attention(
        &self,
        tokens: Tensor<3>,
        stage: &dyn AttentionStage,
        site: &TemporalSite<'_>,
    ) -> Result<Tensor<3>> {
        let projections = stage.project(tokens.clone())?;
        // Every window sees positions 0..L: their terms are added as the windows are read.
        let positions = stage.project_positions(0..self.plan.context_length(), &tokens.device())?;
        let attended = self.fuse(
            vec![WindowInput::in_place(projections, positions)],
            &|mut p, w| Ok(vec![p.remove(0).attend(stage, w)?]),
            &[stage.attention_width()],
            site,
        )?;
        stage.output(attended.into_iter().next().expect("one output"), tokens)
    }

    /// The chain of `stages` over every window (the `Chain` variant) with the first stage's
    /// projections computed once for all frames and the last stage's output projection once
    /// after the fusion: for windows `w` with weights `c_w` summing to 1,
    /// `Σ c_w (h_w + out(a_w)) = Σ c_w h_w + out(Σ c_w a_w)`.
    fn fuse_chain(
        &self,
        tokens: Tensor<3>,
        stages: &dyn TemporalStages,
        first: &dyn AttentionStage,
        last: &dyn AttentionStage,
        site: &TemporalSite<'_>,
    ) -> Result<Tensor<3>> {
        let c = tokens.dims()[2];
        let k = stages.num_stages();
        let projections = first.project(tokens.clone())?;
        // Every window sees positions 0..L: the first stage's terms are added as the windows
        // are read; the last stage's are kept across the windows of this pass.
        let positions = first.project_positions(0..self.plan.context_length(), &tokens.device())?;
        let last_windows = WindowAttention::new(last);
        let fused = self.fuse(
            vec![
                WindowInput::in_place(tokens, None),
                WindowInput::in_place(projections, positions),
            ],
            &|mut inputs, w| {
                let p = inputs.pop().expect("projections");
                let x = inputs.pop().expect("tokens");
                let mut h = x.output(first, p.attend(first, w)?, w)?;
                for stage in 1..k - 1 {
                    h = stages.run_stage(stage, h, w)?;
                }
                let a = last_windows.attend(last.project(h.clone())?, w)?;
                Ok(vec![h, a])
            },
            &[c, last.attention_width()],
            site,
        )?;
        let [h, a]: [Tensor<3>; 2] = fused.try_into().expect("two outputs");
        last.output(a, h)
    }

    /// Runs `run` on every window of `inputs` (each `[N, F, C_i]`, sliced alike, with its
    /// optional per-position rows `[L, C_i]` added to every window) and fuses each of its
    /// outputs (`[N·m, L, widths[j]]` for `m` windows per call) over the windows.
    fn fuse(
        &self,
        inputs: Vec<WindowInput>,
        run: &WindowFn<'_>,
        widths: &[usize],
        site: &TemporalSite<'_>,
    ) -> Result<Vec<Tensor<3>>> {
        #[cfg(test)]
        let host = !tests::TENSOR_OPS.with(|t| t.get());
        #[cfg(not(test))]
        let host = true;
        let first = &inputs[0].tokens;
        if host && cpu_kernels(&first.device(), first.dtype()) {
            return self.fuse_on_host(inputs, run, widths, site);
        }
        let [n, f, _] = first.dims();
        let l = self.plan.context_length();
        let device = first.device();
        let ints = |v: &[i64]| {
            Tensor::<1, Int>::from_data(TensorData::new(v.to_vec(), [v.len()]), &device)
        };
        let mut acc: Vec<Option<Tensor<3>>> = vec![None; widths.len()];
        for chunk in &self.chunks {
            let m = chunk.windows;
            // The windows' frames gathered into [N, m·L, C] (row n holds token n's m
            // windows) and viewed as [N·m, L, C]. `select` writes them contiguously in one
            // pass; materialising a strided `narrow` view is several times slower on flex.
            let gather = ints(&chunk.gather);
            let xs = inputs
                .iter()
                .map(|input| {
                    let WindowInput { tokens, rows, .. } = input;
                    if let Some(view) = chunk.whole(input) {
                        return view;
                    }
                    let c = tokens.dims()[2];
                    let x = tokens
                        .clone()
                        .select(1, gather.clone())
                        .reshape([n * m, l, c]);
                    WindowView::Cut(match rows {
                        Some(r) => x + r.clone().reshape([1, l, c]),
                        None => x,
                    })
                })
                .collect();
            let ys = run(xs, &chunk.window(l))?;
            let w =
                Tensor::<1>::from_data(TensorData::new(chunk.weights.clone(), [m * l]), &device)
                    .reshape([1, m * l, 1]);
            for ((y, &c), acc) in ys.into_iter().zip(widths).zip(&mut acc) {
                check_output(&y, [n * m, l, c], site)?;
                let y = y.reshape([n, m * l, c]) * w.clone();
                for r in &chunk.runs {
                    let values = y.clone().narrow(1, r.offset, r.frames.len());
                    *acc = Some(match (acc.take(), &r.contiguous) {
                        (None, Some(range)) => values.pad(
                            [(0, 0), (range.start, f - range.end), (0, 0)],
                            PadMode::Constant(0.0),
                        ),
                        (Some(acc), Some(range)) => {
                            // The sum is computed before `slice_assign` so that `acc` is
                            // uniquely owned by then and can be updated in place.
                            let slice = [0..n, range.clone(), 0..c];
                            let sum = acc.clone().slice(slice.clone()) + values;
                            acc.slice_assign(slice, sum)
                        }
                        (acc, None) => acc
                            .unwrap_or_else(|| Tensor::zeros([n, f, c], &device))
                            .select_assign(1, ints(&r.frames), values, IndexingUpdateOp::Add),
                    });
                }
            }
        }
        // The weights already include the normaliser.
        Ok(acc
            .into_iter()
            .map(|a| a.expect("every plan has a window"))
            .collect())
    }

    /// [`fuse`](Self::fuse) on the host (flex backend): each window gathered in one pass and
    /// its weighted outputs added straight into host accumulators ([`vdm_kernels::frames`]).
    /// Per frame, the windows are added in the same order as on the tensor-op path, so both
    /// are deterministic.
    fn fuse_on_host(
        &self,
        inputs: Vec<WindowInput>,
        run: &WindowFn<'_>,
        widths: &[usize],
        site: &TemporalSite<'_>,
    ) -> Result<Vec<Tensor<3>>> {
        let [n, f, _] = inputs[0].tokens.dims();
        let l = self.plan.context_length();
        let device = inputs[0].tokens.device();
        // The host values of every input whose windows some call cuts out.
        let stacked = self.chunks.iter().any(|c| c.single.is_none());
        let hosts = inputs
            .iter()
            .map(|input| {
                if input.in_place && !stacked {
                    return Ok(None);
                }
                let rows = input.rows.clone().map(HostF32::new).transpose()?;
                Ok(Some((HostF32::new(input.tokens.clone())?, rows)))
            })
            .collect::<Result<Vec<_>>>()?;
        let mut acc: Vec<Vec<f32>> = widths.iter().map(|&c| vec![0.0; n * f * c]).collect();
        for chunk in &self.chunks {
            let m = chunk.windows;
            let xs = inputs
                .iter()
                .zip(&hosts)
                .map(|(input, host)| {
                    if let Some(view) = chunk.whole(input) {
                        return view;
                    }
                    let (x, rows) = host.as_ref().expect("host values of an input that is cut");
                    let c = input.tokens.dims()[2];
                    let rows = rows.as_ref().map(HostF32::as_slice);
                    let data =
                        vdm_kernels::frames::gather(x.as_slice(), [n, f, c], &chunk.gather, rows);
                    WindowView::Cut(Tensor::from_data(
                        TensorData::new(data, [n * m, l, c]),
                        &device,
                    ))
                })
                .collect();
            let ys = run(xs, &chunk.window(l))?;
            for ((y, &c), acc) in ys.into_iter().zip(widths).zip(&mut acc) {
                check_output(&y, [n * m, l, c], site)?;
                let y = HostF32::new(y)?;
                vdm_kernels::frames::accumulate(
                    acc,
                    [n, f, c],
                    y.as_slice(),
                    &chunk.gather,
                    &chunk.weights,
                );
            }
        }
        Ok(acc
            .into_iter()
            .zip(widths)
            .map(|(a, &c)| Tensor::from_data(TensorData::new(a, [n, f, c]), &device))
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::{Bool, Device};

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

    /// A toy attention-shaped layer of `stages` stages, `C = 4` → `P = 6` → `A = 3`: a
    /// non-linear per-token projection, positional terms, a frame-mixing `attend` and an
    /// affine output. Exposes its [`AttentionStage`] parts.
    struct ToyAttention {
        stages: usize,
    }

    /// The same layer without the parts (every window runs in full).
    struct Opaque<'a>(&'a ToyAttention);

    struct ToyStage(usize);

    thread_local! {
        /// Calls of `ToyStage::project_positions` on this thread.
        static POSITION_TERMS: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
    }

    fn mat(rows: usize, cols: usize, seed: usize) -> Tensor<2> {
        let v: Vec<f32> = (0..rows * cols)
            .map(|i| ((i * 7 + seed * 13) as f32 * 0.61).sin() * 0.5)
            .collect();
        Tensor::from_data(TensorData::new(v, [rows, cols]), &Device::flex())
    }

    fn batched(x: Tensor<3>, m: Tensor<2>) -> Tensor<3> {
        let [n, f, c] = x.dims();
        let k = m.dims()[1];
        x.reshape([n * f, c]).matmul(m).reshape([n, f, k])
    }

    impl AttentionStage for ToyStage {
        fn projection_width(&self) -> usize {
            6
        }
        fn attention_width(&self) -> usize {
            3
        }
        fn project(&self, tokens: Tensor<3>) -> Result<Tensor<3>> {
            Ok(batched(tokens.tanh(), mat(4, 6, self.0)))
        }
        fn project_positions(
            &self,
            positions: Range<usize>,
            device: &Device,
        ) -> Result<Option<Tensor<2>>> {
            POSITION_TERMS.with(|n| n.set(n.get() + 1));
            let f = positions.len();
            let v: Vec<f32> = positions
                .flat_map(|p| (0..4).map(move |c| ((p + c) as f32).sin()))
                .collect();
            let pe = Tensor::<2>::from_data(TensorData::new(v, [f, 4]), device);
            Ok(Some(pe.matmul(mat(4, 6, self.0))))
        }
        fn attend(&self, p: Tensor<3>, _mask: Option<&Tensor<2, Bool>>) -> Result<Tensor<3>> {
            let [n, f, _] = p.dims();
            let gate = p.clone().narrow(2, 3, 3).mean_dim(1).tanh();
            Ok(p.narrow(2, 0, 3) * gate.expand([n, f, 3]))
        }
        fn output(&self, a: Tensor<3>, residual: Tensor<3>) -> Result<Tensor<3>> {
            Ok(residual + batched(a, mat(3, 4, self.0 + 5)).add_scalar(0.1 * self.0 as f32))
        }
    }

    impl TemporalStages for ToyAttention {
        fn num_stages(&self) -> usize {
            self.stages
        }
        fn run_stage(&self, stage: usize, x: Tensor<3>, w: &FrameWindow) -> Result<Tensor<3>> {
            let s = ToyStage(stage);
            vdm_core::temporal::run_attention_stage(&s, s.project(x.clone())?, x, w)
        }
        fn attention_stage(&self, stage: usize) -> Option<Box<dyn AttentionStage + '_>> {
            Some(Box::new(ToyStage(stage)))
        }
    }

    impl TemporalStages for Opaque<'_> {
        fn num_stages(&self) -> usize {
            self.0.stages
        }
        fn run_stage(&self, stage: usize, x: Tensor<3>, w: &FrameWindow) -> Result<Tensor<3>> {
            self.0.run_stage(stage, x, w)
        }
    }

    /// Calls `f` with an 8/3 hook for every batching of `batchings`, both variants and both
    /// normalisers, and a label naming them.
    fn for_each_hook(batchings: &[WindowBatching], mut f: impl FnMut(&FreeNoiseHook, &str)) {
        for &batching in batchings {
            for variant in [FusionVariant::Chain, FusionVariant::PerStage] {
                for compat in [false, true] {
                    let hook = FreeNoiseHook::new(
                        FreeNoiseConfig::new(8, 3)
                            .with_batching(batching)
                            .with_variant(variant)
                            .with_compat_diffusers_tail_bug(compat),
                    )
                    .unwrap();
                    f(
                        &hook,
                        &format!("{batching:?}, {variant:?}, compat {compat}"),
                    );
                }
            }
        }
    }

    #[test]
    fn shared_projections_equal_full_windows() {
        let x = ramp(3, 29, 4);
        let site = TemporalSite::new("t", 29);
        let batchings = [
            WindowBatching::Sequential,
            WindowBatching::Stacked {
                max_windows: Some(2),
            },
        ];
        for stages in [1, 2, 3] {
            let toy = ToyAttention { stages };
            for_each_hook(&batchings, |hook, label| {
                let shared = hook.apply(&site, x.clone(), &toy).unwrap();
                let full = hook.apply(&site, x.clone(), &Opaque(&toy)).unwrap();
                let d = max_diff(shared, full);
                assert!(d < 1e-5, "{stages} stages, {label}: {d}");
            });
        }
    }

    thread_local! {
        /// Makes `fuse` take its tensor-op path on this thread even on flex.
        pub(super) static TENSOR_OPS: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    }

    #[test]
    fn host_fusion_equals_the_tensor_op_path() {
        let x = ramp(3, 29, 4);
        let site = TemporalSite::new("t", 29);
        assert!(cpu_kernels(&x.device(), x.dtype()));
        let batchings = [
            WindowBatching::Sequential,
            WindowBatching::Stacked { max_windows: None },
        ];
        for (stages, opaque) in [(1, false), (2, false), (2, true), (3, false)] {
            let toy = ToyAttention { stages };
            let opaque_toy = Opaque(&toy);
            let model: &dyn TemporalStages = if opaque { &opaque_toy } else { &toy };
            for_each_hook(&batchings, |hook, label| {
                let host = hook.apply(&site, x.clone(), model).unwrap();
                TENSOR_OPS.with(|t| t.set(true));
                let ops = hook.apply(&site, x.clone(), model);
                TENSOR_OPS.with(|t| t.set(false));
                let d = max_diff(host, ops.unwrap());
                assert!(d < 1e-5, "{stages} stages (opaque {opaque}), {label}: {d}");
            });
        }
    }

    #[test]
    fn positional_terms_are_computed_once_per_pass() {
        let x = ramp(2, 29, 4);
        let site = TemporalSite::new("t", 29);
        let hook = FreeNoiseHook::new(FreeNoiseConfig::new(8, 3)).unwrap();
        assert!(hook.plan(29).unwrap().windows().len() > 1);
        for (stages, passes) in [(1, 1), (2, 2)] {
            POSITION_TERMS.with(|n| n.set(0));
            hook.apply(&site, x.clone(), &ToyAttention { stages })
                .unwrap();
            assert_eq!(POSITION_TERMS.with(|n| n.get()), passes, "{stages} stages");
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
