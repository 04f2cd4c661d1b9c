//! The Euler sampler of Karras et al. 2022 ("Elucidating the Design Space of Diffusion-Based
//! Generative Models", Algorithm 2 with its first-order step), mirroring diffusers'
//! `EulerDiscreteScheduler` (`src/diffusers/schedulers/scheduling_euler_discrete.py`).
//!
//! The sampler works in sigma space: a noisy sample is `x = x₀ + σ·ε` with
//! `σ_t = sqrt((1 − ᾱ_t)/ᾱ_t)`, the model sees `x/sqrt(σ² + 1)` (the variance-preserving sample)
//! and one step follows the probability-flow ODE `dx/dσ = (x − x̂₀)/σ` from `σ_i` to `σ_{i+1}`.
//!
//! Numerics follow diffusers: the training sigmas are computed in `f32` (torch), the inference
//! sigmas are interpolated / built in `f64` (numpy) and cast to `f32`, timesteps are `f32` and
//! may be fractional (`linspace` spacing is not rounded; Karras / exponential timesteps come from
//! a log-sigma interpolation), and the step arithmetic is `f32`.
//!
//! # Deviations from diffusers
//!
//! - [`EulerDiscrete::get_velocity`] uses the sigma at the given timestep; diffusers indexes
//!   `alphas_cumprod` by the timestep's position in the schedule (a bug).
//! - torch's `f32` square roots go through MKL on x86-64 and are not correctly rounded; they
//!   are modelled by MKL's portable kernel (`torch_sqrt`), which matches the oracle machine's
//!   vendor-specific kernel on ~93% of the training sigmas (the IEEE root: ~81%). The other
//!   training sigmas are 1 ulp off, which can move a Karras / exponential timestep (derived from
//!   them by log-sigma interpolation) by a few `f32` ulps. Logs of the training sigmas reproduce
//!   numpy's SIMD `np.log` exactly; `0.25·ln σ` (continuous timesteps) and the `exp` of
//!   `log_linear` interpolation are IEEE `f32` where torch uses MKL's.
//! - The `sigmoid` beta schedule is [`Error::Unsupported`] (diffusers' Euler raises too).
//!   `use_beta_sigmas` takes its quantiles from `statrs` where diffusers calls scipy.
//! - A `leading` timestep pushed past `T − 1` by `steps_offset` is an error (diffusers clamps its
//!   sigma); `trailing` keeps the first `N` timesteps where numpy's `arange` returns `N + 1`.
//! - [`Scheduler::scale_model_input`] takes `&self`, so it does not initialise the step index:
//!   it uses the current one, or else the position of its timestep (the same sigma).
//! - Timesteps are only valid after [`Scheduler::set_timesteps`]; there is no
//!   `set_begin_index`, custom `timesteps`/`sigmas`, or the legacy `"original_sample"` prediction
//!   type.

use burn::tensor::Tensor;
use serde::{Deserialize, Deserializer, Serialize};
use vdm_core::error::{ensure_non_negative, ensure_positive};
use vdm_core::layout::expect_same_shape;
use vdm_core::noise::draw;
use vdm_core::{Error, NoiseSource, PredictionType, Result};

use crate::beta_sigmas::beta_sigmas;
use crate::options::{
    BetaSchedule, FinalSigmasType, InterpolationType, TimestepSpacing, TimestepType,
};
use crate::prediction::{Scales, velocity};
use crate::schedule::{BetaConfig, NoiseSchedule, linspace_f32};
use crate::scheduler::{Scheduler, StepOutput};
use crate::spacing::{discrete_timesteps, np_linspace, validate_steps};
use crate::torch_sqrt::torch_sqrt;

/// `ᾱ` of the last training timestep with zero terminal SNR: diffusers overwrites the exact 0
/// with the smallest positive `f16` subnormal so that `σ_max = sqrt(2²⁴ − 1) ≈ 4096` is finite.
const ZERO_SNR_LAST_ALPHA_CUMPROD: f32 = 1.0 / 16_777_216.0;

/// Karras et al.'s `ρ` for the Karras sigma schedule.
const KARRAS_RHO: f64 = 7.0;

/// The fields of a diffusers `EulerDiscreteScheduler` `scheduler_config.json`, with its
/// defaults (linear betas 1e-4 → 0.02, `linspace` spacing, linear sigma interpolation, final
/// sigma 0).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct EulerDiscreteConfig {
    /// Training noise schedule (`sigmoid` is rejected, as diffusers' Euler does).
    #[serde(flatten)]
    pub betas: BetaConfig,
    /// What the model predicts.
    pub prediction_type: PredictionType,
    /// How sigmas are interpolated between training timesteps.
    pub interpolation_type: InterpolationType,
    /// Use the Karras et al. 2022 sigma schedule (`ρ = 7`).
    #[serde(deserialize_with = "bool_or_null")]
    pub use_karras_sigmas: bool,
    /// Use sigmas evenly spaced in `log σ`.
    #[serde(deserialize_with = "bool_or_null")]
    pub use_exponential_sigmas: bool,
    /// Use the beta-distribution sigma schedule (Lee et al. 2024): `Beta(0.6, 0.6)` quantiles
    /// between the smallest and largest sigma, timesteps from `sigma_to_t`.
    #[serde(deserialize_with = "bool_or_null")]
    pub use_beta_sigmas: bool,
    /// Smallest sigma of the Karras / exponential schedules (default: the last interpolated
    /// sigma).
    pub sigma_min: Option<f64>,
    /// Largest sigma of the Karras / exponential schedules (default: the first interpolated
    /// sigma).
    pub sigma_max: Option<f64>,
    /// How inference timesteps are spaced.
    pub timestep_spacing: TimestepSpacing,
    /// `continuous` (with `v_prediction` only, as in diffusers) feeds `0.25·ln σ` to the model.
    pub timestep_type: TimestepType,
    /// Added to `leading` timesteps.
    pub steps_offset: usize,
    /// The sigma appended after the last inference step.
    pub final_sigmas_type: FinalSigmasType,
}

impl Default for EulerDiscreteConfig {
    fn default() -> Self {
        Self {
            betas: BetaConfig::default(),
            prediction_type: PredictionType::Epsilon,
            interpolation_type: InterpolationType::Linear,
            use_karras_sigmas: false,
            use_exponential_sigmas: false,
            use_beta_sigmas: false,
            sigma_min: None,
            sigma_max: None,
            timestep_spacing: TimestepSpacing::Linspace,
            timestep_type: TimestepType::Discrete,
            steps_offset: 0,
            final_sigmas_type: FinalSigmasType::Zero,
        }
    }
}

/// diffusers types the `use_*_sigmas` flags `bool | None`; `null` means `false`.
pub(crate) fn bool_or_null<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<bool, D::Error> {
    Ok(Option::<bool>::deserialize(d)?.unwrap_or(false))
}

impl EulerDiscreteConfig {
    /// Checks the fields, naming the first bad one.
    pub fn validate(&self) -> Result<()> {
        self.betas.validate()?;
        if self.betas.trained_betas.is_none() && self.betas.beta_schedule == BetaSchedule::Sigmoid {
            return Err(Error::Unsupported(
                "`beta_schedule` \"sigmoid\" is not implemented by EulerDiscreteScheduler (use \
                 linear, scaled_linear or squaredcos_cap_v2)"
                    .into(),
            ));
        }
        let kinds = [
            self.use_karras_sigmas,
            self.use_exponential_sigmas,
            self.use_beta_sigmas,
        ];
        if kinds.iter().filter(|&&on| on).count() > 1 {
            return Err(Error::invalid(
                "use_karras_sigmas",
                "only one of use_karras_sigmas, use_exponential_sigmas, use_beta_sigmas can be \
                 set",
            ));
        }
        if let Some(v) = self.sigma_min {
            ensure_positive("sigma_min", v)?;
        }
        if let Some(v) = self.sigma_max {
            ensure_positive("sigma_max", v)?;
        }
        if let (Some(lo), Some(hi)) = (self.sigma_min, self.sigma_max)
            && lo > hi
        {
            return Err(Error::invalid(
                "sigma_min",
                format!("must not exceed sigma_max ({hi}), got {lo}"),
            ));
        }
        Ok(())
    }

    /// Builds the scheduler (without timesteps; call [`Scheduler::set_timesteps`]).
    pub fn build(&self) -> Result<EulerDiscrete> {
        EulerDiscrete::new(self.clone())
    }

    /// Builds the scheduler, boxed.
    pub fn build_boxed(&self) -> Result<Box<dyn Scheduler>> {
        Ok(Box::new(self.build()?))
    }
}

/// The Euler sampler (Karras et al. 2022), as diffusers' `EulerDiscreteScheduler`.
///
/// Deterministic by default; `s_churn > 0` adds noise before each step whose sigma lies in
/// `[s_tmin, s_tmax]` (Karras et al. 2022, Algorithm 2), which diffusers passes to `step()` and
/// this type holds as settings ([`EulerDiscrete::with_s_churn`] and friends).
///
/// The step index is state, as in diffusers: it is set from the timestep on the first
/// [`Scheduler::step`] (the second match if the timestep occurs twice) and then incremented;
/// [`Scheduler::set_timesteps`] resets it.
#[derive(Debug, Clone)]
pub struct EulerDiscrete {
    config: EulerDiscreteConfig,
    /// The training schedule, `ᾱ_{T−1}` patched to 2⁻²⁴ with zero terminal SNR.
    schedule: NoiseSchedule,
    /// `σ_t` per training timestep (ascending in `t`), in `f32` with torch's square root.
    train_sigmas: Vec<f32>,
    /// `ln σ_t` in `f32` (numpy's `np.log` on the `f32` table), for `sigma → t`.
    pub(crate) log_sigmas: Vec<f32>,
    timesteps: Vec<f64>,
    /// Inference sigmas, the final sigma appended.
    pub(crate) sigmas: Vec<f32>,
    pub(crate) step_index: Option<usize>,
    s_churn: f64,
    s_tmin: f64,
    s_tmax: f64,
    s_noise: f64,
}

impl EulerDiscrete {
    /// An Euler scheduler for `config`.
    pub fn new(config: EulerDiscreteConfig) -> Result<Self> {
        config.validate()?;
        let mut schedule = NoiseSchedule::new(&config.betas)?;
        if config.betas.rescale_betas_zero_snr
            && let Some(last) = schedule.alphas_cumprod.last_mut()
        {
            *last = ZERO_SNR_LAST_ALPHA_CUMPROD;
        }
        // torch, f32: ((1 − ᾱ)/ᾱ) ** 0.5.
        let train_sigmas: Vec<f32> = schedule
            .alphas_cumprod
            .iter()
            .map(|&a| torch_sqrt((1.0 - a) / a))
            .collect();
        if let Some(t) = train_sigmas.iter().position(|s| !s.is_finite()) {
            let field = if config.betas.trained_betas.is_some() {
                "trained_betas"
            } else {
                "beta_schedule"
            };
            return Err(Error::invalid(
                field,
                format!("alphas_cumprod reaches 0 at training timestep {t}, so sigma is infinite"),
            ));
        }
        let log_sigmas = train_sigmas.iter().map(|&s| np_log_f32(s)).collect();
        // Before `set_timesteps`, diffusers holds the reversed training sigmas and a final 0.
        let sigmas = train_sigmas
            .iter()
            .rev()
            .copied()
            .chain(std::iter::once(0.0))
            .collect();
        Ok(Self {
            config,
            schedule,
            train_sigmas,
            log_sigmas,
            timesteps: Vec::new(),
            sigmas,
            step_index: None,
            s_churn: 0.0,
            s_tmin: 0.0,
            s_tmax: f64::INFINITY,
            s_noise: 1.0,
        })
    }

    /// Sets the stochasticity `s_churn ≥ 0` (0, the default, is the deterministic sampler):
    /// `γ = min(s_churn/(len(σ) − 1), √2 − 1)`.
    pub fn with_s_churn(mut self, s_churn: f64) -> Result<Self> {
        self.s_churn = ensure_non_negative("s_churn", s_churn)?;
        Ok(self)
    }

    /// Churn is applied only at sigmas `≥ s_tmin` (default 0).
    pub fn with_s_tmin(mut self, s_tmin: f64) -> Result<Self> {
        self.s_tmin = ensure_non_negative("s_tmin", s_tmin)?;
        Ok(self)
    }

    /// Churn is applied only at sigmas `≤ s_tmax` (default `+∞`).
    pub fn with_s_tmax(mut self, s_tmax: f64) -> Result<Self> {
        if s_tmax.is_nan() || s_tmax < 0.0 {
            return Err(Error::invalid(
                "s_tmax",
                format!("must be >= 0 (or +inf), got {s_tmax}"),
            ));
        }
        self.s_tmax = s_tmax;
        Ok(self)
    }

    /// Scales the churn noise (default 1).
    pub fn with_s_noise(mut self, s_noise: f64) -> Result<Self> {
        self.s_noise = ensure_non_negative("s_noise", s_noise)?;
        Ok(self)
    }

    /// The configuration.
    pub fn config(&self) -> &EulerDiscreteConfig {
        &self.config
    }

    /// The inference sigmas, one per timestep plus the final sigma (diffusers' `sigmas`).
    pub fn sigmas(&self) -> &[f32] {
        &self.sigmas
    }

    /// The current step index (`None` before the first step after
    /// [`Scheduler::set_timesteps`]).
    pub fn step_index(&self) -> Option<usize> {
        self.step_index
    }

    /// The position of `timestep` in the schedule, as diffusers' `index_for_timestep`: timesteps
    /// are compared in `f32`, and when the timestep occurs more than once the second occurrence
    /// is taken. A timestep that is not in the schedule is an error.
    pub fn index_for_timestep(&self, timestep: f64) -> Result<usize> {
        index_for_timestep(&self.timesteps, timestep)
    }

    /// The velocity target `v = α·ε − σ_vp·x₀` at `timestep`, with the variance-preserving
    /// scales of the schedule's sigma `σ` at that timestep: `α = 1/sqrt(σ² + 1)`,
    /// `σ_vp = σ·α` (at a discrete timestep `t` these are `sqrt(ᾱ_t)` and `sqrt(1 − ᾱ_t)`).
    ///
    /// This deliberately differs from diffusers' `EulerDiscreteScheduler.get_velocity`, which
    /// indexes `alphas_cumprod` by the timestep's *position in the schedule* instead of by the
    /// timestep.
    ///
    /// # Shapes
    /// `sample` (the clean sample `x₀`) and `noise`: the same shape; output likewise.
    pub fn get_velocity(
        &self,
        sample: Tensor<5>,
        noise: Tensor<5>,
        timestep: f64,
    ) -> Result<Tensor<5>> {
        expect_same_shape("noise", &noise, &sample)?;
        let sigma = self.sigmas[self.index_for_timestep(timestep)?] as f64;
        let alpha = 1.0 / (sigma * sigma + 1.0).sqrt();
        Ok(velocity(
            sample,
            noise,
            Scales {
                alpha,
                sigma: sigma * alpha,
            },
        ))
    }

    /// Inference timesteps of the spacing, as diffusers' `f32` arrays (`linspace` unrounded).
    fn spaced_timesteps(&self, n: usize) -> Result<Vec<f32>> {
        let t = self.schedule.num_train_timesteps();
        Ok(match self.config.timestep_spacing {
            TimestepSpacing::Linspace => np_linspace(0.0, (t - 1) as f64, n)
                .into_iter()
                .rev()
                .map(|x| x as f32)
                .collect(),
            spacing => discrete_timesteps(spacing, n, t, self.config.steps_offset)?
                .into_iter()
                .map(|x| x as f32)
                .collect(),
        })
    }

    /// The configured `sigma_min` / `sigma_max`, else the ends of `sigmas`.
    fn sigma_range(&self, sigmas: &[f64]) -> (f64, f64) {
        let lo = self.config.sigma_min.unwrap_or(sigmas[sigmas.len() - 1]);
        let hi = self.config.sigma_max.unwrap_or(sigmas[0]);
        (lo, hi)
    }

    /// diffusers' `_sigma_to_t`: the (fractional) training timestep of `sigma` by linear
    /// interpolation in `ln σ`.
    pub(crate) fn sigma_to_t(&self, sigma: f64) -> f64 {
        let log_sigmas = &self.log_sigmas;
        let log_sigma = sigma.max(1e-10).ln();
        // argmax of the cumulative count of `ln σ_i ≤ ln σ` (its first maximum).
        let (mut count, mut best, mut low) = (0usize, 0usize, 0usize);
        for (i, &ls) in log_sigmas.iter().enumerate() {
            if log_sigma - ls as f64 >= 0.0 {
                count += 1;
            }
            if i == 0 || count > best {
                best = count;
                low = i;
            }
        }
        let low = low.min(log_sigmas.len() - 2);
        let (lo, hi) = (log_sigmas[low], log_sigmas[low + 1]);
        // numpy: f64 numerator, f32 denominator.
        let w = ((lo as f64 - log_sigma) / (lo - hi) as f64).clamp(0.0, 1.0);
        (1.0 - w) * low as f64 + w * (low + 1) as f64
    }
}

/// numpy's `float32` `np.log` on x86-64 with AVX2/FMA3 or AVX-512F (`simd_log_FLOAT` in
/// `numpy/_core/src/umath/loops_exponent_log.dispatch`): a rational minimax approximation with
/// up to 3.83 ulp error, so not the correctly rounded `f32::ln`. diffusers' Euler takes
/// `np.log` of the `f32` training sigmas, and a 1-ulp difference there moves the Karras
/// timesteps by several `f32` ulps.
pub(crate) fn np_log_f32(x: f32) -> f32 {
    const P: [f32; 6] = [0.0, 1.0, 2.1126776, 1.4800006, 0.38088378, 0.025899792];
    const Q: [f32; 6] = [
        1.0,
        2.6126776,
        2.453006,
        0.9864943,
        0.15464763,
        0.0058750953,
    ];
    if !(x > 0.0 && x.is_finite()) {
        return x.ln(); // 0 → −inf, +inf → +inf, NaN and negatives → NaN
    }
    // x = m·2^e with m in [0.5, 1) (subnormals scaled by 2^100 first).
    let (x, shift) = if x < f32::MIN_POSITIVE {
        (x * f32::from_bits(0x7180_0000), 100.0)
    } else {
        (x, 0.0)
    };
    let bits = x.to_bits();
    let mut e = ((bits >> 23) as i32 - 126) as f32 - shift;
    let mut m = f32::from_bits((bits & 0x007f_ffff) | (126 << 23));
    if m <= std::f32::consts::FRAC_1_SQRT_2 {
        m = m + m;
        e -= 1.0;
    }
    let m = m - 1.0;
    let horner = |c: &[f32; 6]| c[..5].iter().rev().fold(c[5], |acc, &k| acc.mul_add(m, k));
    e.mul_add(std::f32::consts::LN_2, horner(&P) / horner(&Q))
}

/// `numpy.interp(x, arange(len(fp)), fp)` in `f64`, clamping outside the range.
fn np_interp_arange(x: f64, fp: &[f64]) -> f64 {
    let last = fp.len() - 1;
    if x.is_nan() {
        return x;
    }
    if x <= 0.0 {
        return fp[0];
    }
    if x >= last as f64 {
        return fp[last];
    }
    let j = x.floor() as usize;
    if j as f64 == x {
        return fp[j];
    }
    let slope = fp[j + 1] - fp[j];
    let y = slope * (x - j as f64) + fp[j];
    if y.is_nan() {
        slope * (x - (j + 1) as f64) + fp[j + 1]
    } else {
        y
    }
}

impl Scheduler for EulerDiscrete {
    fn set_timesteps(&mut self, num_inference_steps: usize) -> Result<()> {
        let n = num_inference_steps;
        validate_steps(n, self.schedule.num_train_timesteps())?;
        let spaced = self.spaced_timesteps(n)?;
        let train: Vec<f64> = self.train_sigmas.iter().map(|&s| s as f64).collect();
        let mut sigmas: Vec<f64> = match self.config.interpolation_type {
            InterpolationType::Linear => spaced
                .iter()
                .map(|&t| np_interp_arange(t as f64, &train))
                .collect(),
            // diffusers: n + 1 log-spaced sigmas from the largest to the smallest training
            // sigma (torch, f32), then the final sigma: the last step ends at the smallest
            // training sigma, not at the final sigma.
            InterpolationType::LogLinear => {
                let (lo, hi) = (
                    self.log_sigmas[0],
                    self.log_sigmas[self.log_sigmas.len() - 1],
                );
                linspace_f32(hi, lo, n + 1)
                    .into_iter()
                    .map(|l| l.exp() as f64)
                    .collect()
            }
        };
        let mut timesteps: Vec<f64> = spaced.iter().map(|&t| t as f64).collect();
        if self.config.use_karras_sigmas
            || self.config.use_exponential_sigmas
            || self.config.use_beta_sigmas
        {
            let (lo, hi) = self.sigma_range(&sigmas);
            let ramp = np_linspace(0.0, 1.0, n);
            sigmas = if self.config.use_karras_sigmas {
                let (min_inv, max_inv) = (lo.powf(1.0 / KARRAS_RHO), hi.powf(1.0 / KARRAS_RHO));
                ramp.iter()
                    .map(|r| (max_inv + r * (min_inv - max_inv)).powf(KARRAS_RHO))
                    .collect()
            } else if self.config.use_beta_sigmas {
                beta_sigmas(lo, hi, n)
            } else {
                np_linspace(hi.ln(), lo.ln(), n)
                    .into_iter()
                    .map(f64::exp)
                    .collect()
            };
            timesteps = sigmas.iter().map(|&s| self.sigma_to_t(s)).collect();
        }
        let last = match self.config.final_sigmas_type {
            FinalSigmasType::Zero => 0.0,
            FinalSigmasType::SigmaMin => self.train_sigmas[0],
        };
        self.sigmas = sigmas
            .iter()
            .map(|&s| s as f32)
            .chain(std::iter::once(last))
            .collect();
        self.timesteps = if self.config.timestep_type == TimestepType::Continuous
            && self.config.prediction_type == PredictionType::VPrediction
        {
            self.sigmas[..self.sigmas.len() - 1]
                .iter()
                .map(|s| (0.25f32 * s.ln()) as f64)
                .collect()
        } else {
            timesteps.iter().map(|&t| t as f32 as f64).collect()
        };
        self.step_index = None;
        Ok(())
    }

    fn timesteps(&self) -> &[f64] {
        &self.timesteps
    }

    /// `σ_max` for `linspace` / `trailing` spacing, `sqrt(σ_max² + 1)` for `leading` (diffusers).
    fn init_noise_sigma(&self) -> f64 {
        let max = self.sigmas.iter().fold(f32::NEG_INFINITY, |m, &s| m.max(s));
        match self.config.timestep_spacing {
            TimestepSpacing::Linspace | TimestepSpacing::Trailing => max as f64,
            TimestepSpacing::Leading => torch_sqrt(max * max + 1.0) as f64,
        }
    }

    /// `x / sqrt(σ² + 1)`, with `σ` at the current step index (or, before the first step, at
    /// the position of `timestep`).
    fn scale_model_input(&self, sample: Tensor<5>, timestep: f64) -> Result<Tensor<5>> {
        let index = match self.step_index {
            Some(i) => i,
            None => self.index_for_timestep(timestep)?,
        };
        let sigma = *self.sigmas.get(index).ok_or_else(|| exhausted(index))?;
        Ok(sample.div_scalar(torch_sqrt(sigma * sigma + 1.0)))
    }

    fn step(
        &mut self,
        model_output: Tensor<5>,
        timestep: f64,
        sample: Tensor<5>,
        noise: &mut dyn NoiseSource,
    ) -> Result<StepOutput> {
        expect_same_shape("model_output", &model_output, &sample)?;
        let index = match self.step_index {
            Some(i) => i,
            None => self.index_for_timestep(timestep)?,
        };
        let (sigma, sigma_next) = match (self.sigmas.get(index), self.sigmas.get(index + 1)) {
            (Some(&s), Some(&next)) => (s, next),
            _ => return Err(exhausted(index)),
        };
        let churn_on = self.s_tmin as f32 <= sigma && sigma <= self.s_tmax as f32;
        let gamma = if churn_on {
            (self.s_churn / (self.sigmas.len() - 1) as f64).min(std::f64::consts::SQRT_2 - 1.0)
        } else {
            0.0
        };
        let sigma_hat = sigma * (gamma + 1.0) as f32;
        if sigma_hat == 0.0 {
            return Err(Error::NonFinite {
                what: "derivative".into(),
                reason: format!(
                    "sigma is 0 at step {index}: the Euler derivative divides by sigma"
                ),
            });
        }
        let mut sample = sample;
        if gamma > 0.0 {
            let z: Tensor<5> = draw(noise, sample.dims(), &sample.device())?;
            let eps = z.mul_scalar(self.s_noise as f32);
            sample = sample + eps.mul_scalar(torch_sqrt(sigma_hat * sigma_hat - sigma * sigma));
        }
        let pred_original = predict_x0(
            self.config.prediction_type,
            model_output,
            sample.clone(),
            sigma,
            sigma_hat,
        );
        let derivative = (sample.clone() - pred_original.clone()).div_scalar(sigma_hat);
        let prev_sample = sample + derivative.mul_scalar(sigma_next - sigma_hat);
        self.step_index = Some(index + 1);
        Ok(StepOutput {
            prev_sample,
            pred_original_sample: Some(pred_original),
        })
    }

    /// `x₀ + σ·ε`, `σ` at the position of `timestep` in the schedule.
    fn add_noise(&self, original: Tensor<5>, noise: Tensor<5>, timestep: f64) -> Result<Tensor<5>> {
        sigma_space_add_noise(&self.timesteps, &self.sigmas, original, noise, timestep)
    }

    fn prediction_type(&self) -> PredictionType {
        self.config.prediction_type
    }

    fn noise_schedule(&self) -> &NoiseSchedule {
        &self.schedule
    }

    fn is_sigma_space(&self) -> bool {
        true
    }

    fn box_clone(&self) -> Box<dyn Scheduler> {
        Box::new(self.clone())
    }
}

/// The clean-sample estimate of the Euler samplers from the model output at `sigma` (diffusers:
/// ε uses the churned `sigma_hat`, v the step's `sigma`; `sample` is the model output itself).
pub(crate) fn predict_x0(
    prediction_type: PredictionType,
    model_output: Tensor<5>,
    sample: Tensor<5>,
    sigma: f32,
    sigma_hat: f32,
) -> Tensor<5> {
    match prediction_type {
        PredictionType::Epsilon => sample - model_output.mul_scalar(sigma_hat),
        PredictionType::VPrediction => {
            let d = sigma * sigma + 1.0;
            model_output.mul_scalar(-sigma / torch_sqrt(d)) + sample.div_scalar(d)
        }
        PredictionType::Sample => model_output,
    }
}

/// diffusers' `index_for_timestep` of the sigma-space schedulers: the position of `timestep` in
/// `timesteps`, compared in `f32`; the second occurrence when it occurs more than once (so
/// that a run started mid-schedule does not skip a sigma).
///
/// # Errors
/// [`Error::InvalidConfig`] naming `num_inference_steps` when `timesteps` is empty (before
/// `set_timesteps`), or `timestep` when it is not in the schedule.
pub(crate) fn index_for_timestep(timesteps: &[f64], timestep: f64) -> Result<usize> {
    if timesteps.is_empty() {
        return Err(Error::invalid(
            "num_inference_steps",
            "call set_timesteps before using the scheduler",
        ));
    }
    let t = timestep as f32;
    let mut found = (0..timesteps.len()).filter(|&i| timesteps[i] as f32 == t);
    let first = found.next().ok_or_else(|| {
        Error::invalid(
            "timestep",
            format!("{timestep} is not one of the scheduler's timesteps"),
        )
    })?;
    Ok(found.next().unwrap_or(first))
}

/// The step index of a first step at `timestep` for the two-stage samplers: 0 when `timestep`
/// is the schedule's first (a run from the start), else [`index_for_timestep`]'s choice.
///
/// diffusers applies the second-occurrence rule on every first step; when rounding makes the
/// first timestep repeat (KDPM2's rounded Karras timesteps on a cosine schedule: 999 several
/// times), a run from the start then skips two sigmas, walks off the schedule and divides by a
/// zero sigma (NaN).
pub(crate) fn first_index(timesteps: &[f64], timestep: f64) -> Result<usize> {
    match timesteps.first() {
        Some(&first) if first as f32 == timestep as f32 => Ok(0),
        _ => index_for_timestep(timesteps, timestep),
    }
}

/// `x₀ + σ·ε` with the `σ` of `timestep`'s position in `timesteps` (the sigma-space
/// schedulers' `add_noise`; `sigmas` is aligned with `timesteps`).
///
/// # Errors
/// [`Error::Shape`] naming `noise`; [`index_for_timestep`]'s errors.
pub(crate) fn sigma_space_add_noise(
    timesteps: &[f64],
    sigmas: &[f32],
    original: Tensor<5>,
    noise: Tensor<5>,
    timestep: f64,
) -> Result<Tensor<5>> {
    expect_same_shape("noise", &noise, &original)?;
    let sigma = sigmas[index_for_timestep(timesteps, timestep)?];
    Ok(original + noise.mul_scalar(sigma))
}

/// The schedule position of a step at `timestep` for the multistep samplers: the running
/// `step_index`, or [`first_index`] on the first step; checked to be inside the schedule and to
/// be the position of `timestep` (a step called out of order is an error, where diffusers
/// silently ignores its `timestep` argument).
///
/// # Errors
/// [`Error::InvalidConfig`] naming `timestep` (or `num_inference_steps` before
/// `set_timesteps`).
pub(crate) fn step_position(
    timesteps: &[f64],
    step_index: Option<usize>,
    timestep: f64,
) -> Result<usize> {
    let n = timesteps.len();
    let i = match step_index {
        Some(i) => i,
        None => first_index(timesteps, timestep)?,
    };
    if i >= n {
        return Err(Error::invalid(
            "timestep",
            format!("all {n} steps have been taken; call set_timesteps to sample again"),
        ));
    }
    if timesteps[i] != timestep {
        return Err(Error::invalid(
            "timestep",
            format!(
                "step {i} of the schedule is at timestep {}, got {timestep}",
                timesteps[i]
            ),
        ));
    }
    Ok(i)
}

pub(crate) fn exhausted(index: usize) -> Error {
    Error::invalid(
        "timestep",
        format!("step index {index} is past the end of the schedule; call set_timesteps again"),
    )
}

#[cfg(test)]
mod tests;
