//! Softmax attention over short sequences with small heads, one SIMD lane per *query*: the
//! temporal attention of motion modules on 16- to 64-frame windows at head dims 4, 8 and 16.
//!
//! The general kernel puts the keys in the lanes. For a 16-frame sequence with a head of 8
//! values it spends more time on per-sequence set-up (transposing `K`, copying `V`),
//! horizontal row reductions and half-empty value vectors than on arithmetic. Here a block
//! of `W` queries of one sequence and head is transposed once into `Qᵀ` (`[c][lane]`, kept in
//! registers), and every step is a vertical, full-width vector operation:
//!
//! - the scores of key `j` for all `W` queries: `s_j = Σ_c k_j[c] · Qᵀ[c]` (the key values
//!   broadcast straight from the projection, no copy);
//! - the row maxima and sums: element-wise over the keys, no horizontal reduction;
//! - the output `Oᵀ[c] = Σ_j e^{s_j − m} · v_j[c]` (broadcast again), transposed back on store.

use std::ops::Range;

use super::{AttentionIo, AttentionShape, HeadLayout, Isa, SharedOut, Vector, exp};

/// Head dims with a compiled kernel (the head dim is a constant so that `Qᵀ` and `Oᵀ` stay in
/// registers).
const HEAD_DIMS: [usize; 3] = [4, 8, 16];

/// Whether the query-lanes kernel suits `shape`: sequences of at most 64 keys and queries
/// and a head dim of 4, 8 or 16. Measured on an AVX-512 core (bench-size motion module
/// shapes, 16 to 64 frames) it takes 0.4–0.8× the general kernel's time there, and half
/// the time of the lane-per-sequence kernel it replaced at head dim 4; with the AVX2
/// instances of both forced on the same core, 0.45–0.75×.
pub(super) fn suits(shape: &AttentionShape) -> bool {
    shape.lk <= 64 && shape.lq <= 64 && HEAD_DIMS.contains(&shape.head_dim)
}

/// Keys per score block (independent accumulators for the FMA pipeline).
const KEYS: usize = 4;

#[inline(always)]
fn items_impl<V: Vector, const W: usize, const D: usize, const FMA: bool>(
    job: &AttentionIo<'_>,
    items: Range<usize>,
) {
    debug_assert_eq!(V::LANES, W);
    let AttentionShape {
        heads,
        lq,
        lk,
        scale,
        ..
    } = job.shape;
    let per_head = lq.div_ceil(W);
    let inner = heads * D;
    // The scores of one block, `[key][lane]`.
    let mut s = vec![0.0f32; lk * W];
    for item in items {
        let bh = item / per_head;
        let (n, h) = (bh / heads, bh % heads);
        let i0 = (item % per_head) * W;
        let nq = W.min(lq - i0);
        // SAFETY (all vector operations below): `s` holds lk·W values and the offsets are
        // multiples of W below that; `items` checked the instruction set; W ≤ 16.
        // Qᵀ of the block, scaled; the padding lanes repeat the last query (finite scores).
        let qt: [V; D] =
            unsafe { V::load_columns::<D>(|l| job.q.head::<D>(n, i0 + l.min(nq - 1), h)) };
        let scale = unsafe { V::splat(scale) };
        let qt = qt.map(|q| unsafe { V::fma(q, scale, V::zero()) });
        // Scores S[j] = Σ_c k_j[c] · Qᵀ[c], KEYS keys at a time, and their maxima.
        let mut max = [f32::NEG_INFINITY; W];
        let mut j = 0;
        while j < lk {
            let nk = KEYS.min(lk - j);
            let keys: [[f32; D]; KEYS] =
                std::array::from_fn(|b| job.k.head::<D>(n, j + b.min(nk - 1), h));
            let mut acc = [V::zero(); KEYS];
            for c in 0..D {
                for (acc, key) in acc.iter_mut().zip(&keys).take(nk) {
                    *acc = unsafe { V::fma(V::splat(key[c]), qt[c], *acc) };
                }
            }
            for (b, acc) in acc.iter().enumerate().take(nk) {
                let mut row = [0.0f32; W];
                unsafe { acc.store(row.as_mut_ptr()) };
                for l in 0..W {
                    max[l] = max[l].max(row[l]);
                }
                s[(j + b) * W..(j + b + 1) * W].copy_from_slice(&row);
            }
            j += nk;
        }
        // Oᵀ[c] = Σ_j e^{S[j] − max} · v_j[c], and the sums of the exponentials.
        let mut sum = [0.0f32; W];
        let mut ot = [V::zero(); D];
        for (j, row) in s.as_chunks::<W>().0.iter().enumerate() {
            let mut e = [0.0f32; W];
            for l in 0..W {
                e[l] = exp::<FMA>(row[l] - max[l]);
                sum[l] += e[l];
            }
            let e = unsafe { V::load(e.as_ptr()) };
            let value = job.v.head::<D>(n, j, h);
            for (o, vc) in ot.iter_mut().zip(value) {
                *o = unsafe { V::fma(e, V::splat(vc), *o) };
            }
        }
        let inv = sum.map(|s| 1.0 / s);
        let inv = unsafe { V::load(inv.as_ptr()) };
        let ot = ot.map(|o| unsafe { V::fma(o, inv, V::zero()) });
        // SAFETY: (item n, query i0 + l, head h) is written by this work item only, inside
        // the [batch, lq, heads·D] output.
        unsafe {
            V::store_columns(&ot, nq, |l| job.out.at((n * lq + i0 + l) * inner + h * D));
        }
    }
}

/// The work items `items` of `job` (`(n·heads + h)·blocks + block`, a block of `W` queries
/// of one (item, head)), with `W` lanes.
#[inline(always)]
fn items_for<V: Vector, const W: usize, const FMA: bool>(
    job: &AttentionIo<'_>,
    items: Range<usize>,
) {
    match job.shape.head_dim {
        4 => items_impl::<V, W, 4, FMA>(job, items),
        8 => items_impl::<V, W, 8, FMA>(job, items),
        16 => items_impl::<V, W, 16, FMA>(job, items),
        d => unreachable!("query-lanes attention has no kernel for head dim {d}"),
    }
}

/// Lanes (queries per work item) of the kernel for `isa`.
fn lanes(isa: Isa) -> usize {
    match isa {
        Isa::Avx512 => 16,
        _ => 8,
    }
}

/// Runs the work items `items` of `job` compiled for `isa` (which the CPU supports).
fn items(isa: Isa, job: &AttentionIo<'_>, items: Range<usize>) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{__m256, __m512};
        #[target_feature(enable = "avx512f,avx2,fma")]
        fn avx512(job: &AttentionIo<'_>, items: Range<usize>) {
            items_for::<__m512, 16, true>(job, items)
        }
        #[target_feature(enable = "avx2,fma")]
        fn avx2(job: &AttentionIo<'_>, items: Range<usize>) {
            items_for::<__m256, 8, true>(job, items)
        }
        match isa {
            // SAFETY: the caller checked that the CPU supports `isa` (see `super::isa`).
            Isa::Avx512 => return unsafe { avx512(job, items) },
            Isa::Avx2 => return unsafe { avx2(job, items) },
            Isa::Portable => {}
        }
    }
    items_for::<super::Lanes8, 8, false>(job, items)
}

/// `softmax(scale · Q Kᵀ) V` for every item and head into `out` (`[batch, lq, heads·head_dim]`,
/// every element written), with the kernel compiled for `isa`, which must not exceed
/// [`super::isa`]. `shape` must [suit](suits) the kernel.
pub(super) fn attention(
    q: HeadLayout<'_>,
    k: HeadLayout<'_>,
    v: HeadLayout<'_>,
    shape: AttentionShape,
    isa: Isa,
    out: &mut [f32],
) {
    assert!(suits(&shape) && shape.lq > 0 && shape.lk > 0);
    assert_eq!(
        out.len(),
        shape.batch * shape.lq * shape.heads * shape.head_dim
    );
    assert!(isa == Isa::Portable || isa == super::isa() || super::isa() == Isa::Avx512);
    let bh = shape.batch * shape.heads;
    let job = AttentionIo {
        q,
        k,
        v,
        shape,
        out: SharedOut(out.as_mut_ptr()),
    };
    let cost = 4 * bh * shape.lq * shape.lk * shape.head_dim;
    super::parallel(bh * shape.lq.div_ceil(lanes(isa)), cost, |range| {
        items(isa, &job, range)
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every instruction set this CPU has gives the same result as the portable kernel.
    #[test]
    fn instruction_sets_agree() {
        let isas: &[Isa] = match super::super::isa() {
            Isa::Avx512 => &[Isa::Avx512, Isa::Avx2],
            Isa::Avx2 => &[Isa::Avx2],
            Isa::Portable => &[],
        };
        let (batch, heads) = (5, 2);
        for d in HEAD_DIMS {
            for (lq, lk) in [(16, 16), (21, 9), (64, 64), (3, 40)] {
                let width = 3 * heads * d;
                let rows = lq.max(lk);
                let data: Vec<f32> = (0..batch * rows * width)
                    .map(|i| ((i * 7919) % 1000) as f32 / 250.0 - 2.0)
                    .collect();
                let layout = |offset| HeadLayout::packed(&data, rows, width, offset);
                let shape = AttentionShape {
                    batch,
                    heads,
                    lq,
                    lk,
                    head_dim: d,
                    scale: 0.5,
                };
                let run = |isa| {
                    let mut out = vec![f32::NAN; batch * lq * heads * d];
                    let inner = heads * d;
                    attention(
                        layout(0),
                        layout(inner),
                        layout(2 * inner),
                        shape,
                        isa,
                        &mut out,
                    );
                    out
                };
                let portable = run(Isa::Portable);
                assert!(portable.iter().all(|x| x.is_finite()));
                for &isa in isas {
                    let got = run(isa);
                    for (a, b) in got.iter().zip(&portable) {
                        assert!((a - b).abs() <= 1e-5, "d {d} lq {lq} lk {lk}: {a} vs {b}");
                    }
                }
            }
        }
    }
}
