//! Finding a model folder's files: its weights among the variants a diffusers / transformers
//! folder may hold, and its `config.json`.

use std::path::{Path, PathBuf};

use vdm_core::{Error, Result};

/// Reads the `config.json` at `path` and parses it with `parse`, whose malformed-JSON errors
/// (an [`Error::InvalidConfig`] naming `config.json`) become an [`Error::File`] naming `path`;
/// errors naming a field pass through.
///
/// # Errors
/// [`Error::File`] naming `path` when it cannot be read or parsed; `parse`'s field errors.
pub(crate) fn read_config<T>(path: &Path, parse: impl FnOnce(&str) -> Result<T>) -> Result<T> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::File {
        path: path.display().to_string(),
        reason: e.to_string(),
    })?;
    parse(&text).map_err(|e| match e {
        Error::InvalidConfig { field, reason } if field == "config.json" => Error::File {
            path: path.display().to_string(),
            reason,
        },
        other => other,
    })
}

/// The first of `names` that is a file in `dir`: how a model's `from_pretrained` picks its
/// weights among the variants a diffusers / transformers folder may hold (`model.safetensors`,
/// `model.fp16.safetensors`, …).
///
/// # Errors
/// [`Error::File`] naming `dir`, `what` is looked for and the names tried.
pub fn find_weight_file(dir: &Path, names: &[&str], what: &str) -> Result<PathBuf> {
    names
        .iter()
        .map(|name| dir.join(name))
        .find(|path| path.is_file())
        .ok_or_else(|| Error::File {
            path: dir.display().to_string(),
            reason: format!(
                "no {what} weights found (looked for {}; sharded checkpoints and PyTorch .bin \
                 files are not supported)",
                names.join(", ")
            ),
        })
}
