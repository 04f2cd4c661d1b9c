//! FreeInit's spectral mixing: keep the low frequencies of one latent and the high frequencies
//! of another (Wu et al. 2023, Eq. 5–7; diffusers `FreeInitMixin._apply_freq_filter` in
//! `src/diffusers/pipelines/free_init_utils.py`):
//!
//! ```text
//! out = real( ifftn( ifftshift( L·fftshift(fftn(x)) + (1 − L)·fftshift(fftn(noise)) ) ) )
//! ```
//!
//! with 3-D transforms over `(F, H, W)` of every `(batch, channel)` volume and `L` the
//! [`FrequencyMask`].
//!
//! # How it is computed (same result, a third of the transforms)
//!
//! The map is linear, so `out = noise + real(ifftn(L'·fftn(x − noise)))`, where `L'` is `L`
//! moved to the un-shifted FFT layout (the shifts become an index permutation of the mask,
//! computed once). Because `x − noise` is real, `real(ifftn(L'·X))` only sees the
//! Hermitian-symmetric part of `L'`: `L_s(k) = (L'(k) + L'(−k))/2` (equal to `L'` for even
//! sizes; for odd sizes diffusers' mask is not symmetric, see [`super::filter`], and taking
//! `.real` is exactly this symmetrisation). With a symmetric real `L_s` the filtered spectrum of
//! a real volume stays Hermitian, so two volumes `a`, `b` are packed into one complex volume
//! `a + i·b`, transformed forward and back once, and read off as the real and imaginary parts.
//! Per pair of volumes this is one forward and one inverse complex 3-D FFT, against diffusers'
//! six (two forward and one inverse per volume). The result is written over `x`'s own buffer
//! ([`SpectralMixer::mix_in_place`]; the tensor API reuses the buffer read back from the
//! device), and the work buffers are pooled across calls.
//!
//! The 3-D transforms are batched 1-D [`rustfft`] transforms: along `W` on contiguous rows,
//! along `H` frame by frame and along `F` on blocks of 32 columns gathered into a small
//! contiguous buffer (so every stage works in cache and the volume is never transposed); the
//! filter is applied inside the temporal stage, between its forward and inverse transforms.
//! Plans are built once per size and shared process-wide. Any sizes work (primes use rustfft's
//! Rader / Bluestein algorithms). Volume pairs are independent: with more than one thread they
//! are spread over scoped threads, and the result does not depend on the thread count.
//!
//! # Precision
//!
//! diffusers transforms in `complex64`. [`FftPrecision::F32`] (the default) does the same; on
//! unit-variance inputs it stays within 2.4e-7 (one `f32` ulp of the output) of a direct `f64`
//! evaluation of the definition, and within 1.2e-6 of the diffusers oracle — which is the
//! oracle's own `complex64` rounding: [`FftPrecision::F64`] (about twice as slow) reaches the
//! same 1.2e-6.

use std::sync::{Arc, Mutex, OnceLock};

use burn::tensor::{Tensor, TensorData};
use rustfft::num_complex::Complex;
use rustfft::{Fft, FftNum, FftPlanner};
use vdm_core::readback::read_data;
use vdm_core::{Error, Result};

use super::filter::FrequencyMask;

/// The floating-point precision of the FFTs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum FftPrecision {
    /// `complex<f32>` transforms, as diffusers (`complex64`). The default.
    #[default]
    F32,
    /// `complex<f64>` transforms: more accurate, about twice as slow.
    F64,
}

/// The real scalar types the transforms run in.
trait Real: FftNum {
    fn of(v: f32) -> Self;
    fn of64(v: f64) -> Self;
    fn to_f32(self) -> f32;
    /// The process-wide planner (it caches every plan it builds).
    fn planner() -> &'static Mutex<FftPlanner<Self>>;
}

impl Real for f32 {
    fn of(v: f32) -> Self {
        v
    }
    fn of64(v: f64) -> Self {
        v as f32
    }
    fn to_f32(self) -> f32 {
        self
    }
    fn planner() -> &'static Mutex<FftPlanner<Self>> {
        static PLANNER: OnceLock<Mutex<FftPlanner<f32>>> = OnceLock::new();
        PLANNER.get_or_init(|| Mutex::new(FftPlanner::new()))
    }
}

impl Real for f64 {
    fn of(v: f32) -> Self {
        v as f64
    }
    fn of64(v: f64) -> Self {
        v
    }
    fn to_f32(self) -> f32 {
        self as f32
    }
    fn planner() -> &'static Mutex<FftPlanner<Self>> {
        static PLANNER: OnceLock<Mutex<FftPlanner<f64>>> = OnceLock::new();
        PLANNER.get_or_init(|| Mutex::new(FftPlanner::new()))
    }
}

/// Plans and the filter for one volume size in one precision.
struct Engine<T: Real> {
    /// `[F, H, W]`.
    dims: [usize; 3],
    /// The symmetrised, un-shifted mask, divided by `F·H·W` (the inverse transform's
    /// normalisation), laid out `[H·W, F]`: one contiguous row per spatial frequency, as the
    /// temporal stage reads it.
    multiplier: Vec<T>,
    /// Forward plans along `W`, `H`, `F`.
    forward: [Arc<dyn Fft<T>>; 3],
    /// Inverse plans along `W`, `H`, `F`.
    inverse: [Arc<dyn Fft<T>>; 3],
    /// In-place scratch length that every plan accepts.
    scratch_len: usize,
    /// Work buffers of finished calls, reused so that large volumes are not re-allocated (and
    /// their pages not faulted in again) on every call.
    pool: Mutex<Vec<Buffers<T>>>,
}

/// Columns gathered per block in the strided stages (a `32 × n` complex block stays in cache).
const BLOCK: usize = 32;

impl<T: Real> Engine<T> {
    fn new(mask: &FrequencyMask) -> Self {
        let dims = mask.dims();
        let [f, h, w] = dims;
        let (forward, inverse) = {
            // A poisoned planner only means another thread panicked while planning; the cache
            // is still usable.
            let mut planner = T::planner().lock().unwrap_or_else(|p| p.into_inner());
            let fwd = [w, h, f].map(|n| planner.plan_fft_forward(n));
            let inv = [w, h, f].map(|n| planner.plan_fft_inverse(n));
            (fwd, inv)
        };
        let scratch_len = forward
            .iter()
            .chain(inverse.iter())
            .map(|p| p.get_inplace_scratch_len())
            .max()
            .unwrap_or(0);

        // fftshift puts frequency k of an n-point axis at position (k + n/2) mod n; the
        // symmetric part needs the mask at k and at −k.
        let tables = |n: usize| -> (Vec<usize>, Vec<usize>) {
            let shift = |k: usize| (k + n / 2) % n;
            (
                (0..n).map(shift).collect(),
                (0..n).map(|k| shift((n - k) % n)).collect(),
            )
        };
        let ((st, stn), (sy, syn), (sx, sxn)) = (tables(f), tables(h), tables(w));
        let values = mask.values();
        let scale = 0.5 / (f * h * w) as f64;
        let mut multiplier = vec![T::zero(); f * h * w];
        for kt in 0..f {
            for ky in 0..h {
                let row = (st[kt] * h + sy[ky]) * w;
                let row_neg = (stn[kt] * h + syn[ky]) * w;
                for kx in 0..w {
                    let sym = values[row + sx[kx]] as f64 + values[row_neg + sxn[kx]] as f64;
                    multiplier[(ky * w + kx) * f + kt] = T::of64(sym * scale);
                }
            }
        }
        Self {
            dims,
            multiplier,
            forward,
            inverse,
            scratch_len,
            pool: Mutex::new(Vec::new()),
        }
    }

    fn volume(&self) -> usize {
        self.dims.iter().product()
    }

    /// Work buffers for one thread: a pooled set, or a new one.
    fn buffers(&self) -> Buffers<T> {
        if let Some(buf) = self.pool.lock().unwrap_or_else(|p| p.into_inner()).pop() {
            return buf;
        }
        let [f, h, _] = self.dims;
        let zero = Complex::new(T::zero(), T::zero());
        Buffers {
            data: vec![zero; self.volume()],
            block: vec![zero; BLOCK * f.max(h)],
            scratch: vec![zero; self.scratch_len],
        }
    }

    /// Mixes one or two consecutive volumes in place: `x` (replaced by the result) and `noise`
    /// hold `V` or `2V` values.
    fn mix_pair(&self, x: &mut [f32], noise: &[f32], buf: &mut Buffers<T>) {
        let v = self.volume();
        let [f, h, w] = self.dims;
        let plane = h * w;
        let Buffers {
            data,
            block,
            scratch,
        } = buf;
        let (data, block, scratch) = (
            data.as_mut_slice(),
            block.as_mut_slice(),
            scratch.as_mut_slice(),
        );

        // Pack x − noise of the two volumes into the real and imaginary parts.
        let (x0, x1) = x.split_at_mut(v);
        let (n0, n1) = noise.split_at(v);
        if x1.is_empty() {
            for ((c, &xv), &nv) in data.iter_mut().zip(&*x0).zip(n0) {
                *c = Complex::new(T::of(xv) - T::of(nv), T::zero());
            }
        } else {
            for (((c, &xa), &na), (&xb, &nb)) in
                data.iter_mut().zip(&*x0).zip(n0).zip(x1.iter().zip(n1))
            {
                *c = Complex::new(T::of(xa) - T::of(na), T::of(xb) - T::of(nb));
            }
        }

        // Forward 2-D transform of each frame (W rows, then H columns), in cache.
        for frame in data.chunks_exact_mut(plane) {
            self.forward[0].process_with_scratch(frame, scratch);
            columns(frame, h, w, block, |b| {
                self.forward[1].process_with_scratch(b, scratch)
            });
        }
        // Along F: forward, filter, inverse, a block of spatial frequencies at a time.
        let multiplier = &self.multiplier;
        let mut first = 0;
        columns(data, f, plane, block, |b| {
            self.forward[2].process_with_scratch(b, scratch);
            let m = &multiplier[first * f..first * f + b.len()];
            for (c, &k) in b.iter_mut().zip(m) {
                *c = *c * k;
            }
            self.inverse[2].process_with_scratch(b, scratch);
            first += b.len() / f;
        });
        // Inverse 2-D transform of each frame, then x ← noise + result.
        let (o0, o1) = (x0, x1);
        for (i, frame) in data.chunks_exact_mut(plane).enumerate() {
            columns(frame, h, w, block, |b| {
                self.inverse[1].process_with_scratch(b, scratch)
            });
            self.inverse[0].process_with_scratch(frame, scratch);
            let range = i * plane..(i + 1) * plane;
            for ((o, &nv), c) in o0[range.clone()]
                .iter_mut()
                .zip(&n0[range.clone()])
                .zip(&*frame)
            {
                *o = (T::of(nv) + c.re).to_f32();
            }
            if !o1.is_empty() {
                for ((o, &nv), c) in o1[range.clone()].iter_mut().zip(&n1[range]).zip(&*frame) {
                    *o = (T::of(nv) + c.im).to_f32();
                }
            }
        }
    }

    /// Mixes every volume of `x` (replaced by the result) and `noise` with `threads` threads.
    fn mix(&self, x: &mut [f32], noise: &[f32], threads: usize) {
        let v = self.volume();
        let pair = 2 * v;
        let pairs = x.len().div_ceil(pair);
        let threads = threads.clamp(1, pairs.max(1));
        let per_thread = pairs.div_ceil(threads) * pair;
        let run = |x: &mut [f32], noise: &[f32]| {
            let mut buf = self.buffers();
            for (xc, nc) in x.chunks_mut(pair).zip(noise.chunks(pair)) {
                self.mix_pair(xc, nc, &mut buf);
            }
            self.pool
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(buf);
        };
        if threads == 1 {
            run(x, noise);
            return;
        }
        std::thread::scope(|s| {
            let mut jobs = x.chunks_mut(per_thread).zip(noise.chunks(per_thread));
            let first = jobs.next();
            for (xc, nc) in jobs {
                s.spawn(move || run(xc, nc));
            }
            if let Some((xc, nc)) = first {
                run(xc, nc);
            }
        });
    }
}

struct Buffers<T> {
    /// One packed complex volume `[F, H, W]`.
    data: Vec<Complex<T>>,
    /// Up to [`BLOCK`] gathered columns.
    block: Vec<Complex<T>>,
    scratch: Vec<Complex<T>>,
}

/// Applies `transform` to every column of the row-major `[rows, cols]` matrix `data`: gathers
/// up to [`BLOCK`] adjacent columns into contiguous rows of `block`, calls `transform` on them
/// (`block.len()` is a multiple of `rows`, one row per column, left to right), and scatters
/// them back.
fn columns<T: Copy>(
    data: &mut [T],
    rows: usize,
    cols: usize,
    block: &mut [T],
    mut transform: impl FnMut(&mut [T]),
) {
    debug_assert_eq!(data.len(), rows * cols);
    for c0 in (0..cols).step_by(BLOCK) {
        let n = BLOCK.min(cols - c0);
        let b = &mut block[..n * rows];
        for r in 0..rows {
            let src = &data[r * cols + c0..r * cols + c0 + n];
            for (j, &value) in src.iter().enumerate() {
                b[j * rows + r] = value;
            }
        }
        transform(b);
        for r in 0..rows {
            let dst = &mut data[r * cols + c0..r * cols + c0 + n];
            for (j, slot) in dst.iter_mut().enumerate() {
                *slot = b[j * rows + r];
            }
        }
    }
}

enum AnyEngine {
    F32(Engine<f32>),
    F64(Engine<f64>),
}

/// A reusable spectral mixer for one mask (and so one `[F, H, W]` size): the mask in transform
/// layout and the FFT plans are prepared once by [`SpectralMixer::new`].
///
/// ```
/// use burn::tensor::{Device, Tensor};
/// use vdm_core::noise::{draw, SeededNoise};
/// use vdm_longvideo::freeinit::{LowPassFilter, SpectralMixer};
///
/// let device = Device::flex();
/// let mut rng = SeededNoise::new(0);
/// let x: Tensor<5> = draw(&mut rng, [1, 4, 8, 16, 16], &device).unwrap();
/// let noise: Tensor<5> = draw(&mut rng, [1, 4, 8, 16, 16], &device).unwrap();
/// let mask = LowPassFilter::default().mask(8, 16, 16).unwrap();
/// let mixed = SpectralMixer::new(&mask).mix(x, noise).unwrap();
/// assert_eq!(mixed.dims(), [1, 4, 8, 16, 16]);
/// ```
pub struct SpectralMixer {
    engine: AnyEngine,
    threads: Option<usize>,
}

impl std::fmt::Debug for SpectralMixer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SpectralMixer")
            .field("dims", &self.dims())
            .field("precision", &self.precision())
            .field("threads", &self.threads)
            .finish()
    }
}

/// Below this many values per call, threads cost more than they save.
const MIN_PARALLEL_LEN: usize = 1 << 16;

impl SpectralMixer {
    /// A mixer for `mask` with `f32` transforms (as diffusers' `complex64`).
    pub fn new(mask: &FrequencyMask) -> Self {
        Self::with_precision(mask, FftPrecision::F32)
    }

    /// A mixer for `mask` with transforms in `precision`.
    pub fn with_precision(mask: &FrequencyMask, precision: FftPrecision) -> Self {
        let engine = match precision {
            FftPrecision::F32 => AnyEngine::F32(Engine::new(mask)),
            FftPrecision::F64 => AnyEngine::F64(Engine::new(mask)),
        };
        Self {
            engine,
            threads: None,
        }
    }

    /// Uses `threads` threads (at least 1). Without it, the mixer uses up to
    /// [`std::thread::available_parallelism`] threads for calls of at least 65 536 values.
    /// The result is the same for every thread count.
    pub fn with_threads(mut self, threads: usize) -> Self {
        self.threads = Some(threads.max(1));
        self
    }

    /// The volume size `[F, H, W]` of the mask.
    pub fn dims(&self) -> [usize; 3] {
        match &self.engine {
            AnyEngine::F32(e) => e.dims,
            AnyEngine::F64(e) => e.dims,
        }
    }

    /// The transform precision.
    pub fn precision(&self) -> FftPrecision {
        match &self.engine {
            AnyEngine::F32(_) => FftPrecision::F32,
            AnyEngine::F64(_) => FftPrecision::F64,
        }
    }

    /// Mixes host data: `x`, `noise` and `out` are row-major `[N, F, H, W]` (any number `N` of
    /// volumes, e.g. `N = B·C`), all of the same length.
    ///
    /// # Errors
    /// [`Error::Shape`] when the lengths differ or are not a positive multiple of `F·H·W`.
    pub fn mix_into(&self, x: &[f32], noise: &[f32], out: &mut [f32]) -> Result<()> {
        self.check_len("out", out.len(), x.len())?;
        self.check_len("x", x.len(), x.len())?;
        out.copy_from_slice(x);
        self.mix_in_place(out, noise)
    }

    /// Mixes host data in place: `x` (row-major `[N, F, H, W]`) is replaced by the mix of its
    /// low frequencies with the high frequencies of `noise` (same length).
    ///
    /// # Errors
    /// [`Error::Shape`] when the lengths differ or are not a positive multiple of `F·H·W`.
    pub fn mix_in_place(&self, x: &mut [f32], noise: &[f32]) -> Result<()> {
        self.check_len("x", x.len(), x.len())?;
        self.check_len("noise", noise.len(), x.len())?;
        let threads = self.threads.unwrap_or_else(|| {
            if x.len() < MIN_PARALLEL_LEN {
                1
            } else {
                std::thread::available_parallelism().map_or(1, |n| n.get())
            }
        });
        match &self.engine {
            AnyEngine::F32(e) => e.mix(x, noise, threads),
            AnyEngine::F64(e) => e.mix(x, noise, threads),
        }
        Ok(())
    }

    fn check_len(&self, name: &str, len: usize, x_len: usize) -> Result<()> {
        let [f, h, w] = self.dims();
        let v = f * h * w;
        if len != x_len || len == 0 || !len.is_multiple_of(v) {
            return Err(Error::shape(
                name,
                format!(
                    "a positive multiple of F·H·W = {f}·{h}·{w} values, as many as `x` ({x_len})"
                ),
                &[len],
            ));
        }
        Ok(())
    }

    /// Mixes `[B, C, F, H, W]` tensors: the low frequencies of `x`, the high frequencies of
    /// `noise` (diffusers `_apply_freq_filter(x, noise, mask)`). The result is on `x`'s device
    /// with `x`'s dtype; the transforms run on the host.
    ///
    /// # Errors
    /// [`Error::Shape`] when `noise` differs from `x` in shape or `x`'s `[F, H, W]` differs from
    /// the mask's; [`Error::ReadBack`] when a tensor cannot be read back from its device;
    /// [`Error::Unsupported`] when its values cannot be converted to `f32`.
    pub fn mix(&self, x: Tensor<5>, noise: Tensor<5>) -> Result<Tensor<5>> {
        let dims = x.dims();
        let [f, h, w] = self.dims();
        if dims[2..] != [f, h, w] || dims.contains(&0) {
            return Err(Error::shape(
                "x",
                format!("[B, C, {f}, {h}, {w}] (the frequency mask's [F, H, W]), B, C > 0"),
                &dims,
            ));
        }
        if noise.dims() != dims {
            return Err(Error::shape(
                "noise",
                format!("{dims:?} (as `x`)"),
                &noise.dims(),
            ));
        }
        let (device, dtype) = (x.device(), x.dtype());
        let mut xs = f32_data(read_data(x, "x")?, "x")?;
        let ns = f32_data(read_data(noise, "noise")?, "noise")?;
        self.mix_in_place(f32_slice_mut(&mut xs, "x")?, f32_slice(&ns, "noise")?)?;
        Ok(Tensor::from_data(xs, (&device, dtype)))
    }
}

/// Mixes the low frequencies of `x` with the high frequencies of `noise` through `mask`
/// (diffusers `FreeInitMixin._apply_freq_filter`): a one-off [`SpectralMixer`] in `f32`.
///
/// `x`, `noise`: `[B, C, F, H, W]`; `mask`: `[F, H, W]`, broadcast over `B` and `C`.
///
/// # Errors
/// As [`SpectralMixer::mix`].
pub fn apply_frequency_filter(
    x: Tensor<5>,
    noise: Tensor<5>,
    mask: &FrequencyMask,
) -> Result<Tensor<5>> {
    SpectralMixer::new(mask).mix(x, noise)
}

/// `data` as `f32` host data (converted only if it holds another dtype), to borrow with
/// [`f32_slice`].
pub(crate) fn f32_data(data: TensorData, what: &str) -> Result<TensorData> {
    if data.dtype() == burn::tensor::DType::F32 {
        return Ok(data);
    }
    data.try_cast_as::<f32>()
        .map_err(|e| Error::Unsupported(format!("reading `{what}` back as f32 values: {e}")))
}

/// The values of `f32` host data, mutably.
pub(crate) fn f32_slice_mut<'a>(data: &'a mut TensorData, what: &str) -> Result<&'a mut [f32]> {
    data.as_mut_slice::<f32>()
        .map_err(|e| Error::Unsupported(format!("writing `{what}` as f32 values: {e}")))
}

/// The values of `f32` host data.
pub(crate) fn f32_slice<'a>(data: &'a TensorData, what: &str) -> Result<&'a [f32]> {
    data.as_slice::<f32>()
        .map_err(|e| Error::Unsupported(format!("reading `{what}` as f32 values: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::freeinit::LowPassFilter;
    use vdm_core::noise::{NoiseSource, SeededNoise};

    fn randn(seed: u64, n: usize) -> Vec<f32> {
        SeededNoise::new(seed)
            .normal(&[n])
            .unwrap()
            .try_to_vec::<f32>()
            .unwrap()
    }

    fn max_diff(a: &[f32], b: &[f32]) -> f32 {
        a.iter().zip(b).fold(0.0, |m, (x, y)| m.max((x - y).abs()))
    }

    /// The direct definition: complex 3-D DFT in f64, shift, mix, inverse, real part.
    fn reference(x: &[f32], noise: &[f32], mask: &FrequencyMask) -> Vec<f32> {
        let [f, h, w] = mask.dims();
        let v = f * h * w;
        let mut planner = FftPlanner::<f64>::new();
        let fft3 = |data: &mut Vec<Complex<f64>>, inverse: bool, planner: &mut FftPlanner<f64>| {
            for (axis, n, stride) in [(0, f, h * w), (1, h, w), (2, w, 1)] {
                let _ = axis;
                let plan = if inverse {
                    planner.plan_fft_inverse(n)
                } else {
                    planner.plan_fft_forward(n)
                };
                for start in 0..v {
                    // Visit each line once: its first element has index 0 along the axis.
                    if (start / stride) % n != 0 {
                        continue;
                    }
                    let mut line: Vec<Complex<f64>> =
                        (0..n).map(|i| data[start + i * stride]).collect();
                    plan.process(&mut line);
                    for (i, c) in line.into_iter().enumerate() {
                        data[start + i * stride] = c;
                    }
                }
            }
        };
        let mut out = Vec::with_capacity(x.len());
        for (xv, nv) in x.chunks(v).zip(noise.chunks(v)) {
            let mut xf: Vec<Complex<f64>> =
                xv.iter().map(|&a| Complex::new(a as f64, 0.0)).collect();
            let mut nf: Vec<Complex<f64>> =
                nv.iter().map(|&a| Complex::new(a as f64, 0.0)).collect();
            fft3(&mut xf, false, &mut planner);
            fft3(&mut nf, false, &mut planner);
            let mut m = vec![Complex::new(0.0, 0.0); v];
            for t in 0..f {
                for y in 0..h {
                    for x in 0..w {
                        let l = mask.get((t + f / 2) % f, (y + h / 2) % h, (x + w / 2) % w) as f64;
                        let i = (t * h + y) * w + x;
                        m[i] = xf[i] * l + nf[i] * (1.0 - l);
                    }
                }
            }
            fft3(&mut m, true, &mut planner);
            out.extend(m.iter().map(|c| (c.re / v as f64) as f32));
        }
        out
    }

    #[test]
    fn ones_mask_returns_x_and_zero_mask_returns_noise_for_any_size() {
        for &[b, f, h, w] in &[[3, 7, 11, 13], [2, 1, 1, 1], [1, 4, 6, 5], [5, 2, 3, 17]] {
            let v = f * h * w;
            let x = randn(1, b * v);
            let noise = randn(2, b * v);
            let ones = FrequencyMask::from_values([f, h, w], vec![1.0; v]).unwrap();
            let zeros = FrequencyMask::from_values([f, h, w], vec![0.0; v]).unwrap();
            for precision in [FftPrecision::F32, FftPrecision::F64] {
                let mut out = vec![0.0; b * v];
                SpectralMixer::with_precision(&ones, precision)
                    .mix_into(&x, &noise, &mut out)
                    .unwrap();
                assert!(max_diff(&out, &x) < 5e-6, "{f}x{h}x{w} {precision:?}");
                SpectralMixer::with_precision(&zeros, precision)
                    .mix_into(&x, &noise, &mut out)
                    .unwrap();
                assert!(max_diff(&out, &noise) < 5e-6, "{f}x{h}x{w} {precision:?}");
            }
        }
    }

    #[test]
    fn matches_the_direct_definition_including_odd_sizes() {
        for &[b, f, h, w] in &[[3, 7, 11, 13], [2, 8, 16, 16], [1, 7, 12, 10], [4, 5, 4, 9]] {
            let v = f * h * w;
            let x = randn(3, b * v);
            let noise = randn(4, b * v);
            for filter in [
                LowPassFilter::default(),
                LowPassFilter::gaussian(0.4, 0.15).unwrap(),
            ] {
                let mask = filter.mask(f, h, w).unwrap();
                let want = reference(&x, &noise, &mask);
                let mut got = vec![0.0; b * v];
                SpectralMixer::with_precision(&mask, FftPrecision::F64)
                    .mix_into(&x, &noise, &mut got)
                    .unwrap();
                assert!(
                    max_diff(&got, &want) < 1e-6,
                    "{f}x{h}x{w}: {}",
                    max_diff(&got, &want)
                );
                SpectralMixer::new(&mask)
                    .mix_into(&x, &noise, &mut got)
                    .unwrap();
                assert!(
                    max_diff(&got, &want) < 1e-6,
                    "{f}x{h}x{w}: {}",
                    max_diff(&got, &want)
                );
            }
        }
    }

    #[test]
    fn thread_count_does_not_change_the_result() {
        let [b, f, h, w] = [5, 6, 10, 9];
        let v = f * h * w;
        let (x, noise) = (randn(5, b * v), randn(6, b * v));
        let mask = LowPassFilter::default().mask(f, h, w).unwrap();
        let mut one = vec![0.0; b * v];
        let mut three = vec![0.0; b * v];
        SpectralMixer::new(&mask)
            .with_threads(1)
            .mix_into(&x, &noise, &mut one)
            .unwrap();
        SpectralMixer::new(&mask)
            .with_threads(3)
            .mix_into(&x, &noise, &mut three)
            .unwrap();
        assert_eq!(one, three);
    }

    #[test]
    fn shape_errors() {
        let mask = LowPassFilter::default().mask(2, 3, 4).unwrap();
        let mixer = SpectralMixer::new(&mask);
        let mut out = vec![0.0; 24];
        assert!(matches!(
            mixer.mix_into(&[0.0; 23], &[0.0; 23], &mut out),
            Err(Error::Shape { .. })
        ));
        assert!(matches!(
            mixer.mix_into(&[0.0; 24], &[0.0; 48], &mut out),
            Err(Error::Shape { .. })
        ));
        let device = burn::tensor::Device::flex();
        let x = Tensor::<5>::zeros([1, 1, 2, 3, 5], &device);
        assert!(matches!(mixer.mix(x.clone(), x), Err(Error::Shape { .. })));
    }
}
