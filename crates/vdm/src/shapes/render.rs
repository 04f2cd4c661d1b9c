//! Rendering a [`Scene`] to frames.

use burn::tensor::{Device, Tensor, TensorData};
use vdm_core::{Result, SeededNoise};

use super::scene::{Scene, ShapeKind};
use crate::video::Video;

/// Subsamples per pixel side: coverage is measured on a 4×4 grid, so edges are antialiased and
/// sub-pixel motion is visible.
const SUPERSAMPLE: usize = 4;

/// A rendered clip: `frames` RGB frames, values in `[0, 1]`, laid out `[F, 3, H, W]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Clip {
    /// Number of frames.
    pub frames: usize,
    /// Frame height in pixels.
    pub height: usize,
    /// Frame width in pixels.
    pub width: usize,
    /// `F·3·H·W` values in `[0, 1]`.
    pub pixels: Vec<f32>,
}

impl Clip {
    /// The clip as a [`Video`] on `device` (to write it as a GIF, MP4 or PNGs).
    ///
    /// # Errors
    /// None in practice (the shape is valid by construction); the type is [`Video::new`]'s.
    pub fn to_video(&self, device: &Device) -> Result<Video> {
        Video::new(Tensor::from_data(
            TensorData::new(
                self.pixels.clone(),
                [self.frames, 3, self.height, self.width],
            ),
            device,
        ))
    }

    /// The RGB value of pixel `(x, y)` of `frame`.
    pub fn pixel(&self, frame: usize, x: usize, y: usize) -> [f32; 3] {
        let plane = self.height * self.width;
        let base = frame * 3 * plane + y * self.width + x;
        [
            self.pixels[base],
            self.pixels[base + plane],
            self.pixels[base + 2 * plane],
        ]
    }
}

impl Scene {
    /// Renders `frames` frames of `side × side` pixels. The shape wraps around the edges: a
    /// part leaving on one side enters on the other.
    pub fn render(&self, frames: usize, side: usize) -> Clip {
        let plane = side * side;
        let texture: Vec<f32> = if self.texture > 0.0 {
            let mut rng = SeededNoise::new(self.texture_seed);
            (0..plane)
                .map(|_| self.texture * (2.0 * rng.uniform() as f32 - 1.0))
                .collect()
        } else {
            vec![0.0; plane]
        };
        let colour = self.colour.rgb();
        let mut pixels = vec![0.0f32; frames * 3 * plane];
        let step = 1.0 / SUPERSAMPLE as f32;
        let samples = (SUPERSAMPLE * SUPERSAMPLE) as f32;
        for f in 0..frames {
            let (cx, cy) = self.centre(f);
            let frame = &mut pixels[f * 3 * plane..(f + 1) * 3 * plane];
            for y in 0..side {
                for x in 0..side {
                    let mut hits = 0usize;
                    for sy in 0..SUPERSAMPLE {
                        for sx in 0..SUPERSAMPLE {
                            let px = x as f32 + (sx as f32 + 0.5) * step;
                            let py = y as f32 + (sy as f32 + 0.5) * step;
                            let dx = wrap(px - cx, side as f32);
                            let dy = wrap(py - cy, side as f32);
                            hits += usize::from(self.contains(dx, dy));
                        }
                    }
                    let coverage = hits as f32 / samples;
                    let ground = (self.background + texture[y * side + x]).clamp(0.0, 1.0);
                    for (c, value) in colour.iter().enumerate() {
                        frame[c * plane + y * side + x] =
                            ground * (1.0 - coverage) + value * coverage;
                    }
                }
            }
        }
        Clip {
            frames,
            height: side,
            width: side,
            pixels,
        }
    }

    /// Whether the offset `(dx, dy)` from the centre is inside the shape.
    fn contains(&self, dx: f32, dy: f32) -> bool {
        let half = self.size / 2.0;
        match self.shape {
            ShapeKind::Circle => dx * dx + dy * dy <= half * half,
            ShapeKind::Square => dx.abs() <= half && dy.abs() <= half,
            // Apex at (0, -half), base from (-half, half) to (half, half).
            ShapeKind::Triangle => dy <= half && dx.abs() <= (dy + half) / 2.0,
        }
    }
}

/// `d` reduced to `[-side/2, side/2)`: the offset to the nearest copy on a torus.
pub(crate) fn wrap(d: f32, side: f32) -> f32 {
    (d + side / 2.0).rem_euclid(side) - side / 2.0
}

#[cfg(test)]
mod tests {
    use super::super::scene::{Colour, Direction};
    use super::*;

    fn scene(shape: ShapeKind) -> Scene {
        Scene {
            colour: Colour::Green,
            shape,
            size: 10.0,
            start: (16.0, 16.0),
            speed: 1.0,
            direction: Direction::Right,
            turn: None,
            background: 0.1,
            texture: 0.0,
            texture_seed: 0,
        }
    }

    #[test]
    fn each_shape_covers_its_area() {
        for shape in ShapeKind::ALL {
            let clip = scene(shape).render(1, 32);
            let green = Colour::Green.rgb()[1];
            let covered: f32 = (0..32 * 32)
                .map(|i| (clip.pixels[32 * 32 + i] - 0.1) / (green - 0.1))
                .sum();
            let want = 100.0 * shape.fill_ratio();
            assert!(
                (covered - want).abs() < 1.5,
                "{shape:?}: {covered} vs {want}"
            );
        }
    }

    #[test]
    fn the_shape_wraps_around_the_edges() {
        let mut s = scene(ShapeKind::Square);
        s.start = (31.0, 16.0);
        let clip = s.render(1, 32);
        // Both the right edge and the left edge are covered.
        assert!(clip.pixel(0, 31, 16)[1] > 0.7);
        assert!(clip.pixel(0, 2, 16)[1] > 0.7);
        assert!(clip.pixel(0, 16, 16)[1] < 0.2);
    }

    #[test]
    fn rendering_is_deterministic_and_in_range() {
        let mut rng = SeededNoise::new(9);
        let s = Scene::random(&mut rng, 32, 16, 0.3);
        let a = s.render(16, 32);
        assert_eq!(a, s.render(16, 32));
        assert!(a.pixels.iter().all(|v| (0.0..=1.0).contains(v)));
        assert_eq!(a.pixels.len(), 16 * 3 * 32 * 32);
    }

    #[test]
    fn wrap_gives_the_nearest_offset() {
        assert_eq!(wrap(30.0, 32.0), -2.0);
        assert_eq!(wrap(-17.0, 32.0), 15.0);
        assert_eq!(wrap(3.0, 32.0), 3.0);
    }
}
