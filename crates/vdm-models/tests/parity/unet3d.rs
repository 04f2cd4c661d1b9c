//! `UNet3DConditionModel` against diffusers 0.42.1 (`fixtures/oracle/unet3d_*`): full outputs
//! (int, batched per-item and float timesteps), every hooked activation of the `small` case,
//! half-precision checkpoints, typed loader errors, and the vdm extensions (chunked inference,
//! per-frame timesteps and conditioning, the temporal hook).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use burn::tensor::{Device, Tensor, TensorData};
use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors};
use vdm_core::temporal::{TemporalHook, TemporalSite, TemporalStages};
use vdm_core::{
    AllFrames, Conditioning, Denoiser, DenoiserInput, Error, PredictionType, Timesteps,
};
use vdm_models::chunking::Chunking;
use vdm_models::loading::LoadOptions;
use vdm_models::unet3d::UNet3DConditionModel;

const IO: &str = "unet3d_io.safetensors";
const WEIGHTS: &str = "unet3d_weights.safetensors";
const CONFIG: &str = "unet3d_config.json";

/// Tolerance of the full-UNet comparisons with diffusers (oracle gotcha 29).
const TOL: f32 = 1e-4;

fn dev() -> Device {
    crate::test_device()
}

fn fixture(name: &str) -> PathBuf {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../fixtures/oracle")
        .join(name);
    assert!(path.is_file(), "missing fixture {}", path.display());
    path
}

fn read(name: &str) -> Vec<u8> {
    std::fs::read(fixture(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
}

/// All f32 tensors of an oracle file, plus i64 ones converted to f64.
struct Fixture {
    floats: HashMap<String, (Vec<f32>, Vec<usize>)>,
    ints: HashMap<String, Vec<i64>>,
}

impl Fixture {
    fn open(name: &str) -> Self {
        let bytes = read(name);
        let st = SafeTensors::deserialize(&bytes).unwrap();
        let mut floats = HashMap::new();
        let mut ints = HashMap::new();
        for (key, view) in st.tensors() {
            match view.dtype() {
                Dtype::F32 => {
                    let v = view
                        .data()
                        .chunks_exact(4)
                        .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
                        .collect();
                    floats.insert(key, (v, view.shape().to_vec()));
                }
                Dtype::I64 => {
                    let v = view
                        .data()
                        .chunks_exact(8)
                        .map(|b| i64::from_le_bytes(b.try_into().unwrap()))
                        .collect();
                    ints.insert(key, v);
                }
                other => panic!("{name}: {key} has dtype {other:?}"),
            }
        }
        Self { floats, ints }
    }

    fn tensor<const D: usize>(&self, key: &str) -> Tensor<D> {
        let (v, shape) = self
            .floats
            .get(key)
            .unwrap_or_else(|| panic!("fixture tensor {key} missing"));
        let shape: [usize; D] = shape.as_slice().try_into().expect("rank");
        Tensor::from_data(TensorData::new(v.clone(), shape), &dev())
    }

    fn timesteps(&self, key: &str) -> Vec<f64> {
        self.ints
            .get(key)
            .unwrap_or_else(|| panic!("fixture tensor {key} missing"))
            .iter()
            .map(|&t| t as f64)
            .collect()
    }
}

fn model() -> UNet3DConditionModel {
    UNet3DConditionModel::from_pretrained(
        (fixture(CONFIG), fixture(WEIGHTS)),
        &LoadOptions::new(),
        &dev(),
    )
    .unwrap()
}

fn max_abs<const D: usize>(a: Tensor<D>, b: Tensor<D>) -> f32 {
    assert_eq!(a.dims(), b.dims());
    (a - b).abs().max().into_scalar()
}

fn assert_close<const D: usize>(name: &str, got: Tensor<D>, want: Tensor<D>, tol: f32) -> f32 {
    let diff = max_abs(got, want);
    println!("{name}: max |diff| = {diff:.3e}");
    assert!(diff <= tol, "{name}: max |diff| = {diff:e} > {tol:e}");
    diff
}

fn run(
    unet: &UNet3DConditionModel,
    sample: Tensor<5>,
    timesteps: Timesteps,
    conditioning: Conditioning,
) -> Tensor<5> {
    unet.forward(sample, &timesteps, &conditioning, &AllFrames)
        .unwrap()
}

fn case0(io: &Fixture) -> (Tensor<5>, Timesteps, Conditioning) {
    let t = io.timesteps("case0.timestep");
    assert_eq!(t, [500.0]);
    (
        io.tensor("case0.sample"),
        Timesteps::Shared(t[0]),
        Conditioning::Shared(io.tensor("case0.encoder_hidden_states")),
    )
}

fn case1(io: &Fixture) -> (Tensor<5>, Vec<f64>, Tensor<3>) {
    let t = io.timesteps("case1.timestep");
    assert_eq!(t, [10.0, 999.0]);
    (
        io.tensor("case1.sample"),
        t,
        io.tensor("case1.encoder_hidden_states"),
    )
}

#[test]
fn unet3d_case0_int_timestep_matches_diffusers() {
    let io = Fixture::open(IO);
    let (x, t, c) = case0(&io);
    let out = run(&model(), x, t, c);
    assert_close("unet3d case0", out, io.tensor("case0.out"), TOL);
}

#[test]
fn unet3d_case1_batch_with_per_item_timesteps_matches_diffusers() {
    let io = Fixture::open(IO);
    let (x, t, c) = case1(&io);
    let out = run(&model(), x, Timesteps::PerItem(t), Conditioning::Shared(c));
    assert_close("unet3d case1", out, io.tensor("case1.out"), TOL);
}

#[test]
fn unet3d_case2_float_timestep_matches_diffusers() {
    let io = Fixture::open(IO);
    let (x, _, c) = case0(&io);
    let out = run(&model(), x, Timesteps::Shared(500.5), c);
    assert_close("unet3d case2", out, io.tensor("case2.out"), TOL);
}

#[test]
fn unet3d_small_case_matches_every_diffusers_activation() {
    let io = Fixture::open(IO);
    let unet = model();
    let mut acts: BTreeMap<String, Tensor<4>> = BTreeMap::new();
    let mut record = |name: &str, t: Tensor<4>| {
        assert!(
            acts.insert(name.to_string(), t).is_none(),
            "activation {name} reported twice"
        );
    };
    let out = unet
        .forward_with_taps(
            io.tensor("small.sample"),
            &Timesteps::Shared(500.0),
            &Conditioning::Shared(io.tensor("small.encoder_hidden_states")),
            &AllFrames,
            &mut record,
        )
        .unwrap();
    let mut keys: Vec<&String> = io
        .floats
        .keys()
        .filter(|k| k.starts_with("small.act."))
        .collect();
    keys.sort();
    assert_eq!(keys.len(), 15, "{keys:?}");
    for key in keys {
        let name = key.trim_start_matches("small.act.");
        let got = acts
            .get(name)
            .unwrap_or_else(|| panic!("no activation reported for {name}"))
            .clone();
        let (_, shape) = &io.floats[key];
        let want: Tensor<4> = if shape.len() == 2 {
            io.tensor::<2>(key).reshape([shape[0], shape[1], 1, 1])
        } else {
            io.tensor::<4>(key)
        };
        assert_close(name, got, want, TOL);
    }
    assert_close("small.out", out, io.tensor("small.out"), TOL);
}

/// Rewrites the oracle state dict with `edit` applied to every `(key, shape, f32 values)`,
/// storing floats as `dtype` (`F32`, `F16` or `BF16`).
fn rewrite(
    dtype: Dtype,
    mut edit: impl FnMut(&mut String, &mut Vec<usize>, &mut Vec<f32>),
) -> Vec<u8> {
    let bytes = read(WEIGHTS);
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let mut entries: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
    for (key, view) in st.tensors() {
        assert_eq!(view.dtype(), Dtype::F32, "{key}");
        let mut key = key;
        let mut shape = view.shape().to_vec();
        let mut values: Vec<f32> = view
            .data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
            .collect();
        edit(&mut key, &mut shape, &mut values);
        let data: Vec<u8> = match dtype {
            Dtype::F32 => values.iter().flat_map(|v| v.to_le_bytes()).collect(),
            Dtype::F16 => values
                .iter()
                .flat_map(|v| half::f16::from_f32(*v).to_le_bytes())
                .collect(),
            Dtype::BF16 => values
                .iter()
                .flat_map(|v| half::bf16::from_f32(*v).to_le_bytes())
                .collect(),
            other => panic!("{other:?}"),
        };
        entries.push((key, shape, data));
    }
    let views: Vec<(String, TensorView<'_>)> = entries
        .iter()
        .map(|(k, s, d)| (k.clone(), TensorView::new(dtype, s.clone(), d).unwrap()))
        .collect();
    safetensors::serialize(views, None).unwrap()
}

/// A file in the temp directory, removed on drop.
struct TempFile(PathBuf);

impl TempFile {
    fn new(name: &str, bytes: &[u8]) -> Self {
        let path = std::env::temp_dir().join(format!(
            "vdm-unet3d-{}-{name}.safetensors",
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

fn load(file: &TempFile) -> vdm_core::Result<UNet3DConditionModel> {
    UNet3DConditionModel::from_pretrained((fixture(CONFIG), &file.0), &LoadOptions::new(), &dev())
}

/// fp16 / bf16 copies of the checkpoint load (cast to f32 compute) exactly: the output equals
/// that of an f32 checkpoint holding the same rounded values, bit for bit. Against diffusers'
/// f32 output the difference is the effect of rounding the weights (|w| ≈ 0.05, relative
/// step 2⁻¹¹ for f16, 2⁻⁸ for bf16) through the network: measured 6.9e-3 (f16) and 6.3e-2
/// (bf16) max abs on outputs of std 0.5; asserted below 1e-2 and 1e-1.
#[test]
fn unet3d_half_precision_checkpoints_load_and_match() {
    let io = Fixture::open(IO);
    let want = io.tensor::<5>("case0.out");
    for (dtype, tol) in [(Dtype::F16, 1e-2f32), (Dtype::BF16, 1e-1)] {
        let round = |v: f32| match dtype {
            Dtype::F16 => half::f16::from_f32(v).to_f32(),
            _ => half::bf16::from_f32(v).to_f32(),
        };
        let half_file = TempFile::new(&format!("{dtype:?}"), &rewrite(dtype, |_, _, _| {}));
        let rounded_file = TempFile::new(
            &format!("{dtype:?}-rounded-f32"),
            &rewrite(Dtype::F32, |_, _, v| {
                v.iter_mut().for_each(|x| *x = round(*x))
            }),
        );
        let (x, t, c) = case0(&io);
        let out = run(&load(&half_file).unwrap(), x.clone(), t.clone(), c.clone());
        let reference = run(&load(&rounded_file).unwrap(), x, t, c);
        assert_close(
            &format!("{dtype:?} file vs f32 file of the rounded weights"),
            out.clone(),
            reference,
            0.0,
        );
        assert_close(
            &format!("unet3d case0 from {dtype:?} weights"),
            out,
            want.clone(),
            tol,
        );
    }
}

#[test]
fn unet3d_loader_errors_name_the_key() {
    // Truncated file: a file error naming the path.
    let bytes = read(WEIGHTS);
    let file = TempFile::new("truncated", &bytes[..bytes.len() / 2]);
    match load(&file) {
        Err(Error::File { path, reason }) => {
            assert!(path.contains("truncated"), "{path}: {reason}")
        }
        other => panic!("expected Error::File, got {:?}", other.err()),
    }

    // A renamed key: the model's key is missing and the new one unexpected.
    let file = TempFile::new(
        "renamed",
        &rewrite(Dtype::F32, |k, _, _| {
            if k == "down_blocks.0.resnets.0.conv1.weight" {
                *k = "down_blocks.0.resnets.0.conv_1.weight".into();
            }
        }),
    );
    match load(&file) {
        Err(Error::Weights {
            missing,
            unexpected,
            mismatched,
        }) => {
            assert_eq!(missing, ["down_blocks.0.resnets.0.conv1.weight"]);
            assert_eq!(unexpected, ["down_blocks.0.resnets.0.conv_1.weight"]);
            assert!(mismatched.is_empty());
        }
        other => panic!("expected Error::Weights, got {:?}", other.err()),
    }

    // Wrong shapes (a conv and a Linear): reported with the file key, in the file's layout.
    let file = TempFile::new(
        "misshaped",
        &rewrite(Dtype::F32, |k, s, v| {
            if k == "conv_in.weight" || k == "transformer_in.proj_in.weight" {
                let last = s.len() - 1;
                s[last] -= 1;
                v.truncate(s.iter().product());
            }
        }),
    );
    let err = load(&file).expect_err("mis-shaped weights must fail");
    let text = err.to_string();
    match err {
        Error::Weights {
            missing,
            unexpected,
            mismatched,
        } => {
            assert!(missing.is_empty() && unexpected.is_empty(), "{text}");
            assert_eq!(
                mismatched,
                [
                    (
                        "conv_in.weight".to_string(),
                        vec![32, 4, 3, 3],
                        vec![32, 4, 3, 2]
                    ),
                    (
                        "transformer_in.proj_in.weight".to_string(),
                        vec![64, 32],
                        vec![64, 31]
                    ),
                ]
            );
        }
        _ => panic!("expected Error::Weights, got {text}"),
    }
}

#[test]
fn unet3d_chunked_inference_equals_unchunked() {
    let io = Fixture::open(IO);
    let unet = model();
    let (x, t, _) = case1(&io);
    let c = Conditioning::Shared(io.tensor("case1.encoder_hidden_states"));
    let t = Timesteps::PerItem(t);
    let whole = run(&unet, x.clone(), t.clone(), c.clone());
    // B·F = 8 frames in chunks of 3 (uneven, crossing the video boundary), 16·16 = 256
    // positions per video in chunks of 100.
    let unet = unet.with_chunking(Chunking::new(3, 100));
    let hook = Recorder::default();
    let chunked = unet.forward(x, &t, &c, &hook).unwrap();
    assert_close(
        "chunked vs unchunked",
        chunked,
        whole,
        crate::SAME_MATH_TOL.max(1e-5),
    );
    // The temporal layers really saw chunks: B·H·W = 512 sequences at 16×16 in 100s (6 calls
    // per layer), 128 at 8×8 in 2 calls.
    let calls = hook.calls.lock().unwrap().clone();
    let sizes = |layer: &str| -> Vec<usize> {
        calls
            .iter()
            .filter(|(l, _, _)| l == layer)
            .map(|(_, _, n)| *n)
            .collect()
    };
    assert_eq!(sizes("transformer_in"), [100, 100, 100, 100, 100, 12]);
    assert_eq!(sizes("mid_block.temp_attentions.0"), [100, 28]);
}

#[test]
fn unet3d_per_frame_timesteps_and_conditioning_reduce_to_per_item() {
    let io = Fixture::open(IO);
    let unet = model();
    let (x, t, c) = case1(&io);
    let [b, _, f, _, _] = x.dims();
    let per_item = run(
        &unet,
        x.clone(),
        Timesteps::PerItem(t.clone()),
        Conditioning::Shared(c.clone()),
    );

    // Per-frame timesteps equal within each video.
    let values: Vec<f64> = t.iter().flat_map(|&v| std::iter::repeat_n(v, f)).collect();
    let per_frame = Timesteps::PerFrame {
        frames: f,
        values: values.clone(),
    };
    let out = run(
        &unet,
        x.clone(),
        per_frame.clone(),
        Conditioning::Shared(c.clone()),
    );
    assert_close(
        "per-frame timesteps",
        out,
        per_item.clone(),
        crate::SAME_MATH_TOL.max(1e-6),
    );

    // Per-frame conditioning equal for every frame.
    let [_, s, d] = c.dims();
    let frames_ctx = c.clone().unsqueeze_dim::<4>(1).repeat_dim(1, f);
    assert_eq!(frames_ctx.dims(), [b, f, s, d]);
    let out = run(
        &unet,
        x.clone(),
        Timesteps::PerItem(t.clone()),
        Conditioning::PerFrame(frames_ctx.clone()),
    );
    assert_close(
        "per-frame conditioning",
        out,
        per_item.clone(),
        crate::SAME_MATH_TOL.max(1e-6),
    );

    // And really per frame: changing the last frame's timestep / context changes the output.
    let mut other = values;
    other[f - 1] = 500.0;
    let out = run(
        &unet,
        x.clone(),
        Timesteps::PerFrame {
            frames: f,
            values: other,
        },
        Conditioning::Shared(c.clone()),
    );
    assert!(max_abs(out, per_item.clone()) > 1e-3);
    let changed = frames_ctx.clone().slice_assign(
        [0..1, f - 1..f, 0..s, 0..d],
        Tensor::zeros([1, 1, s, d], &dev()),
    );
    let out = run(&unet, x, per_frame, Conditioning::PerFrame(changed));
    assert!(max_abs(out, per_item) > 1e-4);
}

/// Records the layer of every hook call, then runs the stages over all frames.
#[derive(Default)]
struct Recorder {
    /// `(layer, frames, token sequences in the call)`.
    calls: Mutex<Vec<(String, usize, usize)>>,
}

impl TemporalHook for Recorder {
    fn apply(
        &self,
        site: &TemporalSite<'_>,
        tokens: Tensor<3>,
        stages: &dyn TemporalStages,
    ) -> vdm_core::Result<Tensor<3>> {
        self.calls.lock().unwrap().push((
            site.layer.to_string(),
            site.num_frames,
            tokens.dims()[0],
        ));
        AllFrames.apply(site, tokens, stages)
    }
}

#[test]
fn unet3d_is_a_denoiser_whose_temporal_layers_go_through_the_hook() {
    let io = Fixture::open(IO);
    let unet = model();
    assert_eq!(unet.prediction_type(), PredictionType::Epsilon);
    let x = io.tensor::<5>("small.sample");
    let c = Conditioning::Shared(io.tensor("small.encoder_hidden_states"));
    let hook = Recorder::default();
    let input = DenoiserInput::new(x, Timesteps::Shared(500.0), c).with_temporal(&hook);
    let out = unet.predict(input).unwrap();
    assert_close("predict via hook", out, io.tensor("small.out"), TOL);
    let calls = hook.calls.lock().unwrap().clone();
    let layers: Vec<&str> = calls.iter().map(|(l, _, _)| l.as_str()).collect();
    assert_eq!(
        layers,
        [
            "transformer_in",
            "down_blocks.0.temp_attentions.0",
            "mid_block.temp_attentions.0",
            "up_blocks.1.temp_attentions.0",
            "up_blocks.1.temp_attentions.1",
        ]
    );
    assert!(calls.iter().all(|(_, f, _)| *f == 4));

    let unet = unet.with_prediction_type(PredictionType::VPrediction);
    assert_eq!(unet.prediction_type(), PredictionType::VPrediction);
}

#[test]
fn unet3d_odd_sizes_and_bad_inputs() {
    let io = Fixture::open(IO);
    let unet = model();
    let c = io.tensor::<3>("small.encoder_hidden_states");
    // Odd latent sizes: the upsampler output is forced to the skip size.
    let x = Tensor::<5>::zeros([1, 4, 2, 7, 9], &dev());
    let out = run(
        &unet,
        x,
        Timesteps::Shared(10.0),
        Conditioning::Shared(c.clone()),
    );
    assert_eq!(out.dims(), [1, 4, 2, 7, 9]);

    let x = Tensor::<5>::zeros([1, 4, 2, 8, 8], &dev());
    let e = unet
        .forward(
            Tensor::zeros([1, 3, 2, 8, 8], &dev()),
            &Timesteps::Shared(1.0),
            &Conditioning::Shared(c.clone()),
            &AllFrames,
        )
        .unwrap_err();
    assert!(e.to_string().contains("sample"), "{e}");
    let e = unet
        .forward(
            x.clone(),
            &Timesteps::Shared(1.0),
            &Conditioning::None,
            &AllFrames,
        )
        .unwrap_err();
    assert!(e.to_string().contains("encoder_hidden_states"), "{e}");
    let e = unet
        .forward(
            x.clone(),
            &Timesteps::Shared(1.0),
            &Conditioning::Shared(Tensor::zeros([1, 7, 16], &dev())),
            &AllFrames,
        )
        .unwrap_err();
    assert!(e.to_string().contains("encoder_hidden_states"), "{e}");
    let e = unet
        .forward(
            x,
            &Timesteps::PerItem(vec![1.0, 2.0]),
            &Conditioning::Shared(c),
            &AllFrames,
        )
        .unwrap_err();
    assert!(e.to_string().contains("timesteps"), "{e}");
}

/// Computing in f16 / bf16 (weights cast on load, inputs cast to the weights' dtype, the
/// output cast back to the sample's f32): measured 1.5e-2 (f16) and 1.2e-1 (bf16) max abs
/// from diffusers' f32 output; asserted below 5e-2 and 2.5e-1.
#[test]
fn unet3d_half_precision_compute() {
    use burn::tensor::{DType, FloatDType};
    let io = Fixture::open(IO);
    for (dtype, tol) in [(FloatDType::F16, 5e-2f32), (FloatDType::BF16, 2.5e-1)] {
        let loaded = UNet3DConditionModel::from_pretrained(
            (fixture(CONFIG), fixture(WEIGHTS)),
            &LoadOptions::new().dtype(dtype),
            &dev(),
        );
        if !dev().supports_dtype(dtype) {
            // bf16 on wgpu: refused before loading, never garbage.
            let e = loaded.expect_err("a dtype the device cannot compute in");
            assert!(matches!(e, Error::Unsupported(_)), "{e}");
            continue;
        }
        let unet = loaded.unwrap();
        assert_eq!(unet.dtype(), DType::from(dtype));
        let (x, t, c) = case0(&io);
        let out = run(&unet, x, t, c);
        assert_eq!(out.dtype(), DType::F32);
        assert_close(
            &format!("unet3d case0 computed in {dtype:?}"),
            out,
            io.tensor("case0.out"),
            tol * crate::HALF_TOL_FACTOR,
        );
    }
}

/// A diffusers pipeline directory: `unet/config.json` + `unet/diffusion_pytorch_model.fp16.safetensors`.
#[test]
fn unet3d_from_pretrained_finds_files_in_a_directory() {
    let root = std::env::temp_dir().join(format!("vdm-unet3d-{}-pipeline", std::process::id()));
    let unet_dir = root.join("unet");
    std::fs::create_dir_all(&unet_dir).unwrap();
    std::fs::copy(fixture(CONFIG), unet_dir.join("config.json")).unwrap();
    // No weights yet: a file error naming the directory.
    let e = UNet3DConditionModel::from_pretrained(root.as_path(), &LoadOptions::new(), &dev())
        .expect_err("no weights");
    assert!(
        matches!(&e, Error::File { path, .. } if path.ends_with("unet")),
        "{e}"
    );
    std::fs::write(
        unet_dir.join("diffusion_pytorch_model.fp16.safetensors"),
        rewrite(Dtype::F16, |_, _, _| {}),
    )
    .unwrap();
    let result = UNet3DConditionModel::from_pretrained(root.as_path(), &LoadOptions::new(), &dev());
    let from_unet_dir =
        UNet3DConditionModel::from_pretrained(unet_dir.as_path(), &LoadOptions::new(), &dev());
    std::fs::remove_dir_all(&root).unwrap();
    let (a, b) = (result.unwrap(), from_unet_dir.unwrap());
    let io = Fixture::open(IO);
    let x = io.tensor::<5>("small.sample");
    let c = Conditioning::Shared(io.tensor("small.encoder_hidden_states"));
    let ya = run(&a, x.clone(), Timesteps::Shared(500.0), c.clone());
    let yb = run(&b, x, Timesteps::Shared(500.0), c);
    assert_close("pipeline dir vs unet dir", ya.clone(), yb, 0.0);
    assert_close("fp16 pipeline dir", ya, io.tensor("small.out"), 1e-2);
}

/// Motion injection: `DenoiserInput::with_block_conditioning` reaches the cross-attention of
/// the blocks it names, and only those.
#[test]
fn unet3d_routes_conditioning_per_block() {
    let io = Fixture::open(IO);
    let unet = model();
    let (sample, t, cond) = case0(&io);
    let other = match &cond {
        Conditioning::Shared(c) => Conditioning::Shared(c.clone().mul_scalar(-1.5)),
        _ => unreachable!(),
    };
    let predict = |input: DenoiserInput<'_>| unet.predict(input).unwrap();
    let plain_other = predict(DenoiserInput::new(sample.clone(), t.clone(), other.clone()));
    let all = predict(
        DenoiserInput::new(sample.clone(), t.clone(), cond.clone())
            .with_block_conditioning(other.clone(), &vdm_core::BlockKind::ALL),
    );
    assert!(max_abs(all, plain_other.clone()) <= crate::SAME_MATH_TOL);
    let plain = predict(DenoiserInput::new(sample.clone(), t.clone(), cond.clone()));
    let decoder_only = predict(
        DenoiserInput::new(sample, t, cond)
            .with_block_conditioning(other, &[vdm_core::BlockKind::Decoder]),
    );
    assert!(max_abs(decoder_only.clone(), plain) > 1e-4);
    assert!(max_abs(decoder_only, plain_other) > 1e-4);
}
