//! The settings of a training run.

use serde::{Deserialize, Serialize};
use vdm_core::{Error, PredictionType, Result};

use super::objective::LossWeighting;

/// Everything a training run depends on besides the model and the data; saved with every
/// checkpoint, so a resumed run continues with the same settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainConfig {
    /// Optimiser steps to run in total.
    pub steps: usize,
    /// Videos per step.
    pub batch_size: usize,
    /// Frames per training video.
    pub frames: usize,
    /// Peak learning rate of AdamW.
    pub learning_rate: f64,
    /// Steps of linear warm-up from 0 to `learning_rate`.
    pub warmup_steps: usize,
    /// Cosine decay after the warm-up down to `learning_rate · min_lr_ratio` at `steps`
    /// (`1.0`: constant).
    pub min_lr_ratio: f64,
    /// AdamW's decoupled weight decay.
    pub weight_decay: f32,
    /// Clip the global gradient norm to this value (`None`: no clipping).
    pub grad_clip_norm: Option<f32>,
    /// Decay of the exponential moving average of the weights (`None`: no EMA).
    pub ema_decay: Option<f32>,
    /// Probability of replacing a caption by the empty prompt (classifier-free guidance
    /// dropout; Ho & Salimans 2022).
    pub cfg_dropout: f64,
    /// What the model learns to predict.
    pub prediction_type: PredictionType,
    /// How the loss weighs the noise levels (uniform, min-SNR-γ, capped SNR + 1).
    pub loss_weighting: LossWeighting,
    /// Train only the temporal layers (AnimateDiff / Video LDM): gradients of every parameter
    /// whose path matches none of [`TrainConfig::temporal_patterns`] are dropped.
    pub temporal_only: bool,
    /// Substrings of parameter paths that mark temporal layers (UNet3D's `temp_convs`,
    /// `temp_attentions`, `transformer_in`; AnimateDiff's `motion_modules`).
    pub temporal_patterns: Vec<String>,
    /// Joint image + video training (Make-A-Video, VDM): every `n`-th step trains on single
    /// frames (`F = 1`) instead of videos (`None`: videos only).
    pub image_step_every: Option<usize>,
    /// Images per image step.
    pub image_batch_size: usize,
    /// Seed of everything random: the data, the timesteps, the noise, the dropout.
    pub seed: u64,
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            steps: 1000,
            batch_size: 8,
            frames: 16,
            learning_rate: 1e-3,
            warmup_steps: 100,
            min_lr_ratio: 0.1,
            weight_decay: 1e-4,
            grad_clip_norm: Some(1.0),
            ema_decay: Some(0.995),
            cfg_dropout: 0.1,
            prediction_type: PredictionType::VPrediction,
            loss_weighting: LossWeighting::MinSnr { gamma: 5.0 },
            temporal_only: false,
            temporal_patterns: [
                "temp_convs",
                "temp_attentions",
                "transformer_in",
                "motion_modules",
            ]
            .map(String::from)
            .to_vec(),
            image_step_every: None,
            image_batch_size: 16,
            seed: 0,
        }
    }
}

impl TrainConfig {
    /// # Errors
    /// [`Error::InvalidConfig`] naming the first field out of range.
    pub fn validate(&self) -> Result<()> {
        let positive = [
            ("steps", self.steps),
            ("batch_size", self.batch_size),
            ("frames", self.frames),
            ("image_batch_size", self.image_batch_size),
        ];
        for (field, value) in positive {
            if value == 0 {
                return Err(Error::invalid(field, "must be ≥ 1"));
            }
        }
        if !(self.learning_rate.is_finite() && self.learning_rate > 0.0) {
            return Err(Error::invalid("learning_rate", "must be finite and > 0"));
        }
        if !(0.0..=1.0).contains(&self.min_lr_ratio) {
            return Err(Error::invalid("min_lr_ratio", "must be in [0, 1]"));
        }
        if !(self.weight_decay.is_finite() && self.weight_decay >= 0.0) {
            return Err(Error::invalid("weight_decay", "must be finite and ≥ 0"));
        }
        if self
            .grad_clip_norm
            .is_some_and(|c| !(c.is_finite() && c > 0.0))
        {
            return Err(Error::invalid("grad_clip_norm", "must be finite and > 0"));
        }
        if self.ema_decay.is_some_and(|d| !(0.0..1.0).contains(&d)) {
            return Err(Error::invalid("ema_decay", "must be in [0, 1)"));
        }
        if !(0.0..=1.0).contains(&self.cfg_dropout) {
            return Err(Error::invalid("cfg_dropout", "must be in [0, 1]"));
        }
        self.loss_weighting.validate()?;
        if self.image_step_every == Some(0) {
            return Err(Error::invalid("image_step_every", "must be ≥ 1"));
        }
        if self.temporal_only && self.temporal_patterns.is_empty() {
            return Err(Error::invalid(
                "temporal_patterns",
                "temporal_only needs at least one pattern",
            ));
        }
        Ok(())
    }

    /// The learning rate of step `step` (0-based): linear warm-up, then cosine decay to
    /// `learning_rate · min_lr_ratio`.
    pub fn learning_rate_at(&self, step: usize) -> f64 {
        if step < self.warmup_steps {
            return self.learning_rate * (step + 1) as f64 / self.warmup_steps as f64;
        }
        let span = self.steps.saturating_sub(self.warmup_steps).max(1) as f64;
        let progress = ((step - self.warmup_steps) as f64 / span).min(1.0);
        let cosine = 0.5 * (1.0 + (std::f64::consts::PI * progress).cos());
        self.learning_rate * (self.min_lr_ratio + (1.0 - self.min_lr_ratio) * cosine)
    }

    /// Whether step `step` is an image step of joint image + video training.
    pub fn is_image_step(&self, step: usize) -> bool {
        self.image_step_every.is_some_and(|n| step % n == n - 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_learning_rate_warms_up_then_decays_to_the_floor() {
        let c = TrainConfig {
            steps: 110,
            warmup_steps: 10,
            learning_rate: 1.0,
            min_lr_ratio: 0.1,
            ..TrainConfig::default()
        };
        assert!((c.learning_rate_at(0) - 0.1).abs() < 1e-12);
        assert!((c.learning_rate_at(9) - 1.0).abs() < 1e-12);
        assert!((c.learning_rate_at(10) - 1.0).abs() < 1e-12);
        assert!((c.learning_rate_at(60) - 0.55).abs() < 1e-12);
        assert!((c.learning_rate_at(110) - 0.1).abs() < 1e-12);
        let lrs: Vec<f64> = (10..110).map(|s| c.learning_rate_at(s)).collect();
        assert!(lrs.windows(2).all(|w| w[1] <= w[0]));
    }

    #[test]
    fn bad_fields_are_named() {
        for (config, field) in [
            (
                TrainConfig {
                    steps: 0,
                    ..TrainConfig::default()
                },
                "steps",
            ),
            (
                TrainConfig {
                    learning_rate: f64::NAN,
                    ..TrainConfig::default()
                },
                "learning_rate",
            ),
            (
                TrainConfig {
                    ema_decay: Some(1.0),
                    ..TrainConfig::default()
                },
                "ema_decay",
            ),
            (
                TrainConfig {
                    cfg_dropout: 1.5,
                    ..TrainConfig::default()
                },
                "cfg_dropout",
            ),
            (
                TrainConfig {
                    image_step_every: Some(0),
                    ..TrainConfig::default()
                },
                "image_step_every",
            ),
        ] {
            let err = config.validate().unwrap_err().to_string();
            assert!(err.contains(field), "{err}");
        }
        TrainConfig::default().validate().unwrap();
    }
}
