//! The video tensor layout `[B, C, F, H, W]` (as in diffusers) and the reshapes every
//! space-time model needs.
//!
//! Spatial layers see frames folded into the batch (`[B·F, C, H, W]`, index `b·F + f`, as
//! diffusers' `permute(0, 2, 1, 3, 4).reshape(B·F, C, H, W)`); temporal layers see one token
//! sequence over frames per spatial position (`[B·H·W, F, C]`, as diffusers'
//! `permute(0, 3, 4, 2, 1).reshape(B·H·W, F, C)`).

use burn::tensor::Tensor;

use crate::{Error, Result};

/// The dimensions of a video latent `[B, C, F, H, W]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct VideoShape {
    /// Batch size `B`.
    pub batch: usize,
    /// Channels `C` (4 for SD-family latents).
    pub channels: usize,
    /// Frames `F`.
    pub frames: usize,
    /// Height `H` (in latent pixels).
    pub height: usize,
    /// Width `W` (in latent pixels).
    pub width: usize,
}

impl VideoShape {
    /// Builds a shape from `[B, C, F, H, W]`.
    pub fn new(dims: [usize; 5]) -> Self {
        let [batch, channels, frames, height, width] = dims;
        Self {
            batch,
            channels,
            frames,
            height,
            width,
        }
    }

    /// The shape of a video tensor, checking that no dimension is zero.
    ///
    /// `name` is used in the error message.
    pub fn of(name: &str, video: &Tensor<5>) -> Result<Self> {
        let dims = video.dims();
        if dims.contains(&0) {
            return Err(Error::shape(
                name,
                "[B, C, F, H, W] with every dimension > 0",
                &dims,
            ));
        }
        Ok(Self::new(dims))
    }

    /// The dimensions as an array `[B, C, F, H, W]`.
    pub fn dims(&self) -> [usize; 5] {
        [
            self.batch,
            self.channels,
            self.frames,
            self.height,
            self.width,
        ]
    }

    /// Number of elements.
    pub fn num_elements(&self) -> usize {
        self.dims().iter().product()
    }

    /// The same shape with another frame count.
    pub fn with_frames(self, frames: usize) -> Self {
        Self { frames, ..self }
    }

    /// Checks `channels`, naming `tensor` in the error.
    pub fn expect_channels(&self, tensor: &str, channels: usize) -> Result<()> {
        if self.channels != channels {
            return Err(Error::shape(
                tensor,
                format!("[B, C, F, H, W] with C = {channels}"),
                &self.dims(),
            ));
        }
        Ok(())
    }
}

/// Checks that two video tensors have identical shapes (e.g. a model output and its sample).
pub fn expect_same_shape(name: &str, tensor: &Tensor<5>, reference: &Tensor<5>) -> Result<()> {
    if tensor.dims() != reference.dims() {
        return Err(Error::shape(
            name,
            format!("{:?} (the shape of the sample)", reference.dims()),
            &tensor.dims(),
        ));
    }
    Ok(())
}

/// `[B, C, F, H, W] -> [B·F, C, H, W]`: frames folded into the batch for spatial layers.
///
/// # Shapes
/// - input: `[B, C, F, H, W]`
/// - output: `[B·F, C, H, W]`, item `b·F + f` is frame `f` of video `b`
pub fn frames_to_batch(video: Tensor<5>) -> Tensor<4> {
    let [b, c, f, h, w] = video.dims();
    video.swap_dims(1, 2).reshape([b * f, c, h, w])
}

/// `[B·F, C, H, W] -> [B, C, F, H, W]`, the inverse of [`frames_to_batch`].
///
/// # Shapes
/// - input: `[B·F, C, H, W]`
/// - output: `[B, C, F, H, W]`
pub fn batch_to_frames(images: Tensor<4>, frames: usize) -> Tensor<5> {
    let [bf, c, h, w] = images.dims();
    debug_assert!(frames > 0 && bf % frames == 0);
    images
        .reshape([bf / frames, frames, c, h, w])
        .swap_dims(1, 2)
}

/// `[B, C, F, H, W] -> [B·H·W, F, C]`: one token sequence over frames per spatial position,
/// the input of temporal attention.
///
/// # Shapes
/// - input: `[B, C, F, H, W]`
/// - output: `[B·H·W, F, C]`
pub fn video_to_frame_tokens(video: Tensor<5>) -> Tensor<3> {
    let [b, c, f, h, w] = video.dims();
    video.permute([0, 3, 4, 2, 1]).reshape([b * h * w, f, c])
}

/// `[B·H·W, F, C] -> [B, C, F, H, W]`, the inverse of [`video_to_frame_tokens`].
///
/// # Shapes
/// - input: `[B·H·W, F, C]`
/// - output: `[B, C, F, H, W]`
pub fn frame_tokens_to_video(
    tokens: Tensor<3>,
    batch: usize,
    height: usize,
    width: usize,
) -> Tensor<5> {
    let [_, f, c] = tokens.dims();
    tokens
        .reshape([batch, height, width, f, c])
        .permute([0, 4, 3, 1, 2])
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::{Device, TensorData};

    fn iota(dims: [usize; 5]) -> Tensor<5> {
        let n: usize = dims.iter().product();
        let v: Vec<f32> = (0..n).map(|i| i as f32).collect();
        Tensor::from_data(TensorData::new(v, dims), &Device::flex())
    }

    #[test]
    fn spatial_view_orders_frames_inside_batch() {
        // [B=2, C=3, F=4, H=1, W=2]: item b·F + f of the spatial view is frame f of video b.
        let x = iota([2, 3, 4, 1, 2]);
        let s = frames_to_batch(x.clone());
        assert_eq!(s.dims(), [8, 3, 1, 2]);
        let want = x
            .clone()
            .slice([1..2, 0..3, 2..3, 0..1, 0..2])
            .reshape([3, 1, 2]);
        let got = s.clone().slice([6..7, 0..3, 0..1, 0..2]).reshape([3, 1, 2]);
        got.into_data().assert_eq(&want.into_data(), true);
        batch_to_frames(s, 4)
            .into_data()
            .assert_eq(&x.into_data(), true);
    }

    #[test]
    fn temporal_view_round_trips() {
        let x = iota([2, 3, 4, 2, 5]);
        let t = video_to_frame_tokens(x.clone());
        assert_eq!(t.dims(), [2 * 2 * 5, 4, 3]);
        // Token (b=1, h=1, w=3) at frame 2, channel 1.
        let n = (2 + 1) * 5 + 3;
        let got = t.clone().slice([n..n + 1, 2..3, 1..2]).into_scalar::<f32>();
        let want = x
            .clone()
            .slice([1..2, 1..2, 2..3, 1..2, 3..4])
            .into_scalar::<f32>();
        assert_eq!(got, want);
        frame_tokens_to_video(t, 2, 2, 5)
            .into_data()
            .assert_eq(&x.into_data(), true);
    }

    #[test]
    fn shape_errors_name_the_tensor() {
        let x = iota([1, 3, 2, 2, 2]);
        let s = VideoShape::of("latents", &x).unwrap();
        let e = s.expect_channels("latents", 4).unwrap_err().to_string();
        assert!(e.contains("latents") && e.contains("C = 4"), "{e}");
        let y = iota([1, 3, 3, 2, 2]);
        assert!(expect_same_shape("model_output", &y, &x).is_err());
    }
}
