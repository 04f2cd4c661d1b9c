//! The one table of checkpoint-key renames between diffusers state dicts and the Burn module
//! paths of this crate.
//!
//! Module fields are named after the checkpoint keys (`norm1`, `conv_shortcut`,
//! `time_emb_proj`, `transformer_blocks`, `pos_embed.pe`, …), so only the indices of PyTorch
//! `nn.Sequential` / `nn.ModuleList` containers whose other members hold no weights (Dropout,
//! SiLU) need renaming, plus the pre-0.14 names of the VAE attention. Vectors of modules
//! (`down_blocks.N`, `resnets.N`, `transformer_blocks.N`) map to Burn's `field.N` paths
//! unchanged.
//!
//! Consumers apply every row in order with burn-store's `KeyRemapper` (regex crate syntax,
//! `${1}`-style groups), together with:
//!
//! - `PyTorchToBurnAdapter`, which transposes `burn::nn::Linear` weights (`[out, in]` →
//!   `[in, out]`) and renames GroupNorm / LayerNorm `weight`/`bias` to `gamma`/`beta`;
//! - `skip_enum_variants(true)` ([`SKIP_ENUM_VARIANTS`]): [`crate::transformer_2d::Projection`]
//!   is an enum (`Linear` or 1×1 `Conv`), whose variant name must not enter the path.
//!
//! ```
//! use vdm_models::keymap::{DIFFUSERS_KEY_REMAP, remap_key};
//!
//! assert_eq!(
//!     remap_key("mid_block.attentions.0.transformer_blocks.0.ff.net.0.proj.weight"),
//!     "mid_block.attentions.0.transformer_blocks.0.ff.proj.weight"
//! );
//! assert_eq!(
//!     remap_key("down_blocks.0.temp_convs.0.conv2.3.bias"),
//!     "down_blocks.0.temp_convs.0.conv2.conv.bias"
//! );
//! assert!(DIFFUSERS_KEY_REMAP.iter().all(|(_, _, why)| !why.is_empty()));
//! ```

/// `(regex pattern, replacement, why)`: every rename from a diffusers key to this crate's
/// module path, applied in order.
///
/// Patterns are anchored on a path-segment boundary (`(^|\.)`) so they hold both for full
/// model state dicts and for a single module's state dict.
pub const DIFFUSERS_KEY_REMAP: &[(&str, &str, &str)] = &[
    (
        r"(^|\.)to_out\.0\.",
        "${1}to_out.",
        "Attention.to_out is nn.ModuleList([Linear, Dropout]); only the Linear is kept \
         (attention::Attention::to_out)",
    ),
    (
        r"(^|\.)ff\.net\.0\.proj\.",
        "${1}ff.proj.",
        "FeedForward.net = [GEGLU(proj), Dropout, Linear]; the GEGLU projection is \
         attention::FeedForward::proj",
    ),
    (
        r"(^|\.)ff\.net\.2\.",
        "${1}ff.proj_out.",
        "FeedForward.net[2] is the output Linear: attention::FeedForward::proj_out",
    ),
    (
        r"(^|\.)(conv[1-4])\.0\.",
        "${1}${2}.norm.",
        "TemporalConvLayer.convK = Sequential(GroupNorm, SiLU, [Dropout,] Conv3d): index 0 is \
         the GroupNorm (temporal::TemporalConvStage::norm)",
    ),
    (
        r"(^|\.)conv1\.2\.",
        "${1}conv1.conv.",
        "TemporalConvLayer.conv1 = Sequential(GroupNorm, SiLU, Conv3d): index 2 is the Conv3d",
    ),
    (
        r"(^|\.)(conv[2-4])\.3\.",
        "${1}${2}.conv.",
        "TemporalConvLayer.conv2..4 = Sequential(GroupNorm, SiLU, Dropout, Conv3d): index 3 \
         is the Conv3d",
    ),
    (
        r"(^|\.)(attentions\.\d+)\.query\.",
        "${1}${2}.to_q.",
        "deprecated VAE attention block names (diffusers < 0.14 checkpoints, converted by \
         diffusers' _convert_deprecated_attention_blocks): query -> to_q",
    ),
    (
        r"(^|\.)(attentions\.\d+)\.key\.",
        "${1}${2}.to_k.",
        "deprecated VAE attention block names: key -> to_k",
    ),
    (
        r"(^|\.)(attentions\.\d+)\.value\.",
        "${1}${2}.to_v.",
        "deprecated VAE attention block names: value -> to_v",
    ),
    (
        r"^text_model\.",
        "",
        "transformers < 5 (and every hub SD / ModelScope text_encoder) nests CLIPTextModel's \
         weights in a `text_model` submodule; transformers 5 and clip::CLIPTextModel do not",
    ),
    (
        r"(^|\.)(attentions\.\d+)\.proj_attn\.",
        "${1}${2}.to_out.",
        "deprecated VAE attention block names: proj_attn -> to_out.0 (-> to_out)",
    ),
];

/// `(regex pattern, replacement, why)`: the renames from this crate's module paths back to
/// diffusers keys, applied in order when a model is saved
/// ([`crate::loading::save_safetensors`]). Each row undoes one row of [`DIFFUSERS_KEY_REMAP`]
/// for the modules vdm can write (UNets, motion modules, the text encoder, which is written in
/// transformers 5's prefix-free layout); the deprecated VAE attention names and the
/// `text_model.` prefix are read-only compatibility and have no inverse. Saving then loading
/// gives back every key (tested below and by the savers' round trips).
pub const DIFFUSERS_KEY_SAVE: &[(&str, &str, &str)] = &[
    (
        r"(^|\.)to_out\.",
        "${1}to_out.0.",
        "inverse of the to_out.0 row: Attention.to_out is ModuleList([Linear, Dropout])",
    ),
    (
        r"(^|\.)ff\.proj\.",
        "${1}ff.net.0.proj.",
        "inverse of the ff.net.0.proj row: the GEGLU projection",
    ),
    (
        r"(^|\.)ff\.proj_out\.",
        "${1}ff.net.2.",
        "inverse of the ff.net.2 row: the output Linear",
    ),
    (
        r"(^|\.)(conv[1-4])\.norm\.",
        "${1}${2}.0.",
        "inverse of the TemporalConvLayer GroupNorm row (index 0)",
    ),
    (
        r"(^|\.)conv1\.conv\.",
        "${1}conv1.2.",
        "inverse of the TemporalConvLayer.conv1 Conv3d row (index 2)",
    ),
    (
        r"(^|\.)(conv[2-4])\.conv\.",
        "${1}${2}.3.",
        "inverse of the TemporalConvLayer.conv2..4 Conv3d row (index 3)",
    ),
];

/// Whether loaders must skip enum variant names when building module paths (burn-store
/// `skip_enum_variants(true)`): [`crate::transformer_2d::Projection`] is an enum whose
/// `Linear`/`Conv` variant is chosen by the config, while the checkpoint key is plain
/// `proj_in.weight` in both cases.
pub const SKIP_ENUM_VARIANTS: bool = true;

/// The table as a burn-store [`KeyRemapper`](burn::store::KeyRemapper), ready for
/// `SafetensorsStore::remap`.
///
/// # Panics
/// Never: the table's patterns are checked by this crate's tests.
pub fn key_remapper() -> burn::store::KeyRemapper {
    burn::store::KeyRemapper::from_patterns(
        DIFFUSERS_KEY_REMAP
            .iter()
            .map(|(p, r, _)| (*p, *r))
            .collect(),
    )
    .expect("DIFFUSERS_KEY_REMAP patterns are valid regexes")
}

/// [`DIFFUSERS_KEY_SAVE`] as a burn-store [`KeyRemapper`](burn::store::KeyRemapper), for
/// `SafetensorsStore::remap` when saving.
///
/// # Panics
/// Never: the table's patterns are checked by this crate's tests.
pub fn save_key_remapper() -> burn::store::KeyRemapper {
    burn::store::KeyRemapper::from_patterns(
        DIFFUSERS_KEY_SAVE
            .iter()
            .map(|(p, r, _)| (*p, *r))
            .collect(),
    )
    .expect("DIFFUSERS_KEY_SAVE patterns are valid regexes")
}

/// Applies [`DIFFUSERS_KEY_REMAP`] to one key, exactly as burn-store's `KeyRemapper` does (for
/// diagnostics and tests).
pub fn remap_key(key: &str) -> String {
    let mut key = key.to_string();
    for (re, replacement) in key_remapper().to_regex_pairs() {
        if re.is_match(&key) {
            key = re.replace_all(&key, replacement.as_str()).into_owned();
        }
    }
    key
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_pattern_compiles_and_renames_what_it_should() {
        let cases = [
            ("to_out.0.weight", "to_out.weight"),
            (
                "up_blocks.1.attentions.0.transformer_blocks.0.attn2.to_out.0.bias",
                "up_blocks.1.attentions.0.transformer_blocks.0.attn2.to_out.bias",
            ),
            (
                "down_blocks.0.motion_modules.1.transformer_blocks.0.ff.net.2.weight",
                "down_blocks.0.motion_modules.1.transformer_blocks.0.ff.proj_out.weight",
            ),
            ("ff.net.0.proj.bias", "ff.proj.bias"),
            (
                "mid_block.temp_convs.0.conv1.0.weight",
                "mid_block.temp_convs.0.conv1.norm.weight",
            ),
            ("conv1.2.weight", "conv1.conv.weight"),
            ("conv4.3.bias", "conv4.conv.bias"),
            ("conv3.0.bias", "conv3.norm.bias"),
            (
                "decoder.mid_block.attentions.0.proj_attn.weight",
                "decoder.mid_block.attentions.0.to_out.weight",
            ),
            (
                "decoder.mid_block.attentions.0.key.bias",
                "decoder.mid_block.attentions.0.to_k.bias",
            ),
            (
                "text_model.encoder.layers.0.self_attn.q_proj.weight",
                "encoder.layers.0.self_attn.q_proj.weight",
            ),
            ("text_model.final_layer_norm.bias", "final_layer_norm.bias"),
            // Untouched keys.
            (
                "down_blocks.0.resnets.0.conv1.weight",
                "down_blocks.0.resnets.0.conv1.weight",
            ),
            (
                "down_blocks.1.resnets.0.conv_shortcut.weight",
                "down_blocks.1.resnets.0.conv_shortcut.weight",
            ),
            ("conv_in.weight", "conv_in.weight"),
            (
                "encoder.layers.11.mlp.fc2.weight",
                "encoder.layers.11.mlp.fc2.weight",
            ),
            (
                "down_blocks.0.motion_modules.0.transformer_blocks.0.pos_embed.pe",
                "down_blocks.0.motion_modules.0.transformer_blocks.0.pos_embed.pe",
            ),
            (
                "down_blocks.0.downsamplers.0.conv.weight",
                "down_blocks.0.downsamplers.0.conv.weight",
            ),
            (
                "time_embedding.linear_1.weight",
                "time_embedding.linear_1.weight",
            ),
        ];
        for (from, to) in cases {
            assert_eq!(remap_key(from), to, "{from}");
        }
        assert_eq!(
            key_remapper().to_regex_pairs().len(),
            DIFFUSERS_KEY_REMAP.len()
        );
    }

    #[test]
    fn the_save_table_undoes_the_load_table() {
        let save = |key: &str| {
            let mut key = key.to_string();
            for (re, replacement) in save_key_remapper().to_regex_pairs() {
                if re.is_match(&key) {
                    key = re.replace_all(&key, replacement.as_str()).into_owned();
                }
            }
            key
        };
        for key in [
            "up_blocks.1.attentions.0.transformer_blocks.0.attn2.to_out.0.bias",
            "down_blocks.0.motion_modules.1.transformer_blocks.0.ff.net.2.weight",
            "mid_block.attentions.0.transformer_blocks.0.ff.net.0.proj.bias",
            "mid_block.temp_convs.0.conv1.0.weight",
            "mid_block.temp_convs.0.conv1.2.weight",
            "down_blocks.0.temp_convs.0.conv4.3.bias",
            "down_blocks.0.temp_convs.0.conv3.0.bias",
            "down_blocks.0.resnets.0.conv1.weight",
            "down_blocks.0.resnets.0.conv2.bias",
            "transformer_in.proj_out.weight",
            "encoder.layers.0.mlp.fc2.weight",
            "conv_out.weight",
        ] {
            assert_eq!(save(&remap_key(key)), key, "{key}");
        }
    }
}

/// Test helpers shared by this crate's oracle tests: fixture tensors and single-module loads
/// through burn-store with [`DIFFUSERS_KEY_REMAP`].
#[cfg(test)]
pub(crate) mod test_support {
    use std::path::PathBuf;

    use burn::module::Module;
    use burn::store::{KeyRemapper, ModuleSnapshot, PyTorchToBurnAdapter, SafetensorsStore};
    use burn::tensor::{Device, Tensor, TensorData, Tolerance};

    use super::DIFFUSERS_KEY_REMAP;

    /// `fixtures/oracle/<name>` of the workspace.
    pub fn fixture(name: &str) -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../../fixtures/oracle")
            .join(name)
    }

    /// One f32 tensor of an oracle file (fails the test if absent).
    pub fn tensor<const D: usize>(file: &str, key: &str, device: &Device) -> Tensor<D> {
        let bytes = std::fs::read(fixture(file)).unwrap_or_else(|e| panic!("{file}: {e}"));
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        let view = st
            .tensor(key)
            .unwrap_or_else(|e| panic!("{file}: tensor {key}: {e}"));
        assert_eq!(view.dtype(), safetensors::Dtype::F32, "{key}");
        let values: Vec<f32> = view
            .data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        let shape: [usize; D] = view.shape().try_into().expect("rank");
        Tensor::from_data(TensorData::new(values, shape), device)
    }

    /// Loads the sub-module stored under `prefix` of an oracle state dict into `module`,
    /// asserting that every module parameter was found with the right shape.
    pub fn load<M: Module>(mut module: M, file: &str, prefix: &str) -> M {
        let mut patterns = vec![(format!("^{}", prefix.replace('.', r"\.")), String::new())];
        patterns.extend(
            DIFFUSERS_KEY_REMAP
                .iter()
                .map(|(p, r, _)| (p.to_string(), r.to_string())),
        );
        let mut store = SafetensorsStore::from_file(fixture(file))
            .with_from_adapter(PyTorchToBurnAdapter)
            .remap(KeyRemapper::from_patterns(patterns).unwrap())
            .skip_enum_variants(super::SKIP_ENUM_VARIANTS)
            .allow_partial(true);
        let result = module.load_from(&mut store).unwrap();
        assert!(result.errors.is_empty(), "{prefix}: {:?}", result.errors);
        assert!(result.missing.is_empty(), "{prefix}: {:?}", result.missing);
        // Every file tensor under `prefix` found its parameter.
        let bytes = std::fs::read(fixture(file)).unwrap();
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        let under = st.names().iter().filter(|k| k.starts_with(prefix)).count();
        assert!(under > 0, "{prefix}");
        assert_eq!(
            result.applied.len(),
            under,
            "{prefix}: {:?}",
            result.applied
        );
        module
    }

    /// Asserts `|a − b| ≤ tol` element-wise, reporting the largest deviation.
    pub fn assert_close<const D: usize>(name: &str, got: Tensor<D>, want: Tensor<D>, tol: f32) {
        assert_eq!(got.dims(), want.dims(), "{name}");
        let diff: f32 = (got.clone() - want.clone()).abs().max().into_scalar();
        println!("{name}: max |diff| = {diff:e}");
        got.into_data()
            .assert_approx_eq::<f32>(&want.into_data(), Tolerance::absolute(tol));
    }
}
