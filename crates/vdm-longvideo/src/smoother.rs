//! ControlVideo's interleaved-frame smoother, in latent space (Zhang et al. 2023,
//! "ControlVideo: Training-free Controllable Text-to-Video Generation", reference code
//! `models/pipeline_controlvideo.py` L931–965; see `shared/reference/algorithms.md` §10).
//!
//! At a few chosen steps the clean estimate `x̂₀` is smoothed over time by interpolating every
//! other frame from its two neighbours — the odd frames at even steps, the even frames (but the
//! first and last) at odd steps, so two consecutive smoothing steps touch every frame — and the
//! step's result is recomposed the DDIM way from the smoothed `x̂₀` and the step's noise
//! estimate: `x_{t−1} = √ᾱ_{t−1}·x̂₀ + √(1 − ᾱ_{t−1})·ε̂` with `ε̂ = (x_t − √ᾱ_t·x̂₀)/√(1 − ᾱ_t)`.
//!
//! Unlike the reference, which decodes `x̂₀`, interpolates RGB frames with a video
//! frame-interpolation network (RIFE) and encodes them again, the interpolation here is the
//! mean of the two neighbouring latents: no extra networks and no VAE round trip, at the cost of
//! a blur where the reference would interpolate motion. ControlVideo smooths at steps 19 and 20
//! of 50 (`smoother_steps = [19, 20]`, i.e. step indices 30 and 31 counted from the start).
//!
//! Invariant (tested): a video whose frames change linearly in time is a fixed point.

use burn::tensor::Tensor;
use vdm_core::{Error, Result};

/// Which steps the smoother runs at (indices into the sampling steps, from 0).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InterleavedSmoother {
    /// Step indices; at an even index the odd frames are interpolated, at an odd index the even
    /// ones.
    pub steps: Vec<usize>,
}

impl InterleavedSmoother {
    /// ControlVideo's two smoothing steps `[19, 20]` of 50 scaled to `num_steps` (the indices
    /// `num_steps − 20` and `num_steps − 19` when at least 20 steps, else the last two).
    pub fn controlvideo(num_steps: usize) -> Self {
        let first = if num_steps >= 20 {
            num_steps - 20
        } else {
            num_steps.saturating_sub(2)
        };
        Self {
            steps: vec![first, first + 1],
        }
    }

    /// Whether step `step` is smoothed.
    pub fn applies(&self, step: usize) -> bool {
        self.steps.contains(&step)
    }

    /// `x̂₀` (`[B, C, F, H, W]`) with the frames of the parity of `step` interpolated from
    /// their neighbours: odd frames at even steps, even frames other than the first and the
    /// last at odd steps.
    pub fn smooth(&self, step: usize, x0: Tensor<5>) -> Tensor<5> {
        let [b, c, f, h, w] = x0.dims();
        let first = if step.is_multiple_of(2) { 1 } else { 2 };
        let mut out = x0.clone();
        let mut frame = first;
        while frame + 1 < f {
            let mean = (x0.clone().narrow(2, frame - 1, 1) + x0.clone().narrow(2, frame + 1, 1))
                .mul_scalar(0.5);
            out = out.slice_assign([0..b, 0..c, frame..frame + 1, 0..h, 0..w], mean);
            frame += 2;
        }
        out
    }

    /// The DDIM recomposition of a smoothed step: `x_t` at `ᾱ_t = alpha_t`, the step's clean
    /// estimate `x0`, the next level `alpha_prev` (1 at the end).
    ///
    /// # Errors
    /// [`Error::NonFinite`] where `ᾱ_t = 1` (no noise to recover).
    pub fn recompose(
        &self,
        step: usize,
        x_t: Tensor<5>,
        x0: Tensor<5>,
        alpha_t: f64,
        alpha_prev: f64,
    ) -> Result<Tensor<5>> {
        if alpha_t >= 1.0 {
            return Err(Error::NonFinite {
                what: "smoothed step".into(),
                reason: "alphas_cumprod = 1 leaves no noise estimate".into(),
            });
        }
        let eps = (x_t - x0.clone().mul_scalar(alpha_t.sqrt() as f32))
            .div_scalar((1.0 - alpha_t).sqrt() as f32);
        let smoothed = self.smooth(step, x0);
        Ok(smoothed.mul_scalar(alpha_prev.sqrt() as f32)
            + eps.mul_scalar((1.0 - alpha_prev).max(0.0).sqrt() as f32))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::{Device, TensorData};

    fn video(values: Vec<f32>) -> Tensor<5> {
        let f = values.len();
        Tensor::from_data(TensorData::new(values, [1, 1, f, 1, 1]), &Device::flex())
    }

    fn host(t: Tensor<5>) -> Vec<f32> {
        t.into_data().convert::<f32>().try_to_vec::<f32>().unwrap()
    }

    #[test]
    fn interleaved_frames_are_interpolated() {
        let s = InterleavedSmoother::controlvideo(50);
        assert_eq!(s.steps, [30, 31]);
        assert_eq!(InterleavedSmoother::controlvideo(10).steps, [8, 9]);
        let x = video(vec![0.0, 5.0, 2.0, 9.0, 4.0, 1.0]);
        assert_eq!(
            host(s.smooth(30, x.clone())),
            [0.0, 1.0, 2.0, 3.0, 4.0, 1.0]
        );
        assert_eq!(host(s.smooth(31, x)), [0.0, 5.0, 7.0, 9.0, 5.0, 1.0]);
        // Linear in time: unchanged.
        let line = video((0..7).map(|f| 0.5 * f as f32).collect());
        assert_eq!(host(s.smooth(30, line.clone())), host(line.clone()));
        assert_eq!(host(s.smooth(31, line.clone())), host(line));
    }

    #[test]
    fn the_sampler_smooths_at_its_steps_only_and_needs_a_vp_scheduler() {
        use crate::sampler::{Control, LongVideoSampler};
        use vdm_core::{
            Conditioning, Denoiser, DenoiserInput, PredictionType, SeededNoise, VideoShape,
        };
        use vdm_schedulers::from_config_json;

        struct Shrink;
        impl Denoiser for Shrink {
            fn prediction_type(&self) -> PredictionType {
                PredictionType::Epsilon
            }
            fn predict(&self, input: DenoiserInput<'_>) -> Result<Tensor<5>> {
                Ok(input.latents.mul_scalar(0.1))
            }
        }
        let ddim = r#"{"_class_name": "DDIMScheduler", "clip_sample": false}"#;
        let run = |config: &str, smoother: Option<InterleavedSmoother>| {
            let mut s = LongVideoSampler::new(&Shrink, from_config_json(config).unwrap());
            if let Some(sm) = smoother {
                s = s.with_smoother(sm);
            }
            s.sample(
                VideoShape::new([1, 2, 6, 2, 2]),
                Conditioning::None,
                4,
                &mut SeededNoise::new(5),
                &Device::flex(),
                &mut |_| Control::Continue,
            )
        };
        let plain = host(run(ddim, None).unwrap());
        let unused = InterleavedSmoother { steps: vec![99] };
        assert_eq!(host(run(ddim, Some(unused)).unwrap()), plain);
        let smoothed = host(run(ddim, Some(InterleavedSmoother::controlvideo(4))).unwrap());
        assert!(
            smoothed
                .iter()
                .zip(&plain)
                .any(|(a, b)| (a - b).abs() > 1e-4)
        );
        let euler = r#"{"_class_name": "EulerDiscreteScheduler"}"#;
        let e = run(euler, Some(InterleavedSmoother::controlvideo(4))).unwrap_err();
        assert!(e.to_string().contains("smoother"), "{e}");
    }

    #[test]
    fn recomposition_without_smoothing_is_a_ddim_step() {
        let s = InterleavedSmoother { steps: vec![] };
        // A constant video is a fixed point of smoothing: the recomposition is DDIM's.
        let x0 = video(vec![0.3; 4]);
        let eps = video(vec![-1.2; 4]);
        let (a_t, a_prev) = (0.4f64, 0.7f64);
        let x_t = x0.clone().mul_scalar(a_t.sqrt() as f32)
            + eps.clone().mul_scalar((1.0 - a_t).sqrt() as f32);
        let got = host(s.recompose(0, x_t, x0, a_t, a_prev).unwrap());
        let want = 0.3 * a_prev.sqrt() - 1.2 * (1.0 - a_prev).sqrt();
        for g in got {
            assert!((f64::from(g) - want).abs() < 1e-6);
        }
        assert!(
            s.recompose(0, video(vec![0.0]), video(vec![0.0]), 1.0, 1.0)
                .is_err()
        );
    }
}
