//! # vdm-kernels
//!
//! Fused `f32` kernels for Burn's flex (CPU) backend: multi-head attention straight from the
//! projection layouts (plus a query-per-lane kernel for short sequences with small heads),
//! the GEGLU gate, LayerNorm and GroupNorm (+ SiLU) in place, im2col and Winograd
//! `F(2×2, 3×3)` convolutions, nearest-neighbour upsampling, the frame-shift sum of
//! ModelScope's temporal convolution, the token projections of channels-first images and frame
//! layouts, and the frame gather / weighted accumulation of window fusion.
//!
//! Why: flex runs these as chains of single-threaded scalar element-wise ops (libm `expf` /
//! `erff`), each allocating a fresh activation-sized buffer, and its attention packs small GEMM
//! tiles per key block. These kernels do one or two passes over the data instead, vectorise
//! (the hot loops are compiled for AVX-512 and for AVX2 + FMA, selected at run time) and use
//! every core of rayon's global pool (the one flex and gemm use; `RAYON_NUM_THREADS` sets its
//! size). With vdm-core's `flex` feature (switched on by the `vdm` facade) they read flex
//! tensors in place ([`Host`]): weights and shared activations are not copied. Per-thread
//! buffers are kept between calls.
//!
//! Callers run them only when [`enabled`]: tensors on the flex device, `f32`, no autodiff, and
//! the environment variable `VDM_NO_CPU_KERNELS` unset (or `0`). Every caller keeps its plain
//! Burn path for every other case (GPU backends, `f16`, training), which is also the reference
//! the tests compare against. Results agree with the Burn path to float rounding (≈ 1e-6):
//! `exp` is a Cephes-style polynomial (≈ 1 ulp), `erf` the Abramowitz–Stegun 7.1.26 form
//! (|error| ≤ 1.5e-7).
//!
//! # The layer and its rule
//!
//! This is the kernel layer of vdm: it knows slices, shapes, host views of tensors
//! (`Tensor`, `TensorData`, `Device`, `DType`) and threads, never Burn modules (`burn::nn`)
//! and never vdm model types. Its callers unpack their modules into tensors and plain numbers:
//! `vdm-models` through its glue from `burn::nn` modules (its private `cpu` module, and the
//! fused `ResnetBlock2D` and `FeedForward` beside those blocks), `vdm-longvideo` for
//! FreeNoise's window fusion ([`frames`]), `vdm-schedulers` for one-pass steps
//! ([`pointwise`]). It depends on no vdm crate but `vdm-core`.
//!
//! One module per kernel family:
//!
//! - [`threads`](mod@threads): [`enabled`], the thread pool ([`threads()`], [`parallel`]) and
//!   [`SharedOut`];
//! - [`host`](mod@host): host views of tensors ([`Host`], [`host()`], [`f32s`], [`tensor`], [`filled`]);
//! - `simd` (private): instruction-set dispatch ([`Isa`], `dispatch!`), the `Vector`
//!   abstraction and the shared scalar math (`madd`, `exp`);
//! - [`activation`]: SiLU, GELU and the GEGLU gate rows, GELU / quick GELU in place;
//! - [`linear`]: GEMM views ([`Mat`], [`MatMut`]), [`gemm_into`], [`LinearHost`],
//!   [`InitRows`] and the channels-first token projections;
//! - [`frame_tokens`]: [`FrameTokens`], temporal-transformer projections on frame layouts;
//! - [`norm`]: LayerNorm and GroupNorm (+ SiLU);
//! - [`conv`]: [`ConvHost`], im2col convolutions, the temporal convolution and the
//!   per-thread scratch buffers, with `conv/winograd.rs` (Winograd `F(2×2, 3×3)`);
//! - [`attention`](mod@attention): [`attention()`] from [`HeadLayout`]s, with
//!   `attention/query_lanes.rs` (one SIMD lane per query for short sequences with small
//!   heads);
//! - [`resample`]: nearest-neighbour resizing ([`upsample_nearest`], PyTorch's index map
//!   [`nearest_indices`]);
//! - [`frames`]: frame gather / weighted accumulation over `[tokens, frames, channels]`;
//! - [`pointwise`]: [`map_pair`], two outputs from two arrays in one pass (scheduler steps).

#![warn(missing_docs)]

#[macro_use]
mod simd;

pub mod activation;
pub mod attention;
pub mod conv;
pub mod frame_tokens;
pub mod frames;
pub mod host;
pub mod linear;
pub mod norm;
pub mod pointwise;
pub mod resample;
pub mod threads;

pub use activation::{Activation, activate_in_place, geglu_rows};
pub use attention::{AttentionShape, HeadLayout, attention};
pub use conv::{
    ConvHost, Scratch, TemporalConvStage, add_channel_bias, conv2d, conv2d_output, sized,
    temporal_conv, with_scratch,
};
pub use frame_tokens::FrameTokens;
pub use host::{Host, f32s, f32s_mut, filled, host, tensor};
pub use linear::{
    InitRows, LinearHost, Mat, MatMut, gemm_into, linear_from_channels_first,
    linear_to_channels_first,
};
pub use norm::{GroupNormHost, LayerNormHost, group_norm, layer_norm};
pub use pointwise::map_pair;
pub use resample::{nearest_indices, upsample_nearest};
pub use simd::{Isa, isa};
pub use threads::{SharedOut, enabled, gemm_threads, parallel, threads};
