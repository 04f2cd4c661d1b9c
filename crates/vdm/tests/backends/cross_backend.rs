//! One seed, one video, on every backend: the embedded model's frames on flex (vdm's fused CPU
//! kernels), ndarray and wgpu (both through Burn's tensor ops) agree within [`FRAME_TOL`].
//!
//! The noise is drawn on the host from the seed (`vdm_core::noise`), so every backend starts from
//! the same latents; what differs is the order of floating-point sums in the kernels, which
//! grows over the sampling steps and through the VAE.

use burn::tensor::Device;
use vdm::longvideo::freenoise::FreeNoiseConfig;
use vdm::pipeline::{Generation, TextToVideoPipeline};

/// Bound on `max |Δ|` of frame values in `[0, 1]` between two backends (fp32 end to end; three
/// steps with guidance and the VAE decode). Measured on lavapipe: 1.3e-6 to 2.2e-6 (ndarray and
/// wgpu, both cases), a tenth of this bound and far below one 8-bit level (3.9e-3).
const FRAME_TOL: f32 = 2e-5;

/// Direct sampling of 16 frames and FreeNoise over 24, three steps each, with guidance.
fn cases() -> [(&'static str, Generation); 2] {
    [
        (
            "direct, 16 frames",
            vdm::embedded::generation("a green triangle moving left")
                .steps(3)
                .seed(21),
        ),
        (
            "FreeNoise, 24 frames",
            vdm::embedded::generation("a red circle moving down")
                .frames(24)
                .steps(3)
                .seed(22)
                .freenoise(FreeNoiseConfig::new(16, 4)),
        ),
    ]
}

/// The embedded model on `device`.
fn pipeline(device: &Device) -> TextToVideoPipeline {
    TextToVideoPipeline::from_dir(vdm::embedded::moving_shapes_dir(), device).unwrap()
}

/// The frames of `settings`, as values in `[0, 1]`.
fn frames(pipe: &TextToVideoPipeline, settings: &Generation) -> Vec<f32> {
    pipe.generate(settings).unwrap().to_values().unwrap()
}

/// The frames of every case on `pipe`.
fn all_frames(pipe: &TextToVideoPipeline) -> Vec<Vec<f32>> {
    cases().iter().map(|(_, s)| frames(pipe, s)).collect()
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

#[test]
fn flex_ndarray_and_wgpu_give_the_same_frames_within_tolerance() {
    let flex_pipe = pipeline(&Device::flex());
    let flex = all_frames(&flex_pipe);
    #[allow(deprecated)] // Burn 0.22 deprecates ndarray in favour of flex; users still pick it.
    let ndarray = all_frames(&pipeline(&Device::ndarray()));
    let wgpu = all_frames(&pipeline(&crate::test_device()));
    for (i, (label, _)) in cases().iter().enumerate() {
        assert!(flex[i].iter().all(|v| v.is_finite()), "{label}: non-finite");
        for (other, values) in [("ndarray", &ndarray[i]), ("wgpu", &wgpu[i])] {
            let diff = max_abs_diff(&flex[i], values);
            println!("{label}: flex vs {other}: max |Δ| = {diff:.3e}");
            assert!(
                diff <= FRAME_TOL,
                "{label}: flex vs {other}: max |Δ| = {diff:e} > {FRAME_TOL:e}"
            );
        }
    }
    // The bound is tight enough to notice a real change: another seed moves the frames by far
    // more than it.
    let (_, settings) = &cases()[0];
    let reseeded = frames(&flex_pipe, &settings.clone().seed(23));
    let diff = max_abs_diff(&flex[0], &reseeded);
    assert!(diff > 100.0 * FRAME_TOL, "another seed: max |Δ| = {diff:e}");
}
