//! The VAE [`Decoder`], mirroring diffusers' `Decoder` (`models/autoencoders/vae.py`) with
//! `norm_type="group"`, as `AutoencoderKL` builds it.

use burn::module::Module;
use burn::nn::conv::Conv2d;
use burn::nn::{GroupNorm, GroupNormConfig};
use burn::tensor::{Device, Tensor};
use vdm_core::Result;

use super::AutoencoderKLConfig;
use super::blocks::{UNetMidBlock2D, UpDecoderBlock2D, VAE_NORM_EPS};
use super::encoder::conv3x3;
use crate::attention::expect_images;
use crate::resnet::{conv2d, norm_silu};

/// Latents (after `post_quant_conv`) to images:
/// `conv_in → mid_block → up_blocks → conv_norm_out → SiLU → conv_out`.
///
/// Checkpoint keys (under `decoder.`): `conv_in`, `mid_block.{resnets.{0,1}, attentions.0}`,
/// `up_blocks.N.{resnets.M, upsamplers.0}`, `conv_norm_out`, `conv_out`.
#[derive(Module, Debug)]
pub struct Decoder {
    /// 3×3 conv `latent_channels → block_out_channels[-1]`.
    pub conv_in: Conv2d,
    /// Resnet–attention–resnet at the lowest resolution.
    pub mid_block: UNetMidBlock2D,
    /// One block per level, channels reversed; all but the last double the resolution. Each
    /// has `layers_per_block + 1` resnets.
    pub up_blocks: Vec<UpDecoderBlock2D>,
    /// GroupNorm (eps 1e-6) before the output conv.
    pub conv_norm_out: GroupNorm,
    /// 3×3 conv `block_out_channels[0] → out_channels`.
    pub conv_out: Conv2d,
    /// Latent channels.
    pub latent_channels: usize,
}

impl Decoder {
    /// Builds the decoder of `config` (validated by the caller).
    ///
    /// # Errors
    /// [`vdm_core::Error::InvalidConfig`] for channel counts that do not split into GroupNorm
    /// groups.
    pub fn new(config: &AutoencoderKLConfig, device: &Device) -> Result<Self> {
        let reversed: Vec<usize> = config.block_out_channels.iter().rev().copied().collect();
        let groups = config.norm_num_groups;
        let levels = reversed.len();
        let mut up_blocks = Vec::with_capacity(levels);
        let mut output = reversed[0];
        for (i, &level) in reversed.iter().enumerate() {
            let input = output;
            output = level;
            up_blocks.push(UpDecoderBlock2D::new(
                input,
                output,
                config.layers_per_block + 1,
                groups,
                i + 1 != levels,
                device,
            )?);
        }
        let first = config.block_out_channels[0];
        Ok(Self {
            conv_in: conv3x3(config.latent_channels, reversed[0], device),
            mid_block: UNetMidBlock2D::new(
                reversed[0],
                groups,
                config.mid_block_add_attention,
                device,
            )?,
            up_blocks,
            conv_norm_out: GroupNormConfig::new(groups, first)
                .with_epsilon(VAE_NORM_EPS)
                .init(device),
            conv_out: conv3x3(first, config.out_channels, device),
            latent_channels: config.latent_channels,
        })
    }

    /// Decodes latents (diffusers `Decoder.forward` without `latent_embeds`), after
    /// `post_quant_conv`.
    ///
    /// # Shapes
    /// - `z`: `[N, latent_channels, h, w]`
    /// - output: `[N, out_channels, h · f, w · f]` with `f = 2^(levels − 1)`
    pub fn forward(&self, z: Tensor<4>) -> Result<Tensor<4>> {
        expect_images("latents", &z, self.latent_channels)?;
        let mut h = self.mid_block.forward(conv2d(&self.conv_in, z))?;
        for block in &self.up_blocks {
            h = block.forward(h)?;
        }
        Ok(conv2d(&self.conv_out, norm_silu(&self.conv_norm_out, h)))
    }
}
