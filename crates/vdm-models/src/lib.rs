//! # vdm-models
//!
//! Video diffusion model definitions for [Burn](https://burn.dev) that load diffusers-format
//! checkpoints unchanged and compute the same numbers: the ModelScope space-time
//! `UNet3DConditionModel`, AnimateDiff's `UNetMotionModel`, the `AutoencoderKL`, and their
//! building blocks. Models implement [`vdm_core::Denoiser`] and route their temporal layers
//! through [`vdm_core::TemporalHook`], so every long-video algorithm of `vdm-longvideo` reaches
//! them without model changes.
//!
//! ```
//! use burn::tensor::Device;
//! use vdm_models::embeddings::TimestepProjection;
//!
//! // The sinusoidal timestep projection every SD-family UNet starts with.
//! let emb = TimestepProjection::unet(320).embed(&[999.0], &Device::flex()).unwrap();
//! assert_eq!(emb.dims(), [1, 320]);
//! ```

#![warn(missing_docs)]

pub mod alpha_blender;
pub mod attention;
mod checks;
pub mod chunking;
pub mod clip;
mod cpu;
#[cfg(test)]
mod cpu_parity;
pub mod embeddings;
pub mod keymap;
pub mod loading;
pub mod patchify;
pub mod pseudo3d;
pub mod resnet;
pub mod temporal;
pub mod transformer_2d;
pub mod unet3d;
pub mod unet_motion;
pub mod vae;
