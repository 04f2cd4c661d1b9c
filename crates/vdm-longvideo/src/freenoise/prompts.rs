//! Multi-prompt FreeNoise: prompt travel and motion injection.
//!
//! - **Prompt travel** (diffusers' `AnimateDiffFreeNoiseMixin._encode_prompt_free_noise` and
//!   `_lerp` in `src/diffusers/pipelines/free_noise_utils.py`): prompts keyed by frame index
//!   become one conditioning per frame, `[B, F, S, D]`, interpolated between keys;
//!   [`interpolate_prompts`] / [`travelling_conditioning`].
//! - **Motion injection** (Qiu et al. 2024, §3.3; VideoCrafter's `batch_ddim_sampling_freenoise_mp`
//!   in `scripts/evaluation/funcs.py`, `lvdm/models/samplers/ddim_mp.py` and
//!   `openaimodel3d_freenoise.py` of AILab-CVC/FreeNoise): in some denoising steps and some UNet
//!   blocks the cross-attention sees a single prompt instead of the travelling one, so the
//!   layout is settled by one prompt while the motion follows the travel.
//!   [`MotionInjection`] is that schedule as data; [`MultiPromptConditioning::context_for`] is
//!   the query a sampler / model makes for every `(step, block)`.
//!
//! For classifier-free guidance, negative prompts travel the same way (diffusers interpolates
//! `negative_prompt` dicts too): interpolate them separately and pass the result as the
//! unconditional conditioning. The unconditional pass never uses motion injection.
//!
//! ```
//! use burn::tensor::{Device, Tensor};
//! use vdm_longvideo::freenoise::{
//!     BlockKind, Lerp, MotionInjection, MultiPromptConditioning, PromptContext,
//! };
//!
//! let device = Device::flex();
//! let a = Tensor::<3>::zeros([1, 77, 8], &device);  // encoded "a cat walks"
//! let b = Tensor::<3>::ones([1, 77, 8], &device);   // encoded "a cat runs"
//! let prompts = MultiPromptConditioning::from_keyframes(
//!     &[(0, a), (32, b)], 64, &Lerp, MotionInjection::videocrafter(),
//! ).unwrap();
//! // Step 2 of 50: the encoder sees one prompt, the decoder the travelling one.
//! assert_eq!(prompts.injection.context_for(2, BlockKind::Encoder), PromptContext::Single);
//! assert_eq!(prompts.injection.context_for(2, BlockKind::Decoder), PromptContext::Travelling);
//! assert_eq!(prompts.injection.context_for(10, BlockKind::Encoder), PromptContext::Travelling);
//! let _ctx = prompts.context_for(2, BlockKind::Encoder); // a `vdm_core::Conditioning`
//! ```

use std::ops::Range;

use burn::tensor::{Tensor, TensorData};
use vdm_core::{Conditioning, Error, Result};

/// How embeddings are interpolated between two prompt keyframes (diffusers'
/// `prompt_interpolation_callback`).
///
/// Any `Fn(start_frame, end_frame, &start, &end) -> Result<Tensor<4>>` closure implements it.
pub trait PromptInterpolation: Send + Sync {
    /// The embeddings of frames `start_frame..=end_frame` from the keyframe embeddings `start`
    /// and `end`.
    ///
    /// # Shapes
    /// - `start`, `end`: `[B, S, D]`
    /// - output: `[B, end_frame − start_frame + 1, S, D]`
    fn interpolate(
        &self,
        start_frame: usize,
        end_frame: usize,
        start: &Tensor<3>,
        end: &Tensor<3>,
    ) -> Result<Tensor<4>>;
}

impl<T> PromptInterpolation for T
where
    T: Fn(usize, usize, &Tensor<3>, &Tensor<3>) -> Result<Tensor<4>> + Send + Sync,
{
    fn interpolate(
        &self,
        start_frame: usize,
        end_frame: usize,
        start: &Tensor<3>,
        end: &Tensor<3>,
    ) -> Result<Tensor<4>> {
        self(start_frame, end_frame, start, end)
    }
}

/// Linear interpolation of the embeddings, diffusers' default `_lerp`: frame `start + i` gets
/// `(1 − α)·start + α·end` with `α = i / (end − start)`.
#[derive(Debug, Clone, Copy, Default)]
pub struct Lerp;

impl PromptInterpolation for Lerp {
    fn interpolate(
        &self,
        start_frame: usize,
        end_frame: usize,
        start: &Tensor<3>,
        end: &Tensor<3>,
    ) -> Result<Tensor<4>> {
        let n = end_frame + 1 - start_frame;
        let start = start.clone().unsqueeze_dim::<4>(1);
        if n == 1 {
            return Ok(start);
        }
        let end = end.clone().unsqueeze_dim::<4>(1);
        // (1 − α) is formed in f64 then rounded, as PyTorch does with a Python float.
        let alpha: Vec<f32> = (0..n).map(|i| (i as f64 / (n - 1) as f64) as f32).collect();
        let keep: Vec<f32> = (0..n)
            .map(|i| (1.0 - i as f64 / (n - 1) as f64) as f32)
            .collect();
        let device = start.device();
        let col = |v: Vec<f32>| {
            Tensor::<1>::from_data(TensorData::new(v, [n]), &device).reshape([1, n, 1, 1])
        };
        Ok(start * col(keep) + end * col(alpha))
    }
}

/// Per-frame embeddings `[B, F, S, D]` from prompt keyframes `(frame, embedding [B, S, D])`.
///
/// Keys must be strictly increasing (sorted, no duplicates), start at frame 0 and lie below
/// `num_frames`; all embeddings must have the same shape. As in diffusers, the last prompt is
/// held until frame `F − 1`, and each segment `[k_i, k_{i+1}]` comes from
/// `interpolation.interpolate(k_i, k_{i+1}, E_i, E_{i+1})`, a shared endpoint taking the value
/// of the later segment.
///
/// ```
/// use burn::tensor::{Device, Tensor};
/// use vdm_longvideo::freenoise::{interpolate_prompts, Lerp};
///
/// let d = Device::flex();
/// let keys = [(0, Tensor::<3>::zeros([1, 1, 1], &d)), (4, Tensor::<3>::ones([1, 1, 1], &d))];
/// let e = interpolate_prompts(&keys, 6, &Lerp).unwrap();
/// let v: Vec<f32> = e.into_data().try_to_vec().unwrap();
/// assert_eq!(v, [0.0, 0.25, 0.5, 0.75, 1.0, 1.0]);
/// ```
pub fn interpolate_prompts(
    keyframes: &[(usize, Tensor<3>)],
    num_frames: usize,
    interpolation: &dyn PromptInterpolation,
) -> Result<Tensor<4>> {
    validate_keyframes(keyframes, num_frames)?;
    let [b, s, d] = keyframes[0].1.dims();
    let mut keys: Vec<(usize, &Tensor<3>)> = keyframes.iter().map(|(f, t)| (*f, t)).collect();
    let last = keys[keys.len() - 1];
    if last.0 != num_frames - 1 {
        keys.push((num_frames - 1, last.1));
    }
    if keys.len() == 1 {
        // One frame, one prompt.
        return Ok(keys[0].1.clone().unsqueeze_dim(1));
    }
    let mut segments = Vec::with_capacity(keys.len() - 1);
    for (i, pair) in keys.windows(2).enumerate() {
        let ((s0, e0), (s1, e1)) = (pair[0], pair[1]);
        let seg = interpolation.interpolate(s0, s1, e0, e1)?;
        let want = [b, s1 - s0 + 1, s, d];
        if seg.dims() != want {
            return Err(Error::shape(
                format!("prompt interpolation output for frames {s0}..={s1}"),
                format!("{want:?}"),
                &seg.dims(),
            ));
        }
        // The shared endpoint belongs to the next segment, except after the last one.
        let keep = if i + 2 == keys.len() {
            s1 - s0 + 1
        } else {
            s1 - s0
        };
        segments.push(seg.narrow(1, 0, keep));
    }
    Ok(Tensor::cat(segments, 1))
}

/// [`interpolate_prompts`] as [`Conditioning::PerFrame`].
pub fn travelling_conditioning(
    keyframes: &[(usize, Tensor<3>)],
    num_frames: usize,
    interpolation: &dyn PromptInterpolation,
) -> Result<Conditioning> {
    Ok(Conditioning::PerFrame(interpolate_prompts(
        keyframes,
        num_frames,
        interpolation,
    )?))
}

fn validate_keyframes(keyframes: &[(usize, Tensor<3>)], num_frames: usize) -> Result<()> {
    if num_frames == 0 {
        return Err(Error::invalid("num_frames", "must be at least 1"));
    }
    let Some((first, first_embeds)) = keyframes.first() else {
        return Err(Error::invalid(
            "keyframes",
            "at least one prompt (at frame 0) is needed",
        ));
    };
    if *first != 0 {
        return Err(Error::invalid(
            "keyframes",
            format!("the first key must be frame 0 (a starting prompt), got {first}"),
        ));
    }
    let dims = first_embeds.dims();
    for (i, pair) in keyframes.windows(2).enumerate() {
        if pair[1].0 <= pair[0].0 {
            return Err(Error::invalid(
                "keyframes",
                format!(
                    "keys must be sorted without duplicates, got {} after {} (entry {})",
                    pair[1].0,
                    pair[0].0,
                    i + 1
                ),
            ));
        }
    }
    for (i, (frame, embeds)) in keyframes.iter().enumerate() {
        if *frame >= num_frames {
            return Err(Error::invalid(
                "keyframes",
                format!("key {frame} is out of range for {num_frames} frames (0-based)"),
            ));
        }
        if embeds.dims() != dims {
            return Err(Error::shape(
                format!("keyframes[{i}]"),
                format!("{dims:?} (the shape of keyframes[0])"),
                &embeds.dims(),
            ));
        }
    }
    Ok(())
}

/// VideoCrafter's two-prompt travel (`batch_ddim_sampling_freenoise_mp`): `P1` for the first
/// `⌊3F/8⌋` frames, a linear travel to `P2` over the middle `F − 2⌊3F/8⌋` frames, `P2` for the
/// last `⌊3F/8⌋` frames — as keyframes for [`interpolate_prompts`] with [`Lerp`].
///
/// Needs at least two travel frames (`F = 2` or `F ≥ 4`), otherwise VideoCrafter divides by
/// zero; the error names `num_frames`.
pub fn videocrafter_two_prompt_keyframes(
    num_frames: usize,
    first: Tensor<3>,
    second: Tensor<3>,
) -> Result<Vec<(usize, Tensor<3>)>> {
    let hold = num_frames * 3 / 8;
    let travel = num_frames.saturating_sub(2 * hold);
    if travel < 2 {
        return Err(Error::invalid(
            "num_frames",
            format!("two-prompt travel needs F = 2 or F ≥ 4, got {num_frames}"),
        ));
    }
    let mut keys = vec![(0, first.clone())];
    if hold > 0 {
        keys.push((hold, first));
    }
    keys.push((hold + travel - 1, second));
    Ok(keys)
}

/// Which part of a UNet a cross-attention layer belongs to (defined in vdm-core, so that
/// models can route conditioning per block).
pub use vdm_core::BlockKind;

/// Which conditioning a cross-attention layer sees.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PromptContext {
    /// The per-frame travelling prompt.
    Travelling,
    /// The single prompt, the same for every frame.
    Single,
}

/// A set of [`BlockKind`]s.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct BlockSet {
    /// Down blocks.
    pub encoder: bool,
    /// The middle block.
    pub middle: bool,
    /// Up blocks.
    pub decoder: bool,
}

impl BlockSet {
    /// Whether `kind` is in the set.
    pub fn contains(&self, kind: BlockKind) -> bool {
        match kind {
            BlockKind::Encoder => self.encoder,
            BlockKind::Middle => self.middle,
            BlockKind::Decoder => self.decoder,
        }
    }
}

/// FreeNoise motion injection as data: which denoising steps and which blocks see the single
/// prompt instead of the travelling one.
///
/// A block in `injected_blocks` sees [`PromptContext::Single`] in every step **outside**
/// `travel_steps`; all other `(step, block)` pairs see [`PromptContext::Travelling`]. Steps are
/// 0-based sampler step indices (`0` = the noisiest step).
///
/// The published schedule ([`MotionInjection::videocrafter`], from
/// `batch_ddim_sampling_freenoise_mp` + `ddim_mp.py`, DDIM 50 steps): steps `i < 5` or `i > 15`
/// inject the single prompt into the encoder and middle blocks, the decoder always sees the
/// travelling prompt. It applies to the conditional pass of classifier-free guidance only: the
/// unconditional pass keeps its own (negative) conditioning in every block and step.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct MotionInjection {
    /// Steps in which every block sees the travelling prompt.
    pub travel_steps: Range<usize>,
    /// Blocks that see the single prompt outside `travel_steps`.
    pub injected_blocks: BlockSet,
}

impl Default for MotionInjection {
    /// [`MotionInjection::videocrafter`].
    fn default() -> Self {
        Self::videocrafter()
    }
}

impl MotionInjection {
    /// The published schedule for 50 DDIM steps: travel in steps `5..=15`, injection into the
    /// encoder and middle blocks.
    pub fn videocrafter() -> Self {
        Self {
            travel_steps: 5..16,
            injected_blocks: BlockSet {
                encoder: true,
                middle: true,
                decoder: false,
            },
        }
    }

    /// The published schedule rescaled to `num_steps` steps: travel in steps
    /// `⌈N/10⌉ ..= ⌊3N/10⌋` (the same fraction 10%–30% of the schedule; `5..=15` for `N = 50`).
    pub fn videocrafter_scaled(num_steps: usize) -> Self {
        Self {
            travel_steps: num_steps.div_ceil(10)..3 * num_steps / 10 + 1,
            ..Self::videocrafter()
        }
    }

    /// No injection: every block sees the travelling prompt in every step (diffusers' prompt
    /// travel).
    pub fn disabled() -> Self {
        Self {
            travel_steps: 0..usize::MAX,
            injected_blocks: BlockSet::default(),
        }
    }

    /// Which prompt the cross-attention of `block` sees in step `step`.
    pub fn context_for(&self, step: usize, block: BlockKind) -> PromptContext {
        if self.injected_blocks.contains(block) && !self.travel_steps.contains(&step) {
            PromptContext::Single
        } else {
            PromptContext::Travelling
        }
    }
}

/// The two conditionings of multi-prompt FreeNoise and the injection schedule choosing between
/// them: what a sampler hands to a model whose cross-attention layers know their
/// [`BlockKind`].
#[derive(Debug, Clone)]
pub struct MultiPromptConditioning {
    /// The per-frame travelling prompt ([`Conditioning::PerFrame`], `[B, F, S, D]`).
    pub travelling: Conditioning,
    /// The single prompt (VideoCrafter: the last prompt), usually [`Conditioning::Shared`].
    pub single: Conditioning,
    /// Which of the two each `(step, block)` sees.
    pub injection: MotionInjection,
}

impl MultiPromptConditioning {
    /// Travelling prompt from `keyframes` (see [`interpolate_prompts`]), single prompt = the
    /// last keyframe's prompt (as VideoCrafter's `cond2`).
    pub fn from_keyframes(
        keyframes: &[(usize, Tensor<3>)],
        num_frames: usize,
        interpolation: &dyn PromptInterpolation,
        injection: MotionInjection,
    ) -> Result<Self> {
        let travelling = travelling_conditioning(keyframes, num_frames, interpolation)?;
        let single = Conditioning::Shared(keyframes[keyframes.len() - 1].1.clone());
        Ok(Self {
            travelling,
            single,
            injection,
        })
    }

    /// The conditioning the cross-attention of `block` sees in step `step` (conditional pass).
    pub fn context_for(&self, step: usize, block: BlockKind) -> &Conditioning {
        match self.injection.context_for(step, block) {
            PromptContext::Travelling => &self.travelling,
            PromptContext::Single => &self.single,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::Device;

    fn key(v: f32) -> Tensor<3> {
        Tensor::<3>::ones([2, 3, 4], &Device::flex()).mul_scalar(v)
    }

    fn frame_values(e: Tensor<4>) -> Vec<f32> {
        // Value of (b = 0, s = 0, d = 0) per frame.
        let [_, f, _, _] = e.dims();
        e.slice([0..1, 0..f, 0..1, 0..1])
            .into_data()
            .try_to_vec()
            .unwrap()
    }

    #[test]
    fn lerp_matches_diffusers_segments() {
        let e =
            interpolate_prompts(&[(0, key(0.0)), (3, key(3.0)), (5, key(1.0))], 8, &Lerp).unwrap();
        assert_eq!(e.dims(), [2, 8, 3, 4]);
        assert_eq!(frame_values(e), [0.0, 1.0, 2.0, 3.0, 2.0, 1.0, 1.0, 1.0]);
    }

    #[test]
    fn single_prompt_and_single_frame() {
        let e = interpolate_prompts(&[(0, key(2.0))], 1, &Lerp).unwrap();
        assert_eq!(frame_values(e), [2.0]);
        let e = interpolate_prompts(&[(0, key(2.0))], 3, &Lerp).unwrap();
        assert_eq!(frame_values(e), [2.0, 2.0, 2.0]);
    }

    #[test]
    fn custom_interpolation_is_used() {
        let hold = |s: usize, e: usize, a: &Tensor<3>, _: &Tensor<3>| -> Result<Tensor<4>> {
            Ok(a.clone().unsqueeze_dim::<4>(1).repeat_dim(1, e - s + 1))
        };
        let e = interpolate_prompts(&[(0, key(0.0)), (2, key(5.0))], 4, &hold).unwrap();
        assert_eq!(frame_values(e), [0.0, 0.0, 5.0, 5.0]);
        let bad = |_: usize, _: usize, a: &Tensor<3>, _: &Tensor<3>| -> Result<Tensor<4>> {
            Ok(a.clone().unsqueeze_dim::<4>(1))
        };
        let err = interpolate_prompts(&[(0, key(0.0)), (2, key(5.0))], 4, &bad).unwrap_err();
        assert!(err.to_string().contains("interpolation"), "{err}");
    }

    #[test]
    fn keyframe_errors_name_the_parameter() {
        let e = |k: &[(usize, Tensor<3>)], f: usize| {
            interpolate_prompts(k, f, &Lerp).unwrap_err().to_string()
        };
        assert!(e(&[], 4).contains("keyframes"));
        assert!(e(&[(1, key(0.0))], 4).contains("frame 0"));
        assert!(e(&[(0, key(0.0)), (4, key(1.0))], 4).contains("out of range"));
        assert!(e(&[(0, key(0.0)), (3, key(1.0)), (2, key(1.0))], 8).contains("sorted"));
        assert!(e(&[(0, key(0.0)), (0, key(1.0))], 8).contains("duplicates"));
        assert!(e(&[(0, key(0.0))], 0).contains("num_frames"));
        let other = Tensor::<3>::ones([2, 3, 5], &Device::flex());
        assert!(e(&[(0, key(0.0)), (2, other)], 4).contains("keyframes[1]"));
    }

    #[test]
    fn videocrafter_two_prompt_travel() {
        // F = 64: P1 for 0..24, travel over 24..=39, P2 for 40..64.
        let keys = videocrafter_two_prompt_keyframes(64, key(0.0), key(15.0)).unwrap();
        let frames: Vec<usize> = keys.iter().map(|k| k.0).collect();
        assert_eq!(frames, [0, 24, 39]);
        let v = frame_values(interpolate_prompts(&keys, 64, &Lerp).unwrap());
        assert!(v[..25].iter().all(|&x| x == 0.0));
        assert!((v[30] - 6.0).abs() < 1e-5);
        assert!(v[39..].iter().all(|&x| (x - 15.0).abs() < 1e-5));
        assert_eq!(
            videocrafter_two_prompt_keyframes(2, key(0.0), key(1.0))
                .unwrap()
                .len(),
            2
        );
        assert!(videocrafter_two_prompt_keyframes(3, key(0.0), key(1.0)).is_err());
    }

    #[test]
    fn published_injection_schedule() {
        let m = MotionInjection::videocrafter();
        let single: Vec<usize> = (0..50)
            .filter(|&i| m.context_for(i, BlockKind::Encoder) == PromptContext::Single)
            .collect();
        // VideoCrafter: `if i < 5 or i > 15: use_injection`.
        let expected: Vec<usize> = (0..50).filter(|i| !(5..=15).contains(i)).collect();
        assert_eq!(single, expected);
        assert_eq!(m.context_for(0, BlockKind::Middle), PromptContext::Single);
        assert!((0..50).all(|i| m.context_for(i, BlockKind::Decoder) == PromptContext::Travelling));
        assert_eq!(MotionInjection::videocrafter_scaled(50), m);
        assert_eq!(MotionInjection::videocrafter_scaled(25).travel_steps, 3..8);
        let off = MotionInjection::disabled();
        assert!(
            (0..100).all(|i| off.context_for(i, BlockKind::Encoder) == PromptContext::Travelling)
        );
    }

    #[test]
    fn multi_prompt_conditioning_switches() {
        let mp = MultiPromptConditioning::from_keyframes(
            &[(0, key(0.0)), (4, key(1.0))],
            8,
            &Lerp,
            MotionInjection::videocrafter(),
        )
        .unwrap();
        assert!(matches!(
            mp.context_for(0, BlockKind::Encoder),
            Conditioning::Shared(_)
        ));
        assert!(matches!(
            mp.context_for(7, BlockKind::Encoder),
            Conditioning::PerFrame(_)
        ));
        assert!(matches!(
            mp.context_for(0, BlockKind::Decoder),
            Conditioning::PerFrame(_)
        ));
    }
}
