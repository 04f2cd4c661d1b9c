//! Attention, the GEGLU feed-forward and the transformer block shared by every spatial and
//! temporal transformer, mirroring diffusers' `models/attention_processor.py` (`Attention` with
//! `AttnProcessor2_0`) and `models/attention.py` (`FeedForward`, `GEGLU` from
//! `models/activations.py`, `BasicTransformerBlock`).
//!
//! Field names follow the checkpoint keys; the few `nn.ModuleList` indices diffusers adds
//! (`to_out.0`, `ff.net.0.proj`, `ff.net.2`) are renamed by [`crate::keymap`].
//!
//! Dropout layers of the PyTorch modules are not materialised: vdm runs inference only, where
//! dropout is the identity (diffusers models are used in `.eval()` mode).
//!
//! Size: over 1000 lines because the host-kernel glue of `Attention` lives here beside the
//! module (the fused feed-forward is in `attention/cpu_fused.rs`, the kernels in their own
//! layer, `crate::cpu`); issue 14 also splits this file by idea (attention, feed-forward,
//! transformer block). Not yet done.

use burn::config::Config;
use burn::module::Module;
use burn::nn::{GroupNorm, GroupNormConfig, LayerNorm, LayerNormConfig, Linear, LinearConfig};
use burn::tensor::activation::gelu;
use burn::tensor::module::attention;
use burn::tensor::ops::AttentionModuleOptions;
use burn::tensor::{Bool, Device, Int, Tensor, TensorData};
use vdm_core::temporal::{AttentionStage, FrameWindow, TemporalStages};
use vdm_core::{Error, Result};

use crate::cpu;
use crate::embeddings::{SinusoidalPositionalEmbedding, SinusoidalPositionalEmbeddingConfig};

mod cpu_fused;

/// Checks that `value > 0`, naming `field`.
pub(crate) fn ensure_nonzero(field: &str, value: usize) -> Result<()> {
    if value == 0 {
        return Err(Error::invalid(field, "must be > 0"));
    }
    Ok(())
}

/// Checks that `channels` splits into `groups` GroupNorm groups, naming `field`.
pub(crate) fn ensure_groups(field: &str, channels: usize, groups: usize) -> Result<()> {
    if groups == 0 || channels == 0 || !channels.is_multiple_of(groups) {
        return Err(Error::invalid(
            field,
            format!("{channels} channels cannot be split into {groups} GroupNorm groups"),
        ));
    }
    Ok(())
}

/// Checks a dropout probability (`[0, 1)`), naming `field`.
pub(crate) fn ensure_dropout(field: &str, p: f64) -> Result<()> {
    if !(0.0..1.0).contains(&p) {
        return Err(Error::invalid(field, format!("must be in [0, 1), got {p}")));
    }
    Ok(())
}

/// Checks a normalisation epsilon, naming `field`.
pub(crate) fn ensure_eps(field: &str, eps: f64) -> Result<()> {
    vdm_core::error::ensure_positive(field, eps).map(|_| ())
}

/// Checks the trailing (channel) dimension of a token tensor `[N, L, C]`.
pub(crate) fn expect_tokens(name: &str, x: &Tensor<3>, channels: usize) -> Result<()> {
    let dims = x.dims();
    if dims[2] != channels || dims[0] == 0 || dims[1] == 0 {
        return Err(Error::shape(
            name,
            format!("[N, L, C] with C = {channels} and N, L > 0"),
            &dims,
        ));
    }
    Ok(())
}

/// Checks the channel dimension of an image batch `[N, C, H, W]`.
pub(crate) fn expect_images(name: &str, x: &Tensor<4>, channels: usize) -> Result<()> {
    let dims = x.dims();
    if dims[1] != channels || dims.contains(&0) {
        return Err(Error::shape(
            name,
            format!("[N, C, H, W] with C = {channels} and every dimension > 0"),
            &dims,
        ));
    }
    Ok(())
}

/// Configuration of an [`Attention`] layer (diffusers `Attention`, `attention_processor.py`).
///
/// Heads are contiguous chunks of `head_dim` channels of the `heads · head_dim` inner width;
/// scores are scaled by `1 / sqrt(head_dim)`.
#[derive(Config, Debug)]
pub struct AttentionConfig {
    /// Channels of the query input (`query_dim`) and of the output.
    pub query_dim: usize,
    /// Number of heads (`heads`).
    pub heads: usize,
    /// Channels per head (`dim_head`).
    pub head_dim: usize,
    /// Channels of the cross-attention context (`cross_attention_dim`); `None` for
    /// self-attention, where keys and values come from the query input.
    #[config(default = "None")]
    pub cross_attention_dim: Option<usize>,
    /// Whether `to_q`, `to_k`, `to_v` have a bias (`bias`; `false` in transformer blocks,
    /// `true` in the VAE mid-block attention).
    #[config(default = false)]
    pub qkv_bias: bool,
    /// Whether `to_out.0` has a bias (`out_bias`).
    #[config(default = true)]
    pub out_bias: bool,
    /// Groups of the input GroupNorm (`norm_num_groups`); `Some` only for the VAE-style
    /// image attention, whose checkpoint has a `group_norm` module.
    #[config(default = "None")]
    pub norm_num_groups: Option<usize>,
    /// Epsilon of that GroupNorm (`eps`).
    #[config(default = 1e-5)]
    pub norm_eps: f64,
    /// Add the input back to the output in [`Attention::forward_image`]
    /// (`residual_connection`).
    #[config(default = false)]
    pub residual_connection: bool,
    /// The output of [`Attention::forward_image`] is divided by this (`rescale_output_factor`).
    #[config(default = 1.0)]
    pub rescale_output_factor: f64,
}

impl AttentionConfig {
    /// The VAE mid-block attention of diffusers' `UNetMidBlock2D` (`unet_2d_blocks.py`):
    /// `heads = channels / head_dim`, biases on q/k/v/out, its own `group_norm`, residual
    /// connection, `upcast_softmax` (a no-op in `f32`).
    ///
    /// Use [`Attention::forward_image`] on `[B, C, H, W]`.
    pub fn vae(channels: usize, head_dim: usize, groups: usize, eps: f64) -> Self {
        Self::new(channels, channels / head_dim.max(1), head_dim)
            .with_qkv_bias(true)
            .with_norm_num_groups(Some(groups))
            .with_norm_eps(eps)
            .with_residual_connection(true)
    }

    /// Inner width `heads · head_dim`.
    pub fn inner_dim(&self) -> usize {
        self.heads * self.head_dim
    }

    /// Checks the configuration, naming the offending field.
    pub fn validate(&self) -> Result<()> {
        ensure_nonzero("query_dim", self.query_dim)?;
        ensure_nonzero("heads", self.heads)?;
        ensure_nonzero("head_dim", self.head_dim)?;
        if let Some(d) = self.cross_attention_dim {
            ensure_nonzero("cross_attention_dim", d)?;
        }
        if let Some(groups) = self.norm_num_groups {
            ensure_groups("norm_num_groups", self.query_dim, groups)?;
            ensure_eps("norm_eps", self.norm_eps)?;
        }
        vdm_core::error::ensure_positive("rescale_output_factor", self.rescale_output_factor)?;
        Ok(())
    }

    /// Validates and builds the layer.
    pub fn try_init(&self, device: &Device) -> Result<Attention> {
        self.validate()?;
        let inner = self.inner_dim();
        let kv_dim = self.cross_attention_dim.unwrap_or(self.query_dim);
        let linear = |i, o, bias| LinearConfig::new(i, o).with_bias(bias).init(device);
        Ok(Attention {
            group_norm: self.norm_num_groups.map(|g| {
                GroupNormConfig::new(g, self.query_dim)
                    .with_epsilon(self.norm_eps)
                    .init(device)
            }),
            to_q: linear(self.query_dim, inner, self.qkv_bias),
            to_k: linear(kv_dim, inner, self.qkv_bias),
            to_v: linear(kv_dim, inner, self.qkv_bias),
            to_out: linear(inner, self.query_dim, self.out_bias),
            query_dim: self.query_dim,
            kv_dim,
            heads: self.heads,
            head_dim: self.head_dim,
            residual_connection: self.residual_connection,
            rescale_output_factor: self.rescale_output_factor,
        })
    }
}

/// Multi-head scaled dot-product attention (diffusers `Attention` + `AttnProcessor2_0`),
/// computed with Burn's fused [`attention`] op.
///
/// Checkpoint keys: `to_q`, `to_k`, `to_v`, `to_out.0` (→ `to_out`, see [`crate::keymap`]),
/// and `group_norm` for the VAE variant.
#[derive(Module, Debug)]
pub struct Attention {
    /// Input GroupNorm of the VAE-style image attention (`group_norm`), else `None`.
    pub group_norm: Option<GroupNorm>,
    /// Query projection `query_dim → heads·head_dim`.
    pub to_q: Linear,
    /// Key projection `kv_dim → heads·head_dim`.
    pub to_k: Linear,
    /// Value projection `kv_dim → heads·head_dim`.
    pub to_v: Linear,
    /// Output projection `heads·head_dim → query_dim` (checkpoint `to_out.0`).
    pub to_out: Linear,
    /// Query channels.
    pub query_dim: usize,
    /// Key/value input channels (`cross_attention_dim` or `query_dim`).
    pub kv_dim: usize,
    /// Number of heads.
    pub heads: usize,
    /// Channels per head.
    pub head_dim: usize,
    /// Residual connection of [`Attention::forward_image`].
    pub residual_connection: bool,
    /// Output divisor of [`Attention::forward_image`].
    pub rescale_output_factor: f64,
}

impl Attention {
    /// Attention over token sequences.
    ///
    /// `context` provides keys and values (cross-attention); `None` means self-attention.
    /// A context of `N / r` items is shared by `r` consecutive query items (e.g. one text
    /// context per video for frames folded into the batch): its keys and values are projected
    /// once, not per item. `mask` (`[Lq, Lk]`, `true` = may not attend) is shared by every
    /// batch item and head.
    ///
    /// # Shapes
    /// - `x`: `[N, Lq, query_dim]`
    /// - `context`: `[N / r, Lk, kv_dim]` for an `r` that divides `N` (usually `r = 1`)
    /// - `mask`: `[Lq, Lk]`
    /// - output: `[N, Lq, query_dim]`
    pub fn forward(
        &self,
        x: Tensor<3>,
        context: Option<Tensor<3>>,
        mask: Option<&Tensor<2, Bool>>,
    ) -> Result<Tensor<3>> {
        self.run(x, context, mask, None)
    }

    /// `residual + forward(x, context, mask)` (the residual add is fused into the output
    /// projection on the flex backend).
    ///
    /// # Shapes
    /// As [`forward`](Self::forward); `residual`: `[N, Lq, query_dim]`.
    pub fn forward_residual(
        &self,
        x: Tensor<3>,
        context: Option<Tensor<3>>,
        mask: Option<&Tensor<2, Bool>>,
        residual: Tensor<3>,
    ) -> Result<Tensor<3>> {
        if residual.dims() != [x.dims()[0], x.dims()[1], self.query_dim] {
            return Err(Error::shape(
                "residual",
                format!("[N, Lq, {}] as hidden_states", self.query_dim),
                &residual.dims(),
            ));
        }
        self.run(x, context, mask, Some(residual))
    }

    fn run(
        &self,
        x: Tensor<3>,
        context: Option<Tensor<3>>,
        mask: Option<&Tensor<2, Bool>>,
        residual: Option<Tensor<3>>,
    ) -> Result<Tensor<3>> {
        expect_tokens("hidden_states", &x, self.query_dim)?;
        let [n, lq, _] = x.dims();
        let context = match context {
            Some(c) => {
                expect_tokens("encoder_hidden_states", &c, self.kv_dim)?;
                let cn = c.dims()[0];
                if !n.is_multiple_of(cn) {
                    return Err(Error::shape(
                        "encoder_hidden_states",
                        format!(
                            "[M, S, {}] with M dividing N = {n} (the batch of hidden_states)",
                            self.kv_dim
                        ),
                        &c.dims(),
                    ));
                }
                Some(c)
            }
            None => {
                if self.kv_dim != self.query_dim {
                    return Err(Error::invalid(
                        "encoder_hidden_states",
                        "this attention is a cross-attention layer and needs a context",
                    ));
                }
                None
            }
        };
        if let Some(m) = mask {
            let lk = context.as_ref().map_or(lq, |c| c.dims()[1]);
            if m.dims() != [lq, lk] {
                return Err(Error::shape(
                    "attention_mask",
                    format!("[Lq, Lk] = [{lq}, {lk}]"),
                    &m.dims(),
                ));
            }
        }
        // A context shared by r items: fold those items into the query sequence
        // ([N, Lq, C] → [N/r, r·Lq, C], a free reshape) so that keys and values are computed
        // once per context. With a mask (per query row) the context is repeated instead.
        let (x, context, residual, groups) = match context {
            Some(c) if c.dims()[0] < n => {
                let cn = c.dims()[0];
                if mask.is_some() {
                    let [_, s, d] = c.dims();
                    let c = c
                        .unsqueeze_dim::<4>(1)
                        .expand([cn, n / cn, s, d])
                        .reshape([n, s, d]);
                    (x, Some(c), residual, n)
                } else {
                    let fold = |t: Tensor<3>| t.reshape([cn, (n / cn) * lq, self.query_dim]);
                    (fold(x), Some(c), residual.map(fold), cn)
                }
            }
            other => (x, other, residual, n),
        };
        let out = if mask.is_none() && cpu::enabled(&x.device(), x.dtype()) {
            self.attend_cpu(x, context, residual)
        } else {
            let out = self.attend(x, context, mask);
            match residual {
                Some(r) => r + out,
                None => out,
            }
        };
        Ok(if groups == n {
            out
        } else {
            out.reshape([n, lq, self.query_dim])
        })
    }

    /// Projections, Burn's fused attention op and the output projection.
    fn attend(
        &self,
        x: Tensor<3>,
        context: Option<Tensor<3>>,
        mask: Option<&Tensor<2, Bool>>,
    ) -> Tensor<3> {
        let kv = context.unwrap_or_else(|| x.clone());
        let q = self.split_heads(self.to_q.forward(x));
        let k = self.split_heads(self.to_k.forward(kv.clone()));
        let v = self.split_heads(self.to_v.forward(kv));
        self.to_out.forward(self.attention_heads(q, k, v, mask))
    }

    /// Burn's fused attention op on split heads (`[N, heads, L, head_dim]`), heads merged
    /// into `[N, Lq, heads·head_dim]`; `mask` (`[Lq, Lk]`) is shared by every item and head.
    fn attention_heads(
        &self,
        q: Tensor<4>,
        k: Tensor<4>,
        v: Tensor<4>,
        mask: Option<&Tensor<2, Bool>>,
    ) -> Tensor<3> {
        let [n, _, lq, _] = q.dims();
        let lk = k.dims()[2];
        let mask = mask.map(|m| {
            m.clone()
                .reshape([1, 1, lq, lk])
                .expand([n, self.heads, lq, lk])
        });
        let options = AttentionModuleOptions {
            scale: Some(self.scale()),
            softcap: None,
            is_causal: false,
        };
        attention(q, k, v, mask, None, options)
            .swap_dims(1, 2)
            .reshape([n, lq, self.heads * self.head_dim])
    }

    /// [`attend`](Self::attend) without a mask on the flex backend, plus `residual`: the
    /// projections write the heads into one buffer, the CPU attention kernel reads them in
    /// place and writes them merged (no head split/merge copies, no score tiles through
    /// generic GEMM calls), and the output projection adds the residual.
    fn attend_cpu(
        &self,
        x: Tensor<3>,
        context: Option<Tensor<3>>,
        residual: Option<Tensor<3>>,
    ) -> Tensor<3> {
        let device = x.device();
        let [n, lq, _] = x.dims();
        let inner = self.heads * self.head_dim;
        let xd = cpu::host(x);
        let xs = cpu::f32s(&xd);
        let o = match context {
            // Self-attention: q, k, v side by side in one [n·lq, 3·inner] buffer.
            None => {
                let qkv = project_host(&[&self.to_q, &self.to_k, &self.to_v], xs, n * lq);
                let head = |col| cpu::HeadLayout::packed(&qkv, lq, 3 * inner, col);
                self.attention_host(head(0), head(inner), head(2 * inner), n, lq, lq)
            }
            // Cross-attention: q alone, k and v side by side in [m·lk, 2·inner].
            Some(c) => {
                let [m, lk, _] = c.dims();
                let cd = cpu::host(c);
                let q = project_host(&[&self.to_q], xs, n * lq);
                let kv = project_host(&[&self.to_k, &self.to_v], cpu::f32s(&cd), m * lk);
                let head = |col| cpu::HeadLayout::packed(&kv, lk, 2 * inner, col);
                let q = cpu::HeadLayout::packed(&q, lq, inner, 0);
                self.attention_host(q, head(0), head(inner), n, lq, lk)
            }
        };
        let rd = residual.map(cpu::host);
        let rows = rd
            .as_ref()
            .map(|r| cpu::InitRows::rows(cpu::f32s(r), self.query_dim));
        let out = self.output_host(&o, n * lq, rows);
        cpu::tensor(TensorData::new(out, [n, lq, self.query_dim]), &device)
    }

    /// The CPU attention kernel on heads read in place; merged heads `[n·lq, heads·head_dim]`.
    fn attention_host(
        &self,
        q: cpu::HeadLayout<'_>,
        k: cpu::HeadLayout<'_>,
        v: cpu::HeadLayout<'_>,
        batch: usize,
        lq: usize,
        lk: usize,
    ) -> Vec<f32> {
        cpu::attention(
            q,
            k,
            v,
            cpu::AttentionShape {
                batch,
                heads: self.heads,
                lq,
                lk,
                head_dim: self.head_dim,
                scale: self.scale() as f32,
            },
        )
    }

    /// `residual + to_out(o)` for `rows` rows of merged heads, on the host.
    fn output_host(&self, o: &[f32], rows: usize, residual: Option<cpu::InitRows>) -> Vec<f32> {
        let inner = self.heads * self.head_dim;
        let wo = cpu::LinearHost::new(&self.to_out);
        cpu::filled(rows * self.query_dim, |buf| {
            // SAFETY: `buf` holds rows·query_dim values; `o` and the residual match.
            unsafe {
                wo.apply(
                    rows,
                    cpu::Mat::rows(o, inner),
                    cpu::MatMut::rows(buf, self.query_dim),
                    residual,
                    cpu::threads(),
                )
            }
        })
    }

    /// The score scale `1 / sqrt(head_dim)`.
    fn scale(&self) -> f64 {
        1.0 / (self.head_dim as f64).sqrt()
    }

    /// Self-attention over the pixels of an image, as in the VAE mid block
    /// (`AttnProcessor2_0` on 4-D input): optional `group_norm`, attention over the `H·W`
    /// tokens, `to_out`, optional residual, division by `rescale_output_factor`.
    ///
    /// # Shapes
    /// - `x`: `[B, query_dim, H, W]`
    /// - output: `[B, query_dim, H, W]`
    pub fn forward_image(&self, x: Tensor<4>) -> Result<Tensor<4>> {
        expect_images("hidden_states", &x, self.query_dim)?;
        let [b, c, h, w] = x.dims();
        let residual = x.clone();
        let mut t = x.reshape([b, c, h * w]);
        if let Some(norm) = &self.group_norm {
            t = norm.forward(t);
        }
        let t = t.swap_dims(1, 2);
        let out = self.forward(t, None, None)?;
        let mut out = out.swap_dims(1, 2).reshape([b, c, h, w]);
        if self.residual_connection {
            out = out + residual;
        }
        if self.rescale_output_factor != 1.0 {
            out = out / self.rescale_output_factor;
        }
        Ok(out)
    }

    /// `[N, L, heads·head_dim] -> [N, heads, L, head_dim]`.
    /// Self-attention projections side by side, `[to_q | to_k | to_v](x)` (biases included).
    ///
    /// # Shapes
    /// - `x`: `[N, L, query_dim]`
    /// - output: `[N, L, 3·heads·head_dim]`
    pub fn project_qkv(&self, x: Tensor<3>) -> Result<Tensor<3>> {
        self.expect_self_attention()?;
        expect_tokens("hidden_states", &x, self.query_dim)?;
        let [n, l, _] = x.dims();
        let inner = self.heads * self.head_dim;
        if !cpu::enabled(&x.device(), x.dtype()) {
            return Ok(Tensor::cat(
                vec![
                    self.to_q.forward(x.clone()),
                    self.to_k.forward(x.clone()),
                    self.to_v.forward(x),
                ],
                2,
            ));
        }
        let device = x.device();
        let xd = cpu::host(x);
        let qkv = project_host(&[&self.to_q, &self.to_k, &self.to_v], cpu::f32s(&xd), n * l);
        Ok(cpu::tensor(
            TensorData::new(qkv, [n, l, 3 * inner]),
            &device,
        ))
    }

    /// The linear part (no bias) of [`project_qkv`](Self::project_qkv) on rows: what adding
    /// `rows` to its input adds to its output.
    ///
    /// # Shapes
    /// - `rows`: `[L, query_dim]`
    /// - output: `[L, 3·heads·head_dim]`
    pub fn project_qkv_linear(&self, rows: Tensor<2>) -> Result<Tensor<2>> {
        self.expect_self_attention()?;
        if rows.dims()[1] != self.query_dim {
            return Err(Error::shape(
                "rows",
                format!("[L, {}]", self.query_dim),
                &rows.dims(),
            ));
        }
        Ok(Tensor::cat(
            [&self.to_q, &self.to_k, &self.to_v]
                .into_iter()
                .map(|lin| rows.clone().matmul(lin.weight.val()))
                .collect(),
            1,
        ))
    }

    /// Attention over packed projections (the output of [`project_qkv`](Self::project_qkv),
    /// possibly plus positional terms), heads merged, before `to_out`.
    ///
    /// # Shapes
    /// - `qkv`: `[N, L, 3·heads·head_dim]`
    /// - `mask`: `[L, L]`, `true` = may not attend
    /// - output: `[N, L, heads·head_dim]`
    pub fn attend_packed(
        &self,
        qkv: Tensor<3>,
        mask: Option<&Tensor<2, Bool>>,
    ) -> Result<Tensor<3>> {
        let l = qkv.dims()[1];
        self.attend_packed_at(&qkv, 0..l, None, mask)
    }

    /// [`attend_packed`](Self::attend_packed) on the frames `frames` of `qkv` with `terms`
    /// added (a window and its positional terms). On the flex backend the attention kernel
    /// reads the window in place and adds the terms as it reads; elsewhere the window is cut
    /// out first.
    ///
    /// # Shapes
    /// - `qkv`: `[N, F, 3·heads·head_dim]` with `frames.end ≤ F`
    /// - `terms`: `[f, 3·heads·head_dim]` with `f = frames.len()`
    /// - `mask`: `[f, f]`, `true` = may not attend
    /// - output: `[N, f, heads·head_dim]`
    pub fn attend_packed_at(
        &self,
        qkv: &Tensor<3>,
        frames: std::ops::Range<usize>,
        terms: Option<&Tensor<2>>,
        mask: Option<&Tensor<2, Bool>>,
    ) -> Result<Tensor<3>> {
        let inner = self.heads * self.head_dim;
        expect_tokens("qkv", qkv, 3 * inner)?;
        let [n, total, _] = qkv.dims();
        let l = frames.len();
        if let Some(m) = mask
            && m.dims() != [l, l]
        {
            return Err(Error::shape(
                "attention_mask",
                format!("[L, L] = [{l}, {l}]"),
                &m.dims(),
            ));
        }
        if mask.is_some() || !cpu::enabled(&qkv.device(), qkv.dtype()) {
            let window = vdm_core::temporal::cut_window(qkv, frames, terms)?;
            let part = |i: usize| self.split_heads(window.clone().narrow(2, i * inner, inner));
            return Ok(self.attention_heads(part(0), part(1), part(2), mask));
        }
        vdm_core::temporal::check_window(qkv, &frames, terms)?;
        let device = qkv.device();
        let d = cpu::host(qkv.clone());
        let td = terms.map(|t| cpu::host(t.clone()));
        let head = |col| {
            let layout = cpu::HeadLayout {
                offset: frames.start * 3 * inner + col,
                ..cpu::HeadLayout::packed(cpu::f32s(&d), total, 3 * inner, 0)
            };
            match &td {
                Some(t) => layout.with_terms(&cpu::f32s(t)[col..], 3 * inner),
                None => layout,
            }
        };
        let o = self.attention_host(head(0), head(inner), head(2 * inner), n, l, l);
        Ok(cpu::tensor(TensorData::new(o, [n, l, inner]), &device))
    }

    /// `residual + to_out(attended)`.
    ///
    /// # Shapes
    /// - `attended`: `[N, L, heads·head_dim]`
    /// - `residual`: `[N, L, query_dim]`
    /// - output: `[N, L, query_dim]`
    pub fn output(&self, attended: Tensor<3>, residual: Tensor<3>) -> Result<Tensor<3>> {
        let inner = self.heads * self.head_dim;
        expect_tokens("attended", &attended, inner)?;
        let [n, l, _] = attended.dims();
        if residual.dims() != [n, l, self.query_dim] {
            return Err(Error::shape(
                "residual",
                format!("[{n}, {l}, {}]", self.query_dim),
                &residual.dims(),
            ));
        }
        if !cpu::enabled(&attended.device(), attended.dtype()) {
            return Ok(residual + self.to_out.forward(attended));
        }
        let device = attended.device();
        let (ad, rd) = (cpu::host(attended), cpu::host(residual));
        let rows = cpu::InitRows::rows(cpu::f32s(&rd), self.query_dim);
        let out = self.output_host(cpu::f32s(&ad), n * l, Some(rows));
        Ok(cpu::tensor(
            TensorData::new(out, [n, l, self.query_dim]),
            &device,
        ))
    }

    /// [`output`](Self::output) with the residual read from the frames `frames` of
    /// `residual` (a window of the whole sequence; on the flex backend read in place as the
    /// output buffer is filled, before the projection accumulates onto it).
    ///
    /// # Shapes
    /// - `attended`: `[N, f, heads·head_dim]` with `f = frames.len()`
    /// - `residual`: `[N, F, query_dim]` with `frames.end ≤ F`
    /// - output: `[N, f, query_dim]`
    pub fn output_at(
        &self,
        attended: Tensor<3>,
        residual: &Tensor<3>,
        frames: std::ops::Range<usize>,
    ) -> Result<Tensor<3>> {
        let inner = self.heads * self.head_dim;
        expect_tokens("attended", &attended, inner)?;
        expect_tokens("residual", residual, self.query_dim)?;
        vdm_core::temporal::check_window(residual, &frames, None)?;
        let [n, l, _] = attended.dims();
        let [rn, total, q] = residual.dims();
        if rn != n || frames.len() != l {
            return Err(Error::shape(
                "residual",
                format!("[{n}, F, {q}] read at {l} frames"),
                &residual.dims(),
            ));
        }
        if !cpu::enabled(&attended.device(), attended.dtype()) {
            let window = residual.clone().narrow(1, frames.start, l);
            return self.output(attended, window);
        }
        let device = attended.device();
        let (ad, rd) = (cpu::host(attended), cpu::host(residual.clone()));
        let rows = cpu::InitRows::frames(cpu::f32s(&rd), [n, total, q], frames);
        let out = self.output_host(cpu::f32s(&ad), n * l, Some(rows));
        Ok(cpu::tensor(TensorData::new(out, [n, l, q]), &device))
    }

    fn expect_self_attention(&self) -> Result<()> {
        if self.kv_dim != self.query_dim {
            return Err(Error::Unsupported(
                "packed q/k/v projections need a self-attention layer".into(),
            ));
        }
        Ok(())
    }

    fn split_heads(&self, x: Tensor<3>) -> Tensor<4> {
        let [n, l, _] = x.dims();
        x.reshape([n, l, self.heads, self.head_dim]).swap_dims(1, 2)
    }
}

/// `[lins[0] | lins[1] | …](src)` for `rows` rows of `src`, written side by side into one
/// host buffer of `rows × Σ d_out` (the packed layout the CPU attention kernel reads).
fn project_host(lins: &[&Linear], src: &[f32], rows: usize) -> Vec<f32> {
    let hosts: Vec<cpu::LinearHost> = lins.iter().map(|l| cpu::LinearHost::new(l)).collect();
    let width: usize = hosts.iter().map(|h| h.d_out).sum();
    let threads = cpu::threads();
    cpu::filled(rows * width, |buf| {
        let mut col = 0;
        for w in &hosts {
            // SAFETY: `buf` holds rows·width values; column block col..col + d_out of every
            // row is written once; `src` holds rows·d_in values.
            unsafe {
                w.apply(
                    rows,
                    cpu::Mat::rows(src, w.d_in),
                    cpu::MatMut::rows(buf, width).offset(col),
                    None,
                    threads,
                )
            };
            col += w.d_out;
        }
    })
}

/// Configuration of a [`FeedForward`] (diffusers `FeedForward` with `activation_fn="geglu"`).
#[derive(Config, Debug)]
pub struct FeedForwardConfig {
    /// Input channels (`dim`).
    pub dim: usize,
    /// Output channels (`dim_out`); defaults to `dim`.
    #[config(default = "None")]
    pub dim_out: Option<usize>,
    /// Hidden width multiplier (`mult`), used when `inner_dim` is `None`.
    #[config(default = 4)]
    pub mult: usize,
    /// Hidden width (`inner_dim`); defaults to `dim · mult`.
    #[config(default = "None")]
    pub inner_dim: Option<usize>,
    /// Bias on both projections (`bias`).
    #[config(default = true)]
    pub bias: bool,
}

impl FeedForwardConfig {
    /// Hidden width.
    pub fn hidden(&self) -> usize {
        self.inner_dim.unwrap_or(self.dim * self.mult)
    }

    /// Checks the configuration, naming the offending field.
    pub fn validate(&self) -> Result<()> {
        ensure_nonzero("dim", self.dim)?;
        if let Some(d) = self.dim_out {
            ensure_nonzero("dim_out", d)?;
        }
        ensure_nonzero("inner_dim", self.hidden())
    }

    /// Validates and builds the layer.
    pub fn try_init(&self, device: &Device) -> Result<FeedForward> {
        self.validate()?;
        let hidden = self.hidden();
        Ok(FeedForward {
            proj: LinearConfig::new(self.dim, 2 * hidden)
                .with_bias(self.bias)
                .init(device),
            proj_out: LinearConfig::new(hidden, self.dim_out.unwrap_or(self.dim))
                .with_bias(self.bias)
                .init(device),
        })
    }
}

/// GEGLU feed-forward: `proj_out(a · gelu(g))` with `[a, g] = proj(x).chunk(2, -1)` and the
/// exact (erf) GELU (diffusers `FeedForward` = `[GEGLU, Dropout, Linear]`, `attention.py`;
/// `GEGLU` in `activations.py`).
///
/// Checkpoint keys: `net.0.proj` (→ `proj`) and `net.2` (→ `proj_out`), see [`crate::keymap`].
#[derive(Module, Debug)]
pub struct FeedForward {
    /// GEGLU input projection `dim → 2·hidden` (checkpoint `net.0.proj`).
    pub proj: Linear,
    /// Output projection `hidden → dim_out` (checkpoint `net.2`).
    pub proj_out: Linear,
}

impl FeedForward {
    /// Applies the feed-forward to every token.
    ///
    /// # Shapes
    /// - `x`: `[..., dim]`
    /// - output: `[..., dim_out]`
    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        if cpu::enabled(&x.device(), x.dtype()) {
            return cpu_fused::feed_forward(None, self, x, false);
        }
        let h = self.proj.forward(x);
        let hidden = h.dims()[D - 1] / 2;
        let mut halves = h.chunk(2, D - 1);
        debug_assert_eq!(halves.len(), 2);
        let gate = halves.pop().expect("GEGLU chunk");
        let value = halves.pop().expect("GEGLU chunk");
        debug_assert_eq!(gate.dims()[D - 1], hidden);
        self.proj_out.forward(value * gelu(gate))
    }
}

/// Configuration of a [`BasicTransformerBlock`] (diffusers `BasicTransformerBlock`,
/// `attention.py`, with `norm_type="layer_norm"` and `activation_fn="geglu"`).
///
/// - Spatial blocks (`Transformer2DModel`): self-attention `attn1`, cross-attention `attn2`
///   over `cross_attention_dim` text states.
/// - Temporal blocks (`TransformerTemporalModel`, AnimateDiff motion modules):
///   `double_self_attention = true`, so `attn2` is a second self-attention; AnimateDiff adds a
///   sinusoidal positional embedding (`num_positional_embeddings`) to the normed states
///   before both attentions.
#[derive(Config, Debug)]
pub struct BasicTransformerBlockConfig {
    /// Token channels (`dim`).
    pub dim: usize,
    /// Number of heads (`num_attention_heads`).
    pub heads: usize,
    /// Channels per head (`attention_head_dim`).
    pub head_dim: usize,
    /// Context channels of the cross-attention `attn2` (`cross_attention_dim`). Ignored when
    /// `double_self_attention` is set.
    #[config(default = "None")]
    pub cross_attention_dim: Option<usize>,
    /// Make `attn2` a second self-attention (`double_self_attention`).
    #[config(default = false)]
    pub double_self_attention: bool,
    /// Bias on q/k/v (`attention_bias`).
    #[config(default = false)]
    pub attention_bias: bool,
    /// LayerNorm epsilon (`norm_eps`).
    #[config(default = 1e-5)]
    pub norm_eps: f64,
    /// Length of the sinusoidal positional-embedding table (`num_positional_embeddings` with
    /// `positional_embeddings="sinusoidal"`); `None` for no positional embedding.
    #[config(default = "None")]
    pub num_positional_embeddings: Option<usize>,
}

impl BasicTransformerBlockConfig {
    /// Whether the block has an `attn2` / `norm2` pair (diffusers: with a
    /// `cross_attention_dim` or `double_self_attention`).
    pub fn has_attn2(&self) -> bool {
        self.double_self_attention || self.cross_attention_dim.is_some()
    }

    /// Checks the configuration, naming the offending field.
    pub fn validate(&self) -> Result<()> {
        ensure_nonzero("num_attention_heads", self.heads)?;
        ensure_nonzero("attention_head_dim", self.head_dim)?;
        ensure_nonzero("dim", self.dim)?;
        if let Some(d) = self.cross_attention_dim {
            ensure_nonzero("cross_attention_dim", d)?;
        }
        ensure_eps("norm_eps", self.norm_eps)?;
        if let Some(len) = self.num_positional_embeddings {
            SinusoidalPositionalEmbeddingConfig::new(self.dim)
                .with_max_seq_length(len)
                .validate()?;
        }
        Ok(())
    }

    /// Validates and builds the block.
    pub fn try_init(&self, device: &Device) -> Result<BasicTransformerBlock> {
        self.validate()?;
        let norm = || {
            LayerNormConfig::new(self.dim)
                .with_epsilon(self.norm_eps)
                .init(device)
        };
        let attn = |cross: Option<usize>| {
            AttentionConfig::new(self.dim, self.heads, self.head_dim)
                .with_cross_attention_dim(cross)
                .with_qkv_bias(self.attention_bias)
                .try_init(device)
        };
        let attn2_context = if self.double_self_attention {
            None
        } else {
            self.cross_attention_dim
        };
        let (norm2, attn2) = if self.has_attn2() {
            (Some(norm()), Some(attn(attn2_context)?))
        } else {
            (None, None)
        };
        let pos_embed = match self.num_positional_embeddings {
            Some(len) => Some(
                SinusoidalPositionalEmbeddingConfig::new(self.dim)
                    .with_max_seq_length(len)
                    .try_init(device)?,
            ),
            None => None,
        };
        Ok(BasicTransformerBlock {
            pos_embed,
            norm1: norm(),
            attn1: attn(None)?,
            norm2,
            attn2,
            norm3: norm(),
            ff: FeedForwardConfig::new(self.dim).try_init(device)?,
            dim: self.dim,
            norm_eps: self.norm_eps,
            double_self_attention: self.double_self_attention,
        })
    }
}

/// Pre-norm transformer block: `x + attn1(norm1(x))`, `x + attn2(norm2(x), context)`,
/// `x + ff(norm3(x))` (diffusers `BasicTransformerBlock`, `attention.py`).
///
/// For temporal layers the block is also a [`TemporalStages`] with stage 0 =
/// `x + attn1(norm1(x) [+ pe])` and stage 1 = `x + attn2(norm2(x) [+ pe])` (both
/// self-attentions over frames, honouring the window's positions and mask); the caller runs
/// [`BasicTransformerBlock::feed_forward`] on the fused full sequence afterwards.
#[derive(Module, Debug)]
pub struct BasicTransformerBlock {
    /// Sinusoidal positional embedding (`pos_embed`, AnimateDiff only).
    pub pos_embed: Option<SinusoidalPositionalEmbedding>,
    /// LayerNorm before `attn1`.
    pub norm1: LayerNorm,
    /// Self-attention.
    pub attn1: Attention,
    /// LayerNorm before `attn2`.
    pub norm2: Option<LayerNorm>,
    /// Cross-attention (spatial) or second self-attention (temporal).
    pub attn2: Option<Attention>,
    /// LayerNorm before the feed-forward.
    pub norm3: LayerNorm,
    /// GEGLU feed-forward (checkpoint `ff.net.*`).
    pub ff: FeedForward,
    /// Token channels.
    pub dim: usize,
    /// Whether `attn2` was built as a second self-attention (`double_self_attention`); only
    /// such blocks can be driven as [`TemporalStages`].
    pub double_self_attention: bool,
    /// Epsilon of the three LayerNorms (`norm_eps`).
    pub norm_eps: f64,
}

impl BasicTransformerBlock {
    /// The whole block on a full sequence.
    ///
    /// `context` feeds `attn2` (required when it is a cross-attention; `None` makes a
    /// double-self-attention `attn2` attend to `x`). The positional embedding, if any, uses
    /// positions `0..L`.
    ///
    /// # Shapes
    /// - `x`: `[N, L, dim]`
    /// - `context`: `[N, S, cross_attention_dim]`
    /// - output: `[N, L, dim]`
    pub fn forward(&self, x: Tensor<3>, context: Option<Tensor<3>>) -> Result<Tensor<3>> {
        expect_tokens("hidden_states", &x, self.dim)?;
        let window = FrameWindow::full(x.dims()[1]);
        let x = self.stage_attn1(x, &window)?;
        self.after_attn1(x, context, &window)
    }

    /// The block on the frames of videos (`N = B·F` items, frame-major within a video) with
    /// cross-frame self-attention: `attn1` of frame `f` reads its keys and values from the
    /// frames `key_frames[f]` of its video (see [`vdm_core::cross_frame`]); the rest is
    /// [`forward`](Self::forward).
    ///
    /// # Shapes
    /// - `x`: `[B·F, L, dim]`; `key_frames`: `F` lists of the same length `K`
    /// - output: `[B·F, L, dim]`
    pub fn forward_cross_frame(
        &self,
        x: Tensor<3>,
        context: Option<Tensor<3>>,
        key_frames: &[Vec<usize>],
    ) -> Result<Tensor<3>> {
        expect_tokens("hidden_states", &x, self.dim)?;
        let [n, l, d] = x.dims();
        let frames = key_frames.len();
        let k = key_frames.first().map_or(0, Vec::len);
        if frames == 0
            || !n.is_multiple_of(frames)
            || k == 0
            || key_frames.iter().flatten().any(|&f| f >= frames)
            || key_frames.iter().any(|p| p.len() != k)
        {
            return Err(Error::shape(
                "key_frames",
                format!("F non-empty lists of K frames < F, with F dividing N = {n}"),
                &[frames, k],
            ));
        }
        let window = FrameWindow::full(l);
        let h = self.add_pos(self.norm(&self.norm1, x.clone()), &window)?;
        let b = n / frames;
        let device = h.device();
        let index = |values: Vec<i64>| {
            let len = values.len();
            Tensor::<1, Int>::from_data(TensorData::new(values, [len]), &device)
        };
        let keys = if key_frames.iter().all(|p| p == &key_frames[0]) {
            // The same key frames for every frame: one context per video, shared by its F
            // frames (keys and values projected once per video).
            let idx = index(key_frames[0].iter().map(|&f| f as i64).collect());
            h.clone()
                .reshape([b, frames, l, d])
                .select(1, idx)
                .reshape([b, k * l, d])
        } else {
            let idx: Vec<i64> = (0..b)
                .flat_map(|v| {
                    key_frames
                        .iter()
                        .flat_map(move |p| p.iter().map(move |&f| (v * frames + f) as i64))
                })
                .collect();
            h.clone().select(0, index(idx)).reshape([n, k * l, d])
        };
        let x = self.attn1.forward_residual(h, Some(keys), None, x)?;
        self.after_attn1(x, context, &window)
    }

    /// `attn2` (if any) and the feed-forward, after the first attention stage.
    fn after_attn1(
        &self,
        mut x: Tensor<3>,
        context: Option<Tensor<3>>,
        window: &FrameWindow,
    ) -> Result<Tensor<3>> {
        if let (Some(norm2), Some(attn2)) = (&self.norm2, &self.attn2) {
            // As in diffusers, `encoder_hidden_states` goes to attn2 whenever it is given
            // (a double-self-attention block called with a context attends to it).
            let h = self.add_pos(self.norm(norm2, x.clone()), window)?;
            x = attn2.forward_residual(h, context, None, x)?;
        }
        Ok(self.feed_forward(x))
    }

    /// The feed-forward stage `x + ff(norm3(x))`, per token.
    ///
    /// # Shapes
    /// - `x`: `[N, L, dim]`
    /// - output: `[N, L, dim]`
    pub fn feed_forward(&self, x: Tensor<3>) -> Tensor<3> {
        if cpu::enabled(&x.device(), x.dtype()) {
            return cpu_fused::feed_forward(Some((&self.norm3, self.norm_eps)), &self.ff, x, true);
        }
        x.clone() + self.ff.forward(self.norm3.forward(x))
    }

    /// One of the block's LayerNorms on `x` (fused kernel on the flex backend).
    fn norm(&self, norm: &LayerNorm, x: Tensor<3>) -> Tensor<3> {
        if cpu::enabled(&x.device(), x.dtype()) {
            cpu::layer_norm(norm, self.norm_eps, x)
        } else {
            norm.forward(x)
        }
    }

    /// Adds the positional embedding rows of `window.positions`, if the block has one.
    fn add_pos(&self, h: Tensor<3>, window: &FrameWindow) -> Result<Tensor<3>> {
        match &self.pos_embed {
            Some(pe) => pe.forward(h, window.positions.clone()),
            None => Ok(h),
        }
    }

    /// `x + attn1(norm1(x) [+ pe])` with the window's mask.
    fn stage_attn1(&self, x: Tensor<3>, window: &FrameWindow) -> Result<Tensor<3>> {
        let h = self.add_pos(self.norm(&self.norm1, x.clone()), window)?;
        self.attn1
            .forward_residual(h, None, window.mask.as_ref(), x)
    }
}

/// Stage 0 (`norm1`, `attn1`) or 1 (`norm2`, `attn2`) of a temporal [`BasicTransformerBlock`]
/// taken apart as an [`AttentionStage`].
struct TemporalAttention<'a> {
    block: &'a BasicTransformerBlock,
    norm: &'a LayerNorm,
    attn: &'a Attention,
}

impl AttentionStage for TemporalAttention<'_> {
    fn projection_width(&self) -> usize {
        3 * self.attn.heads * self.attn.head_dim
    }

    fn attention_width(&self) -> usize {
        self.attn.heads * self.attn.head_dim
    }

    fn project(&self, tokens: Tensor<3>) -> Result<Tensor<3>> {
        expect_tokens("temporal tokens", &tokens, self.block.dim)?;
        self.attn.project_qkv(self.block.norm(self.norm, tokens))
    }

    fn project_positions(
        &self,
        positions: std::ops::Range<usize>,
        _device: &Device,
    ) -> Result<Option<Tensor<2>>> {
        match &self.block.pos_embed {
            Some(pe) => Ok(Some(self.attn.project_qkv_linear(pe.rows(positions)?)?)),
            None => Ok(None),
        }
    }

    fn attend(&self, projections: Tensor<3>, mask: Option<&Tensor<2, Bool>>) -> Result<Tensor<3>> {
        self.attn.attend_packed(projections, mask)
    }

    fn attend_at(
        &self,
        projections: &Tensor<3>,
        frames: std::ops::Range<usize>,
        terms: Option<&Tensor<2>>,
        mask: Option<&Tensor<2, Bool>>,
    ) -> Result<Tensor<3>> {
        self.attn.attend_packed_at(projections, frames, terms, mask)
    }

    fn output(&self, attended: Tensor<3>, residual: Tensor<3>) -> Result<Tensor<3>> {
        self.attn.output(attended, residual)
    }

    fn output_at(
        &self,
        attended: Tensor<3>,
        residual: &Tensor<3>,
        frames: std::ops::Range<usize>,
    ) -> Result<Tensor<3>> {
        self.attn.output_at(attended, residual, frames)
    }
}

impl TemporalStages for BasicTransformerBlock {
    fn num_stages(&self) -> usize {
        1 + usize::from(self.attn2.is_some())
    }

    fn attention_stage(&self, stage: usize) -> Option<Box<dyn AttentionStage + '_>> {
        let (norm, attn) = match (stage, &self.norm2, &self.attn2) {
            (0, _, _) if self.attn1.kv_dim == self.attn1.query_dim => (&self.norm1, &self.attn1),
            (1, Some(norm2), Some(attn2))
                if self.double_self_attention && attn2.kv_dim == attn2.query_dim =>
            {
                (norm2, attn2)
            }
            _ => return None,
        };
        Some(Box::new(TemporalAttention {
            block: self,
            norm,
            attn,
        }))
    }

    fn run_stage(&self, stage: usize, x: Tensor<3>, window: &FrameWindow) -> Result<Tensor<3>> {
        expect_tokens("temporal tokens", &x, self.dim)?;
        if x.dims()[1] != window.len() {
            return Err(Error::shape(
                "temporal tokens",
                format!("[N, f, C] with f = {} (the window length)", window.len()),
                &x.dims(),
            ));
        }
        match (stage, &self.norm2, &self.attn2) {
            (0, _, _) => self.stage_attn1(x, window),
            (1, Some(norm2), Some(attn2)) => {
                if !self.double_self_attention {
                    return Err(Error::Unsupported(
                        "a temporal stage needs a self-attention attn2 \
                         (double_self_attention = true)"
                            .into(),
                    ));
                }
                let h = self.add_pos(self.norm(norm2, x.clone()), window)?;
                attn2.forward_residual(h, None, window.mask.as_ref(), x)
            }
            _ => Err(Error::invalid(
                "stage",
                format!("block has {} stages, got stage {stage}", self.num_stages()),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::activation::softmax;
    use burn::tensor::{Distribution, TensorData, Tolerance};
    use vdm_core::temporal::run_attention_stage;

    fn dev() -> Device {
        Device::flex()
    }

    /// Cross-frame self-attention: the first frame of First / SparseCausal is plain
    /// self-attention; Full on a video of identical frames is too; other frames differ; a
    /// bad plan is a typed error.
    #[test]
    fn cross_frame_blocks_keep_what_they_must() {
        use vdm_core::cross_frame::{CrossFrame, key_frame_plan};
        let config = BasicTransformerBlockConfig::new(8, 2, 4);
        let block = config.try_init(&dev()).unwrap();
        let (b, f, l) = (2, 4, 5);
        let x = Tensor::<3>::random([b * f, l, 8], Distribution::Normal(0.0, 1.0), &dev());
        let plain = block.forward(x.clone(), None).unwrap();
        let frame =
            |t: &Tensor<3>, v: usize, i: usize| t.clone().narrow(0, v * f + i, 1).into_data();
        for pattern in [CrossFrame::First, CrossFrame::SparseCausal] {
            let plan = key_frame_plan(&pattern, f).unwrap().unwrap();
            let y = block.forward_cross_frame(x.clone(), None, &plan).unwrap();
            for v in 0..b {
                frame(&y, v, 0)
                    .assert_approx_eq::<f32>(&frame(&plain, v, 0), Tolerance::absolute(1e-5));
            }
            let gap: f32 = (y - plain.clone()).abs().max().into_scalar();
            assert!(gap > 1e-3, "{pattern:?}: {gap}");
        }
        let same = x
            .clone()
            .reshape([b, f, l, 8])
            .narrow(1, 0, 1)
            .expand([b, f, l, 8])
            .reshape([b * f, l, 8]);
        let full = key_frame_plan(&CrossFrame::Full, f).unwrap().unwrap();
        block
            .forward_cross_frame(same.clone(), None, &full)
            .unwrap()
            .into_data()
            .assert_approx_eq::<f32>(
                &block.forward(same, None).unwrap().into_data(),
                Tolerance::absolute(1e-5),
            );
        let e = block
            .forward_cross_frame(x.clone(), None, &[vec![0], vec![5], vec![0], vec![0]])
            .unwrap_err();
        assert!(e.to_string().contains("key_frames"), "{e}");
        let e = block
            .forward_cross_frame(x, None, &vec![vec![0]; 3])
            .unwrap_err();
        assert!(e.to_string().contains("key_frames"), "{e}");
    }

    /// The [`AttentionStage`] contract: both stages of a temporal block with a positional
    /// table, taken apart, equal `run_stage` on a window with offset positions (fused CPU
    /// path without a mask, Burn path with one).
    #[test]
    fn temporal_stages_taken_apart_equal_run_stage() {
        let block = BasicTransformerBlockConfig::new(12, 3, 4)
            .with_double_self_attention(true)
            .with_num_positional_embeddings(Some(24))
            .try_init(&dev())
            .unwrap();
        // Non-zero biases and positional rows, so that both terms are exercised.
        let x = rand([5, 7, 12]);
        let mask =
            Tensor::<2>::random([7, 7], Distribution::Uniform(0.0, 1.0), &dev()).greater_elem(0.7);
        for mask in [None, Some(mask)] {
            let window = FrameWindow {
                start: 3,
                end: 10,
                positions: 9..16,
                mask: mask.clone(),
            };
            for stage in 0..2 {
                let parts = block
                    .attention_stage(stage)
                    .expect("a self-attention stage");
                let want = block.run_stage(stage, x.clone(), &window).unwrap();
                let got = run_attention_stage(
                    parts.as_ref(),
                    parts.project(x.clone()).unwrap(),
                    x.clone(),
                    &window,
                )
                .unwrap();
                got.into_data()
                    .assert_approx_eq::<f32>(&want.into_data(), Tolerance::absolute(1e-5));
            }
        }
        let spatial = BasicTransformerBlockConfig::new(12, 3, 4)
            .with_cross_attention_dim(Some(6))
            .try_init(&dev())
            .unwrap();
        assert!(spatial.attention_stage(1).is_none());
    }

    /// `attend_at` reads a window of a longer sequence in place and adds the positional
    /// terms as it reads: the same as the Burn path on the cut-out window (forced by an
    /// all-`false` mask), for a head dim of the query-lanes kernel (4) and one of the general
    /// kernel (5); bad windows and terms are errors.
    #[test]
    fn attend_at_reads_windows_in_place() {
        for (dim, heads) in [(12, 3), (20, 4)] {
            let block = BasicTransformerBlockConfig::new(dim, heads, dim / heads)
                .with_double_self_attention(true)
                .with_num_positional_embeddings(Some(24))
                .try_init(&dev())
                .unwrap();
            let stage = block.attention_stage(0).expect("a self-attention stage");
            let p = stage.project(rand([5, 20, dim])).unwrap();
            let terms = stage.project_positions(2..9, &dev()).unwrap();
            let none = Tensor::<2, Bool>::from_data(TensorData::from([[false; 7]; 7]), &dev());
            let window = vdm_core::temporal::cut_window(&p, 4..11, terms.as_ref()).unwrap();
            let want = stage.attend(window, Some(&none)).unwrap();
            let got = stage.attend_at(&p, 4..11, terms.as_ref(), None).unwrap();
            got.into_data()
                .assert_approx_eq::<f32>(&want.into_data(), Tolerance::absolute(1e-5));
            assert!(stage.attend_at(&p, 15..21, None, None).is_err());
            assert!(stage.attend_at(&p, 4..10, terms.as_ref(), None).is_err());
        }
    }

    /// `output_at` reads the residual window in place: the same as `residual + to_out(a)` in
    /// plain Burn ops on the cut-out window; bad windows are errors.
    #[test]
    fn output_at_reads_the_residual_window_in_place() {
        let attn = AttentionConfig::new(12, 3, 4).try_init(&dev()).unwrap();
        let (a, x) = (rand([5, 7, 12]), rand([5, 20, 12]));
        let want = x.clone().narrow(1, 4, 7) + attn.to_out.forward(a.clone());
        let got = attn.output_at(a.clone(), &x, 4..11).unwrap();
        got.into_data()
            .assert_approx_eq::<f32>(&want.into_data(), Tolerance::absolute(1e-5));
        assert!(attn.output_at(a.clone(), &x, 15..22).is_err());
        assert!(attn.output_at(a, &x, 4..10).is_err());
    }

    fn rand<const D: usize>(shape: [usize; D]) -> Tensor<D> {
        Tensor::random(shape, Distribution::Normal(0.0, 1.0), &dev())
    }

    fn close<const D: usize>(a: Tensor<D>, b: Tensor<D>, tol: f32) {
        a.into_data()
            .assert_approx_eq::<f32>(&b.into_data(), Tolerance::absolute(tol));
    }

    /// Reference multi-head attention with explicit softmax.
    fn manual_attention(
        attn: &Attention,
        x: Tensor<3>,
        ctx: Tensor<3>,
        mask: Option<Tensor<2, Bool>>,
    ) -> Tensor<3> {
        let [n, lq, _] = x.dims();
        let lk = ctx.dims()[1];
        let (h, d) = (attn.heads, attn.head_dim);
        let q = attn.to_q.forward(x).reshape([n, lq, h, d]).swap_dims(1, 2);
        let k = attn
            .to_k
            .forward(ctx.clone())
            .reshape([n, lk, h, d])
            .swap_dims(1, 2);
        let v = attn
            .to_v
            .forward(ctx)
            .reshape([n, lk, h, d])
            .swap_dims(1, 2);
        let mut s = q.matmul(k.swap_dims(2, 3)) / (d as f64).sqrt();
        if let Some(m) = mask {
            s = s.mask_fill(m.reshape([1, 1, lq, lk]).expand([n, h, lq, lk]), -1e30);
        }
        let o = softmax(s, 3)
            .matmul(v)
            .swap_dims(1, 2)
            .reshape([n, lq, h * d]);
        attn.to_out.forward(o)
    }

    #[test]
    fn self_and_cross_attention_match_manual_softmax() {
        let attn = AttentionConfig::new(8, 2, 3).try_init(&dev()).unwrap();
        assert_eq!(attn.to_q.weight.dims(), [8, 6]);
        assert!(attn.to_q.bias.is_none() && attn.to_out.bias.is_some());
        let x = rand([2, 5, 8]);
        let y = attn.forward(x.clone(), None, None).unwrap();
        assert_eq!(y.dims(), [2, 5, 8]);
        close(y, manual_attention(&attn, x.clone(), x.clone(), None), 1e-5);

        let cross = AttentionConfig::new(8, 2, 4)
            .with_cross_attention_dim(Some(6))
            .try_init(&dev())
            .unwrap();
        assert_eq!(cross.to_k.weight.dims(), [6, 8]);
        let c = rand([2, 7, 6]);
        let y = cross.forward(x.clone(), Some(c.clone()), None).unwrap();
        close(y, manual_attention(&cross, x.clone(), c, None), 1e-5);
        // A cross-attention without context, or with a mis-shaped one, is a typed error.
        assert!(cross.forward(x.clone(), None, None).is_err());
        let e = cross
            .forward(x, Some(rand([2, 7, 5])), None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("encoder_hidden_states"), "{e}");
    }

    #[test]
    fn mask_is_honoured() {
        let attn = AttentionConfig::new(4, 2, 2).try_init(&dev()).unwrap();
        let x = rand([3, 4, 4]);
        // Block-diagonal mask: frames {0,1} and {2,3} do not see each other.
        let m: Vec<bool> = (0..16).map(|i| (i / 4 < 2) != (i % 4 < 2)).collect();
        let mask = Tensor::<2, Bool>::from_data(TensorData::new(m, [4, 4]), &dev());
        let y = attn.forward(x.clone(), None, Some(&mask)).unwrap();
        close(
            y.clone(),
            manual_attention(&attn, x.clone(), x.clone(), Some(mask)),
            1e-5,
        );
        // Equivalent to attending within each half separately.
        let first = attn
            .forward(x.clone().slice([0..3, 0..2, 0..4]), None, None)
            .unwrap();
        close(y.slice([0..3, 0..2, 0..4]), first, 1e-5);
        let bad = Tensor::<2, Bool>::from_data(TensorData::new(vec![false; 9], [3, 3]), &dev());
        assert!(attn.forward(x, None, Some(&bad)).is_err());
    }

    #[test]
    fn geglu_matches_hand_computation() {
        // dim 1 → hidden 1: proj gives [a, g] = [2x + 1, -x + 0.5]; out = 3·a·gelu(g) - 1.
        let d = dev();
        let mut ff = FeedForwardConfig::new(1)
            .with_inner_dim(Some(1))
            .try_init(&d)
            .unwrap();
        ff.proj.weight = burn::module::Param::from_tensor(Tensor::from_floats([[2.0, -1.0]], &d));
        ff.proj.bias = Some(burn::module::Param::from_tensor(Tensor::from_floats(
            [1.0, 0.5],
            &d,
        )));
        ff.proj_out.weight = burn::module::Param::from_tensor(Tensor::from_floats([[3.0]], &d));
        ff.proj_out.bias = Some(burn::module::Param::from_tensor(Tensor::from_floats(
            [-1.0],
            &d,
        )));
        let xs = [-2.0f64, -0.3, 0.0, 0.7, 1.5];
        let y = ff
            .forward(Tensor::<2>::from_floats([xs.map(|v| v as f32)], &d).reshape([5, 1]))
            .into_data()
            .try_to_vec::<f32>()
            .unwrap();
        // erf via its Taylor series (exact GELU, not the tanh approximation).
        let erf = |z: f64| {
            let mut sum = 0.0;
            let mut term = z;
            for n in 0..60 {
                sum += term / (2 * n + 1) as f64;
                term *= -z * z / (n + 1) as f64;
            }
            sum * 2.0 / std::f64::consts::PI.sqrt()
        };
        for (x, got) in xs.iter().zip(y) {
            let a = 2.0 * x + 1.0;
            let g = -x + 0.5;
            let gelu = 0.5 * g * (1.0 + erf(g / std::f64::consts::SQRT_2));
            let want = 3.0 * a * gelu - 1.0;
            assert!((got as f64 - want).abs() < 1e-5, "x={x}: {got} vs {want}");
        }
    }

    #[test]
    fn transformer_block_shapes_and_stage_count() {
        let spatial = BasicTransformerBlockConfig::new(16, 2, 8)
            .with_cross_attention_dim(Some(12))
            .try_init(&dev())
            .unwrap();
        assert_eq!(spatial.num_stages(), 2);
        assert_eq!(spatial.ff.proj.weight.dims(), [16, 128]);
        assert_eq!(spatial.ff.proj_out.weight.dims(), [64, 16]);
        let y = spatial
            .forward(rand([2, 9, 16]), Some(rand([2, 3, 12])))
            .unwrap();
        assert_eq!(y.dims(), [2, 9, 16]);
        // The cross-attention block cannot be a temporal stage chain.
        let w = FrameWindow::full(9);
        assert!(spatial.run_stage(1, rand([2, 9, 16]), &w).is_err());
        assert!(spatial.run_stage(2, rand([2, 9, 16]), &w).is_err());

        let temporal = BasicTransformerBlockConfig::new(16, 2, 8)
            .with_double_self_attention(true)
            .with_num_positional_embeddings(Some(8))
            .try_init(&dev())
            .unwrap();
        assert_eq!(
            temporal.attn2.as_ref().unwrap().to_k.weight.dims(),
            [16, 16]
        );
        let x = rand([3, 5, 16]);
        let full = temporal.forward(x.clone(), None).unwrap();
        let chain = vdm_core::temporal::run_chain(&temporal, x, &FrameWindow::full(5)).unwrap();
        close(full, temporal.feed_forward(chain), 1e-5);
        // More frames than positional embeddings: typed error.
        assert!(temporal.forward(rand([1, 9, 16]), None).is_err());
    }

    #[test]
    fn bad_configs_name_the_field() {
        let e = AttentionConfig::new(8, 0, 4)
            .validate()
            .unwrap_err()
            .to_string();
        assert!(e.contains("heads"), "{e}");
        let e = AttentionConfig::vae(30, 30, 8, 1e-6)
            .validate()
            .unwrap_err()
            .to_string();
        assert!(e.contains("norm_num_groups"), "{e}");
        let e = BasicTransformerBlockConfig::new(16, 2, 8)
            .with_norm_eps(0.0)
            .validate()
            .unwrap_err()
            .to_string();
        assert!(e.contains("norm_eps"), "{e}");
        let e = BasicTransformerBlockConfig::new(15, 3, 5)
            .with_num_positional_embeddings(Some(4))
            .validate()
            .unwrap_err()
            .to_string();
        assert!(e.contains("embed_dim"), "{e}");
    }

    #[test]
    fn vae_attention_is_residual_with_group_norm() {
        let attn = AttentionConfig::vae(8, 8, 2, 1e-6)
            .try_init(&dev())
            .unwrap();
        assert_eq!(attn.heads, 1);
        assert!(attn.to_q.bias.is_some() && attn.group_norm.is_some());
        let x = rand([2, 8, 3, 4]);
        let y = attn.forward_image(x.clone()).unwrap();
        // Manual: GroupNorm, tokens, attention, back, + x.
        let norm = attn.group_norm.as_ref().unwrap();
        let t = norm.forward(x.clone().reshape([2, 8, 12])).swap_dims(1, 2);
        let o = manual_attention(&attn, t.clone(), t, None)
            .swap_dims(1, 2)
            .reshape([2, 8, 3, 4]);
        close(y, o + x, 1e-5);
    }

    mod oracle {
        use super::*;
        use crate::keymap::test_support::{assert_close, load, tensor};
        use vdm_core::AllFrames;
        use vdm_core::temporal::{TemporalHook, TemporalSite, run_chain};

        const FN: &str = "freenoise.safetensors";

        fn block(case: &str) -> BasicTransformerBlock {
            let b = BasicTransformerBlockConfig::new(16, 2, 8)
                .with_double_self_attention(true)
                .with_num_positional_embeddings(Some(32))
                .try_init(&dev())
                .unwrap();
            load(b, FN, &format!("block.{case}.w."))
        }

        /// Windows `(s, s + L)` every `S` frames, fused with pyramid weights: diffusers'
        /// `FreeNoiseTransformerBlock` for frame counts where the windows tile exactly.
        struct PyramidWindows {
            context: usize,
            stride: usize,
        }

        impl TemporalHook for PyramidWindows {
            fn apply(
                &self,
                site: &TemporalSite<'_>,
                tokens: Tensor<3>,
                stages: &dyn TemporalStages,
            ) -> Result<Tensor<3>> {
                let [n, f, c] = tokens.dims();
                let l = self.context;
                let w: Vec<f32> = (1..=l / 2)
                    .chain((1..=l / 2).rev())
                    .map(|v| v as f32)
                    .collect();
                let weights =
                    Tensor::<1>::from_floats(w.as_slice(), &tokens.device()).reshape([1, l, 1]);
                let mut acc = Tensor::<3>::zeros([n, f, c], &tokens.device());
                let mut cnt = Tensor::<3>::zeros([1, f, 1], &tokens.device());
                for s in (0..=f - l).step_by(self.stride) {
                    let window = FrameWindow::relative(s, s + l);
                    site.check_positions(&window.positions)?;
                    let part = tokens.clone().slice([0..n, s..s + l, 0..c]);
                    let out = run_chain(stages, part, &window)?;
                    let a = acc.clone().slice([0..n, s..s + l, 0..c]);
                    acc = acc.slice_assign([0..n, s..s + l, 0..c], a + out * weights.clone());
                    let k = cnt.clone().slice([0..1, s..s + l, 0..1]);
                    cnt = cnt.slice_assign([0..1, s..s + l, 0..1], k + weights.clone());
                }
                Ok(acc / cnt)
            }
        }

        /// With one window (`F = L = 16`) FreeNoise is the plain block: the whole temporal
        /// block (double self-attention, sinusoidal positions, GEGLU) against diffusers.
        #[test]
        fn temporal_block_matches_diffusers() {
            let d = dev();
            let b = block("16_16_4_pyramid");
            let x = tensor::<3>(FN, "block.16_16_4_pyramid.x", &d);
            let want = tensor::<3>(FN, "block.16_16_4_pyramid.y", &d);
            assert_close(
                "block",
                b.forward(x.clone(), None).unwrap(),
                want.clone(),
                1e-4,
            );
            let site = TemporalSite::new("block", 16).with_max_positions(32);
            let fused = AllFrames.apply(&site, x, &b).unwrap();
            assert_close("block via hook", b.feed_forward(fused), want, 1e-4);
        }

        /// The stages driven by a windowing hook reproduce diffusers' FreeNoise block on 24
        /// frames (windows 0..16, 4..20, 8..24; positions restart in each window; the
        /// feed-forward runs once on the fused sequence).
        #[test]
        fn windowed_stages_match_diffusers_freenoise() {
            let d = dev();
            let case = "24_16_4_pyramid";
            let b = block(case);
            let x = tensor::<3>(FN, &format!("block.{case}.x"), &d);
            let want = tensor::<3>(FN, &format!("block.{case}.y"), &d);
            let hook = PyramidWindows {
                context: 16,
                stride: 4,
            };
            let site = TemporalSite::new("block", 24).with_max_positions(32);
            let fused = hook.apply(&site, x, &b).unwrap();
            assert_close("freenoise block", b.feed_forward(fused), want, 1e-4);
        }
    }
}
