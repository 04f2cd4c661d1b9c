//! Where training batches come from.

use burn::tensor::{Device, Tensor, TensorData};
use vdm_core::{Result, SeededNoise};
use vdm_models::patchify::Patchify;

use crate::shapes::Scene;

/// A source of training videos with captions, drawn from a generator the trainer seeds per
/// step (so a batch is a pure function of the run's seed and the step: resuming replays the
/// same data order).
pub trait TrainingData {
    /// `count` videos of `frames` frames in the model's latent space, `[count, C, F, h, w]` on
    /// `device`, and their captions.
    ///
    /// # Errors
    /// The source's own (e.g. an encoder's shape errors).
    fn sample(
        &self,
        rng: &mut SeededNoise,
        count: usize,
        frames: usize,
        device: &Device,
    ) -> Result<(Tensor<5>, Vec<String>)>;
}

/// [Moving Shapes](crate::shapes) clips rendered on the fly, mapped to `[-1, 1]` and folded
/// into patches.
#[derive(Debug, Clone)]
pub struct ShapesData {
    /// Frame side in pixels.
    pub side: usize,
    /// Probability that a clip turns half-way.
    pub turn_probability: f64,
    /// The pixel ↔ latent codec.
    pub patchify: Patchify,
}

impl ShapesData {
    /// `count` clips as pixels in `[-1, 1]`, `[count, 3, frames, side, side]` in row-major
    /// order, and their captions.
    fn render(
        &self,
        rng: &mut SeededNoise,
        count: usize,
        frames: usize,
    ) -> (Vec<f32>, Vec<String>) {
        let mut pixels = Vec::with_capacity(count * 3 * frames * self.side * self.side);
        let mut captions = Vec::with_capacity(count);
        for _ in 0..count {
            let scene = Scene::random(rng, self.side, frames, self.turn_probability);
            let clip = scene.render(frames, self.side);
            // [F, 3, H, W] → [3, F, H, W], values to [-1, 1].
            let plane = self.side * self.side;
            for c in 0..3 {
                for f in 0..frames {
                    let start = (f * 3 + c) * plane;
                    pixels.extend(
                        clip.pixels[start..start + plane]
                            .iter()
                            .map(|v| 2.0 * v - 1.0),
                    );
                }
            }
            captions.push(scene.caption());
        }
        (pixels, captions)
    }

    /// The mean and standard deviation of the pixel values (in `[-1, 1]`) over `clips` clips
    /// of `frames` frames drawn from `rng`: what
    /// [`PatchifyConfig::normalized`](vdm_models::patchify::PatchifyConfig::normalized) takes
    /// to give the model latents of zero mean and unit variance.
    pub fn pixel_moments(&self, rng: &mut SeededNoise, clips: usize, frames: usize) -> (f64, f64) {
        let (pixels, _) = self.render(rng, clips, frames);
        let n = pixels.len().max(1) as f64;
        let mean = pixels.iter().map(|&v| f64::from(v)).sum::<f64>() / n;
        let var = pixels
            .iter()
            .map(|&v| (f64::from(v) - mean).powi(2))
            .sum::<f64>()
            / n;
        (mean, var.sqrt())
    }
}

impl TrainingData for ShapesData {
    fn sample(
        &self,
        rng: &mut SeededNoise,
        count: usize,
        frames: usize,
        device: &Device,
    ) -> Result<(Tensor<5>, Vec<String>)> {
        let (pixels, captions) = self.render(rng, count, frames);
        let video = Tensor::<5>::from_data(
            TensorData::new(pixels, [count, 3, frames, self.side, self.side]),
            device,
        );
        Ok((self.patchify.encode(video)?, captions))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vdm_models::patchify::PatchifyConfig;

    fn data(patchify: PatchifyConfig) -> ShapesData {
        ShapesData {
            side: 32,
            turn_probability: 0.2,
            patchify: Patchify::new(patchify).unwrap(),
        }
    }

    #[test]
    fn normalized_latents_have_zero_mean_and_unit_variance() {
        let plain = data(PatchifyConfig::default());
        let (mean, std) = plain.pixel_moments(&mut SeededNoise::new(1), 64, 8);
        // A dark background (grey 0.06–0.22, i.e. −0.88 to −0.56) with a small bright object.
        assert!((-0.9..-0.4).contains(&mean), "{mean}");
        assert!((0.1..0.6).contains(&std), "{std}");
        let scaled = data(PatchifyConfig::default().normalized(mean, std).unwrap());
        let device = Device::flex();
        let (latents, captions) = scaled
            .sample(&mut SeededNoise::new(2), 64, 8, &device)
            .unwrap();
        assert_eq!(captions.len(), 64);
        let m: f32 = latents.clone().mean().into_scalar();
        let v: f32 = (latents - m).powi_scalar(2).mean().into_scalar();
        // Other clips than the ones measured: close, not exact.
        assert!(m.abs() < 0.1, "{m}");
        assert!((v - 1.0).abs() < 0.15, "{v}");
    }
}
