//! Shared helpers for the vdm examples: an analytic denoiser, the scheduler catalogue, the
//! benchmark harness and its bench-size models, Ctrl-C handling, the fuzz harnesses, the
//! quality benchmark's table, and measurement utilities.

#![warn(missing_docs)]

pub mod catalogue;
pub mod fuzz;
pub mod harness;
pub mod interrupt;
pub mod measure;
pub mod mixture;
pub mod motion_bench;
pub mod plot;
pub mod quality_table;
