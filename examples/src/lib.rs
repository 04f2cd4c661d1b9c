//! Shared helpers for the vdm examples: an analytic denoiser and small printing utilities.

#![warn(missing_docs)]

pub mod mixture;
