//! The three diffusers configurations behind an AnimateDiff UNet, read unchanged from their
//! `config.json` files: [`UNet2DConditionConfig`] (the SD 1.x image UNet),
//! [`MotionAdapterConfig`] (the motion modules) and [`UNetMotionConfig`] (the merged model,
//! diffusers `UNetMotionModel`), plus diffusers' `UNetMotionModel.from_unet2d` config merge
//! ([`UNetMotionConfig::from_unet2d`]).
//!
//! Mirrors the `__init__` signatures of diffusers' `models/unets/unet_2d_condition.py`
//! (`UNet2DConditionModel`) and `models/unets/unet_motion_model.py` (`MotionAdapter`,
//! `UNetMotionModel`); defaults are diffusers' defaults. Unknown keys (`_class_name`,
//! `_diffusers_version`, options of newer diffusers versions) are ignored; values that select
//! an architecture this crate does not implement are [`Error::Unsupported`] naming the field;
//! inconsistent values are [`Error::InvalidConfig`] naming the field.

use std::fmt::Display;
use std::path::Path;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use vdm_core::{Error, Result};

use crate::temporal::TemporalNorm;

/// A diffusers config value that is either one value for every block or one value per block
/// (`int | tuple[int]` in the Python signatures, e.g. `layers_per_block`,
/// `num_attention_heads`, `transformer_layers_per_block`).
///
/// ```
/// use vdm_models::unet_motion::PerBlock;
///
/// let one: PerBlock<usize> = serde_json::from_str("2").unwrap();
/// assert_eq!(one.expand("layers_per_block", 3).unwrap(), [2, 2, 2]);
/// let each: PerBlock<usize> = serde_json::from_str("[1, 2]").unwrap();
/// assert_eq!(each.expand("layers_per_block", 2).unwrap(), [1, 2]);
/// // Wrong length: a typed error naming the field.
/// assert!(each.expand("layers_per_block", 3).unwrap_err().to_string().contains("layers_per_block"));
/// // Nested lists (asymmetric UNets) are kept, but unsupported.
/// let nested: PerBlock<usize> = serde_json::from_str("[[1, 2], [3]]").unwrap();
/// assert!(nested.expand("transformer_layers_per_block", 2).is_err());
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum PerBlock<T> {
    /// One value for every block (a JSON scalar).
    Same(T),
    /// One value per block (a JSON list).
    Each(Vec<T>),
    /// Any other JSON value (e.g. the nested per-layer lists of asymmetric UNets). Kept so that
    /// validation can name the field; always [`Error::Unsupported`].
    Other(serde_json::Value),
}

impl<T: Clone + Serialize> PerBlock<T> {
    /// The value of each of `n` blocks.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] naming `field` for a list of the wrong length,
    /// [`Error::Unsupported`] for any other JSON shape.
    pub fn expand(&self, field: &str, n: usize) -> Result<Vec<T>> {
        match self {
            PerBlock::Same(v) => Ok(vec![v.clone(); n]),
            PerBlock::Each(vs) if vs.len() == n => Ok(vs.clone()),
            PerBlock::Each(vs) => Err(Error::invalid(
                field,
                format!(
                    "needs one value or {n} values (one per block), got {}",
                    vs.len()
                ),
            )),
            PerBlock::Other(v) => Err(unsupported(
                field,
                v,
                "only one value or one value per block is supported (nested per-layer lists \
                 of asymmetric UNets are not)",
            )),
        }
    }
}

impl<T> From<T> for PerBlock<T> {
    fn from(value: T) -> Self {
        PerBlock::Same(value)
    }
}

/// `Error::Unsupported` naming a field and its value.
fn unsupported(field: &str, value: impl Display, why: &str) -> Error {
    Error::Unsupported(format!("`{field}` = {value}: {why}"))
}

/// Requires an optional field to be absent (`null`).
fn require_null<T: Serialize>(field: &str, value: &Option<T>, why: &str) -> Result<()> {
    match value {
        Some(v) => Err(unsupported(field, json(v), why)),
        None => Ok(()),
    }
}

/// Requires a field to hold its diffusers default.
fn require_eq<T: PartialEq + Serialize>(
    field: &str,
    value: &T,
    expected: &T,
    why: &str,
) -> Result<()> {
    if value != expected {
        return Err(unsupported(field, json(value), why));
    }
    Ok(())
}

/// A value as JSON text, for messages.
fn json<T: Serialize>(v: &T) -> String {
    serde_json::to_string(v).unwrap_or_else(|_| "?".into())
}

/// Parses a diffusers config from JSON text. Unknown keys are ignored; a key with a value of
/// the wrong JSON type is an [`Error::InvalidConfig`] naming that key.
fn parse_json<T: DeserializeOwned>(text: &str, what: &str) -> Result<T> {
    let value: serde_json::Value = serde_json::from_str(text)
        .map_err(|e| Error::invalid(what, format!("not valid JSON: {e}")))?;
    let serde_json::Value::Object(map) = &value else {
        return Err(Error::invalid(what, "must be a JSON object"));
    };
    match serde_json::from_value::<T>(value.clone()) {
        Ok(config) => Ok(config),
        Err(e) => {
            // Name the offending key: the first one that fails on its own.
            for (key, v) in map {
                let single =
                    serde_json::Value::Object(std::iter::once((key.clone(), v.clone())).collect());
                if let Err(e) = serde_json::from_value::<T>(single) {
                    return Err(Error::invalid(key.as_str(), e.to_string()));
                }
            }
            Err(Error::invalid(what, e.to_string()))
        }
    }
}

/// Reads a JSON config file.
fn read_json<T: DeserializeOwned>(path: &Path, what: &str) -> Result<T> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::File {
        path: path.display().to_string(),
        reason: e.to_string(),
    })?;
    parse_json(&text, what)
}

// ---------------------------------------------------------------------------------------------
// UNet2DConditionModel
// ---------------------------------------------------------------------------------------------

/// The `config.json` of a diffusers `UNet2DConditionModel` (SD 1.x `unet/config.json`), as
/// far as it shapes an AnimateDiff model (diffusers `models/unets/unet_2d_condition.py`).
///
/// Only the SD 1.x family that diffusers' `UNetMotionModel.from_unet2d` can represent is
/// supported: [`UNet2DConditionConfig::validate`] rejects class/addition embeddings, other
/// time embeddings, non-3 conv kernels, dual or cross-only attention and the like with
/// [`Error::Unsupported`] naming the field (diffusers would silently drop most of them).
///
/// Mind diffusers' naming: `attention_head_dim` is the **number of heads** of the spatial
/// transformers here (8 heads × C/8 in SD 1.x; `num_attention_heads` must be `null`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct UNet2DConditionConfig {
    /// Latent resolution the model was trained at (informational).
    pub sample_size: Option<serde_json::Value>,
    /// Latent channels in.
    pub in_channels: usize,
    /// Channels out.
    pub out_channels: usize,
    /// Must be `false`.
    pub center_input_sample: bool,
    /// Must be `true` (`UNetMotionModel` hard-codes `Timesteps(C, True, 0)`).
    pub flip_sin_to_cos: bool,
    /// Must be `0`.
    pub freq_shift: f64,
    /// `CrossAttnDownBlock2D` or `DownBlock2D` per block.
    pub down_block_types: Vec<String>,
    /// Must be `UNetMidBlock2DCrossAttn`.
    pub mid_block_type: Option<String>,
    /// `UpBlock2D` or `CrossAttnUpBlock2D` per block.
    pub up_block_types: Vec<String>,
    /// Must be `false`.
    pub only_cross_attention: PerBlock<bool>,
    /// Channels of each resolution level.
    pub block_out_channels: Vec<usize>,
    /// ResNets per down block (up blocks have one more).
    pub layers_per_block: PerBlock<usize>,
    /// Padding of the downsampling convolutions.
    pub downsample_padding: usize,
    /// Output divisor of the mid-block ResNets.
    pub mid_block_scale_factor: f64,
    /// Dropout (training only; ignored).
    pub dropout: f64,
    /// Must be `silu`.
    pub act_fn: String,
    /// GroupNorm groups everywhere (also of the motion modules in the merged model).
    pub norm_num_groups: Option<usize>,
    /// GroupNorm epsilon of the ResNets and the output norm.
    pub norm_eps: f64,
    /// Width of the text states.
    pub cross_attention_dim: PerBlock<usize>,
    /// Transformer blocks per spatial transformer.
    pub transformer_layers_per_block: PerBlock<usize>,
    /// Transformer blocks per spatial transformer of the up path (`null`: reversed down path).
    pub reverse_transformer_layers_per_block: Option<PerBlock<usize>>,
    /// Must be `null`.
    pub encoder_hid_dim: Option<usize>,
    /// Must be `null`.
    pub encoder_hid_dim_type: Option<String>,
    /// **Number of heads** of the spatial transformers (diffusers naming bug).
    pub attention_head_dim: PerBlock<usize>,
    /// Must be `null` (diffusers' `UNet2DConditionModel` refuses it too).
    pub num_attention_heads: Option<PerBlock<usize>>,
    /// Must be `false`.
    pub dual_cross_attention: bool,
    /// Linear (`true`) or 1×1-conv (`false`, SD 1.x) transformer projections.
    pub use_linear_projection: bool,
    /// Must be `null`.
    pub class_embed_type: Option<String>,
    /// Must be `null`.
    pub addition_embed_type: Option<String>,
    /// Must be `null`.
    pub addition_time_embed_dim: Option<usize>,
    /// Must be `null`.
    pub num_class_embeds: Option<usize>,
    /// Computes attention scores in fp32 under fp16 (no effect in fp32; ignored).
    pub upcast_attention: bool,
    /// Must be `default`.
    pub resnet_time_scale_shift: String,
    /// Must be `false`.
    pub resnet_skip_time_act: bool,
    /// Must be `1.0`.
    pub resnet_out_scale_factor: f64,
    /// Must be `positional`.
    pub time_embedding_type: String,
    /// Must be `null`.
    pub time_embedding_dim: Option<usize>,
    /// Must be `null`.
    pub time_embedding_act_fn: Option<String>,
    /// Must be `null`.
    pub timestep_post_act: Option<String>,
    /// Must be `null`.
    pub time_cond_proj_dim: Option<usize>,
    /// Must be `3`.
    pub conv_in_kernel: usize,
    /// Must be `3`.
    pub conv_out_kernel: usize,
    /// Must be `null`.
    pub projection_class_embeddings_input_dim: Option<usize>,
    /// Must be `default`.
    pub attention_type: String,
    /// Must be `false`.
    pub class_embeddings_concat: bool,
    /// Must be `null` or `false`.
    pub mid_block_only_cross_attention: Option<bool>,
    /// Must be `null`.
    pub cross_attention_norm: Option<String>,
    /// Heads of the SDXL text-time addition embedding (unused).
    pub addition_embed_type_num_heads: usize,
}

impl Default for UNet2DConditionConfig {
    /// diffusers' `UNet2DConditionModel.__init__` defaults.
    fn default() -> Self {
        Self {
            sample_size: None,
            in_channels: 4,
            out_channels: 4,
            center_input_sample: false,
            flip_sin_to_cos: true,
            freq_shift: 0.0,
            down_block_types: [
                "CrossAttnDownBlock2D",
                "CrossAttnDownBlock2D",
                "CrossAttnDownBlock2D",
                "DownBlock2D",
            ]
            .map(String::from)
            .to_vec(),
            mid_block_type: Some("UNetMidBlock2DCrossAttn".into()),
            up_block_types: [
                "UpBlock2D",
                "CrossAttnUpBlock2D",
                "CrossAttnUpBlock2D",
                "CrossAttnUpBlock2D",
            ]
            .map(String::from)
            .to_vec(),
            only_cross_attention: PerBlock::Same(false),
            block_out_channels: vec![320, 640, 1280, 1280],
            layers_per_block: PerBlock::Same(2),
            downsample_padding: 1,
            mid_block_scale_factor: 1.0,
            dropout: 0.0,
            act_fn: "silu".into(),
            norm_num_groups: Some(32),
            norm_eps: 1e-5,
            cross_attention_dim: PerBlock::Same(1280),
            transformer_layers_per_block: PerBlock::Same(1),
            reverse_transformer_layers_per_block: None,
            encoder_hid_dim: None,
            encoder_hid_dim_type: None,
            attention_head_dim: PerBlock::Same(8),
            num_attention_heads: None,
            dual_cross_attention: false,
            use_linear_projection: false,
            class_embed_type: None,
            addition_embed_type: None,
            addition_time_embed_dim: None,
            num_class_embeds: None,
            upcast_attention: false,
            resnet_time_scale_shift: "default".into(),
            resnet_skip_time_act: false,
            resnet_out_scale_factor: 1.0,
            time_embedding_type: "positional".into(),
            time_embedding_dim: None,
            time_embedding_act_fn: None,
            timestep_post_act: None,
            time_cond_proj_dim: None,
            conv_in_kernel: 3,
            conv_out_kernel: 3,
            projection_class_embeddings_input_dim: None,
            attention_type: "default".into(),
            class_embeddings_concat: false,
            mid_block_only_cross_attention: None,
            cross_attention_norm: None,
            addition_embed_type_num_heads: 64,
        }
    }
}

impl UNet2DConditionConfig {
    /// Parses a diffusers `config.json` text.
    pub fn from_json_str(text: &str) -> Result<Self> {
        parse_json(text, "UNet2DConditionModel config")
    }

    /// Reads a diffusers `config.json` file (e.g. `unet/config.json` of an SD 1.5 repo).
    pub fn from_json_file(path: impl AsRef<Path>) -> Result<Self> {
        read_json(path.as_ref(), "UNet2DConditionModel config")
    }

    /// Checks that the configuration describes an SD 1.x-family UNet that can become the
    /// spatial part of a [`super::UNetMotionModel`], naming the offending field.
    pub fn validate(&self) -> Result<()> {
        const WHY: &str = "not representable by diffusers' UNetMotionModel (from_unet2d would \
                           drop it); only SD 1.x-style UNets are supported";
        require_eq(
            "center_input_sample",
            &self.center_input_sample,
            &false,
            WHY,
        )?;
        require_eq("flip_sin_to_cos", &self.flip_sin_to_cos, &true, WHY)?;
        require_eq("freq_shift", &self.freq_shift, &0.0, WHY)?;
        require_eq(
            "mid_block_type",
            &self.mid_block_type,
            &Some("UNetMidBlock2DCrossAttn".to_string()),
            WHY,
        )?;
        let n = self.down_block_types.len();
        if self
            .only_cross_attention
            .expand("only_cross_attention", n)?
            .iter()
            .any(|&b| b)
        {
            return Err(unsupported(
                "only_cross_attention",
                json(&self.only_cross_attention),
                WHY,
            ));
        }
        require_eq("act_fn", &self.act_fn, &"silu".to_string(), WHY)?;
        require_null("encoder_hid_dim", &self.encoder_hid_dim, WHY)?;
        require_null("encoder_hid_dim_type", &self.encoder_hid_dim_type, WHY)?;
        require_null(
            "num_attention_heads",
            &self.num_attention_heads,
            "diffusers' UNet2DConditionModel refuses it (its `attention_head_dim` is the head \
             count)",
        )?;
        require_eq(
            "dual_cross_attention",
            &self.dual_cross_attention,
            &false,
            WHY,
        )?;
        require_null("class_embed_type", &self.class_embed_type, WHY)?;
        require_null("addition_embed_type", &self.addition_embed_type, WHY)?;
        require_null(
            "addition_time_embed_dim",
            &self.addition_time_embed_dim,
            WHY,
        )?;
        require_null("num_class_embeds", &self.num_class_embeds, WHY)?;
        require_eq(
            "resnet_time_scale_shift",
            &self.resnet_time_scale_shift,
            &"default".to_string(),
            WHY,
        )?;
        require_eq(
            "resnet_skip_time_act",
            &self.resnet_skip_time_act,
            &false,
            WHY,
        )?;
        require_eq(
            "resnet_out_scale_factor",
            &self.resnet_out_scale_factor,
            &1.0,
            WHY,
        )?;
        require_eq(
            "time_embedding_type",
            &self.time_embedding_type,
            &"positional".to_string(),
            WHY,
        )?;
        require_null("time_embedding_dim", &self.time_embedding_dim, WHY)?;
        require_null("time_embedding_act_fn", &self.time_embedding_act_fn, WHY)?;
        require_null("timestep_post_act", &self.timestep_post_act, WHY)?;
        require_null("time_cond_proj_dim", &self.time_cond_proj_dim, WHY)?;
        require_eq("conv_in_kernel", &self.conv_in_kernel, &3, WHY)?;
        require_eq("conv_out_kernel", &self.conv_out_kernel, &3, WHY)?;
        require_null(
            "projection_class_embeddings_input_dim",
            &self.projection_class_embeddings_input_dim,
            WHY,
        )?;
        require_eq(
            "attention_type",
            &self.attention_type,
            &"default".to_string(),
            WHY,
        )?;
        require_eq(
            "class_embeddings_concat",
            &self.class_embeddings_concat,
            &false,
            WHY,
        )?;
        if self.mid_block_only_cross_attention == Some(true) {
            return Err(unsupported("mid_block_only_cross_attention", true, WHY));
        }
        require_null("cross_attention_norm", &self.cross_attention_norm, WHY)?;
        for (i, t) in self.down_block_types.iter().enumerate() {
            if !matches!(t.as_str(), "CrossAttnDownBlock2D" | "DownBlock2D") {
                return Err(unsupported(
                    &format!("down_block_types[{i}]"),
                    json(t),
                    "supported: CrossAttnDownBlock2D, DownBlock2D",
                ));
            }
        }
        for (i, t) in self.up_block_types.iter().enumerate() {
            if !matches!(t.as_str(), "CrossAttnUpBlock2D" | "UpBlock2D") {
                return Err(unsupported(
                    &format!("up_block_types[{i}]"),
                    json(t),
                    "supported: CrossAttnUpBlock2D, UpBlock2D",
                ));
            }
        }
        // The sizes are checked on the merged configuration.
        UNetMotionConfig::from_unet2d_unchecked(self, &MotionAdapterConfig::matching(self))
            .validate()
    }
}

// ---------------------------------------------------------------------------------------------
// MotionAdapter
// ---------------------------------------------------------------------------------------------

/// The `config.json` of a diffusers `MotionAdapter` (e.g.
/// `guoyww/animatediff-motion-adapter-v1-5-2`), diffusers `models/unets/unet_motion_model.py`.
///
/// Note: diffusers' merged `UNetMotionModel` gives the motion modules' GroupNorm the UNet's
/// `norm_num_groups`, not `motion_norm_num_groups` (equal in every published adapter: 32);
/// this crate does the same, so `motion_norm_num_groups` is informational.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct MotionAdapterConfig {
    /// Must equal the UNet's `block_out_channels`.
    pub block_out_channels: Vec<usize>,
    /// Motion modules per down block (up blocks: one more); must equal the UNet's
    /// `layers_per_block`.
    pub motion_layers_per_block: PerBlock<usize>,
    /// Transformer blocks per motion module.
    pub motion_transformer_layers_per_block: PerBlock<usize>,
    /// Motion modules of the mid block (must be 1, the mid block's layer count).
    pub motion_mid_block_layers_per_block: usize,
    /// Transformer blocks per mid-block motion module.
    pub motion_transformer_layers_per_mid_block: PerBlock<usize>,
    /// Heads of the motion modules (head width = C / heads).
    pub motion_num_attention_heads: PerBlock<usize>,
    /// GroupNorm groups of the adapter's own modules (see the type docs).
    pub motion_norm_num_groups: usize,
    /// Rows of the sinusoidal positional table: the most frames one temporal window may hold.
    pub motion_max_seq_length: usize,
    /// Whether the mid block has motion modules.
    pub use_motion_mid_block: bool,
    /// Must be `null` (PIA's 9-channel `conv_in` is not supported).
    pub conv_in_channels: Option<usize>,
}

impl Default for MotionAdapterConfig {
    /// diffusers' `MotionAdapter.__init__` defaults.
    fn default() -> Self {
        Self {
            block_out_channels: vec![320, 640, 1280, 1280],
            motion_layers_per_block: PerBlock::Same(2),
            motion_transformer_layers_per_block: PerBlock::Same(1),
            motion_mid_block_layers_per_block: 1,
            motion_transformer_layers_per_mid_block: PerBlock::Same(1),
            motion_num_attention_heads: PerBlock::Same(8),
            motion_norm_num_groups: 32,
            motion_max_seq_length: 32,
            use_motion_mid_block: true,
            conv_in_channels: None,
        }
    }
}

impl MotionAdapterConfig {
    /// Parses a diffusers `config.json` text.
    pub fn from_json_str(text: &str) -> Result<Self> {
        parse_json(text, "MotionAdapter config")
    }

    /// Reads a diffusers `config.json` file.
    pub fn from_json_file(path: impl AsRef<Path>) -> Result<Self> {
        read_json(path.as_ref(), "MotionAdapter config")
    }

    /// An adapter config with diffusers' defaults fitting `unet` (used to validate a UNet
    /// config on its own).
    fn matching(unet: &UNet2DConditionConfig) -> Self {
        Self {
            block_out_channels: unet.block_out_channels.clone(),
            motion_layers_per_block: unet.layers_per_block.clone(),
            motion_num_attention_heads: PerBlock::Same(1),
            ..Self::default()
        }
    }

    /// Checks the adapter against the UNet it is merged into (diffusers' `from_unet2d` checks
    /// and what its `load_state_dict` calls would reject), naming the offending field.
    pub fn validate_for(&self, unet: &UNet2DConditionConfig) -> Result<()> {
        require_null(
            "conv_in_channels",
            &self.conv_in_channels,
            "PIA motion adapters (extra conv_in channels) are not supported",
        )?;
        if self.block_out_channels != unet.block_out_channels {
            return Err(Error::invalid(
                "block_out_channels",
                format!(
                    "the motion adapter has {:?}, the UNet {:?}",
                    self.block_out_channels, unet.block_out_channels
                ),
            ));
        }
        let n = unet.block_out_channels.len();
        let ours = self
            .motion_layers_per_block
            .expand("motion_layers_per_block", n)?;
        let theirs = unet.layers_per_block.expand("layers_per_block", n)?;
        if ours != theirs {
            return Err(Error::invalid(
                "motion_layers_per_block",
                format!(
                    "incompatible motion adapter: {ours:?} motion layers per block for a UNet \
                     with layers_per_block {theirs:?}"
                ),
            ));
        }
        if self.use_motion_mid_block && self.motion_mid_block_layers_per_block != 1 {
            return Err(unsupported(
                "motion_mid_block_layers_per_block",
                self.motion_mid_block_layers_per_block,
                "the UNet's mid block has one attention layer, so it holds one motion module",
            ));
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// UNetMotionModel
// ---------------------------------------------------------------------------------------------

/// The `config.json` of a diffusers `UNetMotionModel` (`models/unets/unet_motion_model.py`),
/// plus vdm's [`temporal_norm`](Self::temporal_norm) switch.
///
/// Sizes per block: `num_attention_heads` is the head count of the spatial transformers (head
/// width `C / heads`), `motion_num_attention_heads` that of the motion modules (head width
/// `C / heads`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct UNetMotionConfig {
    /// Latent resolution the model was trained at (informational).
    pub sample_size: Option<serde_json::Value>,
    /// Latent channels in.
    pub in_channels: usize,
    /// Channels out.
    pub out_channels: usize,
    /// `CrossAttnDownBlockMotion` or `DownBlockMotion` per block.
    pub down_block_types: Vec<String>,
    /// `UpBlockMotion` or `CrossAttnUpBlockMotion` per block.
    pub up_block_types: Vec<String>,
    /// Channels of each resolution level.
    pub block_out_channels: Vec<usize>,
    /// ResNets (and motion modules) per down block; up blocks have one more.
    pub layers_per_block: PerBlock<usize>,
    /// Padding of the downsampling convolutions.
    pub downsample_padding: usize,
    /// Output divisor of the mid-block ResNets.
    pub mid_block_scale_factor: f64,
    /// Must be `silu`.
    pub act_fn: String,
    /// GroupNorm groups of ResNets, transformers, motion modules and the output norm.
    pub norm_num_groups: Option<usize>,
    /// GroupNorm epsilon of the ResNets and the output norm.
    pub norm_eps: f64,
    /// Width of the text states.
    pub cross_attention_dim: PerBlock<usize>,
    /// Transformer blocks per spatial transformer.
    pub transformer_layers_per_block: PerBlock<usize>,
    /// Same for the up path (`null`: the down path reversed).
    pub reverse_transformer_layers_per_block: Option<PerBlock<usize>>,
    /// Transformer blocks per motion module.
    pub temporal_transformer_layers_per_block: PerBlock<usize>,
    /// Same for the up path (`null`: the down path reversed).
    pub reverse_temporal_transformer_layers_per_block: Option<PerBlock<usize>>,
    /// Transformer blocks per mid-block spatial transformer (`null`: the last down block's).
    pub transformer_layers_per_mid_block: Option<PerBlock<usize>>,
    /// Transformer blocks per mid-block motion module (`null` is read as 1).
    pub temporal_transformer_layers_per_mid_block: Option<PerBlock<usize>>,
    /// Linear (`true`) or 1×1-conv (`false`, SD 1.x) spatial transformer projections.
    pub use_linear_projection: bool,
    /// Heads of the spatial transformers.
    pub num_attention_heads: PerBlock<usize>,
    /// Rows of the motion modules' sinusoidal positional table: the most frames one temporal
    /// window may hold (longer videos need a windowed [`vdm_core::TemporalHook`]).
    pub motion_max_seq_length: usize,
    /// Heads of the motion modules.
    pub motion_num_attention_heads: PerBlock<usize>,
    /// Accepted and, as in diffusers 0.42, unused.
    pub reverse_motion_num_attention_heads: Option<serde_json::Value>,
    /// Whether the mid block has motion modules.
    pub use_motion_mid_block: bool,
    /// Attention layers of the mid block.
    pub mid_block_layers: usize,
    /// Must be `null` (no encoder-hidden-state projection).
    pub encoder_hid_dim: Option<usize>,
    /// Must be `null` (IP-Adapter image projection is not supported).
    pub encoder_hid_dim_type: Option<String>,
    /// Must be `null` (SDXL `text_time` is not supported).
    pub addition_embed_type: Option<String>,
    /// Must be `null`.
    pub addition_time_embed_dim: Option<usize>,
    /// Must be `null`.
    pub projection_class_embeddings_input_dim: Option<usize>,
    /// Must be `null` (LCM guidance embedding is not supported).
    pub time_cond_proj_dim: Option<usize>,
    /// vdm: which samples the motion modules' input GroupNorm pools its statistics over.
    ///
    /// [`TemporalNorm::AcrossFrames`] (default) is diffusers' computation (GroupNorm on the
    /// 5-D `[B, C, F, H, W]` tensor, so the statistics depend on the frame count);
    /// [`TemporalNorm::PerFrame`] is the original AnimateDiff repository's and
    /// ComfyUI-AnimateDiff-Evolved's (GroupNorm per frame). Same weights, different numbers.
    /// Not part of diffusers' JSON (never read from or written to it).
    #[serde(skip, default = "across_frames")]
    pub temporal_norm: TemporalNorm,
}

fn across_frames() -> TemporalNorm {
    TemporalNorm::AcrossFrames
}

impl Default for UNetMotionConfig {
    /// diffusers' `UNetMotionModel.__init__` defaults, GroupNorm across frames.
    fn default() -> Self {
        Self {
            sample_size: None,
            in_channels: 4,
            out_channels: 4,
            down_block_types: [
                "CrossAttnDownBlockMotion",
                "CrossAttnDownBlockMotion",
                "CrossAttnDownBlockMotion",
                "DownBlockMotion",
            ]
            .map(String::from)
            .to_vec(),
            up_block_types: [
                "UpBlockMotion",
                "CrossAttnUpBlockMotion",
                "CrossAttnUpBlockMotion",
                "CrossAttnUpBlockMotion",
            ]
            .map(String::from)
            .to_vec(),
            block_out_channels: vec![320, 640, 1280, 1280],
            layers_per_block: PerBlock::Same(2),
            downsample_padding: 1,
            mid_block_scale_factor: 1.0,
            act_fn: "silu".into(),
            norm_num_groups: Some(32),
            norm_eps: 1e-5,
            cross_attention_dim: PerBlock::Same(1280),
            transformer_layers_per_block: PerBlock::Same(1),
            reverse_transformer_layers_per_block: None,
            temporal_transformer_layers_per_block: PerBlock::Same(1),
            reverse_temporal_transformer_layers_per_block: None,
            transformer_layers_per_mid_block: None,
            temporal_transformer_layers_per_mid_block: Some(PerBlock::Same(1)),
            use_linear_projection: false,
            num_attention_heads: PerBlock::Same(8),
            motion_max_seq_length: 32,
            motion_num_attention_heads: PerBlock::Same(8),
            reverse_motion_num_attention_heads: None,
            use_motion_mid_block: true,
            mid_block_layers: 1,
            encoder_hid_dim: None,
            encoder_hid_dim_type: None,
            addition_embed_type: None,
            addition_time_embed_dim: None,
            projection_class_embeddings_input_dim: None,
            time_cond_proj_dim: None,
            temporal_norm: TemporalNorm::AcrossFrames,
        }
    }
}

/// The configuration expanded to one value per block, as diffusers' `__init__` does.
#[derive(Debug, Clone)]
pub(crate) struct Resolved {
    /// Whether down block `i` has spatial transformers.
    pub down_cross: Vec<bool>,
    /// Whether up block `i` has spatial transformers.
    pub up_cross: Vec<bool>,
    /// ResNets per down block.
    pub layers: Vec<usize>,
    /// Spatial heads per down block.
    pub heads: Vec<usize>,
    /// Text width per down block.
    pub cross_dim: Vec<usize>,
    /// Spatial transformer blocks per down block.
    pub tlayers: Vec<usize>,
    /// Spatial transformer blocks per up block.
    pub rev_tlayers: Vec<usize>,
    /// Motion heads per down block.
    pub motion_heads: Vec<usize>,
    /// Motion transformer blocks per down block.
    pub temporal_layers: Vec<usize>,
    /// Motion transformer blocks per up block.
    pub rev_temporal_layers: Vec<usize>,
    /// Spatial transformer blocks per mid-block layer.
    pub mid_tlayers: Vec<usize>,
    /// Motion transformer blocks per mid-block layer.
    pub mid_temporal_layers: Vec<usize>,
    /// GroupNorm groups.
    pub groups: usize,
}

impl UNetMotionConfig {
    /// Parses a diffusers `config.json` text.
    pub fn from_json_str(text: &str) -> Result<Self> {
        parse_json(text, "UNetMotionModel config")
    }

    /// Reads a diffusers `config.json` file.
    pub fn from_json_file(path: impl AsRef<Path>) -> Result<Self> {
        read_json(path.as_ref(), "UNetMotionModel config")
    }

    /// Sets [`temporal_norm`](Self::temporal_norm).
    pub fn with_temporal_norm(mut self, norm: TemporalNorm) -> Self {
        self.temporal_norm = norm;
        self
    }

    /// The merged model's configuration, as diffusers' `UNetMotionModel.from_unet2d(unet,
    /// motion_adapter)` builds it: block types renamed to their `*Motion` forms,
    /// `num_attention_heads` taken from the UNet's `attention_head_dim`, the motion sizes and
    /// `layers_per_block` from the adapter. Both configurations are validated first.
    ///
    /// ```
    /// use vdm_models::unet_motion::{MotionAdapterConfig, UNet2DConditionConfig, UNetMotionConfig};
    ///
    /// // SD 1.5 + an AnimateDiff v1.5 motion adapter (both diffusers defaults).
    /// let merged = UNetMotionConfig::from_unet2d(
    ///     &UNet2DConditionConfig::default(),
    ///     &MotionAdapterConfig::default(),
    /// )?;
    /// assert_eq!(merged.down_block_types[0], "CrossAttnDownBlockMotion");
    /// assert_eq!(merged, UNetMotionConfig::default());
    /// # Ok::<(), vdm_core::Error>(())
    /// ```
    pub fn from_unet2d(
        unet: &UNet2DConditionConfig,
        adapter: &MotionAdapterConfig,
    ) -> Result<Self> {
        unet.validate()?;
        adapter.validate_for(unet)?;
        let merged = Self::from_unet2d_unchecked(unet, adapter);
        merged.validate()?;
        Ok(merged)
    }

    fn from_unet2d_unchecked(unet: &UNet2DConditionConfig, adapter: &MotionAdapterConfig) -> Self {
        let rename = |types: &[String], cross: &str, plain: &str| -> Vec<String> {
            types
                .iter()
                .map(|t| {
                    if t.contains("CrossAttn") {
                        cross
                    } else {
                        plain
                    }
                    .to_string()
                })
                .collect()
        };
        Self {
            sample_size: unet.sample_size.clone(),
            in_channels: unet.in_channels,
            out_channels: unet.out_channels,
            down_block_types: rename(
                &unet.down_block_types,
                "CrossAttnDownBlockMotion",
                "DownBlockMotion",
            ),
            up_block_types: rename(
                &unet.up_block_types,
                "CrossAttnUpBlockMotion",
                "UpBlockMotion",
            ),
            block_out_channels: unet.block_out_channels.clone(),
            layers_per_block: adapter.motion_layers_per_block.clone(),
            downsample_padding: unet.downsample_padding,
            mid_block_scale_factor: unet.mid_block_scale_factor,
            act_fn: unet.act_fn.clone(),
            norm_num_groups: unet.norm_num_groups,
            norm_eps: unet.norm_eps,
            cross_attention_dim: unet.cross_attention_dim.clone(),
            transformer_layers_per_block: unet.transformer_layers_per_block.clone(),
            reverse_transformer_layers_per_block: unet.reverse_transformer_layers_per_block.clone(),
            temporal_transformer_layers_per_block: adapter
                .motion_transformer_layers_per_block
                .clone(),
            reverse_temporal_transformer_layers_per_block: None,
            transformer_layers_per_mid_block: None,
            temporal_transformer_layers_per_mid_block: Some(
                adapter.motion_transformer_layers_per_mid_block.clone(),
            ),
            use_linear_projection: unet.use_linear_projection,
            num_attention_heads: unet
                .num_attention_heads
                .clone()
                .unwrap_or_else(|| unet.attention_head_dim.clone()),
            motion_max_seq_length: adapter.motion_max_seq_length,
            motion_num_attention_heads: adapter.motion_num_attention_heads.clone(),
            reverse_motion_num_attention_heads: None,
            use_motion_mid_block: adapter.use_motion_mid_block,
            mid_block_layers: 1,
            encoder_hid_dim: unet.encoder_hid_dim,
            encoder_hid_dim_type: unet.encoder_hid_dim_type.clone(),
            addition_embed_type: unet.addition_embed_type.clone(),
            addition_time_embed_dim: unet.addition_time_embed_dim,
            projection_class_embeddings_input_dim: unet.projection_class_embeddings_input_dim,
            time_cond_proj_dim: unet.time_cond_proj_dim,
            temporal_norm: TemporalNorm::AcrossFrames,
        }
    }

    /// Number of resolution levels.
    pub fn num_blocks(&self) -> usize {
        self.down_block_types.len()
    }

    /// Width of the time embedding (`4 · block_out_channels[0]`).
    pub fn time_embed_dim(&self) -> usize {
        self.block_out_channels.first().copied().unwrap_or(0) * 4
    }

    /// Checks the configuration, naming the offending field.
    ///
    /// ```
    /// use vdm_models::unet_motion::UNetMotionConfig;
    ///
    /// let mut config = UNetMotionConfig::default();
    /// config.addition_embed_type = Some("text_time".into());
    /// let e = config.validate().unwrap_err().to_string();
    /// assert!(e.contains("unsupported") && e.contains("addition_embed_type"), "{e}");
    /// ```
    pub fn validate(&self) -> Result<()> {
        self.resolve().map(|_| ())
    }

    /// Validates and expands the per-block values.
    pub(crate) fn resolve(&self) -> Result<Resolved> {
        const WHY: &str = "not supported by vdm's UNetMotionModel";
        require_eq("act_fn", &self.act_fn, &"silu".to_string(), WHY)?;
        require_null("encoder_hid_dim_type", &self.encoder_hid_dim_type, WHY)?;
        require_null("addition_embed_type", &self.addition_embed_type, WHY)?;
        require_null("time_cond_proj_dim", &self.time_cond_proj_dim, WHY)?;

        let n = self.down_block_types.len();
        if n == 0 {
            return Err(Error::invalid(
                "down_block_types",
                "must name at least one block",
            ));
        }
        if self.up_block_types.len() != n {
            return Err(Error::invalid(
                "up_block_types",
                format!(
                    "must have as many entries as down_block_types ({n}), got {}",
                    self.up_block_types.len()
                ),
            ));
        }
        if self.block_out_channels.len() != n {
            return Err(Error::invalid(
                "block_out_channels",
                format!(
                    "must have as many entries as down_block_types ({n}), got {}",
                    self.block_out_channels.len()
                ),
            ));
        }
        let down_cross = self
            .down_block_types
            .iter()
            .enumerate()
            .map(|(i, t)| match t.as_str() {
                "CrossAttnDownBlockMotion" => Ok(true),
                "DownBlockMotion" => Ok(false),
                other => Err(unsupported(
                    &format!("down_block_types[{i}]"),
                    json(&other),
                    "supported: CrossAttnDownBlockMotion, DownBlockMotion",
                )),
            })
            .collect::<Result<Vec<_>>>()?;
        let up_cross = self
            .up_block_types
            .iter()
            .enumerate()
            .map(|(i, t)| match t.as_str() {
                "CrossAttnUpBlockMotion" => Ok(true),
                "UpBlockMotion" => Ok(false),
                other => Err(unsupported(
                    &format!("up_block_types[{i}]"),
                    json(&other),
                    "supported: CrossAttnUpBlockMotion, UpBlockMotion",
                )),
            })
            .collect::<Result<Vec<_>>>()?;
        for (field, v) in [
            ("in_channels", self.in_channels),
            ("out_channels", self.out_channels),
            ("motion_max_seq_length", self.motion_max_seq_length),
        ] {
            if v == 0 {
                return Err(Error::invalid(field, "must be > 0"));
            }
        }
        let Some(groups) = self.norm_num_groups else {
            return Err(unsupported(
                "norm_num_groups",
                "null",
                "the ResNets and motion modules need GroupNorm groups",
            ));
        };
        for &c in &self.block_out_channels {
            if c == 0 || groups == 0 || !c.is_multiple_of(groups) {
                return Err(Error::invalid(
                    "norm_num_groups",
                    format!(
                        "block_out_channels {:?} cannot be split into {groups} GroupNorm groups",
                        self.block_out_channels
                    ),
                ));
            }
        }
        vdm_core::error::ensure_positive("norm_eps", self.norm_eps)?;
        vdm_core::error::ensure_positive("mid_block_scale_factor", self.mid_block_scale_factor)?;

        let layers = self.layers_per_block.expand("layers_per_block", n)?;
        let heads = self.num_attention_heads.expand("num_attention_heads", n)?;
        let cross_dim = self.cross_attention_dim.expand("cross_attention_dim", n)?;
        let tlayers = self
            .transformer_layers_per_block
            .expand("transformer_layers_per_block", n)?;
        let rev_tlayers = match &self.reverse_transformer_layers_per_block {
            Some(r) => r.expand("reverse_transformer_layers_per_block", n)?,
            None => tlayers.iter().rev().copied().collect(),
        };
        let temporal_layers = self
            .temporal_transformer_layers_per_block
            .expand("temporal_transformer_layers_per_block", n)?;
        let rev_temporal_layers = match &self.reverse_temporal_transformer_layers_per_block {
            Some(r) => r.expand("reverse_temporal_transformer_layers_per_block", n)?,
            None => temporal_layers.iter().rev().copied().collect(),
        };
        let motion_heads = self
            .motion_num_attention_heads
            .expand("motion_num_attention_heads", n)?;
        let m = self.mid_block_layers;
        let mid_tlayers = match &self.transformer_layers_per_mid_block {
            Some(t) => t.expand("transformer_layers_per_mid_block", m)?,
            None => vec![tlayers[n - 1]; m],
        };
        let mid_temporal_layers = match &self.temporal_transformer_layers_per_mid_block {
            Some(t) => t.expand("temporal_transformer_layers_per_mid_block", m)?,
            None => vec![1; m],
        };

        let positive = |field: &str, values: &[usize]| -> Result<()> {
            if values.contains(&0) {
                return Err(Error::invalid(
                    field,
                    format!("every value must be > 0, got {values:?}"),
                ));
            }
            Ok(())
        };
        positive("layers_per_block", &layers)?;
        positive("num_attention_heads", &heads)?;
        positive("cross_attention_dim", &cross_dim)?;
        positive("transformer_layers_per_block", &tlayers)?;
        positive("reverse_transformer_layers_per_block", &rev_tlayers)?;
        positive("temporal_transformer_layers_per_block", &temporal_layers)?;
        positive(
            "reverse_temporal_transformer_layers_per_block",
            &rev_temporal_layers,
        )?;
        positive("motion_num_attention_heads", &motion_heads)?;
        positive("transformer_layers_per_mid_block", &mid_tlayers)?;
        positive(
            "temporal_transformer_layers_per_mid_block",
            &mid_temporal_layers,
        )?;
        for (i, &c) in self.block_out_channels.iter().enumerate() {
            if heads[i] > c {
                return Err(Error::invalid(
                    "num_attention_heads",
                    format!(
                        "{} heads on {c} channels leave no channel per head",
                        heads[i]
                    ),
                ));
            }
            if motion_heads[i] > c {
                return Err(Error::invalid(
                    "motion_num_attention_heads",
                    format!(
                        "{} heads on {c} channels leave no channel per head",
                        motion_heads[i]
                    ),
                ));
            }
        }
        Ok(Resolved {
            down_cross,
            up_cross,
            layers,
            heads,
            cross_dim,
            tlayers,
            rev_tlayers,
            motion_heads,
            temporal_layers,
            rev_temporal_layers,
            mid_tlayers,
            mid_temporal_layers,
            groups,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_keys_are_ignored_and_bad_types_name_the_key() {
        let c = UNetMotionConfig::from_json_str(
            r#"{"_class_name": "UNetMotionModel", "something_new": [1, 2], "layers_per_block": 1}"#,
        )
        .unwrap();
        assert_eq!(c.layers_per_block, PerBlock::Same(1));
        let e = UNetMotionConfig::from_json_str(r#"{"norm_eps": "tiny", "in_channels": 4}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("norm_eps"), "{e}");
        let e = MotionAdapterConfig::from_json_str("[1]")
            .unwrap_err()
            .to_string();
        assert!(e.contains("MotionAdapter"), "{e}");
    }

    #[test]
    fn unsupported_values_name_the_field() {
        let cases: Vec<(UNet2DConditionConfig, &str)> = vec![
            (
                UNet2DConditionConfig {
                    class_embed_type: Some("timestep".into()),
                    ..Default::default()
                },
                "class_embed_type",
            ),
            (
                UNet2DConditionConfig {
                    down_block_types: vec!["SimpleCrossAttnDownBlock2D".into(); 4],
                    ..Default::default()
                },
                "down_block_types[0]",
            ),
            (
                UNet2DConditionConfig {
                    transformer_layers_per_block: PerBlock::Other(serde_json::json!([[1], [2]])),
                    ..Default::default()
                },
                "transformer_layers_per_block",
            ),
            (
                UNet2DConditionConfig {
                    conv_in_kernel: 7,
                    ..Default::default()
                },
                "conv_in_kernel",
            ),
        ];
        for (config, field) in cases {
            let e = config.validate().unwrap_err();
            assert!(matches!(e, Error::Unsupported(_)), "{e}");
            assert!(e.to_string().contains(field), "{e}");
        }
        let adapter = MotionAdapterConfig {
            conv_in_channels: Some(9),
            ..Default::default()
        };
        let e = adapter
            .validate_for(&UNet2DConditionConfig::default())
            .unwrap_err()
            .to_string();
        assert!(e.contains("conv_in_channels"), "{e}");
    }

    #[test]
    fn inconsistent_values_name_the_field() {
        let adapter = MotionAdapterConfig {
            motion_layers_per_block: PerBlock::Same(1),
            ..Default::default()
        };
        let e = UNetMotionConfig::from_unet2d(&UNet2DConditionConfig::default(), &adapter)
            .unwrap_err()
            .to_string();
        assert!(e.contains("motion_layers_per_block"), "{e}");
        let c = UNetMotionConfig {
            num_attention_heads: PerBlock::Each(vec![8, 8]),
            ..Default::default()
        };
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("num_attention_heads"), "{e}");
        let c = UNetMotionConfig {
            norm_num_groups: Some(24),
            ..Default::default()
        };
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("norm_num_groups"), "{e}");
        let c = UNetMotionConfig {
            up_block_types: vec!["UpBlockMotion".into()],
            ..Default::default()
        };
        assert!(
            c.validate()
                .unwrap_err()
                .to_string()
                .contains("up_block_types")
        );
    }

    #[test]
    fn serde_round_trip_keeps_diffusers_keys() {
        let c = UNetMotionConfig::default();
        let text = serde_json::to_string(&c).unwrap();
        assert!(!text.contains("temporal_norm"));
        assert!(text.contains("\"motion_max_seq_length\":32"));
        let back = UNetMotionConfig::from_json_str(&text).unwrap();
        assert_eq!(back, c);
    }
}
