//! diffusers' `AutoencoderKL` (`models/autoencoders/autoencoder_kl.py`, with `Encoder`,
//! `Decoder` and `DiagonalGaussianDistribution` from `models/autoencoders/vae.py` and the blocks
//! of `models/unets/unet_2d_blocks.py`), loading diffusers checkpoints unchanged.
//!
//! - [`AutoencoderKL::decode`] = diffusers `vae.decode(z).sample`: `post_quant_conv`, then the
//!   decoder. Like diffusers it does **not** undo the latent scaling; pipelines call it on
//!   `latents / scaling_factor`.
//! - [`AutoencoderKL::encode`] = diffusers `vae.encode(x).latent_dist`: the encoder, then
//!   `quant_conv`, as a [`DiagonalGaussian`] (no scaling either).
//! - [`AutoencoderKL::decode_video`] / [`AutoencoderKL::encode_video`] are what video
//!   pipelines do around them: (un)scale with `scaling_factor` (and `shift_factor` or
//!   `latents_mean`/`latents_std` when the config has them), fold frames into the batch
//!   ([`vdm_core::layout::frames_to_batch`]) and run in chunks of frames to bound memory
//!   (AnimateDiff's `decode_chunk_size`).
//!
//! A text-to-video pipeline only needs the decoder: build the model with
//! [`VaeParts::DecoderOnly`] and the encoder's tensors in a full checkpoint are skipped.
//!
//! ```no_run
//! use burn::tensor::{Device, Distribution, Tensor};
//! use vdm_models::vae::{AutoencoderKL, VaeParts};
//!
//! let device = Device::flex();
//! // A diffusers folder such as `.../vae` with config.json + diffusion_pytorch_model.safetensors.
//! let (vae, report) = AutoencoderKL::from_pretrained("vae", VaeParts::DecoderOnly, &device)?;
//! println!("{report}");
//! let latents = Tensor::<5>::random([1, 4, 16, 32, 32], Distribution::Normal(0.0, 1.0), &device);
//! let vae = vae.with_frames_per_chunk(Some(4));
//! let video = vae.decode_video(latents, true)?; // [1, 3, 16, 256, 256]
//! # Ok::<(), vdm_core::Error>(())
//! ```

mod blocks;
mod config;
mod decoder;
mod distribution;
mod encoder;

use std::path::Path;

use burn::module::Module;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::tensor::{DType, Device, Tensor};
use vdm_core::layout::{batch_to_frames, frames_to_batch};
use vdm_core::{Error, NoiseSource, Result, VideoShape};

pub use blocks::{DownEncoderBlock2D, UNetMidBlock2D, UpDecoderBlock2D, VAE_NORM_EPS};
pub use config::{
    AutoencoderKLConfig, DOWN_ENCODER_BLOCK, SUPPORTED_ACTIVATIONS, SampleSize, UP_DECODER_BLOCK,
};
pub use decoder::Decoder;
pub use distribution::{DiagonalGaussian, LOGVAR_MAX, LOGVAR_MIN};
pub use encoder::Encoder;

use crate::attention::expect_images;
use crate::chunking::map_chunks;
use crate::keymap::DIFFUSERS_KEY_REMAP;
use crate::loading::{
    KeyRemap, LoadOptions, LoadReport, find_weight_file, load_safetensors, load_safetensors_bytes,
};

/// Weight files [`AutoencoderKL::from_pretrained`] looks for, in order (diffusers' default
/// name, then its `fp16` and `bf16` variants).
pub const WEIGHT_FILES: &[&str] = &[
    "diffusion_pytorch_model.safetensors",
    "diffusion_pytorch_model.fp16.safetensors",
    "diffusion_pytorch_model.bf16.safetensors",
];

/// Which halves of the autoencoder to build.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum VaeParts {
    /// Encoder, `quant_conv`, `post_quant_conv` and decoder.
    #[default]
    Full,
    /// `post_quant_conv` and decoder only (enough for text-to-video). Loading a full
    /// checkpoint skips the `encoder.*` and `quant_conv.*` tensors.
    DecoderOnly,
}

/// diffusers' `AutoencoderKL`: a KL-regularised VAE whose latents are `2^(levels−1)` times
/// smaller than its images (8× for Stable Diffusion).
///
/// Checkpoint keys: `encoder.*`, `quant_conv.*`, `post_quant_conv.*`, `decoder.*` (see
/// [`Encoder`] and [`Decoder`]). Built by [`AutoencoderKLConfig::init`].
#[derive(Module, Debug)]
pub struct AutoencoderKL {
    /// The encoder; `None` for a decoder-only model.
    pub encoder: Option<Encoder>,
    /// 1×1 conv `2L → 2L` on the encoder output (`use_quant_conv`); `None` without encoder.
    pub quant_conv: Option<Conv2d>,
    /// 1×1 conv `L → L` before the decoder (`use_post_quant_conv`).
    pub post_quant_conv: Option<Conv2d>,
    /// The decoder.
    pub decoder: Decoder,
    /// The configuration the model was built from.
    #[module(skip)]
    pub config: AutoencoderKLConfig,
    /// Frames (items of the folded `[B·F, …]` batch) per encoder/decoder call in
    /// [`AutoencoderKL::decode_video`] / [`AutoencoderKL::encode_video`]; `None` = all at once.
    pub frames_per_chunk: Option<usize>,
}

impl AutoencoderKLConfig {
    /// Validates and builds the model: encoder and decoder ([`VaeParts::Full`]) or the
    /// decoder alone ([`VaeParts::DecoderOnly`], all a text-to-video pipeline needs).
    ///
    /// Weights are freshly initialised; load a checkpoint with
    /// [`AutoencoderKL::load_file`].
    ///
    /// # Errors
    /// As [`AutoencoderKLConfig::validate`].
    pub fn init(&self, parts: VaeParts, device: &Device) -> Result<AutoencoderKL> {
        AutoencoderKL::new(self.clone(), parts, device)
    }
}

impl AutoencoderKL {
    /// Builds the model (prefer [`AutoencoderKLConfig::init`]).
    ///
    /// # Errors
    /// As [`AutoencoderKLConfig::validate`].
    pub fn new(config: AutoencoderKLConfig, parts: VaeParts, device: &Device) -> Result<Self> {
        config.validate()?;
        let latent = config.latent_channels;
        let conv1x1 = |c: usize| Conv2dConfig::new([c, c], [1, 1]).init(device);
        let (encoder, quant_conv) = match parts {
            VaeParts::Full => (
                Some(Encoder::new(&config, device)?),
                config.use_quant_conv.then(|| conv1x1(2 * latent)),
            ),
            VaeParts::DecoderOnly => (None, None),
        };
        Ok(Self {
            encoder,
            quant_conv,
            post_quant_conv: config.use_post_quant_conv.then(|| conv1x1(latent)),
            decoder: Decoder::new(&config, device)?,
            config,
            frames_per_chunk: None,
        })
    }

    /// Reads `dir/config.json` and the first of [`WEIGHT_FILES`] present in `dir` (a diffusers
    /// `vae` folder), builds `parts` and loads the weights, cast to the device's default float
    /// dtype (`device.settings().float_dtype`). Every parameter must be in the file.
    ///
    /// # Errors
    /// [`Error::File`] if the config or weights cannot be read, config errors as
    /// [`AutoencoderKLConfig::from_file`], weight errors as [`AutoencoderKL::load_file`].
    pub fn from_pretrained(
        dir: impl AsRef<Path>,
        parts: VaeParts,
        device: &Device,
    ) -> Result<(Self, LoadReport)> {
        let options = LoadOptions::new().dtype(device.settings().float_dtype);
        Self::from_pretrained_with(dir, parts, &options, device)
    }

    /// [`AutoencoderKL::from_pretrained`] with explicit load options (dtype, partial loads).
    ///
    /// # Errors
    /// As [`AutoencoderKL::from_pretrained`].
    pub fn from_pretrained_with(
        dir: impl AsRef<Path>,
        parts: VaeParts,
        options: &LoadOptions,
        device: &Device,
    ) -> Result<(Self, LoadReport)> {
        let dir = dir.as_ref();
        let config = AutoencoderKLConfig::from_file(dir.join("config.json"))?;
        let weights = find_weight_file(dir, WEIGHT_FILES, "AutoencoderKL")?;
        config.init(parts, device)?.load_file(weights, options)
    }

    /// Loads a diffusers safetensors checkpoint (`f32`, `f16` or `bf16`; every float tensor is
    /// cast to `options.dtype`) with the crate's key table ([`DIFFUSERS_KEY_REMAP`], which also
    /// accepts pre-0.14 attention names).
    ///
    /// A decoder-only model adds ignore patterns for `encoder.*` and `quant_conv.*`, so it
    /// loads a full checkpoint as well as a decoder-only one. A full model loading a file
    /// without encoder reports the encoder's parameters as missing: an [`Error::Weights`]
    /// unless `options.allow_partial`, in which case they are listed in the report.
    ///
    /// # Errors
    /// As [`crate::loading::load_safetensors`].
    pub fn load_file(
        self,
        path: impl AsRef<Path>,
        options: &LoadOptions,
    ) -> Result<(Self, LoadReport)> {
        let options = self.load_options(options);
        load_safetensors(self, path, &KeyRemap::table(DIFFUSERS_KEY_REMAP), &options)
    }

    /// [`AutoencoderKL::load_file`] for an in-memory safetensors file.
    ///
    /// # Errors
    /// As [`crate::loading::load_safetensors_bytes`].
    pub fn load_bytes(self, bytes: &[u8], options: &LoadOptions) -> Result<(Self, LoadReport)> {
        let options = self.load_options(options);
        load_safetensors_bytes(self, bytes, &KeyRemap::table(DIFFUSERS_KEY_REMAP), &options)
    }

    /// The caller's options plus the ignore patterns of the parts this model lacks.
    fn load_options(&self, options: &LoadOptions) -> LoadOptions {
        let mut options = options.clone();
        if self.encoder.is_none() {
            options = options
                .ignore_prefix("encoder.")
                .ignore_prefix("quant_conv.");
        }
        options
    }

    /// The configuration.
    pub fn config(&self) -> &AutoencoderKLConfig {
        &self.config
    }

    /// Whether the model has an encoder ([`VaeParts::Full`]).
    pub fn has_encoder(&self) -> bool {
        self.encoder.is_some()
    }

    /// Sets [`AutoencoderKL::frames_per_chunk`] (`Some(0)` is treated as `Some(1)`).
    pub fn with_frames_per_chunk(mut self, frames: Option<usize>) -> Self {
        self.frames_per_chunk = frames.map(|f| f.max(1));
        self
    }

    /// The dtype of the decoder's weights, which inputs are cast to.
    fn compute_dtype(&self) -> DType {
        self.decoder.conv_in.weight.val().dtype()
    }

    /// Decodes latents to images (diffusers `AutoencoderKL.decode(z).sample`):
    /// `decoder(post_quant_conv(z))`. The latents are **not** divided by `scaling_factor`;
    /// use [`AutoencoderKL::unscale_latents`] or [`AutoencoderKL::decode_video`] for diffusion
    /// latents. No clamping: images come out roughly in `[-1, 1]`. The latents are cast to
    /// the dtype of the loaded weights, which is also the dtype of the output.
    ///
    /// # Shapes
    /// - `latents`: `[N, latent_channels, h, w]`
    /// - output: `[N, out_channels, h · f, w · f]`, `f` = [`AutoencoderKLConfig::downsample_factor`]
    ///
    /// # Errors
    /// [`Error::Shape`] for a wrong channel count or an empty dimension.
    pub fn decode(&self, latents: Tensor<4>) -> Result<Tensor<4>> {
        expect_images("latents", &latents, self.config.latent_channels)?;
        let z = latents.cast(self.compute_dtype());
        let z = match &self.post_quant_conv {
            Some(conv) => conv.forward(z),
            None => z,
        };
        self.decoder.forward(z)
    }

    /// The encoder moments `quant_conv(encoder(images))`: `[N, 2 · latent_channels, h, w]`.
    fn encode_moments(&self, images: Tensor<4>) -> Result<Tensor<4>> {
        let encoder = self.encoder.as_ref().ok_or_else(|| {
            Error::Unsupported(
                "encoding with a decoder-only AutoencoderKL (build it with VaeParts::Full)".into(),
            )
        })?;
        let h = encoder.forward(images.cast(self.compute_dtype()))?;
        Ok(match &self.quant_conv {
            Some(conv) => conv.forward(h),
            None => h,
        })
    }

    /// Encodes images to the latent posterior (diffusers `AutoencoderKL.encode(x).latent_dist`):
    /// `quant_conv(encoder(x))` split into mean and log-variance. Not scaled by
    /// `scaling_factor` (see [`AutoencoderKL::scale_latents`]).
    ///
    /// # Shapes
    /// - `images`: `[N, in_channels, H, W]` (pixel values in `[-1, 1]`)
    /// - output: mean and log-variance `[N, latent_channels, H / f, W / f]`
    ///
    /// # Errors
    /// [`Error::Unsupported`] for a decoder-only model; [`Error::Shape`] for a wrong channel
    /// count.
    pub fn encode(&self, images: Tensor<4>) -> Result<DiagonalGaussian<4>> {
        DiagonalGaussian::from_moments(self.encode_moments(images)?)
    }

    /// Checks the latent channel dimension (1) of a latent tensor.
    fn expect_latent_channels<const D: usize>(
        &self,
        name: &str,
        latents: &Tensor<D>,
    ) -> Result<()> {
        let dims = latents.dims();
        if D < 2 || dims[1] != self.config.latent_channels {
            return Err(Error::shape(
                name,
                format!(
                    "[N, C, ...] with C = {} (latent_channels)",
                    self.config.latent_channels
                ),
                &dims,
            ));
        }
        Ok(())
    }

    /// A per-channel constant shaped `[1, C, 1, …]` to broadcast against `like`.
    fn per_channel<const D: usize>(values: &[f64], like: &Tensor<D>) -> Tensor<D> {
        let mut shape = [1usize; D];
        shape[1] = values.len();
        let values: Vec<f32> = values.iter().map(|&v| v as f32).collect();
        Tensor::<1>::from_floats(values.as_slice(), &like.device())
            .cast(like.dtype())
            .reshape(shape)
    }

    /// Diffusion latents back to VAE latents, as diffusers pipelines do before `decode`:
    /// `z / scaling_factor` (+ `shift_factor` if set; SD3/FLUX), or
    /// `z · latents_std / scaling_factor + latents_mean` when the config has per-channel
    /// statistics (SDXL-style pipelines).
    ///
    /// # Shapes
    /// - `latents`: `[N, latent_channels, ...]` (channels on dimension 1), output alike
    ///
    /// # Errors
    /// [`Error::Shape`] for a wrong channel count.
    pub fn unscale_latents<const D: usize>(&self, latents: Tensor<D>) -> Result<Tensor<D>> {
        self.expect_latent_channels("latents", &latents)?;
        let c = &self.config;
        Ok(match (&c.latents_mean, &c.latents_std) {
            (Some(mean), Some(std)) => {
                let std = Self::per_channel(std, &latents);
                let mean = Self::per_channel(mean, &latents);
                latents * std / c.scaling_factor + mean
            }
            _ => {
                let z = latents / c.scaling_factor;
                match c.shift_factor {
                    Some(shift) => z + shift,
                    None => z,
                }
            }
        })
    }

    /// VAE latents to diffusion latents, the inverse of [`AutoencoderKL::unscale_latents`]:
    /// `z · scaling_factor`, `(z − shift_factor) · scaling_factor`, or
    /// `(z − latents_mean) · scaling_factor / latents_std`.
    ///
    /// # Shapes
    /// - `latents`: `[N, latent_channels, ...]`, output alike
    ///
    /// # Errors
    /// [`Error::Shape`] for a wrong channel count.
    pub fn scale_latents<const D: usize>(&self, latents: Tensor<D>) -> Result<Tensor<D>> {
        self.expect_latent_channels("latents", &latents)?;
        let c = &self.config;
        Ok(match (&c.latents_mean, &c.latents_std) {
            (Some(mean), Some(std)) => {
                let std = Self::per_channel(std, &latents);
                let mean = Self::per_channel(mean, &latents);
                (latents - mean) * c.scaling_factor / std
            }
            _ => {
                let z = match c.shift_factor {
                    Some(shift) => latents - shift,
                    None => latents,
                };
                z * c.scaling_factor
            }
        })
    }

    /// Decodes a video latent frame by frame, as video pipelines do
    /// (`TextToVideoSDPipeline.decode_latents`, AnimateDiff's `decode_latents` with
    /// `decode_chunk_size` = [`AutoencoderKL::frames_per_chunk`]).
    ///
    /// With `scaled = true` the latents are diffusion latents and are first mapped back with
    /// [`AutoencoderKL::unscale_latents`]; with `false` they are passed to the decoder as is.
    /// Chunking changes nothing but peak memory (frames are independent).
    ///
    /// # Shapes
    /// - `latents`: `[B, latent_channels, F, h, w]`
    /// - output: `[B, out_channels, F, h · f, w · f]`
    ///
    /// # Errors
    /// [`Error::Shape`] for a wrong channel count or an empty dimension.
    pub fn decode_video(&self, latents: Tensor<5>, scaled: bool) -> Result<Tensor<5>> {
        let shape = VideoShape::of("latents", &latents)?;
        shape.expect_channels("latents", self.config.latent_channels)?;
        let latents = if scaled {
            self.unscale_latents(latents)?
        } else {
            latents
        };
        let images = map_chunks(frames_to_batch(latents), self.frames_per_chunk, |z, _| {
            self.decode(z)
        })?;
        Ok(batch_to_frames(images, shape.frames))
    }

    /// The latent posterior of every frame of a video (unscaled), encoded in chunks of
    /// [`AutoencoderKL::frames_per_chunk`] frames.
    ///
    /// # Shapes
    /// - `video`: `[B, in_channels, F, H, W]`
    /// - output: mean and log-variance `[B, latent_channels, F, H / f, W / f]`
    ///
    /// # Errors
    /// As [`AutoencoderKL::encode`].
    pub fn encode_video_posterior(&self, video: Tensor<5>) -> Result<DiagonalGaussian<5>> {
        let shape = VideoShape::of("video", &video)?;
        shape.expect_channels("video", self.config.in_channels)?;
        let moments = map_chunks(frames_to_batch(video), self.frames_per_chunk, |x, _| {
            self.encode_moments(x)
        })?;
        DiagonalGaussian::from_moments(batch_to_frames(moments, shape.frames))
    }

    /// Encodes a video to diffusion latents, as video-to-video pipelines do
    /// (`retrieve_latents(vae.encode(x))` then `· scaling_factor`): a draw from the posterior
    /// with noise from `noise` (diffusers' default `sample_mode="sample"`), or its mean when
    /// `noise` is `None` (`sample_mode="argmax"`), then [`AutoencoderKL::scale_latents`].
    ///
    /// The noise is drawn once, in the video layout `[B, C, F, h, w]`, after all chunks are
    /// encoded, so chunking does not change the result.
    ///
    /// # Shapes
    /// - `video`: `[B, in_channels, F, H, W]` (pixel values in `[-1, 1]`)
    /// - output: `[B, latent_channels, F, H / f, W / f]`
    ///
    /// # Errors
    /// As [`AutoencoderKL::encode`]; [`Error::Noise`] if the noise source fails.
    pub fn encode_video(
        &self,
        video: Tensor<5>,
        noise: Option<&mut dyn NoiseSource>,
    ) -> Result<Tensor<5>> {
        let posterior = self.encode_video_posterior(video)?;
        let z = match noise {
            Some(noise) => posterior.sample(noise)?,
            None => posterior.mode(),
        };
        self.scale_latents(z)
    }
}
