//! Fused `f32` kernels for Burn's flex (CPU) backend: multi-head attention straight from the
//! projection layouts (plus a query-per-lane kernel for short sequences with small heads,
//! [`query_lanes`]), the GEGLU gate, GroupNorm (+ SiLU) in place, im2col and Winograd
//! `F(2×2, 3×3)` convolutions ([`winograd`]), resnet blocks, and the frame-shift sum of
//! ModelScope's temporal convolution.
//!
//! Why: flex runs these as chains of single-threaded scalar element-wise ops (libm `expf` /
//! `erff`), each allocating a fresh activation-sized buffer, and its attention packs small GEMM
//! tiles per key block. These kernels do one or two passes over the data instead, vectorise
//! (the hot loops are compiled for AVX-512 and for AVX2 + FMA, selected at run time) and use
//! every core of rayon's global pool (the one flex and gemm use; `RAYON_NUM_THREADS` sets its
//! size). With the `flex` feature they read flex tensors in place ([`Host`]): weights and
//! shared activations are not copied. Per-thread buffers are kept between calls.
//!
//! They run only when [`enabled`]: tensors on the flex device, `f32`, no autodiff, and the
//! environment variable `VDM_NO_CPU_KERNELS` unset (or `0`). Every caller keeps its plain Burn
//! path for every other case (GPU backends, `f16`, training), which is also the reference the
//! tests compare against. Results agree with the Burn path to float rounding (≈ 1e-6): `exp`
//! is a Cephes-style polynomial (≈ 1 ulp), `erf` the Abramowitz–Stegun 7.1.26 form
//! (|error| ≤ 1.5e-7).
//!
//! Size: this file (over 2000 lines) still holds threading, host views, the SIMD abstraction,
//! norms, convolutions, the fused resnet block and attention together. It is not one idea;
//! issue 14 splits it into a kernel layer of one file per family. Not yet done.

use std::ops::Range;
use std::sync::OnceLock;

use burn::tensor::{DType, Device, Tensor, TensorData};

/// Whether the fused kernels apply to tensors of `dtype` on `device`
/// ([`vdm_core::host::cpu_kernels`]).
pub(crate) fn enabled(device: &Device, dtype: DType) -> bool {
    #[cfg(test)]
    if tests::FORCE_BURN.with(|f| f.get()) {
        return false;
    }
    vdm_core::host::cpu_kernels(device, dtype)
}

/// Threads used by the kernels: those of rayon's global pool (as flex and gemm), i.e.
/// `RAYON_NUM_THREADS` if set, else all cores.
pub(crate) fn threads() -> usize {
    rayon::current_num_threads()
}

/// Threads for each GEMM when `items` work items already run in parallel: one when there is
/// an item per thread, else all of them.
fn gemm_threads(items: usize) -> usize {
    if items >= threads() { 1 } else { threads() }
}

/// Runs `f` over contiguous ranges of `0..items` on up to [`threads`] threads of rayon's
/// global pool; `cost` (≈ floating-point operations in total) keeps small jobs on the calling
/// thread.
fn parallel(items: usize, cost: usize, f: impl Fn(Range<usize>) + Sync) {
    const MIN_COST_PER_THREAD: usize = 1 << 18;
    let threads = threads().min(items).min(cost / MIN_COST_PER_THREAD).max(1);
    if threads == 1 {
        f(0..items);
        return;
    }
    let per = items.div_ceil(threads);
    // Rayon's global pool (the one flex and gemm use): no threads are started per call.
    use rayon::prelude::*;
    (0..threads).into_par_iter().for_each(|t| {
        let range = (t * per).min(items)..((t + 1) * per).min(items);
        if !range.is_empty() {
            f(range);
        }
    });
}

/// A raw output pointer shared by threads that write disjoint elements.
#[derive(Clone, Copy)]
struct SharedOut(*mut f32);
// SAFETY: every kernel below writes each output element from exactly one thread, and the
// buffer outlives the scoped threads.
unsafe impl Send for SharedOut {}
unsafe impl Sync for SharedOut {}

impl SharedOut {
    /// The pointer to element `i` (a method, so that closures capture the whole wrapper).
    #[inline(always)]
    fn at(self, i: usize) -> *mut f32 {
        // SAFETY: callers stay inside the buffer.
        unsafe { self.0.add(i) }
    }
}

/// The `f32` values of a tensor on the host ([`vdm_core::host::HostF32`]: flex tensors are
/// read in place).
pub(crate) type Host = vdm_core::host::HostF32;

/// The host values of `t` (an `f32` tensor: the kernels run only when [`enabled`]).
pub(crate) fn host<const D: usize>(t: Tensor<D>) -> Host {
    Host::new(t).expect("cpu kernels run on f32 tensors only")
}

/// A flex tensor owning `data`.
pub(crate) fn tensor<const D: usize>(data: TensorData, device: &Device) -> Tensor<D> {
    Tensor::from_data(data, device)
}

/// The values of `data`.
pub(crate) fn f32s(data: &Host) -> &[f32] {
    data.as_slice()
}

/// The values of `data`, mutable (copied first if the buffer is shared).
pub(crate) fn f32s_mut(data: &mut Host) -> &mut [f32] {
    data.as_mut_slice()
}

// ---------------------------------------------------------------------------------------------
// Instruction-set dispatch. Kernels are generic over the vector width `W` (lanes of the
// fixed-size arrays LLVM vectorises) and `FMA`; `dispatch!` calls the AVX-512, AVX2 + FMA or
// portable instance.
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Isa {
    Avx512,
    Avx2,
    Portable,
}

pub(crate) fn isa() -> Isa {
    static ISA: OnceLock<Isa> = OnceLock::new();
    *ISA.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx512f") {
                return Isa::Avx512;
            }
            if std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
            {
                return Isa::Avx2;
            }
        }
        Isa::Portable
    })
}

/// Defines `$name(args)` calling `$generic::<W, FMA>(args)` compiled for the best available
/// instruction set.
macro_rules! dispatch {
    ($vis:vis fn $name:ident($($arg:ident: $ty:ty),* $(,)?) => $generic:ident) => {
        $vis fn $name($($arg: $ty),*) {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx2,fma")]
                fn avx512($($arg: $ty),*) {
                    $generic::<16, true>($($arg),*)
                }
                #[target_feature(enable = "avx2,fma")]
                fn avx2($($arg: $ty),*) {
                    $generic::<8, true>($($arg),*)
                }
                match $crate::cpu::isa() {
                    // SAFETY: the CPU supports the enabled features (checked by `isa`).
                    $crate::cpu::Isa::Avx512 => return unsafe { avx512($($arg),*) },
                    $crate::cpu::Isa::Avx2 => return unsafe { avx2($($arg),*) },
                    $crate::cpu::Isa::Portable => {}
                }
            }
            $generic::<8, false>($($arg),*)
        }
    };
}

mod query_lanes;
mod winograd;

#[inline(always)]
fn madd<const FMA: bool>(a: f32, b: f32, c: f32) -> f32 {
    if FMA { a.mul_add(b, c) } else { a * b + c }
}

/// `e^x` (Cephes `expf` polynomial, ≈ 1 ulp), branch-free so that loops over it vectorise;
/// `x` is clamped to `[-87, 88]`.
#[inline(always)]
fn exp<const FMA: bool>(x: f32) -> f32 {
    const MAGIC: f32 = 12_582_912.0; // 1.5 · 2^23: adding it rounds to an integer
    let x = x.clamp(-87.0, 88.0);
    let t = madd::<FMA>(x, std::f32::consts::LOG2_E, MAGIC);
    let n = t - MAGIC;
    let r = madd::<FMA>(n, -0.693_359_4, x);
    let r = madd::<FMA>(n, 2.121_944_4e-4, r);
    let mut p = 1.987_569_2e-4;
    p = madd::<FMA>(p, r, 1.398_199_9e-3);
    p = madd::<FMA>(p, r, 8.333_452e-3);
    p = madd::<FMA>(p, r, 4.166_579_6e-2);
    p = madd::<FMA>(p, r, 1.666_666_5e-1);
    p = madd::<FMA>(p, r, 0.5);
    let y = madd::<FMA>(p, r * r, r) + 1.0;
    let k = t.to_bits().wrapping_sub(MAGIC.to_bits()) as i32;
    y * f32::from_bits(((k + 127) << 23) as u32)
}

/// `x · sigmoid(x)`.
#[inline(always)]
fn silu<const FMA: bool>(x: f32) -> f32 {
    x / (1.0 + exp::<FMA>(-x))
}

/// Exact-form GELU `x/2 · (1 + erf(x/√2))` with `erfc(|z|)` from Abramowitz–Stegun 7.1.26
/// (`1 + erf(z)` is `erfc(|z|)` for `z < 0`, so small negative outputs keep their precision).
#[inline(always)]
fn gelu<const FMA: bool>(x: f32) -> f32 {
    let z = (x * std::f32::consts::FRAC_1_SQRT_2).abs();
    let t = 1.0 / madd::<FMA>(0.327_591_1, z, 1.0);
    let mut p = 1.061_405_4;
    p = madd::<FMA>(p, t, -1.453_152);
    p = madd::<FMA>(p, t, 1.421_413_7);
    p = madd::<FMA>(p, t, -0.284_496_74);
    p = madd::<FMA>(p, t, 0.254_829_6);
    let erfc = p * t * exp::<FMA>(-z * z);
    let one_plus_erf = if x >= 0.0 { 2.0 - erfc } else { erfc };
    0.5 * x * one_plus_erf
}

// ---------------------------------------------------------------------------------------------
// Element-wise kernels.
// ---------------------------------------------------------------------------------------------

#[inline(always)]
fn geglu_rows_impl<const W: usize, const FMA: bool>(h: &[f32], out: &mut [f32], hidden: usize) {
    for (row, o) in h.chunks_exact(2 * hidden).zip(out.chunks_exact_mut(hidden)) {
        let (value, gate) = row.split_at(hidden);
        for ((o, &a), &g) in o.iter_mut().zip(value).zip(gate) {
            *o = a * gelu::<FMA>(g);
        }
    }
}
dispatch!(fn geglu_rows(h: &[f32], out: &mut [f32], hidden: usize) => geglu_rows_impl);

// ---------------------------------------------------------------------------------------------
// GEMM (the `gemm` crate flex itself uses) and the layers built on it.
// ---------------------------------------------------------------------------------------------

/// A strided matrix: element `(i, j)` at `ptr + i·rs + j·cs`.
#[derive(Clone, Copy)]
pub(crate) struct Mat {
    pub ptr: *const f32,
    pub rs: isize,
    pub cs: isize,
}

/// A strided mutable matrix.
#[derive(Clone, Copy)]
pub(crate) struct MatMut {
    pub ptr: *mut f32,
    pub rs: isize,
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
pub(crate) unsafe fn gemm_into(
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

/// Host copies of a Burn [`Linear`](burn::nn::Linear)'s weight `[d_in, d_out]` and bias.
pub(crate) struct LinearHost {
    pub weight: Host,
    pub bias: Option<Host>,
    pub d_in: usize,
    pub d_out: usize,
}

impl LinearHost {
    pub fn new(lin: &burn::nn::Linear) -> Self {
        let [d_in, d_out] = lin.weight.dims();
        Self {
            weight: host(lin.weight.val()),
            bias: lin.bias.as_ref().map(|b| host(b.val())),
            d_in,
            d_out,
        }
    }

    fn w(&self) -> Mat {
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
pub(crate) struct InitRows {
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

/// A `[rows, cols]` buffer filled by `fill` (which must write every element).
pub(crate) fn filled(len: usize, fill: impl FnOnce(*mut f32)) -> Vec<f32> {
    let mut out: Vec<f32> = Vec::with_capacity(len);
    fill(out.as_mut_ptr());
    // SAFETY: `fill` initialised all `len` elements.
    unsafe { out.set_len(len) };
    out
}

/// Token projection of channels-first images: `x` `[N, C, S]` (S = H·W) is read as the
/// tokens `[N, S, C]` of every pixel (no transposed copy), `→ [N, S, d_out]`.
pub(crate) fn linear_from_channels_first(lin: &burn::nn::Linear, x: Tensor<4>) -> Tensor<3> {
    let [n, c, h, w] = x.dims();
    let device = x.device();
    let s = h * w;
    let wt = LinearHost::new(lin);
    debug_assert_eq!(c, wt.d_in);
    let xd = host(x);
    let xs = f32s(&xd);
    let out = filled(n * s * wt.d_out, |ptr| {
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
    });
    tensor(TensorData::new(out, [n, s, wt.d_out]), &device)
}

/// `residual + proj(tokens)` back in the channels-first layout: `tokens` `[N, S, d_in]`,
/// `residual` `[N, d_out, H, W]` with `S = H·W` (no transposed copy).
pub(crate) fn linear_to_channels_first(
    lin: &burn::nn::Linear,
    tokens: Tensor<3>,
    residual: Tensor<4>,
) -> Tensor<4> {
    let dims = residual.dims();
    let [n, c, h, w] = dims;
    let device = residual.device();
    let s = h * w;
    let wt = LinearHost::new(lin);
    let td = host(tokens);
    let ts = f32s(&td);
    let rd = host(residual);
    let rs = f32s(&rd);
    let bias = wt.bias.as_ref().map(f32s);
    let out = filled(n * c * s, |ptr| {
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
    });
    tensor(TensorData::new(out, dims), &device)
}

/// The token projections of a temporal transformer working straight on the frame layout:
/// `proj_in` reads the normalised frames `[B·F, C, H, W]` as temporal tokens `[n, F, C]`
/// (token `i·F + f` = pixel `p₀ + i` of frame `f`, no permuted copy), and `proj_out` adds the
/// processed tokens back into the output frames, which start as `residual + bias`. Chunks
/// of pixels can be processed one at a time (chunked inference).
pub(crate) struct FrameTokens {
    proj_in: LinearHost,
    proj_out: LinearHost,
    normed: Host,
    out: Host,
    dims: [usize; 4],
    frames: usize,
    device: Device,
}

impl FrameTokens {
    /// `normed`, `residual`: `[B·F, C, H, W]`.
    pub fn new(
        proj_in: &burn::nn::Linear,
        proj_out: &burn::nn::Linear,
        normed: Tensor<4>,
        residual: Tensor<4>,
        frames: usize,
    ) -> Self {
        let dims = residual.dims();
        let device = residual.device();
        let proj_out = LinearHost::new(proj_out);
        let mut out = host(residual);
        if let Some(b) = proj_out.bias.as_ref().map(f32s) {
            let cs = dims[1] * dims[2] * dims[3];
            for frame in f32s_mut(&mut out).chunks_exact_mut(cs) {
                add_channel_bias(frame, b);
            }
        }
        Self {
            proj_in: LinearHost::new(proj_in),
            proj_out,
            normed: host(normed),
            out,
            dims,
            frames,
            device,
        }
    }

    /// The video segments `(video, pixels, first token)` of the token sequences `seqs`
    /// (sequence `v·H·W + p` is pixel `p` of video `v`).
    fn segments(&self, seqs: Range<usize>) -> Vec<(usize, Range<usize>, usize)> {
        let s = self.dims[2] * self.dims[3];
        let mut out = Vec::new();
        let mut g = seqs.start;
        while g < seqs.end {
            let (v, p) = (g / s, g % s);
            let end = (seqs.end - v * s).min(s);
            out.push((v, p..end, g - seqs.start));
            g = v * s + end;
        }
        out
    }

    /// The tokens `[len, F, d]` of the token sequences `seqs` (of `B·H·W`).
    pub fn tokens(&self, seqs: Range<usize>) -> Tensor<3> {
        let [_, c, h, w] = self.dims;
        let (s, f_n, len) = (h * w, self.frames, seqs.len());
        let d = self.proj_in.d_out;
        let xs = f32s(&self.normed);
        let segments = self.segments(seqs);
        let out = filled(len * f_n * d, |ptr| {
            let out = SharedOut(ptr);
            parallel(f_n, 2 * f_n * len * c * d, |frames| {
                for f in frames {
                    for (v, pixels, first) in &segments {
                        // SAFETY: frame f reads its own pixels and writes token rows i·F + f.
                        unsafe {
                            self.proj_in.apply(
                                pixels.len(),
                                Mat {
                                    ptr: xs.as_ptr().add(((v * f_n + f) * c) * s + pixels.start),
                                    rs: 1,
                                    cs: s as isize,
                                },
                                MatMut {
                                    ptr: out.at((first * f_n + f) * d),
                                    rs: (f_n * d) as isize,
                                    cs: 1,
                                },
                                None,
                                1,
                            )
                        }
                    }
                }
            });
        });
        tensor(TensorData::new(out, [len, f_n, d]), &self.device)
    }

    /// Adds `proj_out(tokens)` (`[len, F, d]`, as [`tokens`](Self::tokens) made them for
    /// `seqs`) into the output pixels.
    pub fn write(&mut self, seqs: Range<usize>, tokens: Tensor<3>) {
        let [_, c, h, w] = self.dims;
        let (s, f_n, len) = (h * w, self.frames, seqs.len());
        let d = self.proj_out.d_in;
        let segments = self.segments(seqs);
        let td = host(tokens);
        let ts = f32s(&td);
        let out = SharedOut(f32s_mut(&mut self.out).as_mut_ptr());
        let proj_out = &self.proj_out;
        parallel(f_n, 2 * f_n * len * c * d, |frames| {
            for f in frames {
                for (v, pixels, first) in &segments {
                    // SAFETY: frame f of video v owns these output pixels.
                    unsafe {
                        gemm_into(
                            pixels.len(),
                            c,
                            d,
                            MatMut {
                                ptr: out.at(((v * f_n + f) * c) * s + pixels.start),
                                rs: 1,
                                cs: s as isize,
                            },
                            true,
                            Mat {
                                ptr: ts.as_ptr().add((first * f_n + f) * d),
                                rs: (f_n * d) as isize,
                                cs: 1,
                            },
                            proj_out.w(),
                            1,
                        );
                    }
                }
            }
        });
    }

    /// The output frames `[B·F, C, H, W]`.
    pub fn finish(self) -> Tensor<4> {
        self.out.into_tensor(&self.device)
    }
}

#[inline(always)]
fn layer_norm_rows_impl<const W: usize, const FMA: bool>(
    x: &[f32],
    out: *mut f32,
    dim: usize,
    gamma: Option<&[f32]>,
    beta: Option<&[f32]>,
    eps: f32,
) {
    for (i, row) in x.chunks_exact(dim).enumerate() {
        let (sum, _) = lane_sums::<W>(row, 0.0);
        let mean = (sum / dim as f64) as f32;
        let (_, sq) = lane_sums::<W>(row, mean);
        let rstd = (1.0 / (sq / dim as f64 + eps as f64).sqrt()) as f32;
        // SAFETY: `out` holds as many rows as `x`.
        let o = unsafe { std::slice::from_raw_parts_mut(out.add(i * dim), dim) };
        match (gamma, beta) {
            (Some(g), Some(b)) => {
                for (((o, &x), &g), &b) in o.iter_mut().zip(row).zip(g).zip(b) {
                    *o = madd::<FMA>((x - mean) * rstd, g, b);
                }
            }
            _ => {
                for (j, (o, &x)) in o.iter_mut().zip(row).enumerate() {
                    let y = (x - mean) * rstd;
                    *o = y * gamma.map_or(1.0, |g| g[j]) + beta.map_or(0.0, |b| b[j]);
                }
            }
        }
    }
}
dispatch!(fn layer_norm_rows(x: &[f32], out: *mut f32, dim: usize, gamma: Option<&[f32]>, beta: Option<&[f32]>, eps: f32) => layer_norm_rows_impl);

/// Host copies of a Burn [`LayerNorm`](burn::nn::LayerNorm)'s parameters.
pub(crate) struct LayerNormHost {
    gamma: Host,
    beta: Option<Host>,
    eps: f32,
}

impl LayerNormHost {
    /// `eps`: the norm's epsilon (Burn keeps it private; the owner records it).
    pub fn new(norm: &burn::nn::LayerNorm, eps: f64) -> Self {
        Self {
            gamma: host(norm.gamma.val()),
            beta: norm.beta.as_ref().map(|b| host(b.val())),
            eps: eps as f32,
        }
    }

    /// Normalises the rows of `x` (`dim` values each) into `out`.
    fn apply(&self, x: &[f32], out: *mut f32, dim: usize) {
        layer_norm_rows(
            x,
            out,
            dim,
            Some(f32s(&self.gamma)),
            self.beta.as_ref().map(f32s),
            self.eps,
        );
    }
}

/// Burn's [`LayerNorm`](burn::nn::LayerNorm) (epsilon `eps`) over the last dimension of `x`.
/// Only call when [`enabled`].
pub(crate) fn layer_norm<const D: usize>(
    norm: &burn::nn::LayerNorm,
    eps: f64,
    x: Tensor<D>,
) -> Tensor<D> {
    let dims = x.dims();
    let device = x.device();
    let dim = dims[D - 1];
    let p = LayerNormHost::new(norm, eps);
    let xd = host(x);
    let xs = f32s(&xd);
    let rows = xs.len() / dim;
    let out = filled(xs.len(), |ptr| {
        let ptr = SharedOut(ptr);
        parallel(rows, 10 * xs.len(), |r| {
            p.apply(&xs[r.start * dim..r.end * dim], ptr.at(r.start * dim), dim);
        });
    });
    tensor(TensorData::new(out, dims), &device)
}

/// `[x +] proj_out(value · gelu(gate))` with `[value | gate] = proj(LN(x))` (GEGLU
/// feed-forward, optional pre-LayerNorm and residual), in row blocks whose hidden activations
/// stay in cache: the `[rows, 2·hidden]` and `[rows, hidden]` tensors are never allocated.
/// Only call when [`enabled`].
pub(crate) fn feed_forward<const D: usize>(
    norm: Option<(&burn::nn::LayerNorm, f64)>,
    ff: &crate::attention::FeedForward,
    x: Tensor<D>,
    residual: bool,
) -> Tensor<D> {
    let mut dims = x.dims();
    let device = x.device();
    let dim = dims[D - 1];
    let w1 = LinearHost::new(&ff.proj);
    let w2 = LinearHost::new(&ff.proj_out);
    let ln = norm.map(|(n, eps)| LayerNormHost::new(n, eps));
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
    let out = filled(rows * w2.d_out, |ptr| {
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
                            ln.apply(xb, normed.as_mut_ptr(), dim);
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
    });
    tensor(TensorData::new(out, dims), &device)
}

// ---------------------------------------------------------------------------------------------
// GroupNorm (+ SiLU).
// ---------------------------------------------------------------------------------------------

/// Sum and sum of squared deviations from `mean` of `x`, in `W` lanes.
#[inline(always)]
fn lane_sums<const W: usize>(x: &[f32], mean: f32) -> (f64, f64) {
    let mut s = [0.0f32; W];
    let mut q = [0.0f32; W];
    let chunks = x.chunks_exact(W);
    let tail = chunks.remainder();
    for c in chunks {
        for l in 0..W {
            let d = c[l] - mean;
            s[l] += d;
            q[l] += d * d;
        }
    }
    let mut sum: f64 = s.iter().map(|&v| v as f64).sum();
    let mut sq: f64 = q.iter().map(|&v| v as f64).sum();
    for &v in tail {
        let d = (v - mean) as f64;
        sum += d;
        sq += d * d;
    }
    (sum, sq)
}

/// Layout and parameters of a GroupNorm over `[videos · frames, C, S]` whose statistics pool
/// the `frames` of each video.
pub(crate) struct GroupNormArgs<'a> {
    pub videos: usize,
    pub frames: usize,
    pub channels: usize,
    pub spatial: usize,
    pub groups: usize,
    pub gamma: Option<&'a [f32]>,
    pub beta: Option<&'a [f32]>,
    pub eps: f64,
    pub silu: bool,
}

#[inline(always)]
fn group_norm_item_impl<const W: usize, const FMA: bool>(
    x: SharedOut,
    a: &GroupNormArgs<'_>,
    item: usize,
) {
    let (v, g) = (item / a.groups, item % a.groups);
    let cg = a.channels / a.groups;
    let block = cg * a.spatial;
    let count = (a.frames * block) as f64;
    let chunk = |f: usize| {
        let start = ((v * a.frames + f) * a.channels + g * cg) * a.spatial;
        // SAFETY: the (video, group) items of different threads touch disjoint elements.
        unsafe { std::slice::from_raw_parts_mut(x.at(start), block) }
    };
    // Two passes (shifted by a first estimate of the mean) keep the variance accurate.
    let shift = chunk(0)[0];
    let mut sum = 0.0;
    for f in 0..a.frames {
        sum += lane_sums::<W>(chunk(f), shift).0;
    }
    let mean = shift as f64 + sum / count;
    let mut sq = 0.0;
    for f in 0..a.frames {
        sq += lane_sums::<W>(chunk(f), mean as f32).1;
    }
    let rstd = 1.0 / (sq / count + a.eps).sqrt();
    for f in 0..a.frames {
        let data = chunk(f);
        for (cc, row) in data.chunks_exact_mut(a.spatial).enumerate() {
            let c = g * cg + cc;
            let gamma = a.gamma.map_or(1.0, |w| w[c] as f64);
            let beta = a.beta.map_or(0.0, |b| b[c] as f64);
            let scale = (gamma * rstd) as f32;
            let bias = (beta - mean * gamma * rstd) as f32;
            if a.silu {
                for x in row.iter_mut() {
                    *x = silu::<FMA>(madd::<FMA>(*x, scale, bias));
                }
            } else {
                for x in row.iter_mut() {
                    *x = madd::<FMA>(*x, scale, bias);
                }
            }
        }
    }
}
dispatch!(fn group_norm_item(x: SharedOut, a: &GroupNormArgs<'_>, item: usize) => group_norm_item_impl);

/// GroupNorm (optionally followed by SiLU) of `x` (`[videos · frames, C, S]`), in place.
pub(crate) fn group_norm_inplace(x: &mut [f32], args: &GroupNormArgs<'_>) {
    debug_assert_eq!(
        x.len(),
        args.videos * args.frames * args.channels * args.spatial
    );
    let items = args.videos * args.groups;
    let ptr = SharedOut(x.as_mut_ptr());
    parallel(items, 8 * x.len(), |r| {
        for item in r {
            group_norm_item(ptr, args, item);
        }
    });
}

/// Burn's [`GroupNorm`](burn::nn::GroupNorm) on `x` (`[N, C, …]`), optionally followed by SiLU,
/// with the statistics of each group pooled over `frames` consecutive items (1 = plain
/// GroupNorm; `F` = diffusers' GroupNorm on the `[B, C, F, H, W]` view of frames folded into
/// the batch). Only call when [`enabled`].
pub(crate) fn group_norm<const D: usize>(
    norm: &burn::nn::GroupNorm,
    x: Tensor<D>,
    frames: usize,
    silu: bool,
) -> Tensor<D> {
    let dims = x.dims();
    let device = x.device();
    let (n, channels) = (dims[0], dims[1]);
    let spatial = dims[2..].iter().product();
    let gamma = norm.gamma.as_ref().map(|g| host(g.val()));
    let beta = norm.beta.as_ref().map(|b| host(b.val()));
    let mut data = host(x);
    group_norm_inplace(
        f32s_mut(&mut data),
        &GroupNormArgs {
            videos: n / frames,
            frames,
            channels,
            spatial,
            groups: norm.num_groups,
            gamma: gamma.as_ref().map(f32s),
            beta: beta.as_ref().map(f32s),
            eps: norm.epsilon,
            silu,
        },
    );
    data.into_tensor(&device)
}

// ---------------------------------------------------------------------------------------------
// Convolutions: im2col per image into a per-thread buffer + GEMM, written in place.
// ---------------------------------------------------------------------------------------------

/// Host copy of a Burn [`Conv2d`](burn::nn::conv::Conv2d) with groups 1, dilation 1 and
/// symmetric padding (what the UNets use).
pub(crate) struct ConvHost {
    weight: Host,
    bias: Option<Host>,
    cout: usize,
    cin: usize,
    kernel: [usize; 2],
    stride: [usize; 2],
    pad: [usize; 2],
    /// The Winograd form of a 3×3, stride-1, padding-1 convolution.
    winograd: Option<winograd::Winograd>,
}

/// Per-thread buffers of the kernels, kept between calls (see [`with_scratch`]).
#[derive(Default)]
struct Scratch {
    /// im2col columns.
    cols: Vec<f32>,
    winograd: winograd::Scratch,
    /// Feed-forward blocks: normed input, GEGLU input, GEGLU output.
    ff: [Vec<f32>; 3],
}

/// The first `len` values of `buf`, grown (never shrunk) as needed.
fn sized(buf: &mut Vec<f32>, len: usize) -> &mut [f32] {
    if buf.len() < len {
        buf.resize(len, 0.0);
    }
    &mut buf[..len]
}

thread_local! {
    /// Each thread's kernel buffers, kept between calls (a few MiB): fresh ones would be
    /// page-faulted in again on every call.
    static SCRATCH: std::cell::RefCell<Scratch> = std::cell::RefCell::default();
}

/// `f` with this thread's [`Scratch`] (fresh buffers when a nested job on this thread holds
/// them).
fn with_scratch<R>(f: impl FnOnce(&mut Scratch) -> R) -> R {
    SCRATCH.with(|cell| match cell.try_borrow_mut() {
        Ok(mut scratch) => {
            let r = f(&mut scratch);
            scratch.trim();
            r
        }
        Err(_) => f(&mut Scratch::default()),
    })
}

/// Values a kept buffer may hold (16 MiB); larger ones (im2col columns of a large image) are
/// freed after the call.
const KEEP: usize = 1 << 22;

/// Frees `buf` if it holds more than [`KEEP`] values.
fn trim(buf: &mut Vec<f32>) {
    if buf.capacity() > KEEP {
        *buf = Vec::new();
    }
}

impl Scratch {
    /// Frees the buffers that grew beyond [`KEEP`].
    fn trim(&mut self) {
        trim(&mut self.cols);
        self.ff.iter_mut().for_each(trim);
        self.winograd.trim();
    }
}

/// The symmetric padding of a convolution these kernels cover (groups 1, dilation 1).
fn conv_padding(conv: &burn::nn::conv::Conv2d) -> Option<[usize; 2]> {
    use burn::nn::PaddingConfig2d;
    if conv.groups != 1 || conv.dilation != [1, 1] {
        return None;
    }
    match conv.padding {
        PaddingConfig2d::Valid => Some([0, 0]),
        PaddingConfig2d::Explicit(t, l, b, r) if t == b && l == r => Some([t, l]),
        _ => None,
    }
}

/// Output size of `conv` on `[N, C, H, W]` if these kernels cover it (and `C` matches).
pub(crate) fn conv2d_output(conv: &burn::nn::conv::Conv2d, dims: [usize; 4]) -> Option<[usize; 2]> {
    let pad = conv_padding(conv)?;
    let [_, cin, kh, kw] = conv.weight.dims();
    if dims[1] != cin || dims.contains(&0) {
        return None;
    }
    out_size([dims[2], dims[3]], [kh, kw], conv.stride, pad)
}

fn out_size(
    [h, w]: [usize; 2],
    kernel: [usize; 2],
    stride: [usize; 2],
    pad: [usize; 2],
) -> Option<[usize; 2]> {
    let size =
        |n: usize, k: usize, s: usize, p: usize| (n + 2 * p).checked_sub(k).map(|v| v / s + 1);
    let oh = size(h, kernel[0], stride[0], pad[0])?;
    let ow = size(w, kernel[1], stride[1], pad[1])?;
    (oh > 0 && ow > 0).then_some([oh, ow])
}

impl ConvHost {
    /// Host copy of `conv` (check [`conv2d_output`] first).
    pub fn new(conv: &burn::nn::conv::Conv2d) -> Self {
        let [cout, cin, kh, kw] = conv.weight.dims();
        let weight = host(conv.weight.val());
        let pad = conv_padding(conv).expect("checked by conv2d_output");
        let winograd = ([kh, kw] == [3, 3] && conv.stride == [1, 1] && pad == [1, 1])
            .then(|| winograd::Winograd::new(f32s(&weight), cout, cin));
        Self {
            weight,
            bias: conv.bias.as_ref().map(|b| host(b.val())),
            cout,
            cin,
            kernel: [kh, kw],
            stride: conv.stride,
            pad,
            winograd,
        }
    }

    /// Images per [`accumulate_images`](Self::accumulate_images) call for `n` images of
    /// `h × w`: several for the Winograd form (wider GEMMs), else one.
    fn images_per_call(&self, n: usize, hw: [usize; 2]) -> usize {
        match self.winograd {
            Some(_) => winograd::Winograd::images_per_call(n, hw, threads()),
            None => 1,
        }
    }

    /// `out += conv(x)` for `imgs` consecutive images `x` `[imgs, cin, h, w]` into `out`
    /// `[imgs, cout, oh, ow]` (already initialised).
    ///
    /// # Safety
    /// `out` holds `imgs·cout·oh·ow` initialised values owned by the calling thread.
    unsafe fn accumulate_images(
        &self,
        x: &[f32],
        imgs: usize,
        [h, w]: [usize; 2],
        out: *mut f32,
        scratch: &mut Scratch,
        threads: usize,
    ) {
        // SAFETY (both arms): forwarded from the caller.
        if let Some(wg) = &self.winograd {
            unsafe { wg.accumulate(x, imgs, [h, w], out, &mut scratch.winograd, threads) };
            return;
        }
        let [oh, ow] = self.out_size(h, w).expect("checked by the caller");
        let (per_in, per_out) = (self.cin * h * w, self.cout * oh * ow);
        for i in 0..imgs {
            unsafe {
                self.accumulate(
                    &x[i * per_in..(i + 1) * per_in],
                    [h, w],
                    out.add(i * per_out),
                    &mut scratch.cols,
                    threads,
                )
            };
        }
    }

    /// Output height and width for an `h × w` input.
    fn out_size(&self, h: usize, w: usize) -> Option<[usize; 2]> {
        out_size([h, w], self.kernel, self.stride, self.pad)
    }

    fn is_pointwise(&self) -> bool {
        self.kernel == [1, 1] && self.stride == [1, 1] && self.pad == [0, 0]
    }

    /// `out += conv(x)` for one image `x` `[cin, h, w]` into `out` `[cout, oh, ow]`
    /// (already initialised), using `cols` as the im2col buffer.
    ///
    /// # Safety
    /// `out` holds `cout·oh·ow` initialised values owned by the calling thread.
    unsafe fn accumulate(
        &self,
        x: &[f32],
        [h, w]: [usize; 2],
        out: *mut f32,
        cols: &mut Vec<f32>,
        threads: usize,
    ) {
        let [oh, ow] = self.out_size(h, w).expect("checked by the caller");
        let s = oh * ow;
        let k = self.cin * self.kernel[0] * self.kernel[1];
        let rhs = if self.is_pointwise() {
            Mat::rows(x, s)
        } else {
            self.im2col(x, [h, w], [oh, ow], cols);
            Mat::rows(cols, s)
        };
        // SAFETY: caller's contract; weight [cout, cin·kh·kw] matches the im2col rows.
        unsafe {
            gemm_into(
                self.cout,
                s,
                k,
                MatMut::rows(out, s),
                true,
                Mat::rows(f32s(&self.weight), k),
                rhs,
                threads,
            )
        }
    }

    /// `cols[(c, a, b), (y, x)] = x[c, y·sh + a − ph, x·sw + b − pw]` (0 outside).
    fn im2col(&self, x: &[f32], [h, w]: [usize; 2], [oh, ow]: [usize; 2], cols: &mut Vec<f32>) {
        let [kh, kw] = self.kernel;
        let [sh, sw] = self.stride;
        let [ph, pw] = self.pad;
        let s = oh * ow;
        cols.resize(self.cin * kh * kw * s, 0.0);
        for c in 0..self.cin {
            let plane = &x[c * h * w..(c + 1) * h * w];
            for a in 0..kh {
                for b in 0..kw {
                    let row = ((c * kh + a) * kw + b) * s;
                    let dst = &mut cols[row..row + s];
                    // Output columns whose input column ox·sw + b − pw is inside the image.
                    let x_lo = pw.saturating_sub(b).div_ceil(sw).min(ow);
                    let x_hi = if w + pw > b {
                        ((w + pw - b - 1) / sw + 1).min(ow)
                    } else {
                        0
                    };
                    for oy in 0..oh {
                        let d = &mut dst[oy * ow..(oy + 1) * ow];
                        let y = (oy * sh + a) as isize - ph as isize;
                        if y < 0 || y >= h as isize || x_lo >= x_hi {
                            d.fill(0.0);
                            continue;
                        }
                        let src = &plane[y as usize * w..(y as usize + 1) * w];
                        d[..x_lo].fill(0.0);
                        d[x_hi..].fill(0.0);
                        let x0 = x_lo * sw + b - pw;
                        if sw == 1 {
                            d[x_lo..x_hi].copy_from_slice(&src[x0..x0 + (x_hi - x_lo)]);
                        } else {
                            for (i, v) in d[x_lo..x_hi].iter_mut().enumerate() {
                                *v = src[x0 + i * sw];
                            }
                        }
                    }
                }
            }
        }
    }

    /// `out[o, ·] = bias[o]` (+ `extra[o]`) for one image.
    fn init_bias(&self, out: &mut [f32], extra: Option<&[f32]>) {
        let bias = self.bias.as_ref().map(f32s);
        for (o, row) in out.chunks_exact_mut(out.len() / self.cout).enumerate() {
            row.fill(bias.map_or(0.0, |b| b[o]) + extra.map_or(0.0, |e| e[o]));
        }
    }
}

/// Adds `bias[c]` to every row `c` of `[C, S]`.
fn add_channel_bias(out: &mut [f32], bias: &[f32]) {
    let s = out.len() / bias.len();
    for (row, &b) in out.chunks_exact_mut(s).zip(bias) {
        for v in row {
            *v += b;
        }
    }
}

/// Burn's `Conv2d` on `x` `[N, C, H, W]`, one image per work item. Only call when
/// [`enabled`] and [`conv2d_output`] is `Some`.
pub(crate) fn conv2d(conv: &burn::nn::conv::Conv2d, x: Tensor<4>) -> Tensor<4> {
    let [n, c, h, w] = x.dims();
    let cv = ConvHost::new(conv);
    let [oh, ow] = cv.out_size(h, w).expect("checked by conv2d_output");
    let device = x.device();
    let xd = host(x);
    let xs = f32s(&xd);
    let per_out = cv.cout * oh * ow;
    let per_call = cv.images_per_call(n, [h, w]);
    let calls = n.div_ceil(per_call);
    let gemm_threads = gemm_threads(calls);
    let cost = 2 * n * per_out * c * cv.kernel[0] * cv.kernel[1];
    let out = filled(n * per_out, |ptr| {
        let out = SharedOut(ptr);
        parallel(calls, cost, |items| {
            with_scratch(|scratch| {
                for call in items {
                    let images = call * per_call..((call + 1) * per_call).min(n);
                    let imgs = images.len();
                    // SAFETY: these images own their output block.
                    unsafe {
                        let o = std::slice::from_raw_parts_mut(
                            out.at(images.start * per_out),
                            imgs * per_out,
                        );
                        for image in o.chunks_exact_mut(per_out) {
                            cv.init_bias(image, None);
                        }
                        cv.accumulate_images(
                            &xs[images.start * c * h * w..images.end * c * h * w],
                            imgs,
                            [h, w],
                            o.as_mut_ptr(),
                            scratch,
                            gemm_threads,
                        );
                    }
                }
            })
        });
    });
    tensor(TensorData::new(out, [n, cv.cout, oh, ow]), &device)
}

/// diffusers' `ResnetBlock2D` on the flex backend:
/// `(shortcut(x) + conv2(silu(norm2(conv1(silu(norm1(x))) + temb)))) / scale` with fused
/// GroupNorm + SiLU, the time embedding and biases written as the convolutions' initial
/// values and the shortcut accumulated into the output. `temb` is the projected time
/// embedding `[N, C_out]`. Only call when [`enabled`] and [`resnet_supported`].
pub(crate) fn resnet(
    block: &crate::resnet::ResnetBlock2D,
    x: Tensor<4>,
    temb: Option<Tensor<2>>,
) -> Tensor<4> {
    let [n, cin, h, w] = x.dims();
    let conv1 = ConvHost::new(&block.conv1);
    let conv2 = ConvHost::new(&block.conv2);
    let shortcut = block.conv_shortcut.as_ref().map(ConvHost::new);
    let cout = conv1.cout;
    let s = h * w;
    let device = x.device();
    let a = group_norm(&block.norm1, x.clone(), 1, true);
    let ad = host(a);
    let xd = host(x);
    let td = temb.map(host);
    let (xs, as_) = (f32s(&xd), f32s(&ad));
    let per_call = conv1.images_per_call(n, [h, w]);
    let calls = n.div_ceil(per_call);
    let gemm_threads = gemm_threads(calls);
    let cost = 2 * n * cout * s * 9 * (cin + cout);
    let images = |call: usize| call * per_call..((call + 1) * per_call).min(n);
    // h = conv1(a) + b1 + temb
    let hid = filled(n * cout * s, |ptr| {
        let out = SharedOut(ptr);
        parallel(calls, cost / 2, |items| {
            with_scratch(|scratch| {
                for images in items.map(images) {
                    // SAFETY: these images own their output block.
                    unsafe {
                        let o = std::slice::from_raw_parts_mut(
                            out.at(images.start * cout * s),
                            images.len() * cout * s,
                        );
                        for (i, image) in images.clone().zip(o.chunks_exact_mut(cout * s)) {
                            let t = td.as_ref().map(|t| &f32s(t)[i * cout..(i + 1) * cout]);
                            conv1.init_bias(image, t);
                        }
                        conv1.accumulate_images(
                            &as_[images.start * cin * s..images.end * cin * s],
                            images.len(),
                            [h, w],
                            o.as_mut_ptr(),
                            scratch,
                            gemm_threads,
                        );
                    }
                }
            })
        });
    });
    let b = group_norm(
        &block.norm2,
        tensor::<4>(TensorData::new(hid, [n, cout, h, w]), &device),
        1,
        true,
    );
    let bd = host(b);
    let bs = f32s(&bd);
    let scale = block.output_scale_factor;
    // out = shortcut(x) + conv2(b) + b2
    let out = filled(n * cout * s, |ptr| {
        let out = SharedOut(ptr);
        parallel(calls, cost / 2, |items| {
            with_scratch(|scratch| {
                for images in items.map(images) {
                    // SAFETY: these images own their output block.
                    unsafe {
                        let o = std::slice::from_raw_parts_mut(
                            out.at(images.start * cout * s),
                            images.len() * cout * s,
                        );
                        let xi = &xs[images.start * cin * s..images.end * cin * s];
                        match &shortcut {
                            Some(sc) => {
                                for image in o.chunks_exact_mut(cout * s) {
                                    sc.init_bias(image, None);
                                }
                                sc.accumulate_images(
                                    xi,
                                    images.len(),
                                    [h, w],
                                    o.as_mut_ptr(),
                                    scratch,
                                    gemm_threads,
                                );
                            }
                            None => o.copy_from_slice(xi),
                        }
                        if let Some(b2) = conv2.bias.as_ref().map(f32s) {
                            for image in o.chunks_exact_mut(cout * s) {
                                add_channel_bias(image, b2);
                            }
                        }
                        conv2.accumulate_images(
                            &bs[images.start * cout * s..images.end * cout * s],
                            images.len(),
                            [h, w],
                            o.as_mut_ptr(),
                            scratch,
                            gemm_threads,
                        );
                        if scale != 1.0 {
                            let inv = (1.0 / scale) as f32;
                            for v in o.iter_mut() {
                                *v *= inv;
                            }
                        }
                    }
                }
            })
        });
    });
    tensor(TensorData::new(out, [n, cout, h, w]), &device)
}

/// Whether [`resnet`] covers `block` on input dims `dims`: size-preserving convolutions and a
/// pointwise shortcut.
pub(crate) fn resnet_supported(block: &crate::resnet::ResnetBlock2D, dims: [usize; 4]) -> bool {
    let [n, _, h, w] = dims;
    let cout = block.conv1.weight.dims()[0];
    let same =
        |conv: &burn::nn::conv::Conv2d, d: [usize; 4]| conv2d_output(conv, d) == Some([h, w]);
    same(&block.conv1, dims)
        && same(&block.conv2, [n, cout, h, w])
        && block
            .conv_shortcut
            .as_ref()
            .is_none_or(|c| c.weight.dims()[2..] == [1, 1] && c.stride == [1, 1] && same(c, dims))
}

/// ModelScope's `TemporalConvLayer` on frames folded into the batch (`x` `[B·F, C, H, W]`):
/// four stages of GroupNorm across the frames of a video + SiLU + a `(3, 1, 1)` convolution
/// over frames with zero padding, plus the input. Each stage's output frame is
/// `bias + W₁·a[f] + W₀·a[f−1] + W₂·a[f+1]` (`W_k` read in place from the `[C, C, 3, 1, 1]`
/// weight), accumulated by GEMM straight into the output. Only call when [`enabled`].
pub(crate) fn temporal_conv(
    stages: [(&burn::nn::GroupNorm, &burn::nn::conv::Conv3d); 4],
    x: Tensor<4>,
    frames: usize,
) -> Tensor<4> {
    let dims = x.dims();
    let [n, c, h, w] = dims;
    let s = h * w;
    let device = x.device();
    let xd = host(x.clone());
    let mut hidden = x;
    let gemm_threads = gemm_threads(n);
    for (i, (norm, conv)) in stages.into_iter().enumerate() {
        let ad = host(group_norm(norm, hidden, frames, true));
        let a = f32s(&ad);
        let wd = host(conv.weight.val());
        let ws = f32s(&wd);
        let bias = conv.bias.as_ref().map(|b| host(b.val()));
        let last = i == 3;
        let out = filled(n * c * s, |ptr| {
            let out = SharedOut(ptr);
            parallel(n, 6 * n * c * c * s, |items| {
                for item in items {
                    let f = item % frames;
                    // SAFETY: frame `item` owns its output block; W_k is the strided view of
                    // taps k of the weight [C_out, C_in, 3].
                    unsafe {
                        let o = std::slice::from_raw_parts_mut(out.at(item * c * s), c * s);
                        if last {
                            o.copy_from_slice(&f32s(&xd)[item * c * s..(item + 1) * c * s]);
                        } else {
                            o.fill(0.0);
                        }
                        if let Some(b) = bias.as_ref().map(f32s) {
                            add_channel_bias(o, b);
                        }
                        for k in 0..3 {
                            let src = match k {
                                0 if f == 0 => continue,
                                0 => item - 1,
                                1 => item,
                                _ if f + 1 == frames => continue,
                                _ => item + 1,
                            };
                            gemm_into(
                                c,
                                s,
                                c,
                                MatMut::rows(o.as_mut_ptr(), s),
                                true,
                                Mat {
                                    ptr: ws.as_ptr().add(k),
                                    rs: 3 * c as isize,
                                    cs: 3,
                                },
                                Mat::rows(&a[src * c * s..(src + 1) * c * s], s),
                                gemm_threads,
                            );
                        }
                    }
                }
            });
        });
        hidden = tensor(TensorData::new(out, dims), &device);
    }
    hidden
}

// ---------------------------------------------------------------------------------------------
// Attention.
// ---------------------------------------------------------------------------------------------

/// Where the heads of a `[N, L, ·]` projection live: head `h` of row `i` of item `n` starts at
/// `offset + n·batch_stride + i·row_stride + h·head_dim`, plus optional per-row terms added
/// to every item (a window's positional terms, read as the kernels read the rows).
#[derive(Clone, Copy)]
pub(crate) struct HeadLayout<'a> {
    pub data: &'a [f32],
    pub batch_stride: usize,
    pub row_stride: usize,
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
pub(crate) struct AttentionShape {
    pub batch: usize,
    pub heads: usize,
    pub lq: usize,
    pub lk: usize,
    pub head_dim: usize,
    pub scale: f32,
}

/// The SIMD vector operations the attention micro-kernels need.
trait Vector: Copy {
    /// Lanes.
    const LANES: usize;
    /// All zeros.
    fn zero() -> Self;
    /// `x` in every lane.
    ///
    /// # Safety
    /// The CPU supports the vector's instruction set.
    unsafe fn splat(x: f32) -> Self;
    /// Loads `LANES` values from `p`.
    ///
    /// # Safety
    /// `p .. p + LANES` is readable; the CPU supports the instruction set.
    unsafe fn load(p: *const f32) -> Self;
    /// Stores the lanes to `p`.
    ///
    /// # Safety
    /// `p .. p + LANES` is writable; the CPU supports the instruction set.
    unsafe fn store(self, p: *mut f32);
    /// `a · b + c`.
    ///
    /// # Safety
    /// The CPU supports the instruction set.
    unsafe fn fma(a: Self, b: Self, c: Self) -> Self;

    /// `D` vectors from `LANES` rows of `D` values, transposed: lane `l` of vector `c` is
    /// `row(l)[c]`.
    ///
    /// # Safety
    /// `LANES ≤ 16`; the CPU supports the instruction set.
    #[inline(always)]
    unsafe fn load_columns<const D: usize>(row: impl Fn(usize) -> [f32; D]) -> [Self; D] {
        // SAFETY: as this function's.
        unsafe { load_columns_via_buffer(row) }
    }

    /// Stores `D` vectors transposed: lane `l` of vector `c` goes to `row(l) + c`, for the
    /// first `rows` lanes.
    ///
    /// # Safety
    /// `LANES ≤ 16`, `rows ≤ LANES`; `row(l) .. row(l) + D` is writable for `l < rows`; the
    /// CPU supports the instruction set.
    #[inline(always)]
    unsafe fn store_columns<const D: usize>(
        v: &[Self; D],
        rows: usize,
        row: impl Fn(usize) -> *mut f32,
    ) {
        // SAFETY: as this function's.
        unsafe { store_columns_via_buffer(v, rows, row) }
    }
}

/// [`Vector::load_columns`] through a stack buffer, value by value.
///
/// # Safety
/// As [`Vector::load_columns`].
#[inline(always)]
unsafe fn load_columns_via_buffer<V: Vector, const D: usize>(
    row: impl Fn(usize) -> [f32; D],
) -> [V; D] {
    let mut buf = [[0.0f32; 16]; D];
    for l in 0..V::LANES {
        for (b, x) in buf.iter_mut().zip(row(l)) {
            b[l] = x;
        }
    }
    // SAFETY: every buffer row holds 16 ≥ LANES values.
    std::array::from_fn(|c| unsafe { V::load(buf[c].as_ptr()) })
}

/// [`Vector::store_columns`] through a stack buffer, value by value.
///
/// # Safety
/// As [`Vector::store_columns`].
#[inline(always)]
unsafe fn store_columns_via_buffer<V: Vector, const D: usize>(
    v: &[V; D],
    rows: usize,
    row: impl Fn(usize) -> *mut f32,
) {
    let mut buf = [[0.0f32; 16]; D];
    for (b, v) in buf.iter_mut().zip(v) {
        // SAFETY: 16 ≥ LANES writable values.
        unsafe { v.store(b.as_mut_ptr()) };
    }
    for l in 0..rows {
        let out = row(l);
        for (c, b) in buf.iter().enumerate() {
            // SAFETY: the caller guarantees D writable values at `row(l)`.
            unsafe { *out.add(c) = b[l] };
        }
    }
}

/// Eight lanes in plain Rust (the portable fallback).
#[derive(Clone, Copy)]
struct Lanes8([f32; 8]);

impl Vector for Lanes8 {
    const LANES: usize = 8;
    #[inline(always)]
    fn zero() -> Self {
        Lanes8([0.0; 8])
    }
    #[inline(always)]
    unsafe fn splat(x: f32) -> Self {
        Lanes8([x; 8])
    }
    #[inline(always)]
    unsafe fn load(p: *const f32) -> Self {
        // SAFETY: the caller guarantees 8 readable values.
        Lanes8(unsafe { std::ptr::read_unaligned(p as *const [f32; 8]) })
    }
    #[inline(always)]
    unsafe fn store(self, p: *mut f32) {
        // SAFETY: the caller guarantees 8 writable values.
        unsafe { std::ptr::write_unaligned(p as *mut [f32; 8], self.0) }
    }
    #[inline(always)]
    unsafe fn fma(a: Self, b: Self, c: Self) -> Self {
        let mut o = c.0;
        for ((o, a), b) in o.iter_mut().zip(a.0).zip(b.0) {
            *o += a * b;
        }
        Lanes8(o)
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::Vector;
    use std::arch::x86_64::*;

    /// The transpose of a 16 × 16 block held in 16 vectors (64 shuffles).
    ///
    /// # Safety
    /// The CPU supports AVX-512F.
    #[inline(always)]
    unsafe fn transpose16(r: [__m512; 16]) -> [__m512; 16] {
        // SAFETY: register-only intrinsics; the caller guarantees AVX-512F.
        unsafe {
            let z = _mm512_setzero_ps();
            // Pairs of rows interleaved by 32-bit values, then by 64-bit pairs: afterwards the
            // 128-bit block k of u[4b + m] holds column 4k + m of rows 4b .. 4b + 4.
            let mut t = [z; 16];
            for a in 0..8 {
                t[2 * a] = _mm512_unpacklo_ps(r[2 * a], r[2 * a + 1]);
                t[2 * a + 1] = _mm512_unpackhi_ps(r[2 * a], r[2 * a + 1]);
            }
            let pd = _mm512_castps_pd;
            let ps = _mm512_castpd_ps;
            let mut u = [z; 16];
            for b in 0..4 {
                u[4 * b] = ps(_mm512_unpacklo_pd(pd(t[4 * b]), pd(t[4 * b + 2])));
                u[4 * b + 1] = ps(_mm512_unpackhi_pd(pd(t[4 * b]), pd(t[4 * b + 2])));
                u[4 * b + 2] = ps(_mm512_unpacklo_pd(pd(t[4 * b + 1]), pd(t[4 * b + 3])));
                u[4 * b + 3] = ps(_mm512_unpackhi_pd(pd(t[4 * b + 1]), pd(t[4 * b + 3])));
            }
            // Column 4k + m gathers block k of u[m], u[4 + m], u[8 + m], u[12 + m].
            let mut out = [z; 16];
            for m in 0..4 {
                let v0 = _mm512_shuffle_f32x4::<0x44>(u[m], u[4 + m]);
                let v1 = _mm512_shuffle_f32x4::<0xEE>(u[m], u[4 + m]);
                let v2 = _mm512_shuffle_f32x4::<0x44>(u[8 + m], u[12 + m]);
                let v3 = _mm512_shuffle_f32x4::<0xEE>(u[8 + m], u[12 + m]);
                out[m] = _mm512_shuffle_f32x4::<0x88>(v0, v2);
                out[4 + m] = _mm512_shuffle_f32x4::<0xDD>(v0, v2);
                out[8 + m] = _mm512_shuffle_f32x4::<0x88>(v1, v3);
                out[12 + m] = _mm512_shuffle_f32x4::<0xDD>(v1, v3);
            }
            out
        }
    }

    // The column loads and stores go through the 16 × 16 shuffle transpose for rows of 4 and
    // 8 values; with 16 the value-by-value path measured faster (the transpose's 32 live
    // vectors spill).
    impl Vector for __m512 {
        const LANES: usize = 16;

        #[inline(always)]
        unsafe fn load_columns<const D: usize>(row: impl Fn(usize) -> [f32; D]) -> [Self; D] {
            if !matches!(D, 4 | 8) {
                // SAFETY: as this function's.
                return unsafe { super::load_columns_via_buffer(row) };
            }
            // SAFETY: D values are read from each row array; AVX-512 is enabled by the caller.
            unsafe {
                let rows: [__m512; 16] = std::array::from_fn(|l| {
                    let r = row(l);
                    let p = r.as_ptr();
                    if D == 8 {
                        _mm512_zextps256_ps512(_mm256_loadu_ps(p))
                    } else {
                        _mm512_zextps128_ps512(_mm_loadu_ps(p))
                    }
                });
                let t = transpose16(rows);
                std::array::from_fn(|c| t[c])
            }
        }

        #[inline(always)]
        unsafe fn store_columns<const D: usize>(
            v: &[Self; D],
            rows: usize,
            row: impl Fn(usize) -> *mut f32,
        ) {
            if !matches!(D, 4 | 8) {
                // SAFETY: as this function's.
                return unsafe { super::store_columns_via_buffer(v, rows, row) };
            }
            // SAFETY: the caller guarantees D writable values at row(l) for l < rows.
            unsafe {
                let t = transpose16(std::array::from_fn(|c| {
                    if c < D { v[c] } else { _mm512_setzero_ps() }
                }));
                for (l, t) in t.iter().enumerate().take(rows) {
                    let p = row(l);
                    if D == 8 {
                        _mm256_storeu_ps(p, _mm512_castps512_ps256(*t));
                    } else {
                        _mm_storeu_ps(p, _mm512_castps512_ps128(*t));
                    }
                }
            }
        }
        #[inline(always)]
        fn zero() -> Self {
            // SAFETY: only reached from AVX-512 code (see `Isa`).
            unsafe { _mm512_setzero_ps() }
        }
        #[inline(always)]
        unsafe fn splat(x: f32) -> Self {
            unsafe { _mm512_set1_ps(x) }
        }
        #[inline(always)]
        unsafe fn load(p: *const f32) -> Self {
            unsafe { _mm512_loadu_ps(p) }
        }
        #[inline(always)]
        unsafe fn store(self, p: *mut f32) {
            unsafe { _mm512_storeu_ps(p, self) }
        }
        #[inline(always)]
        unsafe fn fma(a: Self, b: Self, c: Self) -> Self {
            unsafe { _mm512_fmadd_ps(a, b, c) }
        }
    }

    impl Vector for __m256 {
        const LANES: usize = 8;
        #[inline(always)]
        fn zero() -> Self {
            // SAFETY: only reached from AVX2 code (see `Isa`).
            unsafe { _mm256_setzero_ps() }
        }
        #[inline(always)]
        unsafe fn splat(x: f32) -> Self {
            unsafe { _mm256_set1_ps(x) }
        }
        #[inline(always)]
        unsafe fn load(p: *const f32) -> Self {
            unsafe { _mm256_loadu_ps(p) }
        }
        #[inline(always)]
        unsafe fn store(self, p: *mut f32) {
            unsafe { _mm256_storeu_ps(p, self) }
        }
        #[inline(always)]
        unsafe fn fma(a: Self, b: Self, c: Self) -> Self {
            unsafe { _mm256_fmadd_ps(a, b, c) }
        }
    }
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
            let out0 = job.io.out.at((n * lq + i0) * inner + h * d);
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
pub(crate) fn attention(
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
    use std::cell::Cell;

    use burn::tensor::{Distribution, Tolerance};
    use vdm_core::AllFrames;

    thread_local! {
        /// Makes [`enabled`] answer `false` on this thread (the plain Burn reference path).
        pub(super) static FORCE_BURN: Cell<bool> = const { Cell::new(false) };
    }

    /// `f()` on the fused path and on the plain Burn path.
    fn both<T>(f: impl Fn() -> T) -> (T, T) {
        let fused = f();
        FORCE_BURN.with(|b| b.set(true));
        let reference = f();
        FORCE_BURN.with(|b| b.set(false));
        (fused, reference)
    }

    fn rand<const D: usize>(shape: [usize; D]) -> Tensor<D> {
        Tensor::random(shape, Distribution::Normal(0.0, 1.0), &Device::flex())
    }

    fn close<const D: usize>(name: &str, (a, b): (Tensor<D>, Tensor<D>), tol: f32) {
        let diff: f32 = (a.clone() - b.clone()).abs().max().into_scalar();
        assert!(diff <= tol, "{name}: fused vs Burn max |diff| = {diff}");
        a.into_data()
            .assert_approx_eq::<f32>(&b.into_data(), Tolerance::absolute(tol));
    }

    #[test]
    fn fused_layers_match_the_burn_path() {
        use crate::attention::{AttentionConfig, BasicTransformerBlockConfig};
        use crate::resnet::{Downsample2DConfig, ResnetBlock2DConfig, Upsample2DConfig};
        use crate::temporal::{TemporalConvLayerConfig, TransformerTemporalModelConfig};
        use crate::transformer_2d::Transformer2DModelConfig;
        let d = Device::flex();
        assert!(enabled(&d, DType::F32));
        assert!(!enabled(&d, DType::F16));

        // Resnet with a 1×1 shortcut, a time embedding and an output scale.
        let resnet = ResnetBlock2DConfig::new(8)
            .with_out_channels(Some(12))
            .with_temb_channels(Some(16))
            .with_groups(4)
            .with_output_scale_factor(2.0)
            .try_init(&d)
            .unwrap();
        let (x, t) = (rand([3, 8, 5, 7]), rand([3, 16]));
        close(
            "resnet",
            both(|| resnet.forward(x.clone(), Some(t.clone())).unwrap()),
            1e-5,
        );
        // Without time embedding (the VAE form) and without shortcut.
        let vae = ResnetBlock2DConfig::new(8)
            .with_groups(2)
            .try_init(&d)
            .unwrap();
        close(
            "resnet (VAE)",
            both(|| vae.forward(x.clone(), None).unwrap()),
            1e-5,
        );

        // Down (stride 2, symmetric and asymmetric padding) and up convolutions.
        for padding in [0, 1] {
            let down = Downsample2DConfig::new(8)
                .with_padding(padding)
                .try_init(&d)
                .unwrap();
            close(
                "downsample",
                both(|| down.forward(x.clone()).unwrap()),
                1e-5,
            );
        }
        let up = Upsample2DConfig::new(8).try_init(&d).unwrap();
        close(
            "upsample",
            both(|| up.forward(x.clone(), Some([11, 13])).unwrap()),
            1e-5,
        );

        // Temporal convolution (all four stages non-zero).
        let mut conv = TemporalConvLayerConfig::new(8)
            .with_norm_num_groups(4)
            .try_init(&d)
            .unwrap();
        conv.conv4 = conv.conv2.clone();
        let frames = rand([2 * 5, 8, 3, 4]);
        close(
            "temporal conv",
            both(|| conv.forward_frames(frames.clone(), 5).unwrap()),
            1e-5,
        );

        // Spatial transformer with one text context per video (4 frames each).
        let spatial = Transformer2DModelConfig::new(16, 2, 8)
            .with_norm_num_groups(4)
            .with_cross_attention_dim(Some(12))
            .with_use_linear_projection(true)
            .try_init(&d)
            .unwrap();
        let (img, ctx) = (rand([8, 16, 3, 5]), rand([2, 7, 12]));
        let per_frame = ctx
            .clone()
            .unsqueeze_dim::<4>(1)
            .expand([2, 4, 7, 12])
            .reshape([8, 7, 12]);
        let (shared, _) = both(|| spatial.forward(img.clone(), Some(ctx.clone())).unwrap());
        let reference = both(|| {
            spatial
                .forward(img.clone(), Some(per_frame.clone()))
                .unwrap()
        })
        .1;
        close(
            "spatial transformer, shared context",
            (shared, reference),
            1e-5,
        );

        // Temporal transformer straight from the frame layout.
        let temporal = TransformerTemporalModelConfig::new(16, 2, 8)
            .with_norm_num_groups(4)
            .try_init(&d)
            .unwrap();
        let video = rand([2 * 6, 16, 2, 3]);
        close(
            "temporal transformer",
            both(|| {
                crate::unet3d::temporal_transformer(
                    &temporal,
                    video.clone(),
                    6,
                    &AllFrames,
                    "t",
                    None,
                )
                .unwrap()
            }),
            1e-5,
        );

        let reference = both(|| {
            crate::unet3d::temporal_transformer(&temporal, video.clone(), 6, &AllFrames, "t", None)
                .unwrap()
        })
        .1;
        let chunked = crate::unet3d::temporal_transformer(
            &temporal,
            video.clone(),
            6,
            &AllFrames,
            "t",
            Some(5),
        )
        .unwrap();
        close(
            "temporal transformer, chunks across videos",
            (chunked, reference),
            1e-5,
        );

        // Attention with a residual; transformer block (LayerNorms, GEGLU feed-forward).
        let attn = AttentionConfig::new(16, 4, 5).try_init(&d).unwrap();
        let (tok, res) = (rand([3, 9, 16]), rand([3, 9, 16]));
        close(
            "attention + residual",
            both(|| {
                attn.forward_residual(tok.clone(), None, None, res.clone())
                    .unwrap()
            }),
            1e-5,
        );
        let block = BasicTransformerBlockConfig::new(16, 2, 8)
            .with_cross_attention_dim(Some(12))
            .try_init(&d)
            .unwrap();
        let text = rand([1, 7, 12]).expand([3, 7, 12]);
        close(
            "transformer block",
            both(|| block.forward(tok.clone(), Some(text.clone())).unwrap()),
            1e-5,
        );
        close("feed-forward", both(|| block.ff.forward(tok.clone())), 1e-5);
    }

    fn erf64(z: f64) -> f64 {
        let mut sum = 0.0;
        let mut term = z;
        for n in 0..200 {
            sum += term / (2 * n + 1) as f64;
            term *= -z * z / (n + 1) as f64;
        }
        sum * 2.0 / std::f64::consts::PI.sqrt()
    }

    #[test]
    fn exp_silu_gelu_are_accurate() {
        for i in -4000..=4000 {
            let x = i as f32 * 0.02;
            for fma in [false, true] {
                let (e, s, g) = if fma {
                    (exp::<true>(x), silu::<true>(x), gelu::<true>(x))
                } else {
                    (exp::<false>(x), silu::<false>(x), gelu::<false>(x))
                };
                let want = (x as f64).exp();
                assert!(
                    ((e as f64) - want).abs() <= 3e-7 * want,
                    "exp({x}) = {e} vs {want}"
                );
                let want = x as f64 / (1.0 + (-x as f64).exp());
                assert!(
                    ((s as f64) - want).abs() <= 1e-6 * want.abs().max(1.0),
                    "silu({x})"
                );
                let want = if x.abs() < 6.0 {
                    0.5 * x as f64 * (1.0 + erf64(x as f64 / std::f64::consts::SQRT_2))
                } else if x > 0.0 {
                    x as f64
                } else {
                    0.0
                };
                assert!(
                    ((g as f64) - want).abs() <= 2e-7 * (x.abs() as f64).max(1.0),
                    "gelu({x}) = {g} vs {want}"
                );
            }
        }
    }

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

    #[test]
    fn group_norm_pools_frames() {
        let (videos, frames, channels, spatial, groups) = (2, 3, 6, 5, 3);
        let n = videos * frames * channels * spatial;
        let x: Vec<f32> = (0..n)
            .map(|i| ((i * 37) % 101) as f32 * 0.1 + 3.0)
            .collect();
        let gamma: Vec<f32> = (0..channels).map(|c| 1.0 + c as f32 * 0.1).collect();
        let beta: Vec<f32> = (0..channels).map(|c| c as f32 * -0.2).collect();
        for silu_after in [false, true] {
            let mut y = x.clone();
            let args = GroupNormArgs {
                videos,
                frames,
                channels,
                spatial,
                groups,
                gamma: Some(&gamma),
                beta: Some(&beta),
                eps: 1e-5,
                silu: silu_after,
            };
            group_norm_inplace(&mut y, &args);
            let cg = channels / groups;
            for v in 0..videos {
                for g in 0..groups {
                    let idx = |f: usize, c: usize, s: usize| {
                        ((v * frames + f) * channels + c) * spatial + s
                    };
                    let members: Vec<usize> = (0..frames)
                        .flat_map(|f| {
                            (g * cg..(g + 1) * cg)
                                .flat_map(move |c| (0..spatial).map(move |s| idx(f, c, s)))
                        })
                        .collect();
                    let mean =
                        members.iter().map(|&i| x[i] as f64).sum::<f64>() / members.len() as f64;
                    let var = members
                        .iter()
                        .map(|&i| (x[i] as f64 - mean).powi(2))
                        .sum::<f64>()
                        / members.len() as f64;
                    for &i in &members {
                        let c = (i / spatial) % channels;
                        let mut want = (x[i] as f64 - mean) / (var + 1e-5).sqrt() * gamma[c] as f64
                            + beta[c] as f64;
                        if silu_after {
                            want /= 1.0 + (-want).exp();
                        }
                        assert!((y[i] as f64 - want).abs() < 1e-5, "{} vs {want}", y[i]);
                    }
                }
            }
        }
    }
}
