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

impl TrainingData for ShapesData {
    fn sample(
        &self,
        rng: &mut SeededNoise,
        count: usize,
        frames: usize,
        device: &Device,
    ) -> Result<(Tensor<5>, Vec<String>)> {
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
        let video = Tensor::<5>::from_data(
            TensorData::new(pixels, [count, 3, frames, self.side, self.side]),
            device,
        );
        Ok((self.patchify.encode(video)?, captions))
    }
}
