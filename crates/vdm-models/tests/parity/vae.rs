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
//!
//! This file holds the shared fixture helpers and the decoder, loading and configuration tests;
//! the encoder's tests are in `vae_encoder.rs`.

use std::collections::BTreeSet;
use std::path::PathBuf;

use burn::tensor::{Device, FloatDType, Tensor, TensorData};
use safetensors::Dtype;
use vdm_core::Error;
use vdm_core::layout::{batch_to_frames, frames_to_batch};
use vdm_core::noise::{NoiseSource, SeededNoise};
use vdm_models::loading::LoadOptions;
use vdm_models::vae::{AutoencoderKL, AutoencoderKLConfig, VaeParts};

pub(crate) const WEIGHTS: &str = "vae_decoder_weights.safetensors";
const IO: &str = "vae_io.safetensors";
/// Encoder weights (`encoder.*`, `quant_conv.*`) plus the encoder I/O tensors [`ENCODER_IO`].
pub(crate) const ENCODER: &str = "vae_encoder.safetensors";
/// The non-weight tensors of [`ENCODER`].
pub(crate) const ENCODER_IO: [&str; 5] = ["encoder_out", "images", "logvar", "mean", "recon"];

pub(crate) fn dev() -> Device {
    crate::test_device()
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
pub(crate) type Entry = (String, Vec<usize>, Vec<f32>);

/// Every tensor of a safetensors file (all must be f32).
pub(crate) fn read_entries(name: &str) -> Vec<Entry> {
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

pub(crate) fn tensor<const D: usize>(file: &str, key: &str) -> Tensor<D> {
    let (_, shape, values) = read_entries(file)
        .into_iter()
        .find(|(k, _, _)| k == key)
        .unwrap_or_else(|| panic!("{file}: no tensor {key}"));
    let shape: [usize; D] = shape.try_into().expect("rank");
    Tensor::from_data(TensorData::new(values, shape), &dev())
}

/// Serialises entries as a safetensors file of `dtype` (F32, F16 or BF16).
pub(crate) fn serialize(entries: &[Entry], dtype: Dtype) -> Vec<u8> {
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

pub(crate) fn assert_close<const D: usize>(
    name: &str,
    got: Tensor<D>,
    want: Tensor<D>,
    tol: f32,
) -> f32 {
    let diff = max_abs_diff(got, want);
    println!("{name}: max |diff| = {diff:e} (tolerance {tol:e})");
    assert!(diff <= tol, "{name}: max |diff| = {diff:e} > {tol:e}");
    diff
}

pub(crate) fn fixture_config() -> AutoencoderKLConfig {
    AutoencoderKLConfig::from_file(fixture("vae_config.json")).unwrap()
}

/// The fixture's decoder-only model, loaded strictly from the fixture weights.
pub(crate) fn decoder_model() -> AutoencoderKL {
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
pub(crate) fn full_model() -> AutoencoderKL {
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

pub(crate) fn seeded(seed: u64, shape: &[usize]) -> Vec<f32> {
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
pub(crate) fn encoder_keys(c: &AutoencoderKLConfig) -> Vec<(String, Vec<usize>)> {
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
pub(crate) fn decoder_keys(c: &AutoencoderKLConfig) -> Vec<(String, Vec<usize>)> {
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
pub(crate) fn random_entries(keys: &[(String, Vec<usize>)], seed: u64) -> Vec<Entry> {
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
        let loaded = vae.load_file(fixture(WEIGHTS), &LoadOptions::new().dtype(dtype));
        if !dev().supports_dtype(dtype) {
            // bf16 on wgpu: refused before loading, never garbage.
            let e = loaded.expect_err("a dtype the device cannot compute in");
            assert!(matches!(e, Error::Unsupported(_)), "{e}");
            continue;
        }
        let (vae, _) = loaded.unwrap();
        let images = vae.decode(latents.clone()).unwrap();
        assert_eq!(images.dtype(), burn::tensor::DType::from(dtype));
        assert_close(
            &format!("images computed in {tag}"),
            images,
            want.clone(),
            tol * crate::HALF_TOL_FACTOR,
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
