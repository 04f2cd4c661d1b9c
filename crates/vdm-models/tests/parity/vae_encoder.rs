//! `AutoencoderKL`'s encoder: parity with diffusers (`vae_encoder`), checkpoint structure, shapes
//! and a hand-built case computed in `f64`.

use std::collections::BTreeMap;

use burn::tensor::{Tensor, TensorData};
use safetensors::Dtype;
use vdm_core::Error;
use vdm_core::layout::{batch_to_frames, frames_to_batch};
use vdm_core::noise::{NoiseBank, SeededNoise};
use vdm_models::loading::LoadOptions;
use vdm_models::vae::{AutoencoderKLConfig, DiagonalGaussian, VaeParts};

use crate::vae::{
    ENCODER, ENCODER_IO, Entry, WEIGHTS, assert_close, decoder_keys, decoder_model, dev,
    encoder_keys, fixture_config, full_model, random_entries, read_entries, seeded, serialize,
    tensor,
};

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
