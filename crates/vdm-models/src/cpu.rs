//! Glue from `burn::nn` modules to the fused `f32` CPU kernels of the flex backend.
//!
//! The kernels live in the `vdm-kernels` crate, which knows slices, shapes, host views of
//! tensors and threads but never Burn modules. This module only unpacks the modules the model
//! blocks use (`Linear`, `LayerNorm`, `GroupNorm`, `Conv2d`, `Conv3d`) into the tensors and
//! plain numbers the kernels take ([`linear_host`], [`layer_norm_host`], [`group_norm_host`],
//! [`conv_host`], and module-level forms of the tensor kernels), re-exports the Burn-free
//! kernel items the blocks call, and keeps [`enabled`] with the test builds' `FORCE_BURN`
//! switch to the plain Burn path. The glue that runs a whole model block on the kernels lives
//! beside the block, as its child module (`resnet/cpu_fused.rs` for `ResnetBlock2D`,
//! `attention/feed_forward/cpu_fused.rs` for `FeedForward`).

use burn::nn::conv::{Conv2d, Conv3d};
use burn::nn::{GroupNorm, LayerNorm, Linear, PaddingConfig2d};
use burn::tensor::{DType, Device, Tensor};

pub(crate) use vdm_kernels::{
    Activation, AttentionShape, ConvHost, FrameTokens, GroupNormHost, HeadLayout, InitRows,
    LayerNormHost, LinearHost, Mat, MatMut, SharedOut, TemporalConvStage, activate_in_place,
    add_channel_bias, attention, f32s, filled, geglu_rows, gemm_threads, host, nearest_indices,
    parallel, sized, tensor, threads, upsample_nearest, with_scratch,
};

/// Whether the fused kernels apply to tensors of `dtype` on `device`
/// ([`vdm_kernels::enabled`]; in test builds also not while [`FORCE_BURN`] is set).
pub(crate) fn enabled(device: &Device, dtype: DType) -> bool {
    #[cfg(test)]
    if FORCE_BURN.with(|f| f.get()) {
        return false;
    }
    vdm_kernels::enabled(device, dtype)
}

#[cfg(test)]
thread_local! {
    /// Makes [`enabled`] answer `false` on this thread (the plain Burn reference path).
    pub(crate) static FORCE_BURN: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Host copies of `lin`'s weight `[d_in, d_out]` and bias.
pub(crate) fn linear_host(lin: &Linear) -> LinearHost {
    LinearHost::new(lin.weight.val(), lin.bias.as_ref().map(|b| b.val()))
}

/// `[residual +] lin(src)` for `rows` rows of `src` (`d_in` values each) into a new host
/// buffer of `rows × d_out`, the GEMM on every thread.
pub(crate) fn linear_rows(
    lin: &Linear,
    src: &[f32],
    rows: usize,
    residual: Option<InitRows>,
) -> Vec<f32> {
    let w = linear_host(lin);
    let fill = |buf| {
        // SAFETY: `buf` holds rows·d_out values; `src` rows·d_in; the residual (the caller's)
        // rows·d_out.
        unsafe {
            w.apply(
                rows,
                Mat::rows(src, w.d_in),
                MatMut::rows(buf, w.d_out),
                residual,
                threads(),
            )
        }
    };
    // SAFETY: `fill` writes every element of the buffer.
    unsafe { filled(rows * w.d_out, fill) }
}

/// `[lins[0] | lins[1] | …](src)` for `rows` rows of `src`, written side by side into one
/// host buffer of `rows × Σ d_out` (the packed layout the CPU attention kernel reads).
pub(crate) fn project_host(lins: &[&Linear], src: &[f32], rows: usize) -> Vec<f32> {
    let hosts: Vec<LinearHost> = lins.iter().map(|l| linear_host(l)).collect();
    let width: usize = hosts.iter().map(|h| h.d_out).sum();
    let threads = threads();
    {
        let fill = |buf| {
            let mut col = 0;
            for w in &hosts {
                // SAFETY: `buf` holds rows·width values; column block col..col + d_out of every
                // row is written once; `src` holds rows·d_in values.
                unsafe {
                    w.apply(
                        rows,
                        Mat::rows(src, w.d_in),
                        MatMut::rows(buf, width).offset(col),
                        None,
                        threads,
                    )
                };
                col += w.d_out;
            }
        };
        // SAFETY: `fill` writes every element of the buffer.
        unsafe { filled(rows * width, fill) }
    }
}

/// Host copies of `norm`'s parameters; `eps`: its epsilon (Burn keeps it private; the owner
/// records it).
pub(crate) fn layer_norm_host(norm: &LayerNorm, eps: f64) -> LayerNormHost {
    LayerNormHost::new(norm.gamma.val(), norm.beta.as_ref().map(|b| b.val()), eps)
}

/// Host copies of `norm`'s parameters, groups and epsilon.
pub(crate) fn group_norm_host(norm: &GroupNorm) -> GroupNormHost {
    GroupNormHost::new(
        norm.gamma.as_ref().map(|g| g.val()),
        norm.beta.as_ref().map(|b| b.val()),
        norm.num_groups,
        norm.epsilon,
    )
}

/// The symmetric padding of a convolution the kernels cover (groups 1, dilation 1).
fn conv_padding(conv: &Conv2d) -> Option<[usize; 2]> {
    if conv.groups != 1 || conv.dilation != [1, 1] {
        return None;
    }
    match conv.padding {
        PaddingConfig2d::Valid => Some([0, 0]),
        PaddingConfig2d::Explicit(t, l, b, r) if t == b && l == r => Some([t, l]),
        _ => None,
    }
}

/// Output size of `conv` on `[N, C, H, W]` if the kernels cover it (and `C` matches).
pub(crate) fn conv2d_output(conv: &Conv2d, dims: [usize; 4]) -> Option<[usize; 2]> {
    let pad = conv_padding(conv)?;
    vdm_kernels::conv2d_output(conv.weight.dims(), conv.stride, pad, dims)
}

/// Host copy of `conv` (check [`conv2d_output`] first).
pub(crate) fn conv_host(conv: &Conv2d) -> ConvHost {
    let pad = conv_padding(conv).expect("checked by conv2d_output");
    ConvHost::new(
        conv.weight.val(),
        conv.bias.as_ref().map(|b| b.val()),
        conv.stride,
        pad,
    )
}

/// Burn's `Conv2d` on `x` `[N, C, H, W]` ([`vdm_kernels::conv2d`]). Only call when
/// [`enabled`] and [`conv2d_output`] is `Some`.
pub(crate) fn conv2d(conv: &Conv2d, x: Tensor<4>) -> Tensor<4> {
    vdm_kernels::conv2d(&conv_host(conv), x)
}

/// Burn's `LayerNorm` (epsilon `eps`) over the last dimension of `x`
/// ([`vdm_kernels::layer_norm`]). Only call when [`enabled`].
pub(crate) fn layer_norm<const D: usize>(norm: &LayerNorm, eps: f64, x: Tensor<D>) -> Tensor<D> {
    vdm_kernels::layer_norm(&layer_norm_host(norm, eps), x)
}

/// Burn's `GroupNorm` on `x` (`[N, C, …]`), optionally followed by SiLU, with the statistics
/// of each group pooled over `frames` consecutive items ([`vdm_kernels::group_norm`]). Only
/// call when [`enabled`].
pub(crate) fn group_norm<const D: usize>(
    norm: &GroupNorm,
    x: Tensor<D>,
    frames: usize,
    silu: bool,
) -> Tensor<D> {
    vdm_kernels::group_norm(&group_norm_host(norm), x, frames, silu)
}

/// Token projection of channels-first images `[N, C, H, W] → [N, H·W, d_out]`
/// ([`vdm_kernels::linear_from_channels_first`]). Only call when [`enabled`].
pub(crate) fn linear_from_channels_first(lin: &Linear, x: Tensor<4>) -> Tensor<3> {
    vdm_kernels::linear_from_channels_first(&linear_host(lin), x)
}

/// `residual + lin(tokens)` back in the channels-first layout
/// ([`vdm_kernels::linear_to_channels_first`]). Only call when [`enabled`].
pub(crate) fn linear_to_channels_first(
    lin: &Linear,
    tokens: Tensor<3>,
    residual: Tensor<4>,
) -> Tensor<4> {
    vdm_kernels::linear_to_channels_first(&linear_host(lin), tokens, residual)
}

/// ModelScope's `TemporalConvLayer` on frames folded into the batch
/// ([`vdm_kernels::temporal_conv`]). Only call when [`enabled`].
pub(crate) fn temporal_conv(
    stages: [(&GroupNorm, &Conv3d); 4],
    x: Tensor<4>,
    frames: usize,
) -> Tensor<4> {
    let stages = stages.map(|(norm, conv)| TemporalConvStage {
        norm: group_norm_host(norm),
        weight: conv.weight.val(),
        bias: conv.bias.as_ref().map(|b| b.val()),
    });
    vdm_kernels::temporal_conv(stages, x, frames)
}

/// [`FrameTokens`] of a temporal transformer's `proj_in` and `proj_out` on the frame layout
/// (`normed`, `residual`: `[B·F, C, H, W]`). Only call when [`enabled`].
pub(crate) fn frame_tokens(
    proj_in: &Linear,
    proj_out: &Linear,
    normed: Tensor<4>,
    residual: Tensor<4>,
    frames: usize,
) -> FrameTokens {
    FrameTokens::new(
        linear_host(proj_in),
        linear_host(proj_out),
        normed,
        residual,
        frames,
    )
}
