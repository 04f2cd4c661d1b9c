//! The training loop: one optimiser step at a time, checkpoints that resume bit for bit.

use std::collections::HashMap;
use std::path::Path;

use burn::module::Module;
use burn::optim::{AdamWConfig, GradientsParams, ModuleOptimizer};
use burn::tensor::{Device, Tensor, TensorData};
use serde::{Deserialize, Serialize};
use vdm_core::readback::{read_data, read_f32_scalar};
use vdm_core::{
    Conditioning, Denoiser, DenoiserInput, Error, NoiseSource, Result, SeededNoise, Timesteps,
};
use vdm_models::clip::{PromptEncoder, PromptOptions};
use vdm_schedulers::schedule::NoiseSchedule;

use super::config::TrainConfig;
use super::data::TrainingData;
use super::objective::LossWeighting;
use super::objective::Objective;
use super::params::{clip_grad_norm, ema_update, keep_only};

/// Stream offsets of a step's random numbers, so that adding a draw to one part never shifts
/// another.
const DATA_STREAM: u64 = 1;
const TRAIN_STREAM: u64 = 2;

/// What one step did.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepReport {
    /// The step just taken (1-based: the number of steps done).
    pub step: usize,
    /// The weighted loss of the batch.
    pub loss: f32,
    /// The learning rate used.
    pub learning_rate: f64,
    /// The global gradient norm before clipping.
    pub grad_norm: f32,
    /// Whether it was an image step of joint training.
    pub image_step: bool,
}

/// `training/state.json` of a checkpoint.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct TrainState {
    step: usize,
    config: TrainConfig,
}

impl TrainState {
    /// Parses `state.json`, also as written before [`LossWeighting`] replaced the config's
    /// `min_snr_gamma` (`null`: uniform, a number: min-SNR-γ), so older runs still resume.
    fn from_json_str(text: &str) -> serde_json::Result<Self> {
        let mut value: serde_json::Value = serde_json::from_str(text)?;
        if let Some(config) = value.get_mut("config").and_then(|c| c.as_object_mut())
            && !config.contains_key("loss_weighting")
            && let Some(gamma) = config.remove("min_snr_gamma")
        {
            let weighting = match gamma.as_f64() {
                Some(gamma) => LossWeighting::MinSnr { gamma },
                None => LossWeighting::Uniform,
            };
            config.insert("loss_weighting".into(), serde_json::to_value(weighting)?);
        }
        serde_json::from_value(value)
    }
}

/// Trains a video denoiser `M` (any Burn module implementing [`Denoiser`], e.g.
/// [`UNet3DConditionModel`](vdm_models::unet3d::UNet3DConditionModel)) on captioned videos
/// from a [`TrainingData`], with a frozen text encoder.
///
/// Every step draws its data, timesteps, noise and caption dropout from generators seeded by
/// `(seed, step)`; with the optimiser state and the weights saved by
/// [`save_checkpoint`](Self::save_checkpoint), [`resume`](Self::resume) continues exactly where
/// the run stopped.
pub struct Trainer<M: Module + Denoiser> {
    config: TrainConfig,
    model: M,
    ema: Option<M>,
    optimizer: ModuleOptimizer,
    objective: Objective,
    prompts: PromptEncoder,
    embeddings: HashMap<String, TensorData>,
    device: Device,
    train_device: Device,
    step: usize,
}

impl<M: Module + Denoiser> std::fmt::Debug for Trainer<M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Trainer")
            .field("config", &self.config)
            .field("step", &self.step)
            .finish_non_exhaustive()
    }
}

impl<M: Module + Denoiser> Trainer<M> {
    /// A trainer for `model` (its initial weights, on `device`), which trains on
    /// `device.autodiff()` over the noise `schedule`, with the [`Objective`] of the config's
    /// prediction type and loss weighting.
    ///
    /// # Errors
    /// [`TrainConfig::validate`]'s errors.
    pub fn new(
        model: M,
        prompts: PromptEncoder,
        schedule: NoiseSchedule,
        config: TrainConfig,
        device: &Device,
    ) -> Result<Self> {
        config.validate()?;
        let objective = Objective::new(schedule, config.prediction_type, config.loss_weighting)?;
        let train_device = device.clone().autodiff();
        let model = model.fork(&train_device).train();
        let ema = config.ema_decay.map(|_| model.valid());
        let optimizer = AdamWConfig::new()
            .with_weight_decay(config.weight_decay)
            .init();
        Ok(Self {
            config,
            model,
            ema,
            optimizer,
            objective,
            prompts,
            embeddings: HashMap::new(),
            device: device.clone(),
            train_device,
            step: 0,
        })
    }

    /// The settings.
    pub fn config(&self) -> &TrainConfig {
        &self.config
    }

    /// Steps done so far.
    pub fn steps_done(&self) -> usize {
        self.step
    }

    /// The weights to sample with, on the inference device: the EMA if there is one, else the
    /// current weights.
    pub fn inference_model(&self) -> M {
        match &self.ema {
            Some(ema) => ema.clone(),
            None => self.model.valid(),
        }
    }

    /// The current (non-averaged) weights, on the inference device.
    pub fn current_model(&self) -> M {
        self.model.valid()
    }

    /// Runs one optimiser step.
    ///
    /// # Errors
    /// The data source's, the text encoder's and the model's errors;
    /// [`Error::InvalidConfig`] naming `loss` when the loss is not finite (the step is then not
    /// applied).
    pub fn step(&mut self, data: &dyn TrainingData) -> Result<StepReport> {
        let step = self.step;
        let seed = self.config.seed;
        let image_step = self.config.is_image_step(step);
        let (count, frames) = if image_step {
            (self.config.image_batch_size, 1)
        } else {
            (self.config.batch_size, self.config.frames)
        };
        let mut data_rng = SeededNoise::stream(seed, (step as u64) << 2 | DATA_STREAM);
        let mut rng = SeededNoise::stream(seed, (step as u64) << 2 | TRAIN_STREAM);
        let (x0, captions) = data.sample(&mut data_rng, count, frames, &self.train_device)?;
        let t_max = self.objective.num_train_timesteps();
        let timesteps: Vec<usize> = (0..count)
            .map(|_| ((rng.uniform() * t_max as f64) as usize).min(t_max - 1))
            .collect();
        let captions: Vec<String> = captions
            .into_iter()
            .map(|c| {
                if rng.uniform() < self.config.cfg_dropout {
                    String::new()
                } else {
                    c
                }
            })
            .collect();
        let noise = Tensor::<5>::from_data(rng.normal(&x0.dims())?, &self.train_device);
        let context = self.context(&captions)?;
        let batch = self.objective.noise(x0, noise, &timesteps)?;
        let prediction = self.model.predict(DenoiserInput::new(
            batch.noisy,
            Timesteps::PerItem(timesteps.iter().map(|&t| t as f64).collect()),
            Conditioning::Shared(context),
        ))?;
        let loss = self
            .objective
            .loss(prediction, batch.target, &batch.weights);
        let loss_value = read_f32_scalar(loss.clone(), "the training loss")?;
        if !loss_value.is_finite() {
            return Err(Error::invalid(
                "loss",
                format!("not finite ({loss_value}) at step {}", step + 1),
            ));
        }
        let mut grads = GradientsParams::from_grads(loss.backward(), &self.model);
        if self.config.temporal_only {
            keep_only(&self.model, &mut grads, &self.config.temporal_patterns);
        }
        let grad_norm = clip_grad_norm(&self.model, &mut grads, self.config.grad_clip_norm)?;
        let learning_rate = self.config.learning_rate_at(step);
        let model = self.model.clone();
        self.model = self.optimizer.step(learning_rate, model, grads);
        if let (Some(decay), Some(ema)) = (self.config.ema_decay, self.ema.take()) {
            self.ema = Some(ema_update(ema, &self.model, decay));
        }
        self.step += 1;
        Ok(StepReport {
            step: self.step,
            loss: loss_value,
            learning_rate,
            grad_norm,
            image_step,
        })
    }

    /// The text embeddings `[B, S, D]` of the captions on the training device (computed once
    /// per distinct caption by the frozen encoder).
    fn context(&mut self, captions: &[String]) -> Result<Tensor<3>> {
        let mut parts = Vec::with_capacity(captions.len());
        for caption in captions {
            if !self.embeddings.contains_key(caption) {
                let embedding = self.prompts.embed(caption, PromptOptions::default())?;
                self.embeddings.insert(
                    caption.clone(),
                    read_data(embedding, "a caption's embedding")?,
                );
            }
            parts.push(Tensor::<3>::from_data(
                self.embeddings[caption].clone(),
                &self.train_device,
            ));
        }
        Ok(Tensor::cat(parts, 0))
    }

    /// Saves what [`resume`](Self::resume) needs under `dir/training/`: the weights, the EMA
    /// and the optimiser state (burnpack files, which keep parameter ids), and the step with
    /// the settings (`state.json`).
    ///
    /// # Errors
    /// [`Error::File`] naming the file that cannot be written.
    pub fn save_checkpoint(&self, dir: impl AsRef<Path>) -> Result<()> {
        let dir = dir.as_ref().join("training");
        create_dir(&dir)?;
        let file_error = |name: &str, e: &dyn std::fmt::Display| Error::File {
            path: dir.join(name).display().to_string(),
            reason: e.to_string(),
        };
        self.model
            .valid()
            .save_file(dir.join("model.bpk"))
            .map_err(|e| file_error("model.bpk", &e))?;
        if let Some(ema) = &self.ema {
            ema.clone()
                .save_file(dir.join("ema.bpk"))
                .map_err(|e| file_error("ema.bpk", &e))?;
        }
        self.optimizer
            .save(dir.join("optimizer.bpk"))
            .map_err(|e| file_error("optimizer.bpk", &e))?;
        let state = TrainState {
            step: self.step,
            config: self.config.clone(),
        };
        let text = serde_json::to_string_pretty(&state).expect("plain JSON");
        std::fs::write(dir.join("state.json"), text).map_err(|e| file_error("state.json", &e))
    }

    /// Continues the run saved in `dir/training/` by [`save_checkpoint`](Self::save_checkpoint).
    /// `model` must be built with the same architecture (its weights are replaced).
    ///
    /// # Errors
    /// [`Error::File`] naming a missing or unreadable checkpoint file.
    pub fn resume(
        model: M,
        prompts: PromptEncoder,
        schedule: NoiseSchedule,
        dir: impl AsRef<Path>,
        device: &Device,
    ) -> Result<Self> {
        let dir = dir.as_ref().join("training");
        let file_error = |name: &str, e: &dyn std::fmt::Display| Error::File {
            path: dir.join(name).display().to_string(),
            reason: e.to_string(),
        };
        let text = std::fs::read_to_string(dir.join("state.json"))
            .map_err(|e| file_error("state.json", &e))?;
        let state = TrainState::from_json_str(&text).map_err(|e| file_error("state.json", &e))?;
        let template = model.clone();
        let model = model
            .try_load_file(dir.join("model.bpk"))
            .map_err(|e| file_error("model.bpk", &e))?;
        let mut trainer = Self::new(model, prompts, schedule, state.config, device)?;
        if trainer.ema.is_some() {
            trainer.ema = Some(
                template
                    .try_load_file(dir.join("ema.bpk"))
                    .map_err(|e| file_error("ema.bpk", &e))?,
            );
        }
        trainer.optimizer = trainer
            .optimizer
            .load(dir.join("optimizer.bpk"))
            .map_err(|e| file_error("optimizer.bpk", &e))?;
        trainer.step = state.step;
        Ok(trainer)
    }

    /// The inference device.
    pub fn device(&self) -> &Device {
        &self.device
    }
}

/// Creates `dir` and its parents, naming it on failure.
pub(crate) fn create_dir(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| Error::File {
        path: dir.display().to_string(),
        reason: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn older_states_with_min_snr_gamma_still_parse() {
        // The state of the model shipped until December 2026 (x₀, 64/96 channels, 1200
        // steps), written before `loss_weighting` existed.
        let shipped = include_str!("testdata/state-before-loss-weighting.json");
        let state = TrainState::from_json_str(shipped).unwrap();
        assert_eq!(state.config.loss_weighting, LossWeighting::Uniform);
        assert_eq!(state.step, state.config.steps);
        let old = shipped.replace(r#""min_snr_gamma": null"#, r#""min_snr_gamma": 5.0"#);
        assert_ne!(old, shipped);
        let state = TrainState::from_json_str(&old).unwrap();
        assert_eq!(
            state.config.loss_weighting,
            LossWeighting::MinSnr { gamma: 5.0 }
        );
        // A state written now round-trips.
        let text = serde_json::to_string(&state).unwrap();
        let again = TrainState::from_json_str(&text).unwrap();
        assert_eq!(again.config, state.config);
    }
}
