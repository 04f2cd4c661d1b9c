//! # vdm-schedulers
//!
//! Noise schedules and samplers for diffusion models on [Burn](https://burn.dev), numerically
//! matching [diffusers](https://github.com/huggingface/diffusers) 0.42:
//!
//! - beta schedules `linear`, `scaled_linear`, `squaredcos_cap_v2`, `sigmoid`, rescaling to
//!   zero terminal SNR ([`schedule`]);
//! - timestep spacings `leading`, `trailing`, `linspace` with `steps_offset` ([`spacing`]);
//! - prediction types `epsilon`, `v_prediction`, `sample` and the conversions between them,
//!   including the angular form of v-prediction ([`prediction`]);
//! - the schedulers [`Ddim`], `DdimInverse`, `Ddpm`, `EulerDiscrete`, `EulerAncestralDiscrete`
//!   ("Euler a"), `HeunDiscrete`, `KDpm2Discrete`, `DpmSolverMultistep`, `UniPcMultistep` and `Lcm`
//!   behind one small [`Scheduler`] trait, built from a diffusers `scheduler_config.json` with
//!   [`from_config_json`].
//!
//! ```
//! use burn::tensor::{Device, Tensor};
//! use vdm_core::noise::{draw, NoNoise, SeededNoise};
//! use vdm_schedulers::{from_config_json, Scheduler};
//!
//! let json = r#"{
//!     "_class_name": "DDIMScheduler",
//!     "beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "linear",
//!     "clip_sample": false, "set_alpha_to_one": false, "steps_offset": 1,
//!     "timestep_spacing": "linspace"
//! }"#;
//! let mut scheduler = from_config_json(json).unwrap();
//! scheduler.set_timesteps(25).unwrap();
//!
//! let device = Device::flex();
//! let mut x: Tensor<5> = draw(&mut SeededNoise::new(0), [1, 4, 2, 8, 8], &device).unwrap();
//! for t in scheduler.timesteps().to_vec() {
//!     let x_in = scheduler.scale_model_input(x.clone(), t).unwrap();
//!     let eps = x_in.mul_scalar(0.1); // your model here
//!     x = scheduler.step(eps, t, x, &mut NoNoise).unwrap().prev_sample;
//! }
//! ```

#![warn(missing_docs)]

mod beta_sigmas;
pub mod config;
pub mod ddim;
pub mod ddim_inverse;
pub mod ddpm;
pub mod deis;
pub mod dpm_singlestep;
pub mod dpm_solver;
pub mod euler;
pub mod euler_ancestral;
pub mod heun;
pub mod k_dpm_2;
pub mod lcm;
pub mod options;
pub mod prediction;
pub mod schedule;
pub mod scheduler;
mod serde_defaults;
pub mod spacing;
pub mod tcd;
#[cfg(test)]
mod test_support;
pub mod threshold;
mod torch_sqrt;
pub mod unipc;

pub use config::{SchedulerConfig, from_config_json};
pub use ddim::{Ddim, DdimConfig};
pub use ddim_inverse::{DdimInverse, DdimInverseConfig};
pub use ddpm::{Ddpm, DdpmConfig};
pub use deis::{DeisMultistep, DeisMultistepConfig};
pub use dpm_singlestep::{DpmSolverSinglestep, DpmSolverSinglestepConfig};
pub use dpm_solver::{DpmSolverMultistep, DpmSolverMultistepConfig};
pub use euler::{EulerDiscrete, EulerDiscreteConfig};
pub use euler_ancestral::{EulerAncestralDiscrete, EulerAncestralDiscreteConfig};
pub use heun::{HeunDiscrete, HeunDiscreteConfig};
pub use k_dpm_2::{KDpm2Discrete, KDpm2DiscreteConfig};
pub use lcm::{Lcm, LcmConfig};
pub use options::{BetaSchedule, TimestepSpacing};
pub use schedule::{BetaConfig, NoiseSchedule};
pub use scheduler::{Scheduler, StepOutput};
pub use tcd::{Tcd, TcdConfig};
pub use unipc::{UniPcMultistep, UniPcMultistepConfig};
pub use vdm_core::PredictionType;
