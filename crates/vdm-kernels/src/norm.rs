//! LayerNorm over the last dimension ([`LayerNormHost`], [`layer_norm`]) and GroupNorm,
//! optionally fused with the SiLU that follows it, in place ([`GroupNormHost`],
//! [`group_norm`]); GroupNorm statistics can pool the frames of a video (diffusers' GroupNorm
//! on `[B, C, F, H, W]` with the frames folded into the batch).
//!
//! Why: flex runs a norm as a chain of single-threaded element-wise ops, each allocating an
//! activation-sized buffer. These do one statistics pass and one normalising pass per row or
//! group, vectorised (sums in `W` lanes, `f64` totals), over all cores.

use burn::tensor::{Tensor, TensorData};

use super::activation::silu;
use super::host::{Host, f32s, f32s_mut, filled, host, tensor};
use super::simd::madd;
use super::threads::{SharedOut, parallel};

#[inline(always)]
fn layer_norm_rows_impl<const W: usize, const FMA: bool>(
    x: &[f32],
    out: *mut f32,
    dim: usize,
    gamma: Option<&[f32]>,
    beta: Option<&[f32]>,
    eps: f32,
) {
    for (i, row) in x.chunks_exact(dim).enumerate() {
        let (sum, _) = lane_sums::<W>(row, 0.0);
        let mean = (sum / dim as f64) as f32;
        let (_, sq) = lane_sums::<W>(row, mean);
        let rstd = (1.0 / (sq / dim as f64 + eps as f64).sqrt()) as f32;
        // SAFETY: `out` holds as many rows as `x`.
        let o = unsafe { std::slice::from_raw_parts_mut(out.add(i * dim), dim) };
        match (gamma, beta) {
            (Some(g), Some(b)) => {
                for (((o, &x), &g), &b) in o.iter_mut().zip(row).zip(g).zip(b) {
                    *o = madd::<FMA>((x - mean) * rstd, g, b);
                }
            }
            _ => {
                for (j, (o, &x)) in o.iter_mut().zip(row).enumerate() {
                    let y = (x - mean) * rstd;
                    *o = y * gamma.map_or(1.0, |g| g[j]) + beta.map_or(0.0, |b| b[j]);
                }
            }
        }
    }
}
dispatch!(fn layer_norm_rows(x: &[f32], out: *mut f32, dim: usize, gamma: Option<&[f32]>, beta: Option<&[f32]>, eps: f32) => layer_norm_rows_impl);

/// Host copies of a LayerNorm's parameters (over the last dimension).
pub struct LayerNormHost {
    gamma: Host,
    beta: Option<Host>,
    eps: f32,
}

impl LayerNormHost {
    /// `gamma`, `beta`: `[dim]`; `eps`: the norm's epsilon.
    pub fn new(gamma: Tensor<1>, beta: Option<Tensor<1>>, eps: f64) -> Self {
        Self {
            gamma: host(gamma),
            beta: beta.map(host),
            eps: eps as f32,
        }
    }

    /// Normalises the rows of `x` (`dim` values each, `dim` parameters) into `out`.
    ///
    /// # Safety
    /// `out` holds as many writable values as `x`, written by no other thread meanwhile.
    pub unsafe fn apply(&self, x: &[f32], out: *mut f32, dim: usize) {
        layer_norm_rows(
            x,
            out,
            dim,
            Some(f32s(&self.gamma)),
            self.beta.as_ref().map(f32s),
            self.eps,
        );
    }
}

/// LayerNorm `norm` over the last dimension of `x` (Burn's `LayerNorm`). Only call when
/// [`enabled`](crate::enabled).
pub fn layer_norm<const D: usize>(norm: &LayerNormHost, x: Tensor<D>) -> Tensor<D> {
    let dims = x.dims();
    let device = x.device();
    let dim = dims[D - 1];
    let xd = host(x);
    let xs = f32s(&xd);
    let rows = xs.len() / dim;
    let out = {
        let fill = |ptr| {
            let ptr = SharedOut(ptr);
            parallel(rows, 10 * xs.len(), |r| {
                // SAFETY: the rows `r` of the output (as many values as these input rows) belong
                // to this work item.
                unsafe { norm.apply(&xs[r.start * dim..r.end * dim], ptr.at(r.start * dim), dim) };
            });
        };
        // SAFETY: `fill` writes every element of the buffer.
        unsafe { filled(xs.len(), fill) }
    };
    tensor(TensorData::new(out, dims), &device)
}

// ---------------------------------------------------------------------------------------------
// GroupNorm (+ SiLU).
// ---------------------------------------------------------------------------------------------

/// Sum and sum of squared deviations from `mean` of `x`, in `W` lanes.
#[inline(always)]
fn lane_sums<const W: usize>(x: &[f32], mean: f32) -> (f64, f64) {
    let mut s = [0.0f32; W];
    let mut q = [0.0f32; W];
    let chunks = x.chunks_exact(W);
    let tail = chunks.remainder();
    for c in chunks {
        for l in 0..W {
            let d = c[l] - mean;
            s[l] += d;
            q[l] += d * d;
        }
    }
    let mut sum: f64 = s.iter().map(|&v| v as f64).sum();
    let mut sq: f64 = q.iter().map(|&v| v as f64).sum();
    for &v in tail {
        let d = (v - mean) as f64;
        sum += d;
        sq += d * d;
    }
    (sum, sq)
}

/// Layout and parameters of a GroupNorm over `[videos · frames, C, S]` whose statistics pool
/// the `frames` of each video.
pub(crate) struct GroupNormArgs<'a> {
    pub videos: usize,
    pub frames: usize,
    pub channels: usize,
    pub spatial: usize,
    pub groups: usize,
    pub gamma: Option<&'a [f32]>,
    pub beta: Option<&'a [f32]>,
    pub eps: f64,
    pub silu: bool,
}

#[inline(always)]
fn group_norm_item_impl<const W: usize, const FMA: bool>(
    x: SharedOut,
    a: &GroupNormArgs<'_>,
    item: usize,
) {
    let (v, g) = (item / a.groups, item % a.groups);
    let cg = a.channels / a.groups;
    let block = cg * a.spatial;
    let count = (a.frames * block) as f64;
    let chunk = |f: usize| {
        let start = ((v * a.frames + f) * a.channels + g * cg) * a.spatial;
        // SAFETY: the (video, group) items of different threads touch disjoint elements.
        unsafe { std::slice::from_raw_parts_mut(x.at(start), block) }
    };
    // Two passes (shifted by a first estimate of the mean) keep the variance accurate.
    let shift = chunk(0)[0];
    let mut sum = 0.0;
    for f in 0..a.frames {
        sum += lane_sums::<W>(chunk(f), shift).0;
    }
    let mean = shift as f64 + sum / count;
    let mut sq = 0.0;
    for f in 0..a.frames {
        sq += lane_sums::<W>(chunk(f), mean as f32).1;
    }
    let rstd = 1.0 / (sq / count + a.eps).sqrt();
    for f in 0..a.frames {
        let data = chunk(f);
        for (cc, row) in data.chunks_exact_mut(a.spatial).enumerate() {
            let c = g * cg + cc;
            let gamma = a.gamma.map_or(1.0, |w| w[c] as f64);
            let beta = a.beta.map_or(0.0, |b| b[c] as f64);
            let scale = (gamma * rstd) as f32;
            let bias = (beta - mean * gamma * rstd) as f32;
            if a.silu {
                for x in row.iter_mut() {
                    *x = silu::<FMA>(madd::<FMA>(*x, scale, bias));
                }
            } else {
                for x in row.iter_mut() {
                    *x = madd::<FMA>(*x, scale, bias);
                }
            }
        }
    }
}
dispatch!(fn group_norm_item(x: SharedOut, a: &GroupNormArgs<'_>, item: usize) => group_norm_item_impl);

/// GroupNorm (optionally followed by SiLU) of `x` (`[videos · frames, C, S]`), in place.
pub(crate) fn group_norm_inplace(x: &mut [f32], args: &GroupNormArgs<'_>) {
    debug_assert_eq!(
        x.len(),
        args.videos * args.frames * args.channels * args.spatial
    );
    let items = args.videos * args.groups;
    let ptr = SharedOut(x.as_mut_ptr());
    parallel(items, 8 * x.len(), |r| {
        for item in r {
            group_norm_item(ptr, args, item);
        }
    });
}

/// Host copies of a GroupNorm's parameters: `groups` groups of channels, optional affine
/// `gamma`, `beta` (`[C]`) and epsilon `eps`.
pub struct GroupNormHost {
    gamma: Option<Host>,
    beta: Option<Host>,
    groups: usize,
    eps: f64,
}

impl GroupNormHost {
    /// `gamma`, `beta`: `[C]` (none: no affine transform); `groups` divides `C`.
    pub fn new(gamma: Option<Tensor<1>>, beta: Option<Tensor<1>>, groups: usize, eps: f64) -> Self {
        Self {
            gamma: gamma.map(host),
            beta: beta.map(host),
            groups,
            eps,
        }
    }
}

/// GroupNorm `norm` on `x` (`[N, C, …]`, as Burn's `GroupNorm`), optionally followed by SiLU,
/// with the statistics of each group pooled over `frames` consecutive items (1 = plain
/// GroupNorm; `F` = diffusers' GroupNorm on the `[B, C, F, H, W]` view of frames folded into
/// the batch). Only call when [`enabled`](crate::enabled).
pub fn group_norm<const D: usize>(
    norm: &GroupNormHost,
    x: Tensor<D>,
    frames: usize,
    silu: bool,
) -> Tensor<D> {
    let dims = x.dims();
    let device = x.device();
    let (n, channels) = (dims[0], dims[1]);
    let spatial = dims[2..].iter().product();
    let mut data = host(x);
    group_norm_inplace(
        f32s_mut(&mut data),
        &GroupNormArgs {
            videos: n / frames,
            frames,
            channels,
            spatial,
            groups: norm.groups,
            gamma: norm.gamma.as_ref().map(f32s),
            beta: norm.beta.as_ref().map(f32s),
            eps: norm.eps,
            silu,
        },
    );
    data.into_tensor(&device)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn group_norm_pools_frames() {
        let (videos, frames, channels, spatial, groups) = (2, 3, 6, 5, 3);
        let n = videos * frames * channels * spatial;
        let x: Vec<f32> = (0..n)
            .map(|i| ((i * 37) % 101) as f32 * 0.1 + 3.0)
            .collect();
        let gamma: Vec<f32> = (0..channels).map(|c| 1.0 + c as f32 * 0.1).collect();
        let beta: Vec<f32> = (0..channels).map(|c| c as f32 * -0.2).collect();
        for silu_after in [false, true] {
            let mut y = x.clone();
            let args = GroupNormArgs {
                videos,
                frames,
                channels,
                spatial,
                groups,
                gamma: Some(&gamma),
                beta: Some(&beta),
                eps: 1e-5,
                silu: silu_after,
            };
            group_norm_inplace(&mut y, &args);
            let cg = channels / groups;
            for v in 0..videos {
                for g in 0..groups {
                    let idx = |f: usize, c: usize, s: usize| {
                        ((v * frames + f) * channels + c) * spatial + s
                    };
                    let members: Vec<usize> = (0..frames)
                        .flat_map(|f| {
                            (g * cg..(g + 1) * cg)
                                .flat_map(move |c| (0..spatial).map(move |s| idx(f, c, s)))
                        })
                        .collect();
                    let mean =
                        members.iter().map(|&i| x[i] as f64).sum::<f64>() / members.len() as f64;
                    let var = members
                        .iter()
                        .map(|&i| (x[i] as f64 - mean).powi(2))
                        .sum::<f64>()
                        / members.len() as f64;
                    for &i in &members {
                        let c = (i / spatial) % channels;
                        let mut want = (x[i] as f64 - mean) / (var + 1e-5).sqrt() * gamma[c] as f64
                            + beta[c] as f64;
                        if silu_after {
                            want /= 1.0 + (-want).exp();
                        }
                        assert!((y[i] as f64 - want).abs() < 1e-5, "{} vs {want}", y[i]);
                    }
                }
            }
        }
    }
}
