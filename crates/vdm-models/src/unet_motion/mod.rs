//! AnimateDiff's `UNetMotionModel`: an SD 1.x `UNet2DConditionModel` with a `MotionAdapter`'s
//! motion modules after every spatial layer, mirroring diffusers'
//! `models/unets/unet_motion_model.py` (`UNetMotionModel`, `MotionAdapter`,
//! `AnimateDiffTransformer3D`, the `*Motion` blocks, `UNetMotionModel.from_unet2d`).
//!
//! # Loading
//!
//! The model loads diffusers checkpoints unchanged, in `f32`, `f16` or `bf16` (cast to
//! [`LoadOptions::dtype`]; [`UNetMotionModel::load_options`] gives the device's compute dtype):
//!
//! - a merged `UNetMotionModel` (its `config.json` + `diffusion_pytorch_model.safetensors`):
//!   [`UNetMotionConfig::from_json_file`] and [`UNetMotionModel::load`];
//! - an SD 1.x UNet plus a motion adapter (`unet/` of an SD 1.5 repo and e.g.
//!   `guoyww/animatediff-motion-adapter-v1-5-2`): [`UNetMotionConfig::from_unet2d`] and
//!   [`UNetMotionModel::load_unet2d_and_adapter`]. The adapter's keys are exactly the merged
//!   model's `*.motion_modules.*` keys, so both files load into the merged model and must
//!   together cover every parameter.
//!
//! The sinusoidal `pos_embed.pe` tables are saved in diffusers checkpoints and loaded like
//! weights; a checkpoint without them is accepted (the model builds the same table).
//!
//! # Running
//!
//! [`UNetMotionModel`] implements [`Denoiser`]: latents `[B, C, F, H, W]`, one timestep per
//! video or per frame ([`Timesteps`]), text states shared by the frames of a video
//! (`[B, S, D]`, repeated per frame inside; diffusers' own `forward` wants them already
//! repeated, `[B·F, S, D]`) or per frame (`[B, F, S, D]`, [`Conditioning::PerFrame`]). Every
//! motion module hands its attention stages to the input's [`vdm_core::TemporalHook`] under its module
//! path (`down_blocks.0.motion_modules.0`, `mid_block.motion_modules.0`,
//! `up_blocks.1.motion_modules.2`, …) with the positional-table length
//! (`motion_max_seq_length`) in the [`vdm_core::temporal::TemporalSite`]: with
//! [`vdm_core::AllFrames`] a video longer than the table is an [`Error::InvalidConfig`] naming
//! `num_frames`; a windowed hook (FreeNoise) runs it.
//!
//! [`Chunking`] bounds peak memory: per-frame layers run on chunks of frames, motion modules
//! on chunks of spatial positions; the result equals the unchunked one up to float rounding.
//!
//! ```
//! use burn::tensor::{Device, Tensor};
//! use vdm_core::{Conditioning, Denoiser, DenoiserInput, Timesteps};
//! use vdm_models::unet_motion::{PerBlock, UNetMotionConfig, UNetMotionModel};
//!
//! let device = Device::flex();
//! // A tiny randomly initialised model.
//! let config = UNetMotionConfig {
//!     block_out_channels: vec![16, 32],
//!     down_block_types: vec!["CrossAttnDownBlockMotion".into(), "DownBlockMotion".into()],
//!     up_block_types: vec!["UpBlockMotion".into(), "CrossAttnUpBlockMotion".into()],
//!     layers_per_block: PerBlock::Same(1),
//!     norm_num_groups: Some(4),
//!     cross_attention_dim: PerBlock::Same(8),
//!     num_attention_heads: PerBlock::Same(2),
//!     motion_num_attention_heads: PerBlock::Same(2),
//!     motion_max_seq_length: 8,
//!     ..Default::default()
//! };
//! let model = UNetMotionModel::new(&config, &device)?;
//! let latents = Tensor::<5>::zeros([1, 4, 3, 8, 8], &device);
//! let text = Tensor::<3>::zeros([1, 5, 8], &device);
//! let input = DenoiserInput::new(latents, Timesteps::Shared(999.0), Conditioning::Shared(text));
//! assert_eq!(model.predict(input)?.dims(), [1, 4, 3, 8, 8]);
//! # Ok::<(), vdm_core::Error>(())
//! ```

mod blocks;
mod config;

use std::collections::BTreeSet;
use std::path::Path;

use burn::module::Module;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{GroupNorm, GroupNormConfig, PaddingConfig2d};
use burn::tensor::{Device, Tensor};
use vdm_core::layout::{VideoShape, batch_to_frames, frames_to_batch};
use vdm_core::{
    BlockKind, Conditioning, Denoiser, DenoiserInput, Error, PredictionType, Result, Timesteps,
};

pub use blocks::{BlockContext, DownBlockMotion, MidBlockMotion, Trace, UpBlockMotion};
pub use config::{MotionAdapterConfig, PerBlock, UNet2DConditionConfig, UNetMotionConfig};

use crate::chunking::{Chunking, map_chunks};
use crate::embeddings::{TimestepEmbedding, TimestepEmbeddingConfig, TimestepProjection};
use crate::keymap::{DIFFUSERS_KEY_REMAP, SKIP_ENUM_VARIANTS};
use crate::loading::{KeyRemap, LoadOptions, LoadReport, load_safetensors, load_safetensors_bytes};
use crate::resnet::{Downsample2DConfig, ResnetBlock2DConfig, Upsample2DConfig, conv2d, norm_silu};
use crate::temporal::TransformerTemporalModelConfig;
use crate::transformer_2d::Transformer2DModelConfig;

/// The checkpoint key of every motion-module parameter contains this.
const MOTION_KEY: &str = ".motion_modules.";

/// Parameters a checkpoint may omit: the sinusoidal tables the model builds itself.
fn is_buffer(param: &str) -> bool {
    param.ends_with("pos_embed.pe")
}

/// AnimateDiff's video UNet (diffusers `UNetMotionModel`).
///
/// Fields are named after the checkpoint keys (`conv_in`, `time_embedding`, `down_blocks.N`,
/// `mid_block`, `up_blocks.N`, `conv_norm_out`, `conv_out`; diffusers' `time_proj` and
/// `conv_act` hold no weights).
#[derive(Module, Debug)]
pub struct UNetMotionModel {
    /// 3×3 input convolution `in_channels → block_out_channels[0]`.
    pub conv_in: Conv2d,
    /// Timestep MLP (`linear_1`, `linear_2`).
    pub time_embedding: TimestepEmbedding,
    /// Down path.
    pub down_blocks: Vec<DownBlockMotion>,
    /// Bottleneck.
    pub mid_block: MidBlockMotion,
    /// Up path.
    pub up_blocks: Vec<UpBlockMotion>,
    /// Output GroupNorm (followed by SiLU).
    pub conv_norm_out: GroupNorm,
    /// 3×3 output convolution `block_out_channels[0] → out_channels`.
    pub conv_out: Conv2d,
    /// The configuration the model was built from.
    #[module(skip)]
    pub config: UNetMotionConfig,
    /// Chunk sizes of chunked inference (none by default).
    #[module(skip)]
    pub chunking: Chunking,
    /// What the model predicts (`epsilon` for every published AnimateDiff model; diffusers
    /// keeps it in the scheduler config).
    #[module(skip)]
    pub prediction_type: PredictionType,
}

/// What [`UNetMotionModel::load_unet2d_and_adapter`] loaded from each file.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SplitLoadReport {
    /// The UNet2DConditionModel file (everything but the motion modules).
    pub unet2d: LoadReport,
    /// The MotionAdapter file (the motion modules).
    pub adapter: LoadReport,
    /// Model parameters neither file provided (they keep their initial values; only
    /// non-empty with [`LoadOptions::allow_partial`]). Sinusoidal `pos_embed.pe` tables are
    /// not listed: the model builds them itself.
    pub missing: Vec<String>,
}

impl SplitLoadReport {
    /// Whether the two files together covered every parameter and every file tensor was used.
    pub fn is_complete(&self) -> bool {
        self.missing.is_empty()
            && self.unet2d.unexpected.is_empty()
            && self.unet2d.mismatched.is_empty()
            && self.adapter.unexpected.is_empty()
            && self.adapter.mismatched.is_empty()
    }
}

/// Where a checkpoint comes from.
#[derive(Clone, Copy)]
enum Source<'a> {
    File(&'a Path),
    Bytes(&'a [u8]),
}

impl UNetMotionModel {
    /// Builds a randomly initialised model (validating the configuration).
    pub fn new(config: &UNetMotionConfig, device: &Device) -> Result<Self> {
        let r = config.resolve()?;
        let bo = &config.block_out_channels;
        let n = bo.len();
        let temb = config.time_embed_dim();
        let resnet = |cin: usize, cout: usize, scale: f64| {
            ResnetBlock2DConfig::new(cin)
                .with_out_channels(Some(cout))
                .with_temb_channels(Some(temb))
                .with_groups(r.groups)
                .with_eps(config.norm_eps)
                .with_output_scale_factor(scale)
                .try_init(device)
        };
        // UNet2DConditionModel: `heads` heads of `C / heads` channels, 1×1-conv projections.
        let spatial = |c: usize, heads: usize, cross: usize, layers: usize| {
            Transformer2DModelConfig::new(c, heads, c / heads)
                .with_num_layers(layers)
                .with_norm_num_groups(r.groups)
                .with_cross_attention_dim(Some(cross))
                .with_use_linear_projection(config.use_linear_projection)
                .try_init(device)
        };
        // AnimateDiffTransformer3D: GroupNorm with the UNet's groups (diffusers passes
        // `resnet_groups`), `heads` × `C / heads`, sinusoidal positions.
        let motion = |c: usize, heads: usize, layers: usize| {
            TransformerTemporalModelConfig::new(c, heads, c / heads)
                .with_num_layers(layers)
                .with_norm_num_groups(r.groups)
                .with_max_positions(Some(config.motion_max_seq_length))
                .with_norm(config.temporal_norm)
                .try_init(device)
        };

        let mut down_blocks = Vec::with_capacity(n);
        for i in 0..n {
            let cin = if i == 0 { bo[0] } else { bo[i - 1] };
            let c = bo[i];
            let layers = r.layers[i];
            down_blocks.push(DownBlockMotion {
                resnets: (0..layers)
                    .map(|j| resnet(if j == 0 { cin } else { c }, c, 1.0))
                    .collect::<Result<_>>()?,
                attentions: if r.down_cross[i] {
                    (0..layers)
                        .map(|_| spatial(c, r.heads[i], r.cross_dim[i], r.tlayers[i]))
                        .collect::<Result<_>>()?
                } else {
                    Vec::new()
                },
                motion_modules: (0..layers)
                    .map(|_| motion(c, r.motion_heads[i], r.temporal_layers[i]))
                    .collect::<Result<_>>()?,
                downsamplers: if i + 1 < n {
                    vec![
                        Downsample2DConfig::new(c)
                            .with_padding(config.downsample_padding)
                            .try_init(device)?,
                    ]
                } else {
                    Vec::new()
                },
            });
        }

        let c = bo[n - 1];
        let m = config.mid_block_layers;
        let mid_block = MidBlockMotion {
            resnets: (0..=m)
                .map(|_| resnet(c, c, config.mid_block_scale_factor))
                .collect::<Result<_>>()?,
            attentions: (0..m)
                .map(|i| spatial(c, r.heads[n - 1], r.cross_dim[n - 1], r.mid_tlayers[i]))
                .collect::<Result<_>>()?,
            motion_modules: if config.use_motion_mid_block {
                (0..m)
                    .map(|i| motion(c, r.motion_heads[n - 1], r.mid_temporal_layers[i]))
                    .collect::<Result<_>>()?
            } else {
                Vec::new()
            },
        };

        let rev = |v: &[usize]| v.iter().rev().copied().collect::<Vec<_>>();
        let (rbo, rlayers, rheads, rcross, rmheads) = (
            rev(bo),
            rev(&r.layers),
            rev(&r.heads),
            rev(&r.cross_dim),
            rev(&r.motion_heads),
        );
        let mut up_blocks = Vec::with_capacity(n);
        let mut prev = rbo[0];
        for i in 0..n {
            let out = rbo[i];
            let cin = rbo[(i + 1).min(n - 1)];
            let layers = rlayers[i] + 1;
            up_blocks.push(UpBlockMotion {
                resnets: (0..layers)
                    .map(|j| {
                        let skip = if j + 1 == layers { cin } else { out };
                        let rin = if j == 0 { prev } else { out };
                        resnet(rin + skip, out, 1.0)
                    })
                    .collect::<Result<_>>()?,
                attentions: if r.up_cross[i] {
                    (0..layers)
                        .map(|_| spatial(out, rheads[i], rcross[i], r.rev_tlayers[i]))
                        .collect::<Result<_>>()?
                } else {
                    Vec::new()
                },
                motion_modules: (0..layers)
                    .map(|_| motion(out, rmheads[i], r.rev_temporal_layers[i]))
                    .collect::<Result<_>>()?,
                upsamplers: if i + 1 < n {
                    vec![Upsample2DConfig::new(out).try_init(device)?]
                } else {
                    Vec::new()
                },
            });
            prev = out;
        }

        let conv3 = |i: usize, o: usize| {
            Conv2dConfig::new([i, o], [3, 3])
                .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
                .init(device)
        };
        Ok(Self {
            conv_in: conv3(config.in_channels, bo[0]),
            time_embedding: TimestepEmbeddingConfig::new(bo[0], temb).try_init(device)?,
            down_blocks,
            mid_block,
            up_blocks,
            conv_norm_out: GroupNormConfig::new(r.groups, bo[0])
                .with_epsilon(config.norm_eps)
                .init(device),
            conv_out: conv3(bo[0], config.out_channels),
            config: config.clone(),
            chunking: Chunking::none(),
            prediction_type: PredictionType::Epsilon,
        })
    }

    /// Sets the chunk sizes of chunked inference.
    pub fn with_chunking(mut self, chunking: Chunking) -> Self {
        self.chunking = chunking;
        self
    }

    /// Sets what the model predicts (default `epsilon`).
    pub fn with_prediction_type(mut self, prediction_type: PredictionType) -> Self {
        self.prediction_type = prediction_type;
        self
    }

    /// Module paths of every motion module, in execution order (the layer names the
    /// [`vdm_core::TemporalHook`] sees).
    pub fn motion_module_paths(&self) -> Vec<String> {
        let mut paths = Vec::new();
        for (i, b) in self.down_blocks.iter().enumerate() {
            paths.extend(
                (0..b.motion_modules.len()).map(|j| format!("down_blocks.{i}.motion_modules.{j}")),
            );
        }
        paths.extend(
            (0..self.mid_block.motion_modules.len())
                .map(|j| format!("mid_block.motion_modules.{j}")),
        );
        for (i, b) in self.up_blocks.iter().enumerate() {
            paths.extend(
                (0..b.motion_modules.len()).map(|j| format!("up_blocks.{i}.motion_modules.{j}")),
            );
        }
        paths
    }

    // -----------------------------------------------------------------------------------------
    // Loading
    // -----------------------------------------------------------------------------------------

    /// The key renames diffusers checkpoints need ([`crate::keymap::DIFFUSERS_KEY_REMAP`]).
    pub fn key_remaps() -> Vec<KeyRemap> {
        KeyRemap::table(DIFFUSERS_KEY_REMAP)
    }

    /// Load options casting to `device`'s compute dtype, strict.
    pub fn load_options(device: &Device) -> LoadOptions {
        LoadOptions::new().dtype(device.settings().float_dtype)
    }

    /// Builds the model and loads a merged `UNetMotionModel` checkpoint
    /// (`diffusion_pytorch_model.safetensors`, any float dtype, cast to `options.dtype`).
    ///
    /// # Errors
    /// [`Error::Weights`] listing every missing, unexpected and mis-shaped tensor (unless
    /// `options.allow_partial`; missing `pos_embed.pe` tables are always accepted),
    /// [`Error::File`] for unreadable files, configuration errors from
    /// [`UNetMotionConfig::validate`].
    pub fn load(
        config: &UNetMotionConfig,
        weights: impl AsRef<Path>,
        device: &Device,
        options: &LoadOptions,
    ) -> Result<(Self, LoadReport)> {
        Self::load_merged(config, Source::File(weights.as_ref()), device, options)
    }

    /// [`UNetMotionModel::load`] from safetensors bytes in memory.
    pub fn load_bytes(
        config: &UNetMotionConfig,
        weights: &[u8],
        device: &Device,
        options: &LoadOptions,
    ) -> Result<(Self, LoadReport)> {
        Self::load_merged(config, Source::Bytes(weights), device, options)
    }

    /// Builds the merged model and loads an SD 1.x `UNet2DConditionModel` checkpoint and a
    /// `MotionAdapter` checkpoint into it (diffusers `UNetMotionModel.from_unet2d(unet,
    /// motion_adapter)`); `config` is usually [`UNetMotionConfig::from_unet2d`].
    ///
    /// Each file may only cover its part; together they must cover every parameter, and
    /// every tensor of either file must be used (unless `options.allow_partial`). The
    /// adapter file may only hold `*.motion_modules.*` keys.
    ///
    /// # Errors
    /// As [`UNetMotionModel::load`]; [`Error::Weights`] names what neither file provided.
    pub fn load_unet2d_and_adapter(
        config: &UNetMotionConfig,
        unet2d_weights: impl AsRef<Path>,
        adapter_weights: impl AsRef<Path>,
        device: &Device,
        options: &LoadOptions,
    ) -> Result<(Self, SplitLoadReport)> {
        Self::load_split(
            config,
            Source::File(unet2d_weights.as_ref()),
            Source::File(adapter_weights.as_ref()),
            device,
            options,
        )
    }

    /// [`UNetMotionModel::load_unet2d_and_adapter`] from safetensors bytes in memory.
    pub fn load_unet2d_and_adapter_bytes(
        config: &UNetMotionConfig,
        unet2d_weights: &[u8],
        adapter_weights: &[u8],
        device: &Device,
        options: &LoadOptions,
    ) -> Result<(Self, SplitLoadReport)> {
        Self::load_split(
            config,
            Source::Bytes(unet2d_weights),
            Source::Bytes(adapter_weights),
            device,
            options,
        )
    }

    /// Loads one file into `self` with a partial load, leaving the checks to the caller.
    fn load_part(self, source: Source<'_>, options: &LoadOptions) -> Result<(Self, LoadReport)> {
        let options = options
            .clone()
            .allow_partial(true)
            .skip_enum_variants(SKIP_ENUM_VARIANTS);
        let remaps = Self::key_remaps();
        match source {
            Source::File(path) => load_safetensors(self, path, &remaps, &options),
            Source::Bytes(bytes) => load_safetensors_bytes(self, bytes, &remaps, &options),
        }
    }

    fn load_merged(
        config: &UNetMotionConfig,
        source: Source<'_>,
        device: &Device,
        options: &LoadOptions,
    ) -> Result<(Self, LoadReport)> {
        let (model, report) = Self::new(config, device)?.load_part(source, options)?;
        let missing: Vec<String> = report
            .missing
            .iter()
            .filter(|p| !is_buffer(p))
            .cloned()
            .collect();
        if !options.allow_partial
            && (!missing.is_empty()
                || !report.unexpected.is_empty()
                || !report.mismatched.is_empty())
        {
            return Err(Error::Weights {
                missing,
                unexpected: report.unexpected.clone(),
                mismatched: report
                    .mismatched
                    .iter()
                    .map(|m| (m.key.clone(), m.expected.clone(), m.found.clone()))
                    .collect(),
            });
        }
        Ok((model, report))
    }

    fn load_split(
        config: &UNetMotionConfig,
        unet2d: Source<'_>,
        adapter: Source<'_>,
        device: &Device,
        options: &LoadOptions,
    ) -> Result<(Self, SplitLoadReport)> {
        let model = Self::new(config, device)?;
        let (model, unet_report) = model.load_part(unet2d, options)?;
        let (model, adapter_report) = model.load_part(adapter, options)?;

        let all: BTreeSet<&str> = unet_report
            .applied
            .iter()
            .chain(&unet_report.missing)
            .map(String::as_str)
            .chain(unet_report.mismatched.iter().map(|m| m.param.as_str()))
            .collect();
        let loaded: BTreeSet<&str> = unet_report
            .applied
            .iter()
            .chain(&adapter_report.applied)
            .map(String::as_str)
            .collect();
        let missing: Vec<String> = all
            .difference(&loaded)
            .filter(|p| !is_buffer(p))
            .map(|p| p.to_string())
            .collect();
        // Non-motion parameters the adapter file would have overwritten.
        let stray: Vec<String> = adapter_report
            .applied
            .iter()
            .filter(|p| !p.contains(MOTION_KEY))
            .cloned()
            .collect();
        let report = SplitLoadReport {
            unet2d: unet_report,
            adapter: adapter_report,
            missing,
        };
        if !options.allow_partial && (!report.is_complete() || !stray.is_empty()) {
            let mut unexpected = report.unet2d.unexpected.clone();
            unexpected.extend(
                report
                    .adapter
                    .unexpected
                    .iter()
                    .map(|k| format!("{k} (motion adapter file)")),
            );
            unexpected.extend(
                stray
                    .into_iter()
                    .map(|k| format!("{k} (motion adapter file; not a motion-module key)")),
            );
            let mismatched = report
                .unet2d
                .mismatched
                .iter()
                .chain(&report.adapter.mismatched)
                .map(|m| (m.key.clone(), m.expected.clone(), m.found.clone()))
                .collect();
            return Err(Error::Weights {
                missing: report.missing.clone(),
                unexpected,
                mismatched,
            });
        }
        Ok((model, report))
    }

    // -----------------------------------------------------------------------------------------
    // Forward
    // -----------------------------------------------------------------------------------------

    /// The time embedding of every frame, `[B·F, 4·block_out_channels[0]]` (diffusers
    /// `time_embedding(time_proj(t))` repeated over frames; per-frame timesteps are embedded
    /// frame by frame).
    pub fn embed_timesteps(
        &self,
        timesteps: &Timesteps,
        batch: usize,
        frames: usize,
        device: &Device,
    ) -> Result<Tensor<2>> {
        let proj = TimestepProjection::unet(self.config.block_out_channels[0]);
        match timesteps {
            Timesteps::PerFrame { .. } => {
                let values = timesteps.per_frame(batch, frames)?;
                self.time_embedding.forward(proj.embed(&values, device)?)
            }
            _ => {
                let values = timesteps.per_item(batch)?;
                let emb = self.time_embedding.forward(proj.embed(&values, device)?)?;
                let d = emb.dims()[1];
                Ok(emb
                    .unsqueeze_dim::<3>(1)
                    .expand([batch, frames, d])
                    .reshape([batch * frames, d]))
            }
        }
    }

    /// Runs the model (what [`Denoiser::predict`] does).
    ///
    /// # Shapes
    /// - `input.latents`: `[B, in_channels, F, H, W]`
    /// - `input.conditioning`: `[B, S, cross_attention_dim]` or `[B, F, S, cross_attention_dim]`
    /// - output: `[B, out_channels, F, H, W]`
    pub fn forward(&self, input: DenoiserInput<'_>) -> Result<Tensor<5>> {
        self.forward_traced(input, &mut |_, _| {})
    }

    /// [`UNetMotionModel::forward`], handing every block-level activation to `trace` with its
    /// module path (`conv_in`, `down_blocks.0.resnets.0`, `down_blocks.0.attentions.0`,
    /// `down_blocks.0.motion_modules.0`, `down_blocks.0.downsamplers.0`, `down_blocks.0`, …,
    /// `mid_block`, `up_blocks.1`, `conv_out`), layout `[B·F, C, H, W]` as diffusers' module
    /// outputs.
    pub fn forward_traced(
        &self,
        input: DenoiserInput<'_>,
        trace: &mut Trace<'_>,
    ) -> Result<Tensor<5>> {
        let shape = input.shape()?;
        shape.expect_channels("latents", self.config.in_channels)?;
        for (field, size) in [
            ("chunking.frames", self.chunking.frames),
            ("chunking.positions", self.chunking.positions),
        ] {
            if size == Some(0) {
                return Err(Error::invalid(field, "chunk sizes must be > 0"));
            }
        }
        let VideoShape {
            batch: b,
            frames: f,
            height: h,
            width: w,
            ..
        } = shape;
        let device = input.latents.device();
        let temb = self.embed_timesteps(&input.timesteps, b, f, &device)?;
        let context = self.context(&input.conditioning, b, f)?;
        // Motion injection: some blocks may see another conditioning.
        let routed = match &input.block_conditioning {
            Some(o) => Some((self.context(&o.conditioning, b, f)?, o.blocks.clone())),
            None => None,
        };
        let context_for = |kind: BlockKind| match &routed {
            Some((c, blocks)) if blocks.contains(&kind) => c.clone(),
            _ => context.clone(),
        };
        let mut ctx = BlockContext {
            temb,
            encoder_hidden_states: context_for(BlockKind::Encoder),
            num_frames: f,
            hook: input.temporal,
            key_frames: vdm_core::cross_frame::key_frame_plan(input.cross_frame, f)?
                .map(std::sync::Arc::new),
            chunking: self.chunking,
        };
        let frames = self.chunking.frames;

        let x = map_chunks(frames_to_batch(input.latents), frames, |x, _| {
            Ok(conv2d(&self.conv_in, x))
        })?;
        trace("conv_in", &x);
        let mut skips = vec![x.clone()];
        let mut x = x;
        for (i, block) in self.down_blocks.iter().enumerate() {
            let path = format!("down_blocks.{i}");
            let (y, res) = block.forward(x, &ctx, &path, trace)?;
            trace(&path, &y);
            skips.extend(res);
            x = y;
        }
        ctx.encoder_hidden_states = context_for(BlockKind::Middle);
        x = self.mid_block.forward(x, &ctx, "mid_block", trace)?;
        ctx.encoder_hidden_states = context_for(BlockKind::Decoder);
        trace("mid_block", &x);

        // Latent sizes that are not multiples of the total upsampling factor need the
        // upsamplers' output size forced to the skip connection's (diffusers
        // `forward_upsample_size`).
        let n_up = self.up_blocks.len();
        let factor = 1usize << (n_up - 1);
        let forward_size = !h.is_multiple_of(factor) || !w.is_multiple_of(factor);
        for (i, block) in self.up_blocks.iter().enumerate() {
            let k = block.resnets.len();
            let upsample_size = if i + 1 < n_up && forward_size {
                skips.len().checked_sub(k + 1).map(|idx| {
                    let d = skips[idx].dims();
                    [d[2], d[3]]
                })
            } else {
                None
            };
            let path = format!("up_blocks.{i}");
            x = block.forward(x, &mut skips, upsample_size, &ctx, &path, trace)?;
            trace(&path, &x);
        }

        let x = map_chunks(x, frames, |x, _| {
            Ok(conv2d(&self.conv_out, norm_silu(&self.conv_norm_out, x)))
        })?;
        trace("conv_out", &x);
        Ok(batch_to_frames(x, f))
    }

    /// The text states per frame, checked against the model's cross-attention width.
    fn context(
        &self,
        conditioning: &Conditioning,
        batch: usize,
        frames: usize,
    ) -> Result<Option<Tensor<3>>> {
        let context = conditioning.per_frame(batch, frames)?;
        let widths: BTreeSet<usize> = self
            .down_blocks
            .iter()
            .flat_map(|b| &b.attentions)
            .chain(&self.mid_block.attentions)
            .chain(self.up_blocks.iter().flat_map(|b| &b.attentions))
            .flat_map(|a| &a.transformer_blocks)
            .filter_map(|blk| blk.attn2.as_ref().map(|a| a.kv_dim))
            .collect();
        match &context {
            None if !widths.is_empty() => Err(Error::invalid(
                "encoder_hidden_states",
                "this UNetMotionModel has cross-attention blocks and needs text conditioning \
                 (Conditioning::Shared or Conditioning::PerFrame)",
            )),
            Some(c) if widths.iter().any(|&d| d != c.dims()[2]) => Err(Error::shape(
                "encoder_hidden_states",
                format!("[B, S, D] (or [B, F, S, D]) with D = cross_attention_dim {widths:?}"),
                &c.dims(),
            )),
            _ => Ok(context),
        }
    }
}

impl Denoiser for UNetMotionModel {
    fn prediction_type(&self) -> PredictionType {
        self.prediction_type
    }

    fn predict(&self, input: DenoiserInput<'_>) -> Result<Tensor<5>> {
        self.forward(input)
    }
}

#[cfg(test)]
mod tests;
