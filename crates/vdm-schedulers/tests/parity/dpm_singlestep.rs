//! DPM-Solver singlestep against `sched_product_dpm_singlestep` (written by
//! `fixtures/oracle/gen_sched_part3.py`): 82 trajectories over beta schedule × prediction ×
//! {10, 25} steps and variants at 9 and 12 steps (orders 1–3, midpoint / heun, `dpmsolver`,
//! `sde-dpmsolver++` with every noise draw replayed, final sigma_min, `lower_order_final`,
//! Karras sigmas, thresholding, diffusers' aliases): the order of every step, timesteps and
//! every sample.

use vdm_schedulers::{Scheduler, SchedulerConfig};

use crate::fixtures::*;

#[test]
fn dpm_singlestep_product() {
    let json = load_json("sched_product_dpm_singlestep.json");
    let cases = json["cases"].as_array().unwrap();
    for case in cases {
        let prefix = case["prefix"].as_str().unwrap();
        let steps = case["num_inference_steps"].as_u64().unwrap() as usize;
        let config = config_json(case, "DPMSolverSinglestepScheduler", "init_kwargs");
        let SchedulerConfig::DpmSolverSinglestep(c) = SchedulerConfig::from_json(&config).unwrap()
        else {
            panic!("expected the singlestep scheduler");
        };
        let mut s = c.build().unwrap();
        s.set_timesteps(steps).unwrap();
        let theirs: Vec<usize> = case["order_list"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as usize)
            .collect();
        assert_eq!(s.orders(), theirs.as_slice(), "{prefix}: order list");
    }
    let (n, _) = run_product("dpm_singlestep", "DPMSolverSinglestepScheduler", |case| {
        let config = config_json(case, "DPMSolverSinglestepScheduler", "init_kwargs");
        let s: Box<dyn Scheduler> = SchedulerConfig::from_json(&config)
            .unwrap()
            .build()
            .unwrap();
        s
    });
    assert_eq!(n, 82);
}
