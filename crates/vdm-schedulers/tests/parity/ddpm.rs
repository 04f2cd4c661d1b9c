//! Parity of ddpm with diffusers (being written).
