//! The denoiser trait: what a sampler needs from a video diffusion model.
//!
//! A model implements [`Denoiser`]; samplers, classifier-free guidance and every long-video
//! algorithm in `vdm-longvideo` talk to models only through it.

use burn::tensor::{Tensor, TensorData};

use crate::cross_frame::{CrossFrameHook, OwnFrame};
use crate::temporal::{AllFrames, TemporalHook};
use crate::{Error, PredictionType, Result, VideoShape};

/// Diffusion timesteps for one model call.
///
/// Values are `f64` training-timestep indices (`0..num_train_timesteps`), fractional for
/// sigma-based schedulers such as Euler with Karras sigmas.
#[derive(Debug, Clone, PartialEq)]
pub enum Timesteps {
    /// One timestep for the whole batch.
    Shared(f64),
    /// One timestep per batch item (length `B`).
    PerItem(Vec<f64>),
    /// One timestep per frame of every batch item, row-major `[B, F]` (length `B·F`), as
    /// FIFO-Diffusion's diagonal denoising needs.
    PerFrame {
        /// Number of frames `F`.
        frames: usize,
        /// `B·F` values, index `b·F + f`.
        values: Vec<f64>,
    },
}

impl Timesteps {
    /// One value per `(batch item, frame)`, index `b·F + f`, checking the lengths against the
    /// latent shape.
    pub fn per_frame(&self, batch: usize, frames: usize) -> Result<Vec<f64>> {
        let values = match self {
            Timesteps::Shared(t) => vec![*t; batch * frames],
            Timesteps::PerItem(ts) => {
                if ts.len() != batch {
                    return Err(Error::shape(
                        "timesteps",
                        format!("one timestep per batch item (B = {batch})"),
                        &[ts.len()],
                    ));
                }
                ts.iter()
                    .flat_map(|&t| std::iter::repeat_n(t, frames))
                    .collect()
            }
            Timesteps::PerFrame { frames: f, values } => {
                if *f != frames || values.len() != batch * frames {
                    return Err(Error::shape(
                        "timesteps",
                        format!("[B, F] = [{batch}, {frames}] per-frame timesteps"),
                        &[values.len() / (*f).max(1), *f],
                    ));
                }
                values.clone()
            }
        };
        if let Some(bad) = values.iter().find(|t| !t.is_finite()) {
            return Err(Error::invalid(
                "timesteps",
                format!("must be finite, got {bad}"),
            ));
        }
        Ok(values)
    }

    /// One value per batch item; errors for per-frame timesteps that differ within an item.
    pub fn per_item(&self, batch: usize) -> Result<Vec<f64>> {
        match self {
            Timesteps::PerFrame { frames, values } => {
                let per = self.per_frame(batch, *frames)?;
                let mut out = Vec::with_capacity(batch);
                for b in 0..batch {
                    let row = &values[b * frames..(b + 1) * frames];
                    if row.iter().any(|&t| t != row[0]) {
                        return Err(Error::Unsupported(
                            "this model needs one timestep per batch item, got different \
                             timesteps per frame"
                                .into(),
                        ));
                    }
                    out.push(per[b * frames]);
                }
                Ok(out)
            }
            other => other.per_frame(batch, 1),
        }
    }
}

/// Text (or other sequence) conditioning for the cross-attention of a denoiser.
#[derive(Debug, Clone)]
pub enum Conditioning {
    /// No conditioning (unconditional models).
    None,
    /// One context per batch item, shared by all frames: `[B, S, D]`.
    Shared(Tensor<3>),
    /// One context per frame: `[B, F, S, D]` (prompt travel, multi-prompt FreeNoise).
    PerFrame(Tensor<4>),
}

impl Conditioning {
    /// The context for every `(batch item, frame)` pair, `[B·F, S, D]` with index `b·F + f`,
    /// or `None` for unconditional input.
    pub fn per_frame(&self, batch: usize, frames: usize) -> Result<Option<Tensor<3>>> {
        match self {
            Conditioning::None => Ok(None),
            Conditioning::Shared(ctx) => {
                let [b, s, d] = ctx.dims();
                if b != batch {
                    return Err(Error::shape(
                        "encoder_hidden_states",
                        format!("[B, S, D] with B = {batch}"),
                        &ctx.dims(),
                    ));
                }
                Ok(Some(
                    ctx.clone()
                        .unsqueeze_dim::<4>(1)
                        .expand([b, frames, s, d])
                        .reshape([b * frames, s, d]),
                ))
            }
            Conditioning::PerFrame(ctx) => {
                let [b, f, s, d] = ctx.dims();
                if b != batch || f != frames {
                    return Err(Error::shape(
                        "encoder_hidden_states",
                        format!("[B, F, S, D] with B = {batch}, F = {frames}"),
                        &ctx.dims(),
                    ));
                }
                Ok(Some(ctx.clone().reshape([b * f, s, d])))
            }
        }
    }

    /// The frames `start..end` of this conditioning (per-frame conditioning is sliced,
    /// shared conditioning is returned as is).
    pub fn frames(&self, start: usize, end: usize) -> Conditioning {
        match self {
            Conditioning::PerFrame(ctx) => {
                Conditioning::PerFrame(ctx.clone().narrow(1, start, end - start))
            }
            other => other.clone(),
        }
    }

    /// Concatenates conditionings along the batch (e.g. `[uncond; cond]` for CFG).
    ///
    /// Shared and per-frame parts may be mixed: shared contexts are then repeated over the
    /// frames of the per-frame ones. Unconditional parts cannot be mixed with conditional ones.
    pub fn cat(parts: Vec<Conditioning>) -> Result<Conditioning> {
        if parts.iter().all(|p| matches!(p, Conditioning::None)) {
            return Ok(Conditioning::None);
        }
        if parts.iter().any(|p| matches!(p, Conditioning::None)) {
            return Err(Error::Unsupported(
                "concatenating unconditional with conditional inputs; pass an empty-prompt \
                 embedding as the negative conditioning instead"
                    .into(),
            ));
        }
        let frames = parts.iter().find_map(|p| match p {
            Conditioning::PerFrame(t) => Some(t.dims()[1]),
            _ => None,
        });
        match frames {
            None => Ok(Conditioning::Shared(Tensor::cat(
                parts
                    .into_iter()
                    .filter_map(|p| match p {
                        Conditioning::Shared(t) => Some(t),
                        _ => None,
                    })
                    .collect(),
                0,
            ))),
            Some(f) => {
                let mut tensors = Vec::with_capacity(parts.len());
                for p in parts {
                    match p {
                        Conditioning::PerFrame(t) => {
                            if t.dims()[1] != f {
                                return Err(Error::shape(
                                    "encoder_hidden_states",
                                    format!("[B, F, S, D] with F = {f} in every part"),
                                    &t.dims(),
                                ));
                            }
                            tensors.push(t)
                        }
                        Conditioning::Shared(t) => {
                            let [b, s, d] = t.dims();
                            tensors.push(t.unsqueeze_dim::<4>(1).expand([b, f, s, d]))
                        }
                        Conditioning::None => unreachable!("checked above"),
                    }
                }
                let dims: Vec<[usize; 4]> = tensors.iter().map(|t| t.dims()).collect();
                if dims.iter().any(|d| d[2..] != dims[0][2..]) {
                    return Err(Error::shape(
                        "encoder_hidden_states",
                        format!(
                            "the same [S, D] in every part as the first, {:?}",
                            &dims[0][2..]
                        ),
                        &dims.iter().find(|d| d[2..] != dims[0][2..]).unwrap()[..],
                    ));
                }
                Ok(Conditioning::PerFrame(Tensor::cat(tensors, 0)))
            }
        }
    }
}

/// The part of a UNet a cross-attention layer belongs to, for routing conditioning per block
/// (FreeNoise's motion injection feeds the down and middle blocks a different prompt than the
/// up blocks in some steps).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BlockKind {
    /// Down blocks (diffusers `down_blocks`, VideoCrafter `input_blocks`), including layers
    /// before them.
    Encoder,
    /// The middle block.
    Middle,
    /// Up blocks (diffusers `up_blocks`, VideoCrafter `output_blocks`), including layers after
    /// them.
    Decoder,
}

impl BlockKind {
    /// Every block kind, in the order a UNet runs them.
    pub const ALL: [BlockKind; 3] = [BlockKind::Encoder, BlockKind::Middle, BlockKind::Decoder];
}

/// Conditioning that replaces [`DenoiserInput::conditioning`] in some blocks.
#[derive(Debug, Clone)]
pub struct BlockConditioning {
    /// The conditioning those blocks see instead.
    pub conditioning: Conditioning,
    /// The blocks that see it.
    pub blocks: Vec<BlockKind>,
}

/// The inputs of one denoiser call.
///
/// Built with [`DenoiserInput::new`] and the `with_*` methods; new optional inputs may be
/// added in later versions without breaking callers.
#[non_exhaustive]
pub struct DenoiserInput<'a> {
    /// Noisy latents `[B, C, F, H, W]`, already scaled by the scheduler's
    /// `scale_model_input`.
    pub latents: Tensor<5>,
    /// The timesteps of this call.
    pub timesteps: Timesteps,
    /// Cross-attention conditioning.
    pub conditioning: Conditioning,
    /// How temporal layers group and fuse frames ([`AllFrames`] by default).
    pub temporal: &'a dyn TemporalHook,
    /// Conditioning for some blocks that differs from [`DenoiserInput::conditioning`] (none by
    /// default). Models read it through [`DenoiserInput::conditioning_for`].
    pub block_conditioning: Option<BlockConditioning>,
    /// Which frames each frame's spatial self-attention reads ([`OwnFrame`] by default;
    /// Text2Video-Zero's first-frame attention and others in [`crate::cross_frame`]).
    pub cross_frame: &'a dyn CrossFrameHook,
}

impl<'a> DenoiserInput<'a> {
    /// An input with the default temporal behaviour (all frames at once).
    pub fn new(latents: Tensor<5>, timesteps: Timesteps, conditioning: Conditioning) -> Self {
        Self {
            latents,
            timesteps,
            conditioning,
            temporal: &AllFrames,
            block_conditioning: None,
            cross_frame: &OwnFrame,
        }
    }

    /// Hands a cross-frame attention pattern to the model's spatial self-attention layers.
    pub fn with_cross_frame(mut self, hook: &'a dyn CrossFrameHook) -> Self {
        self.cross_frame = hook;
        self
    }

    /// Gives `blocks` another conditioning than the rest of the model (FreeNoise motion
    /// injection). It must have the batch size of [`DenoiserInput::conditioning`].
    pub fn with_block_conditioning(
        mut self,
        conditioning: Conditioning,
        blocks: &[BlockKind],
    ) -> Self {
        self.block_conditioning = Some(BlockConditioning {
            conditioning,
            blocks: blocks.to_vec(),
        });
        self
    }

    /// The conditioning the layers of `block` must use.
    pub fn conditioning_for(&self, block: BlockKind) -> &Conditioning {
        match &self.block_conditioning {
            Some(o) if o.blocks.contains(&block) => &o.conditioning,
            _ => &self.conditioning,
        }
    }

    /// Hands a temporal strategy (e.g. FreeNoise windows) to the model's temporal layers.
    pub fn with_temporal(mut self, hook: &'a dyn TemporalHook) -> Self {
        self.temporal = hook;
        self
    }

    /// The latent shape, validated.
    pub fn shape(&self) -> Result<VideoShape> {
        VideoShape::of("latents", &self.latents)
    }
}

/// A video diffusion model seen from a sampler.
///
/// Implement this for your model and every sampler, classifier-free guidance and long-video
/// algorithm in vdm works with it. Models with temporal layers should route them through
/// `input.temporal` (see [`crate::temporal`]) so that window strategies reach them.
///
/// ```
/// use burn::tensor::{Device, Tensor};
/// use vdm_core::{Conditioning, Denoiser, DenoiserInput, PredictionType, Result, Timesteps};
///
/// /// A "model" that predicts zero noise.
/// struct Zero;
///
/// impl Denoiser for Zero {
///     fn prediction_type(&self) -> PredictionType {
///         PredictionType::Epsilon
///     }
///     fn predict(&self, input: DenoiserInput<'_>) -> Result<Tensor<5>> {
///         input.shape()?;
///         Ok(input.latents.zeros_like())
///     }
/// }
///
/// let device = Device::flex();
/// let x = Tensor::<5>::ones([1, 4, 3, 2, 2], &device);
/// let out = Zero.predict(DenoiserInput::new(x, Timesteps::Shared(999.0), Conditioning::None)).unwrap();
/// assert_eq!(out.dims(), [1, 4, 3, 2, 2]);
/// ```
pub trait Denoiser {
    /// What [`Denoiser::predict`] returns.
    fn prediction_type(&self) -> PredictionType;

    /// Runs the model.
    ///
    /// # Shapes
    /// - `input.latents`: `[B, C, F, H, W]`
    /// - output: `[B, C_out, F, H, W]` (usually `C_out = C`)
    fn predict(&self, input: DenoiserInput<'_>) -> Result<Tensor<5>>;
}

impl<T: Denoiser + ?Sized> Denoiser for &T {
    fn prediction_type(&self) -> PredictionType {
        (**self).prediction_type()
    }
    fn predict(&self, input: DenoiserInput<'_>) -> Result<Tensor<5>> {
        (**self).predict(input)
    }
}

/// Converts host data to a `Vec<f32>`, for tests and host-side algorithms.
///
/// Kept for downstream code: read a tensor with [`crate::readback::read_f32`] instead, which
/// reads it back from the device as a typed [`Error::ReadBack`] where Burn's `into_data`
/// would panic, and converts with the same rules.
#[deprecated(
    since = "0.1.0",
    note = "read the tensor with `vdm_core::readback::read_f32`, which also turns a failed \
            read-back into `Error::ReadBack`"
)]
pub fn data_to_f32(data: &TensorData) -> Result<Vec<f32>> {
    data.try_to_vec_as::<f32>()
        .map_err(|e| Error::Unsupported(format!("reading tensor data: {e:?}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::Device;

    #[test]
    fn timesteps_expand_per_frame() {
        assert_eq!(Timesteps::Shared(5.0).per_frame(2, 2).unwrap(), [5.0; 4]);
        assert_eq!(
            Timesteps::PerItem(vec![1.0, 2.0]).per_frame(2, 3).unwrap(),
            [1.0, 1.0, 1.0, 2.0, 2.0, 2.0]
        );
        let pf = Timesteps::PerFrame {
            frames: 2,
            values: vec![1.0, 2.0, 3.0, 4.0],
        };
        assert_eq!(pf.per_frame(2, 2).unwrap(), [1.0, 2.0, 3.0, 4.0]);
        assert!(pf.per_frame(1, 2).is_err());
        assert!(
            pf.per_item(2).is_err(),
            "differing per-frame timesteps have no per-item form"
        );
        let same = Timesteps::PerFrame {
            frames: 2,
            values: vec![7.0, 7.0, 9.0, 9.0],
        };
        assert_eq!(same.per_item(2).unwrap(), [7.0, 9.0]);
        assert!(Timesteps::PerItem(vec![1.0]).per_frame(2, 1).is_err());
        assert!(Timesteps::Shared(f64::NAN).per_frame(1, 1).is_err());
    }

    #[test]
    fn conditioning_per_frame_layout() {
        let device = Device::flex();
        let ctx = Tensor::<1, burn::tensor::Int>::arange(0..2 * 3 * 4, &device)
            .float()
            .reshape([2, 3, 4]);
        let pf = Conditioning::Shared(ctx.clone())
            .per_frame(2, 5)
            .unwrap()
            .unwrap();
        assert_eq!(pf.dims(), [10, 3, 4]);
        // Item b·F + f carries video b's context.
        pf.slice([7..8, 0..3, 0..4])
            .into_data()
            .assert_eq(&ctx.clone().slice([1..2, 0..3, 0..4]).into_data(), true);
        assert!(Conditioning::Shared(ctx).per_frame(3, 5).is_err());
        let per = Tensor::<4>::zeros([1, 5, 3, 4], &device);
        assert_eq!(
            Conditioning::PerFrame(per.clone())
                .per_frame(1, 5)
                .unwrap()
                .unwrap()
                .dims(),
            [5, 3, 4]
        );
        assert!(Conditioning::PerFrame(per).per_frame(1, 4).is_err());
        assert!(Conditioning::None.per_frame(1, 1).unwrap().is_none());
    }
}
