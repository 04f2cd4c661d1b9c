//! Decoded videos and video files: frames in `[0, 1]` as a tensor and as 8-bit RGB images, and
//! writers for MP4 (H.264), GIF, PNG frames and PNG contact sheets ([`Video::write`]), and
//! [`read_frames`] to read them back. Every writer is
//! all-or-nothing: files appear under their final name only when complete.

mod atomic;
mod format;
mod frame_size;
pub mod gif;
pub mod mp4;
pub mod png;
pub mod read;

use std::path::Path;

use burn::tensor::Tensor;
use image::RgbImage;
use vdm_core::error::ensure_positive;
use vdm_core::{Error, Result};

use frame_size::frame_size;

pub use format::VideoFormat;
pub use gif::{GifOptions, GifPalette, gif_delay};
pub use mp4::Mp4Options;
pub use png::{contact_sheet, frame_file_name};
pub use read::read_frames;

/// How [`Video::write`] writes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct WriteOptions {
    /// Frames per second (GIF delays; video files).
    pub fps: f64,
    /// GIF palettes and dithering.
    pub gif: GifOptions,
    /// MP4 bitrate.
    pub mp4: Mp4Options,
    /// Columns of a contact sheet (`None`: `⌈√F⌉`).
    pub columns: Option<usize>,
}

impl Default for WriteOptions {
    /// 8 fps (diffusers' `export_to_gif` / `export_to_video` default), per-frame GIF palettes
    /// without dithering, square-ish contact sheets.
    fn default() -> Self {
        Self {
            fps: 8.0,
            gif: GifOptions::default(),
            mp4: Mp4Options::default(),
            columns: None,
        }
    }
}

/// Checks, before any model work, that `path` names a known format in a writable folder.
///
/// # Errors
/// As [`VideoFormat::from_path`]; [`Error::File`] naming `path` when its folder is missing or
/// not writable.
pub fn check_output(path: &Path) -> Result<VideoFormat> {
    let format = VideoFormat::from_path(path)?;
    match format {
        VideoFormat::PngFrames if path.is_dir() => atomic::check_writable(&path.join("probe")),
        _ => atomic::check_writable(path),
    }?;
    Ok(format)
}

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

    /// The frames as `f32` values on the host, `[F, 3, H, W]` row-major.
    ///
    /// # Errors
    /// [`Error::ReadBack`] when the frames cannot be read back from their device as `f32`.
    pub fn to_values(&self) -> Result<Vec<f32>> {
        vdm_core::readback::read_f32(self.frames.clone(), "the video frames")
    }

    /// The frames as 8-bit RGB images (`round(255 · x)`, values clamped to `[0, 1]` first).
    ///
    /// # Errors
    /// [`Error::ReadBack`] when the frames cannot be read back from their device as `f32`.
    pub fn to_rgb_images(&self) -> Result<Vec<RgbImage>> {
        let [f, _, h, w] = self.frames.dims();
        let values = self.to_values()?;
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

impl Video {
    /// Writes the video to `path` in the format its name asks for ([`VideoFormat::from_path`]):
    /// under a temporary name renamed into place when complete, so nothing is left on failure.
    ///
    /// ```
    /// use burn::tensor::{Device, Tensor};
    /// use vdm::video::{Video, WriteOptions};
    ///
    /// let frames = Tensor::<4>::ones([4, 3, 16, 16], &Device::flex()).mul_scalar(0.5);
    /// let path = std::env::temp_dir().join(format!("vdm-doc-{}.gif", std::process::id()));
    /// Video::new(frames)?.write(&path, &WriteOptions::default())?;
    /// assert!(path.is_file());
    /// # std::fs::remove_file(path).unwrap();
    /// # Ok::<(), vdm::Error>(())
    /// ```
    ///
    /// # Errors
    /// [`Error::UnknownVariant`] naming `out` for an unknown extension; [`Error::InvalidConfig`]
    /// naming `fps` unless it is finite and positive; [`Error::File`] naming the path for I/O
    /// errors.
    pub fn write(&self, path: impl AsRef<Path>, options: &WriteOptions) -> Result<VideoFormat> {
        let path = path.as_ref();
        let format = VideoFormat::from_path(path)?;
        ensure_positive("fps", options.fps)?;
        let frames = self.to_rgb_images()?;
        match format {
            VideoFormat::Mp4 => atomic::write_file(path, |out| {
                mp4::encode_mp4(
                    out,
                    &frames,
                    options.fps,
                    &options.mp4,
                    &path.display().to_string(),
                )
            })?,
            VideoFormat::Gif => atomic::write_file(path, |out| {
                gif::encode_gif(
                    out,
                    &frames,
                    options.fps,
                    &options.gif,
                    &path.display().to_string(),
                )
            })?,
            VideoFormat::ContactSheet => {
                let sheet = contact_sheet(&frames, options.columns)?;
                let mut bytes = std::io::Cursor::new(Vec::new());
                png::encode_png(&mut bytes, &sheet, path)?;
                atomic::write_file(path, |out| {
                    std::io::Write::write_all(out, bytes.get_ref())
                        .map_err(|e| atomic::file_error(path, e))
                })?
            }
            VideoFormat::PngFrames => {
                atomic::write_dir(path, |dir| png::write_frames(dir, &frames))?
            }
        }
        Ok(format)
    }
}

/// Peak signal-to-noise ratio in dB of `frames` against `reference` over every 8-bit sample
/// (infinite when they are equal): how close a written and re-read video is to its source.
///
/// # Errors
/// [`Error::InvalidConfig`] naming `frames` when the counts or sizes differ, or there are none.
pub fn psnr(frames: &[RgbImage], reference: &[RgbImage]) -> Result<f64> {
    let size = frame_size(reference, "a reference")?;
    if frames.len() != reference.len() || frame_size(frames, "a video")? != size {
        return Err(Error::invalid(
            "frames",
            format!(
                "{} frames of {:?} against {} of {size:?}",
                frames.len(),
                frames[0].dimensions(),
                reference.len()
            ),
        ));
    }
    let (mut sum, mut n) = (0.0f64, 0usize);
    for (a, b) in frames.iter().zip(reference) {
        for (p, q) in a.as_raw().iter().zip(b.as_raw()) {
            let d = *p as f64 - *q as f64;
            sum += d * d;
            n += 1;
        }
    }
    Ok(10.0 * (255.0f64 * 255.0 / (sum / n as f64)).log10())
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
