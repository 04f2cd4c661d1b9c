//! The window fusion behind [`FreeNoiseHook`](super::FreeNoiseHook) (Qiu et al. 2024, §3.2
//! "Window-based Attention Fusion", Eq. 9; diffusers' `FreeNoiseTransformerBlock.forward` in
//! `src/diffusers/models/attention.py`): the per-length schedule of windows grouped into runs
//! and chunks, the weighted fusion of window outputs on tensors (one stage, shared attention
//! projections, or the whole chain), and the host fast path for CPU tensors.

use std::ops::Range;

use burn::tensor::ops::PadMode;
use burn::tensor::{IndexingUpdateOp, Int, Tensor, TensorData};
use vdm_core::host::{HostF32, cpu_kernels};
use vdm_core::temporal::{
    AttentionStage, FrameWindow, TemporalSite, TemporalStages, WindowAttention, cut_window,
};
use vdm_core::{Error, Result};

use super::WindowBatching;
use crate::freenoise::windows::WindowPlan;

/// An input of [`Schedule::fuse`].
pub(super) struct WindowInput {
    /// `[N, F, C]`.
    pub(super) tokens: Tensor<3>,
    /// Rows `[L, C]` added to every window (positional terms).
    pub(super) rows: Option<Tensor<2>>,
    /// Whether a call with one window gets the whole input to read in place
    /// ([`WindowView::Whole`]) instead of a copy of its window.
    pub(super) in_place: bool,
}

impl WindowInput {
    /// An input whose windows are cut out for every call.
    pub(super) fn cut(tokens: Tensor<3>) -> Self {
        Self {
            tokens,
            rows: None,
            in_place: false,
        }
    }

    /// An input read in place by single-window calls, with its per-position rows (the
    /// positional terms of projections).
    pub(super) fn in_place(tokens: Tensor<3>, rows: Option<Tensor<2>>) -> Self {
        Self {
            tokens,
            rows,
            in_place: true,
        }
    }
}

/// One input of a window call, as the call gets it (a few short-lived values per window,
/// hence no boxing of the larger variant).
#[allow(clippy::large_enum_variant)]
pub(super) enum WindowView {
    /// The call's windows cut out and stacked, `[N·m, L, C]`, rows added.
    Cut(Tensor<3>),
    /// The whole input `[N, F, C]` and its rows; the call has one window, to be read in
    /// place at the frames of its `FrameWindow`.
    Whole(Tensor<3>, Option<Tensor<2>>),
}

impl WindowView {
    /// [`AttentionStage::attend`] on the call's windows (in place for a whole input).
    pub(super) fn attend(
        self,
        stage: &dyn AttentionStage,
        window: &FrameWindow,
    ) -> Result<Tensor<3>> {
        match self {
            Self::Cut(p) => stage.attend(p, window.mask.as_ref()),
            Self::Whole(p, rows) => stage.attend_at(
                &p,
                window.start..window.end,
                rows.as_ref(),
                window.mask.as_ref(),
            ),
        }
    }

    /// [`AttentionStage::output`] of `attended` with the call's windows of this input as the
    /// residual (read in place for a whole input).
    pub(super) fn output(
        self,
        stage: &dyn AttentionStage,
        attended: Tensor<3>,
        window: &FrameWindow,
    ) -> Result<Tensor<3>> {
        match self {
            Self::Whole(x, None) => stage.output_at(attended, &x, window.start..window.end),
            view => stage.output(attended, view.into_cut(window)?),
        }
    }

    /// The call's windows as one tensor (cut out here for a whole input).
    pub(super) fn into_cut(self, window: &FrameWindow) -> Result<Tensor<3>> {
        match self {
            Self::Cut(x) => Ok(x),
            Self::Whole(x, rows) => cut_window(&x, window.start..window.end, rows.as_ref()),
        }
    }
}

/// A window function over several inputs sliced alike, with several outputs.
pub(super) type WindowFn<'a> = dyn Fn(Vec<WindowView>, &FrameWindow) -> Result<Vec<Tensor<3>>> + 'a;

/// The windows of one stage call, their value weights and accumulation runs.
#[derive(Debug, Clone)]
pub(super) struct Chunk {
    /// Number of windows `m`.
    pub(super) windows: usize,
    /// The one window of a single-window call (its call gets the real `FrameWindow`).
    pub(super) single: Option<Range<usize>>,
    /// Frame of every stacked position (`m·L`): the indices of the one `select` that stacks
    /// the windows (much cheaper than concatenating `m` strided slices).
    pub(super) gather: Vec<i64>,
    /// Value weight of every stacked position divided by its frame's normaliser (`m·L`; 0
    /// where nothing is accumulated), so that the accumulated sum is already the average.
    pub(super) weights: Vec<f32>,
    /// Groups of non-overlapping contributions, each a contiguous range of stacked positions.
    pub(super) runs: Vec<Run>,
}

impl Chunk {
    /// The `FrameWindow` its stage call gets: the real one for a single window, else the
    /// window-relative `0..L` of stacked windows.
    pub(super) fn window(&self, l: usize) -> FrameWindow {
        match &self.single {
            Some(r) => FrameWindow::relative(r.start, r.end),
            None => FrameWindow::relative(0, l),
        }
    }

    /// `input` whole, when it is read in place and this call has a single window.
    pub(super) fn whole(&self, input: &WindowInput) -> Option<WindowView> {
        (input.in_place && self.single.is_some())
            .then(|| WindowView::Whole(input.tokens.clone(), input.rows.clone()))
    }
}

/// A stage output of the expected `[N·m, L, C]`, or a shape error naming the layer.
pub(super) fn check_output(y: &Tensor<3>, want: [usize; 3], site: &TemporalSite<'_>) -> Result<()> {
    if y.dims() == want {
        return Ok(());
    }
    Err(Error::shape(
        format!("output of a temporal stage of `{}`", site.layer),
        format!("[{}, {}, {}]", want[0], want[1], want[2]),
        &y.dims(),
    ))
}

/// Stacked positions `offset..offset + frames.len()` are added to `frames` (all distinct).
#[derive(Debug, Clone)]
pub(super) struct Run {
    pub(super) offset: usize,
    pub(super) frames: Vec<i64>,
    /// `frames` as a range when they are consecutive (then a slice-add is used, cheaper than
    /// a scatter).
    pub(super) contiguous: Option<Range<usize>>,
}

/// A [`WindowPlan`] turned into stage calls.
#[derive(Debug, Clone)]
pub(super) struct Schedule {
    pub(super) plan: WindowPlan,
    pub(super) chunks: Vec<Chunk>,
    /// Whether every frame's fused weights sum to 1 (false with the compat normaliser).
    pub(super) weights_sum_to_one: bool,
}

impl Schedule {
    pub(super) fn new(plan: WindowPlan, batching: WindowBatching) -> Self {
        let l = plan.context_length();
        let n_regular = plan.regular_windows().len();
        // Windows j and j + G never overlap (G·S ≥ L): order windows group by group so that
        // consecutive windows in a call are disjoint; the ragged window comes last.
        let groups = l.div_ceil(plan.context_stride());
        let mut order: Vec<usize> = (0..groups)
            .flat_map(|g| (g..n_regular).step_by(groups))
            .collect();
        if plan.tail_len().is_some() {
            order.push(n_regular);
        }
        let per_call = match batching {
            WindowBatching::Sequential => 1,
            WindowBatching::Stacked { max_windows } => max_windows.unwrap_or(order.len()).max(1),
        };
        let chunks = order
            .chunks(per_call)
            .map(|ids| {
                let mut weights = vec![0.0f32; ids.len() * l];
                let mut runs: Vec<Run> = Vec::new();
                let mut run_frames: Vec<bool> = vec![false; plan.num_frames()];
                for (slot, &j) in ids.iter().enumerate() {
                    let window = &plan.windows()[j];
                    let acc = plan.accumulated(j);
                    for o in acc.clone() {
                        weights[slot * l + o] =
                            plan.weights()[o] / plan.normaliser()[window.start + o];
                    }
                    let start = slot * l + acc.start;
                    let frames: Vec<i64> = acc.map(|o| (window.start + o) as i64).collect();
                    let joins = runs.last().is_some_and(|r| {
                        r.offset + r.frames.len() == start
                            && frames.iter().all(|&f| !run_frames[f as usize])
                    });
                    if !joins {
                        run_frames.iter_mut().for_each(|b| *b = false);
                        runs.push(Run {
                            offset: start,
                            frames: Vec::new(),
                            contiguous: None,
                        });
                    }
                    frames.iter().for_each(|&f| run_frames[f as usize] = true);
                    runs.last_mut().expect("a run").frames.extend(frames);
                }
                for r in &mut runs {
                    let first = r.frames[0] as usize;
                    let consecutive = r
                        .frames
                        .iter()
                        .enumerate()
                        .all(|(i, &f)| f as usize == first + i);
                    r.contiguous = consecutive.then(|| first..first + r.frames.len());
                }
                Chunk {
                    windows: ids.len(),
                    single: (ids.len() == 1).then(|| plan.windows()[ids[0]].clone()),
                    gather: ids
                        .iter()
                        .flat_map(|&j| plan.windows()[j].clone().map(|f| f as i64))
                        .collect(),
                    weights,
                    runs,
                }
            })
            .collect::<Vec<Chunk>>();
        let mut sums = vec![0.0f64; plan.num_frames()];
        for chunk in &chunks {
            for r in &chunk.runs {
                for (i, &f) in r.frames.iter().enumerate() {
                    sums[f as usize] += f64::from(chunk.weights[r.offset + i]);
                }
            }
        }
        let weights_sum_to_one = sums.iter().all(|s| (s - 1.0).abs() < 1e-5);
        Self {
            plan,
            chunks,
            weights_sum_to_one,
        }
    }

    /// Runs `run` on every window of `tokens` (`[N, F, C]`) and fuses the outputs.
    pub(super) fn fuse_one(
        &self,
        tokens: Tensor<3>,
        run: &dyn Fn(Tensor<3>, &FrameWindow) -> Result<Tensor<3>>,
        site: &TemporalSite<'_>,
    ) -> Result<Tensor<3>> {
        let c = tokens.dims()[2];
        let fused = self.fuse(
            vec![WindowInput::cut(tokens)],
            &|mut x, w| Ok(vec![run(x.remove(0).into_cut(w)?, w)?]),
            &[c],
            site,
        )?;
        Ok(fused.into_iter().next().expect("one output"))
    }

    /// One attention stage over every window, its per-token projections computed once for
    /// all frames and its output projection once after the fusion (exact when the weights
    /// of every frame sum to 1; VideoCrafter fuses at the same point).
    pub(super) fn fuse_attention(
        &self,
        tokens: Tensor<3>,
        stage: &dyn AttentionStage,
        site: &TemporalSite<'_>,
    ) -> Result<Tensor<3>> {
        let projections = stage.project(tokens.clone())?;
        // Every window sees positions 0..L: their terms are added as the windows are read.
        let positions = stage.project_positions(0..self.plan.context_length(), &tokens.device())?;
        let attended = self.fuse(
            vec![WindowInput::in_place(projections, positions)],
            &|mut p, w| Ok(vec![p.remove(0).attend(stage, w)?]),
            &[stage.attention_width()],
            site,
        )?;
        stage.output(attended.into_iter().next().expect("one output"), tokens)
    }

    /// The chain of `stages` over every window (the `Chain` variant) with the first stage's
    /// projections computed once for all frames and the last stage's output projection once
    /// after the fusion: for windows `w` with weights `c_w` summing to 1,
    /// `Σ c_w (h_w + out(a_w)) = Σ c_w h_w + out(Σ c_w a_w)`.
    pub(super) fn fuse_chain(
        &self,
        tokens: Tensor<3>,
        stages: &dyn TemporalStages,
        first: &dyn AttentionStage,
        last: &dyn AttentionStage,
        site: &TemporalSite<'_>,
    ) -> Result<Tensor<3>> {
        let c = tokens.dims()[2];
        let k = stages.num_stages();
        let projections = first.project(tokens.clone())?;
        // Every window sees positions 0..L: the first stage's terms are added as the windows
        // are read; the last stage's are kept across the windows of this pass.
        let positions = first.project_positions(0..self.plan.context_length(), &tokens.device())?;
        let last_windows = WindowAttention::new(last);
        let fused = self.fuse(
            vec![
                WindowInput::in_place(tokens, None),
                WindowInput::in_place(projections, positions),
            ],
            &|mut inputs, w| {
                let p = inputs.pop().expect("projections");
                let x = inputs.pop().expect("tokens");
                let mut h = x.output(first, p.attend(first, w)?, w)?;
                for stage in 1..k - 1 {
                    h = stages.run_stage(stage, h, w)?;
                }
                let a = last_windows.attend(last.project(h.clone())?, w)?;
                Ok(vec![h, a])
            },
            &[c, last.attention_width()],
            site,
        )?;
        let [h, a]: [Tensor<3>; 2] = fused.try_into().expect("two outputs");
        last.output(a, h)
    }

    /// Runs `run` on every window of `inputs` (each `[N, F, C_i]`, sliced alike, with its
    /// optional per-position rows `[L, C_i]` added to every window) and fuses each of its
    /// outputs (`[N·m, L, widths[j]]` for `m` windows per call) over the windows.
    pub(super) fn fuse(
        &self,
        inputs: Vec<WindowInput>,
        run: &WindowFn<'_>,
        widths: &[usize],
        site: &TemporalSite<'_>,
    ) -> Result<Vec<Tensor<3>>> {
        #[cfg(test)]
        let host = !super::tests::TENSOR_OPS.with(|t| t.get());
        #[cfg(not(test))]
        let host = true;
        let first = &inputs[0].tokens;
        if host && cpu_kernels(&first.device(), first.dtype()) {
            return self.fuse_on_host(inputs, run, widths, site);
        }
        let [n, f, _] = first.dims();
        let l = self.plan.context_length();
        let device = first.device();
        let ints = |v: &[i64]| {
            Tensor::<1, Int>::from_data(TensorData::new(v.to_vec(), [v.len()]), &device)
        };
        let mut acc: Vec<Option<Tensor<3>>> = vec![None; widths.len()];
        for chunk in &self.chunks {
            let m = chunk.windows;
            // The windows' frames gathered into [N, m·L, C] (row n holds token n's m
            // windows) and viewed as [N·m, L, C]. `select` writes them contiguously in one
            // pass; materialising a strided `narrow` view is several times slower on flex.
            let gather = ints(&chunk.gather);
            let xs = inputs
                .iter()
                .map(|input| {
                    let WindowInput { tokens, rows, .. } = input;
                    if let Some(view) = chunk.whole(input) {
                        return view;
                    }
                    let c = tokens.dims()[2];
                    let x = tokens
                        .clone()
                        .select(1, gather.clone())
                        .reshape([n * m, l, c]);
                    WindowView::Cut(match rows {
                        Some(r) => x + r.clone().reshape([1, l, c]),
                        None => x,
                    })
                })
                .collect();
            let ys = run(xs, &chunk.window(l))?;
            let w =
                Tensor::<1>::from_data(TensorData::new(chunk.weights.clone(), [m * l]), &device)
                    .reshape([1, m * l, 1]);
            for ((y, &c), acc) in ys.into_iter().zip(widths).zip(&mut acc) {
                check_output(&y, [n * m, l, c], site)?;
                let y = y.reshape([n, m * l, c]) * w.clone();
                for r in &chunk.runs {
                    let values = y.clone().narrow(1, r.offset, r.frames.len());
                    *acc = Some(match (acc.take(), &r.contiguous) {
                        (None, Some(range)) => values.pad(
                            [(0, 0), (range.start, f - range.end), (0, 0)],
                            PadMode::Constant(0.0),
                        ),
                        (Some(acc), Some(range)) => {
                            // The sum is computed before `slice_assign` so that `acc` is
                            // uniquely owned by then and can be updated in place.
                            let slice = [0..n, range.clone(), 0..c];
                            let sum = acc.clone().slice(slice.clone()) + values;
                            acc.slice_assign(slice, sum)
                        }
                        (acc, None) => acc
                            .unwrap_or_else(|| Tensor::zeros([n, f, c], &device))
                            .select_assign(1, ints(&r.frames), values, IndexingUpdateOp::Add),
                    });
                }
            }
        }
        // The weights already include the normaliser.
        Ok(acc
            .into_iter()
            .map(|a| a.expect("every plan has a window"))
            .collect())
    }

    /// [`fuse`](Self::fuse) on the host (flex backend): each window gathered in one pass and
    /// its weighted outputs added straight into host accumulators ([`vdm_kernels::frames`]).
    /// Per frame, the windows are added in the same order as on the tensor-op path, so both
    /// are deterministic.
    pub(super) fn fuse_on_host(
        &self,
        inputs: Vec<WindowInput>,
        run: &WindowFn<'_>,
        widths: &[usize],
        site: &TemporalSite<'_>,
    ) -> Result<Vec<Tensor<3>>> {
        let [n, f, _] = inputs[0].tokens.dims();
        let l = self.plan.context_length();
        let device = inputs[0].tokens.device();
        // The host values of every input whose windows some call cuts out.
        let stacked = self.chunks.iter().any(|c| c.single.is_none());
        let hosts = inputs
            .iter()
            .map(|input| {
                if input.in_place && !stacked {
                    return Ok(None);
                }
                let rows = input.rows.clone().map(HostF32::new).transpose()?;
                Ok(Some((HostF32::new(input.tokens.clone())?, rows)))
            })
            .collect::<Result<Vec<_>>>()?;
        let mut acc: Vec<Vec<f32>> = widths.iter().map(|&c| vec![0.0; n * f * c]).collect();
        for chunk in &self.chunks {
            let m = chunk.windows;
            let xs = inputs
                .iter()
                .zip(&hosts)
                .map(|(input, host)| {
                    if let Some(view) = chunk.whole(input) {
                        return view;
                    }
                    let (x, rows) = host.as_ref().expect("host values of an input that is cut");
                    let c = input.tokens.dims()[2];
                    let rows = rows.as_ref().map(HostF32::as_slice);
                    let data =
                        vdm_kernels::frames::gather(x.as_slice(), [n, f, c], &chunk.gather, rows);
                    WindowView::Cut(Tensor::from_data(
                        TensorData::new(data, [n * m, l, c]),
                        &device,
                    ))
                })
                .collect();
            let ys = run(xs, &chunk.window(l))?;
            for ((y, &c), acc) in ys.into_iter().zip(widths).zip(&mut acc) {
                check_output(&y, [n * m, l, c], site)?;
                let y = HostF32::new(y)?;
                vdm_kernels::frames::accumulate(
                    acc,
                    [n, f, c],
                    y.as_slice(),
                    &chunk.gather,
                    &chunk.weights,
                );
            }
        }
        Ok(acc
            .into_iter()
            .zip(widths)
            .map(|(a, &c)| Tensor::from_data(TensorData::new(a, [n, f, c]), &device))
            .collect())
    }
}
