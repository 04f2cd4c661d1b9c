//! Parity of the vdm models with diffusers 0.42.1 on the oracle vectors in `fixtures/oracle`
//! (see `fixtures/oracle/PROVENANCE.md`): UNet3DConditionModel, UNetMotionModel, AutoencoderKL;
//! and of the CLIP tokenizer and text encoder with transformers on `fixtures/clip`.

mod clip;
mod motion;
mod saving;
mod unet3d;
mod vae;
mod vae_encoder;
