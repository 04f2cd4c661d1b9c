//! The packed q/k/v API of [`Attention`] that the temporal stages of a transformer block drive
//! (`vdm_core::temporal::AttentionStage`): the three self-attention projections side by side
//! ([`Attention::project_qkv`], and the linear part of it for positional terms), attention over
//! such packed projections or a window of them ([`Attention::attend_packed`],
//! [`Attention::attend_packed_at`]) and the output projection plus residual
//! ([`Attention::output`], [`Attention::output_at`]). On the flex backend windows and residuals
//! are read in place by the host kernels (`crate::cpu`).
//!
//! The layer itself is in `attention/multi_head.rs` (diffusers `models/attention_processor.py`).

use burn::tensor::{Bool, Tensor, TensorData};
use vdm_core::{Error, Result};

use super::{Attention, expect_tokens};
use crate::cpu;

impl Attention {
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
        let qkv = cpu::project_host(&[&self.to_q, &self.to_k, &self.to_v], cpu::f32s(&xd), n * l);
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
}

#[cfg(test)]
mod tests {
    use crate::attention::test_support::{dev, rand};
    use crate::attention::{AttentionConfig, BasicTransformerBlockConfig};
    use burn::tensor::{Bool, Tensor, TensorData, Tolerance};
    use vdm_core::temporal::TemporalStages;

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
}
