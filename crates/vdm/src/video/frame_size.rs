//! The one frame size every writer checks its frames against.

use image::RgbImage;
use vdm_core::{Error, Result};

/// The common `(width, height)` of `frames`, which `what` (a GIF, an MP4, …) is made of.
///
/// # Errors
/// [`Error::InvalidConfig`] naming `frames` when there are none or their sizes differ.
pub(super) fn frame_size(frames: &[RgbImage], what: &str) -> Result<(u32, u32)> {
    let first = frames
        .first()
        .ok_or_else(|| Error::invalid("frames", format!("{what} needs at least one frame")))?;
    let size = first.dimensions();
    if frames.iter().any(|f| f.dimensions() != size) {
        return Err(Error::invalid(
            "frames",
            "every frame must have the same size",
        ));
    }
    Ok(size)
}
