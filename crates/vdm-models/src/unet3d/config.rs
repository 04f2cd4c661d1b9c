//! The configuration of [`UNet3DConditionModel`](super::UNet3DConditionModel), read from a
//! diffusers `config.json` unchanged (diffusers `models/unets/unet_3d_condition.py`,
//! `UNet3DConditionModel.__init__`).

use std::path::Path;

use serde::{Deserialize, Serialize};
use vdm_core::{Error, Result};

use crate::attention::ensure_groups;

/// Heads of the `transformer_in` temporal transformer: diffusers hard-codes 8
/// (`TransformerTemporalModel(num_attention_heads=8, attention_head_dim=attention_head_dim)`).
pub const TRANSFORMER_IN_HEADS: usize = 8;

/// A diffusers value that is either one number or one number per block (`int | tuple[int]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum PerBlock {
    /// The same value for every block.
    One(usize),
    /// One value per down block (up blocks use the reversed list).
    Each(Vec<usize>),
}

/// `sample_size`: one side or `[height, width]` (informational: the model runs at any size).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum SampleSize {
    /// Square latents of this side.
    Square(usize),
    /// `[height, width]`.
    HeightWidth(Vec<usize>),
}

/// Down-block kinds of `down_block_types` (diffusers `unet_3d_blocks.get_down_block`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DownBlockKind {
    /// `"CrossAttnDownBlock3D"`: resnet → temporal conv → spatial transformer → temporal
    /// transformer per layer, then an optional downsampler.
    CrossAttnDownBlock3D,
    /// `"DownBlock3D"`: resnet → temporal conv per layer, then an optional downsampler.
    DownBlock3D,
}

impl DownBlockKind {
    /// Parses a diffusers block-type string; anything else is [`Error::Unsupported`] naming
    /// `field`.
    pub fn parse(field: &str, value: &str) -> Result<Self> {
        match value {
            "CrossAttnDownBlock3D" => Ok(Self::CrossAttnDownBlock3D),
            "DownBlock3D" => Ok(Self::DownBlock3D),
            other => Err(Error::Unsupported(format!(
                "`{field}` = {other:?}: UNet3DConditionModel supports CrossAttnDownBlock3D and \
                 DownBlock3D"
            ))),
        }
    }

    /// Whether the block has spatial and temporal transformers.
    pub fn has_attention(self) -> bool {
        self == Self::CrossAttnDownBlock3D
    }
}

/// Up-block kinds of `up_block_types` (diffusers `unet_3d_blocks.get_up_block`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum UpBlockKind {
    /// `"CrossAttnUpBlock3D"`: per layer, skip concatenation → resnet → temporal conv →
    /// spatial transformer → temporal transformer; then an optional upsampler.
    CrossAttnUpBlock3D,
    /// `"UpBlock3D"`: per layer, skip concatenation → resnet → temporal conv; then an optional
    /// upsampler.
    UpBlock3D,
}

impl UpBlockKind {
    /// Parses a diffusers block-type string; anything else is [`Error::Unsupported`] naming
    /// `field`.
    pub fn parse(field: &str, value: &str) -> Result<Self> {
        match value {
            "CrossAttnUpBlock3D" => Ok(Self::CrossAttnUpBlock3D),
            "UpBlock3D" => Ok(Self::UpBlock3D),
            other => Err(Error::Unsupported(format!(
                "`{field}` = {other:?}: UNet3DConditionModel supports CrossAttnUpBlock3D and \
                 UpBlock3D"
            ))),
        }
    }

    /// Whether the block has spatial and temporal transformers.
    pub fn has_attention(self) -> bool {
        self == Self::CrossAttnUpBlock3D
    }
}

fn default_in_channels() -> usize {
    4
}
fn default_down_block_types() -> Vec<String> {
    [
        "CrossAttnDownBlock3D",
        "CrossAttnDownBlock3D",
        "CrossAttnDownBlock3D",
        "DownBlock3D",
    ]
    .map(String::from)
    .to_vec()
}
fn default_up_block_types() -> Vec<String> {
    [
        "UpBlock3D",
        "CrossAttnUpBlock3D",
        "CrossAttnUpBlock3D",
        "CrossAttnUpBlock3D",
    ]
    .map(String::from)
    .to_vec()
}
fn default_block_out_channels() -> Vec<usize> {
    vec![320, 640, 1280, 1280]
}
fn default_layers_per_block() -> usize {
    2
}
fn default_downsample_padding() -> usize {
    1
}
fn default_mid_block_scale_factor() -> f64 {
    1.0
}
fn default_act_fn() -> String {
    "silu".into()
}
fn default_norm_num_groups() -> Option<usize> {
    Some(32)
}
fn default_norm_eps() -> f64 {
    1e-5
}
fn default_cross_attention_dim() -> usize {
    1024
}
fn default_attention_head_dim() -> PerBlock {
    PerBlock::One(64)
}

/// diffusers' `UNet3DConditionModel` configuration: every argument of its `__init__`, with the
/// same names and defaults, so a hub `unet/config.json` (ModelScope
/// `damo-vilab/text-to-video-ms-1.7b`, ZeroScope `cerspense/zeroscope_v2_576w`) deserialises
/// unchanged. Unknown keys (`_class_name`, `_diffusers_version`, and the legacy
/// `flip_sin_to_cos` / `freq_shift`, which diffusers also ignores for this class) are ignored.
///
/// Mind diffusers' naming (oracle gotcha 21): `attention_head_dim` is the **per-head width**
/// here — every spatial and temporal transformer of a block with `C` channels has
/// `C / attention_head_dim` heads of `attention_head_dim` channels, and `transformer_in` has
/// [`TRANSFORMER_IN_HEADS`] heads of `attention_head_dim`.
///
/// ```
/// use vdm_models::unet3d::UNet3DConditionModelConfig;
///
/// let config = UNet3DConditionModelConfig::from_json_str(
///     r#"{"_class_name": "UNet3DConditionModel", "block_out_channels": [32, 64],
///         "down_block_types": ["CrossAttnDownBlock3D", "DownBlock3D"],
///         "up_block_types": ["UpBlock3D", "CrossAttnUpBlock3D"],
///         "norm_num_groups": 8, "cross_attention_dim": 32, "attention_head_dim": 8}"#,
/// )?;
/// assert_eq!(config.heads(0)?, 4);
/// assert_eq!(config.time_embed_dim(), 128);
///
/// // `time_cond_proj_dim` is not supported: a typed error names the field.
/// let err = UNet3DConditionModelConfig::from_json_str(r#"{"time_cond_proj_dim": 256}"#)
///     .unwrap_err();
/// assert!(err.to_string().contains("time_cond_proj_dim"));
/// # Ok::<(), vdm_core::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UNet3DConditionModelConfig {
    /// Latent side (`sample_size`); informational only.
    #[serde(default)]
    pub sample_size: Option<SampleSize>,
    /// Latent channels of the input (`in_channels`, 4).
    #[serde(default = "default_in_channels")]
    pub in_channels: usize,
    /// Channels of the output (`out_channels`, 4).
    #[serde(default = "default_in_channels")]
    pub out_channels: usize,
    /// Down-block types (`down_block_types`): `CrossAttnDownBlock3D` or `DownBlock3D`.
    #[serde(default = "default_down_block_types")]
    pub down_block_types: Vec<String>,
    /// Up-block types (`up_block_types`): `UpBlock3D` or `CrossAttnUpBlock3D`.
    #[serde(default = "default_up_block_types")]
    pub up_block_types: Vec<String>,
    /// Output channels of each down block (`block_out_channels`).
    #[serde(default = "default_block_out_channels")]
    pub block_out_channels: Vec<usize>,
    /// Resnets per down block (`layers_per_block`); up blocks have one more.
    #[serde(default = "default_layers_per_block")]
    pub layers_per_block: usize,
    /// Padding of the downsampling convolutions (`downsample_padding`).
    #[serde(default = "default_downsample_padding")]
    pub downsample_padding: usize,
    /// Output divisor of the mid-block resnets (`mid_block_scale_factor`).
    #[serde(default = "default_mid_block_scale_factor")]
    pub mid_block_scale_factor: f64,
    /// Activation of the resnets and the time embedding (`act_fn`); only `"silu"` / `"swish"`.
    #[serde(default = "default_act_fn")]
    pub act_fn: String,
    /// GroupNorm groups everywhere (`norm_num_groups`); `null` is not supported (diffusers'
    /// own 3-D blocks cannot be built without groups either).
    #[serde(default = "default_norm_num_groups")]
    pub norm_num_groups: Option<usize>,
    /// GroupNorm epsilon of the resnets and `conv_norm_out` (`norm_eps`).
    #[serde(default = "default_norm_eps")]
    pub norm_eps: f64,
    /// Width of the text states (`cross_attention_dim`: 1024 for OpenCLIP-H).
    #[serde(default = "default_cross_attention_dim")]
    pub cross_attention_dim: usize,
    /// Per-head width of every transformer (`attention_head_dim`; see the type docs).
    #[serde(default = "default_attention_head_dim")]
    pub attention_head_dim: PerBlock,
    /// Must be `null`: diffusers raises `NotImplementedError` otherwise.
    #[serde(default)]
    pub num_attention_heads: Option<PerBlock>,
    /// Must be `null` (`time_cond_proj_dim`, an LCM-style timestep condition).
    #[serde(default)]
    pub time_cond_proj_dim: Option<usize>,
}

impl Default for UNet3DConditionModelConfig {
    /// diffusers' defaults (the ModelScope 1.7B layout).
    fn default() -> Self {
        serde_json::from_str("{}").expect("every field has a default")
    }
}

impl UNet3DConditionModelConfig {
    /// Parses a diffusers `config.json` text and validates it.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] for malformed JSON or a wrong value type, and the errors of
    /// [`Self::validate`].
    pub fn from_json_str(json: &str) -> Result<Self> {
        let config: Self = serde_json::from_str(json)
            .map_err(|e| Error::invalid("config.json", format!("not a UNet3D config: {e}")))?;
        config.validate()?;
        Ok(config)
    }

    /// Reads and validates a diffusers `config.json`.
    ///
    /// # Errors
    /// [`Error::File`] when the file cannot be read, otherwise as [`Self::from_json_str`].
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        crate::loading::read_config(path.as_ref(), Self::from_json_str)
    }

    /// Number of down (and up) blocks.
    pub fn num_blocks(&self) -> usize {
        self.block_out_channels.len()
    }

    /// Width of the time embedding: `4 · block_out_channels[0]`.
    pub fn time_embed_dim(&self) -> usize {
        4 * self.block_out_channels.first().copied().unwrap_or(0)
    }

    /// GroupNorm groups (validated to be set).
    pub fn groups(&self) -> Result<usize> {
        self.norm_num_groups.ok_or_else(|| {
            Error::Unsupported(
                "`norm_num_groups` = null: UNet3DConditionModel's resnets, temporal \
                 convolutions and transformers need GroupNorm groups"
                    .into(),
            )
        })
    }

    /// The per-head width of every transformer.
    pub fn head_dim(&self) -> Result<usize> {
        match &self.attention_head_dim {
            PerBlock::One(d) => Ok(*d),
            PerBlock::Each(_) => Err(Error::Unsupported(
                "`attention_head_dim` given per block: diffusers' UNet3DConditionModel passes it \
                 to `transformer_in` as one number and cannot be built with a list"
                    .into(),
            )),
        }
    }

    /// Heads of the transformers of down block `block` (`block_out_channels[block] /
    /// attention_head_dim`, integer division as in diffusers; the mid block uses the last
    /// block's, up block `i` the one of down block `n − 1 − i`).
    pub fn heads(&self, block: usize) -> Result<usize> {
        let d = self.head_dim()?;
        let channels = *self.block_out_channels.get(block).ok_or_else(|| {
            Error::invalid(
                "block_out_channels",
                format!("has no entry for block {block}"),
            )
        })?;
        let heads = channels.checked_div(d).unwrap_or(0);
        if heads == 0 {
            return Err(Error::invalid(
                "attention_head_dim",
                format!(
                    "per-head width {d} leaves no attention head for a block of {channels} \
                     channels (block_out_channels[{block}])"
                ),
            ));
        }
        Ok(heads)
    }

    /// The parsed `down_block_types`.
    pub fn down_blocks(&self) -> Result<Vec<DownBlockKind>> {
        self.down_block_types
            .iter()
            .enumerate()
            .map(|(i, t)| DownBlockKind::parse(&format!("down_block_types[{i}]"), t))
            .collect()
    }

    /// The parsed `up_block_types`.
    pub fn up_blocks(&self) -> Result<Vec<UpBlockKind>> {
        self.up_block_types
            .iter()
            .enumerate()
            .map(|(i, t)| UpBlockKind::parse(&format!("up_block_types[{i}]"), t))
            .collect()
    }

    /// Input channels of each resnet of up block `i`: `(prev_output + skip)` as diffusers'
    /// `CrossAttnUpBlock3D` / `UpBlock3D` build them (skip tensors are concatenated after the
    /// hidden state).
    pub fn up_resnet_in_channels(&self, i: usize) -> Vec<usize> {
        let n = self.num_blocks();
        let rev: Vec<usize> = self.block_out_channels.iter().rev().copied().collect();
        let prev = rev[i.saturating_sub(1)];
        let out = rev[i];
        let input = rev[(i + 1).min(n - 1)];
        let layers = self.layers_per_block + 1;
        (0..layers)
            .map(|j| {
                let res_skip = if j == layers - 1 { input } else { out };
                let res_in = if j == 0 { prev } else { out };
                res_in + res_skip
            })
            .collect()
    }

    /// Checks every value the model depends on, naming the offending field.
    ///
    /// # Errors
    /// - [`Error::Unsupported`]: a block type other than the four 3-D blocks, `act_fn` other
    ///   than `silu`, `norm_num_groups = null`, `num_attention_heads` or `time_cond_proj_dim`
    ///   set, `attention_head_dim` given per block.
    /// - [`Error::InvalidConfig`]: zero sizes, block lists of different lengths, channels that
    ///   do not split into `norm_num_groups` groups, an `attention_head_dim` larger than a
    ///   block's channels, a non-positive `norm_eps` or `mid_block_scale_factor`.
    pub fn validate(&self) -> Result<()> {
        if self.num_attention_heads.is_some() {
            return Err(Error::Unsupported(
                "`num_attention_heads` must be null: diffusers' UNet3DConditionModel raises \
                 NotImplementedError (use `attention_head_dim`)"
                    .into(),
            ));
        }
        if let Some(d) = self.time_cond_proj_dim {
            return Err(Error::Unsupported(format!(
                "`time_cond_proj_dim` = {d}: timestep conditioning (`cond_proj`) is not \
                 implemented for UNet3DConditionModel"
            )));
        }
        if !matches!(self.act_fn.as_str(), "silu" | "swish") {
            return Err(Error::Unsupported(format!(
                "`act_fn` = {:?}: only \"silu\" is implemented",
                self.act_fn
            )));
        }
        for (field, v) in [
            ("in_channels", self.in_channels),
            ("out_channels", self.out_channels),
            ("layers_per_block", self.layers_per_block),
            ("cross_attention_dim", self.cross_attention_dim),
        ] {
            if v == 0 {
                return Err(Error::invalid(field, "must be > 0"));
            }
        }
        let n = self.num_blocks();
        if n == 0 {
            return Err(Error::invalid("block_out_channels", "must not be empty"));
        }
        if let Some(i) = self.block_out_channels.iter().position(|&c| c == 0) {
            return Err(Error::invalid(
                "block_out_channels",
                format!("entry {i} is 0"),
            ));
        }
        if self.down_block_types.len() != n {
            return Err(Error::invalid(
                "down_block_types",
                format!(
                    "{} entries but block_out_channels has {n}",
                    self.down_block_types.len()
                ),
            ));
        }
        if self.up_block_types.len() != n {
            return Err(Error::invalid(
                "up_block_types",
                format!(
                    "{} entries but down_block_types has {n}",
                    self.up_block_types.len()
                ),
            ));
        }
        self.down_blocks()?;
        self.up_blocks()?;
        vdm_core::error::ensure_positive("norm_eps", self.norm_eps)?;
        vdm_core::error::ensure_positive("mid_block_scale_factor", self.mid_block_scale_factor)?;
        let groups = self.groups()?;
        if groups == 0 {
            return Err(Error::invalid("norm_num_groups", "must be > 0"));
        }
        for (i, &c) in self.block_out_channels.iter().enumerate() {
            ensure_groups("norm_num_groups", c, groups).map_err(|_| {
                Error::invalid(
                    "norm_num_groups",
                    format!(
                        "block_out_channels[{i}] = {c} cannot be split into {groups} GroupNorm \
                         groups"
                    ),
                )
            })?;
            self.heads(i)?;
        }
        // Up-block resnets take sums of block widths, so they split into the groups too.
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny() -> String {
        std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/oracle/unet3d_config.json"),
        )
        .expect("fixtures/oracle/unet3d_config.json")
    }

    fn with(key: &str, value: &str) -> String {
        let mut v: serde_json::Value = serde_json::from_str(&tiny()).unwrap();
        v[key] = serde_json::from_str(value).unwrap();
        v.to_string()
    }

    #[test]
    fn oracle_config_parses() {
        let c = UNet3DConditionModelConfig::from_json_str(&tiny()).unwrap();
        assert_eq!(c.block_out_channels, [32, 64]);
        assert_eq!(c.heads(0).unwrap(), 4);
        assert_eq!(c.heads(1).unwrap(), 8);
        assert_eq!(c.up_resnet_in_channels(0), [128, 96]);
        assert_eq!(c.up_resnet_in_channels(1), [96, 64]);
        assert_eq!(
            c.down_blocks().unwrap(),
            [
                DownBlockKind::CrossAttnDownBlock3D,
                DownBlockKind::DownBlock3D
            ]
        );
        assert_eq!(c.sample_size, Some(SampleSize::Square(16)));
    }

    #[test]
    fn defaults_are_modelscope() {
        let c = UNet3DConditionModelConfig::default();
        c.validate().unwrap();
        assert_eq!(c.block_out_channels, [320, 640, 1280, 1280]);
        assert_eq!(c.heads(0).unwrap(), 5);
        assert_eq!(c.time_embed_dim(), 1280);
        assert_eq!(c.cross_attention_dim, 1024);
    }

    #[test]
    fn unsupported_values_name_the_field() {
        let cases = [
            ("time_cond_proj_dim", "256", "time_cond_proj_dim"),
            ("num_attention_heads", "8", "num_attention_heads"),
            (
                "down_block_types",
                r#"["CrossAttnDownBlock3D", "DownBlockSpatioTemporal"]"#,
                "down_block_types[1]",
            ),
            (
                "up_block_types",
                r#"["UpBlock3D", "CrossAttnUpBlock2D"]"#,
                "up_block_types[1]",
            ),
            ("act_fn", r#""gelu""#, "act_fn"),
            ("norm_num_groups", "null", "norm_num_groups"),
            ("attention_head_dim", "[8, 8]", "attention_head_dim"),
        ];
        for (key, value, field) in cases {
            let e = UNet3DConditionModelConfig::from_json_str(&with(key, value)).unwrap_err();
            assert!(matches!(e, Error::Unsupported(_)), "{key}: {e:?}");
            assert!(e.to_string().contains(field), "{key}: {e}");
        }
    }

    #[test]
    fn invalid_values_name_the_field() {
        let cases = [
            ("norm_num_groups", "6", "norm_num_groups"),
            ("attention_head_dim", "48", "attention_head_dim"),
            ("block_out_channels", "[32]", "down_block_types"),
            ("norm_eps", "0.0", "norm_eps"),
            ("layers_per_block", "0", "layers_per_block"),
        ];
        for (key, value, field) in cases {
            let e = UNet3DConditionModelConfig::from_json_str(&with(key, value)).unwrap_err();
            match &e {
                Error::InvalidConfig { field: f, .. } => assert_eq!(f, field, "{key}: {e}"),
                other => panic!("{key}: expected InvalidConfig, got {other:?}"),
            }
        }
        // Malformed JSON is a config error, not a panic.
        assert!(UNet3DConditionModelConfig::from_json_str("{").is_err());
        assert!(UNet3DConditionModelConfig::from_json_str(r#"{"in_channels": "four"}"#).is_err());
    }
}
