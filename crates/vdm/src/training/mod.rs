//! Training video diffusion models with Burn: vdm's own loop, used to train the embedded
//! Moving Shapes model (`examples/train.rs`, `docs/embedded-model.md`).
//!
//! - [`TrainConfig`]: the settings (AdamW with warm-up and cosine decay, global gradient-norm
//!   clipping, an EMA of the weights, classifier-free-guidance dropout, ε / v / x₀ targets with
//!   optional min-SNR-γ or capped SNR + 1 weighting, temporal-only fine-tuning, joint image + video steps);
//! - [`Objective`]: the denoising loss over a `vdm-schedulers` noise schedule;
//! - [`TrainingData`] and [`ShapesData`]: where batches come from;
//! - [`Trainer`]: the loop on Burn's autodiff device, with checkpoints that resume exactly;
//! - [`export`]: the trained model written as a diffusers-style folder that
//!   [`TextToVideoPipeline::from_dir`](crate::pipeline::TextToVideoPipeline::from_dir) loads
//!   like any other.

pub mod config;
pub mod data;
pub mod export;
pub mod objective;
pub mod params;
pub mod trainer;

pub use config::TrainConfig;
pub use data::{ShapesData, TrainingData};
pub use objective::{LossWeighting, NoisedBatch, Objective};
pub use trainer::{StepReport, Trainer};
