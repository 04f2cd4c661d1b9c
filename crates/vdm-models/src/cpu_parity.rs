//! The fused CPU kernels (`vdm-kernels`, through [`crate::cpu`]) inside the model layers (resnet blocks, up/down
//! sampling, temporal convolution, spatial and temporal transformers, attention,
//! feed-forward) against the plain Burn path of the same layers.
//!
//! These tests live in vdm-models because they build model modules, which the kernel layer
//! does not import; they switch to the Burn reference path with the `FORCE_BURN` switch of
//! [`crate::cpu::enabled`] (test builds only).

use burn::tensor::{DType, Device, Distribution, Tensor, Tolerance};
use vdm_core::AllFrames;

use crate::cpu::{FORCE_BURN, enabled};

/// `f()` on the fused path and on the plain Burn path.
fn both<T>(f: impl Fn() -> T) -> (T, T) {
    let fused = f();
    FORCE_BURN.with(|b| b.set(true));
    let reference = f();
    FORCE_BURN.with(|b| b.set(false));
    (fused, reference)
}

fn rand<const D: usize>(shape: [usize; D]) -> Tensor<D> {
    Tensor::random(shape, Distribution::Normal(0.0, 1.0), &Device::flex())
}

fn close<const D: usize>(name: &str, (a, b): (Tensor<D>, Tensor<D>), tol: f32) {
    let diff: f32 = (a.clone() - b.clone()).abs().max().into_scalar();
    assert!(diff <= tol, "{name}: fused vs Burn max |diff| = {diff}");
    a.into_data()
        .assert_approx_eq::<f32>(&b.into_data(), Tolerance::absolute(tol));
}

#[test]
fn fused_layers_match_the_burn_path() {
    use crate::attention::{AttentionConfig, BasicTransformerBlockConfig};
    use crate::resnet::{Downsample2DConfig, ResnetBlock2DConfig, Upsample2DConfig};
    use crate::temporal::{TemporalConvLayerConfig, TransformerTemporalModelConfig};
    use crate::transformer_2d::Transformer2DModelConfig;
    let d = Device::flex();
    assert!(enabled(&d, DType::F32));
    assert!(!enabled(&d, DType::F16));

    // Resnet with a 1×1 shortcut, a time embedding and an output scale.
    let resnet = ResnetBlock2DConfig::new(8)
        .with_out_channels(Some(12))
        .with_temb_channels(Some(16))
        .with_groups(4)
        .with_output_scale_factor(2.0)
        .try_init(&d)
        .unwrap();
    let (x, t) = (rand([3, 8, 5, 7]), rand([3, 16]));
    close(
        "resnet",
        both(|| resnet.forward(x.clone(), Some(t.clone())).unwrap()),
        1e-5,
    );
    // Without time embedding (the VAE form) and without shortcut.
    let vae = ResnetBlock2DConfig::new(8)
        .with_groups(2)
        .try_init(&d)
        .unwrap();
    close(
        "resnet (VAE)",
        both(|| vae.forward(x.clone(), None).unwrap()),
        1e-5,
    );

    // Down (stride 2, symmetric and asymmetric padding) and up convolutions.
    for padding in [0, 1] {
        let down = Downsample2DConfig::new(8)
            .with_padding(padding)
            .try_init(&d)
            .unwrap();
        close(
            "downsample",
            both(|| down.forward(x.clone()).unwrap()),
            1e-5,
        );
    }
    let up = Upsample2DConfig::new(8).try_init(&d).unwrap();
    for size in [None, Some([11, 13])] {
        close(
            "upsample",
            both(|| up.forward(x.clone(), size).unwrap()),
            1e-5,
        );
    }
    // The resize alone is a copy: bit-identical to Burn's two selects (doubling, odd sizes,
    // shrinking, one axis unchanged).
    for size in [[10, 14], [11, 15], [3, 4], [5, 9]] {
        let (fused, burn) = both(|| crate::resnet::upsample_nearest(x.clone(), size));
        assert_eq!(fused.dims(), [3, 8, size[0], size[1]]);
        assert_eq!(
            fused.into_data().as_slice::<f32>().unwrap(),
            burn.into_data().as_slice::<f32>().unwrap(),
            "nearest resize to {size:?}"
        );
    }
    let norm = burn::nn::GroupNormConfig::new(4, 8).init(&d);
    close(
        "group norm + SiLU",
        both(|| crate::resnet::norm_silu(&norm, x.clone())),
        1e-5,
    );

    // Temporal convolution (all four stages non-zero).
    let mut conv = TemporalConvLayerConfig::new(8)
        .with_norm_num_groups(4)
        .try_init(&d)
        .unwrap();
    conv.conv4 = conv.conv2.clone();
    let frames = rand([2 * 5, 8, 3, 4]);
    close(
        "temporal conv",
        both(|| conv.forward_frames(frames.clone(), 5).unwrap()),
        1e-5,
    );

    // Spatial transformer with one text context per video (4 frames each).
    let spatial = Transformer2DModelConfig::new(16, 2, 8)
        .with_norm_num_groups(4)
        .with_cross_attention_dim(Some(12))
        .with_use_linear_projection(true)
        .try_init(&d)
        .unwrap();
    let (img, ctx) = (rand([8, 16, 3, 5]), rand([2, 7, 12]));
    let per_frame = ctx
        .clone()
        .unsqueeze_dim::<4>(1)
        .expand([2, 4, 7, 12])
        .reshape([8, 7, 12]);
    let (shared, _) = both(|| spatial.forward(img.clone(), Some(ctx.clone())).unwrap());
    let reference = both(|| {
        spatial
            .forward(img.clone(), Some(per_frame.clone()))
            .unwrap()
    })
    .1;
    close(
        "spatial transformer, shared context",
        (shared, reference),
        1e-5,
    );

    // Temporal transformer straight from the frame layout.
    let temporal = TransformerTemporalModelConfig::new(16, 2, 8)
        .with_norm_num_groups(4)
        .try_init(&d)
        .unwrap();
    let video = rand([2 * 6, 16, 2, 3]);
    close(
        "temporal transformer",
        both(|| {
            crate::unet3d::temporal_transformer(&temporal, video.clone(), 6, &AllFrames, "t", None)
                .unwrap()
        }),
        1e-5,
    );

    let reference = both(|| {
        crate::unet3d::temporal_transformer(&temporal, video.clone(), 6, &AllFrames, "t", None)
            .unwrap()
    })
    .1;
    let chunked =
        crate::unet3d::temporal_transformer(&temporal, video.clone(), 6, &AllFrames, "t", Some(5))
            .unwrap();
    close(
        "temporal transformer, chunks across videos",
        (chunked, reference),
        1e-5,
    );

    // Attention with a residual; transformer block (LayerNorms, GEGLU feed-forward).
    let attn = AttentionConfig::new(16, 4, 5).try_init(&d).unwrap();
    let (tok, res) = (rand([3, 9, 16]), rand([3, 9, 16]));
    close(
        "attention + residual",
        both(|| {
            attn.forward_residual(tok.clone(), None, None, res.clone())
                .unwrap()
        }),
        1e-5,
    );
    let block = BasicTransformerBlockConfig::new(16, 2, 8)
        .with_cross_attention_dim(Some(12))
        .try_init(&d)
        .unwrap();
    let text = rand([1, 7, 12]).expand([3, 7, 12]);
    close(
        "transformer block",
        both(|| block.forward(tok.clone(), Some(text.clone())).unwrap()),
        1e-5,
    );
    close("feed-forward", both(|| block.ff.forward(tok.clone())), 1e-5);
}
