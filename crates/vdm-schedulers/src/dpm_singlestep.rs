//! Singlestep DPM-Solver (Lu et al. 2022, "DPM-Solver: A Fast ODE Solver for Diffusion
//! Probabilistic Model Sampling in Around 10 Steps", Algorithms 1–2; DPM-Solver++, Lu et al.
//! 2022b), mirroring diffusers' `DPMSolverSinglestepScheduler`
//! (`scheduling_dpmsolver_singlestep.py`).
//!
//! Where the multistep solver reuses the outputs of earlier steps, the singlestep solver groups
//! the steps: a group of order `k` starts from one anchor sample, spends its first `k − 1`
//! model calls at intermediate timesteps (each "step" returns a first- or second-order estimate
//! that the model sees next), and its last step integrates from the anchor to the group's end
//! with all `k` outputs. The orders follow diffusers' `get_order_list` (`1, 2, 3, 1, 2, 3, …`
//! for order 3). One model call per step.
//!
//! The timesteps and sigmas are those of [`DpmSolverMultistep`] with `linspace` spacing
//! (diffusers' singlestep class has no other) and the same `lambda_min_clipped`, Karras /
//! exponential / beta sigmas (Karras timesteps rounded for every beta schedule) and
//! `final_sigmas_type`. Scalar coefficients are `f32` in diffusers' order.
//!
//! # Deviations from diffusers
//!
//! - diffusers switches `lower_order_final` on for good (`register_to_config`) when a step
//!   count is not a multiple of the order or the final sigma is 0; here the effective value is
//!   worked out per [`Scheduler::set_timesteps`], so a scheduler reused with another step count
//!   keeps its configured value.
//! - `dpmsolver` (noise prediction) with `thresholding` reads `alpha_t[timestep]` with an
//!   undefined timestep in diffusers; here it thresholds `x̂₀` at the step's own sigma.
//! - A run from the first timestep starts at index 0 even when truncation repeats it; a
//!   timestep that is not in the schedule is an error.
//! - `variance_type: "learned"`, `use_flow_sigmas` and `use_dynamic_shifting` are typed errors.

use burn::tensor::Tensor;
use serde::{Deserialize, Serialize};
use vdm_core::layout::expect_same_shape;
use vdm_core::noise::draw;
use vdm_core::{Error, NoiseSource, PredictionType, Result};

use crate::dpm_solver::{DpmSolverMultistep, DpmSolverMultistepConfig, alpha_sigma, lambda};
use crate::euler::step_position;
use crate::options::{AlgorithmType, FinalSigmasType, SolverType, TimestepSpacing};
use crate::schedule::{BetaConfig, NoiseSchedule};
use crate::scheduler::{Scheduler, StepOutput};

/// The fields of a diffusers `DPMSolverSinglestepScheduler` `scheduler_config.json`, with its
/// defaults (linear betas 1e-4 → 0.02, `dpmsolver++`, order 2, `midpoint`, no lower-order
/// final, final sigma 0).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct DpmSolverSinglestepConfig {
    /// Training noise schedule (`rescale_betas_zero_snr` is honoured as in
    /// [`DpmSolverMultistep`]; diffusers' singlestep class ignores the key).
    #[serde(flatten)]
    pub betas: BetaConfig,
    /// Order of the groups: 1, 2 or 3.
    pub solver_order: usize,
    /// What the model predicts.
    pub prediction_type: PredictionType,
    /// Dynamic thresholding of `x̂₀` (pixel-space models only).
    pub thresholding: bool,
    /// The quantile of `|x̂₀|` used as the dynamic threshold.
    pub dynamic_thresholding_ratio: f64,
    /// The largest dynamic threshold.
    pub sample_max_value: f64,
    /// `"dpmsolver++"` (the default), `"sde-dpmsolver++"` or `"dpmsolver"`; diffusers maps
    /// `"deis"` to `"dpmsolver++"`.
    pub algorithm_type: String,
    /// `"midpoint"` or `"heun"`; diffusers maps `"logrho"`, `"bh1"` and `"bh2"` to
    /// `"midpoint"`.
    pub solver_type: String,
    /// End with lower-order groups (switched on anyway when the step count is not a multiple
    /// of the order, or the final sigma is 0).
    pub lower_order_final: bool,
    /// Karras et al. 2022 sigmas (`ρ = 7`), timesteps rounded.
    #[serde(deserialize_with = "crate::euler::bool_or_null")]
    pub use_karras_sigmas: bool,
    /// Log-uniform sigmas, timesteps truncated.
    #[serde(deserialize_with = "crate::euler::bool_or_null")]
    pub use_exponential_sigmas: bool,
    /// Beta-distribution sigmas (`Beta(0.6, 0.6)` quantiles), timesteps truncated.
    #[serde(deserialize_with = "crate::euler::bool_or_null")]
    pub use_beta_sigmas: bool,
    /// Flow-matching sigmas: not supported.
    #[serde(deserialize_with = "crate::euler::bool_or_null")]
    pub use_flow_sigmas: bool,
    /// Flow-matching shift (only with `use_flow_sigmas`).
    pub flow_shift: f64,
    /// The sigma after the last step: 0 (`dpmsolver++` variants only), or the training
    /// schedule's smallest.
    pub final_sigmas_type: FinalSigmasType,
    /// Timesteps whose half-log-SNR `λ` is below this are not used (`-inf`: all are).
    #[serde(
        serialize_with = "crate::dpm_solver::serialize_extended_f64",
        deserialize_with = "crate::dpm_solver::deserialize_extended_f64"
    )]
    pub lambda_min_clipped: f64,
    /// `"learned"` / `"learned_range"` (models predicting their variance): not supported.
    pub variance_type: Option<String>,
    /// Resolution-dependent shifting (flow models): not supported.
    pub use_dynamic_shifting: bool,
    /// The shift function of `use_dynamic_shifting`.
    pub time_shift_type: String,
}

impl Default for DpmSolverSinglestepConfig {
    fn default() -> Self {
        Self {
            betas: BetaConfig::default(),
            solver_order: 2,
            prediction_type: PredictionType::Epsilon,
            thresholding: false,
            dynamic_thresholding_ratio: 0.995,
            sample_max_value: 1.0,
            algorithm_type: "dpmsolver++".into(),
            solver_type: "midpoint".into(),
            lower_order_final: false,
            use_karras_sigmas: false,
            use_exponential_sigmas: false,
            use_beta_sigmas: false,
            use_flow_sigmas: false,
            flow_shift: 1.0,
            final_sigmas_type: FinalSigmasType::Zero,
            lambda_min_clipped: f64::NEG_INFINITY,
            variance_type: None,
            use_dynamic_shifting: false,
            time_shift_type: "exponential".into(),
        }
    }
}

impl DpmSolverSinglestepConfig {
    /// The algorithm, with diffusers' alias.
    fn algorithm(&self) -> Result<AlgorithmType> {
        match self.algorithm_type.as_str() {
            "deis" | "dpmsolver++" => Ok(AlgorithmType::DpmSolverPlusPlus),
            "sde-dpmsolver++" => Ok(AlgorithmType::SdeDpmSolverPlusPlus),
            "dpmsolver" => Ok(AlgorithmType::DpmSolver),
            other => Err(Error::unknown_variant(
                "algorithm_type",
                other,
                &["dpmsolver++", "sde-dpmsolver++", "dpmsolver", "deis"],
            )),
        }
    }

    /// The second-order rule, with diffusers' aliases.
    fn solver(&self) -> Result<SolverType> {
        match self.solver_type.as_str() {
            "midpoint" | "logrho" | "bh1" | "bh2" => Ok(SolverType::Midpoint),
            "heun" => Ok(SolverType::Heun),
            other => Err(Error::unknown_variant(
                "solver_type",
                other,
                &["midpoint", "heun", "logrho", "bh1", "bh2"],
            )),
        }
    }

    /// The multistep configuration with the same timesteps, sigmas and model-output
    /// conversion.
    fn dpm(&self) -> Result<DpmSolverMultistepConfig> {
        Ok(DpmSolverMultistepConfig {
            algorithm_type: self.algorithm()?,
            thresholding: self.thresholding,
            dynamic_thresholding_ratio: self.dynamic_thresholding_ratio,
            sample_max_value: self.sample_max_value,
            betas: self.betas.clone(),
            solver_order: 1,
            prediction_type: self.prediction_type,
            use_karras_sigmas: self.use_karras_sigmas,
            use_exponential_sigmas: self.use_exponential_sigmas,
            use_beta_sigmas: self.use_beta_sigmas,
            final_sigmas_type: self.final_sigmas_type,
            lambda_min_clipped: self.lambda_min_clipped,
            timestep_spacing: TimestepSpacing::Linspace,
            ..DpmSolverMultistepConfig::default()
        })
    }

    /// Checks the fields, naming the first bad or unsupported one.
    pub fn validate(&self) -> Result<()> {
        if !(1..=3).contains(&self.solver_order) {
            return Err(Error::invalid(
                "solver_order",
                format!("must be 1, 2 or 3, got {}", self.solver_order),
            ));
        }
        let algorithm = self.algorithm()?;
        self.solver()?;
        if algorithm == AlgorithmType::DpmSolver && self.final_sigmas_type == FinalSigmasType::Zero
        {
            return Err(Error::invalid(
                "final_sigmas_type",
                "\"zero\" is not supported with algorithm_type \"dpmsolver\" (as in diffusers); \
                 use \"sigma_min\"",
            ));
        }
        let unsupported = [
            ("use_flow_sigmas", self.use_flow_sigmas),
            ("use_dynamic_shifting", self.use_dynamic_shifting),
            ("variance_type", self.variance_type.is_some()),
        ];
        if let Some((field, _)) = unsupported.iter().find(|(_, set)| *set) {
            return Err(Error::Unsupported(format!(
                "`{field}` is not implemented for DPMSolverSinglestepScheduler"
            )));
        }
        self.dpm()?.validate()
    }

    /// Builds the scheduler (without timesteps; call [`Scheduler::set_timesteps`]).
    pub fn build(&self) -> Result<DpmSolverSinglestep> {
        DpmSolverSinglestep::new(self.clone())
    }

    /// Builds the scheduler, boxed.
    pub fn build_boxed(&self) -> Result<Box<dyn Scheduler>> {
        Ok(Box::new(self.build()?))
    }
}

/// diffusers' `get_order_list`: the order of each of `steps` steps.
pub(crate) fn order_list(
    steps: usize,
    order: usize,
    lower_order_final: bool,
    final_zero: bool,
) -> Vec<usize> {
    let repeat = |pattern: &[usize], times: usize| -> Vec<usize> {
        pattern
            .iter()
            .copied()
            .cycle()
            .take(pattern.len() * times)
            .collect()
    };
    let mut orders = match (order, lower_order_final) {
        (3, true) => match steps % 3 {
            0 => [repeat(&[1, 2, 3], steps / 3 - 1), vec![1, 2, 1]].concat(),
            1 => [repeat(&[1, 2, 3], steps / 3), vec![1]].concat(),
            _ => [repeat(&[1, 2, 3], steps / 3), vec![1, 2]].concat(),
        },
        (2, true) => match steps % 2 {
            0 => [repeat(&[1, 2], steps / 2 - 1), vec![1, 1]].concat(),
            _ => [repeat(&[1, 2], steps / 2), vec![1]].concat(),
        },
        (3, false) => repeat(&[1, 2, 3], steps / 3),
        (2, false) => repeat(&[1, 2], steps / 2),
        _ => vec![1; steps],
    };
    if final_zero && let Some(last) = orders.last_mut() {
        *last = 1;
    }
    orders
}

/// The singlestep DPM-Solver: one model call per step; the group's anchor sample and outputs
/// live in the value, so clones step independently.
#[derive(Debug, Clone)]
pub struct DpmSolverSinglestep {
    config: DpmSolverSinglestepConfig,
    algorithm: AlgorithmType,
    solver: SolverType,
    /// Timesteps, sigmas, the noise schedule and `add_noise`.
    dpm: DpmSolverMultistep,
    orders: Vec<usize>,
    /// Converted outputs of the last `solver_order` steps, oldest first.
    model_outputs: Vec<Option<Tensor<5>>>,
    /// The sample the current group started from.
    anchor: Option<Tensor<5>>,
    step_index: Option<usize>,
}

impl DpmSolverSinglestep {
    /// A singlestep DPM-Solver for `config`.
    ///
    /// # Errors
    /// [`DpmSolverSinglestepConfig::validate`]'s.
    pub fn new(config: DpmSolverSinglestepConfig) -> Result<Self> {
        config.validate()?;
        let dpm = DpmSolverMultistep::new(config.dpm()?)?.rounding_karras_timesteps();
        Ok(Self {
            algorithm: config.algorithm()?,
            solver: config.solver()?,
            model_outputs: vec![None; config.solver_order],
            config,
            dpm,
            orders: Vec::new(),
            anchor: None,
            step_index: None,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &DpmSolverSinglestepConfig {
        &self.config
    }

    /// The order of each step (diffusers' `order_list`; empty until
    /// [`Scheduler::set_timesteps`]).
    pub fn orders(&self) -> &[usize] {
        &self.orders
    }

    /// The sigma of every timestep followed by the final sigma.
    pub fn sigmas(&self) -> &[f32] {
        self.dpm.sigmas()
    }

    fn data_prediction(&self) -> bool {
        self.algorithm != AlgorithmType::DpmSolver
    }

    /// diffusers' `convert_model_output`: `x̂₀` (thresholded) for the `++` variants, `ε̂` for
    /// `dpmsolver`; and `x̂₀` in both cases, for `pred_original_sample`.
    fn convert(
        &self,
        output: Tensor<5>,
        sample: &Tensor<5>,
        index: usize,
    ) -> Result<(Tensor<5>, Tensor<5>)> {
        let sigma = self.dpm.sigmas()[index];
        let converted = self.dpm.convert_model_output(output, sample, sigma)?;
        if self.data_prediction() {
            return Ok((converted.clone(), converted));
        }
        let (alpha_t, sigma_t) = alpha_sigma(sigma);
        let x0 = (sample.clone() - converted.clone().mul_scalar(sigma_t)).div_scalar(alpha_t);
        Ok((converted, x0))
    }

    /// The update of `order` from the group's anchor at `sigmas[i + 1 − order]` to
    /// `sigmas[i + 1]`, with `m[k]` the converted output at `sigmas[i − k]`.
    fn update(
        &self,
        i: usize,
        order: usize,
        m: &[Tensor<5>],
        anchor: Tensor<5>,
        noise: Option<Tensor<5>>,
    ) -> Tensor<5> {
        let sig = self.dpm.sigmas();
        let (alpha_t, sigma_t) = alpha_sigma(sig[i + 1]);
        let lambda_t = lambda(alpha_t, sigma_t);
        let (alpha_a, sigma_a) = alpha_sigma(sig[i + 1 - order]);
        let h = lambda_t - lambda(alpha_a, sigma_a);
        let sde = self.algorithm == AlgorithmType::SdeDpmSolverPlusPlus;
        let noise_term = |x: Tensor<5>| match (sde, noise.clone()) {
            (true, Some(z)) => x + z.mul_scalar(sigma_t * (1.0 - (-2.0 * h).exp()).sqrt()),
            _ => x,
        };
        // The anchor's coefficient and the weight of the lowest difference term, per algorithm.
        let (scale, phi1) = match self.algorithm {
            AlgorithmType::DpmSolver => (alpha_t / alpha_a, -(sigma_t * (h.exp() - 1.0))),
            AlgorithmType::SdeDpmSolverPlusPlus => (
                sigma_t / sigma_a * (-h).exp(),
                alpha_t * (1.0 - (-2.0 * h).exp()),
            ),
            _ => (sigma_t / sigma_a, -(alpha_t * ((-h).exp() - 1.0))),
        };
        // Weights of D1 (`phi2`) and D2 (`phi3`) for the "heun" rule and order 3.
        let (phi2, phi3) = match self.algorithm {
            AlgorithmType::DpmSolver => (
                -(sigma_t * ((h.exp() - 1.0) / h - 1.0)),
                -(sigma_t * ((h.exp() - 1.0 - h) / (h * h) - 0.5)),
            ),
            AlgorithmType::SdeDpmSolverPlusPlus => {
                let g = -2.0 * h;
                (
                    alpha_t * ((1.0 - g.exp()) / g + 1.0),
                    alpha_t * ((1.0 - g.exp() + g) / (g * g) - 0.5),
                )
            }
            _ => (
                alpha_t * (((-h).exp() - 1.0) / h + 1.0),
                -(alpha_t * (((-h).exp() - 1.0 + h) / (h * h) - 0.5)),
            ),
        };
        match order {
            1 => noise_term(anchor.mul_scalar(scale) + m[0].clone().mul_scalar(phi1)),
            2 => {
                let (alpha_s0, sigma_s0) = alpha_sigma(sig[i]);
                let r0 = (lambda(alpha_s0, sigma_s0) - lambda(alpha_a, sigma_a)) / h;
                let d0 = m[1].clone();
                let d1 = (m[0].clone() - m[1].clone()).mul_scalar(1.0 / r0);
                let x = anchor.mul_scalar(scale) + d0.mul_scalar(phi1);
                let x = match self.solver {
                    SolverType::Midpoint => x + d1.mul_scalar(0.5 * phi1),
                    SolverType::Heun => x + d1.mul_scalar(phi2),
                };
                noise_term(x)
            }
            _ => {
                let lambda_s2 = lambda(alpha_a, sigma_a);
                let (alpha_s0, sigma_s0) = alpha_sigma(sig[i]);
                let (alpha_s1, sigma_s1) = alpha_sigma(sig[i - 1]);
                let r0 = (lambda(alpha_s0, sigma_s0) - lambda_s2) / h;
                let r1 = (lambda(alpha_s1, sigma_s1) - lambda_s2) / h;
                let d0 = m[2].clone();
                let d1_0 = (m[1].clone() - m[2].clone()).mul_scalar(1.0 / r1);
                let d1_1 = (m[0].clone() - m[2].clone()).mul_scalar(1.0 / r0);
                let x = anchor.mul_scalar(scale) + d0.mul_scalar(phi1);
                let x = match self.solver {
                    SolverType::Midpoint => x + d1_1.mul_scalar(phi2),
                    SolverType::Heun => {
                        let d1 = (d1_0.clone().mul_scalar(r0) - d1_1.clone().mul_scalar(r1))
                            .div_scalar(r0 - r1);
                        let d2 = (d1_1 - d1_0).mul_scalar(2.0).div_scalar(r0 - r1);
                        x + d1.mul_scalar(phi2) + d2.mul_scalar(phi3)
                    }
                };
                noise_term(x)
            }
        }
    }
}

impl Scheduler for DpmSolverSinglestep {
    fn set_timesteps(&mut self, num_inference_steps: usize) -> Result<()> {
        self.dpm.set_timesteps(num_inference_steps)?;
        let steps = self.dpm.timesteps().len();
        let order = self.config.solver_order;
        let final_zero = self.config.final_sigmas_type == FinalSigmasType::Zero;
        let lower = self.config.lower_order_final || !steps.is_multiple_of(order) || final_zero;
        self.orders = order_list(steps, order, lower, final_zero);
        self.model_outputs = vec![None; order];
        self.anchor = None;
        self.step_index = None;
        Ok(())
    }

    fn timesteps(&self) -> &[f64] {
        self.dpm.timesteps()
    }

    /// One step of the current group; `pred_original_sample` is `x̂₀`.
    fn step(
        &mut self,
        model_output: Tensor<5>,
        timestep: f64,
        sample: Tensor<5>,
        noise: &mut dyn NoiseSource,
    ) -> Result<StepOutput> {
        expect_same_shape("model_output", &model_output, &sample)?;
        let i = step_position(self.dpm.timesteps(), self.step_index, timestep)?;
        let (converted, x0) = self.convert(model_output, &sample, i)?;
        let z = if self.algorithm == AlgorithmType::SdeDpmSolverPlusPlus {
            Some(draw(noise, sample.dims(), &sample.device())?)
        } else {
            None
        };
        self.model_outputs.remove(0);
        self.model_outputs.push(Some(converted));
        let mut order = self.orders[i];
        let len = self.model_outputs.len();
        while order > 1 && self.model_outputs[len - order].is_none() {
            order -= 1;
        }
        if order == 1 {
            self.anchor = Some(sample);
        }
        let m: Vec<Tensor<5>> = self.model_outputs[len - order..]
            .iter()
            .rev()
            .map(|o| o.clone().expect("checked above"))
            .collect();
        let anchor = self.anchor.clone().ok_or_else(|| {
            Error::invalid("timestep", "a group must start with a first-order step")
        })?;
        let prev_sample = self.update(i, order, &m, anchor, z);
        self.step_index = Some(i + 1);
        Ok(StepOutput {
            prev_sample,
            pred_original_sample: Some(x0),
        })
    }

    fn add_noise(&self, original: Tensor<5>, noise: Tensor<5>, timestep: f64) -> Result<Tensor<5>> {
        self.dpm.add_noise(original, noise, timestep)
    }

    fn prediction_type(&self) -> PredictionType {
        self.config.prediction_type
    }

    fn noise_schedule(&self) -> &NoiseSchedule {
        self.dpm.noise_schedule()
    }

    fn box_clone(&self) -> Box<dyn Scheduler> {
        Box::new(self.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::Device;
    use proptest::prelude::*;
    use vdm_core::noise::NoNoise;

    use crate::test_support::{distance_after_exact_x0_model, ramp};

    #[test]
    fn defaults_are_diffusers_defaults() {
        let c: DpmSolverSinglestepConfig = serde_json::from_str("{}").unwrap();
        assert_eq!(c, DpmSolverSinglestepConfig::default());
        assert_eq!(
            (c.solver_order, c.algorithm_type.as_str()),
            (2, "dpmsolver++")
        );
        assert!(!c.lower_order_final);
        let c: DpmSolverSinglestepConfig =
            serde_json::from_str(r#"{"lambda_min_clipped": "-inf"}"#).unwrap();
        assert_eq!(c.lambda_min_clipped, f64::NEG_INFINITY);
    }

    #[test]
    fn bad_configs_name_the_field() {
        let err = |c: DpmSolverSinglestepConfig| c.build().unwrap_err().to_string();
        let base = DpmSolverSinglestepConfig::default;
        let e = err(DpmSolverSinglestepConfig {
            solver_order: 4,
            ..base()
        });
        assert!(e.contains("solver_order"), "{e}");
        let e = err(DpmSolverSinglestepConfig {
            algorithm_type: "sde-dpmsolver".into(),
            ..base()
        });
        assert!(e.contains("algorithm_type"), "{e}");
        let e = err(DpmSolverSinglestepConfig {
            solver_type: "euler".into(),
            ..base()
        });
        assert!(e.contains("solver_type"), "{e}");
        let e = err(DpmSolverSinglestepConfig {
            algorithm_type: "dpmsolver".into(),
            ..base()
        });
        assert!(e.contains("final_sigmas_type"), "{e}");
        let e = err(DpmSolverSinglestepConfig {
            variance_type: Some("learned_range".into()),
            ..base()
        });
        assert!(e.contains("variance_type"), "{e}");
    }

    #[test]
    fn reference_order_lists() {
        assert_eq!(order_list(9, 3, true, false), [1, 2, 3, 1, 2, 3, 1, 2, 1]);
        assert_eq!(
            order_list(10, 3, true, true),
            [1, 2, 3, 1, 2, 3, 1, 2, 3, 1]
        );
        assert_eq!(order_list(8, 3, true, false), [1, 2, 3, 1, 2, 3, 1, 2]);
        assert_eq!(order_list(6, 2, true, false), [1, 2, 1, 2, 1, 1]);
        assert_eq!(order_list(6, 2, false, false), [1, 2, 1, 2, 1, 2]);
        assert_eq!(order_list(1, 3, true, true), [1]);
    }

    /// An exact x₀ model lands on x₀ for every order and rule.
    #[test]
    fn exact_model_lands_on_x0() {
        let device = Device::flex();
        let target = ramp(&device);
        for order in 1..=3 {
            for rule in ["midpoint", "heun"] {
                let mut s = DpmSolverSinglestepConfig {
                    solver_order: order,
                    solver_type: rule.into(),
                    prediction_type: PredictionType::Sample,
                    ..DpmSolverSinglestepConfig::default()
                }
                .build()
                .unwrap();
                s.set_timesteps(12).unwrap();
                let start = target.clone().add_scalar(2.0);
                let d = distance_after_exact_x0_model(&mut s, &target, start);
                assert!(d < 1e-5, "order {order} {rule}: {d}");
            }
        }
    }

    /// The SDE variant draws noise on every step; the others never do.
    #[test]
    fn only_the_sde_variant_draws_noise() {
        let device = Device::flex();
        let x = ramp(&device);
        let mut ode = DpmSolverSinglestepConfig::default().build().unwrap();
        ode.set_timesteps(4).unwrap();
        let t = ode.timesteps()[0];
        assert!(ode.step(x.clone(), t, x.clone(), &mut NoNoise).is_ok());
        let mut sde = DpmSolverSinglestepConfig {
            algorithm_type: "sde-dpmsolver++".into(),
            ..DpmSolverSinglestepConfig::default()
        }
        .build()
        .unwrap();
        sde.set_timesteps(4).unwrap();
        assert!(sde.step(x.clone(), t, x, &mut NoNoise).is_err());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// One order per step, groups of consecutive orders starting at 1, never above the
        /// solver order; a final sigma of 0 ends with a first-order step.
        #[test]
        fn order_lists_are_groups(
            steps in 1usize..100,
            order in 1usize..=3,
            lower in any::<bool>(),
            final_zero in any::<bool>(),
        ) {
            let lower = lower || !steps.is_multiple_of(order) || final_zero;
            let o = order_list(steps, order, lower, final_zero);
            prop_assert_eq!(o.len(), steps);
            prop_assert_eq!(o[0], 1);
            prop_assert!(o.iter().all(|&k| (1..=order).contains(&k)));
            prop_assert!(o.windows(2).all(|w| w[1] == 1 || w[1] == w[0] + 1));
            if final_zero {
                prop_assert_eq!(o[steps - 1], 1);
            }
        }
    }
}
