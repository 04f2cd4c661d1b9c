//! Parity of the long-video algorithms with diffusers 0.42.1 on the oracle vectors in
//! `fixtures/oracle` (see `fixtures/oracle/PROVENANCE.md`), and their behaviour through a toy
//! downstream model.

mod freeinit;
mod freenoise;

/// The device these parity tests run on. The facade's `backends` test mounts the same modules
/// with a `test_device` of its own (wgpu, on Mesa lavapipe in CI).
fn test_device() -> burn::tensor::Device {
    burn::tensor::Device::flex()
}
