//! Euler ancestral against `sched_product_euler_a` (written by `fixtures/oracle/gen_sched_part2.py`):
//! every sample of 72 trajectories, their sigmas and noise draws.

use vdm_schedulers::{EulerAncestralDiscrete, Scheduler, SchedulerConfig};

use crate::fixtures::*;

fn build(case: &serde_json::Value) -> EulerAncestralDiscrete {
    let json = config_json(case, "EulerAncestralDiscreteScheduler", "init_kwargs");
    match SchedulerConfig::from_json(&json).unwrap() {
        SchedulerConfig::EulerAncestralDiscrete(c) => c.build().unwrap(),
        other => panic!("parsed as {other:?}"),
    }
}

#[test]
fn euler_ancestral_product() {
    let (n, worst) = run_product("euler_a", "EulerAncestralDiscreteScheduler", |c| {
        Box::new(build(c))
    });
    assert_eq!(n, 72);
    let json = load_json("sched_product_euler_a.json");
    let vectors = Vectors::load("sched_product_euler_a.safetensors");
    let mut worst_sigma = 0.0f64;
    for case in json["cases"].as_array().unwrap() {
        let prefix = case["prefix"].as_str().unwrap();
        let steps = case["num_inference_steps"].as_u64().unwrap() as usize;
        let mut s = build(case);
        s.set_timesteps(steps).unwrap();
        let ours: Vec<f64> = s.sigmas().iter().map(|&x| x as f64).collect();
        let e = rel_err(&ours, &vectors.values(&format!("{prefix}.sigmas")));
        assert!(e <= REL_TOL, "{prefix}: sigmas rel err {e:e}");
        let init = case["init_noise_sigma"].as_f64().unwrap();
        assert!(
            (s.init_noise_sigma() - init).abs() <= 1e-6 * init,
            "{prefix}: init_noise_sigma {} vs {init}",
            s.init_noise_sigma()
        );
        worst_sigma = worst_sigma.max(e);
    }
    eprintln!(
        "Euler a sched_product: worst sample rel err {worst:e}, worst sigma rel err {worst_sigma:e}"
    );
}
