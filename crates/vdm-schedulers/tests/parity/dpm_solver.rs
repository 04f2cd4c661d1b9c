//! Parity of dpm_solver with diffusers (being written).
