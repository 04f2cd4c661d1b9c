//! Parity of every scheduler with diffusers 0.42.1, on the oracle vectors in
//! `fixtures/oracle` (see `fixtures/oracle/PROVENANCE.md`).

mod fixtures;

mod beta_sigmas;
mod ddim;
mod ddim_inverse;
mod ddpm;
mod deis;
mod dpm_singlestep;
mod dpm_solver;
mod euler;
mod euler_ancestral;
mod lcm;
mod shapes;
mod tcd;
mod two_stage;
mod unipc;

/// Every product case's trajectory is computed here (see `fixtures::computed_cases`).
const COVER_PRODUCTS: bool = false;

/// The device these parity tests run on. The facade's `backends` test mounts the same modules
/// with a `test_device` of its own (wgpu, on Mesa lavapipe in CI).
fn test_device() -> burn::tensor::Device {
    burn::tensor::Device::flex()
}
