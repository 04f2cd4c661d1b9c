//! Multi-head scaled dot-product attention, [`AttentionConfig`] and [`Attention`], mirroring
//! diffusers' `models/attention_processor.py` (`Attention` with `AttnProcessor2_0`): the token
//! path ([`Attention::forward`], [`Attention::forward_residual`]), the VAE-style image path
//! ([`Attention::forward_image`]) and the host-kernel glue of the flex backend, which writes
//! the projected heads into one packed buffer read in place by the CPU attention kernel
//! (`crate::cpu`).
//!
//! The packed q/k/v API that temporal stages drive is in `attention/packed.rs`.

use burn::config::Config;
use burn::module::Module;
use burn::nn::{GroupNorm, GroupNormConfig, Linear, LinearConfig};
use burn::tensor::module::attention;
use burn::tensor::ops::AttentionModuleOptions;
use burn::tensor::{Bool, Device, Tensor, TensorData};
use vdm_core::{Error, Result};

use super::{ensure_eps, ensure_groups, ensure_nonzero, expect_images, expect_tokens};
use crate::cpu;

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
    pub(super) fn attention_heads(
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
                let qkv = cpu::project_host(&[&self.to_q, &self.to_k, &self.to_v], xs, n * lq);
                let head = |col| cpu::HeadLayout::packed(&qkv, lq, 3 * inner, col);
                self.attention_host(head(0), head(inner), head(2 * inner), n, lq, lq)
            }
            // Cross-attention: q alone, k and v side by side in [m·lk, 2·inner].
            Some(c) => {
                let [m, lk, _] = c.dims();
                let cd = cpu::host(c);
                let q = cpu::project_host(&[&self.to_q], xs, n * lq);
                let kv = cpu::project_host(&[&self.to_k, &self.to_v], cpu::f32s(&cd), m * lk);
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
    pub(super) fn attention_host(
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
    pub(super) fn output_host(
        &self,
        o: &[f32],
        rows: usize,
        residual: Option<cpu::InitRows>,
    ) -> Vec<f32> {
        cpu::linear_rows(&self.to_out, o, rows, residual)
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
    pub(super) fn split_heads(&self, x: Tensor<3>) -> Tensor<4> {
        let [n, l, _] = x.dims();
        x.reshape([n, l, self.heads, self.head_dim]).swap_dims(1, 2)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::attention::test_support::{close, dev, rand};
    use burn::tensor::activation::softmax;

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
}
