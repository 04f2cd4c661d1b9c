//! What a denoiser predicts.

use crate::{Error, Result};

/// The quantity a diffusion model is trained to predict (diffusers' `prediction_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum PredictionType {
    /// The noise `ε` (`"epsilon"`), e.g. SD 1.x, ModelScope, AnimateDiff.
    #[default]
    Epsilon,
    /// The velocity `v = α·ε − σ·x₀` (`"v_prediction"`, Salimans & Ho 2022), e.g. ZeroScope v2 XL.
    VPrediction,
    /// The clean sample `x₀` (`"sample"`).
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

impl serde::Serialize for PredictionType {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

/// Deserialises from the diffusers string; an unknown string is an error naming
/// `prediction_type`.
impl<'de> serde::Deserialize<'de> for PredictionType {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let s = <String as serde::Deserialize>::deserialize(d)?;
        Self::parse(&s).map_err(serde::de::Error::custom)
    }
}
