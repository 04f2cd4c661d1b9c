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
    run_traj_cases("LCMScheduler", 2, |case| build(case, "full_config"));
}

#[test]
fn lcm_product() {
    let (n, _) = run_product("lcm", "LCMScheduler", |c| build(c, "init_kwargs"));
    assert_eq!(n, 54);
}
