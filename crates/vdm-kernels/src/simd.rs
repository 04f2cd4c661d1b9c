//! Instruction-set dispatch and the SIMD abstraction shared by the kernels.
//!
//! The hot loops are compiled for AVX-512 and for AVX2 + FMA and selected at run time
//! ([`isa`], the `dispatch!` macro); a portable instance covers every other CPU. Element-wise
//! kernels are generic over the vector width `W` (lanes of fixed-size arrays LLVM
//! vectorises); the attention micro-kernels use the explicit [`Vector`] operations
//! ([`Lanes8`] in plain Rust, `__m512` / `__m256` in the `x86` module).
//!
//! Also the scalar math the vectorised loops share: [`madd`] and a branch-free [`exp`] (a
//! Cephes-style `expf` polynomial, ≈ 1 ulp), which replace the libm calls flex makes one
//! value at a time so that loops over them vectorise.

use std::sync::OnceLock;

// ---------------------------------------------------------------------------------------------
// Instruction-set dispatch. Kernels are generic over the vector width `W` (lanes of the
// fixed-size arrays LLVM vectorises) and `FMA`; `dispatch!` calls the AVX-512, AVX2 + FMA or
// portable instance.
// ---------------------------------------------------------------------------------------------

/// The instruction set the kernels' hot loops run with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Isa {
    /// AVX-512F (16 lanes of `f32`).
    Avx512,
    /// AVX2 + FMA (8 lanes).
    Avx2,
    /// Plain Rust (8-lane arrays LLVM vectorises for the target's baseline).
    Portable,
}

/// The best instruction set of this CPU (detected once).
pub fn isa() -> Isa {
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
/// instruction set (attributes such as doc comments go on `$name`).
macro_rules! dispatch {
    ($(#[$attr:meta])* $vis:vis fn $name:ident($($arg:ident: $ty:ty),* $(,)?) => $generic:ident) => {
        $(#[$attr])*
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
                match $crate::simd::isa() {
                    // SAFETY: the CPU supports the enabled features (checked by `isa`).
                    $crate::simd::Isa::Avx512 => return unsafe { avx512($($arg),*) },
                    $crate::simd::Isa::Avx2 => return unsafe { avx2($($arg),*) },
                    $crate::simd::Isa::Portable => {}
                }
            }
            $generic::<8, false>($($arg),*)
        }
    };
}

#[inline(always)]
pub(super) fn madd<const FMA: bool>(a: f32, b: f32, c: f32) -> f32 {
    if FMA { a.mul_add(b, c) } else { a * b + c }
}

/// `e^x` (Cephes `expf` polynomial, ≈ 1 ulp), branch-free so that loops over it vectorise;
/// `x` is clamped to `[-87, 88]`.
#[inline(always)]
pub(super) fn exp<const FMA: bool>(x: f32) -> f32 {
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

/// The SIMD vector operations the attention micro-kernels need.
pub(super) trait Vector: Copy {
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
pub(super) struct Lanes8([f32; 8]);

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
