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
mod tests {
    use super::*;
    use std::sync::Mutex;

    use burn::tensor::{Bool, Distribution, TensorData, Tolerance};
    use vdm_core::AllFrames;
    use vdm_core::temporal::{FrameWindow, TemporalStages, run_chain};

    fn dev() -> Device {
        Device::flex()
    }

    fn rand<const D: usize>(shape: [usize; D]) -> Tensor<D> {
        Tensor::random(shape, Distribution::Normal(0.0, 1.0), &dev())
    }

    fn close<const D: usize>(a: Tensor<D>, b: Tensor<D>, tol: f32) {
        a.into_data()
            .assert_approx_eq::<f32>(&b.into_data(), Tolerance::absolute(tol));
    }

    fn motion_config() -> TransformerTemporalModelConfig {
        TransformerTemporalModelConfig::new(16, 2, 8)
            .with_norm_num_groups(4)
            .with_max_positions(Some(8))
    }

    #[test]
    fn fresh_temporal_conv_is_the_identity() {
        let layer = TemporalConvLayerConfig::new(8)
            .with_norm_num_groups(4)
            .with_dropout(0.1)
            .try_init(&dev())
            .unwrap();
        assert_eq!(layer.conv2.conv.weight.dims(), [8, 8, 3, 1, 1]);
        let x = rand([2, 8, 5, 3, 4]);
        let y = layer.forward(x.clone()).unwrap();
        y.into_data().assert_eq(&x.clone().into_data(), true);
        let frames = frames_to_batch(x);
        let y = layer.forward_frames(frames.clone(), 5).unwrap();
        y.into_data().assert_eq(&frames.clone().into_data(), true);
        assert!(layer.forward_frames(frames, 3).is_err());
    }

    #[test]
    fn temporal_conv_mixes_neighbouring_frames_only() {
        let mut layer = TemporalConvLayerConfig::new(4)
            .with_norm_num_groups(2)
            .try_init(&dev())
            .unwrap();
        layer.conv4 = TemporalConvLayerConfig::new(4)
            .with_norm_num_groups(2)
            .try_init(&dev())
            .unwrap()
            .conv1;
        let x = rand([1, 4, 6, 2, 2]);
        let y = layer.forward(x.clone()).unwrap();
        // Reference: the four stages applied one by one.
        let mut h = x.clone();
        for s in [&layer.conv1, &layer.conv2, &layer.conv3, &layer.conv4] {
            h = s.conv.forward(silu(s.norm.forward(h)));
        }
        close(y, x + h, 1e-5);
        let e = layer
            .forward(rand([1, 5, 6, 2, 2]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("hidden_states") && e.contains("C = 4"), "{e}");
    }

    /// The layer computed without the hook, block by block as diffusers writes it.
    fn direct(model: &TransformerTemporalModel, x: Tensor<5>) -> Tensor<5> {
        let [b, _, f, h, w] = x.dims();
        let normed = if model.per_frame_norm {
            batch_to_frames(model.norm.forward(frames_to_batch(x.clone())), f)
        } else {
            model.norm.forward(x.clone())
        };
        let mut t = model.proj_in.forward(video_to_frame_tokens(normed));
        for block in &model.transformer_blocks {
            t = block.forward(t, None).unwrap();
        }
        frame_tokens_to_video(model.proj_out.forward(t), b, h, w) + x
    }

    #[test]
    fn all_frames_equals_direct_computation() {
        for norm in [TemporalNorm::AcrossFrames, TemporalNorm::PerFrame] {
            let model = motion_config()
                .with_num_layers(2)
                .with_norm(norm)
                .try_init(&dev())
                .unwrap();
            let x = rand([2, 16, 6, 2, 3]);
            let y = model.forward(x.clone(), &AllFrames, "test").unwrap();
            assert_eq!(y.dims(), [2, 16, 6, 2, 3]);
            close(y, direct(&model, x), 1e-5);
        }
        // ModelScope transformer_in: inner width 64 on 32 channels, no positional embedding.
        let model = TransformerTemporalModelConfig::new(32, 8, 8)
            .with_norm_num_groups(8)
            .try_init(&dev())
            .unwrap();
        assert_eq!(model.proj_in.weight.dims(), [32, 64]);
        assert_eq!(model.max_positions(), None);
        let x = rand([1, 32, 3, 2, 2]);
        let y = model
            .forward(x.clone(), &AllFrames, "transformer_in")
            .unwrap();
        close(y, direct(&model, x), 1e-5);
    }

    #[test]
    fn per_frame_norm_differs_from_across_frames() {
        let mut a = motion_config().try_init(&dev()).unwrap();
        let b = motion_config()
            .with_norm(TemporalNorm::PerFrame)
            .try_init(&dev())
            .unwrap();
        a.proj_in = b.proj_in.clone();
        a.proj_out = b.proj_out.clone();
        a.transformer_blocks = b.transformer_blocks.clone();
        let x = rand([1, 16, 4, 2, 2]);
        let da = a.forward(x.clone(), &AllFrames, "m").unwrap();
        let db = b.forward(x, &AllFrames, "m").unwrap();
        let diff: f32 = (da - db).abs().max().into_scalar();
        assert!(diff > 1e-3, "{diff}");
    }

    /// One recorded hook call: layer, frames, table length, window start/end, positions.
    type Call = (
        String,
        usize,
        Option<usize>,
        usize,
        usize,
        std::ops::Range<usize>,
    );

    /// Splits the frames into two halves, each with window-relative positions; records every
    /// call it makes.
    #[derive(Default)]
    struct TwoWindows {
        calls: Mutex<Vec<Call>>,
    }

    impl TemporalHook for TwoWindows {
        fn apply(
            &self,
            site: &TemporalSite<'_>,
            tokens: Tensor<3>,
            stages: &dyn TemporalStages,
        ) -> vdm_core::Result<Tensor<3>> {
            let [n, f, c] = tokens.dims();
            let half = f / 2;
            let mut outs = Vec::new();
            for (s, e) in [(0, half), (half, f)] {
                let window = FrameWindow::relative(s, e);
                site.check_positions(&window.positions)?;
                self.calls.lock().unwrap().push((
                    site.layer.to_string(),
                    site.num_frames,
                    site.max_positions,
                    s,
                    e,
                    window.positions.clone(),
                ));
                let part = tokens.clone().slice([0..n, s..e, 0..c]);
                outs.push(run_chain(stages, part, &window)?);
            }
            Ok(Tensor::cat(outs, 1))
        }
    }

    #[test]
    fn custom_hook_sees_windows_with_relative_positions() {
        let model = motion_config().try_init(&dev()).unwrap();
        let hook = TwoWindows::default();
        let x = rand([1, 16, 12, 2, 2]);
        // 12 frames exceed the 8-row table for AllFrames ...
        let e = model
            .forward(x.clone(), &AllFrames, "down_blocks.0.motion_modules.0")
            .unwrap_err()
            .to_string();
        assert!(e.contains("num_frames") && e.contains('8'), "{e}");
        // ... but two windows of 6 with window-relative positions fit.
        let y = model
            .forward(x.clone(), &hook, "down_blocks.0.motion_modules.0")
            .unwrap();
        let calls = hook.calls.lock().unwrap().clone();
        assert_eq!(
            calls,
            vec![
                (
                    "down_blocks.0.motion_modules.0".into(),
                    12,
                    Some(8),
                    0,
                    6,
                    0..6
                ),
                (
                    "down_blocks.0.motion_modules.0".into(),
                    12,
                    Some(8),
                    6,
                    12,
                    0..6
                ),
            ]
        );
        // Each window equals the block chain run on that half of the frames alone.
        let block = &model.transformer_blocks[0];
        let t = model
            .proj_in
            .forward(video_to_frame_tokens(model.norm.forward(x.clone())));
        let [n, _, c] = t.dims();
        let halves: Vec<Tensor<3>> = [(0, 6), (6, 12)]
            .into_iter()
            .map(|(s, e)| {
                let part = t.clone().slice([0..n, s..e, 0..c]);
                block.forward(part, None).unwrap()
            })
            .collect();
        let want =
            frame_tokens_to_video(model.proj_out.forward(Tensor::cat(halves, 1)), 1, 2, 2) + x;
        close(y, want, 1e-5);
    }

    /// Passes a causal mask to every stage.
    struct Causal;

    impl TemporalHook for Causal {
        fn apply(
            &self,
            _site: &TemporalSite<'_>,
            tokens: Tensor<3>,
            stages: &dyn TemporalStages,
        ) -> vdm_core::Result<Tensor<3>> {
            let f = tokens.dims()[1];
            let m: Vec<bool> = (0..f * f).map(|i| i % f > i / f).collect();
            let mut window = FrameWindow::full(f);
            window.mask = Some(Tensor::<2, Bool>::from_data(
                TensorData::new(m, [f, f]),
                &tokens.device(),
            ));
            run_chain(stages, tokens, &window)
        }
    }

    #[test]
    fn window_mask_is_honoured() {
        // With a causal mask, frame k's output cannot depend on later frames (per-frame
        // GroupNorm, so that the normalisation does not couple the frames either).
        let model = motion_config()
            .with_norm(TemporalNorm::PerFrame)
            .try_init(&dev())
            .unwrap();
        let x = rand([1, 16, 5, 1, 2]);
        let x2 = x
            .clone()
            .slice_assign([0..1, 0..16, 4..5, 0..1, 0..2], rand([1, 16, 1, 1, 2]));
        let head = |t: Tensor<5>| t.slice([0..1, 0..16, 0..4, 0..1, 0..2]);
        let a = model.forward(x.clone(), &Causal, "m").unwrap();
        let b = model.forward(x2.clone(), &Causal, "m").unwrap();
        close(head(a), head(b), 1e-5);
        // Without the mask the last frame does leak into the earlier ones.
        let a = model.forward(x, &AllFrames, "m").unwrap();
        let b = model.forward(x2, &AllFrames, "m").unwrap();
        let d: f32 = (head(a) - head(b)).abs().max().into_scalar();
        assert!(d > 1e-4, "{d}");
    }

    #[test]
    fn bad_temporal_configs_name_the_field() {
        let e = TemporalConvLayerConfig::new(30)
            .validate()
            .unwrap_err()
            .to_string();
        assert!(e.contains("norm_num_groups"), "{e}");
        let e = TransformerTemporalModelConfig::new(32, 4, 8)
            .with_norm_num_groups(5)
            .validate()
            .unwrap_err()
            .to_string();
        assert!(e.contains("norm_num_groups"), "{e}");
        let e = TransformerTemporalModelConfig::new(32, 0, 8)
            .with_norm_num_groups(8)
            .validate()
            .unwrap_err()
            .to_string();
        assert!(e.contains("num_attention_heads"), "{e}");
        let e = TransformerTemporalModelConfig::new(32, 3, 5)
            .with_norm_num_groups(8)
            .with_max_positions(Some(32))
            .validate()
            .unwrap_err()
            .to_string();
        assert!(e.contains("embed_dim"), "{e}");
        let model = motion_config().try_init(&dev()).unwrap();
        let e = model
            .forward_frames(rand([5, 16, 2, 2]), 2, &AllFrames, "m")
            .unwrap_err()
            .to_string();
        assert!(e.contains("num_frames"), "{e}");
    }

    mod oracle {
        use super::*;
        use crate::attention::BasicTransformerBlockConfig;
        use crate::keymap::test_support::{assert_close, load, tensor};
        use crate::resnet::{Downsample2DConfig, ResnetBlock2DConfig};
        use crate::transformer_2d::Transformer2DModelConfig;

        const IO: &str = "unet3d_io.safetensors";
        const W: &str = "unet3d_weights.safetensors";

        /// ModelScope's temporal layers of the tiny UNet3D (`small` case: B = 1, F = 4, 8×8),
        /// each fed with diffusers' own input activation.
        #[test]
        fn unet3d_temporal_layers_match_diffusers() {
            let d = dev();
            let act = |k: &str| tensor::<4>(IO, &format!("small.act.{k}"), &d);

            // transformer_in: 8 heads × attention_head_dim 8 on 32 channels (inner 64).
            let tin = TransformerTemporalModelConfig::new(32, 8, 8)
                .with_norm_num_groups(8)
                .try_init(&d)
                .unwrap();
            let tin = load(tin, W, "transformer_in.");
            let y = tin
                .forward_frames(act("conv_in"), 4, &AllFrames, "transformer_in")
                .unwrap();
            assert_close("transformer_in", y, act("transformer_in"), 1e-4);

            // down_blocks.0.temp_convs.0 (GroupNorm eps 1e-5, 8 groups).
            let conv = TemporalConvLayerConfig::new(32)
                .with_norm_num_groups(8)
                .with_dropout(0.1)
                .try_init(&d)
                .unwrap();
            let conv = load(conv, W, "down_blocks.0.temp_convs.0.");
            let y = conv
                .forward_frames(act("down_blocks.0.resnets.0"), 4)
                .unwrap();
            assert_close("temp_convs.0", y, act("down_blocks.0.temp_convs.0"), 1e-4);

            // down_blocks.0.temp_attentions.0: 4 heads × 8.
            let ta = TransformerTemporalModelConfig::new(32, 4, 8)
                .with_norm_num_groups(8)
                .try_init(&d)
                .unwrap();
            let ta = load(ta, W, "down_blocks.0.temp_attentions.0.");
            let y = ta
                .forward_frames(
                    act("down_blocks.0.attentions.0"),
                    4,
                    &AllFrames,
                    "down_blocks.0.temp_attentions.0",
                )
                .unwrap();
            assert_close(
                "temp_attentions.0",
                y,
                act("down_blocks.0.temp_attentions.0"),
                1e-4,
            );
        }

        /// AnimateDiff's first down block of the tiny UNetMotionModel, chained from `conv_in`:
        /// resnet → spatial transformer (1×1-conv projections, 8 heads × 4) → motion module
        /// (4 heads × 8, sinusoidal positions) → downsampler.
        #[test]
        fn animatediff_down_block_matches_diffusers() {
            let d = dev();
            const IO: &str = "motion_io.safetensors";
            const W: &str = "motion_weights.safetensors";
            let act = |k: &str| tensor::<4>(IO, &format!("small.act.{k}"), &d);
            let temb = tensor::<2>(IO, "small.act.time_embedding", &d).repeat_dim(0, 4);
            let context = tensor::<3>(IO, "small.encoder_hidden_states_repeated", &d);

            let resnet = ResnetBlock2DConfig::new(32)
                .with_temb_channels(Some(128))
                .with_groups(8)
                .with_eps(1e-5)
                .try_init(&d)
                .unwrap();
            let resnet = load(resnet, W, "down_blocks.0.resnets.0.");
            let attn = Transformer2DModelConfig::new(32, 8, 4)
                .with_norm_num_groups(8)
                .with_cross_attention_dim(Some(32))
                .try_init(&d)
                .unwrap();
            let attn = load(attn, W, "down_blocks.0.attentions.0.");
            let motion = TransformerTemporalModelConfig::new(32, 4, 8)
                .with_norm_num_groups(8)
                .with_max_positions(Some(32))
                .try_init(&d)
                .unwrap();
            let motion = load(motion, W, "down_blocks.0.motion_modules.0.");
            assert_eq!(motion.max_positions(), Some(32));
            let down = Downsample2DConfig::new(32).try_init(&d).unwrap();
            let down = load(down, W, "down_blocks.0.downsamplers.0.");

            let h = resnet.forward(act("conv_in"), Some(temb)).unwrap();
            let h = attn.forward(h, Some(context)).unwrap();
            let h = motion
                .forward_frames(h, 4, &AllFrames, "down_blocks.0.motion_modules.0")
                .unwrap();
            assert_close(
                "motion_modules.0",
                h.clone(),
                act("down_blocks.0.motion_modules.0"),
                1e-4,
            );
            let h = down.forward(h).unwrap();
            assert_close("down_blocks.0", h, act("down_blocks.0"), 1e-4);
        }

        /// The saved motion-module table equals the one diffusers computes at construction.
        #[test]
        fn default_positional_table_matches_checkpoint_buffer() {
            let d = dev();
            let block = BasicTransformerBlockConfig::new(64, 4, 16)
                .with_double_self_attention(true)
                .with_num_positional_embeddings(Some(32))
                .try_init(&d)
                .unwrap();
            let saved = tensor::<3>(
                "motion_weights.safetensors",
                "down_blocks.1.motion_modules.0.transformer_blocks.0.pos_embed.pe",
                &d,
            );
            assert_close(
                "pos_embed.pe",
                block.pos_embed.unwrap().pe.val(),
                saved,
                1e-6,
            );
        }
    }
}
