//! FreeNoise context windows and their fusion weights (Qiu et al. 2024, "FreeNoise:
//! Tuning-Free Longer Video Diffusion via Noise Rescheduling"; diffusers'
//! `FreeNoiseTransformerBlock._get_frame_indices` / `_get_frame_weights` in
//! `models/attention.py`).

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
    /// use vdm_longvideo::freenoise_windows::WeightingScheme;
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
/// use vdm_longvideo::freenoise_windows::context_windows;
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
