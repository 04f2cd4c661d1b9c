//! Loading the diffusers oracle vectors (`fixtures/oracle/`, see its PROVENANCE.md) and
//! running scheduler trajectories against them.
//!
//! A missing or unreadable fixture is a test failure, never a skip.

use std::cmp::Reverse;
use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;

use burn::tensor::{Device, Tensor, TensorData};
use safetensors::SafeTensors;
use serde_json::Value;
use vdm_core::noise::NoiseBank;
use vdm_schedulers::Scheduler;

/// The relative tolerance the issue asks for. A trajectory's error is
/// `max_i max|ours_i − diffusers_i| / max_i max|diffusers_i|` over all its samples `i` (the
/// error relative to the trajectory's magnitude; per-sample figures are printed with
/// `VDM_DEBUG=1`).
pub const REL_TOL: f64 = 1e-5;

/// `max|a − b|`, infinite if either has a NaN.
pub fn max_abs_diff(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len(), "length mismatch");
    a.iter().zip(b).fold(0.0f64, |m, (x, y)| {
        if x.is_nan() || y.is_nan() {
            f64::INFINITY
        } else {
            m.max((x - y).abs())
        }
    })
}

/// `max|a|`.
pub fn max_abs(a: &[f64]) -> f64 {
    a.iter().fold(0.0f64, |m, x| m.max(x.abs()))
}

pub fn device() -> Device {
    crate::test_device()
}

/// The cases of a `sched_product_<name>` file whose trajectories a run computes: every case
/// where the mounting test binary's `COVER_PRODUCTS` is false (this crate's own parity suite, on
/// flex); where it is true (the facade's `backends` binary, whose wgpu device is Mesa's software
/// Vulkan in CI, about 20× slower per step), a covering subset: cases picked greedily (most
/// uncovered features first, ties to the earlier case) until every value of every config field,
/// every step count and every kind of diffusers outcome (finite or NaN, failed, ill-conditioned)
/// occurs in one (3 to 10 cases per file). The checked cases keep their tolerances; a
/// scheduler's step is the same tensor ops in every case, so the subset tests the backend as
/// well, in files' order.
pub fn computed_cases(cases: &[Value]) -> Vec<&Value> {
    if !crate::COVER_PRODUCTS {
        return cases.iter().collect();
    }
    let features: Vec<BTreeSet<String>> = cases.iter().map(case_features).collect();
    let mut uncovered: BTreeSet<&String> = features.iter().flatten().collect();
    let mut chosen = Vec::new();
    while !uncovered.is_empty() {
        let best = (0..cases.len())
            .max_by_key(|&i| {
                let new = features[i].iter().filter(|f| uncovered.contains(f)).count();
                (new, Reverse(i))
            })
            .unwrap();
        uncovered.retain(|f| !features[best].contains(*f));
        chosen.push(best);
    }
    chosen.sort_unstable();
    chosen.into_iter().map(|i| &cases[i]).collect()
}

/// What a product case exercises, as `field=value` strings (see [`computed_cases`]).
fn case_features(case: &Value) -> BTreeSet<String> {
    let mut features = BTreeSet::new();
    if let Some(Value::Object(kwargs)) = case.get("init_kwargs") {
        features.extend(kwargs.iter().map(|(k, v)| format!("{k}={v}")));
    }
    features.insert(format!("steps={}", case["num_inference_steps"]));
    features.insert(format!("finite={}", case["finite"]));
    let failed = case.get("diffusers_error").is_some();
    features.insert(format!("diffusers_error={failed}"));
    if let Some(deviation) = case["fp64_deviation"].as_f64() {
        features.insert(format!("ill_conditioned={}", deviation >= REL_TOL));
    }
    features
}

pub fn fixture_path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../fixtures/oracle")
        .join(name)
}

/// A safetensors file loaded into memory: name → (shape, f32 values).
pub struct Vectors {
    pub tensors: HashMap<String, (Vec<usize>, Vec<f64>)>,
}

impl Vectors {
    pub fn load(name: &str) -> Self {
        let path = fixture_path(name);
        let bytes = std::fs::read(&path)
            .unwrap_or_else(|e| panic!("fixture {} is missing: {e}", path.display()));
        let st = SafeTensors::deserialize(&bytes)
            .unwrap_or_else(|e| panic!("fixture {} is not safetensors: {e}", path.display()));
        let mut tensors = HashMap::new();
        for (name, view) in st.tensors() {
            let data = view.data();
            let values: Vec<f64> = match view.dtype() {
                safetensors::Dtype::F32 => data
                    .chunks_exact(4)
                    .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]) as f64)
                    .collect(),
                safetensors::Dtype::I64 => data
                    .chunks_exact(8)
                    .map(|b| i64::from_le_bytes(b.try_into().unwrap()) as f64)
                    .collect(),
                safetensors::Dtype::F64 => data
                    .chunks_exact(8)
                    .map(|b| f64::from_le_bytes(b.try_into().unwrap()))
                    .collect(),
                other => panic!("unexpected dtype {other:?} for {name}"),
            };
            tensors.insert(name, (view.shape().to_vec(), values));
        }
        Self { tensors }
    }

    pub fn get(&self, name: &str) -> &(Vec<usize>, Vec<f64>) {
        self.tensors
            .get(name)
            .unwrap_or_else(|| panic!("tensor {name} missing from fixture"))
    }

    pub fn values(&self, name: &str) -> Vec<f64> {
        self.get(name).1.clone()
    }

    /// Tensor `name` as a 5-D tensor (its shape must have 5 dims).
    pub fn tensor5(&self, name: &str) -> Tensor<5> {
        let (shape, v) = self.get(name);
        let shape: [usize; 5] = shape.as_slice().try_into().expect("5-D tensor");
        to_tensor(v, shape)
    }

    /// Slices `0..count` of a stacked tensor as host data, for a noise bank.
    pub fn noise_bank(&self, name: &str, count: usize) -> NoiseBank {
        let (shape, v) = self.get(name);
        let inner = shape[1..].to_vec();
        let n: usize = inner.iter().product();
        NoiseBank::from_tensors((0..count).map(|i| {
            TensorData::new(
                v[i * n..(i + 1) * n]
                    .iter()
                    .map(|&x| x as f32)
                    .collect::<Vec<f32>>(),
                inner.clone(),
            )
        }))
    }
}

pub fn to_tensor(values: &[f64], shape: [usize; 5]) -> Tensor<5> {
    let data: Vec<f32> = values.iter().map(|&x| x as f32).collect();
    Tensor::from_data(TensorData::new(data, shape), &device())
}

pub fn to_vec(t: &Tensor<5>) -> Vec<f64> {
    t.to_data()
        .convert::<f32>()
        .try_to_vec::<f32>()
        .unwrap()
        .into_iter()
        .map(|x| x as f64)
        .collect()
}

pub fn load_json(name: &str) -> Value {
    let path = fixture_path(name);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("fixture {} is missing: {e}", path.display()));
    serde_json::from_str(&text).unwrap()
}

/// `max|a − b| / max|b|`.
pub fn rel_err(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len(), "length mismatch");
    max_abs_diff(a, b) / max_abs(b).max(1e-30)
}

/// The fake model of the oracle: `(0.1·x_in + f32(0.01·t/1000)) + R`.
pub fn fake_model(x_in: Tensor<5>, t: f64, r: &Tensor<5>) -> Tensor<5> {
    let c = ((0.01 * t) / 1000.0) as f32;
    x_in.mul_scalar(0.1f32).add_scalar(c) + r.clone()
}

/// Which oracle latent family a case uses.
#[derive(Clone, Copy)]
pub enum Family {
    /// `sched_traj`: `[1,4,4,8,8]`, `init_big`, `R_big`, `noise_bank_big`.
    Big,
    /// `sched_product_*`: `[1,2,2,2,2]`, `init_small`, `R_small`, `noise_bank_small`.
    Small,
    /// `sched_shapes`: `[2,3,5,3,7]`, its own `init`, `R`, `noise_bank`.
    Odd,
}

/// The result of running one trajectory.
pub struct Run {
    /// Samples after each step (index 0 = initial), or the error that stopped the run.
    pub samples: Vec<Vec<f64>>,
    pub pred_original: Vec<Vec<f64>>,
    pub model_inputs: Vec<Vec<f64>>,
    pub error: Option<vdm_core::Error>,
    pub noise_drawn: usize,
}

/// Runs the oracle's loop with our scheduler: `x_in = scale_model_input(x, t)`,
/// `mo = fake_model(x_in, t)`, `x = step(mo, t, x)`, noise replayed from the bank.
pub fn run_trajectory(
    scheduler: &mut dyn Scheduler,
    steps: usize,
    family: Family,
    common: &Vectors,
    n_noise_draws: usize,
) -> Run {
    let (init, r, bank) = match family {
        Family::Big => ("init_big", "R_big", "noise_bank_big"),
        Family::Small => ("init_small", "R_small", "noise_bank_small"),
        Family::Odd => ("init", "R", "noise_bank"),
    };
    if let Err(e) = scheduler.set_timesteps(steps) {
        // Refused before any model call (ε-prediction reaching zero SNR): nothing produced.
        return Run {
            samples: vec![],
            pred_original: vec![],
            model_inputs: vec![],
            error: Some(e),
            noise_drawn: 0,
        };
    }
    let r = common.tensor5(r);
    let mut noise = common.noise_bank(bank, n_noise_draws);
    let mut x = common
        .tensor5(init)
        .mul_scalar(scheduler.init_noise_sigma() as f32);
    let mut run = Run {
        samples: vec![to_vec(&x)],
        pred_original: vec![],
        model_inputs: vec![],
        error: None,
        noise_drawn: 0,
    };
    for t in scheduler.timesteps().to_vec() {
        let x_in = match scheduler.scale_model_input(x.clone(), t) {
            Ok(v) => v,
            Err(e) => {
                run.error = Some(e);
                break;
            }
        };
        run.model_inputs.push(to_vec(&x_in));
        let mo = fake_model(x_in, t, &r);
        match scheduler.step(mo, t, x, &mut noise) {
            Ok(out) => {
                x = out.prev_sample;
                if let Some(p) = out.pred_original_sample {
                    run.pred_original.push(to_vec(&p));
                }
                run.samples.push(to_vec(&x));
            }
            Err(e) => {
                run.error = Some(e);
                break;
            }
        }
    }
    run.noise_drawn = noise.drawn();
    run
}

/// Builds the JSON config diffusers was given: `init_kwargs` (or `full_config`) plus the
/// class name.
pub fn config_json(case: &Value, class: &str, key: &str) -> String {
    let mut cfg = case[key].clone();
    cfg.as_object_mut()
        .unwrap()
        .insert("_class_name".into(), Value::String(class.into()));
    cfg.to_string()
}

/// Checks one run against a case: timesteps, every sample, and the number of noise draws.
/// Returns the worst relative sample error.
#[allow(clippy::too_many_arguments)]
pub fn check_case(
    label: &str,
    case: &Value,
    run: &Run,
    scheduler: &dyn Scheduler,
    vectors: &Vectors,
    prefix: &str,
    steps: usize,
) -> f64 {
    let ts = vectors.values(&format!("{prefix}.timesteps"));
    if run.samples.is_empty() {
        // Refused by `set_timesteps` (no timesteps kept): `check_samples` requires a case that
        // diffusers ends in NaN.
        assert!(run.error.is_some(), "{label}: no samples and no error");
        return check_samples(label, case, run, vectors, prefix, steps);
    }
    assert_eq!(
        scheduler.timesteps(),
        ts.iter()
            .map(|&t| t as f32 as f64)
            .collect::<Vec<_>>()
            .as_slice(),
        "{label}: timesteps"
    );
    if let Some(table) = case["schedule_table"].as_str() {
        let key = format!("{table}.alphas_cumprod");
        if vectors.tensors.contains_key(&key) {
            let theirs = vectors.values(&key);
            let ours: Vec<f64> = scheduler
                .noise_schedule()
                .alphas_cumprod
                .iter()
                .map(|&a| a as f64)
                .collect();
            let e = rel_err(&ours, &theirs);
            if std::env::var("VDM_DEBUG").is_ok() {
                let differ = ours.iter().zip(&theirs).filter(|(a, b)| a != b).count();
                eprintln!("{label}: {differ} alphas_cumprod entries differ from diffusers");
            }
            assert!(e < 1e-6, "{label}: alphas_cumprod rel err {e:e}");
        }
    }
    check_samples(label, case, run, vectors, prefix, steps)
}

/// Checks every sample of a run against a case (or, for a case diffusers ends in NaN, that we
/// stopped with `Error::NonFinite` before any), and the number of noise draws. Returns the
/// worst relative sample error.
pub fn check_samples(
    label: &str,
    case: &Value,
    run: &Run,
    vectors: &Vectors,
    prefix: &str,
    steps: usize,
) -> f64 {
    let (shape, samples) = vectors.get(&format!("{prefix}.samples"));
    let n: usize = shape[1..].iter().product();
    let finite = case["finite"].as_bool().unwrap_or(true);
    if !finite {
        // diffusers produces NaN/inf; we must stop with a NonFinite error before any appears.
        let err = run
            .error
            .as_ref()
            .unwrap_or_else(|| panic!("{label}: expected an error"));
        assert!(
            matches!(err, vdm_core::Error::NonFinite { .. }),
            "{label}: expected NonFinite, got {err}"
        );
        for s in &run.samples {
            assert!(
                s.iter().all(|x| x.is_finite()),
                "{label}: NaN before the error"
            );
        }
        let first_bad = case["first_nonfinite_sample_index"].as_u64().unwrap() as usize;
        assert!(
            run.samples.len() <= first_bad,
            "{label}: error came too late"
        );
        return 0.0;
    }
    if let Some(e) = &run.error {
        panic!("{label}: unexpected error {e}");
    }
    assert_eq!(run.samples.len(), steps + 1, "{label}: number of samples");
    let scale = max_abs(samples).max(1e-30);
    let mut worst = 0.0f64;
    for (i, ours) in run.samples.iter().enumerate() {
        let theirs = &samples[i * n..(i + 1) * n];
        let e = max_abs_diff(ours, theirs) / scale;
        if std::env::var("VDM_DEBUG").is_ok() {
            eprintln!(
                "{label} sample {i}: traj-rel {e:e}, per-sample rel {:e}",
                rel_err(ours, theirs)
            );
        }
        assert!(
            e <= REL_TOL,
            "{label}: sample {i} rel err {e:e} > {REL_TOL:e}"
        );
        worst = worst.max(e);
    }
    let draws = case["n_noise_draws"].as_u64().unwrap_or(0) as usize;
    assert_eq!(run.noise_drawn, draws, "{label}: number of noise draws");
    worst
}

/// Runs the [`computed_cases`] of a `sched_product_<name>` file, building each scheduler with
/// `build`. Returns the number of cases in the file and the worst relative error.
pub fn run_product(
    name: &str,
    class: &str,
    build: impl Fn(&Value) -> Box<dyn Scheduler>,
) -> (usize, f64) {
    let json = load_json(&format!("sched_product_{name}.json"));
    let vectors = Vectors::load(&format!("sched_product_{name}.safetensors"));
    let common = Vectors::load("sched_common.safetensors");
    let mut worst = 0.0f64;
    let cases = json["cases"].as_array().unwrap();
    let computed = computed_cases(cases);
    for &case in &computed {
        let prefix = case["prefix"].as_str().unwrap();
        let steps = case["num_inference_steps"].as_u64().unwrap() as usize;
        let mut s = build(case);
        let draws = case["n_noise_draws"].as_u64().unwrap_or(0) as usize;
        let run = run_trajectory(s.as_mut(), steps, Family::Small, &common, draws);
        let label = format!("{class} {prefix}");
        worst = worst.max(check_case(
            &label,
            case,
            &run,
            s.as_ref(),
            &vectors,
            prefix,
            steps,
        ));
    }
    eprintln!(
        "{class}: {} of {} product cases, worst rel err {worst:e}",
        computed.len(),
        cases.len()
    );
    (cases.len(), worst)
}

/// The `sched_traj` cases of one class.
pub fn traj_cases(class: &str) -> Vec<Value> {
    let json = load_json("sched_traj.json");
    json["cases"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["class"] == class)
        .cloned()
        .collect()
}

/// Runs every `sched_traj` case of `class` with the scheduler `build` makes from the case: every
/// sample (through [`check_case`]) and, where the oracle stores it, every `pred_original`
/// (LCM: `denoised`). Returns the worst relative error.
pub fn run_traj_cases(
    class: &str,
    expected_cases: usize,
    build: impl Fn(&Value) -> Box<dyn Scheduler>,
) -> f64 {
    let vectors = Vectors::load("sched_traj.safetensors");
    let common = Vectors::load("sched_common.safetensors");
    let cases = traj_cases(class);
    assert_eq!(cases.len(), expected_cases, "{class}: sched_traj cases");
    let mut worst_all = 0.0f64;
    for case in &cases {
        let prefix = case["prefix"].as_str().unwrap();
        let steps = case["num_inference_steps"].as_u64().unwrap() as usize;
        let mut s = build(case);
        let draws = case["n_noise_draws"].as_u64().unwrap() as usize;
        let run = run_trajectory(s.as_mut(), steps, Family::Big, &common, draws);
        let mut worst = check_case(prefix, case, &run, s.as_ref(), &vectors, prefix, steps);
        let key = format!("{prefix}.pred_original");
        if vectors.tensors.contains_key(&key) {
            let (shape, po) = vectors.get(&key);
            let n: usize = shape[1..].iter().product();
            assert_eq!(
                run.pred_original.len(),
                shape[0],
                "{prefix}: pred_original count"
            );
            for (i, ours) in run.pred_original.iter().enumerate() {
                let e = rel_err(ours, &po[i * n..(i + 1) * n]);
                assert!(e <= REL_TOL, "{prefix}: pred_original {i} rel err {e:e}");
                worst = worst.max(e);
            }
        }
        eprintln!("{class} {prefix}: worst rel err {worst:e}");
        worst_all = worst_all.max(worst);
    }
    eprintln!("{class} trajectories: worst rel err {worst_all:e}");
    worst_all
}

/// `fp64_deviation` of a product case: how far diffusers' float32 run is from a float64 one.
fn fp64_deviation(case: &Value) -> f64 {
    case["fp64_deviation"].as_f64().unwrap()
}

/// What [`run_conditioned_product`] measured.
pub struct ConditionedProduct {
    /// Number of cases in the file.
    pub cases: usize,
    /// Worst relative sample error over the well-conditioned cases computed.
    pub worst: f64,
    /// Worst relative sample error over the ill-conditioned ones computed, and their number in
    /// the file.
    pub worst_ill: f64,
    pub ill_conditioned: usize,
    /// Cases diffusers could not run (`diffusers_error`; every one starts at a repeated first
    /// timestep).
    pub diffusers_errors: usize,
    /// Cases diffusers ended in NaN (compared up to its first NaN).
    pub nan_cases: Vec<Value>,
}

/// Runs every case of a deterministic `sched_product_<name>` file whose generator recorded
/// each case's `fp64_deviation` (diffusers' float32 run against a float64 one), building
/// `class` from the case's `init_kwargs`. Every run must finish with finite samples and
/// diffusers' timesteps; a case diffusers could not run must start at a repeated first
/// timestep; every other case is compared sample by sample (up to diffusers' first NaN) with
/// the bound `tolerance(fp64_deviation)`, which also says whether the case is ill-conditioned.
/// Panics listing every case over its bound. Only the [`computed_cases`] run; the counts of
/// [`ConditionedProduct`] (diffusers' failures, NaN runs, ill-conditioned cases) cover the whole
/// file, as its generator recorded them.
pub fn run_conditioned_product(
    name: &str,
    class: &str,
    tolerance: impl Fn(f64) -> (f64, bool),
) -> ConditionedProduct {
    let json = load_json(&format!("sched_product_{name}.json"));
    let vectors = Vectors::load(&format!("sched_product_{name}.safetensors"));
    let common = Vectors::load("sched_common.safetensors");
    let cases = json["cases"].as_array().unwrap();
    let mut out = ConditionedProduct {
        cases: cases.len(),
        worst: 0.0,
        worst_ill: 0.0,
        ill_conditioned: 0,
        diffusers_errors: 0,
        nan_cases: Vec::new(),
    };
    // What diffusers did, over the whole file (the generator recorded it per case).
    for case in cases {
        if case.get("diffusers_error").is_some() {
            out.diffusers_errors += 1;
        } else {
            if !case["finite"].as_bool().unwrap() {
                out.nan_cases.push(case.clone());
            }
            out.ill_conditioned += usize::from(tolerance(fp64_deviation(case)).1);
        }
    }
    let mut failures = Vec::new();
    for case in computed_cases(cases) {
        let prefix = case["prefix"].as_str().unwrap();
        let steps = case["num_inference_steps"].as_u64().unwrap() as usize;
        let config = config_json(case, class, "init_kwargs");
        let mut s = vdm_schedulers::SchedulerConfig::from_json(&config)
            .unwrap()
            .build()
            .unwrap();
        let run = run_trajectory(s.as_mut(), steps, Family::Small, &common, 0);
        assert!(run.error.is_none(), "{prefix}: {:?}", run.error);
        assert_eq!(run.samples.len(), steps + 1, "{prefix}");
        for sample in &run.samples {
            assert!(sample.iter().all(|v| v.is_finite()), "{prefix}: not finite");
        }
        let theirs_t = vectors.values(&format!("{prefix}.timesteps"));
        assert_eq!(s.timesteps(), theirs_t.as_slice(), "{prefix}: timesteps");
        if case.get("diffusers_error").is_some() {
            assert_eq!(
                s.timesteps()[0],
                s.timesteps()[1],
                "{prefix}: another failure"
            );
            continue;
        }
        let (shape, theirs) = vectors.get(&format!("{prefix}.samples"));
        let n: usize = shape[1..].iter().product();
        let compared = if case["finite"].as_bool().unwrap() {
            steps + 1
        } else {
            case["first_nonfinite_sample_index"].as_u64().unwrap() as usize
        };
        let scale = (0..compared)
            .map(|i| max_abs(&theirs[i * n..(i + 1) * n]))
            .fold(0.0, f64::max);
        let (tol, ill) = tolerance(fp64_deviation(case));
        let case_worst = run
            .samples
            .iter()
            .take(compared)
            .enumerate()
            .map(|(i, ours)| max_abs_diff(ours, &theirs[i * n..(i + 1) * n]) / scale)
            .fold(0.0, f64::max);
        if case_worst > tol {
            failures.push(format!("{prefix}: {case_worst:e} > {tol:e}"));
        }
        if ill {
            out.worst_ill = out.worst_ill.max(case_worst);
        } else {
            out.worst = out.worst.max(case_worst);
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    out
}
