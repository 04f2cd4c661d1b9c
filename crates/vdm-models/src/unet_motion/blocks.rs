//! The down, mid and up blocks of AnimateDiff's `UNetMotionModel`, mirroring diffusers'
//! `models/unets/unet_motion_model.py` (`DownBlockMotion`, `CrossAttnDownBlockMotion`,
//! `UNetMidBlockCrossAttnMotion`, `UpBlockMotion`, `CrossAttnUpBlockMotion`; without motion
//! modules the mid block is `UNetMidBlock2DCrossAttn` of `unet_2d_blocks.py`).
//!
//! Each block interleaves per-frame layers (ResNets, spatial transformers, resamplers) on
//! `[B·F, C, H, W]` with motion modules ([`TransformerTemporalModel`], diffusers
//! `AnimateDiffTransformer3D`) that attend across the frames of every spatial position
//! through the [`TemporalHook`]. The cross-attention and plain variants of a block share one
//! type here: a plain block has an empty `attentions` list.

use burn::module::Module;
use burn::tensor::Tensor;
use vdm_core::layout::{
    batch_to_frames, frame_tokens_to_video, frames_to_batch, video_to_frame_tokens,
};
use vdm_core::temporal::{TemporalHook, TemporalSite};
use vdm_core::{Error, Result};

use crate::chunking::{Chunking, map_chunks};
use crate::resnet::{Downsample2D, ResnetBlock2D, Upsample2D};
use crate::temporal::TransformerTemporalModel;
use crate::transformer_2d::Transformer2DModel;

/// A callback receiving `(module path, activation [B·F, C, H, W])` at block boundaries, used
/// by [`super::UNetMotionModel::forward_traced`].
pub type Trace<'t> = dyn FnMut(&str, &Tensor<4>) + 't;

/// What every block needs besides its input.
#[derive(Clone)]
pub struct BlockContext<'a> {
    /// Time embedding per frame, `[B·F, temb_channels]` (before the ResNets' SiLU).
    pub temb: Tensor<2>,
    /// Text states per frame, `[B·F, S, cross_attention_dim]`; required by blocks with
    /// spatial transformers.
    pub encoder_hidden_states: Option<Tensor<3>>,
    /// Frames `F` per video.
    pub num_frames: usize,
    /// The temporal strategy every motion module hands its attention stages to.
    pub hook: &'a dyn TemporalHook,
    /// The key frames of every frame's spatial self-attention (`None`: its own frame), see
    /// [`vdm_core::cross_frame`].
    pub key_frames: Option<std::sync::Arc<Vec<Vec<usize>>>>,
    /// Chunk sizes of chunked inference.
    pub chunking: Chunking,
}

impl BlockContext<'_> {
    /// A ResNet over chunks of frames (the time embedding sliced alike).
    fn resnet(&self, resnet: &ResnetBlock2D, x: Tensor<4>) -> Result<Tensor<4>> {
        map_chunks(x, self.chunking.frames, |x, r| {
            let temb = self.temb.clone().narrow(0, r.start, r.len());
            resnet.forward(x, Some(temb))
        })
    }

    /// A spatial transformer over chunks of frames (the text states sliced alike); with
    /// cross-frame attention on whole videos.
    fn attention(&self, attn: &Transformer2DModel, x: Tensor<4>) -> Result<Tensor<4>> {
        let Some(context) = &self.encoder_hidden_states else {
            return Err(Error::invalid(
                "encoder_hidden_states",
                "this UNetMotionModel has cross-attention blocks and needs text conditioning",
            ));
        };
        if let Some(keys) = &self.key_frames {
            // Whole videos: a frame's key frames may lie in another chunk.
            return attn.forward_cross_frame(x, Some(context.clone()), keys);
        }
        map_chunks(x, self.chunking.frames, |x, r| {
            attn.forward(x, Some(context.clone().narrow(0, r.start, r.len())))
        })
    }

    /// A per-frame layer over chunks of frames.
    fn per_frame(
        &self,
        x: Tensor<4>,
        f: impl Fn(Tensor<4>) -> Result<Tensor<4>>,
    ) -> Result<Tensor<4>> {
        map_chunks(x, self.chunking.frames, |x, _| f(x))
    }

    /// A motion module (diffusers `AnimateDiffTransformer3D.forward(x, num_frames)`), its
    /// attention stages run by the hook; `layer` is its module path.
    ///
    /// Without position chunking this is [`TransformerTemporalModel::forward_frames`]; with it,
    /// the input GroupNorm runs on the whole video (its statistics span all positions) and
    /// `proj_in` → blocks → `proj_out` run on chunks of spatial positions.
    pub fn motion(
        &self,
        module: &TransformerTemporalModel,
        x: Tensor<4>,
        layer: &str,
    ) -> Result<Tensor<4>> {
        let frames = self.num_frames;
        let Some(chunk) = self.chunking.positions else {
            return module.forward_frames(x, frames, self.hook, layer);
        };
        let [n, c, h, w] = x.dims();
        if frames == 0 || !n.is_multiple_of(frames) {
            return Err(Error::shape(
                "hidden_states",
                format!("[B·F, C, H, W] with a batch divisible by num_frames = {frames}"),
                &x.dims(),
            ));
        }
        if c != module.in_channels {
            return Err(Error::shape(
                "hidden_states",
                format!("[B·F, C, H, W] with C = {}", module.in_channels),
                &x.dims(),
            ));
        }
        let batch = n / frames;
        let video = batch_to_frames(x, frames);
        let normed = if module.per_frame_norm {
            batch_to_frames(module.norm.forward(frames_to_batch(video.clone())), frames)
        } else {
            module.norm.forward(video.clone())
        };
        let mut site = TemporalSite::new(layer, frames);
        if let Some(max) = module.max_positions() {
            site = site.with_max_positions(max);
        }
        if chunk >= batch * h * w {
            // One chunk holds every position, in the order b·H·W + h·W + w.
            site = site.with_spatial(batch, h, w);
        }
        let tokens = video_to_frame_tokens(normed);
        let out = map_chunks(tokens, Some(chunk), |t, _| {
            let mut t = module.proj_in.forward(t);
            for block in &module.transformer_blocks {
                let fused = self.hook.apply(&site, t, block)?;
                if fused.dims()[1] != frames {
                    return Err(Error::shape(
                        "temporal hook output",
                        format!("[B·H·W, F, C] with F = {frames}"),
                        &fused.dims(),
                    ));
                }
                t = block.feed_forward(fused);
            }
            Ok(module.proj_out.forward(t))
        })?;
        Ok(frames_to_batch(
            frame_tokens_to_video(out, batch, h, w) + video,
        ))
    }
}

/// A down block: `layers × (ResNet → [spatial transformer] → motion module)` then an optional
/// stride-2 downsampler (diffusers `CrossAttnDownBlockMotion` / `DownBlockMotion`).
///
/// Checkpoint keys: `resnets.N`, `attentions.N`, `motion_modules.N`, `downsamplers.0`.
#[derive(Module, Debug)]
pub struct DownBlockMotion {
    /// One ResNet per layer.
    pub resnets: Vec<ResnetBlock2D>,
    /// One spatial transformer per layer (empty for `DownBlockMotion`).
    pub attentions: Vec<Transformer2DModel>,
    /// One motion module per layer.
    pub motion_modules: Vec<TransformerTemporalModel>,
    /// The downsampler (absent in the last block).
    pub downsamplers: Vec<Downsample2D>,
}

impl DownBlockMotion {
    /// Runs the block; `path` is its module path (`down_blocks.1`), used for the motion
    /// modules' layer names and the trace.
    ///
    /// # Shapes
    /// - `x`: `[B·F, C_in, H, W]`
    /// - output: `[B·F, C_out, H', W']` and the skip tensors (one per layer, plus the
    ///   downsampler's output), in order
    pub fn forward(
        &self,
        mut x: Tensor<4>,
        ctx: &BlockContext<'_>,
        path: &str,
        trace: &mut Trace<'_>,
    ) -> Result<(Tensor<4>, Vec<Tensor<4>>)> {
        let mut skips = Vec::with_capacity(self.resnets.len() + 1);
        for (j, (resnet, motion)) in self.resnets.iter().zip(&self.motion_modules).enumerate() {
            x = ctx.resnet(resnet, x)?;
            trace(&format!("{path}.resnets.{j}"), &x);
            if let Some(attn) = self.attentions.get(j) {
                x = ctx.attention(attn, x)?;
                trace(&format!("{path}.attentions.{j}"), &x);
            }
            let name = format!("{path}.motion_modules.{j}");
            x = ctx.motion(motion, x, &name)?;
            trace(&name, &x);
            skips.push(x.clone());
        }
        for down in &self.downsamplers {
            x = ctx.per_frame(x, |x| down.forward(x))?;
            trace(&format!("{path}.downsamplers.0"), &x);
            skips.push(x.clone());
        }
        Ok((x, skips))
    }
}

/// The mid block: ResNet, then `layers × (spatial transformer → motion module → ResNet)`
/// (diffusers `UNetMidBlockCrossAttnMotion`; with `use_motion_mid_block = false` there are no
/// motion modules, diffusers `UNetMidBlock2DCrossAttn`).
///
/// Checkpoint keys: `resnets.N`, `attentions.N`, `motion_modules.N`.
#[derive(Module, Debug)]
pub struct MidBlockMotion {
    /// `layers + 1` ResNets.
    pub resnets: Vec<ResnetBlock2D>,
    /// One spatial transformer per layer.
    pub attentions: Vec<Transformer2DModel>,
    /// One motion module per layer (empty without a motion mid block).
    pub motion_modules: Vec<TransformerTemporalModel>,
}

impl MidBlockMotion {
    /// Runs the block; `path` is its module path (`mid_block`).
    ///
    /// # Shapes
    /// - `x`: `[B·F, C, H, W]`
    /// - output: `[B·F, C, H, W]`
    pub fn forward(
        &self,
        x: Tensor<4>,
        ctx: &BlockContext<'_>,
        path: &str,
        trace: &mut Trace<'_>,
    ) -> Result<Tensor<4>> {
        let Some(first) = self.resnets.first() else {
            return Err(Error::invalid("mid_block", "has no ResNet"));
        };
        let mut x = ctx.resnet(first, x)?;
        trace(&format!("{path}.resnets.0"), &x);
        for (i, (attn, resnet)) in self.attentions.iter().zip(&self.resnets[1..]).enumerate() {
            x = ctx.attention(attn, x)?;
            trace(&format!("{path}.attentions.{i}"), &x);
            if let Some(motion) = self.motion_modules.get(i) {
                let name = format!("{path}.motion_modules.{i}");
                x = ctx.motion(motion, x, &name)?;
                trace(&name, &x);
            }
            x = ctx.resnet(resnet, x)?;
            trace(&format!("{path}.resnets.{}", i + 1), &x);
        }
        Ok(x)
    }
}

/// An up block: `layers × (concat skip → ResNet → [spatial transformer] → motion module)`
/// then an optional nearest-×2 upsampler (diffusers `CrossAttnUpBlockMotion` /
/// `UpBlockMotion`).
///
/// Checkpoint keys: `resnets.N`, `attentions.N`, `motion_modules.N`, `upsamplers.0`.
#[derive(Module, Debug)]
pub struct UpBlockMotion {
    /// One ResNet per layer (input = hidden channels + skip channels).
    pub resnets: Vec<ResnetBlock2D>,
    /// One spatial transformer per layer (empty for `UpBlockMotion`).
    pub attentions: Vec<Transformer2DModel>,
    /// One motion module per layer.
    pub motion_modules: Vec<TransformerTemporalModel>,
    /// The upsampler (absent in the last block).
    pub upsamplers: Vec<Upsample2D>,
}

impl UpBlockMotion {
    /// Runs the block, popping one skip tensor per layer from the end of `skips` and
    /// concatenating it after the hidden state (`cat([h, skip], dim=1)`); `upsample_size`
    /// forces the upsampler's output size (diffusers forwards it for odd latent sizes).
    ///
    /// # Shapes
    /// - `x`: `[B·F, C_prev, H, W]`
    /// - output: `[B·F, C_out, 2H, 2W]` (or `upsample_size`; `[…, H, W]` in the last block)
    pub fn forward(
        &self,
        mut x: Tensor<4>,
        skips: &mut Vec<Tensor<4>>,
        upsample_size: Option<[usize; 2]>,
        ctx: &BlockContext<'_>,
        path: &str,
        trace: &mut Trace<'_>,
    ) -> Result<Tensor<4>> {
        for (j, (resnet, motion)) in self.resnets.iter().zip(&self.motion_modules).enumerate() {
            let Some(skip) = skips.pop() else {
                return Err(Error::invalid(
                    "down_block_res_samples",
                    format!("{path} ran out of skip connections"),
                ));
            };
            x = Tensor::cat(vec![x, skip], 1);
            x = ctx.resnet(resnet, x)?;
            trace(&format!("{path}.resnets.{j}"), &x);
            if let Some(attn) = self.attentions.get(j) {
                x = ctx.attention(attn, x)?;
                trace(&format!("{path}.attentions.{j}"), &x);
            }
            let name = format!("{path}.motion_modules.{j}");
            x = ctx.motion(motion, x, &name)?;
            trace(&name, &x);
        }
        for up in &self.upsamplers {
            x = ctx.per_frame(x, |x| up.forward(x, upsample_size))?;
            trace(&format!("{path}.upsamplers.0"), &x);
        }
        Ok(x)
    }
}
