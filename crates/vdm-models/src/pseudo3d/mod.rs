//! Make-A-Video's pseudo-3D layers (Singer et al. 2022, "Make-A-Video: Text-to-Video
//! Generation without Text-Video Data", §3.2), mirroring lucidrains/make-a-video-pytorch
//! (`make_a_video_pytorch/make_a_video.py`: `PseudoConv3d`, `Attention`, `RMSNorm`,
//! `SpatioTemporalAttention`, `SinusoidalPosEmb`).
//!
//! Both layers factorise a 3-D operation into a spatial part, which is exactly the layer of a
//! pretrained text-to-image model applied to every frame, and a temporal part across frames
//! at every spatial position. The temporal part is initialised so that a fresh layer *is*
//! the image layer:
//!
//! - [`PseudoConv3d`]: a `k×k` 2-D conv per frame, then a 1-D conv over frames whose kernel
//!   starts as the identity (Dirac kernel, zero bias);
//! - [`PseudoAttention`]: self-attention over the `H·W` tokens of every frame, then
//!   self-attention over the `F` frames of every position with its output projection
//!   initialised to zero (so its residual branch starts at exactly zero).
//!
//! The temporal attention runs through [`vdm_core::temporal::TemporalHook`], so long-video
//! strategies (FreeNoise windows, FreeLong masks) reach it unchanged. The temporal conv is a
//! local `k_t`-frame filter, not an attention, and runs directly (as a 3-D conv would).
//!
//! ```
//! use burn::tensor::{Device, Distribution, Tensor};
//! use vdm_core::AllFrames;
//! use vdm_models::pseudo3d::{PseudoAttentionConfig, PseudoConv3dConfig};
//!
//! let device = Device::flex();
//! let x = Tensor::<5>::random([1, 8, 4, 6, 6], Distribution::Normal(0.0, 1.0), &device);
//! let conv = PseudoConv3dConfig::new(8, 16).init(&device).unwrap();
//! let y = conv.forward(x).unwrap();
//! assert_eq!(y.dims(), [1, 16, 4, 6, 6]);
//! let attn = PseudoAttentionConfig::new(16).with_heads(2).with_dim_head(8).init(&device).unwrap();
//! let z = attn.forward(y, &AllFrames).unwrap();
//! assert_eq!(z.dims(), [1, 16, 4, 6, 6]);
//! ```
//!
//! The convolution is in `pseudo3d/conv.rs`, the attention (with its norm, multi-head
//! attention block and temporal position encodings) in `pseudo3d/attention.rs`.

use vdm_core::{Error, Result};

mod attention;
mod conv;
#[cfg(test)]
mod tests;

pub use attention::{
    L2RmsNorm, MavAttention, PseudoAttention, PseudoAttentionConfig, TemporalPositionEncoding,
};
pub use conv::{PseudoConv3d, PseudoConv3dConfig};

fn positive(field: &str, value: usize) -> Result<()> {
    if value == 0 {
        return Err(Error::invalid(field, "must be at least 1"));
    }
    Ok(())
}

fn odd_kernel(field: &str, value: usize) -> Result<()> {
    if value.is_multiple_of(2) {
        return Err(Error::invalid(
            field,
            format!(
                "must be odd so that 'same' padding of {field} / 2 keeps the size, got {value}"
            ),
        ));
    }
    Ok(())
}
