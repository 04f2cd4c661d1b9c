//! [`MotionAdapterConfig`], the `config.json` of a diffusers `MotionAdapter`
//! (`models/unets/unet_motion_model.py`), and its check against the UNet it is merged into.

use std::path::Path;

use serde::{Deserialize, Serialize};
use vdm_core::{Error, Result};

use super::fields::{parse_json, read_json, require_null, unsupported};
use super::{PerBlock, UNet2DConditionConfig};

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
    pub(super) fn matching(unet: &UNet2DConditionConfig) -> Self {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pia_adapters_are_refused_naming_the_field() {
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
}
