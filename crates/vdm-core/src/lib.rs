//! # vdm-core
//!
//! The shared vocabulary of [vdm](https://docs.rs/vdm), a library of video diffusion models
//! and training-free long-video algorithms on [Burn](https://burn.dev):
//!
//! - [`layout`]: the video tensor layout `[B, C, F, H, W]` (as in diffusers) and the reshapes
//!   between it and the spatial (`[B·F, C, H, W]`) and temporal (`[B·H·W, F, C]`) views;
//! - [`Error`]: one typed error that names the offending field, tensor or weight;
//! - [`finite`]: the cheap NaN / infinity checks of the samplers and pipelines;
//! - [`noise`]: seeded host-side noise that is identical on every backend, and injectable
//!   recorded noise;
//! - [`Denoiser`]: what a sampler needs from a model (per-item or per-frame timesteps,
//!   per-frame conditioning, its prediction type);
//! - [`temporal`]: the hook through which long-video strategies reach a model's temporal
//!   layers;
//! - [`shard`]: one denoiser spread over several devices (local or remote), split along the
//!   batch.
//!
//! Any Burn model that implements [`Denoiser`] and routes its temporal layers through
//! [`temporal::TemporalHook`] gains every sampler and long-video algorithm of vdm.
//!
//! ```
//! use burn::tensor::{Device, Tensor};
//! use vdm_core::layout::{frames_to_batch, batch_to_frames};
//! use vdm_core::noise::{draw, SeededNoise};
//!
//! let device = Device::flex();
//! let mut noise = SeededNoise::new(0);
//! let video: Tensor<5> = draw(&mut noise, [1, 4, 8, 16, 16], &device).unwrap();
//! let frames = frames_to_batch(video.clone());          // [8, 4, 16, 16]
//! let back = batch_to_frames(frames, 8);                // [1, 4, 8, 16, 16]
//! back.into_data().assert_eq(&video.into_data(), true);
//! ```

#![warn(missing_docs)]

pub mod cross_frame;
pub mod denoiser;
pub mod error;
pub mod finite;
pub mod host;
pub mod layout;
pub mod noise;
pub mod prediction;
pub mod readback;
pub mod shard;
pub mod temporal;

pub use cross_frame::{CrossFrame, CrossFrameHook, OwnFrame};
pub use denoiser::{
    BlockConditioning, BlockKind, Conditioning, Denoiser, DenoiserInput, Timesteps,
};
pub use error::{Error, Result};
pub use layout::VideoShape;
pub use noise::{NoiseSource, SeededNoise};
pub use prediction::PredictionType;
pub use shard::{Shard, ShardWatch, ShardedDenoiser};
pub use temporal::{AllFrames, AttentionStage, TemporalHook};
