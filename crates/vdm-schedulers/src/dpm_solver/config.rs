//! The configuration of the multistep DPM-Solver / DPM-Solver++ sampler: the fields of a
//! diffusers `DPMSolverMultistepScheduler` `scheduler_config.json`
//! (`scheduling_dpmsolver_multistep.py`) with their defaults and their checks. `build`, which
//! makes the scheduler, lives beside the scheduler in the parent module, so this file imports
//! nothing from it.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use vdm_core::error::ensure_positive;
use vdm_core::{Error, PredictionType, Result};

use crate::options::{AlgorithmType, BetaSchedule, FinalSigmasType, SolverType, TimestepSpacing};
use crate::schedule::BetaConfig;
use crate::threshold::SampleClipping;

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

    /// The thresholding fields as a [`SampleClipping`] (DPM-Solver has no `clip_sample`).
    pub(super) fn clipping(&self) -> SampleClipping {
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
    pub(super) fn is_data_prediction(&self) -> bool {
        matches!(
            self.algorithm_type,
            AlgorithmType::DpmSolverPlusPlus | AlgorithmType::SdeDpmSolverPlusPlus
        )
    }

    pub(super) fn is_sde(&self) -> bool {
        matches!(
            self.algorithm_type,
            AlgorithmType::SdeDpmSolverPlusPlus | AlgorithmType::SdeDpmSolver
        )
    }
}
