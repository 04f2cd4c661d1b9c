//! The VAE [`Encoder`], mirroring diffusers' `Encoder` (`models/autoencoders/vae.py`) with
//! `double_z=True`, as `AutoencoderKL` builds it.

use burn::module::Module;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{GroupNorm, GroupNormConfig, PaddingConfig2d};
use burn::tensor::{Device, Tensor};
use vdm_core::Result;

use super::AutoencoderKLConfig;
use super::blocks::{DownEncoderBlock2D, UNetMidBlock2D, VAE_NORM_EPS};
use crate::attention::expect_images;
use crate::resnet::{conv2d, norm_silu};

/// Images to the moments of the latent Gaussian:
/// `conv_in → down_blocks → mid_block → conv_norm_out → SiLU → conv_out`, `conv_out` giving
/// `2 · latent_channels` channels (mean, then log-variance).
///
/// Checkpoint keys (under `encoder.`): `conv_in`, `down_blocks.N.{resnets.M, downsamplers.0}`,
/// `mid_block.{resnets.{0,1}, attentions.0}`, `conv_norm_out`, `conv_out`.
#[derive(Module, Debug)]
pub struct Encoder {
    /// 3×3 conv `in_channels → block_out_channels[0]`.
    pub conv_in: Conv2d,
    /// One block per level; all but the last halve the resolution.
    pub down_blocks: Vec<DownEncoderBlock2D>,
    /// Resnet–attention–resnet at the lowest resolution.
    pub mid_block: UNetMidBlock2D,
    /// GroupNorm (eps 1e-6) before the output conv.
    pub conv_norm_out: GroupNorm,
    /// 3×3 conv `block_out_channels[-1] → 2 · latent_channels`.
    pub conv_out: Conv2d,
    /// Image channels.
    pub in_channels: usize,
}

/// A 3×3, stride 1, padding 1 convolution.
pub(super) fn conv3x3(cin: usize, cout: usize, device: &Device) -> Conv2d {
    Conv2dConfig::new([cin, cout], [3, 3])
        .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
        .init(device)
}

impl Encoder {
    /// Builds the encoder of `config` (validated by the caller).
    ///
    /// # Errors
    /// [`vdm_core::Error::InvalidConfig`] for channel counts that do not split into GroupNorm
    /// groups.
    pub fn new(config: &AutoencoderKLConfig, device: &Device) -> Result<Self> {
        let channels = &config.block_out_channels;
        let groups = config.norm_num_groups;
        let levels = channels.len();
        let mut down_blocks = Vec::with_capacity(levels);
        let mut output = channels[0];
        for (i, &level) in channels.iter().enumerate() {
            let input = output;
            output = level;
            down_blocks.push(DownEncoderBlock2D::new(
                input,
                output,
                config.layers_per_block,
                groups,
                i + 1 != levels,
                device,
            )?);
        }
        let last = channels[levels - 1];
        Ok(Self {
            conv_in: conv3x3(config.in_channels, channels[0], device),
            down_blocks,
            mid_block: UNetMidBlock2D::new(last, groups, config.mid_block_add_attention, device)?,
            conv_norm_out: GroupNormConfig::new(groups, last)
                .with_epsilon(VAE_NORM_EPS)
                .init(device),
            conv_out: conv3x3(last, 2 * config.latent_channels, device),
            in_channels: config.in_channels,
        })
    }

    /// Encodes images (diffusers `Encoder.forward`), before `quant_conv`.
    ///
    /// # Shapes
    /// - `images`: `[N, in_channels, H, W]`
    /// - output: `[N, 2 · latent_channels, H / f, W / f]` with `f = 2^(levels − 1)` (sizes
    ///   rounded down at every level, as diffusers' bottom/right-padded stride-2 conv does)
    pub fn forward(&self, images: Tensor<4>) -> Result<Tensor<4>> {
        expect_images("images", &images, self.in_channels)?;
        let mut h = conv2d(&self.conv_in, images);
        for block in &self.down_blocks {
            h = block.forward(h)?;
        }
        let h = self.mid_block.forward(h)?;
        Ok(conv2d(&self.conv_out, norm_silu(&self.conv_norm_out, h)))
    }
}
