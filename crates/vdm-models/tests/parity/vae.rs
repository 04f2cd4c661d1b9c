//! Parity of vae (being written).
