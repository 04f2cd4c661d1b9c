//! The configuration of [`CLIPTextModel`](super::CLIPTextModel), read from a transformers
//! `config.json` unchanged (transformers `models/clip/configuration_clip.py`, `CLIPTextConfig`).

use std::path::Path;

use serde::{Deserialize, Serialize};
use vdm_core::{Error, Result};

use crate::attention::{ensure_eps, ensure_nonzero};

/// The activation of the CLIP MLP (`hidden_act`; transformers `activations.ACT2FN`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HiddenAct {
    /// `"quick_gelu"`: `x · σ(1.702 x)` (OpenAI CLIP, the SD 1.x text encoder).
    QuickGelu,
    /// `"gelu"`: the exact `x · Φ(x)` (OpenCLIP-H, the SD 2.x / ModelScope text encoder).
    Gelu,
    /// `"gelu_new"` / `"gelu_pytorch_tanh"`: the tanh approximation of GELU.
    GeluTanh,
}

impl HiddenAct {
    /// The names accepted by [`HiddenAct::parse`].
    pub const NAMES: &'static [&'static str] =
        &["quick_gelu", "gelu", "gelu_new", "gelu_pytorch_tanh"];

    /// Parses transformers' activation name.
    ///
    /// # Errors
    /// [`Error::UnknownVariant`] naming `hidden_act` for any other name.
    pub fn parse(name: &str) -> Result<Self> {
        match name {
            "quick_gelu" => Ok(Self::QuickGelu),
            "gelu" => Ok(Self::Gelu),
            "gelu_new" | "gelu_pytorch_tanh" => Ok(Self::GeluTanh),
            other => Err(Error::unknown_variant("hidden_act", other, Self::NAMES)),
        }
    }
}

/// transformers' `CLIPTextConfig`: the fields a `text_encoder/config.json` holds. Defaults are
/// transformers' (the OpenAI CLIP ViT-B text tower); unknown fields (`architectures`,
/// `initializer_range`, `dtype`, …) are ignored.
///
/// ```
/// use vdm_models::clip::CLIPTextConfig;
///
/// let config = CLIPTextConfig::from_json_str(
///     r#"{"hidden_size": 1024, "num_attention_heads": 16, "hidden_act": "gelu"}"#,
/// )?;
/// assert_eq!(config.head_dim(), 64);
/// assert_eq!(config.max_position_embeddings, 77);
/// # Ok::<(), vdm_core::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct CLIPTextConfig {
    /// Rows of the token embedding.
    pub vocab_size: usize,
    /// Width of the hidden states (`D`).
    pub hidden_size: usize,
    /// Width of the MLP.
    pub intermediate_size: usize,
    /// Number of encoder layers.
    pub num_hidden_layers: usize,
    /// Attention heads per layer (`hidden_size` must be a multiple).
    pub num_attention_heads: usize,
    /// Longest token sequence (rows of the position embedding).
    pub max_position_embeddings: usize,
    /// MLP activation, see [`HiddenAct`].
    pub hidden_act: String,
    /// LayerNorm epsilon.
    pub layer_norm_eps: f64,
    /// Padding id (informational: the pipelines pass no padding mask).
    pub pad_token_id: Option<i64>,
    /// Beginning-of-text id.
    pub bos_token_id: Option<i64>,
    /// End-of-text id: the pooled output is taken at its first occurrence. The legacy value 2
    /// selects transformers' pre-2023 rule instead: the position of the largest id.
    pub eos_token_id: Option<i64>,
}

impl Default for CLIPTextConfig {
    fn default() -> Self {
        Self {
            vocab_size: 49408,
            hidden_size: 512,
            intermediate_size: 2048,
            num_hidden_layers: 12,
            num_attention_heads: 8,
            max_position_embeddings: 77,
            hidden_act: "quick_gelu".into(),
            layer_norm_eps: 1e-5,
            pad_token_id: Some(1),
            bos_token_id: Some(49406),
            eos_token_id: Some(49407),
        }
    }
}

impl CLIPTextConfig {
    /// Parses a `config.json` text and validates it.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] for malformed JSON or a wrong value type, and the errors of
    /// [`Self::validate`].
    pub fn from_json_str(json: &str) -> Result<Self> {
        let config: Self = serde_json::from_str(json)
            .map_err(|e| Error::invalid("config.json", format!("not a CLIPTextConfig: {e}")))?;
        config.validate()?;
        Ok(config)
    }

    /// Reads and validates a `config.json`.
    ///
    /// # Errors
    /// [`Error::File`] naming the path when it cannot be read or parsed; otherwise as
    /// [`Self::validate`].
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        crate::loading::read_config(path.as_ref(), Self::from_json_str)
    }

    /// Channels per attention head.
    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads.max(1)
    }

    /// The parsed [`HiddenAct`].
    ///
    /// # Errors
    /// As [`HiddenAct::parse`].
    pub fn activation(&self) -> Result<HiddenAct> {
        HiddenAct::parse(&self.hidden_act)
    }

    /// Checks every field.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] naming the field: zero sizes, a `hidden_size` that does not
    /// split into `num_attention_heads`, a bad epsilon; [`Error::UnknownVariant`] for an
    /// unsupported `hidden_act`.
    pub fn validate(&self) -> Result<()> {
        ensure_nonzero("vocab_size", self.vocab_size)?;
        ensure_nonzero("hidden_size", self.hidden_size)?;
        ensure_nonzero("intermediate_size", self.intermediate_size)?;
        ensure_nonzero("num_attention_heads", self.num_attention_heads)?;
        ensure_nonzero("max_position_embeddings", self.max_position_embeddings)?;
        if !self.hidden_size.is_multiple_of(self.num_attention_heads) {
            return Err(Error::invalid(
                "hidden_size",
                format!(
                    "{} is not a multiple of num_attention_heads = {}",
                    self.hidden_size, self.num_attention_heads
                ),
            ));
        }
        ensure_eps("layer_norm_eps", self.layer_norm_eps)?;
        self.activation()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_transformers_defaults() {
        let c = CLIPTextConfig::from_json_str("{}").unwrap();
        assert_eq!(c, CLIPTextConfig::default());
        assert_eq!(c.head_dim(), 64);
        assert_eq!(c.activation().unwrap(), HiddenAct::QuickGelu);
    }

    #[test]
    fn bad_fields_are_named() {
        let err = CLIPTextConfig::from_json_str(r#"{"hidden_size": 30, "num_attention_heads": 4}"#)
            .unwrap_err();
        assert!(err.to_string().contains("hidden_size"), "{err}");
        let err = CLIPTextConfig::from_json_str(r#"{"hidden_act": "relu"}"#).unwrap_err();
        assert!(err.to_string().contains("hidden_act"), "{err}");
        let err = CLIPTextConfig::from_json_str(r#"{"num_hidden_layers": "two"}"#).unwrap_err();
        assert!(err.to_string().contains("config.json"), "{err}");
        let err = CLIPTextConfig::from_json_str(r#"{"layer_norm_eps": 0.0}"#).unwrap_err();
        assert!(err.to_string().contains("layer_norm_eps"), "{err}");
    }
}
