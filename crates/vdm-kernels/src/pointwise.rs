//! Point-wise maps of two same-length arrays to two outputs in one pass, on the kernel threads.
//!
//! Why: a scheduler step is a handful of element-wise tensor ops (DDIM: `x̂₀ = (x_t − σ·ε)/α`,
//! then `x_{t−1} = √ᾱ_prev·x̂₀ + d·ε`); flex runs each as its own single-threaded pass that
//! allocates an activation-sized buffer. [`map_pair`] does the whole step in one pass over
//! the data, writing one result in place. The caller's function must do the same `f32`
//! operations in the same order as its tensor-op path: results are then bit-identical (Rust
//! never contracts `a·b + c` into a fused multiply-add on its own).

use rayon::prelude::*;

use crate::threads::threads;

/// Fewest elements per thread: smaller arrays stay on the calling thread.
const MIN_PER_THREAD: usize = 1 << 15;

/// For every `i`: `(x[i], out[i]) = f(x[i], y[i])`, on up to [`threads`] threads.
///
/// `f` is `Copy` (a closure capturing numbers by value, `move |x, y| ...`): each thread's loop
/// then holds them in registers and vectorises.
///
/// # Panics
/// If the three slices differ in length (a caller bug: every caller passes the buffers of
/// tensors of one shape).
pub fn map_pair(
    x: &mut [f32],
    y: &[f32],
    out: &mut [f32],
    f: impl Fn(f32, f32) -> (f32, f32) + Sync + Copy,
) {
    let len = x.len();
    assert!(
        y.len() == len && out.len() == len,
        "map_pair: lengths {len}, {} and {} differ",
        y.len(),
        out.len()
    );
    let threads = threads().min(len / MIN_PER_THREAD).max(1);
    if threads == 1 {
        serial(x, y, out, f);
        return;
    }
    let chunk = len.div_ceil(threads);
    x.par_chunks_mut(chunk)
        .zip(y.par_chunks(chunk))
        .zip(out.par_chunks_mut(chunk))
        .for_each(|((x, y), out)| serial(x, y, out, f));
}

/// [`map_pair`] on the calling thread (a loop the compiler vectorises: `f` is inlined, its
/// captured numbers local).
#[inline(always)]
fn serial(x: &mut [f32], y: &[f32], out: &mut [f32], f: impl Fn(f32, f32) -> (f32, f32) + Copy) {
    for ((x, &y), out) in x.iter_mut().zip(y).zip(out.iter_mut()) {
        let (new_x, o) = f(*x, y);
        *x = new_x;
        *out = o;
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
            let mut out = vec![f32::NAN; len];
            map_pair(&mut x, &y, &mut out, |a, b| (a + b, a - b));
            for i in 0..len {
                let (a, b) = (i as f32, 0.5 * i as f32);
                assert_eq!((x[i], out[i]), (a + b, a - b), "element {i} of {len}");
            }
        }
    }

    #[test]
    #[should_panic(expected = "lengths 3, 2 and 3 differ")]
    fn different_lengths_are_a_bug() {
        map_pair(&mut [0.0; 3], &[0.0; 2], &mut [0.0; 3], |a, b| (a, b));
    }
}
