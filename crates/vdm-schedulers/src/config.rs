//! Building schedulers from diffusers `scheduler_config.json` files.

use serde::{Deserialize, Serialize};
use vdm_core::{Error, Result};

use crate::ddim::DdimConfig;
use crate::ddpm::DdpmConfig;
use crate::dpm_solver::DpmSolverMultistepConfig;
use crate::euler::EulerDiscreteConfig;
use crate::lcm::LcmConfig;
use crate::scheduler::Scheduler;

/// A scheduler config of any supported class, tagged by diffusers' `_class_name`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "_class_name")]
pub enum SchedulerConfig {
    /// `DDIMScheduler`.
    #[serde(rename = "DDIMScheduler")]
    Ddim(DdimConfig),
    /// `DDPMScheduler`.
    #[serde(rename = "DDPMScheduler")]
    Ddpm(DdpmConfig),
    /// `EulerDiscreteScheduler`.
    #[serde(rename = "EulerDiscreteScheduler")]
    EulerDiscrete(EulerDiscreteConfig),
    /// `DPMSolverMultistepScheduler`.
    #[serde(rename = "DPMSolverMultistepScheduler")]
    DpmSolverMultistep(DpmSolverMultistepConfig),
    /// `LCMScheduler`.
    #[serde(rename = "LCMScheduler")]
    Lcm(LcmConfig),
}

impl SchedulerConfig {
    /// The diffusers class names this crate can build.
    pub const CLASS_NAMES: &'static [&'static str] = &[
        "DDIMScheduler",
        "DDPMScheduler",
        "EulerDiscreteScheduler",
        "DPMSolverMultistepScheduler",
        "LCMScheduler",
    ];

    /// Parses a diffusers `scheduler_config.json`. Unknown keys (e.g. `_diffusers_version`)
    /// are ignored; unknown option strings and unknown classes are typed errors.
    pub fn from_json(json: &str) -> Result<Self> {
        let value: serde_json::Value = serde_json::from_str(json).map_err(|e| Error::File {
            path: "scheduler_config.json".into(),
            reason: e.to_string(),
        })?;
        let class = value
            .get("_class_name")
            .and_then(|v| v.as_str())
            .ok_or_else(|| Error::invalid("_class_name", "missing from the scheduler config"))?;
        if !Self::CLASS_NAMES.contains(&class) {
            return Err(Error::unknown_variant("_class_name", class, Self::CLASS_NAMES));
        }
        serde_json::from_value(value).map_err(|e| Error::invalid("scheduler_config.json", e.to_string()))
    }

    /// Builds the scheduler (without timesteps; call [`Scheduler::set_timesteps`]).
    pub fn build(&self) -> Result<Box<dyn Scheduler>> {
        Ok(match self {
            SchedulerConfig::Ddim(c) => Box::new(c.build()?),
            SchedulerConfig::Ddpm(c) => c.build_boxed()?,
            SchedulerConfig::EulerDiscrete(c) => c.build_boxed()?,
            SchedulerConfig::DpmSolverMultistep(c) => c.build_boxed()?,
            SchedulerConfig::Lcm(c) => c.build_boxed()?,
        })
    }
}

/// Parses a diffusers `scheduler_config.json` and builds the scheduler.
pub fn from_config_json(json: &str) -> Result<Box<dyn Scheduler>> {
    SchedulerConfig::from_json(json)?.build()
}
