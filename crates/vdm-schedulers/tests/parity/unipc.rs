//! UniPC against `sched_product_unipc` (written by `fixtures/oracle/gen_sched_part2.py`):
//! timesteps, sigmas and every sample of 164 trajectories over the config product and its
//! variants (orders 1–3, bh1 / bh2, noise prediction, disabled correctors, no lower-order
//! final, Karras / exponential sigmas, final sigma_min).
//!
//! Where diffusers fails (an assertion after starting at a repeated first timestep; NaN from
//! `bh1`'s `−∞·0` on the last step), we must run to the end with finite samples, equal to
//! diffusers' up to its first NaN.
//!
//! Four cases are ill-conditioned: noise prediction (`predict_x0: false`) from the zero-SNR
//! sigma 4096, whose first update multiplies the sample by `α_t/α_s0 ≈ 225` and cancels it
//! against the model term. diffusers' own float32 run differs from the same run on float64
//! tensors by `fp64_deviation` (2.6e-3 at 10 steps, 4.5e-4 at 25, recorded by the generator;
//! every other case is below 1.2e-6). Those are held to 20× that deviation, the rest to 1e-5.

use crate::fixtures::*;

#[test]
fn unipc_product() {
    let r = run_conditioned_product("unipc", "UniPCMultistepScheduler", |deviation| {
        if deviation < 1e-4 {
            (REL_TOL, false)
        } else {
            (20.0 * deviation, true)
        }
    });
    assert_eq!(r.cases, 164);
    for case in &r.nan_cases {
        assert_eq!(
            case["init_kwargs"]["solver_type"], "bh1",
            "{}: NaN cause",
            case["prefix"]
        );
    }
    let nan = r.nan_cases.len();
    assert_eq!((r.diffusers_errors, nan, r.ill_conditioned), (6, 8, 4));
    eprintln!(
        "UniPC: 164 cases, worst rel err {:e} ({} ill-conditioned: {:e}); {} diffusers \
         assertion failures and {nan} NaN runs (bh1 onto sigma 0) run finite here",
        r.worst, r.ill_conditioned, r.worst_ill, r.diffusers_errors
    );
}
