//! The temporal hook: how a model's temporal layers let an outside strategy decide how frames
//! are grouped, processed and fused.
//!
//! A temporal layer (ModelScope `temp_attentions`, an AnimateDiff motion module, your own
//! temporal attention) turns its input into one token sequence over frames per spatial
//! position, `[N, F, C]` with `N = B·H·W`, and then runs one or more *stages* that mix
//! information across frames (typically `x + attn(norm(x))`, once per attention). Instead of
//! running those stages itself, it hands them to a [`TemporalHook`] as a [`TemporalStages`]
//! object. The hook decides which frames each stage sees:
//!
//! - [`AllFrames`] (the default) runs every stage once over all frames, positions `0..F`;
//! - FreeNoise (in `vdm-longvideo`) runs the stages over overlapping windows with
//!   window-relative positions and fuses the windows with weights;
//! - FreeLong runs a global and a masked local pass and blends them in frequency space
//!   (it needs [`TemporalSite::spatial`]).
//!
//! Per-frame operations that do not mix frames (feed-forward, `proj_out`) stay in the layer.
//!
//! # Adopting the hook in your own model
//!
//! ```
//! use burn::tensor::{Device, Tensor, activation::softmax};
//! use vdm_core::temporal::{AllFrames, FrameWindow, TemporalHook, TemporalSite, TemporalStages};
//! use vdm_core::Result;
//!
//! /// A toy temporal self-attention without weights: one stage, `x + softmax(x xᵀ) x`.
//! struct ToyTemporalAttention;
//!
//! impl TemporalStages for ToyTemporalAttention {
//!     fn num_stages(&self) -> usize {
//!         1
//!     }
//!     fn run_stage(&self, _stage: usize, x: Tensor<3>, window: &FrameWindow) -> Result<Tensor<3>> {
//!         let mut scores = x.clone().matmul(x.clone().swap_dims(1, 2));
//!         if let Some(mask) = &window.mask {
//!             scores = scores.mask_fill(mask.clone().unsqueeze::<3>(), f32::NEG_INFINITY);
//!         }
//!         Ok(x.clone() + softmax(scores, 2).matmul(x))
//!     }
//! }
//!
//! impl ToyTemporalAttention {
//!     /// `tokens`: `[N, F, C]`.
//!     fn forward(&self, tokens: Tensor<3>, hook: &dyn TemporalHook) -> Result<Tensor<3>> {
//!         let site = TemporalSite::new("toy.temporal", tokens.dims()[1]);
//!         hook.apply(&site, tokens, self)
//!     }
//! }
//!
//! let x = Tensor::<3>::ones([2, 5, 3], &Device::flex());
//! let y = ToyTemporalAttention.forward(x, &AllFrames).unwrap();
//! assert_eq!(y.dims(), [2, 5, 3]);
//! ```

use std::cell::RefCell;
use std::ops::Range;

use burn::tensor::{Bool, Tensor};

use crate::{Error, Result};

/// Where a temporal layer sits, passed to the hook with every call.
#[derive(Debug, Clone)]
pub struct TemporalSite<'a> {
    /// The layer's module path, e.g. `down_blocks.0.motion_modules.1`.
    pub layer: &'a str,
    /// Number of frames `F` of the sequence.
    pub num_frames: usize,
    /// Length of the layer's positional-embedding table, if it has one: a window may not
    /// use positions at or beyond it.
    pub max_positions: Option<usize>,
    /// The spatial layout `[B, H, W]` of the `N = B·H·W` token sequences, in that order
    /// (`b·H·W + h·W + w`), when the hook sees every position of the video at once; `None`
    /// when unknown or when the layer runs on chunks of positions. Hooks that work across
    /// space as well as time (FreeLong's 3-D spectral blend) need it.
    pub spatial: Option<[usize; 3]>,
}

impl<'a> TemporalSite<'a> {
    /// A site without a positional-embedding limit.
    pub fn new(layer: &'a str, num_frames: usize) -> Self {
        Self {
            layer,
            num_frames,
            max_positions: None,
            spatial: None,
        }
    }

    /// Declares the token sequences as the positions of `[batch, height, width]` frames (see
    /// [`TemporalSite::spatial`]).
    pub fn with_spatial(mut self, batch: usize, height: usize, width: usize) -> Self {
        self.spatial = Some([batch, height, width]);
        self
    }

    /// Sets the length of the layer's positional-embedding table.
    pub fn with_max_positions(mut self, max_positions: usize) -> Self {
        self.max_positions = Some(max_positions);
        self
    }

    /// Checks that `positions` fit the layer's positional-embedding table.
    pub fn check_positions(&self, positions: &Range<usize>) -> Result<()> {
        match self.max_positions {
            Some(max) if positions.end > max => Err(Error::invalid(
                "num_frames",
                format!(
                    "temporal layer `{}` has {max} positional embeddings but was asked for \
                     positions {}..{}; use a windowed temporal strategy (e.g. FreeNoise) for \
                     longer videos",
                    self.layer, positions.start, positions.end
                ),
            )),
            _ => Ok(()),
        }
    }
}

/// The frames a stage sees in one call.
#[derive(Debug, Clone)]
pub struct FrameWindow {
    /// First frame (inclusive) of the window in the full sequence.
    pub start: usize,
    /// Last frame (exclusive).
    pub end: usize,
    /// Positional-embedding rows to use for the window's frames (`positions.len() == end - start`).
    pub positions: Range<usize>,
    /// Optional attention mask over the window's frames, `[f, f]`, `true` = may not attend.
    /// Stages must honour it (FreeLong's local branch uses it).
    pub mask: Option<Tensor<2, Bool>>,
}

impl FrameWindow {
    /// The whole sequence of `frames` frames, positions `0..frames`, no mask.
    pub fn full(frames: usize) -> Self {
        Self::relative(0, frames)
    }

    /// Frames `start..end` with window-relative positions `0..end-start`, no mask.
    pub fn relative(start: usize, end: usize) -> Self {
        Self {
            start,
            end,
            positions: 0..end - start,
            mask: None,
        }
    }

    /// Number of frames in the window.
    pub fn len(&self) -> usize {
        self.end - self.start
    }

    /// Whether the window is empty.
    pub fn is_empty(&self) -> bool {
        self.end == self.start
    }
}

/// The frame-mixing stages of one temporal layer, as handed to a [`TemporalHook`].
pub trait TemporalStages {
    /// Number of stages (e.g. 2 for AnimateDiff's attn1 → attn2 chain).
    fn num_stages(&self) -> usize;

    /// Runs stage `stage` (including its residual connection) on the frames of `window`.
    ///
    /// # Shapes
    /// - `tokens`: `[N, f, C]` with `f = window.len()`, already sliced to the window
    /// - output: `[N, f, C]`
    fn run_stage(&self, stage: usize, tokens: Tensor<3>, window: &FrameWindow)
    -> Result<Tensor<3>>;

    /// Stage `stage` split into its per-token and its frame-mixing parts, when it has the
    /// form of [`AttentionStage`]; `None` (the default) when it does not.
    ///
    /// Optional: a hook that runs a stage over many overlapping windows (FreeNoise) uses it
    /// to compute the per-token projections once per frame instead of once per window, and
    /// the output projection once after fusing the windows. Without it, the hook calls
    /// [`run_stage`](Self::run_stage) per window; the results are the same up to float
    /// rounding.
    fn attention_stage(&self, stage: usize) -> Option<Box<dyn AttentionStage + '_>> {
        let _ = stage;
        None
    }
}

/// A stage of the form `x + out(attend(qkv(x) + pos(p)))`, taken apart so that the per-token
/// work can be shared between overlapping windows (see
/// [`TemporalStages::attention_stage`]):
///
/// - [`project`](Self::project): everything per token up to the attention, e.g.
///   `[to_q | to_k | to_v](norm(x))`, on all frames at once;
/// - [`project_positions`](Self::project_positions): what the positional embedding of window
///   positions `p` adds to those projections (`W·pe[p]`, no bias), which is what makes the
///   per-token projections independent of the window;
/// - [`attend`](Self::attend): the frame-mixing part on one window;
/// - [`output`](Self::output): `residual + out(a)`, affine in `a`, so a weighted average of
///   windows (weights summing to 1) may be taken before it.
///
/// An implementation must satisfy, for every window `w` with positions `p`:
/// `run_stage(x_w, w) == output(attend(project(x)_w + project_positions(p), w.mask), x_w)`.
/// Overrides of [`attend_at`](Self::attend_at) and [`output_at`](Self::output_at) (which
/// read a window in place) must equal their defaults up to float rounding.
pub trait AttentionStage {
    /// Width `P` of the per-token projections.
    fn projection_width(&self) -> usize;

    /// Width `A` of the attention output (the input of [`output`](Self::output)).
    fn attention_width(&self) -> usize;

    /// Per-token projections.
    ///
    /// # Shapes
    /// - `tokens`: `[N, F, C]`
    /// - output: `[N, F, P]`
    fn project(&self, tokens: Tensor<3>) -> Result<Tensor<3>>;

    /// The projections' positional terms for `positions` (`None` when the stage has no
    /// positional embedding).
    ///
    /// # Shapes
    /// - output: `[f, P]` with `f = positions.len()`
    fn project_positions(
        &self,
        positions: Range<usize>,
        device: &burn::tensor::Device,
    ) -> Result<Option<Tensor<2>>>;

    /// The frame-mixing part on one window of projections.
    ///
    /// # Shapes
    /// - `projections`: `[N, f, P]`
    /// - `mask`: `[f, f]`, `true` = may not attend
    /// - output: `[N, f, A]`
    fn attend(&self, projections: Tensor<3>, mask: Option<&Tensor<2, Bool>>) -> Result<Tensor<3>>;

    /// [`attend`](Self::attend) on the window `frames` of `projections` after adding `terms`
    /// (its positional terms): `attend(projections[:, frames] + terms, mask)`.
    ///
    /// The default cuts the window out and adds the terms (a copy of the window); a stage
    /// whose kernel can read the window in place and add the terms as it reads overrides it
    /// (a FreeNoise pass then copies nothing per window).
    ///
    /// # Shapes
    /// - `projections`: `[N, F, P]` with `frames.end ≤ F`
    /// - `terms`: `[f, P]` with `f = frames.len()`
    /// - `mask`: `[f, f]`, `true` = may not attend
    /// - output: `[N, f, A]`
    fn attend_at(
        &self,
        projections: &Tensor<3>,
        frames: Range<usize>,
        terms: Option<&Tensor<2>>,
        mask: Option<&Tensor<2, Bool>>,
    ) -> Result<Tensor<3>> {
        let window = cut_window(projections, frames, terms)?;
        self.attend(window, mask)
    }

    /// `residual + out(attended)`.
    ///
    /// # Shapes
    /// - `attended`: `[N, f, A]`
    /// - `residual`: `[N, f, C]`
    /// - output: `[N, f, C]`
    fn output(&self, attended: Tensor<3>, residual: Tensor<3>) -> Result<Tensor<3>>;

    /// [`output`](Self::output) with the residual read from the window `frames` of
    /// `residual`: `output(attended, residual[:, frames])`.
    ///
    /// The default cuts the window out; a stage that can read it in place overrides it.
    ///
    /// # Shapes
    /// - `attended`: `[N, f, A]` with `f = frames.len()`
    /// - `residual`: `[N, F, C]` with `frames.end ≤ F`
    /// - output: `[N, f, C]`
    fn output_at(
        &self,
        attended: Tensor<3>,
        residual: &Tensor<3>,
        frames: Range<usize>,
    ) -> Result<Tensor<3>> {
        let window = cut_window(residual, frames, None)?;
        self.output(attended, window)
    }
}

/// Checks that `frames` is a non-empty window of `projections` (`[N, F, P]`) and that
/// `terms` is `[f, P]` with `f = frames.len()`.
pub fn check_window(
    projections: &Tensor<3>,
    frames: &Range<usize>,
    terms: Option<&Tensor<2>>,
) -> Result<()> {
    let [_, total, p] = projections.dims();
    if frames.end > total || frames.is_empty() {
        return Err(Error::invalid(
            "frames",
            format!(
                "window {}..{} of a sequence of {total} frames",
                frames.start, frames.end
            ),
        ));
    }
    match terms {
        Some(t) if t.dims() != [frames.len(), p] => Err(Error::shape(
            "positional terms",
            format!("[{}, {p}]", frames.len()),
            &t.dims(),
        )),
        _ => Ok(()),
    }
}

/// `projections[:, frames] + terms` (the window cut out of `[N, F, P]`, `terms` `[f, P]`
/// added to every item), after [`check_window`].
pub fn cut_window(
    projections: &Tensor<3>,
    frames: Range<usize>,
    terms: Option<&Tensor<2>>,
) -> Result<Tensor<3>> {
    check_window(projections, &frames, terms)?;
    let f = frames.len();
    let window = projections.clone().narrow(1, frames.start, f);
    Ok(match terms {
        Some(t) => {
            let p = t.dims()[1];
            window + t.clone().reshape([1, f, p])
        }
        None => window,
    })
}

/// Runs `stage` on one window through its [`AttentionStage`] parts, given the projections of
/// the window's frames (e.g. sliced from projections of all frames).
///
/// # Shapes
/// - `projections`: `[N, f, P]`, `residual`: `[N, f, C]`, output: `[N, f, C]`
pub fn run_attention_stage(
    stage: &dyn AttentionStage,
    projections: Tensor<3>,
    residual: Tensor<3>,
    window: &FrameWindow,
) -> Result<Tensor<3>> {
    WindowAttention::new(stage).run(projections, residual, window)
}

/// [`AttentionStage::attend`] on one window after adding the positional terms of
/// `window.positions` to `projections` (`[N, f, P]` → `[N, f, A]`).
pub fn attend_window(
    stage: &dyn AttentionStage,
    projections: Tensor<3>,
    window: &FrameWindow,
) -> Result<Tensor<3>> {
    WindowAttention::new(stage).attend(projections, window)
}

/// An [`AttentionStage`] applied to window after window of one pass. The positional terms of
/// the last positions are kept for the next window: the windows of a FreeNoise pass all use
/// positions `0..L`, so the terms are computed once per pass instead of once per window.
/// Use one value per pass (the kept terms live on the device of the first window).
pub struct WindowAttention<'a> {
    stage: &'a dyn AttentionStage,
    /// The last positions and their terms (`None` terms: the stage has no positional table).
    positions: RefCell<Option<(Range<usize>, Option<Tensor<2>>)>>,
}

impl<'a> WindowAttention<'a> {
    /// A pass over windows of `stage`.
    pub fn new(stage: &'a dyn AttentionStage) -> Self {
        Self {
            stage,
            positions: RefCell::new(None),
        }
    }

    /// [`AttentionStage::attend`] on one window, after adding the positional terms of
    /// `window.positions`.
    ///
    /// # Shapes
    /// - `projections`: `[N, f, P]`, output: `[N, f, A]`
    pub fn attend(&self, projections: Tensor<3>, window: &FrameWindow) -> Result<Tensor<3>> {
        let f = projections.dims()[1];
        self.attend_at(&projections, 0..f, window)
    }

    /// [`AttentionStage::attend_at`] on the frames `frames` of `projections` (`[N, F, P]`)
    /// with the positional terms of `window.positions`.
    ///
    /// # Shapes
    /// - `projections`: `[N, F, P]`, output: `[N, f, A]` with `f = frames.len()`
    pub fn attend_at(
        &self,
        projections: &Tensor<3>,
        frames: Range<usize>,
        window: &FrameWindow,
    ) -> Result<Tensor<3>> {
        let terms = self.position_terms(&window.positions, &projections.device())?;
        self.stage
            .attend_at(projections, frames, terms.as_ref(), window.mask.as_ref())
    }

    /// `residual + output(attend(projections))` on one window.
    ///
    /// # Shapes
    /// - `projections`: `[N, f, P]`, `residual`: `[N, f, C]`, output: `[N, f, C]`
    pub fn run(
        &self,
        projections: Tensor<3>,
        residual: Tensor<3>,
        window: &FrameWindow,
    ) -> Result<Tensor<3>> {
        let attended = self.attend(projections, window)?;
        self.stage.output(attended, residual)
    }

    fn position_terms(
        &self,
        positions: &Range<usize>,
        device: &burn::tensor::Device,
    ) -> Result<Option<Tensor<2>>> {
        let mut kept = self.positions.borrow_mut();
        if let Some((range, terms)) = kept.as_ref()
            && range == positions
        {
            return Ok(terms.clone());
        }
        let terms = self.stage.project_positions(positions.clone(), device)?;
        *kept = Some((positions.clone(), terms.clone()));
        Ok(terms)
    }
}

/// Runs every stage in order on one window (the "chain" of a transformer block).
pub fn run_chain(
    stages: &dyn TemporalStages,
    mut tokens: Tensor<3>,
    window: &FrameWindow,
) -> Result<Tensor<3>> {
    for stage in 0..stages.num_stages() {
        tokens = stages.run_stage(stage, tokens, window)?;
    }
    Ok(tokens)
}

/// A strategy for grouping, processing and fusing frames inside temporal layers.
pub trait TemporalHook: Send + Sync {
    /// Runs `stages` over `tokens` (`[N, F, C]`) and returns the fused `[N, F, C]`.
    fn apply(
        &self,
        site: &TemporalSite<'_>,
        tokens: Tensor<3>,
        stages: &dyn TemporalStages,
    ) -> Result<Tensor<3>>;
}

/// The default: every stage sees all frames, positions `0..F`.
#[derive(Debug, Clone, Copy, Default)]
pub struct AllFrames;

impl TemporalHook for AllFrames {
    fn apply(
        &self,
        site: &TemporalSite<'_>,
        tokens: Tensor<3>,
        stages: &dyn TemporalStages,
    ) -> Result<Tensor<3>> {
        let frames = tokens.dims()[1];
        let window = FrameWindow::full(frames);
        site.check_positions(&window.positions)?;
        run_chain(stages, tokens, &window)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::Device;

    /// Adds `10·stage + position` to every token: records which positions each stage saw.
    struct Recorder;

    impl TemporalStages for Recorder {
        fn num_stages(&self) -> usize {
            2
        }
        fn run_stage(&self, stage: usize, x: Tensor<3>, window: &FrameWindow) -> Result<Tensor<3>> {
            let [n, f, c] = x.dims();
            assert_eq!(f, window.len());
            let pos: Vec<f32> = window
                .positions
                .clone()
                .map(|p| p as f32 + 10.0 * stage as f32)
                .collect();
            let add = Tensor::<1>::from_floats(pos.as_slice(), &x.device())
                .reshape([1, f, 1])
                .expand([n, f, c]);
            Ok(x + add)
        }
    }

    #[test]
    fn all_frames_runs_the_chain_once_with_absolute_positions() {
        let x = Tensor::<3>::zeros([2, 4, 3], &Device::flex());
        let site = TemporalSite::new("test", 4);
        let y = AllFrames.apply(&site, x, &Recorder).unwrap();
        let row: Vec<f32> = y
            .slice([0..1, 0..4, 0..1])
            .into_data()
            .try_to_vec()
            .unwrap();
        assert_eq!(row, [10.0, 12.0, 14.0, 16.0]);
    }

    #[test]
    fn position_table_limit_is_a_typed_error() {
        let x = Tensor::<3>::zeros([1, 40, 3], &Device::flex());
        let site = TemporalSite::new("down_blocks.0.motion_modules.0", 40).with_max_positions(32);
        let e = AllFrames
            .apply(&site, x, &Recorder)
            .unwrap_err()
            .to_string();
        assert!(e.contains("num_frames") && e.contains("32"), "{e}");
    }
}
