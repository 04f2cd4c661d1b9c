//! DDIM (Song et al. 2021, "Denoising Diffusion Implicit Models"), mirroring diffusers'
//! `scheduling_ddim.py`.

use burn::tensor::{Tensor, TensorData};
use serde::{Deserialize, Serialize};
use vdm_core::error::ensure_non_negative;
use vdm_core::host::HostF32;
use vdm_core::layout::expect_same_shape;
use vdm_core::noise::draw;
use vdm_core::{Error, NoiseSource, PredictionType, Result};
use vdm_kernels::map_pair;

use crate::options::TimestepSpacing;
use crate::prediction::{
    Scales, check_epsilon_timesteps, epsilon_without_signal, sample_without_noise, to_x0_and_eps,
};
use crate::schedule::{BetaConfig, NoiseSchedule};
use crate::scheduler::{Scheduler, StepOutput};
use crate::spacing::discrete_timesteps;
use crate::threshold::SampleClipping;

/// The fields of a diffusers `DDIMScheduler` `scheduler_config.json`, with its defaults
/// (linear betas 1e-4 → 0.02, `clip_sample = true`, `set_alpha_to_one = true`, `leading`
/// spacing). Keys missing from the JSON take these defaults, flattened ones included.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, remote = "Self")]
pub struct DdimConfig {
    /// Training noise schedule.
    #[serde(flatten)]
    pub betas: BetaConfig,
    /// `x̂₀` clipping / thresholding.
    #[serde(flatten)]
    pub clipping: SampleClipping,
    /// Use `ᾱ = 1` for the step after the last timestep (else `ᾱ_0`).
    pub set_alpha_to_one: bool,
    /// Added to `leading` timesteps.
    pub steps_offset: usize,
    /// What the model predicts.
    pub prediction_type: PredictionType,
    /// How inference timesteps are spaced.
    pub timestep_spacing: TimestepSpacing,
}

impl Default for DdimConfig {
    fn default() -> Self {
        Self {
            betas: BetaConfig::default(),
            clipping: SampleClipping {
                clip_sample: true,
                ..SampleClipping::default()
            },
            set_alpha_to_one: true,
            steps_offset: 0,
            prediction_type: PredictionType::Epsilon,
            timestep_spacing: TimestepSpacing::Leading,
        }
    }
}

crate::serde_defaults::serde_over_defaults!(DdimConfig);

impl DdimConfig {
    /// Builds the scheduler.
    pub fn build(&self) -> Result<Ddim> {
        Ddim::new(self.clone())
    }
}

/// The DDIM sampler. `eta = 0` (the default) is deterministic; `eta = 1` is DDPM-like.
#[derive(Debug, Clone)]
pub struct Ddim {
    config: DdimConfig,
    schedule: NoiseSchedule,
    final_alpha_cumprod: f32,
    timesteps: Vec<f64>,
    /// Stochasticity `η ∈ [0, 1]` (diffusers' `step(eta=...)`).
    eta: f64,
    /// Recompute `ε̂` from the clipped `x̂₀` (diffusers' `use_clipped_model_output`).
    use_clipped_model_output: bool,
}

impl Ddim {
    /// A DDIM scheduler for `config`.
    pub fn new(config: DdimConfig) -> Result<Self> {
        config.clipping.validate()?;
        let schedule = NoiseSchedule::new(&config.betas)?;
        let final_alpha_cumprod = if config.set_alpha_to_one {
            1.0
        } else {
            schedule.alphas_cumprod[0]
        };
        Ok(Self {
            config,
            schedule,
            final_alpha_cumprod,
            timesteps: Vec::new(),
            eta: 0.0,
            use_clipped_model_output: false,
        })
    }

    /// Sets `η` (0 = deterministic DDIM, 1 = DDPM-like ancestral sampling).
    pub fn with_eta(mut self, eta: f64) -> Result<Self> {
        ensure_non_negative("eta", eta)?;
        self.eta = eta;
        Ok(self)
    }

    /// Recomputes `ε̂` from the clipped `x̂₀` (diffusers' `use_clipped_model_output`).
    pub fn with_clipped_model_output(mut self, on: bool) -> Self {
        self.use_clipped_model_output = on;
        self
    }

    /// The configuration.
    pub fn config(&self) -> &DdimConfig {
        &self.config
    }

    /// `ᾱ` used after the last timestep.
    pub fn final_alpha_cumprod(&self) -> f32 {
        self.final_alpha_cumprod
    }

    /// The previous timestep of DDIM: `t − T//N` for every spacing (diffusers behaviour).
    pub fn previous_timestep(&self, timestep: f64) -> Result<f64> {
        let n = self.timesteps.len();
        if n == 0 {
            return Err(Error::invalid(
                "num_inference_steps",
                "call set_timesteps before step",
            ));
        }
        Ok(timestep - (self.schedule.num_train_timesteps() / n) as f64)
    }

    /// The step's coefficients at `timestep`, and `σ_η` (the standard deviation of the noise
    /// added when `η > 0`).
    fn coefficients(&self, timestep: f64) -> Result<(Coefficients, f64)> {
        let prev_t = self.previous_timestep(timestep)?;
        let alpha_t = self.alpha_at(timestep)?;
        let alpha_prev = self.alpha_at(prev_t)? as f64;
        // As diffusers' `_get_variance`, in f32.
        let a_prev32 = alpha_prev as f32;
        let variance = (1.0 - a_prev32) / (1.0 - alpha_t) * (1.0 - alpha_t / a_prev32);
        let std_dev = (self.eta as f32 * variance.sqrt()) as f64;
        let coefficients = Coefficients {
            scales: Scales::from_alpha_cumprod(alpha_t),
            sqrt_alpha_prev: a_prev32.sqrt(),
            direction: (1.0 - a_prev32 - (std_dev * std_dev) as f32)
                .max(0.0)
                .sqrt(),
        };
        Ok((coefficients, std_dev))
    }

    /// `(x̂₀, x_{t−1})` before any noise (`η > 0`), as diffusers' `step`, in tensor ops.
    fn op_by_op_step(
        &self,
        model_output: Tensor<5>,
        sample: Tensor<5>,
        c: Coefficients,
    ) -> Result<(Tensor<5>, Tensor<5>)> {
        let (x0, mut eps) = to_x0_and_eps(
            self.config.prediction_type,
            model_output,
            sample.clone(),
            c.scales,
        )?;
        let x0 = self.config.clipping.apply(x0)?;
        if self.use_clipped_model_output {
            eps = (sample - x0.clone().mul_scalar(c.scales.alpha as f32))
                .div_scalar(c.scales.sigma as f32);
        }
        let prev = x0.clone().mul_scalar(c.sqrt_alpha_prev) + eps.mul_scalar(c.direction);
        Ok((x0, prev))
    }

    fn alpha_at(&self, t: f64) -> Result<f32> {
        if t < 0.0 {
            return Ok(self.final_alpha_cumprod);
        }
        self.schedule.alpha_cumprod_at(t)
    }
}

/// The numbers of one DDIM step.
#[derive(Debug, Clone, Copy)]
struct Coefficients {
    /// `α_t`, `σ_t`.
    scales: Scales,
    /// `√ᾱ_prev`, the weight of `x̂₀`.
    sqrt_alpha_prev: f32,
    /// `√(1 − ᾱ_prev − σ_η²)`, the weight of `ε̂` ("direction pointing to x_t").
    direction: f32,
}

/// [`Ddim::op_by_op_step`] in one pass on the host (flex, `f32`): `x_{t−1}` is written over
/// `sample`'s buffer (copied first if it is shared) and `x̂₀` into a new one. Each element
/// goes through the same `f32` operations, in the same order, as the tensor ops of
/// [`to_x0_and_eps`], the clamp to `±bound` and the update (bit-identical results; the test
/// below compares), where flex would run six single-threaded passes, each allocating.
fn one_pass_step(
    prediction_type: PredictionType,
    model_output: Tensor<5>,
    sample: Tensor<5>,
    c: Coefficients,
    bound: f32,
) -> Result<(Tensor<5>, Tensor<5>)> {
    let (alpha, sigma) = (c.scales.alpha as f32, c.scales.sigma as f32);
    let (sa, d) = (c.sqrt_alpha_prev, c.direction);
    let update = move |(x0, eps): (f32, f32)| {
        let x0 = x0.clamp(-bound, bound);
        (x0 * sa + eps * d, x0)
    };
    let device = sample.device();
    let dims = sample.dims();
    let model_output = HostF32::new(model_output)?;
    let mut sample = HostF32::new(sample)?;
    let (x, y) = (sample.as_mut_slice(), model_output.as_slice());
    let x0 = match prediction_type {
        PredictionType::Epsilon => {
            if c.scales.alpha == 0.0 {
                return Err(epsilon_without_signal("pred_original_sample"));
            }
            map_pair(x, y, move |s, m| update(((s - m * sigma) / alpha, m)))
        }
        PredictionType::Sample => {
            if c.scales.sigma == 0.0 {
                return Err(sample_without_noise());
            }
            map_pair(x, y, move |s, m| update((m, (s - m * alpha) / sigma)))
        }
        PredictionType::VPrediction => map_pair(x, y, move |s, m| {
            update((s * alpha - m * sigma, m * alpha + s * sigma))
        }),
    };
    Ok((
        Tensor::from_data(TensorData::new(x0, dims), &device),
        sample.into_tensor(&device),
    ))
}

impl Scheduler for Ddim {
    fn set_timesteps(&mut self, num_inference_steps: usize) -> Result<()> {
        let timesteps = discrete_timesteps(
            self.config.timestep_spacing,
            num_inference_steps,
            self.schedule.num_train_timesteps(),
            self.config.steps_offset,
        )?;
        check_epsilon_timesteps(self.prediction_type(), &timesteps, |t| {
            self.schedule.alpha_cumprod_at(t)
        })?;
        self.timesteps = timesteps;
        Ok(())
    }

    fn timesteps(&self) -> &[f64] {
        &self.timesteps
    }

    fn step(
        &mut self,
        model_output: Tensor<5>,
        timestep: f64,
        sample: Tensor<5>,
        noise: &mut dyn NoiseSource,
    ) -> Result<StepOutput> {
        expect_same_shape("model_output", &model_output, &sample)?;
        let (coefficients, std_dev) = self.coefficients(timestep)?;
        let bound = self.config.clipping.pointwise_bound();
        let (x0, mut prev) = match bound {
            Some(bound)
                if !self.use_clipped_model_output
                    && model_output.dtype() == sample.dtype()
                    && vdm_kernels::enabled(&sample.device(), sample.dtype()) =>
            {
                one_pass_step(
                    self.config.prediction_type,
                    model_output,
                    sample,
                    coefficients,
                    bound,
                )?
            }
            _ => self.op_by_op_step(model_output, sample, coefficients)?,
        };
        if self.eta > 0.0 {
            let z: Tensor<5> = draw(noise, prev.dims(), &prev.device())?;
            prev = prev + z.mul_scalar(std_dev as f32);
        }
        Ok(StepOutput {
            prev_sample: prev,
            pred_original_sample: Some(x0),
        })
    }

    fn add_noise(&self, original: Tensor<5>, noise: Tensor<5>, timestep: f64) -> Result<Tensor<5>> {
        self.schedule.add_noise(original, noise, timestep)
    }

    fn prediction_type(&self) -> PredictionType {
        self.config.prediction_type
    }

    fn noise_schedule(&self) -> &NoiseSchedule {
        &self.schedule
    }

    fn box_clone(&self) -> Box<dyn Scheduler> {
        Box::new(self.clone())
    }
}

#[cfg(test)]
mod tests {
    use burn::tensor::{DType, Device};
    use vdm_core::noise::SeededNoise;

    use super::*;

    fn bits(t: Tensor<5>) -> Vec<u32> {
        let values = t.into_data().try_to_vec::<f32>().unwrap();
        values.iter().map(|v| v.to_bits()).collect()
    }

    #[test]
    fn the_one_pass_step_is_bit_identical_to_the_tensor_ops() {
        let device = Device::flex();
        assert!(vdm_kernels::enabled(&device, DType::F32));
        // 81,920 values: split over the threads when there are several.
        let shape = [1, 4, 5, 64, 64];
        let mut noise = SeededNoise::new(3);
        let sample: Tensor<5> = draw(&mut noise, shape, &device).unwrap();
        let output = draw::<5>(&mut noise, shape, &device)
            .unwrap()
            .mul_scalar(1.5);
        let before = bits(sample.clone());
        for prediction_type in [
            PredictionType::Epsilon,
            PredictionType::Sample,
            PredictionType::VPrediction,
        ] {
            for clip_sample in [false, true] {
                let config = DdimConfig {
                    prediction_type,
                    clipping: SampleClipping {
                        clip_sample,
                        clip_sample_range: 1.25,
                        ..SampleClipping::default()
                    },
                    ..DdimConfig::default()
                };
                let bound = config.clipping.pointwise_bound().unwrap();
                let mut ddim = config.build().unwrap().with_eta(0.5).unwrap();
                ddim.set_timesteps(10).unwrap();
                for &t in &ddim.timesteps().to_vec() {
                    let (c, _) = ddim.coefficients(t).unwrap();
                    let (x0, prev) = ddim
                        .op_by_op_step(output.clone(), sample.clone(), c)
                        .unwrap();
                    let (x0_fused, prev_fused) =
                        one_pass_step(prediction_type, output.clone(), sample.clone(), c, bound)
                            .unwrap();
                    let what = format!("{prediction_type:?}, clip {clip_sample}, t = {t}");
                    assert!(bits(x0) == bits(x0_fused), "x̂₀ differs: {what}");
                    assert!(bits(prev) == bits(prev_fused), "x_(t-1) differs: {what}");
                }
            }
        }
        // The shared input was copied, not written over.
        assert!(bits(sample) == before);
    }

    #[test]
    fn thresholding_is_not_pointwise() {
        let clipping = SampleClipping {
            thresholding: true,
            ..SampleClipping::default()
        };
        assert_eq!(clipping.pointwise_bound(), None);
        assert_eq!(
            SampleClipping::default().pointwise_bound(),
            Some(f32::INFINITY)
        );
    }
}
