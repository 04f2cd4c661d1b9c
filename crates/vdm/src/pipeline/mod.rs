//! Prompt in, video out: text-to-video pipelines over diffusers model folders, loaded unchanged.
//!
//! [`TextToVideoPipeline::from_dir`] reads a `TextToVideoSDPipeline` (ModelScope, ZeroScope)
//! or `AnimateDiffPipeline` folder (`model_index.json`, `scheduler/`, `text_encoder/`,
//! `tokenizer/`, `unet/`, `vae/`, and for AnimateDiff a merged motion `unet/` or an SD 1.x
//! `unet/` with `motion_adapter/`); [`Generation`] holds what to make (prompt, size, frames,
//! steps, guidance, seed, scheduler, long-video methods); the result is a [`Video`](crate::video::Video).
//!
//! With the same folder, initial latents and settings, the frames equal diffusers' within
//! 2e-4 (`tests/pipelines.rs`).

mod components;
pub mod folder;
pub mod generation;
pub mod text_to_video;

pub use folder::{ModelIndex, PipelineClass, PipelineFolder};
pub use generation::{Generation, LongVideo, SchedulerChoice};
pub use text_to_video::{
    DEFAULT_DECODE_CHUNK, FrameDecoder, PipelineProgress, TextToVideoPipeline, VideoUNet,
};
