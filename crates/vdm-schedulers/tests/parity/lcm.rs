//! Parity of lcm with diffusers (being written).
