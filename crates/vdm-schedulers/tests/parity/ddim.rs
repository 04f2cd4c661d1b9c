//! DDIM against `sched_traj` c00–c05 and `sched_product_ddim`.

use vdm_schedulers::{Ddim, DdimConfig, Scheduler, SchedulerConfig};

use crate::fixtures::*;

fn build(case: &serde_json::Value, key: &str) -> Box<dyn Scheduler> {
    let cfg = match SchedulerConfig::from_json(&config_json(case, "DDIMScheduler", key)).unwrap() {
        SchedulerConfig::Ddim(c) => c,
        other => panic!("expected DDIM, got {other:?}"),
    };
    let mut s: Ddim = DdimConfig::build(&cfg).unwrap();
    if let Some(eta) = case["step_kwargs"]["eta"].as_f64() {
        s = s.with_eta(eta).unwrap();
    }
    Box::new(s)
}

#[test]
fn ddim_trajectories() {
    let vectors = Vectors::load("sched_traj.safetensors");
    let common = Vectors::load("sched_common.safetensors");
    let cases = traj_cases("DDIMScheduler");
    assert_eq!(cases.len(), 6);
    for case in &cases {
        let prefix = case["prefix"].as_str().unwrap();
        let steps = case["num_inference_steps"].as_u64().unwrap() as usize;
        let mut s = build(case, "full_config");
        let draws = case["n_noise_draws"].as_u64().unwrap() as usize;
        let run = run_trajectory(s.as_mut(), steps, Family::Big, &common, draws);
        let worst = check_case(prefix, case, &run, s.as_ref(), &vectors, prefix, steps);
        // The stored schedule table.
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
        if vectors
            .tensors
            .contains_key(&format!("{prefix}.pred_original"))
        {
            let (shape, po) = vectors.get(&format!("{prefix}.pred_original"));
            let n: usize = shape[1..].iter().product();
            for (i, ours) in run.pred_original.iter().enumerate() {
                let e = rel_err(ours, &po[i * n..(i + 1) * n]);
                assert!(e <= REL_TOL, "{prefix}: pred_original {i} rel err {e:e}");
            }
        }
        eprintln!("DDIM {prefix}: worst rel err {worst:e}");
    }
}

#[test]
fn ddim_product() {
    let (n, _) = run_product("ddim", "DDIMScheduler", |c| build(c, "init_kwargs"));
    assert_eq!(n, 135);
}
