//! The flex backend makes the committed reference frames of the embedded model
//! (`fixtures/backends/embedded_frames_flex.safetensors`), which the wgpu build holds ndarray
//! and wgpu to (`tests/backends/cross_backend.rs`); see `common/reference_frames.rs`.
//!
//! With `VDM_BLESS=1` the test first writes the file from flex's frames, then compares as
//! always (so a blessed run passes unless the reseed check fails).

#![cfg(feature = "flex")]

#[path = "common/reference_frames.rs"]
mod reference_frames;

use burn::tensor::Device;
use reference_frames::{
    FLEX_TOL, FRAME_TOL, all_frames, assert_near_reference, cases, frames, max_abs_diff, pipeline,
    write_reference,
};

#[test]
fn flex_frames_match_the_committed_reference() {
    let pipe = pipeline(&Device::flex());
    let flex = all_frames(&pipe);
    if std::env::var_os("VDM_BLESS").is_some_and(|v| v == "1") {
        write_reference(&flex);
    }
    assert_near_reference("flex", &flex, FLEX_TOL);
    // The bounds are tight enough to notice a real change: another seed moves the frames by
    // far more than the other backends' bound.
    let (_, settings) = &cases()[0];
    let reseeded = frames(&pipe, &settings.clone().seed(23));
    let diff = max_abs_diff(&flex[0], &reseeded);
    assert!(diff > 100.0 * FRAME_TOL, "another seed: max |Δ| = {diff:e}");
}
