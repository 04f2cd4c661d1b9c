//! Saving a Burn module as a diffusers-format safetensors file: the inverse of
//! [`load_safetensors`](super::load_safetensors), so that what vdm trains is read back by the
//! ordinary loaders (and by diffusers) unchanged.
//!
//! burn-store's `BurnToPyTorchAdapter` transposes every `burn::nn::Linear` weight back to
//! PyTorch's `[out, in]` and renames the norms' `gamma` / `beta` to `weight` / `bias`; the
//! module paths are renamed with [`DIFFUSERS_KEY_SAVE`](crate::keymap::DIFFUSERS_KEY_SAVE),
//! the one table of inverse renames, beside the load table in [`crate::keymap`].

use std::path::Path;

use burn::module::Module;
use burn::store::{
    BurnToPyTorchAdapter, FloatCastAdapter, ModuleAdapter, ModuleSnapshot, SafetensorsStore,
};
use burn::tensor::{DType, FloatDType};
use vdm_core::{Error, Result};

use crate::keymap::{SKIP_ENUM_VARIANTS, save_key_remapper};

/// Writes `module`'s parameters to `path` as safetensors under diffusers' key names, in the
/// module's own float dtype, with `metadata` in the header (`format: pt` is always added, as
/// `save_pretrained` writes it).
///
/// The file is written to a temporary name beside `path` and renamed into place, so a failed
/// save never leaves a half-written checkpoint.
///
/// # Errors
/// [`Error::File`] naming `path` when it cannot be written.
pub fn save_safetensors<M: Module>(
    module: &M,
    path: impl AsRef<Path>,
    metadata: &[(&str, &str)],
) -> Result<()> {
    save(module, path.as_ref(), metadata, None)
}

/// [`save_safetensors`] with every float tensor stored as `dtype` (diffusers' `fp16`
/// variants: half the bytes of `f32`; the loaders cast back to the module's dtype).
///
/// # Errors
/// As [`save_safetensors`].
pub fn save_safetensors_as<M: Module>(
    module: &M,
    path: impl AsRef<Path>,
    metadata: &[(&str, &str)],
    dtype: FloatDType,
) -> Result<()> {
    save(module, path.as_ref(), metadata, Some(DType::from(dtype)))
}

fn save<M: Module>(
    module: &M,
    path: &Path,
    metadata: &[(&str, &str)],
    dtype: Option<DType>,
) -> Result<()> {
    let file_error = |reason: String| Error::File {
        path: path.display().to_string(),
        reason,
    };
    let name = path
        .file_name()
        .ok_or_else(|| file_error("not a file path".into()))?;
    let temp = path.with_file_name(format!(".{}.partial", name.to_string_lossy()));
    let store = SafetensorsStore::from_file(&temp);
    let store = match dtype {
        Some(dtype) => {
            store.with_to_adapter(BurnToPyTorchAdapter.chain(FloatCastAdapter::to(dtype)))
        }
        None => store.with_to_adapter(BurnToPyTorchAdapter),
    };
    let mut store = store
        .remap(save_key_remapper())
        .skip_enum_variants(SKIP_ENUM_VARIANTS)
        .overwrite(true)
        .metadata("format", "pt");
    for (key, value) in metadata {
        store = store.metadata(*key, *value);
    }
    let saved = module
        .save_into(&mut store)
        .map_err(|e| file_error(e.to_string()))
        .and_then(|()| std::fs::rename(&temp, path).map_err(|e| file_error(e.to_string())));
    if saved.is_err() {
        let _ = std::fs::remove_file(&temp);
    }
    saved
}
