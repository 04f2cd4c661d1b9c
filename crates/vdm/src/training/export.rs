//! Writing a trained model as a diffusers-style `TextToVideoSDPipeline` folder, which
//! [`TextToVideoPipeline::from_dir`](crate::pipeline::TextToVideoPipeline::from_dir) (and the
//! `generate` example) load unchanged:
//!
//! ```text
//! model_index.json          "vae": ["vdm", "Patchify"] for a pixel-space model
//! scheduler/scheduler_config.json
//! text_encoder/config.json, model.safetensors                    (transformers 5 keys)
//! tokenizer/vocab.json, merges.txt, tokenizer_config.json, special_tokens_map.json
//! unet/config.json, diffusion_pytorch_model.safetensors          (diffusers keys)
//! vae/config.json
//! ```

use std::path::Path;

use burn::tensor::FloatDType;
use vdm_core::{Error, Result};
use vdm_models::clip::CLIPTextModel;
use vdm_models::loading::{save_safetensors, save_safetensors_as};
use vdm_models::patchify::PatchifyConfig;
use vdm_models::unet3d::UNet3DConditionModel;

use super::trainer::create_dir;
use crate::shapes::vocab::write;

/// The diffusers version the written configs claim to mirror.
const DIFFUSERS_VERSION: &str = "0.42.1";

/// Everything a pixel-space text-to-video folder holds besides its tokenizer files.
#[allow(missing_debug_implementations)] // holds a closure
pub struct PipelineExport<'a> {
    /// The video UNet.
    pub unet: &'a UNet3DConditionModel,
    /// The text encoder.
    pub text_encoder: &'a CLIPTextModel,
    /// The pixel ↔ latent codec.
    pub patchify: PatchifyConfig,
    /// The dtype the UNet's weights are stored in (`F16` halves the file, as diffusers' `fp16`
    /// variants do; the loader casts back to the model's dtype).
    pub unet_dtype: FloatDType,
    /// `scheduler_config.json` text (with its `_class_name`).
    pub scheduler_config: &'a str,
    /// Writes the tokenizer files into the given `tokenizer/` folder.
    pub write_tokenizer: &'a dyn Fn(&Path) -> Result<()>,
}

impl PipelineExport<'_> {
    /// Writes the folder at `dir` (created if needed; existing files are replaced).
    ///
    /// # Errors
    /// [`Error::File`] naming what cannot be written; [`Error::InvalidConfig`] naming
    /// `scheduler_config` when it is not a JSON object.
    pub fn write(&self, dir: impl AsRef<Path>) -> Result<()> {
        let dir = dir.as_ref();
        let scheduler: serde_json::Value = serde_json::from_str(self.scheduler_config)
            .ok()
            .filter(serde_json::Value::is_object)
            .ok_or_else(|| Error::invalid("scheduler_config", "not a JSON object"))?;
        let class = scheduler["_class_name"].as_str().unwrap_or("DDIMScheduler");
        let index = serde_json::json!({
            "_class_name": "TextToVideoSDPipeline",
            "_diffusers_version": DIFFUSERS_VERSION,
            "scheduler": ["diffusers", class],
            "text_encoder": ["transformers", "CLIPTextModel"],
            "tokenizer": ["transformers", "CLIPTokenizer"],
            "unet": ["diffusers", "UNet3DConditionModel"],
            "vae": ["vdm", "Patchify"],
        });
        create_dir(dir)?;
        write(dir, "model_index.json", &pretty(&index))?;
        for sub in ["scheduler", "text_encoder", "tokenizer", "unet", "vae"] {
            create_dir(&dir.join(sub))?;
        }
        write(
            &dir.join("scheduler"),
            "scheduler_config.json",
            &pretty(&scheduler),
        )?;
        write_unet3d(self.unet, &dir.join("unet"), self.unet_dtype)?;
        write_text_encoder(self.text_encoder, &dir.join("text_encoder"))?;
        write(&dir.join("vae"), "config.json", &self.patchify.to_json())?;
        (self.write_tokenizer)(&dir.join("tokenizer"))
    }
}

/// Writes `config.json` (with `_class_name`) and `diffusion_pytorch_model.safetensors` of a
/// UNet3D into `dir`, the weights stored as `dtype`.
///
/// # Errors
/// [`Error::File`] naming what cannot be written.
pub fn write_unet3d(unet: &UNet3DConditionModel, dir: &Path, dtype: FloatDType) -> Result<()> {
    let mut config = serde_json::to_value(&unet.config).expect("a serialisable config");
    config["_class_name"] = "UNet3DConditionModel".into();
    config["_diffusers_version"] = DIFFUSERS_VERSION.into();
    write(dir, "config.json", &pretty(&config))?;
    save_safetensors_as(
        unet,
        dir.join("diffusion_pytorch_model.safetensors"),
        &[],
        dtype,
    )
}

/// Writes `config.json` and `model.safetensors` of a CLIP text encoder into `dir`.
///
/// # Errors
/// [`Error::File`] naming what cannot be written.
pub fn write_text_encoder(model: &CLIPTextModel, dir: &Path) -> Result<()> {
    let mut config = serde_json::to_value(&model.config).expect("a serialisable config");
    config["architectures"] = serde_json::json!(["CLIPTextModel"]);
    config["model_type"] = "clip_text_model".into();
    write(dir, "config.json", &pretty(&config))?;
    save_safetensors(model, dir.join("model.safetensors"), &[])
}

fn pretty(value: &serde_json::Value) -> String {
    serde_json::to_string_pretty(value).expect("plain JSON")
}
