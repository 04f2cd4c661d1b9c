//! UniPC (Zhao et al. 2023, "UniPC: A Unified Predictor-Corrector Framework for Fast Sampling
//! of Diffusion Models"), mirroring diffusers' `UniPCMultistepScheduler`
//! (`src/diffusers/schedulers/scheduling_unipc_multistep.py`).
//!
//! Like DPM-Solver it integrates in half-log-SNR time `λ = log α − log σ` with the model output
//! converted to `x̂₀` (`predict_x0`, the default) or `ε̂`. Each step first *corrects* the
//! sample it was given with the new model output (UniC, order `p` of the previous step; skipped
//! at the first step and at the indices in `disable_corrector`), then *predicts* the next
//! sample (UniP, order `min(solver_order, steps done + 1)`, lowered at the end with
//! `lower_order_final`). The `B(h)` of the update is `h` (`bh1`) or `e^h − 1` (`bh2`). One model
//! call per step; the corrector reuses it, so the order rises for free.
//!
//! The timesteps and sigmas are those of [`DpmSolverMultistep`] on the same options (diffusers
//! computes them with the same code, except that UniPC rounds Karras timesteps for the cosine
//! schedule too). Scalar coefficients are `f32`, as diffusers' 0-d tensors; the small linear
//! systems for the order-3 coefficients are solved in `f64`.
//!
//! # Deviations from diffusers
//!
//! - `solver_p` (another scheduler as the predictor), `use_flow_sigmas`,
//!   `use_dynamic_shifting` and custom `sigma_min` / `sigma_max` are typed errors.
//! - A run from the first timestep starts at step 0 even when rounding repeats that timestep
//!   (Karras or exponential sigmas near a zero-SNR or cosine schedule's end); diffusers starts
//!   at the repeat and fails its own assertion at the end of the schedule.
//! - `bh1` onto σ = 0: diffusers multiplies `B(h) = −∞` by a zero residual (NaN); the term is
//!   dropped here, so the last sample is `x̂₀`.
//! - `predict_x0: false` with `final_sigmas_type: "zero"` (diffusers' last step is `0·∞`, NaN)
//!   and a last step of order > 1 onto σ = 0 without `lower_order_final` (a division by a zero
//!   `r_k`) are typed errors instead of NaN.

use burn::tensor::Tensor;
use serde::{Deserialize, Serialize};
use vdm_core::layout::expect_same_shape;
use vdm_core::{Error, NoiseSource, PredictionType, Result};

use crate::dpm_solver::{DpmSolverMultistep, DpmSolverMultistepConfig, alpha_sigma, lambda};
use crate::euler::first_index;
use crate::options::{AlgorithmType, FinalSigmasType, TimestepSpacing};
use crate::schedule::{BetaConfig, NoiseSchedule};
use crate::scheduler::{Scheduler, StepOutput};

/// The fields of a diffusers `UniPCMultistepScheduler` `scheduler_config.json`, with its
/// defaults (linear betas 1e-4 → 0.02, order 2, `bh2`, `predict_x0`, `lower_order_final`,
/// `linspace` spacing, final sigma 0).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct UniPcMultistepConfig {
    /// Training noise schedule (with `rescale_betas_zero_snr`: the last `ᾱ` is 2⁻²⁴).
    #[serde(flatten)]
    pub betas: BetaConfig,
    /// Order of the predictor: 1, 2 or 3 (the corrector adds one).
    pub solver_order: usize,
    /// What the model predicts.
    pub prediction_type: PredictionType,
    /// Dynamic thresholding of `x̂₀` (pixel-space models only; with `predict_x0`).
    pub thresholding: bool,
    /// The quantile of `|x̂₀|` used as the dynamic threshold.
    pub dynamic_thresholding_ratio: f64,
    /// The largest dynamic threshold.
    pub sample_max_value: f64,
    /// Integrate the data prediction `x̂₀` (UniPC's "x0" variant) instead of `ε̂`.
    pub predict_x0: bool,
    /// `"bh1"` (`B(h) = h`, for few steps and unconditional sampling) or `"bh2"`
    /// (`B(h) = e^h − 1`, the default); diffusers maps `"midpoint"`, `"heun"` and `"logrho"`
    /// to `"bh2"`.
    pub solver_type: String,
    /// Lower the order on the last steps (recommended under 15 steps).
    pub lower_order_final: bool,
    /// Step indices whose corrector is skipped (the corrector of step `i` runs at step
    /// `i + 1`).
    pub disable_corrector: Vec<usize>,
    /// A scheduler object used as the predictor: not supported (must be null).
    pub solver_p: Option<serde_json::Value>,
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
    /// How inference timesteps are spaced (ignored with Karras / exponential sigmas).
    pub timestep_spacing: TimestepSpacing,
    /// Added to `leading` timesteps.
    pub steps_offset: usize,
    /// The sigma after the last step: 0, or the training schedule's smallest.
    pub final_sigmas_type: FinalSigmasType,
    /// Resolution-dependent shifting (flow models): not supported.
    pub use_dynamic_shifting: bool,
    /// The shift function of `use_dynamic_shifting`.
    pub time_shift_type: String,
    /// Custom smallest Karras sigma: not supported (must be null).
    pub sigma_min: Option<f64>,
    /// Custom largest Karras sigma: not supported (must be null).
    pub sigma_max: Option<f64>,
    /// Flow-matching terminal shift: not supported (must be null).
    pub shift_terminal: Option<f64>,
}

impl Default for UniPcMultistepConfig {
    fn default() -> Self {
        Self {
            betas: BetaConfig::default(),
            solver_order: 2,
            prediction_type: PredictionType::Epsilon,
            thresholding: false,
            dynamic_thresholding_ratio: 0.995,
            sample_max_value: 1.0,
            predict_x0: true,
            solver_type: "bh2".into(),
            lower_order_final: true,
            disable_corrector: Vec::new(),
            solver_p: None,
            use_karras_sigmas: false,
            use_exponential_sigmas: false,
            use_beta_sigmas: false,
            use_flow_sigmas: false,
            flow_shift: 1.0,
            timestep_spacing: TimestepSpacing::Linspace,
            steps_offset: 0,
            final_sigmas_type: FinalSigmasType::Zero,
            use_dynamic_shifting: false,
            time_shift_type: "exponential".into(),
            sigma_min: None,
            sigma_max: None,
            shift_terminal: None,
        }
    }
}

/// UniPC's `B(h)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BhVariant {
    /// `B(h) = h`.
    Bh1,
    /// `B(h) = e^h − 1`.
    Bh2,
}

impl UniPcMultistepConfig {
    fn bh(&self) -> Result<BhVariant> {
        match self.solver_type.as_str() {
            "bh1" => Ok(BhVariant::Bh1),
            "bh2" | "midpoint" | "heun" | "logrho" => Ok(BhVariant::Bh2),
            other => Err(Error::unknown_variant(
                "solver_type",
                other,
                &["bh1", "bh2", "midpoint", "heun", "logrho"],
            )),
        }
    }

    /// The DPM-Solver configuration with the same timesteps and sigmas.
    fn dpm(&self) -> DpmSolverMultistepConfig {
        DpmSolverMultistepConfig {
            betas: self.betas.clone(),
            solver_order: 1,
            prediction_type: self.prediction_type,
            use_karras_sigmas: self.use_karras_sigmas,
            use_exponential_sigmas: self.use_exponential_sigmas,
            use_beta_sigmas: self.use_beta_sigmas,
            // What UniPC integrates is what DPM-Solver++ (x̂₀, thresholded) or DPM-Solver
            // (ε̂, never thresholded in diffusers' UniPC) converts the model output to.
            algorithm_type: if self.predict_x0 {
                AlgorithmType::DpmSolverPlusPlus
            } else {
                AlgorithmType::DpmSolver
            },
            thresholding: self.thresholding && self.predict_x0,
            dynamic_thresholding_ratio: self.dynamic_thresholding_ratio,
            sample_max_value: self.sample_max_value,
            timestep_spacing: self.timestep_spacing,
            steps_offset: self.steps_offset,
            final_sigmas_type: self.final_sigmas_type,
            ..DpmSolverMultistepConfig::default()
        }
    }

    /// Checks the fields, naming the first bad or unsupported one.
    pub fn validate(&self) -> Result<()> {
        if !(1..=3).contains(&self.solver_order) {
            return Err(Error::invalid(
                "solver_order",
                format!("must be 1, 2 or 3, got {}", self.solver_order),
            ));
        }
        self.bh()?;
        let unsupported = [
            (
                "solver_p",
                self.solver_p.as_ref().is_some_and(|v| !v.is_null()),
            ),
            ("use_flow_sigmas", self.use_flow_sigmas),
            ("use_dynamic_shifting", self.use_dynamic_shifting),
            ("sigma_min", self.sigma_min.is_some()),
            ("sigma_max", self.sigma_max.is_some()),
            ("shift_terminal", self.shift_terminal.is_some()),
        ];
        if let Some((field, _)) = unsupported.iter().find(|(_, set)| *set) {
            return Err(Error::Unsupported(format!(
                "`{field}` is not implemented for UniPCMultistepScheduler"
            )));
        }
        if self.use_karras_sigmas && self.use_exponential_sigmas {
            return Err(Error::invalid(
                "use_exponential_sigmas",
                "cannot be combined with `use_karras_sigmas`: choose one sigma schedule",
            ));
        }
        if !self.predict_x0 && self.final_sigmas_type == FinalSigmasType::Zero {
            return Err(Error::invalid(
                "final_sigmas_type",
                "\"zero\" with `predict_x0: false` makes the last step 0·∞ (NaN in diffusers); \
                 use \"sigma_min\" or predict_x0",
            ));
        }
        self.dpm().validate()
    }

    /// Builds the scheduler (without timesteps; call [`Scheduler::set_timesteps`]).
    pub fn build(&self) -> Result<UniPcMultistep> {
        UniPcMultistep::new(self.clone())
    }

    /// Builds the scheduler, boxed.
    pub fn build_boxed(&self) -> Result<Box<dyn Scheduler>> {
        Ok(Box::new(self.build()?))
    }
}

/// The UniPC multistep sampler: deterministic, one model call per step, its history (the last
/// `solver_order` converted outputs, the previous sample and order) in the value, so clones
/// step independently (one per frame window).
#[derive(Debug, Clone)]
pub struct UniPcMultistep {
    config: UniPcMultistepConfig,
    bh: BhVariant,
    /// Timesteps, sigmas, the index lookup and `add_noise`.
    dpm: DpmSolverMultistep,
    /// Converted outputs of the last `solver_order` steps, oldest first.
    model_outputs: Vec<Option<Tensor<5>>>,
    last_sample: Option<Tensor<5>>,
    this_order: usize,
    lower_order_nums: usize,
    step_index: Option<usize>,
}

/// The UniP / UniC coefficients of one update: `h·φ₁(h)` (`e^{ĥ} − 1`), `B(h)` and the
/// weights `ρ` of the differences `D1_k`.
struct Coefficients {
    h_phi_1: f32,
    b_h: f32,
    rhos: Vec<f32>,
}

impl UniPcMultistep {
    /// A UniPC scheduler for `config`.
    ///
    /// # Errors
    /// [`UniPcMultistepConfig::validate`]'s.
    pub fn new(config: UniPcMultistepConfig) -> Result<Self> {
        config.validate()?;
        let dpm = DpmSolverMultistep::new(config.dpm())?.rounding_karras_timesteps();
        Ok(Self {
            bh: config.bh()?,
            model_outputs: vec![None; config.solver_order],
            config,
            dpm,
            last_sample: None,
            this_order: 0,
            lower_order_nums: 0,
            step_index: None,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &UniPcMultistepConfig {
        &self.config
    }

    /// The sigma of every timestep followed by the final sigma.
    pub fn sigmas(&self) -> &[f32] {
        self.dpm.sigmas()
    }

    fn lambda_at(&self, index: usize) -> f32 {
        let (a, s) = alpha_sigma(self.dpm.sigmas()[index]);
        lambda(a, s)
    }

    /// The coefficients for an update of `order` over the log-SNR step `h` with the ratios
    /// `rks` of the earlier outputs; `corrector` solves the full system (UniC), else the
    /// predictor's (UniP).
    fn coefficients(&self, order: usize, h: f32, rks: &[f32], corrector: bool) -> Coefficients {
        let hh = if self.config.predict_x0 { -h } else { h };
        let h_phi_1 = hh.exp_m1();
        let b_h = match self.bh {
            BhVariant::Bh1 => hh,
            BhVariant::Bh2 => hh.exp_m1(),
        };
        // R[i][k] = r_k^i (r = rks plus 1), b[i] = h·φ_{i+1}(h)·i!/B(h).
        let mut r_all: Vec<f32> = rks.to_vec();
        r_all.push(1.0);
        let mut b = Vec::with_capacity(order);
        let mut h_phi_k = h_phi_1 / hh - 1.0;
        let mut factorial = 1.0f32;
        for i in 1..=order {
            b.push(h_phi_k * factorial / b_h);
            factorial *= (i + 1) as f32;
            h_phi_k = h_phi_k / hh - 1.0 / factorial;
        }
        let rhos = if corrector {
            if order == 1 {
                vec![0.5]
            } else {
                solve(&r_all, &b, order)
            }
        } else {
            match order {
                1 => Vec::new(),
                2 => vec![0.5],
                _ => solve(&r_all[..order - 1], &b[..order - 1], order - 1),
            }
        };
        Coefficients { h_phi_1, b_h, rhos }
    }

    /// `x_t` from `x` at `sigmas[s0]` to `sigmas[t]` with `m0` and the differences `D1_k`
    /// weighted by `rhos` (`extra`: the corrector's `ρ_last·(m_t − m0)`).
    #[allow(clippy::too_many_arguments)]
    fn update(
        &self,
        x: Tensor<5>,
        s0: usize,
        t: usize,
        m0: &Tensor<5>,
        d1s: &[Tensor<5>],
        c: &Coefficients,
        extra: Option<Tensor<5>>,
    ) -> Tensor<5> {
        let (alpha_t, sigma_t) = alpha_sigma(self.dpm.sigmas()[t]);
        let (alpha_s0, sigma_s0) = alpha_sigma(self.dpm.sigmas()[s0]);
        let (base, scale) = if self.config.predict_x0 {
            (
                x.mul_scalar(sigma_t / sigma_s0) - m0.clone().mul_scalar(alpha_t * c.h_phi_1),
                alpha_t * c.b_h,
            )
        } else {
            (
                x.mul_scalar(alpha_t / alpha_s0) - m0.clone().mul_scalar(sigma_t * c.h_phi_1),
                sigma_t * c.b_h,
            )
        };
        let mut residual: Option<Tensor<5>> = None;
        for (rho, d) in c.rhos.iter().zip(d1s) {
            let term = d.clone().mul_scalar(*rho);
            residual = Some(match residual {
                Some(r) => r + term,
                None => term,
            });
        }
        if let Some(e) = extra {
            residual = Some(match residual {
                Some(r) => r + e,
                None => e,
            });
        }
        match residual {
            Some(r) => base - r.mul_scalar(scale),
            None => base,
        }
    }

    /// The ratios `r_k = (λ_{s_k} − λ_{s0})/h` and differences `D1_k = (m_k − m0)/r_k` of the
    /// `order − 1` outputs before `m0`, output `k` belonging to `sigmas[top − k]`.
    fn differences(
        &self,
        order: usize,
        top: usize,
        lambda_s0: f32,
        h: f32,
        m0: &Tensor<5>,
    ) -> Result<(Vec<f32>, Vec<Tensor<5>>)> {
        let n = self.model_outputs.len();
        let mut rks = Vec::new();
        let mut d1s = Vec::new();
        for k in 1..order {
            let mk = self.model_outputs[n - 1 - k]
                .as_ref()
                .ok_or_else(|| Error::invalid("solver_order", "missing model output history"))?;
            let rk = (self.lambda_at(top - k) - lambda_s0) / h;
            if !(rk.is_finite() && rk != 0.0) {
                return Err(Error::NonFinite {
                    what: "UniPC coefficients".into(),
                    reason: "a step of order > 1 onto sigma 0 divides by r_k = 0; set \
                             lower_order_final (the default)"
                        .into(),
                });
            }
            rks.push(rk);
            d1s.push((mk.clone() - m0.clone()).div_scalar(rk));
        }
        Ok((rks, d1s))
    }

    /// diffusers' `convert_model_output`: `x̂₀` (thresholded) or `ε̂` at `sigmas[index]`
    /// (DPM-Solver's conversion, configured to match).
    fn convert(&self, output: Tensor<5>, sample: &Tensor<5>, index: usize) -> Result<Tensor<5>> {
        self.dpm
            .convert_model_output(output, sample, self.dpm.sigmas()[index])
    }
}

/// Solves `R·ρ = b` for the `n × n` system `R[i][k] = r_k^i` in `f64` (Gaussian elimination
/// with partial pivoting), returned in `f32`.
fn solve(r: &[f32], b: &[f32], n: usize) -> Vec<f32> {
    let mut a: Vec<Vec<f64>> = (0..n)
        .map(|i| {
            let mut row: Vec<f64> = (0..n).map(|k| (r[k] as f64).powi(i as i32)).collect();
            row.push(b[i] as f64);
            row
        })
        .collect();
    for col in 0..n {
        let pivot = (col..n)
            .max_by(|&x, &y| a[x][col].abs().total_cmp(&a[y][col].abs()))
            .unwrap_or(col);
        a.swap(col, pivot);
        let (upper, lower) = a.split_at_mut(col + 1);
        let pivot_row = &upper[col];
        for row in lower.iter_mut() {
            let f = row[col] / pivot_row[col];
            for (x, p) in row[col..].iter_mut().zip(&pivot_row[col..]) {
                *x -= f * p;
            }
        }
    }
    let mut x = vec![0.0f64; n];
    for i in (0..n).rev() {
        let s: f64 = (i + 1..n).map(|k| a[i][k] * x[k]).sum();
        x[i] = (a[i][n] - s) / a[i][i];
    }
    x.into_iter().map(|v| v as f32).collect()
}

impl Scheduler for UniPcMultistep {
    fn set_timesteps(&mut self, num_inference_steps: usize) -> Result<()> {
        self.dpm.set_timesteps(num_inference_steps)?;
        self.model_outputs = vec![None; self.config.solver_order];
        self.last_sample = None;
        self.this_order = 0;
        self.lower_order_nums = 0;
        self.step_index = None;
        Ok(())
    }

    fn timesteps(&self) -> &[f64] {
        self.dpm.timesteps()
    }

    /// Corrects `sample` with this output (UniC, from the second step on), then predicts the
    /// next sample (UniP). `pred_original_sample` is `x̂₀` when `predict_x0`.
    fn step(
        &mut self,
        model_output: Tensor<5>,
        timestep: f64,
        sample: Tensor<5>,
        _noise: &mut dyn NoiseSource,
    ) -> Result<StepOutput> {
        expect_same_shape("model_output", &model_output, &sample)?;
        let index = match self.step_index {
            Some(i) => i,
            None => first_index(self.dpm.timesteps(), timestep)?,
        };
        let steps = self.dpm.timesteps().len();
        if index >= steps {
            return Err(Error::invalid(
                "timestep",
                format!("step index {index} is past the end of the schedule"),
            ));
        }
        let converted = self.convert(model_output, &sample, index)?;
        let use_corrector = index > 0
            && !self.config.disable_corrector.contains(&(index - 1))
            && self.last_sample.is_some();
        let mut sample = sample;
        if use_corrector {
            let order = self.this_order;
            let m0 = self.model_outputs[self.model_outputs.len() - 1]
                .clone()
                .ok_or_else(|| Error::invalid("solver_order", "missing model output history"))?;
            let lambda_s0 = self.lambda_at(index - 1);
            let h = self.lambda_at(index) - lambda_s0;
            let (rks, d1s) = self.differences(order, index - 1, lambda_s0, h, &m0)?;
            let c = self.coefficients(order, h, &rks, true);
            let rho_last = *c.rhos.last().expect("the corrector has order ≥ 1 weights");
            let extra = (converted.clone() - m0.clone()).mul_scalar(rho_last);
            let last = self.last_sample.take().expect("checked above");
            sample = self.update(
                last,
                index - 1,
                index,
                &m0,
                &d1s,
                &Coefficients {
                    rhos: c.rhos[..c.rhos.len() - 1].to_vec(),
                    ..c
                },
                Some(extra),
            );
        }
        self.model_outputs.remove(0);
        self.model_outputs.push(Some(converted.clone()));
        let order = if self.config.lower_order_final {
            self.config.solver_order.min(steps - index)
        } else {
            self.config.solver_order
        };
        self.this_order = order.min(self.lower_order_nums + 1);
        self.last_sample = Some(sample.clone());
        let lambda_s0 = self.lambda_at(index);
        let h = self.lambda_at(index + 1) - lambda_s0;
        let (rks, d1s) = if self.this_order > 1 {
            self.differences(self.this_order, index, lambda_s0, h, &converted)?
        } else {
            (Vec::new(), Vec::new())
        };
        let c = self.coefficients(self.this_order, h, &rks, false);
        let prev_sample = self.update(sample, index, index + 1, &converted, &d1s, &c, None);
        self.lower_order_nums = (self.lower_order_nums + 1).min(self.config.solver_order);
        self.step_index = Some(index + 1);
        Ok(StepOutput {
            prev_sample,
            pred_original_sample: self.config.predict_x0.then_some(converted),
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

    use crate::test_support::{distance_after_exact_x0_model, ramp, spacings};

    #[test]
    fn defaults_are_diffusers_defaults() {
        let c: UniPcMultistepConfig = serde_json::from_str("{}").unwrap();
        assert_eq!(c, UniPcMultistepConfig::default());
        assert_eq!((c.solver_order, c.solver_type.as_str()), (2, "bh2"));
        assert!(c.predict_x0 && c.lower_order_final);
    }

    #[test]
    fn bad_configs_name_the_field() {
        let err = |c: UniPcMultistepConfig| c.build().unwrap_err().to_string();
        let base = UniPcMultistepConfig::default;
        let e = err(UniPcMultistepConfig {
            solver_order: 4,
            ..base()
        });
        assert!(e.contains("solver_order"), "{e}");
        let e = err(UniPcMultistepConfig {
            solver_type: "bh3".into(),
            ..base()
        });
        assert!(e.contains("solver_type") && e.contains("bh2"), "{e}");
        let e = err(UniPcMultistepConfig {
            predict_x0: false,
            ..base()
        });
        assert!(e.contains("final_sigmas_type"), "{e}");
        let e =
            err(serde_json::from_str(r#"{"solver_p": {"_class_name": "DDIMScheduler"}}"#).unwrap());
        assert!(e.contains("solver_p"), "{e}");
        let ok: UniPcMultistepConfig = serde_json::from_str(r#"{"solver_p": null}"#).unwrap();
        assert!(ok.build().is_ok());
    }

    /// An exact x₀ model lands on x₀ for every order and both B(h).
    #[test]
    fn exact_model_lands_on_x0() {
        let device = Device::flex();
        let target = ramp(&device);
        for order in 1..=3 {
            for bh in ["bh1", "bh2"] {
                let mut s = UniPcMultistepConfig {
                    solver_order: order,
                    solver_type: bh.into(),
                    prediction_type: PredictionType::Sample,
                    ..UniPcMultistepConfig::default()
                }
                .build()
                .unwrap();
                s.set_timesteps(12).unwrap();
                let start = target.clone().add_scalar(2.0);
                let d = distance_after_exact_x0_model(&mut s, &target, start);
                assert!(d < 1e-5, "order {order} {bh}: {d}");
            }
        }
    }

    /// Clones keep separate histories: stepping one leaves the other where it was.
    #[test]
    fn clones_step_independently() {
        let device = Device::flex();
        let mut a = UniPcMultistepConfig {
            solver_order: 3,
            ..UniPcMultistepConfig::default()
        }
        .build()
        .unwrap();
        a.set_timesteps(8).unwrap();
        let ts = a.timesteps().to_vec();
        let mut x = ramp(&device);
        for &t in &ts[..3] {
            let out = x.clone().mul_scalar(0.1);
            x = a.step(out, t, x, &mut NoNoise).unwrap().prev_sample;
        }
        let mut b = a.clone();
        let out = x.clone().mul_scalar(0.1);
        let xa = a.step(out.clone(), ts[3], x.clone(), &mut NoNoise).unwrap();
        let out2 = x.clone().mul_scalar(0.2);
        let _ = a.step(out2, ts[4], x.clone(), &mut NoNoise).unwrap();
        let xb = b.step(out, ts[3], x, &mut NoNoise).unwrap();
        let d: f32 = (xa.prev_sample - xb.prev_sample).abs().max().into_scalar();
        assert_eq!(d, 0.0);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(32))]

        /// Timesteps strictly decrease within range; sigmas decrease to the final sigma.
        #[test]
        fn schedule_invariants(
            steps in 1usize..200,
            spacing in spacings(),
        ) {
            let mut s = UniPcMultistepConfig {
                timestep_spacing: spacing,
                steps_offset: 1,
                ..UniPcMultistepConfig::default()
            }
            .build()
            .unwrap();
            s.set_timesteps(steps).unwrap();
            let t = s.timesteps();
            prop_assert_eq!(t.len(), steps);
            prop_assert!(t.windows(2).all(|w| w[0] > w[1]));
            prop_assert!(t.iter().all(|&x| (0.0..1000.0).contains(&x)));
            prop_assert!(s.sigmas().windows(2).all(|w| w[0] > w[1]));
            prop_assert_eq!(s.sigmas()[steps], 0.0);
        }
    }
}
