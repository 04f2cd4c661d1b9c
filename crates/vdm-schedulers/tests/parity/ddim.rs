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
    run_traj_cases("DDIMScheduler", 6, |case| build(case, "full_config"));
}

#[test]
fn ddim_product() {
    let (n, _) = run_product("ddim", "DDIMScheduler", |c| build(c, "init_kwargs"));
    assert_eq!(n, 135);
}
