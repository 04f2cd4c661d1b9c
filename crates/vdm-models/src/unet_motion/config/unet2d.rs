//! [`UNet2DConditionConfig`], the `config.json` of the SD 1.x image UNet, mirroring the
//! `__init__` signature and defaults of diffusers' `UNet2DConditionModel`
//! (`models/unets/unet_2d_condition.py`), and its check that the UNet is one that diffusers'
//! `UNetMotionModel.from_unet2d` can represent.

use std::path::Path;

use serde::{Deserialize, Serialize};
use vdm_core::Result;

use super::PerBlock;
use super::fields::{json, parse_json, read_json, require_eq, require_null, unsupported};

/// The `config.json` of a diffusers `UNet2DConditionModel` (SD 1.x `unet/config.json`), as
/// far as it shapes an AnimateDiff model (diffusers `models/unets/unet_2d_condition.py`).
///
/// Only the SD 1.x family that diffusers' `UNetMotionModel.from_unet2d` can represent is
/// supported: [`UNet2DConditionConfig::validate`] rejects class/addition embeddings, other
/// time embeddings, non-3 conv kernels, dual or cross-only attention and the like with
/// [`Error::Unsupported`](vdm_core::Error::Unsupported) naming the field (diffusers would
/// silently drop most of them).
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

    /// The checks of [`UNet2DConditionConfig::validate`] that need no merge: every field that
    /// diffusers' `UNetMotionModel.from_unet2d` would drop must keep its default, and the block
    /// types must be ones the motion model has. The sizes are checked on the merged config,
    /// which `validate` builds (in `unet_motion.rs`, beside the merge, so that this file does
    /// not import the file that imports it).
    pub(super) fn check_fields(&self) -> Result<()> {
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
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vdm_core::Error;

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
    }
}
