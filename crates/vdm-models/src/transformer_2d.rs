//! The spatial transformer of SD-family UNets, mirroring diffusers'
//! `models/transformers/transformer_2d.py` (`Transformer2DModel`, continuous input).
//!
//! Video UNets apply it per frame: input `[B·F, C, H, W]`, text context `[B·F, S, D]`.

use burn::config::Config;
use burn::module::Module;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{GroupNorm, GroupNormConfig, Linear, LinearConfig};
use burn::tensor::{Device, Tensor};
use vdm_core::{Error, Result};

use crate::attention::{
    BasicTransformerBlock, BasicTransformerBlockConfig, ensure_eps, ensure_groups, ensure_nonzero,
    expect_images,
};
use crate::cpu;

/// `proj_in` / `proj_out` of a [`Transformer2DModel`]: a Linear on tokens
/// (`use_linear_projection=True`: ModelScope's UNet3D, SD 2.x; checkpoint weight `[out, in]`)
/// or a 1×1 Conv2d on the image (SD 1.x `UNet2DConditionModel`, hence AnimateDiff; weight
/// `[out, in, 1, 1]`).
///
/// The variant name is not part of the checkpoint path: load with burn-store's
/// `skip_enum_variants(true)` (see [`crate::keymap::SKIP_ENUM_VARIANTS`]).
#[derive(Module, Debug)]
pub enum Projection {
    /// Linear projection on `[N, H·W, C]` tokens.
    Linear(Linear),
    /// 1×1 convolution on `[N, C, H, W]` images.
    Conv(Conv2d),
}

impl Projection {
    fn new(linear: bool, d_in: usize, d_out: usize, device: &Device) -> Self {
        if linear {
            Projection::Linear(LinearConfig::new(d_in, d_out).init(device))
        } else {
            Projection::Conv(Conv2dConfig::new([d_in, d_out], [1, 1]).init(device))
        }
    }
}

/// Configuration of a [`Transformer2DModel`] (continuous-input `Transformer2DModel`).
#[derive(Config, Debug)]
pub struct Transformer2DModelConfig {
    /// Input and output channels (`in_channels`).
    pub in_channels: usize,
    /// Number of heads (`num_attention_heads`). Mind diffusers' naming: UNet3D's config value
    /// `attention_head_dim` is the per-head width here, UNet2D's is the head count
    /// (oracle gotcha 21).
    pub heads: usize,
    /// Channels per head (`attention_head_dim`); inner width = `heads · head_dim`.
    pub head_dim: usize,
    /// Number of transformer blocks (`num_layers`).
    #[config(default = 1)]
    pub num_layers: usize,
    /// GroupNorm groups (`norm_num_groups`); the GroupNorm epsilon is `norm_eps_group`.
    #[config(default = 32)]
    pub norm_num_groups: usize,
    /// GroupNorm epsilon (diffusers hard-codes 1e-6).
    #[config(default = 1e-6)]
    pub norm_eps_group: f64,
    /// LayerNorm epsilon inside the blocks (`norm_eps`).
    #[config(default = 1e-5)]
    pub norm_eps: f64,
    /// Text-context width of the cross-attention (`cross_attention_dim`); `None` makes `attn2`
    /// absent.
    #[config(default = "None")]
    pub cross_attention_dim: Option<usize>,
    /// Linear (`true`) or 1×1-conv (`false`) `proj_in`/`proj_out` (`use_linear_projection`):
    /// `true` for ModelScope's UNet3D, `false` for UNet2DConditionModel / AnimateDiff.
    #[config(default = false)]
    pub use_linear_projection: bool,
    /// Bias on q/k/v (`attention_bias`).
    #[config(default = false)]
    pub attention_bias: bool,
    /// Make `attn2` a second self-attention (`double_self_attention`).
    #[config(default = false)]
    pub double_self_attention: bool,
}

impl Transformer2DModelConfig {
    /// Inner width `heads · head_dim`.
    pub fn inner_dim(&self) -> usize {
        self.heads * self.head_dim
    }

    fn block(&self) -> BasicTransformerBlockConfig {
        BasicTransformerBlockConfig::new(self.inner_dim(), self.heads, self.head_dim)
            .with_cross_attention_dim(self.cross_attention_dim)
            .with_double_self_attention(self.double_self_attention)
            .with_attention_bias(self.attention_bias)
            .with_norm_eps(self.norm_eps)
    }

    /// Checks the configuration, naming the offending field.
    pub fn validate(&self) -> Result<()> {
        ensure_groups("norm_num_groups", self.in_channels, self.norm_num_groups)?;
        ensure_eps("norm_eps_group", self.norm_eps_group)?;
        ensure_nonzero("num_layers", self.num_layers)?;
        self.block().validate()
    }

    /// Validates and builds the model.
    pub fn try_init(&self, device: &Device) -> Result<Transformer2DModel> {
        self.validate()?;
        let inner = self.inner_dim();
        let block = self.block();
        Ok(Transformer2DModel {
            norm: GroupNormConfig::new(self.norm_num_groups, self.in_channels)
                .with_epsilon(self.norm_eps_group)
                .init(device),
            proj_in: Projection::new(self.use_linear_projection, self.in_channels, inner, device),
            transformer_blocks: (0..self.num_layers)
                .map(|_| block.try_init(device))
                .collect::<Result<_>>()?,
            proj_out: Projection::new(self.use_linear_projection, inner, self.in_channels, device),
            in_channels: self.in_channels,
            inner_dim: inner,
        })
    }
}

/// Spatial transformer: GroupNorm → `proj_in` → blocks over the `H·W` tokens (self-attention,
/// cross-attention to the text context, GEGLU) → `proj_out` → + input.
///
/// Checkpoint keys: `norm`, `proj_in`, `transformer_blocks.N.*`, `proj_out`.
#[derive(Module, Debug)]
pub struct Transformer2DModel {
    /// GroupNorm on the input (eps 1e-6).
    pub norm: GroupNorm,
    /// Input projection `in_channels → inner_dim`.
    pub proj_in: Projection,
    /// The transformer blocks.
    pub transformer_blocks: Vec<BasicTransformerBlock>,
    /// Output projection `inner_dim → in_channels`.
    pub proj_out: Projection,
    /// Input / output channels.
    pub in_channels: usize,
    /// Width of the tokens inside the blocks.
    pub inner_dim: usize,
}

impl Transformer2DModel {
    /// Applies the transformer to every image (frame) of the batch.
    ///
    /// # Shapes
    /// - `x`: `[N, in_channels, H, W]` (`N = B·F` in video UNets)
    /// - `context`: `[N, S, cross_attention_dim]` (one text context per frame), or
    ///   `[N / r, S, cross_attention_dim]` shared by each `r` consecutive frames (keys and
    ///   values are then projected once per context, see [`crate::attention::Attention::forward`])
    /// - output: `[N, in_channels, H, W]`
    pub fn forward(&self, x: Tensor<4>, context: Option<Tensor<3>>) -> Result<Tensor<4>> {
        self.run(x, context, None)
    }

    /// [`forward`](Self::forward) on the frames of videos (`N = B·F`, frame-major within a
    /// video) with cross-frame self-attention: every block's `attn1` of frame `f` reads the
    /// frames `key_frames[f]` of its video (see
    /// [`BasicTransformerBlock::forward_cross_frame`]).
    ///
    /// # Shapes
    /// As [`forward`](Self::forward); `key_frames`: `F` lists of the same length.
    pub fn forward_cross_frame(
        &self,
        x: Tensor<4>,
        context: Option<Tensor<3>>,
        key_frames: &[Vec<usize>],
    ) -> Result<Tensor<4>> {
        self.run(x, context, Some(key_frames))
    }

    fn run(
        &self,
        x: Tensor<4>,
        context: Option<Tensor<3>>,
        key_frames: Option<&[Vec<usize>]>,
    ) -> Result<Tensor<4>> {
        expect_images("hidden_states", &x, self.in_channels)?;
        let [n, _, h, w] = x.dims();
        let residual = x.clone();
        let fused = cpu::enabled(&x.device(), x.dtype());
        let x = if fused {
            cpu::group_norm(&self.norm, x, 1, false)
        } else {
            self.norm.forward(x)
        };
        let mut t = match &self.proj_in {
            // Fused: the projection reads the channels-first pixels as tokens.
            Projection::Linear(lin) if fused => cpu::linear_from_channels_first(lin, x),
            Projection::Linear(lin) => lin.forward(to_tokens(x)),
            Projection::Conv(conv) => to_tokens(conv.forward(x)),
        };
        if let Some(c) = &context
            && !n.is_multiple_of(c.dims()[0])
        {
            return Err(Error::shape(
                "encoder_hidden_states",
                format!(
                    "[M, S, D] with M dividing N = {n} (one context per frame, or one per \
                     group of consecutive frames)"
                ),
                &c.dims(),
            ));
        }
        for block in &self.transformer_blocks {
            t = match key_frames {
                Some(keys) => block.forward_cross_frame(t, context.clone(), keys)?,
                None => block.forward(t, context.clone())?,
            };
        }
        Ok(match &self.proj_out {
            Projection::Linear(lin) if fused => cpu::linear_to_channels_first(lin, t, residual),
            Projection::Linear(lin) => from_tokens(lin.forward(t), h, w) + residual,
            Projection::Conv(conv) => conv.forward(from_tokens(t, h, w)) + residual,
        })
    }
}

/// `[N, C, H, W] -> [N, H·W, C]`.
fn to_tokens(x: Tensor<4>) -> Tensor<3> {
    let [n, c, h, w] = x.dims();
    x.reshape([n, c, h * w]).swap_dims(1, 2)
}

/// `[N, H·W, C] -> [N, C, H, W]`.
fn from_tokens(t: Tensor<3>, h: usize, w: usize) -> Tensor<4> {
    let [n, _, c] = t.dims();
    t.swap_dims(1, 2).reshape([n, c, h, w])
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
    fn both_projection_kinds_have_checkpoint_shapes() {
        let lin = Transformer2DModelConfig::new(16, 2, 8)
            .with_norm_num_groups(4)
            .with_cross_attention_dim(Some(12))
            .with_use_linear_projection(true)
            .try_init(&dev())
            .unwrap();
        match &lin.proj_in {
            Projection::Linear(l) => assert_eq!(l.weight.dims(), [16, 16]),
            Projection::Conv(_) => panic!("expected a Linear proj_in"),
        }
        let conv = Transformer2DModelConfig::new(16, 4, 4)
            .with_norm_num_groups(4)
            .with_cross_attention_dim(Some(12))
            .try_init(&dev())
            .unwrap();
        match &conv.proj_out {
            Projection::Conv(c) => assert_eq!(c.weight.dims(), [16, 16, 1, 1]),
            Projection::Linear(_) => panic!("expected a Conv2d proj_out"),
        }
        for model in [&lin, &conv] {
            let y = model
                .forward(rand([6, 16, 3, 5]), Some(rand([6, 7, 12])))
                .unwrap();
            assert_eq!(y.dims(), [6, 16, 3, 5]);
            let e = model
                .forward(rand([6, 16, 3, 5]), Some(rand([4, 7, 12])))
                .unwrap_err()
                .to_string();
            assert!(e.contains("encoder_hidden_states"), "{e}");
        }
    }

    #[test]
    fn linear_and_conv_projections_agree_with_equal_weights() {
        let conv = Transformer2DModelConfig::new(8, 2, 4)
            .with_norm_num_groups(2)
            .with_cross_attention_dim(Some(5))
            .try_init(&dev())
            .unwrap();
        let mut lin = Transformer2DModelConfig::new(8, 2, 4)
            .with_norm_num_groups(2)
            .with_cross_attention_dim(Some(5))
            .with_use_linear_projection(true)
            .try_init(&dev())
            .unwrap();
        // Copy the 1×1 conv weights ([out, in, 1, 1]) into the Linears ([in, out]).
        let to_linear = |p: &Projection| match p {
            Projection::Conv(c) => {
                let w = c.weight.val().reshape([8, 8]).transpose();
                let mut l = LinearConfig::new(8, 8).init(&dev());
                l.weight = burn::module::Param::from_tensor(w);
                l.bias = c
                    .bias
                    .as_ref()
                    .map(|b| burn::module::Param::from_tensor(b.val()));
                Projection::Linear(l)
            }
            Projection::Linear(_) => unreachable!(),
        };
        lin.proj_in = to_linear(&conv.proj_in);
        lin.proj_out = to_linear(&conv.proj_out);
        lin.transformer_blocks = conv.transformer_blocks.clone();
        let x = rand([2, 8, 3, 3]);
        let c = rand([2, 4, 5]);
        let a = conv.forward(x.clone(), Some(c.clone())).unwrap();
        let b = lin.forward(x, Some(c)).unwrap();
        a.into_data()
            .assert_approx_eq::<f32>(&b.into_data(), Tolerance::absolute(1e-5));
    }

    #[test]
    fn bad_config_names_the_field() {
        let e = Transformer2DModelConfig::new(30, 2, 15)
            .validate()
            .unwrap_err()
            .to_string();
        assert!(e.contains("norm_num_groups"), "{e}");
        let e = Transformer2DModelConfig::new(32, 0, 8)
            .validate()
            .unwrap_err()
            .to_string();
        assert!(e.contains("num_attention_heads"), "{e}");
    }

    /// ModelScope's spatial transformer (Linear projections, 4 heads × 8) of the tiny UNet3D
    /// against diffusers' activation, with the text states repeated per frame.
    #[test]
    fn unet3d_spatial_transformer_matches_diffusers() {
        use crate::keymap::test_support::{assert_close, load, tensor};
        let d = dev();
        let io = "unet3d_io.safetensors";
        let model = Transformer2DModelConfig::new(32, 4, 8)
            .with_norm_num_groups(8)
            .with_cross_attention_dim(Some(32))
            .with_use_linear_projection(true)
            .try_init(&d)
            .unwrap();
        let model = load(
            model,
            "unet3d_weights.safetensors",
            "down_blocks.0.attentions.0.",
        );
        let x = tensor::<4>(io, "small.act.down_blocks.0.temp_convs.0", &d);
        let context = tensor::<3>(io, "small.encoder_hidden_states", &d).repeat_dim(0, 4);
        let y = model.forward(x, Some(context)).unwrap();
        let want = tensor::<4>(io, "small.act.down_blocks.0.attentions.0", &d);
        assert_close("attentions.0", y, want, 1e-4);
    }
}
