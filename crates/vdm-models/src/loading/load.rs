//! The load path: [`load_safetensors`] (from a file) and [`load_safetensors_bytes`] (from
//! memory), and the body they share: refuse dtypes Burn cannot load, rename every key as the
//! store will, apply the tensors through the layout probe, and collect every discrepancy into
//! one [`LoadReport`] (see the [module docs](super)).

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use burn::module::Module;
use burn::store::{ApplyError, ModuleSnapshot, SafetensorsStore};
use vdm_core::{Error, Result};

use super::header::{IN_MEMORY, file_error};
use super::probe::{LayoutProbe, source_key};
use super::remap::{OUTSIDE_PREFIX, build_remapper, compile_ignore_patterns};
use super::{
    KeyRemap, LoadOptions, LoadReport, SafetensorsHeader, ShapeMismatch, TensorEntry,
    parse_safetensors_header, read_safetensors_header,
};

/// Loads the safetensors checkpoint at `path` into `module`.
///
/// `remaps` is the model's key table (see the [module docs](super)); `options` selects the
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

/// Refuses, before reading any tensor, a target dtype the module's device cannot compute in:
/// Burn would load the weights, then the backend fails or returns garbage at the first
/// arithmetic (bf16 on wgpu: WGSL has no bf16; Burn's `Device::supports_dtype`).
fn check_compute_dtype<M: Module>(module: &M, options: &LoadOptions) -> Result<()> {
    for device in module.devices() {
        if !device.supports_dtype(options.dtype) {
            return Err(Error::Unsupported(format!(
                "computing in {:?} on {device:?}: the backend cannot do arithmetic in that \
                 dtype (wgpu has no bf16); load with LoadOptions::dtype(FloatDType::F32) or \
                 FloatDType::F16",
                options.dtype
            )));
        }
    }
    Ok(())
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
    check_compute_dtype(&module, options)?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::loading::test_support::*;
    use burn::nn::conv::{Conv2d, Conv2dConfig};
    use burn::nn::{Linear, LinearConfig};
    use burn::tensor::{DType, FloatDType, Tensor, TensorData};
    use safetensors::Dtype;
    use safetensors::tensor::TensorView;

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
}
