//! Frame gather / weighted accumulation over `[tokens, frames, channels]` ([`gather`],
//! [`accumulate`]): the window gather and weighted fusion of FreeNoise (vdm-longvideo) on the
//! host, for the flex (CPU) backend ([`enabled`](crate::enabled)).
//!
//! Why: one pass over a window each, in parallel over the tokens, where the tensor-op path
//! takes several strided copies per window (select, scale, slice, add, slice-assign). Per
//! frame, the windows are added in the order of the calls, as on the tensor-op path, so both
//! are deterministic.
//!
//! ```
//! use vdm_kernels::frames::{accumulate, gather};
//!
//! // Two tokens, three frames, one channel: cut out frames 2 and 0 of every token ...
//! let x = [0.0, 1.0, 2.0, 10.0, 11.0, 12.0];
//! let window = gather(&x, [2, 3, 1], &[2, 0], None);
//! assert_eq!(window, [2.0, 0.0, 12.0, 10.0]);
//! // ... and add them back with weights 0.5 and 1.
//! let mut acc = vec![0.0; 6];
//! accumulate(&mut acc, [2, 3, 1], &window, &[2, 0], &[0.5, 1.0]);
//! assert_eq!(acc, [0.0, 0.0, 1.0, 10.0, 0.0, 6.0]);
//! ```

use std::mem::MaybeUninit;

use rayon::prelude::*;

/// Windows of fewer values run on the calling thread (a hand-over to the thread pool costs
/// more than copying them).
const SERIAL_BELOW: usize = 1 << 16;

/// `each(dst_row, src_row)` for the token rows of `dst` (`dst_len` values each) and `src`
/// (`src_len` each), on the thread pool unless `work` values are fewer than [`SERIAL_BELOW`].
fn per_token<D: Send, S: Sync>(
    (dst, dst_len): (&mut [D], usize),
    (src, src_len): (&[S], usize),
    work: usize,
    each: impl Fn((&mut [D], &[S])) + Send + Sync,
) {
    if work < SERIAL_BELOW {
        dst.chunks_mut(dst_len)
            .zip(src.chunks(src_len))
            .for_each(each);
    } else {
        dst.par_chunks_mut(dst_len)
            .zip(src.par_chunks(src_len))
            .for_each(each);
    }
}

/// Rows `frames` (along dim 1) of every token of `x` `[n, f, c]`: `[n, frames.len(), c]`,
/// plus `rows[s mod L]` (`[L, c]`) at stacked position `s` when given.
pub fn gather(x: &[f32], [n, f, c]: [usize; 3], frames: &[i64], rows: Option<&[f32]>) -> Vec<f32> {
    // Checked in release builds too: every output row is written from a row of `x`.
    assert_eq!(x.len(), n * f * c, "x holds [n, f, c] values");
    let k = frames.len();
    if c == 0 || k == 0 {
        return vec![0.0; n * k * c];
    }
    let one = |(dst, src): (&mut [MaybeUninit<f32>], &[f32])| {
        for (s, (row, &frame)) in dst.chunks_exact_mut(c).zip(frames).enumerate() {
            let at = frame as usize * c;
            let add = rows.map(|rows| {
                let l = rows.len() / c;
                &rows[(s % l) * c..(s % l + 1) * c]
            });
            for (i, (v, &x)) in row.iter_mut().zip(&src[at..at + c]).enumerate() {
                v.write(x + add.map_or(0.0, |a| a[i]));
            }
        }
    };
    // Written once, without zeroing first: every element is set by `one`.
    let mut out: Vec<MaybeUninit<f32>> = Vec::with_capacity(n * k * c);
    // SAFETY: `MaybeUninit` needs no initialisation.
    unsafe { out.set_len(n * k * c) };
    let work = out.len();
    per_token((&mut out, k * c), (x, f * c), work, one);
    // SAFETY: every element was written above (rows of n tokens × k positions × c values);
    // `MaybeUninit<f32>` and `f32` have the same layout.
    unsafe {
        let mut out = std::mem::ManuallyDrop::new(out);
        Vec::from_raw_parts(out.as_mut_ptr().cast::<f32>(), out.len(), out.capacity())
    }
}

/// `acc[t, frames[s], :] += weights[s] · y[t, s, :]` for every token `t` and stacked position
/// `s` with a non-zero weight; `acc` is `[n, f, c]`, `y` `[n, frames.len(), c]`.
pub fn accumulate(
    acc: &mut [f32],
    [n, f, c]: [usize; 3],
    y: &[f32],
    frames: &[i64],
    weights: &[f32],
) {
    let k = frames.len();
    debug_assert_eq!(acc.len(), n * f * c);
    debug_assert_eq!(y.len(), n * k * c);
    if c == 0 || k == 0 {
        return;
    }
    let one = |(dst, src): (&mut [f32], &[f32])| {
        for ((row, &frame), &w) in src.chunks_exact(c).zip(frames).zip(weights) {
            if w == 0.0 {
                continue;
            }
            let at = frame as usize * c;
            for (a, &v) in dst[at..at + c].iter_mut().zip(row) {
                *a += w * v;
            }
        }
    };
    per_token((acc, f * c), (y, k * c), y.len(), one);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gather_and_accumulate_move_rows_by_frame() {
        // Two tokens, three frames, two channels.
        let x: Vec<f32> = (0..12).map(|v| v as f32).collect();
        let frames = [2, 0, 2];
        let g = gather(&x, [2, 3, 2], &frames, None);
        assert_eq!(g, vec![4., 5., 0., 1., 4., 5., 10., 11., 6., 7., 10., 11.]);
        // Rows of two positions added to stacked positions 0, 1, 0.
        let with_rows = gather(&x, [2, 3, 2], &frames, Some(&[0.5, 0.5, -1.0, -1.0]));
        assert_eq!(&with_rows[..6], &[4.5, 5.5, -1., 0., 4.5, 5.5]);
        let mut acc = vec![1.0f32; 12];
        accumulate(&mut acc, [2, 3, 2], &g, &frames, &[0.5, 2.0, 0.0]);
        // Frame 2 of token 0 gets 0.5·[4, 5]; frame 0 gets 2·[0, 1]; the zero weight adds
        // nothing.
        assert_eq!(
            acc,
            vec![1., 3., 1., 1., 3., 3.5, 13., 15., 1., 1., 6., 6.5]
        );
    }
}
