//! Temporal layers of video UNets: ModelScope's temporal convolution and the temporal
//! transformers of ModelScope (`temp_attentions`, `transformer_in`) and AnimateDiff (motion
//! modules).
//!
//! Mirrors diffusers' `models/resnet.py` (`TemporalConvLayer`),
//! `models/transformers/transformer_temporal.py` (`TransformerTemporalModel`) and
//! `models/unets/unet_motion_model.py` (`AnimateDiffTransformer3D`).
//!
//! Every frame-mixing attention goes through a [`TemporalHook`]: the layer normalises,
//! reshapes to `[B·H·W, F, C]` tokens and projects, then for each transformer block hands the
//! block's two attention stages to the hook (which decides the frame windows, positions and
//! masks), runs the block's feed-forward on the fused full sequence itself, projects back and
//! adds the residual. With [`vdm_core::AllFrames`] this is exactly diffusers' computation.
//!
//! ```
//! use burn::tensor::{Device, Tensor};
//! use vdm_core::AllFrames;
//! use vdm_models::temporal::{TemporalConvLayerConfig, TransformerTemporalModelConfig};
//!
//! let device = Device::flex();
//! // An AnimateDiff motion module on 32 channels: 4 heads × 8, a 32-row position table.
//! let motion = TransformerTemporalModelConfig::new(32, 4, 8)
//!     .with_norm_num_groups(8)
//!     .with_max_positions(Some(32))
//!     .try_init(&device)?;
//! let video = Tensor::<5>::zeros([1, 32, 16, 4, 4], &device); // [B, C, F, H, W]
//! let out = motion.forward(video.clone(), &AllFrames, "down_blocks.0.motion_modules.0")?;
//! assert_eq!(out.dims(), [1, 32, 16, 4, 4]);
//!
//! // A fresh ModelScope temporal convolution is the identity.
//! let conv = TemporalConvLayerConfig::new(32).with_norm_num_groups(8).try_init(&device)?;
//! assert_eq!(conv.forward(video)?.dims(), [1, 32, 16, 4, 4]);
//!
//! // Channels that do not split into the GroupNorm groups are a typed error.
//! let err = TransformerTemporalModelConfig::new(30, 4, 8).validate().unwrap_err();
//! assert!(err.to_string().contains("norm_num_groups"));
//! # Ok::<(), vdm_core::Error>(())
//! ```

use burn::config::Config;
use burn::module::Module;
use burn::nn::conv::{Conv3d, Conv3dConfig};
use burn::nn::{GroupNorm, GroupNormConfig, Initializer, Linear, LinearConfig, PaddingConfig3d};
use burn::tensor::activation::silu;
use burn::tensor::{Device, Tensor};
use vdm_core::layout::{
    VideoShape, batch_to_frames, frame_tokens_to_video, frames_to_batch, video_to_frame_tokens,
};
use vdm_core::temporal::{TemporalHook, TemporalSite};
use vdm_core::{Error, Result};

use crate::attention::{
    BasicTransformerBlock, BasicTransformerBlockConfig, ensure_dropout, ensure_eps, ensure_groups,
    ensure_nonzero,
};
use crate::cpu;

/// `[B·F, C, H, W]` → `[B, C, F, H, W]` with a typed error when `F` does not divide the batch.
fn unfold_frames(x: Tensor<4>, num_frames: usize) -> Result<Tensor<5>> {
    let n = x.dims()[0];
    if num_frames == 0 || !n.is_multiple_of(num_frames) {
        return Err(Error::shape(
            "hidden_states",
            format!("[B·F, C, H, W] with a batch divisible by num_frames = {num_frames}"),
            &x.dims(),
        ));
    }
    Ok(batch_to_frames(x, num_frames))
}

/// Checks a video `[B, C, F, H, W]` and its channel count.
fn expect_video(x: &Tensor<5>, channels: usize) -> Result<VideoShape> {
    let shape = VideoShape::of("hidden_states", x)?;
    shape.expect_channels("hidden_states", channels)?;
    Ok(shape)
}

/// Configuration of a [`TemporalConvLayer`] (diffusers `TemporalConvLayer`, `resnet.py`).
///
/// Only `in_dim == out_dim` is supported (the only form ModelScope uses; diffusers' own
/// layer cannot run otherwise because `conv2..4` map `out_dim → in_dim`).
#[derive(Config, Debug)]
pub struct TemporalConvLayerConfig {
    /// Channels (`in_dim = out_dim`).
    pub channels: usize,
    /// GroupNorm groups (`norm_num_groups`, the UNet's `norm_num_groups`).
    #[config(default = 32)]
    pub norm_num_groups: usize,
    /// GroupNorm epsilon (PyTorch's default 1e-5; diffusers does not change it).
    #[config(default = 1e-5)]
    pub norm_eps: f64,
    /// Dropout probability of `conv2..conv4` (0.1 in UNet3D); recorded only, inference runs
    /// without dropout.
    #[config(default = 0.0)]
    pub dropout: f64,
}

impl TemporalConvLayerConfig {
    /// Checks the configuration, naming the offending field.
    pub fn validate(&self) -> Result<()> {
        ensure_groups("norm_num_groups", self.channels, self.norm_num_groups)?;
        ensure_eps("norm_eps", self.norm_eps)?;
        ensure_dropout("dropout", self.dropout)?;
        Ok(())
    }

    /// Validates and builds the layer. As in diffusers, `conv4`'s convolution is
    /// zero-initialised, so a fresh layer is the identity.
    pub fn try_init(&self, device: &Device) -> Result<TemporalConvLayer> {
        self.validate()?;
        let stage = |zero: bool| {
            let mut conv = Conv3dConfig::new([self.channels, self.channels], [3, 1, 1])
                .with_padding(PaddingConfig3d::Explicit(1, 0, 0));
            if zero {
                conv = conv.with_initializer(Initializer::Zeros);
            }
            TemporalConvStage {
                norm: GroupNormConfig::new(self.norm_num_groups, self.channels)
                    .with_epsilon(self.norm_eps)
                    .init(device),
                conv: conv.init(device),
            }
        };
        Ok(TemporalConvLayer {
            conv1: stage(false),
            conv2: stage(false),
            conv3: stage(false),
            conv4: stage(true),
            channels: self.channels,
            dropout: self.dropout,
        })
    }
}

/// One `nn.Sequential` stage of a [`TemporalConvLayer`]: GroupNorm → SiLU → (Dropout) →
/// Conv3d with kernel `(3, 1, 1)` and zero padding `(1, 0, 0)` over frames.
///
/// Checkpoint keys: `convK.0` (→ `norm`) and `conv1.2` / `conv2.3` … (→ `conv`), see
/// [`crate::keymap`].
#[derive(Module, Debug)]
pub struct TemporalConvStage {
    /// GroupNorm over `[B, C, F, H, W]` (statistics across all frames).
    pub norm: GroupNorm,
    /// Temporal convolution, weight `[C, C, 3, 1, 1]`.
    pub conv: Conv3d,
}

impl TemporalConvStage {
    /// `conv(silu(norm(x)))` on `[B, C, F, H, W]`.
    fn forward(&self, x: Tensor<5>) -> Tensor<5> {
        self.conv.forward(silu(self.norm.forward(x)))
    }
}

/// ModelScope's temporal convolution block: `x + conv4(conv3(conv2(conv1(x))))` with four
/// [`TemporalConvStage`]s (diffusers `TemporalConvLayer`, `resnet.py`). It mixes only
/// neighbouring frames (kernel 3 over time, zero padded) and does not go through the
/// [`TemporalHook`].
///
/// Checkpoint keys: `conv1.{0,2}`, `conv2.{0,3}`, `conv3.{0,3}`, `conv4.{0,3}`.
#[derive(Module, Debug)]
pub struct TemporalConvLayer {
    /// GroupNorm → SiLU → Conv3d.
    pub conv1: TemporalConvStage,
    /// GroupNorm → SiLU → Dropout → Conv3d.
    pub conv2: TemporalConvStage,
    /// GroupNorm → SiLU → Dropout → Conv3d.
    pub conv3: TemporalConvStage,
    /// GroupNorm → SiLU → Dropout → Conv3d (zero-initialised).
    pub conv4: TemporalConvStage,
    /// Channels.
    pub channels: usize,
    /// Dropout probability (not applied at inference).
    pub dropout: f64,
}

impl TemporalConvLayer {
    /// Applies the layer to a video.
    ///
    /// # Shapes
    /// - `x`: `[B, C, F, H, W]`
    /// - output: `[B, C, F, H, W]`
    pub fn forward(&self, x: Tensor<5>) -> Result<Tensor<5>> {
        expect_video(&x, self.channels)?;
        let h = self.conv1.forward(x.clone());
        let h = self.conv2.forward(h);
        let h = self.conv3.forward(h);
        let h = self.conv4.forward(h);
        Ok(x + h)
    }

    /// Applies the layer to frames folded into the batch, as diffusers' `forward(x, num_frames)`.
    ///
    /// # Shapes
    /// - `x`: `[B·F, C, H, W]`
    /// - output: `[B·F, C, H, W]`
    pub fn forward_frames(&self, x: Tensor<4>, num_frames: usize) -> Result<Tensor<4>> {
        let dims = x.dims();
        if cpu::enabled(&x.device(), x.dtype())
            && dims[1] == self.channels
            && num_frames > 0
            && dims[0].is_multiple_of(num_frames)
            && !dims.contains(&0)
        {
            return Ok(self.forward_frames_cpu(x, num_frames));
        }
        let video = unfold_frames(x, num_frames)?;
        Ok(frames_to_batch(self.forward(video)?))
    }

    /// [`forward_frames`](Self::forward_frames) on the flex backend, without leaving the frame
    /// layout (see [`cpu::temporal_conv`]).
    fn forward_frames_cpu(&self, x: Tensor<4>, frames: usize) -> Tensor<4> {
        cpu::temporal_conv(
            [
                (&self.conv1.norm, &self.conv1.conv),
                (&self.conv2.norm, &self.conv2.conv),
                (&self.conv3.norm, &self.conv3.conv),
                (&self.conv4.norm, &self.conv4.conv),
            ],
            x,
            frames,
        )
    }
}

/// Which samples the input GroupNorm of a [`TransformerTemporalModel`] pools its statistics
/// over.
#[derive(Config, Debug, Copy, PartialEq, Eq)]
pub enum TemporalNorm {
    /// Statistics over `(C/groups) × F × H × W`, i.e. across all frames of a video, as
    /// diffusers does (GroupNorm on `[B, C, F, H, W]`). Required for diffusers parity; note
    /// that the statistics then depend on the total frame count.
    AcrossFrames,
    /// Statistics over `(C/groups) × H × W` of each frame separately, as the original
    /// AnimateDiff repository and ComfyUI-AnimateDiff-Evolved do (GroupNorm on
    /// `(b f) c h w`). Same weights, different numbers.
    PerFrame,
}

/// Configuration of a [`TransformerTemporalModel`].
///
/// - ModelScope `temp_attentions`: `heads = C / attention_head_dim`, `head_dim =
///   attention_head_dim`, no positional embedding.
/// - ModelScope `transformer_in`: 8 heads × `attention_head_dim` (inner width may differ from
///   `in_channels`, e.g. 64 on 32 channels).
/// - AnimateDiff motion modules (`AnimateDiffTransformer3D`): `heads =
///   motion_num_attention_heads`, `head_dim = C / heads`, `max_positions =
///   Some(motion_max_seq_length)`, groups = `motion_norm_num_groups`.
///
/// diffusers' `cross_attention_dim` argument has no effect in these layers
/// (`double_self_attention=True` makes `attn2` a self-attention, and no text states are
/// passed), so it is not a field.
#[derive(Config, Debug)]
pub struct TransformerTemporalModelConfig {
    /// Input and output channels (`in_channels`).
    pub in_channels: usize,
    /// Number of heads (`num_attention_heads`).
    pub heads: usize,
    /// Channels per head (`attention_head_dim`); inner width = `heads · head_dim`.
    pub head_dim: usize,
    /// Number of transformer blocks (`num_layers`).
    #[config(default = 1)]
    pub num_layers: usize,
    /// GroupNorm groups (`norm_num_groups`).
    #[config(default = 32)]
    pub norm_num_groups: usize,
    /// GroupNorm epsilon (diffusers hard-codes 1e-6).
    #[config(default = 1e-6)]
    pub norm_eps_group: f64,
    /// LayerNorm epsilon inside the blocks.
    #[config(default = 1e-5)]
    pub norm_eps: f64,
    /// Rows of the sinusoidal positional embedding (`num_positional_embeddings` with
    /// `positional_embeddings="sinusoidal"`): `Some(motion_max_seq_length)` for AnimateDiff,
    /// `None` for ModelScope.
    #[config(default = "None")]
    pub max_positions: Option<usize>,
    /// Bias on q/k/v (`attention_bias`).
    #[config(default = false)]
    pub attention_bias: bool,
    /// GroupNorm statistics across frames (diffusers, default) or per frame (original
    /// AnimateDiff).
    #[config(default = "TemporalNorm::AcrossFrames")]
    pub norm: TemporalNorm,
}

impl TransformerTemporalModelConfig {
    /// Inner width `heads · head_dim`.
    pub fn inner_dim(&self) -> usize {
        self.heads * self.head_dim
    }

    fn block(&self) -> BasicTransformerBlockConfig {
        BasicTransformerBlockConfig::new(self.inner_dim(), self.heads, self.head_dim)
            .with_double_self_attention(true)
            .with_attention_bias(self.attention_bias)
            .with_norm_eps(self.norm_eps)
            .with_num_positional_embeddings(self.max_positions)
    }

    /// Checks the configuration, naming the offending field.
    pub fn validate(&self) -> Result<()> {
        ensure_groups("norm_num_groups", self.in_channels, self.norm_num_groups)?;
        ensure_eps("norm_eps_group", self.norm_eps_group)?;
        ensure_nonzero("num_layers", self.num_layers)?;
        self.block().validate()
    }

    /// Validates and builds the model.
    pub fn try_init(&self, device: &Device) -> Result<TransformerTemporalModel> {
        self.validate()?;
        let inner = self.inner_dim();
        let block = self.block();
        Ok(TransformerTemporalModel {
            norm: GroupNormConfig::new(self.norm_num_groups, self.in_channels)
                .with_epsilon(self.norm_eps_group)
                .init(device),
            proj_in: LinearConfig::new(self.in_channels, inner).init(device),
            transformer_blocks: (0..self.num_layers)
                .map(|_| block.try_init(device))
                .collect::<Result<_>>()?,
            proj_out: LinearConfig::new(inner, self.in_channels).init(device),
            in_channels: self.in_channels,
            per_frame_norm: self.norm == TemporalNorm::PerFrame,
        })
    }
}

/// Temporal transformer: GroupNorm → tokens `[B·H·W, F, C]` → `proj_in` → blocks (attention
/// stages through the [`TemporalHook`], feed-forward on the full sequence) → `proj_out` →
/// back to the video layout → + input.
///
/// Covers diffusers `TransformerTemporalModel` (ModelScope) and `AnimateDiffTransformer3D`
/// (motion modules), which share the checkpoint layout: `norm`, `proj_in`,
/// `transformer_blocks.N.{norm1,attn1,norm2,attn2,norm3,ff,pos_embed}`, `proj_out`.
#[derive(Module, Debug)]
pub struct TransformerTemporalModel {
    /// GroupNorm on the input (eps 1e-6).
    pub norm: GroupNorm,
    /// `in_channels → inner_dim`.
    pub proj_in: Linear,
    /// The transformer blocks (double self-attention over frames).
    pub transformer_blocks: Vec<BasicTransformerBlock>,
    /// `inner_dim → in_channels`.
    pub proj_out: Linear,
    /// Input / output channels.
    pub in_channels: usize,
    /// GroupNorm per frame ([`TemporalNorm::PerFrame`]) instead of across frames.
    pub per_frame_norm: bool,
}

impl TransformerTemporalModel {
    /// Length of the positional-embedding table, if the blocks have one.
    pub fn max_positions(&self) -> Option<usize> {
        self.transformer_blocks
            .iter()
            .filter_map(|b| b.pos_embed.as_ref().map(|p| p.max_seq_length()))
            .min()
    }

    /// Applies the layer to a video.
    ///
    /// `layer` is the layer's module path (e.g. `down_blocks.0.motion_modules.1`), passed to
    /// the hook in the [`TemporalSite`] of every block's call.
    ///
    /// # Shapes
    /// - `x`: `[B, in_channels, F, H, W]`
    /// - output: `[B, in_channels, F, H, W]`
    pub fn forward(&self, x: Tensor<5>, hook: &dyn TemporalHook, layer: &str) -> Result<Tensor<5>> {
        let shape = expect_video(&x, self.in_channels)?;
        let fused = cpu::enabled(&x.device(), x.dtype());
        let normed = if self.per_frame_norm {
            let frames = frames_to_batch(x.clone());
            let normed = if fused {
                cpu::group_norm(&self.norm, frames, 1, false)
            } else {
                self.norm.forward(frames)
            };
            batch_to_frames(normed, shape.frames)
        } else if fused {
            // [B, C, F·H·W]: the groups are contiguous, statistics across all frames.
            cpu::group_norm(&self.norm, x.clone(), 1, false)
        } else {
            self.norm.forward(x.clone())
        };
        let mut t = self.proj_in.forward(video_to_frame_tokens(normed));
        let mut site = TemporalSite::new(layer, shape.frames).with_spatial(
            shape.batch,
            shape.height,
            shape.width,
        );
        if let Some(max) = self.max_positions() {
            site = site.with_max_positions(max);
        }
        for block in &self.transformer_blocks {
            let fused = hook.apply(&site, t, block)?;
            if fused.dims()[1] != shape.frames {
                return Err(Error::shape(
                    "temporal hook output",
                    format!("[B·H·W, F, C] with F = {}", shape.frames),
                    &fused.dims(),
                ));
            }
            t = block.feed_forward(fused);
        }
        let t = self.proj_out.forward(t);
        Ok(frame_tokens_to_video(t, shape.batch, shape.height, shape.width) + x)
    }

    /// Applies the layer to frames folded into the batch, as diffusers'
    /// `forward(hidden_states, num_frames=F)`.
    ///
    /// # Shapes
    /// - `x`: `[B·F, in_channels, H, W]`
    /// - output: `[B·F, in_channels, H, W]`
    pub fn forward_frames(
        &self,
        x: Tensor<4>,
        num_frames: usize,
        hook: &dyn TemporalHook,
        layer: &str,
    ) -> Result<Tensor<4>> {
        let video = unfold_frames(x, num_frames)?;
        Ok(frames_to_batch(self.forward(video, hook, layer)?))
    }
}

#[cfg(test)]
mod tests;
