//! Loading a diffusers folder into a [`TextToVideoPipeline`]: the pipeline class, the
//! scheduler config and its prediction type, the tokenizer, the text encoder, the VAE (or the
//! patches of a pixel-space model) and the UNet (UNet3D, or AnimateDiff's merged motion UNet,
//! or an SD UNet with a motion adapter).

use std::path::{Path, PathBuf};

use burn::tensor::Device;
use vdm_core::{Error, PredictionType, Result};
use vdm_models::clip::{CLIPTextModel, CLIPTokenizer, PromptEncoder};
use vdm_models::loading::{LoadOptions, find_weight_file};
use vdm_models::patchify::{Patchify, PatchifyConfig};
use vdm_models::unet_motion::{
    MotionAdapterConfig, UNet2DConditionConfig, UNetMotionConfig, UNetMotionModel,
};
use vdm_models::unet3d::{UNet3DConditionModel, WEIGHT_FILE_NAMES};
use vdm_models::vae::{AutoencoderKL, VaeParts};
use vdm_schedulers::config::config_value;

use super::{FrameDecoder, TextToVideoPipeline, VideoUNet};
use crate::pipeline::folder::{PipelineClass, PipelineFolder};

impl TextToVideoPipeline {
    /// Loads every component of a `TextToVideoSDPipeline` or `AnimateDiffPipeline` folder,
    /// weights cast to the device's float dtype.
    ///
    /// AnimateDiff's `unet/` may be the merged `UNetMotionModel` that diffusers'
    /// `save_pretrained` writes, or an SD 1.x `UNet2DConditionModel` with the
    /// `motion_adapter/` folder beside it.
    ///
    /// # Errors
    /// [`Error::File`] naming the missing or unreadable path; [`Error::UnknownVariant`] for an
    /// unknown pipeline or component class; the loaders' config and weight errors.
    pub fn from_dir(dir: impl AsRef<Path>, device: &Device) -> Result<Self> {
        let options = LoadOptions::new().dtype(device.settings().float_dtype);
        Self::from_dir_with(dir, device, &options)
    }

    /// [`from_dir`](Self::from_dir) with explicit load options (dtype, partial loads).
    ///
    /// # Errors
    /// As [`from_dir`](Self::from_dir).
    pub fn from_dir_with(
        dir: impl AsRef<Path>,
        device: &Device,
        options: &LoadOptions,
    ) -> Result<Self> {
        let folder = PipelineFolder::open(dir)?;
        let class = folder.class()?;
        // Any scheduler class is accepted here (SD folders often carry PNDM, which vdm does not
        // implement): a generation may pick another class on the same configuration.
        let scheduler_path = folder
            .component_any("scheduler")?
            .join("scheduler_config.json");
        let scheduler_config = read_text(&scheduler_path)?;
        let prediction_type = config_value(&scheduler_config)
            .and_then(
                |value| match value.get("prediction_type").and_then(|v| v.as_str()) {
                    Some(p) => PredictionType::parse(p),
                    None => Ok(PredictionType::Epsilon),
                },
            )
            .map_err(|e| in_file(&scheduler_path, e))?;
        let tokenizer = CLIPTokenizer::from_dir(
            folder.component("tokenizer", &["CLIPTokenizer", "CLIPTokenizerFast"])?,
        )?;
        let text_encoder = CLIPTextModel::from_pretrained(
            folder.component("text_encoder", &["CLIPTextModel"])?,
            options,
            device,
        )?;
        let vae_dir = folder.component("vae", &["AutoencoderKL", "Patchify"])?;
        let vae = if folder.index.class_of("vae") == Some("Patchify") {
            FrameDecoder::Patchify(Patchify::new(PatchifyConfig::from_file(
                vae_dir.join("config.json"),
            )?)?)
        } else {
            let options = options.clone();
            FrameDecoder::Vae(Box::new(
                AutoencoderKL::from_pretrained_with(
                    &vae_dir,
                    VaeParts::DecoderOnly,
                    &options,
                    device,
                )?
                .0,
            ))
        };
        let unet = match class {
            PipelineClass::TextToVideoSD => {
                let dir = folder.component("unet", &["UNet3DConditionModel"])?;
                VideoUNet::UNet3D(UNet3DConditionModel::from_pretrained(dir, options, device)?)
            }
            PipelineClass::AnimateDiff => {
                VideoUNet::Motion(load_motion_unet(&folder, options, device)?)
            }
        }
        .with_prediction_type(prediction_type);
        Ok(Self {
            class,
            prompt_encoder: PromptEncoder::new(tokenizer, text_encoder)?,
            unet,
            vae,
            scheduler_config,
            device: device.clone(),
            shards: None,
        })
    }
}

/// AnimateDiff's UNet: the merged `UNetMotionModel`, or `UNet2DConditionModel` +
/// `motion_adapter/`.
fn load_motion_unet(
    folder: &PipelineFolder,
    options: &LoadOptions,
    device: &Device,
) -> Result<UNetMotionModel> {
    let dir = folder.component("unet", &["UNetMotionModel", "UNet2DConditionModel"])?;
    let weights = find_weight_file(&dir, WEIGHT_FILE_NAMES, "UNet")?;
    if folder.index.class_of("unet") == Some("UNetMotionModel") {
        let config = UNetMotionConfig::from_json_file(dir.join("config.json"))?;
        return Ok(UNetMotionModel::load(&config, weights, device, options)?.0);
    }
    let adapter_dir = folder.component("motion_adapter", &["MotionAdapter"])?;
    let adapter_weights = find_weight_file(&adapter_dir, WEIGHT_FILE_NAMES, "MotionAdapter")?;
    let config = UNetMotionConfig::from_unet2d(
        &UNet2DConditionConfig::from_json_file(dir.join("config.json"))?,
        &MotionAdapterConfig::from_json_file(adapter_dir.join("config.json"))?,
    )?;
    Ok(UNetMotionModel::load_unet2d_and_adapter(
        &config,
        weights,
        adapter_weights,
        device,
        options,
    )?
    .0)
}

fn read_text(path: &PathBuf) -> Result<String> {
    std::fs::read_to_string(path).map_err(|e| Error::File {
        path: path.display().to_string(),
        reason: e.to_string(),
    })
}

/// Names `path` in a config error.
fn in_file(path: &Path, error: Error) -> Error {
    match error {
        Error::File { .. } => error,
        other => Error::File {
            path: path.display().to_string(),
            reason: other.to_string(),
        },
    }
}
