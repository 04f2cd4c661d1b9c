//! [`AutoencoderKLConfig`]: the `config.json` of a diffusers `AutoencoderKL`
//! (`models/autoencoders/autoencoder_kl.py`, `AutoencoderKL.__init__`): parsing and
//! validation only. `AutoencoderKLConfig::init`, which builds the model, lives beside the model
//! in the parent module (burn-nn's layout), so this file imports nothing from it.

use std::path::Path;

use serde::de::{DeserializeOwned, Error as _};
use serde::{Deserialize, Deserializer, Serialize};
use vdm_core::error::{ensure_finite, ensure_positive};
use vdm_core::{Error, Result};

/// The only encoder block diffusers' `AutoencoderKL` checkpoints use (`unet_2d_blocks.py`).
pub const DOWN_ENCODER_BLOCK: &str = "DownEncoderBlock2D";
/// The only decoder block diffusers' `AutoencoderKL` checkpoints use (`unet_2d_blocks.py`).
pub const UP_DECODER_BLOCK: &str = "UpDecoderBlock2D";
/// Activation names accepted for `act_fn` (both are SiLU in diffusers' `get_activation`).
pub const SUPPORTED_ACTIVATIONS: &[&str] = &["silu", "swish"];

/// `sample_size` of the config: one side or `[height, width]`. diffusers uses it only for
/// tiled decoding, which vdm does not implement; it is kept for round trips.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum SampleSize {
    /// A square sample of this side (e.g. `512`).
    Square(usize),
    /// `[height, width]`.
    HeightWidth([usize; 2]),
}

/// Every field of a diffusers `AutoencoderKL` `config.json`, with diffusers' defaults
/// (`autoencoder_kl.py`). Keys the JSON lacks take the default; unknown keys (`_class_name`,
/// `_diffusers_version`, …) are ignored.
///
/// Parse with [`AutoencoderKLConfig::from_json_str`] / [`AutoencoderKLConfig::from_file`]
/// (typed errors naming the field) or through serde (`Deserialize`, which validates too).
///
/// ```
/// use vdm_models::vae::AutoencoderKLConfig;
///
/// let config = AutoencoderKLConfig::from_json_str(
///     r#"{"_class_name": "AutoencoderKL", "block_out_channels": [32, 64],
///         "down_block_types": ["DownEncoderBlock2D", "DownEncoderBlock2D"],
///         "up_block_types": ["UpDecoderBlock2D", "UpDecoderBlock2D"],
///         "norm_num_groups": 8, "shift_factor": null}"#,
/// )
/// .unwrap();
/// assert_eq!(config.downsample_factor(), 2);
/// assert_eq!(config.scaling_factor, 0.18215);
///
/// // Unsupported values are typed errors naming the field.
/// let err = AutoencoderKLConfig::from_json_str(r#"{"act_fn": "gelu"}"#).unwrap_err();
/// assert!(err.to_string().contains("act_fn"));
/// ```
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AutoencoderKLConfig {
    /// Image channels entering the encoder (`in_channels`, default 3).
    pub in_channels: usize,
    /// Image channels leaving the decoder (`out_channels`, default 3).
    pub out_channels: usize,
    /// Encoder block types (`down_block_types`); only `DownEncoderBlock2D` is supported.
    pub down_block_types: Vec<String>,
    /// Decoder block types (`up_block_types`); only `UpDecoderBlock2D` is supported.
    pub up_block_types: Vec<String>,
    /// Channels of each resolution level (`block_out_channels`, default `[64]`).
    pub block_out_channels: Vec<usize>,
    /// Resnets per encoder block (`layers_per_block`, default 1); decoder blocks have one more.
    pub layers_per_block: usize,
    /// Activation (`act_fn`): `silu` (default) or its alias `swish`.
    pub act_fn: String,
    /// Latent channels (`latent_channels`, default 4).
    pub latent_channels: usize,
    /// GroupNorm groups everywhere (`norm_num_groups`, default 32).
    pub norm_num_groups: usize,
    /// Training sample size (`sample_size`, default 32); only used by diffusers' tiling.
    pub sample_size: SampleSize,
    /// Latent scaling (`scaling_factor`, default 0.18215): diffusion latents are
    /// `z · scaling_factor`.
    pub scaling_factor: f64,
    /// Latent shift (`shift_factor`, SD3/FLUX VAEs): diffusion latents are
    /// `(z − shift_factor) · scaling_factor`.
    pub shift_factor: Option<f64>,
    /// Per-channel latent mean (`latents_mean`, SDXL-style pipelines): diffusion latents are
    /// `(z − mean) · scaling_factor / std`.
    pub latents_mean: Option<Vec<f64>>,
    /// Per-channel latent standard deviation (`latents_std`), with `latents_mean`.
    pub latents_std: Option<Vec<f64>>,
    /// diffusers runs this VAE in `f32` even in half-precision pipelines (`force_upcast`,
    /// default `true`). Recorded only: vdm computes in the dtype of the device and of the
    /// loaded weights ([`crate::loading::LoadOptions::dtype`]), which the caller chooses.
    pub force_upcast: bool,
    /// Whether the model has the 1×1 `quant_conv` after the encoder (`use_quant_conv`).
    pub use_quant_conv: bool,
    /// Whether the model has the 1×1 `post_quant_conv` before the decoder
    /// (`use_post_quant_conv`).
    pub use_post_quant_conv: bool,
    /// Whether the encoder and decoder mid blocks have their attention
    /// (`mid_block_add_attention`).
    pub mid_block_add_attention: bool,
}

impl Default for AutoencoderKLConfig {
    /// diffusers' `AutoencoderKL()` defaults.
    fn default() -> Self {
        Self {
            in_channels: 3,
            out_channels: 3,
            down_block_types: vec![DOWN_ENCODER_BLOCK.to_string()],
            up_block_types: vec![UP_DECODER_BLOCK.to_string()],
            block_out_channels: vec![64],
            layers_per_block: 1,
            act_fn: "silu".to_string(),
            latent_channels: 4,
            norm_num_groups: 32,
            sample_size: SampleSize::Square(32),
            scaling_factor: 0.18215,
            shift_factor: None,
            latents_mean: None,
            latents_std: None,
            force_upcast: true,
            use_quant_conv: true,
            use_post_quant_conv: true,
            mid_block_add_attention: true,
        }
    }
}

/// Reads `name` from a JSON object: absent → `default`, present → parsed, a parse failure is
/// an [`Error::InvalidConfig`] naming the field.
fn field<T: DeserializeOwned>(
    map: &serde_json::Map<String, serde_json::Value>,
    name: &str,
    default: T,
) -> Result<T> {
    match map.get(name) {
        None => Ok(default),
        Some(value) => serde_json::from_value(value.clone())
            .map_err(|e| Error::invalid(name, format!("{e} (got {value})"))),
    }
}

impl AutoencoderKLConfig {
    /// Parses and validates a diffusers `config.json` held as a JSON value.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] naming the field for a mistyped or out-of-range value,
    /// [`Error::Unsupported`] naming the field for a valid diffusers value vdm does not
    /// implement (another block type or activation).
    pub fn from_json_value(value: &serde_json::Value) -> Result<Self> {
        let serde_json::Value::Object(map) = value else {
            return Err(Error::invalid(
                "config.json",
                "the AutoencoderKL config must be a JSON object",
            ));
        };
        let d = Self::default();
        let config = Self {
            in_channels: field(map, "in_channels", d.in_channels)?,
            out_channels: field(map, "out_channels", d.out_channels)?,
            down_block_types: field(map, "down_block_types", d.down_block_types)?,
            up_block_types: field(map, "up_block_types", d.up_block_types)?,
            block_out_channels: field(map, "block_out_channels", d.block_out_channels)?,
            layers_per_block: field(map, "layers_per_block", d.layers_per_block)?,
            act_fn: field(map, "act_fn", d.act_fn)?,
            latent_channels: field(map, "latent_channels", d.latent_channels)?,
            norm_num_groups: field(map, "norm_num_groups", d.norm_num_groups)?,
            sample_size: field(map, "sample_size", d.sample_size)?,
            scaling_factor: field(map, "scaling_factor", d.scaling_factor)?,
            shift_factor: field(map, "shift_factor", d.shift_factor)?,
            latents_mean: field(map, "latents_mean", d.latents_mean)?,
            latents_std: field(map, "latents_std", d.latents_std)?,
            force_upcast: field(map, "force_upcast", d.force_upcast)?,
            use_quant_conv: field(map, "use_quant_conv", d.use_quant_conv)?,
            use_post_quant_conv: field(map, "use_post_quant_conv", d.use_post_quant_conv)?,
            mid_block_add_attention: field(
                map,
                "mid_block_add_attention",
                d.mid_block_add_attention,
            )?,
        };
        config.validate()?;
        Ok(config)
    }

    /// Parses and validates the text of a diffusers `config.json`.
    ///
    /// # Errors
    /// As [`AutoencoderKLConfig::from_json_value`]; text that is not JSON is an
    /// [`Error::InvalidConfig`] for `config.json`.
    pub fn from_json_str(text: &str) -> Result<Self> {
        let value: serde_json::Value = serde_json::from_str(text)
            .map_err(|e| Error::invalid("config.json", format!("not valid JSON: {e}")))?;
        Self::from_json_value(&value)
    }

    /// Reads, parses and validates a diffusers `config.json` file (e.g. `vae/config.json`).
    ///
    /// # Errors
    /// [`Error::File`] if the file cannot be read, else as
    /// [`AutoencoderKLConfig::from_json_str`].
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|e| Error::File {
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
        Self::from_json_str(&text)
    }

    /// Checks every field, naming the offending one.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] for values diffusers could not build either,
    /// [`Error::Unsupported`] for block types and activations vdm does not implement.
    pub fn validate(&self) -> Result<()> {
        for (name, value) in [
            ("in_channels", self.in_channels),
            ("out_channels", self.out_channels),
            ("latent_channels", self.latent_channels),
            ("layers_per_block", self.layers_per_block),
            ("norm_num_groups", self.norm_num_groups),
        ] {
            if value == 0 {
                return Err(Error::invalid(name, "must be > 0"));
            }
        }
        if self.block_out_channels.is_empty() {
            return Err(Error::invalid("block_out_channels", "must not be empty"));
        }
        for &channels in &self.block_out_channels {
            if channels == 0 || !channels.is_multiple_of(self.norm_num_groups) {
                return Err(Error::invalid(
                    "norm_num_groups",
                    format!(
                        "block_out_channels {:?} must all be positive multiples of \
                         norm_num_groups = {}",
                        self.block_out_channels, self.norm_num_groups
                    ),
                ));
            }
        }
        let levels = self.block_out_channels.len();
        for (name, types, supported) in [
            (
                "down_block_types",
                &self.down_block_types,
                DOWN_ENCODER_BLOCK,
            ),
            ("up_block_types", &self.up_block_types, UP_DECODER_BLOCK),
        ] {
            if types.len() != levels {
                return Err(Error::invalid(
                    name,
                    format!(
                        "has {} entries but block_out_channels has {levels}; diffusers builds \
                         one block per level",
                        types.len()
                    ),
                ));
            }
            if let Some(other) = types.iter().find(|t| t.as_str() != supported) {
                return Err(Error::Unsupported(format!(
                    "`{name}` entry {other:?}: vdm's AutoencoderKL implements only \
                     {supported:?}"
                )));
            }
        }
        if !SUPPORTED_ACTIVATIONS.contains(&self.act_fn.as_str()) {
            return Err(Error::Unsupported(format!(
                "`act_fn` {:?}: vdm's AutoencoderKL implements {}",
                self.act_fn,
                SUPPORTED_ACTIVATIONS.join(", ")
            )));
        }
        if let SampleSize::Square(0) | SampleSize::HeightWidth([0, _] | [_, 0]) = self.sample_size {
            return Err(Error::invalid("sample_size", "must be > 0"));
        }
        ensure_positive("scaling_factor", self.scaling_factor)?;
        if let Some(shift) = self.shift_factor {
            ensure_finite("shift_factor", shift)?;
        }
        match (&self.latents_mean, &self.latents_std) {
            (None, None) => {}
            (Some(mean), Some(std)) => {
                if self.shift_factor.is_some() {
                    return Err(Error::Unsupported(
                        "`shift_factor` together with `latents_mean`/`latents_std`: diffusers \
                         pipelines use one or the other, never both"
                            .into(),
                    ));
                }
                for (name, values) in [("latents_mean", mean), ("latents_std", std)] {
                    if values.len() != self.latent_channels {
                        return Err(Error::invalid(
                            name,
                            format!(
                                "has {} entries, expected latent_channels = {}",
                                values.len(),
                                self.latent_channels
                            ),
                        ));
                    }
                }
                for &m in mean {
                    ensure_finite("latents_mean", m)?;
                }
                for &s in std {
                    ensure_positive("latents_std", s)?;
                }
            }
            (Some(_), None) | (None, Some(_)) => {
                return Err(Error::invalid(
                    if self.latents_std.is_none() {
                        "latents_std"
                    } else {
                        "latents_mean"
                    },
                    "latents_mean and latents_std must be given together",
                ));
            }
        }
        Ok(())
    }

    /// How much smaller latents are than images: `2^(levels − 1)` (8 for the SD VAE).
    pub fn downsample_factor(&self) -> usize {
        1 << self.block_out_channels.len().saturating_sub(1)
    }
}

impl<'de> Deserialize<'de> for AutoencoderKLConfig {
    /// Parses and validates like [`AutoencoderKLConfig::from_json_value`] (the typed error
    /// becomes the deserializer's error text).
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> std::result::Result<Self, D::Error> {
        let value = serde_json::Value::deserialize(deserializer)?;
        Self::from_json_value(&value).map_err(D::Error::custom)
    }
}
