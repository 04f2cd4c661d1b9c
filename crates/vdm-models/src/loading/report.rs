//! What a load did: [`LoadReport`] (applied, missing, unexpected, mis-shaped, ignored and
//! renamed tensors) and [`ShapeMismatch`], and the one [`Error::Weights`] a strict load
//! returns.

use std::collections::BTreeMap;
use std::fmt;

use vdm_core::Error;

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
/// [`LoadOptions::allow_partial`](super::LoadOptions::allow_partial) they list what was not loaded.
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::loading::test_support::*;
    use crate::loading::{LoadOptions, load_safetensors};
    use safetensors::Dtype;

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
}
