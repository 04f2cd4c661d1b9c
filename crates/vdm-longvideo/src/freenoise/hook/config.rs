//! The configuration of FreeNoise window fusion (Qiu et al. 2024, §3.2; diffusers'
//! `enable_free_noise` in `pipelines/free_noise_utils.py`): window length and stride, weighting
//! scheme, where the windows are fused relative to the temporal layer's stages, and how the
//! windows are batched.

use vdm_core::{Error, Result};

use crate::freenoise::windows::WeightingScheme;
#[cfg(doc)]
use crate::freenoise::windows::WindowPlan;

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

/// Configuration of [`FreeNoiseHook`](super::FreeNoiseHook).
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
