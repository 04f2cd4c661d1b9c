//! The plumbing shared by the three diffusers configurations: [`PerBlock`] (a field holding
//! one value or one value per block), reading a `config.json` (unknown keys ignored, a
//! mistyped key named) and the [`Error::Unsupported`] messages that name a field and its value.

use std::fmt::Display;
use std::path::Path;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use vdm_core::{Error, Result};

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
pub(super) fn unsupported(field: &str, value: impl Display, why: &str) -> Error {
    Error::Unsupported(format!("`{field}` = {value}: {why}"))
}

/// Requires an optional field to be absent (`null`).
pub(super) fn require_null<T: Serialize>(field: &str, value: &Option<T>, why: &str) -> Result<()> {
    match value {
        Some(v) => Err(unsupported(field, json(v), why)),
        None => Ok(()),
    }
}

/// Requires a field to hold its diffusers default.
pub(super) fn require_eq<T: PartialEq + Serialize>(
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
pub(super) fn json<T: Serialize>(v: &T) -> String {
    serde_json::to_string(v).unwrap_or_else(|_| "?".into())
}

/// Parses a diffusers config from JSON text. Unknown keys are ignored; a key with a value of
/// the wrong JSON type is an [`Error::InvalidConfig`] naming that key.
pub(super) fn parse_json<T: DeserializeOwned>(text: &str, what: &str) -> Result<T> {
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
pub(super) fn read_json<T: DeserializeOwned>(path: &Path, what: &str) -> Result<T> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::File {
        path: path.display().to_string(),
        reason: e.to_string(),
    })?;
    parse_json(&text, what)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::unet_motion::{MotionAdapterConfig, UNetMotionConfig};

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
}
