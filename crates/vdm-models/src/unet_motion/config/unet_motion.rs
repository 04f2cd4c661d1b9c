//! [`UNetMotionConfig`], the `config.json` of a diffusers `UNetMotionModel`
//! (`models/unets/unet_motion_model.py`) plus vdm's `temporal_norm` switch: its fields and
//! defaults, and the config merge of diffusers' `UNetMotionModel.from_unet2d`
//! ([`UNetMotionConfig::from_unet2d`]).
//!
//! Its validation and expansion to per-block settings is in `config/resolved.rs`.

use std::path::Path;

use serde::{Deserialize, Serialize};
use vdm_core::Result;

use super::fields::{parse_json, read_json};
use super::{MotionAdapterConfig, PerBlock, UNet2DConditionConfig};
use crate::temporal::TemporalNorm;

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

    pub(super) fn from_unet2d_unchecked(
        unet: &UNet2DConditionConfig,
        adapter: &MotionAdapterConfig,
    ) -> Self {
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
}

impl UNet2DConditionConfig {
    /// Checks that the configuration describes an SD 1.x-family UNet that can become the
    /// spatial part of a [`crate::unet_motion::UNetMotionModel`], naming the offending field.
    ///
    /// Defined here, beside the merge it uses: the sizes are checked on the configuration
    /// merged with a default adapter that fits it.
    pub fn validate(&self) -> Result<()> {
        self.check_fields()?;
        UNetMotionConfig::from_unet2d_unchecked(self, &MotionAdapterConfig::matching(self))
            .validate()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
