//! The video UNet and the frame decoder a text-to-video pipeline is built from.

use burn::module::Module;
use burn::tensor::{Device, Tensor};
use vdm_core::{Denoiser, DenoiserInput, PredictionType, Result};
use vdm_models::chunking::Chunking;
use vdm_models::patchify::Patchify;
use vdm_models::unet_motion::UNetMotionModel;
use vdm_models::unet3d::{SampleSize, UNet3DConditionModel};
use vdm_models::vae::AutoencoderKL;

/// The video UNet of a pipeline.
#[derive(Debug)]
pub enum VideoUNet {
    /// ModelScope / ZeroScope's `UNet3DConditionModel`.
    UNet3D(UNet3DConditionModel),
    /// AnimateDiff's `UNetMotionModel`.
    Motion(UNetMotionModel),
}

impl VideoUNet {
    /// Sets what the model predicts.
    pub fn with_prediction_type(self, prediction_type: PredictionType) -> Self {
        match self {
            Self::UNet3D(m) => Self::UNet3D(m.with_prediction_type(prediction_type)),
            Self::Motion(m) => Self::Motion(m.with_prediction_type(prediction_type)),
        }
    }

    /// Sets the chunk sizes of chunked inference (bounds activation memory for long videos;
    /// the numbers do not change).
    pub fn with_chunking(self, chunking: Chunking) -> Self {
        match self {
            Self::UNet3D(m) => Self::UNet3D(m.with_chunking(chunking)),
            Self::Motion(m) => Self::Motion(m.with_chunking(chunking)),
        }
    }

    /// A replica of the model with its weights on `device`, chunking and prediction type
    /// kept (the shards of a [`ShardedDenoiser`](vdm_core::ShardedDenoiser)).
    pub fn to_device(&self, device: &Device) -> Self {
        match self {
            Self::UNet3D(m) => Self::UNet3D(m.clone().to_device(device)),
            Self::Motion(m) => Self::Motion(m.clone().to_device(device)),
        }
    }

    /// Latent channels the model takes.
    pub fn in_channels(&self) -> usize {
        match self {
            Self::UNet3D(m) => m.config.in_channels,
            Self::Motion(m) => m.config.in_channels,
        }
    }

    /// The most frames one temporal window may hold (`None`: no positional table).
    pub fn max_frames(&self) -> Option<usize> {
        match self {
            Self::UNet3D(_) => None,
            Self::Motion(m) => Some(m.config.motion_max_seq_length),
        }
    }

    /// The latent `(height, width)` of the config's `sample_size`, if it has one.
    pub fn sample_size(&self) -> Option<(usize, usize)> {
        match self {
            Self::UNet3D(m) => match m.config.sample_size.as_ref()? {
                SampleSize::Square(s) => Some((*s, *s)),
                SampleSize::HeightWidth(hw) if hw.len() == 2 => Some((hw[0], hw[1])),
                SampleSize::HeightWidth(_) => None,
            },
            Self::Motion(m) => match m.config.sample_size.as_ref()? {
                serde_json::Value::Number(n) => n.as_u64().map(|s| (s as usize, s as usize)),
                serde_json::Value::Array(a) if a.len() == 2 => {
                    Some((a[0].as_u64()? as usize, a[1].as_u64()? as usize))
                }
                _ => None,
            },
        }
    }
}

impl Denoiser for VideoUNet {
    fn prediction_type(&self) -> PredictionType {
        match self {
            Self::UNet3D(m) => m.prediction_type(),
            Self::Motion(m) => m.prediction_type(),
        }
    }

    fn predict(&self, input: DenoiserInput<'_>) -> Result<Tensor<5>> {
        match self {
            Self::UNet3D(m) => m.predict(input),
            Self::Motion(m) => m.predict(input),
        }
    }
}

/// What turns the UNet's latents into frames: a VAE, or the lossless [`Patchify`] of a
/// pixel-space model (vdm's embedded model).
#[derive(Debug)]
pub enum FrameDecoder {
    /// diffusers' `AutoencoderKL` (decoder only).
    Vae(Box<AutoencoderKL>),
    /// Space-to-depth patches (`"vae": ["vdm", "Patchify"]`): the latents are the pixels in
    /// `[-1, 1]`, folded.
    Patchify(Patchify),
}

impl FrameDecoder {
    /// The spatial factor between latents and pixels.
    pub fn scale_factor(&self) -> usize {
        match self {
            Self::Vae(vae) => 1 << vae.config().block_out_channels.len().saturating_sub(1),
            Self::Patchify(p) => p.config.patch_size,
        }
    }

    /// Frames `[B, 3, F, H, W]` in `[-1, 1]` (before the `[0, 1]` mapping) from latents.
    ///
    /// # Errors
    /// The decoder's shape errors.
    pub fn decode(&self, latents: Tensor<5>) -> Result<Tensor<5>> {
        match self {
            Self::Vae(vae) => vae.decode_video(latents, true),
            Self::Patchify(p) => p.decode(latents),
        }
    }
}
