//! [`VideoFormat`]: which kind of file an output path asks for, from its extension.

use std::path::Path;

use vdm_core::{Error, Result};

/// The kinds of output, chosen from the path ([`VideoFormat::from_path`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum VideoFormat {
    /// `*.mp4`: H.264 in an MP4 container.
    Mp4,
    /// `*.gif`: an animated GIF looping forever.
    Gif,
    /// `*.png`: one image with every frame in a grid.
    ContactSheet,
    /// A folder (a path ending in `/`, an existing folder, or no extension): one PNG per frame.
    PngFrames,
}

impl VideoFormat {
    /// The extensions accepted.
    pub const EXTENSIONS: &'static [&'static str] =
        &["mp4", "gif", "png", "(none: a folder of PNG frames)"];

    /// The format `path` asks for.
    ///
    /// # Errors
    /// [`Error::UnknownVariant`] naming `out` for an unknown extension.
    pub fn from_path(path: &Path) -> Result<Self> {
        let text = path.to_string_lossy();
        if text.ends_with('/') || text.ends_with(std::path::MAIN_SEPARATOR) || path.is_dir() {
            return Ok(Self::PngFrames);
        }
        match path.extension().map(|e| e.to_string_lossy().to_lowercase()) {
            None => Ok(Self::PngFrames),
            Some(ext) => match ext.as_str() {
                "mp4" => Ok(Self::Mp4),
                "gif" => Ok(Self::Gif),
                "png" => Ok(Self::ContactSheet),
                _ => Err(Error::unknown_variant(
                    "out",
                    format!("{} (extension .{ext})", path.display()),
                    Self::EXTENSIONS,
                )),
            },
        }
    }
}
