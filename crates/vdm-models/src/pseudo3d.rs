//! Make-A-Video's pseudo-3D layers (Singer et al. 2022, "Make-A-Video: Text-to-Video
//! Generation without Text-Video Data", §3.2), mirroring lucidrains/make-a-video-pytorch
//! (`make_a_video_pytorch/make_a_video.py`: `PseudoConv3d`, `Attention`, `RMSNorm`,
//! `SpatioTemporalAttention`, `SinusoidalPosEmb`).
//!
//! Both layers factorise a 3-D operation into a spatial part, which is exactly the layer of a
//! pretrained text-to-image model applied to every frame, and a temporal part across frames
//! at every spatial position. The temporal part is initialised so that a fresh layer *is*
//! the image layer:
//!
//! - [`PseudoConv3d`]: a `k×k` 2-D conv per frame, then a 1-D conv over frames whose kernel
//!   starts as the identity (Dirac kernel, zero bias);
//! - [`PseudoAttention`]: self-attention over the `H·W` tokens of every frame, then
//!   self-attention over the `F` frames of every position with its output projection
//!   initialised to zero (so its residual branch starts at exactly zero).
//!
//! The temporal attention runs through [`vdm_core::temporal::TemporalHook`], so long-video
//! strategies (FreeNoise windows, FreeLong masks) reach it unchanged. The temporal conv is a
//! local `k_t`-frame filter, not an attention, and runs directly (as a 3-D conv would).
//!
//! ```
//! use burn::tensor::{Device, Distribution, Tensor};
//! use vdm_core::AllFrames;
//! use vdm_models::pseudo3d::{PseudoAttentionConfig, PseudoConv3dConfig};
//!
//! let device = Device::flex();
//! let x = Tensor::<5>::random([1, 8, 4, 6, 6], Distribution::Normal(0.0, 1.0), &device);
//! let conv = PseudoConv3dConfig::new(8, 16).init(&device).unwrap();
//! let y = conv.forward(x).unwrap();
//! assert_eq!(y.dims(), [1, 16, 4, 6, 6]);
//! let attn = PseudoAttentionConfig::new(16).with_heads(2).with_dim_head(8).init(&device).unwrap();
//! let z = attn.forward(y, &AllFrames).unwrap();
//! assert_eq!(z.dims(), [1, 16, 4, 6, 6]);
//! ```

use burn::config::Config;
use burn::module::{Module, Param};
use burn::nn::conv::{Conv1d, Conv1dConfig, Conv2d, Conv2dConfig};
use burn::nn::{Initializer, Linear, LinearConfig, PaddingConfig1d, PaddingConfig2d};
use burn::tensor::module::attention;
use burn::tensor::ops::AttentionModuleOptions;
use burn::tensor::{Bool, Device, Tensor, TensorData};
use serde::{Deserialize, Serialize};
use vdm_core::layout::{
    batch_to_frames, frame_tokens_to_video, frames_to_batch, video_to_frame_tokens,
};
use vdm_core::temporal::{FrameWindow, TemporalHook, TemporalSite, TemporalStages};
use vdm_core::{Error, Result, VideoShape};

// ---------------------------------------------------------------------------------------------
// PseudoConv3d
// ---------------------------------------------------------------------------------------------

/// Configuration of a [`PseudoConv3d`] (lucidrains' `PseudoConv3d(dim, dim_out, kernel_size,
/// temporal_kernel_size=...)`).
#[derive(Config, Debug)]
pub struct PseudoConv3dConfig {
    /// Input channels (`dim`).
    pub channels_in: usize,
    /// Output channels (`dim_out`).
    pub channels_out: usize,
    /// Spatial kernel size `k` (odd; padding `k / 2` keeps `H, W`).
    #[config(default = 3)]
    pub kernel_size: usize,
    /// Temporal kernel size `k_t` (odd; padding `k_t / 2` keeps `F`); defaults to
    /// `kernel_size`, as in the reference.
    pub temporal_kernel_size: Option<usize>,
    /// Whether to create the temporal conv at all. As in the reference, a layer with
    /// `kernel_size = 1` never has one (it is a per-pixel projection).
    #[config(default = true)]
    pub temporal: bool,
    /// Whether both convs have a bias (`True` in the reference; the temporal bias starts at 0).
    #[config(default = true)]
    pub bias: bool,
}

impl PseudoConv3dConfig {
    /// The effective temporal kernel size.
    pub fn temporal_kernel(&self) -> usize {
        self.temporal_kernel_size.unwrap_or(self.kernel_size)
    }

    /// Creates the layer: a default-initialised spatial conv and an identity temporal conv
    /// (`nn.init.dirac_` on the weight, zero bias).
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] naming `channels_in`, `channels_out`, `kernel_size` or
    /// `temporal_kernel_size` when a value is zero or a kernel size is even.
    pub fn init(&self, device: &Device) -> Result<PseudoConv3d> {
        positive("channels_in", self.channels_in)?;
        positive("channels_out", self.channels_out)?;
        odd_kernel("kernel_size", self.kernel_size)?;
        let kt = self.temporal_kernel();
        odd_kernel("temporal_kernel_size", kt)?;

        let k = self.kernel_size;
        let p = k / 2;
        let spatial_conv = Conv2dConfig::new([self.channels_in, self.channels_out], [k, k])
            .with_padding(PaddingConfig2d::Explicit(p, p, p, p))
            .with_bias(self.bias)
            .init(device);

        let temporal_conv = (self.temporal && k > 1).then(|| {
            let c = self.channels_out;
            let mut conv = Conv1dConfig::new(c, c, kt)
                .with_padding(PaddingConfig1d::Explicit(kt / 2, kt / 2))
                .with_bias(self.bias)
                .with_initializer(Initializer::Zeros)
                .init(device);
            conv.weight = Param::from_tensor(dirac_kernel(c, kt, device));
            conv
        });

        Ok(PseudoConv3d {
            spatial_conv,
            temporal_conv,
            channels_in: self.channels_in,
            channels_out: self.channels_out,
        })
    }
}

/// The identity 1-D conv kernel `[c, c, kt]`: `w[o, i, t] = [o = i ∧ t = kt / 2]`
/// (`torch.nn.init.dirac_`).
fn dirac_kernel(c: usize, kt: usize, device: &Device) -> Tensor<3> {
    let mut w = vec![0.0f32; c * c * kt];
    for d in 0..c {
        w[(d * c + d) * kt + kt / 2] = 1.0;
    }
    Tensor::from_data(TensorData::new(w, [c, c, kt]), device)
}

fn positive(field: &str, value: usize) -> Result<()> {
    if value == 0 {
        return Err(Error::invalid(field, "must be at least 1"));
    }
    Ok(())
}

fn odd_kernel(field: &str, value: usize) -> Result<()> {
    if value.is_multiple_of(2) {
        return Err(Error::invalid(
            field,
            format!(
                "must be odd so that 'same' padding of {field} / 2 keeps the size, got {value}"
            ),
        ));
    }
    Ok(())
}

/// Make-A-Video's pseudo-3D convolution (§3.2; lucidrains `PseudoConv3d`): a 2-D conv on
/// every frame followed by a 1-D conv over frames at every spatial position.
///
/// Checkpoint keys: `spatial_conv.{weight,bias}` (`[C_out, C_in, k, k]`),
/// `temporal_conv.{weight,bias}` (`[C_out, C_out, k_t]`), as in the reference.
#[derive(Module, Debug)]
pub struct PseudoConv3d {
    /// The image model's 2-D conv, applied to every frame.
    pub spatial_conv: Conv2d,
    /// The 1-D conv over frames (`None` for 1×1 layers or when disabled).
    pub temporal_conv: Option<Conv1d>,
    /// Input channels.
    pub channels_in: usize,
    /// Output channels.
    pub channels_out: usize,
}

impl PseudoConv3d {
    /// Spatial then temporal conv.
    ///
    /// # Shapes
    /// - `x`: `[B, C_in, F, H, W]`
    /// - output: `[B, C_out, F, H, W]`
    ///
    /// # Errors
    /// [`Error::Shape`] naming `x` if a dimension is zero or `C ≠ channels_in`.
    pub fn forward(&self, x: Tensor<5>) -> Result<Tensor<5>> {
        self.forward_with(x, true)
    }

    /// Spatial conv, then the temporal conv only if `enable_time` (the reference's
    /// `enable_time` argument; `false` treats every frame as an independent image).
    ///
    /// # Shapes
    /// - `x`: `[B, C_in, F, H, W]`
    /// - output: `[B, C_out, F, H, W]`
    ///
    /// # Errors
    /// As [`PseudoConv3d::forward`].
    pub fn forward_with(&self, x: Tensor<5>, enable_time: bool) -> Result<Tensor<5>> {
        let shape = VideoShape::of("x", &x)?;
        shape.expect_channels("x", self.channels_in)?;
        let y = batch_to_frames(self.spatial_conv.forward(frames_to_batch(x)), shape.frames);
        match (&self.temporal_conv, enable_time) {
            (Some(conv), true) => Ok(temporal_conv_1d(conv, y)),
            _ => Ok(y),
        }
    }

    /// Image mode: the spatial conv alone (the reference's 4-D input path).
    ///
    /// # Shapes
    /// - `x`: `[B, C_in, H, W]`
    /// - output: `[B, C_out, H, W]`
    ///
    /// # Errors
    /// [`Error::Shape`] naming `x` if a dimension is zero or `C ≠ channels_in`.
    pub fn forward_image(&self, x: Tensor<4>) -> Result<Tensor<4>> {
        let dims = x.dims();
        if dims.contains(&0) || dims[1] != self.channels_in {
            return Err(Error::shape(
                "x",
                format!(
                    "[B, C, H, W] with C = {} and no zero dimension",
                    self.channels_in
                ),
                &dims,
            ));
        }
        Ok(self.spatial_conv.forward(x))
    }
}

/// `[B, C, F, H, W]` → conv over `F` on `[B·H·W, C, F]` → `[B, C, F, H, W]`.
fn temporal_conv_1d(conv: &Conv1d, x: Tensor<5>) -> Tensor<5> {
    let [b, c, f, h, w] = x.dims();
    // [B, C, F, H, W] -> [B, H, W, C, F] -> [(B H W), C, F]
    let seq = x.permute([0, 3, 4, 1, 2]).reshape([b * h * w, c, f]);
    let out = conv.forward(seq);
    let c_out = out.dims()[1];
    // [B, H, W, C, F] -> [B, C, F, H, W]
    out.reshape([b, h, w, c_out, f]).permute([0, 3, 4, 1, 2])
}

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
fn sinusoidal_table(
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

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;
    use burn::tensor::activation::softmax;
    use vdm_core::noise::{SeededNoise, draw};
    use vdm_core::temporal::{AllFrames, run_chain};

    fn device() -> Device {
        Device::flex()
    }

    thread_local! {
        static DRAWS: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
    }

    /// Seeded host-side normal noise: each test (one thread each) draws the same sequence.
    fn randn<const D: usize>(dims: [usize; D]) -> Tensor<D> {
        let seed = DRAWS.with(|d| {
            d.set(d.get() + 1);
            d.get()
        });
        draw(&mut SeededNoise::new(seed), dims, &device()).unwrap()
    }

    fn max_abs_diff<const D: usize>(a: Tensor<D>, b: Tensor<D>) -> f32 {
        (a - b).abs().max().into_scalar::<f32>()
    }

    /// Frame `f` of every video: `[B, C, H, W]`.
    fn frame(x: &Tensor<5>, f: usize) -> Tensor<4> {
        let [b, c, _, h, w] = x.dims();
        x.clone()
            .slice([0..b, 0..c, f..f + 1, 0..h, 0..w])
            .reshape([b, c, h, w])
    }

    /// Adds `delta` to frame `f` of `x`.
    fn bump_frame(x: &Tensor<5>, f: usize, delta: f32) -> Tensor<5> {
        let [b, c, _, h, w] = x.dims();
        let patch = x
            .clone()
            .slice([0..b, 0..c, f..f + 1, 0..h, 0..w])
            .add_scalar(delta);
        x.clone()
            .slice_assign([0..b, 0..c, f..f + 1, 0..h, 0..w], patch)
    }

    fn randomise(linear: &mut Linear) {
        let dims = linear.weight.dims();
        linear.weight = Param::from_tensor(randn(dims).mul_scalar(0.3));
    }

    // ----- PseudoConv3d -------------------------------------------------------------------

    #[test]
    fn fresh_pseudo_conv_is_the_2d_conv_per_frame() {
        let conv = PseudoConv3dConfig::new(3, 5).init(&device()).unwrap();
        // The temporal conv exists and is the Dirac identity with zero bias.
        let t = conv
            .temporal_conv
            .as_ref()
            .expect("k = 3 has a temporal conv");
        assert_eq!(t.weight.dims(), [5, 5, 3]);
        let bias = t.bias.as_ref().unwrap().val();
        assert_eq!(bias.abs().max().into_scalar::<f32>(), 0.0);

        let x = randn([2, 3, 4, 6, 5]);
        let y = conv.forward(x.clone()).unwrap();
        assert_eq!(y.dims(), [2, 5, 4, 6, 5]);
        for f in 0..4 {
            let want = conv.spatial_conv.forward(frame(&x, f));
            let d = max_abs_diff(frame(&y, f), want);
            assert!(d < 1e-6, "frame {f}: max abs diff {d}");
        }
        // Image mode and `enable_time = false` agree with it too.
        let img = conv.forward_image(frame(&x, 2)).unwrap();
        assert!(max_abs_diff(img, frame(&y, 2)) < 1e-6);
        let spatial = conv.forward_with(x, false).unwrap();
        assert!(max_abs_diff(spatial, y) < 1e-6);
    }

    #[test]
    fn temporal_kernel_mixes_neighbouring_frames_only() {
        let mut conv = PseudoConv3dConfig::new(2, 3)
            .with_temporal_kernel_size(Some(3))
            .init(&device())
            .unwrap();
        let t = conv.temporal_conv.as_mut().unwrap();
        t.weight = Param::from_tensor(randn([3, 3, 3]));
        let x = randn([1, 2, 5, 4, 4]);
        let y = conv.forward(x.clone()).unwrap();
        let y2 = conv.forward(bump_frame(&x, 0, 1.0)).unwrap();
        // Frame 1 (a neighbour) changes; frame 3 (two frames away, k_t = 3) does not.
        assert!(max_abs_diff(frame(&y, 1), frame(&y2, 1)) > 1e-3);
        assert!(max_abs_diff(frame(&y, 3), frame(&y2, 3)) < 1e-6);
        // The temporal conv is exactly a 1-D conv over frames: check one output by hand.
        let w = conv.temporal_conv.as_ref().unwrap().weight.val();
        let s = conv.forward_with(x.clone(), false).unwrap();
        let s_data = s.into_data().try_to_vec::<f32>().unwrap();
        let w_data = w.into_data().try_to_vec::<f32>().unwrap();
        let (o, fo, hh, ww) = (1, 2, 3, 0);
        let mut want = 0.0f32;
        for i in 0..3 {
            for k in 0..3 {
                let fi = fo + k - 1;
                want += w_data[(o * 3 + i) * 3 + k] * s_data[((i * 5 + fi) * 4 + hh) * 4 + ww];
            }
        }
        let got = y
            .slice([0..1, o..o + 1, fo..fo + 1, hh..hh + 1, ww..ww + 1])
            .into_scalar::<f32>();
        assert!((got - want).abs() < 1e-4, "got {got}, want {want}");
    }

    #[test]
    fn pseudo_conv_single_frame_and_1x1() {
        let conv = PseudoConv3dConfig::new(3, 3).init(&device()).unwrap();
        let x = randn([1, 3, 1, 4, 4]);
        let y = conv.forward(x.clone()).unwrap();
        assert!(max_abs_diff(frame(&y, 0), conv.spatial_conv.forward(frame(&x, 0))) < 1e-6);
        // kernel_size = 1: no temporal conv (as in the reference), or when disabled.
        let c1 = PseudoConv3dConfig::new(3, 4)
            .with_kernel_size(1)
            .init(&device())
            .unwrap();
        assert!(c1.temporal_conv.is_none());
        let off = PseudoConv3dConfig::new(3, 4)
            .with_temporal(false)
            .init(&device())
            .unwrap();
        assert!(off.temporal_conv.is_none());
        assert_eq!(off.forward(x).unwrap().dims(), [1, 4, 1, 4, 4]);
    }

    #[test]
    fn pseudo_conv_errors_are_typed() {
        let e = PseudoConv3dConfig::new(3, 3)
            .with_kernel_size(2)
            .init(&device())
            .unwrap_err();
        assert!(
            matches!(&e, Error::InvalidConfig { field, .. } if field == "kernel_size"),
            "{e}"
        );
        let e = PseudoConv3dConfig::new(3, 3)
            .with_temporal_kernel_size(Some(4))
            .init(&device())
            .unwrap_err();
        assert!(
            matches!(&e, Error::InvalidConfig { field, .. } if field == "temporal_kernel_size"),
            "{e}"
        );
        let e = PseudoConv3dConfig::new(0, 3).init(&device()).unwrap_err();
        assert!(
            matches!(&e, Error::InvalidConfig { field, .. } if field == "channels_in"),
            "{e}"
        );
        let conv = PseudoConv3dConfig::new(3, 3).init(&device()).unwrap();
        let e = conv.forward(randn([1, 4, 2, 3, 3])).unwrap_err();
        assert!(
            matches!(&e, Error::Shape { tensor, .. } if tensor == "x"),
            "{e}"
        );
        let e = conv.forward_image(randn([1, 2, 3, 3])).unwrap_err();
        assert!(
            matches!(&e, Error::Shape { tensor, .. } if tensor == "x"),
            "{e}"
        );
    }

    #[test]
    fn pseudo_conv_checkpoint_keys() {
        use burn::store::ModuleSnapshot;
        let conv = PseudoConv3dConfig::new(3, 5).init(&device()).unwrap();
        let mut keys: Vec<(String, Vec<usize>)> = conv
            .collect(None, None, false)
            .iter()
            .map(|t| (t.name.clone(), t.shape.to_vec()))
            .collect();
        keys.sort();
        assert_eq!(
            keys,
            [
                ("spatial_conv.bias".to_string(), vec![5]),
                ("spatial_conv.weight".to_string(), vec![5, 3, 3, 3]),
                ("temporal_conv.bias".to_string(), vec![5]),
                ("temporal_conv.weight".to_string(), vec![5, 5, 3]),
            ]
        );
    }

    // ----- PseudoAttention ----------------------------------------------------------------

    fn small_attention() -> PseudoAttentionConfig {
        PseudoAttentionConfig::new(8).with_heads(2).with_dim_head(4)
    }

    /// A perturbed layer: the temporal `to_out` is no longer zero.
    fn trained(cfg: PseudoAttentionConfig) -> PseudoAttention {
        let mut layer = cfg.init(&device()).unwrap();
        randomise(&mut layer.temporal_attn.to_out);
        layer
    }

    #[test]
    fn mav_attention_matches_hand_written_softmax_attention() {
        let attn = MavAttention::new(6, 2, 3, false, &device());
        let x = randn([2, 5, 6]);
        let got = attn.forward(x.clone(), None, None).unwrap();
        // norm: x / ‖x‖ · √6 · γ (γ = 1)
        let h = x.clone() / x.square().sum_dim(2).sqrt() * (6f32).sqrt();
        let q = h.clone().matmul(attn.to_q.weight.val().unsqueeze::<3>());
        let kv = h.matmul(attn.to_kv.weight.val().unsqueeze::<3>());
        let k = kv.clone().slice([0..2, 0..5, 0..6]);
        let v = kv.slice([0..2, 0..5, 6..12]);
        let mut heads = Vec::new();
        for hd in 0..2 {
            let r = hd * 3..hd * 3 + 3;
            let qh = q.clone().slice([0..2, 0..5, r.clone()]);
            let kh = k.clone().slice([0..2, 0..5, r.clone()]);
            let vh = v.clone().slice([0..2, 0..5, r]);
            let p = softmax(qh.matmul(kh.swap_dims(1, 2)).div_scalar(3f32.sqrt()), 2);
            heads.push(p.matmul(vh));
        }
        let want = Tensor::cat(heads, 2).matmul(attn.to_out.weight.val().unsqueeze::<3>());
        let d = max_abs_diff(got, want);
        assert!(d < 1e-5, "max abs diff {d}");
    }

    #[test]
    fn fresh_pseudo_attention_is_the_spatial_attention() {
        let layer = small_attention().init(&device()).unwrap();
        let zero = layer
            .temporal_attn
            .to_out
            .weight
            .val()
            .abs()
            .max()
            .into_scalar::<f32>();
        assert_eq!(zero, 0.0);
        let x = randn([2, 8, 4, 3, 3]);
        let full = layer.forward(x.clone(), &AllFrames).unwrap();
        let spatial = layer.forward_spatial_only(x.clone()).unwrap();
        let d = max_abs_diff(full.clone(), spatial);
        assert!(d < 1e-6, "max abs diff {d}");
        // ... which is the image attention on every frame.
        for f in 0..4 {
            let img = layer.forward_image(frame(&x, f)).unwrap();
            let d = max_abs_diff(frame(&full, f), img);
            assert!(d < 1e-6, "frame {f}: max abs diff {d}");
        }
    }

    #[test]
    fn trained_temporal_attention_mixes_frames() {
        for encoding in [
            TemporalPositionEncoding::Sinusoidal,
            TemporalPositionEncoding::None,
        ] {
            let layer = trained(small_attention().with_temporal_position(encoding));
            let x = randn([1, 8, 4, 2, 3]);
            let full = layer.forward(x.clone(), &AllFrames).unwrap();
            let spatial = layer.forward_spatial_only(x.clone()).unwrap();
            assert!(max_abs_diff(full.clone(), spatial) > 1e-3, "{encoding:?}");
            // A change in frame 0 reaches frame 3 through the temporal attention ...
            let bumped = layer.forward(bump_frame(&x, 0, 1.0), &AllFrames).unwrap();
            assert!(
                max_abs_diff(frame(&full, 3), frame(&bumped, 3)) > 1e-4,
                "{encoding:?}"
            );
            // ... but not through the spatial attention alone.
            let s0 = layer.forward_spatial_only(x.clone()).unwrap();
            let s1 = layer.forward_spatial_only(bump_frame(&x, 0, 1.0)).unwrap();
            assert!(max_abs_diff(frame(&s0, 3), frame(&s1, 3)) < 1e-6);
        }
    }

    #[test]
    fn causal_time_attention_ignores_future_frames() {
        let layer = trained(small_attention().with_causal_time_attn(true));
        let x = randn([1, 8, 4, 2, 2]);
        let y0 = layer.forward(x.clone(), &AllFrames).unwrap();
        let y1 = layer.forward(bump_frame(&x, 3, 1.0), &AllFrames).unwrap();
        for f in 0..3 {
            assert!(
                max_abs_diff(frame(&y0, f), frame(&y1, f)) < 1e-6,
                "frame {f}"
            );
        }
        let y2 = layer.forward(bump_frame(&x, 0, 1.0), &AllFrames).unwrap();
        assert!(max_abs_diff(frame(&y0, 3), frame(&y2, 3)) > 1e-4);
    }

    /// One recorded hook call: layer name, frame count, `(start, end, positions)` per window.
    type Call = (String, usize, Vec<(usize, usize, std::ops::Range<usize>)>);

    /// A hook that records every call and runs the stages over fixed windows (with
    /// window-relative positions and an optional mask), writing each window's frames back.
    struct RecordingHook {
        windows: Vec<(usize, usize)>,
        position_offset: usize,
        mask_self_only: bool,
        calls: Mutex<Vec<Call>>,
    }

    impl RecordingHook {
        fn new(windows: Vec<(usize, usize)>) -> Self {
            Self {
                windows,
                position_offset: 0,
                mask_self_only: false,
                calls: Mutex::new(Vec::new()),
            }
        }
    }

    impl TemporalHook for RecordingHook {
        fn apply(
            &self,
            site: &TemporalSite<'_>,
            tokens: Tensor<3>,
            stages: &dyn TemporalStages,
        ) -> Result<Tensor<3>> {
            let [n, f, c] = tokens.dims();
            assert_eq!(site.num_frames, f);
            let mut out = tokens.clone();
            let mut seen = Vec::new();
            for &(start, end) in &self.windows {
                let mut window = FrameWindow::relative(start, end);
                window.positions = self.position_offset..self.position_offset + end - start;
                if self.mask_self_only {
                    let len = end - start;
                    window.mask = Some(Tensor::<2, Bool>::diag_mask(
                        [len, len],
                        0,
                        &tokens.device(),
                    ));
                }
                let part = tokens.clone().slice([0..n, start..end, 0..c]);
                let done = run_chain(stages, part, &window)?;
                out = out.slice_assign([0..n, start..end, 0..c], done);
                seen.push((start, end, window.positions.clone()));
            }
            self.calls
                .lock()
                .unwrap()
                .push((site.layer.to_string(), site.num_frames, seen));
            Ok(out)
        }
    }

    #[test]
    fn temporal_part_goes_through_the_hook() {
        let layer = trained(small_attention().with_layer_name(Some("mid_block.attn".into())));
        let x = randn([1, 8, 4, 2, 2]);

        // One full window reproduces `AllFrames` and is recorded.
        let hook = RecordingHook::new(vec![(0, 4)]);
        let y = layer.forward(x.clone(), &hook).unwrap();
        let all = layer.forward(x.clone(), &AllFrames).unwrap();
        assert!(max_abs_diff(y, all.clone()) < 1e-6);
        let calls = hook.calls.lock().unwrap().clone();
        assert_eq!(
            calls,
            [("mid_block.attn".to_string(), 4, vec![(0, 4, 0..4)])]
        );

        // Two disjoint windows: frame 0 no longer reaches frame 3, but still frame 1.
        let hook = RecordingHook::new(vec![(0, 2), (2, 4)]);
        let y0 = layer.forward(x.clone(), &hook).unwrap();
        let y1 = layer.forward(bump_frame(&x, 0, 1.0), &hook).unwrap();
        assert!(max_abs_diff(frame(&y0, 3), frame(&y1, 3)) < 1e-6);
        assert!(max_abs_diff(frame(&y0, 1), frame(&y1, 1)) > 1e-4);
        let calls = hook.calls.lock().unwrap().clone();
        assert_eq!(calls.len(), 2);
        assert_eq!(calls[0].2, vec![(0, 2, 0..2), (2, 4, 0..2)]);

        // The window's mask is honoured: attending only to itself, frames are independent.
        let mut hook = RecordingHook::new(vec![(0, 4)]);
        hook.mask_self_only = true;
        let y0 = layer.forward(x.clone(), &hook).unwrap();
        let y1 = layer.forward(bump_frame(&x, 0, 1.0), &hook).unwrap();
        for f in 1..4 {
            assert!(
                max_abs_diff(frame(&y0, f), frame(&y1, f)) < 1e-6,
                "frame {f}"
            );
        }
    }

    #[test]
    fn window_positions_drive_the_sinusoidal_encoding() {
        let x = randn([1, 8, 3, 2, 2]);
        let mut shifted = RecordingHook::new(vec![(0, 3)]);
        shifted.position_offset = 5;
        let sin = trained(small_attention());
        let d = max_abs_diff(
            sin.forward(x.clone(), &AllFrames).unwrap(),
            sin.forward(x.clone(), &shifted).unwrap(),
        );
        assert!(d > 1e-4, "positions 5..8 should differ from 0..3, diff {d}");
        let none =
            trained(small_attention().with_temporal_position(TemporalPositionEncoding::None));
        let d = max_abs_diff(
            none.forward(x.clone(), &AllFrames).unwrap(),
            none.forward(x, &shifted).unwrap(),
        );
        assert!(d < 1e-6, "no encoding: positions do not matter, diff {d}");
    }

    #[test]
    fn pseudo_attention_errors_are_typed() {
        let layer = small_attention().init(&device()).unwrap();
        let e = layer
            .forward(randn([1, 6, 2, 2, 2]), &AllFrames)
            .unwrap_err();
        assert!(
            matches!(&e, Error::Shape { tensor, .. } if tensor == "x"),
            "{e}"
        );
        let e = layer.forward_image(randn([1, 6, 2, 2])).unwrap_err();
        assert!(
            matches!(&e, Error::Shape { tensor, .. } if tensor == "x"),
            "{e}"
        );
        let e = PseudoAttentionConfig::new(6)
            .with_heads(0)
            .init(&device())
            .unwrap_err();
        assert!(
            matches!(&e, Error::InvalidConfig { field, .. } if field == "heads"),
            "{e}"
        );
        let e = PseudoAttentionConfig::new(7).init(&device()).unwrap_err();
        assert!(
            matches!(&e, Error::InvalidConfig { field, .. } if field == "dim"),
            "{e}"
        );
        // A wrong-sized window mask and a bad stage index.
        let mut window = FrameWindow::full(3);
        window.mask = Some(Tensor::<2, Bool>::diag_mask([2, 2], 0, &device()));
        let e = layer.run_stage(0, randn([4, 3, 8]), &window).unwrap_err();
        assert!(
            matches!(&e, Error::Shape { tensor, .. } if tensor == "window.mask"),
            "{e}"
        );
        let e = layer
            .run_stage(1, randn([4, 3, 8]), &FrameWindow::full(3))
            .unwrap_err();
        assert!(
            matches!(&e, Error::InvalidConfig { field, .. } if field == "stage"),
            "{e}"
        );
        let e = layer
            .run_stage(0, randn([4, 3, 8]), &FrameWindow::full(4))
            .unwrap_err();
        assert!(
            matches!(&e, Error::Shape { tensor, .. } if tensor == "tokens"),
            "{e}"
        );
    }

    #[test]
    fn pseudo_attention_checkpoint_keys() {
        use burn::store::ModuleSnapshot;
        let layer = small_attention().init(&device()).unwrap();
        let mut keys: Vec<String> = layer
            .collect(None, None, false)
            .iter()
            .map(|t| t.name.clone())
            .collect();
        keys.sort();
        let want: Vec<String> = ["spatial_attn", "temporal_attn"]
            .iter()
            .flat_map(|p| {
                ["norm.gamma", "to_kv.weight", "to_out.weight", "to_q.weight"]
                    .map(|k| format!("{p}.{k}"))
            })
            .collect();
        assert_eq!(keys, want);
    }
}
