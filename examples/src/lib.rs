//! Shared helpers for the vdm examples: an analytic denoiser, the scheduler catalogue, the
//! bench-size AnimateDiff config, Ctrl-C handling, the fuzz harnesses, and measurement utilities.

#![warn(missing_docs)]

pub mod catalogue;
pub mod fuzz;
pub mod interrupt;
pub mod measure;
pub mod mixture;
pub mod motion_bench;
pub mod plot;
