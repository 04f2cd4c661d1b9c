//! The three diffusers configurations behind an AnimateDiff UNet, read unchanged from their
//! `config.json` files: [`UNet2DConditionConfig`] (the SD 1.x image UNet),
//! [`MotionAdapterConfig`] (the motion modules) and [`UNetMotionConfig`] (the merged model,
//! diffusers `UNetMotionModel`), plus diffusers' `UNetMotionModel.from_unet2d` config merge
//! ([`UNetMotionConfig::from_unet2d`]).
//!
//! Mirrors the `__init__` signatures of diffusers' `models/unets/unet_2d_condition.py`
//! (`UNet2DConditionModel`) and `models/unets/unet_motion_model.py` (`MotionAdapter`,
//! `UNetMotionModel`); defaults are diffusers' defaults. Unknown keys (`_class_name`,
//! `_diffusers_version`, options of newer diffusers versions) are ignored; values that select
//! an architecture this crate does not implement are
//! [`Error::Unsupported`](vdm_core::Error::Unsupported) naming the field; inconsistent values
//! are [`Error::InvalidConfig`](vdm_core::Error::InvalidConfig) naming the field.
//!
//! One idea per file, each importing only the files above it (no two import each other):
//! - `config/fields.rs`: [`PerBlock`], JSON reading and the messages naming a field;
//! - `config/unet2d.rs`: [`UNet2DConditionConfig`] and its field checks;
//! - `config/motion_adapter.rs`: [`MotionAdapterConfig`] and its checks against the UNet;
//! - `config/unet_motion.rs`: [`UNetMotionConfig`], its defaults, the `from_unet2d` merge and
//!   [`UNet2DConditionConfig::validate`] (which checks the sizes on a merged config);
//! - `config/resolved.rs`: the validation of a [`UNetMotionConfig`] and its expansion to
//!   per-block settings (`Resolved`).

mod fields;
mod motion_adapter;
mod resolved;
mod unet2d;
mod unet_motion;

pub use fields::PerBlock;
pub use motion_adapter::MotionAdapterConfig;
pub use unet_motion::UNetMotionConfig;
pub use unet2d::UNet2DConditionConfig;
