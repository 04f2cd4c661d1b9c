//! Shared helpers for the vdm examples.
