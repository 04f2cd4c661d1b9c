//! A temporal [`BasicTransformerBlock`] as [`TemporalStages`]: stage 0 (`norm1`, `attn1`)
//! and stage 1 (`norm2`, `attn2`), each runnable on a frame window and taken apart as an
//! [`AttentionStage`] over the packed q/k/v API of [`Attention`] (AnimateDiff motion modules,
//! diffusers `TransformerTemporalModel` / `FreeNoiseTransformerBlock` in
//! `models/attention.py`).

use burn::nn::LayerNorm;
use burn::tensor::{Bool, Device, Tensor};
use vdm_core::temporal::{AttentionStage, FrameWindow, TemporalStages};
use vdm_core::{Error, Result};

use super::{Attention, BasicTransformerBlock, expect_tokens};

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
    use crate::attention::BasicTransformerBlockConfig;
    use crate::attention::test_support::{dev, rand};
    use burn::tensor::{Distribution, Tolerance};
    use vdm_core::temporal::run_attention_stage;

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
