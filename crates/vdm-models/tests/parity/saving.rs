//! `save_safetensors` is the exact inverse of the loaders: a diffusers / transformers checkpoint
//! loaded into vdm and saved again has the same keys, shapes and bytes (Linear weights transposed
//! back, norms renamed back), and loads again unchanged.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use burn::tensor::Device;
use burn::tensor::FloatDType;
use safetensors::SafeTensors;
use vdm_models::clip::CLIPTextModel;
use vdm_models::loading::{LoadOptions, save_safetensors, save_safetensors_as};
use vdm_models::unet_motion::{UNetMotionConfig, UNetMotionModel};
use vdm_models::unet3d::UNet3DConditionModel;

fn pipeline_dir(name: &str) -> PathBuf {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../fixtures/pipelines")
        .join(name);
    assert!(path.is_dir(), "missing fixture {}", path.display());
    path
}

/// Every tensor of a safetensors file: name → (shape, raw bytes).
fn tensors(path: &Path, skip: &[&str]) -> BTreeMap<String, (Vec<usize>, Vec<u8>)> {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let file = SafeTensors::deserialize(&bytes).unwrap();
    file.tensors()
        .into_iter()
        .filter(|(name, _)| !skip.contains(&name.as_str()))
        .map(|(name, view)| (name, (view.shape().to_vec(), view.data().to_vec())))
        .collect()
}

fn assert_same_checkpoint(original: &Path, saved: &Path, skip: &[&str]) {
    let want = tensors(original, skip);
    let got = tensors(saved, &[]);
    let missing: Vec<_> = want.keys().filter(|k| !got.contains_key(*k)).collect();
    let extra: Vec<_> = got.keys().filter(|k| !want.contains_key(*k)).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "missing {missing:?}, extra {extra:?}"
    );
    for (name, (shape, data)) in &want {
        assert_eq!(&got[name].0, shape, "{name}: shape");
        assert!(&got[name].1 == data, "{name}: bytes differ");
    }
}

fn out_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("vdm-saving-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn unet3d_saves_back_to_the_diffusers_checkpoint_it_was_loaded_from() {
    let device = Device::flex();
    let dir = pipeline_dir("text_to_video_sd").join("unet");
    let model =
        UNet3DConditionModel::from_pretrained(dir.as_path(), &LoadOptions::new(), &device).unwrap();
    let out = out_dir("unet3d");
    let saved = out.join("diffusion_pytorch_model.safetensors");
    save_safetensors(&model, &saved, &[]).unwrap();
    assert_same_checkpoint(
        &dir.join("diffusion_pytorch_model.safetensors"),
        &saved,
        &[],
    );
    // And the saved file loads strictly (every key used, none missing).
    let again = UNet3DConditionModel::new(&model.config, &device)
        .unwrap()
        .load_weights(&saved, &LoadOptions::new())
        .unwrap();
    assert!(again.1.is_complete());
    std::fs::remove_dir_all(out).unwrap();
}

#[test]
fn unet3d_saves_in_f16_as_the_f16_rounding_of_every_weight_and_loads_back() {
    let device = Device::flex();
    let dir = pipeline_dir("text_to_video_sd").join("unet");
    let model =
        UNet3DConditionModel::from_pretrained(dir.as_path(), &LoadOptions::new(), &device).unwrap();
    let out = out_dir("unet3d-f16");
    let saved = out.join("diffusion_pytorch_model.safetensors");
    save_safetensors_as(&model, &saved, &[], FloatDType::F16).unwrap();
    let original = dir.join("diffusion_pytorch_model.safetensors");
    let bytes = std::fs::read(&original).unwrap();
    let want = SafeTensors::deserialize(&bytes).unwrap();
    let bytes = std::fs::read(&saved).unwrap();
    let got = SafeTensors::deserialize(&bytes).unwrap();
    assert_eq!(want.len(), got.len());
    for (name, view) in want.tensors() {
        let half = got.tensor(&name).unwrap();
        assert_eq!(half.dtype(), safetensors::Dtype::F16, "{name}");
        assert_eq!(half.shape(), view.shape(), "{name}");
        let rounded: Vec<u8> = view
            .data()
            .chunks_exact(4)
            .flat_map(|b| {
                let x = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
                half::f16::from_f32(x).to_le_bytes()
            })
            .collect();
        assert!(
            half.data() == rounded.as_slice(),
            "{name}: not the f16 rounding"
        );
    }
    // (Half the tensor bytes, by the check above.) The ordinary loader reads it back into an
    // f32 model.
    let again = UNet3DConditionModel::new(&model.config, &device)
        .unwrap()
        .load_weights(&saved, &LoadOptions::new())
        .unwrap();
    assert!(again.1.is_complete());
    std::fs::remove_dir_all(out).unwrap();
}

#[test]
fn motion_unet_saves_back_to_the_diffusers_checkpoint_it_was_loaded_from() {
    let device = Device::flex();
    let dir = pipeline_dir("animatediff").join("unet");
    let config = UNetMotionConfig::from_json_file(dir.join("config.json")).unwrap();
    let weights = dir.join("diffusion_pytorch_model.safetensors");
    let (model, _) =
        UNetMotionModel::load(&config, &weights, &device, &LoadOptions::new()).unwrap();
    let out = out_dir("motion");
    let saved = out.join("diffusion_pytorch_model.safetensors");
    save_safetensors(&model, &saved, &[]).unwrap();
    // diffusers keeps the sinusoidal tables of the motion modules out of its state dict's
    // semantics but in the file; vdm stores them as parameters too, so nothing is skipped.
    assert_same_checkpoint(&weights, &saved, &[]);
    std::fs::remove_dir_all(out).unwrap();
}

#[test]
fn clip_text_model_saves_in_the_transformers_layout() {
    let device = Device::flex();
    let dir = pipeline_dir("text_to_video_sd").join("text_encoder");
    let model = CLIPTextModel::from_pretrained(&dir, &LoadOptions::new(), &device).unwrap();
    let out = out_dir("clip");
    let saved = out.join("model.safetensors");
    save_safetensors(&model, &saved, &[]).unwrap();
    assert_same_checkpoint(
        &dir.join("model.safetensors"),
        &saved,
        &["embeddings.position_ids"],
    );
    std::fs::remove_dir_all(out).unwrap();
}

#[test]
fn a_failed_save_names_the_path_and_leaves_no_file() {
    let device = Device::flex();
    let dir = pipeline_dir("text_to_video_sd").join("text_encoder");
    let model = CLIPTextModel::from_pretrained(&dir, &LoadOptions::new(), &device).unwrap();
    let target = std::env::temp_dir()
        .join(format!("vdm-no-such-dir-{}", std::process::id()))
        .join("model.safetensors");
    let err = save_safetensors(&model, &target, &[]).unwrap_err();
    assert!(err.to_string().contains("model.safetensors"), "{err}");
    assert!(!target.exists());
}
