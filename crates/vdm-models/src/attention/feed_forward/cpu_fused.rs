//! The GEGLU feed-forward of [`FeedForward`] fused on the flex backend
//! ([`feed_forward`]): optional pre-LayerNorm, `proj`, GEGLU and `proj_out` (+ residual) in row
//! blocks whose hidden activations stay in cache.
//!
//! It lives beside `FeedForward` rather than in the kernel layer (the `vdm-kernels` crate,
//! reached through [`crate::cpu`]) because it is glue between the module and the kernels: the
//! kernel layer imports no model module.

use burn::tensor::{Tensor, TensorData};

use super::FeedForward;
use crate::cpu::{
    InitRows, Mat, MatMut, SharedOut, f32s, filled, geglu_rows, host, layer_norm_host, linear_host,
    parallel, sized, tensor, with_scratch,
};

/// `[x +] proj_out(value · gelu(gate))` with `[value | gate] = proj(LN(x))` (GEGLU
/// feed-forward, optional pre-LayerNorm and residual), in row blocks whose hidden activations
/// stay in cache: the `[rows, 2·hidden]` and `[rows, hidden]` tensors are never allocated.
/// Only call when [`enabled`].
pub(super) fn feed_forward<const D: usize>(
    norm: Option<(&burn::nn::LayerNorm, f64)>,
    ff: &FeedForward,
    x: Tensor<D>,
    residual: bool,
) -> Tensor<D> {
    let mut dims = x.dims();
    let device = x.device();
    let dim = dims[D - 1];
    let w1 = linear_host(&ff.proj);
    let w2 = linear_host(&ff.proj_out);
    let ln = norm.map(|(n, eps)| layer_norm_host(n, eps));
    let hidden = w1.d_out / 2;
    let xd = host(x);
    let xs = f32s(&xd);
    let rows = xs.len() / dim;
    dims[D - 1] = w2.d_out;
    // Rows per block: the 2·hidden activations of a block take at most 1 MiB (they stay in
    // the core's cache between the two GEMMs).
    let block = ((1 << 18) / w1.d_out).clamp(16, rows.max(16));
    let blocks = rows.div_ceil(block);
    let cost = 2 * rows * (w1.d_in * w1.d_out + hidden * w2.d_out);
    let out = {
        let fill = |ptr| {
            let out = SharedOut(ptr);
            parallel(blocks, cost, |range| {
                with_scratch(|scratch| {
                    let [normed, h, g] = &mut scratch.ff;
                    let normed = sized(normed, if ln.is_some() { block * dim } else { 0 });
                    let h = sized(h, block * w1.d_out);
                    let g = sized(g, block * hidden);
                    for b in range {
                        let r0 = b * block;
                        let n = block.min(rows - r0);
                        let xb = &xs[r0 * dim..(r0 + n) * dim];
                        let input = match &ln {
                            Some(ln) => {
                                // SAFETY: `normed` holds `block·dim ≥ n·dim` values, this
                                // thread's own.
                                unsafe { ln.apply(xb, normed.as_mut_ptr(), dim) };
                                &normed[..n * dim]
                            }
                            None => xb,
                        };
                        // SAFETY: block buffers hold n rows; output rows r0..r0+n belong to this
                        // block; the residual has the output's shape (dim == d_out when residual).
                        unsafe {
                            w1.apply(
                                n,
                                Mat::rows(input, dim),
                                MatMut::rows(h.as_mut_ptr(), w1.d_out),
                                None,
                                1,
                            );
                            geglu_rows(&h[..n * w1.d_out], &mut g[..n * hidden], hidden);
                            w2.apply(
                                n,
                                Mat::rows(g, hidden),
                                MatMut::rows(out.at(r0 * w2.d_out), w2.d_out),
                                residual.then(|| InitRows::rows(xb, dim)),
                                1,
                            );
                        }
                    }
                })
            });
        };
        // SAFETY: `fill` writes every element of the buffer.
        unsafe { filled(rows * w2.d_out, fill) }
    };
    tensor(TensorData::new(out, dims), &device)
}
