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

use burn::tensor::Tensor;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use vdm_core::error::ensure_positive;
use vdm_core::layout::expect_same_shape;
use vdm_core::noise::draw;
use vdm_core::{Error, NoiseSource, PredictionType, Result};

use crate::beta_sigmas::beta_sigmas;
use crate::euler::step_position;
use crate::options::{AlgorithmType, BetaSchedule, FinalSigmasType, SolverType, TimestepSpacing};
use crate::schedule::integer_timestep;
use crate::schedule::{BetaConfig, NoiseSchedule};
use crate::scheduler::{Scheduler, StepOutput};
use crate::spacing::{check_in_range, np_linspace, validate_steps};
use crate::threshold::SampleClipping;

/// `ᾱ` of the last training timestep with zero terminal SNR: diffusers replaces the exact 0
/// by the smallest positive `f16` subnormal so that the first sigma (4096) is finite.
const ZERO_SNR_ALPHA_CUMPROD: f32 = 1.0 / 16_777_216.0; // 2⁻²⁴

/// The fields of a diffusers `DPMSolverMultistepScheduler` `scheduler_config.json`, with its
/// defaults (linear betas 1e-4 → 0.02, `dpmsolver++`, order 2, `midpoint`, `linspace`
/// spacing, final sigma 0).
///
/// Options this crate does not implement (`use_flow_sigmas`,
/// `use_dynamic_shifting`, learned `variance_type`) are accepted by the parser so that real
/// config files load, and rejected with [`Error::Unsupported`] when the scheduler is built.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct DpmSolverMultistepConfig {
    /// Training noise schedule (`sigmoid` betas are not available for this scheduler, as in
    /// diffusers). With `rescale_betas_zero_snr`, the last `ᾱ` is set to `2⁻²⁴` instead of 0.
    #[serde(flatten)]
    pub betas: BetaConfig,
    /// Order of the multistep solver: 1, 2 (recommended for guided sampling) or 3.
    pub solver_order: usize,
    /// What the model predicts.
    pub prediction_type: PredictionType,
    /// Dynamic thresholding of `x̂₀` (pixel-space models only).
    pub thresholding: bool,
    /// The quantile of `|x̂₀|` used as the dynamic threshold.
    pub dynamic_thresholding_ratio: f64,
    /// The largest dynamic threshold.
    pub sample_max_value: f64,
    /// DPM-Solver++ (data prediction) or DPM-Solver (noise prediction), ODE or SDE.
    pub algorithm_type: AlgorithmType,
    /// The second-order rule.
    pub solver_type: SolverType,
    /// Use lower orders on the last steps when there are fewer than 15 steps.
    pub lower_order_final: bool,
    /// Use a first-order (Euler / DDIM) last step.
    pub euler_at_final: bool,
    /// Karras et al. 2022 sigmas (`ρ = 7`) between the training schedule's extremes.
    pub use_karras_sigmas: bool,
    /// Log-uniform sigmas between the training schedule's extremes.
    pub use_exponential_sigmas: bool,
    /// Beta-distribution sigmas (`Beta(0.6, 0.6)` quantiles; Lee et al. 2024), timesteps
    /// truncated.
    pub use_beta_sigmas: bool,
    /// Steps uniform in `λ` (log-SNR), as proposed in the DPM-Solver paper.
    pub use_lu_lambdas: bool,
    /// Flow-matching sigmas (not supported).
    pub use_flow_sigmas: bool,
    /// Flow-matching shift (only used with `use_flow_sigmas`).
    pub flow_shift: f64,
    /// The sigma after the last step: 0, or the training schedule's smallest sigma.
    pub final_sigmas_type: FinalSigmasType,
    /// Timesteps whose `λ` is below this are not used (diffusers' default `-inf` keeps all;
    /// `-5.1` is common for the cosine schedule). Read from a number or a string such as
    /// `"-inf"`.
    #[serde(
        serialize_with = "serialize_extended_f64",
        deserialize_with = "deserialize_extended_f64"
    )]
    pub lambda_min_clipped: f64,
    /// `None`, or `"learned"` / `"learned_range"` for models that also predict their variance
    /// (not supported).
    pub variance_type: Option<String>,
    /// How inference timesteps are spaced (ignored with Karras / exponential / λ-uniform
    /// sigmas).
    pub timestep_spacing: TimestepSpacing,
    /// Added to `leading` timesteps.
    pub steps_offset: usize,
    /// Resolution-dependent timestep shifting (flow models; not supported).
    pub use_dynamic_shifting: bool,
    /// The shift function of `use_dynamic_shifting` (only `"exponential"` exists).
    pub time_shift_type: String,
}

impl Default for DpmSolverMultistepConfig {
    fn default() -> Self {
        Self {
            betas: BetaConfig::default(),
            solver_order: 2,
            prediction_type: PredictionType::Epsilon,
            thresholding: false,
            dynamic_thresholding_ratio: 0.995,
            sample_max_value: 1.0,
            algorithm_type: AlgorithmType::DpmSolverPlusPlus,
            solver_type: SolverType::Midpoint,
            lower_order_final: true,
            euler_at_final: false,
            use_karras_sigmas: false,
            use_exponential_sigmas: false,
            use_beta_sigmas: false,
            use_lu_lambdas: false,
            use_flow_sigmas: false,
            flow_shift: 1.0,
            final_sigmas_type: FinalSigmasType::Zero,
            lambda_min_clipped: f64::NEG_INFINITY,
            variance_type: None,
            timestep_spacing: TimestepSpacing::Linspace,
            steps_offset: 0,
            use_dynamic_shifting: false,
            time_shift_type: "exponential".into(),
        }
    }
}

/// Writes a non-finite `f64` as the string `"-inf"` / `"inf"` / `"nan"` (JSON has no
/// infinities), a finite one as a number.
pub(crate) fn serialize_extended_f64<S: Serializer>(
    value: &f64,
    s: S,
) -> std::result::Result<S::Ok, S::Error> {
    if value.is_finite() {
        s.serialize_f64(*value)
    } else {
        s.serialize_str(&value.to_string())
    }
}

/// Reads a number, a string such as `"-inf"` / `"-Infinity"`, or `null` (= `-inf`).
pub(crate) fn deserialize_extended_f64<'de, D: Deserializer<'de>>(
    d: D,
) -> std::result::Result<f64, D::Error> {
    struct Visitor;
    impl serde::de::Visitor<'_> for Visitor {
        type Value = f64;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a number or a string such as \"-inf\"")
        }
        fn visit_f64<E: serde::de::Error>(self, v: f64) -> std::result::Result<f64, E> {
            Ok(v)
        }
        fn visit_i64<E: serde::de::Error>(self, v: i64) -> std::result::Result<f64, E> {
            Ok(v as f64)
        }
        fn visit_u64<E: serde::de::Error>(self, v: u64) -> std::result::Result<f64, E> {
            Ok(v as f64)
        }
        fn visit_str<E: serde::de::Error>(self, v: &str) -> std::result::Result<f64, E> {
            v.trim()
                .parse::<f64>()
                .map_err(|_| E::custom(format!("`lambda_min_clipped`: not a number: {v:?}")))
        }
        fn visit_unit<E: serde::de::Error>(self) -> std::result::Result<f64, E> {
            Ok(f64::NEG_INFINITY)
        }
        fn visit_none<E: serde::de::Error>(self) -> std::result::Result<f64, E> {
            Ok(f64::NEG_INFINITY)
        }
    }
    d.deserialize_any(Visitor)
}

impl DpmSolverMultistepConfig {
    /// Checks the fields, naming the first bad or unsupported one.
    pub fn validate(&self) -> Result<()> {
        self.betas.validate()?;
        if self.betas.trained_betas.is_none() && self.betas.beta_schedule == BetaSchedule::Sigmoid {
            return Err(Error::Unsupported(
                "`beta_schedule` \"sigmoid\" is not available for DPMSolverMultistepScheduler \
                 (diffusers raises NotImplementedError)"
                    .into(),
            ));
        }
        if !(1..=3).contains(&self.solver_order) {
            return Err(Error::invalid(
                "solver_order",
                format!("must be 1, 2 or 3, got {}", self.solver_order),
            ));
        }
        if self.solver_order == 3 && self.algorithm_type == AlgorithmType::SdeDpmSolver {
            return Err(Error::Unsupported(
                "`solver_order` 3 with `algorithm_type` \"sde-dpmsolver\" (diffusers has no \
                 third-order update for it); use solver_order 2 or \"sde-dpmsolver++\""
                    .into(),
            ));
        }
        self.clipping().validate()?;
        if self.lambda_min_clipped.is_nan() {
            return Err(Error::invalid("lambda_min_clipped", "must not be NaN"));
        }
        ensure_positive("flow_shift", self.flow_shift)?;
        let schedules = [
            ("use_karras_sigmas", self.use_karras_sigmas),
            ("use_exponential_sigmas", self.use_exponential_sigmas),
            ("use_beta_sigmas", self.use_beta_sigmas),
            ("use_lu_lambdas", self.use_lu_lambdas),
        ];
        let on: Vec<&str> = schedules
            .iter()
            .filter(|(_, b)| *b)
            .map(|(n, _)| *n)
            .collect();
        if on.len() > 1 {
            return Err(Error::invalid(
                on[1],
                format!(
                    "cannot be combined with `{}`: choose one sigma schedule",
                    on[0]
                ),
            ));
        }
        for (field, set) in [
            ("use_flow_sigmas", self.use_flow_sigmas),
            ("use_dynamic_shifting", self.use_dynamic_shifting),
        ] {
            if set {
                return Err(Error::Unsupported(format!(
                    "`{field}` = true is not implemented for DPMSolverMultistepScheduler"
                )));
            }
        }
        match self.variance_type.as_deref() {
            None => {}
            Some(v @ ("learned" | "learned_range")) => {
                return Err(Error::Unsupported(format!(
                    "`variance_type` {v:?} (models predicting their variance) is not \
                     implemented for DPMSolverMultistepScheduler"
                )));
            }
            Some(other) => {
                return Err(Error::unknown_variant(
                    "variance_type",
                    other,
                    &["learned", "learned_range"],
                ));
            }
        }
        if self.time_shift_type != "exponential" {
            return Err(Error::unknown_variant(
                "time_shift_type",
                &self.time_shift_type,
                &["exponential"],
            ));
        }
        if !self.is_data_prediction() && self.final_sigmas_type == FinalSigmasType::Zero {
            return Err(Error::invalid(
                "final_sigmas_type",
                format!(
                    "\"zero\" is not supported with `algorithm_type` \"{}\"; use \"sigma_min\"",
                    self.algorithm_type
                ),
            ));
        }
        Ok(())
    }

    /// Builds the scheduler.
    pub fn build(&self) -> Result<DpmSolverMultistep> {
        DpmSolverMultistep::new(self.clone())
    }

    /// Builds the scheduler, boxed.
    pub fn build_boxed(&self) -> Result<Box<dyn Scheduler>> {
        Ok(Box::new(self.build()?))
    }

    /// The thresholding fields as a [`SampleClipping`] (DPM-Solver has no `clip_sample`).
    fn clipping(&self) -> SampleClipping {
        SampleClipping {
            clip_sample: false,
            thresholding: self.thresholding,
            dynamic_thresholding_ratio: self.dynamic_thresholding_ratio,
            sample_max_value: self.sample_max_value,
            ..SampleClipping::default()
        }
    }

    /// Whether the solver integrates the data prediction `x̂₀` (DPM-Solver++) rather than the
    /// noise prediction `ε̂` (DPM-Solver).
    fn is_data_prediction(&self) -> bool {
        matches!(
            self.algorithm_type,
            AlgorithmType::DpmSolverPlusPlus | AlgorithmType::SdeDpmSolverPlusPlus
        )
    }

    fn is_sde(&self) -> bool {
        matches!(
            self.algorithm_type,
            AlgorithmType::SdeDpmSolverPlusPlus | AlgorithmType::SdeDpmSolver
        )
    }
}

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

    /// Converts a model output to what the solver integrates: `x̂₀` for DPM-Solver++, `ε̂` for
    /// DPM-Solver, at sigma `sigma`; thresholding applies to `x̂₀`.
    pub(crate) fn convert_model_output(
        &self,
        model_output: Tensor<5>,
        sample: &Tensor<5>,
        sigma: f32,
    ) -> Result<Tensor<5>> {
        let (alpha_t, sigma_t) = alpha_sigma(sigma);
        let clipping = self.config.clipping();
        if self.config.is_data_prediction() {
            let x0 = match self.config.prediction_type {
                PredictionType::Epsilon => {
                    (sample.clone() - model_output.mul_scalar(sigma_t)).div_scalar(alpha_t)
                }
                PredictionType::Sample => model_output,
                PredictionType::VPrediction => {
                    sample.clone().mul_scalar(alpha_t) - model_output.mul_scalar(sigma_t)
                }
            };
            clipping.apply(x0)
        } else {
            let eps = match self.config.prediction_type {
                PredictionType::Epsilon => model_output,
                PredictionType::Sample => {
                    (sample.clone() - model_output.mul_scalar(alpha_t)).div_scalar(sigma_t)
                }
                PredictionType::VPrediction => {
                    model_output.mul_scalar(alpha_t) + sample.clone().mul_scalar(sigma_t)
                }
            };
            if self.config.thresholding {
                let x0 = (sample.clone() - eps.mul_scalar(sigma_t)).div_scalar(alpha_t);
                let x0 = clipping.apply(x0)?;
                Ok((sample.clone() - x0.mul_scalar(alpha_t)).div_scalar(sigma_t))
            } else {
                Ok(eps)
            }
        }
    }

    /// The first-order update (DDIM) from `sigmas[i]` to `sigmas[i + 1]`.
    fn first_order_update(
        &self,
        i: usize,
        m: Tensor<5>,
        sample: Tensor<5>,
        noise: Option<Tensor<5>>,
    ) -> Tensor<5> {
        let (alpha_t, sigma_t) = alpha_sigma(self.sigmas[i + 1]);
        let (alpha_s, sigma_s) = alpha_sigma(self.sigmas[i]);
        let h = lambda(alpha_t, sigma_t) - lambda(alpha_s, sigma_s);
        match self.config.algorithm_type {
            AlgorithmType::DpmSolverPlusPlus => {
                sample.mul_scalar(sigma_t / sigma_s) - m.mul_scalar(alpha_t * ((-h).exp() - 1.0))
            }
            AlgorithmType::DpmSolver => {
                sample.mul_scalar(alpha_t / alpha_s) - m.mul_scalar(sigma_t * (h.exp() - 1.0))
            }
            AlgorithmType::SdeDpmSolverPlusPlus => {
                let e2 = (-2.0 * h).exp();
                sample.mul_scalar(sigma_t / sigma_s * (-h).exp())
                    + m.mul_scalar(alpha_t * (1.0 - e2))
                    + sde_noise(noise, sigma_t * (1.0 - e2).sqrt())
            }
            AlgorithmType::SdeDpmSolver => {
                sample.mul_scalar(alpha_t / alpha_s)
                    - m.mul_scalar(2.0 * (sigma_t * (h.exp() - 1.0)))
                    + sde_noise(noise, sigma_t * ((2.0 * h).exp() - 1.0).sqrt())
            }
        }
    }

    /// The second-order multistep update from `sigmas[i]` to `sigmas[i + 1]`, using the
    /// outputs at `sigmas[i]` (`m0`) and `sigmas[i − 1]` (`m1`).
    fn second_order_update(
        &self,
        i: usize,
        m0: Tensor<5>,
        m1: Tensor<5>,
        sample: Tensor<5>,
        noise: Option<Tensor<5>>,
    ) -> Tensor<5> {
        let (alpha_t, sigma_t) = alpha_sigma(self.sigmas[i + 1]);
        let (alpha_s0, sigma_s0) = alpha_sigma(self.sigmas[i]);
        let (alpha_s1, sigma_s1) = alpha_sigma(self.sigmas[i - 1]);
        let lambda_t = lambda(alpha_t, sigma_t);
        let lambda_s0 = lambda(alpha_s0, sigma_s0);
        let lambda_s1 = lambda(alpha_s1, sigma_s1);
        let h = lambda_t - lambda_s0;
        let h_0 = lambda_s0 - lambda_s1;
        let r0 = h_0 / h;
        let d0 = m0.clone();
        let d1 = (m0 - m1).mul_scalar(1.0 / r0);
        let midpoint = self.config.solver_type == SolverType::Midpoint;
        match self.config.algorithm_type {
            AlgorithmType::DpmSolverPlusPlus => {
                let b = alpha_t * ((-h).exp() - 1.0);
                let x = sample.mul_scalar(sigma_t / sigma_s0) - d0.mul_scalar(b);
                if midpoint {
                    x - d1.mul_scalar(0.5 * b)
                } else {
                    x + d1.mul_scalar(alpha_t * (((-h).exp() - 1.0) / h + 1.0))
                }
            }
            AlgorithmType::DpmSolver => {
                let b = sigma_t * (h.exp() - 1.0);
                let x = sample.mul_scalar(alpha_t / alpha_s0) - d0.mul_scalar(b);
                if midpoint {
                    x - d1.mul_scalar(0.5 * b)
                } else {
                    x - d1.mul_scalar(sigma_t * ((h.exp() - 1.0) / h - 1.0))
                }
            }
            AlgorithmType::SdeDpmSolverPlusPlus => {
                let e2 = (-2.0 * h).exp();
                let b = alpha_t * (1.0 - e2);
                let x = sample.mul_scalar(sigma_t / sigma_s0 * (-h).exp()) + d0.mul_scalar(b);
                let x = if midpoint {
                    x + d1.mul_scalar(0.5 * b)
                } else {
                    x + d1.mul_scalar(alpha_t * ((1.0 - e2) / (-2.0 * h) + 1.0))
                };
                x + sde_noise(noise, sigma_t * (1.0 - e2).sqrt())
            }
            AlgorithmType::SdeDpmSolver => {
                let b = sigma_t * (h.exp() - 1.0);
                let x = sample.mul_scalar(alpha_t / alpha_s0) - d0.mul_scalar(2.0 * b);
                let x = if midpoint {
                    x - d1.mul_scalar(b)
                } else {
                    x - d1.mul_scalar(2.0 * (sigma_t * ((h.exp() - 1.0) / h - 1.0)))
                };
                x + sde_noise(noise, sigma_t * ((2.0 * h).exp() - 1.0).sqrt())
            }
        }
    }

    /// The third-order multistep update from `sigmas[i]` to `sigmas[i + 1]`, using the
    /// outputs at `sigmas[i]`, `sigmas[i − 1]` and `sigmas[i − 2]`.
    fn third_order_update(
        &self,
        i: usize,
        [m0, m1, m2]: [Tensor<5>; 3],
        sample: Tensor<5>,
        noise: Option<Tensor<5>>,
    ) -> Tensor<5> {
        let (alpha_t, sigma_t) = alpha_sigma(self.sigmas[i + 1]);
        let (alpha_s0, sigma_s0) = alpha_sigma(self.sigmas[i]);
        let (alpha_s1, sigma_s1) = alpha_sigma(self.sigmas[i - 1]);
        let (alpha_s2, sigma_s2) = alpha_sigma(self.sigmas[i - 2]);
        let lambda_t = lambda(alpha_t, sigma_t);
        let lambda_s0 = lambda(alpha_s0, sigma_s0);
        let lambda_s1 = lambda(alpha_s1, sigma_s1);
        let lambda_s2 = lambda(alpha_s2, sigma_s2);
        let h = lambda_t - lambda_s0;
        let h_0 = lambda_s0 - lambda_s1;
        let h_1 = lambda_s1 - lambda_s2;
        let r0 = h_0 / h;
        let r1 = h_1 / h;
        let d0 = m0.clone();
        let d1_0 = (m0 - m1.clone()).mul_scalar(1.0 / r0);
        let d1_1 = (m1 - m2).mul_scalar(1.0 / r1);
        let diff = d1_0.clone() - d1_1;
        let d1 = d1_0 + diff.clone().mul_scalar(r0 / (r0 + r1));
        let d2 = diff.mul_scalar(1.0 / (r0 + r1));
        match self.config.algorithm_type {
            AlgorithmType::DpmSolverPlusPlus => {
                let em1 = (-h).exp() - 1.0;
                sample.mul_scalar(sigma_t / sigma_s0) - d0.mul_scalar(alpha_t * em1)
                    + d1.mul_scalar(alpha_t * (em1 / h + 1.0))
                    - d2.mul_scalar(alpha_t * ((em1 + h) / (h * h) - 0.5))
            }
            AlgorithmType::DpmSolver => {
                let ep1 = h.exp() - 1.0;
                sample.mul_scalar(alpha_t / alpha_s0)
                    - d0.mul_scalar(sigma_t * ep1)
                    - d1.mul_scalar(sigma_t * (ep1 / h - 1.0))
                    - d2.mul_scalar(sigma_t * ((ep1 - h) / (h * h) - 0.5))
            }
            AlgorithmType::SdeDpmSolverPlusPlus => {
                let e2 = (-2.0 * h).exp();
                let two_h = 2.0 * h;
                sample.mul_scalar(sigma_t / sigma_s0 * (-h).exp())
                    + d0.mul_scalar(alpha_t * (1.0 - e2))
                    + d1.mul_scalar(alpha_t * ((1.0 - e2) / (-2.0 * h) + 1.0))
                    + d2.mul_scalar(alpha_t * ((1.0 - e2 - 2.0 * h) / (two_h * two_h) - 0.5))
                    + sde_noise(noise, sigma_t * (1.0 - e2).sqrt())
            }
            // Rejected by `DpmSolverMultistepConfig::validate`.
            AlgorithmType::SdeDpmSolver => unreachable!("third order with sde-dpmsolver"),
        }
    }
}

/// `scale·z` for the SDE variants (`z` is always drawn for them).
fn sde_noise(noise: Option<Tensor<5>>, scale: f32) -> Tensor<5> {
    noise
        .expect("the SDE variants draw noise every step")
        .mul_scalar(scale)
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

    fn init_noise_sigma(&self) -> f64 {
        1.0
    }

    fn scale_model_input(&self, sample: Tensor<5>, _timestep: f64) -> Result<Tensor<5>> {
        Ok(sample)
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

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::{Device, TensorData};
    use vdm_core::noise::{NoNoise, SeededNoise};

    fn field_of(err: Error) -> String {
        match err {
            Error::InvalidConfig { field, .. } | Error::UnknownVariant { field, .. } => field,
            Error::Unsupported(msg) => msg,
            other => panic!("unexpected error {other}"),
        }
    }

    fn sd() -> DpmSolverMultistepConfig {
        DpmSolverMultistepConfig {
            betas: BetaConfig::sd(BetaSchedule::ScaledLinear),
            ..DpmSolverMultistepConfig::default()
        }
    }

    fn tensor(values: &[f32]) -> Tensor<5> {
        Tensor::from_data(
            TensorData::new(values.to_vec(), [1, 1, 1, 1, values.len()]),
            &Device::flex(),
        )
    }

    fn host(t: &Tensor<5>) -> Vec<f32> {
        t.to_data().convert::<f32>().try_to_vec::<f32>().unwrap()
    }

    /// A stand-in model: `0.1·x + t/1000 + offset`.
    fn model(x: &Tensor<5>, t: f64, offset: f32) -> Tensor<5> {
        x.clone()
            .mul_scalar(0.1)
            .add_scalar((t / 1000.0) as f32 + offset)
    }

    #[test]
    fn bad_configs_name_the_field() {
        let cases: Vec<(DpmSolverMultistepConfig, &str)> = vec![
            (
                DpmSolverMultistepConfig {
                    solver_order: 0,
                    ..sd()
                },
                "solver_order",
            ),
            (
                DpmSolverMultistepConfig {
                    solver_order: 4,
                    ..sd()
                },
                "solver_order",
            ),
            (
                DpmSolverMultistepConfig {
                    dynamic_thresholding_ratio: 1.5,
                    ..sd()
                },
                "dynamic_thresholding_ratio",
            ),
            (
                DpmSolverMultistepConfig {
                    sample_max_value: -1.0,
                    ..sd()
                },
                "sample_max_value",
            ),
            (
                DpmSolverMultistepConfig {
                    lambda_min_clipped: f64::NAN,
                    ..sd()
                },
                "lambda_min_clipped",
            ),
            (
                DpmSolverMultistepConfig {
                    flow_shift: 0.0,
                    ..sd()
                },
                "flow_shift",
            ),
            (
                DpmSolverMultistepConfig {
                    algorithm_type: AlgorithmType::DpmSolver,
                    ..sd()
                },
                "final_sigmas_type",
            ),
            (
                DpmSolverMultistepConfig {
                    use_karras_sigmas: true,
                    use_exponential_sigmas: true,
                    ..sd()
                },
                "use_exponential_sigmas",
            ),
            (
                DpmSolverMultistepConfig {
                    use_karras_sigmas: true,
                    use_lu_lambdas: true,
                    ..sd()
                },
                "use_lu_lambdas",
            ),
            (
                DpmSolverMultistepConfig {
                    use_karras_sigmas: true,
                    use_beta_sigmas: true,
                    ..sd()
                },
                "use_beta_sigmas",
            ),
            (
                DpmSolverMultistepConfig {
                    use_flow_sigmas: true,
                    ..sd()
                },
                "use_flow_sigmas",
            ),
            (
                DpmSolverMultistepConfig {
                    use_dynamic_shifting: true,
                    ..sd()
                },
                "use_dynamic_shifting",
            ),
            (
                DpmSolverMultistepConfig {
                    variance_type: Some("learned".into()),
                    ..sd()
                },
                "variance_type",
            ),
            (
                DpmSolverMultistepConfig {
                    variance_type: Some("fixed".into()),
                    ..sd()
                },
                "variance_type",
            ),
            (
                DpmSolverMultistepConfig {
                    time_shift_type: "linear".into(),
                    ..sd()
                },
                "time_shift_type",
            ),
            (
                DpmSolverMultistepConfig {
                    betas: BetaConfig::sd(BetaSchedule::Sigmoid),
                    ..sd()
                },
                "beta_schedule",
            ),
            (
                DpmSolverMultistepConfig {
                    betas: BetaConfig {
                        beta_end: f64::NAN,
                        ..BetaConfig::default()
                    },
                    ..sd()
                },
                "beta_end",
            ),
            (
                DpmSolverMultistepConfig {
                    algorithm_type: AlgorithmType::SdeDpmSolver,
                    final_sigmas_type: FinalSigmasType::SigmaMin,
                    solver_order: 3,
                    ..sd()
                },
                "solver_order",
            ),
        ];
        for (cfg, field) in cases {
            let err = cfg.build().expect_err(field);
            let named = field_of(err);
            assert!(
                named.contains(field),
                "expected `{field}` to be named, got {named:?}"
            );
        }
    }

    #[test]
    fn bad_step_counts_and_timesteps_name_the_field() {
        let mut s = sd().build().unwrap();
        assert_eq!(
            field_of(s.set_timesteps(0).unwrap_err()),
            "num_inference_steps"
        );
        assert_eq!(
            field_of(s.set_timesteps(1001).unwrap_err()),
            "num_inference_steps"
        );
        let mut lead = DpmSolverMultistepConfig {
            timestep_spacing: TimestepSpacing::Leading,
            ..sd()
        }
        .build()
        .unwrap();
        assert_eq!(
            field_of(lead.set_timesteps(1000).unwrap_err()),
            "num_inference_steps"
        );

        let x = tensor(&[0.5, -0.5]);
        // Before set_timesteps.
        assert!(s.add_noise(x.clone(), x.clone(), 999.0).is_err());
        s.set_timesteps(10).unwrap();
        let t0 = s.timesteps()[0];
        assert_eq!(
            field_of(s.add_noise(x.clone(), x.clone(), 501.0).unwrap_err()),
            "timestep"
        );
        assert_eq!(
            field_of(s.add_noise(x.clone(), x.clone(), t0 + 0.5).unwrap_err()),
            "timestep"
        );
        s.step(x.clone(), t0, x.clone(), &mut NoNoise).unwrap();
        // The next step must be at the next timestep of the schedule.
        assert_eq!(
            field_of(s.step(x.clone(), t0, x.clone(), &mut NoNoise).unwrap_err()),
            "timestep"
        );
        let wrong_shape = tensor(&[0.5, -0.5, 1.0]);
        assert!(
            s.step(wrong_shape, s.timesteps()[1], x, &mut NoNoise)
                .is_err()
        );
    }

    #[test]
    fn reference_timesteps() {
        // shared/oracle gotcha 7: leading uses T // (n + 1) and drops the last point.
        let mut s = DpmSolverMultistepConfig {
            timestep_spacing: TimestepSpacing::Leading,
            steps_offset: 1,
            ..sd()
        }
        .build()
        .unwrap();
        s.set_timesteps(10).unwrap();
        assert_eq!(
            s.timesteps(),
            [901., 811., 721., 631., 541., 451., 361., 271., 181., 91.]
        );
        assert_eq!(s.sigmas().len(), 11);
        assert_eq!(s.sigmas()[10], 0.0);
        // Trailing with an inexact T/N: numpy's extra element (timestep −1) is dropped.
        let mut s = DpmSolverMultistepConfig {
            timestep_spacing: TimestepSpacing::Trailing,
            ..sd()
        }
        .build()
        .unwrap();
        s.set_timesteps(227).unwrap();
        assert_eq!(s.timesteps().len(), 227);
        assert_eq!(s.timesteps()[0], 999.0);
        assert!(s.timesteps().iter().all(|&t| t >= 0.0));
        // lambda_min_clipped shortens the usable range (linspace stops below the clipped end).
        let mut s = DpmSolverMultistepConfig {
            betas: BetaConfig {
                beta_schedule: BetaSchedule::SquaredcosCapV2,
                ..BetaConfig::default()
            },
            lambda_min_clipped: -5.1,
            ..DpmSolverMultistepConfig::default()
        }
        .build()
        .unwrap();
        s.set_timesteps(20).unwrap();
        assert!(s.timesteps()[0] < 999.0);
    }

    #[test]
    fn custom_sigma_schedules_are_monotone() {
        for (karras, lu, exponential) in [
            (true, false, false),
            (false, true, false),
            (false, false, true),
        ] {
            let mut s = DpmSolverMultistepConfig {
                use_karras_sigmas: karras,
                use_lu_lambdas: lu,
                use_exponential_sigmas: exponential,
                ..sd()
            }
            .build()
            .unwrap();
            s.set_timesteps(20).unwrap();
            let sig = s.sigmas();
            assert_eq!(sig.len(), 21);
            assert!(sig.windows(2).all(|w| w[1] < w[0]), "{sig:?}");
            assert!((sig[0] - s.train_sigmas[999]).abs() / sig[0] < 1e-6);
            assert!((sig[19] - s.train_sigmas[0]).abs() / sig[19] < 1e-5);
            let ts = s.timesteps();
            assert!(ts.windows(2).all(|w| w[1] <= w[0]), "{ts:?}");
            assert!(ts[0] >= 998.0 && ts[19] <= 1.0, "{ts:?}");
        }
    }

    #[test]
    fn config_json_round_trip() {
        let cfg: DpmSolverMultistepConfig = serde_json::from_str(
            r#"{"lambda_min_clipped": "-inf", "solver_order": 3, "algorithm_type": "sde-dpmsolver++",
                "variance_type": null, "beta_schedule": "scaled_linear"}"#,
        )
        .unwrap();
        assert_eq!(cfg.lambda_min_clipped, f64::NEG_INFINITY);
        assert_eq!(cfg.solver_order, 3);
        let back: DpmSolverMultistepConfig =
            serde_json::from_str(&serde_json::to_string(&cfg).unwrap()).unwrap();
        assert_eq!(back, cfg);
        let clipped: DpmSolverMultistepConfig =
            serde_json::from_str(r#"{"lambda_min_clipped": -5.1}"#).unwrap();
        assert_eq!(clipped.lambda_min_clipped, -5.1);
        assert!(
            serde_json::from_str::<DpmSolverMultistepConfig>(r#"{"solver_type": "bh2"}"#).is_err()
        );
    }

    /// Cloning per frame window: two clones stepped independently (interleaved) give exactly
    /// what one scheduler gives when it is stepped alone.
    #[test]
    fn clones_keep_independent_state() {
        for order in 1..=3 {
            let mut base = DpmSolverMultistepConfig {
                solver_order: order,
                ..sd()
            }
            .build()
            .unwrap();
            base.set_timesteps(12).unwrap();
            let mut solo = base.clone();
            let mut a = base.clone();
            let mut b = base.clone();
            let init_a = tensor(&[0.3, -1.2, 0.7, 2.0]);
            let init_b = tensor(&[-0.9, 0.1, 1.5, -0.4]);
            let (mut xs, mut xa, mut xb) = (init_a.clone(), init_a, init_b);
            for t in base.timesteps().to_vec() {
                xa = a
                    .step(model(&xa, t, 0.2), t, xa, &mut NoNoise)
                    .unwrap()
                    .prev_sample;
                xb = b
                    .step(model(&xb, t, -0.3), t, xb, &mut NoNoise)
                    .unwrap()
                    .prev_sample;
                xs = solo
                    .step(model(&xs, t, 0.2), t, xs, &mut NoNoise)
                    .unwrap()
                    .prev_sample;
                assert_eq!(host(&xa), host(&xs), "order {order}, t = {t}");
            }
            assert_ne!(host(&xa), host(&xb));
            assert_eq!(a.lower_order_nums(), order);
            assert_eq!(a.step_index(), Some(12));
            // The original was never stepped.
            assert_eq!(base.step_index(), None);
        }
    }

    /// With a constant data prediction `x̂₀ = c` every DPM-Solver++ update is exact, so the
    /// last step (to σ = 0) lands on `c` whatever the order, rule or noise.
    #[test]
    fn constant_data_prediction_lands_on_it() {
        let c = [0.25f32, -0.5, 1.0, 0.0];
        for algorithm_type in [
            AlgorithmType::DpmSolverPlusPlus,
            AlgorithmType::SdeDpmSolverPlusPlus,
        ] {
            for solver_type in [SolverType::Midpoint, SolverType::Heun] {
                for solver_order in 1..=3 {
                    let mut s = DpmSolverMultistepConfig {
                        algorithm_type,
                        solver_type,
                        solver_order,
                        prediction_type: PredictionType::Sample,
                        ..sd()
                    }
                    .build()
                    .unwrap();
                    s.set_timesteps(20).unwrap();
                    let mut noise = SeededNoise::new(7);
                    let mut x = tensor(&[1.0, -2.0, 0.5, 0.3]);
                    for t in s.timesteps().to_vec() {
                        x = s.step(tensor(&c), t, x, &mut noise).unwrap().prev_sample;
                    }
                    let out = host(&x);
                    for (o, e) in out.iter().zip(c) {
                        assert!(
                            (o - e).abs() < 1e-5,
                            "{algorithm_type} {solver_type} {solver_order}: {out:?}"
                        );
                    }
                }
            }
        }
    }

    /// DPM-Solver (noise prediction) and DPM-Solver++ (data prediction) are both DDIM at first
    /// order; their trajectories agree up to float rounding, and the SDE variants draw one
    /// noise tensor per step.
    #[test]
    fn first_order_variants_agree_and_sde_draws_each_step() {
        let run = |algorithm_type, noise: &mut dyn NoiseSource| {
            let mut s = DpmSolverMultistepConfig {
                algorithm_type,
                solver_order: 1,
                final_sigmas_type: FinalSigmasType::SigmaMin,
                ..sd()
            }
            .build()
            .unwrap();
            s.set_timesteps(15).unwrap();
            let mut x = tensor(&[1.0, -2.0, 0.5, 0.3]);
            for t in s.timesteps().to_vec() {
                x = s.step(model(&x, t, 0.1), t, x, noise).unwrap().prev_sample;
            }
            host(&x)
        };
        let pp = run(AlgorithmType::DpmSolverPlusPlus, &mut NoNoise);
        let eps = run(AlgorithmType::DpmSolver, &mut NoNoise);
        for (a, b) in pp.iter().zip(&eps) {
            assert!((a - b).abs() < 1e-4, "{pp:?} vs {eps:?}");
        }
        for sde in [
            AlgorithmType::SdeDpmSolverPlusPlus,
            AlgorithmType::SdeDpmSolver,
        ] {
            let mut bank = vdm_core::noise::NoiseBank::new();
            for _ in 0..15 {
                bank.push_tensor(TensorData::new(vec![0.0f32; 4], [1, 1, 1, 1, 4]));
            }
            let out = run(sde, &mut bank);
            assert_eq!(bank.drawn(), 15);
            assert!(out.iter().all(|v| v.is_finite()));
        }
    }

    #[test]
    fn zero_snr_patches_the_last_alpha() {
        let mut s = DpmSolverMultistepConfig {
            betas: BetaConfig {
                rescale_betas_zero_snr: true,
                ..BetaConfig::sd(BetaSchedule::ScaledLinear)
            },
            timestep_spacing: TimestepSpacing::Trailing,
            ..DpmSolverMultistepConfig::default()
        }
        .build()
        .unwrap();
        assert_eq!(s.noise_schedule().alphas_cumprod[999], 2f32.powi(-24));
        s.set_timesteps(25).unwrap();
        assert!((s.sigmas()[0] - 4096.0).abs() < 1e-3);
    }
}
