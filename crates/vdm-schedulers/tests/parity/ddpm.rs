//! DDPM against `sched_traj` c06–c08, `sched_product_ddpm` and `sched_aux` a00–a05.

use burn::tensor::Tensor;
use vdm_schedulers::{Ddpm, DdpmConfig, Scheduler, SchedulerConfig};

use crate::fixtures::*;

fn config(case: &serde_json::Value, key: &str) -> DdpmConfig {
    match SchedulerConfig::from_json(&config_json(case, "DDPMScheduler", key)).unwrap() {
        SchedulerConfig::Ddpm(c) => c,
        other => panic!("expected DDPM, got {other:?}"),
    }
}

fn build(case: &serde_json::Value, key: &str) -> Box<dyn Scheduler> {
    let s: Ddpm = DdpmConfig::build(&config(case, key)).unwrap();
    Box::new(s)
}

fn debug() -> bool {
    std::env::var("VDM_DEBUG").is_ok()
}

/// Prints where `ours` and `theirs` differ most (for `VDM_DEBUG=1`).
fn describe(label: &str, ours: &[f64], theirs: &[f64]) {
    let (at, diff) = ours
        .iter()
        .zip(theirs)
        .map(|(a, b)| (a - b).abs())
        .enumerate()
        .fold((0, 0.0), |m, (i, d)| if d > m.1 { (i, d) } else { m });
    let count = ours.iter().zip(theirs).filter(|(a, b)| a != b).count();
    eprintln!(
        "{label}: rel {:e}, {count} values differ, worst {diff:e} at {at} (ours {}, diffusers {})",
        rel_err(ours, theirs),
        ours[at],
        theirs[at]
    );
}

#[test]
fn ddpm_trajectories() {
    run_traj_cases("DDPMScheduler", 3, |case| build(case, "full_config"));
}

#[test]
fn ddpm_product() {
    let (n, _) = run_product("ddpm", "DDPMScheduler", |c| build(c, "init_kwargs"));
    assert_eq!(n, 108);
}

/// `add_noise` and `get_velocity` at `timesteps_int` = [0, 250, 500, 999], one timestep per
/// batch item (computed item by item).
#[test]
fn ddpm_add_noise_and_velocity() {
    let json = load_json("sched_aux.json");
    let vectors = Vectors::load("sched_aux.safetensors");
    let x0 = vectors.tensor5("x0");
    let noise = vectors.tensor5("noise");
    let timesteps = vectors.values("timesteps_int");
    let batch = x0.dims()[0];
    assert_eq!(timesteps.len(), batch);
    let cases: Vec<_> = json["cases"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["class"].as_str().unwrap().starts_with("DDPMScheduler"))
        .collect();
    assert_eq!(cases.len(), 6);
    let item = |t: &Tensor<5>, b: usize| t.clone().narrow(0, b, 1);
    let mut worst = 0.0f64;
    for case in cases {
        let prefix = case["prefix"].as_str().unwrap();
        let s = config(case, "init_kwargs").build().unwrap();
        let ac = vectors.values(&format!("{prefix}.alphas_cumprod"));
        let ours: Vec<f64> = s
            .noise_schedule()
            .alphas_cumprod
            .iter()
            .map(|&a| a as f64)
            .collect();
        if debug() {
            describe(&format!("{prefix} alphas_cumprod"), &ours, &ac);
        }
        assert!(rel_err(&ours, &ac) < 1e-6, "{prefix}: alphas_cumprod");
        let (noisy, velocity): (Vec<_>, Vec<_>) = (0..batch)
            .map(|b| {
                let t = timesteps[b];
                (
                    s.add_noise(item(&x0, b), item(&noise, b), t).unwrap(),
                    s.get_velocity(item(&x0, b), item(&noise, b), t).unwrap(),
                )
            })
            .unzip();
        for (name, ours) in [("add_noise", noisy), ("get_velocity", velocity)] {
            let ours = to_vec(&Tensor::cat(ours, 0));
            let theirs = vectors.values(&format!("{prefix}.{name}"));
            if debug() {
                let n = ours.len() / batch;
                for b in 0..batch {
                    let label = format!("{prefix} {name} t={}", timesteps[b]);
                    describe(
                        &label,
                        &ours[b * n..(b + 1) * n],
                        &theirs[b * n..(b + 1) * n],
                    );
                }
            }
            let e = rel_err(&ours, &theirs);
            assert!(e <= REL_TOL, "{prefix}: {name} rel err {e:e}");
            worst = worst.max(e);
        }
    }
    eprintln!("DDPM aux: worst rel err {worst:e}");
}
