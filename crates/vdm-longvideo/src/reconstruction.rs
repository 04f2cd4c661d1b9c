//! Reconstruction guidance for autoregressive extension (Ho et al. 2022, "Video Diffusion
//! Models", §3.1; see `shared/reference/algorithms.md`).
//!
//! To continue a video, a window of the model's length is sampled whose first `K` frames are
//! known (the end of the video so far, `xᵃ`) and whose other frames (`zᵇ`) are new. The
//! *replacement* method sets the known frames' slots to `xᵃ` noised to the current level at
//! every step and samples the rest; the new frames then follow the known ones only as far as
//! the model's attention carries it. Reconstruction guidance adds the gradient of how badly
//! the model reconstructs the known frames:
//!
//! ```text
//! x̃ᵇ = x̂ᵇ(z_t) − (w_r·α_t / 2) · ∇_{zᵇ_t} ‖xᵃ − x̂ᵃ(z_t)‖²
//! ```
//!
//! The gradient is taken through the model on Burn's autodiff (the latents are moved to
//! `device.autodiff()`; the weights stay constants), so any [`Denoiser`] made of Burn tensor
//! operations works. The guided `x̃₀` is turned back into the model's prediction type and
//! handed to the scheduler, so every variance-preserving scheduler works.
//!
//! Invariants (tested): with weight 0 it is the replacement method, which without known frames
//! is plain sampling exactly; the gradient equals finite differences of the reconstruction
//! loss; a model under which the new frames cannot change the known frames' reconstruction is
//! not guided at all.

use burn::tensor::{Device, Tensor};
use vdm_core::error::ensure_non_negative;
use vdm_core::noise::draw;
use vdm_core::{
    Conditioning, Denoiser, Error, NoiseSource, PredictionType, Result, Timesteps, VideoShape,
};
use vdm_schedulers::Scheduler;
use vdm_schedulers::prediction::{Scales, convert, to_x0_and_eps};

use crate::sampler::{
    At, Control, Guidance, Progress, Routing, check_model_output, check_request, guided_prediction,
    report, require_variance_preserving, with_negative,
};

/// The settings of autoregressive extension: windows of the model's length, each with
/// `context` known frames, guided with weight `weight`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Extension {
    /// Frames per window (the model's clip length).
    pub window: usize,
    /// Known frames at the start of every window (`1 ≤ context < window`).
    pub context: usize,
    /// Reconstruction-guidance weight `w_r` (0: the replacement method).
    pub weight: f64,
}

impl Extension {
    /// Windows of `window` frames keeping `context`, weight `weight`.
    pub fn new(window: usize, context: usize, weight: f64) -> Self {
        Self {
            window,
            context,
            weight,
        }
    }

    /// # Errors
    /// [`Error::InvalidConfig`] naming `context` or `weight`.
    pub fn validate(&self) -> Result<()> {
        if self.context == 0 || self.context >= self.window {
            return Err(Error::invalid(
                "context",
                format!(
                    "must be ≥ 1 and below the window ({}), got {}",
                    self.window, self.context
                ),
            ));
        }
        ensure_non_negative("weight", self.weight)?;
        Ok(())
    }
}

/// Window-by-window extension of a video with reconstruction guidance.
pub struct ExtensionSampler<'a> {
    denoiser: &'a dyn Denoiser,
    scheduler: Box<dyn Scheduler>,
    /// `w_r` (0: the replacement method).
    weight: f64,
    guidance: Option<Guidance>,
    finite_checks: bool,
}

impl<'a> ExtensionSampler<'a> {
    /// A sampler with reconstruction weight `weight` (`w_r`; the paper uses values above 1,
    /// 0 is the replacement method) on a variance-preserving `scheduler`.
    pub fn new(denoiser: &'a dyn Denoiser, scheduler: Box<dyn Scheduler>, weight: f64) -> Self {
        Self {
            denoiser,
            scheduler,
            weight,
            guidance: None,
            finite_checks: true,
        }
    }

    /// Enables classifier-free guidance.
    pub fn with_guidance(mut self, guidance: Guidance) -> Self {
        self.guidance = Some(guidance);
        self
    }

    /// Whether to check every model output and the latents after every step for NaN and
    /// infinity, stopping with [`Error::NonFinite`] naming the step, the timestep and the
    /// component (on by default; see [`LongVideoSampler`](crate::sampler::LongVideoSampler)).
    /// Each check is one reduction over the tensor and one host read.
    pub fn with_finite_checks(mut self, enabled: bool) -> Self {
        self.finite_checks = enabled;
        self
    }

    /// Samples one window of `window` frames whose first frames are `known` (`[B, C, K, H, W]`,
    /// `K < window`, clean latents); returns the window `[B, C, window, H, W]` with `known` in
    /// its first `K` frames. `conditioning` is shared or per frame of the window.
    ///
    /// # Errors
    /// Before any model work: a non-finite or negative weight, a sigma-space scheduler,
    /// `known` not shorter than the window, the checks of every sampler; then the model's and
    /// the scheduler's errors; [`Error::Cancelled`].
    #[allow(clippy::too_many_arguments)]
    pub fn sample_window(
        &mut self,
        known: Tensor<5>,
        window: usize,
        conditioning: Conditioning,
        num_inference_steps: usize,
        noise: &mut dyn NoiseSource,
        device: &Device,
        progress: &mut dyn FnMut(Progress<'_>) -> Control,
    ) -> Result<Tensor<5>> {
        let guided = check_request(
            self.denoiser,
            self.scheduler.as_ref(),
            num_inference_steps,
            self.guidance.as_ref(),
        )?;
        ensure_non_negative("weight", self.weight)?;
        require_variance_preserving(self.scheduler.as_ref(), "reconstruction guidance")?;
        let known_shape = VideoShape::of("known", &known)?;
        let k = known_shape.frames;
        if k >= window {
            return Err(Error::invalid(
                "window",
                format!("must exceed the {k} known frames, got {window}"),
            ));
        }
        let conditioning = with_negative(guided.as_ref(), conditioning)?;
        let shape = known_shape.with_frames(window);
        self.scheduler.set_timesteps(num_inference_steps)?;
        let timesteps = self.scheduler.timesteps().to_vec();
        let mut z =
            draw(noise, shape.dims(), device)?.mul_scalar(self.scheduler.init_noise_sigma() as f32);
        for (step, &t) in timesteps.iter().enumerate() {
            let scales =
                Scales::from_alpha_cumprod(self.scheduler.noise_schedule().alpha_cumprod_at(t)?);
            if k > 0 {
                // Replacement: the known slots hold the known frames at this noise level.
                let eps: Tensor<5> = draw(noise, known_shape.dims(), device)?;
                let noised = known.clone().mul_scalar(scales.alpha as f32)
                    + eps.mul_scalar(scales.sigma as f32);
                z = Tensor::cat(vec![noised, z.narrow(2, k, window - k)], 2);
            }
            let input = self.scheduler.scale_model_input(z.clone(), t)?;
            let output = if k > 0 && self.weight > 0.0 {
                let call = ModelCall {
                    denoiser: self.denoiser,
                    conditioning: &conditioning,
                    guidance: guided.as_ref(),
                    t,
                    scales,
                };
                call.reconstruction_guided(input, &known, self.weight)?
            } else {
                guided_prediction(
                    self.denoiser,
                    input,
                    Timesteps::Shared(t),
                    &conditioning,
                    Routing::default(),
                    guided.as_ref(),
                )?
            };
            let at = At::new(step, timesteps.len(), t);
            check_model_output(self.finite_checks, &output, at)?;
            let out = self.scheduler.step(output, t, z, noise)?;
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
        if k == 0 {
            return Ok(z);
        }
        Ok(Tensor::cat(vec![known, z.narrow(2, k, window - k)], 2))
    }

    /// Extends `clip` (`[B, C, F₀, H, W]`, clean latents) to `frames` frames, window by window:
    /// each window of `window` frames keeps the last `context` frames so far as known and adds
    /// `window − context` new ones (the last window fewer). `conditioning` is shared, or per
    /// frame of the extended video (each window gets its frames' slice). Progress counts the
    /// windows as passes. Returns the whole video (`clip` first); see
    /// [`extend_parts`](Self::extend_parts) for the new frames as each window finishes them.
    ///
    /// # Errors
    /// As [`extend_parts`](Self::extend_parts).
    #[allow(clippy::too_many_arguments)]
    pub fn extend(
        &mut self,
        clip: Tensor<5>,
        frames: usize,
        window: usize,
        context: usize,
        conditioning: Conditioning,
        num_inference_steps: usize,
        noise: &mut dyn NoiseSource,
        progress: &mut dyn FnMut(Progress<'_>) -> Control,
    ) -> Result<Tensor<5>> {
        let mut parts = vec![clip.clone()];
        self.extend_parts(
            clip,
            frames,
            window,
            context,
            conditioning,
            num_inference_steps,
            noise,
            progress,
            &mut |part| {
                parts.push(part);
                Ok(())
            },
        )?;
        Ok(Tensor::cat(parts, 2))
    }

    /// [`extend`](Self::extend), handing each window's new frames (`[B, C, n, H, W]`, clean
    /// latents, in order) to `on_part` as soon as the window is sampled, and keeping only the
    /// last `context` frames: the memory does not grow with `frames`, and the frames finished
    /// before a failure or a cancel have been handed over.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] naming `context` (0, or not below `window` or the clip's frames)
    /// or `frames` (not above the clip's); the errors of
    /// [`sample_window`](Self::sample_window); those of `on_part`, which stop the extension.
    #[allow(clippy::too_many_arguments)]
    pub fn extend_parts(
        &mut self,
        clip: Tensor<5>,
        frames: usize,
        window: usize,
        context: usize,
        conditioning: Conditioning,
        num_inference_steps: usize,
        noise: &mut dyn NoiseSource,
        progress: &mut dyn FnMut(Progress<'_>) -> Control,
        on_part: &mut dyn FnMut(Tensor<5>) -> Result<()>,
    ) -> Result<()> {
        let start = VideoShape::of("clip", &clip)?.frames;
        if context == 0 || context >= window || context > start {
            return Err(Error::invalid(
                "context",
                format!(
                    "must be ≥ 1, below the window ({window}) and at most the clip's {start} \
                     frames, got {context}"
                ),
            ));
        }
        if frames <= start {
            return Err(Error::invalid(
                "frames",
                format!("must exceed the clip's {start} frames, got {frames}"),
            ));
        }
        if let Conditioning::PerFrame(ctx) = &conditioning
            && ctx.dims()[1] != frames
        {
            return Err(Error::shape(
                "conditioning",
                format!("[B, F, S, D] with F = {frames} (the extended video's frames)"),
                &ctx.dims(),
            ));
        }
        let device = clip.device();
        let step = window - context;
        let passes = (frames - start).div_ceil(step);
        // The last `context` frames so far: the next window's known frames.
        let mut known = clip.narrow(2, start - context, context);
        let mut have = start;
        let mut pass = 0;
        while have < frames {
            let new = step.min(frames - have);
            let part = self.sample_window(
                known,
                context + new,
                conditioning.frames(have - context, have + new),
                num_inference_steps,
                noise,
                &device,
                &mut |p| {
                    progress(Progress {
                        iteration: pass,
                        iterations: passes,
                        ..p
                    })
                },
            )?;
            // The window is frames `have − context .. have + new`: its last `context` ones
            // are the video's last so far.
            known = part.clone().narrow(2, new, context);
            on_part(part.narrow(2, context, new))?;
            have += new;
            pass += 1;
        }
        Ok(())
    }
}

/// One guided model evaluation at timestep `t`.
struct ModelCall<'a> {
    denoiser: &'a dyn Denoiser,
    conditioning: &'a Conditioning,
    guidance: Option<&'a Guidance>,
    t: f64,
    scales: Scales,
}

impl ModelCall<'_> {
    /// `∇_{z} ‖xᵃ − x̂ᵃ(z)‖²` (all frames; the known slots' part included) and the model's
    /// `x̂₀(z)`, on the autodiff version of `z`'s device.
    ///
    /// # Shapes
    /// - `z`: `[B, C, F, H, W]`; `known`: `[B, C, K, H, W]`; outputs: as `z`
    fn reconstruction_gradient(
        &self,
        z: Tensor<5>,
        known: &Tensor<5>,
    ) -> Result<(Tensor<5>, Tensor<5>)> {
        let k = known.dims()[2];
        let tracked = z.clone().autodiff().require_grad();
        let output = guided_prediction(
            self.denoiser,
            tracked.clone(),
            Timesteps::Shared(self.t),
            self.conditioning,
            Routing::default(),
            self.guidance,
        )?;
        let (x0, _) = to_x0_and_eps(
            self.denoiser.prediction_type(),
            output,
            tracked.clone(),
            self.scales,
        )?;
        let residual = x0.clone().narrow(2, 0, k) - known.clone().autodiff();
        let loss = residual.powi_scalar(2).sum();
        let grads = loss.backward();
        let gradient = tracked.grad(&grads).ok_or_else(|| {
            Error::Unsupported(
                "reconstruction guidance: the model's output has no gradient with respect to \
                 its input (does it leave Burn's tensor operations?)"
                    .into(),
            )
        })?;
        Ok((gradient, x0.detach().inner()))
    }

    /// The model output (in its prediction type) whose `x̂₀` is the reconstruction-guided one
    /// in the new frames' slots.
    fn reconstruction_guided(
        &self,
        z: Tensor<5>,
        known: &Tensor<5>,
        weight: f64,
    ) -> Result<Tensor<5>> {
        let k = known.dims()[2];
        let (gradient, x0) = self.reconstruction_gradient(z.clone(), known)?;
        let [b, c, f, h, w] = x0.dims();
        let step = (weight * self.scales.alpha / 2.0) as f32;
        let new = x0.clone().narrow(2, k, f - k) - gradient.narrow(2, k, f - k).mul_scalar(step);
        let guided = x0.slice_assign([0..b, 0..c, k..f, 0..h, 0..w], new);
        convert(
            PredictionType::Sample,
            self.denoiser.prediction_type(),
            guided,
            z,
            self.scales,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::TensorData;
    use vdm_core::{DenoiserInput, SeededNoise};
    use vdm_schedulers::from_config_json;

    use crate::sampler::LongVideoSampler;

    const DDIM: &str = r#"{"_class_name": "DDIMScheduler", "clip_sample": false}"#;

    /// `ε = a·z + b·mean over frames of z` (per batch item, channel and pixel).
    struct Mixing(f32, f32);

    impl Denoiser for Mixing {
        fn prediction_type(&self) -> PredictionType {
            PredictionType::Epsilon
        }
        fn predict(&self, input: DenoiserInput<'_>) -> Result<Tensor<5>> {
            let z = input.latents;
            let mean = z.clone().mean_dim(2);
            Ok(z.mul_scalar(self.0) + mean.mul_scalar(self.1))
        }
    }

    /// The `k`-th draw is the constant `sin(0.37·k + 0.2)` everywhere.
    struct ConstantDraws(usize);

    impl NoiseSource for ConstantDraws {
        fn normal(&mut self, shape: &[usize]) -> Result<TensorData> {
            let v = (self.0 as f32 * 0.37 + 0.2).sin();
            self.0 += 1;
            Ok(TensorData::new(
                vec![v; shape.iter().product()],
                shape.to_vec(),
            ))
        }
        fn permutation(&mut self, n: usize) -> Result<Vec<usize>> {
            Ok((0..n).collect())
        }
    }

    fn host(t: Tensor<5>) -> Vec<f32> {
        t.into_data().convert::<f32>().try_to_vec::<f32>().unwrap()
    }

    fn known(device: &Device) -> Tensor<5> {
        draw(&mut SeededNoise::new(11), [1, 2, 2, 3, 2], device).unwrap()
    }

    #[test]
    fn frames_that_cannot_affect_the_known_ones_are_sampled_plainly_at_any_weight() {
        // A frame-local model: the known frames' reconstruction does not depend on the new
        // frames, so the guidance gradient there is zero and every weight gives the
        // replacement method, whose new frames are plain sampling of them alone.
        let device = Device::flex();
        let model = Mixing(0.1, 0.0);
        let mut plain = LongVideoSampler::new(&model, from_config_json(DDIM).unwrap());
        let want = host(
            plain
                .sample(
                    VideoShape::new([1, 2, 3, 3, 2]),
                    Conditioning::None,
                    6,
                    &mut ConstantDraws(0),
                    &device,
                    &mut |_| Control::Continue,
                )
                .unwrap(),
        );
        for weight in [0.0, 5.0] {
            let mut sampler =
                ExtensionSampler::new(&model, from_config_json(DDIM).unwrap(), weight);
            let window = sampler
                .sample_window(
                    known(&device),
                    5,
                    Conditioning::None,
                    6,
                    &mut ConstantDraws(0),
                    &device,
                    &mut |_| Control::Continue,
                )
                .unwrap();
            assert_eq!(host(window.clone().narrow(2, 0, 2)), host(known(&device)));
            for (a, b) in host(window.narrow(2, 2, 3)).iter().zip(&want) {
                assert!((a - b).abs() < 1e-5, "weight {weight}: {a} vs {b}");
            }
        }
    }

    #[test]
    fn the_gradient_is_that_of_the_reconstruction_loss() {
        let device = Device::flex();
        let (a, b) = (0.1f32, 0.3f32);
        let model = Mixing(a, b);
        let known = known(&device);
        let z: Tensor<5> = draw(&mut SeededNoise::new(12), [1, 2, 5, 3, 2], &device).unwrap();
        let scales = Scales::from_alpha_cumprod(0.6);
        let call = ModelCall {
            denoiser: &model,
            conditioning: &Conditioning::None,
            guidance: None,
            t: 500.0,
            scales,
        };
        let (gradient, _) = call.reconstruction_gradient(z.clone(), &known).unwrap();
        let gradient = host(gradient);
        // The loss on the host in f64: x̂₀ = (z − σ·ε)/α, ε = a·z + b·mean_f(z).
        let zs: Vec<f64> = host(z).iter().map(|&v| f64::from(v)).collect();
        let xa: Vec<f64> = host(known).iter().map(|&v| f64::from(v)).collect();
        let (f, hw) = (5, 6);
        let loss = |z: &[f64]| -> f64 {
            let mut total = 0.0;
            for c in 0..2 {
                for p in 0..hw {
                    let at = |fr: usize| z[(c * f + fr) * hw + p];
                    let mean = (0..f).map(at).sum::<f64>() / f as f64;
                    for fr in 0..2 {
                        let eps = f64::from(a) * at(fr) + f64::from(b) * mean;
                        let x0 = (at(fr) - scales.sigma * eps) / scales.alpha;
                        total += (xa[(c * 2 + fr) * hw + p] - x0).powi(2);
                    }
                }
            }
            total
        };
        for i in [0, 7, 13, 29, 40, 59] {
            let h = 1e-3;
            let (mut up, mut down) = (zs.clone(), zs.clone());
            up[i] += h;
            down[i] -= h;
            let numeric = (loss(&up) - loss(&down)) / (2.0 * h);
            assert!(
                (f64::from(gradient[i]) - numeric).abs() < 1e-3 * (1.0 + numeric.abs()),
                "element {i}: {} vs {numeric}",
                gradient[i]
            );
        }
        // The new frames (2..5) do receive a gradient through the frame mean.
        assert!(gradient[2 * hw..].iter().any(|g| g.abs() > 1e-3));
    }

    #[test]
    fn guidance_changes_frames_that_affect_the_known_ones() {
        let device = Device::flex();
        let model = Mixing(0.1, 0.3);
        let sample = |weight| {
            ExtensionSampler::new(&model, from_config_json(DDIM).unwrap(), weight)
                .sample_window(
                    known(&device),
                    5,
                    Conditioning::None,
                    6,
                    &mut SeededNoise::new(2),
                    &device,
                    &mut |_| Control::Continue,
                )
                .unwrap()
        };
        let (plain, guided) = (host(sample(0.0)), host(sample(2.0)));
        assert_eq!(plain[..12], guided[..12]);
        assert!(plain.iter().zip(&guided).any(|(p, g)| (p - g).abs() > 1e-4));
        assert!(guided.iter().all(|v| v.is_finite()));
    }

    #[test]
    fn extension_keeps_the_clip_and_reports_windows() {
        let device = Device::flex();
        let model = Mixing(0.1, 0.3);
        let clip: Tensor<5> = draw(&mut SeededNoise::new(3), [1, 2, 4, 3, 2], &device).unwrap();
        let mut passes = Vec::new();
        let video = ExtensionSampler::new(&model, from_config_json(DDIM).unwrap(), 1.0)
            .extend(
                clip.clone(),
                11,
                4,
                2,
                Conditioning::None,
                3,
                &mut SeededNoise::new(4),
                &mut |p| {
                    passes.push((p.iteration, p.iterations));
                    Control::Continue
                },
            )
            .unwrap();
        assert_eq!(video.dims(), [1, 2, 11, 3, 2]);
        assert_eq!(host(video.narrow(2, 0, 4)), host(clip.clone()));
        // 7 new frames, 2 per window: 4 windows of 3 steps.
        let want: Vec<(usize, usize)> = (0..4).flat_map(|w| [(w, 4); 3]).collect();
        assert_eq!(passes, want);
        let mut sampler = ExtensionSampler::new(&model, from_config_json(DDIM).unwrap(), 1.0);
        let mut run = |frames, window, context| {
            sampler
                .extend(
                    clip.clone(),
                    frames,
                    window,
                    context,
                    Conditioning::None,
                    3,
                    &mut SeededNoise::new(4),
                    &mut |_| Control::Continue,
                )
                .unwrap_err()
                .to_string()
        };
        assert!(run(11, 4, 4).contains("context"));
        assert!(run(11, 4, 0).contains("context"));
        assert!(run(11, 8, 5).contains("context"));
        assert!(run(4, 4, 2).contains("frames"));
    }

    #[test]
    fn extension_parts_are_handed_over_as_windows_finish() {
        let device = Device::flex();
        let model = Mixing(0.1, 0.3);
        let clip: Tensor<5> = draw(&mut SeededNoise::new(3), [1, 2, 4, 3, 2], &device).unwrap();
        let run = |cancel_in_window: Option<usize>| {
            let mut parts = Vec::new();
            let outcome = ExtensionSampler::new(&model, from_config_json(DDIM).unwrap(), 1.0)
                .extend_parts(
                    clip.clone(),
                    11,
                    5,
                    2,
                    Conditioning::None,
                    3,
                    &mut SeededNoise::new(4),
                    &mut |p| match cancel_in_window {
                        Some(w) if p.iteration == w => Control::Cancel,
                        _ => Control::Continue,
                    },
                    &mut |part| {
                        parts.push(part);
                        Ok(())
                    },
                );
            (outcome, parts)
        };
        // 7 new frames, 3 per window: parts of 3, 3 and 1 frames, together the whole video.
        let (outcome, parts) = run(None);
        outcome.unwrap();
        let lengths: Vec<usize> = parts.iter().map(|p| p.dims()[2]).collect();
        assert_eq!(lengths, [3, 3, 1]);
        let whole = ExtensionSampler::new(&model, from_config_json(DDIM).unwrap(), 1.0)
            .extend(
                clip.clone(),
                11,
                5,
                2,
                Conditioning::None,
                3,
                &mut SeededNoise::new(4),
                &mut |_| Control::Continue,
            )
            .unwrap();
        let mut joined = vec![clip.clone()];
        joined.extend(parts);
        assert_eq!(host(Tensor::cat(joined, 2)), host(whole.clone()));
        // Cancelled in the third window: the first two windows' frames were handed over.
        let (outcome, parts) = run(Some(2));
        assert!(
            matches!(outcome, Err(Error::Cancelled { .. })),
            "{outcome:?}"
        );
        assert_eq!(parts.len(), 2);
        assert_eq!(
            host(Tensor::cat(parts, 2)),
            host(whole.narrow(2, 4, 6)),
            "the parts before the cancel are the video's frames 4..10"
        );
    }

    #[test]
    fn bad_requests_are_named() {
        let device = Device::flex();
        let model = Mixing(0.1, 0.3);
        let err = |weight: f64, config: &str, window: usize| {
            ExtensionSampler::new(&model, from_config_json(config).unwrap(), weight)
                .sample_window(
                    known(&device),
                    window,
                    Conditioning::None,
                    4,
                    &mut SeededNoise::new(0),
                    &device,
                    &mut |_| Control::Continue,
                )
                .unwrap_err()
                .to_string()
        };
        assert!(err(-1.0, DDIM, 5).contains("weight"));
        assert!(err(f64::NAN, DDIM, 5).contains("weight"));
        assert!(err(1.0, r#"{"_class_name": "EulerDiscreteScheduler"}"#, 5).contains("scheduler"));
        assert!(err(1.0, DDIM, 2).contains("window"));
    }
}
