//! What the schedulers' unit tests share: a spacing strategy for proptest, a small clean
//! video, and two model loops driven only through the [`Scheduler`] trait.

use burn::tensor::{Device, Tensor, TensorData};
use proptest::prelude::*;
use vdm_core::noise::NoNoise;

use crate::options::TimestepSpacing;
use crate::scheduler::Scheduler;

/// Any of the three timestep spacings.
pub(crate) fn spacings() -> impl Strategy<Value = TimestepSpacing> {
    prop_oneof![
        Just(TimestepSpacing::Leading),
        Just(TimestepSpacing::Trailing),
        Just(TimestepSpacing::Linspace)
    ]
}

/// A `[1, 1, 2, 2, 2]` clean video with values −1, −0.75, …, 0.75.
pub(crate) fn ramp(device: &Device) -> Tensor<5> {
    Tensor::<5>::from_data(
        TensorData::new(
            (0..8).map(|i| i as f32 / 4.0 - 1.0).collect(),
            [1, 1, 2, 2, 2],
        ),
        device,
    )
}

/// Samples from `start` with a model that always answers `x0` (for an x₀-predicting
/// scheduler, after `set_timesteps`); returns the largest distance of the result from `x0`.
pub(crate) fn distance_after_exact_x0_model(
    scheduler: &mut dyn Scheduler,
    x0: &Tensor<5>,
    start: Tensor<5>,
) -> f32 {
    let mut x = start;
    for t in scheduler.timesteps().to_vec() {
        x = scheduler
            .step(x0.clone(), t, x, &mut NoNoise)
            .unwrap()
            .prev_sample;
    }
    (x - x0.clone()).abs().max().into_scalar()
}

/// Integrates the probability-flow ODE of Gaussian data `N(0, c2)` with the exact x₀-predictor
/// `x·c²/(c² + σ²)` from `x(σ_max) = x0` (an x₀-predicting sigma-space scheduler after
/// `set_timesteps`, with `init_noise_sigma() = σ_max`), and returns the largest distance from
/// the exact end `x0·sqrt(c²/(c² + σ_max²))`. Each model call's `σ` is read back from
/// [`Scheduler::scale_model_input`] (`1/sqrt(σ² + 1)`), so any stage structure works.
pub(crate) fn gaussian_ode_error(scheduler: &mut dyn Scheduler, x0: &Tensor<5>, c2: f32) -> f32 {
    let smax = scheduler.init_noise_sigma() as f32;
    let probe = Tensor::<5>::ones([1, 1, 1, 1, 1], &x0.device());
    let mut x = x0.clone();
    for t in scheduler.timesteps().to_vec() {
        let scale: f32 = scheduler
            .scale_model_input(probe.clone(), t)
            .unwrap()
            .into_scalar();
        let sigma2 = 1.0 / (scale * scale) - 1.0;
        let estimate = x.clone().mul_scalar(c2 / (c2 + sigma2));
        x = scheduler
            .step(estimate, t, x, &mut NoNoise)
            .unwrap()
            .prev_sample;
    }
    let exact = x0.clone().mul_scalar((c2 / (c2 + smax * smax)).sqrt());
    (x - exact).abs().max().into_scalar()
}
