//! The caller's side of a load: the model's key table rows ([`KeyRemap`]) and the
//! [`LoadOptions`] (dtype, partial loading, ignored keys, extra remaps, prefix selection).

use burn::tensor::FloatDType;

/// One renaming rule from a checkpoint's key to the model's parameter path.
///
/// `pattern` is a regular expression (Rust `regex` syntax) matched against the key,
/// `replacement` may use capture groups (`$1`, `${name}`), and `reason` documents why the
/// rule exists (shown in errors about the rule). Tables are `&'static [KeyRemap]` constants
/// written by each model; see the [module docs](super) for the matching semantics.
///
/// ```
/// use vdm_models::loading::KeyRemap;
///
/// const FF: KeyRemap = KeyRemap::new(
///     r"^(.*\.ff)\.net\.2\.",
///     "${1}.proj_out.",
///     "diffusers' FeedForward is Sequential([GEGLU, Dropout, Linear])",
/// );
/// assert_eq!(FF.replacement, "${1}.proj_out.");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct KeyRemap {
    /// Regular expression matched against the (already partly remapped) key.
    pub pattern: &'static str,
    /// Replacement for every match; may reference capture groups.
    pub replacement: &'static str,
    /// Why the rule exists, for readers of the table and error messages.
    pub reason: &'static str,
}

impl KeyRemap {
    /// A rule renaming matches of `pattern` to `replacement`, documented by `reason`.
    pub const fn new(
        pattern: &'static str,
        replacement: &'static str,
        reason: &'static str,
    ) -> Self {
        Self {
            pattern,
            replacement,
            reason,
        }
    }

    /// Converts a table of `(pattern, replacement, reason)` rows.
    ///
    /// ```
    /// use vdm_models::loading::KeyRemap;
    ///
    /// const ROWS: &[(&str, &str, &str)] = &[(r"(^|\.)to_out\.0\.", "${1}to_out.", "ModuleList")];
    /// let table = KeyRemap::table(ROWS);
    /// assert_eq!(table[0], KeyRemap::new(r"(^|\.)to_out\.0\.", "${1}to_out.", "ModuleList"));
    /// ```
    pub fn table(rows: &[(&'static str, &'static str, &'static str)]) -> Vec<KeyRemap> {
        rows.iter().copied().map(KeyRemap::from).collect()
    }
}

impl From<(&'static str, &'static str, &'static str)> for KeyRemap {
    fn from((pattern, replacement, reason): (&'static str, &'static str, &'static str)) -> Self {
        Self::new(pattern, replacement, reason)
    }
}

/// How [`load_safetensors`](super::load_safetensors) treats a checkpoint.
/// Built with chained setters:
///
/// ```
/// use burn::tensor::FloatDType;
/// use vdm_models::loading::LoadOptions;
///
/// // Load an AutoencoderKL checkpoint into a decoder-only model, in bf16.
/// let options = LoadOptions::new()
///     .dtype(FloatDType::BF16)
///     .ignore_prefix("encoder.")
///     .ignore_unexpected(r"^quant_conv\.");
/// assert_eq!(options.dtype, FloatDType::BF16);
/// assert!(!options.allow_partial);
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct LoadOptions {
    /// Float dtype every floating-point tensor is cast to (default `F32`), whatever the file
    /// holds. Use the compute dtype of the device the model runs on
    /// (`device.settings().float_dtype`); loaded parameters take this dtype, not the one the
    /// module was initialised with.
    pub dtype: FloatDType,
    /// Accept an incomplete or over-complete checkpoint (default `false`). When set, missing,
    /// unexpected and mis-shaped tensors are listed in the [`LoadReport`](super::LoadReport)
    /// instead of failing, and the affected parameters keep their initial values.
    pub allow_partial: bool,
    /// Regular expressions for file keys the caller knows the model does not use. A file
    /// tensor that the model does not consume and whose key (as in the file, or after
    /// remapping) matches one of them is reported as ignored instead of unexpected.
    pub ignore_unexpected: Vec<String>,
    /// Extra `(pattern, replacement)` remaps, applied before the model's [`KeyRemap`] table
    /// (e.g. to rename keys of an exporter with other conventions).
    pub remaps: Vec<(String, String)>,
    /// Load only the file tensors whose key starts with this prefix, with the prefix removed
    /// (e.g. `Some("decoder.")` to load an AutoencoderKL's decoder into a decoder module, or
    /// one block of a full UNet state dict); the other keys are reported as ignored. Applied
    /// before [`remaps`](Self::remaps). Default `None`: the whole file.
    pub prefix: Option<String>,
    /// Leave enum variant names out of module paths (default `true`), as PyTorch has no such
    /// level: a field `proj_in: Projection` with `enum Projection { Linear(Linear), Conv(Conv2d) }`
    /// loads from `proj_in.weight` whichever variant the model was built with (burn-store's
    /// `skip_enum_variants`).
    pub skip_enum_variants: bool,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            dtype: FloatDType::F32,
            allow_partial: false,
            ignore_unexpected: Vec::new(),
            remaps: Vec::new(),
            prefix: None,
            skip_enum_variants: true,
        }
    }
}

impl LoadOptions {
    /// The defaults: cast to `F32`, require an exact match, ignore nothing, no extra remaps,
    /// the whole file, enum variant names skipped.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets the float dtype every floating-point tensor is cast to.
    pub fn dtype(mut self, dtype: FloatDType) -> Self {
        self.dtype = dtype;
        self
    }

    /// Allows (`true`) or forbids (`false`, the default) a partial load.
    pub fn allow_partial(mut self, allow: bool) -> Self {
        self.allow_partial = allow;
        self
    }

    /// Ignores unused file tensors whose key matches the regular expression `pattern`
    /// (unanchored: write `^encoder\.` to match a prefix).
    pub fn ignore_unexpected(mut self, pattern: impl Into<String>) -> Self {
        self.ignore_unexpected.push(pattern.into());
        self
    }

    /// Ignores unused file tensors whose key starts with `prefix` (taken literally).
    pub fn ignore_prefix(self, prefix: &str) -> Self {
        let pattern = format!("^{}", regex::escape(prefix));
        self.ignore_unexpected(pattern)
    }

    /// Adds a `(pattern, replacement)` remap applied before the model's table.
    pub fn remap(mut self, pattern: impl Into<String>, replacement: impl Into<String>) -> Self {
        self.remaps.push((pattern.into(), replacement.into()));
        self
    }

    /// Loads only the tensors under `prefix` (taken literally), stripping it; see
    /// [`LoadOptions::prefix`](#structfield.prefix).
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = Some(prefix.into());
        self
    }

    /// Sets whether enum variant names are left out of module paths (default `true`).
    pub fn skip_enum_variants(mut self, skip: bool) -> Self {
        self.skip_enum_variants = skip;
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::loading::load_safetensors_bytes;
    use crate::loading::test_support::*;
    use safetensors::Dtype;

    #[test]
    fn tuple_tables_convert() {
        const ROWS: &[(&str, &str, &str)] = &[(
            r"^(blocks\.\d+\.to_out)\.0\.",
            "${1}.",
            "to_out is ModuleList([Linear, Dropout]) in diffusers",
        )];
        assert_eq!(KeyRemap::table(ROWS), REMAPS);
        let bytes = serialize(&full_checkpoint(), Dtype::F32);
        let table = KeyRemap::table(ROWS);
        let (_, report) =
            load_safetensors_bytes(net(), &bytes, &table, &LoadOptions::new()).unwrap();
        assert!(report.is_complete());
    }
}
