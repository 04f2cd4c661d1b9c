//! Clipping and dynamic thresholding of the predicted clean sample `x̂₀`
//! (Saharia et al. 2022, "Imagen", §2.3; diffusers' `_threshold_sample`).

use burn::tensor::{Tensor, TensorData};
use serde::{Deserialize, Serialize};
use vdm_core::error::ensure_positive;
use vdm_core::readback::read_f32;
use vdm_core::{Error, Result};

/// The `x̂₀` clipping fields of DDIM / DDPM / LCM / DPM-Solver configs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SampleClipping {
    /// Clamp `x̂₀` to `±clip_sample_range` (ignored when `thresholding` is on).
    pub clip_sample: bool,
    /// The clamp range of `clip_sample`.
    pub clip_sample_range: f64,
    /// Dynamic thresholding (pixel-space models only; not for latent diffusion).
    pub thresholding: bool,
    /// The quantile of `|x̂₀|` used as the threshold.
    pub dynamic_thresholding_ratio: f64,
    /// The largest threshold.
    pub sample_max_value: f64,
}

impl Default for SampleClipping {
    fn default() -> Self {
        Self {
            clip_sample: false,
            clip_sample_range: 1.0,
            thresholding: false,
            dynamic_thresholding_ratio: 0.995,
            sample_max_value: 1.0,
        }
    }
}

impl SampleClipping {
    /// Checks the fields, naming the first bad one.
    pub fn validate(&self) -> Result<()> {
        ensure_positive("clip_sample_range", self.clip_sample_range)?;
        ensure_positive("sample_max_value", self.sample_max_value)?;
        let r = self.dynamic_thresholding_ratio;
        if !(r.is_finite() && (0.0..=1.0).contains(&r)) {
            return Err(Error::invalid(
                "dynamic_thresholding_ratio",
                format!("must be in [0, 1], got {r}"),
            ));
        }
        Ok(())
    }

    /// The clamp bound of [`SampleClipping::apply`] when it works element by element:
    /// `clip_sample_range` with `clip_sample`, infinity (the identity) with neither option;
    /// `None` with dynamic thresholding (a per-batch-item quantile).
    pub fn pointwise_bound(&self) -> Option<f32> {
        if self.thresholding {
            None
        } else if self.clip_sample {
            Some(self.clip_sample_range as f32)
        } else {
            Some(f32::INFINITY)
        }
    }

    /// Applies thresholding, else clipping, else nothing.
    pub fn apply(&self, x0: Tensor<5>) -> Result<Tensor<5>> {
        if self.thresholding {
            dynamic_threshold(x0, self.dynamic_thresholding_ratio, self.sample_max_value)
        } else if self.clip_sample {
            let r = self.clip_sample_range as f32;
            Ok(x0.clamp(-r, r))
        } else {
            Ok(x0)
        }
    }
}

/// Dynamic thresholding: per batch item, `s = clamp(quantile(|x|, ratio), 1, max)`, then
/// `clamp(x, −s, s)/s`. The quantile is computed on the host with `torch.quantile`'s linear
/// interpolation.
pub fn dynamic_threshold(x0: Tensor<5>, ratio: f64, max_value: f64) -> Result<Tensor<5>> {
    let dims = x0.dims();
    let batch = dims[0];
    let per_item = x0.shape().num_elements() / batch;
    let values = read_f32(x0.clone(), "x0 for dynamic thresholding")?;
    let thresholds: Vec<f32> = values
        .chunks(per_item)
        .map(|item| {
            let mut abs: Vec<f32> = item.iter().map(|v| v.abs()).collect();
            abs.sort_by(f32::total_cmp);
            let pos = ratio * (abs.len() - 1) as f64;
            let lo = pos.floor() as usize;
            let hi = pos.ceil() as usize;
            let frac = (pos - lo as f64) as f32;
            let q = abs[lo] + (abs[hi] - abs[lo]) * frac;
            q.clamp(1.0, max_value as f32)
        })
        .collect();
    let s = Tensor::<5>::from_data(
        TensorData::new(thresholds, [batch, 1, 1, 1, 1]),
        &x0.device(),
    );
    let neg = s.clone().neg();
    Ok(x0.max_pair(neg).min_pair(s.clone()) / s)
}
