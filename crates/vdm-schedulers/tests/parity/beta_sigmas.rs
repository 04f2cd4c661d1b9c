//! `use_beta_sigmas` against `sched_beta_sigmas` (written by `fixtures/oracle/gen_sched_part3.py`
//! with scipy's `beta.ppf`; ours comes from `statrs`): Euler, Heun, KDPM2, DPM-Solver++, UniPC
//! and DEIS over beta schedule × {epsilon, v_prediction} × {10, 25} steps: timesteps, sigmas
//! and every sample (the samples carry the sigmas).
//!
//! On the cosine schedule the DPM-Solver family's truncated timesteps repeat the first one
//! (999, 999, …); diffusers then starts at the repeat and runs off its sigmas (12 cases). We
//! start a run from the first timestep at index 0 and must finish with finite samples.

use vdm_schedulers::SchedulerConfig;

use crate::fixtures::*;

#[test]
fn beta_sigmas_in_every_class_that_has_them() {
    let json = load_json("sched_beta_sigmas.json");
    let vectors = Vectors::load("sched_beta_sigmas.safetensors");
    let common = Vectors::load("sched_common.safetensors");
    let cases = json["cases"].as_array().unwrap();
    assert_eq!(cases.len(), 72);
    let (mut worst, mut failed) = (0.0f64, 0);
    for case in cases {
        let prefix = case["prefix"].as_str().unwrap();
        let class = case["class_name"].as_str().unwrap();
        let label = format!("{class} {prefix}");
        let steps = case["num_inference_steps"].as_u64().unwrap() as usize;
        let config = SchedulerConfig::from_json(&config_json(case, class, "init_kwargs")).unwrap();
        let mut s = config.build().unwrap();
        let run = run_trajectory(s.as_mut(), steps, Family::Small, &common, 0);
        let theirs_t = vectors.values(&format!("{prefix}.timesteps"));
        let e = rel_err(s.timesteps(), &theirs_t);
        assert!(e < 1e-6, "{label}: timesteps rel err {e:e}");
        if case.get("diffusers_error").is_some() {
            failed += 1;
            assert_eq!(
                s.timesteps()[0],
                s.timesteps()[1],
                "{label}: another failure"
            );
            assert!(run.error.is_none(), "{label}: {:?}", run.error);
            assert_eq!(run.samples.len(), s.timesteps().len() + 1, "{label}");
            for sample in &run.samples {
                assert!(sample.iter().all(|v| v.is_finite()), "{label}: not finite");
            }
            continue;
        }
        let calls = s.timesteps().len();
        worst = worst.max(check_samples(&label, case, &run, &vectors, prefix, calls));
    }
    assert_eq!(failed, 12);
    eprintln!(
        "beta sigmas: 72 cases, worst rel err {worst:e}; {failed} diffusers index errors run \
         finite here"
    );
}
