//! Point-wise maps of two same-length arrays to two outputs in one pass, on the kernel threads.
//!
//! Why: a scheduler step is a handful of element-wise tensor ops (DDIM: `x̂₀ = (x_t − σ·ε)/α`,
//! then `x_{t−1} = √ᾱ_prev·x̂₀ + d·ε`); flex runs each as its own single-threaded pass that
//! allocates an activation-sized buffer. [`map_pair`] does the whole step in one pass over
//! the data, writing one result in place. The caller's function must do the same `f32`
//! operations in the same order as its tensor-op path: results are then bit-identical (Rust
//! never contracts `a·b + c` into a fused multiply-add on its own).

use std::mem::MaybeUninit;

use rayon::prelude::*;

use crate::threads::chunk_len;

/// Fewest elements per thread: smaller arrays stay on the calling thread.
const MIN_PER_THREAD: usize = 1 << 15;

/// For every `i`: `(x[i], out[i]) = f(x[i], y[i])`, on up to
/// [`threads`](crate::threads::threads) threads; returns `out` (a new buffer, never zeroed
/// first: every element is written once).
///
/// `f` is `Copy` (a closure capturing numbers by value, `move |x, y| ...`): each thread's loop
/// then holds them in registers and vectorises.
///
/// # Panics
/// If `x` and `y` differ in length (a caller bug: every caller passes the buffers of tensors
/// of one shape).
pub fn map_pair(
    x: &mut [f32],
    y: &[f32],
    f: impl Fn(f32, f32) -> (f32, f32) + Sync + Copy,
) -> Vec<f32> {
    let len = x.len();
    assert!(
        y.len() == len,
        "map_pair: lengths {len} and {} differ",
        y.len()
    );
    let mut out: Vec<f32> = Vec::with_capacity(len);
    let spare = &mut out.spare_capacity_mut()[..len];
    match chunk_len(len, len / MIN_PER_THREAD) {
        None => serial(x, y, spare, f),
        Some(chunk) => x
            .par_chunks_mut(chunk)
            .zip(y.par_chunks(chunk))
            .zip(spare.par_chunks_mut(chunk))
            .for_each(|((x, y), out)| serial(x, y, out, f)),
    }
    // SAFETY: the chunks cover `0..len` and `serial` wrote every element of each.
    unsafe { out.set_len(len) };
    out
}

/// [`map_pair`] on the calling thread (a loop the compiler vectorises: `f` is inlined, its
/// captured numbers local); writes every element of `out`.
#[inline(always)]
fn serial(
    x: &mut [f32],
    y: &[f32],
    out: &mut [MaybeUninit<f32>],
    f: impl Fn(f32, f32) -> (f32, f32) + Copy,
) {
    for ((x, &y), out) in x.iter_mut().zip(y).zip(out.iter_mut()) {
        let (new_x, o) = f(*x, y);
        *x = new_x;
        out.write(o);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_element_is_mapped_once_on_any_length() {
        for len in [0, 1, 7, MIN_PER_THREAD - 1, 3 * MIN_PER_THREAD + 5] {
            let mut x: Vec<f32> = (0..len).map(|i| i as f32).collect();
            let y: Vec<f32> = (0..len).map(|i| 0.5 * i as f32).collect();
            let out = map_pair(&mut x, &y, |a, b| (a + b, a - b));
            assert_eq!(out.len(), len);
            for i in 0..len {
                let (a, b) = (i as f32, 0.5 * i as f32);
                assert_eq!((x[i], out[i]), (a + b, a - b), "element {i} of {len}");
            }
        }
    }

    #[test]
    #[should_panic(expected = "lengths 3 and 2 differ")]
    fn different_lengths_are_a_bug() {
        map_pair(&mut [0.0; 3], &[0.0; 2], |a, b| (a, b));
    }
}
