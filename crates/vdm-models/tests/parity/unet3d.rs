//! Parity of unet3d (being written).
