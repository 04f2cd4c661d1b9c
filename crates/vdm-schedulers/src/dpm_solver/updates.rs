//! The multistep DPM-Solver / DPM-Solver++ updates (Lu et al. 2022, DPM-Solver Eq. 3.7 and
//! Algorithms 1–2; DPM-Solver++ Algorithms 1–2; diffusers' `convert_model_output`,
//! `dpm_solver_first_order_update`, `multistep_dpm_solver_second_order_update` and
//! `multistep_dpm_solver_third_order_update` in `scheduling_dpmsolver_multistep.py`): the
//! conversion of a model output to `x̂₀` or `ε̂`, and the 1st-, 2nd- and 3rd-order steps in
//! half-log-SNR time, ODE and SDE variants.

use burn::tensor::Tensor;
use vdm_core::{PredictionType, Result};

use super::{DpmSolverMultistep, alpha_sigma, lambda};
use crate::options::{AlgorithmType, SolverType};

impl DpmSolverMultistep {
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
    pub(super) fn first_order_update(
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
    pub(super) fn second_order_update(
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
    pub(super) fn third_order_update(
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
