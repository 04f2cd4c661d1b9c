//! Fused `f32` kernels for Burn's flex (CPU) backend: multi-head attention straight from the
//! projection layouts (plus a query-per-lane kernel for short sequences with small heads),
//! the GEGLU gate, LayerNorm and GroupNorm (+ SiLU) in place, im2col and Winograd
//! `F(2×2, 3×3)` convolutions, the frame-shift sum of ModelScope's temporal convolution, and
//! the token projections of channels-first images and frame layouts.
//!
//! Why: flex runs these as chains of single-threaded scalar element-wise ops (libm `expf` /
//! `erff`), each allocating a fresh activation-sized buffer, and its attention packs small GEMM
//! tiles per key block. These kernels do one or two passes over the data instead, vectorise
//! (the hot loops are compiled for AVX-512 and for AVX2 + FMA, selected at run time) and use
//! every core of rayon's global pool (the one flex and gemm use; `RAYON_NUM_THREADS` sets its
//! size). With the `flex` feature they read flex tensors in place ([`Host`](host::Host)):
//! weights and shared activations are not copied. Per-thread buffers are kept between calls.
//!
//! They run only when [`enabled`]: tensors on the flex device, `f32`, no autodiff, and the
//! environment variable `VDM_NO_CPU_KERNELS` unset (or `0`). Every caller keeps its plain Burn
//! path for every other case (GPU backends, `f16`, training), which is also the reference the
//! tests compare against. Results agree with the Burn path to float rounding (≈ 1e-6): `exp`
//! is a Cephes-style polynomial (≈ 1 ulp), `erf` the Abramowitz–Stegun 7.1.26 form
//! (|error| ≤ 1.5e-7).
//!
//! This is the kernel layer: it imports no model module. The glue that runs a whole model
//! block on the kernels lives beside the block (`resnet/cpu_fused.rs` for `ResnetBlock2D`,
//! `attention/cpu_fused.rs` for `FeedForward`). One file per kernel family:
//!
//! - `threads.rs`: [`enabled`], the thread pool ([`threads`], `parallel`) and `SharedOut`;
//! - `host.rs`: host views of tensors ([`Host`](host::Host), [`host`], [`f32s`], [`tensor`],
//!   [`filled`]);
//! - `simd.rs`: instruction-set dispatch (`Isa`, `dispatch!`), the `Vector` abstraction and
//!   the shared scalar math (`madd`, `exp`);
//! - `activation.rs`: SiLU, GELU and the GEGLU gate rows;
//! - `linear.rs`: GEMM views ([`Mat`], [`MatMut`]), [`LinearHost`], [`InitRows`] and the
//!   channels-first token projections;
//! - `frame_tokens.rs`: [`FrameTokens`], temporal-transformer projections on frame layouts;
//! - `norm.rs`: LayerNorm and GroupNorm (+ SiLU);
//! - `conv.rs`: [`ConvHost`], im2col convolutions, the temporal convolution and the
//!   per-thread scratch buffers, with `conv/winograd.rs` (Winograd `F(2×2, 3×3)`);
//! - `attention.rs`: [`attention`] from [`HeadLayout`]s, with `attention/query_lanes.rs`
//!   (one SIMD lane per query for short sequences with small heads).

#[macro_use]
mod simd;

mod activation;
mod attention;
mod conv;
mod frame_tokens;
mod host;
mod linear;
mod norm;
mod threads;

pub(crate) use activation::geglu_rows;
pub(crate) use attention::{AttentionShape, HeadLayout, attention};
pub(crate) use conv::{
    ConvHost, add_channel_bias, conv2d, conv2d_output, sized, temporal_conv, with_scratch,
};
pub(crate) use frame_tokens::FrameTokens;
pub(crate) use host::{f32s, filled, host, tensor};
pub(crate) use linear::{
    InitRows, LinearHost, Mat, MatMut, linear_from_channels_first, linear_to_channels_first,
};
pub(crate) use norm::{LayerNormHost, group_norm, layer_norm};
pub(crate) use simd::{Isa, isa};
#[cfg(test)]
pub(crate) use threads::tests::FORCE_BURN;
pub(crate) use threads::{SharedOut, enabled, gemm_threads, parallel, threads};
