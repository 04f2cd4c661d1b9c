//! The fuzz harnesses: one per untrusted format, each with a seed corpus of real files (the
//! repository's `fixtures/` and the embedded model's folder).
//!
//! | harness | input | calls |
//! |---|---|---|
//! | `safetensors` | a whole `.safetensors` file | `parse_safetensors_header` on the bytes; every 16th input also written to a file and read with `read_safetensors_header` (the two must agree) |
//! | `scheduler-config` | `scheduler_config.json` | `SchedulerConfig::from_json`, `build`, `set_timesteps` for 1, 2 and 25 steps |
//! | `model-config` | a model's `config.json` | every model config parser (UNet3D, UNet2D, UNetMotion, MotionAdapter, VAE, CLIP text, patchify) |
//! | `model-index` | `model_index.json` | `ModelIndex::from_json_str`, `class`, `class_of` of every component |
//! | `tokenizer` | one file of a tokenizer folder (the first byte picks which) | `CLIPTokenizer::from_dir`, then `encode` and `encode_long` of a prompt |
//! | `prompt` | the prompt text | the embedded tokenizer's `tokenize`, `encode`, `encode_long` |

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use vdm::models::clip::{CLIPTextConfig, CLIPTokenizer, LongPrompt};
use vdm::models::loading::{parse_safetensors_header, read_safetensors_header};
use vdm::models::patchify::PatchifyConfig;
use vdm::models::unet_motion::{MotionAdapterConfig, UNet2DConditionConfig, UNetMotionConfig};
use vdm::models::unet3d::UNet3DConditionModelConfig;
use vdm::models::vae::AutoencoderKLConfig;
use vdm::pipeline::ModelIndex;
use vdm::schedulers::config::SchedulerConfig;

use super::Target;

/// The repository's root (the examples crate's parent folder).
fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the examples crate sits in the workspace")
        .to_path_buf()
}

/// Every file under `dir` (recursively) whose name satisfies `keep`, sorted.
fn files(dir: &Path, keep: &dyn Fn(&str) -> bool) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for entry in entries.filter_map(Result::ok) {
        let path = entry.path();
        if path.is_dir() {
            out.extend(files(&path, keep));
        } else if keep(&entry.file_name().to_string_lossy()) {
            out.push(path);
        }
    }
    out.sort();
    out
}

/// The contents of `paths`.
///
/// # Panics
/// If one cannot be read (the corpus is part of the repository).
fn read_all(paths: &[PathBuf]) -> Vec<Vec<u8>> {
    paths
        .iter()
        .map(|p| std::fs::read(p).unwrap_or_else(|e| panic!("corpus {}: {e}", p.display())))
        .collect()
}

/// A scratch folder of this process for harnesses that need files.
fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("vdm-fuzz-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("a writable temporary folder");
    dir
}

/// Removes the scratch folders of this process (after the campaigns).
pub fn remove_scratch() {
    let suffix = format!("-{}", std::process::id());
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for entry in entries.filter_map(Result::ok) {
        let name = entry.file_name().to_string_lossy().to_string();
        if name.starts_with("vdm-fuzz-") && name.ends_with(&suffix) {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// Every harness, in the order of the module table.
pub fn all() -> Vec<Target> {
    vec![
        safetensors(),
        scheduler_config(),
        model_config(),
        model_index(),
        tokenizer(),
        prompt(),
    ]
}

/// The harness called `name`.
pub fn by_name(name: &str) -> Option<Target> {
    all().into_iter().find(|t| t.name == name)
}

/// A small valid safetensors file built here: an F32 `[2, 3]` and an F16 `[4]` tensor.
fn tiny_safetensors() -> Vec<u8> {
    let json = br#"{"__metadata__":{"format":"pt"},"a.weight":{"dtype":"F32","shape":[2,3],"data_offsets":[0,24]},"b":{"dtype":"F16","shape":[4],"data_offsets":[24,32]}}"#;
    let mut file = (json.len() as u64).to_le_bytes().to_vec();
    file.extend_from_slice(json);
    file.extend((0..32u8).collect::<Vec<_>>());
    file
}

fn safetensors() -> Target {
    let root = root();
    let mut corpus = read_all(&[
        root.join("fixtures/oracle/vae_io.safetensors"),
        root.join("fixtures/clip/text_encoder_fp16/model.fp16.safetensors"),
    ]);
    corpus.push(tiny_safetensors());
    let dir = scratch("safetensors");
    let count = AtomicU64::new(0);
    Target {
        name: "safetensors",
        about: "whole .safetensors files (header length, JSON, dtypes, shapes, offsets)",
        corpus,
        run: Box::new(move |bytes| {
            let parsed = parse_safetensors_header(bytes);
            if let Ok(header) = &parsed {
                for tensor in &header.tensors {
                    let _ = (tensor.num_elements(), tensor.burn_dtype());
                }
            }
            if count.fetch_add(1, Ordering::Relaxed).is_multiple_of(16) {
                let path = dir.join("input.safetensors");
                std::fs::write(&path, bytes).expect("the scratch file");
                let from_file = read_safetensors_header(&path);
                assert_eq!(
                    from_file.as_ref().ok(),
                    parsed.as_ref().ok(),
                    "the file and in-memory readers disagree"
                );
            }
            parsed.is_ok()
        }),
    }
}

fn scheduler_config() -> Target {
    let root = root();
    let mut corpus = read_all(&files(&root.join("fixtures"), &|n| {
        n == "scheduler_config.json"
    }));
    corpus.extend(read_all(&[
        vdm::embedded::moving_shapes_dir().join("scheduler/scheduler_config.json")
    ]));
    // One config of every class, with the fields real checkpoints set.
    for class in SchedulerConfig::CLASS_NAMES {
        corpus.push(
            format!(
                r#"{{"_class_name": "{class}", "num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear", "prediction_type": "epsilon", "timestep_spacing": "leading", "steps_offset": 1, "rescale_betas_zero_snr": false}}"#
            )
            .into_bytes(),
        );
    }
    Target {
        name: "scheduler-config",
        about: "scheduler_config.json of every scheduler class",
        corpus,
        run: Box::new(|bytes| {
            let text = String::from_utf8_lossy(bytes);
            let Ok(config) = SchedulerConfig::from_json(&text) else {
                return false;
            };
            let Ok(mut scheduler) = config.build() else {
                return false;
            };
            let mut accepted = true;
            for steps in [1, 2, 25] {
                accepted &= scheduler.set_timesteps(steps).is_ok();
            }
            accepted
        }),
    }
}

fn model_config() -> Target {
    let root = root();
    let embedded = vdm::embedded::moving_shapes_dir();
    let mut corpus = read_all(&files(&root.join("fixtures"), &|n| n == "config.json"));
    corpus.extend(read_all(&files(&embedded, &|n| n == "config.json")));
    Target {
        name: "model-config",
        about: "config.json of every model class",
        corpus,
        run: Box::new(|bytes| {
            let text = String::from_utf8_lossy(bytes);
            let results = [
                UNet3DConditionModelConfig::from_json_str(&text).is_ok(),
                UNet2DConditionConfig::from_json_str(&text).is_ok(),
                UNetMotionConfig::from_json_str(&text).is_ok(),
                MotionAdapterConfig::from_json_str(&text).is_ok(),
                AutoencoderKLConfig::from_json_str(&text).is_ok(),
                CLIPTextConfig::from_json_str(&text).is_ok(),
                PatchifyConfig::from_json_str(&text).is_ok(),
            ];
            results.contains(&true)
        }),
    }
}

fn model_index() -> Target {
    let root = root();
    let mut corpus = read_all(&files(&root.join("fixtures"), &|n| n == "model_index.json"));
    corpus.extend(read_all(&[
        vdm::embedded::moving_shapes_dir().join("model_index.json")
    ]));
    Target {
        name: "model-index",
        about: "model_index.json of a pipeline folder",
        corpus,
        run: Box::new(|bytes| {
            let text = String::from_utf8_lossy(bytes);
            let Ok(index) = ModelIndex::from_json_str(&text) else {
                return false;
            };
            for component in index.components.keys() {
                let _ = index.class_of(component);
            }
            true
        }),
    }
}

/// The files a tokenizer input may replace (its first byte, modulo this length, picks one),
/// and the folder each comes from.
const TOKENIZER_FILES: &[(&str, &str)] = &[
    ("legacy", "vocab.json"),
    ("legacy", "merges.txt"),
    ("legacy", "tokenizer_config.json"),
    ("legacy", "special_tokens_map.json"),
    ("fast", "tokenizer.json"),
    ("fast", "tokenizer_config.json"),
];

fn tokenizer() -> Target {
    let root = root();
    let base = |kind: &str| match kind {
        "legacy" => vdm::embedded::moving_shapes_dir().join("tokenizer"),
        _ => root.join("fixtures/clip/tokenizer"),
    };
    let mut corpus = Vec::new();
    for (i, (kind, file)) in TOKENIZER_FILES.iter().enumerate() {
        let mut input = vec![i as u8];
        input.extend(read_all(&[base(kind).join(file)]).remove(0));
        corpus.push(input);
    }
    // The two base folders, copied once into scratch folders the harness rewrites.
    let dirs: Vec<(String, PathBuf)> = ["legacy", "fast"]
        .iter()
        .map(|kind| {
            let dir = scratch(&format!("tokenizer-{kind}"));
            for path in files(&base(kind), &|_| true) {
                std::fs::copy(&path, dir.join(path.file_name().unwrap())).expect("a copy");
            }
            (kind.to_string(), dir)
        })
        .collect();
    let originals: Vec<Vec<u8>> = TOKENIZER_FILES
        .iter()
        .map(|(kind, file)| read_all(&[base(kind).join(file)]).remove(0))
        .collect();
    Target {
        name: "tokenizer",
        about: "vocab.json, merges.txt, tokenizer.json, tokenizer_config.json, special_tokens_map.json",
        corpus,
        run: Box::new(move |bytes| {
            let Some((&which, content)) = bytes.split_first() else {
                return false;
            };
            let which = which as usize % TOKENIZER_FILES.len();
            let (kind, file) = TOKENIZER_FILES[which];
            let dir = &dirs
                .iter()
                .find(|(k, _)| k == kind)
                .expect("a base folder")
                .1;
            let path = dir.join(file);
            std::fs::write(&path, content).expect("the scratch file");
            let accepted = CLIPTokenizer::from_dir(dir).is_ok_and(|tokenizer| {
                let prompt = "a red circle moving right, then up";
                let long = LongPrompt::Chunks { max_chunks: 3 };
                tokenizer.encode(prompt).is_ok() && tokenizer.encode_long(prompt, long).is_ok()
            });
            std::fs::write(&path, &originals[which]).expect("the scratch file");
            accepted
        }),
    }
}

fn prompt() -> Target {
    let root = root();
    let tokenizer = CLIPTokenizer::from_dir(vdm::embedded::moving_shapes_dir().join("tokenizer"))
        .expect("the embedded tokenizer");
    let cases: serde_json::Value = serde_json::from_slice(
        &read_all(&[root.join("fixtures/clip/tokenizer_cases.json")]).remove(0),
    )
    .expect("tokenizer_cases.json");
    let mut corpus: Vec<Vec<u8>> = cases["prompts"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|p| p.as_str())
                .map(|p| p.as_bytes().to_vec())
                .collect()
        })
        .unwrap_or_default();
    for extra in [
        "a red circle moving right",
        "a blue square moving left, then up",
        "ünïcödé ✓ 日本語 🙂 \u{0}\u{202e}",
        "",
    ] {
        corpus.push(extra.as_bytes().to_vec());
    }
    Target {
        name: "prompt",
        about: "prompt text through the embedded tokenizer",
        corpus,
        run: Box::new(move |bytes| {
            let text = String::from_utf8_lossy(bytes);
            let _ = tokenizer.tokenize(&text);
            let long = LongPrompt::Chunks { max_chunks: 4 };
            tokenizer.encode(&text).is_ok() && tokenizer.encode_long(&text, long).is_ok()
        }),
    }
}
