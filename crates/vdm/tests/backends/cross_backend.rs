//! One seed, one video, on every backend: the embedded model's frames on ndarray and wgpu (both
//! through Burn's tensor ops) agree with flex's (vdm's fused CPU kernels) within
//! [`FRAME_TOL`]. Flex's frames are the committed reference of `common/reference_frames.rs`,
//! which the ordinary (flex) test run checks against flex itself, so this build does not need
//! the flex backend.

use burn::tensor::Device;

use crate::reference_frames::{FRAME_TOL, all_frames, assert_near_reference, pipeline};

#[test]
fn ndarray_and_wgpu_give_the_flex_frames_within_tolerance() {
    #[allow(deprecated)] // Burn 0.22 deprecates ndarray in favour of flex; users still pick it.
    let ndarray = all_frames(&pipeline(&Device::ndarray()));
    assert_near_reference("ndarray", &ndarray, FRAME_TOL);
    let wgpu = all_frames(&pipeline(&crate::test_device()));
    assert_near_reference("wgpu", &wgpu, FRAME_TOL);
}
