//! Tests of the long-video sampler, and the test model for the finite checks shared with the
//! method samplers' tests.

use std::sync::atomic::{AtomicUsize, Ordering};

use super::*;
use vdm_core::temporal::{FrameWindow, TemporalSite, TemporalStages};
use vdm_core::{DenoiserInput, PredictionType, SeededNoise};
use vdm_schedulers::from_config_json;

/// A test model for the finite checks: `ε = 0.1·x`, except from its model call `bad_call` on
/// (0-based) where every value is `bad_value` (NaN, or a finite value large enough to make
/// the scheduler step overflow).
pub(crate) struct BadAfter {
    pub bad_call: usize,
    pub bad_value: f32,
    pub calls: std::sync::atomic::AtomicUsize,
}

impl BadAfter {
    pub fn new(bad_call: usize, bad_value: f32) -> Self {
        Self {
            bad_call,
            bad_value,
            calls: Default::default(),
        }
    }
}

impl Denoiser for BadAfter {
    fn prediction_type(&self) -> vdm_core::PredictionType {
        vdm_core::PredictionType::Epsilon
    }
    fn predict(&self, input: DenoiserInput<'_>) -> Result<Tensor<5>> {
        let call = self.calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Ok(if call >= self.bad_call {
            input.latents.full_like(self.bad_value)
        } else {
            input.latents.mul_scalar(0.1)
        })
    }
}

const DDIM: &str =
    r#"{"_class_name": "DDIMScheduler", "clip_sample": false, "set_alpha_to_one": false}"#;

/// ε = mean of the conditioning over (S, D) per batch item (0 without conditioning),
/// broadcast; records the batch sizes it saw; runs one temporal stage through the hook.
struct Probe {
    batches: std::sync::Mutex<Vec<usize>>,
    prediction: PredictionType,
}

struct AddOne;
impl TemporalStages for AddOne {
    fn num_stages(&self) -> usize {
        1
    }
    fn run_stage(&self, _: usize, x: Tensor<3>, _: &FrameWindow) -> Result<Tensor<3>> {
        Ok(x.add_scalar(1.0))
    }
}

impl Denoiser for Probe {
    fn prediction_type(&self) -> PredictionType {
        self.prediction
    }
    fn predict(&self, input: DenoiserInput<'_>) -> Result<Tensor<5>> {
        let shape = input.shape()?;
        self.batches.lock().unwrap().push(shape.batch);
        let device = input.latents.device();
        let marker = input
            .temporal
            .apply(
                &TemporalSite::new("probe", shape.frames),
                Tensor::zeros([1, shape.frames, 1], &device),
                &AddOne,
            )?
            .mean()
            .into_scalar::<f32>();
        let per_item: Vec<f32> = match input.conditioning.per_frame(shape.batch, shape.frames)? {
            Some(ctx) => {
                let means = ctx
                    .mean_dim(2)
                    .mean_dim(1)
                    .reshape([shape.batch, shape.frames]);
                means.mean_dim(1).into_data().try_to_vec().unwrap()
            }
            None => vec![0.0; shape.batch],
        };
        let values: Vec<Tensor<5>> = per_item
            .iter()
            .map(|&v| {
                Tensor::<5>::full(
                    shape.with_frames(shape.frames).dims(),
                    v + marker - 1.0,
                    &device,
                )
                .narrow(0, 0, 1)
            })
            .collect();
        Ok(Tensor::cat(values, 0))
    }
}

fn probe() -> Probe {
    Probe {
        batches: Default::default(),
        prediction: PredictionType::Epsilon,
    }
}

fn ctx(value: f32) -> Conditioning {
    Conditioning::Shared(Tensor::full([1, 2, 3], value, &Device::flex()))
}

fn run(sampler: &mut LongVideoSampler<'_>, cond: Conditioning, steps: usize) -> Result<Tensor<5>> {
    sampler.sample(
        VideoShape::new([1, 2, 3, 2, 2]),
        cond,
        steps,
        &mut SeededNoise::new(1),
        &Device::flex(),
        &mut |_| Control::Continue,
    )
}

#[test]
fn guidance_batches_uncond_and_cond_and_extrapolates() {
    // With ε constant, DDIM's result is affine in ε: compare against an unguided run with
    // the guided ε = u + s(c − u) = 0 + 3·(2 − 0) = 6.
    let model = probe();
    let mut guided =
        LongVideoSampler::new(&model, from_config_json(DDIM).unwrap()).with_guidance(Guidance {
            scale: 3.0,
            negative: ctx(0.0),
        });
    let a = run(&mut guided, ctx(2.0), 4).unwrap();
    assert!(model.batches.lock().unwrap().iter().all(|&b| b == 2));
    let plain_model = probe();
    let mut plain = LongVideoSampler::new(&plain_model, from_config_json(DDIM).unwrap());
    let b = run(&mut plain, ctx(6.0), 4).unwrap();
    assert!(plain_model.batches.lock().unwrap().iter().all(|&b| b == 1));
    let diff: f32 = (a - b).abs().max().into_scalar();
    assert!(diff < 1e-5, "{diff}");
}

#[test]
fn cancellation_and_progress() {
    let model = probe();
    let mut sampler = LongVideoSampler::new(&model, from_config_json(DDIM).unwrap());
    let mut seen = Vec::new();
    let e = sampler
        .sample(
            VideoShape::new([1, 2, 3, 2, 2]),
            Conditioning::None,
            10,
            &mut SeededNoise::new(9),
            &Device::flex(),
            &mut |p| {
                seen.push((p.step, p.num_steps, p.latents.dims()));
                if p.step == 3 {
                    Control::Cancel
                } else {
                    Control::Continue
                }
            },
        )
        .unwrap_err();
    assert!(matches!(e, Error::Cancelled { step: 3 }), "{e}");
    assert_eq!(seen.len(), 4);
    assert_eq!(seen[0], (0, 10, [1, 2, 3, 2, 2]));
}

#[test]
fn prediction_type_mismatch_is_named() {
    let model = Probe {
        batches: Default::default(),
        prediction: PredictionType::VPrediction,
    };
    let mut sampler = LongVideoSampler::new(&model, from_config_json(DDIM).unwrap());
    let e = run(&mut sampler, Conditioning::None, 3)
        .unwrap_err()
        .to_string();
    assert!(e.contains("prediction_type"), "{e}");
}

#[test]
fn an_inversion_scheduler_is_refused() {
    let model = Probe {
        batches: Default::default(),
        prediction: PredictionType::Epsilon,
    };
    let inverse = DDIM.replace("DDIMScheduler", "DDIMInverseScheduler");
    let mut sampler = LongVideoSampler::new(&model, from_config_json(&inverse).unwrap());
    let e = run(&mut sampler, Conditioning::None, 3)
        .unwrap_err()
        .to_string();
    assert!(e.contains("inversion"), "{e}");
}

/// A two-stage scheduler (Heun) runs in the ordinary loop: 2N − 1 model calls for N steps,
/// every call with the guided batch, and the result is finite.
#[test]
fn a_two_stage_scheduler_calls_the_model_per_stage() {
    let model = probe();
    let heun = r#"{"_class_name": "HeunDiscreteScheduler"}"#;
    let mut sampler =
        LongVideoSampler::new(&model, from_config_json(heun).unwrap()).with_guidance(Guidance {
            scale: 2.0,
            negative: ctx(0.0),
        });
    let out = run(&mut sampler, ctx(1.0), 4).unwrap();
    assert_eq!(*model.batches.lock().unwrap(), vec![2; 7]);
    let max: f32 = out.abs().max().into_scalar();
    assert!(max.is_finite());
}

/// A hook that runs each stage twice: the probe's marker becomes 2 instead of 1.
struct Twice;
impl TemporalHook for Twice {
    fn apply(
        &self,
        _: &TemporalSite<'_>,
        x: Tensor<3>,
        stages: &dyn TemporalStages,
    ) -> Result<Tensor<3>> {
        let w = FrameWindow::full(x.dims()[1]);
        let y = stages.run_stage(0, x, &w)?;
        stages.run_stage(0, y, &w)
    }
}

#[test]
fn the_temporal_strategy_reaches_the_model() {
    let model = probe();
    let mut with_hook =
        LongVideoSampler::new(&model, from_config_json(DDIM).unwrap()).with_temporal(&Twice);
    let a = run(&mut with_hook, ctx(1.0), 3).unwrap();
    // Marker 2 adds one to ε: the same as conditioning 2 without the hook.
    let model2 = probe();
    let mut plain = LongVideoSampler::new(&model2, from_config_json(DDIM).unwrap());
    let b = run(&mut plain, ctx(2.0), 3).unwrap();
    let diff: f32 = (a - b).abs().max().into_scalar();
    assert!(diff < 1e-5, "{diff}");
}

struct CountPasses {
    reinits: AtomicUsize,
}
impl Refinement for CountPasses {
    fn iterations(&self) -> usize {
        3
    }
    fn steps_for_iteration(&self, iteration: usize, n: usize) -> Result<usize> {
        Ok((n * (iteration + 1) / 3).max(1))
    }
    fn reinitialize(
        &self,
        _: usize,
        scheduler: &dyn Scheduler,
        clean: Tensor<5>,
        initial: &Tensor<5>,
        _: &mut dyn NoiseSource,
    ) -> Result<Tensor<5>> {
        self.reinits.fetch_add(1, Ordering::SeqCst);
        let t = scheduler.num_train_timesteps() as f64 - 1.0;
        scheduler.add_noise(clean, initial.clone(), t)
    }
}

#[test]
fn refinement_runs_every_pass_with_its_step_count() {
    let model = probe();
    let refine = CountPasses {
        reinits: AtomicUsize::new(0),
    };
    let mut sampler =
        LongVideoSampler::new(&model, from_config_json(DDIM).unwrap()).with_refinement(refine);
    let mut passes = Vec::new();
    sampler
        .sample(
            VideoShape::new([1, 2, 3, 2, 2]),
            Conditioning::None,
            9,
            &mut SeededNoise::new(2),
            &Device::flex(),
            &mut |p| {
                if p.step == 0 {
                    passes.push((p.iteration, p.num_steps));
                }
                Control::Continue
            },
        )
        .unwrap();
    assert_eq!(passes, [(0, 3), (1, 6), (2, 9)]);
    assert_eq!(model.batches.lock().unwrap().len(), 18);
}

/// Records, per call, the mean of the encoder and decoder conditioning.
struct RouteProbe(std::sync::Mutex<Vec<(f32, f32)>>);
impl Denoiser for RouteProbe {
    fn prediction_type(&self) -> PredictionType {
        PredictionType::Epsilon
    }
    fn predict(&self, input: DenoiserInput<'_>) -> Result<Tensor<5>> {
        let mean = |c: &Conditioning| match c {
            Conditioning::Shared(t) => t.clone().mean().into_scalar::<f32>(),
            Conditioning::PerFrame(t) => t.clone().mean().into_scalar::<f32>(),
            Conditioning::None => f32::NAN,
        };
        self.0.lock().unwrap().push((
            mean(input.conditioning_for(BlockKind::Encoder)),
            mean(input.conditioning_for(BlockKind::Decoder)),
        ));
        Ok(input.latents.zeros_like())
    }
}

#[test]
fn motion_injection_routes_the_single_prompt_by_step_and_block() {
    let model = RouteProbe(Default::default());
    let schedule = MotionInjection::videocrafter_scaled(10);
    let mut sampler = LongVideoSampler::new(&model, from_config_json(DDIM).unwrap())
        .with_motion_injection(ctx(7.0), schedule.clone());
    run(&mut sampler, ctx(1.0), 10).unwrap();
    let calls = model.0.lock().unwrap().clone();
    assert_eq!(calls.len(), 10);
    for (step, (enc, dec)) in calls.into_iter().enumerate() {
        let expected = match schedule.context_for(step, BlockKind::Encoder) {
            PromptContext::Single => 7.0,
            PromptContext::Travelling => 1.0,
        };
        assert_eq!(enc, expected, "step {step}");
        assert_eq!(dec, 1.0, "step {step}: the decoder always travels");
    }
}

#[test]
fn freeinit_refines_through_the_sampler_with_any_scheduler() {
    use crate::freeinit::FreeInit;
    for config in [
        DDIM,
        r#"{"_class_name": "EulerDiscreteScheduler", "timestep_spacing": "trailing"}"#,
        r#"{"_class_name": "DPMSolverMultistepScheduler", "timestep_spacing": "linspace"}"#,
    ] {
        let model = probe();
        let freeinit = FreeInit::default().with_fast_sampling(true);
        let mut sampler = LongVideoSampler::new(&model, from_config_json(config).unwrap())
            .with_refinement(freeinit);
        let mut passes = Vec::new();
        let video = sampler
            .sample(
                VideoShape::new([1, 2, 6, 4, 4]),
                ctx(0.1),
                6,
                &mut SeededNoise::new(3),
                &Device::flex(),
                &mut |p| {
                    if p.step == 0 {
                        passes.push((p.iteration, p.num_steps));
                    }
                    Control::Continue
                },
            )
            .unwrap();
        assert_eq!(passes, [(0, 2), (1, 4), (2, 6)], "{config}");
        let finite: Vec<f32> = video.into_data().try_to_vec().unwrap();
        assert!(finite.iter().all(|v| v.is_finite()), "{config}");
    }
    // `leading` DPM-Solver cannot reach T − 1: a typed error, not silent garbage.
    let model = probe();
    let mut sampler = LongVideoSampler::new(
        &model,
        from_config_json(
            r#"{"_class_name": "DPMSolverMultistepScheduler", "timestep_spacing": "leading"}"#,
        )
        .unwrap(),
    )
    .with_refinement(FreeInit::default());
    let e = run(&mut sampler, ctx(0.1), 5).unwrap_err().to_string();
    assert!(e.contains("timestep_spacing"), "{e}");
}

/// A NaN model output stops the loop at its step, naming the step and the timestep, before
/// the scheduler sees it; with the checks off the same run returns NaN latents.
#[test]
fn a_nan_model_output_is_named_with_its_step_and_timestep() {
    let model = BadAfter::new(3, f32::NAN);
    let mut sampler = LongVideoSampler::new(&model, from_config_json(DDIM).unwrap());
    let mut reported = Vec::new();
    let e = sampler
        .sample(
            VideoShape::new([1, 2, 3, 2, 2]),
            Conditioning::None,
            10,
            &mut SeededNoise::new(1),
            &Device::flex(),
            &mut |p| {
                reported.push(p.step);
                Control::Continue
            },
        )
        .unwrap_err();
    let t = sampler.scheduler().timesteps()[3];
    assert!(matches!(e, Error::NonFinite { .. }), "{e}");
    let msg = e.to_string();
    let want = format!("non-finite value in the model output at step 3 of 10 (timestep {t}): ");
    assert!(msg.starts_with(&want), "{msg}");
    assert!(msg.contains("24 NaN and 0 infinite of 24 values"), "{msg}");
    assert_eq!(reported, [0, 1, 2]);
    assert_eq!(model.calls.load(Ordering::SeqCst), 4);

    let model = BadAfter::new(3, f32::NAN);
    let mut unchecked =
        LongVideoSampler::new(&model, from_config_json(DDIM).unwrap()).with_finite_checks(false);
    let video = run(&mut unchecked, Conditioning::None, 10).unwrap();
    assert!(!vdm_core::finite::all_finite(&video));
    assert_eq!(model.calls.load(Ordering::SeqCst), 10);
}

/// A finite model output so large that DDIM's `x̂₀ = (x − √(1−ᾱ)·ε)/√ᾱ` overflows: the
/// model output passes its check and the latents after the step are named instead.
#[test]
fn a_scheduler_step_that_overflows_is_named_as_the_latents_after_it() {
    let model = BadAfter::new(0, f32::MAX / 4.0);
    let mut sampler = LongVideoSampler::new(&model, from_config_json(DDIM).unwrap())
        .with_refinement(CountPasses {
            reinits: AtomicUsize::new(0),
        });
    let e = run(&mut sampler, Conditioning::None, 3).unwrap_err();
    // Passes of 1, 2 and 3 steps (timesteps [0], [500, 0], [666, 333, 0]): x̂₀ first
    // overflows at t = 666 (the first √ᾱ small enough), the first step of the last pass (as
    // `Progress`); the scheduler keeps that pass's timesteps.
    let t = sampler.scheduler().timesteps()[0];
    assert_eq!(t, 666.0);
    assert!(matches!(e, Error::NonFinite { .. }), "{e}");
    let msg = e.to_string();
    let want = format!(
        "non-finite value in the latents after step 0 of 3 in pass 2 of 3 (timestep {t}): "
    );
    assert!(msg.starts_with(&want), "{msg}");
    assert!(msg.contains("the scheduler step"), "{msg}");
}

#[test]
fn same_seed_same_video() {
    let model = probe();
    let mut s1 = LongVideoSampler::new(&model, from_config_json(DDIM).unwrap());
    let a = run(&mut s1, ctx(0.5), 5).unwrap();
    let b = run(&mut s1, ctx(0.5), 5).unwrap();
    a.into_data().assert_eq(&b.into_data(), true);
}
