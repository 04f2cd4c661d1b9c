//! FreeNoise noise rescheduling (Qiu et al. 2024, §3.2 "Noise Rescheduling"; diffusers'
//! `AnimateDiffFreeNoiseMixin._prepare_latents_free_noise` in
//! `src/diffusers/pipelines/free_noise_utils.py`).
//!
//! Instead of drawing independent noise for every frame of a long video, FreeNoise draws noise
//! for the first `L = context_length` frames and fills every later block of `S =
//! context_stride` frames with a random permutation of the block `L` frames earlier. Every
//! stride-aligned window `[kS, kS + L)` then holds exactly the first window's `L` noise frames,
//! locally shuffled, so each window the temporal layers see looks like a clip of the training
//! length while the long-range noise stays correlated.

use burn::tensor::{Device, Int, Tensor, TensorData};
use vdm_core::noise::draw;
use vdm_core::{Error, NoiseSource, Result, VideoShape};

use crate::noise_prior::InitialNoise;

/// How the noise of frames beyond the first window is obtained (diffusers' `noise_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum NoiseType {
    /// FreeNoise: block `[i, i + S)` is a random permutation of block `[i − L, i − L + S)`, for
    /// `i = L, L + S, …`; a ragged last block takes a prefix of its permutation.
    #[default]
    ShuffleContext,
    /// The first `L` frames tiled over the video (frame `f` has the noise of frame `f mod L`).
    ///
    /// diffusers' `repeat_context` is broken (bug B1 in `shared/reference/algorithms.md`
    /// §2.1(f): it compares the context length with the string `"repeat_context"`, so it draws
    /// `F` frames, tiles them and cuts back to `F`, i.e. returns plain random noise). This is
    /// the documented intent instead.
    RepeatContext,
    /// Independent noise for every frame (no rescheduling).
    Random,
}

impl NoiseType {
    /// The diffusers `noise_type` string.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::ShuffleContext => "shuffle_context",
            Self::RepeatContext => "repeat_context",
            Self::Random => "random",
        }
    }

    /// Parses the diffusers `noise_type` string.
    pub fn parse(value: &str) -> Result<Self> {
        match value {
            "shuffle_context" => Ok(Self::ShuffleContext),
            "repeat_context" => Ok(Self::RepeatContext),
            "random" => Ok(Self::Random),
            other => Err(Error::unknown_variant(
                "noise_type",
                other,
                &["shuffle_context", "repeat_context", "random"],
            )),
        }
    }
}

/// Rescheduled noise and where each frame's noise came from.
#[derive(Debug, Clone)]
pub struct RescheduledNoise {
    /// The rescheduled latents `[B, C, F, H, W]`.
    pub latents: Tensor<5>,
    /// For every frame `f`, the frame of the base noise it holds:
    /// `latents[:, :, f] == base[:, :, source_frames[f]]` exactly.
    pub source_frames: Vec<usize>,
}

/// FreeNoise noise rescheduling: window `context_length`, stride `context_stride`, and a
/// [`NoiseType`].
///
/// Usable directly as the sampler's initial noise ([`InitialNoise`]). Base noise is drawn for
/// **all** `F` frames (as diffusers does, so one seed gives the same first `L` frames whatever
/// the noise type), then one permutation of `S` per block is drawn from the same
/// [`NoiseSource`] — replaying diffusers' `randperm` results through
/// [`NoiseBank::push_permutation`](vdm_core::noise::NoiseBank::push_permutation) reproduces its
/// latents exactly.
///
/// ```
/// use burn::tensor::Device;
/// use vdm_core::{SeededNoise, VideoShape};
/// use vdm_longvideo::freenoise::{NoiseRescheduling, NoiseType};
///
/// let resched = NoiseRescheduling::new(16, 4, NoiseType::ShuffleContext);
/// let shape = VideoShape::new([1, 4, 40, 8, 8]);
/// let out = resched.sample_with_sources(shape, &mut SeededNoise::new(0), &Device::flex()).unwrap();
/// assert_eq!(out.latents.dims(), [1, 4, 40, 8, 8]);
/// // Every frame's noise is one of the first 16 frames' noise.
/// assert!(out.source_frames.iter().all(|&s| s < 16));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct NoiseRescheduling {
    /// Window length `L` (diffusers default 16).
    pub context_length: usize,
    /// Stride `S` between windows, `1 ≤ S ≤ L` (diffusers default 4).
    pub context_stride: usize,
    /// How later frames get their noise.
    pub noise_type: NoiseType,
}

impl Default for NoiseRescheduling {
    /// diffusers' defaults: `L = 16`, `S = 4`, `shuffle_context`.
    fn default() -> Self {
        Self::new(16, 4, NoiseType::ShuffleContext)
    }
}

impl NoiseRescheduling {
    /// A rescheduling with the given window, stride and noise type.
    pub fn new(context_length: usize, context_stride: usize, noise_type: NoiseType) -> Self {
        Self {
            context_length,
            context_stride,
            noise_type,
        }
    }

    /// Checks the parameters against `num_frames`: `1 ≤ L ≤ F` and `1 ≤ S ≤ L` (a stride
    /// above `L` would copy frames that are not filled yet). Errors name the parameter.
    pub fn validate(&self, num_frames: usize) -> Result<()> {
        let (l, s) = (self.context_length, self.context_stride);
        if l == 0 {
            return Err(Error::invalid("context_length", "must be at least 1"));
        }
        if l > num_frames {
            return Err(Error::invalid(
                "context_length",
                format!("{l} exceeds the number of frames ({num_frames})"),
            ));
        }
        if s == 0 || s > l {
            return Err(Error::invalid(
                "context_stride",
                format!("must be in 1..={l} (context_length), got {s}"),
            ));
        }
        Ok(())
    }

    /// The base frame every frame takes its noise from, drawing the permutations of
    /// [`NoiseType::ShuffleContext`] from `noise` (one `permutation(S)` per block, in frame
    /// order, exactly diffusers' `randperm` calls).
    pub fn source_frames(
        &self,
        num_frames: usize,
        noise: &mut dyn NoiseSource,
    ) -> Result<Vec<usize>> {
        self.validate(num_frames)?;
        let (l, s) = (self.context_length, self.context_stride);
        let mut source: Vec<usize> = (0..num_frames).collect();
        match self.noise_type {
            NoiseType::Random => {}
            NoiseType::RepeatContext => source.iter_mut().for_each(|f| *f %= l),
            NoiseType::ShuffleContext => {
                for i in (l..num_frames).step_by(s) {
                    // Source block [i − L, i − L + S): always filled already since S ≤ L.
                    let window_start = i - l;
                    let perm = checked_permutation(noise, s)?;
                    let len = s.min(num_frames - i);
                    for (t, &p) in perm.iter().take(len).enumerate() {
                        source[i + t] = source[window_start + p];
                    }
                }
            }
        }
        Ok(source)
    }

    /// Reschedules `base` noise `[B, C, F, H, W]` (all `F` frames drawn; frames `0..L` are
    /// kept, later frames are taken from them).
    pub fn reschedule(
        &self,
        base: Tensor<5>,
        noise: &mut dyn NoiseSource,
    ) -> Result<RescheduledNoise> {
        let shape = VideoShape::of("base_noise", &base)?;
        let source_frames = self.source_frames(shape.frames, noise)?;
        let latents = gather_frames(base, &source_frames);
        Ok(RescheduledNoise {
            latents,
            source_frames,
        })
    }

    /// Draws base noise of `shape` from `noise` (one `normal` request for all `F` frames),
    /// then reschedules it.
    pub fn sample_with_sources(
        &self,
        shape: VideoShape,
        noise: &mut dyn NoiseSource,
        device: &Device,
    ) -> Result<RescheduledNoise> {
        self.validate(shape.frames)?;
        let base: Tensor<5> = draw(noise, shape.dims(), device)?;
        self.reschedule(base, noise)
    }
}

impl InitialNoise for NoiseRescheduling {
    fn sample(
        &self,
        shape: VideoShape,
        noise: &mut dyn NoiseSource,
        device: &Device,
    ) -> Result<Tensor<5>> {
        Ok(self.sample_with_sources(shape, noise, device)?.latents)
    }
}

/// A permutation of `0..n` from `noise`, checked (a custom source could return anything).
fn checked_permutation(noise: &mut dyn NoiseSource, n: usize) -> Result<Vec<usize>> {
    let perm = noise.permutation(n)?;
    let mut seen = vec![false; n];
    let valid = perm.len() == n
        && perm
            .iter()
            .all(|&i| i < n && !std::mem::replace(&mut seen[i], true));
    if !valid {
        return Err(Error::Noise(format!(
            "the noise source returned {perm:?}, not a permutation of 0..{n}"
        )));
    }
    Ok(perm)
}

/// `video[:, :, frames]` (an exact copy), or `video` itself for the identity.
fn gather_frames(video: Tensor<5>, frames: &[usize]) -> Tensor<5> {
    if frames.iter().enumerate().all(|(i, &f)| i == f) {
        return video;
    }
    let idx: Vec<i64> = frames.iter().map(|&f| f as i64).collect();
    let idx = Tensor::<1, Int>::from_data(TensorData::new(idx, [frames.len()]), &video.device());
    video.select(2, idx)
}

#[cfg(test)]
mod tests {
    use super::*;
    use vdm_core::SeededNoise;
    use vdm_core::noise::{NoNoise, NoiseBank};

    #[test]
    fn diffusers_example_f24_and_ragged_f26() {
        // algorithms.md §2.1(a): F = 24: 16–19 ← perm(0..3), 20–23 ← perm(4..7);
        // F = 26: 24–25 ← first two of perm(8..11).
        let mut bank = NoiseBank::new();
        bank.push_permutation(vec![3, 2, 1, 0])
            .push_permutation(vec![0, 1, 2, 3])
            .push_permutation(vec![2, 0, 1, 3]);
        let r = NoiseRescheduling::default();
        let src = r.source_frames(26, &mut bank).unwrap();
        assert_eq!(&src[16..], [3, 2, 1, 0, 4, 5, 6, 7, 10, 8]);
    }

    #[test]
    fn repeat_and_random_draw_no_permutation() {
        let r = NoiseRescheduling::new(4, 2, NoiseType::RepeatContext);
        assert_eq!(
            r.source_frames(10, &mut NoNoise).unwrap(),
            [0, 1, 2, 3, 0, 1, 2, 3, 0, 1]
        );
        let r = NoiseRescheduling::new(4, 2, NoiseType::Random);
        assert_eq!(
            r.source_frames(6, &mut NoNoise).unwrap(),
            [0, 1, 2, 3, 4, 5]
        );
    }

    #[test]
    fn bad_parameters_are_named() {
        let err = |l, s, f| {
            NoiseRescheduling::new(l, s, NoiseType::ShuffleContext)
                .source_frames(f, &mut SeededNoise::new(0))
                .unwrap_err()
                .to_string()
        };
        assert!(err(0, 1, 8).contains("context_length"));
        assert!(err(16, 4, 8).contains("context_length"));
        assert!(err(8, 0, 16).contains("context_stride"));
        assert!(err(8, 9, 16).contains("context_stride"));
        assert!(
            NoiseType::parse("loop")
                .unwrap_err()
                .to_string()
                .contains("noise_type")
        );
    }

    #[test]
    fn reschedule_copies_frames_exactly() {
        let device = Device::flex();
        let r = NoiseRescheduling::new(4, 2, NoiseType::ShuffleContext);
        let out = r
            .sample_with_sources(
                VideoShape::new([2, 3, 9, 2, 2]),
                &mut SeededNoise::new(5),
                &device,
            )
            .unwrap();
        let base: Tensor<5> = draw(&mut SeededNoise::new(5), [2, 3, 9, 2, 2], &device).unwrap();
        for (f, &s) in out.source_frames.iter().enumerate() {
            out.latents
                .clone()
                .narrow(2, f, 1)
                .into_data()
                .assert_eq(&base.clone().narrow(2, s, 1).into_data(), true);
        }
    }
}
