//! vdm's embedded text-to-video model: Moving Shapes, trained by vdm itself
//! (`examples/train.rs`; `docs/embedded-model.md`), shipped inside this crate so that
//! prompt-in, video-out works offline with no download.
//!
//! ```no_run
//! use vdm::pipeline::{Generation, TextToVideoPipeline};
//!
//! let pipe = TextToVideoPipeline::from_dir(vdm::embedded::moving_shapes_dir(), &vdm::device())?;
//! let video = pipe.generate(&Generation::new("a red circle moving right").seed(1))?;
//! video.write("circle.gif", &Default::default())?;
//! # Ok::<(), vdm::Error>(())
//! ```

use std::path::PathBuf;

/// The folder of the embedded Moving Shapes model (a diffusers-style `TextToVideoSDPipeline`
/// folder with a `Patchify` VAE): 32×32 RGB, 16 frames per training clip, captions such as
/// `"a red circle moving right"` (colours red, green, blue, yellow, purple; shapes circle,
/// square, triangle; directions left, right, up, down).
pub fn moving_shapes_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models/moving-shapes")
}
