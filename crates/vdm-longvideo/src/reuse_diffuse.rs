//! Reuse and Diffuse (VidRD; Gu et al. 2023, "Reuse and Diffuse: Iterative Denoising for
//! Text-to-Video Generation", arXiv 2309.03549; no public code, see
//! `shared/reference/algorithms.md` §11 for what is and is not known).
//!
//! A long video is made clip by clip; each new clip of `clip` frames starts with the last
//! `overlap` frames of the video so far and adds `clip − overlap` new ones:
//! - **frame-level noise reversion**: the new clip's initial noise reuses the previous clip's,
//!   the overlap frames with the noise they had, the new frames with the previous clip's noise in
//!   reversed frame order, averaged with fresh noise (correlated with what came before, not a
//!   repetition of it);
//! - **past-dependent noise sampling**: each new frame's noise is mixed with the one before,
//!   `ε_j = (α·ε_{j−1} + ε'_j)/√(1 + α²)` (unit variance; `α = 0` turns it off);
//! - **denoising with staged guidance**: in the first stages of the steps the overlap frames are
//!   replaced by the previous clip's frames noised to the current level (with the noise they
//!   were made from), all of them first, then the earliest ones, then none, so the new clip
//!   starts from the old frames and is free to blend into them later.
//!
//! The output keeps the video so far as it was and appends the new frames of every clip. The
//! constants of the paper are not public; the defaults here (`α = 0.5`, all overlap frames
//! guided for the first 30 % of the steps, half of them until 60 %) are ours.
//!
//! Invariants (tested): one clip is plain sampling from the same noise; the overlap frames of a
//! guided stage hold the previous frames at the current noise level; the mixed noise keeps
//! unit variance.

use burn::tensor::{Device, Tensor};
use vdm_core::error::ensure_non_negative;
use vdm_core::noise::draw;
use vdm_core::{Conditioning, Error, NoiseSource, Result, VideoShape};
use vdm_schedulers::prediction::Scales;

use crate::sampler::{
    At, Control, Guidance, GuidedModel, MethodSampler, Progress, Routing, report,
    require_variance_preserving, with_negative,
};

/// The VidRD settings.
#[derive(Debug, Clone, PartialEq)]
pub struct ReuseDiffuse {
    /// Frames per clip (the model's clip length).
    pub clip: usize,
    /// Frames each clip shares with the video so far (`1 ≤ overlap < clip`).
    pub overlap: usize,
    /// Past-dependent noise mixing `α` (0: independent fresh noise).
    pub alpha: f64,
    /// Staged guidance: `(fraction of the steps, overlap frames replaced until then)`, in
    /// increasing fractions; after the last stage nothing is replaced.
    pub stages: Vec<(f64, usize)>,
}

impl ReuseDiffuse {
    /// Clips of `clip` frames sharing `overlap`, `α = 0.5`, all overlap frames guided for the
    /// first 30 % of the steps and half of them until 60 %.
    pub fn new(clip: usize, overlap: usize) -> Self {
        Self {
            clip,
            overlap,
            alpha: 0.5,
            stages: vec![(0.3, overlap), (0.6, overlap / 2)],
        }
    }

    /// # Errors
    /// [`Error::InvalidConfig`] naming `overlap`, `alpha` or `stages`.
    pub fn validate(&self) -> Result<()> {
        if self.overlap == 0 || self.overlap >= self.clip {
            return Err(Error::invalid(
                "overlap",
                format!(
                    "must be ≥ 1 and below the clip ({}), got {}",
                    self.clip, self.overlap
                ),
            ));
        }
        ensure_non_negative("alpha", self.alpha)?;
        let mut last = 0.0;
        for &(fraction, frames) in &self.stages {
            if !(fraction.is_finite() && fraction > last && fraction <= 1.0)
                || frames > self.overlap
            {
                return Err(Error::invalid(
                    "stages",
                    format!(
                        "need increasing fractions in (0, 1] and at most {} frames, got {:?}",
                        self.overlap, self.stages
                    ),
                ));
            }
            last = fraction;
        }
        Ok(())
    }

    /// Overlap frames replaced at step `step` of `steps`.
    pub fn guided_frames(&self, step: usize, steps: usize) -> usize {
        let progress = step as f64 / steps as f64;
        self.stages
            .iter()
            .find(|(fraction, _)| progress < *fraction)
            .map_or(0, |&(_, frames)| frames)
    }
}

/// The VidRD sampler.
pub type ReuseDiffuseSampler<'a> = MethodSampler<'a, ReuseDiffuse>;

impl ReuseDiffuseSampler<'_> {
    /// Samples a video of `shape` clip by clip; `conditioning` is shared or per frame of the
    /// video (each clip gets its frames); progress counts the clips as passes.
    ///
    /// # Errors
    /// Before any model work: a bad plan, a sigma-space scheduler, the checks of every
    /// sampler; then the model's and the scheduler's errors; [`Error::Cancelled`].
    pub fn sample(
        &mut self,
        shape: VideoShape,
        conditioning: Conditioning,
        num_inference_steps: usize,
        noise: &mut dyn NoiseSource,
        device: &Device,
        progress: &mut dyn FnMut(Progress<'_>) -> Control,
    ) -> Result<Tensor<5>> {
        self.plan.validate()?;
        let guided = self.check(num_inference_steps)?;
        require_variance_preserving(self.scheduler.as_ref(), "Reuse and Diffuse")?;
        if let Conditioning::PerFrame(ctx) = &conditioning
            && ctx.dims()[1] != shape.frames
        {
            return Err(Error::shape(
                "conditioning",
                format!("[B, F, S, D] with F = {}", shape.frames),
                &ctx.dims(),
            ));
        }
        let (clip, overlap) = (self.plan.clip.min(shape.frames), self.plan.overlap);
        let step = clip.max(overlap + 1) - overlap;
        let passes = 1 + shape.frames.saturating_sub(clip).div_ceil(step);
        let mut clip_noise = draw(noise, shape.with_frames(clip).dims(), device)?;
        let mut video: Option<Tensor<5>> = None;
        for pass in 0..passes {
            let have = video.as_ref().map_or(0, |v| v.dims()[2]);
            let (start, known) = if pass == 0 {
                (0, 0)
            } else {
                (have - overlap, overlap)
            };
            let frames = (shape.frames - start).min(clip);
            if pass > 0 {
                clip_noise = self.next_noise(&clip_noise, frames, noise)?;
            }
            let cond = conditioning.frames(start, start + frames);
            let cond = with_negative(guided.as_ref(), cond)?;
            let previous = video.as_ref().map(|v| v.clone().narrow(2, start, known));
            let result = self.sample_clip(
                clip_noise.clone().narrow(2, 0, frames),
                previous,
                &cond,
                guided.as_ref(),
                num_inference_steps,
                noise,
                &mut |p| {
                    progress(Progress {
                        iteration: pass,
                        iterations: passes,
                        ..p
                    })
                },
            )?;
            video = Some(match video {
                None => result,
                Some(v) => Tensor::cat(vec![v, result.narrow(2, known, frames - known)], 2),
            });
        }
        Ok(video.expect("at least one clip"))
    }

    /// The next clip's initial noise (`frames` frames) from the previous clip's `previous`:
    /// the overlap frames keep theirs; new frame `j` takes the noise of the previous clip's
    /// frame `n − overlap − 1 − j` (backwards from the overlap: the overlap's own noise would
    /// repeat the frame before), averaged with fresh noise, then mixed with the frame before
    /// (past-dependent).
    fn next_noise(
        &self,
        previous: &Tensor<5>,
        frames: usize,
        noise: &mut dyn NoiseSource,
    ) -> Result<Tensor<5>> {
        let n = previous.dims()[2];
        let overlap = self.plan.overlap;
        let alpha = self.plan.alpha as f32;
        let norm = (1.0 + alpha * alpha).sqrt();
        let fresh: Tensor<5> = draw(
            noise,
            {
                let mut d = previous.dims();
                d[2] = frames - overlap;
                d
            },
            &previous.device(),
        )?;
        let mut parts = vec![previous.clone().narrow(2, n - overlap, overlap)];
        let mut before = parts[0].clone().narrow(2, overlap - 1, 1);
        for j in 0..frames - overlap {
            // Reversed reuse (mixed half and half with fresh noise, unit variance), then the
            // past-dependent mix with the frame before.
            // The previous clip's frames before the overlap, backwards from the overlap.
            let reused = previous
                .clone()
                .narrow(2, n - overlap - 1 - j % (n - overlap), 1);
            let base = (reused + fresh.clone().narrow(2, j, 1)).div_scalar(2f32.sqrt());
            let mixed = (before.mul_scalar(alpha) + base).div_scalar(norm);
            parts.push(mixed.clone());
            before = mixed;
        }
        Ok(Tensor::cat(parts, 2))
    }

    /// One clip from its initial noise; with `previous` (`[B, C, K, H, W]`, clean), its first
    /// frames replaced by those noised to the level during the guided stages and returned as
    /// given.
    #[allow(clippy::too_many_arguments)]
    fn sample_clip(
        &mut self,
        initial: Tensor<5>,
        previous: Option<Tensor<5>>,
        conditioning: &Conditioning,
        guidance: Option<&Guidance>,
        num_inference_steps: usize,
        noise: &mut dyn NoiseSource,
        progress: &mut dyn FnMut(Progress<'_>) -> Control,
    ) -> Result<Tensor<5>> {
        self.scheduler.set_timesteps(num_inference_steps)?;
        let timesteps = self.scheduler.timesteps().to_vec();
        let mut z = initial
            .clone()
            .mul_scalar(self.scheduler.init_noise_sigma() as f32);
        let frames = z.dims()[2];
        for (step, &t) in timesteps.iter().enumerate() {
            if let Some(previous) = &previous {
                let guided_frames = self.plan.guided_frames(step, timesteps.len());
                if guided_frames > 0 {
                    let s = Scales::from_alpha_cumprod(
                        self.scheduler.noise_schedule().alpha_cumprod_at(t)?,
                    );
                    // The earliest overlap frames (farthest from the new ones), noised with
                    // the initial noise they were generated from.
                    let part = previous.clone().narrow(2, 0, guided_frames);
                    let eps = initial.clone().narrow(2, 0, guided_frames);
                    let noised = part.mul_scalar(s.alpha as f32) + eps.mul_scalar(s.sigma as f32);
                    let rest = z.narrow(2, guided_frames, frames - guided_frames);
                    z = Tensor::cat(vec![noised, rest], 2);
                }
            }
            let model = GuidedModel {
                denoiser: self.denoiser,
                guidance,
                finite_checks: self.finite_checks,
            };
            let out = model.step(
                self.scheduler.as_mut(),
                z,
                At::new(step, timesteps.len(), t),
                conditioning,
                Routing::default(),
                noise,
            )?;
            z = out.prev_sample;
            report(
                progress,
                Progress::single_pass(
                    step,
                    timesteps.len(),
                    t,
                    &z,
                    out.pred_original_sample.as_ref(),
                ),
                self.finite_checks,
            )?;
        }
        Ok(z)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vdm_core::{DenoiserInput, PredictionType, SeededNoise};
    use vdm_schedulers::from_config_json;

    use crate::sampler::LongVideoSampler;
    use vdm_core::Denoiser;

    const DDIM: &str = r#"{"_class_name": "DDIMScheduler", "clip_sample": false}"#;

    /// `ε = 0.1·x + 0.2·mean over frames`: frames interact.
    struct Mixing;

    impl Denoiser for Mixing {
        fn prediction_type(&self) -> PredictionType {
            PredictionType::Epsilon
        }
        fn predict(&self, input: DenoiserInput<'_>) -> Result<Tensor<5>> {
            let z = input.latents;
            Ok(z.clone().mul_scalar(0.1) + z.mean_dim(2).mul_scalar(0.2))
        }
    }

    fn host(t: Tensor<5>) -> Vec<f32> {
        t.into_data().convert::<f32>().try_to_vec::<f32>().unwrap()
    }

    fn run(plan: ReuseDiffuse, frames: usize) -> Result<(Tensor<5>, Vec<(usize, usize)>)> {
        let mut passes = Vec::new();
        let video = ReuseDiffuseSampler::new(&Mixing, from_config_json(DDIM).unwrap(), plan)
            .sample(
                VideoShape::new([1, 2, frames, 2, 3]),
                Conditioning::None,
                5,
                &mut SeededNoise::new(6),
                &Device::flex(),
                &mut |p| {
                    passes.push((p.iteration, p.iterations));
                    Control::Continue
                },
            )?;
        Ok((video, passes))
    }

    #[test]
    fn one_clip_is_plain_sampling() {
        let (video, _) = run(ReuseDiffuse::new(8, 3), 6).unwrap();
        let plain = LongVideoSampler::new(&Mixing, from_config_json(DDIM).unwrap())
            .sample(
                VideoShape::new([1, 2, 6, 2, 3]),
                Conditioning::None,
                5,
                &mut SeededNoise::new(6),
                &Device::flex(),
                &mut |_| Control::Continue,
            )
            .unwrap();
        assert_eq!(host(video), host(plain));
    }

    #[test]
    fn clips_extend_the_video_and_keep_what_was_made() {
        let (first, _) = run(ReuseDiffuse::new(8, 3), 8).unwrap();
        let (video, passes) = run(ReuseDiffuse::new(8, 3), 19).unwrap();
        assert_eq!(video.dims(), [1, 2, 19, 2, 3]);
        // The first clip is the 8-frame video; then 5 new frames per clip: 8 + 5 + 5 + 1.
        assert_eq!(host(video.clone().narrow(2, 0, 8)), host(first));
        let clips: Vec<usize> = passes.iter().map(|p| p.0).collect();
        assert_eq!(passes[0].1, 4);
        assert_eq!(clips, (0..4).flat_map(|c| [c; 5]).collect::<Vec<_>>());
        assert!(host(video).iter().all(|v| v.is_finite()));
    }

    #[test]
    fn stages_guide_fewer_frames_then_none() {
        let plan = ReuseDiffuse::new(16, 8);
        let guided: Vec<usize> = (0..10).map(|s| plan.guided_frames(s, 10)).collect();
        assert_eq!(guided, [8, 8, 8, 4, 4, 4, 0, 0, 0, 0]);
        for (bad, field) in [
            (ReuseDiffuse::new(8, 8), "overlap"),
            (
                ReuseDiffuse {
                    alpha: f64::NAN,
                    ..ReuseDiffuse::new(8, 3)
                },
                "alpha",
            ),
            (
                ReuseDiffuse {
                    stages: vec![(0.5, 3), (0.4, 1)],
                    ..ReuseDiffuse::new(8, 3)
                },
                "stages",
            ),
            (
                ReuseDiffuse {
                    stages: vec![(0.5, 4)],
                    ..ReuseDiffuse::new(8, 3)
                },
                "stages",
            ),
        ] {
            assert!(bad.validate().unwrap_err().to_string().contains(field));
        }
    }

    #[test]
    fn the_reused_noise_has_unit_variance_and_the_stated_correlation() {
        let device = Device::flex();
        let plan = ReuseDiffuse::new(16, 4);
        let sampler = ReuseDiffuseSampler::new(&Mixing, from_config_json(DDIM).unwrap(), plan);
        let mut noise = SeededNoise::new(8);
        let previous: Tensor<5> = draw(&mut noise, [1, 1, 16, 64, 64], &device).unwrap();
        let next = sampler.next_noise(&previous, 16, &mut noise).unwrap();
        assert_eq!(
            host(next.clone().narrow(2, 0, 4)),
            host(previous.narrow(2, 12, 4))
        );
        let frame = |f: usize| host(next.clone().narrow(2, f, 1));
        let expected = 0.5 / (1.0f64 + 0.25).sqrt();
        for f in 4..16 {
            let (a, b) = (frame(f), frame(f - 1));
            let n = a.len() as f64;
            let var = a.iter().map(|&v| f64::from(v).powi(2)).sum::<f64>() / n;
            let cov = a
                .iter()
                .zip(&b)
                .map(|(&x, &y)| f64::from(x) * f64::from(y))
                .sum::<f64>()
                / n;
            assert!((var - 1.0).abs() < 0.06, "frame {f}: variance {var}");
            assert!(
                (cov - expected).abs() < 0.06,
                "frame {f}: correlation {cov} vs {expected}"
            );
        }
    }
}
