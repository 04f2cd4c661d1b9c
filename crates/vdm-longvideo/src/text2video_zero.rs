//! Text2Video-Zero (Khachatryan et al. 2023, "Text2Video-Zero: Text-to-Image Diffusion Models
//! are Zero-Shot Video Generators", ICCV; diffusers
//! `pipelines/deprecated/text_to_video_synthesis/pipeline_text_to_video_zero.py`, see
//! `shared/reference/algorithms.md` §6).
//!
//! Videos from a model that knows single frames: the first frame is denoised alone to a middle
//! noise level, copied to every frame and moved by a global translation (**motion dynamics**),
//! re-noised a little, and then all frames are denoised together with **cross-frame
//! attention** to the first frame ([`CrossFrame::First`]), which keeps the object's appearance.
//!
//! With the scheduler's `N` timesteps `τ_0 > τ_1 > …` and diffusers' `t0 < t1` counted from the
//! end (44 and 47 of 50):
//! 1. frame 0 from noise down to level `τ_{N−t1−1}` (`x¹_{T1}`), then on to `τ_{N−t0−1}`
//!    (`x¹_{T0}`);
//! 2. frame `k` = `x¹_{T0}` moved by `k · motion` latent pixels (nearest neighbour, reflected at
//!    the borders: diffusers' `grid_sample(mode="nearest", padding_mode="reflection")`);
//! 3. frames `1..F` forward to `τ_{N−t1−1}` by DDPM: `x ← √(ᾱ_{T1}/ᾱ_{T0})·x + √(1 − ᾱ_{T1}/ᾱ_{T0})·ε`
//!    (diffusers' `forward_loop`, the product of the `α` between the two timesteps);
//! 4. `[x¹_{T1}, x^{2..F}_{T1}]` denoised from `τ_{N−t1−1}` with the scheduler state of step 1
//!    and cross-frame attention.
//!
//! Unlike diffusers: `motion` is the content's displacement per frame in latent pixels
//! (diffusers' `motion_field_strength_x = 12` at 512 px moves the content by −1.5 latent pixels
//! per frame: `motion = (−1.5, −1.5)` reproduces its direction), the warp moves by whole latent
//! pixels (diffusers' bilinearly resized sampling grid rounds alike up to its half-pixel
//! convention), and the optional background smoothing (which needs a salient-object detector)
//! is not done. Any model implementing [`Denoiser`] and routing [`DenoiserInput::cross_frame`]
//! to its spatial self-attention runs it (both UNets of `vdm-models` do).
//!
//! Invariant (tested): frame 0 is exactly ordinary sampling of frame 0 alone with the same
//! noise, for a model whose frames do not interact but through cross-frame attention.
//!
//! [`DenoiserInput::cross_frame`]: vdm_core::DenoiserInput::cross_frame

use std::ops::Range;

use burn::tensor::{Device, Int, Tensor, TensorData};
use vdm_core::noise::draw;
use vdm_core::{Conditioning, CrossFrame, Denoiser, Error, NoiseSource, Result, VideoShape};
use vdm_schedulers::Scheduler;

use crate::sampler::{
    At, Control, Guidance, GuidedModel, MethodSampler, Progress, Routing, report,
    require_variance_preserving, with_negative,
};

/// The Text2Video-Zero settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Text2VideoZero {
    /// Content displacement per frame `(x, y)` in latent pixels (`x` to the right, `y` down).
    pub motion: (f64, f64),
    /// Steps from the end at which the warped frames are made (diffusers' `t0`, 44 of 50).
    pub t0: usize,
    /// Steps from the end down to which frame 0 is denoised alone (diffusers' `t1`, 47 of 50;
    /// `t0 < t1 < N`).
    pub t1: usize,
}

impl Text2VideoZero {
    /// diffusers' defaults for 50 steps: `t0 = 44`, `t1 = 47`, and `motion`.
    pub fn new(motion: (f64, f64)) -> Self {
        Self {
            motion,
            t0: 44,
            t1: 47,
        }
    }

    /// `t0` and `t1` scaled from diffusers' 44 / 47 of 50 to `steps` steps (at least 1 apart,
    /// `t1 ≤ steps − 1`).
    pub fn for_steps(motion: (f64, f64), steps: usize) -> Self {
        let scale = |t: f64| (t * steps as f64 / 50.0).round() as usize;
        let t1 = scale(47.0).min(steps.saturating_sub(1));
        let t0 = scale(44.0).min(t1.saturating_sub(1));
        Self { motion, t0, t1 }
    }

    /// # Errors
    /// [`Error::InvalidConfig`] naming `motion`, `t0` or `t1`.
    pub fn validate(&self, num_inference_steps: usize) -> Result<()> {
        if !(self.motion.0.is_finite() && self.motion.1.is_finite()) {
            return Err(Error::invalid(
                "motion",
                format!("must be finite, got {:?}", self.motion),
            ));
        }
        if self.t0 >= self.t1 {
            return Err(Error::invalid(
                "t0",
                format!("must be below t1 = {}, got {}", self.t1, self.t0),
            ));
        }
        if self.t1 >= num_inference_steps {
            return Err(Error::invalid(
                "t1",
                format!(
                    "must be below the {num_inference_steps} inference steps, got {} (see \
                     Text2VideoZero::for_steps)",
                    self.t1
                ),
            ));
        }
        Ok(())
    }
}

/// Moves `frame` (`[B, C, 1, H, W]`) by `(dx, dy)` latent pixels: output `(x, y)` = input
/// `(x − dx, y − dy)` rounded to the nearest pixel, reflected at the borders.
pub fn translate(frame: Tensor<5>, (dx, dy): (f64, f64)) -> Tensor<5> {
    let [_, _, _, h, w] = frame.dims();
    let device = frame.device();
    let index = |n: usize, shift: f64| {
        let shift = shift.round() as i64;
        let period = 2 * n as i64;
        let values: Vec<i64> = (0..n as i64)
            .map(|i| {
                let m = (i - shift).rem_euclid(period);
                if m < n as i64 { m } else { period - 1 - m }
            })
            .collect();
        Tensor::<1, Int>::from_data(TensorData::new(values, [n]), &device)
    };
    frame.select(3, index(h, dy)).select(4, index(w, dx))
}

/// The Text2Video-Zero sampler.
pub type Text2VideoZeroSampler<'a> = MethodSampler<'a, Text2VideoZero>;

impl Text2VideoZeroSampler<'_> {
    /// Samples a video of `shape`; `conditioning` is shared or per frame; `noise` provides every
    /// random number; `progress` sees every step (pass 0: frame 0 alone down to `T0`; pass 1:
    /// the video from `T1`) and may cancel.
    ///
    /// # Errors
    /// Before any model work: a bad plan for `num_inference_steps`, a sigma-space scheduler,
    /// the checks of every sampler; then the model's and scheduler's errors,
    /// [`Error::Cancelled`].
    pub fn sample(
        &mut self,
        shape: VideoShape,
        conditioning: Conditioning,
        num_inference_steps: usize,
        noise: &mut dyn NoiseSource,
        device: &Device,
        progress: &mut dyn FnMut(Progress<'_>) -> Control,
    ) -> Result<Tensor<5>> {
        let guided = self.check(num_inference_steps)?;
        self.plan.validate(num_inference_steps)?;
        require_variance_preserving(
            self.scheduler.as_ref(),
            "Text2Video-Zero (DDPM's forward step)",
        )?;
        let batch = |c: Conditioning| with_negative(guided.as_ref(), c);
        let first_conditioning = batch(conditioning.frames(0, 1))?;
        let conditioning = batch(conditioning)?;
        self.scheduler.set_timesteps(num_inference_steps)?;
        let timesteps = self.scheduler.timesteps().to_vec();
        let n = timesteps.len();
        let (split1, split0) = (n - self.plan.t1 - 1, n - self.plan.t0 - 1);
        let denoise = Loop {
            denoiser: self.denoiser,
            guidance: guided.as_ref(),
            timesteps: &timesteps,
            pass: 0,
            finite_checks: self.finite_checks,
        };
        let video_loop = Loop { pass: 1, ..denoise };
        // 1. Frame 0 alone down to T1.
        let first: Tensor<5> = draw(noise, shape.with_frames(1).dims(), device)?;
        let first = first.mul_scalar(self.scheduler.init_noise_sigma() as f32);
        let scheduler = &mut self.scheduler;
        let x1_t1 = denoise.run(
            scheduler,
            first,
            0..split1,
            &first_conditioning,
            noise,
            progress,
        )?;
        let mut resumed = scheduler.box_clone();
        if shape.frames == 1 {
            return video_loop.run(
                &mut resumed,
                x1_t1,
                split1..n,
                &first_conditioning,
                noise,
                progress,
            );
        }
        // ... and on to T0 (on the scheduler; `resumed` keeps the state at T1).
        let x1_t0 = denoise.run(
            scheduler,
            x1_t1.clone(),
            split1..split0,
            &first_conditioning,
            noise,
            progress,
        )?;
        // 2. Motion dynamics: frame k moved by k·motion; 3. re-noised from T0 to T1.
        let moved: Vec<Tensor<5>> = (1..shape.frames)
            .map(|k| {
                let k = k as f64;
                translate(
                    x1_t0.clone(),
                    (k * self.plan.motion.0, k * self.plan.motion.1),
                )
            })
            .collect();
        let moved = Tensor::cat(moved, 2);
        let schedule = scheduler.noise_schedule();
        let alpha_at = |t: f64| -> Result<f64> {
            Ok(if t < 0.0 {
                1.0
            } else {
                f64::from(schedule.alpha_cumprod_at(t)?)
            })
        };
        // ∏ α over the timesteps t0_val..t1_val (diffusers' forward_loop).
        let (t0_val, t1_val) = (timesteps[split0], timesteps[split1]);
        let ratio = alpha_at(t1_val - 1.0)? / alpha_at(t0_val - 1.0)?;
        let eps: Tensor<5> = draw(noise, moved.dims(), device)?;
        let moved =
            moved.mul_scalar(ratio.sqrt() as f32) + eps.mul_scalar((1.0 - ratio).sqrt() as f32);
        // 4. Every frame from T1 with cross-frame attention to frame 0.
        let video = Tensor::cat(vec![x1_t1, moved], 2);
        video_loop.run(
            &mut resumed,
            video,
            split1..n,
            &conditioning,
            noise,
            progress,
        )
    }
}

/// The denoising loop of one phase (pass 0: frame 0 alone, pass 1: the video): guided model
/// calls with first-frame cross-frame attention.
struct Loop<'a> {
    denoiser: &'a dyn Denoiser,
    guidance: Option<&'a Guidance>,
    timesteps: &'a [f64],
    pass: usize,
    finite_checks: bool,
}

impl Loop<'_> {
    /// Steps `x` through the timesteps `steps` (indices) with `scheduler`.
    fn run(
        &self,
        scheduler: &mut Box<dyn Scheduler>,
        mut x: Tensor<5>,
        steps: Range<usize>,
        conditioning: &Conditioning,
        noise: &mut dyn NoiseSource,
        progress: &mut dyn FnMut(Progress<'_>) -> Control,
    ) -> Result<Tensor<5>> {
        for step in steps {
            let t = self.timesteps[step];
            let routing = Routing {
                cross_frame: Some(&CrossFrame::First),
                ..Routing::default()
            };
            let model = GuidedModel {
                denoiser: self.denoiser,
                guidance: self.guidance,
                finite_checks: self.finite_checks,
            };
            let at = At::new(step, self.timesteps.len(), t);
            let out = model.step(scheduler.as_mut(), x, at, conditioning, routing, noise)?;
            x = out.prev_sample;
            report(
                progress,
                Progress {
                    iteration: self.pass,
                    iterations: 2,
                    step,
                    num_steps: self.timesteps.len(),
                    timestep: t,
                    latents: &x,
                    pred_original: out.pred_original_sample.as_ref(),
                },
                self.finite_checks,
            )?;
        }
        Ok(x)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use vdm_core::{DenoiserInput, PredictionType, SeededNoise};
    use vdm_schedulers::from_config_json;

    use crate::sampler::LongVideoSampler;

    const DDIM: &str = r#"{"_class_name": "DDIMScheduler", "clip_sample": false}"#;

    /// `ε = s·x + c_f` per frame (`c_f` the mean of frame f's context): frames never interact.
    struct FrameLocal(f32);

    impl Denoiser for FrameLocal {
        fn prediction_type(&self) -> PredictionType {
            PredictionType::Epsilon
        }
        fn predict(&self, input: DenoiserInput<'_>) -> Result<Tensor<5>> {
            let shape = input.shape()?;
            let out = input.latents.clone().mul_scalar(self.0);
            Ok(
                match input.conditioning.per_frame(shape.batch, shape.frames)? {
                    Some(ctx) => {
                        let c = ctx.mean_dim(2).mean_dim(1);
                        out + c.reshape([shape.batch, 1, shape.frames, 1, 1])
                    }
                    None => out,
                },
            )
        }
    }

    /// The seeded normal draws first, zeros afterwards.
    struct FirstDrawOnly(SeededNoise, bool);

    impl NoiseSource for FirstDrawOnly {
        fn normal(&mut self, shape: &[usize]) -> Result<TensorData> {
            if std::mem::replace(&mut self.1, true) {
                return Ok(TensorData::new(
                    vec![0.0f32; shape.iter().product()],
                    shape.to_vec(),
                ));
            }
            self.0.normal(shape)
        }
        fn permutation(&mut self, n: usize) -> Result<Vec<usize>> {
            self.0.permutation(n)
        }
    }

    fn host(t: Tensor<5>) -> Vec<f32> {
        t.into_data().convert::<f32>().try_to_vec::<f32>().unwrap()
    }

    fn guidance(device: &Device) -> Guidance {
        Guidance {
            scale: 2.5,
            negative: Conditioning::Shared(Tensor::zeros([1, 1, 2], device)),
        }
    }

    #[test]
    fn frame_zero_is_plain_sampling_of_frame_zero() {
        let device = Device::flex();
        let shape = VideoShape::new([1, 3, 5, 4, 6]);
        let cond = Conditioning::Shared(Tensor::ones([1, 1, 2], &device).mul_scalar(0.2));
        for guided in [false, true] {
            let model = FrameLocal(0.1);
            let mut zero = Text2VideoZeroSampler::new(
                &model,
                from_config_json(DDIM).unwrap(),
                Text2VideoZero::for_steps((1.0, 0.0), 10),
            );
            let mut plain = LongVideoSampler::new(&model, from_config_json(DDIM).unwrap());
            if guided {
                zero = zero.with_guidance(guidance(&device));
                plain = plain.with_guidance(guidance(&device));
            }
            let video = zero
                .sample(
                    shape,
                    cond.clone(),
                    10,
                    &mut SeededNoise::new(4),
                    &device,
                    &mut |_| Control::Continue,
                )
                .unwrap();
            let alone = plain
                .sample(
                    shape.with_frames(1),
                    cond.clone(),
                    10,
                    &mut SeededNoise::new(4),
                    &device,
                    &mut |_| Control::Continue,
                )
                .unwrap();
            let first = host(video.narrow(2, 0, 1));
            for (a, b) in first.iter().zip(host(alone)) {
                assert!((a - b).abs() < 1e-5, "guided {guided}: {a} vs {b}");
            }
        }
    }

    #[test]
    fn frame_k_is_the_first_frame_moved_by_k_steps() {
        // With no noise after the first draw and ε = 0, every later frame is the same multiple
        // of the first draw moved by k·motion: f_k · move(P, 1) = f_1 · move(P, k).
        let device = Device::flex();
        let shape = VideoShape::new([1, 2, 4, 5, 7]);
        let motion = (2.0, -1.0);
        let pattern: Tensor<5> = draw(
            &mut SeededNoise::new(9),
            shape.with_frames(1).dims(),
            &device,
        )
        .unwrap();
        let mut sampler = Text2VideoZeroSampler::new(
            &FrameLocal(0.0),
            from_config_json(DDIM).unwrap(),
            Text2VideoZero::for_steps(motion, 8),
        );
        let mut noise = FirstDrawOnly(SeededNoise::new(9), false);
        let video = sampler
            .sample(
                shape,
                Conditioning::None,
                8,
                &mut noise,
                &device,
                &mut |_| Control::Continue,
            )
            .unwrap();
        let moved = |k: f64| host(translate(pattern.clone(), (k * motion.0, k * motion.1)));
        let f1 = host(video.clone().narrow(2, 1, 1));
        for k in 2..4 {
            let fk = host(video.clone().narrow(2, k, 1));
            let (p1, pk) = (moved(1.0), moved(k as f64));
            for i in 0..fk.len() {
                let (a, b) = (fk[i] * p1[i], f1[i] * pk[i]);
                assert!(
                    (a - b).abs() < 1e-5 * (1.0 + a.abs()),
                    "frame {k}, {i}: {a} vs {b}"
                );
            }
        }
    }

    #[test]
    fn translate_moves_content_and_reflects_at_the_borders() {
        let device = Device::flex();
        let row: Vec<f32> = (0..5).map(|v| v as f32).collect();
        let x = Tensor::<5>::from_data(TensorData::new(row, [1, 1, 1, 1, 5]), &device);
        assert_eq!(
            host(translate(x.clone(), (1.0, 0.0))),
            [0.0, 0.0, 1.0, 2.0, 3.0]
        );
        assert_eq!(
            host(translate(x.clone(), (-2.0, 0.0))),
            [2.0, 3.0, 4.0, 4.0, 3.0]
        );
        assert_eq!(
            host(translate(x.clone(), (0.4, 7.0))),
            [0.0, 1.0, 2.0, 3.0, 4.0]
        );
        assert_eq!(host(translate(x, (5.0, 0.0))), [4.0, 3.0, 2.0, 1.0, 0.0]);
    }

    #[test]
    fn bad_plans_are_named_before_any_model_call() {
        let device = Device::flex();
        let shape = VideoShape::new([1, 1, 3, 2, 2]);
        let err = |plan: Text2VideoZero, config: &str| {
            Text2VideoZeroSampler::new(&FrameLocal(0.1), from_config_json(config).unwrap(), plan)
                .sample(
                    shape,
                    Conditioning::None,
                    10,
                    &mut SeededNoise::new(0),
                    &device,
                    &mut |_| Control::Continue,
                )
                .unwrap_err()
                .to_string()
        };
        assert!(err(Text2VideoZero::new((1.0, 1.0)), DDIM).contains("t1"));
        let swapped = Text2VideoZero {
            t0: 8,
            t1: 8,
            motion: (0.0, 0.0),
        };
        assert!(err(swapped, DDIM).contains("t0"));
        let nan = Text2VideoZero::for_steps((f64::NAN, 0.0), 10);
        assert!(err(nan, DDIM).contains("motion"));
        let euler = r#"{"_class_name": "EulerDiscreteScheduler"}"#;
        assert!(err(Text2VideoZero::for_steps((1.0, 0.0), 10), euler).contains("scheduler"));
    }

    proptest! {
        #[test]
        fn scaled_defaults_fit_the_steps(steps in 2usize..200) {
            let plan = Text2VideoZero::for_steps((0.0, 0.0), steps);
            prop_assert!(plan.validate(steps).is_ok(), "{:?} for {} steps", plan, steps);
        }
    }
}
