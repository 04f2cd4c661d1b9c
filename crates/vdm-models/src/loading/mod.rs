//! Loading diffusers-format safetensors checkpoints into Burn modules, unchanged.
//!
//! A diffusers checkpoint (`diffusion_pytorch_model.safetensors`, often `fp16`) is loaded
//! straight into a Burn module whose field names mirror the PyTorch attribute names. The loader
//! is model-agnostic: everything model-specific lives in the [`KeyRemap`] table the model
//! passes in.
//!
//! # What [`load_safetensors`] does
//!
//! 1. Reads and validates the safetensors header ([`read_safetensors_header`]); a truncated or
//!    corrupt file is an [`Error::File`] naming the path and the problem.
//! 2. Selects the keys under [`LoadOptions::prefix`] if one is set (stripping it), then renames
//!    the keys with the caller's extra remaps ([`LoadOptions::remap`]) and the model's
//!    [`KeyRemap`] table. Two file keys that end up with one name are an error rather than a
//!    silent overwrite.
//! 3. Applies the tensors with burn-store's `PyTorchToBurnAdapter` (every 2-D `weight` of a
//!    `burn::nn::Linear` is transposed from PyTorch's `[out, in]` to Burn's `[in, out]`;
//!    `weight`/`bias` of `GroupNorm`/`LayerNorm`/`BatchNorm`/`RmsNorm` load into
//!    `gamma`/`beta`; convolutions and embeddings already share PyTorch's layout), casting every
//!    float tensor to [`LoadOptions::dtype`] (the file may hold `f32`, `f16` or `bf16`). Enum
//!    variant names are not part of the paths ([`LoadOptions::skip_enum_variants`]).
//! 4. Collects every discrepancy at once: model parameters the file lacks (*missing*), file
//!    tensors the model does not use (*unexpected*, minus the ones matching
//!    [`LoadOptions::ignore_unexpected`]) and tensors of the wrong shape (*mismatched*, with the
//!    expected and found shapes). Any of them is one [`Error::Weights`] unless
//!    [`LoadOptions::allow_partial`] is set, in which case they are listed in the
//!    [`LoadReport`] and the affected parameters keep their initial values.
//!
//! Reading and validating the safetensors header lives in `loading/header.rs`, finding a model
//! folder's weight and config files in `loading/files.rs`, and the inverse, writing a module
//! as a diffusers checkpoint ([`save_safetensors`]), in `loading/save.rs`; their items are
//! re-exported here.
//!
//! # Key remapping
//!
//! Field names should equal the diffusers attribute names (`down_blocks`, `resnets`, `norm1`,
//! `time_emb_proj`, …): a `Vec<M>` field `blocks` holds its elements at `blocks.0.`,
//! `blocks.1.`, …, exactly like a PyTorch `ModuleList`. What remains to remap are the indices of
//! `nn.Sequential`/`ModuleList` wrappers around a single layer (`to_out.0`, `ff.net.2`, …),
//! which a model lists in a `&'static [KeyRemap]` table.
//!
//! Remap semantics are those of burn-store's `KeyRemapper`: **every** entry is tried in order,
//! each on the name produced by the entries before it (not first-match-wins), and a matching
//! entry replaces *all* its matches. Anchor patterns (`^…`, `…$`) and write capture groups
//! followed by a name character as `${1}` (`$1_x` would mean the group named `1_x`).
//!
//! ```no_run
//! use burn::nn::{Linear, LinearConfig};
//! use burn::module::Module;
//! use burn::tensor::Device;
//! use vdm_models::loading::{KeyRemap, LoadOptions, load_safetensors};
//!
//! #[derive(Module, Debug)]
//! struct Attention {
//!     to_out: Linear,
//! }
//!
//! // diffusers' `to_out` is `ModuleList([Linear, Dropout])`.
//! const REMAPS: &[KeyRemap] = &[KeyRemap::new(
//!     r"^to_out\.0\.",
//!     "to_out.",
//!     "diffusers wraps the output projection in a ModuleList with a dropout",
//! )];
//!
//! let device = Device::flex();
//! let model = Attention { to_out: LinearConfig::new(320, 320).init(&device) };
//! let (model, report) = load_safetensors(
//!     model,
//!     "attention.safetensors",
//!     REMAPS,
//!     &LoadOptions::new().ignore_prefix("to_q."),
//! )?;
//! println!("{report}");
//! # Ok::<(), vdm_core::Error>(())
//! ```

mod files;
mod header;
mod save;

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::Path;
use std::sync::{Arc, Mutex};

use burn::module::Module;
use burn::store::burn_pack::Tensor as PackTensor;
use burn::store::{
    ApplyError, FloatCastAdapter, KeyRemapper, ModuleAdapter, ModuleContext, ModuleSnapshot,
    PyTorchToBurnAdapter, SafetensorsStore,
};
use burn::tensor::FloatDType;
use vdm_core::{Error, Result};

pub use files::find_weight_file;
pub(crate) use files::read_config;
pub use header::{
    SafetensorsHeader, TensorEntry, parse_safetensors_header, read_safetensors_header,
};
pub use save::{save_safetensors, save_safetensors_as};

/// What [`Error::File`] names when the checkpoint came from memory rather than a path.
const IN_MEMORY: &str = "<in-memory safetensors>";

/// Marks the keys outside [`LoadOptions::prefix`]; `<` cannot occur in a module path.
const OUTSIDE_PREFIX: &str = "<outside-prefix>.";

/// The container type burn's `#[derive(Module)]` gives `burn::nn::Linear`; the only module
/// whose 2-D `weight` `PyTorchToBurnAdapter` transposes.
const LINEAR_CONTAINER: &str = "Struct:Linear";

/// One renaming rule from a checkpoint's key to the model's parameter path.
///
/// `pattern` is a regular expression (Rust `regex` syntax) matched against the key,
/// `replacement` may use capture groups (`$1`, `${name}`), and `reason` documents why the
/// rule exists (shown in errors about the rule). Tables are `&'static [KeyRemap]` constants
/// written by each model; see the [module docs](self) for the matching semantics.
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

/// How [`load_safetensors`] treats a checkpoint. Built with chained setters:
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
    /// unexpected and mis-shaped tensors are listed in the [`LoadReport`] instead of failing,
    /// and the affected parameters keep their initial values.
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
        let pattern = format!("^{}", escape_regex(prefix));
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

/// A tensor whose shape in the file differs from what the model expects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShapeMismatch {
    /// The key in the file.
    pub key: String,
    /// The model parameter it was matched to.
    pub param: String,
    /// The shape the model expects, in the file's (PyTorch) layout: `[out, in]` for a Linear.
    pub expected: Vec<usize>,
    /// The shape found in the file.
    pub found: Vec<usize>,
}

/// What a load did, for callers who want to log or check it.
///
/// After a successful strict load, `missing`, `unexpected` and `mismatched` are empty. With
/// [`LoadOptions::allow_partial`] they list what was not loaded.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LoadReport {
    /// Model parameters that were loaded, by their path in the module (sorted).
    pub applied: Vec<String>,
    /// Model parameters absent from the file (they keep their initial values).
    pub missing: Vec<String>,
    /// File keys the model does not use and no ignore pattern covers.
    pub unexpected: Vec<String>,
    /// Tensors whose shape does not fit (their parameters keep their initial values).
    pub mismatched: Vec<ShapeMismatch>,
    /// File keys the model does not use that matched an ignore pattern.
    pub ignored: Vec<String>,
    /// `(file key, remapped key)` for every key the remap tables changed.
    pub renamed: Vec<(String, String)>,
    /// Remap patterns that matched no key of this file (tables often cover several variants,
    /// so this is information, not an error).
    pub unmatched_remaps: Vec<String>,
    /// How many tensors of each dtype the file holds (safetensors names: `F16`, `BF16`, …).
    pub file_dtypes: BTreeMap<String, usize>,
}

impl LoadReport {
    /// Whether every model parameter was loaded and every file tensor was used or ignored.
    pub fn is_complete(&self) -> bool {
        self.missing.is_empty() && self.unexpected.is_empty() && self.mismatched.is_empty()
    }

    /// Model parameters that were not loaded (missing or mis-shaped), sorted.
    pub fn skipped(&self) -> Vec<&str> {
        let mut skipped: Vec<&str> = self
            .missing
            .iter()
            .map(String::as_str)
            .chain(self.mismatched.iter().map(|m| m.param.as_str()))
            .collect();
        skipped.sort_unstable();
        skipped
    }

    /// The [`Error::Weights`] describing everything that did not match.
    pub fn to_error(&self) -> Error {
        Error::Weights {
            missing: self.missing.clone(),
            unexpected: self.unexpected.clone(),
            mismatched: self
                .mismatched
                .iter()
                .map(|m| (m.key.clone(), m.expected.clone(), m.found.clone()))
                .collect(),
        }
    }
}

impl fmt::Display for LoadReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let dtypes: Vec<String> = self
            .file_dtypes
            .iter()
            .map(|(dtype, n)| format!("{n} {dtype}"))
            .collect();
        write!(
            f,
            "loaded {} tensors (file: {}), {} renamed, {} ignored",
            self.applied.len(),
            if dtypes.is_empty() {
                "empty".to_string()
            } else {
                dtypes.join(", ")
            },
            self.renamed.len(),
            self.ignored.len()
        )?;
        if !self.is_complete() {
            write!(
                f,
                "; NOT loaded: {} missing, {} unexpected, {} mis-shaped",
                self.missing.len(),
                self.unexpected.len(),
                self.mismatched.len()
            )?;
        }
        Ok(())
    }
}

/// Loads the safetensors checkpoint at `path` into `module`.
///
/// `remaps` is the model's key table (see the [module docs](self)); `options` selects the
/// dtype, partial loading, ignored keys and extra remaps. Returns the loaded module and a
/// [`LoadReport`]. The file is memory-mapped; each tensor is read when it is applied.
///
/// # Errors
///
/// - [`Error::File`]: the file cannot be read, is truncated or corrupt, holds a dtype Burn
///   cannot load, or holds non-float data where the model has a float parameter.
/// - [`Error::InvalidConfig`]: a remap or ignore pattern is not a valid regular expression,
///   or the remaps give two file keys the same name.
/// - [`Error::Weights`]: unless [`LoadOptions::allow_partial`], when any model parameter is
///   missing, any file tensor is unexpected (and not ignored) or has the wrong shape; all of
///   them are listed in the one error.
pub fn load_safetensors<M: Module>(
    module: M,
    path: impl AsRef<Path>,
    remaps: &[KeyRemap],
    options: &LoadOptions,
) -> Result<(M, LoadReport)> {
    let path = path.as_ref();
    let label = path.display().to_string();
    let header = read_safetensors_header(path)?;
    load(
        module,
        &header,
        || SafetensorsStore::from_file(path),
        &label,
        remaps,
        options,
    )
}

/// Loads an in-memory safetensors checkpoint (e.g. embedded weights or test data) into
/// `module`; otherwise identical to [`load_safetensors`]. The bytes are copied once.
///
/// # Errors
///
/// As [`load_safetensors`], with [`Error::File`] naming `<in-memory safetensors>`.
pub fn load_safetensors_bytes<M: Module>(
    module: M,
    bytes: &[u8],
    remaps: &[KeyRemap],
    options: &LoadOptions,
) -> Result<(M, LoadReport)> {
    let header = parse_safetensors_header(bytes)?;
    load(
        module,
        &header,
        || SafetensorsStore::from_bytes(Some(bytes.to_vec())),
        IN_MEMORY,
        remaps,
        options,
    )
}

/// The shared body of the two loaders, once the header is known to be sound.
fn load<M: Module>(
    mut module: M,
    header: &SafetensorsHeader,
    open: impl FnOnce() -> SafetensorsStore,
    label: &str,
    remaps: &[KeyRemap],
    options: &LoadOptions,
) -> Result<(M, LoadReport)> {
    // burn-store refuses the whole file when one tensor has a dtype it cannot represent;
    // say which one.
    let unloadable: Vec<String> = header
        .tensors
        .iter()
        .filter(|t| t.burn_dtype().is_none())
        .map(|t| format!("`{}` ({})", t.name, t.dtype))
        .collect();
    if !unloadable.is_empty() {
        return Err(file_error(
            label,
            format!(
                "tensors of a dtype Burn cannot load: {}",
                unloadable.join(", ")
            ),
        ));
    }

    let (remapper, sources) = build_remapper(remaps, options)?;
    let ignore = compile_ignore_patterns(&options.ignore_unexpected)?;

    // Compute every key's remapped name ourselves, with the same rules the store applies, so
    // that results (which speak of remapped names) can be reported with the file's keys.
    let mut original_of: HashMap<String, String> = HashMap::new();
    let mut renamed = Vec::new();
    let mut pattern_used = vec![false; remapper.patterns.len()];
    for tensor in &header.tensors {
        let mut name = tensor.name.clone();
        let mut matched = Vec::new();
        for (i, (regex, replacement)) in remapper.patterns.iter().enumerate() {
            if regex.is_match(&name) {
                name = regex.replace_all(&name, replacement.as_str()).into_owned();
                matched.push(i);
            }
        }
        if !name.starts_with(OUTSIDE_PREFIX) {
            for i in matched {
                pattern_used[i] = true;
            }
            if name != tensor.name {
                renamed.push((tensor.name.clone(), name.clone()));
            }
        }
        if let Some(other) = original_of.insert(name.clone(), tensor.name.clone()) {
            return Err(Error::invalid(
                "remaps",
                format!(
                    "file keys `{other}` and `{}` both map to `{name}`; one would silently \
                     replace the other",
                    tensor.name
                ),
            ));
        }
    }
    let unmatched_remaps = sources
        .into_iter()
        .zip(pattern_used)
        .filter_map(|(pattern, used)| if used { None } else { pattern })
        .collect();

    let probe = LayoutProbe::new(options.dtype);
    // Strictness is enforced below, where every problem can be reported at once: the store's
    // own checks stop at the first kind of problem and return unstructured text.
    let mut store = open()
        .remap(remapper)
        .with_from_adapter(probe.clone())
        .allow_partial(true)
        .validate(false)
        .skip_enum_variants(options.skip_enum_variants);
    let result = module
        .load_from(&mut store)
        .map_err(|e| file_error(label, e.to_string()))?;
    let seen = probe.into_records();

    let entry_of: HashMap<&str, &TensorEntry> = header
        .tensors
        .iter()
        .map(|t| (t.name.as_str(), t))
        .collect();
    let mut mismatched = Vec::new();
    let mut broken = Vec::new();
    for error in result.errors {
        match error {
            ApplyError::ShapeMismatch {
                path,
                expected,
                found,
            } => {
                let record = seen.get(&path);
                let key = record
                    .and_then(|r| source_key(&path, r, &original_of))
                    .unwrap_or_else(|| path.clone());
                // Report in the file's layout: the adapter has already transposed a Linear
                // weight, and the model's expectation is in Burn's `[in, out]`.
                let mut expected = expected.to_vec();
                let found = match entry_of.get(key.as_str()) {
                    Some(entry) => entry.shape.clone(),
                    None => found.to_vec(),
                };
                if record.is_some_and(|r| r.transposed) {
                    expected.reverse();
                }
                mismatched.push(ShapeMismatch {
                    key,
                    param: path,
                    expected,
                    found,
                });
            }
            ApplyError::DTypeMismatch {
                path,
                expected,
                found,
            } => broken.push(format!(
                "the tensor for `{path}` holds {found:?} data where the model expects \
                 {expected:?}"
            )),
            ApplyError::AdapterError { path, message }
            | ApplyError::LoadError { path, message } => {
                broken.push(format!("the tensor for `{path}` cannot be read: {message}"))
            }
        }
    }
    if !broken.is_empty() {
        return Err(file_error(label, broken.join("; ")));
    }
    mismatched.sort_by(|a, b| a.key.cmp(&b.key));

    let mut unexpected = Vec::new();
    let mut ignored = Vec::new();
    for remapped in result.unused {
        let key = original_of
            .get(&remapped)
            .cloned()
            .unwrap_or_else(|| remapped.clone());
        if remapped.starts_with(OUTSIDE_PREFIX)
            || ignore
                .patterns
                .iter()
                .any(|(regex, _)| regex.is_match(&key) || regex.is_match(&remapped))
        {
            ignored.push(key);
        } else {
            unexpected.push(key);
        }
    }
    unexpected.sort();
    ignored.sort();

    let mut applied = result.applied;
    applied.sort();
    let mut file_dtypes = BTreeMap::new();
    for tensor in &header.tensors {
        *file_dtypes.entry(tensor.dtype.clone()).or_insert(0) += 1;
    }

    let report = LoadReport {
        applied,
        missing: result.missing.into_iter().map(|(path, _)| path).collect(),
        unexpected,
        mismatched,
        ignored,
        renamed,
        unmatched_remaps,
        file_dtypes,
    };
    if !options.allow_partial && !report.is_complete() {
        return Err(report.to_error());
    }
    Ok((module, report))
}

/// Compiles the prefix selection, the caller's extra remaps and the model's table, keeping
/// each caller-visible pattern's source text for the report (`None` for internal rules).
fn build_remapper(
    table: &[KeyRemap],
    options: &LoadOptions,
) -> Result<(KeyRemapper, Vec<Option<String>>)> {
    let mut remapper = KeyRemapper::new();
    let mut sources = Vec::new();
    if let Some(prefix) = &options.prefix {
        // The `regex` crate has no look-ahead, so "every key not under the prefix" is built in
        // two steps: mark every key, then strip the mark together with the prefix. What keeps
        // the mark can match no module path.
        let strip = format!("^{}{}", escape_regex(OUTSIDE_PREFIX), escape_regex(prefix));
        for (pattern, replacement) in [("^", OUTSIDE_PREFIX), (strip.as_str(), "")] {
            remapper = remapper
                .add_pattern(pattern, replacement)
                .map_err(|e| Error::invalid("LoadOptions::prefix", format!("{prefix:?}: {e}")))?;
            sources.push(None);
        }
    }
    for (pattern, replacement) in &options.remaps {
        remapper = remapper
            .add_pattern(pattern, replacement.clone())
            .map_err(|e| Error::invalid("LoadOptions::remaps", format!("{pattern:?}: {e}")))?;
        sources.push(Some(pattern.clone()));
    }
    for remap in table {
        remapper = remapper
            .add_pattern(remap.pattern, remap.replacement)
            .map_err(|e| {
                Error::invalid(
                    "remaps",
                    format!("{:?} ({}): {e}", remap.pattern, remap.reason),
                )
            })?;
        sources.push(Some(remap.pattern.to_string()));
    }
    Ok((remapper, sources))
}

/// Compiles the ignore patterns. A `KeyRemapper` serves as the container of compiled regular
/// expressions, which saves vdm-models a direct dependency on `regex`.
fn compile_ignore_patterns(patterns: &[String]) -> Result<KeyRemapper> {
    patterns
        .iter()
        .try_fold(KeyRemapper::new(), |set, pattern| {
            set.add_pattern(pattern, "").map_err(|e| {
                Error::invalid(
                    "LoadOptions::ignore_unexpected",
                    format!("{pattern:?}: {e}"),
                )
            })
        })
}

/// The file key a model parameter was loaded from: its own path, or for a norm layer the
/// PyTorch name (`weight` for `gamma`), mapped back through the remaps.
fn source_key(
    path: &str,
    record: &ProbeRecord,
    original_of: &HashMap<String, String>,
) -> Option<String> {
    if let Some(original) = original_of.get(path) {
        return Some(original.clone());
    }
    let (parent, param) = match path.rsplit_once('.') {
        Some((parent, param)) => (Some(parent), param),
        None => (None, path),
    };
    let alternative =
        PyTorchToBurnAdapter.get_alternative_param_name(param, record.module_type.as_deref()?)?;
    let alternative = match parent {
        Some(parent) => format!("{parent}.{alternative}"),
        None => alternative,
    };
    original_of.get(&alternative).cloned()
}

/// What the probe saw of one tensor on its way into the module.
#[derive(Debug, Clone)]
struct ProbeRecord {
    /// Innermost module type holding the parameter (`Struct:Linear`, …).
    module_type: Option<String>,
    /// Whether `PyTorchToBurnAdapter` transposed it.
    transposed: bool,
}

/// `PyTorchToBurnAdapter` followed by `FloatCastAdapter`, recording for each parameter the
/// module type and whether it was transposed, so that shape errors can be stated in the
/// file's layout and keys.
#[derive(Clone)]
struct LayoutProbe {
    cast: FloatCastAdapter,
    records: Arc<Mutex<HashMap<String, ProbeRecord>>>,
}

impl LayoutProbe {
    fn new(dtype: FloatDType) -> Self {
        Self {
            cast: FloatCastAdapter::to(dtype.into()),
            records: Arc::default(),
        }
    }

    fn into_records(self) -> HashMap<String, ProbeRecord> {
        match self.records.lock() {
            Ok(mut records) => std::mem::take(&mut *records),
            Err(poisoned) => std::mem::take(&mut *poisoned.into_inner()),
        }
    }
}

impl ModuleAdapter for LayoutProbe {
    fn adapt(&self, tensor: PackTensor, ctx: ModuleContext<'_>) -> PackTensor {
        // The applier sets `tensor.name` to the parameter's path in the module before calling
        // the adapter. Mirror `PyTorchToBurnAdapter`'s rule for transposition.
        let module_type = ctx.module_type();
        let transposed = module_type == Some(LINEAR_CONTAINER)
            && tensor.name.rsplit('.').next() == Some("weight")
            && tensor.shape.num_dims() == 2;
        // A panic here would abort the process (burn-store guards `apply` with an
        // abort-on-unwind), so a poisoned lock is tolerated rather than unwrapped.
        let mut records = match self.records.lock() {
            Ok(records) => records,
            Err(poisoned) => poisoned.into_inner(),
        };
        records.insert(
            tensor.name.clone(),
            ProbeRecord {
                module_type: module_type.map(str::to_string),
                transposed,
            },
        );
        drop(records);
        let tensor = PyTorchToBurnAdapter.adapt(tensor, ctx);
        self.cast.adapt(tensor, ctx)
    }

    fn get_alternative_param_name(&self, param_name: &str, module_type: &str) -> Option<String> {
        PyTorchToBurnAdapter.get_alternative_param_name(param_name, module_type)
    }

    fn clone_box(&self) -> Box<dyn ModuleAdapter> {
        Box::new(self.clone())
    }
}

fn file_error(path: &str, reason: String) -> Error {
    Error::File {
        path: path.to_string(),
        reason,
    }
}

/// Escapes the regular-expression metacharacters of `literal` (as `regex::escape` does).
fn escape_regex(literal: &str) -> String {
    let mut escaped = String::with_capacity(literal.len());
    for c in literal.chars() {
        if "\\.+*?()|[]{}^$#&-~".contains(c) {
            escaped.push('\\');
        }
        escaped.push(c);
    }
    escaped
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::module::Param;
    use burn::nn::conv::{Conv2d, Conv2dConfig};
    use burn::nn::{GroupNorm, GroupNormConfig, Linear, LinearConfig};
    use burn::tensor::DType;
    use burn::tensor::{Device, Tensor, TensorData};
    use safetensors::Dtype;
    use safetensors::tensor::TensorView;
    use std::path::PathBuf;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A diffusers attention-output-like block: `to_out` is `ModuleList([Linear, Dropout])`
    /// in PyTorch, a plain Linear here.
    #[derive(Module, Debug)]
    struct Block {
        to_out: Linear,
    }

    #[derive(Module, Debug)]
    struct Net {
        proj: Linear,
        norm: GroupNorm,
        conv: Conv2d,
        blocks: Vec<Block>,
    }

    const REMAPS: &[KeyRemap] = &[KeyRemap::new(
        r"^(blocks\.\d+\.to_out)\.0\.",
        "${1}.",
        "to_out is ModuleList([Linear, Dropout]) in diffusers",
    )];

    fn device() -> Device {
        Device::flex()
    }

    fn net() -> Net {
        let device = device();
        Net {
            proj: LinearConfig::new(3, 2).init(&device),
            norm: GroupNormConfig::new(2, 4).init(&device),
            conv: Conv2dConfig::new([2, 4], [3, 3]).init(&device),
            blocks: (0..2)
                .map(|_| Block {
                    to_out: LinearConfig::new(3, 2).init(&device),
                })
                .collect(),
        }
    }

    /// A PyTorch-layout tensor: key, shape, values.
    type Entry = (String, Vec<usize>, Vec<f32>);

    fn entry(key: &str, shape: &[usize], seed: usize) -> Entry {
        let n: usize = shape.iter().product();
        let values = (0..n)
            .map(|i| ((i * 7 + seed * 13) % 23) as f32 * 0.173 - 1.9)
            .collect();
        (key.to_string(), shape.to_vec(), values)
    }

    /// Every tensor of `Net` as diffusers would save it.
    fn full_checkpoint() -> Vec<Entry> {
        vec![
            entry("proj.weight", &[2, 3], 1),
            entry("proj.bias", &[2], 2),
            entry("norm.weight", &[4], 3),
            entry("norm.bias", &[4], 4),
            entry("conv.weight", &[4, 2, 3, 3], 5),
            entry("conv.bias", &[4], 6),
            entry("blocks.0.to_out.0.weight", &[2, 3], 7),
            entry("blocks.0.to_out.0.bias", &[2], 8),
            entry("blocks.1.to_out.0.weight", &[2, 3], 9),
            entry("blocks.1.to_out.0.bias", &[2], 10),
        ]
    }

    fn values<'a>(entries: &'a [Entry], key: &str) -> &'a [f32] {
        &entries.iter().find(|e| e.0 == key).unwrap().2
    }

    fn serialize(entries: &[Entry], dtype: Dtype) -> Vec<u8> {
        let bytes: Vec<Vec<u8>> = entries
            .iter()
            .map(|(_, _, v)| match dtype {
                Dtype::F32 => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
                Dtype::F16 => v
                    .iter()
                    .flat_map(|x| half::f16::from_f32(*x).to_le_bytes())
                    .collect(),
                Dtype::BF16 => v
                    .iter()
                    .flat_map(|x| half::bf16::from_f32(*x).to_le_bytes())
                    .collect(),
                other => panic!("test helper does not write {other:?}"),
            })
            .collect();
        let views: Vec<(String, TensorView<'_>)> = entries
            .iter()
            .zip(&bytes)
            .map(|((key, shape, _), data)| {
                (
                    key.clone(),
                    TensorView::new(dtype, shape.clone(), data).unwrap(),
                )
            })
            .collect();
        safetensors::serialize(views, None).unwrap()
    }

    /// A file under the temp dir, deleted on drop.
    struct TempFile(PathBuf);

    impl TempFile {
        fn new(bytes: &[u8]) -> Self {
            static COUNTER: AtomicUsize = AtomicUsize::new(0);
            let path = std::env::temp_dir().join(format!(
                "vdm-loading-test-{}-{}.safetensors",
                std::process::id(),
                COUNTER.fetch_add(1, Ordering::Relaxed)
            ));
            std::fs::write(&path, bytes).unwrap();
            Self(path)
        }
    }

    impl Drop for TempFile {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    fn to_vec<const D: usize>(tensor: Tensor<D>) -> Vec<f32> {
        tensor.into_data().try_to_vec::<f32>().unwrap()
    }

    fn param_vec<const D: usize>(param: &Param<Tensor<D>>) -> Vec<f32> {
        to_vec(param.val())
    }

    /// `[rows, cols]` row-major → `[cols, rows]` row-major.
    fn transpose(values: &[f32], rows: usize, cols: usize) -> Vec<f32> {
        (0..cols)
            .flat_map(|c| (0..rows).map(move |r| values[r * cols + c]))
            .collect()
    }

    fn load_file(entries: &[Entry], options: &LoadOptions) -> Result<(Net, LoadReport)> {
        let file = TempFile::new(&serialize(entries, Dtype::F32));
        load_safetensors(net(), &file.0, REMAPS, options)
    }

    #[test]
    fn loading_exact_checkpoint_matches_pytorch_semantics() {
        let entries = full_checkpoint();
        let (model, report) = load_file(&entries, &LoadOptions::new()).unwrap();

        assert!(report.is_complete(), "{report:?}");
        assert_eq!(report.applied.len(), 10);
        assert!(report.applied.contains(&"norm.gamma".to_string()));
        assert!(report.ignored.is_empty() && report.unmatched_remaps.is_empty());
        assert_eq!(
            report.file_dtypes,
            BTreeMap::from([("F32".to_string(), 10)])
        );
        assert_eq!(
            report.renamed,
            vec![
                (
                    "blocks.0.to_out.0.bias".to_string(),
                    "blocks.0.to_out.bias".to_string()
                ),
                (
                    "blocks.0.to_out.0.weight".to_string(),
                    "blocks.0.to_out.weight".to_string()
                ),
                (
                    "blocks.1.to_out.0.bias".to_string(),
                    "blocks.1.to_out.bias".to_string()
                ),
                (
                    "blocks.1.to_out.0.weight".to_string(),
                    "blocks.1.to_out.weight".to_string()
                ),
            ]
        );

        // Linear: stored [in, out] = transpose of PyTorch's [out, in].
        assert_eq!(model.proj.weight.val().dims(), [3, 2]);
        assert_eq!(
            param_vec(&model.proj.weight),
            transpose(values(&entries, "proj.weight"), 2, 3)
        );
        assert_eq!(
            param_vec(model.proj.bias.as_ref().unwrap()),
            values(&entries, "proj.bias")
        );
        // Forward equals x·Wᵀ + b computed by hand from the PyTorch-layout weight.
        let x = [0.5f32, -1.25, 2.0];
        let w = values(&entries, "proj.weight");
        let b = values(&entries, "proj.bias");
        let expected: Vec<f32> = (0..2)
            .map(|j| (0..3).map(|i| x[i] * w[j * 3 + i]).sum::<f32>() + b[j])
            .collect();
        let input = Tensor::<2>::from_data(TensorData::new(x.to_vec(), [1, 3]), &device());
        let output = to_vec(model.proj.forward(input));
        for (o, e) in output.iter().zip(&expected) {
            assert!((o - e).abs() < 1e-5, "{output:?} vs {expected:?}");
        }

        // GroupNorm weight/bias → gamma/beta; conv in PyTorch's layout; Vec elements remapped.
        assert_eq!(
            param_vec(model.norm.gamma.as_ref().unwrap()),
            values(&entries, "norm.weight")
        );
        assert_eq!(
            param_vec(model.norm.beta.as_ref().unwrap()),
            values(&entries, "norm.bias")
        );
        assert_eq!(model.conv.weight.val().dims(), [4, 2, 3, 3]);
        assert_eq!(
            param_vec(&model.conv.weight),
            values(&entries, "conv.weight")
        );
        assert_eq!(
            param_vec(model.conv.bias.as_ref().unwrap()),
            values(&entries, "conv.bias")
        );
        for (i, block) in model.blocks.iter().enumerate() {
            let key = format!("blocks.{i}.to_out.0.weight");
            assert_eq!(
                param_vec(&block.to_out.weight),
                transpose(values(&entries, &key), 2, 3)
            );
            let key = format!("blocks.{i}.to_out.0.bias");
            assert_eq!(
                param_vec(block.to_out.bias.as_ref().unwrap()),
                values(&entries, &key)
            );
        }
    }

    #[test]
    fn loading_bytes_equals_loading_the_file() {
        let entries = full_checkpoint();
        let bytes = serialize(&entries, Dtype::F32);
        let (from_bytes, report) =
            load_safetensors_bytes(net(), &bytes, REMAPS, &LoadOptions::new()).unwrap();
        let (from_file, _) = load_file(&entries, &LoadOptions::new()).unwrap();
        assert!(report.is_complete());
        assert_eq!(
            param_vec(&from_bytes.conv.weight),
            param_vec(&from_file.conv.weight)
        );
        assert_eq!(
            param_vec(&from_bytes.blocks[1].to_out.weight),
            param_vec(&from_file.blocks[1].to_out.weight)
        );
    }

    #[test]
    fn loading_half_precision_files_casts_to_f32() {
        let entries = full_checkpoint();
        for (dtype, round, rel) in [
            (
                Dtype::F16,
                (|x| half::f16::from_f32(x).to_f32()) as fn(f32) -> f32,
                2f32.powi(-11),
            ),
            (
                Dtype::BF16,
                (|x| half::bf16::from_f32(x).to_f32()) as fn(f32) -> f32,
                2f32.powi(-8),
            ),
        ] {
            let file = TempFile::new(&serialize(&entries, dtype));
            let (model, report) =
                load_safetensors(net(), &file.0, REMAPS, &LoadOptions::new()).unwrap();
            assert!(report.is_complete());
            assert_eq!(report.file_dtypes.len(), 1);
            assert_eq!(report.file_dtypes[&format!("{dtype:?}")], 10);

            let weight = model.conv.weight.val();
            assert_eq!(weight.dtype(), DType::F32, "{dtype:?}");
            let loaded = to_vec(weight);
            for (l, o) in loaded.iter().zip(values(&entries, "conv.weight")) {
                assert_eq!(*l, round(*o), "{dtype:?}: exact cast of the stored value");
                assert!((l - o).abs() <= o.abs() * rel, "{dtype:?}: {l} vs {o}");
            }
            assert_eq!(model.proj.weight.val().dtype(), DType::F32);
            let proj = param_vec(&model.proj.weight);
            let expected: Vec<f32> = transpose(values(&entries, "proj.weight"), 2, 3)
                .into_iter()
                .map(round)
                .collect();
            assert_eq!(proj, expected, "{dtype:?}");
            let gamma = model.norm.gamma.as_ref().unwrap().val();
            assert_eq!(gamma.dtype(), DType::F32);
        }
    }

    #[test]
    fn truncated_or_corrupt_file_is_a_file_error() {
        let bytes = serialize(&full_checkpoint(), Dtype::F32);
        let cases: [(&[u8], &str); 4] = [
            (&bytes[..bytes.len() - 10], "truncated"),
            (&bytes[..100], "truncated"),
            (&bytes[..5], "8-byte"),
            (b"0123456789abcdef-not-safetensors", "header"),
        ];
        for (content, needle) in cases {
            let file = TempFile::new(content);
            let err = load_safetensors(net(), &file.0, REMAPS, &LoadOptions::new()).unwrap_err();
            match &err {
                Error::File { path, reason } => {
                    assert_eq!(path, &file.0.display().to_string());
                    assert!(reason.contains(needle), "{reason}");
                }
                other => panic!("expected Error::File, got {other:?}"),
            }
            assert!(matches!(
                read_safetensors_header(&file.0),
                Err(Error::File { .. })
            ));
            assert!(matches!(
                load_safetensors_bytes(net(), content, REMAPS, &LoadOptions::new()),
                Err(Error::File { .. })
            ));
        }

        let missing = std::env::temp_dir().join("vdm-loading-test-does-not-exist.safetensors");
        let err = load_safetensors(net(), &missing, REMAPS, &LoadOptions::new()).unwrap_err();
        assert!(
            matches!(&err, Error::File { path, .. } if path.contains("does-not-exist")),
            "{err:?}"
        );
    }

    #[test]
    fn renamed_key_is_reported_missing_and_unexpected() {
        let mut entries = full_checkpoint();
        entries[0].0 = "projection.weight".to_string();
        let err = load_file(&entries, &LoadOptions::new()).unwrap_err();
        match err {
            Error::Weights {
                missing,
                unexpected,
                mismatched,
            } => {
                assert_eq!(missing, vec!["proj.weight".to_string()]);
                assert_eq!(unexpected, vec!["projection.weight".to_string()]);
                assert!(mismatched.is_empty());
            }
            other => panic!("expected Error::Weights, got {other:?}"),
        }

        // A renamed key that needs a remap: reported under its name in the file.
        let mut entries = full_checkpoint();
        entries[8].0 = "blocks.1.to_out.1.weight".to_string();
        let err = load_file(&entries, &LoadOptions::new()).unwrap_err();
        assert!(
            matches!(&err, Error::Weights { missing, unexpected, .. }
                if missing == &["blocks.1.to_out.weight"]
                && unexpected == &["blocks.1.to_out.1.weight"]),
            "{err:?}"
        );
        let message = err.to_string();
        assert!(
            message.contains("1 missing [blocks.1.to_out.weight]"),
            "{message}"
        );
    }

    #[test]
    fn wrong_shapes_are_reported_in_the_file_layout() {
        let mut entries = full_checkpoint();
        entries[6] = entry("blocks.0.to_out.0.weight", &[5, 3], 7);
        entries[2] = entry("norm.weight", &[6], 3);
        // Several kinds of problem at once: all in one error.
        entries.remove(5); // conv.bias
        entries.push(entry("extra.weight", &[1], 11));
        let err = load_file(&entries, &LoadOptions::new()).unwrap_err();
        match err {
            Error::Weights {
                missing,
                unexpected,
                mismatched,
            } => {
                assert_eq!(missing, vec!["conv.bias".to_string()]);
                assert_eq!(unexpected, vec!["extra.weight".to_string()]);
                assert_eq!(
                    mismatched,
                    vec![
                        (
                            "blocks.0.to_out.0.weight".to_string(),
                            vec![2, 3],
                            vec![5, 3]
                        ),
                        ("norm.weight".to_string(), vec![4], vec![6]),
                    ]
                );
            }
            other => panic!("expected Error::Weights, got {other:?}"),
        }

        // A square PyTorch weight of the wrong size: still stated as [out, in].
        let mut entries = full_checkpoint();
        entries[0] = entry("proj.weight", &[3, 3], 1);
        let (_, report) = load_file(&entries, &LoadOptions::new().allow_partial(true)).unwrap();
        assert_eq!(
            report.mismatched,
            vec![ShapeMismatch {
                key: "proj.weight".to_string(),
                param: "proj.weight".to_string(),
                expected: vec![2, 3],
                found: vec![3, 3],
            }]
        );
        assert_eq!(report.skipped(), vec!["proj.weight"]);
    }

    #[test]
    fn allow_partial_loads_what_it_can_and_reports_the_rest() {
        let mut entries = full_checkpoint();
        entries.retain(|e| !e.0.starts_with("norm."));
        entries[0] = entry("proj.weight", &[4, 3], 1);
        entries.push(entry("time_embedding.linear_1.weight", &[2, 2], 12));
        let fresh = net();
        let init_gamma = param_vec(fresh.norm.gamma.as_ref().unwrap());
        let init_proj = param_vec(&fresh.proj.weight);
        let file = TempFile::new(&serialize(&entries, Dtype::F32));

        let strict = load_safetensors(net(), &file.0, REMAPS, &LoadOptions::new());
        assert!(matches!(strict, Err(Error::Weights { .. })));

        let (model, report) = load_safetensors(
            fresh,
            &file.0,
            REMAPS,
            &LoadOptions::new().allow_partial(true),
        )
        .unwrap();
        assert!(!report.is_complete());
        assert_eq!(report.missing, vec!["norm.beta", "norm.gamma"]);
        assert_eq!(report.unexpected, vec!["time_embedding.linear_1.weight"]);
        assert_eq!(report.mismatched.len(), 1);
        assert_eq!(
            report.skipped(),
            vec!["norm.beta", "norm.gamma", "proj.weight"]
        );
        assert_eq!(report.applied.len(), 7);
        assert!(report.to_string().contains("NOT loaded"), "{report}");
        // Loaded what it could, left the rest at its initial values.
        assert_eq!(
            param_vec(&model.conv.weight),
            values(&entries, "conv.weight")
        );
        assert_eq!(
            param_vec(&model.blocks[1].to_out.weight),
            transpose(values(&entries, "blocks.1.to_out.0.weight"), 2, 3)
        );
        assert_eq!(param_vec(model.norm.gamma.as_ref().unwrap()), init_gamma);
        assert_eq!(param_vec(&model.proj.weight), init_proj);
    }

    #[test]
    fn ignored_patterns_silence_known_unused_keys() {
        let mut entries = full_checkpoint();
        entries.push(entry("encoder.conv_in.weight", &[2, 2], 13));
        entries.push(entry("encoder.down_blocks.0.bias", &[2], 14));
        entries.push(entry("quant_conv.weight", &[1], 15));

        let err = load_file(&entries, &LoadOptions::new()).unwrap_err();
        assert!(
            matches!(&err, Error::Weights { unexpected, missing, .. }
                if unexpected.len() == 3 && missing.is_empty()),
            "{err:?}"
        );

        // A prefix alone leaves the other key unexpected.
        let err = load_file(&entries, &LoadOptions::new().ignore_prefix("encoder.")).unwrap_err();
        assert!(
            matches!(&err, Error::Weights { unexpected, .. }
                if unexpected == &["quant_conv.weight"]),
            "{err:?}"
        );

        let options = LoadOptions::new()
            .ignore_prefix("encoder.")
            .ignore_unexpected(r"^quant_conv\.");
        let (_, report) = load_file(&entries, &options).unwrap();
        assert!(report.is_complete());
        assert_eq!(
            report.ignored,
            vec![
                "encoder.conv_in.weight",
                "encoder.down_blocks.0.bias",
                "quant_conv.weight"
            ]
        );
        assert_eq!(report.applied.len(), 10);

        // Ignoring never hides a key the model does use.
        let (model, report) = load_file(
            &full_checkpoint(),
            &LoadOptions::new().ignore_unexpected("proj"),
        )
        .unwrap();
        assert!(report.ignored.is_empty());
        assert_eq!(
            param_vec(model.proj.bias.as_ref().unwrap()),
            values(&full_checkpoint(), "proj.bias")
        );
    }

    #[test]
    fn extra_remaps_run_before_the_model_table() {
        let entries: Vec<Entry> = full_checkpoint()
            .into_iter()
            .map(|(k, s, v)| (format!("model.unet.{k}"), s, v))
            .collect();
        let options = LoadOptions::new().remap(r"^model\.unet\.", "");
        let (_, report) = load_file(&entries, &options).unwrap();
        assert!(report.is_complete());
        assert_eq!(report.renamed.len(), 10);
        assert!(report.renamed.contains(&(
            "model.unet.blocks.1.to_out.0.weight".to_string(),
            "blocks.1.to_out.weight".to_string()
        )));

        // A table entry that matches nothing is reported, not an error.
        let table = [
            REMAPS[0],
            KeyRemap::new(r"^mid_block\.", "mid.", "unused here"),
        ];
        let bytes = serialize(&full_checkpoint(), Dtype::F32);
        let (_, report) =
            load_safetensors_bytes(net(), &bytes, &table, &LoadOptions::new()).unwrap();
        assert_eq!(report.unmatched_remaps, vec![r"^mid_block\."]);
    }

    #[test]
    fn bad_patterns_and_colliding_remaps_are_config_errors() {
        let bytes = serialize(&full_checkpoint(), Dtype::F32);
        let bad = [KeyRemap::new(r"^blocks\.(", "x", "broken")];
        let err = load_safetensors_bytes(net(), &bytes, &bad, &LoadOptions::new()).unwrap_err();
        assert!(matches!(&err, Error::InvalidConfig { field, .. } if field == "remaps"));

        let err = load_safetensors_bytes(
            net(),
            &bytes,
            REMAPS,
            &LoadOptions::new().ignore_unexpected("("),
        )
        .unwrap_err();
        assert!(matches!(&err, Error::InvalidConfig { .. }), "{err:?}");

        let mut entries = full_checkpoint();
        entries.push(entry("blocks.0.to_out.weight", &[2, 3], 16));
        let bytes = serialize(&entries, Dtype::F32);
        let err = load_safetensors_bytes(net(), &bytes, REMAPS, &LoadOptions::new()).unwrap_err();
        match err {
            Error::InvalidConfig { reason, .. } => {
                assert!(
                    reason.contains("both map to `blocks.0.to_out.weight`"),
                    "{reason}"
                )
            }
            other => panic!("expected InvalidConfig, got {other:?}"),
        }
    }

    #[test]
    fn prefix_loads_a_sub_module_of_a_larger_state_dict() {
        let mut entries: Vec<Entry> = full_checkpoint()
            .into_iter()
            .map(|(k, s, v)| (format!("vae.decoder.{k}"), s, v))
            .collect();
        entries.push(entry("vae.encoder.conv_in.weight", &[2], 20));
        // Would collide with the stripped `vae.decoder.proj.weight` without the prefix rule.
        entries.push(entry("proj.weight", &[7], 21));
        let file = TempFile::new(&serialize(&entries, Dtype::F32));
        let options = LoadOptions::new().prefix("vae.decoder.");
        let (model, report) = load_safetensors(net(), &file.0, REMAPS, &options).unwrap();
        assert!(report.is_complete(), "{report:?}");
        assert_eq!(report.applied.len(), 10);
        assert_eq!(
            report.ignored,
            vec!["proj.weight", "vae.encoder.conv_in.weight"]
        );
        assert!(report.unmatched_remaps.is_empty());
        assert!(report.renamed.contains(&(
            "vae.decoder.blocks.0.to_out.0.bias".to_string(),
            "blocks.0.to_out.bias".to_string()
        )));
        assert_eq!(
            param_vec(&model.proj.weight),
            transpose(values(&entries, "vae.decoder.proj.weight"), 2, 3)
        );

        // Still strict inside the prefix: a stray key under it is unexpected.
        entries.push(entry("vae.decoder.mid.weight", &[1], 22));
        let bytes = serialize(&entries, Dtype::F32);
        let err = load_safetensors_bytes(net(), &bytes, REMAPS, &options).unwrap_err();
        assert!(
            matches!(&err, Error::Weights { unexpected, missing, .. }
                if unexpected == &["vae.decoder.mid.weight"] && missing.is_empty()),
            "{err:?}"
        );
    }

    /// Like diffusers' `proj_in`, a Linear or a 1×1 conv depending on the config.
    #[derive(Module, Debug)]
    enum Projection {
        Linear(Linear),
        Conv(Conv2d),
    }

    #[derive(Module, Debug)]
    struct WithEnum {
        proj_in: Projection,
    }

    #[test]
    fn enum_variants_are_not_part_of_the_key() {
        let device = device();
        let linear = vec![
            entry("proj_in.weight", &[2, 3], 1),
            entry("proj_in.bias", &[2], 2),
        ];
        let bytes = serialize(&linear, Dtype::F32);
        let model = WithEnum {
            proj_in: Projection::Linear(LinearConfig::new(3, 2).init(&device)),
        };
        let (model, report) =
            load_safetensors_bytes(model, &bytes, &[], &LoadOptions::new()).unwrap();
        assert_eq!(report.applied, vec!["proj_in.bias", "proj_in.weight"]);
        let Projection::Linear(lin) = &model.proj_in else {
            panic!("variant changed")
        };
        assert_eq!(
            param_vec(&lin.weight),
            transpose(values(&linear, "proj_in.weight"), 2, 3)
        );

        let conv = vec![
            entry("proj_in.weight", &[2, 3, 1, 1], 3),
            entry("proj_in.bias", &[2], 4),
        ];
        let bytes = serialize(&conv, Dtype::F32);
        let model = WithEnum {
            proj_in: Projection::Conv(Conv2dConfig::new([3, 2], [1, 1]).init(&device)),
        };
        let (model, _) = load_safetensors_bytes(model, &bytes, &[], &LoadOptions::new()).unwrap();
        let Projection::Conv(c) = &model.proj_in else {
            panic!("variant changed")
        };
        assert_eq!(param_vec(&c.weight), values(&conv, "proj_in.weight"));

        // With variant names in the path, nothing matches.
        let model = WithEnum {
            proj_in: Projection::Conv(Conv2dConfig::new([3, 2], [1, 1]).init(&device)),
        };
        let options = LoadOptions::new().skip_enum_variants(false);
        let err = load_safetensors_bytes(model, &bytes, &[], &options).unwrap_err();
        assert!(
            matches!(&err, Error::Weights { missing, .. }
                if missing == &["proj_in.Conv.bias", "proj_in.Conv.weight"]),
            "{err:?}"
        );
    }

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

    #[test]
    fn integer_data_in_a_float_parameter_is_a_file_error() {
        let mut entries = full_checkpoint();
        entries.retain(|e| e.0 != "conv.bias");
        let f32_bytes = serialize(&entries, Dtype::F32);
        let header = parse_safetensors_header(&f32_bytes).unwrap();
        let start = f32_bytes.len()
            - header
                .tensors
                .iter()
                .map(|t| t.data_offsets.1)
                .max()
                .unwrap() as usize;
        let ints: Vec<u8> = [1i64, 2, 3, 4]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        let mut views: Vec<(String, TensorView<'_>)> = header
            .tensors
            .iter()
            .map(|t| {
                let (b, e) = t.data_offsets;
                let data = &f32_bytes[start + b as usize..start + e as usize];
                (
                    t.name.clone(),
                    TensorView::new(Dtype::F32, t.shape.clone(), data).unwrap(),
                )
            })
            .collect();
        views.push((
            "conv.bias".to_string(),
            TensorView::new(Dtype::I64, vec![4], &ints).unwrap(),
        ));
        let bytes = safetensors::serialize(views, None).unwrap();
        let err = load_safetensors_bytes(net(), &bytes, REMAPS, &LoadOptions::new()).unwrap_err();
        assert!(
            matches!(&err, Error::File { reason, .. } if reason.contains("conv.bias")),
            "{err:?}"
        );
    }

    #[test]
    fn half_precision_target_dtype() {
        let bytes = serialize(&full_checkpoint(), Dtype::F32);
        let options = LoadOptions::new().dtype(FloatDType::F16);
        let (model, report) = load_safetensors_bytes(net(), &bytes, REMAPS, &options).unwrap();
        assert!(report.is_complete());
        let weight = model.conv.weight.val();
        assert_eq!(weight.dtype(), DType::F16);
        let loaded = weight.into_data().try_to_vec::<half::f16>().unwrap();
        let expected: Vec<half::f16> = values(&full_checkpoint(), "conv.weight")
            .iter()
            .map(|v| half::f16::from_f32(*v))
            .collect();
        assert_eq!(loaded, expected);
    }

    #[test]
    fn header_lists_keys_shapes_and_dtypes() {
        let mut entries = full_checkpoint();
        entries.truncate(2);
        let file = TempFile::new(&serialize(&entries, Dtype::BF16));
        let header = read_safetensors_header(&file.0).unwrap();
        let summary: Vec<(&str, &str, &[usize])> = header
            .tensors
            .iter()
            .map(|t| (t.name.as_str(), t.dtype.as_str(), t.shape.as_slice()))
            .collect();
        assert_eq!(
            summary,
            vec![
                ("proj.bias", "BF16", &[2usize][..]),
                ("proj.weight", "BF16", &[2, 3][..])
            ]
        );
        assert_eq!(header.tensors[1].num_elements(), 6);
        assert_eq!(header.tensors[1].burn_dtype(), Some(DType::BF16));
        assert_eq!(
            parse_safetensors_header(&std::fs::read(&file.0).unwrap()).unwrap(),
            header
        );
    }

    #[test]
    fn escape_regex_matches_literally() {
        assert_eq!(escape_regex("a.b[0]"), r"a\.b\[0\]");
        assert_eq!(
            LoadOptions::new()
                .ignore_prefix("encoder.")
                .ignore_unexpected,
            vec![r"^encoder\."]
        );
    }
}
