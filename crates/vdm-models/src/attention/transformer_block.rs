//! The pre-norm transformer block, [`BasicTransformerBlockConfig`] and
//! [`BasicTransformerBlock`], mirroring diffusers' `BasicTransformerBlock`
//! (`models/attention.py`, `norm_type="layer_norm"`, `activation_fn="geglu"`): the whole block on
//! a full sequence and with cross-frame self-attention.
//!
//! Its two attention stages driven as `vdm_core::temporal::TemporalStages` (for temporal
//! layers) are in `attention/temporal_stages.rs`.

use burn::config::Config;
use burn::module::Module;
use burn::nn::{LayerNorm, LayerNormConfig};
use burn::tensor::{Device, Int, Tensor, TensorData};
use vdm_core::temporal::FrameWindow;
use vdm_core::{Error, Result};

use super::{
    Attention, AttentionConfig, FeedForward, FeedForwardConfig, ensure_eps, ensure_nonzero,
    expect_tokens,
};
use crate::cpu;
use crate::embeddings::{SinusoidalPositionalEmbedding, SinusoidalPositionalEmbeddingConfig};

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
/// For temporal layers the block is also a
/// [`TemporalStages`](vdm_core::temporal::TemporalStages) with stage 0 =
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
    /// such blocks can be driven as [`TemporalStages`](vdm_core::temporal::TemporalStages).
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
            return self
                .ff
                .forward_fused(Some((&self.norm3, self.norm_eps)), x, true);
        }
        x.clone() + self.ff.forward(self.norm3.forward(x))
    }

    /// One of the block's LayerNorms on `x` (fused kernel on the flex backend).
    pub(super) fn norm(&self, norm: &LayerNorm, x: Tensor<3>) -> Tensor<3> {
        if cpu::enabled(&x.device(), x.dtype()) {
            cpu::layer_norm(norm, self.norm_eps, x)
        } else {
            norm.forward(x)
        }
    }

    /// Adds the positional embedding rows of `window.positions`, if the block has one.
    pub(super) fn add_pos(&self, h: Tensor<3>, window: &FrameWindow) -> Result<Tensor<3>> {
        match &self.pos_embed {
            Some(pe) => pe.forward(h, window.positions.clone()),
            None => Ok(h),
        }
    }

    /// `x + attn1(norm1(x) [+ pe])` with the window's mask.
    pub(super) fn stage_attn1(&self, x: Tensor<3>, window: &FrameWindow) -> Result<Tensor<3>> {
        let h = self.add_pos(self.norm(&self.norm1, x.clone()), window)?;
        self.attn1
            .forward_residual(h, None, window.mask.as_ref(), x)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::attention::test_support::{close, dev, rand};
    use burn::tensor::{Distribution, Tolerance};
    use vdm_core::temporal::TemporalStages;

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
}
