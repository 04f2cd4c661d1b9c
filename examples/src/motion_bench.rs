//! The "bench-size" AnimateDiff model of `shared/bench/BASELINE.md` ("Exact configs"), shared
//! by the FreeNoise benchmarks and the harness.

use vdm::core::Result;
use vdm::models::unet_motion::UNetMotionConfig;

/// MOTION_U2 merged with MOTION_MA (`UNetMotionModel.from_unet2d`): SD-1.5 layout with
/// channels / 10, 32-row positional tables, 13.4 M parameters (the configs are
/// [`crate::harness::MOTION_UNET2D`] and [`crate::harness::MOTION_ADAPTER`], which the
/// harness also sends to the PyTorch side).
///
/// # Errors
/// None for these built-in configs; the config parsers' errors otherwise.
pub fn bench_motion_config() -> Result<UNetMotionConfig> {
    crate::harness::vdm_side::motion_config()
}
