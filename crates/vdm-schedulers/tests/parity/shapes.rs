//! Every scheduler class on a batch-2, odd, non-square latent `[2, 3, 5, 3, 7]` against
//! `sched_shapes` (written by `fixtures/oracle/gen_sched_part3.py`, with its own init, fake-model
//! offset `R` and noise bank in the same file): 14 cases, with dynamic thresholding (a quantile
//! per batch item over `C·F·H·W` values) wherever the class has it, and every noise draw
//! replayed and counted.

use vdm_schedulers::{Scheduler, SchedulerConfig};

use crate::fixtures::*;

fn build(case: &serde_json::Value) -> Box<dyn Scheduler> {
    let class = case["class_name"].as_str().unwrap();
    let config = SchedulerConfig::from_json(&config_json(case, class, "init_kwargs")).unwrap();
    let step = &case["step_kwargs"];
    match (config, step["eta"].as_f64()) {
        (SchedulerConfig::Ddim(c), Some(eta)) => {
            Box::new(c.build().unwrap().with_eta(eta).unwrap())
        }
        (SchedulerConfig::Tcd(c), Some(gamma)) => {
            Box::new(c.build().unwrap().with_gamma(gamma).unwrap())
        }
        (config, None) => config.build().unwrap(),
        (config, Some(_)) => panic!("{config:?}: unexpected step kwargs {step}"),
    }
}

#[test]
fn every_class_on_an_odd_batch_2_latent() {
    let json = load_json("sched_shapes.json");
    let vectors = Vectors::load("sched_shapes.safetensors");
    assert_eq!(vectors.get("init").0, [2, 3, 5, 3, 7]);
    let cases = json["cases"].as_array().unwrap();
    assert_eq!(cases.len(), 14);
    let mut worst = 0.0f64;
    for case in cases {
        let prefix = case["prefix"].as_str().unwrap();
        let class = case["class_name"].as_str().unwrap();
        let steps = case["num_inference_steps"].as_u64().unwrap() as usize;
        let draws = case["n_noise_draws"].as_u64().unwrap() as usize;
        let mut s = build(case);
        let run = run_trajectory(s.as_mut(), steps, Family::Odd, &vectors, draws);
        let label = format!("{class} {prefix}");
        // Timesteps to 1e-6 (KDPM2's interpolated ones can be an ulp off), samples to 1e-5.
        let theirs = vectors.values(&format!("{prefix}.timesteps"));
        let e = rel_err(s.timesteps(), &theirs);
        assert!(e < 1e-6, "{label}: timesteps rel err {e:e}");
        let calls = s.timesteps().len();
        worst = worst.max(check_samples(&label, case, &run, &vectors, prefix, calls));
    }
    eprintln!("14 classes / configs on [2, 3, 5, 3, 7]: worst rel err {worst:e}");
}
