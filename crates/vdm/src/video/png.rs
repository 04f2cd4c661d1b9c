//! PNG output with the `image` crate: one file per frame, or a contact sheet (the frames in a
//! grid, row by row, on one image).

use std::io::{Seek, Write};
use std::path::Path;

use image::{ImageFormat, RgbImage};
use vdm_core::{Error, Result};

use super::atomic::file_error;

/// The name of frame `index` of `total`: `frame_0000.png`, with at least 4 digits.
pub fn frame_file_name(index: usize, total: usize) -> String {
    let digits = total.saturating_sub(1).to_string().len().max(4);
    format!("frame_{index:0digits$}.png")
}

/// Writes every frame into `dir` as [`frame_file_name`].
///
/// # Errors
/// [`Error::File`] naming the frame's path.
pub(crate) fn write_frames(dir: &Path, frames: &[RgbImage]) -> Result<()> {
    for (i, frame) in frames.iter().enumerate() {
        let path = dir.join(frame_file_name(i, frames.len()));
        frame
            .save_with_format(&path, ImageFormat::Png)
            .map_err(|e| file_error(&path, e))?;
    }
    Ok(())
}

/// The frames in a grid of `columns` (default `⌈√F⌉`), row by row, on a black background.
///
/// # Errors
/// [`Error::InvalidConfig`] naming `columns` when it is 0, or `frames` when there are none or
/// their sizes differ.
pub fn contact_sheet(frames: &[RgbImage], columns: Option<usize>) -> Result<RgbImage> {
    let (w, h) = super::frame_size::frame_size(frames, "a contact sheet")?;
    let columns = match columns {
        Some(0) => return Err(Error::invalid("columns", "must be ≥ 1")),
        Some(c) => c.min(frames.len()),
        None => (frames.len() as f64).sqrt().ceil() as usize,
    };
    let rows = frames.len().div_ceil(columns);
    let mut sheet = RgbImage::new(w * columns as u32, h * rows as u32);
    for (i, frame) in frames.iter().enumerate() {
        let (x, y) = ((i % columns) as u32 * w, (i / columns) as u32 * h);
        image::imageops::replace(&mut sheet, frame, x as i64, y as i64);
    }
    Ok(sheet)
}

/// PNG-encodes `image` into `out`.
///
/// # Errors
/// [`Error::File`] naming `what`.
pub(crate) fn encode_png<W: Write + Seek>(
    out: &mut W,
    image: &RgbImage,
    what: &Path,
) -> Result<()> {
    image
        .write_to(out, ImageFormat::Png)
        .map_err(|e| file_error(what, e))
}
