//! One seed, one video, on every backend: the embedded model's frames for two cases, computed
//! on flex and committed as `fixtures/backends/embedded_frames_flex.safetensors`, are the
//! reference every backend is held to.
//!
//! The flex build checks its own frames against the file (`tests/reference_frames.rs`, in the
//! ordinary test run), so the file cannot fall behind the code; the wgpu build checks ndarray
//! and wgpu against it (`tests/backends/cross_backend.rs`) without building flex at all, which
//! keeps Burn's flex backend (about 4.5 minutes of its 2 cores' compile time) out of CI's wgpu
//! build. The sharding tests (`tests/sharding.rs`) hold sharded runs, local and remote, to
//! the same frames.
//!
//! The noise is drawn on the host from the seed (`vdm_core::noise`), so every backend starts
//! from the same latents; what differs is the order of floating-point sums in the kernels,
//! which grows over the sampling steps and through the VAE.
//!
//! To write the file again after a change that moves flex's frames on purpose:
//! `VDM_BLESS=1 cargo test --release -p vdm --test reference_frames`.

#![allow(dead_code)] // each test binary uses the part it needs

use std::path::PathBuf;

use burn::tensor::Device;
use vdm::longvideo::freenoise::FreeNoiseConfig;
use vdm::pipeline::{Generation, TextToVideoPipeline};

/// Bound on `max |Δ|` of frame values in `[0, 1]` between another backend and the reference
/// (fp32 end to end; three steps with guidance and the VAE decode). Measured on lavapipe:
/// 1.3e-6 to 2.2e-6 (ndarray and wgpu against flex, both cases), a tenth of this bound and far
/// below one 8-bit level (3.9e-3).
pub const FRAME_TOL: f32 = 2e-5;

/// Bound on `max |Δ|` between flex's frames and the reference. On the machine that wrote the
/// file they are the same bits; another CPU may pick other SIMD widths in flex and gemm and
/// round some sums differently. A tenth of [`FRAME_TOL`], so a stale reference cannot use up
/// the other backends' bound.
pub const FLEX_TOL: f32 = 2e-6;

/// Direct sampling of 16 frames and FreeNoise over 24, three steps each, with guidance: a name
/// (the tensor's name in the file) and the settings.
pub fn cases() -> [(&'static str, Generation); 2] {
    [
        (
            "direct_16_frames",
            vdm::embedded::generation("a green triangle moving left")
                .steps(3)
                .seed(21),
        ),
        (
            "freenoise_24_frames",
            vdm::embedded::generation("a red circle moving down")
                .frames(24)
                .steps(3)
                .seed(22)
                .freenoise(FreeNoiseConfig::new(16, 4)),
        ),
    ]
}

/// The committed reference file.
pub fn reference_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../fixtures/backends/embedded_frames_flex.safetensors")
}

/// The embedded model on `device`.
pub fn pipeline(device: &Device) -> TextToVideoPipeline {
    TextToVideoPipeline::from_dir(vdm::embedded::moving_shapes_dir(), device).unwrap()
}

/// The frames of `settings`, as values in `[0, 1]`.
pub fn frames(pipe: &TextToVideoPipeline, settings: &Generation) -> Vec<f32> {
    pipe.generate(settings).unwrap().to_values().unwrap()
}

/// The frames of every case on `pipe`, in the order of [`cases`].
pub fn all_frames(pipe: &TextToVideoPipeline) -> Vec<Vec<f32>> {
    cases().iter().map(|(_, s)| frames(pipe, s)).collect()
}

/// The reference frames of every case, in the order of [`cases`]; panics (never skips) when the
/// file is missing or lacks a case.
pub fn read_reference() -> Vec<Vec<f32>> {
    let path = reference_path();
    let bytes = std::fs::read(&path).unwrap_or_else(|e| {
        panic!(
            "missing reference frames {} ({e}); write them with \
             `VDM_BLESS=1 cargo test --release -p vdm --test reference_frames`",
            path.display()
        )
    });
    let file = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    cases()
        .iter()
        .map(|(name, _)| {
            let view = file
                .tensor(name)
                .unwrap_or_else(|e| panic!("{}: no tensor {name}: {e}", path.display()));
            assert_eq!(view.dtype(), safetensors::Dtype::F32, "{name}");
            view.data()
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect()
        })
        .collect()
}

/// Writes `frames` (one vector per case, in the order of [`cases`]) as the reference file.
pub fn write_reference(frames: &[Vec<f32>]) {
    let bytes: Vec<Vec<u8>> = frames
        .iter()
        .map(|values| values.iter().flat_map(|v| v.to_le_bytes()).collect())
        .collect();
    let views: Vec<(&str, safetensors::tensor::TensorView<'_>)> = cases()
        .iter()
        .zip(&bytes)
        .map(|((name, _), data)| {
            let view = safetensors::tensor::TensorView::new(
                safetensors::Dtype::F32,
                vec![data.len() / 4],
                data,
            )
            .unwrap();
            (*name, view)
        })
        .collect();
    let path = reference_path();
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let about = [
        ("backend", "flex"),
        ("values", "frames [F, 3, 32, 32] in [0, 1], flattened"),
        (
            "written_by",
            "VDM_BLESS=1 cargo test --release -p vdm --test reference_frames",
        ),
    ];
    let about = about
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    safetensors::serialize_to_file(views, Some(about), &path).unwrap();
}

/// `max |a − b|` of two equally long slices.
pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// Asserts every case of `frames` (from `backend`) within `tol` of the reference.
pub fn assert_near_reference(backend: &str, frames: &[Vec<f32>], tol: f32) {
    let reference = read_reference();
    for (((name, _), want), got) in cases().iter().zip(&reference).zip(frames) {
        assert!(
            got.iter().all(|v| v.is_finite()),
            "{name} on {backend}: non-finite"
        );
        let diff = max_abs_diff(want, got);
        println!("{name}: {backend} vs the flex reference: max |Δ| = {diff:.3e}");
        assert!(
            diff <= tol,
            "{name}: {backend} vs the flex reference: max |Δ| = {diff:e} > {tol:e}"
        );
    }
}
