//! The 3-D down, mid and up blocks of [`UNet3DConditionModel`](super::UNet3DConditionModel),
//! mirroring diffusers' `models/unets/unet_3d_blocks.py` (`CrossAttnDownBlock3D`,
//! `DownBlock3D`, `UNetMidBlock3DCrossAttn`, `CrossAttnUpBlock3D`, `UpBlock3D`).
//!
//! Every block works on frames folded into the batch (`[B·F, C, H, W]`, index `b·F + f`).
//! Spatial layers (resnets, spatial transformers, samplers) run over chunks of frames and
//! temporal transformers over chunks of spatial positions when a [`Chunking`] is set; temporal
//! attention goes through the pass's [`TemporalHook`] with the layer's module path as its name.

use burn::module::Module;
use burn::tensor::Tensor;
use vdm_core::temporal::{TemporalHook, TemporalSite};
use vdm_core::{Error, Result};

use crate::chunking::{Chunking, map_chunks};
use crate::resnet::{
    Downsample2D, Downsample2DConfig, ResnetBlock2D, ResnetBlock2DConfig, Upsample2D,
    Upsample2DConfig,
};
use crate::temporal::{
    TemporalConvLayer, TemporalConvLayerConfig, TransformerTemporalModel,
    TransformerTemporalModelConfig,
};
use crate::transformer_2d::{Transformer2DModel, Transformer2DModelConfig};

use super::config::{DownBlockKind, UNet3DConditionModelConfig, UpBlockKind};

/// Dropout of diffusers' `TemporalConvLayer` in the 3-D blocks (recorded only: inference runs
/// without dropout, as diffusers in `.eval()` mode).
const TEMP_CONV_DROPOUT: f64 = 0.1;

/// A callback receiving named intermediate activations (see
/// [`UNet3DConditionModel::forward_with_taps`](super::UNet3DConditionModel::forward_with_taps)).
pub type Tap<'a> = &'a mut dyn FnMut(&str, Tensor<4>);

/// Everything one forward pass shares between blocks.
pub(crate) struct Pass<'h, 't> {
    /// Frames per video `F`.
    pub frames: usize,
    /// Time embedding per frame, `[B·F, time_embed_dim]` (pre-SiLU, as diffusers'
    /// `emb.repeat_interleave(F)`).
    pub temb: Tensor<2>,
    /// Text context per frame, `[B·F, S, D]`.
    pub context: Tensor<3>,
    /// The text context per video `[B, S, D]`, when all frames of a video share it.
    pub shared_context: Option<Tensor<3>>,
    /// The temporal strategy.
    pub hook: &'h dyn TemporalHook,
    /// The key frames of every frame's spatial self-attention (`None`: its own frame), see
    /// [`vdm_core::cross_frame`].
    pub key_frames: Option<Vec<Vec<usize>>>,
    /// Chunk sizes.
    pub chunking: Chunking,
    /// Optional activation observer.
    pub tap: Option<Tap<'t>>,
}

impl Pass<'_, '_> {
    /// Reports `x` under the name `name()` if someone listens.
    pub fn emit(&mut self, name: impl FnOnce() -> String, x: &Tensor<4>) {
        if let Some(tap) = self.tap.as_mut() {
            tap(&name(), x.clone());
        }
    }

    /// A resnet over chunks of frames, with the matching rows of the time embedding.
    pub fn resnet(&self, resnet: &ResnetBlock2D, x: Tensor<4>) -> Result<Tensor<4>> {
        map_chunks(x, self.chunking.frames, |x, r| {
            let temb = if r.len() == self.temb.dims()[0] {
                self.temb.clone()
            } else {
                self.temb.clone().narrow(0, r.start, r.len())
            };
            resnet.forward(x, Some(temb))
        })
    }

    /// A spatial transformer over chunks of frames, with the matching text contexts; with
    /// cross-frame attention on whole videos (a frame's keys may lie in another chunk).
    pub fn spatial(&self, attn: &Transformer2DModel, x: Tensor<4>) -> Result<Tensor<4>> {
        if let Some(keys) = &self.key_frames {
            let all = 0..x.dims()[0];
            return attn.forward_cross_frame(x, Some(self.context_for(all)), keys);
        }
        map_chunks(x, self.chunking.frames, |x, r| {
            attn.forward(x, Some(self.context_for(r)))
        })
    }

    /// The text context of the frames `r` (of `[B·F, …]`): one row per video when the frames
    /// of a video share it and `r` covers whole videos or lies inside one, else one row per
    /// frame.
    fn context_for(&self, r: std::ops::Range<usize>) -> Tensor<3> {
        let f = self.frames;
        if let Some(shared) = &self.shared_context {
            let (first, last) = (r.start / f, (r.end - 1) / f);
            if r.start.is_multiple_of(f) && r.end.is_multiple_of(f) {
                return if last + 1 - first == shared.dims()[0] {
                    shared.clone()
                } else {
                    shared.clone().narrow(0, first, last + 1 - first)
                };
            }
            if first == last {
                return shared.clone().narrow(0, first, 1);
            }
        }
        if r.len() == self.context.dims()[0] {
            self.context.clone()
        } else {
            self.context.clone().narrow(0, r.start, r.len())
        }
    }

    /// ModelScope's temporal convolution (frames mixed by a `(3, 1, 1)` kernel). Its
    /// GroupNorms pool statistics over all frames and positions, so it runs unchunked; its
    /// working memory is a few activation-sized tensors, like a resnet's.
    pub fn temp_conv(&self, conv: &TemporalConvLayer, x: Tensor<4>) -> Result<Tensor<4>> {
        conv.forward_frames(x, self.frames)
    }

    /// A temporal transformer over chunks of spatial positions, through the hook.
    pub fn temporal(
        &self,
        model: &TransformerTemporalModel,
        x: Tensor<4>,
        layer: &str,
    ) -> Result<Tensor<4>> {
        temporal_transformer(
            model,
            x,
            self.frames,
            self.hook,
            layer,
            self.chunking.positions,
        )
    }
}

/// diffusers' `TransformerTemporalModel.forward(x, num_frames)` on frames folded into the
/// batch, computed straight from and back to the `[B·F, C, H, W]` layout: the input GroupNorm
/// pools statistics over all frames of a video (as diffusers' GroupNorm on `[B, C, F, H, W]`)
/// without materialising the 5-D view, the tokens `[B·H·W, F, C]` are built with one permute,
/// the frame-mixing stages of every block go through `hook`, and `positions` (if set) bounds
/// the number of token sequences per call.
///
/// # Shapes
/// - `x`: `[B·F, C, H, W]`
/// - output: `[B·F, C, H, W]`
pub fn temporal_transformer(
    model: &TransformerTemporalModel,
    x: Tensor<4>,
    frames: usize,
    hook: &dyn TemporalHook,
    layer: &str,
    positions: Option<usize>,
) -> Result<Tensor<4>> {
    let [bf, c, h, w] = x.dims();
    if c != model.in_channels || frames == 0 || !bf.is_multiple_of(frames) || h * w == 0 {
        return Err(Error::shape(
            "hidden_states",
            format!(
                "[B·F, {}, H, W] with a batch divisible by num_frames = {frames}",
                model.in_channels
            ),
            &x.dims(),
        ));
    }
    let b = bf / frames;
    let hw = h * w;
    let normed = if crate::cpu::enabled(&x.device(), x.dtype()) {
        let pooled = if model.per_frame_norm { 1 } else { frames };
        crate::cpu::group_norm(&model.norm, x.clone(), pooled, false)
    } else if model.per_frame_norm {
        model.norm.forward(x.clone())
    } else {
        group_norm_across_frames(&model.norm, x.clone(), frames)
    };
    let mut site = TemporalSite::new(layer, frames);
    if let Some(max) = model.max_positions() {
        site = site.with_max_positions(max);
    }
    if positions.is_none_or(|p| p >= b * hw) {
        // One call sees every position, in the order b·H·W + h·W + w.
        site = site.with_spatial(b, h, w);
    }
    let run_blocks = |mut t: Tensor<3>| -> Result<Tensor<3>> {
        for block in &model.transformer_blocks {
            let fused = hook.apply(&site, t, block)?;
            if fused.dims()[1] != frames {
                return Err(Error::shape(
                    "temporal hook output",
                    format!("[B·H·W, F, C] with F = {frames}"),
                    &fused.dims(),
                ));
            }
            t = block.feed_forward(fused);
        }
        Ok(t)
    };
    if crate::cpu::enabled(&x.device(), x.dtype()) {
        // Fused: the projections read / write the frame layout directly (no token permutes),
        // the output projection adds the residual, and chunks of `positions` token sequences
        // never exist as full-size token tensors.
        let seqs = b * hw;
        let per_call = positions.unwrap_or(seqs).clamp(1, seqs);
        let mut io = crate::cpu::frame_tokens(&model.proj_in, &model.proj_out, normed, x, frames);
        for s0 in (0..seqs).step_by(per_call) {
            let chunk = s0..(s0 + per_call).min(seqs);
            let t = run_blocks(io.tokens(chunk.clone()))?;
            io.write(chunk, t);
        }
        return Ok(io.finish());
    }
    let tokens = normed
        .reshape([b, frames, c, hw])
        .permute([0, 3, 1, 2])
        .reshape([b * hw, frames, c]);
    let out = map_chunks(tokens, positions, |t, _| {
        Ok(model
            .proj_out
            .forward(run_blocks(model.proj_in.forward(t))?))
    })?;
    let out = out
        .reshape([b, hw, frames, c])
        .permute([0, 2, 3, 1])
        .reshape([bf, c, h, w]);
    Ok(out + x)
}

/// GroupNorm of `[B·F, C, H, W]` with the statistics of each `(video, group)` pooled over all
/// `F` frames, i.e. PyTorch's `GroupNorm` on the `[B, C, F, H, W]` view, computed in the frame
/// layout (statistics in `f32` for `f16` inputs, as Burn's GroupNorm does).
fn group_norm_across_frames(norm: &burn::nn::GroupNorm, x: Tensor<4>, frames: usize) -> Tensor<4> {
    let [bf, c, h, w] = x.dims();
    let b = bf / frames;
    let g = norm.num_groups;
    let dtype = x.dtype();
    let widen = matches!(dtype, burn::tensor::DType::F16);
    let grouped = x.reshape([b, frames, g, (c / g) * h * w]);
    let grouped = if widen {
        grouped.cast(burn::tensor::FloatDType::F32)
    } else {
        grouped
    };
    let mean = grouped.clone().mean_dim(3).mean_dim(1);
    let centred = grouped - mean;
    let var = centred.clone().square().mean_dim(3).mean_dim(1);
    let normed = centred / var.add_scalar(norm.epsilon).sqrt();
    let normed = if widen {
        normed.cast(burn::tensor::FloatDType::from(dtype))
    } else {
        normed
    };
    let mut normed = normed.reshape([b, frames, c, h * w]);
    if let Some(gamma) = &norm.gamma {
        normed = normed * gamma.val().reshape([1, 1, c, 1]);
    }
    if let Some(beta) = &norm.beta {
        normed = normed + beta.val().reshape([1, 1, c, 1]);
    }
    normed.reshape([bf, c, h, w])
}

/// The per-layer builders shared by the blocks.
struct Builder<'a> {
    config: &'a UNet3DConditionModelConfig,
    device: &'a burn::tensor::Device,
}

impl Builder<'_> {
    fn resnet(&self, cin: usize, cout: usize, scale: f64) -> Result<ResnetBlock2D> {
        ResnetBlock2DConfig::new(cin)
            .with_out_channels(Some(cout))
            .with_temb_channels(Some(self.config.time_embed_dim()))
            .with_groups(self.config.groups()?)
            .with_eps(self.config.norm_eps)
            .with_output_scale_factor(scale)
            .try_init(self.device)
    }

    fn temp_conv(&self, c: usize) -> Result<TemporalConvLayer> {
        TemporalConvLayerConfig::new(c)
            .with_norm_num_groups(self.config.groups()?)
            .with_dropout(TEMP_CONV_DROPOUT)
            .try_init(self.device)
    }

    /// `Transformer2DModel(C // n, n, in_channels=C, use_linear_projection=True)` with
    /// `n = attention_head_dim`: `C / n` heads of `n` channels (oracle gotcha 21).
    fn spatial(&self, c: usize, heads: usize) -> Result<Transformer2DModel> {
        Transformer2DModelConfig::new(c, heads, self.config.head_dim()?)
            .with_norm_num_groups(self.config.groups()?)
            .with_cross_attention_dim(Some(self.config.cross_attention_dim))
            .with_use_linear_projection(true)
            .try_init(self.device)
    }

    /// `TransformerTemporalModel(C // n, n, in_channels=C)`: `C / n` heads of `n` channels,
    /// no positional embedding.
    fn temporal(&self, c: usize, heads: usize) -> Result<TransformerTemporalModel> {
        TransformerTemporalModelConfig::new(c, heads, self.config.head_dim()?)
            .with_norm_num_groups(self.config.groups()?)
            .try_init(self.device)
    }
}

/// `CrossAttnDownBlock3D` (with `attentions` / `temp_attentions`) or `DownBlock3D` (without).
///
/// Checkpoint keys: `resnets.N`, `temp_convs.N`, `attentions.N`, `temp_attentions.N`,
/// `downsamplers.0.conv`.
#[derive(Module, Debug)]
pub struct DownBlock3D {
    /// `ResnetBlock2D`s, one per layer.
    pub resnets: Vec<ResnetBlock2D>,
    /// `TemporalConvLayer`s, one per layer.
    pub temp_convs: Vec<TemporalConvLayer>,
    /// Spatial `Transformer2DModel`s (cross-attention blocks only).
    pub attentions: Vec<Transformer2DModel>,
    /// `TransformerTemporalModel`s (cross-attention blocks only).
    pub temp_attentions: Vec<TransformerTemporalModel>,
    /// The downsampler (all blocks but the last).
    pub downsamplers: Vec<Downsample2D>,
}

impl DownBlock3D {
    /// Builds down block `index` of `config`.
    pub fn new(
        config: &UNet3DConditionModelConfig,
        index: usize,
        device: &burn::tensor::Device,
    ) -> Result<Self> {
        let kind = config.down_blocks()?[index];
        let b = Builder { config, device };
        let out = config.block_out_channels[index];
        let input = if index == 0 {
            out
        } else {
            config.block_out_channels[index - 1]
        };
        let heads = config.heads(index)?;
        let layers = config.layers_per_block;
        let attention = kind == DownBlockKind::CrossAttnDownBlock3D;
        Ok(Self {
            resnets: (0..layers)
                .map(|j| b.resnet(if j == 0 { input } else { out }, out, 1.0))
                .collect::<Result<_>>()?,
            temp_convs: (0..layers)
                .map(|_| b.temp_conv(out))
                .collect::<Result<_>>()?,
            attentions: if attention {
                (0..layers)
                    .map(|_| b.spatial(out, heads))
                    .collect::<Result<_>>()?
            } else {
                Vec::new()
            },
            temp_attentions: if attention {
                (0..layers)
                    .map(|_| b.temporal(out, heads))
                    .collect::<Result<_>>()?
            } else {
                Vec::new()
            },
            downsamplers: if index + 1 < config.num_blocks() {
                vec![
                    Downsample2DConfig::new(out)
                        .with_padding(config.downsample_padding)
                        .try_init(device)?,
                ]
            } else {
                Vec::new()
            },
        })
    }

    /// Runs the block, pushing its skip tensors onto `residuals` (one per layer, plus the
    /// downsampled output).
    pub(crate) fn forward(
        &self,
        mut x: Tensor<4>,
        pass: &mut Pass<'_, '_>,
        prefix: &str,
        residuals: &mut Vec<Tensor<4>>,
    ) -> Result<Tensor<4>> {
        for j in 0..self.resnets.len() {
            x = layer_stack(self, j, x, pass, prefix)?;
            residuals.push(x.clone());
        }
        for (k, down) in self.downsamplers.iter().enumerate() {
            x = map_chunks(x, pass.chunking.frames, |x, _| down.forward(x))?;
            pass.emit(|| format!("{prefix}.downsamplers.{k}"), &x);
            residuals.push(x.clone());
        }
        pass.emit(|| prefix.to_string(), &x);
        Ok(x)
    }
}

/// The layers a 3-D block runs after its resnet input is ready: resnet → temporal conv →
/// (spatial transformer → temporal transformer).
trait LayerStack {
    fn resnets(&self) -> &[ResnetBlock2D];
    fn temp_convs(&self) -> &[TemporalConvLayer];
    fn attentions(&self) -> &[Transformer2DModel];
    fn temp_attentions(&self) -> &[TransformerTemporalModel];
}

macro_rules! layer_stack {
    ($t:ty) => {
        impl LayerStack for $t {
            fn resnets(&self) -> &[ResnetBlock2D] {
                &self.resnets
            }
            fn temp_convs(&self) -> &[TemporalConvLayer] {
                &self.temp_convs
            }
            fn attentions(&self) -> &[Transformer2DModel] {
                &self.attentions
            }
            fn temp_attentions(&self) -> &[TransformerTemporalModel] {
                &self.temp_attentions
            }
        }
    };
}
layer_stack!(DownBlock3D);
layer_stack!(UpBlock3D);

/// Layer `j` of a down or up block: `resnets.j` → `temp_convs.j` → `attentions.j` →
/// `temp_attentions.j` (the last two if present).
fn layer_stack(
    block: &impl LayerStack,
    j: usize,
    x: Tensor<4>,
    pass: &mut Pass<'_, '_>,
    prefix: &str,
) -> Result<Tensor<4>> {
    let x = pass.resnet(&block.resnets()[j], x)?;
    pass.emit(|| format!("{prefix}.resnets.{j}"), &x);
    let mut x = pass.temp_conv(&block.temp_convs()[j], x)?;
    pass.emit(|| format!("{prefix}.temp_convs.{j}"), &x);
    if let Some(attn) = block.attentions().get(j) {
        x = pass.spatial(attn, x)?;
        pass.emit(|| format!("{prefix}.attentions.{j}"), &x);
    }
    if let Some(temp) = block.temp_attentions().get(j) {
        let name = format!("{prefix}.temp_attentions.{j}");
        x = pass.temporal(temp, x, &name)?;
        pass.emit(|| name, &x);
    }
    Ok(x)
}

/// `UNetMidBlock3DCrossAttn` with one layer: `resnets.0 → temp_convs.0 → [attentions.0 →
/// temp_attentions.0 → resnets.1 → temp_convs.1]`.
///
/// Checkpoint keys: `resnets.{0,1}`, `temp_convs.{0,1}`, `attentions.0`, `temp_attentions.0`.
#[derive(Module, Debug)]
pub struct UNetMidBlock3DCrossAttn {
    /// Two `ResnetBlock2D`s (output divided by `mid_block_scale_factor`).
    pub resnets: Vec<ResnetBlock2D>,
    /// Two `TemporalConvLayer`s.
    pub temp_convs: Vec<TemporalConvLayer>,
    /// One spatial `Transformer2DModel`.
    pub attentions: Vec<Transformer2DModel>,
    /// One `TransformerTemporalModel`.
    pub temp_attentions: Vec<TransformerTemporalModel>,
}

impl UNetMidBlock3DCrossAttn {
    /// Builds the mid block of `config` (heads of the last down block).
    pub fn new(config: &UNet3DConditionModelConfig, device: &burn::tensor::Device) -> Result<Self> {
        let b = Builder { config, device };
        let last = config.num_blocks() - 1;
        let c = config.block_out_channels[last];
        let heads = config.heads(last)?;
        let scale = config.mid_block_scale_factor;
        Ok(Self {
            resnets: vec![b.resnet(c, c, scale)?, b.resnet(c, c, scale)?],
            temp_convs: vec![b.temp_conv(c)?, b.temp_conv(c)?],
            attentions: vec![b.spatial(c, heads)?],
            temp_attentions: vec![b.temporal(c, heads)?],
        })
    }

    pub(crate) fn forward(&self, x: Tensor<4>, pass: &mut Pass<'_, '_>) -> Result<Tensor<4>> {
        let prefix = "mid_block";
        let mut x = pass.resnet(&self.resnets[0], x)?;
        pass.emit(|| format!("{prefix}.resnets.0"), &x);
        x = pass.temp_conv(&self.temp_convs[0], x)?;
        pass.emit(|| format!("{prefix}.temp_convs.0"), &x);
        for (j, ((attn, temp), (resnet, conv))) in self
            .attentions
            .iter()
            .zip(&self.temp_attentions)
            .zip(self.resnets[1..].iter().zip(&self.temp_convs[1..]))
            .enumerate()
        {
            x = pass.spatial(attn, x)?;
            pass.emit(|| format!("{prefix}.attentions.{j}"), &x);
            let name = format!("{prefix}.temp_attentions.{j}");
            x = pass.temporal(temp, x, &name)?;
            pass.emit(|| name, &x);
            x = pass.resnet(resnet, x)?;
            pass.emit(|| format!("{prefix}.resnets.{}", j + 1), &x);
            x = pass.temp_conv(conv, x)?;
            pass.emit(|| format!("{prefix}.temp_convs.{}", j + 1), &x);
        }
        pass.emit(|| prefix.to_string(), &x);
        Ok(x)
    }
}

/// `CrossAttnUpBlock3D` (with `attentions` / `temp_attentions`) or `UpBlock3D` (without).
///
/// Checkpoint keys: `resnets.N`, `temp_convs.N`, `attentions.N`, `temp_attentions.N`,
/// `upsamplers.0.conv`.
#[derive(Module, Debug)]
pub struct UpBlock3D {
    /// `ResnetBlock2D`s (`layers_per_block + 1`), each on `[hidden, skip]` channels.
    pub resnets: Vec<ResnetBlock2D>,
    /// `TemporalConvLayer`s, one per layer.
    pub temp_convs: Vec<TemporalConvLayer>,
    /// Spatial `Transformer2DModel`s (cross-attention blocks only).
    pub attentions: Vec<Transformer2DModel>,
    /// `TransformerTemporalModel`s (cross-attention blocks only).
    pub temp_attentions: Vec<TransformerTemporalModel>,
    /// The upsampler (all blocks but the last).
    pub upsamplers: Vec<Upsample2D>,
}

impl UpBlock3D {
    /// Builds up block `index` of `config`.
    pub fn new(
        config: &UNet3DConditionModelConfig,
        index: usize,
        device: &burn::tensor::Device,
    ) -> Result<Self> {
        let kind = config.up_blocks()?[index];
        let b = Builder { config, device };
        let n = config.num_blocks();
        let out = config.block_out_channels[n - 1 - index];
        let heads = config.heads(n - 1 - index)?;
        let ins = config.up_resnet_in_channels(index);
        let layers = ins.len();
        let attention = kind == UpBlockKind::CrossAttnUpBlock3D;
        Ok(Self {
            resnets: ins
                .iter()
                .map(|&cin| b.resnet(cin, out, 1.0))
                .collect::<Result<_>>()?,
            temp_convs: (0..layers)
                .map(|_| b.temp_conv(out))
                .collect::<Result<_>>()?,
            attentions: if attention {
                (0..layers)
                    .map(|_| b.spatial(out, heads))
                    .collect::<Result<_>>()?
            } else {
                Vec::new()
            },
            temp_attentions: if attention {
                (0..layers)
                    .map(|_| b.temporal(out, heads))
                    .collect::<Result<_>>()?
            } else {
                Vec::new()
            },
            upsamplers: if index + 1 < n {
                vec![Upsample2DConfig::new(out).try_init(device)?]
            } else {
                Vec::new()
            },
        })
    }

    /// Runs the block on `x` and the block's skip tensors (`skips`, in push order; consumed
    /// from the end, each concatenated **after** the hidden state). `upsample_size` forces the
    /// upsampler's output size.
    pub(crate) fn forward(
        &self,
        mut x: Tensor<4>,
        mut skips: Vec<Tensor<4>>,
        upsample_size: Option<[usize; 2]>,
        pass: &mut Pass<'_, '_>,
        prefix: &str,
    ) -> Result<Tensor<4>> {
        for j in 0..self.resnets.len() {
            let skip = skips.pop().ok_or_else(|| {
                Error::invalid(
                    "res_hidden_states_tuple",
                    format!("{prefix} ran out of skip tensors"),
                )
            })?;
            x = Tensor::cat(vec![x, skip], 1);
            x = layer_stack(self, j, x, pass, prefix)?;
        }
        for (k, up) in self.upsamplers.iter().enumerate() {
            x = map_chunks(x, pass.chunking.frames, |x, _| up.forward(x, upsample_size))?;
            pass.emit(|| format!("{prefix}.upsamplers.{k}"), &x);
        }
        pass.emit(|| prefix.to_string(), &x);
        Ok(x)
    }
}
