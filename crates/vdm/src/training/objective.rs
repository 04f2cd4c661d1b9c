//! The denoising objective: noise a clean batch at random timesteps, ask the model for its
//! prediction, and score it against the target of its prediction type.
//!
//! With `α_t = √ᾱ_t`, `σ_t = √(1 − ᾱ_t)` from the training schedule (`vdm-schedulers`'
//! [`NoiseSchedule`] and [`Scales`]): `x_t = α_t·x₀ + σ_t·ε`, and the target is `ε`
//! (epsilon), `v = α_t·ε − σ_t·x₀` (v-prediction, Salimans & Ho 2022) or `x₀` (sample), as
//! diffusers' training examples compute it (`noise_scheduler.add_noise`, `get_velocity`).
//! Each batch item has its own timestep, so the scales are `[B, 1, 1, 1, 1]` tensors.
//!
//! Loss weightings ([`LossWeighting`]) are defined by the weight `w(SNR)` they give the x₀ error,
//! `SNR_t = α_t² / σ_t²`; since the ε error is `√SNR` times the x₀ error and the v error
//! `√(SNR + 1)` times, the per-item loss of the model's own target is scaled by `w / SNR` for ε,
//! `w / (SNR + 1)` for v and `w` for x₀:
//! - min-SNR-γ (Hang et al. 2023, "Efficient Diffusion Training via Min-SNR Weighting
//!   Strategy"; diffusers' `compute_snr` in `train_text_to_image.py`): `w = min(SNR, γ)`;
//! - capped SNR + 1: `w = min(SNR + 1, γ)`, the v-loss's own weighting of x₀ (Salimans & Ho
//!   2022, "SNR+1") clipped like min-SNR. Unlike min-SNR it keeps a weight of 1 at the highest
//!   noise levels, where the caption decides what the video shows; min-SNR weighs them ~0.

use burn::tensor::{Device, Tensor, TensorData};
use serde::{Deserialize, Serialize};
use vdm_core::{Error, PredictionType, Result};
use vdm_schedulers::prediction::Scales;
use vdm_schedulers::schedule::NoiseSchedule;

/// How the per-item losses are weighted by noise level (see the [module docs](self)).
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LossWeighting {
    /// The plain mean squared error of the model's own target.
    #[default]
    Uniform,
    /// Min-SNR-γ: the x₀ error weighted by `min(SNR, γ)`.
    MinSnr {
        /// The clip γ (5 in the paper).
        gamma: f64,
    },
    /// The x₀ error weighted by `min(SNR + 1, γ)`.
    CappedSnrPlusOne {
        /// The cap γ.
        gamma: f64,
    },
}

impl LossWeighting {
    /// # Errors
    /// [`Error::InvalidConfig`] naming `gamma` when it is not finite and positive.
    pub fn validate(&self) -> Result<()> {
        match *self {
            Self::Uniform => Ok(()),
            Self::MinSnr { gamma } | Self::CappedSnrPlusOne { gamma } => {
                if gamma.is_finite() && gamma > 0.0 {
                    Ok(())
                } else {
                    Err(Error::invalid("gamma", "must be finite and > 0"))
                }
            }
        }
    }

    /// The weight of the x₀ error at `snr` (`None` for [`Uniform`](Self::Uniform), whose
    /// weight is 1 in the model's own target).
    fn x0_weight(&self, snr: f64) -> Option<f64> {
        match *self {
            Self::Uniform => None,
            Self::MinSnr { gamma } => Some(snr.min(gamma)),
            Self::CappedSnrPlusOne { gamma } => Some((snr + 1.0).min(gamma)),
        }
    }
}

/// The training objective over one noise schedule.
#[derive(Debug, Clone)]
pub struct Objective {
    schedule: NoiseSchedule,
    prediction_type: PredictionType,
    weighting: LossWeighting,
}

/// One noised batch: what the model sees and what it must predict.
#[derive(Debug, Clone)]
pub struct NoisedBatch {
    /// `x_t`, `[B, C, F, H, W]`.
    pub noisy: Tensor<5>,
    /// The target of the prediction type, `[B, C, F, H, W]`.
    pub target: Tensor<5>,
    /// The per-item loss weights (all 1 without min-SNR), length `B`.
    pub weights: Vec<f32>,
}

impl Objective {
    /// An objective on `schedule` for a model predicting `prediction_type`.
    ///
    /// # Errors
    /// [`LossWeighting::validate`]'s.
    pub fn new(
        schedule: NoiseSchedule,
        prediction_type: PredictionType,
        weighting: LossWeighting,
    ) -> Result<Self> {
        weighting.validate()?;
        Ok(Self {
            schedule,
            prediction_type,
            weighting,
        })
    }

    /// Number of training timesteps `T`: timesteps are drawn from `0..T`.
    pub fn num_train_timesteps(&self) -> usize {
        self.schedule.num_train_timesteps()
    }

    /// The signal and noise scales at timestep `t`.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] for a timestep outside `0..T`.
    pub fn scales(&self, t: usize) -> Result<Scales> {
        Ok(Scales::from_alpha_cumprod(
            self.schedule.alpha_cumprod(t as i64)?,
        ))
    }

    /// The loss weight of timestep `t` in the model's own target (1 for uniform weighting).
    /// Where `SNR = 0` (zero terminal SNR) an ε target carries no x₀ information and its
    /// weight is taken as 1.
    ///
    /// # Errors
    /// As [`scales`](Self::scales).
    pub fn weight(&self, t: usize) -> Result<f32> {
        let s = self.scales(t)?;
        let snr = if s.sigma == 0.0 {
            f64::INFINITY
        } else {
            (s.alpha * s.alpha) / (s.sigma * s.sigma)
        };
        let Some(w) = self.weighting.x0_weight(snr) else {
            return Ok(1.0);
        };
        let w = match self.prediction_type {
            PredictionType::Epsilon if snr == 0.0 => 1.0,
            PredictionType::Epsilon => w / snr,
            PredictionType::VPrediction => w / (snr + 1.0),
            PredictionType::Sample => w,
        };
        Ok(w as f32)
    }

    /// Noises `x0` with `noise` at the per-item `timesteps` and returns the model input, the
    /// target and the loss weights.
    ///
    /// # Shapes
    /// - `x0`, `noise`: `[B, C, F, H, W]`; `timesteps`: length `B`
    ///
    /// # Errors
    /// [`Error::Shape`] naming `noise` or `timesteps` when they do not match `x0`; a timestep
    /// outside `0..T`.
    pub fn noise(
        &self,
        x0: Tensor<5>,
        noise: Tensor<5>,
        timesteps: &[usize],
    ) -> Result<NoisedBatch> {
        let dims = x0.dims();
        if noise.dims() != dims {
            return Err(Error::shape("noise", format!("{dims:?}"), &noise.dims()));
        }
        if timesteps.len() != dims[0] {
            return Err(Error::shape(
                "timesteps",
                format!("one per batch item (B = {})", dims[0]),
                &[timesteps.len()],
            ));
        }
        let scales = timesteps
            .iter()
            .map(|&t| self.scales(t))
            .collect::<Result<Vec<_>>>()?;
        let device = x0.device();
        let column = |f: fn(&Scales) -> f64| per_item(scales.iter().map(f).collect(), &device);
        let alpha = column(|s| s.alpha);
        let sigma = column(|s| s.sigma);
        let noisy = x0.clone() * alpha.clone() + noise.clone() * sigma.clone();
        let target = match self.prediction_type {
            PredictionType::Epsilon => noise,
            PredictionType::VPrediction => noise * alpha - x0 * sigma,
            PredictionType::Sample => x0,
        };
        let weights = timesteps
            .iter()
            .map(|&t| self.weight(t))
            .collect::<Result<Vec<_>>>()?;
        Ok(NoisedBatch {
            noisy,
            target,
            weights,
        })
    }

    /// The weighted loss: the mean over items of `weight · mean((prediction − target)²)`.
    ///
    /// # Shapes
    /// - `prediction`, `target`: `[B, C, F, H, W]`; `weights`: length `B`; output: `[1]`
    pub fn loss(&self, prediction: Tensor<5>, target: Tensor<5>, weights: &[f32]) -> Tensor<1> {
        let [b, ..] = prediction.dims();
        let per_item = (prediction - target)
            .powi_scalar(2)
            .reshape([b as i32, -1])
            .mean_dim(1)
            .reshape([b]);
        let w = Tensor::<1>::from_data(TensorData::new(weights.to_vec(), [b]), &per_item.device());
        (per_item * w).mean()
    }
}

/// A `[B, 1, 1, 1, 1]` tensor of per-item values.
fn per_item(values: Vec<f64>, device: &Device) -> Tensor<5> {
    let n = values.len();
    let values: Vec<f32> = values.into_iter().map(|v| v as f32).collect();
    Tensor::from_data(TensorData::new(values, [n, 1, 1, 1, 1]), device)
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::Distribution;
    use vdm_schedulers::options::BetaSchedule;
    use vdm_schedulers::prediction::{add_noise, velocity};
    use vdm_schedulers::schedule::BetaConfig;

    fn objective(p: PredictionType, gamma: Option<f64>) -> Objective {
        let weighting = gamma.map_or(LossWeighting::Uniform, |gamma| LossWeighting::MinSnr {
            gamma,
        });
        weighted(p, weighting)
    }

    fn weighted(p: PredictionType, weighting: LossWeighting) -> Objective {
        let config = BetaConfig {
            beta_schedule: BetaSchedule::SquaredcosCapV2,
            ..BetaConfig::default()
        };
        Objective::new(NoiseSchedule::new(&config).unwrap(), p, weighting).unwrap()
    }

    #[test]
    fn targets_match_the_scheduler_conversions_per_item() {
        let device = Device::flex();
        let x0 = Tensor::<5>::random([2, 3, 2, 4, 4], Distribution::Normal(0.0, 1.0), &device);
        let eps = Tensor::<5>::random([2, 3, 2, 4, 4], Distribution::Normal(0.0, 1.0), &device);
        let ts = [10usize, 700];
        let o = objective(PredictionType::VPrediction, None);
        let batch = o.noise(x0.clone(), eps.clone(), &ts).unwrap();
        for (i, &t) in ts.iter().enumerate() {
            let s = o.scales(t).unwrap();
            let item = |x: &Tensor<5>| x.clone().narrow(0, i, 1);
            let want_noisy = add_noise(item(&x0), item(&eps), s);
            let want_v = velocity(item(&x0), item(&eps), s);
            let close =
                |a: Tensor<5>, b: Tensor<5>| (a - b).abs().max().into_scalar::<f32>() < 1e-6;
            assert!(close(item(&batch.noisy), want_noisy));
            assert!(close(item(&batch.target), want_v));
        }
        assert_eq!(batch.weights, vec![1.0, 1.0]);
        let eps_target = objective(PredictionType::Epsilon, None)
            .noise(x0.clone(), eps.clone(), &ts)
            .unwrap()
            .target;
        assert_eq!(eps_target.to_data(), eps.to_data());
    }

    #[test]
    fn min_snr_weights_follow_the_prediction_type() {
        let t = 100;
        let o = objective(PredictionType::Epsilon, Some(5.0));
        let s = o.scales(t).unwrap();
        let snr = s.alpha * s.alpha / (s.sigma * s.sigma);
        assert!(snr > 5.0);
        let near = |a: f32, b: f64| (a as f64 - b).abs() < 1e-6;
        assert!(near(o.weight(t).unwrap(), 5.0 / snr));
        let v = objective(PredictionType::VPrediction, Some(5.0));
        assert!(near(v.weight(t).unwrap(), 5.0 / (snr + 1.0)));
        let x = objective(PredictionType::Sample, Some(5.0));
        assert!(near(x.weight(t).unwrap(), 5.0));
        // Low SNR: the weights are not clipped (ε: 1).
        assert!(near(o.weight(990).unwrap(), 1.0));
        let bad = LossWeighting::MinSnr { gamma: 0.0 };
        let err = Objective::new(o.schedule.clone(), PredictionType::Epsilon, bad).unwrap_err();
        assert!(err.to_string().contains("gamma"));
    }

    #[test]
    fn capped_snr_plus_one_weighs_x0_by_min_of_snr_plus_one_and_gamma() {
        let capped = LossWeighting::CappedSnrPlusOne { gamma: 5.0 };
        let near = |a: f32, b: f64| (a as f64 - b).abs() < 1e-6 * b.max(1.0);
        for t in [0usize, 100, 400, 600, 800, 950, 999] {
            let v = weighted(PredictionType::VPrediction, capped);
            let s = v.scales(t).unwrap();
            let snr = s.alpha * s.alpha / (s.sigma * s.sigma);
            let w = (snr + 1.0).min(5.0);
            assert!(near(v.weight(t).unwrap(), w / (snr + 1.0)), "t = {t}");
            let x = weighted(PredictionType::Sample, capped);
            assert!(near(x.weight(t).unwrap(), w), "t = {t}");
            let e = weighted(PredictionType::Epsilon, capped);
            assert!(near(e.weight(t).unwrap(), w / snr), "t = {t}");
            // Never below the plain x₀ weight of 1, never above γ.
            assert!((1.0..=5.0).contains(&w));
        }
        // At high noise v's weight is 1 (the plain v-loss), at low noise it is clipped.
        let v = weighted(PredictionType::VPrediction, capped);
        assert!(near(v.weight(999).unwrap(), 1.0));
        assert!(v.weight(10).unwrap() < 0.05);
        let bad = LossWeighting::CappedSnrPlusOne { gamma: f64::NAN };
        assert!(bad.validate().unwrap_err().to_string().contains("gamma"));
    }

    #[test]
    fn the_loss_is_the_weighted_mean_of_item_mses_and_bad_shapes_are_named() {
        let device = Device::flex();
        let o = objective(PredictionType::Epsilon, None);
        let p = Tensor::<5>::ones([2, 1, 1, 1, 2], &device);
        let t = Tensor::<5>::from_data(
            TensorData::new(vec![0.0f32, 1.0, 3.0, 1.0], [2, 1, 1, 1, 2]),
            &device,
        );
        // Item MSEs 0.5 and 2.0, weights 2 and 1: (1 + 2) / 2.
        let loss: f32 = o.loss(p, t, &[2.0, 1.0]).into_scalar();
        assert!((loss - 1.5).abs() < 1e-6);
        let x = Tensor::<5>::zeros([2, 1, 1, 1, 2], &device);
        let err = o.noise(x.clone(), x.clone(), &[1]).unwrap_err();
        assert!(err.to_string().contains("timesteps"));
        let err = o.noise(x.clone(), x.narrow(0, 0, 1), &[1, 2]).unwrap_err();
        assert!(err.to_string().contains("noise"));
    }
}
