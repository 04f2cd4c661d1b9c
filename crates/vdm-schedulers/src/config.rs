//! Building schedulers from diffusers `scheduler_config.json` files.

use serde::{Deserialize, Serialize};
use vdm_core::{Error, Result};

use crate::ddim::DdimConfig;
use crate::ddim_inverse::DdimInverseConfig;
use crate::ddpm::DdpmConfig;
use crate::deis::DeisMultistepConfig;
use crate::dpm_singlestep::DpmSolverSinglestepConfig;
use crate::dpm_solver::DpmSolverMultistepConfig;
use crate::euler::EulerDiscreteConfig;
use crate::euler_ancestral::EulerAncestralDiscreteConfig;
use crate::heun::HeunDiscreteConfig;
use crate::k_dpm_2::KDpm2DiscreteConfig;
use crate::lcm::LcmConfig;
use crate::scheduler::Scheduler;
use crate::tcd::TcdConfig;
use crate::unipc::UniPcMultistepConfig;

/// A scheduler config of any supported class, tagged by diffusers' `_class_name`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "_class_name")]
pub enum SchedulerConfig {
    /// `DDIMScheduler`.
    #[serde(rename = "DDIMScheduler")]
    Ddim(DdimConfig),
    /// `DDIMInverseScheduler` (DDIM inversion: ascending timesteps, clean → noise).
    #[serde(rename = "DDIMInverseScheduler")]
    DdimInverse(DdimInverseConfig),
    /// `DDPMScheduler`.
    #[serde(rename = "DDPMScheduler")]
    Ddpm(DdpmConfig),
    /// `EulerDiscreteScheduler`.
    #[serde(rename = "EulerDiscreteScheduler")]
    EulerDiscrete(EulerDiscreteConfig),
    /// `EulerAncestralDiscreteScheduler` ("Euler a").
    #[serde(rename = "EulerAncestralDiscreteScheduler")]
    EulerAncestralDiscrete(EulerAncestralDiscreteConfig),
    /// `HeunDiscreteScheduler` (two model calls per step).
    #[serde(rename = "HeunDiscreteScheduler")]
    HeunDiscrete(HeunDiscreteConfig),
    /// `KDPM2DiscreteScheduler` (DPM-Solver-2, two model calls per step).
    #[serde(rename = "KDPM2DiscreteScheduler")]
    KDpm2Discrete(KDpm2DiscreteConfig),
    /// `DPMSolverMultistepScheduler`.
    #[serde(rename = "DPMSolverMultistepScheduler")]
    DpmSolverMultistep(DpmSolverMultistepConfig),
    /// `DPMSolverSinglestepScheduler`.
    #[serde(rename = "DPMSolverSinglestepScheduler")]
    DpmSolverSinglestep(DpmSolverSinglestepConfig),
    /// `UniPCMultistepScheduler`.
    #[serde(rename = "UniPCMultistepScheduler")]
    UniPcMultistep(UniPcMultistepConfig),
    /// `DEISMultistepScheduler`.
    #[serde(rename = "DEISMultistepScheduler")]
    DeisMultistep(DeisMultistepConfig),
    /// `LCMScheduler`.
    #[serde(rename = "LCMScheduler")]
    Lcm(LcmConfig),
    /// `TCDScheduler` (`γ = 0.3`; set another with [`crate::Tcd::with_gamma`]).
    #[serde(rename = "TCDScheduler")]
    Tcd(TcdConfig),
}

impl SchedulerConfig {
    /// The diffusers class names this crate can build.
    pub const CLASS_NAMES: &'static [&'static str] = &[
        "DDIMScheduler",
        "DDIMInverseScheduler",
        "DDPMScheduler",
        "EulerDiscreteScheduler",
        "EulerAncestralDiscreteScheduler",
        "HeunDiscreteScheduler",
        "KDPM2DiscreteScheduler",
        "DPMSolverMultistepScheduler",
        "DPMSolverSinglestepScheduler",
        "UniPCMultistepScheduler",
        "DEISMultistepScheduler",
        "LCMScheduler",
        "TCDScheduler",
    ];

    /// Parses a diffusers `scheduler_config.json`. Unknown keys (e.g. `_diffusers_version`)
    /// are ignored; unknown option strings and unknown classes are typed errors.
    pub fn from_json(json: &str) -> Result<Self> {
        let value = config_value(json)?;
        let class = value
            .get("_class_name")
            .and_then(|v| v.as_str())
            .ok_or_else(|| Error::invalid("_class_name", "missing from the scheduler config"))?;
        if !Self::CLASS_NAMES.contains(&class) {
            return Err(Error::unknown_variant(
                "_class_name",
                class,
                Self::CLASS_NAMES,
            ));
        }
        serde_json::from_value(value)
            .map_err(|e| Error::invalid("scheduler_config.json", e.to_string()))
    }

    /// Builds the scheduler (without timesteps; call [`Scheduler::set_timesteps`]).
    pub fn build(&self) -> Result<Box<dyn Scheduler>> {
        Ok(match self {
            SchedulerConfig::Ddim(c) => Box::new(c.build()?),
            SchedulerConfig::DdimInverse(c) => c.build_boxed()?,
            SchedulerConfig::Ddpm(c) => c.build_boxed()?,
            SchedulerConfig::EulerDiscrete(c) => c.build_boxed()?,
            SchedulerConfig::EulerAncestralDiscrete(c) => c.build_boxed()?,
            SchedulerConfig::HeunDiscrete(c) => c.build_boxed()?,
            SchedulerConfig::KDpm2Discrete(c) => c.build_boxed()?,
            SchedulerConfig::DpmSolverMultistep(c) => c.build_boxed()?,
            SchedulerConfig::DpmSolverSinglestep(c) => c.build_boxed()?,
            SchedulerConfig::UniPcMultistep(c) => c.build_boxed()?,
            SchedulerConfig::DeisMultistep(c) => c.build_boxed()?,
            SchedulerConfig::Lcm(c) => c.build_boxed()?,
            SchedulerConfig::Tcd(c) => c.build_boxed()?,
        })
    }
}

/// Parses a diffusers `scheduler_config.json` of any class into a JSON value, accepting the
/// bare `Infinity`, `-Infinity` and `NaN` that Python's `json.dumps` writes (they become the
/// strings `"inf"`, `"-inf"`, `"nan"`, which the config fields accept). For callers that edit a
/// config before building it (e.g. to switch `_class_name`, as diffusers' `from_config`).
///
/// ```
/// let value = vdm_schedulers::config::config_value(
///     r#"{"_class_name": "DPMSolverMultistepScheduler", "lambda_min_clipped": -Infinity}"#,
/// )?;
/// assert_eq!(value["lambda_min_clipped"], "-inf");
/// # Ok::<(), vdm_core::Error>(())
/// ```
///
/// # Errors
/// [`Error::File`] naming `scheduler_config.json` for malformed JSON.
pub fn config_value(json: &str) -> Result<serde_json::Value> {
    serde_json::from_str(&quote_python_floats(json)).map_err(|e| Error::File {
        path: "scheduler_config.json".into(),
        reason: e.to_string(),
    })
}

/// Python's `json.dumps` writes the non-standard tokens `Infinity`, `-Infinity` and `NaN`
/// (diffusers saves `lambda_min_clipped = -inf` that way). Quote them outside strings, so that
/// fields accepting them as strings (`"-inf"`) parse.
fn quote_python_floats(json: &str) -> String {
    let mut out = String::with_capacity(json.len() + 16);
    let mut in_string = false;
    let mut escaped = false;
    let mut rest = json;
    while let Some(c) = rest.chars().next() {
        if in_string {
            out.push(c);
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                in_string = false;
            }
            rest = &rest[c.len_utf8()..];
            continue;
        }
        if c == '"' {
            in_string = true;
        } else {
            let replaced = [
                ("-Infinity", "\"-inf\""),
                ("Infinity", "\"inf\""),
                ("NaN", "\"nan\""),
            ]
            .into_iter()
            .find(|(token, _)| rest.starts_with(token));
            if let Some((token, quoted)) = replaced {
                out.push_str(quoted);
                rest = &rest[token.len()..];
                continue;
            }
        }
        out.push(c);
        rest = &rest[c.len_utf8()..];
    }
    out
}

/// Parses a diffusers `scheduler_config.json` and builds the scheduler.
pub fn from_config_json(json: &str) -> Result<Box<dyn Scheduler>> {
    SchedulerConfig::from_json(json)?.build()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn python_float_tokens_are_quoted_outside_strings() {
        let j = r#"{"a": -Infinity, "b": "NaN -Infinity", "c": [Infinity, NaN]}"#;
        assert_eq!(
            quote_python_floats(j),
            r#"{"a": "-inf", "b": "NaN -Infinity", "c": ["inf", "nan"]}"#
        );
    }

    #[test]
    fn config_errors_name_the_field() {
        let e = from_config_json(r#"{"_class_name": "DDIMScheduler", "beta_schedule": "cubic"}"#)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("beta_schedule") && e.contains("scaled_linear"),
            "{e}"
        );
        let e = from_config_json(r#"{"_class_name": "PNDMScheduler"}"#)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("_class_name") && e.contains("DDIMScheduler"),
            "{e}"
        );
        let e = from_config_json(r#"{"beta_start": 0.1}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("_class_name"), "{e}");
        let e = from_config_json(r#"{"_class_name": "DDIMScheduler", "beta_end": -0.5}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("beta_end"), "{e}");
        let e = from_config_json(r#"{"_class_name": "DDIMScheduler", "prediction_type": "x0"}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("prediction_type"), "{e}");
    }

    #[test]
    fn missing_keys_take_the_scheduler_defaults() {
        // DDIM and DDPM default to clip_sample = true although SampleClipping defaults to false.
        for class in ["DDIMScheduler", "DDPMScheduler"] {
            let cfg =
                SchedulerConfig::from_json(&format!(r#"{{"_class_name": "{class}"}}"#)).unwrap();
            let clip = match cfg {
                SchedulerConfig::Ddim(c) => c.clipping.clip_sample,
                SchedulerConfig::Ddpm(c) => c.clipping.clip_sample,
                other => panic!("{other:?}"),
            };
            assert!(clip, "{class}");
        }
    }

    #[test]
    fn zero_and_too_many_steps_are_errors() {
        let mut s = from_config_json(r#"{"_class_name": "DDIMScheduler"}"#).unwrap();
        assert!(
            s.set_timesteps(0)
                .unwrap_err()
                .to_string()
                .contains("num_inference_steps")
        );
        assert!(
            s.set_timesteps(1001)
                .unwrap_err()
                .to_string()
                .contains("num_inference_steps")
        );
    }
}
