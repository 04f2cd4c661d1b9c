//! Multi-head softmax attention straight from the projection layouts ([`HeadLayout`]: the
//! heads are read where the Q/K/V projections wrote them, and the output is written with the
//! heads merged, as the output projection wants it).
//!
//! The general kernel puts the keys in the SIMD lanes: work items are chunks of queries of
//! one (item, head), with register-blocked score and value micro-kernels over `Kᵀ` and `V`
//! copied once per (item, head). Short sequences with small heads (the temporal attention of
//! motion modules) go to `attention/query_lanes.rs`, one lane per query.
//!
//! Why: flex's attention packs small GEMM tiles per key block and runs the softmax as
//! separate single-threaded element-wise ops; here one pass per query block computes scores,
//! softmax (vectorised `exp`) and output, on every core.

use std::ops::Range;

use super::simd::{Isa, Lanes8, Vector, exp, isa};
use super::threads::{SharedOut, parallel, threads};

mod query_lanes;

// ---------------------------------------------------------------------------------------------
// Attention.
// ---------------------------------------------------------------------------------------------

/// Where the heads of a `[N, L, ·]` projection live: head `h` of row `i` of item `n` starts at
/// `offset + n·batch_stride + i·row_stride + h·head_dim`, plus optional per-row terms added
/// to every item (a window's positional terms, read as the kernels read the rows).
#[derive(Clone, Copy)]
pub struct HeadLayout<'a> {
    /// The projection's values.
    pub data: &'a [f32],
    /// Values from one item to the next.
    pub batch_stride: usize,
    /// Values from one row to the next.
    pub row_stride: usize,
    /// Where head 0 of row 0 of item 0 starts.
    pub offset: usize,
    /// Terms added to row `i`: its heads side by side at `terms.0[i·terms.1 ..]`.
    pub terms: Option<(&'a [f32], usize)>,
}

impl<'a> HeadLayout<'a> {
    /// Rows of `width` values, `rows` per item, the heads starting at column `offset`.
    pub fn packed(data: &'a [f32], rows: usize, width: usize, offset: usize) -> Self {
        Self {
            data,
            batch_stride: rows * width,
            row_stride: width,
            offset,
            terms: None,
        }
    }

    /// Adds `terms` to every item's rows: row `i`'s heads side by side at
    /// `terms[i·stride ..]`.
    pub fn with_terms(self, terms: &'a [f32], stride: usize) -> Self {
        Self {
            terms: Some((terms, stride)),
            ..self
        }
    }

    /// The stored values of head `h` of row `i` of item `n` (without the terms).
    #[inline(always)]
    fn row(&self, n: usize, i: usize, h: usize, d: usize) -> &'a [f32] {
        let start = self.offset + n * self.batch_stride + i * self.row_stride + h * d;
        &self.data[start..start + d]
    }

    /// Head `h` of row `i` of item `n`, terms added.
    #[inline(always)]
    fn head<const D: usize>(&self, n: usize, i: usize, h: usize) -> [f32; D] {
        let mut x: [f32; D] = self.row(n, i, h, D).try_into().expect("D values");
        if let Some((terms, stride)) = self.terms {
            let t: &[f32; D] = terms[i * stride + h * D..][..D]
                .try_into()
                .expect("D values");
            for c in 0..D {
                x[c] += t[c];
            }
        }
        x
    }

    /// `[batch, rows, heads·d]` with the terms added (a packed copy for kernels that read
    /// rows as slices).
    fn with_terms_added(&self, batch: usize, rows: usize, heads: usize, d: usize) -> Vec<f32> {
        let mut out = Vec::with_capacity(batch * rows * heads * d);
        for n in 0..batch {
            for i in 0..rows {
                for h in 0..heads {
                    let row = self.row(n, i, h, d);
                    match self.terms {
                        Some((terms, stride)) => {
                            let t = &terms[i * stride + h * d..][..d];
                            out.extend(row.iter().zip(t).map(|(x, t)| x + t));
                        }
                        None => out.extend_from_slice(row),
                    }
                }
            }
        }
        out
    }
}

/// Shapes of an attention call.
#[derive(Clone, Copy)]
pub struct AttentionShape {
    /// Items.
    pub batch: usize,
    /// Heads per item.
    pub heads: usize,
    /// Queries per item.
    pub lq: usize,
    /// Keys (and values) per item.
    pub lk: usize,
    /// Values per head.
    pub head_dim: usize,
    /// The scale of the scores (usually `1/√head_dim`).
    pub scale: f32,
}

#[derive(Default)]
struct AttnScratch {
    key: Option<(usize, usize)>,
    kt: Vec<f32>,
    vp: Vec<f32>,
    s: Vec<f32>,
    qb: Vec<f32>,
}

/// The inputs and the output (`[batch, lq, heads·head_dim]`) of one attention call.
#[derive(Clone, Copy)]
struct AttentionIo<'a> {
    q: HeadLayout<'a>,
    k: HeadLayout<'a>,
    v: HeadLayout<'a>,
    shape: AttentionShape,
    out: SharedOut,
}

/// A call of the general kernel: work items are chunks of `q_chunk` queries of one
/// (item, head).
struct AttnJob<'a> {
    io: AttentionIo<'a>,
    q_chunk: usize,
    chunks_per_head: usize,
}

/// Scores of `R` query rows against `N` vectors of keys from column `j0`:
/// `s[r][j0 ..] = Σ_d qb[r][d] · kt[d][j0 ..]`.
///
/// # Safety
/// `qb` holds `R·d`, `kt` `d·lkp`, `s` `R·lkp` values with `j0 + N·LANES ≤ lkp`; the CPU
/// supports `V`.
#[inline(always)]
unsafe fn score_block<V: Vector, const R: usize, const N: usize>(
    qb: *const f32,
    kt: *const f32,
    s: *mut f32,
    d: usize,
    lkp: usize,
    j0: usize,
) {
    let mut acc = [[V::zero(); N]; R];
    for dd in 0..d {
        // SAFETY: in bounds by the function's contract.
        unsafe {
            let row = kt.add(dd * lkp + j0);
            let mut kv = [V::zero(); N];
            for (v, k) in kv.iter_mut().enumerate() {
                *k = V::load(row.add(v * V::LANES));
            }
            for (r, acc) in acc.iter_mut().enumerate() {
                let q = V::splat(*qb.add(r * d + dd));
                for (a, &k) in acc.iter_mut().zip(&kv) {
                    *a = V::fma(q, k, *a);
                }
            }
        }
    }
    for (r, acc) in acc.iter().enumerate() {
        for (v, a) in acc.iter().enumerate() {
            // SAFETY: in bounds by the function's contract.
            unsafe { a.store(s.add(r * lkp + j0 + v * V::LANES)) };
        }
    }
}

/// Output columns `c0 .. c0 + N·LANES` of `R` rows: `Σ_j p[r][j] · vp[j][c0 ..]`, scaled by
/// `inv[r]`, the first `width` columns stored at `out[r] = out0 + r·out_stride` (rows `< nr`).
///
/// # Safety
/// `p` holds `R·lkp`, `vp` `lk·dp` values with `c0 + N·LANES ≤ dp`; the output rows are
/// writable and owned by this thread; the CPU supports `V`.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn value_block<V: Vector, const R: usize, const N: usize>(
    p: *const f32,
    vp: *const f32,
    lk: usize,
    lkp: usize,
    dp: usize,
    c0: usize,
    inv: &[f32; R],
    out0: *mut f32,
    out_stride: usize,
    nr: usize,
    width: usize,
) {
    let mut acc = [[V::zero(); N]; R];
    for j in 0..lk {
        // SAFETY: in bounds by the function's contract.
        unsafe {
            let row = vp.add(j * dp + c0);
            let mut vv = [V::zero(); N];
            for (v, x) in vv.iter_mut().enumerate() {
                *x = V::load(row.add(v * V::LANES));
            }
            for (r, acc) in acc.iter_mut().enumerate() {
                let pr = V::splat(*p.add(r * lkp + j));
                for (a, &x) in acc.iter_mut().zip(&vv) {
                    *a = V::fma(pr, x, *a);
                }
            }
        }
    }
    let mut buf = [0.0f32; 64];
    for (r, acc) in acc.iter().enumerate().take(nr) {
        for (v, a) in acc.iter().enumerate() {
            // SAFETY: `buf` holds N·LANES ≤ 64 values.
            unsafe { a.store(buf.as_mut_ptr().add(v * V::LANES)) };
        }
        // SAFETY: the caller owns `width` values at this output row.
        let o = unsafe { std::slice::from_raw_parts_mut(out0.add(r * out_stride), width) };
        for (o, &x) in o.iter_mut().zip(&buf[..width]) {
            *o = x * inv[r];
        }
    }
}

/// The attention of a range of (item, head, query chunk) work items. `R` query rows per
/// register block, `NS` key vectors per score block, `W = V::LANES`.
#[inline(always)]
fn attention_items_impl<
    V: Vector,
    const W: usize,
    const R: usize,
    const NS: usize,
    const FMA: bool,
>(
    job: &AttnJob<'_>,
    items: Range<usize>,
    sc: &mut AttnScratch,
) {
    debug_assert_eq!(W, V::LANES);
    let AttentionShape {
        heads,
        lq,
        lk,
        head_dim: d,
        scale,
        ..
    } = job.io.shape;
    let inner = heads * d;
    let lkp = lk.div_ceil(W) * W;
    let dp = d.div_ceil(W) * W;
    for item in items {
        let bh = item / job.chunks_per_head;
        let (n, h) = (bh / heads, bh % heads);
        let q0 = (item % job.chunks_per_head) * job.q_chunk;
        let q1 = (q0 + job.q_chunk).min(lq);
        if sc.key != Some((n, h)) {
            // Kᵀ `[d, lkp]` and V `[lk, dp]`; the padding stays zero (the buffers only grow
            // zeroed, and only the used columns are ever written).
            if sc.kt.len() != d * lkp {
                sc.kt.clear();
                sc.kt.resize(d * lkp, 0.0);
                sc.vp.clear();
                sc.vp.resize(lk * dp, 0.0);
            }
            for j in 0..lk {
                let k = job.io.k.row(n, j, h, d);
                for (dd, &kv) in k.iter().enumerate() {
                    // SAFETY: dd < d, j < lk ≤ lkp.
                    unsafe { *sc.kt.get_unchecked_mut(dd * lkp + j) = kv };
                }
                sc.vp[j * dp..j * dp + d].copy_from_slice(job.io.v.row(n, j, h, d));
            }
            sc.key = Some((n, h));
        }
        sc.s.resize(R * lkp, 0.0);
        sc.qb.resize(R * d, 0.0);
        let mut i0 = q0;
        while i0 < q1 {
            let nr = R.min(q1 - i0);
            for r in 0..R {
                let dst = &mut sc.qb[r * d..(r + 1) * d];
                if r < nr {
                    for (o, &x) in dst.iter_mut().zip(job.io.q.row(n, i0 + r, h, d)) {
                        *o = x * scale;
                    }
                } else {
                    dst.fill(0.0);
                }
            }
            // Scores S = (scale·Q) Kᵀ.
            let mut j0 = 0;
            // SAFETY: the buffers have the sizes `score_block` requires; `isa` checked the CPU.
            unsafe {
                while j0 + NS * W <= lkp {
                    score_block::<V, R, NS>(
                        sc.qb.as_ptr(),
                        sc.kt.as_ptr(),
                        sc.s.as_mut_ptr(),
                        d,
                        lkp,
                        j0,
                    );
                    j0 += NS * W;
                }
                while j0 < lkp {
                    score_block::<V, R, 1>(
                        sc.qb.as_ptr(),
                        sc.kt.as_ptr(),
                        sc.s.as_mut_ptr(),
                        d,
                        lkp,
                        j0,
                    );
                    j0 += W;
                }
            }
            // Row softmax (unnormalised; 1/sum is applied to the output).
            let mut inv = [0.0f32; R];
            for (r, inv) in inv.iter_mut().enumerate().take(nr) {
                let row = &mut sc.s[r * lkp..r * lkp + lk];
                let mut mx = [f32::NEG_INFINITY; W];
                let chunks = row.chunks_exact(W);
                let tail = chunks.remainder();
                for c in chunks {
                    for l in 0..W {
                        mx[l] = mx[l].max(c[l]);
                    }
                }
                let mut m = tail.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
                for v in mx {
                    m = m.max(v);
                }
                let mut sum = [0.0f32; W];
                let mut chunks = row.chunks_exact_mut(W);
                for c in &mut chunks {
                    for l in 0..W {
                        let e = exp::<FMA>(c[l] - m);
                        c[l] = e;
                        sum[l] += e;
                    }
                }
                let mut total = 0.0f32;
                for v in chunks.into_remainder() {
                    let e = exp::<FMA>(*v - m);
                    *v = e;
                    total += e;
                }
                total += sum.iter().sum::<f32>();
                *inv = 1.0 / total;
            }
            // O = P V, up to 3 vectors of output columns at a time.
            // SAFETY: row i0 of head h of item n lies inside the output.
            let out0 = unsafe { job.io.out.at((n * lq + i0) * inner + h * d) };
            let mut c0 = 0;
            while c0 < dp {
                let left = (dp - c0) / W;
                let width = d.min(c0 + 3 * W) - c0;
                let (p, vp) = (sc.s.as_ptr(), sc.vp.as_ptr());
                let o = out0.wrapping_add(c0);
                // SAFETY: buffer sizes as `value_block` requires; the rows i0.. of head h of
                // item n belong to this work item.
                unsafe {
                    match left {
                        1 => value_block::<V, R, 1>(
                            p, vp, lk, lkp, dp, c0, &inv, o, inner, nr, width,
                        ),
                        2 => value_block::<V, R, 2>(
                            p, vp, lk, lkp, dp, c0, &inv, o, inner, nr, width,
                        ),
                        _ => value_block::<V, R, 3>(
                            p, vp, lk, lkp, dp, c0, &inv, o, inner, nr, width,
                        ),
                    }
                }
                c0 += 3 * W;
            }
            i0 += nr;
        }
    }
}

fn attention_items(job: &AttnJob<'_>, items: Range<usize>, sc: &mut AttnScratch) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{__m256, __m512};
        #[target_feature(enable = "avx512f,avx2,fma")]
        fn avx512(job: &AttnJob<'_>, items: Range<usize>, sc: &mut AttnScratch) {
            attention_items_impl::<__m512, 16, 8, 3, true>(job, items, sc)
        }
        #[target_feature(enable = "avx2,fma")]
        fn avx2(job: &AttnJob<'_>, items: Range<usize>, sc: &mut AttnScratch) {
            attention_items_impl::<__m256, 8, 4, 3, true>(job, items, sc)
        }
        match isa() {
            // SAFETY: the CPU supports the enabled features (checked by `isa`).
            Isa::Avx512 => return unsafe { avx512(job, items, sc) },
            Isa::Avx2 => return unsafe { avx2(job, items, sc) },
            Isa::Portable => {}
        }
    }
    attention_items_impl::<Lanes8, 8, 4, 2, false>(job, items, sc)
}

/// Query rows per work-item granule (a multiple of every kernel's row block).
const ROWS: usize = 8;

/// Multi-head softmax attention `softmax(scale · Q Kᵀ) V` for every item and head, reading
/// the heads straight out of the projection outputs and writing `[batch, lq, heads·head_dim]`
/// (heads merged, as the output projection wants them).
pub fn attention(
    q: HeadLayout<'_>,
    k: HeadLayout<'_>,
    v: HeadLayout<'_>,
    shape: AttentionShape,
) -> Vec<f32> {
    let AttentionShape {
        batch,
        heads,
        lq,
        lk,
        head_dim,
        ..
    } = shape;
    let mut out = vec![0.0f32; batch * lq * heads * head_dim];
    if out.is_empty() || lk == 0 {
        return out;
    }
    let bh = batch * heads;
    if query_lanes::suits(&shape) {
        query_lanes::attention(q, k, v, shape, isa(), &mut out);
        return out;
    }
    if [q, k, v].iter().any(|x| x.terms.is_some()) {
        let inner = heads * head_dim;
        let copy = |x: HeadLayout<'_>, rows| x.with_terms_added(batch, rows, heads, head_dim);
        let (qd, kd, vd) = (copy(q, lq), copy(k, lk), copy(v, lk));
        return attention(
            HeadLayout::packed(&qd, lq, inner, 0),
            HeadLayout::packed(&kd, lk, inner, 0),
            HeadLayout::packed(&vd, lk, inner, 0),
            shape,
        );
    }
    // Split long query sequences so that every thread gets work even for one (item, head).
    let threads = threads();
    let want = (4 * threads).div_ceil(bh).max(1);
    let q_chunk = lq.div_ceil(want).max(64).min(lq).div_ceil(ROWS) * ROWS;
    let chunks_per_head = lq.div_ceil(q_chunk);
    let job = AttnJob {
        io: AttentionIo {
            q,
            k,
            v,
            shape,
            out: SharedOut(out.as_mut_ptr()),
        },
        q_chunk,
        chunks_per_head,
    };
    let cost = 4 * bh * lq * lk * head_dim;
    parallel(bh * chunks_per_head, cost, |items| {
        let mut scratch = AttnScratch::default();
        attention_items(&job, items, &mut scratch);
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attention_matches_naive_softmax() {
        // Short and long sequences, key counts below, at and above the vector blocks.
        for (lq, lk) in [(21, 13), (16, 16), (3, 64), (70, 65), (9, 130)] {
            attention_case(2, lq, lk, 5);
        }
        // Short sequences at the query-lanes kernel's head dims, with ragged query blocks.
        for d in [4, 8, 16] {
            for (batch, lq, lk) in [(19, 16, 16), (3, 7, 33), (2, 64, 64), (5, 21, 1)] {
                let shape = AttentionShape {
                    batch,
                    heads: 3,
                    lq,
                    lk,
                    head_dim: d,
                    scale: 1.0,
                };
                assert!(query_lanes::suits(&shape));
                attention_case(batch, lq, lk, d);
            }
        }
    }

    fn attention_case(batch: usize, lq: usize, lk: usize, d: usize) {
        let heads = 3;
        let inner = heads * d;
        let val = |i: usize| ((i * 7919) % 1000) as f32 / 500.0 - 1.0;
        // Q, K, V fused in one [batch, L, 3·inner] buffer (lq = lk rows used for K/V).
        let rows = lq.max(lk);
        let qkv: Vec<f32> = (0..batch * rows * 3 * inner).map(val).collect();
        let layout = |offset| HeadLayout::packed(&qkv, rows, 3 * inner, offset);
        let scale = 0.37;
        let shape = AttentionShape {
            batch,
            heads,
            lq,
            lk,
            head_dim: d,
            scale,
        };
        let got = attention(layout(0), layout(inner), layout(2 * inner), shape);
        for n in 0..batch {
            for h in 0..heads {
                for i in 0..lq {
                    let q = layout(0).row(n, i, h, d);
                    let s: Vec<f64> = (0..lk)
                        .map(|j| {
                            let k = layout(inner).row(n, j, h, d);
                            scale as f64
                                * q.iter()
                                    .zip(k)
                                    .map(|(&a, &b)| a as f64 * b as f64)
                                    .sum::<f64>()
                        })
                        .collect();
                    let m = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                    let e: Vec<f64> = s.iter().map(|x| (x - m).exp()).collect();
                    let z: f64 = e.iter().sum();
                    for c in 0..d {
                        let want: f64 = (0..lk)
                            .map(|j| e[j] / z * layout(2 * inner).row(n, j, h, d)[c] as f64)
                            .sum();
                        let g = got[(n * lq + i) * inner + h * d + c] as f64;
                        assert!((g - want).abs() < 2e-6, "{n} {h} {i} {c}: {g} vs {want}");
                    }
                }
            }
        }
    }
}
