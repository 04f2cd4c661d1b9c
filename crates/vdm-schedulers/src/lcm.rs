//! LCMScheduler (placeholder: being implemented).

use serde::{Deserialize, Serialize};
use vdm_core::{Error, Result};

use crate::scheduler::Scheduler;

/// The fields of a diffusers `LCMScheduler` config.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct LcmConfig {}

impl LcmConfig {
    /// Builds the scheduler, boxed.
    pub fn build_boxed(&self) -> Result<Box<dyn Scheduler>> {
        Err(Error::Unsupported("LCMScheduler is not implemented yet".into()))
    }
}
