//! FreeNoise context windows, their fusion weights and per-frame normalisers (Qiu et al. 2024,
//! "FreeNoise: Tuning-Free Longer Video Diffusion via Noise Rescheduling", Eq. 9; diffusers'
//! `FreeNoiseTransformerBlock._get_frame_indices` / `_get_frame_weights` / `forward` in
//! `src/diffusers/models/attention.py`).
//!
//! [`WindowPlan`] is everything about the fusion that depends only on `(F, L, S, scheme)`:
//! the windows, which frames of each window are accumulated, the weights and the per-frame
//! normaliser. It is host data, computed once and cached by
//! [`FreeNoiseHook`](super::FreeNoiseHook).

use std::ops::Range;

use vdm_core::{Error, Result};

/// How the frames of one window are weighted when overlapping windows are fused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum WeightingScheme {
    /// Every frame weighs 1.
    Flat,
    /// Rising then falling: `[1, 2, …, L/2, L/2, …, 1]` (odd `L`: `[1, …, m−1, m, m−1, …, 1]`).
    #[default]
    Pyramid,
    /// Near-zero for the first half, then a falling ramp:
    /// `[0.01]·(L/2 − 1) + [L/2] + [L/2, …, 1]`.
    ///
    /// For odd `L`, diffusers returns `L + 1` weights (bug B2 in
    /// `shared/reference/algorithms.md`); we return `L`: `[0.01]·(m − 1) + [m, m−1, …, 1]`
    /// with `m = (L + 1)/2`.
    DelayedReverseSawtooth,
}

impl WeightingScheme {
    /// The diffusers `weighting_scheme` string.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Flat => "flat",
            Self::Pyramid => "pyramid",
            Self::DelayedReverseSawtooth => "delayed_reverse_sawtooth",
        }
    }

    /// Parses the diffusers `weighting_scheme` string.
    pub fn parse(value: &str) -> Result<Self> {
        match value {
            "flat" => Ok(Self::Flat),
            "pyramid" => Ok(Self::Pyramid),
            "delayed_reverse_sawtooth" => Ok(Self::DelayedReverseSawtooth),
            other => Err(Error::unknown_variant(
                "weighting_scheme",
                other,
                &["flat", "pyramid", "delayed_reverse_sawtooth"],
            )),
        }
    }

    /// The `len` weights of one window.
    ///
    /// ```
    /// use vdm_longvideo::freenoise::WeightingScheme;
    /// assert_eq!(WeightingScheme::Pyramid.weights(4), [1.0, 2.0, 2.0, 1.0]);
    /// assert_eq!(WeightingScheme::Pyramid.weights(5), [1.0, 2.0, 3.0, 2.0, 1.0]);
    /// assert_eq!(WeightingScheme::DelayedReverseSawtooth.weights(5), [0.01, 0.01, 3.0, 2.0, 1.0]);
    /// ```
    pub fn weights(&self, len: usize) -> Vec<f32> {
        match self {
            Self::Flat => vec![1.0; len],
            Self::Pyramid => {
                let half = len.div_ceil(2);
                (0..len)
                    .map(|i| (i.min(len - 1 - i) + 1).min(half) as f32)
                    .collect()
            }
            Self::DelayedReverseSawtooth => {
                if len.is_multiple_of(2) {
                    let h = len / 2;
                    let mut w = vec![0.01; h.saturating_sub(1)];
                    w.push(h as f32);
                    w.extend((1..=h).rev().map(|v| v as f32));
                    w
                } else {
                    let m = len.div_ceil(2);
                    let mut w = vec![0.01; m - 1];
                    w.extend((1..=m).rev().map(|v| v as f32));
                    w
                }
            }
        }
    }
}

/// The context windows FreeNoise fuses for `num_frames` frames with window `context_length`
/// and stride `context_stride`: `[s, s + L)` for `s = 0, S, 2S, …` while it fits, plus a last
/// window `[F − L, F)` flush with the end when the stride does not land there.
///
/// ```
/// use vdm_longvideo::freenoise::context_windows;
/// assert_eq!(context_windows(25, 16, 4).unwrap(), [0..16, 4..20, 8..24, 9..25]);
/// ```
///
/// Errors (naming the parameter) when `L` is 0 or exceeds `F`, or when the stride is 0 or
/// exceeds `L` (frames would be skipped).
pub fn context_windows(
    num_frames: usize,
    context_length: usize,
    context_stride: usize,
) -> Result<Vec<Range<usize>>> {
    if context_length == 0 {
        return Err(Error::invalid("context_length", "must be at least 1"));
    }
    if context_length > num_frames {
        return Err(Error::invalid(
            "context_length",
            format!("{context_length} exceeds the number of frames ({num_frames})"),
        ));
    }
    if context_stride == 0 || context_stride > context_length {
        return Err(Error::invalid(
            "context_stride",
            format!("must be in 1..={context_length} (context_length), got {context_stride}"),
        ));
    }
    let mut windows: Vec<Range<usize>> = (0..=num_frames - context_length)
        .step_by(context_stride)
        .map(|s| s..s + context_length)
        .collect();
    if windows.last().map(|w| w.end) != Some(num_frames) {
        windows.push(num_frames - context_length..num_frames);
    }
    Ok(windows)
}

/// Everything about FreeNoise window fusion that depends only on `(F, L, S, scheme)`: the
/// windows, which frames of each window are accumulated, the window weights and the per-frame
/// normaliser `Σ weights` (diffusers' `num_times_accumulated`).
///
/// The fused value of frame `f` is `Σ_windows w[f − start]·out_window[f − start] / normaliser[f]`
/// over the windows that accumulate `f`. Every frame of a regular window `[kS, kS + L)` is
/// accumulated; of the ragged last window `[F − L, F)` (appended when the stride does not land
/// on `F`) only its last `k = F − end_of_last_regular_window` frames are, which no regular
/// window covers.
///
/// **Normaliser of the ragged window.** The correct normaliser adds the per-frame weights
/// `w[L−k..L]` for those `k` frames, so a frame covered only by the ragged window gets exactly
/// that window's output. diffusers adds the single weight `w[L−k]` to all `k` frames
/// (`num_times_accumulated[:, -k:] += weights[:, -k]`, bug B3 in
/// `shared/reference/algorithms.md` §2.1(f)), which scales frame `F−k+i` by `w[L−k+i]/w[L−k]`
/// (pyramid, F = 35, L = 16, S = 4: 1, 2/3, 1/3). `compat_diffusers_tail_bug = true` reproduces
/// it, for parity tests only.
///
/// ```
/// use vdm_longvideo::freenoise::{WeightingScheme, WindowPlan};
///
/// let plan = WindowPlan::new(35, 16, 4, WeightingScheme::Pyramid, false).unwrap();
/// assert_eq!(plan.windows().last(), Some(&(19..35)));
/// assert_eq!(plan.tail_len(), Some(3));
/// assert_eq!(&plan.normaliser()[32..], [3.0, 2.0, 1.0]);
/// let diffusers = WindowPlan::new(35, 16, 4, WeightingScheme::Pyramid, true).unwrap();
/// assert_eq!(&diffusers.normaliser()[32..], [3.0, 3.0, 3.0]);
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct WindowPlan {
    num_frames: usize,
    context_length: usize,
    context_stride: usize,
    scheme: WeightingScheme,
    compat_diffusers_tail_bug: bool,
    windows: Vec<Range<usize>>,
    tail_len: Option<usize>,
    weights: Vec<f32>,
    normaliser: Vec<f32>,
}

impl WindowPlan {
    /// Plans the fusion of `num_frames` frames in windows of `context_length` at stride
    /// `context_stride`.
    ///
    /// Errors like [`context_windows`] (naming `context_length` / `context_stride`); in
    /// particular `num_frames < context_length` is an error here (the hook handles that case
    /// before planning, see [`FreeNoiseHook`](super::FreeNoiseHook)).
    pub fn new(
        num_frames: usize,
        context_length: usize,
        context_stride: usize,
        scheme: WeightingScheme,
        compat_diffusers_tail_bug: bool,
    ) -> Result<Self> {
        let windows = context_windows(num_frames, context_length, context_stride)?;
        let regular_end =
            (num_frames - context_length) / context_stride * context_stride + context_length;
        let tail_len = (regular_end != num_frames).then_some(num_frames - regular_end);
        let mut plan = Self {
            num_frames,
            context_length,
            context_stride,
            scheme,
            compat_diffusers_tail_bug,
            windows,
            tail_len,
            weights: scheme.weights(context_length),
            normaliser: Vec::new(),
        };
        // Accumulated in window order in f32, exactly as diffusers does.
        let mut normaliser = vec![0.0f32; num_frames];
        for (j, window) in plan.windows.iter().enumerate() {
            for offset in plan.accumulated(j) {
                normaliser[window.start + offset] += plan.count_weight(j, offset);
            }
        }
        plan.normaliser = normaliser;
        Ok(plan)
    }

    /// Number of frames `F`.
    pub fn num_frames(&self) -> usize {
        self.num_frames
    }

    /// Window length `L`.
    pub fn context_length(&self) -> usize {
        self.context_length
    }

    /// Stride `S` between window starts.
    pub fn context_stride(&self) -> usize {
        self.context_stride
    }

    /// The weighting scheme.
    pub fn scheme(&self) -> WeightingScheme {
        self.scheme
    }

    /// Whether the ragged-window normaliser reproduces diffusers' bug B3.
    pub fn compat_diffusers_tail_bug(&self) -> bool {
        self.compat_diffusers_tail_bug
    }

    /// All windows in order, the ragged last window included (diffusers' `frame_indices`
    /// after `forward` appended `(F − L, F)`).
    pub fn windows(&self) -> &[Range<usize>] {
        &self.windows
    }

    /// The stride-aligned windows only (diffusers' `_get_frame_indices`).
    pub fn regular_windows(&self) -> &[Range<usize>] {
        let n = self.windows.len() - usize::from(self.tail_len.is_some());
        &self.windows[..n]
    }

    /// `Some(k)` when a ragged last window was appended, `k` being the number of its frames
    /// that are accumulated (diffusers' `last_frame_batch_length`).
    pub fn tail_len(&self) -> Option<usize> {
        self.tail_len
    }

    /// Whether window `window` is the appended ragged window.
    pub fn is_tail(&self, window: usize) -> bool {
        self.tail_len.is_some() && window + 1 == self.windows.len()
    }

    /// Offsets (within window `window`) of the frames whose outputs are accumulated.
    pub fn accumulated(&self, window: usize) -> Range<usize> {
        match self.tail_len {
            Some(k) if self.is_tail(window) => self.context_length - k..self.context_length,
            _ => 0..self.context_length,
        }
    }

    /// The `L` window weights.
    pub fn weights(&self) -> &[f32] {
        &self.weights
    }

    /// What window `window` adds to the normaliser of its frame at `offset`: `w[offset]`, or
    /// `w[L − k]` for the ragged window under `compat_diffusers_tail_bug`.
    pub fn count_weight(&self, window: usize, offset: usize) -> f32 {
        match self.tail_len {
            Some(k) if self.compat_diffusers_tail_bug && self.is_tail(window) => {
                self.weights[self.context_length - k]
            }
            _ => self.weights[offset],
        }
    }

    /// The per-frame normaliser (length `F`, every entry > 0).
    pub fn normaliser(&self) -> &[f32] {
        &self.normaliser
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn even_sawtooth_matches_diffusers() {
        let w = WeightingScheme::DelayedReverseSawtooth.weights(16);
        let mut expected = vec![0.01f32; 7];
        expected.extend([8.0, 8.0, 7.0, 6.0, 5.0, 4.0, 3.0, 2.0, 1.0]);
        assert_eq!(w, expected);
    }

    #[test]
    fn bad_parameters_are_named() {
        assert!(
            context_windows(8, 16, 4)
                .unwrap_err()
                .to_string()
                .contains("context_length")
        );
        assert!(
            context_windows(32, 16, 0)
                .unwrap_err()
                .to_string()
                .contains("context_stride")
        );
        assert!(
            context_windows(32, 16, 17)
                .unwrap_err()
                .to_string()
                .contains("context_stride")
        );
    }

    proptest! {
        #[test]
        fn windows_cover_every_frame(f in 1usize..200, l in 1usize..40, s in 1usize..40) {
            prop_assume!(l <= f && s <= l);
            let ws = context_windows(f, l, s).unwrap();
            let mut covered = vec![false; f];
            for w in &ws {
                prop_assert_eq!(w.len(), l);
                for i in w.clone() { covered[i] = true; }
            }
            prop_assert!(covered.iter().all(|&c| c));
        }

        #[test]
        fn weights_have_window_length_and_are_positive(
            len in 1usize..64,
            scheme in prop_oneof![
                Just(WeightingScheme::Flat),
                Just(WeightingScheme::Pyramid),
                Just(WeightingScheme::DelayedReverseSawtooth)
            ],
        ) {
            let w = scheme.weights(len);
            prop_assert_eq!(w.len(), len);
            prop_assert!(w.iter().all(|&x| x > 0.0));
        }
    }
}
