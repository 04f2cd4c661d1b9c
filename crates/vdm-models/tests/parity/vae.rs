//! `AutoencoderKL` against diffusers 0.42.1 (`fixtures/oracle/vae_*`, see
//! `fixtures/oracle/PROVENANCE.md`): the tiny VAE (block_out_channels (32, 64),
//! layers_per_block 1, latent_channels 4, norm_num_groups 8) re-initialised with seed 9000.
//!
//! `vae_decoder_weights` / `vae_io` (from `gen_oracle.py`) cover the **decoder**
//! (`post_quant_conv` + decoder). `vae_encoder` (from `gen_vae_encoder.py`, the same model)
//! adds the encoder's weights (`encoder.*`, `quant_conv.*`) and diffusers' encoder outputs on
//! 16×15 images, so the full model is loaded from the two files and `encode` is checked against
//! diffusers too. The encoder is also checked by structure (its checkpoint keys and shapes,
//! derived from diffusers' `vae.py` / `unet_2d_blocks.py`), by shapes, and by a hand-built case
//! whose output is computed independently in `f64`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use burn::tensor::{Device, FloatDType, Tensor, TensorData};
use safetensors::Dtype;
use vdm_core::Error;
use vdm_core::layout::{batch_to_frames, frames_to_batch};
use vdm_core::noise::{NoiseBank, NoiseSource, SeededNoise};
use vdm_models::loading::LoadOptions;
use vdm_models::vae::{AutoencoderKL, AutoencoderKLConfig, DiagonalGaussian, VaeParts};

const WEIGHTS: &str = "vae_decoder_weights.safetensors";
const IO: &str = "vae_io.safetensors";
/// Encoder weights (`encoder.*`, `quant_conv.*`) plus the encoder I/O tensors [`ENCODER_IO`].
const ENCODER: &str = "vae_encoder.safetensors";
/// The non-weight tensors of [`ENCODER`].
const ENCODER_IO: [&str; 5] = ["encoder_out", "images", "logvar", "mean", "recon"];

fn dev() -> Device {
    Device::flex()
}

/// `fixtures/oracle/<name>`; panics (never skips) if the fixture is missing.
fn fixture(name: &str) -> PathBuf {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../fixtures/oracle")
        .join(name);
    assert!(
        path.is_file(),
        "missing oracle fixture {} (regenerate with fixtures/oracle/gen_oracle.py --only vae \
         and fixtures/oracle/gen_vae_encoder.py)",
        path.display()
    );
    path
}

/// One named tensor of a checkpoint: key, shape, values.
type Entry = (String, Vec<usize>, Vec<f32>);

/// Every tensor of a safetensors file (all must be f32).
fn read_entries(name: &str) -> Vec<Entry> {
    let bytes = std::fs::read(fixture(name)).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut entries: Vec<Entry> = st
        .tensors()
        .into_iter()
        .map(|(key, view)| {
            assert_eq!(view.dtype(), Dtype::F32, "{name}: {key}");
            let values = view
                .data()
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect();
            (key, view.shape().to_vec(), values)
        })
        .collect();
    entries.sort_by(|a, b| a.0.cmp(&b.0));
    entries
}

fn tensor<const D: usize>(file: &str, key: &str) -> Tensor<D> {
    let (_, shape, values) = read_entries(file)
        .into_iter()
        .find(|(k, _, _)| k == key)
        .unwrap_or_else(|| panic!("{file}: no tensor {key}"));
    let shape: [usize; D] = shape.try_into().expect("rank");
    Tensor::from_data(TensorData::new(values, shape), &dev())
}

/// Serialises entries as a safetensors file of `dtype` (F32, F16 or BF16).
fn serialize(entries: &[Entry], dtype: Dtype) -> Vec<u8> {
    let buffers: Vec<(String, Vec<usize>, Vec<u8>)> = entries
        .iter()
        .map(|(k, shape, values)| {
            let bytes: Vec<u8> = match dtype {
                Dtype::F32 => values.iter().flat_map(|v| v.to_le_bytes()).collect(),
                Dtype::F16 => values
                    .iter()
                    .flat_map(|v| half::f16::from_f32(*v).to_le_bytes())
                    .collect(),
                Dtype::BF16 => values
                    .iter()
                    .flat_map(|v| half::bf16::from_f32(*v).to_le_bytes())
                    .collect(),
                other => panic!("unsupported test dtype {other:?}"),
            };
            (k.clone(), shape.clone(), bytes)
        })
        .collect();
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = buffers
        .iter()
        .map(|(k, shape, bytes)| {
            (
                k.clone(),
                safetensors::tensor::TensorView::new(dtype, shape.clone(), bytes).unwrap(),
            )
        })
        .collect();
    safetensors::serialize(views, None).unwrap()
}

/// A file in the temp dir, removed on drop.
struct TempFile(PathBuf);

impl TempFile {
    fn new(tag: &str, bytes: &[u8]) -> Self {
        let path = std::env::temp_dir().join(format!(
            "vdm-vae-test-{}-{tag}.safetensors",
            std::process::id()
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

fn max_abs_diff<const D: usize>(a: Tensor<D>, b: Tensor<D>) -> f32 {
    assert_eq!(a.dims(), b.dims());
    (a.cast(FloatDType::F32) - b.cast(FloatDType::F32))
        .abs()
        .max()
        .into_scalar()
}

fn assert_close<const D: usize>(name: &str, got: Tensor<D>, want: Tensor<D>, tol: f32) -> f32 {
    let diff = max_abs_diff(got, want);
    println!("{name}: max |diff| = {diff:e} (tolerance {tol:e})");
    assert!(diff <= tol, "{name}: max |diff| = {diff:e} > {tol:e}");
    diff
}

fn fixture_config() -> AutoencoderKLConfig {
    AutoencoderKLConfig::from_file(fixture("vae_config.json")).unwrap()
}

/// The fixture's decoder-only model, loaded strictly from the fixture weights.
fn decoder_model() -> AutoencoderKL {
    let vae = fixture_config()
        .init(VaeParts::DecoderOnly, &dev())
        .unwrap();
    let (vae, report) = vae
        .load_file(fixture(WEIGHTS), &LoadOptions::new())
        .unwrap();
    assert!(report.is_complete(), "{report}");
    vae
}

/// The fixture's full model (encoder and decoder), loaded from the two weight files: the
/// decoder file, then the encoder file, each with `allow_partial`. Each load must leave missing
/// exactly what the other applies, so together they set every parameter once; the encoder
/// file's I/O tensors are ignored by name.
fn full_model() -> AutoencoderKL {
    let io_keys = format!("^({})$", ENCODER_IO.join("|"));
    let options = LoadOptions::new()
        .allow_partial(true)
        .ignore_unexpected(io_keys);
    let vae = fixture_config().init(VaeParts::Full, &dev()).unwrap();
    let (vae, dec) = vae.load_file(fixture(WEIGHTS), &options).unwrap();
    let (vae, enc) = vae.load_file(fixture(ENCODER), &options).unwrap();
    for (name, report) in [(WEIGHTS, &dec), (ENCODER, &enc)] {
        assert!(
            report.unexpected.is_empty()
                && report.mismatched.is_empty()
                && !report.applied.is_empty(),
            "{name}: {report}"
        );
    }
    let set = |v: &[String]| v.iter().cloned().collect::<BTreeSet<String>>();
    assert_eq!(
        set(&dec.missing),
        set(&enc.applied),
        "encoder file fills the gaps"
    );
    assert_eq!(
        set(&enc.missing),
        set(&dec.applied),
        "decoder file fills the gaps"
    );
    assert!(set(&dec.applied).is_disjoint(&set(&enc.applied)));
    // Every parameter of the model: as many as diffusers' state dict has keys.
    let config = fixture_config();
    assert_eq!(
        dec.applied.len() + enc.applied.len(),
        encoder_keys(&config).len() + decoder_keys(&config).len()
    );
    assert!(dec.ignored.is_empty(), "{dec}");
    assert_eq!(enc.ignored, ENCODER_IO, "{enc}");
    vae
}

fn seeded(seed: u64, shape: &[usize]) -> Vec<f32> {
    SeededNoise::new(seed)
        .normal(shape)
        .unwrap()
        .try_to_vec::<f32>()
        .unwrap()
}

// -------------------------------------------------------------------------------------------
// Checkpoint keys as diffusers names them (vae.py Encoder/Decoder, unet_2d_blocks.py blocks,
// resnet.py ResnetBlock2D, attention_processor.py Attention), with PyTorch shapes.
// -------------------------------------------------------------------------------------------

fn push(keys: &mut Vec<(String, Vec<usize>)>, name: String, shape: &[usize]) {
    keys.push((name, shape.to_vec()));
}

fn resnet_keys(keys: &mut Vec<(String, Vec<usize>)>, p: &str, cin: usize, cout: usize) {
    push(keys, format!("{p}.norm1.weight"), &[cin]);
    push(keys, format!("{p}.norm1.bias"), &[cin]);
    push(keys, format!("{p}.conv1.weight"), &[cout, cin, 3, 3]);
    push(keys, format!("{p}.conv1.bias"), &[cout]);
    push(keys, format!("{p}.norm2.weight"), &[cout]);
    push(keys, format!("{p}.norm2.bias"), &[cout]);
    push(keys, format!("{p}.conv2.weight"), &[cout, cout, 3, 3]);
    push(keys, format!("{p}.conv2.bias"), &[cout]);
    if cin != cout {
        push(
            keys,
            format!("{p}.conv_shortcut.weight"),
            &[cout, cin, 1, 1],
        );
        push(keys, format!("{p}.conv_shortcut.bias"), &[cout]);
    }
}

fn mid_block_keys(keys: &mut Vec<(String, Vec<usize>)>, p: &str, c: usize, attention: bool) {
    resnet_keys(keys, &format!("{p}.resnets.0"), c, c);
    if attention {
        let a = format!("{p}.attentions.0");
        push(keys, format!("{a}.group_norm.weight"), &[c]);
        push(keys, format!("{a}.group_norm.bias"), &[c]);
        for proj in ["to_q", "to_k", "to_v", "to_out.0"] {
            push(keys, format!("{a}.{proj}.weight"), &[c, c]);
            push(keys, format!("{a}.{proj}.bias"), &[c]);
        }
    }
    resnet_keys(keys, &format!("{p}.resnets.1"), c, c);
}

/// `encoder.*` and `quant_conv.*` keys of `AutoencoderKL(**config)`.
fn encoder_keys(c: &AutoencoderKLConfig) -> Vec<(String, Vec<usize>)> {
    let mut keys = Vec::new();
    let ch = &c.block_out_channels;
    let last = *ch.last().unwrap();
    push(
        &mut keys,
        "encoder.conv_in.weight".into(),
        &[ch[0], c.in_channels, 3, 3],
    );
    push(&mut keys, "encoder.conv_in.bias".into(), &[ch[0]]);
    let mut out = ch[0];
    for (i, &level) in ch.iter().enumerate() {
        let inp = out;
        out = level;
        for j in 0..c.layers_per_block {
            let cin = if j == 0 { inp } else { out };
            resnet_keys(
                &mut keys,
                &format!("encoder.down_blocks.{i}.resnets.{j}"),
                cin,
                out,
            );
        }
        if i + 1 != ch.len() {
            let p = format!("encoder.down_blocks.{i}.downsamplers.0.conv");
            push(&mut keys, format!("{p}.weight"), &[out, out, 3, 3]);
            push(&mut keys, format!("{p}.bias"), &[out]);
        }
    }
    mid_block_keys(
        &mut keys,
        "encoder.mid_block",
        last,
        c.mid_block_add_attention,
    );
    push(&mut keys, "encoder.conv_norm_out.weight".into(), &[last]);
    push(&mut keys, "encoder.conv_norm_out.bias".into(), &[last]);
    let l2 = 2 * c.latent_channels;
    push(
        &mut keys,
        "encoder.conv_out.weight".into(),
        &[l2, last, 3, 3],
    );
    push(&mut keys, "encoder.conv_out.bias".into(), &[l2]);
    if c.use_quant_conv {
        push(&mut keys, "quant_conv.weight".into(), &[l2, l2, 1, 1]);
        push(&mut keys, "quant_conv.bias".into(), &[l2]);
    }
    keys
}

/// `decoder.*` and `post_quant_conv.*` keys of `AutoencoderKL(**config)`.
fn decoder_keys(c: &AutoencoderKLConfig) -> Vec<(String, Vec<usize>)> {
    let mut keys = Vec::new();
    let rev: Vec<usize> = c.block_out_channels.iter().rev().copied().collect();
    let l = c.latent_channels;
    if c.use_post_quant_conv {
        push(&mut keys, "post_quant_conv.weight".into(), &[l, l, 1, 1]);
        push(&mut keys, "post_quant_conv.bias".into(), &[l]);
    }
    push(
        &mut keys,
        "decoder.conv_in.weight".into(),
        &[rev[0], l, 3, 3],
    );
    push(&mut keys, "decoder.conv_in.bias".into(), &[rev[0]]);
    mid_block_keys(
        &mut keys,
        "decoder.mid_block",
        rev[0],
        c.mid_block_add_attention,
    );
    let mut out = rev[0];
    for (i, &level) in rev.iter().enumerate() {
        let inp = out;
        out = level;
        for j in 0..=c.layers_per_block {
            let cin = if j == 0 { inp } else { out };
            resnet_keys(
                &mut keys,
                &format!("decoder.up_blocks.{i}.resnets.{j}"),
                cin,
                out,
            );
        }
        if i + 1 != rev.len() {
            let p = format!("decoder.up_blocks.{i}.upsamplers.0.conv");
            push(&mut keys, format!("{p}.weight"), &[out, out, 3, 3]);
            push(&mut keys, format!("{p}.bias"), &[out]);
        }
    }
    let first = c.block_out_channels[0];
    push(&mut keys, "decoder.conv_norm_out.weight".into(), &[first]);
    push(&mut keys, "decoder.conv_norm_out.bias".into(), &[first]);
    push(
        &mut keys,
        "decoder.conv_out.weight".into(),
        &[c.out_channels, first, 3, 3],
    );
    push(&mut keys, "decoder.conv_out.bias".into(), &[c.out_channels]);
    keys
}

/// Entries with seeded N(0, 0.05²) values (norm weights 1 + N(0, 0.05²)), like the oracle's
/// re-initialisation.
fn random_entries(keys: &[(String, Vec<usize>)], seed: u64) -> Vec<Entry> {
    keys.iter()
        .enumerate()
        .map(|(i, (k, shape))| {
            let is_norm_weight = k.ends_with("norm.weight")
                || k.ends_with("norm1.weight")
                || k.ends_with("norm2.weight")
                || k.ends_with("norm_out.weight");
            let values = seeded(seed + i as u64, shape)
                .into_iter()
                .map(|v| {
                    if is_norm_weight {
                        1.0 + 0.05 * v
                    } else {
                        0.05 * v
                    }
                })
                .collect();
            (k.clone(), shape.clone(), values)
        })
        .collect()
}

// -------------------------------------------------------------------------------------------
// Decoder parity
// -------------------------------------------------------------------------------------------

#[test]
fn decoder_matches_diffusers() {
    let vae = decoder_model();
    let latents = tensor::<4>(IO, "latents");
    let pq = vae
        .post_quant_conv
        .as_ref()
        .unwrap()
        .forward(latents.clone());
    assert_close(
        "post_quant_conv_out",
        pq,
        tensor(IO, "post_quant_conv_out"),
        1e-4,
    );
    let images = vae.decode(latents).unwrap();
    assert_eq!(images.dims(), [4, 3, 16, 16]);
    assert_close("images", images, tensor(IO, "images"), 1e-4);
}

#[test]
fn decoder_from_half_precision_files() {
    let entries = read_entries(WEIGHTS);
    let latents = tensor::<4>(IO, "latents");
    let want = tensor::<4>(IO, "images");
    // f16 / bf16 files loaded into an f32 model: the weights are rounded to 11 (f16) / 8 (bf16)
    // significant bits, the computation stays in f32. Measured 2.7e-3 (f16), 2.9e-2 (bf16) on
    // images of std 0.5.
    for (dtype, tag, tol) in [(Dtype::F16, "f16", 5e-3), (Dtype::BF16, "bf16", 6e-2)] {
        let file = TempFile::new(tag, &serialize(&entries, dtype));
        let vae = fixture_config()
            .init(VaeParts::DecoderOnly, &dev())
            .unwrap();
        let (vae, report) = vae
            .load_file(&file.0, &LoadOptions::new().dtype(FloatDType::F32))
            .unwrap();
        assert!(report.is_complete(), "{report}");
        assert_eq!(
            report.file_dtypes.keys().collect::<Vec<_>>(),
            [&format!("{dtype:?}")]
        );
        assert_eq!(
            vae.decoder.conv_in.weight.val().dtype(),
            burn::tensor::DType::F32
        );
        let images = vae.decode(latents.clone()).unwrap();
        assert_close(
            &format!("images from {tag} weights"),
            images,
            want.clone(),
            tol,
        );
    }
    // Computing in half precision: the f32 file is cast to f16/bf16 on load, and `decode`
    // casts the (f32) latents to the weights' dtype. Measured 6.3e-3 (f16), 7.6e-2 (bf16).
    for (dtype, tag, tol) in [
        (FloatDType::F16, "f16", 1.5e-2),
        (FloatDType::BF16, "bf16", 1.5e-1),
    ] {
        let vae = fixture_config()
            .init(VaeParts::DecoderOnly, &dev())
            .unwrap();
        let (vae, _) = vae
            .load_file(fixture(WEIGHTS), &LoadOptions::new().dtype(dtype))
            .unwrap();
        let images = vae.decode(latents.clone()).unwrap();
        assert_eq!(images.dtype(), burn::tensor::DType::from(dtype));
        assert_close(
            &format!("images computed in {tag}"),
            images,
            want.clone(),
            tol,
        );
    }
}

#[test]
fn video_decode_scales_and_chunks() {
    let vae = decoder_model();
    let config = vae.config().clone();
    // The four oracle latents as one video of 4 frames, and as 2 videos of 2 frames.
    let latents = tensor::<4>(IO, "latents");
    let want = tensor::<4>(IO, "images");
    for frames in [4, 2] {
        let video = batch_to_frames(latents.clone(), frames);
        let out = vae.decode_video(video.clone(), false).unwrap();
        assert_eq!(out.dims(), [4 / frames, 3, frames, 16, 16]);
        assert_close(
            &format!("decode_video (F = {frames})"),
            frames_to_batch(out.clone()),
            want.clone(),
            1e-4,
        );
        // Scaled latents are divided by scaling_factor first.
        let scaled = video.clone() * config.scaling_factor;
        let from_scaled = vae.decode_video(scaled, true).unwrap();
        assert_close("decode_video(scaled)", from_scaled, out.clone(), 1e-4);
        for chunk in [1, 3] {
            let chunked = vae
                .clone()
                .with_frames_per_chunk(Some(chunk))
                .decode_video(video.clone(), false)
                .unwrap();
            assert_close(
                &format!("chunks of {chunk} vs whole"),
                chunked,
                out.clone(),
                1e-5,
            );
        }
    }
    let err = vae
        .decode_video(Tensor::zeros([1, 3, 2, 8, 8], &dev()), false)
        .unwrap_err();
    assert!(matches!(err, Error::Shape { .. }), "{err}");
}

#[test]
fn latent_scaling_variants() {
    let base = fixture_config();
    let x = Tensor::<5>::from_data(
        TensorData::new(seeded(1, &[1, 4, 2, 3, 3]), [1, 4, 2, 3, 3]),
        &dev(),
    );
    let mut shifted = base.clone();
    shifted.shift_factor = Some(0.25);
    let mut stats = base.clone();
    stats.latents_mean = Some(vec![0.1, -0.2, 0.3, 0.0]);
    stats.latents_std = Some(vec![1.0, 2.0, 0.5, 4.0]);
    for (name, config) in [("plain", base), ("shift", shifted), ("mean/std", stats)] {
        let vae = config.init(VaeParts::DecoderOnly, &dev()).unwrap();
        let z = vae.unscale_latents(x.clone()).unwrap();
        let back = vae.scale_latents(z.clone()).unwrap();
        assert_close(&format!("{name}: scale(unscale(x))"), back, x.clone(), 1e-5);
        // Check one channel against the formula by hand (channel 1, first element).
        let x0: f32 = x
            .clone()
            .slice([0..1, 1..2, 0..1, 0..1, 0..1])
            .into_scalar();
        let z0: f32 = z.slice([0..1, 1..2, 0..1, 0..1, 0..1]).into_scalar();
        let want = match name {
            "plain" => x0 / 0.18215,
            "shift" => x0 / 0.18215 + 0.25,
            _ => x0 * 2.0 / 0.18215 - 0.2,
        };
        assert!((z0 - want).abs() < 1e-5, "{name}: {z0} vs {want}");
    }
}

// -------------------------------------------------------------------------------------------
// Loading: parts, missing keys, key names
// -------------------------------------------------------------------------------------------

#[test]
fn full_model_reports_encoder_keys_missing() {
    let config = fixture_config();
    let expected_missing = encoder_keys(&config).len();
    let full = config.init(VaeParts::Full, &dev()).unwrap();
    let err = full
        .clone()
        .load_file(fixture(WEIGHTS), &LoadOptions::new())
        .unwrap_err();
    match &err {
        Error::Weights {
            missing,
            unexpected,
            mismatched,
        } => {
            assert!(unexpected.is_empty() && mismatched.is_empty(), "{err}");
            assert_eq!(missing.len(), expected_missing, "{missing:?}");
            assert!(
                missing
                    .iter()
                    .all(|k| k.starts_with("encoder.") || k.starts_with("quant_conv.")),
                "{missing:?}"
            );
        }
        other => panic!("expected Error::Weights, got {other}"),
    }
    // With allow_partial the decoder loads and the gaps are reported.
    let (full, report) = full
        .load_file(fixture(WEIGHTS), &LoadOptions::new().allow_partial(true))
        .unwrap();
    assert_eq!(report.missing.len(), expected_missing);
    assert!(report.unexpected.is_empty());
    let images = full.decode(tensor(IO, "latents")).unwrap();
    assert_close(
        "images (full model, partial load)",
        images,
        tensor(IO, "images"),
        1e-4,
    );
}

/// The keys derived from diffusers' module structure match the fixture's decoder half exactly;
/// a checkpoint with the encoder half added loads strictly into a full model, and into a
/// decoder-only model with the encoder tensors ignored.
#[test]
fn checkpoint_keys_and_shapes_match_diffusers() {
    let config = fixture_config();
    let fixture_entries = read_entries(WEIGHTS);
    let mut from_fixture: Vec<(String, Vec<usize>)> = fixture_entries
        .iter()
        .map(|(k, s, _)| (k.clone(), s.clone()))
        .collect();
    let mut derived = decoder_keys(&config);
    from_fixture.sort();
    derived.sort();
    assert_eq!(
        derived, from_fixture,
        "decoder keys derived from diffusers' structure"
    );

    let enc = encoder_keys(&config);
    let mut all = fixture_entries.clone();
    all.extend(random_entries(&enc, 100));
    let file = TempFile::new("full", &serialize(&all, Dtype::F32));

    let full = config.init(VaeParts::Full, &dev()).unwrap();
    let (full, report) = full.load_file(&file.0, &LoadOptions::new()).unwrap();
    assert!(report.is_complete(), "{report}");
    assert_eq!(report.applied.len(), all.len());
    assert!(report.ignored.is_empty());
    let images = full.decode(tensor(IO, "latents")).unwrap();
    assert_close(
        "images (full checkpoint)",
        images,
        tensor(IO, "images"),
        1e-4,
    );

    let dec = config.init(VaeParts::DecoderOnly, &dev()).unwrap();
    let (_, report) = dec.load_file(&file.0, &LoadOptions::new()).unwrap();
    assert!(report.is_complete(), "{report}");
    let mut ignored: Vec<String> = enc.iter().map(|(k, _)| k.clone()).collect();
    ignored.sort();
    assert_eq!(report.ignored, ignored);

    // A wrong encoder shape is reported as mis-shaped with the file's key.
    let mut bad = all.clone();
    let i = bad
        .iter()
        .position(|(k, _, _)| k == "encoder.conv_out.weight")
        .unwrap();
    bad[i] = (
        "encoder.conv_out.weight".into(),
        vec![4, 64, 3, 3],
        vec![0.0; 4 * 64 * 9],
    );
    let err = config
        .init(VaeParts::Full, &dev())
        .unwrap()
        .load_bytes(&serialize(&bad, Dtype::F32), &LoadOptions::new())
        .unwrap_err();
    assert!(
        matches!(&err, Error::Weights { mismatched, .. } if mismatched.len() == 1
            && mismatched[0].0 == "encoder.conv_out.weight"),
        "{err}"
    );
}

/// Pre-0.14 diffusers checkpoints name the VAE attention `query/key/value/proj_attn`.
#[test]
fn legacy_attention_names_load() {
    let legacy: Vec<Entry> = read_entries(WEIGHTS)
        .into_iter()
        .map(|(k, s, v)| {
            let k = k
                .replace(".to_q.", ".query.")
                .replace(".to_k.", ".key.")
                .replace(".to_v.", ".value.")
                .replace(".to_out.0.", ".proj_attn.");
            (k, s, v)
        })
        .collect();
    assert!(legacy.iter().any(|(k, _, _)| k.contains(".proj_attn.")));
    let vae = fixture_config()
        .init(VaeParts::DecoderOnly, &dev())
        .unwrap();
    let (vae, report) = vae
        .load_bytes(&serialize(&legacy, Dtype::F32), &LoadOptions::new())
        .unwrap();
    assert!(report.is_complete(), "{report}");
    let images = vae.decode(tensor(IO, "latents")).unwrap();
    assert_close("images (legacy names)", images, tensor(IO, "images"), 1e-4);
}

// -------------------------------------------------------------------------------------------
// Encoder parity (`vae_encoder`), then structure, shapes and a hand-built case
// -------------------------------------------------------------------------------------------

/// The encoder file's weights are exactly the encoder keys derived from diffusers' structure.
#[test]
fn encoder_fixture_keys_match_derived_keys() {
    let mut from_file: Vec<(String, Vec<usize>)> = read_entries(ENCODER)
        .into_iter()
        .filter(|(k, _, _)| !ENCODER_IO.contains(&k.as_str()))
        .map(|(k, s, _)| (k, s))
        .collect();
    let mut derived = encoder_keys(&fixture_config());
    from_file.sort();
    derived.sort();
    assert_eq!(
        derived, from_file,
        "encoder keys derived from diffusers' structure"
    );
}

/// `encode` on 3 images of 16×15 (odd width: the downsampler's bottom/right padding) against
/// diffusers' `vae.encoder(x)`, `vae.encode(x).latent_dist` and `vae.decode(mean)`.
#[test]
fn encoder_matches_diffusers() {
    let vae = full_model();
    let images = tensor::<4>(ENCODER, "images");
    assert_eq!(images.dims(), [3, 3, 16, 15]);
    let moments = vae
        .encoder
        .as_ref()
        .unwrap()
        .forward(images.clone())
        .unwrap();
    assert_eq!(moments.dims(), [3, 8, 8, 7]);
    assert_close("encoder_out", moments, tensor(ENCODER, "encoder_out"), 1e-4);
    let posterior = vae.encode(images).unwrap();
    assert_eq!(posterior.mean.dims(), [3, 4, 8, 7]);
    assert_close(
        "mean",
        posterior.mean.clone(),
        tensor(ENCODER, "mean"),
        1e-4,
    );
    assert_close(
        "logvar",
        posterior.logvar.clone(),
        tensor(ENCODER, "logvar"),
        1e-4,
    );
    // Our decode of our mean (the whole round trip), and of diffusers' mean (decoder alone).
    let recon = vae.decode(posterior.mean).unwrap();
    assert_eq!(recon.dims(), [3, 3, 16, 14]);
    let want = tensor::<4>(ENCODER, "recon");
    assert_close("recon = decode(mean)", recon, want.clone(), 1e-4);
    let from_diffusers_mean = vae.decode(tensor(ENCODER, "mean")).unwrap();
    assert_close(
        "recon = decode(diffusers' mean)",
        from_diffusers_mean,
        want,
        1e-4,
    );
}

#[test]
fn encoder_shapes_and_video_encode() {
    let config = fixture_config();
    let mut all = read_entries(WEIGHTS);
    all.extend(random_entries(&encoder_keys(&config), 200));
    let (vae, _) = config
        .init(VaeParts::Full, &dev())
        .unwrap()
        .load_bytes(&serialize(&all, Dtype::F32), &LoadOptions::new())
        .unwrap();
    // Odd sizes round down at every level (pad one zero column at the right, 3×3 stride 2):
    // diffusers gives [N, 8, 8, 7] for a 16×15 image.
    let images = Tensor::<4>::from_data(
        TensorData::new(seeded(7, &[2, 3, 16, 15]), [2, 3, 16, 15]),
        &dev(),
    );
    let posterior = vae.encode(images).unwrap();
    assert_eq!(posterior.mean.dims(), [2, 4, 8, 7]);
    assert_eq!(posterior.logvar.dims(), [2, 4, 8, 7]);

    // Video: frames folded into the batch, chunking changes nothing, scaling by 0.18215.
    let video = Tensor::<5>::from_data(
        TensorData::new(seeded(8, &[1, 3, 3, 16, 16]), [1, 3, 3, 16, 16]),
        &dev(),
    );
    let whole = vae.encode_video_posterior(video.clone()).unwrap();
    assert_eq!(whole.mean.dims(), [1, 4, 3, 8, 8]);
    let per_frame = vae.encode(frames_to_batch(video.clone())).unwrap();
    assert_close(
        "encode_video mean vs per-frame encode",
        whole.mean.clone(),
        batch_to_frames(per_frame.mean, 3),
        1e-5,
    );
    let latents = vae.encode_video(video.clone(), None).unwrap();
    assert_close(
        "encode_video(mode) = mean · scaling_factor",
        latents,
        whole.mean.clone() * 0.18215,
        1e-6,
    );
    let chunked = vae.clone().with_frames_per_chunk(Some(2));
    let a = chunked
        .encode_video(video.clone(), Some(&mut SeededNoise::new(3)))
        .unwrap();
    let b = vae
        .encode_video(video.clone(), Some(&mut SeededNoise::new(3)))
        .unwrap();
    assert_close("encode_video sample, chunks of 2 vs whole", a, b, 1e-5);

    // A decoder-only model cannot encode; wrong channel counts are shape errors.
    let dec = decoder_model();
    assert!(matches!(
        dec.encode(Tensor::zeros([1, 3, 8, 8], &dev())),
        Err(Error::Unsupported(_))
    ));
    assert!(matches!(
        vae.encode(Tensor::zeros([1, 4, 8, 8], &dev())),
        Err(Error::Shape { .. })
    ));
}

#[test]
fn diagonal_gaussian_math() {
    let d = dev();
    let mean = Tensor::<4>::from_floats([[[[0.5, -1.0]], [[2.0, 0.0]]]], &d);
    let logvar = Tensor::<4>::from_floats([[[[0.0, 2.0]], [[-1.0, 50.0]]]], &d);
    let moments = Tensor::cat(vec![mean.clone(), logvar.clone()], 1);
    let g = DiagonalGaussian::from_moments(moments).unwrap();
    assert_eq!(g.mean.dims(), [1, 2, 1, 2]);
    assert_close("mode = mean", g.mode(), mean.clone(), 0.0);
    // logvar clamped to [-30, 20] (50 → 20).
    let clamped = Tensor::<4>::from_floats([[[[0.0, 2.0]], [[-1.0, 20.0]]]], &d);
    assert_close("logvar clamp", g.logvar.clone(), clamped.clone(), 0.0);
    // sample = mean + exp(0.5 · logvar) · ε with injected ε.
    let eps = [0.3f32, -1.2, 2.0, 0.7];
    let mut bank = NoiseBank::from_tensors([TensorData::new(eps.to_vec(), [1, 2, 1, 2])]);
    let s = g.sample(&mut bank).unwrap();
    assert_eq!(bank.remaining(), 0);
    let m = [0.5f64, -1.0, 2.0, 0.0];
    let lv = [0.0f64, 2.0, -1.0, 20.0];
    let got = s.into_data().try_to_vec::<f32>().unwrap();
    for i in 0..4 {
        let want = m[i] + (0.5 * lv[i]).exp() * eps[i] as f64;
        assert!(
            ((got[i] as f64 - want) / want.abs().max(1.0)).abs() < 1e-6,
            "sample[{i}] = {} vs {want}",
            got[i]
        );
    }
    assert_close("std", g.std(), (clamped.clone() * 0.5).exp(), 1e-6);
    let ratio = g.var() / (g.std() * g.std());
    assert_close("var = std²", ratio, Tensor::ones([1, 2, 1, 2], &d), 1e-5);
    // Odd channel count, mismatched ε: typed errors.
    assert!(DiagonalGaussian::from_moments(Tensor::<4>::zeros([1, 3, 1, 1], &d)).is_err());
    assert!(matches!(
        g.sample_with(Tensor::zeros([1, 2, 2, 1], &d)),
        Err(Error::Shape { .. })
    ));
}

/// A tiny encoder whose residual branches are zeroed (every resnet and the attention are then
/// the identity), leaving `conv_in → downsample → conv_norm_out → SiLU → conv_out → quant_conv`
/// with hand-chosen taps, recomputed here in `f64`. This pins the wiring: the bottom/right
/// padding of the VAE downsampler, GroupNorm over all channels and pixels, and which half of
/// the moments is the mean.
#[test]
#[allow(clippy::needless_range_loop)] // index-style reference arithmetic
fn encoder_hand_built_case() {
    let config = AutoencoderKLConfig::from_json_str(
        r#"{"in_channels": 1, "out_channels": 1, "block_out_channels": [4, 4],
            "down_block_types": ["DownEncoderBlock2D", "DownEncoderBlock2D"],
            "up_block_types": ["UpDecoderBlock2D", "UpDecoderBlock2D"],
            "latent_channels": 1, "norm_num_groups": 1, "layers_per_block": 1}"#,
    )
    .unwrap();
    let keys: Vec<(String, Vec<usize>)> = encoder_keys(&config)
        .into_iter()
        .chain(decoder_keys(&config))
        .collect();
    let mut values: BTreeMap<String, Vec<f32>> = keys
        .iter()
        .map(|(k, s)| (k.clone(), vec![0.0; s.iter().product()]))
        .collect();
    let k_in = [1.0f64, -2.0, 0.5, 3.0];
    let b_in = [0.1f64, 0.0, -0.3, 0.2];
    let gamma = [1.0f64, 0.5, 2.0, 1.0];
    let beta = [0.0f64, 0.1, 0.0, -0.2];
    let w_out = [[0.3f64, -0.5, 0.2, 0.1], [-0.4, 0.6, 0.25, -0.15]];
    let b_out = [0.05f64, -0.1];
    {
        let mut set = |k: &str, i: usize, v: f64| values.get_mut(k).unwrap()[i] = v as f32;
        for c in 0..4 {
            // conv_in [4, 1, 3, 3]: centre tap.
            set("encoder.conv_in.weight", c * 9 + 4, k_in[c]);
            set("encoder.conv_in.bias", c, b_in[c]);
            // downsampler [4, 4, 3, 3]: taps (0, 0) and (2, 2) on the same channel.
            set(
                "encoder.down_blocks.0.downsamplers.0.conv.weight",
                (c * 4 + c) * 9,
                1.0,
            );
            set(
                "encoder.down_blocks.0.downsamplers.0.conv.weight",
                (c * 4 + c) * 9 + 8,
                1.0,
            );
            set("encoder.conv_norm_out.weight", c, gamma[c]);
            set("encoder.conv_norm_out.bias", c, beta[c]);
            for o in 0..2 {
                // conv_out [2, 4, 3, 3]: centre tap.
                set("encoder.conv_out.weight", (o * 4 + c) * 9 + 4, w_out[o][c]);
            }
        }
        set("encoder.conv_out.bias", 0, b_out[0]);
        set("encoder.conv_out.bias", 1, b_out[1]);
        // quant_conv swaps the two channels and adds 0.5 to the (new) log-variance.
        set("quant_conv.weight", 1, 1.0);
        set("quant_conv.weight", 2, 1.0);
        set("quant_conv.bias", 1, 0.5);
    }
    let entries: Vec<Entry> = keys
        .iter()
        .map(|(k, s)| (k.clone(), s.clone(), values[k].clone()))
        .collect();
    let (vae, report) = config
        .init(VaeParts::Full, &dev())
        .unwrap()
        .load_bytes(&serialize(&entries, Dtype::F32), &LoadOptions::new())
        .unwrap();
    assert!(report.is_complete(), "{report}");

    let (n, h, w) = (2usize, 6usize, 6usize);
    let img = seeded(11, &[n, 1, h, w]);
    let x = Tensor::<4>::from_data(TensorData::new(img.clone(), [n, 1, h, w]), &dev());
    let g = vae.encode(x).unwrap();
    assert_eq!(g.mean.dims(), [n, 1, 3, 3]);

    // Reference in f64.
    let px = |b: usize, y: usize, x: usize| img[(b * h + y) * w + x] as f64;
    let h1 = |b: usize, c: usize, y: usize, x: usize| {
        if y < h && x < w {
            k_in[c] * px(b, y, x) + b_in[c]
        } else {
            0.0 // the zero row/column diffusers pads at the bottom/right
        }
    };
    let mut want_mean = Vec::new();
    let mut want_logvar = Vec::new();
    for b in 0..n {
        let mut d = [[[0.0f64; 3]; 3]; 4];
        for (c, dc) in d.iter_mut().enumerate() {
            for (i, row) in dc.iter_mut().enumerate() {
                for (j, v) in row.iter_mut().enumerate() {
                    *v = h1(b, c, 2 * i, 2 * j) + h1(b, c, 2 * i + 2, 2 * j + 2);
                }
            }
        }
        let all: Vec<f64> = d.iter().flatten().flatten().copied().collect();
        let mu = all.iter().sum::<f64>() / all.len() as f64;
        let var = all.iter().map(|v| (v - mu) * (v - mu)).sum::<f64>() / all.len() as f64;
        let silu = |v: f64| v / (1.0 + (-v).exp());
        for o in [1usize, 0] {
            for i in 0..3 {
                for j in 0..3 {
                    let mut acc = b_out[o];
                    for c in 0..4 {
                        let normed = (d[c][i][j] - mu) / (var + 1e-6).sqrt() * gamma[c] + beta[c];
                        acc += w_out[o][c] * silu(normed);
                    }
                    if o == 1 {
                        want_mean.push(acc as f32);
                    } else {
                        want_logvar.push(acc as f32 + 0.5);
                    }
                }
            }
        }
    }
    let want = |v: Vec<f32>| Tensor::<4>::from_data(TensorData::new(v, [n, 1, 3, 3]), &dev());
    assert_close("hand-built encoder: mean", g.mean, want(want_mean), 1e-5);
    assert_close(
        "hand-built encoder: logvar",
        g.logvar,
        want(want_logvar),
        1e-5,
    );
}

// -------------------------------------------------------------------------------------------
// Configuration
// -------------------------------------------------------------------------------------------

#[test]
fn config_parsing_and_validation() {
    let config = fixture_config();
    assert_eq!(config.block_out_channels, [32, 64]);
    assert_eq!(config.norm_num_groups, 8);
    assert_eq!(config.shift_factor, None);
    assert_eq!(config.downsample_factor(), 2);
    // serde round trip, and through serde's Deserialize.
    let json = serde_json::to_string(&config).unwrap();
    let back: AutoencoderKLConfig = serde_json::from_str(&json).unwrap();
    assert_eq!(back, config);
    // diffusers defaults for missing keys; unknown keys ignored.
    let d = AutoencoderKLConfig::from_json_str(r#"{"_class_name": "AutoencoderKL", "foo": 1}"#)
        .unwrap();
    assert_eq!(d, AutoencoderKLConfig::default());
    // The SD 1.5 VAE config (diffusers' hub config.json).
    let sd = AutoencoderKLConfig::from_json_str(
        r#"{"_class_name": "AutoencoderKL", "_diffusers_version": "0.6.0", "act_fn": "silu",
            "block_out_channels": [128, 256, 512, 512],
            "down_block_types": ["DownEncoderBlock2D", "DownEncoderBlock2D",
                                 "DownEncoderBlock2D", "DownEncoderBlock2D"],
            "in_channels": 3, "latent_channels": 4, "layers_per_block": 2,
            "norm_num_groups": 32, "out_channels": 3, "sample_size": 512,
            "up_block_types": ["UpDecoderBlock2D", "UpDecoderBlock2D",
                               "UpDecoderBlock2D", "UpDecoderBlock2D"]}"#,
    )
    .unwrap();
    assert_eq!(sd.downsample_factor(), 8);

    let err = |json: &str| AutoencoderKLConfig::from_json_str(json).unwrap_err();
    let unsupported = |json: &str, field: &str| {
        let e = err(json);
        assert!(
            matches!(&e, Error::Unsupported(m) if m.contains(field)),
            "{json}: {e}"
        );
    };
    let invalid = |json: &str, field: &str| {
        let e = err(json);
        assert!(
            matches!(&e, Error::InvalidConfig { field: f, .. } if f == field),
            "{json}: {e}"
        );
    };
    unsupported(r#"{"act_fn": "gelu"}"#, "act_fn");
    unsupported(
        r#"{"down_block_types": ["AttnDownEncoderBlock2D"]}"#,
        "down_block_types",
    );
    unsupported(
        r#"{"up_block_types": ["AttnUpDecoderBlock2D"]}"#,
        "up_block_types",
    );
    unsupported(
        r#"{"shift_factor": 0.1, "latents_mean": [0,0,0,0], "latents_std": [1,1,1,1]}"#,
        "shift_factor",
    );
    invalid(r#"{"block_out_channels": [64, 128]}"#, "down_block_types");
    invalid(r#"{"block_out_channels": [48]}"#, "norm_num_groups");
    invalid(r#"{"block_out_channels": []}"#, "block_out_channels");
    invalid(r#"{"latent_channels": 0}"#, "latent_channels");
    invalid(r#"{"scaling_factor": -1.0}"#, "scaling_factor");
    invalid(r#"{"layers_per_block": "two"}"#, "layers_per_block");
    invalid(r#"{"latents_mean": [0, 0, 0, 0]}"#, "latents_std");
    invalid(
        r#"{"latents_mean": [0, 0], "latents_std": [1, 1]}"#,
        "latents_mean",
    );
    invalid(r#"{"sample_size": [0, 64]}"#, "sample_size");
    invalid("[1, 2]", "config.json");
    let via_serde = serde_json::from_str::<AutoencoderKLConfig>(r#"{"act_fn": "relu"}"#);
    assert!(via_serde.unwrap_err().to_string().contains("act_fn"));
    // sample_size may be [h, w].
    let rect = AutoencoderKLConfig::from_json_str(r#"{"sample_size": [64, 96]}"#).unwrap();
    assert_eq!(
        rect.sample_size,
        vdm_models::vae::SampleSize::HeightWidth([64, 96])
    );
}

#[test]
fn missing_weights_folder_is_a_file_error() {
    let dir = std::env::temp_dir().join(format!("vdm-vae-test-{}-dir", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(fixture("vae_config.json"), dir.join("config.json")).unwrap();
    let err = AutoencoderKL::from_pretrained(&dir, VaeParts::DecoderOnly, &dev()).unwrap_err();
    assert!(matches!(err, Error::File { .. }), "{err}");
    std::fs::copy(
        fixture(WEIGHTS),
        dir.join("diffusion_pytorch_model.fp16.safetensors"),
    )
    .unwrap();
    let (vae, report) =
        AutoencoderKL::from_pretrained(&dir, VaeParts::DecoderOnly, &dev()).unwrap();
    assert!(report.is_complete());
    let images = vae.decode(tensor(IO, "latents")).unwrap();
    assert_close(
        "images (from_pretrained)",
        images,
        tensor(IO, "images"),
        1e-4,
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
