//! Parity of [`UNetMotionModel`] (AnimateDiff: UNet2DConditionModel + MotionAdapter) with
//! diffusers 0.42.1 on the `motion_*` oracle files (tiny model: blocks (32, 64), 8 spatial
//! heads, 4 motion heads, 32-row positional table; weights re-initialised with seeds
//! 8000/8001).
//!
//! Every test fails (never skips) when a fixture is missing.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Mutex;

use burn::tensor::{Device, Tensor, TensorData};
use safetensors::{Dtype, SafeTensors};
use vdm_core::temporal::{FrameWindow, TemporalHook, TemporalSite, TemporalStages, run_chain};
use vdm_core::{AllFrames, Conditioning, Denoiser, DenoiserInput, Error, Timesteps};
use vdm_models::chunking::Chunking;
use vdm_models::loading::LoadOptions;
use vdm_models::unet_motion::{
    MotionAdapterConfig, UNet2DConditionConfig, UNetMotionConfig, UNetMotionModel,
};

const WEIGHTS: &str = "motion_weights.safetensors";
const IO: &str = "motion_io.safetensors";

fn dev() -> Device {
    crate::test_device()
}

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../fixtures/oracle")
        .join(name)
}

fn read(name: &str) -> Vec<u8> {
    let path = fixture(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("fixture {} missing: {e}", path.display()))
}

/// One f32 tensor of a safetensors buffer.
fn tensor<const D: usize>(bytes: &[u8], key: &str) -> Tensor<D> {
    let st = SafeTensors::deserialize(bytes).unwrap();
    let view = st
        .tensor(key)
        .unwrap_or_else(|e| panic!("tensor {key}: {e}"));
    assert_eq!(view.dtype(), Dtype::F32, "{key}");
    let values: Vec<f32> = view
        .data()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    let shape: [usize; D] = view.shape().try_into().expect("rank");
    Tensor::from_data(TensorData::new(values, shape), &dev())
}

/// The `[1]` int64 timestep of a case.
fn timestep(bytes: &[u8], key: &str) -> f64 {
    let st = SafeTensors::deserialize(bytes).unwrap();
    let view = st.tensor(key).unwrap();
    assert_eq!(view.dtype(), Dtype::I64);
    i64::from_le_bytes(view.data()[..8].try_into().unwrap()) as f64
}

/// The three configurations of `motion_config.json`.
fn configs() -> (UNet2DConditionConfig, MotionAdapterConfig, UNetMotionConfig) {
    let json: serde_json::Value =
        serde_json::from_slice(&read("motion_config.json")).expect("motion_config.json");
    (
        UNet2DConditionConfig::from_json_str(&json["unet2d"].to_string()).unwrap(),
        MotionAdapterConfig::from_json_str(&json["motion_adapter"].to_string()).unwrap(),
        UNetMotionConfig::from_json_str(&json["unet_motion"].to_string()).unwrap(),
    )
}

fn merged_model() -> UNetMotionModel {
    let (_, _, config) = configs();
    let (model, report) =
        UNetMotionModel::load(&config, fixture(WEIGHTS), &dev(), &LoadOptions::new()).unwrap();
    assert!(report.is_complete(), "{report}");
    assert_eq!(report.applied.len(), 397, "{report}");
    model
}

fn max_abs<const D: usize>(a: Tensor<D>, b: Tensor<D>) -> f32 {
    assert_eq!(a.dims(), b.dims());
    (a - b).abs().max().into_scalar()
}

/// case0: sample [1,4,8,16,16], t = 500, text [1,7,32].
fn case0(model: &UNetMotionModel) -> Tensor<5> {
    let io = read(IO);
    let input = DenoiserInput::new(
        tensor(&io, "case0.sample"),
        Timesteps::Shared(timestep(&io, "case0.timestep")),
        Conditioning::Shared(tensor(&io, "case0.encoder_hidden_states")),
    );
    model.predict(input).unwrap()
}

#[test]
fn configs_merge_like_from_unet2d() {
    let (unet2d, adapter, merged) = configs();
    assert_eq!(
        UNetMotionConfig::from_unet2d(&unet2d, &adapter).unwrap(),
        merged
    );
    // The adapter's keys are exactly the merged checkpoint's motion-module keys.
    let json: serde_json::Value = serde_json::from_slice(&read("motion_config.json")).unwrap();
    let listed: BTreeSet<String> = json["motion_adapter_keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k.as_str().unwrap().to_string())
        .collect();
    let bytes = read(WEIGHTS);
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let motion: BTreeSet<String> = st
        .names()
        .into_iter()
        .filter(|k| k.contains(".motion_modules."))
        .map(str::to_string)
        .collect();
    assert_eq!(listed, motion);
}

#[test]
fn case0_matches_diffusers() {
    let model = merged_model();
    let io = read(IO);
    let out = case0(&model);
    let want: Tensor<5> = tensor(&io, "case0.out");
    let diff = max_abs(out.clone(), want.clone());
    println!("motion case0: max |diff| = {diff:e}");
    assert!(diff <= 1e-4, "case0 max |diff| = {diff}");

    // diffusers' own input form: text already repeated per frame, [B·F, S, D] = [8, 7, 32].
    let repeated: Tensor<3> = tensor(&io, "case0.encoder_hidden_states_repeated");
    let per_frame = Conditioning::PerFrame(repeated.reshape([1, 8, 7, 32]));
    let input = DenoiserInput::new(
        tensor(&io, "case0.sample"),
        Timesteps::Shared(500.0),
        per_frame,
    );
    let diff = max_abs(model.predict(input).unwrap(), want);
    assert!(diff <= 1e-4, "per-frame conditioning: {diff}");
}

#[test]
fn small_case_matches_diffusers_activation_by_activation() {
    let model = merged_model();
    let io = read(IO);
    let text: Tensor<3> = tensor(&io, "small.encoder_hidden_states_repeated");
    let [f, s, d] = text.dims();
    let input = DenoiserInput::new(
        tensor(&io, "small.sample"),
        Timesteps::Shared(500.0),
        Conditioning::PerFrame(text.reshape([1, f, s, d])),
    );
    let mut acts: BTreeMap<String, Tensor<4>> = BTreeMap::new();
    let out = model
        .forward_traced(input, &mut |name, t| {
            acts.insert(name.to_string(), t.clone());
        })
        .unwrap();

    let st = SafeTensors::deserialize(&io).unwrap();
    let mut names: Vec<&str> = st
        .names()
        .into_iter()
        .filter(|k| k.starts_with("small.act."))
        .collect();
    names.sort();
    assert_eq!(names.len(), 9, "{names:?}");
    for key in names {
        let module = key.trim_start_matches("small.act.");
        let diff = if module == "time_embedding" {
            let want: Tensor<2> = tensor(&io, key);
            let got = model
                .embed_timesteps(&Timesteps::Shared(500.0), 1, f, &dev())
                .unwrap()
                .narrow(0, 0, 1);
            max_abs(got, want)
        } else {
            let got = acts
                .get(module)
                .unwrap_or_else(|| panic!("no activation traced for {module}"))
                .clone();
            max_abs(got, tensor(&io, key))
        };
        println!("motion small {module}: max |diff| = {diff:e}");
        assert!(diff <= 1e-4, "{module}: {diff}");
    }
    let diff = max_abs(out, tensor(&io, "small.out"));
    println!("motion small out: max |diff| = {diff:e}");
    assert!(diff <= 1e-4, "small.out: {diff}");
}

/// Writes `tensors` (name → (dtype, shape, bytes)) as a safetensors buffer.
fn serialize(tensors: &BTreeMap<String, (Dtype, Vec<usize>, Vec<u8>)>) -> Vec<u8> {
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = tensors
        .iter()
        .map(|(k, (dtype, shape, data))| {
            (
                k.clone(),
                safetensors::tensor::TensorView::new(*dtype, shape.clone(), data).unwrap(),
            )
        })
        .collect();
    safetensors::serialize(views, None).unwrap()
}

/// The merged checkpoint's tensors, split into (UNet2D part, motion adapter part).
#[allow(clippy::type_complexity)]
fn split_checkpoint() -> (
    BTreeMap<String, (Dtype, Vec<usize>, Vec<u8>)>,
    BTreeMap<String, (Dtype, Vec<usize>, Vec<u8>)>,
) {
    let bytes = read(WEIGHTS);
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let (mut unet, mut adapter) = (BTreeMap::new(), BTreeMap::new());
    for (name, view) in st.tensors() {
        let entry = (view.dtype(), view.shape().to_vec(), view.data().to_vec());
        if name.contains(".motion_modules.") {
            adapter.insert(name, entry);
        } else {
            unet.insert(name, entry);
        }
    }
    (unet, adapter)
}

/// A temporary file removed on drop.
struct TempFile(PathBuf);

impl TempFile {
    fn new(tag: &str, bytes: &[u8]) -> Self {
        let path = std::env::temp_dir().join(format!(
            "vdm-motion-{}-{tag}.safetensors",
            std::process::id()
        ));
        std::fs::write(&path, bytes).unwrap();
        Self(path)
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

#[test]
fn unet2d_plus_adapter_files_equal_the_merged_file() {
    let (unet2d_config, adapter_config, _) = configs();
    let config = UNetMotionConfig::from_unet2d(&unet2d_config, &adapter_config).unwrap();
    let (unet, mut adapter) = split_checkpoint();
    assert_eq!((unet.len(), adapter.len()), (208, 189));
    let unet_file = TempFile::new("unet2d", &serialize(&unet));
    let adapter_file = TempFile::new("adapter", &serialize(&adapter));

    let (model, report) = UNetMotionModel::load_unet2d_and_adapter(
        &config,
        &unet_file.0,
        &adapter_file.0,
        &dev(),
        &LoadOptions::new(),
    )
    .unwrap();
    assert!(report.is_complete(), "{report:?}");
    assert_eq!(report.unet2d.applied.len(), 208);
    assert_eq!(report.adapter.applied.len(), 189);
    assert!(
        report
            .unet2d
            .missing
            .iter()
            .all(|p| p.contains(".motion_modules."))
    );
    let split = case0(&model);
    let merged = case0(&merged_model());
    split.into_data().assert_eq(&merged.into_data(), true);

    // An adapter file lacking a tensor: the error names it.
    let key = "up_blocks.1.motion_modules.1.proj_out.weight";
    assert!(adapter.remove(key).is_some());
    let incomplete = TempFile::new("adapter-incomplete", &serialize(&adapter));
    let err = UNetMotionModel::load_unet2d_and_adapter(
        &config,
        &unet_file.0,
        &incomplete.0,
        &dev(),
        &LoadOptions::new(),
    )
    .unwrap_err();
    assert!(matches!(err, Error::Weights { .. }), "{err}");
    assert!(
        err.to_string()
            .contains("up_blocks.1.motion_modules.1.proj_out.weight"),
        "{err}"
    );
    // With allow_partial it loads and reports the gap.
    let (_, report) = UNetMotionModel::load_unet2d_and_adapter(
        &config,
        &unet_file.0,
        &incomplete.0,
        &dev(),
        &LoadOptions::new().allow_partial(true),
    )
    .unwrap();
    assert_eq!(
        report.missing,
        ["up_blocks.1.motion_modules.1.proj_out.weight"]
    );
    // The merged file alone is not a UNet2D checkpoint plus adapter: swapped files fail.
    assert!(
        UNetMotionModel::load_unet2d_and_adapter(
            &config,
            &adapter_file.0,
            &unet_file.0,
            &dev(),
            &LoadOptions::new(),
        )
        .is_err()
    );
}

#[test]
fn half_precision_checkpoints_load_within_tolerance() {
    let (_, _, config) = configs();
    let io = read(IO);
    let want: Tensor<5> = tensor(&io, "case0.out");
    let (unet, adapter) = split_checkpoint();
    // (dtype, conversion, tolerance): fp16 keeps 11 significant bits, bf16 8.
    type Convert = fn(f32) -> [u8; 2];
    let cases: [(Dtype, Convert, f32); 2] = [
        (Dtype::F16, |v| half::f16::from_f32(v).to_le_bytes(), 1e-2),
        (Dtype::BF16, |v| half::bf16::from_f32(v).to_le_bytes(), 1e-1),
    ];
    for (dtype, convert, tol) in cases {
        let converted: BTreeMap<String, (Dtype, Vec<usize>, Vec<u8>)> = unet
            .iter()
            .chain(&adapter)
            .map(|(k, (_, shape, data))| {
                let bytes: Vec<u8> = data
                    .chunks_exact(4)
                    .flat_map(|b| convert(f32::from_le_bytes([b[0], b[1], b[2], b[3]])))
                    .collect();
                (k.clone(), (dtype, shape.clone(), bytes))
            })
            .collect();
        let bytes = serialize(&converted);
        let (model, report) =
            UNetMotionModel::load_bytes(&config, &bytes, &dev(), &LoadOptions::new()).unwrap();
        assert!(report.is_complete(), "{report}");
        assert_eq!(report.file_dtypes.values().sum::<usize>(), 397);
        let out = case0(&model);
        let diff = max_abs(out.clone(), want.clone());
        println!("motion case0 from {dtype:?} weights: max |diff| = {diff:e}");
        assert!(diff <= tol, "{dtype:?}: {diff} > {tol}");

        // The cast itself is exact: an f32 file holding the same rounded values gives the
        // same output.
        let widened: BTreeMap<String, (Dtype, Vec<usize>, Vec<u8>)> = converted
            .iter()
            .map(|(k, (_, shape, data))| {
                let bytes: Vec<u8> = data
                    .chunks_exact(2)
                    .flat_map(|b| {
                        let v = if dtype == Dtype::F16 {
                            half::f16::from_le_bytes([b[0], b[1]]).to_f32()
                        } else {
                            half::bf16::from_le_bytes([b[0], b[1]]).to_f32()
                        };
                        v.to_le_bytes()
                    })
                    .collect();
                (k.clone(), (Dtype::F32, shape.clone(), bytes))
            })
            .collect();
        let (reference, _) =
            UNetMotionModel::load_bytes(&config, &serialize(&widened), &dev(), &LoadOptions::new())
                .unwrap();
        out.into_data()
            .assert_eq(&case0(&reference).into_data(), true);
    }
}

#[test]
fn chunked_inference_equals_unchunked() {
    let model = merged_model();
    let whole = case0(&model);
    let model = model.with_chunking(Chunking::new(3, 37));
    let chunked = case0(&model);
    let diff = max_abs(chunked, whole.clone());
    println!("motion chunked vs unchunked: max |diff| = {diff:e}");
    assert!(diff <= crate::SAME_MATH_TOL.max(1e-5), "{diff}");

    // The motion modules really ran on chunks of positions: 16×16 = 256 positions in chunks
    // of 37 make 7 hook calls at full resolution, 8×8 = 64 make 2 at half resolution.
    let hook = Counter::default();
    let io = read(IO);
    let input = DenoiserInput::new(
        tensor(&io, "case0.sample"),
        Timesteps::Shared(500.0),
        Conditioning::Shared(tensor(&io, "case0.encoder_hidden_states")),
    )
    .with_temporal(&hook);
    let out = model.predict(input).unwrap();
    let diff = max_abs(out, whole);
    assert!(diff <= crate::SAME_MATH_TOL.max(1e-5), "{diff}");
    let calls = hook.calls.lock().unwrap().clone();
    assert_eq!(calls["down_blocks.0.motion_modules.0"], 7, "{calls:?}");
    assert_eq!(calls["mid_block.motion_modules.0"], 2, "{calls:?}");
    assert_eq!(calls.len(), 7);
}

/// Runs all frames at once, counting the calls per layer and the positions they held.
#[derive(Default)]
struct Counter {
    calls: Mutex<BTreeMap<String, usize>>,
}

impl TemporalHook for Counter {
    fn apply(
        &self,
        site: &TemporalSite<'_>,
        tokens: Tensor<3>,
        stages: &dyn TemporalStages,
    ) -> vdm_core::Result<Tensor<3>> {
        assert!(tokens.dims()[0] <= 37);
        *self
            .calls
            .lock()
            .unwrap()
            .entry(site.layer.to_string())
            .or_default() += 1;
        AllFrames.apply(site, tokens, stages)
    }
}

/// Splits the frames into consecutive windows of at most `size` frames, each with
/// window-relative positions; records the layers it saw.
struct Windows {
    size: usize,
    layers: Mutex<BTreeSet<String>>,
}

impl TemporalHook for Windows {
    fn apply(
        &self,
        site: &TemporalSite<'_>,
        tokens: Tensor<3>,
        stages: &dyn TemporalStages,
    ) -> vdm_core::Result<Tensor<3>> {
        self.layers.lock().unwrap().insert(site.layer.to_string());
        assert_eq!(site.max_positions, Some(32), "{}", site.layer);
        let f = tokens.dims()[1];
        let mut outs = Vec::new();
        let mut start = 0;
        while start < f {
            let end = (start + self.size).min(f);
            let window = FrameWindow::relative(start, end);
            site.check_positions(&window.positions)?;
            outs.push(run_chain(
                stages,
                tokens.clone().narrow(1, start, end - start),
                &window,
            )?);
            start = end;
        }
        Ok(Tensor::cat(outs, 1))
    }
}

#[test]
fn videos_longer_than_the_position_table_need_windows() {
    let model = merged_model();
    let io = read(IO);
    let text: Tensor<3> = tensor(&io, "case0.encoder_hidden_states");
    let frames = 40;
    let x = Tensor::<5>::random(
        [1, 4, frames, 8, 8],
        burn::tensor::Distribution::Normal(0.0, 1.0),
        &dev(),
    );
    let input = || {
        DenoiserInput::new(
            x.clone(),
            Timesteps::Shared(500.0),
            Conditioning::Shared(text.clone()),
        )
    };
    let err = model.predict(input()).unwrap_err();
    assert!(matches!(err, Error::InvalidConfig { .. }), "{err}");
    let msg = err.to_string();
    assert!(msg.contains("num_frames") && msg.contains("32"), "{msg}");

    let hook = Windows {
        size: 20,
        layers: Mutex::default(),
    };
    let out = model.predict(input().with_temporal(&hook)).unwrap();
    assert_eq!(out.dims(), [1, 4, frames, 8, 8]);
    let values = out.into_data().try_to_vec::<f32>().unwrap();
    assert!(values.iter().all(|v| v.is_finite()));
    let seen: BTreeSet<String> = hook.layers.lock().unwrap().clone();
    let expected: BTreeSet<String> = model.motion_module_paths().into_iter().collect();
    assert_eq!(seen, expected);
    assert_eq!(seen.len(), 7);

    // Two windows of 4 frames on an 8-frame video: runs, and differs from all frames at once.
    let hook = Windows {
        size: 4,
        layers: Mutex::default(),
    };
    let windowed = DenoiserInput::new(
        tensor(&io, "case0.sample"),
        Timesteps::Shared(500.0),
        Conditioning::Shared(text),
    )
    .with_temporal(&hook);
    let diff = max_abs(model.predict(windowed).unwrap(), case0(&model));
    assert!(diff > 1e-3, "{diff}");
}

/// Motion injection: `DenoiserInput::with_block_conditioning` reaches the cross-attention of
/// the blocks it names, and only those.
#[test]
fn conditioning_is_routed_per_block() {
    let model = merged_model();
    let io = read(IO);
    let sample: Tensor<5> = tensor(&io, "case0.sample");
    let t = Timesteps::Shared(timestep(&io, "case0.timestep"));
    let text: Tensor<3> = tensor(&io, "case0.encoder_hidden_states");
    let cond = Conditioning::Shared(text.clone());
    let other = Conditioning::Shared(text.mul_scalar(-1.5));
    let predict = |input: DenoiserInput<'_>| model.predict(input).unwrap();
    let plain_other = predict(DenoiserInput::new(sample.clone(), t.clone(), other.clone()));
    let all = predict(
        DenoiserInput::new(sample.clone(), t.clone(), cond.clone())
            .with_block_conditioning(other.clone(), &vdm_core::BlockKind::ALL),
    );
    assert!(max_abs(all, plain_other.clone()) <= crate::SAME_MATH_TOL);
    let plain = predict(DenoiserInput::new(sample.clone(), t.clone(), cond.clone()));
    let encoder_only = predict(
        DenoiserInput::new(sample, t, cond)
            .with_block_conditioning(other, &[vdm_core::BlockKind::Encoder]),
    );
    assert!(max_abs(encoder_only.clone(), plain) > 1e-5);
    assert!(max_abs(encoder_only, plain_other) > 1e-5);
}
