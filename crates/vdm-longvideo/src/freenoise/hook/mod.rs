//! FreeNoise window fusion as a [`TemporalHook`] (Qiu et al. 2024, §3.2 "Window-based Attention
//! Fusion", Eq. 9; diffusers' `FreeNoiseTransformerBlock.forward` in
//! `src/diffusers/models/attention.py`; VideoCrafter's `CrossAttention.forward` in
//! `lvdm/modules/attention_freenoise.py` of AILab-CVC/FreeNoise).
//!
//! The configuration is in `hook/config.rs`, the window schedule and the fusion itself (on
//! tensors, and the host fast path) in `hook/fusion.rs`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use burn::tensor::Tensor;
use vdm_core::temporal::{FrameWindow, TemporalHook, TemporalSite, TemporalStages, run_chain};
use vdm_core::{Error, Result};

#[cfg(doc)]
use super::windows::WeightingScheme;
use super::windows::WindowPlan;

mod config;
mod fusion;
#[cfg(test)]
mod tests;

pub use config::{FreeNoiseConfig, FusionVariant, WindowBatching};
use fusion::Schedule;

/// FreeNoise window fusion for the temporal layers of **any** model that routes them through
/// [`TemporalHook`] — pass it with
/// [`DenoiserInput::with_temporal`](vdm_core::DenoiserInput::with_temporal).
///
/// For a sequence of `F` frames, the layer's frame-mixing stages run on the windows of a
/// [`WindowPlan`] (`[kS, kS + L)` plus a ragged window `[F − L, F)` flush with the end), each
/// with window-relative positions `0..L`, and the window outputs are averaged per frame with
/// the weights of the [`WeightingScheme`] (Eq. 9 of the paper). Per-frame layers (feed-forward,
/// `proj_out`) stay in the layer and run once on the fused sequence, as in diffusers.
///
/// - **Videos longer than the positional table** work: windows only use positions `0..L`; the
///   hook errors (naming `context_length`) if `L` exceeds the layer's
///   [`TemporalSite::max_positions`].
/// - **`F < L`**: the hook falls back to all frames at once (positions `0..F`), which is what
///   plain inference of a short clip does (diffusers crashes with an `IndexError`, bug B7).
///   `F = L` is one window, i.e. plain inference too.
/// - Window plans (windows, weights, normalisers, accumulation runs) are computed once per `F`
///   and cached.
/// - The accumulation is deterministic on every backend: windows are accumulated in groups of
///   non-overlapping windows (slice-adds, or a `select_assign` that never sees a duplicate
///   index). On the flex CPU backend ([`vdm_core::host::cpu_kernels`]) windows are cut out
///   and accumulated on the host instead, one pass each, adding the windows of every frame in
///   the same order.
/// - Memory: with the default [`WindowBatching::Sequential`] a stage call holds one window
///   (`L` frames); [`WindowBatching::Stacked`] windows hold about `L/S` times the layer's
///   tokens (4× for 16/4), capped by `max_windows`.
///
/// ```
/// use burn::tensor::{Device, Tensor};
/// use vdm_core::temporal::{FrameWindow, TemporalHook, TemporalSite, TemporalStages};
/// use vdm_core::Result;
/// use vdm_longvideo::freenoise::{FreeNoiseConfig, FreeNoiseHook};
///
/// /// A stage that writes each frame's window-relative position.
/// struct Positions;
/// impl TemporalStages for Positions {
///     fn num_stages(&self) -> usize { 1 }
///     fn run_stage(&self, _: usize, x: Tensor<3>, w: &FrameWindow) -> Result<Tensor<3>> {
///         let [n, f, c] = x.dims();
///         let pos: Vec<f32> = w.positions.clone().map(|p| p as f32).collect();
///         Ok(Tensor::<1>::from_floats(pos.as_slice(), &x.device()).reshape([1, f, 1]).expand([n, f, c]))
///     }
/// }
///
/// let hook = FreeNoiseHook::new(FreeNoiseConfig::new(4, 2)).unwrap();
/// let x = Tensor::<3>::zeros([1, 6, 1], &Device::flex());
/// let y = hook.apply(&TemporalSite::new("toy", 6).with_max_positions(4), x, &Positions).unwrap();
/// // Windows [0,4) [2,6), pyramid weights [1,2,2,1]: frame 2 = (2·2 + 1·0)/3.
/// let y: Vec<f32> = y.into_data().try_to_vec().unwrap();
/// assert!((y[2] - 4.0 / 3.0).abs() < 1e-6);
/// ```
pub struct FreeNoiseHook {
    config: FreeNoiseConfig,
    schedules: Mutex<HashMap<usize, Arc<Schedule>>>,
}

impl std::fmt::Debug for FreeNoiseHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FreeNoiseHook")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Clone for FreeNoiseHook {
    fn clone(&self) -> Self {
        Self {
            config: self.config,
            schedules: Mutex::new(self.lock().clone()),
        }
    }
}

impl FreeNoiseHook {
    /// A hook with `config` (validated).
    pub fn new(config: FreeNoiseConfig) -> Result<Self> {
        config.validate()?;
        Ok(Self {
            config,
            schedules: Mutex::new(HashMap::new()),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &FreeNoiseConfig {
        &self.config
    }

    /// The window plan used for `num_frames ≥ L` frames.
    pub fn plan(&self, num_frames: usize) -> Result<WindowPlan> {
        Ok(self.schedule(num_frames)?.plan.clone())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<usize, Arc<Schedule>>> {
        self.schedules.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn schedule(&self, num_frames: usize) -> Result<Arc<Schedule>> {
        if let Some(s) = self.lock().get(&num_frames) {
            return Ok(s.clone());
        }
        let c = &self.config;
        let plan = WindowPlan::new(
            num_frames,
            c.context_length,
            c.context_stride,
            c.weighting_scheme,
            c.compat_diffusers_tail_bug,
        )?;
        let schedule = Arc::new(Schedule::new(plan, c.batching));
        self.lock().insert(num_frames, schedule.clone());
        Ok(schedule)
    }
}

impl TemporalHook for FreeNoiseHook {
    fn apply(
        &self,
        site: &TemporalSite<'_>,
        tokens: Tensor<3>,
        stages: &dyn TemporalStages,
    ) -> Result<Tensor<3>> {
        let [_, frames, _] = tokens.dims();
        let l = self.config.context_length;
        if frames <= l {
            // Short clip: plain inference over all frames (positions 0..F).
            let window = FrameWindow::full(frames);
            site.check_positions(&window.positions)?;
            return run_chain(stages, tokens, &window);
        }
        if let Some(max) = site.max_positions
            && l > max
        {
            return Err(Error::invalid(
                "context_length",
                format!(
                    "{l} exceeds the {max} positional embeddings of temporal layer `{}`",
                    site.layer
                ),
            ));
        }
        if stages.num_stages() == 0 {
            return Ok(tokens);
        }
        let schedule = self.schedule(frames)?;
        // Sharing per-token work between windows relies on the fused weights of every frame
        // summing to 1 (then the fused residual is the input and the output projection can
        // follow the fusion); the compat normaliser breaks that, so it runs every window in full.
        let share = schedule.weights_sum_to_one;
        let k = stages.num_stages();
        // With one stage the two variants are the same computation.
        if self.config.variant == FusionVariant::PerStage || k == 1 {
            let mut x = tokens;
            for stage in 0..k {
                x = match stages.attention_stage(stage) {
                    Some(a) if share => schedule.fuse_attention(x, a.as_ref(), site)?,
                    _ => schedule.fuse_one(x, &|x, w| stages.run_stage(stage, x, w), site)?,
                };
            }
            return Ok(x);
        }
        if share
            && let (Some(first), Some(last)) =
                (stages.attention_stage(0), stages.attention_stage(k - 1))
        {
            return schedule.fuse_chain(tokens, stages, first.as_ref(), last.as_ref(), site);
        }
        schedule.fuse_one(tokens, &|x, w| run_chain(stages, x, w), site)
    }
}
