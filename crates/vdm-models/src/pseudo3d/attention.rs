//! Make-A-Video's pseudo-3D attention (Singer et al. 2022, §3.2; lucidrains
//! `make_a_video_pytorch/make_a_video.py`: `Attention`, `RMSNorm`, `SpatioTemporalAttention`,
//! `SinusoidalPosEmb`): self-attention over the tokens of every frame, then self-attention
//! over the frames of every position (through the temporal hook) with its output projection
//! initialised to zero, and the building blocks (L2 RMS norm, multi-head attention, temporal
//! position encodings).

use burn::config::Config;
use burn::module::{Module, Param};
use burn::nn::{Initializer, Linear, LinearConfig};
use burn::tensor::module::attention;
use burn::tensor::ops::AttentionModuleOptions;
use burn::tensor::{Bool, Device, Tensor, TensorData};
use serde::{Deserialize, Serialize};
use vdm_core::layout::{
    batch_to_frames, frame_tokens_to_video, frames_to_batch, video_to_frame_tokens,
};
use vdm_core::temporal::{FrameWindow, TemporalHook, TemporalSite, TemporalStages};
use vdm_core::{Error, Result, VideoShape};

use super::positive;

// ---------------------------------------------------------------------------------------------
// Attention building blocks
// ---------------------------------------------------------------------------------------------

/// lucidrains' `RMSNorm(dim, dim=-1)`: `x / max(‖x‖₂, 1e-12) · √C · γ` over the last axis
/// (PyTorch's `F.normalize(x, dim=-1) * C ** 0.5 * gamma`; no ε inside the root, unlike
/// `burn::nn::RmsNorm`).
#[derive(Module, Debug)]
pub struct L2RmsNorm {
    /// Per-channel gain `γ`, shape `[C]`, initialised to ones.
    pub gamma: Param<Tensor<1>>,
}

impl L2RmsNorm {
    /// A norm over `channels` with `γ = 1`.
    pub fn new(channels: usize, device: &Device) -> Self {
        Self {
            gamma: Param::from_tensor(Tensor::ones([channels], device)),
        }
    }

    /// Number of channels `C`.
    pub fn channels(&self) -> usize {
        self.gamma.dims()[0]
    }

    /// Normalises the last axis.
    ///
    /// # Shapes
    /// - `x`: `[N, L, C]`
    /// - output: `[N, L, C]`
    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let c = self.channels();
        let norm = x.clone().square().sum_dim(2).sqrt().clamp_min(1e-12);
        let gamma = self
            .gamma
            .val()
            .reshape([1, 1, c])
            .mul_scalar((c as f64).sqrt());
        x / norm * gamma
    }
}

/// Multi-head self-attention of Make-A-Video (lucidrains `Attention`): `to_out(attn(norm(x)))`
/// with bias-free projections and a fused key/value projection. Returns the residual branch
/// only; the caller adds `x`.
///
/// Checkpoint keys: `norm.gamma`, `to_q.weight`, `to_kv.weight`, `to_out.weight` (Burn
/// [`Linear`] weights are stored `[in, out]`; `PyTorchToBurnAdapter` transposes them).
#[derive(Module, Debug)]
pub struct MavAttention {
    /// Pre-norm.
    pub norm: L2RmsNorm,
    /// Query projection `C → heads·dim_head`.
    pub to_q: Linear,
    /// Key and value projection `C → 2·heads·dim_head` (keys first).
    pub to_kv: Linear,
    /// Output projection `heads·dim_head → C`.
    pub to_out: Linear,
    /// Number of heads.
    pub heads: usize,
    /// Channels per head.
    pub dim_head: usize,
}

impl MavAttention {
    /// Creates the attention; `zero_out` initialises `to_out` to zero (the reference does so
    /// for every attention, "identity with skip connection").
    pub fn new(dim: usize, heads: usize, dim_head: usize, zero_out: bool, device: &Device) -> Self {
        let inner = heads * dim_head;
        let mut out = LinearConfig::new(inner, dim).with_bias(false);
        if zero_out {
            out = out.with_initializer(Initializer::Zeros);
        }
        Self {
            norm: L2RmsNorm::new(dim, device),
            to_q: LinearConfig::new(dim, inner).with_bias(false).init(device),
            to_kv: LinearConfig::new(dim, 2 * inner)
                .with_bias(false)
                .init(device),
            to_out: out.init(device),
            heads,
            dim_head,
        }
    }

    /// Number of channels `C`.
    pub fn dim(&self) -> usize {
        self.norm.channels()
    }

    /// The residual branch `to_out(softmax(q kᵀ / √d_head) v)` with `q, k, v` projected from
    /// `norm(x) + pos`.
    ///
    /// # Shapes
    /// - `x`: `[N, L, C]`
    /// - `pos`: `[L, C]`, added to the normalised tokens (positional encoding)
    /// - `mask`: `[L, L]`, `true` = query `i` may not attend key `j`
    /// - output: `[N, L, C]`
    ///
    /// # Errors
    /// [`Error::Shape`] naming `x`, `pos` or `mask` when they disagree.
    pub fn forward(
        &self,
        x: Tensor<3>,
        pos: Option<Tensor<2>>,
        mask: Option<Tensor<2, Bool>>,
    ) -> Result<Tensor<3>> {
        let [n, l, c] = x.dims();
        if c != self.dim() || n == 0 || l == 0 {
            return Err(Error::shape(
                "x",
                format!("[N, L, C] with C = {} and N, L > 0", self.dim()),
                &[n, l, c],
            ));
        }
        let mut h = self.norm.forward(x);
        if let Some(pos) = pos {
            if pos.dims() != [l, c] {
                return Err(Error::shape(
                    "pos",
                    format!("[L, C] = [{l}, {c}]"),
                    &pos.dims(),
                ));
            }
            h = h + pos.unsqueeze::<3>();
        }
        let (heads, dh) = (self.heads, self.dim_head);
        let split = |t: Tensor<3>| t.reshape([n, l, heads, dh]).swap_dims(1, 2);
        let q = split(self.to_q.forward(h.clone()));
        let kv = self.to_kv.forward(h);
        let k = split(kv.clone().narrow(2, 0, heads * dh));
        let v = split(kv.narrow(2, heads * dh, heads * dh));
        let mask = match mask {
            Some(m) if m.dims() != [l, l] => {
                return Err(Error::shape(
                    "mask",
                    format!("[L, L] = [{l}, {l}]"),
                    &m.dims(),
                ));
            }
            Some(m) => Some(m.reshape([1, 1, l, l]).expand([n, heads, l, l])),
            None => None,
        };
        let options = AttentionModuleOptions {
            scale: Some((dh as f64).powf(-0.5)),
            softcap: None,
            is_causal: false,
        };
        let out = attention(q, k, v, mask, None, options)
            .swap_dims(1, 2)
            .reshape([n, l, heads * dh]);
        Ok(self.to_out.forward(out))
    }
}

/// Positional encoding of the temporal attention's frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum TemporalPositionEncoding {
    /// No positional information (frames are distinguished only by content, or by the
    /// causal mask).
    None,
    /// Sinusoidal encoding of the window's positions ([`FrameWindow::positions`]), lucidrains'
    /// `SinusoidalPosEmb` (`[sin(p·ω_i), cos(p·ω_i)]`, `ω_i = θ^(−i/(C/2 − 1))`), added to the
    /// normalised tokens before the projections. Needs an even `dim ≥ 4`.
    Sinusoidal,
}

/// lucidrains' `SinusoidalPosEmb(dim, theta)` at `positions`, `[len, dim]`.
pub(super) fn sinusoidal_table(
    positions: std::ops::Range<usize>,
    dim: usize,
    theta: f64,
    device: &Device,
) -> Tensor<2> {
    let half = dim / 2;
    let step = theta.ln() / (half as f64 - 1.0);
    let freqs: Vec<f32> = (0..half)
        .map(|i| (-(i as f64) * step).exp() as f32)
        .collect();
    let len = positions.len();
    let mut data = Vec::with_capacity(len * dim);
    for p in positions {
        let angles: Vec<f32> = freqs.iter().map(|f| p as f32 * f).collect();
        data.extend(angles.iter().map(|a| a.sin()));
        data.extend(angles.iter().map(|a| a.cos()));
    }
    Tensor::from_data(TensorData::new(data, [len, dim]), device)
}

// ---------------------------------------------------------------------------------------------
// PseudoAttention
// ---------------------------------------------------------------------------------------------

/// Configuration of a [`PseudoAttention`] (lucidrains' `SpatioTemporalAttention` without the
/// feed-forward and continuous position biases).
#[derive(Config, Debug)]
pub struct PseudoAttentionConfig {
    /// Channels `C` of the video features.
    pub dim: usize,
    /// Number of attention heads.
    #[config(default = 8)]
    pub heads: usize,
    /// Channels per head.
    #[config(default = 64)]
    pub dim_head: usize,
    /// Mask future frames in the temporal attention (`causal_time_attn`).
    #[config(default = false)]
    pub causal_time_attn: bool,
    /// Positional encoding of the temporal attention.
    #[config(default = "TemporalPositionEncoding::Sinusoidal")]
    pub temporal_position: TemporalPositionEncoding,
    /// Base `θ` of the sinusoidal encoding.
    #[config(default = 10000.0)]
    pub theta: f64,
    /// Zero-initialise the spatial `to_out` too, as the reference does. Off by default: the
    /// spatial attention is the image model's (loaded from a checkpoint or trained as such).
    #[config(default = false)]
    pub zero_init_spatial_out: bool,
    /// Module path reported to the [`TemporalHook`] ([`TemporalSite::layer`]); defaults to
    /// `"temporal_attn"`. Parents set the full path, e.g. `down_blocks.0.attn`.
    pub layer_name: Option<String>,
}

impl PseudoAttentionConfig {
    /// Creates the layer; the temporal `to_out` is zero, so the layer starts as the spatial
    /// attention alone.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] naming `dim`, `heads`, `dim_head` or `theta` when zero /
    /// non-positive, or `dim` when the sinusoidal encoding needs an even `dim ≥ 4`.
    pub fn init(&self, device: &Device) -> Result<PseudoAttention> {
        positive("dim", self.dim)?;
        positive("heads", self.heads)?;
        positive("dim_head", self.dim_head)?;
        if self.temporal_position == TemporalPositionEncoding::Sinusoidal {
            vdm_core::error::ensure_positive("theta", self.theta)?;
            if self.dim < 4 || !self.dim.is_multiple_of(2) {
                return Err(Error::invalid(
                    "dim",
                    format!(
                        "the sinusoidal temporal position encoding needs an even dim >= 4, got {}",
                        self.dim
                    ),
                ));
            }
        }
        Ok(PseudoAttention {
            spatial_attn: MavAttention::new(
                self.dim,
                self.heads,
                self.dim_head,
                self.zero_init_spatial_out,
                device,
            ),
            temporal_attn: MavAttention::new(self.dim, self.heads, self.dim_head, true, device),
            temporal_position: self.temporal_position,
            theta: self.theta,
            causal_time_attn: self.causal_time_attn,
            layer_name: self
                .layer_name
                .clone()
                .unwrap_or_else(|| "temporal_attn".to_string()),
        })
    }
}

/// Make-A-Video's factorised space-time self-attention (§3.2; lucidrains
/// `SpatioTemporalAttention`, after Ho et al.'s Video Diffusion Models):
/// `x ← x + spatial_attn(x)` over the `H·W` tokens of each frame, then
/// `x ← x + temporal_attn(x)` over the `F` frames of each position.
///
/// The temporal step is a [`TemporalStages`] with one stage and runs through the
/// [`TemporalHook`] given to [`PseudoAttention::forward`]; it honours the window's positions
/// (sinusoidal encoding) and mask.
///
/// Checkpoint keys: `spatial_attn.*` and `temporal_attn.*` as in [`MavAttention`]. Not
/// ported from the reference: the continuous position-bias MLPs and the GEGLU feed-forward.
#[derive(Module, Debug)]
pub struct PseudoAttention {
    /// Self-attention over the tokens of one frame (the image model's).
    pub spatial_attn: MavAttention,
    /// Self-attention over the frames of one position; `to_out` starts at zero.
    pub temporal_attn: MavAttention,
    /// Positional encoding of the temporal attention.
    #[module(skip)]
    pub temporal_position: TemporalPositionEncoding,
    /// Base of the sinusoidal encoding.
    pub theta: f64,
    /// Whether the temporal attention is causal.
    pub causal_time_attn: bool,
    /// Module path reported to the hook.
    pub layer_name: String,
}

impl PseudoAttention {
    /// Channels `C`.
    pub fn dim(&self) -> usize {
        self.spatial_attn.dim()
    }

    /// Spatial then temporal attention, the temporal part through `hook`.
    ///
    /// # Shapes
    /// - `x`: `[B, C, F, H, W]`
    /// - output: `[B, C, F, H, W]`
    ///
    /// # Errors
    /// [`Error::Shape`] naming `x` if a dimension is zero or `C ≠ dim`; whatever the hook
    /// returns (e.g. a position-table limit); [`Error::Shape`] naming `temporal tokens` if the
    /// hook returns a differently shaped tensor.
    pub fn forward(&self, x: Tensor<5>, hook: &dyn TemporalHook) -> Result<Tensor<5>> {
        let shape = self.check_video(&x)?;
        let x = self.spatial_video(x, shape)?;
        let tokens = video_to_frame_tokens(x);
        let expected = tokens.dims();
        let site = TemporalSite::new(&self.layer_name, shape.frames).with_spatial(
            shape.batch,
            shape.height,
            shape.width,
        );
        let out = hook.apply(&site, tokens, self)?;
        if out.dims() != expected {
            return Err(Error::shape(
                "temporal tokens",
                format!("{expected:?} ([B·H·W, F, C], as handed to the hook)"),
                &out.dims(),
            ));
        }
        Ok(frame_tokens_to_video(
            out,
            shape.batch,
            shape.height,
            shape.width,
        ))
    }

    /// The spatial attention alone on every frame (the reference's `enable_time=False`).
    ///
    /// # Shapes
    /// - `x`: `[B, C, F, H, W]`
    /// - output: `[B, C, F, H, W]`
    ///
    /// # Errors
    /// [`Error::Shape`] naming `x` if a dimension is zero or `C ≠ dim`.
    pub fn forward_spatial_only(&self, x: Tensor<5>) -> Result<Tensor<5>> {
        let shape = self.check_video(&x)?;
        self.spatial_video(x, shape)
    }

    /// Image mode: the spatial attention on a batch of images.
    ///
    /// # Shapes
    /// - `x`: `[B, C, H, W]`
    /// - output: `[B, C, H, W]`
    ///
    /// # Errors
    /// [`Error::Shape`] naming `x` if a dimension is zero or `C ≠ dim`.
    pub fn forward_image(&self, x: Tensor<4>) -> Result<Tensor<4>> {
        let dims = x.dims();
        if dims.contains(&0) || dims[1] != self.dim() {
            return Err(Error::shape(
                "x",
                format!("[B, C, H, W] with C = {} and no zero dimension", self.dim()),
                &dims,
            ));
        }
        self.spatial_images(x)
    }

    fn check_video(&self, x: &Tensor<5>) -> Result<VideoShape> {
        let shape = VideoShape::of("x", x)?;
        shape.expect_channels("x", self.dim())?;
        Ok(shape)
    }

    fn spatial_video(&self, x: Tensor<5>, shape: VideoShape) -> Result<Tensor<5>> {
        let out = self.spatial_images(frames_to_batch(x))?;
        Ok(batch_to_frames(out, shape.frames))
    }

    /// `[N, C, H, W]` → tokens `[N, H·W, C]` → `x + attn(x)` → `[N, C, H, W]`.
    fn spatial_images(&self, x: Tensor<4>) -> Result<Tensor<4>> {
        let [n, c, h, w] = x.dims();
        let tokens = x.reshape([n, c, h * w]).swap_dims(1, 2);
        let out = tokens.clone() + self.spatial_attn.forward(tokens, None, None)?;
        Ok(out.swap_dims(1, 2).reshape([n, c, h, w]))
    }
}

impl TemporalStages for PseudoAttention {
    fn num_stages(&self) -> usize {
        1
    }

    /// `x + temporal_attn(x)` over the window's frames, with the window's positions (if
    /// sinusoidal) and its mask combined with the causal mask (if `causal_time_attn`).
    fn run_stage(
        &self,
        stage: usize,
        tokens: Tensor<3>,
        window: &FrameWindow,
    ) -> Result<Tensor<3>> {
        if stage != 0 {
            return Err(Error::invalid(
                "stage",
                format!("PseudoAttention has 1 temporal stage, got stage {stage}"),
            ));
        }
        let [n, f, c] = tokens.dims();
        if f != window.len() || window.positions.len() != f {
            return Err(Error::shape(
                "tokens",
                format!(
                    "[N, f, C] with f = {} (window {}..{}, positions {:?})",
                    window.len(),
                    window.start,
                    window.end,
                    window.positions
                ),
                &[n, f, c],
            ));
        }
        let device = tokens.device();
        let pos = match self.temporal_position {
            TemporalPositionEncoding::None => None,
            TemporalPositionEncoding::Sinusoidal => Some(sinusoidal_table(
                window.positions.clone(),
                c,
                self.theta,
                &device,
            )),
        };
        let causal = self
            .causal_time_attn
            .then(|| Tensor::<2, Bool>::tril_mask([f, f], 0, &device));
        if let Some(m) = &window.mask
            && m.dims() != [f, f]
        {
            return Err(Error::shape(
                "window.mask",
                format!("[f, f] = [{f}, {f}]"),
                &m.dims(),
            ));
        }
        let mask = match (window.mask.clone(), causal) {
            (Some(m), Some(cm)) => Some(m.bool_or(cm)),
            (m, cm) => m.or(cm),
        };
        Ok(tokens.clone() + self.temporal_attn.forward(tokens, pos, mask)?)
    }
}
