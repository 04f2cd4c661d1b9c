//! Beta-distribution sigmas (Lee et al. 2024, "Beta Sampling is All You Need: Efficient Image
//! Generation Strategy for Diffusion Models using Stepwise Spectral Analysis"), diffusers'
//! `_convert_to_beta` (`use_beta_sigmas`, shared by Euler, Heun, KDPM2, DPM-Solver, UniPC and
//! DEIS).
//!
//! Step `i` of `n` sits at the `1 − i/(n − 1)` quantile of `Beta(0.6, 0.6)` between the
//! smallest and the largest sigma, which packs steps at both ends of the schedule (the
//! distribution's density is U-shaped). The quantile is `statrs`' (scipy's `beta.ppf` in
//! diffusers; the two agree to about 1e-16 away from the extreme tails).

use statrs::distribution::{Beta, ContinuousCDF};

use crate::spacing::np_linspace;

/// The shape parameters diffusers uses (`alpha = beta = 0.6`).
const SHAPE: f64 = 0.6;

/// `n` sigmas from `sigma_max` down to `sigma_min` at the quantiles of `Beta(0.6, 0.6)`
/// (`f64`, as diffusers' numpy array before its cast to `float32`).
pub(crate) fn beta_sigmas(sigma_min: f64, sigma_max: f64, n: usize) -> Vec<f64> {
    let beta = Beta::new(SHAPE, SHAPE).expect("0.6 is a valid beta shape");
    np_linspace(0.0, 1.0, n)
        .into_iter()
        .map(|x| sigma_min + beta.inverse_cdf(1.0 - x) * (sigma_max - sigma_min))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// scipy 1.17.1 `scipy.stats.beta.ppf(p, 0.6, 0.6)` (printed with 17 digits).
    #[test]
    #[allow(clippy::excessive_precision)]
    fn quantiles_match_scipy() {
        let beta = Beta::new(SHAPE, SHAPE).unwrap();
        for (p, scipy) in [
            (0.01, 8.61238821542905926e-4),
            (0.1, 3.95844055887808466e-2),
            (0.25, 1.75680378652694980e-1),
            (0.5, 5.00000000000000111e-1),
            (0.75, 8.24319621347304965e-1),
            (0.9, 9.60415594411219153e-1),
            (0.99, 9.99138761178457124e-1),
        ] {
            let ours = beta.inverse_cdf(p);
            assert!((ours - scipy).abs() <= 1e-15, "{p}: {ours} vs {scipy}");
        }
    }

    proptest! {
        /// The ends are exact, the sigmas strictly decrease and are symmetric about the mid
        /// sigma (the distribution is).
        #[test]
        fn ends_order_and_symmetry(n in 2usize..200, lo in 0.01f64..1.0, span in 0.5f64..100.0) {
            let hi = lo + span;
            let s = beta_sigmas(lo, hi, n);
            prop_assert_eq!(s.len(), n);
            prop_assert_eq!(s[0], hi);
            prop_assert_eq!(s[n - 1], lo);
            prop_assert!(s.windows(2).all(|w| w[0] > w[1]));
            for i in 0..n {
                let mirrored = lo + hi - s[n - 1 - i];
                prop_assert!((s[i] - mirrored).abs() < 1e-9 * hi, "{} vs {}", s[i], mirrored);
            }
        }
    }
}
