//! Moving Shapes: vdm's synthetic text-to-video domain, deterministic from a seed.
//!
//! A clip shows one shape (circle, square or triangle) in one of five colours moving left,
//! right, up or down at a steady speed over a dark, plain or lightly textured background,
//! wrapping around the frame edges (so a video of any length stays in frame); some clips turn
//! once, half-way ("moves right, then up"). Every clip has a caption generated from its
//! parameters: "a red circle moving right", "a blue square moving left then down".
//!
//! It is the training data of vdm's embedded model (see `crate::training` and
//! `docs/embedded-model.md`) and the ground truth of the quality benchmark: because each clip is
//! a pure function of a few parameters, a generated video can be judged exactly (colour, shape,
//! direction, size and smoothness of motion) where real text-to-video needs learned metrics.
//!
//! - [`scene`]: the parameters ([`Scene`]), their random draw and their caption;
//! - [`render`]: a scene rendered to frames ([`Clip`], antialiased by 4×4 supersampling);
//! - [`vocab`]: the domain's CLIP tokenizer files (one token per word);
//! - [`analyse`]: judging a generated video against its caption (the quality benchmark).

pub mod analyse;
pub mod render;
pub mod scene;
pub mod vocab;

pub use render::Clip;
pub use scene::{Colour, Direction, Scene, ShapeKind, Turn};
