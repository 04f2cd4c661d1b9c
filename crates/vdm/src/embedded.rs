//! vdm's embedded text-to-video model: Moving Shapes, trained by vdm itself
//! (`examples/train.rs`; `docs/embedded-model.md`), shipped inside this crate so that
//! prompt-in, video-out works offline with no download.
//!
//! ```no_run
//! use vdm::pipeline::TextToVideoPipeline;
//!
//! let pipe = TextToVideoPipeline::from_dir(vdm::embedded::moving_shapes_dir(), &vdm::device())?;
//! let video = pipe.generate(&vdm::embedded::generation("a red circle moving right").seed(1))?;
//! video.write("circle.gif", &Default::default())?;
//! # Ok::<(), vdm::Error>(())
//! ```

use std::path::PathBuf;

use crate::pipeline::Generation;

/// Denoising steps that suit the embedded model (with [`GUIDANCE_SCALE`]). Measured on forty
/// 16-frame videos (`quality --frames 16 --seeds 8 --prompts 5 --methods direct --steps 50
/// --guidance 2`): validity 0.82, colour 0.70, consistency 0.85; the text-to-video defaults of
/// [`Generation::new`] (25 steps, guidance 7.5) suit large models, and on the previous
/// embedded model they scored 0.19, 0.16 and 0.26 (`docs/embedded-model.md`, "Sampling
/// settings").
pub const STEPS: usize = 50;

/// Classifier-free guidance scale that suits the embedded model (see [`STEPS`]). Higher
/// scales push this small model's samples off the data: at 4, validity falls to 0.48.
pub const GUIDANCE_SCALE: f64 = 2.0;

/// [`Generation::new`] with the embedded model's sampling settings ([`STEPS`],
/// [`GUIDANCE_SCALE`]); every other field keeps its default.
pub fn generation(prompt: impl Into<String>) -> Generation {
    Generation::new(prompt)
        .steps(STEPS)
        .guidance_scale(GUIDANCE_SCALE)
}

/// The folder of the embedded Moving Shapes model (a diffusers-style `TextToVideoSDPipeline`
/// folder with a `Patchify` VAE): 32×32 RGB, 16 frames per training clip, captions such as
/// `"a red circle moving right"` (colours red, green, blue, yellow, purple; shapes circle,
/// square, triangle; directions left, right, up, down).
pub fn moving_shapes_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models/moving-shapes")
}
