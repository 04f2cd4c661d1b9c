//! Validation of a [`UNetMotionConfig`] and its expansion to one value per block
//! ([`Resolved`]), as diffusers' `UNetMotionModel.__init__` (`models/unets/unet_motion_model.py`)
//! expands its `int | tuple[int]` arguments; every error names the offending field.

use vdm_core::{Error, Result};

use super::UNetMotionConfig;
use super::fields::{json, require_eq, require_null, unsupported};

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
    use crate::unet_motion::{
        MotionAdapterConfig, PerBlock, UNet2DConditionConfig, UNetMotionConfig,
    };

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
}
