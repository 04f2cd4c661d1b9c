//! Tests of the pseudo-3D layers: a fresh layer is the image layer, the temporal parts mix
//! frames as intended and go through the hook, typed errors and checkpoint keys.

use std::sync::Mutex;

use burn::module::Param;
use burn::nn::Linear;
use burn::tensor::{Bool, Device, Tensor};
use vdm_core::temporal::{FrameWindow, TemporalHook, TemporalSite, TemporalStages};
use vdm_core::{Error, Result};

use super::*;
use burn::tensor::activation::softmax;
use vdm_core::noise::{SeededNoise, draw};
use vdm_core::temporal::{AllFrames, run_chain};

fn device() -> Device {
    Device::flex()
}

thread_local! {
    static DRAWS: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

/// Seeded host-side normal noise: each test (one thread each) draws the same sequence.
fn randn<const D: usize>(dims: [usize; D]) -> Tensor<D> {
    let seed = DRAWS.with(|d| {
        d.set(d.get() + 1);
        d.get()
    });
    draw(&mut SeededNoise::new(seed), dims, &device()).unwrap()
}

fn max_abs_diff<const D: usize>(a: Tensor<D>, b: Tensor<D>) -> f32 {
    (a - b).abs().max().into_scalar::<f32>()
}

/// Frame `f` of every video: `[B, C, H, W]`.
fn frame(x: &Tensor<5>, f: usize) -> Tensor<4> {
    let [b, c, _, h, w] = x.dims();
    x.clone()
        .slice([0..b, 0..c, f..f + 1, 0..h, 0..w])
        .reshape([b, c, h, w])
}

/// Adds `delta` to frame `f` of `x`.
fn bump_frame(x: &Tensor<5>, f: usize, delta: f32) -> Tensor<5> {
    let [b, c, _, h, w] = x.dims();
    let patch = x
        .clone()
        .slice([0..b, 0..c, f..f + 1, 0..h, 0..w])
        .add_scalar(delta);
    x.clone()
        .slice_assign([0..b, 0..c, f..f + 1, 0..h, 0..w], patch)
}

fn randomise(linear: &mut Linear) {
    let dims = linear.weight.dims();
    linear.weight = Param::from_tensor(randn(dims).mul_scalar(0.3));
}

// ----- PseudoConv3d -------------------------------------------------------------------

#[test]
fn fresh_pseudo_conv_is_the_2d_conv_per_frame() {
    let conv = PseudoConv3dConfig::new(3, 5).init(&device()).unwrap();
    // The temporal conv exists and is the Dirac identity with zero bias.
    let t = conv
        .temporal_conv
        .as_ref()
        .expect("k = 3 has a temporal conv");
    assert_eq!(t.weight.dims(), [5, 5, 3]);
    let bias = t.bias.as_ref().unwrap().val();
    assert_eq!(bias.abs().max().into_scalar::<f32>(), 0.0);

    let x = randn([2, 3, 4, 6, 5]);
    let y = conv.forward(x.clone()).unwrap();
    assert_eq!(y.dims(), [2, 5, 4, 6, 5]);
    for f in 0..4 {
        let want = conv.spatial_conv.forward(frame(&x, f));
        let d = max_abs_diff(frame(&y, f), want);
        assert!(d < 1e-6, "frame {f}: max abs diff {d}");
    }
    // Image mode and `enable_time = false` agree with it too.
    let img = conv.forward_image(frame(&x, 2)).unwrap();
    assert!(max_abs_diff(img, frame(&y, 2)) < 1e-6);
    let spatial = conv.forward_with(x, false).unwrap();
    assert!(max_abs_diff(spatial, y) < 1e-6);
}

#[test]
fn temporal_kernel_mixes_neighbouring_frames_only() {
    let mut conv = PseudoConv3dConfig::new(2, 3)
        .with_temporal_kernel_size(Some(3))
        .init(&device())
        .unwrap();
    let t = conv.temporal_conv.as_mut().unwrap();
    t.weight = Param::from_tensor(randn([3, 3, 3]));
    let x = randn([1, 2, 5, 4, 4]);
    let y = conv.forward(x.clone()).unwrap();
    let y2 = conv.forward(bump_frame(&x, 0, 1.0)).unwrap();
    // Frame 1 (a neighbour) changes; frame 3 (two frames away, k_t = 3) does not.
    assert!(max_abs_diff(frame(&y, 1), frame(&y2, 1)) > 1e-3);
    assert!(max_abs_diff(frame(&y, 3), frame(&y2, 3)) < 1e-6);
    // The temporal conv is exactly a 1-D conv over frames: check one output by hand.
    let w = conv.temporal_conv.as_ref().unwrap().weight.val();
    let s = conv.forward_with(x.clone(), false).unwrap();
    let s_data = s.into_data().try_to_vec::<f32>().unwrap();
    let w_data = w.into_data().try_to_vec::<f32>().unwrap();
    let (o, fo, hh, ww) = (1, 2, 3, 0);
    let mut want = 0.0f32;
    for i in 0..3 {
        for k in 0..3 {
            let fi = fo + k - 1;
            want += w_data[(o * 3 + i) * 3 + k] * s_data[((i * 5 + fi) * 4 + hh) * 4 + ww];
        }
    }
    let got = y
        .slice([0..1, o..o + 1, fo..fo + 1, hh..hh + 1, ww..ww + 1])
        .into_scalar::<f32>();
    assert!((got - want).abs() < 1e-4, "got {got}, want {want}");
}

#[test]
fn pseudo_conv_single_frame_and_1x1() {
    let conv = PseudoConv3dConfig::new(3, 3).init(&device()).unwrap();
    let x = randn([1, 3, 1, 4, 4]);
    let y = conv.forward(x.clone()).unwrap();
    assert!(max_abs_diff(frame(&y, 0), conv.spatial_conv.forward(frame(&x, 0))) < 1e-6);
    // kernel_size = 1: no temporal conv (as in the reference), or when disabled.
    let c1 = PseudoConv3dConfig::new(3, 4)
        .with_kernel_size(1)
        .init(&device())
        .unwrap();
    assert!(c1.temporal_conv.is_none());
    let off = PseudoConv3dConfig::new(3, 4)
        .with_temporal(false)
        .init(&device())
        .unwrap();
    assert!(off.temporal_conv.is_none());
    assert_eq!(off.forward(x).unwrap().dims(), [1, 4, 1, 4, 4]);
}

#[test]
fn pseudo_conv_errors_are_typed() {
    let e = PseudoConv3dConfig::new(3, 3)
        .with_kernel_size(2)
        .init(&device())
        .unwrap_err();
    assert!(
        matches!(&e, Error::InvalidConfig { field, .. } if field == "kernel_size"),
        "{e}"
    );
    let e = PseudoConv3dConfig::new(3, 3)
        .with_temporal_kernel_size(Some(4))
        .init(&device())
        .unwrap_err();
    assert!(
        matches!(&e, Error::InvalidConfig { field, .. } if field == "temporal_kernel_size"),
        "{e}"
    );
    let e = PseudoConv3dConfig::new(0, 3).init(&device()).unwrap_err();
    assert!(
        matches!(&e, Error::InvalidConfig { field, .. } if field == "channels_in"),
        "{e}"
    );
    let conv = PseudoConv3dConfig::new(3, 3).init(&device()).unwrap();
    let e = conv.forward(randn([1, 4, 2, 3, 3])).unwrap_err();
    assert!(
        matches!(&e, Error::Shape { tensor, .. } if tensor == "x"),
        "{e}"
    );
    let e = conv.forward_image(randn([1, 2, 3, 3])).unwrap_err();
    assert!(
        matches!(&e, Error::Shape { tensor, .. } if tensor == "x"),
        "{e}"
    );
}

#[test]
fn pseudo_conv_checkpoint_keys() {
    use burn::store::ModuleSnapshot;
    let conv = PseudoConv3dConfig::new(3, 5).init(&device()).unwrap();
    let mut keys: Vec<(String, Vec<usize>)> = conv
        .collect(None, None, false)
        .iter()
        .map(|t| (t.name.clone(), t.shape.to_vec()))
        .collect();
    keys.sort();
    assert_eq!(
        keys,
        [
            ("spatial_conv.bias".to_string(), vec![5]),
            ("spatial_conv.weight".to_string(), vec![5, 3, 3, 3]),
            ("temporal_conv.bias".to_string(), vec![5]),
            ("temporal_conv.weight".to_string(), vec![5, 5, 3]),
        ]
    );
}

// ----- PseudoAttention ----------------------------------------------------------------

fn small_attention() -> PseudoAttentionConfig {
    PseudoAttentionConfig::new(8).with_heads(2).with_dim_head(4)
}

/// A perturbed layer: the temporal `to_out` is no longer zero.
fn trained(cfg: PseudoAttentionConfig) -> PseudoAttention {
    let mut layer = cfg.init(&device()).unwrap();
    randomise(&mut layer.temporal_attn.to_out);
    layer
}

#[test]
fn mav_attention_matches_hand_written_softmax_attention() {
    let attn = MavAttention::new(6, 2, 3, false, &device());
    let x = randn([2, 5, 6]);
    let got = attn.forward(x.clone(), None, None).unwrap();
    // norm: x / ‖x‖ · √6 · γ (γ = 1)
    let h = x.clone() / x.square().sum_dim(2).sqrt() * (6f32).sqrt();
    let q = h.clone().matmul(attn.to_q.weight.val().unsqueeze::<3>());
    let kv = h.matmul(attn.to_kv.weight.val().unsqueeze::<3>());
    let k = kv.clone().slice([0..2, 0..5, 0..6]);
    let v = kv.slice([0..2, 0..5, 6..12]);
    let mut heads = Vec::new();
    for hd in 0..2 {
        let r = hd * 3..hd * 3 + 3;
        let qh = q.clone().slice([0..2, 0..5, r.clone()]);
        let kh = k.clone().slice([0..2, 0..5, r.clone()]);
        let vh = v.clone().slice([0..2, 0..5, r]);
        let p = softmax(qh.matmul(kh.swap_dims(1, 2)).div_scalar(3f32.sqrt()), 2);
        heads.push(p.matmul(vh));
    }
    let want = Tensor::cat(heads, 2).matmul(attn.to_out.weight.val().unsqueeze::<3>());
    let d = max_abs_diff(got, want);
    assert!(d < 1e-5, "max abs diff {d}");
}

#[test]
fn fresh_pseudo_attention_is_the_spatial_attention() {
    let layer = small_attention().init(&device()).unwrap();
    let zero = layer
        .temporal_attn
        .to_out
        .weight
        .val()
        .abs()
        .max()
        .into_scalar::<f32>();
    assert_eq!(zero, 0.0);
    let x = randn([2, 8, 4, 3, 3]);
    let full = layer.forward(x.clone(), &AllFrames).unwrap();
    let spatial = layer.forward_spatial_only(x.clone()).unwrap();
    let d = max_abs_diff(full.clone(), spatial);
    assert!(d < 1e-6, "max abs diff {d}");
    // ... which is the image attention on every frame.
    for f in 0..4 {
        let img = layer.forward_image(frame(&x, f)).unwrap();
        let d = max_abs_diff(frame(&full, f), img);
        assert!(d < 1e-6, "frame {f}: max abs diff {d}");
    }
}

#[test]
fn trained_temporal_attention_mixes_frames() {
    for encoding in [
        TemporalPositionEncoding::Sinusoidal,
        TemporalPositionEncoding::None,
    ] {
        let layer = trained(small_attention().with_temporal_position(encoding));
        let x = randn([1, 8, 4, 2, 3]);
        let full = layer.forward(x.clone(), &AllFrames).unwrap();
        let spatial = layer.forward_spatial_only(x.clone()).unwrap();
        assert!(max_abs_diff(full.clone(), spatial) > 1e-3, "{encoding:?}");
        // A change in frame 0 reaches frame 3 through the temporal attention ...
        let bumped = layer.forward(bump_frame(&x, 0, 1.0), &AllFrames).unwrap();
        assert!(
            max_abs_diff(frame(&full, 3), frame(&bumped, 3)) > 1e-4,
            "{encoding:?}"
        );
        // ... but not through the spatial attention alone.
        let s0 = layer.forward_spatial_only(x.clone()).unwrap();
        let s1 = layer.forward_spatial_only(bump_frame(&x, 0, 1.0)).unwrap();
        assert!(max_abs_diff(frame(&s0, 3), frame(&s1, 3)) < 1e-6);
    }
}

#[test]
fn causal_time_attention_ignores_future_frames() {
    let layer = trained(small_attention().with_causal_time_attn(true));
    let x = randn([1, 8, 4, 2, 2]);
    let y0 = layer.forward(x.clone(), &AllFrames).unwrap();
    let y1 = layer.forward(bump_frame(&x, 3, 1.0), &AllFrames).unwrap();
    for f in 0..3 {
        assert!(
            max_abs_diff(frame(&y0, f), frame(&y1, f)) < 1e-6,
            "frame {f}"
        );
    }
    let y2 = layer.forward(bump_frame(&x, 0, 1.0), &AllFrames).unwrap();
    assert!(max_abs_diff(frame(&y0, 3), frame(&y2, 3)) > 1e-4);
}

/// One recorded hook call: layer name, frame count, `(start, end, positions)` per window.
type Call = (String, usize, Vec<(usize, usize, std::ops::Range<usize>)>);

/// A hook that records every call and runs the stages over fixed windows (with
/// window-relative positions and an optional mask), writing each window's frames back.
struct RecordingHook {
    windows: Vec<(usize, usize)>,
    position_offset: usize,
    mask_self_only: bool,
    calls: Mutex<Vec<Call>>,
}

impl RecordingHook {
    fn new(windows: Vec<(usize, usize)>) -> Self {
        Self {
            windows,
            position_offset: 0,
            mask_self_only: false,
            calls: Mutex::new(Vec::new()),
        }
    }
}

impl TemporalHook for RecordingHook {
    fn apply(
        &self,
        site: &TemporalSite<'_>,
        tokens: Tensor<3>,
        stages: &dyn TemporalStages,
    ) -> Result<Tensor<3>> {
        let [n, f, c] = tokens.dims();
        assert_eq!(site.num_frames, f);
        let mut out = tokens.clone();
        let mut seen = Vec::new();
        for &(start, end) in &self.windows {
            let mut window = FrameWindow::relative(start, end);
            window.positions = self.position_offset..self.position_offset + end - start;
            if self.mask_self_only {
                let len = end - start;
                window.mask = Some(Tensor::<2, Bool>::diag_mask(
                    [len, len],
                    0,
                    &tokens.device(),
                ));
            }
            let part = tokens.clone().slice([0..n, start..end, 0..c]);
            let done = run_chain(stages, part, &window)?;
            out = out.slice_assign([0..n, start..end, 0..c], done);
            seen.push((start, end, window.positions.clone()));
        }
        self.calls
            .lock()
            .unwrap()
            .push((site.layer.to_string(), site.num_frames, seen));
        Ok(out)
    }
}

#[test]
fn temporal_part_goes_through_the_hook() {
    let layer = trained(small_attention().with_layer_name(Some("mid_block.attn".into())));
    let x = randn([1, 8, 4, 2, 2]);

    // One full window reproduces `AllFrames` and is recorded.
    let hook = RecordingHook::new(vec![(0, 4)]);
    let y = layer.forward(x.clone(), &hook).unwrap();
    let all = layer.forward(x.clone(), &AllFrames).unwrap();
    assert!(max_abs_diff(y, all.clone()) < 1e-6);
    let calls = hook.calls.lock().unwrap().clone();
    assert_eq!(
        calls,
        [("mid_block.attn".to_string(), 4, vec![(0, 4, 0..4)])]
    );

    // Two disjoint windows: frame 0 no longer reaches frame 3, but still frame 1.
    let hook = RecordingHook::new(vec![(0, 2), (2, 4)]);
    let y0 = layer.forward(x.clone(), &hook).unwrap();
    let y1 = layer.forward(bump_frame(&x, 0, 1.0), &hook).unwrap();
    assert!(max_abs_diff(frame(&y0, 3), frame(&y1, 3)) < 1e-6);
    assert!(max_abs_diff(frame(&y0, 1), frame(&y1, 1)) > 1e-4);
    let calls = hook.calls.lock().unwrap().clone();
    assert_eq!(calls.len(), 2);
    assert_eq!(calls[0].2, vec![(0, 2, 0..2), (2, 4, 0..2)]);

    // The window's mask is honoured: attending only to itself, frames are independent.
    let mut hook = RecordingHook::new(vec![(0, 4)]);
    hook.mask_self_only = true;
    let y0 = layer.forward(x.clone(), &hook).unwrap();
    let y1 = layer.forward(bump_frame(&x, 0, 1.0), &hook).unwrap();
    for f in 1..4 {
        assert!(
            max_abs_diff(frame(&y0, f), frame(&y1, f)) < 1e-6,
            "frame {f}"
        );
    }
}

#[test]
fn window_positions_drive_the_sinusoidal_encoding() {
    let x = randn([1, 8, 3, 2, 2]);
    let mut shifted = RecordingHook::new(vec![(0, 3)]);
    shifted.position_offset = 5;
    let sin = trained(small_attention());
    let d = max_abs_diff(
        sin.forward(x.clone(), &AllFrames).unwrap(),
        sin.forward(x.clone(), &shifted).unwrap(),
    );
    assert!(d > 1e-4, "positions 5..8 should differ from 0..3, diff {d}");
    let none = trained(small_attention().with_temporal_position(TemporalPositionEncoding::None));
    let d = max_abs_diff(
        none.forward(x.clone(), &AllFrames).unwrap(),
        none.forward(x, &shifted).unwrap(),
    );
    assert!(d < 1e-6, "no encoding: positions do not matter, diff {d}");
}

#[test]
fn pseudo_attention_errors_are_typed() {
    let layer = small_attention().init(&device()).unwrap();
    let e = layer
        .forward(randn([1, 6, 2, 2, 2]), &AllFrames)
        .unwrap_err();
    assert!(
        matches!(&e, Error::Shape { tensor, .. } if tensor == "x"),
        "{e}"
    );
    let e = layer.forward_image(randn([1, 6, 2, 2])).unwrap_err();
    assert!(
        matches!(&e, Error::Shape { tensor, .. } if tensor == "x"),
        "{e}"
    );
    let e = PseudoAttentionConfig::new(6)
        .with_heads(0)
        .init(&device())
        .unwrap_err();
    assert!(
        matches!(&e, Error::InvalidConfig { field, .. } if field == "heads"),
        "{e}"
    );
    let e = PseudoAttentionConfig::new(7).init(&device()).unwrap_err();
    assert!(
        matches!(&e, Error::InvalidConfig { field, .. } if field == "dim"),
        "{e}"
    );
    // A wrong-sized window mask and a bad stage index.
    let mut window = FrameWindow::full(3);
    window.mask = Some(Tensor::<2, Bool>::diag_mask([2, 2], 0, &device()));
    let e = layer.run_stage(0, randn([4, 3, 8]), &window).unwrap_err();
    assert!(
        matches!(&e, Error::Shape { tensor, .. } if tensor == "window.mask"),
        "{e}"
    );
    let e = layer
        .run_stage(1, randn([4, 3, 8]), &FrameWindow::full(3))
        .unwrap_err();
    assert!(
        matches!(&e, Error::InvalidConfig { field, .. } if field == "stage"),
        "{e}"
    );
    let e = layer
        .run_stage(0, randn([4, 3, 8]), &FrameWindow::full(4))
        .unwrap_err();
    assert!(
        matches!(&e, Error::Shape { tensor, .. } if tensor == "tokens"),
        "{e}"
    );
}

#[test]
fn pseudo_attention_checkpoint_keys() {
    use burn::store::ModuleSnapshot;
    let layer = small_attention().init(&device()).unwrap();
    let mut keys: Vec<String> = layer
        .collect(None, None, false)
        .iter()
        .map(|t| t.name.clone())
        .collect();
    keys.sort();
    let want: Vec<String> = ["spatial_attn", "temporal_attn"]
        .iter()
        .flat_map(|p| {
            ["norm.gamma", "to_kv.weight", "to_out.weight", "to_q.weight"]
                .map(|k| format!("{p}.{k}"))
        })
        .collect();
    assert_eq!(keys, want);
}
