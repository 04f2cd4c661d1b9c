//! # vdm-longvideo
//!
//! Training-free long-video generation for any video diffusion model that implements the
//! [`vdm_core::Denoiser`] trait and routes its temporal layers through
//! [`vdm_core::TemporalHook`]: FreeNoise noise rescheduling and window fusion, FreeInit, Gen-L-Video co-denoising,
//! FIFO-Diffusion, FreeLong, Text2Video-Zero, reconstruction guidance, hierarchical keyframes, Reuse and Diffuse,
//! correlated noise priors, and more.
//!
//! ```
//! use vdm_longvideo::freenoise::{context_windows, WeightingScheme};
//!
//! // 64 frames from a model trained on 16-frame clips: 13 overlapping windows.
//! let windows = context_windows(64, 16, 4).unwrap();
//! assert_eq!(windows.len(), 13);
//! assert_eq!(WeightingScheme::Pyramid.weights(16).iter().sum::<f32>(), 72.0);
//! ```

#![warn(missing_docs)]

pub mod co_denoising;
pub mod fifo;
pub mod freeinit;
pub mod freelong;
pub mod keyframes;

pub mod noise_prior;
pub mod reconstruction;
pub mod reuse_diffuse;
pub mod sampler;
pub mod smoother;
pub mod text2video_zero;

pub mod freenoise;
