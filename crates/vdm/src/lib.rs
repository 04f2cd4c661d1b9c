//! # vdm — video diffusion models on Burn
//!
//! Text-to-video diffusion in Rust: schedulers that match diffusers, space-time UNets that load
//! diffusers checkpoints, and training-free long-video algorithms (FreeNoise, FreeInit, ...)
//! that work with any model implementing the [`core::Denoiser`] trait.
//!
//! This facade re-exports the five vdm crates:
//!
//! | module | crate | what |
//! |---|---|---|
//! | [`core`] | `vdm-core` | tensor layout, errors, seeded noise, the denoiser and temporal-hook traits |
//! | [`schedulers`] | `vdm-schedulers` | beta schedules, DDIM / DDPM / Euler / DPM-Solver++ / LCM |
//! | [`kernels`] | `vdm-kernels` | fused `f32` CPU kernels of the flex backend (used by `models` and `longvideo`) |
//! | [`models`] | `vdm-models` | model building blocks |
//! | [`longvideo`] | `vdm-longvideo` | long-video algorithms |
//!
//! and on top of them the product: [`pipeline`] (prompt in, video out, from a diffusers model
//! folder) and [`video`] (decoded frames). It picks a compute device from the enabled backend
//! feature ([`device`]).
//!
//! # Backends
//!
//! | feature | backend |
//! |---|---|
//! | `flex` (default) | pure-Rust CPU with SIMD and threads |
//! | `ndarray` | the ndarray CPU backend |
//! | `wgpu` | GPU through wgpu (Vulkan, Metal, DX12; Mesa lavapipe on CPU-only machines) |
//! | `cuda` | NVIDIA CUDA through CubeCL |
//!
//! # A sampling loop with your own model
//!
//! A downstream crate builds a scheduler from a diffusers `scheduler_config.json` and drives
//! its own model, here one that knows the clean video `x₀` exactly. With an exact noise
//! prediction, deterministic DDIM moves along a straight line in `(x₀, ε)` and, with `trailing`
//! spacing and `set_alpha_to_one`, lands exactly on `x₀`:
//!
//! ```
//! use vdm::core::{Conditioning, Denoiser, DenoiserInput, PredictionType, Result, Timesteps};
//! use vdm::core::noise::{draw, NoNoise, SeededNoise};
//! use vdm::schedulers::{from_config_json, prediction::Scales, Scheduler};
//! use vdm::burn::tensor::Tensor;
//!
//! /// Predicts the noise that separates its input from a known clean video.
//! struct KnowsTheAnswer {
//!     clean: Tensor<5>,
//!     alphas_cumprod: Vec<f32>,
//! }
//!
//! impl Denoiser for KnowsTheAnswer {
//!     fn prediction_type(&self) -> PredictionType {
//!         PredictionType::Epsilon
//!     }
//!     fn predict(&self, input: DenoiserInput<'_>) -> Result<Tensor<5>> {
//!         let t = input.timesteps.per_item(1)?[0] as usize;
//!         let s = Scales::from_alpha_cumprod(self.alphas_cumprod[t]);
//!         let eps = (input.latents - self.clean.clone().mul_scalar(s.alpha as f32))
//!             .div_scalar(s.sigma as f32);
//!         Ok(eps)
//!     }
//! }
//!
//! # fn main() -> Result<()> {
//! let config = r#"{
//!     "_class_name": "DDIMScheduler", "beta_schedule": "linear",
//!     "beta_start": 0.00085, "beta_end": 0.012, "clip_sample": false,
//!     "set_alpha_to_one": true, "timestep_spacing": "trailing"
//! }"#;
//! let mut scheduler = from_config_json(config)?;
//! scheduler.set_timesteps(25)?;
//!
//! let device = vdm::device();
//! let clean: Tensor<5> = draw(&mut SeededNoise::new(1), [1, 4, 4, 8, 8], &device)?;
//! let model = KnowsTheAnswer {
//!     clean: clean.clone(),
//!     alphas_cumprod: scheduler.noise_schedule().alphas_cumprod.clone(),
//! };
//!
//! let mut x = draw(&mut SeededNoise::new(2), [1, 4, 4, 8, 8], &device)?
//!     .mul_scalar(scheduler.init_noise_sigma() as f32);
//! for t in scheduler.timesteps().to_vec() {
//!     let x_in = scheduler.scale_model_input(x.clone(), t)?;
//!     let eps = model.predict(DenoiserInput::new(x_in, Timesteps::Shared(t), Conditioning::None))?;
//!     x = scheduler.step(eps, t, x, &mut NoNoise)?.prev_sample;
//! }
//! let error = (x - clean).abs().max().into_scalar::<f32>();
//! assert!(error < 1e-4, "{error}");
//! # Ok(())
//! # }
//! ```

#![warn(missing_docs)]
#![cfg_attr(docsrs, feature(doc_cfg))]

pub use burn;
pub use vdm_core as core;
pub use vdm_kernels as kernels;
pub use vdm_longvideo as longvideo;
pub use vdm_models as models;
pub use vdm_schedulers as schedulers;

pub use vdm_core::{Error, Result};

pub mod devices;
pub mod embedded;
pub mod pipeline;
#[cfg(feature = "remote")]
pub mod remote;
pub mod server_watch;
pub mod shapes;
pub mod training;
pub mod video;

mod backend;
pub use backend::{backend_name, device, probe_device, try_device};
