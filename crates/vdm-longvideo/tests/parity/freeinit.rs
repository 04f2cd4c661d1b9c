//! FreeInit parity with diffusers 0.42.1 `FreeInitMixin` (`fixtures/oracle/freeinit.*`, see
//! the oracle README's FreeInit paragraph and gotchas 11–14).
//!
//! - every `mask.<method>.shape<i>.freq<j>` (butterworth, gaussian, ideal and the original
//!   repository's box; three shapes incl. the odd `7 × 12 × 10`; two frequency pairs) within
//!   1e-6 absolute;
//! - every `mix.out.<k>` (`_apply_freq_filter` with the mask named in `freeinit.json["mix"]`)
//!   within 1e-5 absolute, in `f32` and `f64` transforms;
//! - `apply_free_init.*`: `_apply_free_init(latents, iteration 1, 25 steps)` with the c00 DDIM
//!   scheduler (`sched_traj.json`), the fresh noise replayed from a `NoiseBank`.
//!
//! A missing fixture is a failure, never a skip. `VDM_DEBUG=1` prints the errors reached.

use std::collections::HashMap;
use std::path::PathBuf;

use burn::tensor::{Tensor, TensorData};
use safetensors::SafeTensors;
use serde_json::Value;
use vdm_core::noise::NoiseBank;
use vdm_longvideo::freeinit::{
    FftPrecision, FilterMethod, FreeInit, FrequencyMask, LowPassFilter, SpectralMixer,
    apply_frequency_filter,
};
use vdm_schedulers::from_config_json;

const MASK_TOL: f64 = 1e-6;
const MIX_TOL: f64 = 1e-5;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../fixtures/oracle")
        .join(name)
}

fn debug() -> bool {
    std::env::var_os("VDM_DEBUG").is_some()
}

fn read(name: &str) -> Vec<u8> {
    let path = fixture(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("fixture {} is missing: {e}", path.display()))
}

fn json(name: &str) -> Value {
    serde_json::from_slice(&read(name)).unwrap_or_else(|e| panic!("fixture {name}: {e}"))
}

/// name → (shape, values as f64; f32 and i64 tensors).
fn tensors(name: &str) -> HashMap<String, (Vec<usize>, Vec<f64>)> {
    let bytes = read(name);
    let st = SafeTensors::deserialize(&bytes)
        .unwrap_or_else(|e| panic!("fixture {name} is not safetensors: {e}"));
    st.tensors()
        .into_iter()
        .map(|(k, view)| {
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
                other => panic!("unexpected dtype {other:?} for {k}"),
            };
            (k, (view.shape().to_vec(), values))
        })
        .collect()
}

struct Fixture {
    meta: Value,
    t: HashMap<String, (Vec<usize>, Vec<f64>)>,
}

impl Fixture {
    fn load() -> Self {
        Self {
            meta: json("freeinit.json"),
            t: tensors("freeinit.safetensors"),
        }
    }

    fn get(&self, name: &str) -> &(Vec<usize>, Vec<f64>) {
        self.t
            .get(name)
            .unwrap_or_else(|| panic!("tensor {name} missing from freeinit.safetensors"))
    }

    fn f32s(&self, name: &str) -> Vec<f32> {
        self.get(name).1.iter().map(|&v| v as f32).collect()
    }

    fn tensor5(&self, name: &str) -> Tensor<5> {
        let shape: [usize; 5] = self.get(name).0.as_slice().try_into().expect("5-D tensor");
        Tensor::from_data(
            TensorData::new(self.f32s(name), shape),
            &crate::test_device(),
        )
    }

    fn mask(&self, name: &str) -> FrequencyMask {
        let dims: [usize; 3] = self.get(name).0.as_slice().try_into().expect("3-D mask");
        FrequencyMask::from_values(dims, self.f32s(name)).unwrap()
    }
}

fn max_abs_diff(a: &[f32], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len(), "length mismatch");
    a.iter()
        .zip(b)
        .fold(0.0f64, |m, (&x, &y)| m.max((x as f64 - y).abs()))
}

fn host(x: Tensor<5>) -> Vec<f32> {
    x.into_data().try_to_vec::<f32>().unwrap()
}

#[test]
fn masks_match_diffusers_and_the_original_box_filter() {
    let fx = Fixture::load();
    let masks = fx.meta["masks"].as_array().expect("freeinit.json masks");
    assert_eq!(masks.len(), 24, "4 methods × 3 shapes × 2 frequency pairs");
    let mut worst: HashMap<String, f64> = HashMap::new();
    for case in masks {
        let name = case["name"].as_str().unwrap();
        let method = FilterMethod::from_name(
            case["method"].as_str().unwrap(),
            case["order"].as_u64().unwrap_or(4) as u32,
        )
        .unwrap();
        let filter = LowPassFilter::new(
            method,
            case["spatial_stop_frequency"].as_f64().unwrap(),
            case["temporal_stop_frequency"].as_f64().unwrap(),
        )
        .unwrap();
        let dims: Vec<usize> = case["stored_shape"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as usize)
            .collect();
        let (shape, want) = fx.get(name);
        assert_eq!(shape, &dims, "{name}");
        let got = filter.mask(dims[0], dims[1], dims[2]).unwrap();
        let err = max_abs_diff(got.values(), want);
        if debug() {
            eprintln!("{name}: max |Δ| = {err:.3e}");
        }
        assert!(err <= MASK_TOL, "{name}: max |Δ| = {err:e}");
        let w = worst.entry(method.name().to_string()).or_default();
        *w = w.max(err);
    }
    eprintln!("FreeInit masks, worst max |Δ| per method: {worst:?}");
}

#[test]
fn frequency_mixing_matches_diffusers() {
    let fx = Fixture::load();
    let cases = fx.meta["mix"].as_array().expect("freeinit.json mix");
    assert_eq!(cases.len(), 9);
    let (mut worst32, mut worst64) = (0.0f64, 0.0f64);
    for case in cases {
        let name = case["name"].as_str().unwrap();
        let mask_name = case["low_pass_filter"]
            .as_str()
            .unwrap()
            .split_whitespace()
            .next()
            .unwrap();
        let mask = fx.mask(mask_name);
        let (x, noise) = (case["x"].as_str().unwrap(), case["noise"].as_str().unwrap());
        let want = &fx.get(name).1;

        // Tensor API (f32 transforms, as diffusers' complex64).
        let got = host(apply_frequency_filter(fx.tensor5(x), fx.tensor5(noise), &mask).unwrap());
        let err32 = max_abs_diff(&got, want);
        // Host API in f64.
        let mut out = vec![0.0f32; want.len()];
        SpectralMixer::with_precision(&mask, FftPrecision::F64)
            .mix_into(&fx.f32s(x), &fx.f32s(noise), &mut out)
            .unwrap();
        let err64 = max_abs_diff(&out, want);
        if debug() {
            eprintln!("{name} ({mask_name}): f32 {err32:.3e}, f64 {err64:.3e}");
        }
        assert!(err32 <= MIX_TOL, "{name} f32: max |Δ| = {err32:e}");
        assert!(err64 <= MIX_TOL, "{name} f64: max |Δ| = {err64:e}");
        worst32 = worst32.max(err32);
        worst64 = worst64.max(err64);
    }
    eprintln!("FreeInit mix: worst max |Δ| f32 {worst32:.3e}, f64 {worst64:.3e}");
}

#[test]
fn apply_free_init_matches_diffusers_with_ddim_c00() {
    let fx = Fixture::load();
    let meta = &fx.meta["apply_free_init"];
    let traj = json("sched_traj.json");
    let c00 = traj["cases"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["prefix"] == "c00")
        .expect("sched_traj.json case c00");
    let mut config = c00["full_config"].clone();
    assert_eq!(&config, &meta["scheduler"], "the fixture used c00's config");
    config
        .as_object_mut()
        .unwrap()
        .insert("_class_name".into(), c00["class"].clone());
    let mut scheduler = from_config_json(&config.to_string()).unwrap();

    let denoised = fx.tensor5("apply_free_init.denoised_latents");
    let initial = fx.tensor5("apply_free_init.initial_noise");
    let z_rand = fx.get("apply_free_init.z_rand");
    let bank = || {
        NoiseBank::from_tensors([TensorData::new(
            z_rand.1.iter().map(|&v| v as f32).collect::<Vec<f32>>(),
            z_rand.0.clone(),
        )])
    };

    // The noised latent z_t = add_noise(z_0, ε, 999).
    let z_t = scheduler
        .add_noise(denoised.clone(), initial.clone(), 999.0)
        .unwrap();
    let err_zt = max_abs_diff(&host(z_t), &fx.get("apply_free_init.z_t").1);
    assert!(err_zt <= 1e-6, "z_t: {err_zt:e}");

    // diffusers: iteration 1 of 3, 25 steps, no fast sampling.
    let free_init = FreeInit::new(LowPassFilter::butterworth(4, 0.25, 0.25).unwrap(), 3).unwrap();
    let mut noise = bank();
    let out = free_init
        .prepare_iteration(
            1,
            25,
            &mut *scheduler,
            &initial,
            Some(denoised.clone()),
            &mut noise,
        )
        .unwrap();
    assert_eq!(noise.drawn(), 1, "one fresh-noise draw");
    assert_eq!(noise.remaining(), 0);
    let want = &fx.get("apply_free_init.out").1;
    let err = max_abs_diff(&host(out), want);
    assert!(err <= MIX_TOL, "out: max |Δ| = {err:e}");
    let ts: Vec<f64> = fx.get("apply_free_init.timesteps").1.clone();
    assert_eq!(scheduler.timesteps(), ts.as_slice());

    // The low-level call, in f64 transforms.
    let out64 = free_init
        .with_precision(FftPrecision::F64)
        .reinitialize(&*scheduler, denoised, initial, &mut bank())
        .unwrap();
    let err64 = max_abs_diff(&host(out64), want);
    assert!(err64 <= MIX_TOL, "out (f64): max |Δ| = {err64:e}");
    eprintln!("FreeInit apply_free_init: z_t {err_zt:.3e}, out f32 {err:.3e}, f64 {err64:.3e}");
}
