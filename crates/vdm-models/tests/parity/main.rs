//! Parity of the vdm models with diffusers 0.42.1 on the oracle vectors in `fixtures/oracle`
//! (see `fixtures/oracle/PROVENANCE.md`): UNet3DConditionModel, UNetMotionModel, AutoencoderKL.

mod motion;
mod unet3d;
mod vae;
