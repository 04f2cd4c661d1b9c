//! ModelScope's text-to-video UNet (also ZeroScope): diffusers' `UNet3DConditionModel`
//! (`models/unets/unet_3d_condition.py`, blocks in `models/unets/unet_3d_blocks.py`), loading
//! diffusers `unet/config.json` + `diffusion_pytorch_model.safetensors` unchanged.
//!
//! The network interleaves per-frame 2-D layers (ResNets, spatial transformers with text
//! cross-attention, up/down sampling) with temporal layers: a `(3, 1, 1)` temporal convolution
//! after every resnet and a temporal transformer after every spatial transformer, plus one
//! temporal transformer (`transformer_in`) right after `conv_in`. Internally frames are folded
//! into the batch (`[B·F, C, H, W]`, index `b·F + f`) as in diffusers.
//!
//! Beyond diffusers:
//! - timesteps may differ per frame ([`Timesteps::PerFrame`], FIFO-Diffusion): each frame's
//!   time embedding is that of its own timestep (each distinct timestep is embedded once);
//! - text conditioning may differ per frame ([`Conditioning::PerFrame`]);
//! - every temporal attention (`transformer_in`, `*.temp_attentions.N`) goes through the
//!   [`TemporalHook`] of the call, with the layer's module path as its name;
//! - [`Chunking`] bounds peak memory: spatial layers run over chunks of frames, temporal
//!   transformers over chunks of spatial positions, with the same result.
//!
//! ```
//! use burn::tensor::{Device, Tensor};
//! use vdm_core::{Conditioning, Denoiser, DenoiserInput, Timesteps};
//! use vdm_models::unet3d::{UNet3DConditionModel, UNet3DConditionModelConfig};
//!
//! let device = Device::flex();
//! let config = UNet3DConditionModelConfig::from_json_str(
//!     r#"{"block_out_channels": [32, 64], "layers_per_block": 1, "norm_num_groups": 8,
//!         "down_block_types": ["CrossAttnDownBlock3D", "DownBlock3D"],
//!         "up_block_types": ["UpBlock3D", "CrossAttnUpBlock3D"],
//!         "cross_attention_dim": 32, "attention_head_dim": 8}"#,
//! )?;
//! let unet = UNet3DConditionModel::new(&config, &device)?; // random weights
//! let latents = Tensor::<5>::zeros([1, 4, 3, 8, 8], &device); // [B, C, F, H, W]
//! let text = Tensor::<3>::zeros([1, 7, 32], &device); // [B, S, D]
//! let input = DenoiserInput::new(latents, Timesteps::Shared(999.0), Conditioning::Shared(text));
//! assert_eq!(unet.predict(input)?.dims(), [1, 4, 3, 8, 8]);
//! # Ok::<(), vdm_core::Error>(())
//! ```

mod blocks;
mod config;

use std::path::{Path, PathBuf};

use burn::module::Module;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{GroupNorm, GroupNormConfig, PaddingConfig2d};
use burn::tensor::activation::silu;
use burn::tensor::{DType, Device, FloatDType, Int, Tensor, TensorData};
use vdm_core::cross_frame::{CrossFrameHook, OwnFrame, key_frame_plan};
use vdm_core::layout::{batch_to_frames, frames_to_batch};
use vdm_core::temporal::TemporalHook;
use vdm_core::{
    BlockConditioning, BlockKind, Conditioning, Denoiser, DenoiserInput, Error, PredictionType,
    Result, Timesteps, VideoShape,
};

pub use blocks::{DownBlock3D, Tap, UNetMidBlock3DCrossAttn, UpBlock3D, temporal_transformer};
pub use config::{
    DownBlockKind, PerBlock, SampleSize, TRANSFORMER_IN_HEADS, UNet3DConditionModelConfig,
    UpBlockKind,
};

use crate::chunking::{Chunking, map_chunks};
use crate::cpu;
use crate::embeddings::{TimestepEmbedding, TimestepEmbeddingConfig, TimestepProjection};
use crate::keymap::{DIFFUSERS_KEY_REMAP, SKIP_ENUM_VARIANTS};
use crate::loading::{KeyRemap, LoadOptions, LoadReport, load_safetensors};
use crate::resnet::conv2d;
use crate::temporal::{TransformerTemporalModel, TransformerTemporalModelConfig};
use blocks::Pass;

/// File names [`UNet3DConditionModel::from_pretrained`] looks for in a directory, in order.
pub const WEIGHT_FILE_NAMES: &[&str] = &[
    "diffusion_pytorch_model.safetensors",
    "diffusion_pytorch_model.fp16.safetensors",
    "diffusion_pytorch_model.bf16.safetensors",
    "model.safetensors",
];

/// Where [`UNet3DConditionModel::from_pretrained`] finds a checkpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PretrainedSource {
    /// A diffusers model directory holding `config.json` and one of [`WEIGHT_FILE_NAMES`]
    /// (or a pipeline directory with such a `unet/` sub-directory).
    Dir(PathBuf),
    /// An explicit `config.json` and safetensors file.
    Files {
        /// The diffusers `config.json`.
        config: PathBuf,
        /// The safetensors weights (`f32`, `f16` or `bf16`).
        weights: PathBuf,
    },
}

impl PretrainedSource {
    /// The `(config.json, weights)` paths.
    ///
    /// # Errors
    /// [`Error::File`] when a directory lacks `config.json` or a safetensors weight file.
    pub fn resolve(&self) -> Result<(PathBuf, PathBuf)> {
        match self {
            PretrainedSource::Files { config, weights } => Ok((config.clone(), weights.clone())),
            PretrainedSource::Dir(dir) => {
                let dir = if !dir.join("config.json").is_file() && dir.join("unet").is_dir() {
                    dir.join("unet")
                } else {
                    dir.clone()
                };
                let config = dir.join("config.json");
                if !config.is_file() {
                    return Err(Error::File {
                        path: config.display().to_string(),
                        reason: "no config.json in the model directory".into(),
                    });
                }
                let weights = WEIGHT_FILE_NAMES
                    .iter()
                    .map(|name| dir.join(name))
                    .find(|p| p.is_file())
                    .ok_or_else(|| Error::File {
                        path: dir.display().to_string(),
                        reason: format!(
                            "no safetensors weights (looked for {}); sharded checkpoints and \
                             PyTorch .bin files are not supported",
                            WEIGHT_FILE_NAMES.join(", ")
                        ),
                    })?;
                Ok((config, weights))
            }
        }
    }
}

impl From<&Path> for PretrainedSource {
    fn from(dir: &Path) -> Self {
        PretrainedSource::Dir(dir.to_path_buf())
    }
}

impl From<PathBuf> for PretrainedSource {
    fn from(dir: PathBuf) -> Self {
        PretrainedSource::Dir(dir)
    }
}

impl From<&str> for PretrainedSource {
    fn from(dir: &str) -> Self {
        PretrainedSource::Dir(dir.into())
    }
}

impl<C: AsRef<Path>, W: AsRef<Path>> From<(C, W)> for PretrainedSource {
    fn from((config, weights): (C, W)) -> Self {
        PretrainedSource::Files {
            config: config.as_ref().to_path_buf(),
            weights: weights.as_ref().to_path_buf(),
        }
    }
}

/// diffusers' `UNet3DConditionModel` (ModelScope text-to-video, ZeroScope).
///
/// Field names are the checkpoint keys; `time_proj` has no weights and is
/// [`TimestepProjection::unet`]. Build with [`UNet3DConditionModel::new`] (random weights) or
/// [`UNet3DConditionModel::from_pretrained`]; run with [`UNet3DConditionModel::forward`] or as
/// a [`Denoiser`].
#[derive(Module, Debug)]
pub struct UNet3DConditionModel {
    /// 3×3 input convolution `in_channels → block_out_channels[0]`.
    pub conv_in: Conv2d,
    /// Timestep MLP `block_out_channels[0] → 4·block_out_channels[0]`.
    pub time_embedding: TimestepEmbedding,
    /// Temporal transformer after `conv_in`: 8 heads × `attention_head_dim`.
    pub transformer_in: TransformerTemporalModel,
    /// Down blocks.
    pub down_blocks: Vec<DownBlock3D>,
    /// Mid block.
    pub mid_block: UNetMidBlock3DCrossAttn,
    /// Up blocks.
    pub up_blocks: Vec<UpBlock3D>,
    /// Output GroupNorm (followed by SiLU).
    pub conv_norm_out: GroupNorm,
    /// 3×3 output convolution `block_out_channels[0] → out_channels`.
    pub conv_out: Conv2d,
    /// The configuration the model was built from.
    #[module(skip)]
    pub config: UNet3DConditionModelConfig,
    /// What the model predicts (set from the scheduler / pipeline config; default epsilon,
    /// as ModelScope; ZeroScope v2 XL-style fine-tunes may use `v_prediction`).
    #[module(skip)]
    pub prediction_type: PredictionType,
    /// Chunk sizes of chunked inference (none by default).
    #[module(skip)]
    pub chunking: Chunking,
}

impl UNet3DConditionModel {
    /// Builds the model with randomly initialised weights.
    ///
    /// # Errors
    /// The errors of [`UNet3DConditionModelConfig::validate`].
    pub fn new(config: &UNet3DConditionModelConfig, device: &Device) -> Result<Self> {
        config.validate()?;
        let c0 = config.block_out_channels[0];
        let groups = config.groups()?;
        let conv3 = |i, o| {
            Conv2dConfig::new([i, o], [3, 3])
                .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
                .init(device)
        };
        Ok(Self {
            conv_in: conv3(config.in_channels, c0),
            time_embedding: TimestepEmbeddingConfig::new(c0, config.time_embed_dim())
                .try_init(device)?,
            transformer_in: TransformerTemporalModelConfig::new(
                c0,
                TRANSFORMER_IN_HEADS,
                config.head_dim()?,
            )
            .with_norm_num_groups(groups)
            .try_init(device)?,
            down_blocks: (0..config.num_blocks())
                .map(|i| DownBlock3D::new(config, i, device))
                .collect::<Result<_>>()?,
            mid_block: UNetMidBlock3DCrossAttn::new(config, device)?,
            up_blocks: (0..config.num_blocks())
                .map(|i| UpBlock3D::new(config, i, device))
                .collect::<Result<_>>()?,
            conv_norm_out: GroupNormConfig::new(groups, c0)
                .with_epsilon(config.norm_eps)
                .init(device),
            conv_out: conv3(c0, config.out_channels),
            config: config.clone(),
            prediction_type: PredictionType::Epsilon,
            chunking: Chunking::none(),
        })
    }

    /// Loads a diffusers checkpoint: `config.json` and a safetensors file (`f32`, `f16` or
    /// `bf16`, cast to `options.dtype`, which becomes the compute dtype: [`forward`](Self::forward)
    /// casts its inputs to it and the output back to the sample's dtype).
    ///
    /// `source` is a model directory (`"…/unet"`, or a pipeline directory with a `unet/`
    /// folder) or a `(config_path, weights_path)` pair.
    ///
    /// ```no_run
    /// use burn::tensor::Device;
    /// use vdm_models::loading::LoadOptions;
    /// use vdm_models::unet3d::UNet3DConditionModel;
    ///
    /// let device = Device::flex();
    /// let unet = UNet3DConditionModel::from_pretrained(
    ///     "zeroscope_v2_576w/unet",
    ///     &LoadOptions::new(),
    ///     &device,
    /// )?;
    /// # Ok::<(), vdm_core::Error>(())
    /// ```
    ///
    /// # Errors
    /// - [`Error::File`]: unreadable, truncated or corrupt files;
    /// - config errors of [`UNet3DConditionModelConfig::validate`];
    /// - [`Error::Weights`]: missing, unexpected or mis-shaped tensors (unless
    ///   `options.allow_partial`), every one listed by its checkpoint key.
    pub fn from_pretrained(
        source: impl Into<PretrainedSource>,
        options: &LoadOptions,
        device: &Device,
    ) -> Result<Self> {
        let (config_path, weights_path) = source.into().resolve()?;
        let config = UNet3DConditionModelConfig::from_file(&config_path)?;
        let (model, _report) = Self::new(&config, device)?.load_weights(weights_path, options)?;
        Ok(model)
    }

    /// Loads a diffusers safetensors state dict into this model (with the crate's key table
    /// [`DIFFUSERS_KEY_REMAP`] and enum variants skipped), returning the load report.
    ///
    /// # Errors
    /// As [`load_safetensors`].
    pub fn load_weights(
        self,
        path: impl AsRef<Path>,
        options: &LoadOptions,
    ) -> Result<(Self, LoadReport)> {
        let options = options.clone().skip_enum_variants(SKIP_ENUM_VARIANTS);
        load_safetensors(self, path, &KeyRemap::table(DIFFUSERS_KEY_REMAP), &options)
    }

    /// Sets the prediction type (from the scheduler or pipeline configuration).
    pub fn with_prediction_type(mut self, prediction_type: PredictionType) -> Self {
        self.prediction_type = prediction_type;
        self
    }

    /// Sets the chunk sizes of chunked inference.
    pub fn with_chunking(mut self, chunking: Chunking) -> Self {
        self.chunking = chunking;
        self
    }

    /// The float dtype of the weights (the compute dtype).
    pub fn dtype(&self) -> DType {
        self.conv_in.weight.val().dtype()
    }

    /// Runs the UNet (diffusers `UNet3DConditionModel.forward(sample, timestep,
    /// encoder_hidden_states)`).
    ///
    /// - `timesteps`: shared, one per video, or one per frame (each frame then gets the time
    ///   embedding of its own timestep);
    /// - `conditioning`: `[B, S, cross_attention_dim]` shared by the frames (diffusers'
    ///   `repeat_interleave`) or `[B, F, S, cross_attention_dim]` per frame; required;
    /// - `hook`: the temporal strategy every temporal transformer runs through.
    ///
    /// Inputs are cast to the weights' dtype and the output back to the sample's.
    ///
    /// # Shapes
    /// - `sample`: `[B, in_channels, F, H, W]` (any `H`, `W`: odd sizes are upsampled back
    ///   to the skip sizes, as diffusers' `forward_upsample_size`)
    /// - output: `[B, out_channels, F, H, W]`
    ///
    /// # Errors
    /// [`Error::Shape`] for mis-shaped inputs, [`Error::InvalidConfig`] for missing
    /// conditioning or non-finite timesteps, and whatever the hook returns.
    pub fn forward(
        &self,
        sample: Tensor<5>,
        timesteps: &Timesteps,
        conditioning: &Conditioning,
        hook: &dyn TemporalHook,
    ) -> Result<Tensor<5>> {
        self.run(sample, timesteps, conditioning, Routing::plain(hook), None)
    }

    /// [`forward`](Self::forward), reporting intermediate activations to `tap` by module path
    /// (for debugging and parity checks against diffusers' forward hooks).
    ///
    /// Reported names, in order: `time_proj` and `time_embedding` (`[U, C, 1, 1]`, one row per
    /// distinct timestep in order of first appearance), then in `[B·F, C, H, W]`: `conv_in`,
    /// `transformer_in`, per down block `down_blocks.i.{resnets,temp_convs,attentions,
    /// temp_attentions}.j`, `down_blocks.i.downsamplers.0`, `down_blocks.i` (block output),
    /// the same for `mid_block.*` and `up_blocks.i.*` (`upsamplers.0`), `conv_norm_out`
    /// (after the GroupNorm), `conv_act` (after the SiLU) and `conv_out`.
    ///
    /// # Errors
    /// As [`forward`](Self::forward).
    pub fn forward_with_taps(
        &self,
        sample: Tensor<5>,
        timesteps: &Timesteps,
        conditioning: &Conditioning,
        hook: &dyn TemporalHook,
        tap: Tap<'_>,
    ) -> Result<Tensor<5>> {
        self.run(
            sample,
            timesteps,
            conditioning,
            Routing::plain(hook),
            Some(tap),
        )
    }

    /// The time embedding per frame `[B·F, time_embed_dim]`; each distinct timestep is
    /// projected and embedded once.
    fn time_embedding_per_frame(
        &self,
        values: &[f64],
        pass_tap: &mut Option<Tap<'_>>,
        device: &Device,
        dtype: DType,
    ) -> Result<Tensor<2>> {
        let mut distinct: Vec<f64> = Vec::new();
        let index: Vec<i64> = values
            .iter()
            .map(|&t| {
                let i = match distinct.iter().position(|&d| d == t) {
                    Some(i) => i,
                    None => {
                        distinct.push(t);
                        distinct.len() - 1
                    }
                };
                i as i64
            })
            .collect();
        let c0 = self.config.block_out_channels[0];
        let proj = TimestepProjection::unet(c0)
            .embed(&distinct, device)?
            .cast(FloatDType::from(dtype));
        let emb = self.time_embedding.forward(proj.clone())?;
        if let Some(tap) = pass_tap.as_mut() {
            let [u, c] = proj.dims();
            tap("time_proj", proj.reshape([u, c, 1, 1]));
            let [u, c] = emb.dims();
            tap("time_embedding", emb.clone().reshape([u, c, 1, 1]));
        }
        let [u, c] = emb.dims();
        Ok(if u == 1 {
            emb.expand([values.len(), c])
        } else {
            let idx = Tensor::<1, Int>::from_data(TensorData::new(index, [values.len()]), device);
            emb.select(0, idx)
        })
    }

    fn run(
        &self,
        sample: Tensor<5>,
        timesteps: &Timesteps,
        conditioning: &Conditioning,
        routing: Routing<'_>,
        mut tap: Option<Tap<'_>>,
    ) -> Result<Tensor<5>> {
        let Routing {
            block_conditioning,
            hook,
            cross_frame,
        } = routing;
        let shape = VideoShape::of("sample", &sample)?;
        shape.expect_channels("sample", self.config.in_channels)?;
        let VideoShape {
            batch: b,
            frames: f,
            height: h,
            width: w,
            ..
        } = shape;
        let device = sample.device();
        let dtype = self.dtype();
        let float = FloatDType::from(dtype);
        let out_dtype = FloatDType::from(sample.dtype());

        let values = timesteps.per_frame(b, f)?;
        let temb = self.time_embedding_per_frame(&values, &mut tap, &device, dtype)?;
        let d = self.config.cross_attention_dim;
        // Text context per frame `[B·F, S, D]`, plus `[B, S, D]` when the frames of each video
        // share it (the spatial transformers then project keys and values once per video).
        let text_context = |conditioning: &Conditioning| -> Result<(Tensor<3>, Option<Tensor<3>>)> {
            let context = conditioning.per_frame(b, f)?.ok_or_else(|| {
                Error::invalid(
                    "encoder_hidden_states",
                    "UNet3DConditionModel needs text conditioning (pass an empty-prompt \
                     embedding for unconditional predictions)",
                )
            })?;
            if context.dims()[2] != d {
                return Err(Error::shape(
                    "encoder_hidden_states",
                    format!("[B, S, {d}] or [B, F, S, {d}] (cross_attention_dim = {d})"),
                    &context.dims(),
                ));
            }
            let shared = match conditioning {
                Conditioning::Shared(c) => Some(c.clone().cast(float)),
                _ => None,
            };
            Ok((context.cast(float), shared))
        };
        let context = text_context(conditioning)?;
        // Motion injection: some blocks may see another conditioning.
        let routed = match block_conditioning {
            Some(o) => Some((text_context(&o.conditioning)?, o.blocks.clone())),
            None => None,
        };
        let context_for = |kind: BlockKind| match &routed {
            Some((c, blocks)) if blocks.contains(&kind) => c.clone(),
            _ => context.clone(),
        };

        let (encoder_context, encoder_shared) = context_for(BlockKind::Encoder);
        let mut pass = Pass {
            frames: f,
            temb,
            context: encoder_context,
            shared_context: encoder_shared,
            hook,
            key_frames: key_frame_plan(cross_frame, f)?,
            chunking: self.chunking,
            tap,
        };
        let chunk = self.chunking.frames;

        // 2. pre-process
        let x = frames_to_batch(sample.cast(float));
        let x = map_chunks(x, chunk, |x, _| Ok(conv2d(&self.conv_in, x)))?;
        pass.emit(|| "conv_in".into(), &x);
        let x = pass.temporal(&self.transformer_in, x, "transformer_in")?;
        pass.emit(|| "transformer_in".into(), &x);

        // 3. down
        let mut residuals = vec![x.clone()];
        let mut x = x;
        for (i, block) in self.down_blocks.iter().enumerate() {
            x = block.forward(x, &mut pass, &format!("down_blocks.{i}"), &mut residuals)?;
        }

        // 4. mid
        (pass.context, pass.shared_context) = context_for(BlockKind::Middle);
        x = self.mid_block.forward(x, &mut pass)?;
        (pass.context, pass.shared_context) = context_for(BlockKind::Decoder);

        // 5. up: skips are popped from the end; odd latent sizes force the upsampler output
        // to the size of the next skip (diffusers' `forward_upsample_size`).
        let factor = 1usize
            << self
                .up_blocks
                .iter()
                .filter(|u| !u.upsamplers.is_empty())
                .count();
        let forward_upsample_size = !h.is_multiple_of(factor) || !w.is_multiple_of(factor);
        let mut upsample_size = None;
        let n_up = self.up_blocks.len();
        for (i, block) in self.up_blocks.iter().enumerate() {
            let take = block.resnets.len();
            if residuals.len() < take {
                return Err(Error::invalid(
                    "up_blocks",
                    format!(
                        "up_blocks.{i} needs {take} skip tensors, {} left",
                        residuals.len()
                    ),
                ));
            }
            let skips = residuals.split_off(residuals.len() - take);
            if i + 1 < n_up
                && forward_upsample_size
                && let Some(last) = residuals.last()
            {
                let [_, _, sh, sw] = last.dims();
                upsample_size = Some([sh, sw]);
            }
            x = block.forward(
                x,
                skips,
                upsample_size,
                &mut pass,
                &format!("up_blocks.{i}"),
            )?;
        }

        // 6. post-process (GroupNorm and SiLU fused on the flex backend unless observed)
        let x = if pass.tap.is_none() && cpu::enabled(&x.device(), x.dtype()) {
            map_chunks(x, chunk, |x, _| {
                Ok(cpu::group_norm(&self.conv_norm_out, x, 1, true))
            })?
        } else {
            let x = map_chunks(x, chunk, |x, _| Ok(self.conv_norm_out.forward(x)))?;
            pass.emit(|| "conv_norm_out".into(), &x);
            let x = silu(x);
            pass.emit(|| "conv_act".into(), &x);
            x
        };
        let x = map_chunks(x, chunk, |x, _| Ok(conv2d(&self.conv_out, x)))?;
        pass.emit(|| "conv_out".into(), &x);
        Ok(batch_to_frames(x, f).cast(out_dtype))
    }
}

/// Where a forward pass routes its conditioning and frames: per-block conditioning, the
/// temporal hook and the cross-frame hook.
struct Routing<'a> {
    block_conditioning: Option<&'a BlockConditioning>,
    hook: &'a dyn TemporalHook,
    cross_frame: &'a dyn CrossFrameHook,
}

impl<'a> Routing<'a> {
    /// `hook` for the temporal layers, nothing else.
    fn plain(hook: &'a dyn TemporalHook) -> Self {
        Self {
            block_conditioning: None,
            hook,
            cross_frame: &OwnFrame,
        }
    }
}

impl Denoiser for UNet3DConditionModel {
    fn prediction_type(&self) -> PredictionType {
        self.prediction_type
    }

    /// Runs the model; honours [`DenoiserInput::block_conditioning`] (motion injection) and
    /// [`DenoiserInput::cross_frame`].
    fn predict(&self, input: DenoiserInput<'_>) -> Result<Tensor<5>> {
        self.run(
            input.latents,
            &input.timesteps,
            &input.conditioning,
            Routing {
                block_conditioning: input.block_conditioning.as_ref(),
                hook: input.temporal,
                cross_frame: input.cross_frame,
            },
            None,
        )
    }
}
