//! Unit tests of the motion UNet: odd latent sizes, per-frame inputs, cross-frame attention, typed
//! errors and motion-module paths.

use super::*;
use burn::tensor::{Distribution, Tolerance};

fn dev() -> Device {
    Device::flex()
}

fn tiny() -> UNetMotionConfig {
    UNetMotionConfig {
        block_out_channels: vec![8, 16],
        down_block_types: vec!["CrossAttnDownBlockMotion".into(), "DownBlockMotion".into()],
        up_block_types: vec!["UpBlockMotion".into(), "CrossAttnUpBlockMotion".into()],
        layers_per_block: PerBlock::Same(1),
        norm_num_groups: Some(4),
        cross_attention_dim: PerBlock::Same(6),
        num_attention_heads: PerBlock::Same(2),
        motion_num_attention_heads: PerBlock::Same(2),
        motion_max_seq_length: 8,
        ..Default::default()
    }
}

fn rand<const D: usize>(shape: [usize; D]) -> Tensor<D> {
    Tensor::random(shape, Distribution::Normal(0.0, 1.0), &dev())
}

fn run(model: &UNetMotionModel, x: Tensor<5>, ctx: Conditioning) -> Result<Tensor<5>> {
    model.predict(DenoiserInput::new(x, Timesteps::Shared(321.0), ctx))
}

#[test]
fn odd_latent_sizes_force_the_upsample_size() {
    let model = UNetMotionModel::new(&tiny(), &dev()).unwrap();
    let y = run(
        &model,
        rand([1, 4, 2, 7, 5]),
        Conditioning::Shared(rand([1, 3, 6])),
    )
    .unwrap();
    assert_eq!(y.dims(), [1, 4, 2, 7, 5]);
}

#[test]
fn shared_and_identical_per_frame_inputs_agree() {
    let model = UNetMotionModel::new(&tiny(), &dev()).unwrap();
    let x = rand([2, 4, 3, 4, 4]);
    let text = rand([2, 3, 6]);
    let a = run(&model, x.clone(), Conditioning::Shared(text.clone())).unwrap();
    let per = text.unsqueeze_dim::<4>(1).expand([2, 3, 3, 6]);
    let ts = Timesteps::PerFrame {
        frames: 3,
        values: vec![321.0; 6],
    };
    let b = model
        .predict(DenoiserInput::new(x, ts, Conditioning::PerFrame(per)))
        .unwrap();
    a.into_data()
        .assert_approx_eq::<f32>(&b.into_data(), Tolerance::absolute(1e-5));
}

/// Cross-frame attention reaches the spatial transformers (the block-level invariants are
/// in `attention.rs`; here frames stop being identical after the first motion module, whose
/// positional embedding differs per frame): one frame is plain self-attention under every
/// pattern, a moving video changes, and frame chunking does not change the result (the
/// spatial transformers then run on whole videos).
#[test]
fn cross_frame_attention_reaches_the_spatial_transformers() {
    use vdm_core::cross_frame::CrossFrame;
    let model = UNetMotionModel::new(&tiny(), &dev()).unwrap();
    let text = Conditioning::Shared(rand([2, 3, 6]));
    let with = |model: &UNetMotionModel, x: Tensor<5>, pattern: &CrossFrame| {
        let call =
            DenoiserInput::new(x, Timesteps::Shared(321.0), text.clone()).with_cross_frame(pattern);
        model.predict(call).unwrap()
    };
    let one = rand([2, 4, 1, 4, 4]);
    let plain = run(&model, one.clone(), text.clone()).unwrap();
    for pattern in [
        CrossFrame::First,
        CrossFrame::SparseCausal,
        CrossFrame::Full,
    ] {
        with(&model, one.clone(), &pattern)
            .into_data()
            .assert_approx_eq::<f32>(&plain.clone().into_data(), Tolerance::absolute(1e-5));
    }
    let moving = rand([2, 4, 5, 4, 4]);
    let plain = run(&model, moving.clone(), text.clone()).unwrap();
    let first = with(&model, moving.clone(), &CrossFrame::First);
    let gap: f32 = (first.clone() - plain).abs().max().into_scalar();
    assert!(gap > 1e-4, "{gap}");
    let chunked = model.clone().with_chunking(Chunking::new(2, 8));
    with(&chunked, moving, &CrossFrame::First)
        .into_data()
        .assert_approx_eq::<f32>(&first.into_data(), Tolerance::absolute(1e-5));
}

#[test]
fn input_errors_are_typed() {
    let model = UNetMotionModel::new(&tiny(), &dev()).unwrap();
    let e = run(&model, rand([1, 4, 2, 4, 4]), Conditioning::None)
        .unwrap_err()
        .to_string();
    assert!(e.contains("encoder_hidden_states"), "{e}");
    let e = run(
        &model,
        rand([1, 4, 2, 4, 4]),
        Conditioning::Shared(rand([1, 3, 7])),
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("encoder_hidden_states"), "{e}");
    let e = run(
        &model,
        rand([1, 3, 2, 4, 4]),
        Conditioning::Shared(rand([1, 3, 6])),
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("latents"), "{e}");
    let e = run(
        &model,
        rand([1, 4, 9, 4, 4]),
        Conditioning::Shared(rand([1, 3, 6])),
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("num_frames"), "{e}");
    let bad = UNetMotionModel::new(&tiny(), &dev())
        .unwrap()
        .with_chunking(Chunking {
            frames: Some(0),
            positions: None,
        });
    let e = run(
        &bad,
        rand([1, 4, 2, 4, 4]),
        Conditioning::Shared(rand([1, 3, 6])),
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("chunking.frames"), "{e}");
}

#[test]
fn motion_paths_and_mid_block_without_motion() {
    let model = UNetMotionModel::new(&tiny(), &dev()).unwrap();
    assert_eq!(
        model.motion_module_paths(),
        [
            "down_blocks.0.motion_modules.0",
            "down_blocks.1.motion_modules.0",
            "mid_block.motion_modules.0",
            "up_blocks.0.motion_modules.0",
            "up_blocks.0.motion_modules.1",
            "up_blocks.1.motion_modules.0",
            "up_blocks.1.motion_modules.1",
        ]
    );
    let config = UNetMotionConfig {
        use_motion_mid_block: false,
        ..tiny()
    };
    let model = UNetMotionModel::new(&config, &dev()).unwrap();
    assert!(model.mid_block.motion_modules.is_empty());
    let y = run(
        &model,
        rand([1, 4, 2, 4, 4]),
        Conditioning::Shared(rand([1, 3, 6])),
    )
    .unwrap();
    assert_eq!(y.dims(), [1, 4, 2, 4, 4]);
}
