//! Winograd `F(2×2, 3×3)` convolution (Lavin & Gray, "Fast Algorithms for Convolutional
//! Neural Networks", CVPR 2016) for the 3×3, stride-1, padding-1 convolutions that make up
//! most of the UNets' and the VAE's convolution work.
//!
//! Every 2×2 output tile is `Aᵀ·[(G·g·Gᵀ) ⊙ (Bᵀ·d·B)]·A` of its 4×4 input patch `d` and the
//! filter `g`. Summed over input channels, the 16 element-wise products become 16 GEMMs
//! `M[e] = U[e]·V[e]` (`[C_out, C_in] × [C_in, tiles]`) with 2.25× fewer multiply-adds than
//! the im2col GEMM; the transforms are additions (and halvings of the filter), so the result
//! equals the direct convolution to float rounding. Tiles of several images share one GEMM
//! so that small feature maps still give wide GEMMs.

use std::ops::Range;

use super::{Mat, MatMut, gemm_into};

/// Tiles per GEMM worth gathering from several images (the GEMMs' `n`).
const TILES_PER_GEMM: usize = 256;

/// Transformed filters of one 3×3 convolution.
pub(super) struct Winograd {
    /// `U[e] = G·g·Gᵀ` at `e = 4·i + j`: 16 row-major matrices `[cout, cin]`.
    u: Vec<f32>,
    cout: usize,
    cin: usize,
    /// Floats of transformed tiles and products one call may hold (bands of tile rows keep
    /// large images under it).
    budget: usize,
}

/// Per-thread buffers of [`Winograd::accumulate`].
#[derive(Default)]
pub(super) struct Scratch {
    /// Transformed input tiles `V[e]`: 16 matrices `[cin, tiles]`.
    v: Vec<f32>,
    /// GEMM results `M[e]`: 16 matrices `[cout, tiles]`.
    m: Vec<f32>,
    /// Padded input rows and their combinations (input transform), or the four output rows
    /// of one tile row (output transform).
    rows: Vec<f32>,
}

impl Scratch {
    /// Frees the buffers that grew beyond the kept size.
    pub fn trim(&mut self) {
        for buf in [&mut self.v, &mut self.m, &mut self.rows] {
            super::trim(buf);
        }
    }
}

/// Tiles along one side of length `n`.
fn tiles(n: usize) -> usize {
    n.div_ceil(2)
}

impl Winograd {
    /// Transforms `weight` `[cout, cin, 3, 3]` (row-major), in parallel chunks of filters.
    pub fn new(weight: &[f32], cout: usize, cin: usize) -> Self {
        assert_eq!(weight.len(), cout * cin * 9, "3×3 filter bank");
        const CHUNK: usize = 512;
        let filters = cout * cin;
        let u = {
            let fill = |ptr| {
                let u = super::SharedOut(ptr);
                let chunks = filters.div_ceil(CHUNK);
                super::parallel(chunks, 50 * filters, |range| {
                    let mut taps = vec![0.0; 21 * CHUNK];
                    for chunk in range {
                        let first = chunk * CHUNK;
                        let len = CHUNK.min(filters - first);
                        // SAFETY: chunk `chunk` owns elements first..first + len of every U[e].
                        let planes: [&mut [f32]; 16] = std::array::from_fn(|e| unsafe {
                            std::slice::from_raw_parts_mut(u.at(e * filters + first), len)
                        });
                        filter_transform(&weight[9 * first..9 * (first + len)], &mut taps, planes);
                    }
                });
            };
            // SAFETY: `fill` writes every element of the buffer.
            unsafe { super::filled(16 * filters, fill) }
        };
        Self {
            u,
            cout,
            cin,
            budget: 1 << 21,
        }
    }

    /// Images per [`accumulate`](Self::accumulate) call for `n` images of `h × w` on
    /// `threads` threads: enough tiles for wide GEMMs, but at least one call per thread when
    /// there are enough images.
    pub fn images_per_call(n: usize, [h, w]: [usize; 2], threads: usize) -> usize {
        let per_image = tiles(h) * tiles(w);
        TILES_PER_GEMM
            .div_ceil(per_image)
            .min(n.div_ceil(threads.max(1)))
            .max(1)
    }

    /// `out += conv(x)` for `imgs` consecutive images: `x` `[imgs, cin, h, w]` into `out`
    /// `[imgs, cout, h, w]` (already initialised), with GEMMs on up to `threads` threads.
    ///
    /// # Safety
    /// `out` holds `imgs·cout·h·w` initialised values that no other thread accesses.
    pub unsafe fn accumulate(
        &self,
        x: &[f32],
        imgs: usize,
        [h, w]: [usize; 2],
        out: *mut f32,
        scratch: &mut Scratch,
        threads: usize,
    ) {
        let (th, tw) = (tiles(h), tiles(w));
        if imgs == 0 || th == 0 || tw == 0 {
            return;
        }
        assert_eq!(x.len(), imgs * self.cin * h * w, "Winograd input size");
        // A large image goes in bands of tile rows, so that the transformed tiles (kept per
        // thread between calls) stay a few MiB.
        let band = if imgs == 1 {
            (self.max_tiles() / tw).clamp(1, th)
        } else {
            th
        };
        for first in (0..th).step_by(band) {
            // SAFETY: forwarded from the caller.
            unsafe {
                self.tile_rows(
                    x,
                    imgs,
                    [h, w],
                    first..(first + band).min(th),
                    out,
                    scratch,
                    threads,
                )
            };
        }
    }

    /// Tiles per call that keep the transformed inputs and products within the budget
    /// (8 MiB), but at least 32 and at most 4096.
    fn max_tiles(&self) -> usize {
        (self.budget / (16 * (self.cin + self.cout))).clamp(32, 4096)
    }

    /// [`accumulate`](Self::accumulate) for the tile rows `rows` of every image.
    ///
    /// # Safety
    /// As [`accumulate`](Self::accumulate).
    #[allow(clippy::too_many_arguments)]
    unsafe fn tile_rows(
        &self,
        x: &[f32],
        imgs: usize,
        [h, w]: [usize; 2],
        rows: Range<usize>,
        out: *mut f32,
        scratch: &mut Scratch,
        threads: usize,
    ) {
        let (cin, cout) = (self.cin, self.cout);
        let per_image = rows.len() * tiles(w);
        let total = imgs * per_image;
        let Scratch { v, m, rows: line } = scratch;
        v.resize(16 * cin * total, 0.0);
        m.resize(16 * cout * total, 0.0);
        line.resize(16 * (tiles(w) + 1), 0.0);
        for (i, image) in x.chunks_exact(cin * h * w).enumerate() {
            input_transform(image, [h, w], rows.clone(), v, total, i * per_image, line);
        }
        for e in 0..16 {
            // SAFETY: U[e] is [cout, cin], V[e] is [cin, total], M[e] is [cout, total], all
            // inside their buffers; M is this thread's own.
            unsafe {
                gemm_into(
                    cout,
                    total,
                    cin,
                    MatMut::rows(m.as_mut_ptr().add(e * cout * total), total),
                    false,
                    Mat::rows(&self.u[e * cout * cin..(e + 1) * cout * cin], cin),
                    Mat::rows(&v[e * cin * total..(e + 1) * cin * total], total),
                    threads,
                );
            }
        }
        for i in 0..imgs {
            // SAFETY: image i's output block, owned by the caller's thread.
            let image =
                unsafe { std::slice::from_raw_parts_mut(out.add(i * cout * h * w), cout * h * w) };
            output_transform(
                m,
                [cout, total],
                i * per_image,
                [h, w],
                rows.clone(),
                image,
                line,
            );
        }
    }
}

/// `U[e][f] = (G·g_f·Gᵀ)[e]` for consecutive 3×3 filters `g_f` (`weight` `[len, 3, 3]`),
/// with `G = [[1, 0, 0], [½, ½, ½], [½, −½, ½], [0, 0, 1]]`. `taps` (scratch, `21·len`) holds
/// the filters' nine taps and the twelve planes of `G·g` so that every step runs over whole
/// planes.
#[inline(always)]
fn filter_transform_impl<const W: usize, const FMA: bool>(
    weight: &[f32],
    taps: &mut [f32],
    mut planes: [&mut [f32]; 16],
) {
    let len = weight.len() / 9;
    let (taps, cols) = taps[..21 * len].split_at_mut(9 * len);
    for (f, k) in weight.chunks_exact(9).enumerate() {
        for (t, &v) in k.iter().enumerate() {
            taps[t * len + f] = v;
        }
    }
    // G applied to a triple of planes: the four planes [a, ½(a + b + c), ½(a − b + c), c].
    fn g(a: &[f32], b: &[f32], c: &[f32], out: [&mut [f32]; 4]) {
        let [o0, o1, o2, o3] = out;
        o0.copy_from_slice(a);
        o3.copy_from_slice(c);
        for (((o1, o2), (&a, &b)), &c) in
            o1.iter_mut().zip(o2.iter_mut()).zip(a.iter().zip(b)).zip(c)
        {
            *o1 = 0.5 * (a + b + c);
            *o2 = 0.5 * (a - b + c);
        }
    }
    // Columns: cols[i][b] = Σ_a G[i][a]·g[a][b], plane (4·b + i), so that the four planes
    // of one column are consecutive.
    for (b, col) in cols.chunks_exact_mut(4 * len).enumerate() {
        let tap = |a: usize| &taps[(3 * a + b) * len..][..len];
        let mut out = col.chunks_exact_mut(len);
        g(
            tap(0),
            tap(1),
            tap(2),
            std::array::from_fn(|_| out.next().expect("4 planes")),
        );
    }
    // Rows: U[4·i + j] = Σ_b G[j][b]·cols[i][b].
    for i in 0..4 {
        let col = |b: usize| &cols[(4 * b + i) * len..][..len];
        let [p0, p1, p2, p3, ..] = &mut planes[4 * i..] else {
            unreachable!("16 planes")
        };
        g(
            col(0),
            col(1),
            col(2),
            [&mut p0[..], &mut p1[..], &mut p2[..], &mut p3[..]],
        );
    }
}

fn filter_transform(weight: &[f32], taps: &mut [f32], planes: [&mut [f32]; 16]) {
    dispatch!(fn run(weight: &[f32], taps: &mut [f32], planes: [&mut [f32]; 16]) => filter_transform_impl);
    run(weight, taps, planes)
}

/// `V[e][c][t0 + t] = (Bᵀ·d·B)[e]` for every tile `t` of one image `x` `[cin, h, w]`, with
/// `Bᵀ = [[1, 0, −1, 0], [0, 1, 1, 0], [0, −1, 1, 0], [0, 1, 0, −1]]` and `d` the 4×4 patch
/// at rows `2·ty − 1 ..`, columns `2·tx − 1 ..` (zero outside the image).
#[inline(always)]
fn input_transform_impl<const W: usize, const FMA: bool>(
    x: &[f32],
    [h, w]: [usize; 2],
    tile_rows: Range<usize>,
    v: &mut [f32],
    total: usize,
    t0: usize,
    rows: &mut [f32],
) {
    let tw = tiles(w);
    // Padded columns 0 ..= 2·tw + 1 (padded column p is image column p − 1), split into even
    // and odd ones so that every tile's four columns are unit-stride reads.
    let n = tw + 1;
    let cin = x.len() / (h * w);
    let (input, combos) = rows[..16 * n].split_at_mut(8 * n);
    for (c, plane) in x.chunks_exact(h * w).enumerate() {
        for ty in tile_rows.clone() {
            for (i, row) in input.chunks_exact_mut(2 * n).enumerate() {
                row.fill(0.0);
                if let Some(y) = (2 * ty + i).checked_sub(1).filter(|&y| y < h) {
                    let src = &plane[y * w..(y + 1) * w];
                    let (even, odd) = row.split_at_mut(n);
                    for (m, pair) in src.chunks_exact(2).enumerate() {
                        odd[m] = pair[0];
                        even[m + 1] = pair[1];
                    }
                    if w % 2 == 1 {
                        odd[w / 2] = src[w - 1];
                    }
                }
            }
            // Bᵀ over the patch rows, for every column at once.
            let (r0, rest) = input.split_at(2 * n);
            let (r1, rest) = rest.split_at(2 * n);
            let (r2, r3) = rest.split_at(2 * n);
            let (s0, rest) = combos.split_at_mut(2 * n);
            let (s1, rest) = rest.split_at_mut(2 * n);
            let (s2, s3) = rest.split_at_mut(2 * n);
            for k in 0..2 * n {
                s0[k] = r0[k] - r2[k];
                s1[k] = r1[k] + r2[k];
                s2[k] = r2[k] - r1[k];
                s3[k] = r1[k] - r3[k];
            }
            // ·B over the patch columns 2·tx .. 2·tx + 4 of every tile: with `e` and `o` the
            // even and odd columns these are e[tx], o[tx], e[tx + 1], o[tx + 1].
            let base = t0 + (ty - tile_rows.start) * tw;
            for (i, s) in combos.chunks_exact(2 * n).enumerate() {
                let (e, o) = s.split_at(n);
                let (e0, e1, o0, o1) = (&e[..tw], &e[1..=tw], &o[..tw], &o[1..=tw]);
                let at = |j: usize| ((4 * i + j) * cin + c) * total + base;
                let d = &mut v[at(0)..][..tw];
                for t in 0..tw {
                    d[t] = e0[t] - e1[t];
                }
                let d = &mut v[at(1)..][..tw];
                for t in 0..tw {
                    d[t] = o0[t] + e1[t];
                }
                let d = &mut v[at(2)..][..tw];
                for t in 0..tw {
                    d[t] = e1[t] - o0[t];
                }
                let d = &mut v[at(3)..][..tw];
                for t in 0..tw {
                    d[t] = o0[t] - o1[t];
                }
            }
        }
    }
}
dispatch!(fn input_transform(
    x: &[f32],
    hw: [usize; 2],
    tile_rows: Range<usize>,
    v: &mut [f32],
    total: usize,
    t0: usize,
    rows: &mut [f32],
) => input_transform_impl);

/// `out[o, 2·ty + r, 2·tx + s] += (Aᵀ·M[·][o][t0 + t]·A)[r][s]` for every tile `t` of one
/// image `out` `[cout, h, w]`, with `Aᵀ = [[1, 1, 1, 0], [0, 1, −1, −1]]`.
#[inline(always)]
fn output_transform_impl<const W: usize, const FMA: bool>(
    m: &[f32],
    [cout, total]: [usize; 2],
    t0: usize,
    [h, w]: [usize; 2],
    tile_rows: Range<usize>,
    out: &mut [f32],
    rows: &mut [f32],
) {
    let tw = tiles(w);
    let (y00, rest) = rows[..4 * tw].split_at_mut(tw);
    let (y01, rest) = rest.split_at_mut(tw);
    let (y10, y11) = rest.split_at_mut(tw);
    for (o, plane) in out.chunks_exact_mut(h * w).enumerate() {
        for ty in tile_rows.clone() {
            let base = t0 + (ty - tile_rows.start) * tw;
            let e = |e: usize| &m[(e * cout + o) * total + base..][..tw];
            let (m00, m01, m02, m03) = (e(0), e(1), e(2), e(3));
            let (m10, m11, m12, m13) = (e(4), e(5), e(6), e(7));
            let (m20, m21, m22, m23) = (e(8), e(9), e(10), e(11));
            let (m30, m31, m32, m33) = (e(12), e(13), e(14), e(15));
            for t in 0..tw {
                // Aᵀ over rows i, then ·A over columns j.
                let p0 = [
                    m00[t] + m10[t] + m20[t],
                    m01[t] + m11[t] + m21[t],
                    m02[t] + m12[t] + m22[t],
                    m03[t] + m13[t] + m23[t],
                ];
                let p1 = [
                    m10[t] - m20[t] - m30[t],
                    m11[t] - m21[t] - m31[t],
                    m12[t] - m22[t] - m32[t],
                    m13[t] - m23[t] - m33[t],
                ];
                y00[t] = p0[0] + p0[1] + p0[2];
                y01[t] = p0[1] - p0[2] - p0[3];
                y10[t] = p1[0] + p1[1] + p1[2];
                y11[t] = p1[1] - p1[2] - p1[3];
            }
            for (r, (ya, yb)) in [(&*y00, &*y01), (&*y10, &*y11)].into_iter().enumerate() {
                let y = 2 * ty + r;
                if y >= h {
                    break;
                }
                let line = &mut plane[y * w..(y + 1) * w];
                let pairs = w / 2;
                for (t, pair) in line[..2 * pairs].chunks_exact_mut(2).enumerate() {
                    pair[0] += ya[t];
                    pair[1] += yb[t];
                }
                if w % 2 == 1 {
                    line[w - 1] += ya[pairs];
                }
            }
        }
    }
}
dispatch!(fn output_transform(
    m: &[f32],
    sizes: [usize; 2],
    t0: usize,
    hw: [usize; 2],
    tile_rows: Range<usize>,
    out: &mut [f32],
    rows: &mut [f32],
) => output_transform_impl);

#[cfg(test)]
mod tests {
    use super::*;

    /// Direct cross-correlation with zero padding 1.
    fn direct(
        x: &[f32],
        weight: &[f32],
        n: usize,
        cin: usize,
        cout: usize,
        h: usize,
        w: usize,
    ) -> Vec<f64> {
        let mut out = vec![0.0; n * cout * h * w];
        for i in 0..n {
            for o in 0..cout {
                for y in 0..h {
                    for xx in 0..w {
                        let mut acc = 0.0f64;
                        for c in 0..cin {
                            for a in 0..3 {
                                for b in 0..3 {
                                    let (yy, xs) = (y + a, xx + b);
                                    if yy == 0 || xs == 0 || yy > h || xs > w {
                                        continue;
                                    }
                                    acc += weight[((o * cin + c) * 3 + a) * 3 + b] as f64
                                        * x[((i * cin + c) * h + yy - 1) * w + xs - 1] as f64;
                                }
                            }
                        }
                        out[((i * cout + o) * h + y) * w + xx] = acc;
                    }
                }
            }
        }
        out
    }

    #[test]
    fn equals_the_direct_convolution() {
        let val = |i: usize, salt: usize| (((i * 7919 + salt) % 1013) as f32 / 506.5) - 1.0;
        // Odd and even sizes, one-pixel images, several images per call.
        for (n, cin, cout, h, w, per_call) in [
            (3, 5, 4, 7, 9, 1),
            (3, 5, 4, 7, 9, 3),
            (2, 3, 6, 8, 8, 2),
            (4, 2, 3, 1, 1, 4),
            (2, 4, 2, 2, 5, 1),
        ] {
            let x: Vec<f32> = (0..n * cin * h * w).map(|i| val(i, 1)).collect();
            let weight: Vec<f32> = (0..cout * cin * 9).map(|i| val(i, 2)).collect();
            let want = direct(&x, &weight, n, cin, cout, h, w);
            let wg = Winograd::new(&weight, cout, cin);
            // Start from a non-zero output to check the accumulation.
            let mut out: Vec<f32> = (0..n * cout * h * w).map(|i| val(i, 3)).collect();
            let start = out.clone();
            let mut scratch = Scratch::default();
            for first in (0..n).step_by(per_call) {
                let imgs = per_call.min(n - first);
                // SAFETY: the block lies inside `out`, owned here.
                unsafe {
                    wg.accumulate(
                        &x[first * cin * h * w..(first + imgs) * cin * h * w],
                        imgs,
                        [h, w],
                        out.as_mut_ptr().add(first * cout * h * w),
                        &mut scratch,
                        2,
                    );
                }
            }
            for (k, ((&got, &base), &want)) in out.iter().zip(&start).zip(&want).enumerate() {
                let got = (got - base) as f64;
                assert!(
                    (got - want).abs() < 2e-5,
                    "n {n} cin {cin} cout {cout} {h}×{w}, element {k}: {got} vs {want}"
                );
            }
        }
    }

    #[test]
    fn large_images_go_in_bands_of_tile_rows() {
        let val = |i: usize, salt: usize| (((i * 7919 + salt) % 1013) as f32 / 506.5) - 1.0;
        // 23 × 21: 12 tile rows of 11 tiles; a budget of 32 tiles gives bands of 2 rows.
        let (cin, cout, h, w) = (3, 2, 23, 21);
        let x: Vec<f32> = (0..cin * h * w).map(|i| val(i, 5)).collect();
        let weight: Vec<f32> = (0..cout * cin * 9).map(|i| val(i, 6)).collect();
        let want = direct(&x, &weight, 1, cin, cout, h, w);
        let mut wg = Winograd::new(&weight, cout, cin);
        wg.budget = 32 * 16 * (cin + cout);
        assert_eq!(wg.max_tiles(), 32);
        let mut out = vec![0.0f32; cout * h * w];
        // SAFETY: `out` is this image's output, owned here.
        unsafe {
            wg.accumulate(&x, 1, [h, w], out.as_mut_ptr(), &mut Scratch::default(), 1);
        }
        for (k, (&got, &want)) in out.iter().zip(&want).enumerate() {
            assert!(
                (got as f64 - want).abs() < 2e-5,
                "element {k}: {got} vs {want}"
            );
        }
    }

    #[test]
    fn blocks_keep_one_call_per_thread() {
        assert_eq!(Winograd::images_per_call(16, [32, 32], 2), 1);
        assert_eq!(Winograd::images_per_call(16, [16, 16], 2), 4);
        assert_eq!(Winograd::images_per_call(16, [8, 8], 2), 8);
        assert_eq!(Winograd::images_per_call(64, [4, 4], 2), 32);
        assert_eq!(Winograd::images_per_call(1, [4, 4], 2), 1);
    }
}
