//! Parity of motion (being written).
