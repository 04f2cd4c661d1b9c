//! Make-A-Video's pseudo-3D convolution (Singer et al. 2022, §3.2; lucidrains
//! `make_a_video_pytorch/make_a_video.py`: `PseudoConv3d`): a `k×k` 2-D conv per frame, then a
//! 1-D conv over frames whose kernel starts as the identity (Dirac kernel, zero bias).

use burn::config::Config;
use burn::module::{Module, Param};
use burn::nn::conv::{Conv1d, Conv1dConfig, Conv2d, Conv2dConfig};
use burn::nn::{Initializer, PaddingConfig1d, PaddingConfig2d};
use burn::tensor::{Device, Tensor, TensorData};
use vdm_core::layout::{batch_to_frames, frames_to_batch};
use vdm_core::{Error, Result, VideoShape};

use super::{odd_kernel, positive};

// ---------------------------------------------------------------------------------------------
// PseudoConv3d
// ---------------------------------------------------------------------------------------------

/// Configuration of a [`PseudoConv3d`] (lucidrains' `PseudoConv3d(dim, dim_out, kernel_size,
/// temporal_kernel_size=...)`).
#[derive(Config, Debug)]
pub struct PseudoConv3dConfig {
    /// Input channels (`dim`).
    pub channels_in: usize,
    /// Output channels (`dim_out`).
    pub channels_out: usize,
    /// Spatial kernel size `k` (odd; padding `k / 2` keeps `H, W`).
    #[config(default = 3)]
    pub kernel_size: usize,
    /// Temporal kernel size `k_t` (odd; padding `k_t / 2` keeps `F`); defaults to
    /// `kernel_size`, as in the reference.
    pub temporal_kernel_size: Option<usize>,
    /// Whether to create the temporal conv at all. As in the reference, a layer with
    /// `kernel_size = 1` never has one (it is a per-pixel projection).
    #[config(default = true)]
    pub temporal: bool,
    /// Whether both convs have a bias (`True` in the reference; the temporal bias starts at 0).
    #[config(default = true)]
    pub bias: bool,
}

impl PseudoConv3dConfig {
    /// The effective temporal kernel size.
    pub fn temporal_kernel(&self) -> usize {
        self.temporal_kernel_size.unwrap_or(self.kernel_size)
    }

    /// Creates the layer: a default-initialised spatial conv and an identity temporal conv
    /// (`nn.init.dirac_` on the weight, zero bias).
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] naming `channels_in`, `channels_out`, `kernel_size` or
    /// `temporal_kernel_size` when a value is zero or a kernel size is even.
    pub fn init(&self, device: &Device) -> Result<PseudoConv3d> {
        positive("channels_in", self.channels_in)?;
        positive("channels_out", self.channels_out)?;
        odd_kernel("kernel_size", self.kernel_size)?;
        let kt = self.temporal_kernel();
        odd_kernel("temporal_kernel_size", kt)?;

        let k = self.kernel_size;
        let p = k / 2;
        let spatial_conv = Conv2dConfig::new([self.channels_in, self.channels_out], [k, k])
            .with_padding(PaddingConfig2d::Explicit(p, p, p, p))
            .with_bias(self.bias)
            .init(device);

        let temporal_conv = (self.temporal && k > 1).then(|| {
            let c = self.channels_out;
            let mut conv = Conv1dConfig::new(c, c, kt)
                .with_padding(PaddingConfig1d::Explicit(kt / 2, kt / 2))
                .with_bias(self.bias)
                .with_initializer(Initializer::Zeros)
                .init(device);
            conv.weight = Param::from_tensor(dirac_kernel(c, kt, device));
            conv
        });

        Ok(PseudoConv3d {
            spatial_conv,
            temporal_conv,
            channels_in: self.channels_in,
            channels_out: self.channels_out,
        })
    }
}

/// The identity 1-D conv kernel `[c, c, kt]`: `w[o, i, t] = [o = i ∧ t = kt / 2]`
/// (`torch.nn.init.dirac_`).
pub(super) fn dirac_kernel(c: usize, kt: usize, device: &Device) -> Tensor<3> {
    let mut w = vec![0.0f32; c * c * kt];
    for d in 0..c {
        w[(d * c + d) * kt + kt / 2] = 1.0;
    }
    Tensor::from_data(TensorData::new(w, [c, c, kt]), device)
}

/// Make-A-Video's pseudo-3D convolution (§3.2; lucidrains `PseudoConv3d`): a 2-D conv on
/// every frame followed by a 1-D conv over frames at every spatial position.
///
/// Checkpoint keys: `spatial_conv.{weight,bias}` (`[C_out, C_in, k, k]`),
/// `temporal_conv.{weight,bias}` (`[C_out, C_out, k_t]`), as in the reference.
#[derive(Module, Debug)]
pub struct PseudoConv3d {
    /// The image model's 2-D conv, applied to every frame.
    pub spatial_conv: Conv2d,
    /// The 1-D conv over frames (`None` for 1×1 layers or when disabled).
    pub temporal_conv: Option<Conv1d>,
    /// Input channels.
    pub channels_in: usize,
    /// Output channels.
    pub channels_out: usize,
}

impl PseudoConv3d {
    /// Spatial then temporal conv.
    ///
    /// # Shapes
    /// - `x`: `[B, C_in, F, H, W]`
    /// - output: `[B, C_out, F, H, W]`
    ///
    /// # Errors
    /// [`Error::Shape`] naming `x` if a dimension is zero or `C ≠ channels_in`.
    pub fn forward(&self, x: Tensor<5>) -> Result<Tensor<5>> {
        self.forward_with(x, true)
    }

    /// Spatial conv, then the temporal conv only if `enable_time` (the reference's
    /// `enable_time` argument; `false` treats every frame as an independent image).
    ///
    /// # Shapes
    /// - `x`: `[B, C_in, F, H, W]`
    /// - output: `[B, C_out, F, H, W]`
    ///
    /// # Errors
    /// As [`PseudoConv3d::forward`].
    pub fn forward_with(&self, x: Tensor<5>, enable_time: bool) -> Result<Tensor<5>> {
        let shape = VideoShape::of("x", &x)?;
        shape.expect_channels("x", self.channels_in)?;
        let y = batch_to_frames(self.spatial_conv.forward(frames_to_batch(x)), shape.frames);
        match (&self.temporal_conv, enable_time) {
            (Some(conv), true) => Ok(temporal_conv_1d(conv, y)),
            _ => Ok(y),
        }
    }

    /// Image mode: the spatial conv alone (the reference's 4-D input path).
    ///
    /// # Shapes
    /// - `x`: `[B, C_in, H, W]`
    /// - output: `[B, C_out, H, W]`
    ///
    /// # Errors
    /// [`Error::Shape`] naming `x` if a dimension is zero or `C ≠ channels_in`.
    pub fn forward_image(&self, x: Tensor<4>) -> Result<Tensor<4>> {
        let dims = x.dims();
        if dims.contains(&0) || dims[1] != self.channels_in {
            return Err(Error::shape(
                "x",
                format!(
                    "[B, C, H, W] with C = {} and no zero dimension",
                    self.channels_in
                ),
                &dims,
            ));
        }
        Ok(self.spatial_conv.forward(x))
    }
}

/// `[B, C, F, H, W]` → conv over `F` on `[B·H·W, C, F]` → `[B, C, F, H, W]`.
pub(super) fn temporal_conv_1d(conv: &Conv1d, x: Tensor<5>) -> Tensor<5> {
    let [b, c, f, h, w] = x.dims();
    // [B, C, F, H, W] -> [B, H, W, C, F] -> [(B H W), C, F]
    let seq = x.permute([0, 3, 4, 1, 2]).reshape([b * h * w, c, f]);
    let out = conv.forward(seq);
    let c_out = out.dims()[1];
    // [B, H, W, C, F] -> [B, C, F, H, W]
    out.reshape([b, h, w, c_out, f]).permute([0, 3, 4, 1, 2])
}
