//! LCM against `sched_traj` c17–c18 and `sched_product_lcm`.

use vdm_schedulers::{Lcm, LcmConfig, Scheduler, SchedulerConfig};

use crate::fixtures::*;

fn build(case: &serde_json::Value, key: &str) -> Box<dyn Scheduler> {
    let cfg = match SchedulerConfig::from_json(&config_json(case, "LCMScheduler", key)).unwrap() {
        SchedulerConfig::Lcm(c) => c,
        other => panic!("expected LCM, got {other:?}"),
    };
    let s: Lcm = LcmConfig::build(&cfg).unwrap();
    Box::new(s)
}

#[test]
fn lcm_trajectories() {
    let vectors = Vectors::load("sched_traj.safetensors");
    let common = Vectors::load("sched_common.safetensors");
    let cases = traj_cases("LCMScheduler");
    assert_eq!(cases.len(), 2);
    let mut worst_all = 0.0f64;
    for case in &cases {
        let prefix = case["prefix"].as_str().unwrap();
        let steps = case["num_inference_steps"].as_u64().unwrap() as usize;
        let mut s = build(case, "full_config");
        let draws = case["n_noise_draws"].as_u64().unwrap() as usize;
        let run = run_trajectory(s.as_mut(), steps, Family::Big, &common, draws);
        let mut worst = check_case(prefix, case, &run, s.as_ref(), &vectors, prefix, steps);
        let table = case["schedule_table"].as_str().unwrap();
        let ac = vectors.values(&format!("{table}.alphas_cumprod"));
        let ours: Vec<f64> = s
            .noise_schedule()
            .alphas_cumprod
            .iter()
            .map(|&a| a as f64)
            .collect();
        let e = rel_err(&ours, &ac);
        assert!(e < 1e-6, "{prefix}: alphas_cumprod rel err {e:e}");
        // `pred_original` holds LCM's `denoised`.
        if vectors
            .tensors
            .contains_key(&format!("{prefix}.pred_original"))
        {
            let (shape, po) = vectors.get(&format!("{prefix}.pred_original"));
            let n: usize = shape[1..].iter().product();
            assert_eq!(
                run.pred_original.len(),
                shape[0],
                "{prefix}: denoised count"
            );
            for (i, ours) in run.pred_original.iter().enumerate() {
                let e = rel_err(ours, &po[i * n..(i + 1) * n]);
                assert!(e <= REL_TOL, "{prefix}: denoised {i} rel err {e:e}");
                worst = worst.max(e);
            }
        }
        eprintln!("LCM {prefix}: worst rel err {worst:e}");
        worst_all = worst_all.max(worst);
    }
    eprintln!("LCM trajectories: worst rel err {worst_all:e}");
}

#[test]
fn lcm_product() {
    let (n, _) = run_product("lcm", "LCMScheduler", |c| build(c, "init_kwargs"));
    assert_eq!(n, 54);
}
