//! FreeNoise (Qiu et al. 2024, "FreeNoise: Tuning-Free Longer Video Diffusion via Noise
//! Rescheduling", ICLR 2024, arXiv:2310.15169): longer videos from a model trained on short
//! clips, without tuning.
//!
//! Three parts, usable separately:
//!
//! 1. **Noise rescheduling** ([`NoiseRescheduling`], an
//!    [`InitialNoise`](crate::noise_prior::InitialNoise)): the first `L` frames get fresh
//!    noise, every later block of `S` frames a local permutation of the block `L` frames
//!    earlier (diffusers' `_prepare_latents_free_noise`, `pipelines/free_noise_utils.py`).
//! 2. **Window fusion** ([`FreeNoiseHook`], a [`TemporalHook`](vdm_core::TemporalHook)): every
//!    temporal layer runs on overlapping windows of `L` frames with window-relative positions
//!    and averages them with weights (diffusers' `FreeNoiseTransformerBlock`,
//!    `models/attention.py`; VideoCrafter's per-operator variant as
//!    [`FusionVariant::PerStage`]). Windows and weights are in [`WindowPlan`].
//! 3. **Multi-prompt** ([`interpolate_prompts`], [`MotionInjection`],
//!    [`MultiPromptConditioning`]): prompt travel between keyframes and the motion-injection
//!    schedule.
//!
//! # Adopting FreeNoise in a downstream model
//!
//! A model gains FreeNoise by handing the frame-mixing stages of its temporal layers to the
//! hook it receives in [`DenoiserInput::temporal`](vdm_core::DenoiserInput) instead of running
//! them itself. Nothing FreeNoise-specific is needed in the model:
//!
//! ```
//! use burn::tensor::{activation::softmax, Device, Tensor};
//! use vdm_core::layout::{frame_tokens_to_video, video_to_frame_tokens};
//! use vdm_core::temporal::{FrameWindow, TemporalSite, TemporalStages};
//! use vdm_core::{Conditioning, Denoiser, DenoiserInput, PredictionType, Result, Timesteps};
//! use vdm_longvideo::freenoise::{FreeNoiseConfig, FreeNoiseHook};
//!
//! /// A toy video model: one temporal self-attention with a 16-row positional table.
//! struct ToyModel {
//!     pe: Tensor<2>, // [16, C]
//! }
//!
//! /// The frame-mixing part of its temporal layer: `x + attn(x + pe[positions])`.
//! struct TemporalAttention<'a>(&'a ToyModel);
//!
//! impl TemporalStages for TemporalAttention<'_> {
//!     fn num_stages(&self) -> usize {
//!         1
//!     }
//!     fn run_stage(&self, _stage: usize, x: Tensor<3>, window: &FrameWindow) -> Result<Tensor<3>> {
//!         let [n, f, c] = x.dims();
//!         let pe = self.0.pe.clone().slice([window.positions.clone(), 0..c]);
//!         let h = x.clone() + pe.unsqueeze::<3>().expand([n, f, c]);
//!         let scores = h.clone().matmul(h.clone().swap_dims(1, 2)).div_scalar((c as f32).sqrt());
//!         Ok(x + softmax(scores, 2).matmul(h))
//!     }
//! }
//!
//! impl Denoiser for ToyModel {
//!     fn prediction_type(&self) -> PredictionType {
//!         PredictionType::Epsilon
//!     }
//!     fn predict(&self, input: DenoiserInput<'_>) -> Result<Tensor<5>> {
//!         let [b, _, f, h, w] = input.shape()?.dims();
//!         let tokens = video_to_frame_tokens(input.latents); // [B·H·W, F, C]
//!         let site = TemporalSite::new("temporal.0", f).with_max_positions(16);
//!         // The only line that matters: the hook decides how frames are grouped.
//!         let tokens = input.temporal.apply(&site, tokens, &TemporalAttention(self))?;
//!         Ok(frame_tokens_to_video(tokens, b, h, w))
//!     }
//! }
//!
//! let device = Device::flex();
//! let model = ToyModel { pe: Tensor::random([16, 4], burn::tensor::Distribution::Default, &device) };
//! let x = Tensor::<5>::ones([1, 4, 40, 2, 2], &device); // 40 frames > 16 positions
//! let plain = DenoiserInput::new(x.clone(), Timesteps::Shared(999.0), Conditioning::None);
//! assert!(model.predict(plain).is_err()); // positions 16..40 do not exist
//!
//! let freenoise = FreeNoiseHook::new(FreeNoiseConfig::new(16, 4)).unwrap();
//! let input = DenoiserInput::new(x, Timesteps::Shared(999.0), Conditioning::None)
//!     .with_temporal(&freenoise);
//! assert_eq!(model.predict(input).unwrap().dims(), [1, 4, 40, 2, 2]);
//! ```
//!
//! # Deviations from diffusers (all documented where they occur)
//!
//! - Ragged last window: the normaliser uses per-frame weights (diffusers' bug B3 adds one
//!   scalar weight); [`FreeNoiseConfig::compat_diffusers_tail_bug`] reproduces diffusers.
//! - `delayed_reverse_sawtooth` with odd `L` has `L` weights (diffusers returns `L + 1` and
//!   crashes, bug B2).
//! - `repeat_context` tiles the first `L` frames (diffusers returns random noise, bug B1).
//! - `F < L` falls back to plain inference in the hook (diffusers: `IndexError`, bug B7); the
//!   noise rescheduling rejects it with a typed error.
//! - Windows may be stacked into one call per stage ([`WindowBatching::Stacked`]); the default
//!   is one call per window, as diffusers.

pub mod hook;
pub mod noise;
pub mod prompts;
pub mod windows;

pub use hook::{FreeNoiseConfig, FreeNoiseHook, FusionVariant, WindowBatching};
pub use noise::{NoiseRescheduling, NoiseType, RescheduledNoise};
pub use prompts::{
    BlockKind, BlockSet, Lerp, MotionInjection, MultiPromptConditioning, PromptContext,
    PromptInterpolation, interpolate_prompts, travelling_conditioning,
    videocrafter_two_prompt_keyframes,
};
pub use windows::{WeightingScheme, WindowPlan, context_windows};
