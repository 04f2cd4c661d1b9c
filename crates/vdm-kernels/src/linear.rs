//! GEMM (the `gemm` crate flex itself uses) and the linear layers built on it: strided
//! matrix views ([`Mat`], [`MatMut`]), [`gemm_into`], host copies of a linear layer's weight
//! and bias ([`LinearHost`]) applied with a residual or bias as the output's starting values
//! ([`InitRows`]), and the token projections of channels-first images
//! ([`linear_from_channels_first`], [`linear_to_channels_first`]).
//!
//! Why: the projections read and write the activations in the layout they already have
//! (strided views instead of transposed copies), and bias and residual are written as the
//! GEMM's initial values instead of separate element-wise passes.

use std::ops::Range;

use burn::tensor::{Tensor, TensorData};

use super::host::{Host, f32s, filled, host, tensor};
use super::threads::{SharedOut, parallel};

// ---------------------------------------------------------------------------------------------
// GEMM (the `gemm` crate flex itself uses) and the layers built on it.
// ---------------------------------------------------------------------------------------------

/// A strided matrix: element `(i, j)` at `ptr + i·rs + j·cs`.
#[derive(Clone, Copy)]
pub struct Mat {
    /// Element `(0, 0)`.
    pub ptr: *const f32,
    /// Row stride (elements).
    pub rs: isize,
    /// Column stride (elements).
    pub cs: isize,
}

/// A strided mutable matrix: element `(i, j)` at `ptr + i·rs + j·cs`.
#[derive(Clone, Copy)]
pub struct MatMut {
    /// Element `(0, 0)`.
    pub ptr: *mut f32,
    /// Row stride (elements).
    pub rs: isize,
    /// Column stride (elements).
    pub cs: isize,
}

// SAFETY: the views are only dereferenced by `gemm_into`, whose callers guarantee that
// threads write disjoint output elements.
unsafe impl Send for Mat {}
unsafe impl Sync for Mat {}
unsafe impl Send for MatMut {}
unsafe impl Sync for MatMut {}

impl Mat {
    /// Row-major `[rows, cols]` data.
    pub fn rows(data: &[f32], cols: usize) -> Self {
        Self {
            ptr: data.as_ptr(),
            rs: cols as isize,
            cs: 1,
        }
    }
}

impl MatMut {
    /// Row-major `[rows, cols]` output starting at `ptr`.
    pub fn rows(ptr: *mut f32, cols: usize) -> Self {
        Self {
            ptr,
            rs: cols as isize,
            cs: 1,
        }
    }

    /// The view moved by `offset` elements.
    pub fn offset(self, offset: usize) -> Self {
        Self {
            ptr: self.ptr.wrapping_add(offset),
            ..self
        }
    }
}

/// `dst = lhs · rhs` (`accumulate`: `dst += lhs · rhs`) for `m × k` times `k × n`, on up to
/// `threads` threads (1 = the calling thread only).
///
/// # Safety
/// Every view covers its matrix; `dst` is writable (and initialised when `accumulate`) and
/// overlaps neither input nor other threads' outputs.
#[allow(clippy::too_many_arguments)]
pub unsafe fn gemm_into(
    m: usize,
    n: usize,
    k: usize,
    dst: MatMut,
    accumulate: bool,
    lhs: Mat,
    rhs: Mat,
    threads: usize,
) {
    if m == 0 || n == 0 {
        return;
    }
    let parallelism = if threads > 1 && m * n * k >= 1 << 20 {
        gemm::Parallelism::Rayon(threads)
    } else {
        gemm::Parallelism::None
    };
    // SAFETY: forwarded from the caller.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.ptr,
            dst.cs,
            dst.rs,
            accumulate,
            lhs.ptr,
            lhs.cs,
            lhs.rs,
            rhs.ptr,
            rhs.cs,
            rhs.rs,
            if accumulate { 1.0 } else { 0.0 },
            1.0,
            false,
            false,
            false,
            parallelism,
        );
    }
}

/// Host copies of a linear layer's weight `[d_in, d_out]` (Burn's `Linear` layout: `x · W`)
/// and bias `[d_out]`.
pub struct LinearHost {
    /// The weight `[d_in, d_out]`, row-major.
    pub weight: Host,
    /// The bias `[d_out]`, if any.
    pub bias: Option<Host>,
    /// Input features.
    pub d_in: usize,
    /// Output features.
    pub d_out: usize,
}

impl LinearHost {
    /// Host copies of `weight` `[d_in, d_out]` and `bias` `[d_out]`.
    pub fn new(weight: Tensor<2>, bias: Option<Tensor<1>>) -> Self {
        let [d_in, d_out] = weight.dims();
        Self {
            weight: host(weight),
            bias: bias.map(host),
            d_in,
            d_out,
        }
    }

    pub(super) fn w(&self) -> Mat {
        Mat::rows(f32s(&self.weight), self.d_out)
    }

    /// `dst[i] = init[i] + bias + lhs[i] · W` for `rows` rows, where `init` (optional) gives
    /// the rows an output starts from (a residual). The starting values are filled in on up
    /// to `threads` threads, as the GEMM runs.
    ///
    /// # Safety
    /// As [`gemm_into`]; `dst` rows are writable, `init` (if any) covers `rows` rows of
    /// `d_out` values.
    pub unsafe fn apply(
        &self,
        rows: usize,
        lhs: Mat,
        dst: MatMut,
        init: Option<InitRows>,
        threads: usize,
    ) {
        let bias = self.bias.as_ref().map(f32s);
        let accumulate = init.is_some() || bias.is_some();
        let width = self.d_out;
        if accumulate && dst.cs == 1 {
            // Row-contiguous output: one slice operation per row (threads write disjoint rows).
            let zeros = vec![0.0f32; if bias.is_none() { width } else { 0 }];
            let bias = bias.unwrap_or(&zeros);
            let fill = |range: Range<usize>| {
                // Whole views (Sync), not their raw-pointer fields, are captured.
                let (dst, init) = (dst, init);
                for i in range {
                    // SAFETY: caller's contract (rows of d_out contiguous values).
                    let o = unsafe {
                        std::slice::from_raw_parts_mut(dst.ptr.offset(i as isize * dst.rs), width)
                    };
                    match init {
                        Some(rows) => {
                            // SAFETY: caller's contract.
                            let r = unsafe { std::slice::from_raw_parts(rows.row(i), width) };
                            for ((o, &r), &b) in o.iter_mut().zip(r).zip(bias) {
                                *o = r + b;
                            }
                        }
                        None => o.copy_from_slice(bias),
                    }
                }
            };
            if threads > 1 {
                parallel(rows, rows * width, fill);
            } else {
                fill(0..rows);
            }
        } else if accumulate {
            for i in 0..rows {
                for j in 0..width {
                    let o = i as isize * dst.rs + j as isize * dst.cs;
                    let mut v = bias.map_or(0.0, |b| b[j]);
                    if let Some(init) = init {
                        // SAFETY: caller's contract.
                        v += unsafe { *init.row(i).add(j) };
                    }
                    // SAFETY: caller's contract.
                    unsafe { *dst.ptr.offset(o) = v };
                }
            }
        }
        // SAFETY: caller's contract.
        unsafe {
            gemm_into(
                rows,
                self.d_out,
                self.d_in,
                dst,
                accumulate,
                lhs,
                self.w(),
                threads,
            )
        };
    }
}

/// The rows an output starts from ([`LinearHost::apply`]), each of contiguous values: row `i`
/// at `ptr + (i / per_block)·block_stride + (i % per_block)·rs`.
#[derive(Clone, Copy)]
pub struct InitRows {
    ptr: *const f32,
    rs: usize,
    per_block: usize,
    block_stride: usize,
}

// SAFETY: read only, by the threads of `LinearHost::apply`.
unsafe impl Send for InitRows {}
unsafe impl Sync for InitRows {}

impl InitRows {
    /// Row-major `[rows, width]` data.
    pub fn rows(data: &[f32], width: usize) -> Self {
        Self {
            ptr: data.as_ptr(),
            rs: width,
            per_block: usize::MAX,
            block_stride: 0,
        }
    }

    /// The frames `frames` of every item of `[n, total, width]` data, item after item (a
    /// window of a sequence, read in place).
    pub fn frames(data: &[f32], [n, total, width]: [usize; 3], frames: Range<usize>) -> Self {
        assert!(
            frames.end <= total && !frames.is_empty() && data.len() >= n * total * width,
            "window {frames:?} of [{n}, {total}, {width}] values"
        );
        Self {
            ptr: data[frames.start * width..].as_ptr(),
            rs: width,
            per_block: frames.len(),
            block_stride: total * width,
        }
    }

    /// Row `i`.
    fn row(&self, i: usize) -> *const f32 {
        self.ptr
            .wrapping_add((i / self.per_block) * self.block_stride + (i % self.per_block) * self.rs)
    }
}

/// Token projection of channels-first images: `x` `[N, C, S]` (S = H·W) is read as the
/// tokens `[N, S, C]` of every pixel (no transposed copy), `→ [N, S, d_out]`. Only call when
/// [`enabled`](crate::enabled).
pub fn linear_from_channels_first(wt: &LinearHost, x: Tensor<4>) -> Tensor<3> {
    let [n, c, h, w] = x.dims();
    let device = x.device();
    let s = h * w;
    debug_assert_eq!(c, wt.d_in);
    let xd = host(x);
    let xs = f32s(&xd);
    let out = {
        let fill = |ptr| {
            let out = SharedOut(ptr);
            parallel(n, 2 * n * s * c * wt.d_out, |items| {
                for i in items {
                    // SAFETY: item i reads its own image and writes its own S rows.
                    unsafe {
                        wt.apply(
                            s,
                            Mat {
                                ptr: xs.as_ptr().add(i * c * s),
                                rs: 1,
                                cs: s as isize,
                            },
                            MatMut::rows(out.at(i * s * wt.d_out), wt.d_out),
                            None,
                            1,
                        )
                    }
                }
            });
        };
        // SAFETY: `fill` writes every element of the buffer.
        unsafe { filled(n * s * wt.d_out, fill) }
    };
    tensor(TensorData::new(out, [n, s, wt.d_out]), &device)
}

/// `residual + proj(tokens)` back in the channels-first layout: `tokens` `[N, S, d_in]`,
/// `residual` `[N, d_out, H, W]` with `S = H·W` (no transposed copy). Only call when
/// [`enabled`](crate::enabled).
pub fn linear_to_channels_first(
    wt: &LinearHost,
    tokens: Tensor<3>,
    residual: Tensor<4>,
) -> Tensor<4> {
    let dims = residual.dims();
    let [n, c, h, w] = dims;
    let device = residual.device();
    let s = h * w;
    let td = host(tokens);
    let ts = f32s(&td);
    let rd = host(residual);
    let rs = f32s(&rd);
    let bias = wt.bias.as_ref().map(f32s);
    let out = {
        let fill = |ptr| {
            let out = SharedOut(ptr);
            parallel(n, 2 * n * s * c * wt.d_in, |items| {
                for i in items {
                    // SAFETY: item i writes its own image (initialised first, then accumulated).
                    unsafe {
                        let o = std::slice::from_raw_parts_mut(out.at(i * c * s), c * s);
                        o.copy_from_slice(&rs[i * c * s..(i + 1) * c * s]);
                        if let Some(b) = bias {
                            for (row, &b) in o.chunks_exact_mut(s).zip(b) {
                                for v in row {
                                    *v += b;
                                }
                            }
                        }
                        gemm_into(
                            s,
                            c,
                            wt.d_in,
                            MatMut {
                                ptr: o.as_mut_ptr(),
                                rs: 1,
                                cs: s as isize,
                            },
                            true,
                            Mat::rows(&ts[i * s * wt.d_in..(i + 1) * s * wt.d_in], wt.d_in),
                            wt.w(),
                            1,
                        );
                    }
                }
            });
        };
        // SAFETY: `fill` writes every element of the buffer.
        unsafe { filled(n * c * s, fill) }
    };
    tensor(TensorData::new(out, dims), &device)
}
