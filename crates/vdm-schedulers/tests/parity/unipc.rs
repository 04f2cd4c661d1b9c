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

use vdm_schedulers::SchedulerConfig;

use crate::fixtures::*;

#[test]
fn unipc_product() {
    let json = load_json("sched_product_unipc.json");
    let vectors = Vectors::load("sched_product_unipc.safetensors");
    let common = Vectors::load("sched_common.safetensors");
    let cases = json["cases"].as_array().unwrap();
    assert_eq!(cases.len(), 164);
    let (mut worst, mut asserted, mut nan) = (0.0f64, 0, 0);
    let mut failures = Vec::new();
    let (mut ill_conditioned, mut worst_ill) = (0, 0.0f64);
    for case in cases {
        let prefix = case["prefix"].as_str().unwrap();
        let steps = case["num_inference_steps"].as_u64().unwrap() as usize;
        let config = config_json(case, "UniPCMultistepScheduler", "init_kwargs");
        let mut s = SchedulerConfig::from_json(&config)
            .unwrap()
            .build()
            .unwrap();
        let run = run_trajectory(s.as_mut(), steps, Family::Small, &common, 0);
        assert!(run.error.is_none(), "{prefix}: {:?}", run.error);
        assert_eq!(run.samples.len(), steps + 1, "{prefix}");
        for sample in &run.samples {
            assert!(sample.iter().all(|v| v.is_finite()), "{prefix}: not finite");
        }
        let theirs_t = vectors.values(&format!("{prefix}.timesteps"));
        assert_eq!(s.timesteps(), theirs_t.as_slice(), "{prefix}: timesteps");
        if case.get("diffusers_error").is_some() {
            asserted += 1;
            assert_eq!(
                s.timesteps()[0],
                s.timesteps()[1],
                "{prefix}: another failure"
            );
            continue;
        }
        let (shape, theirs) = vectors.get(&format!("{prefix}.samples"));
        let n: usize = shape[1..].iter().product();
        let finite = case["finite"].as_bool().unwrap();
        let compared = if finite {
            steps + 1
        } else {
            nan += 1;
            assert_eq!(
                case["init_kwargs"]["solver_type"], "bh1",
                "{prefix}: NaN cause"
            );
            case["first_nonfinite_sample_index"].as_u64().unwrap() as usize
        };
        let scale = (0..compared)
            .map(|i| max_abs(&theirs[i * n..(i + 1) * n]))
            .fold(0.0, f64::max);
        let conditioning = case["fp64_deviation"].as_f64().unwrap();
        let (tol, ill) = if conditioning < 1e-4 {
            (REL_TOL, false)
        } else {
            (20.0 * conditioning, true)
        };
        ill_conditioned += usize::from(ill);
        let mut case_worst = 0.0f64;
        for (i, ours) in run.samples.iter().take(compared).enumerate() {
            let e = max_abs_diff(ours, &theirs[i * n..(i + 1) * n]) / scale;
            case_worst = case_worst.max(e);
        }
        if case_worst > tol {
            failures.push(format!("{prefix}: {case_worst:e} > {tol:e}"));
        }
        if ill {
            worst_ill = worst_ill.max(case_worst);
        } else {
            worst = worst.max(case_worst);
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert_eq!((asserted, nan, ill_conditioned), (6, 8, 4));
    eprintln!(
        "UniPC: 164 cases, worst rel err {worst:e} ({ill_conditioned} ill-conditioned: \
         {worst_ill:e}); {asserted} diffusers assertion failures and {nan} NaN runs (bh1 onto \
         sigma 0) run finite here"
    );
}
