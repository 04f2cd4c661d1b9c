//! DPM-Solver(++) against `sched_traj` c12–c16, `sched_product_dpmpp` and `sched_aux` a07.

use std::cell::Cell;

use vdm_schedulers::{DpmSolverMultistep, DpmSolverMultistepConfig, Scheduler, SchedulerConfig};

use crate::fixtures::*;

const CLASS: &str = "DPMSolverMultistepScheduler";

fn build(case: &serde_json::Value, key: &str) -> DpmSolverMultistep {
    let cfg = match SchedulerConfig::from_json(&config_json(case, CLASS, key)).unwrap() {
        SchedulerConfig::DpmSolverMultistep(c) => c,
        other => panic!("expected DPMSolverMultistep, got {other:?}"),
    };
    DpmSolverMultistepConfig::build(&cfg).unwrap()
}

/// Checks `scheduler.sigmas()` (after `set_timesteps`) against `{prefix}.sigmas`; returns the
/// relative error.
fn check_sigmas(label: &str, s: &DpmSolverMultistep, vectors: &Vectors, prefix: &str) -> f64 {
    let theirs = vectors.values(&format!("{prefix}.sigmas"));
    let ours: Vec<f64> = s.sigmas().iter().map(|&x| x as f64).collect();
    assert_eq!(ours.len(), theirs.len(), "{label}: number of sigmas");
    let e = rel_err(&ours, &theirs);
    if std::env::var("VDM_DEBUG").is_ok() {
        let differ = ours.iter().zip(&theirs).filter(|(a, b)| a != b).count();
        eprintln!("{label}: sigmas rel err {e:e}, {differ} differ bitwise");
    }
    assert!(e <= REL_TOL, "{label}: sigmas rel err {e:e}");
    e
}

#[test]
fn dpm_trajectories() {
    let vectors = Vectors::load("sched_traj.safetensors");
    let common = Vectors::load("sched_common.safetensors");
    let cases = traj_cases(CLASS);
    assert_eq!(cases.len(), 5);
    let mut worst_all = 0.0f64;
    for case in &cases {
        let prefix = case["prefix"].as_str().unwrap();
        let steps = case["num_inference_steps"].as_u64().unwrap() as usize;
        let draws = case["n_noise_draws"].as_u64().unwrap() as usize;
        let mut s = build(case, "full_config");
        let run = run_trajectory(&mut s, steps, Family::Big, &common, draws);
        let worst = check_case(prefix, case, &run, &s, &vectors, prefix, steps);
        let sigma_err = check_sigmas(prefix, &s, &vectors, prefix);
        let table = case["schedule_table"].as_str().unwrap();
        let ac = vectors.values(&format!("{table}.alphas_cumprod"));
        let ours: Vec<f64> = s
            .noise_schedule()
            .alphas_cumprod
            .iter()
            .map(|&a| a as f64)
            .collect();
        assert!(rel_err(&ours, &ac) < 1e-6, "{prefix}: alphas_cumprod");
        let key = format!("{prefix}.converted_model_output");
        let mut conv_err = 0.0f64;
        if vectors.tensors.contains_key(&key) {
            let (shape, co) = vectors.get(&key);
            let n: usize = shape[1..].iter().product();
            assert_eq!(
                run.pred_original.len(),
                steps,
                "{prefix}: converted outputs"
            );
            for (i, ours) in run.pred_original.iter().enumerate() {
                let e = rel_err(ours, &co[i * n..(i + 1) * n]);
                assert!(
                    e <= REL_TOL,
                    "{prefix}: converted_model_output {i} rel err {e:e}"
                );
                conv_err = conv_err.max(e);
            }
        }
        eprintln!(
            "DPM {prefix}: worst rel err {worst:e} (sigmas {sigma_err:e}, converted output \
             {conv_err:e})"
        );
        worst_all = worst_all.max(worst).max(conv_err);
    }
    eprintln!("DPM trajectories: worst rel err {worst_all:e}");
}

#[test]
fn dpm_product() {
    let vectors = Vectors::load("sched_product_dpmpp.safetensors");
    let worst_sigma = Cell::new(0.0f64);
    let (n, worst) = run_product("dpmpp", CLASS, |case| {
        let prefix = case["prefix"].as_str().unwrap();
        let steps = case["num_inference_steps"].as_u64().unwrap() as usize;
        let mut s = build(case, "init_kwargs");
        s.set_timesteps(steps).unwrap();
        let e = check_sigmas(&format!("{CLASS} {prefix}"), &s, &vectors, prefix);
        worst_sigma.set(worst_sigma.get().max(e));
        Box::new(build(case, "init_kwargs"))
    });
    eprintln!(
        "DPM product: worst rel err {worst:e}, sigmas {:e}",
        worst_sigma.get()
    );
    assert_eq!(n, 108);
}

#[test]
fn dpm_add_noise() {
    let aux = load_json("sched_aux.json");
    let case = aux["cases"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["prefix"] == "a07")
        .expect("case a07");
    assert_eq!(case["class"], CLASS);
    let vectors = Vectors::load("sched_aux.safetensors");
    let mut s = build(case, "init_kwargs");
    s.set_timesteps(case["set_timesteps"].as_u64().unwrap() as usize)
        .unwrap();
    check_sigmas("a07", &s, &vectors, "a07");
    let (shape, x0) = vectors.get("x0");
    let noise = vectors.values("noise");
    let expected = vectors.values("a07.add_noise");
    let timesteps = vectors.values("a07.timesteps");
    let inner: [usize; 5] = [1, shape[1], shape[2], shape[3], shape[4]];
    let n: usize = inner.iter().product();
    assert_eq!(timesteps.len(), shape[0]);
    let mut worst = 0.0f64;
    for (b, &t) in timesteps.iter().enumerate() {
        let range = b * n..(b + 1) * n;
        let out = s
            .add_noise(
                to_tensor(&x0[range.clone()], inner),
                to_tensor(&noise[range.clone()], inner),
                t,
            )
            .unwrap();
        let e = rel_err(&to_vec(&out), &expected[range]);
        assert!(e <= REL_TOL, "a07 batch {b} (t = {t}): rel err {e:e}");
        worst = worst.max(e);
    }
    // A timestep outside the schedule is an error, not diffusers' silent last index.
    let x = to_tensor(&x0[..n], inner);
    assert!(s.add_noise(x.clone(), x, 500.0).is_err());
    eprintln!("DPM add_noise a07: worst rel err {worst:e}");
}
