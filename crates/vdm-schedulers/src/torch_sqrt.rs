//! PyTorch's float32 square root on the CPU (MKL's portable kernel, emulated): the one
//! operation of diffusers' schedule math that PyTorch does not round correctly. Used by the
//! noise schedules, the prediction conversions and the samplers that take roots of `ᾱ` or `σ`.

/// `Tensor.sqrt()` of a float32 CPU tensor as PyTorch 2.x wheels compute it: not with the
/// correctly rounded `sqrtps`, but through Intel MKL's vector math library (`vmsSqrt` in
/// high-accuracy mode, `aten/src/ATen/cpu/vml.h`), whose SSE kernels are accurate to < 1 ulp but
/// round the "wrong" way for ~19% of inputs (those whose exact root lies more than ~0.25 ulp from
/// the nearest `f32`; never for inputs whose root is closer than that).
///
/// The kernel takes a 12-bit estimate `y ≈ 1/√x`, then does one Goldschmidt step plus a residual
/// correction, every operation a separately rounded `f32` multiply or add (no FMA):
/// `s = x·y, h = y/2, e = 1/2 − s·h, s₁ = s + s·e, h₁ = h + h·e, √x ≈ s₁ + (x − s₁²)·h₁`.
/// The result depends on every bit of `y`. MKL's `SSE4.2` kernels (`…sSqrt_EXHAynn`,
/// `…sSqrt_H8HAynn`) take `y` from the hardware `rsqrtps`, whose table differs between CPU
/// vendors; its portable `SSE2` kernel (`…sSqrt_E2HAynn`) computes `y` with IEEE ops as
/// `(1/sqrtps(x))` truncated to 12 significant bits (mask `0xffff_f800`). This function is that
/// portable kernel, bit for bit (checked against `mkl_vml_kernel_sSqrt_E2HAynn` called directly
/// from `libtorch_cpu.so` on 2·10⁶ random inputs in (0, 1): 0 differences).
///
/// It is not bit-exact with the oracle: the oracle machine evidently ran an SSE kernel with a
/// vendor `rsqrtps` estimate (its results are reproduced by the refinement above with some 12-bit
/// `y` within 1–2 units of Intel's `rsqrtps` at every one of the 3000 zero-SNR table entries, but
/// neither Intel's `rsqrtps` nor any formula tried gives all of them), and that estimate is a
/// hardware lookup table. Modelling the same refinement still matters: the correctly rounded root
/// disagrees with the oracle on `sqrt(ᾱ)` values that fix `ᾱ₀` (see `rescale_zero_terminal_snr`).
///
/// Zero, subnormal, infinite, negative or NaN inputs take MKL's scalar fallback path, which is
/// IEEE `sqrt`.
pub(crate) fn torch_sqrt(x: f32) -> f32 {
    if !(x.is_normal() && x > 0.0) {
        return x.sqrt();
    }
    // 12-bit estimate of 1/√x: the correctly rounded reciprocal of the correctly rounded root,
    // with the low 11 mantissa bits cleared.
    let y = f32::from_bits((1.0f32 / x.sqrt()).to_bits() & 0xffff_f800);
    // Rust never contracts `a * b + c` into an FMA, so each line rounds like `mulps`/`addps`.
    let s = x * y;
    let h = y * 0.5;
    let e = 0.5 - s * h;
    let s1 = s * e + s;
    let h1 = h * e + h;
    let r = x - s1 * s1;
    r * h1 + s1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mkl_sqrt_is_faithful() {
        // Within one ulp of the correctly rounded root, and exact where the root is exact.
        for i in 1..20_000u32 {
            let x = i as f32 * 1.234e-4;
            let (m, r) = (torch_sqrt(x), x.sqrt());
            assert!(
                (m.to_bits() as i64 - r.to_bits() as i64).abs() <= 1,
                "{x}: {m} vs {r}"
            );
        }
        for x in [0.0f32, 0.25, 1.0, 4.0, 1e-40, f32::INFINITY] {
            assert_eq!(torch_sqrt(x), x.sqrt());
        }
        assert!(torch_sqrt(-1.0).is_nan());
    }
}
