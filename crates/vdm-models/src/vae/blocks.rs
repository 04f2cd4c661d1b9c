//! The three blocks of an `AutoencoderKL`, mirroring diffusers' `models/unets/unet_2d_blocks.py`:
//! [`DownEncoderBlock2D`], [`UpDecoderBlock2D`] and the attention mid block [`UNetMidBlock2D`].
//! None of them takes a time embedding (`temb_channels=None`); every GroupNorm has `eps = 1e-6`.

use burn::module::Module;
use burn::tensor::{Device, Tensor};
use vdm_core::Result;

use crate::attention::{Attention, AttentionConfig};
use crate::resnet::{
    Downsample2D, Downsample2DConfig, ResnetBlock2D, ResnetBlock2DConfig, Upsample2D,
    Upsample2DConfig,
};

/// GroupNorm epsilon of every VAE norm (`resnet_eps=1e-6` in diffusers' `vae.py`).
pub const VAE_NORM_EPS: f64 = 1e-6;

/// A VAE resnet: no time embedding, `eps = 1e-6`.
fn resnet(
    in_channels: usize,
    out_channels: usize,
    groups: usize,
    device: &Device,
) -> Result<ResnetBlock2D> {
    ResnetBlock2DConfig::new(in_channels)
        .with_out_channels(Some(out_channels))
        .with_groups(groups)
        .with_eps(VAE_NORM_EPS)
        .try_init(device)
}

/// `num_layers` VAE resnets, the first mapping `in_channels → out_channels`, the rest
/// `out_channels → out_channels`.
fn resnet_stack(
    in_channels: usize,
    out_channels: usize,
    num_layers: usize,
    groups: usize,
    device: &Device,
) -> Result<Vec<ResnetBlock2D>> {
    (0..num_layers)
        .map(|i| {
            let cin = if i == 0 { in_channels } else { out_channels };
            resnet(cin, out_channels, groups, device)
        })
        .collect()
}

/// `num_layers` resnets followed by an optional stride-2 downsampler with diffusers' VAE
/// padding (one zero row/column at the bottom/right, `downsample_padding=0`)
/// (diffusers `DownEncoderBlock2D`, `unet_2d_blocks.py`).
///
/// Checkpoint keys: `resnets.N.*`, `downsamplers.0.conv.*`.
#[derive(Module, Debug)]
pub struct DownEncoderBlock2D {
    /// The resnets; the first maps `in → out` channels.
    pub resnets: Vec<ResnetBlock2D>,
    /// Empty, or the one downsampler (`downsamplers.0`); the last level has none.
    pub downsamplers: Vec<Downsample2D>,
}

impl DownEncoderBlock2D {
    /// Builds the block (`add_downsample` = not the last level).
    ///
    /// # Errors
    /// [`vdm_core::Error::InvalidConfig`] when a channel count does not split into `groups`.
    pub fn new(
        in_channels: usize,
        out_channels: usize,
        num_layers: usize,
        groups: usize,
        add_downsample: bool,
        device: &Device,
    ) -> Result<Self> {
        let resnets = resnet_stack(in_channels, out_channels, num_layers, groups, device)?;
        let downsamplers = if add_downsample {
            vec![
                Downsample2DConfig::new(out_channels)
                    .with_padding(0)
                    .try_init(device)?,
            ]
        } else {
            Vec::new()
        };
        Ok(Self {
            resnets,
            downsamplers,
        })
    }

    /// Applies the resnets, then the downsampler.
    ///
    /// # Shapes
    /// - `x`: `[N, in_channels, H, W]`
    /// - output: `[N, out_channels, ⌊H/2⌋, ⌊W/2⌋]` with a downsampler, else
    ///   `[N, out_channels, H, W]`
    pub fn forward(&self, x: Tensor<4>) -> Result<Tensor<4>> {
        let mut h = x;
        for resnet in &self.resnets {
            h = resnet.forward(h, None)?;
        }
        for down in &self.downsamplers {
            h = down.forward(h)?;
        }
        Ok(h)
    }
}

/// `num_layers` resnets followed by an optional nearest-×2 upsampler with a 3×3 conv
/// (diffusers `UpDecoderBlock2D`, `unet_2d_blocks.py`).
///
/// Checkpoint keys: `resnets.N.*`, `upsamplers.0.conv.*`.
#[derive(Module, Debug)]
pub struct UpDecoderBlock2D {
    /// The resnets; the first maps `in → out` channels.
    pub resnets: Vec<ResnetBlock2D>,
    /// Empty, or the one upsampler (`upsamplers.0`); the last level has none.
    pub upsamplers: Vec<Upsample2D>,
}

impl UpDecoderBlock2D {
    /// Builds the block (`add_upsample` = not the last level).
    ///
    /// # Errors
    /// [`vdm_core::Error::InvalidConfig`] when a channel count does not split into `groups`.
    pub fn new(
        in_channels: usize,
        out_channels: usize,
        num_layers: usize,
        groups: usize,
        add_upsample: bool,
        device: &Device,
    ) -> Result<Self> {
        let resnets = resnet_stack(in_channels, out_channels, num_layers, groups, device)?;
        let upsamplers = if add_upsample {
            vec![Upsample2DConfig::new(out_channels).try_init(device)?]
        } else {
            Vec::new()
        };
        Ok(Self {
            resnets,
            upsamplers,
        })
    }

    /// Applies the resnets, then the upsampler.
    ///
    /// # Shapes
    /// - `x`: `[N, in_channels, H, W]`
    /// - output: `[N, out_channels, 2H, 2W]` with an upsampler, else `[N, out_channels, H, W]`
    pub fn forward(&self, x: Tensor<4>) -> Result<Tensor<4>> {
        let mut h = x;
        for resnet in &self.resnets {
            h = resnet.forward(h, None)?;
        }
        for up in &self.upsamplers {
            h = up.forward(h, None)?;
        }
        Ok(h)
    }
}

/// `resnet → [attention → resnet]` at the lowest resolution (diffusers `UNetMidBlock2D` with
/// `num_layers=1`, `temb_channels=None`, `attention_head_dim = channels`, i.e. one head over all
/// channels; `unet_2d_blocks.py`). The attention has biases on `to_q/to_k/to_v/to_out`, its own
/// `group_norm` and a residual connection ([`AttentionConfig::vae`]).
///
/// Checkpoint keys: `resnets.{0,1}.*`, `attentions.0.{group_norm, to_q, to_k, to_v, to_out.0}.*`
/// (or the pre-0.14 names `query/key/value/proj_attn`, renamed by [`crate::keymap`]).
#[derive(Module, Debug)]
pub struct UNetMidBlock2D {
    /// `num_layers + 1` resnets.
    pub resnets: Vec<ResnetBlock2D>,
    /// `num_layers` attentions, or none (`mid_block_add_attention = false`).
    pub attentions: Vec<Attention>,
}

impl UNetMidBlock2D {
    /// Builds the block with one attention (if `add_attention`) between two resnets.
    ///
    /// # Errors
    /// [`vdm_core::Error::InvalidConfig`] when `channels` does not split into `groups`.
    pub fn new(
        channels: usize,
        groups: usize,
        add_attention: bool,
        device: &Device,
    ) -> Result<Self> {
        let resnets = vec![
            resnet(channels, channels, groups, device)?,
            resnet(channels, channels, groups, device)?,
        ];
        let attentions = if add_attention {
            vec![AttentionConfig::vae(channels, channels, groups, VAE_NORM_EPS).try_init(device)?]
        } else {
            Vec::new()
        };
        Ok(Self {
            resnets,
            attentions,
        })
    }

    /// Applies `resnets[0]`, then for each further resnet the attention before it (if any).
    ///
    /// # Shapes
    /// - `x`: `[N, channels, H, W]`
    /// - output: `[N, channels, H, W]`
    pub fn forward(&self, x: Tensor<4>) -> Result<Tensor<4>> {
        let mut resnets = self.resnets.iter();
        let mut h = match resnets.next() {
            Some(first) => first.forward(x, None)?,
            None => x,
        };
        for (i, resnet) in resnets.enumerate() {
            if let Some(attn) = self.attentions.get(i) {
                h = attn.forward_image(h)?;
            }
            h = resnet.forward(h, None)?;
        }
        Ok(h)
    }
}
