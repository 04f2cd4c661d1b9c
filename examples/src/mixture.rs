//! A denoiser that needs no weights: the exact (Bayes-optimal) noise predictor for data drawn
//! uniformly from a small set of clean videos.
//!
//! For clean videos `x_k` and `x_t = α·x₀ + σ·ε`, the posterior mean is
//! `E[x₀ | x_t] = Σ_k w_k x_k` with `w = softmax_k(−‖x_t − α x_k‖² / 2σ²)`, and the optimal noise
//! prediction is `(x_t − α·E[x₀ | x_t]) / σ`. Sampling with any correct scheduler therefore
//! lands on one of the `x_k`, chosen by the initial noise: a complete, checkable test of a
//! sampling loop before a trained model is at hand.
//!
//! The denoiser answers in the scheduler's prediction type (ε, `v = α·ε − σ·x₀`, or `x₀`), and
//! it is exact at zero terminal SNR too: where `ᾱ = 0` (`α = 0`, `σ = 1`) the posterior is the
//! prior, `E[x₀ | x_t]` the mean of the videos, `ε = x_t` and `v = −E[x₀]`, all finite.

use vdm::burn::tensor::{Device, Tensor, TensorData};
use vdm::core::noise::{SeededNoise, draw};
use vdm::core::readback::read_f32_scalar;
use vdm::core::{Conditioning, Denoiser, DenoiserInput, Error, PredictionType, Result, Timesteps};
use vdm::schedulers::Scheduler;

/// The exact denoiser of a uniform mixture of clean videos.
pub struct MixtureDenoiser {
    components: Vec<Tensor<5>>,
    /// Training sigmas `sqrt((1 − ᾱ)/ᾱ)` for interpolating fractional timesteps (`∞` where
    /// `ᾱ = 0`).
    sigmas: Vec<f64>,
    prediction_type: PredictionType,
}

impl MixtureDenoiser {
    /// An ε-predicting denoiser for `components` (each `[1, C, F, H, W]`) under the training
    /// schedule `alphas_cumprod`.
    pub fn new(components: Vec<Tensor<5>>, alphas_cumprod: &[f32]) -> Self {
        let sigmas = alphas_cumprod
            .iter()
            .map(|&a| ((1.0 - a as f64) / a as f64).sqrt())
            .collect();
        Self {
            components,
            sigmas,
            prediction_type: PredictionType::Epsilon,
        }
    }

    /// The same denoiser answering in `prediction_type` (the scheduler config's).
    pub fn with_prediction_type(self, prediction_type: PredictionType) -> Self {
        Self {
            prediction_type,
            ..self
        }
    }

    /// The clean videos.
    pub fn components(&self) -> &[Tensor<5>] {
        &self.components
    }

    /// `(α, σ)` at a possibly fractional timestep (linear interpolation of the training sigmas,
    /// as Euler's schedule does).
    fn scales(&self, t: f64) -> Result<(f64, f64)> {
        let last = (self.sigmas.len() - 1) as f64;
        if !(0.0..=last).contains(&t) {
            return Err(Error::invalid(
                "timestep",
                format!("{t} outside 0..={last}"),
            ));
        }
        let lo = t.floor() as usize;
        let hi = t.ceil() as usize;
        let s = if lo == hi {
            self.sigmas[lo]
        } else {
            self.sigmas[lo] + (self.sigmas[hi] - self.sigmas[lo]) * (t - lo as f64)
        };
        if s.is_infinite() {
            // ᾱ = 0: pure noise.
            return Ok((0.0, 1.0));
        }
        let alpha = 1.0 / (s * s + 1.0).sqrt();
        Ok((alpha, s * alpha))
    }

    /// Index of the component closest to `video`, and the RMS distance to it.
    ///
    /// # Errors
    /// [`Error::ReadBack`] when a distance cannot be read back from the device.
    pub fn nearest(&self, video: &Tensor<5>) -> Result<(usize, f64)> {
        let n = video.shape().num_elements() as f64;
        let mut nearest = (0, f64::INFINITY);
        for (k, c) in self.components.iter().enumerate() {
            let d = (video.clone() - c.clone()).powi_scalar(2).sum();
            let rms = (read_f32_scalar(d, "a squared distance")? as f64 / n).sqrt();
            if rms < nearest.1 {
                nearest = (k, rms);
            }
        }
        Ok(nearest)
    }
}

impl Denoiser for MixtureDenoiser {
    fn prediction_type(&self) -> PredictionType {
        self.prediction_type
    }

    fn predict(&self, input: DenoiserInput<'_>) -> Result<Tensor<5>> {
        let shape = input.shape()?;
        let ts = input.timesteps.per_item(shape.batch)?;
        let mut outputs = Vec::with_capacity(shape.batch);
        for (b, &t) in ts.iter().enumerate() {
            let x = input.latents.clone().narrow(0, b, 1);
            let (alpha, sigma) = self.scales(t)?;
            // Log-weights −‖x − α x_k‖² / 2σ², normalised on the host.
            let logits = self
                .components
                .iter()
                .map(|c| {
                    let d = (x.clone() - c.clone().mul_scalar(alpha as f32))
                        .powi_scalar(2)
                        .sum();
                    let d = read_f32_scalar(d, "a squared distance")? as f64;
                    Ok(-d / (2.0 * sigma * sigma))
                })
                .collect::<Result<Vec<f64>>>()?;
            let max = logits.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let w: Vec<f64> = logits.iter().map(|l| (l - max).exp()).collect();
            let total: f64 = w.iter().sum();
            let mut x0 = x.zeros_like();
            for (c, wk) in self.components.iter().zip(&w) {
                x0 = x0 + c.clone().mul_scalar((wk / total) as f32);
            }
            let eps = (x - x0.clone().mul_scalar(alpha as f32)).div_scalar(sigma as f32);
            outputs.push(match self.prediction_type {
                PredictionType::Epsilon => eps,
                PredictionType::VPrediction => {
                    eps.mul_scalar(alpha as f32) - x0.mul_scalar(sigma as f32)
                }
                PredictionType::Sample => x0,
            });
        }
        Ok(Tensor::cat(outputs, 0))
    }
}

/// Samples `steps` steps of `scheduler` from seeded noise of `shape` with the exact denoiser of
/// [`toy_videos`] (in the scheduler's prediction type); returns the video, the denoiser (for
/// [`MixtureDenoiser::nearest`]) and the number of model calls.
///
/// # Errors
/// The scheduler's (e.g. [`Error::NonFinite`] for ε-prediction at zero terminal SNR).
pub fn sample_mixture(
    scheduler: &mut dyn Scheduler,
    steps: usize,
    seed: u64,
    shape: [usize; 5],
) -> Result<(Tensor<5>, MixtureDenoiser, usize)> {
    let device = vdm::device();
    scheduler.set_timesteps(steps)?;
    let model = MixtureDenoiser::new(
        toy_videos(shape[1], shape[2], shape[3], &device),
        &scheduler.noise_schedule().alphas_cumprod,
    )
    .with_prediction_type(scheduler.prediction_type());
    let mut noise = SeededNoise::new(seed);
    let mut x = draw(&mut noise, shape, &device)?.mul_scalar(scheduler.init_noise_sigma() as f32);
    let mut calls = 0;
    for t in scheduler.timesteps().to_vec() {
        let x_in = scheduler.scale_model_input(x.clone(), t)?;
        let output = model.predict(DenoiserInput::new(
            x_in,
            Timesteps::Shared(t),
            Conditioning::None,
        ))?;
        calls += 1;
        x = scheduler.step(output, t, x, &mut noise)?.prev_sample;
    }
    Ok((x, model, calls))
}

/// Three recognisable clean latent videos `[1, C, F, H, W]`: a blob moving right, a blob
/// moving down, and a ring that pulses, with values in about `[−1, 1]`.
pub fn toy_videos(channels: usize, frames: usize, size: usize, device: &Device) -> Vec<Tensor<5>> {
    let make = |f: &dyn Fn(f64, f64, f64) -> f64| {
        let mut v = Vec::with_capacity(channels * frames * size * size);
        for c in 0..channels {
            for k in 0..frames {
                let p = k as f64 / frames.max(2).saturating_sub(1) as f64;
                for i in 0..size {
                    for j in 0..size {
                        let y = i as f64 / size as f64;
                        let x = j as f64 / size as f64;
                        let sign = if c % 2 == 0 { 1.0 } else { -1.0 };
                        v.push((sign * f(p, y, x)) as f32);
                    }
                }
            }
        }
        Tensor::<5>::from_data(
            TensorData::new(v, [1, channels, frames, size, size]),
            device,
        )
    };
    let blob = |cx: f64, cy: f64, y: f64, x: f64| {
        2.0 * (-((x - cx).powi(2) + (y - cy).powi(2)) / 0.02).exp() - 1.0
    };
    vec![
        make(&|p, y, x| blob(0.15 + 0.7 * p, 0.5, y, x)),
        make(&|p, y, x| blob(0.5, 0.15 + 0.7 * p, y, x)),
        make(&|p, y, x| {
            let r = ((x - 0.5).powi(2) + (y - 0.5).powi(2)).sqrt();
            let radius = 0.15 + 0.2 * p;
            2.0 * (-(r - radius).powi(2) / 0.005).exp() - 1.0
        }),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_finite_at_zero_terminal_snr_in_every_prediction_type() {
        let device = vdm::device();
        let videos = toy_videos(2, 3, 4, &device);
        let mean = (videos[0].clone() + videos[1].clone() + videos[2].clone()).div_scalar(3.0);
        // ᾱ at the last timestep is 0 (a zero-SNR schedule).
        let alphas = [0.99f32, 0.5, 0.0];
        let x = Tensor::<5>::ones([1, 2, 3, 4, 4], &device);
        for p in [
            PredictionType::Epsilon,
            PredictionType::VPrediction,
            PredictionType::Sample,
        ] {
            let model = MixtureDenoiser::new(videos.clone(), &alphas).with_prediction_type(p);
            assert_eq!(model.prediction_type(), p);
            let out = model
                .predict(DenoiserInput::new(
                    x.clone(),
                    Timesteps::Shared(2.0),
                    Conditioning::None,
                ))
                .unwrap();
            let want = match p {
                PredictionType::Epsilon => x.clone(),
                PredictionType::VPrediction => mean.clone().neg(),
                PredictionType::Sample => mean.clone(),
            };
            let gap: f32 = (out - want).abs().max().into_scalar();
            assert!(gap < 1e-6, "{p:?}: {gap}");
        }
    }

    #[test]
    fn v_and_x0_answers_agree_with_the_epsilon_answer() {
        let device = vdm::device();
        let videos = toy_videos(2, 3, 4, &device);
        let alphas = [0.99f32, 0.5, 0.1];
        let x = Tensor::<5>::ones([1, 2, 3, 4, 4], &device).mul_scalar(0.3);
        let ask = |p| {
            MixtureDenoiser::new(videos.clone(), &alphas)
                .with_prediction_type(p)
                .predict(DenoiserInput::new(
                    x.clone(),
                    Timesteps::Shared(1.0),
                    Conditioning::None,
                ))
                .unwrap()
        };
        let (eps, v, x0) = (
            ask(PredictionType::Epsilon),
            ask(PredictionType::VPrediction),
            ask(PredictionType::Sample),
        );
        let (a, s) = (0.5f32.sqrt(), 0.5f32.sqrt());
        // x_t = α·x₀ + σ·ε and v = α·ε − σ·x₀.
        let gap: f32 = (x0.clone().mul_scalar(a) + eps.clone().mul_scalar(s) - x.clone())
            .abs()
            .max()
            .into_scalar();
        assert!(gap < 1e-5, "{gap}");
        let gap: f32 = (eps.mul_scalar(a) - x0.mul_scalar(s) - v)
            .abs()
            .max()
            .into_scalar();
        assert!(gap < 1e-5, "{gap}");
    }
}
