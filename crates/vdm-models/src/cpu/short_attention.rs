//! Softmax attention over many short sequences: the temporal attention of video UNets (one
//! sequence of a few dozen frames per spatial position and head, head dims of 4 to 40).
//!
//! The general kernel vectorises along the keys and the head dimension, which leaves most
//! lanes idle (and the per-row set-up dominant) when a sequence has 16 keys of 4 values.
//! Here every SIMD lane holds a different sequence: a block of `W` sequences of one head is
//! transposed into lane-major scratch, and each step (a score, its exponential, a weighted
//! value) is one full-width vector operation with no horizontal reduction.

use std::ops::Range;

use super::{AttentionShape, HeadLayout, SharedOut, exp};

/// Whether the lane-per-sequence kernel suits `shape`: short sequences, enough of them, and
/// head dims of at most 4 (AnimateDiff-style motion modules with 8 heads on 32 channels).
/// Measured on an AVX-512 core at 16 and 32 frames it takes about a third of the general
/// kernel's time at head dim 4, but longer from head dim 8 on, where gathering the lanes
/// costs more than the general kernel's idle lanes.
pub(super) fn suits(shape: &AttentionShape) -> bool {
    shape.lk <= 64 && shape.lq <= 64 && shape.head_dim <= 4 && shape.batch >= 8
}

/// Sequences per lane block for the instruction set in use.
pub(super) fn lanes() -> usize {
    match super::isa() {
        super::Isa::Avx512 => 16,
        _ => 8,
    }
}

/// One work item: the block of sequences `block·W ..` of head `head`.
pub(super) struct ShortJob<'a> {
    pub q: HeadLayout<'a>,
    pub k: HeadLayout<'a>,
    pub v: HeadLayout<'a>,
    pub shape: AttentionShape,
    pub out: SharedOut,
}

/// Per-thread scratch: `Q`, `K`, `V` transposed to `[row][c][lane]`, the scores of one query
/// `[key][lane]` and the output of one query `[c][lane]`.
#[derive(Default)]
pub(super) struct ShortScratch {
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    s: Vec<f32>,
    o: Vec<f32>,
}

/// Copies rows `0..rows` of head `h` of `W` sequences starting at `n0` (the first `valid`
/// real, the rest repeating the last real one) into `dst[row][c][lane]`: one lane vector at
/// a time, from the `W` source rows.
#[inline(always)]
fn gather<const W: usize>(
    src: &HeadLayout<'_>,
    n0: usize,
    valid: usize,
    rows: usize,
    h: usize,
    d: usize,
    dst: &mut [[f32; W]],
) {
    let start: [usize; W] = std::array::from_fn(|lane| {
        src.offset + (n0 + lane.min(valid - 1)) * src.batch_stride + h * d
    });
    let last = start[W - 1] + (rows - 1) * src.row_stride + d;
    assert!(
        rows > 0 && last <= src.data.len(),
        "attention input too short"
    );
    let data = src.data.as_ptr();
    for i in 0..rows {
        for c in 0..d {
            let at = i * src.row_stride + c;
            // SAFETY: the largest index read, start[W − 1] + (rows − 1)·row_stride + d − 1,
            // was checked above, and the starts are increasing.
            dst[i * d + c] = std::array::from_fn(|lane| unsafe { *data.add(start[lane] + at) });
        }
    }
}

#[inline(always)]
fn block_impl<const W: usize, const FMA: bool>(
    job: &ShortJob<'_>,
    items: Range<usize>,
    sc: &mut ShortScratch,
) {
    let AttentionShape {
        batch,
        heads,
        lq,
        lk,
        head_dim: d,
        scale,
    } = job.shape;
    let blocks = batch.div_ceil(W);
    for (buf, len) in [
        (&mut sc.q, lq * d * W),
        (&mut sc.k, lk * d * W),
        (&mut sc.v, lk * d * W),
        (&mut sc.s, lk * W),
        (&mut sc.o, d * W),
    ] {
        super::sized(buf, len);
    }
    let inner = heads * d;
    for item in items {
        let (block, h) = (item % blocks, item / blocks);
        let n0 = block * W;
        let valid = W.min(batch - n0);
        gather::<W>(
            &job.q,
            n0,
            valid,
            lq,
            h,
            d,
            sc.q[..lq * d * W].as_chunks_mut().0,
        );
        gather::<W>(
            &job.k,
            n0,
            valid,
            lk,
            h,
            d,
            sc.k[..lk * d * W].as_chunks_mut().0,
        );
        gather::<W>(
            &job.v,
            n0,
            valid,
            lk,
            h,
            d,
            sc.v[..lk * d * W].as_chunks_mut().0,
        );
        let (k, _) = sc.k[..lk * d * W].as_chunks::<W>();
        let (v, _) = sc.v[..lk * d * W].as_chunks::<W>();
        let (qs, _) = sc.q[..lq * d * W].as_chunks::<W>();
        let (scores, _) = sc.s[..lk * W].as_chunks_mut::<W>();
        let (o, _) = sc.o[..d * W].as_chunks_mut::<W>();
        for i in 0..lq {
            let q = &qs[i * d..(i + 1) * d];
            // Scores and their maximum, lane by lane.
            let mut max = [f32::NEG_INFINITY; W];
            for (j, s) in scores.iter_mut().enumerate() {
                let mut acc = [0.0f32; W];
                for (qc, kc) in q.iter().zip(&k[j * d..(j + 1) * d]) {
                    let (qc, kc) = (*qc, *kc);
                    for l in 0..W {
                        acc[l] = super::madd::<FMA>(qc[l], kc[l], acc[l]);
                    }
                }
                for l in 0..W {
                    acc[l] *= scale;
                    max[l] = max[l].max(acc[l]);
                }
                *s = acc;
            }
            // Exponentials, their sum, and the weighted values.
            for oc in o.iter_mut() {
                *oc = [0.0; W];
            }
            let mut sum = [0.0f32; W];
            for (j, s) in scores.iter().enumerate() {
                let s = *s;
                let mut e = [0.0f32; W];
                for l in 0..W {
                    e[l] = exp::<FMA>(s[l] - max[l]);
                    sum[l] += e[l];
                }
                for (oc, vc) in o.iter_mut().zip(&v[j * d..(j + 1) * d]) {
                    // Through locals: the buffers are not known not to alias, which would
                    // keep the compiler from vectorising in place.
                    let (mut acc, vc) = (*oc, *vc);
                    for l in 0..W {
                        acc[l] = super::madd::<FMA>(e[l], vc[l], acc[l]);
                    }
                    *oc = acc;
                }
            }
            let mut inv = [0.0f32; W];
            for l in 0..W {
                inv[l] = 1.0 / sum[l];
            }
            for lane in 0..valid {
                let row = ((n0 + lane) * lq + i) * inner + h * d;
                for (c, oc) in o.iter().enumerate() {
                    // SAFETY: (item n0 + lane, query i, head h) is written by this work item
                    // only, inside the [batch, lq, heads·d] output.
                    unsafe { *job.out.at(row + c) = oc[lane] * inv[lane] };
                }
            }
        }
    }
}

// Work items `items` (`block + blocks·head`) of `job`.
dispatch!(pub(super) fn blocks(job: &ShortJob<'_>, items: Range<usize>, sc: &mut ShortScratch) => block_impl);
