//! Activations: SiLU, the exact-form GELU and the GEGLU gate of the feed-forward
//! (`value · gelu(gate)` over rows of `[value | gate]`), and GELU / quick GELU applied in
//! place ([`activate_in_place`], the CLIP text encoder's MLP).
//!
//! Why: flex evaluates these as chains of single-threaded scalar element-wise ops (libm `expf`
//! / `erff`), each allocating a fresh activation-sized buffer. Here they are branch-free
//! polynomials that vectorise: `exp` from the crate's SIMD module and `erf` in the
//! Abramowitz–Stegun 7.1.26 form (|error| ≤ 1.5e-7), so results agree with the Burn path to
//! float rounding.

use rayon::prelude::*;

use super::simd::{exp, madd};
use super::threads::chunk_len;

/// `x · sigmoid(x)`.
#[inline(always)]
pub(super) fn silu<const FMA: bool>(x: f32) -> f32 {
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

/// OpenAI CLIP's quick GELU `x · σ(1.702 x)`.
#[inline(always)]
fn quick_gelu<const FMA: bool>(x: f32) -> f32 {
    x / (1.0 + exp::<FMA>(-1.702 * x))
}

// ---------------------------------------------------------------------------------------------
// Element-wise kernels.
// ---------------------------------------------------------------------------------------------

/// An activation [`activate_in_place`] applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// The exact-form GELU `x · Φ(x)`.
    Gelu,
    /// Quick GELU `x · σ(1.702 x)`.
    QuickGelu,
}

#[inline(always)]
fn gelu_impl<const W: usize, const FMA: bool>(x: &mut [f32]) {
    for v in x {
        *v = gelu::<FMA>(*v);
    }
}
dispatch!(fn gelu_serial(x: &mut [f32]) => gelu_impl);

#[inline(always)]
fn quick_gelu_impl<const W: usize, const FMA: bool>(x: &mut [f32]) {
    for v in x {
        *v = quick_gelu::<FMA>(*v);
    }
}
dispatch!(fn quick_gelu_serial(x: &mut [f32]) => quick_gelu_impl);

/// Applies `activation` to every value of `x`, in place, on up to [`threads`](crate::threads::threads) threads (chunks
/// of at least 16 Ki values).
pub fn activate_in_place(x: &mut [f32], activation: Activation) {
    let serial = match activation {
        Activation::Gelu => gelu_serial,
        Activation::QuickGelu => quick_gelu_serial,
    };
    match chunk_len(x.len(), x.len() >> 14) {
        None => serial(x),
        Some(chunk) => x.par_chunks_mut(chunk).for_each(serial),
    }
}

#[inline(always)]
fn geglu_rows_impl<const W: usize, const FMA: bool>(h: &[f32], out: &mut [f32], hidden: usize) {
    for (row, o) in h.chunks_exact(2 * hidden).zip(out.chunks_exact_mut(hidden)) {
        let (value, gate) = row.split_at(hidden);
        for ((o, &a), &g) in o.iter_mut().zip(value).zip(gate) {
            *o = a * gelu::<FMA>(g);
        }
    }
}
dispatch!(
    /// The GEGLU gate: `out[r] = value · gelu(gate)` for every row `r` of `h`
    /// (`[rows, 2·hidden]`, each row `[value | gate]`) into `out` (`[rows, hidden]`).
    pub fn geglu_rows(h: &[f32], out: &mut [f32], hidden: usize) => geglu_rows_impl
);

#[cfg(test)]
mod tests {
    use super::*;

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
    fn activations_in_place_match_their_formulas_on_every_chunk() {
        let n = 3 * (1 << 14) + 7;
        let x: Vec<f32> = (0..n).map(|i| (i as f32 - n as f32 / 2.0) * 4e-4).collect();
        for activation in [Activation::Gelu, Activation::QuickGelu] {
            let mut y = x.clone();
            activate_in_place(&mut y, activation);
            for (&x, &y) in x.iter().zip(&y) {
                let x64 = x as f64;
                let want = match activation {
                    Activation::QuickGelu => x64 / (1.0 + (-1.702 * x64).exp()),
                    Activation::Gelu if x.abs() < 6.0 => {
                        0.5 * x64 * (1.0 + erf64(x64 / std::f64::consts::SQRT_2))
                    }
                    Activation::Gelu => x64.max(0.0),
                };
                assert!(
                    ((y as f64) - want).abs() <= 1e-6 * want.abs().max(1.0),
                    "{activation:?}({x}) = {y} vs {want}"
                );
            }
        }
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
}
