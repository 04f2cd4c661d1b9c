//! Beta schedules and the cumulative products derived from them, computed as diffusers does
//! (`scheduling_ddim.py`: `betas_for_alpha_bar`, `rescale_zero_terminal_snr`).

use burn::tensor::Tensor;
use serde::{Deserialize, Serialize};
use vdm_core::error::{ensure_non_negative, ensure_positive};
use vdm_core::layout::expect_same_shape;
use vdm_core::{Error, Result};

use crate::options::BetaSchedule;
use crate::prediction::{Scales, add_noise, velocity};
use crate::torch_sqrt::torch_sqrt;

/// Converts an integer-valued `f64` timestep, rejecting fractions.
pub(crate) fn integer_timestep(t: f64) -> Result<i64> {
    if t.fract() != 0.0 || !t.is_finite() {
        return Err(Error::invalid(
            "timestep",
            format!("this scheduler uses integer timesteps, got {t}"),
        ));
    }
    Ok(t as i64)
}

/// Most training timesteps a config may declare. Real checkpoints use 1000; the schedule holds
/// several tables of this length, so a config from an untrusted source declaring 2³² would
/// make the scheduler allocate tens of GiB before any other check (found while writing the
/// fuzz harnesses of `examples/src/fuzz`). Diffusers has no limit; 10⁶ is a thousand times
/// any known model.
pub const MAX_TRAIN_TIMESTEPS: usize = 1_000_000;

/// The training noise schedule fields shared by every diffusers scheduler config.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct BetaConfig {
    /// Number of training timesteps `T` (1000 for SD-family models).
    pub num_train_timesteps: usize,
    /// First beta.
    pub beta_start: f64,
    /// Last beta.
    pub beta_end: f64,
    /// Layout of betas over the timesteps.
    pub beta_schedule: BetaSchedule,
    /// Explicit betas, overriding `beta_schedule` (length `T`).
    pub trained_betas: Option<Vec<f64>>,
    /// Rescale to zero terminal SNR (Lin et al. 2023, Algorithm 1).
    pub rescale_betas_zero_snr: bool,
}

impl Default for BetaConfig {
    /// diffusers' `DDIMScheduler` defaults: linear 1e-4 → 0.02 over 1000 steps.
    fn default() -> Self {
        Self {
            num_train_timesteps: 1000,
            beta_start: 0.0001,
            beta_end: 0.02,
            beta_schedule: BetaSchedule::Linear,
            trained_betas: None,
            rescale_betas_zero_snr: false,
        }
    }
}

impl BetaConfig {
    /// The Stable Diffusion / AnimateDiff style schedule: `beta_schedule` from 0.00085 to 0.012.
    pub fn sd(beta_schedule: BetaSchedule) -> Self {
        Self {
            beta_start: 0.00085,
            beta_end: 0.012,
            beta_schedule,
            ..Self::default()
        }
    }

    /// Checks the fields, naming the first bad one.
    pub fn validate(&self) -> Result<()> {
        if self.num_train_timesteps < 2 {
            return Err(Error::invalid(
                "num_train_timesteps",
                format!("must be at least 2, got {}", self.num_train_timesteps),
            ));
        }
        if self.num_train_timesteps > MAX_TRAIN_TIMESTEPS {
            return Err(Error::invalid(
                "num_train_timesteps",
                format!(
                    "must be at most {MAX_TRAIN_TIMESTEPS} (real checkpoints use 1000), got {}",
                    self.num_train_timesteps
                ),
            ));
        }
        match &self.trained_betas {
            Some(betas) => {
                if betas.len() != self.num_train_timesteps {
                    return Err(Error::invalid(
                        "trained_betas",
                        format!(
                            "has {} values, num_train_timesteps is {}",
                            betas.len(),
                            self.num_train_timesteps
                        ),
                    ));
                }
                if let Some(b) = betas
                    .iter()
                    .find(|b| !(b.is_finite() && **b > 0.0 && **b <= 1.0))
                {
                    return Err(Error::invalid(
                        "trained_betas",
                        format!("every beta must be in (0, 1], got {b}"),
                    ));
                }
            }
            None => {
                ensure_non_negative("beta_start", self.beta_start)?;
                ensure_positive("beta_end", self.beta_end)?;
                if self.beta_end >= 1.0 {
                    return Err(Error::invalid(
                        "beta_end",
                        format!("must be < 1, got {}", self.beta_end),
                    ));
                }
                if self.beta_start > self.beta_end {
                    return Err(Error::invalid(
                        "beta_start",
                        format!(
                            "must not exceed beta_end ({}), got {}",
                            self.beta_end, self.beta_start
                        ),
                    ));
                }
            }
        }
        Ok(())
    }
}

/// A training noise schedule: `β_t`, and `ᾱ_t = ∏_{s≤t} (1 − β_s)`, both in `f32` as diffusers
/// stores them.
#[derive(Debug, Clone, PartialEq)]
pub struct NoiseSchedule {
    /// `β_t`, length `T`.
    pub betas: Vec<f32>,
    /// `ᾱ_t`, length `T`, strictly decreasing (the last value is 0 with zero terminal SNR).
    pub alphas_cumprod: Vec<f32>,
}

impl NoiseSchedule {
    /// Builds the schedule for `config`.
    pub fn new(config: &BetaConfig) -> Result<Self> {
        config.validate()?;
        let n = config.num_train_timesteps;
        let mut betas: Vec<f32> = match &config.trained_betas {
            Some(b) => b.iter().map(|&x| x as f32).collect(),
            None => match config.beta_schedule {
                BetaSchedule::Linear => {
                    linspace_f32(config.beta_start as f32, config.beta_end as f32, n)
                }
                BetaSchedule::ScaledLinear => linspace_f32(
                    config.beta_start.sqrt() as f32,
                    config.beta_end.sqrt() as f32,
                    n,
                )
                .into_iter()
                .map(|b| b * b)
                .collect(),
                BetaSchedule::SquaredcosCapV2 => betas_for_alpha_bar(n, 0.999),
                BetaSchedule::Sigmoid => linspace_f32(-6.0, 6.0, n)
                    .into_iter()
                    .map(|x| {
                        let s = 1.0 / (1.0 + (-x).exp());
                        s * (config.beta_end - config.beta_start) as f32 + config.beta_start as f32
                    })
                    .collect(),
            },
        };
        if config.rescale_betas_zero_snr {
            betas = rescale_zero_terminal_snr(&betas);
        }
        let alphas_cumprod = cumprod_one_minus(&betas);
        Ok(Self {
            betas,
            alphas_cumprod,
        })
    }

    /// Number of training timesteps `T`.
    pub fn num_train_timesteps(&self) -> usize {
        self.alphas_cumprod.len()
    }

    /// `ᾱ_t` at a timestep given as the schedulers take it (an integer-valued `f64`); a typed
    /// error for a fraction or a timestep out of range.
    pub fn alpha_cumprod_at(&self, t: f64) -> Result<f32> {
        self.alpha_cumprod(integer_timestep(t)?)
    }

    /// The forward process at timestep `t`: `√ᾱ_t·x₀ + √(1 − ᾱ_t)·ε` (diffusers' `add_noise`
    /// of the DDIM, DDPM and LCM schedulers).
    ///
    /// # Shapes
    /// `x0` and `noise`: the same shape; the output likewise.
    pub fn add_noise(&self, x0: Tensor<5>, noise: Tensor<5>, t: f64) -> Result<Tensor<5>> {
        expect_same_shape("noise", &noise, &x0)?;
        let s = Scales::from_alpha_cumprod(self.alpha_cumprod_at(t)?);
        Ok(add_noise(x0, noise, s))
    }

    /// The velocity target at timestep `t`: `√ᾱ_t·ε − √(1 − ᾱ_t)·x₀` (Salimans & Ho 2022;
    /// diffusers' `get_velocity`).
    ///
    /// # Shapes
    /// `x0` and `noise`: the same shape; the output likewise.
    pub fn velocity(&self, x0: Tensor<5>, noise: Tensor<5>, t: f64) -> Result<Tensor<5>> {
        expect_same_shape("noise", &noise, &x0)?;
        let s = Scales::from_alpha_cumprod(self.alpha_cumprod_at(t)?);
        Ok(velocity(x0, noise, s))
    }

    /// `ᾱ_t` at integer timestep `t`, or a typed error when `t` is out of range.
    pub fn alpha_cumprod(&self, t: i64) -> Result<f32> {
        usize::try_from(t)
            .ok()
            .and_then(|i| self.alphas_cumprod.get(i).copied())
            .ok_or_else(|| {
                Error::invalid(
                    "timestep",
                    format!(
                        "{t} is outside the training range 0..{}",
                        self.alphas_cumprod.len()
                    ),
                )
            })
    }

    /// Karras/Euler sigmas `σ_t = sqrt((1 − ᾱ_t)/ᾱ_t)` for every training timestep, in `f64`
    /// from the `f32` table (as numpy does in diffusers' Euler and DPM-Solver).
    pub fn sigmas(&self) -> Vec<f64> {
        self.alphas_cumprod
            .iter()
            .map(|&a| ((1.0 - a as f64) / a as f64).sqrt())
            .collect()
    }
}

/// `torch.linspace(start, end, n, dtype=float32)` bit for bit as PyTorch's CPU kernel computes
/// it (`RangeFactoriesKernel.cpp`, compiled with FMA contraction): an `f32` step, the first half
/// `fma(step, i, start)` and the second half `fma(−step, n − 1 − i, end)`. (Verified against the
/// oracle's beta tables: a plain multiply-add differs in ~10% of the entries.)
pub(crate) fn linspace_f32(start: f32, end: f32, n: usize) -> Vec<f32> {
    if n == 1 {
        return vec![start];
    }
    let step = (end - start) / (n - 1) as f32;
    let half = n / 2;
    (0..n)
        .map(|i| {
            if i < half {
                step.mul_add(i as f32, start)
            } else {
                (-step).mul_add((n - i - 1) as f32, end)
            }
        })
        .collect()
}

/// The cosine schedule (`betas_for_alpha_bar(..., "cosine")`), computed in `f64` like Python.
fn betas_for_alpha_bar(n: usize, max_beta: f64) -> Vec<f32> {
    let alpha_bar = |t: f64| {
        ((t + 0.008) / 1.008 * std::f64::consts::PI / 2.0)
            .cos()
            .powi(2)
    };
    (0..n)
        .map(|i| {
            let t1 = i as f64 / n as f64;
            let t2 = (i + 1) as f64 / n as f64;
            (1.0 - alpha_bar(t2) / alpha_bar(t1)).min(max_beta) as f32
        })
        .collect()
}

/// `torch.cumprod(1 − β)`; PyTorch accumulates `f32` products in `f64` on the CPU.
fn cumprod_one_minus(betas: &[f32]) -> Vec<f32> {
    let mut acc = 1.0f64;
    betas
        .iter()
        .map(|&b| {
            acc *= (1.0f32 - b) as f64;
            acc as f32
        })
        .collect()
}

/// Rescales betas to zero terminal SNR (Lin et al. 2023, Algorithm 1), step by step in `f32`
/// as diffusers' `rescale_zero_terminal_snr`:
///
/// ```text
/// alphas_bar_sqrt = torch.cumprod(1.0 - betas, 0).sqrt()     # f64-accumulated cumprod; MKL sqrt
/// s0, sT = alphas_bar_sqrt[0], alphas_bar_sqrt[-1]
/// alphas_bar_sqrt -= sT                                       # exact (Sterbenz) or IEEE f32
/// alphas_bar_sqrt *= s0 / (s0 - sT)                           # 0-dim f32 ops, then IEEE f32 mul
/// alphas_bar = alphas_bar_sqrt ** 2                           # x * x
/// betas = 1 - cat([alphas_bar[:1], alphas_bar[1:] / alphas_bar[:-1]])   # IEEE f32 div and sub
/// ```
///
/// Every step except the square root is a correctly rounded `f32` operation in PyTorch (checked
/// op by op against torch 2.15.0 on the CPU: `cumprod`, `-=`, `*=`, `**2`, the division and
/// `1 - t` agree bit for bit with scalar IEEE emulation, while `sqrt()` does not); the
/// square root goes through MKL (emulated by `torch_sqrt`). With the
/// correctly rounded root, the
/// zero-SNR `squaredcos_cap_v2` table had the wrong `ᾱ₀ = ((s0 − sT)·s0/(s0 − sT))²`, which
/// decides DDIM's last step; with the MKL refinement `ᾱ₀` matches the oracle for all three
/// zero-SNR tables (linear / scaled_linear / squaredcos_cap_v2 from 0.00085 to 0.012). Later
/// betas still differ by an `f32` rounding of `ᾱ_t/ᾱ_{t−1}` (361 / 157 / 180 of 1000, against
/// 321 / 289 / 360 with the correctly rounded root), and through the cumulative product most
/// `ᾱ_t` by an ulp or so, because the oracle machine's vendor-specific `rsqrtps` estimate cannot
/// be reproduced portably. The DDIM oracle trajectories on these tables are then within ~1e-6
/// relative, like the others (the last step of `squaredcos_cap_v2` + `sample` prediction was off
/// by 1.6e-5 with the correctly rounded root, and is within 3e-8 now).
pub fn rescale_zero_terminal_snr(betas: &[f32]) -> Vec<f32> {
    let cumprod = cumprod_one_minus(betas);
    let sqrt: Vec<f32> = cumprod.iter().map(|&a| torch_sqrt(a)).collect();
    let a0 = sqrt[0];
    let at = sqrt[sqrt.len() - 1];
    let scale = a0 / (a0 - at);
    let bar: Vec<f32> = sqrt
        .iter()
        .map(|&s| {
            let v = (s - at) * scale;
            v * v
        })
        .collect();
    let mut out = Vec::with_capacity(bar.len());
    out.push(1.0 - bar[0]);
    for i in 1..bar.len() {
        out.push(1.0 - bar[i] / bar[i - 1]);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn reference_values() {
        // Values from shared/reference/algorithms.md §1.1.
        let lin = NoiseSchedule::new(&BetaConfig::sd(BetaSchedule::Linear)).unwrap();
        assert!((lin.alphas_cumprod[999] - 0.001_578_96).abs() < 1e-7);
        let sl = NoiseSchedule::new(&BetaConfig::sd(BetaSchedule::ScaledLinear)).unwrap();
        assert!((sl.alphas_cumprod[999] - 0.004_660_1).abs() < 1e-7);
        assert!((sl.alphas_cumprod[0] - 0.99915).abs() < 1e-6);
    }

    #[test]
    fn zero_snr_ends_at_zero() {
        let cfg = BetaConfig {
            rescale_betas_zero_snr: true,
            ..BetaConfig::sd(BetaSchedule::ScaledLinear)
        };
        let s = NoiseSchedule::new(&cfg).unwrap();
        assert_eq!(s.alphas_cumprod[999], 0.0);
        assert!(s.alphas_cumprod[998] > 0.0);
    }

    #[test]
    fn bad_configs_name_the_field() {
        let bad = BetaConfig {
            beta_end: f64::NAN,
            ..BetaConfig::default()
        };
        assert!(
            NoiseSchedule::new(&bad)
                .unwrap_err()
                .to_string()
                .contains("beta_end")
        );
        let bad = BetaConfig {
            beta_start: -1.0,
            ..BetaConfig::default()
        };
        assert!(
            NoiseSchedule::new(&bad)
                .unwrap_err()
                .to_string()
                .contains("beta_start")
        );
        let bad = BetaConfig {
            num_train_timesteps: 0,
            ..BetaConfig::default()
        };
        assert!(
            NoiseSchedule::new(&bad)
                .unwrap_err()
                .to_string()
                .contains("num_train_timesteps")
        );
        let huge = BetaConfig {
            num_train_timesteps: 1 << 32,
            ..BetaConfig::default()
        };
        let err = NoiseSchedule::new(&huge).unwrap_err().to_string();
        assert!(
            err.contains("num_train_timesteps") && err.contains("at most"),
            "{err}"
        );
        let largest = BetaConfig {
            num_train_timesteps: MAX_TRAIN_TIMESTEPS,
            ..BetaConfig::default()
        };
        assert_eq!(
            NoiseSchedule::new(&largest).unwrap().num_train_timesteps(),
            MAX_TRAIN_TIMESTEPS
        );
    }

    fn schedules() -> impl Strategy<Value = BetaConfig> {
        (
            prop_oneof![
                Just(BetaSchedule::Linear),
                Just(BetaSchedule::ScaledLinear),
                Just(BetaSchedule::SquaredcosCapV2),
                Just(BetaSchedule::Sigmoid)
            ],
            1e-5f64..5e-3,
            5e-3f64..0.05,
            any::<bool>(),
            10usize..2000,
        )
            .prop_map(
                |(beta_schedule, beta_start, beta_end, zsnr, n)| BetaConfig {
                    num_train_timesteps: n,
                    beta_start,
                    beta_end,
                    beta_schedule,
                    trained_betas: None,
                    rescale_betas_zero_snr: zsnr,
                },
            )
    }

    proptest! {
        #[test]
        fn alphas_cumprod_strictly_decreasing(cfg in schedules()) {
            let s = NoiseSchedule::new(&cfg).unwrap();
            for w in s.alphas_cumprod.windows(2) {
                prop_assert!(w[1] < w[0], "{} !< {}", w[1], w[0]);
            }
            prop_assert!(s.alphas_cumprod.iter().all(|a| (0.0..1.0).contains(a)));
        }
    }
}
