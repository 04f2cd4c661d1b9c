//! Compiling the key renaming of a load: the prefix selection ([`LoadOptions::prefix`]), the
//! caller's extra remaps and the model's [`KeyRemap`] table into one burn-store
//! `KeyRemapper`, and the ignore patterns ([`LoadOptions::ignore_unexpected`]). See the
//! [module docs](super) for the matching semantics.

use burn::store::KeyRemapper;
use vdm_core::{Error, Result};

use super::{KeyRemap, LoadOptions};

/// Marks the keys outside [`LoadOptions::prefix`]; `<` cannot occur in a module path.
pub(super) const OUTSIDE_PREFIX: &str = "<outside-prefix>.";

/// Compiles the prefix selection, the caller's extra remaps and the model's table, keeping
/// each caller-visible pattern's source text for the report (`None` for internal rules).
pub(super) fn build_remapper(
    table: &[KeyRemap],
    options: &LoadOptions,
) -> Result<(KeyRemapper, Vec<Option<String>>)> {
    let mut remapper = KeyRemapper::new();
    let mut sources = Vec::new();
    if let Some(prefix) = &options.prefix {
        // The `regex` crate has no look-ahead, so "every key not under the prefix" is built in
        // two steps: mark every key, then strip the mark together with the prefix. What keeps
        // the mark can match no module path.
        let strip = format!(
            "^{}{}",
            regex::escape(OUTSIDE_PREFIX),
            regex::escape(prefix)
        );
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
pub(super) fn compile_ignore_patterns(patterns: &[String]) -> Result<KeyRemapper> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::loading::test_support::*;
    use crate::loading::{load_safetensors, load_safetensors_bytes};
    use safetensors::Dtype;

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

    #[test]
    fn prefixes_are_matched_literally() {
        assert_eq!(regex::escape("a.b[0]"), r"a\.b\[0\]");
        assert_eq!(
            LoadOptions::new()
                .ignore_prefix("encoder.")
                .ignore_unexpected,
            vec![r"^encoder\."]
        );
    }
}
