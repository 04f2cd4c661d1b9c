//! The CLIP tokenizer and text encoder against transformers 5.25 / tokenizers 0.23.3
//! (`fixtures/clip`, made by `fixtures/clip/gen_clip.py`; nothing downloaded): a tiny CLIP BPE
//! vocabulary in both folder layouts, and a tiny random `CLIPTextModel` (3 layers, D = 32,
//! 4 heads) in fp32 (transformers 5 keys) and fp16 (hub keys with `text_model.` and the old
//! `position_ids` buffer).
//!
//! Tolerances: token ids equal; outputs of `final_layer_norm` (what the pipelines use) within
//! 1e-5 max abs (fp32 against fp32; the fp16 case compares with transformers run on the same
//! fp16 weights widened to fp32). The raw hidden states between layers reach |x| ≈ 22 with
//! these weights, where one fp32 ulp is 1.9e-6: they are compared relative to their largest
//! magnitude, within 2e-6 (measured: 6.4e-7).

use std::path::PathBuf;

use burn::tensor::{Device, Int, Tensor, TensorData};
use serde_json::Value;
use vdm_core::Error;
use vdm_models::clip::{
    CLIPTextConfig, CLIPTextModel, CLIPTokenizer, LongPrompt, PromptEncoder, PromptOptions,
};
use vdm_models::loading::LoadOptions;

const TOLERANCE: f32 = 1e-5;
/// Bound on `max |ours − theirs| / max |theirs|` for the raw hidden states.
const RELATIVE_TOLERANCE: f32 = 2e-6;

fn dev() -> Device {
    crate::test_device()
}

/// `fixtures/clip/<name>`; panics (never skips) if the fixture is missing.
fn fixture(name: &str) -> PathBuf {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../fixtures/clip")
        .join(name);
    assert!(
        path.exists(),
        "missing CLIP fixture {} (regenerate with fixtures/clip/gen_clip.py)",
        path.display()
    );
    path
}

fn cases() -> Value {
    let text = std::fs::read_to_string(fixture("tokenizer_cases.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn ids_of(value: &Value) -> Vec<u32> {
    value
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as u32)
        .collect()
}

/// `(shape, values)` of one f32 tensor of `text_encoder_io.safetensors`.
fn io_tensor(key: &str) -> (Vec<usize>, Vec<f32>) {
    let bytes = std::fs::read(fixture("text_encoder_io.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let view = st.tensor(key).unwrap_or_else(|_| panic!("no tensor {key}"));
    assert_eq!(view.dtype(), safetensors::Dtype::F32, "{key}");
    let values = view
        .data()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    (view.shape().to_vec(), values)
}

fn input_ids() -> Tensor<2, Int> {
    let bytes = std::fs::read(fixture("text_encoder_io.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let view = st.tensor("input_ids").unwrap();
    let ids: Vec<i64> = view
        .data()
        .chunks_exact(8)
        .map(|b| i64::from_le_bytes(b.try_into().unwrap()))
        .collect();
    let shape: [usize; 2] = view.shape().try_into().unwrap();
    Tensor::from_data(TensorData::new(ids, shape), &dev())
}

/// `(max |ours − theirs|, max |theirs|)`.
fn errors<const D: usize>(ours: Tensor<D>, key: &str) -> (f32, f32) {
    let (shape, expected) = io_tensor(key);
    assert_eq!(ours.dims().to_vec(), shape, "{key}");
    let ours = ours
        .into_data()
        .convert::<f32>()
        .try_to_vec::<f32>()
        .unwrap();
    let err = ours
        .iter()
        .zip(&expected)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f32::max);
    let scale = expected.iter().map(|v| v.abs()).fold(0.0, f32::max);
    if std::env::var_os("VDM_DEBUG").is_some() {
        eprintln!("{key}: max abs error {err:e}, max |x| {scale}");
    }
    (err, scale)
}

fn assert_close<const D: usize>(ours: Tensor<D>, key: &str) {
    let (err, _) = errors(ours, key);
    assert!(
        err <= TOLERANCE,
        "{key}: max abs error {err:e} > {TOLERANCE:e}"
    );
}

fn assert_close_relative<const D: usize>(ours: Tensor<D>, key: &str) {
    let (err, scale) = errors(ours, key);
    let rel = err / scale;
    assert!(
        rel <= RELATIVE_TOLERANCE,
        "{key}: max abs error {err:e} is {rel:e} of max |x| = {scale} > {RELATIVE_TOLERANCE:e}"
    );
}

#[test]
fn tokenizer_ids_equal_transformers_in_both_layouts() {
    let cases = cases();
    let modern = CLIPTokenizer::from_dir(fixture("tokenizer")).unwrap();
    let legacy = CLIPTokenizer::from_dir(fixture("tokenizer_legacy")).unwrap();
    assert_eq!(modern.max_length(), 77);
    assert_eq!(
        modern.bos_token_id() as u64,
        cases["bos_token_id"].as_u64().unwrap()
    );
    assert_eq!(
        modern.eos_token_id() as u64,
        cases["eos_token_id"].as_u64().unwrap()
    );
    assert_eq!(
        modern.pad_token_id() as u64,
        cases["pad_token_id"]["tokenizer"].as_u64().unwrap()
    );
    assert_eq!(
        legacy.pad_token_id() as u64,
        cases["pad_token_id"]["tokenizer_legacy"].as_u64().unwrap()
    );
    let list = cases["cases"].as_array().unwrap();
    assert!(list.len() >= 20);
    for case in list {
        let text = case["text"].as_str().unwrap();
        assert_eq!(
            modern.encode(text).unwrap(),
            ids_of(&case["ids"]),
            "{text:?}"
        );
        assert_eq!(
            legacy.encode(text).unwrap(),
            ids_of(&case["ids_legacy"]),
            "{text:?}"
        );
        assert_eq!(
            modern.tokenize(text).unwrap(),
            ids_of(&case["ids_without_special"]),
            "{text:?}"
        );
        assert_eq!(
            legacy.tokenize(text).unwrap(),
            ids_of(&case["ids_without_special_legacy"]),
            "{text:?}"
        );
    }
}

#[test]
fn long_prompts_truncate_by_default_and_chunk_on_request() {
    let cases = cases();
    let tokenizer = CLIPTokenizer::from_dir(fixture("tokenizer")).unwrap();
    let (bos, eos, pad) = (
        tokenizer.bos_token_id(),
        tokenizer.eos_token_id(),
        tokenizer.pad_token_id(),
    );
    let long = cases["cases"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["ids_without_special"].as_array().unwrap().len() > 2 * 75)
        .expect("a case over two chunks");
    let text = long["text"].as_str().unwrap();
    let tokens = ids_of(&long["ids_without_special"]);

    // Truncation: exactly transformers' ids, the same as encode_long(Truncate).
    let truncated = tokenizer.encode_long(text, LongPrompt::Truncate).unwrap();
    assert_eq!(truncated, vec![ids_of(&long["ids"])]);
    assert_eq!(truncated[0][76], eos);

    // Chunks of 75 tokens framed by bos / eos and padded.
    let chunks = tokenizer
        .encode_long(text, LongPrompt::Chunks { max_chunks: 8 })
        .unwrap();
    assert_eq!(chunks.len(), tokens.len().div_ceil(75));
    for (i, chunk) in chunks.iter().enumerate() {
        let part = &tokens[i * 75..((i + 1) * 75).min(tokens.len())];
        assert_eq!(chunk.len(), 77);
        assert_eq!(chunk[0], bos);
        assert_eq!(&chunk[1..=part.len()], part);
        assert_eq!(chunk[part.len() + 1], eos);
        assert!(chunk[part.len() + 2..].iter().all(|&id| id == pad));
    }
    // max_chunks caps them; an empty prompt is one chunk; zero chunks is an error.
    let capped = tokenizer
        .encode_long(text, LongPrompt::Chunks { max_chunks: 2 })
        .unwrap();
    assert_eq!(capped, chunks[..2].to_vec());
    assert_eq!(
        tokenizer
            .encode_long("", LongPrompt::Chunks { max_chunks: 3 })
            .unwrap(),
        vec![tokenizer.encode("").unwrap()]
    );
    let err = tokenizer
        .encode_long(text, LongPrompt::Chunks { max_chunks: 0 })
        .unwrap_err();
    assert!(err.to_string().contains("max_chunks"), "{err}");
}

#[test]
fn text_encoder_matches_transformers_fp32() {
    let model =
        CLIPTextModel::from_pretrained(fixture("text_encoder"), &LoadOptions::new(), &dev())
            .unwrap();
    let ids = input_ids();
    let out = model.forward(ids.clone()).unwrap();
    assert_close(out.last_hidden_state, "fp32.last_hidden_state");
    assert_close(out.pooler_output, "fp32.pooler_output");
    assert_close(
        model.prompt_embeds(ids.clone(), 1).unwrap(),
        "fp32.clip_skip_1",
    );
    let hidden = model.hidden_states(ids.clone()).unwrap();
    assert_eq!(hidden.len(), model.config.num_hidden_layers + 1);
    for (i, h) in hidden.into_iter().enumerate() {
        assert_close_relative(h, &format!("fp32.hidden_states.{i}"));
    }
    // clip_skip = 0 is the last hidden state.
    assert_close(
        model.prompt_embeds(ids, 0).unwrap(),
        "fp32.last_hidden_state",
    );
}

#[test]
fn text_encoder_loads_hub_keys_in_fp16() {
    let model =
        CLIPTextModel::from_pretrained(fixture("text_encoder_fp16"), &LoadOptions::new(), &dev())
            .unwrap();
    let ids = input_ids();
    let out = model.forward(ids.clone()).unwrap();
    assert_close(out.last_hidden_state, "fp16.last_hidden_state");
    assert_close(out.pooler_output, "fp16.pooler_output");
    assert_close(model.prompt_embeds(ids, 1).unwrap(), "fp16.clip_skip_1");
}

#[test]
fn legacy_eos_id_two_pools_at_the_largest_id() {
    let mut model =
        CLIPTextModel::from_pretrained(fixture("text_encoder"), &LoadOptions::new(), &dev())
            .unwrap();
    model.config.eos_token_id = Some(2);
    let out = model.forward(input_ids()).unwrap();
    assert_close(out.pooler_output, "fp32.pooled_argmax");
}

#[test]
fn prompt_encoder_embeds_chunks_end_to_end() {
    let tokenizer = CLIPTokenizer::from_dir(fixture("tokenizer")).unwrap();
    let model =
        CLIPTextModel::from_pretrained(fixture("text_encoder"), &LoadOptions::new(), &dev())
            .unwrap();
    let cases = cases();
    let prompts = cases["prompts"].as_array().unwrap();
    let encoder = PromptEncoder::new(tokenizer, model).unwrap();

    // Truncating: the first fixture prompt's row of transformers' last_hidden_state.
    let first = encoder
        .embed(prompts[0].as_str().unwrap(), PromptOptions::default())
        .unwrap();
    let (shape, expected) = io_tensor("fp32.last_hidden_state");
    let row = shape[1] * shape[2];
    let ours = first.into_data().try_to_vec::<f32>().unwrap();
    let err = ours
        .iter()
        .zip(&expected[..row])
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f32::max);
    assert!(err <= TOLERANCE, "embed: {err:e}");

    // Chunked: each 77-token slice is the encoder's output on that chunk alone.
    let long = prompts[3].as_str().unwrap();
    let options = PromptOptions {
        long_prompt: LongPrompt::Chunks { max_chunks: 4 },
        clip_skip: 0,
    };
    let chunks = encoder.ids(long, options).unwrap();
    assert_eq!(chunks.len(), 2);
    let (cond, uncond) = encoder.embed_pair(long, "", options).unwrap();
    assert_eq!(cond.dims(), [1, 2 * 77, 32]);
    assert_eq!(uncond.dims(), cond.dims());
    for (i, chunk) in chunks.iter().enumerate() {
        let ids: Vec<i64> = chunk.iter().map(|&v| v as i64).collect();
        let ids = Tensor::<2, Int>::from_data(TensorData::new(ids, [1, 77]), &dev());
        let alone = encoder.text_encoder.prompt_embeds(ids, 0).unwrap();
        let part = cond.clone().slice([0..1, i * 77..(i + 1) * 77, 0..32]);
        let err = (part - alone).abs().max().into_scalar::<f32>();
        assert!(err <= TOLERANCE, "chunk {i}: {err:e}");
    }
    // The negative prompt was padded with the empty prompt's chunk.
    let empty = encoder.embed("", options).unwrap();
    for i in 0..2 {
        let part = uncond.clone().slice([0..1, i * 77..(i + 1) * 77, 0..32]);
        let err = (part - empty.clone()).abs().max().into_scalar::<f32>();
        assert!(err <= TOLERANCE, "uncond chunk {i}: {err:e}");
    }
}

#[test]
fn bad_input_is_a_named_error() {
    let model =
        CLIPTextModel::from_pretrained(fixture("text_encoder"), &LoadOptions::new(), &dev())
            .unwrap();
    let vocab = model.config.vocab_size as i64;
    let ids = |v: Vec<i64>| {
        let n = v.len();
        Tensor::<2, Int>::from_data(TensorData::new(v, [1, n]), &dev())
    };
    let err = model.forward(ids(vec![0, vocab])).unwrap_err();
    assert!(
        matches!(&err, Error::InvalidConfig { field, .. } if field == "input_ids"),
        "{err}"
    );
    let err = model.forward(ids(vec![1; 78])).unwrap_err();
    assert!(
        matches!(&err, Error::Shape { tensor, .. } if tensor == "input_ids"),
        "{err}"
    );
    // No end-of-text token to pool at.
    let err = model.forward(ids(vec![1, 2, 3])).unwrap_err();
    assert!(err.to_string().contains("end-of-text"), "{err}");
    let err = model.prompt_embeds(ids(vec![1, 2, 3]), 4).unwrap_err();
    assert!(err.to_string().contains("clip_skip"), "{err}");

    // Folders: a missing folder, a folder without weights, a tokenizer folder without files.
    let err = CLIPTokenizer::from_dir(fixture("text_encoder").join("nope")).unwrap_err();
    assert!(err.to_string().contains("nope"), "{err}");
    let err = CLIPTokenizer::from_dir(fixture("text_encoder")).unwrap_err();
    assert!(err.to_string().contains("vocab.json"), "{err}");
    let err = CLIPTextModel::from_pretrained(fixture("tokenizer"), &LoadOptions::new(), &dev())
        .unwrap_err();
    assert!(err.to_string().contains("config.json"), "{err}");

    // A model whose vocabulary is too small for the fixture's weights.
    let config = CLIPTextConfig::from_file(fixture("text_encoder/config.json")).unwrap();
    let small = CLIPTextConfig {
        vocab_size: config.vocab_size - 1,
        ..config
    };
    let err = CLIPTextModel::new(&small, &dev())
        .unwrap()
        .load_weights(
            fixture("text_encoder/model.safetensors"),
            &LoadOptions::new(),
        )
        .unwrap_err();
    assert!(err.to_string().contains("token_embedding"), "{err}");
}
