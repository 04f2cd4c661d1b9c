//! The two-stage samplers against `sched_product_heun` and `sched_product_kdpm2` (written by
//! `fixtures/oracle/gen_sched_part2.py`): the timesteps and sigmas (each after the first
//! repeated for the second stage) and the sample after every one of the 2N − 1 model calls.

use vdm_schedulers::{HeunDiscrete, KDpm2Discrete, Scheduler, SchedulerConfig};

use crate::fixtures::*;

/// The [`computed_cases`] of `sched_product_<name>`, each scheduler made by `build`; returns the
/// worst relative sample error and the number of the file's cases diffusers turned to NaN.
fn two_stage_product<S: Scheduler>(
    name: &str,
    class: &str,
    build: impl Fn(SchedulerConfig) -> S,
    sigmas: impl Fn(&S) -> Vec<f64>,
) -> (f64, usize) {
    let json = load_json(&format!("sched_product_{name}.json"));
    let vectors = Vectors::load(&format!("sched_product_{name}.safetensors"));
    let common = Vectors::load("sched_common.safetensors");
    let cases = json["cases"].as_array().unwrap();
    let nan_in_diffusers = cases
        .iter()
        .filter(|case| !case["finite"].as_bool().unwrap())
        .count();
    let mut worst = 0.0f64;
    let computed = computed_cases(cases);
    for &case in &computed {
        let prefix = case["prefix"].as_str().unwrap();
        let steps = case["num_inference_steps"].as_u64().unwrap() as usize;
        let config = SchedulerConfig::from_json(&config_json(case, class, "init_kwargs")).unwrap();
        let mut s = build(config);
        let run = run_trajectory(&mut s, steps, Family::Small, &common, 0);
        assert!(run.error.is_none(), "{prefix}: {:?}", run.error);
        assert_eq!(
            run.samples.len(),
            2 * steps,
            "{prefix}: one sample per model call"
        );
        let theirs_t = vectors.values(&format!("{prefix}.timesteps"));
        let ours_t: Vec<f64> = s.timesteps().iter().map(|&t| t as f32 as f64).collect();
        assert_eq!(ours_t.len(), 2 * steps - 1, "{prefix}: model calls");
        // Karras and midpoint timesteps come from a log-sigma interpolation.
        let t_err = max_abs_diff(&ours_t, &theirs_t);
        assert!(t_err <= 1e-3, "{prefix}: timesteps differ by {t_err}");
        let e = rel_err(&sigmas(&s), &vectors.values(&format!("{prefix}.sigmas")));
        assert!(e <= REL_TOL, "{prefix}: sigmas rel err {e:e}");
        let init = case["init_noise_sigma"].as_f64().unwrap();
        assert!(
            (s.init_noise_sigma() - init).abs() <= 1e-6 * init,
            "{prefix}"
        );
        if !case["finite"].as_bool().unwrap() {
            // diffusers starts these runs at the second occurrence of a repeated first
            // timestep and walks off its schedule; we start at the first and stay finite.
            assert_eq!(
                ours_t[0], ours_t[2],
                "{prefix}: NaN in diffusers for another reason"
            );
            for sample in &run.samples {
                assert!(sample.iter().all(|v| v.is_finite()), "{prefix}: not finite");
            }
            continue;
        }
        let (shape, theirs) = vectors.get(&format!("{prefix}.samples"));
        let n: usize = shape[1..].iter().product();
        let scale = max_abs(theirs);
        for (i, ours) in run.samples.iter().enumerate() {
            let e = max_abs_diff(ours, &theirs[i * n..(i + 1) * n]) / scale;
            assert!(e <= REL_TOL, "{prefix}: sample {i} rel err {e:e}");
            worst = worst.max(e);
        }
    }
    eprintln!(
        "{class}: {} of {} cases, worst rel err {worst:e}; {nan_in_diffusers} cases NaN in \
         diffusers",
        computed.len(),
        cases.len()
    );
    (worst, nan_in_diffusers)
}

fn f64s(x: &[f32]) -> Vec<f64> {
    x.iter().map(|&v| v as f64).collect()
}

#[test]
fn heun_product() {
    let (worst, nan) = two_stage_product(
        "heun",
        "HeunDiscreteScheduler",
        |c| match c {
            SchedulerConfig::HeunDiscrete(c) => c.build().unwrap(),
            other => panic!("parsed as {other:?}"),
        },
        |s: &HeunDiscrete| f64s(s.sigmas()),
    );
    assert_eq!(nan, 0);
    assert!(worst > 0.0, "the comparison ran");
}

/// KDPM2's sigmas end `0, 0, 0` in diffusers' layout; the midpoints are checked by the unit
/// tests (diffusers' table starts with a NaN).
#[test]
fn kdpm2_product() {
    let (worst, nan) = two_stage_product(
        "kdpm2",
        "KDPM2DiscreteScheduler",
        |c| match c {
            SchedulerConfig::KDpm2Discrete(c) => c.build().unwrap(),
            other => panic!("parsed as {other:?}"),
        },
        |s: &KDpm2Discrete| f64s(s.sigmas()),
    );
    assert_eq!(nan, 8);
    assert!(worst > 0.0, "the comparison ran");
}
