//! Unit tests of the temporal convolution and the temporal transformer.

use super::*;
use std::sync::Mutex;

use burn::tensor::{Bool, Distribution, TensorData, Tolerance};
use vdm_core::AllFrames;
use vdm_core::temporal::{FrameWindow, TemporalStages, run_chain};

fn dev() -> Device {
    Device::flex()
}

fn rand<const D: usize>(shape: [usize; D]) -> Tensor<D> {
    Tensor::random(shape, Distribution::Normal(0.0, 1.0), &dev())
}

fn close<const D: usize>(a: Tensor<D>, b: Tensor<D>, tol: f32) {
    a.into_data()
        .assert_approx_eq::<f32>(&b.into_data(), Tolerance::absolute(tol));
}

fn motion_config() -> TransformerTemporalModelConfig {
    TransformerTemporalModelConfig::new(16, 2, 8)
        .with_norm_num_groups(4)
        .with_max_positions(Some(8))
}

#[test]
fn fresh_temporal_conv_is_the_identity() {
    let layer = TemporalConvLayerConfig::new(8)
        .with_norm_num_groups(4)
        .with_dropout(0.1)
        .try_init(&dev())
        .unwrap();
    assert_eq!(layer.conv2.conv.weight.dims(), [8, 8, 3, 1, 1]);
    let x = rand([2, 8, 5, 3, 4]);
    let y = layer.forward(x.clone()).unwrap();
    y.into_data().assert_eq(&x.clone().into_data(), true);
    let frames = frames_to_batch(x);
    let y = layer.forward_frames(frames.clone(), 5).unwrap();
    y.into_data().assert_eq(&frames.clone().into_data(), true);
    assert!(layer.forward_frames(frames, 3).is_err());
}

#[test]
fn temporal_conv_mixes_neighbouring_frames_only() {
    let mut layer = TemporalConvLayerConfig::new(4)
        .with_norm_num_groups(2)
        .try_init(&dev())
        .unwrap();
    layer.conv4 = TemporalConvLayerConfig::new(4)
        .with_norm_num_groups(2)
        .try_init(&dev())
        .unwrap()
        .conv1;
    let x = rand([1, 4, 6, 2, 2]);
    let y = layer.forward(x.clone()).unwrap();
    // Reference: the four stages applied one by one.
    let mut h = x.clone();
    for s in [&layer.conv1, &layer.conv2, &layer.conv3, &layer.conv4] {
        h = s.conv.forward(silu(s.norm.forward(h)));
    }
    close(y, x + h, 1e-5);
    let e = layer
        .forward(rand([1, 5, 6, 2, 2]))
        .unwrap_err()
        .to_string();
    assert!(e.contains("hidden_states") && e.contains("C = 4"), "{e}");
}

/// The layer computed without the hook, block by block as diffusers writes it.
fn direct(model: &TransformerTemporalModel, x: Tensor<5>) -> Tensor<5> {
    let [b, _, f, h, w] = x.dims();
    let normed = if model.per_frame_norm {
        batch_to_frames(model.norm.forward(frames_to_batch(x.clone())), f)
    } else {
        model.norm.forward(x.clone())
    };
    let mut t = model.proj_in.forward(video_to_frame_tokens(normed));
    for block in &model.transformer_blocks {
        t = block.forward(t, None).unwrap();
    }
    frame_tokens_to_video(model.proj_out.forward(t), b, h, w) + x
}

#[test]
fn all_frames_equals_direct_computation() {
    for norm in [TemporalNorm::AcrossFrames, TemporalNorm::PerFrame] {
        let model = motion_config()
            .with_num_layers(2)
            .with_norm(norm)
            .try_init(&dev())
            .unwrap();
        let x = rand([2, 16, 6, 2, 3]);
        let y = model.forward(x.clone(), &AllFrames, "test").unwrap();
        assert_eq!(y.dims(), [2, 16, 6, 2, 3]);
        close(y, direct(&model, x), 1e-5);
    }
    // ModelScope transformer_in: inner width 64 on 32 channels, no positional embedding.
    let model = TransformerTemporalModelConfig::new(32, 8, 8)
        .with_norm_num_groups(8)
        .try_init(&dev())
        .unwrap();
    assert_eq!(model.proj_in.weight.dims(), [32, 64]);
    assert_eq!(model.max_positions(), None);
    let x = rand([1, 32, 3, 2, 2]);
    let y = model
        .forward(x.clone(), &AllFrames, "transformer_in")
        .unwrap();
    close(y, direct(&model, x), 1e-5);
}

#[test]
fn per_frame_norm_differs_from_across_frames() {
    let mut a = motion_config().try_init(&dev()).unwrap();
    let b = motion_config()
        .with_norm(TemporalNorm::PerFrame)
        .try_init(&dev())
        .unwrap();
    a.proj_in = b.proj_in.clone();
    a.proj_out = b.proj_out.clone();
    a.transformer_blocks = b.transformer_blocks.clone();
    let x = rand([1, 16, 4, 2, 2]);
    let da = a.forward(x.clone(), &AllFrames, "m").unwrap();
    let db = b.forward(x, &AllFrames, "m").unwrap();
    let diff: f32 = (da - db).abs().max().into_scalar();
    assert!(diff > 1e-3, "{diff}");
}

/// One recorded hook call: layer, frames, table length, window start/end, positions.
type Call = (
    String,
    usize,
    Option<usize>,
    usize,
    usize,
    std::ops::Range<usize>,
);

/// Splits the frames into two halves, each with window-relative positions; records every
/// call it makes.
#[derive(Default)]
struct TwoWindows {
    calls: Mutex<Vec<Call>>,
}

impl TemporalHook for TwoWindows {
    fn apply(
        &self,
        site: &TemporalSite<'_>,
        tokens: Tensor<3>,
        stages: &dyn TemporalStages,
    ) -> vdm_core::Result<Tensor<3>> {
        let [n, f, c] = tokens.dims();
        let half = f / 2;
        let mut outs = Vec::new();
        for (s, e) in [(0, half), (half, f)] {
            let window = FrameWindow::relative(s, e);
            site.check_positions(&window.positions)?;
            self.calls.lock().unwrap().push((
                site.layer.to_string(),
                site.num_frames,
                site.max_positions,
                s,
                e,
                window.positions.clone(),
            ));
            let part = tokens.clone().slice([0..n, s..e, 0..c]);
            outs.push(run_chain(stages, part, &window)?);
        }
        Ok(Tensor::cat(outs, 1))
    }
}

#[test]
fn custom_hook_sees_windows_with_relative_positions() {
    let model = motion_config().try_init(&dev()).unwrap();
    let hook = TwoWindows::default();
    let x = rand([1, 16, 12, 2, 2]);
    // 12 frames exceed the 8-row table for AllFrames ...
    let e = model
        .forward(x.clone(), &AllFrames, "down_blocks.0.motion_modules.0")
        .unwrap_err()
        .to_string();
    assert!(e.contains("num_frames") && e.contains('8'), "{e}");
    // ... but two windows of 6 with window-relative positions fit.
    let y = model
        .forward(x.clone(), &hook, "down_blocks.0.motion_modules.0")
        .unwrap();
    let calls = hook.calls.lock().unwrap().clone();
    assert_eq!(
        calls,
        vec![
            (
                "down_blocks.0.motion_modules.0".into(),
                12,
                Some(8),
                0,
                6,
                0..6
            ),
            (
                "down_blocks.0.motion_modules.0".into(),
                12,
                Some(8),
                6,
                12,
                0..6
            ),
        ]
    );
    // Each window equals the block chain run on that half of the frames alone.
    let block = &model.transformer_blocks[0];
    let t = model
        .proj_in
        .forward(video_to_frame_tokens(model.norm.forward(x.clone())));
    let [n, _, c] = t.dims();
    let halves: Vec<Tensor<3>> = [(0, 6), (6, 12)]
        .into_iter()
        .map(|(s, e)| {
            let part = t.clone().slice([0..n, s..e, 0..c]);
            block.forward(part, None).unwrap()
        })
        .collect();
    let want = frame_tokens_to_video(model.proj_out.forward(Tensor::cat(halves, 1)), 1, 2, 2) + x;
    close(y, want, 1e-5);
}

/// Passes a causal mask to every stage.
struct Causal;

impl TemporalHook for Causal {
    fn apply(
        &self,
        _site: &TemporalSite<'_>,
        tokens: Tensor<3>,
        stages: &dyn TemporalStages,
    ) -> vdm_core::Result<Tensor<3>> {
        let f = tokens.dims()[1];
        let m: Vec<bool> = (0..f * f).map(|i| i % f > i / f).collect();
        let mut window = FrameWindow::full(f);
        window.mask = Some(Tensor::<2, Bool>::from_data(
            TensorData::new(m, [f, f]),
            &tokens.device(),
        ));
        run_chain(stages, tokens, &window)
    }
}

#[test]
fn window_mask_is_honoured() {
    // With a causal mask, frame k's output cannot depend on later frames (per-frame
    // GroupNorm, so that the normalisation does not couple the frames either).
    let model = motion_config()
        .with_norm(TemporalNorm::PerFrame)
        .try_init(&dev())
        .unwrap();
    let x = rand([1, 16, 5, 1, 2]);
    let x2 = x
        .clone()
        .slice_assign([0..1, 0..16, 4..5, 0..1, 0..2], rand([1, 16, 1, 1, 2]));
    let head = |t: Tensor<5>| t.slice([0..1, 0..16, 0..4, 0..1, 0..2]);
    let a = model.forward(x.clone(), &Causal, "m").unwrap();
    let b = model.forward(x2.clone(), &Causal, "m").unwrap();
    close(head(a), head(b), 1e-5);
    // Without the mask the last frame does leak into the earlier ones.
    let a = model.forward(x, &AllFrames, "m").unwrap();
    let b = model.forward(x2, &AllFrames, "m").unwrap();
    let d: f32 = (head(a) - head(b)).abs().max().into_scalar();
    assert!(d > 1e-4, "{d}");
}

#[test]
fn bad_temporal_configs_name_the_field() {
    let e = TemporalConvLayerConfig::new(30)
        .validate()
        .unwrap_err()
        .to_string();
    assert!(e.contains("norm_num_groups"), "{e}");
    let e = TransformerTemporalModelConfig::new(32, 4, 8)
        .with_norm_num_groups(5)
        .validate()
        .unwrap_err()
        .to_string();
    assert!(e.contains("norm_num_groups"), "{e}");
    let e = TransformerTemporalModelConfig::new(32, 0, 8)
        .with_norm_num_groups(8)
        .validate()
        .unwrap_err()
        .to_string();
    assert!(e.contains("num_attention_heads"), "{e}");
    let e = TransformerTemporalModelConfig::new(32, 3, 5)
        .with_norm_num_groups(8)
        .with_max_positions(Some(32))
        .validate()
        .unwrap_err()
        .to_string();
    assert!(e.contains("embed_dim"), "{e}");
    let model = motion_config().try_init(&dev()).unwrap();
    let e = model
        .forward_frames(rand([5, 16, 2, 2]), 2, &AllFrames, "m")
        .unwrap_err()
        .to_string();
    assert!(e.contains("num_frames"), "{e}");
}

mod oracle {
    use super::*;
    use crate::attention::BasicTransformerBlockConfig;
    use crate::keymap::test_support::{assert_close, load, tensor};
    use crate::resnet::{Downsample2DConfig, ResnetBlock2DConfig};
    use crate::transformer_2d::Transformer2DModelConfig;

    const IO: &str = "unet3d_io.safetensors";
    const W: &str = "unet3d_weights.safetensors";

    /// ModelScope's temporal layers of the tiny UNet3D (`small` case: B = 1, F = 4, 8×8),
    /// each fed with diffusers' own input activation.
    #[test]
    fn unet3d_temporal_layers_match_diffusers() {
        let d = dev();
        let act = |k: &str| tensor::<4>(IO, &format!("small.act.{k}"), &d);

        // transformer_in: 8 heads × attention_head_dim 8 on 32 channels (inner 64).
        let tin = TransformerTemporalModelConfig::new(32, 8, 8)
            .with_norm_num_groups(8)
            .try_init(&d)
            .unwrap();
        let tin = load(tin, W, "transformer_in.");
        let y = tin
            .forward_frames(act("conv_in"), 4, &AllFrames, "transformer_in")
            .unwrap();
        assert_close("transformer_in", y, act("transformer_in"), 1e-4);

        // down_blocks.0.temp_convs.0 (GroupNorm eps 1e-5, 8 groups).
        let conv = TemporalConvLayerConfig::new(32)
            .with_norm_num_groups(8)
            .with_dropout(0.1)
            .try_init(&d)
            .unwrap();
        let conv = load(conv, W, "down_blocks.0.temp_convs.0.");
        let y = conv
            .forward_frames(act("down_blocks.0.resnets.0"), 4)
            .unwrap();
        assert_close("temp_convs.0", y, act("down_blocks.0.temp_convs.0"), 1e-4);

        // down_blocks.0.temp_attentions.0: 4 heads × 8.
        let ta = TransformerTemporalModelConfig::new(32, 4, 8)
            .with_norm_num_groups(8)
            .try_init(&d)
            .unwrap();
        let ta = load(ta, W, "down_blocks.0.temp_attentions.0.");
        let y = ta
            .forward_frames(
                act("down_blocks.0.attentions.0"),
                4,
                &AllFrames,
                "down_blocks.0.temp_attentions.0",
            )
            .unwrap();
        assert_close(
            "temp_attentions.0",
            y,
            act("down_blocks.0.temp_attentions.0"),
            1e-4,
        );
    }

    /// AnimateDiff's first down block of the tiny UNetMotionModel, chained from `conv_in`:
    /// resnet → spatial transformer (1×1-conv projections, 8 heads × 4) → motion module
    /// (4 heads × 8, sinusoidal positions) → downsampler.
    #[test]
    fn animatediff_down_block_matches_diffusers() {
        let d = dev();
        const IO: &str = "motion_io.safetensors";
        const W: &str = "motion_weights.safetensors";
        let act = |k: &str| tensor::<4>(IO, &format!("small.act.{k}"), &d);
        let temb = tensor::<2>(IO, "small.act.time_embedding", &d).repeat_dim(0, 4);
        let context = tensor::<3>(IO, "small.encoder_hidden_states_repeated", &d);

        let resnet = ResnetBlock2DConfig::new(32)
            .with_temb_channels(Some(128))
            .with_groups(8)
            .with_eps(1e-5)
            .try_init(&d)
            .unwrap();
        let resnet = load(resnet, W, "down_blocks.0.resnets.0.");
        let attn = Transformer2DModelConfig::new(32, 8, 4)
            .with_norm_num_groups(8)
            .with_cross_attention_dim(Some(32))
            .try_init(&d)
            .unwrap();
        let attn = load(attn, W, "down_blocks.0.attentions.0.");
        let motion = TransformerTemporalModelConfig::new(32, 4, 8)
            .with_norm_num_groups(8)
            .with_max_positions(Some(32))
            .try_init(&d)
            .unwrap();
        let motion = load(motion, W, "down_blocks.0.motion_modules.0.");
        assert_eq!(motion.max_positions(), Some(32));
        let down = Downsample2DConfig::new(32).try_init(&d).unwrap();
        let down = load(down, W, "down_blocks.0.downsamplers.0.");

        let h = resnet.forward(act("conv_in"), Some(temb)).unwrap();
        let h = attn.forward(h, Some(context)).unwrap();
        let h = motion
            .forward_frames(h, 4, &AllFrames, "down_blocks.0.motion_modules.0")
            .unwrap();
        assert_close(
            "motion_modules.0",
            h.clone(),
            act("down_blocks.0.motion_modules.0"),
            1e-4,
        );
        let h = down.forward(h).unwrap();
        assert_close("down_blocks.0", h, act("down_blocks.0"), 1e-4);
    }

    /// The saved motion-module table equals the one diffusers computes at construction.
    #[test]
    fn default_positional_table_matches_checkpoint_buffer() {
        let d = dev();
        let block = BasicTransformerBlockConfig::new(64, 4, 16)
            .with_double_self_attention(true)
            .with_num_positional_embeddings(Some(32))
            .try_init(&d)
            .unwrap();
        let saved = tensor::<3>(
            "motion_weights.safetensors",
            "down_blocks.1.motion_modules.0.transformer_blocks.0.pos_embed.pe",
            &d,
        );
        assert_close(
            "pos_embed.pe",
            block.pos_embed.unwrap().pe.val(),
            saved,
            1e-6,
        );
    }
}
