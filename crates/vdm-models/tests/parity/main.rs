//! Parity of the vdm models with diffusers 0.42.1 on the oracle vectors in `fixtures/oracle`
//! (see `fixtures/oracle/PROVENANCE.md`): UNet3DConditionModel, UNetMotionModel, AutoencoderKL;
//! and of the CLIP tokenizer and text encoder with transformers on `fixtures/clip`.

mod clip;
mod motion;
mod saving;
mod unet3d;
mod vae;
mod vae_encoder;

/// The device these parity tests run on. The facade's `backends` test mounts the same modules
/// with a `test_device` of its own (wgpu, on Mesa lavapipe in CI).
fn test_device() -> burn::tensor::Device {
    burn::tensor::Device::flex()
}

/// Bound on `max |Δ|` between two routes to the same math (conditioning given to every block
/// against the plain call): flex runs the same kernels in the same order, so exactly 0.
const SAME_MATH_TOL: f32 = 0.0;

/// Factor on the tolerances of models computed in f16 / bf16 (1: the figures measured on flex).
const HALF_TOL_FACTOR: f32 = 1.0;
