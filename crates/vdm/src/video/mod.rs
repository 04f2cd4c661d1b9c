//! Decoded videos: frames in `[0, 1]` as a tensor and as 8-bit RGB images.

use burn::tensor::Tensor;
use image::RgbImage;
use vdm_core::{Error, Result};

/// A decoded video: `frames` `[F, 3, H, W]` with values in `[0, 1]` (diffusers'
/// `postprocess_video`, `output_type="pt"`, for one video).
#[derive(Debug, Clone)]
pub struct Video {
    /// `[F, 3, H, W]` in `[0, 1]`.
    pub frames: Tensor<4>,
}

impl Video {
    /// Wraps frames `[F, 3, H, W]` in `[0, 1]`.
    ///
    /// # Errors
    /// [`Error::Shape`] naming `frames` unless it is `[F, 3, H, W]` with every dimension > 0.
    pub fn new(frames: Tensor<4>) -> Result<Self> {
        let dims = frames.dims();
        if dims[1] != 3 || dims.contains(&0) {
            return Err(Error::shape(
                "frames",
                "[F, 3, H, W] with every dimension > 0",
                &dims,
            ));
        }
        Ok(Self { frames })
    }

    /// Number of frames.
    pub fn num_frames(&self) -> usize {
        self.frames.dims()[0]
    }

    /// `(height, width)` in pixels.
    pub fn size(&self) -> (usize, usize) {
        let [_, _, h, w] = self.frames.dims();
        (h, w)
    }

    /// The frames as 8-bit RGB images (`round(255 · x)`, values clamped to `[0, 1]` first).
    ///
    /// # Errors
    /// [`Error::Unsupported`] when the tensor data cannot be read as `f32`.
    pub fn to_rgb_images(&self) -> Result<Vec<RgbImage>> {
        let [f, _, h, w] = self.frames.dims();
        let values = self
            .frames
            .clone()
            .into_data()
            .convert::<f32>()
            .try_to_vec::<f32>()
            .map_err(|e| Error::Unsupported(format!("reading frames: {e:?}")))?;
        let plane = h * w;
        Ok((0..f)
            .map(|i| {
                let frame = &values[i * 3 * plane..(i + 1) * 3 * plane];
                RgbImage::from_fn(w as u32, h as u32, |x, y| {
                    let p = y as usize * w + x as usize;
                    image::Rgb(std::array::from_fn(|c| to_u8(frame[c * plane + p])))
                })
            })
            .collect())
    }
}

/// `[0, 1]` → `0..=255`, rounding to nearest (NaN → 0).
fn to_u8(x: f32) -> u8 {
    if x.is_nan() {
        0
    } else {
        (x.clamp(0.0, 1.0) * 255.0).round() as u8
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::{Device, TensorData};

    #[test]
    fn rgb_images_round_and_clamp() {
        // One 1×2 frame: red channel 0 / 1, green 0.5 / 2.0, blue −1 / 0.2.
        let data = vec![0.0, 1.0, 0.5, 2.0, -1.0, 0.2];
        let frames = Tensor::<4>::from_data(TensorData::new(data, [1, 3, 1, 2]), &Device::flex());
        let images = Video::new(frames).unwrap().to_rgb_images().unwrap();
        assert_eq!(images.len(), 1);
        assert_eq!(images[0].get_pixel(0, 0).0, [0, 128, 0]);
        assert_eq!(images[0].get_pixel(1, 0).0, [255, 255, 51]);
    }

    #[test]
    fn wrong_shapes_are_named() {
        let frames = Tensor::<4>::zeros([2, 4, 8, 8], &Device::flex());
        let err = Video::new(frames).unwrap_err();
        assert!(err.to_string().contains("frames"), "{err}");
    }
}
