//! What a denoiser predicts.

use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// The quantity a diffusion model is trained to predict (diffusers' `prediction_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub enum PredictionType {
    /// The noise `ε` (`"epsilon"`), e.g. SD 1.x, ModelScope, AnimateDiff.
    #[default]
    #[serde(rename = "epsilon")]
    Epsilon,
    /// The velocity `v = α·ε − σ·x₀` (`"v_prediction"`, Salimans & Ho 2022), e.g. ZeroScope v2 XL.
    #[serde(rename = "v_prediction")]
    VPrediction,
    /// The clean sample `x₀` (`"sample"`).
    #[serde(rename = "sample")]
    Sample,
}

impl PredictionType {
    /// The diffusers config string.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Epsilon => "epsilon",
            Self::VPrediction => "v_prediction",
            Self::Sample => "sample",
        }
    }

    /// Parses the diffusers config string.
    pub fn parse(value: &str) -> Result<Self> {
        match value {
            "epsilon" => Ok(Self::Epsilon),
            "v_prediction" => Ok(Self::VPrediction),
            "sample" => Ok(Self::Sample),
            other => Err(Error::unknown_variant(
                "prediction_type",
                other,
                &["epsilon", "v_prediction", "sample"],
            )),
        }
    }
}
