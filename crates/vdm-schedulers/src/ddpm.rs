//! DDPMScheduler (placeholder: being implemented).

use serde::{Deserialize, Serialize};
use vdm_core::{Error, Result};

use crate::scheduler::Scheduler;

/// The fields of a diffusers `DDPMScheduler` config.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct DdpmConfig {}

impl DdpmConfig {
    /// Builds the scheduler, boxed.
    pub fn build_boxed(&self) -> Result<Box<dyn Scheduler>> {
        Err(Error::Unsupported("DDPMScheduler is not implemented yet".into()))
    }
}
