//! Nearest-neighbour resizing of channels-first images, as PyTorch's
//! `F.interpolate(x, size, mode="nearest")` (diffusers' `Upsample2D`, `upsampling.py`):
//! [`nearest_indices`] (the source pixel of every output pixel) and [`upsample_nearest`].
//!
//! Why: flex runs the resize as two `select`s (rows, then columns), each a scalar gather that
//! divides per element to find its source and allocates an intermediate image; measured at
//! about 10 % of a VAE decode (the bench harness's VAE, 8 frames at 256²). Here each output row
//! is built once from its source row through the column map (a plain copy when the row was
//! built already), planes split over the kernel threads.

use burn::tensor::{Tensor, TensorData};

use crate::host::{f32s, filled, host, tensor};
use crate::threads::{SharedOut, parallel};

/// The source index of each of `out` output pixels along an axis of `inp` input pixels:
/// `min(⌊i · (inp / out)⌋, inp − 1)` with the scale in `f32`, PyTorch's `nearest` (exact
/// repetition for ×2). Empty when `inp` or `out` is 0.
pub fn nearest_indices(inp: usize, out: usize) -> Vec<usize> {
    if inp == 0 {
        return Vec::new();
    }
    let scale = inp as f32 / out as f32;
    (0..out)
        .map(|i| ((i as f32 * scale).floor() as usize).min(inp - 1))
        .collect()
}

/// Nearest-neighbour resize of `x` to `size` ([`nearest_indices`] on both axes), on every
/// kernel thread. Only call when [`enabled`](crate::enabled).
///
/// # Shapes
/// - `x`: `[N, C, H, W]` with `H, W > 0`
/// - output: `[N, C, size[0], size[1]]`
///
/// # Panics
/// When `H` or `W` is 0 (no source pixel; callers check).
pub fn upsample_nearest(x: Tensor<4>, size: [usize; 2]) -> Tensor<4> {
    let [n, c, h, w] = x.dims();
    assert!(
        h > 0 && w > 0,
        "upsample_nearest of an empty image [{h}, {w}]"
    );
    let [oh, ow] = size;
    let device = x.device();
    let rows = nearest_indices(h, oh);
    let cols = nearest_indices(w, ow);
    let doubled = doubles(w, &cols);
    let xd = host(x);
    let xs = f32s(&xd);
    let planes = n * c;
    let out = {
        let fill = |ptr| {
            let out = SharedOut(ptr);
            parallel(planes, planes * oh * ow, |range| {
                for plane in range {
                    let src = &xs[plane * h * w..(plane + 1) * h * w];
                    // SAFETY: each plane's output block is written by this thread only.
                    let dst =
                        unsafe { std::slice::from_raw_parts_mut(out.at(plane * oh * ow), oh * ow) };
                    resize_plane(src, w, &rows, &cols, doubled, dst);
                }
            });
        };
        // SAFETY: `resize_plane` writes every element of every plane.
        unsafe { filled(planes * oh * ow, fill) }
    };
    tensor(TensorData::new(out, [n, c, oh, ow]), &device)
}

/// Whether the column map `cols` of a row of width `w` repeats every pixel twice.
fn doubles(w: usize, cols: &[usize]) -> bool {
    w * 2 == cols.len() && cols.iter().enumerate().all(|(j, &s)| s == j / 2)
}

/// Writes one plane: output row `i` is source row `rows[i]` (of width `w`) read through
/// `cols` (pairwise when `doubled`, see [`doubles`]); a row whose source row equals the
/// previous one's is a copy of it.
fn resize_plane(
    src: &[f32],
    w: usize,
    rows: &[usize],
    cols: &[usize],
    doubled: bool,
    dst: &mut [f32],
) {
    let ow = cols.len();
    for (i, &r) in rows.iter().enumerate() {
        let (done, rest) = dst.split_at_mut(i * ow);
        let row = &mut rest[..ow];
        if i > 0 && rows[i - 1] == r {
            row.copy_from_slice(&done[(i - 1) * ow..]);
            continue;
        }
        let s = &src[r * w..(r + 1) * w];
        if doubled {
            for (pair, &v) in row.chunks_exact_mut(2).zip(s) {
                pair[0] = v;
                pair[1] = v;
            }
        } else {
            for (o, &j) in row.iter_mut().zip(cols) {
                *o = s[j];
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pytorch_nearest_index_map() {
        assert_eq!(nearest_indices(3, 6), [0, 0, 1, 1, 2, 2]);
        // torch.nn.functional.interpolate(torch.arange(5.)[None, None], size=11,
        // mode="nearest") reads 0 0 0 1 1 2 2 3 3 4 4.
        assert_eq!(nearest_indices(5, 11), [0, 0, 0, 1, 1, 2, 2, 3, 3, 4, 4]);
        assert_eq!(nearest_indices(4, 2), [0, 2]);
        assert_eq!(nearest_indices(4, 4), [0, 1, 2, 3]);
        assert!(nearest_indices(0, 3).is_empty());
    }

    /// Every output pixel is its mapped source pixel: doubling (the pair loop and the row
    /// copies), odd sizes, shrinking and identity (the general gather).
    #[test]
    fn every_pixel_reads_its_mapped_source() {
        let [h, w] = [5, 7];
        let src: Vec<f32> = (0..h * w).map(|v| v as f32 * 0.5 - 3.0).collect();
        for [oh, ow] in [[10, 14], [11, 15], [5, 9], [3, 4], [1, 1], [12, 7], [5, 7]] {
            let (rows, cols) = (nearest_indices(h, oh), nearest_indices(w, ow));
            let mut dst = vec![f32::NAN; oh * ow];
            resize_plane(&src, w, &rows, &cols, doubles(w, &cols), &mut dst);
            for i in 0..oh {
                for j in 0..ow {
                    assert_eq!(
                        dst[i * ow + j],
                        src[rows[i] * w + cols[j]],
                        "{oh}x{ow} ({i}, {j})"
                    );
                }
            }
        }
    }
}
