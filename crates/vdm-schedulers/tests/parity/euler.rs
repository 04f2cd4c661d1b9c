//! Parity of euler with diffusers (being written).
