//! DPM-Solver and DPM-Solver++ multistep samplers (Lu et al. 2022, "DPM-Solver: A Fast ODE
//! Solver for Diffusion Probabilistic Model Sampling in Around 10 Steps", and Lu et al. 2022,
//! "DPM-Solver++: Fast Solver for Guided Sampling of Diffusion Probabilistic Models"),
//! mirroring diffusers' `scheduling_dpmsolver_multistep.py` (`DPMSolverMultistepScheduler`).
//!
//! The solver works in half-log-SNR time `λ = log α − log σ`: with `σ̃` the Karras-style sigma
//! of a timestep, `α = 1/sqrt(σ̃² + 1)` and `σ = σ̃·α`. Each step converts the model output
//! to a data prediction `x̂₀` (DPM-Solver++) or a noise prediction `ε̂` (DPM-Solver) and
//! integrates the diffusion ODE (or, for the `sde-*` variants, SDE) exactly in its linear part
//! with a 1st-, 2nd- or 3rd-order multistep approximation of the rest, using the outputs of
//! the previous steps. That history is part of the scheduler value, so clone the scheduler to
//! keep separate histories (e.g. one per frame window).
//!
//! Sigmas are computed as diffusers does (an `f32` table from `ᾱ`, `numpy` `f64` for Karras /
//! exponential / λ-uniform schedules, stored as `f32`), and every step coefficient is computed
//! in `f32` in the same order as diffusers' 0-d tensor arithmetic.
//!
//! The configuration (`scheduler_config.json` fields and their checks) is in
//! `dpm_solver/config.rs`, the model-output conversion and the 1st/2nd/3rd-order multistep
//! updates in `dpm_solver/updates.rs`.

use burn::tensor::Tensor;
use vdm_core::layout::expect_same_shape;
use vdm_core::noise::draw;
use vdm_core::{Error, NoiseSource, PredictionType, Result};

use crate::beta_sigmas::beta_sigmas;
use crate::euler::step_position;
use crate::options::{BetaSchedule, FinalSigmasType, TimestepSpacing};
use crate::schedule::NoiseSchedule;
use crate::schedule::integer_timestep;
use crate::scheduler::{Scheduler, StepOutput};
use crate::spacing::{check_in_range, np_linspace, validate_steps};

mod config;
#[cfg(test)]
mod tests;
mod updates;

pub use config::DpmSolverMultistepConfig;
pub(crate) use config::{deserialize_extended_f64, serialize_extended_f64};

/// `ᾱ` of the last training timestep with zero terminal SNR: diffusers replaces the exact 0
/// by the smallest positive `f16` subnormal so that the first sigma (4096) is finite.
const ZERO_SNR_ALPHA_CUMPROD: f32 = 1.0 / 16_777_216.0; // 2⁻²⁴

/// The multistep DPM-Solver / DPM-Solver++ sampler.
///
/// Its state — the converted model outputs of the last `solver_order` steps, how many
/// lower-order warm-up steps have run and the current step index — lives in the value:
/// [`Scheduler::set_timesteps`] resets it and cloning copies it, so independent clones can be
/// stepped independently (e.g. one per frame window).
///
/// Each step's [`StepOutput::pred_original_sample`] is `x̂₀`: the converted model output for
/// DPM-Solver++, `(x − σ·ε̂)/α` for DPM-Solver. The first step may start anywhere in the
/// schedule (its timestep is looked up); later steps must follow the schedule in order.
#[derive(Debug, Clone)]
pub struct DpmSolverMultistep {
    config: DpmSolverMultistepConfig,
    schedule: NoiseSchedule,
    /// `σ̃_t = sqrt((1 − ᾱ_t)/ᾱ_t)` for every training timestep, in `f32` as diffusers.
    train_sigmas: Vec<f32>,
    timesteps: Vec<f64>,
    /// The sigma of each inference timestep plus the final sigma (`len = timesteps + 1`).
    sigmas: Vec<f32>,
    /// Converted outputs of the last `solver_order` steps, oldest first.
    model_outputs: Vec<Option<Tensor<5>>>,
    lower_order_nums: usize,
    step_index: Option<usize>,
    /// Round Karras / λ-uniform timesteps for the cosine schedule too (UniPC); diffusers'
    /// DPM-Solver truncates them there.
    round_cosine_timesteps: bool,
}

/// `(α, σ)` of a sigma, in `f32`: `α = 1/sqrt(σ̃² + 1)`, `σ = σ̃·α`.
pub(crate) fn alpha_sigma(sigma: f32) -> (f32, f32) {
    let alpha = 1.0 / (sigma * sigma + 1.0).sqrt();
    (alpha, sigma * alpha)
}

/// `λ = log α − log σ`, in `f32` (`+inf` at `σ = 0`).
pub(crate) fn lambda(alpha: f32, sigma: f32) -> f32 {
    alpha.ln() - sigma.ln()
}

/// `numpy.arange(start, 0, −step)` as numpy fills it: `start + i·δ` with
/// `δ = (start − step) − start`.
fn np_arange_desc(start: f64, step: f64) -> Vec<f64> {
    let len = (start / step).ceil().max(0.0) as usize;
    let delta = (start - step) - start;
    (0..len)
        .map(|i| {
            if i == 0 {
                start
            } else {
                start + i as f64 * delta
            }
        })
        .collect()
}

/// diffusers' `_sigma_to_t`: the (fractional) training timestep of `sigma`, interpolating
/// linearly in `log σ̃` over the `f32` table `log_sigmas` (increasing with `t`).
fn sigma_to_t(sigma: f64, log_sigmas: &[f32]) -> f64 {
    let log_sigma = sigma.max(1e-10).ln();
    let n = log_sigmas.len();
    let low_idx = log_sigmas
        .iter()
        .rposition(|&l| log_sigma - l as f64 >= 0.0)
        .unwrap_or(0)
        .min(n - 2);
    let high_idx = low_idx + 1;
    let low = log_sigmas[low_idx];
    let high = log_sigmas[high_idx];
    let w = ((low as f64 - log_sigma) / (low - high) as f64).clamp(0.0, 1.0);
    (1.0 - w) * low_idx as f64 + w * high_idx as f64
}

impl DpmSolverMultistepConfig {
    /// Builds the scheduler.
    pub fn build(&self) -> Result<DpmSolverMultistep> {
        DpmSolverMultistep::new(self.clone())
    }

    /// Builds the scheduler, boxed.
    pub fn build_boxed(&self) -> Result<Box<dyn Scheduler>> {
        Ok(Box::new(self.build()?))
    }
}

impl DpmSolverMultistep {
    /// A DPM-Solver scheduler for `config` (call [`Scheduler::set_timesteps`] before
    /// stepping).
    pub fn new(config: DpmSolverMultistepConfig) -> Result<Self> {
        config.validate()?;
        let mut schedule = NoiseSchedule::new(&config.betas)?;
        if config.betas.rescale_betas_zero_snr
            && let Some(last) = schedule.alphas_cumprod.last_mut()
        {
            *last = ZERO_SNR_ALPHA_CUMPROD;
        }
        let train_sigmas = schedule
            .alphas_cumprod
            .iter()
            .map(|&a| ((1.0 - a) / a).sqrt())
            .collect();
        let model_outputs = vec![None; config.solver_order];
        Ok(Self {
            config,
            schedule,
            train_sigmas,
            timesteps: Vec::new(),
            sigmas: Vec::new(),
            model_outputs,
            lower_order_nums: 0,
            step_index: None,
            round_cosine_timesteps: false,
        })
    }

    /// Rounds Karras timesteps for the cosine schedule too, as diffusers' UniPC (which shares
    /// this scheduler's timesteps and sigmas otherwise).
    pub(crate) fn rounding_karras_timesteps(mut self) -> Self {
        self.round_cosine_timesteps = true;
        self
    }

    /// The configuration.
    pub fn config(&self) -> &DpmSolverMultistepConfig {
        &self.config
    }

    /// The sigma `σ̃` of every inference timestep followed by the final sigma (empty until
    /// [`Scheduler::set_timesteps`]), as diffusers' `scheduler.sigmas`.
    pub fn sigmas(&self) -> &[f32] {
        &self.sigmas
    }

    /// The index of the next step in [`Scheduler::timesteps`], once stepping has started.
    pub fn step_index(&self) -> Option<usize> {
        self.step_index
    }

    /// How many steps have run, capped at `solver_order` (the warm-up counter that limits the
    /// order of the first steps).
    pub fn lower_order_nums(&self) -> usize {
        self.lower_order_nums
    }

    /// The position of `timestep` in the schedule, as diffusers' `index_for_timestep`: the
    /// second match if it occurs twice. Unlike diffusers, which silently uses the last index,
    /// a timestep that is not in the schedule is an error.
    pub fn index_for_timestep(&self, timestep: f64) -> Result<usize> {
        if self.timesteps.is_empty() {
            return Err(Error::invalid(
                "num_inference_steps",
                "call set_timesteps before step or add_noise",
            ));
        }
        let t = integer_timestep(timestep)? as f64;
        let mut matches = self
            .timesteps
            .iter()
            .enumerate()
            .filter(|&(_, &s)| s == t)
            .map(|(i, _)| i);
        match (matches.next(), matches.next()) {
            (_, Some(second)) => Ok(second),
            (Some(first), None) => Ok(first),
            (None, None) => Err(Error::invalid(
                "timestep",
                format!(
                    "{timestep} is not one of the {} inference timesteps",
                    self.timesteps.len()
                ),
            )),
        }
    }

    /// The last usable training timestep + 1 after `lambda_min_clipped`
    /// (`T − searchsorted(flip(λ), lambda_min_clipped)`).
    fn last_timestep(&self) -> usize {
        let clip = self.config.lambda_min_clipped as f32;
        let clipped = self
            .schedule
            .alphas_cumprod
            .iter()
            .filter(|&&a| lambda(a.sqrt(), (1.0 - a).sqrt()) < clip)
            .count();
        self.schedule.num_train_timesteps() - clipped
    }

    /// Integer timesteps for `timestep_spacing` (DPM-Solver's own variant of each spacing).
    fn spaced_timesteps(&self, n: usize) -> Result<Vec<f64>> {
        let train = self.schedule.num_train_timesteps();
        let last = self.last_timestep();
        if last < 2 {
            return Err(Error::invalid(
                "lambda_min_clipped",
                format!(
                    "{} clips all but {last} training timesteps",
                    self.config.lambda_min_clipped
                ),
            ));
        }
        let ts: Vec<f64> = match self.config.timestep_spacing {
            TimestepSpacing::Linspace => np_linspace(0.0, (last - 1) as f64, n + 1)
                .into_iter()
                .rev()
                .take(n)
                .map(f64::round_ties_even)
                .collect(),
            TimestepSpacing::Leading => {
                let ratio = last / (n + 1);
                if ratio == 0 {
                    return Err(Error::invalid(
                        "num_inference_steps",
                        format!(
                            "{n} steps with `leading` spacing need at least {} usable \
                             training timesteps, there are {last}",
                            n + 1
                        ),
                    ));
                }
                (1..=n)
                    .rev()
                    .map(|i| (i * ratio + self.config.steps_offset) as f64)
                    .collect()
            }
            // numpy may return one element too many when T/N is inexact; it rounds to
            // timestep −1, which we drop (diffusers would step to and from σ̃_0 there).
            TimestepSpacing::Trailing => np_arange_desc(last as f64, train as f64 / n as f64)
                .into_iter()
                .map(|x| x.round_ties_even() - 1.0)
                .filter(|&t| t >= 0.0)
                .collect(),
        };
        check_in_range(&ts, train)?;
        if ts.windows(2).any(|w| w[1] >= w[0]) {
            return Err(Error::invalid(
                "num_inference_steps",
                format!(
                    "{n} steps repeat timesteps within the {last} usable training timesteps \
                     (a zero-length step would divide by zero)"
                ),
            ));
        }
        Ok(ts)
    }
}

impl Scheduler for DpmSolverMultistep {
    fn set_timesteps(&mut self, num_inference_steps: usize) -> Result<()> {
        let n = num_inference_steps;
        let train = self.schedule.num_train_timesteps();
        validate_steps(n, train)?;
        let log_sigmas: Vec<f32> = self.train_sigmas.iter().map(|s| s.ln()).collect();
        let sigma_min = self.train_sigmas[0] as f64;
        let sigma_max = self.train_sigmas[train - 1] as f64;
        let cosine = !self.round_cosine_timesteps
            && self.config.betas.trained_betas.is_none()
            && self.config.betas.beta_schedule == BetaSchedule::SquaredcosCapV2;
        // Custom sigma schedules: timesteps are the (rounded, except for the cosine schedule
        // where diffusers truncates them) training timesteps of the sigmas.
        let custom: Option<(Vec<f64>, bool)> = if self.config.use_karras_sigmas {
            let rho = 7.0;
            let min_inv = sigma_min.powf(1.0 / rho);
            let max_inv = sigma_max.powf(1.0 / rho);
            let sigmas = np_linspace(0.0, 1.0, n)
                .into_iter()
                .map(|r| (max_inv + r * (min_inv - max_inv)).powf(rho))
                .collect();
            Some((sigmas, !cosine))
        } else if self.config.use_lu_lambdas {
            let lambda_min = log_sigmas[0] as f64;
            let lambda_max = log_sigmas[train - 1] as f64;
            let sigmas = np_linspace(0.0, 1.0, n)
                .into_iter()
                .map(|r| (lambda_max + r * (lambda_min - lambda_max)).exp())
                .collect();
            Some((sigmas, !cosine))
        } else if self.config.use_beta_sigmas {
            Some((beta_sigmas(sigma_min, sigma_max, n), false))
        } else if self.config.use_exponential_sigmas {
            let sigmas = np_linspace(sigma_max.ln(), sigma_min.ln(), n)
                .into_iter()
                .map(f64::exp)
                .collect();
            Some((sigmas, false))
        } else {
            None
        };
        let (timesteps, mut sigmas): (Vec<f64>, Vec<f32>) = match custom {
            Some((sigmas, round)) => {
                let ts = sigmas
                    .iter()
                    .map(|&s| {
                        let t = sigma_to_t(s, &log_sigmas);
                        if round {
                            t.round_ties_even()
                        } else {
                            t.trunc()
                        }
                    })
                    .collect();
                (ts, sigmas.into_iter().map(|s| s as f32).collect())
            }
            None => {
                let ts = self.spaced_timesteps(n)?;
                let sigmas = ts.iter().map(|&t| self.train_sigmas[t as usize]).collect();
                (ts, sigmas)
            }
        };
        sigmas.push(match self.config.final_sigmas_type {
            FinalSigmasType::SigmaMin => self.train_sigmas[0],
            FinalSigmasType::Zero => 0.0,
        });
        self.timesteps = timesteps;
        self.sigmas = sigmas;
        self.model_outputs = vec![None; self.config.solver_order];
        self.lower_order_nums = 0;
        self.step_index = None;
        Ok(())
    }

    fn timesteps(&self) -> &[f64] {
        &self.timesteps
    }

    fn step(
        &mut self,
        model_output: Tensor<5>,
        timestep: f64,
        sample: Tensor<5>,
        noise: &mut dyn NoiseSource,
    ) -> Result<StepOutput> {
        expect_same_shape("model_output", &model_output, &sample)?;
        let n = self.timesteps.len();
        // A run from the first timestep starts at index 0 even when truncation repeats it
        // (beta / exponential sigmas on the cosine schedule); diffusers starts at the repeat.
        let i = step_position(&self.timesteps, self.step_index, timestep)?;
        let cfg = &self.config;
        let lower_order_final = i == n - 1
            && (cfg.euler_at_final
                || (cfg.lower_order_final && n < 15)
                || cfg.final_sigmas_type == FinalSigmasType::Zero);
        let lower_order_second = i + 2 == n && cfg.lower_order_final && n < 15;

        let converted = self.convert_model_output(model_output, &sample, self.sigmas[i])?;
        let z = if cfg.is_sde() {
            Some(draw(noise, sample.dims(), &sample.device())?)
        } else {
            None
        };
        let pred_original = if cfg.is_data_prediction() {
            converted.clone()
        } else {
            let (alpha, sigma) = alpha_sigma(self.sigmas[i]);
            (sample.clone() - converted.clone().mul_scalar(sigma)).div_scalar(alpha)
        };

        let mut outputs = self.model_outputs.clone();
        outputs.rotate_left(1);
        if let Some(last) = outputs.last_mut() {
            *last = Some(converted.clone());
        }
        let previous = |k: usize| {
            (outputs.len() > k)
                .then(|| outputs[outputs.len() - 1 - k].clone())
                .flatten()
        };
        let order = if cfg.solver_order == 1 || self.lower_order_nums < 1 || lower_order_final {
            1
        } else if cfg.solver_order == 2 || self.lower_order_nums < 2 || lower_order_second {
            2
        } else {
            3
        };
        let prev_sample = match (order, previous(1), previous(2)) {
            (2, Some(m1), _) | (3, Some(m1), None) => {
                self.second_order_update(i, converted, m1, sample, z)
            }
            (3, Some(m1), Some(m2)) => self.third_order_update(i, [converted, m1, m2], sample, z),
            _ => self.first_order_update(i, converted, sample, z),
        };

        self.model_outputs = outputs;
        if self.lower_order_nums < cfg.solver_order {
            self.lower_order_nums += 1;
        }
        self.step_index = Some(i + 1);
        Ok(StepOutput {
            prev_sample,
            pred_original_sample: Some(pred_original),
        })
    }

    fn add_noise(&self, original: Tensor<5>, noise: Tensor<5>, timestep: f64) -> Result<Tensor<5>> {
        expect_same_shape("noise", &noise, &original)?;
        let (alpha, sigma) = alpha_sigma(self.sigmas[self.index_for_timestep(timestep)?]);
        Ok(original.mul_scalar(alpha) + noise.mul_scalar(sigma))
    }

    fn prediction_type(&self) -> PredictionType {
        self.config.prediction_type
    }

    fn noise_schedule(&self) -> &NoiseSchedule {
        &self.schedule
    }

    fn box_clone(&self) -> Box<dyn Scheduler> {
        Box::new(self.clone())
    }
}
