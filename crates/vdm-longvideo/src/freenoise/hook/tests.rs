//! Tests of FreeNoise window fusion: the batching modes, shared projections and the host fast
//! path against the plain tensor path, and the configuration checks.

use super::fusion::*;
use super::*;
use std::ops::Range;

use burn::tensor::{Bool, Device, TensorData};
use vdm_core::host::cpu_kernels;
use vdm_core::temporal::AttentionStage;

use crate::freenoise::windows::WeightingScheme;

/// Stage `s` maps `x ↦ (s + 2)·x + position` (position window-relative): linear, so its
/// fusion is easy to reason about, and different stages do different things.
struct Affine(usize);

impl TemporalStages for Affine {
    fn num_stages(&self) -> usize {
        self.0
    }
    fn run_stage(&self, stage: usize, x: Tensor<3>, w: &FrameWindow) -> Result<Tensor<3>> {
        let [n, f, c] = x.dims();
        let pos: Vec<f32> = w.positions.clone().map(|p| p as f32).collect();
        let pos = Tensor::<1>::from_floats(pos.as_slice(), &x.device())
            .reshape([1, f, 1])
            .expand([n, f, c]);
        Ok(x.mul_scalar(stage as f32 + 2.0) + pos)
    }
}

fn ramp(n: usize, f: usize, c: usize) -> Tensor<3> {
    let v: Vec<f32> = (0..n * f * c).map(|i| (i as f32 * 0.37).sin()).collect();
    Tensor::from_data(TensorData::new(v, [n, f, c]), &Device::flex())
}

fn max_diff(a: Tensor<3>, b: Tensor<3>) -> f32 {
    (a - b).abs().max().into_scalar()
}

#[test]
fn batching_modes_agree() {
    let x = ramp(3, 37, 4);
    let site = TemporalSite::new("t", 37);
    let mut outs = Vec::new();
    for batching in [
        WindowBatching::Stacked { max_windows: None },
        WindowBatching::Stacked {
            max_windows: Some(3),
        },
        WindowBatching::Sequential,
    ] {
        for variant in [FusionVariant::Chain, FusionVariant::PerStage] {
            let hook = FreeNoiseHook::new(
                FreeNoiseConfig::new(8, 3)
                    .with_batching(batching)
                    .with_variant(variant),
            )
            .unwrap();
            outs.push(hook.apply(&site, x.clone(), &Affine(2)).unwrap());
        }
    }
    for i in 2..outs.len() {
        assert!(max_diff(outs[i].clone(), outs[i % 2].clone()) < 1e-5);
    }
}

/// A toy attention-shaped layer of `stages` stages, `C = 4` → `P = 6` → `A = 3`: a
/// non-linear per-token projection, positional terms, a frame-mixing `attend` and an
/// affine output. Exposes its [`AttentionStage`] parts.
struct ToyAttention {
    stages: usize,
}

/// The same layer without the parts (every window runs in full).
struct Opaque<'a>(&'a ToyAttention);

struct ToyStage(usize);

thread_local! {
    /// Calls of `ToyStage::project_positions` on this thread.
    static POSITION_TERMS: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

fn mat(rows: usize, cols: usize, seed: usize) -> Tensor<2> {
    let v: Vec<f32> = (0..rows * cols)
        .map(|i| ((i * 7 + seed * 13) as f32 * 0.61).sin() * 0.5)
        .collect();
    Tensor::from_data(TensorData::new(v, [rows, cols]), &Device::flex())
}

fn batched(x: Tensor<3>, m: Tensor<2>) -> Tensor<3> {
    let [n, f, c] = x.dims();
    let k = m.dims()[1];
    x.reshape([n * f, c]).matmul(m).reshape([n, f, k])
}

impl AttentionStage for ToyStage {
    fn projection_width(&self) -> usize {
        6
    }
    fn attention_width(&self) -> usize {
        3
    }
    fn project(&self, tokens: Tensor<3>) -> Result<Tensor<3>> {
        Ok(batched(tokens.tanh(), mat(4, 6, self.0)))
    }
    fn project_positions(
        &self,
        positions: Range<usize>,
        device: &Device,
    ) -> Result<Option<Tensor<2>>> {
        POSITION_TERMS.with(|n| n.set(n.get() + 1));
        let f = positions.len();
        let v: Vec<f32> = positions
            .flat_map(|p| (0..4).map(move |c| ((p + c) as f32).sin()))
            .collect();
        let pe = Tensor::<2>::from_data(TensorData::new(v, [f, 4]), device);
        Ok(Some(pe.matmul(mat(4, 6, self.0))))
    }
    fn attend(&self, p: Tensor<3>, _mask: Option<&Tensor<2, Bool>>) -> Result<Tensor<3>> {
        let [n, f, _] = p.dims();
        let gate = p.clone().narrow(2, 3, 3).mean_dim(1).tanh();
        Ok(p.narrow(2, 0, 3) * gate.expand([n, f, 3]))
    }
    fn output(&self, a: Tensor<3>, residual: Tensor<3>) -> Result<Tensor<3>> {
        Ok(residual + batched(a, mat(3, 4, self.0 + 5)).add_scalar(0.1 * self.0 as f32))
    }
}

impl TemporalStages for ToyAttention {
    fn num_stages(&self) -> usize {
        self.stages
    }
    fn run_stage(&self, stage: usize, x: Tensor<3>, w: &FrameWindow) -> Result<Tensor<3>> {
        let s = ToyStage(stage);
        vdm_core::temporal::run_attention_stage(&s, s.project(x.clone())?, x, w)
    }
    fn attention_stage(&self, stage: usize) -> Option<Box<dyn AttentionStage + '_>> {
        Some(Box::new(ToyStage(stage)))
    }
}

impl TemporalStages for Opaque<'_> {
    fn num_stages(&self) -> usize {
        self.0.stages
    }
    fn run_stage(&self, stage: usize, x: Tensor<3>, w: &FrameWindow) -> Result<Tensor<3>> {
        self.0.run_stage(stage, x, w)
    }
}

/// Calls `f` with an 8/3 hook for every batching of `batchings`, both variants and both
/// normalisers, and a label naming them.
fn for_each_hook(batchings: &[WindowBatching], mut f: impl FnMut(&FreeNoiseHook, &str)) {
    for &batching in batchings {
        for variant in [FusionVariant::Chain, FusionVariant::PerStage] {
            for compat in [false, true] {
                let hook = FreeNoiseHook::new(
                    FreeNoiseConfig::new(8, 3)
                        .with_batching(batching)
                        .with_variant(variant)
                        .with_compat_diffusers_tail_bug(compat),
                )
                .unwrap();
                f(
                    &hook,
                    &format!("{batching:?}, {variant:?}, compat {compat}"),
                );
            }
        }
    }
}

#[test]
fn shared_projections_equal_full_windows() {
    let x = ramp(3, 29, 4);
    let site = TemporalSite::new("t", 29);
    let batchings = [
        WindowBatching::Sequential,
        WindowBatching::Stacked {
            max_windows: Some(2),
        },
    ];
    for stages in [1, 2, 3] {
        let toy = ToyAttention { stages };
        for_each_hook(&batchings, |hook, label| {
            let shared = hook.apply(&site, x.clone(), &toy).unwrap();
            let full = hook.apply(&site, x.clone(), &Opaque(&toy)).unwrap();
            let d = max_diff(shared, full);
            assert!(d < 1e-5, "{stages} stages, {label}: {d}");
        });
    }
}

thread_local! {
    /// Makes `fuse` take its tensor-op path on this thread even on flex.
    pub(super) static TENSOR_OPS: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

#[test]
fn host_fusion_equals_the_tensor_op_path() {
    let x = ramp(3, 29, 4);
    let site = TemporalSite::new("t", 29);
    assert!(cpu_kernels(&x.device(), x.dtype()));
    let batchings = [
        WindowBatching::Sequential,
        WindowBatching::Stacked { max_windows: None },
    ];
    for (stages, opaque) in [(1, false), (2, false), (2, true), (3, false)] {
        let toy = ToyAttention { stages };
        let opaque_toy = Opaque(&toy);
        let model: &dyn TemporalStages = if opaque { &opaque_toy } else { &toy };
        for_each_hook(&batchings, |hook, label| {
            let host = hook.apply(&site, x.clone(), model).unwrap();
            TENSOR_OPS.with(|t| t.set(true));
            let ops = hook.apply(&site, x.clone(), model);
            TENSOR_OPS.with(|t| t.set(false));
            let d = max_diff(host, ops.unwrap());
            assert!(d < 1e-5, "{stages} stages (opaque {opaque}), {label}: {d}");
        });
    }
}

#[test]
fn positional_terms_are_computed_once_per_pass() {
    let x = ramp(2, 29, 4);
    let site = TemporalSite::new("t", 29);
    let hook = FreeNoiseHook::new(FreeNoiseConfig::new(8, 3)).unwrap();
    assert!(hook.plan(29).unwrap().windows().len() > 1);
    for (stages, passes) in [(1, 1), (2, 2)] {
        POSITION_TERMS.with(|n| n.set(0));
        hook.apply(&site, x.clone(), &ToyAttention { stages })
            .unwrap();
        assert_eq!(POSITION_TERMS.with(|n| n.get()), passes, "{stages} stages");
    }
}

#[test]
fn short_clips_fall_back_to_all_frames() {
    let x = ramp(2, 5, 3);
    let hook = FreeNoiseHook::new(FreeNoiseConfig::new(8, 4)).unwrap();
    let site = TemporalSite::new("t", 5).with_max_positions(8);
    let y = hook.apply(&site, x.clone(), &Affine(2)).unwrap();
    let z = vdm_core::AllFrames.apply(&site, x, &Affine(2)).unwrap();
    assert_eq!(max_diff(y, z), 0.0);
}

#[test]
fn window_longer_than_position_table_is_an_error() {
    let hook = FreeNoiseHook::new(FreeNoiseConfig::new(16, 4)).unwrap();
    let site = TemporalSite::new("mid.motion", 40).with_max_positions(8);
    let e = hook
        .apply(&site, ramp(1, 40, 2), &Affine(1))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("context_length") && e.contains("mid.motion"),
        "{e}"
    );
}

#[test]
fn invalid_configs_are_named() {
    let e = |c: FreeNoiseConfig| FreeNoiseHook::new(c).unwrap_err().to_string();
    assert!(e(FreeNoiseConfig::new(0, 1)).contains("context_length"));
    assert!(e(FreeNoiseConfig::new(8, 0)).contains("context_stride"));
    assert!(e(FreeNoiseConfig::new(8, 9)).contains("context_stride"));
    assert!(
        e(
            FreeNoiseConfig::new(8, 4).with_batching(WindowBatching::Stacked {
                max_windows: Some(0)
            })
        )
        .contains("max_windows")
    );
}

#[test]
fn runs_never_repeat_a_frame() {
    for (f, l, s) in [(64, 16, 4), (35, 16, 4), (30, 8, 3), (40, 16, 6), (9, 4, 1)] {
        let plan = WindowPlan::new(f, l, s, WeightingScheme::Pyramid, false).unwrap();
        let sched = Schedule::new(plan, WindowBatching::Stacked { max_windows: None });
        let mut count = vec![0usize; f];
        for chunk in &sched.chunks {
            for r in &chunk.runs {
                let mut fr = r.frames.clone();
                fr.sort_unstable();
                fr.dedup();
                assert_eq!(fr.len(), r.frames.len());
                fr.iter().for_each(|&i| count[i as usize] += 1);
            }
            assert!(chunk.runs.len() <= l.div_ceil(s) + 1);
        }
        assert!(count.iter().all(|&c| c > 0));
    }
}
