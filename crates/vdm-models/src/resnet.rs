//! The 2-D residual block and the resolution changers of SD-family UNets and VAEs, mirroring
//! diffusers' `models/resnet.py` (`ResnetBlock2D`), `models/downsampling.py` (`Downsample2D`)
//! and `models/upsampling.py` (`Upsample2D`).
//!
//! Video UNets apply these per frame on `[B·F, C, H, W]` (frames folded into the batch, see
//! [`vdm_core::layout::frames_to_batch`]).

use burn::config::Config;
use burn::module::Module;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{GroupNorm, GroupNormConfig, Linear, LinearConfig, PaddingConfig2d};
use burn::tensor::activation::silu;
use burn::tensor::ops::PadMode;
use burn::tensor::{Device, Int, Tensor, TensorData};
use vdm_core::{Error, Result};

use crate::attention::{ensure_dropout, ensure_eps, ensure_groups, ensure_nonzero, expect_images};
use crate::cpu;

mod cpu_fused;

/// Configuration of a [`ResnetBlock2D`] (diffusers `ResnetBlock2D` with
/// `time_embedding_norm="default"`, `non_linearity="swish"`, no up/down sampling).
#[derive(Config, Debug)]
pub struct ResnetBlock2DConfig {
    /// Input channels (`in_channels`).
    pub in_channels: usize,
    /// Output channels (`out_channels`); defaults to `in_channels`.
    #[config(default = "None")]
    pub out_channels: Option<usize>,
    /// Width of the time embedding (`temb_channels`); `None` for no `time_emb_proj` (VAE).
    #[config(default = "None")]
    pub temb_channels: Option<usize>,
    /// GroupNorm groups of `norm1` (`groups`).
    #[config(default = 32)]
    pub groups: usize,
    /// GroupNorm groups of `norm2` (`groups_out`); defaults to `groups`.
    #[config(default = "None")]
    pub groups_out: Option<usize>,
    /// GroupNorm epsilon (`eps`): the UNet's `norm_eps` (1e-5) in UNets, 1e-6 in the VAE.
    #[config(default = 1e-6)]
    pub eps: f64,
    /// The output is divided by this (`output_scale_factor`).
    #[config(default = 1.0)]
    pub output_scale_factor: f64,
    /// Force (`Some(true)`) or forbid the 1×1 `conv_shortcut` (`use_in_shortcut`); by default it
    /// exists when `in_channels != out_channels`.
    #[config(default = "None")]
    pub use_in_shortcut: Option<bool>,
    /// Dropout probability (`dropout`); recorded only, inference runs without dropout.
    #[config(default = 0.0)]
    pub dropout: f64,
}

impl ResnetBlock2DConfig {
    /// Output channels.
    pub fn out(&self) -> usize {
        self.out_channels.unwrap_or(self.in_channels)
    }

    /// Checks the configuration, naming the offending field.
    pub fn validate(&self) -> Result<()> {
        ensure_groups("groups", self.in_channels, self.groups)?;
        ensure_groups(
            "groups_out",
            self.out(),
            self.groups_out.unwrap_or(self.groups),
        )?;
        if let Some(t) = self.temb_channels {
            ensure_nonzero("temb_channels", t)?;
        }
        ensure_eps("eps", self.eps)?;
        vdm_core::error::ensure_positive("output_scale_factor", self.output_scale_factor)?;
        ensure_dropout("dropout", self.dropout)?;
        Ok(())
    }

    /// Validates and builds the block.
    pub fn try_init(&self, device: &Device) -> Result<ResnetBlock2D> {
        self.validate()?;
        let out = self.out();
        let conv3 = |i, o| {
            Conv2dConfig::new([i, o], [3, 3])
                .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
                .init(device)
        };
        let shortcut = self.use_in_shortcut.unwrap_or(self.in_channels != out);
        Ok(ResnetBlock2D {
            norm1: GroupNormConfig::new(self.groups, self.in_channels)
                .with_epsilon(self.eps)
                .init(device),
            conv1: conv3(self.in_channels, out),
            time_emb_proj: self
                .temb_channels
                .map(|t| LinearConfig::new(t, out).init(device)),
            norm2: GroupNormConfig::new(self.groups_out.unwrap_or(self.groups), out)
                .with_epsilon(self.eps)
                .init(device),
            conv2: conv3(out, out),
            conv_shortcut: shortcut
                .then(|| Conv2dConfig::new([self.in_channels, out], [1, 1]).init(device)),
            in_channels: self.in_channels,
            out_channels: out,
            output_scale_factor: self.output_scale_factor,
        })
    }
}

/// Pre-activation residual block:
/// `(shortcut(x) + conv2(silu(norm2(conv1(silu(norm1(x))) + time_emb_proj(silu(temb))))))
/// / output_scale_factor` (diffusers `ResnetBlock2D`, `resnet.py`).
///
/// Checkpoint keys: `norm1`, `conv1`, `time_emb_proj`, `norm2`, `conv2`, `conv_shortcut`.
#[derive(Module, Debug)]
pub struct ResnetBlock2D {
    /// GroupNorm on the input.
    pub norm1: GroupNorm,
    /// 3×3 convolution `in → out`.
    pub conv1: Conv2d,
    /// Projection of the time embedding to `out` channels (UNets only).
    pub time_emb_proj: Option<Linear>,
    /// GroupNorm after `conv1` (+ time embedding).
    pub norm2: GroupNorm,
    /// 3×3 convolution `out → out`.
    pub conv2: Conv2d,
    /// 1×1 convolution on the shortcut when `in != out`.
    pub conv_shortcut: Option<Conv2d>,
    /// Input channels.
    pub in_channels: usize,
    /// Output channels.
    pub out_channels: usize,
    /// Output divisor.
    pub output_scale_factor: f64,
}

impl ResnetBlock2D {
    /// Applies the block.
    ///
    /// `temb` is the time embedding *before* the block's SiLU (the UNet's `time_embedding`
    /// output, repeated per frame); it is required iff the block has a `time_emb_proj`.
    ///
    /// # Shapes
    /// - `x`: `[N, in_channels, H, W]`
    /// - `temb`: `[N, temb_channels]`
    /// - output: `[N, out_channels, H, W]`
    pub fn forward(&self, x: Tensor<4>, temb: Option<Tensor<2>>) -> Result<Tensor<4>> {
        expect_images("hidden_states", &x, self.in_channels)?;
        let n = x.dims()[0];
        let fused = cpu::enabled(&x.device(), x.dtype());
        let temb_ok = match (&self.time_emb_proj, &temb) {
            (Some(proj), Some(temb)) => temb.dims() == [n, proj.weight.dims()[0]],
            (None, None) => true,
            _ => false,
        };
        if fused && temb_ok && cpu_fused::resnet_supported(self, x.dims()) {
            let t = match (&self.time_emb_proj, temb) {
                (Some(proj), Some(temb)) => Some(proj.forward(silu(temb))),
                _ => None,
            };
            return Ok(cpu_fused::resnet(self, x, t));
        }
        let mut h = self.conv1.forward(norm_silu(&self.norm1, x.clone()));
        match (&self.time_emb_proj, temb) {
            (Some(proj), Some(temb)) => {
                let [d_in, _] = proj.weight.dims();
                if temb.dims() != [n, d_in] {
                    return Err(Error::shape(
                        "temb",
                        format!("[N, {d_in}] with N = {n} (the batch of hidden_states)"),
                        &temb.dims(),
                    ));
                }
                let t = proj.forward(silu(temb));
                h = h + t.reshape([n, self.out_channels, 1, 1]);
            }
            (Some(_), None) => {
                return Err(Error::invalid(
                    "temb",
                    "this ResnetBlock2D has a time_emb_proj and needs a time embedding",
                ));
            }
            (None, Some(_)) => {
                return Err(Error::invalid(
                    "temb",
                    "this ResnetBlock2D has no time_emb_proj (temb_channels = None)",
                ));
            }
            (None, None) => {}
        }
        let h = self.conv2.forward(norm_silu(&self.norm2, h));
        let shortcut = match &self.conv_shortcut {
            Some(conv) => conv.forward(x),
            None => x,
        };
        let out = shortcut + h;
        Ok(if self.output_scale_factor != 1.0 {
            out / self.output_scale_factor
        } else {
            out
        })
    }
}

/// `silu(norm(x))`: one pass of the fused CPU kernel on the flex backend, else Burn's
/// GroupNorm and SiLU.
pub(crate) fn norm_silu(norm: &GroupNorm, x: Tensor<4>) -> Tensor<4> {
    if cpu::enabled(&x.device(), x.dtype()) {
        cpu::group_norm(norm, x, 1, true)
    } else {
        silu(norm.forward(x))
    }
}

/// A 2-D convolution: the fused CPU kernel on the flex backend when it covers `conv`, else
/// Burn's.
pub(crate) fn conv2d(conv: &Conv2d, x: Tensor<4>) -> Tensor<4> {
    if cpu::enabled(&x.device(), x.dtype()) && cpu::conv2d_output(conv, x.dims()).is_some() {
        cpu::conv2d(conv, x)
    } else {
        conv.forward(x)
    }
}

/// Configuration of a [`Downsample2D`] (diffusers `Downsample2D` with `use_conv=True`).
#[derive(Config, Debug)]
pub struct Downsample2DConfig {
    /// Input channels (`channels`).
    pub channels: usize,
    /// Output channels (`out_channels`); defaults to `channels`.
    #[config(default = "None")]
    pub out_channels: Option<usize>,
    /// Symmetric padding (`padding`): 1 in UNets; 0 in the VAE encoder, where diffusers pads
    /// one zero row/column at the bottom/right instead.
    #[config(default = 1)]
    pub padding: usize,
}

impl Downsample2DConfig {
    /// Checks the configuration, naming the offending field.
    pub fn validate(&self) -> Result<()> {
        ensure_nonzero("channels", self.channels)?;
        ensure_nonzero("out_channels", self.out_channels.unwrap_or(self.channels))
    }

    /// Validates and builds the layer.
    pub fn try_init(&self, device: &Device) -> Result<Downsample2D> {
        self.validate()?;
        let p = self.padding;
        Ok(Downsample2D {
            conv: Conv2dConfig::new(
                [self.channels, self.out_channels.unwrap_or(self.channels)],
                [3, 3],
            )
            .with_stride([2, 2])
            .with_padding(PaddingConfig2d::Explicit(p, p, p, p))
            .init(device),
            channels: self.channels,
            padding: p,
        })
    }
}

/// 3×3 convolution with stride 2 (diffusers `Downsample2D`, `downsampling.py`).
///
/// Checkpoint key: `conv`.
#[derive(Module, Debug)]
pub struct Downsample2D {
    /// The strided convolution.
    pub conv: Conv2d,
    /// Input channels.
    pub channels: usize,
    /// Symmetric padding of `conv` (0 = asymmetric bottom/right zero padding first).
    pub padding: usize,
}

impl Downsample2D {
    /// Halves the resolution.
    ///
    /// # Shapes
    /// - `x`: `[N, channels, H, W]`
    /// - output: `[N, out_channels, ⌊(H + 2p − 3)/2⌋ + 1, …]` (`H/2` for even `H`)
    pub fn forward(&self, x: Tensor<4>) -> Result<Tensor<4>> {
        expect_images("hidden_states", &x, self.channels)?;
        let x = if self.padding == 0 {
            x.pad((0, 1, 0, 1), PadMode::Constant(0.0))
        } else {
            x
        };
        Ok(conv2d(&self.conv, x))
    }
}

/// Configuration of an [`Upsample2D`] (diffusers `Upsample2D` with `use_conv=True`).
#[derive(Config, Debug)]
pub struct Upsample2DConfig {
    /// Input channels (`channels`).
    pub channels: usize,
    /// Output channels (`out_channels`); defaults to `channels`.
    #[config(default = "None")]
    pub out_channels: Option<usize>,
}

impl Upsample2DConfig {
    /// Checks the configuration, naming the offending field.
    pub fn validate(&self) -> Result<()> {
        ensure_nonzero("channels", self.channels)?;
        ensure_nonzero("out_channels", self.out_channels.unwrap_or(self.channels))
    }

    /// Validates and builds the layer.
    pub fn try_init(&self, device: &Device) -> Result<Upsample2D> {
        self.validate()?;
        Ok(Upsample2D {
            conv: Conv2dConfig::new(
                [self.channels, self.out_channels.unwrap_or(self.channels)],
                [3, 3],
            )
            .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
            .init(device),
            channels: self.channels,
        })
    }
}

/// Nearest-neighbour upsampling followed by a 3×3 convolution (diffusers `Upsample2D`,
/// `upsampling.py`).
///
/// Checkpoint key: `conv`.
#[derive(Module, Debug)]
pub struct Upsample2D {
    /// The convolution after upsampling.
    pub conv: Conv2d,
    /// Input channels.
    pub channels: usize,
}

impl Upsample2D {
    /// Upsamples ×2 (or to `output_size`, as diffusers' UNets do when a skip connection has an
    /// odd size) and convolves.
    ///
    /// # Shapes
    /// - `x`: `[N, channels, H, W]`
    /// - output: `[N, out_channels, 2H, 2W]` or `[N, out_channels, output_size[0], output_size[1]]`
    pub fn forward(&self, x: Tensor<4>, output_size: Option<[usize; 2]>) -> Result<Tensor<4>> {
        expect_images("hidden_states", &x, self.channels)?;
        let [_, _, h, w] = x.dims();
        let [oh, ow] = output_size.unwrap_or([2 * h, 2 * w]);
        if oh == 0 || ow == 0 {
            return Err(Error::invalid("output_size", "must be non-zero"));
        }
        Ok(conv2d(&self.conv, upsample_nearest(x, [oh, ow])))
    }
}

/// PyTorch `F.interpolate(x, size, mode="nearest")`: output pixel `i` reads input pixel
/// `min(⌊i · (in/out)⌋, in − 1)` with the scale in `f32` (exact pixel repetition for ×2;
/// [`vdm_kernels::nearest_indices`]). On the flex backend one pass of the fused kernel
/// ([`vdm_kernels::upsample_nearest`]); elsewhere two `select`s with the same index maps
/// (Burn's `interpolate` defaults to `align_corners = true`, so the maps are built here).
///
/// # Shapes
/// - `x`: `[N, C, H, W]`
/// - output: `[N, C, size[0], size[1]]`
pub fn upsample_nearest(x: Tensor<4>, size: [usize; 2]) -> Tensor<4> {
    let [_, _, h, w] = x.dims();
    if size == [h, w] {
        return x;
    }
    if h > 0 && w > 0 && cpu::enabled(&x.device(), x.dtype()) {
        return cpu::upsample_nearest(x, size);
    }
    let device = x.device();
    let index = |inp: usize, out: usize| {
        let idx: Vec<i64> = cpu::nearest_indices(inp, out)
            .into_iter()
            .map(|i| i as i64)
            .collect();
        Tensor::<1, Int>::from_data(TensorData::new(idx, [out]), &device)
    };
    let x = if size[0] == h {
        x
    } else {
        x.select(2, index(h, size[0]))
    };
    if size[1] == w {
        x
    } else {
        x.select(3, index(w, size[1]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::{Distribution, Tolerance};

    fn dev() -> Device {
        Device::flex()
    }

    fn rand<const D: usize>(shape: [usize; D]) -> Tensor<D> {
        Tensor::random(shape, Distribution::Normal(0.0, 1.0), &dev())
    }

    #[test]
    fn resnet_shapes_and_shortcut() {
        let block = ResnetBlock2DConfig::new(8)
            .with_out_channels(Some(16))
            .with_temb_channels(Some(12))
            .with_groups(4)
            .try_init(&dev())
            .unwrap();
        assert!(block.conv_shortcut.is_some());
        let y = block
            .forward(rand([3, 8, 5, 6]), Some(rand([3, 12])))
            .unwrap();
        assert_eq!(y.dims(), [3, 16, 5, 6]);
        // temb is required with a time_emb_proj, and must have the batch of x.
        assert!(block.forward(rand([3, 8, 5, 6]), None).is_err());
        let e = block
            .forward(rand([3, 8, 5, 6]), Some(rand([1, 12])))
            .unwrap_err()
            .to_string();
        assert!(e.contains("temb"), "{e}");
        let e = block
            .forward(rand([3, 7, 5, 6]), None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("hidden_states"), "{e}");

        let vae = ResnetBlock2DConfig::new(8)
            .with_groups(2)
            .try_init(&dev())
            .unwrap();
        assert!(vae.conv_shortcut.is_none() && vae.time_emb_proj.is_none());
        assert_eq!(
            vae.forward(rand([1, 8, 4, 4]), None).unwrap().dims(),
            [1, 8, 4, 4]
        );
    }

    #[test]
    fn resnet_matches_manual_composition() {
        let block = ResnetBlock2DConfig::new(4)
            .with_temb_channels(Some(3))
            .with_groups(2)
            .with_output_scale_factor(2.0)
            .try_init(&dev())
            .unwrap();
        let x = rand([2, 4, 3, 3]);
        let t = rand([2, 3]);
        let y = block.forward(x.clone(), Some(t.clone())).unwrap();
        let h = block.conv1.forward(silu(block.norm1.forward(x.clone())));
        let tp = block.time_emb_proj.as_ref().unwrap().forward(silu(t));
        let h = h + tp.reshape([2, 4, 1, 1]);
        let h = block.conv2.forward(silu(block.norm2.forward(h)));
        y.into_data()
            .assert_approx_eq::<f32>(&((x + h) / 2.0).into_data(), Tolerance::absolute(1e-6));
    }

    #[test]
    fn bad_resnet_config_names_the_field() {
        let e = ResnetBlock2DConfig::new(30)
            .validate()
            .unwrap_err()
            .to_string();
        assert!(e.contains("`groups`"), "{e}");
        let e = ResnetBlock2DConfig::new(32)
            .with_out_channels(Some(48))
            .with_groups_out(Some(32))
            .validate()
            .unwrap_err()
            .to_string();
        assert!(e.contains("groups_out"), "{e}");
        let e = ResnetBlock2DConfig::new(32)
            .with_eps(-1.0)
            .validate()
            .unwrap_err()
            .to_string();
        assert!(e.contains("eps"), "{e}");
    }

    #[test]
    fn nearest_upsampling_repeats_pixels() {
        let x = Tensor::<4>::from_floats([[[[1.0, 2.0], [3.0, 4.0]]]], &dev());
        let y = upsample_nearest(x.clone(), [4, 4]);
        let want = Tensor::<4>::from_floats(
            [[[
                [1.0, 1.0, 2.0, 2.0],
                [1.0, 1.0, 2.0, 2.0],
                [3.0, 3.0, 4.0, 4.0],
                [3.0, 3.0, 4.0, 4.0],
            ]]],
            &dev(),
        );
        y.into_data().assert_eq(&want.into_data(), true);
        // Odd target size as in diffusers' `forward_upsample_size`: rows 0,0,1 (⌊i·2/3⌋).
        let y = upsample_nearest(x, [3, 2]);
        let want = Tensor::<4>::from_floats([[[[1.0, 2.0], [1.0, 2.0], [3.0, 4.0]]]], &dev());
        y.into_data().assert_eq(&want.into_data(), true);
    }

    #[test]
    fn resampler_shapes() {
        let down = Downsample2DConfig::new(4).try_init(&dev()).unwrap();
        assert_eq!(
            down.forward(rand([2, 4, 8, 6])).unwrap().dims(),
            [2, 4, 4, 3]
        );
        let down0 = Downsample2DConfig::new(4)
            .with_padding(0)
            .try_init(&dev())
            .unwrap();
        assert_eq!(
            down0.forward(rand([2, 4, 8, 6])).unwrap().dims(),
            [2, 4, 4, 3]
        );
        let up = Upsample2DConfig::new(4)
            .with_out_channels(Some(6))
            .try_init(&dev())
            .unwrap();
        assert_eq!(
            up.forward(rand([2, 4, 3, 5]), None).unwrap().dims(),
            [2, 6, 6, 10]
        );
        assert_eq!(
            up.forward(rand([2, 4, 3, 5]), Some([7, 9])).unwrap().dims(),
            [2, 6, 7, 9]
        );
        assert!(up.forward(rand([2, 5, 3, 5]), None).is_err());
    }

    /// The first resnet and the downsampler of the tiny UNet3D against diffusers.
    #[test]
    fn unet3d_resnet_and_downsampler_match_diffusers() {
        use crate::keymap::test_support::{assert_close, load, tensor};
        let d = dev();
        let io = "unet3d_io.safetensors";
        let w = "unet3d_weights.safetensors";
        let act = |k: &str| tensor::<4>(io, &format!("small.act.{k}"), &d);
        let resnet = ResnetBlock2DConfig::new(32)
            .with_temb_channels(Some(128))
            .with_groups(8)
            .with_eps(1e-5)
            .try_init(&d)
            .unwrap();
        let resnet = load(resnet, w, "down_blocks.0.resnets.0.");
        let temb = tensor::<2>(io, "small.act.time_embedding", &d).repeat_dim(0, 4);
        let y = resnet.forward(act("transformer_in"), Some(temb)).unwrap();
        assert_close("resnets.0", y, act("down_blocks.0.resnets.0"), 1e-4);

        let down = Downsample2DConfig::new(32).try_init(&d).unwrap();
        let down = load(down, w, "down_blocks.0.downsamplers.0.");
        let y = down
            .forward(act("down_blocks.0.temp_attentions.0"))
            .unwrap();
        assert_close("down_blocks.0", y, act("down_blocks.0"), 1e-4);

        // A resnet with a 1×1 shortcut (32 → 64): shapes of the checkpoint load.
        let r1 = ResnetBlock2DConfig::new(32)
            .with_out_channels(Some(64))
            .with_temb_channels(Some(128))
            .with_groups(8)
            .with_eps(1e-5)
            .try_init(&d)
            .unwrap();
        let r1 = load(r1, w, "down_blocks.1.resnets.0.");
        assert!(r1.conv_shortcut.is_some());
        // Upsampler of up_blocks.0: loads into Upsample2D's `conv`.
        let up = load(
            Upsample2DConfig::new(64).try_init(&d).unwrap(),
            w,
            "up_blocks.0.upsamplers.0.",
        );
        assert_eq!(
            up.forward(act("down_blocks.1"), None).unwrap().dims(),
            [4, 64, 8, 8]
        );
    }
}
