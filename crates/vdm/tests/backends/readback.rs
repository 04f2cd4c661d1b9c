//! A tensor the device cannot hold, read back: a typed [`Error::ReadBack`] naming what was
//! read, not a panic. On wgpu a buffer that cannot be allocated (lavapipe refuses buffers past
//! its limit) surfaces only at the next read-back; Burn's `into_data` panics there, vdm's reads
//! go through `vdm_core::readback`, which uses the fallible `try_into_data`.
//!
//! A child process, because a device that failed an allocation may stay unusable for the life
//! of the process (the other tests of this binary need a working wgpu device).

use std::path::PathBuf;
use std::time::Duration;

use burn::tensor::Tensor;
use vdm::core::Error;
use vdm::core::finite::ensure_all_finite;

use crate::child::child_test_output;
use crate::test_device;

/// Where the child writes the error's one line.
const CHILD_OUT: &str = "VDM_READBACK_CHILD_OUT";

/// Elements of the tensor the device cannot hold: 4 GiB of `f32`, past lavapipe's and most
/// GPUs' largest buffer.
const TOO_MANY: usize = 1 << 30;

/// The child's side: the finiteness check of a tensor too large for the device must fail with
/// a typed read-back error; its line goes to [`CHILD_OUT`].
#[test]
#[ignore = "not a test alone: the child process that `a_tensor_the_device_cannot_hold_is_a_typed_read_back_error` runs (with --ignored --exact), so CI covers it through that test"]
fn child_checks_a_tensor_too_large_for_the_device() {
    let out = PathBuf::from(std::env::var_os(CHILD_OUT).expect("run by the parent test"));
    let huge = Tensor::<1>::ones([TOO_MANY], &test_device()).mul_scalar(2.0);
    let err = ensure_all_finite(&huge, || "the huge tensor".into(), "")
        .expect_err("a 4 GiB buffer on this device was not expected to work");
    assert!(matches!(&err, Error::ReadBack { .. }), "{err:?}");
    std::fs::write(out, err.to_string()).unwrap();
}

#[test]
fn a_tensor_the_device_cannot_hold_is_a_typed_read_back_error() {
    let line = child_test_output(
        "readback::child_checks_a_tensor_too_large_for_the_device",
        CHILD_OUT,
        Duration::from_secs(120),
        |_| {},
    );
    let line = String::from_utf8(line).unwrap();
    println!("a tensor too large for the device: {line}");
    assert!(
        line.starts_with("reading the huge tensor back from the device failed: "),
        "{line}"
    );
    assert!(!line.contains('\n'), "one line: {line}");
}
