//! The cross-frame hook: which frames the spatial self-attention of each frame reads its keys
//! and values from.
//!
//! An image model inflated to video (a UNet's spatial transformers run frame by frame) lets
//! each frame attend to its own tokens. Training-free video methods replace that self-attention
//! by attention to other frames' tokens, with the frame's own queries:
//!
//! - [`CrossFrame::First`]: every frame attends to the first frame (Text2Video-Zero, Khachatryan
//!   et al. 2023, "cross-frame attention"), which carries the first frame's appearance to all;
//! - [`CrossFrame::SparseCausal`]: to the first and the previous frame (Tune-A-Video, Wu et al.
//!   2023, "sparse-causal attention"; frame 0 attends to itself twice, as its code does);
//! - [`CrossFrame::Full`]: to all frames at once (ControlVideo, Zhang et al. 2023, "fully
//!   cross-frame interaction").
//!
//! A model implements it in its spatial self-attention layers by projecting keys and values from
//! the tokens of [`CrossFrameHook::key_frames`] (of the same video) instead of the frame's own.
//! Invariant (tested on vdm-models' transformer blocks): on a video whose frames are identical every choice equals
//! plain self-attention, since attending to copies of the same keys changes no softmax average.

/// Chooses the key frames of every frame's spatial self-attention.
pub trait CrossFrameHook: Send + Sync {
    /// The frames (of a `frames`-frame video) whose tokens frame `frame` attends to, in order;
    /// `None` for its own tokens only (plain self-attention). Every frame of a video must get a
    /// list of the same length, or all `None`.
    fn key_frames(&self, frame: usize, frames: usize) -> Option<Vec<usize>>;
}

/// Plain self-attention: every frame attends to itself (the default).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OwnFrame;

impl CrossFrameHook for OwnFrame {
    fn key_frames(&self, _frame: usize, _frames: usize) -> Option<Vec<usize>> {
        None
    }
}

/// The well-known cross-frame attention patterns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CrossFrame {
    /// Every frame attends to frame 0 (Text2Video-Zero).
    First,
    /// Frame `f` attends to frames `0` and `max(f, 1) − 1` (Tune-A-Video's sparse-causal
    /// attention).
    SparseCausal,
    /// Every frame attends to all frames (ControlVideo).
    Full,
}

impl CrossFrameHook for CrossFrame {
    fn key_frames(&self, frame: usize, frames: usize) -> Option<Vec<usize>> {
        Some(match self {
            CrossFrame::First => vec![0],
            CrossFrame::SparseCausal => vec![0, frame.max(1) - 1],
            CrossFrame::Full => (0..frames).collect(),
        })
    }
}

/// The key frames of every frame of a `frames`-frame video under `hook`, checked: `None` for
/// plain self-attention, else one list per frame, all of the same length, every index
/// `< frames`.
///
/// # Errors
/// [`crate::Error::InvalidConfig`] naming `key_frames` for lists of different lengths, a mix of
/// `None` and lists, an empty list or an index out of range.
pub fn key_frame_plan(
    hook: &dyn CrossFrameHook,
    frames: usize,
) -> crate::Result<Option<Vec<Vec<usize>>>> {
    let lists: Vec<Option<Vec<usize>>> = (0..frames).map(|f| hook.key_frames(f, frames)).collect();
    if lists.iter().all(Option::is_none) {
        return Ok(None);
    }
    let bad = |why: String| Err(crate::Error::invalid("key_frames", why));
    let mut plan = Vec::with_capacity(frames);
    for (f, list) in lists.into_iter().enumerate() {
        let Some(list) = list else {
            return bad(format!(
                "frame {f} attends to itself while others attend across frames"
            ));
        };
        if list.is_empty() || list.iter().any(|&k| k >= frames) {
            return bad(format!(
                "frame {f}: {list:?} is not a non-empty list of frames < {frames}"
            ));
        }
        if let Some(first) = plan.first().map(Vec::len)
            && first != list.len()
        {
            return bad(format!(
                "frame {f} has {} key frames, frame 0 has {first}: every frame needs as many",
                list.len()
            ));
        }
        plan.push(list);
    }
    Ok(Some(plan))
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Ragged;
    impl CrossFrameHook for Ragged {
        fn key_frames(&self, frame: usize, _: usize) -> Option<Vec<usize>> {
            Some((0..=frame).collect())
        }
    }

    #[test]
    fn the_patterns_name_their_frames() {
        assert_eq!(key_frame_plan(&OwnFrame, 4).unwrap(), None);
        assert_eq!(
            key_frame_plan(&CrossFrame::First, 3).unwrap(),
            Some(vec![vec![0], vec![0], vec![0]])
        );
        assert_eq!(
            key_frame_plan(&CrossFrame::SparseCausal, 3).unwrap(),
            Some(vec![vec![0, 0], vec![0, 0], vec![0, 1]])
        );
        assert_eq!(
            key_frame_plan(&CrossFrame::Full, 2).unwrap(),
            Some(vec![vec![0, 1], vec![0, 1]])
        );
        let e = key_frame_plan(&Ragged, 3).unwrap_err().to_string();
        assert!(e.contains("key_frames"), "{e}");
    }
}
