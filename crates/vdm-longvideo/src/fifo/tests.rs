//! Unit tests of the FIFO-Diffusion sampler and its stream.

use std::sync::Mutex;

use super::*;
use burn::tensor::TensorData;
use proptest::prelude::*;
use vdm_core::{DenoiserInput, SeededNoise};
use vdm_schedulers::from_config_json;

use crate::sampler::LongVideoSampler;

/// DDIM whose timesteps step exactly to the next one (leading spacing, 1000 / 8 = 125) and
/// end at `ᾱ = 1`, as FIFO's lowest level does.
const DDIM: &str = r#"{"_class_name": "DDIMScheduler", "clip_sample": false,
        "set_alpha_to_one": true, "timestep_spacing": "leading", "steps_offset": 0}"#;

/// A frame-local model: `ε = 0.1·x + c_f + 0.001·t_f`, `c_f` the mean of frame `f`'s
/// context and `t_f` its timestep; records the frames and timesteps of every call.
#[derive(Default)]
struct FrameLocal {
    calls: Mutex<Vec<Vec<f64>>>,
}

impl Denoiser for FrameLocal {
    fn prediction_type(&self) -> PredictionType {
        PredictionType::Epsilon
    }
    fn predict(&self, input: DenoiserInput<'_>) -> Result<Tensor<5>> {
        let shape = input.shape()?;
        let (b, f) = (shape.batch, shape.frames);
        let ts = input.timesteps.per_frame(b, f)?;
        self.calls.lock().unwrap().push(ts.clone());
        let device = input.latents.device();
        let ts: Vec<f32> = ts.iter().map(|&t| 0.001 * t as f32).collect();
        let t = Tensor::<5>::from_data(TensorData::new(ts, [b, 1, f, 1, 1]), &device);
        let out = input.latents.clone().mul_scalar(0.1) + t;
        Ok(match input.conditioning.per_frame(b, f)? {
            Some(ctx) => out + ctx.mean_dim(2).mean_dim(1).reshape([b, 1, f, 1, 1]),
            None => out,
        })
    }
}

/// Noise whose `k`-th draw is the constant `value(k)` everywhere.
struct ConstantDraws(usize);

fn value(k: usize) -> f32 {
    (k as f32 * 0.37 + 0.2).sin()
}

impl NoiseSource for ConstantDraws {
    fn normal(&mut self, shape: &[usize]) -> Result<TensorData> {
        let v = value(self.0);
        self.0 += 1;
        Ok(TensorData::new(
            vec![v; shape.iter().product()],
            shape.to_vec(),
        ))
    }
    fn permutation(&mut self, n: usize) -> Result<Vec<usize>> {
        Ok((0..n).collect())
    }
}

/// Frame `f`'s context is `(v_f, v_f)`.
fn per_frame_context(values: &[f32], device: &Device) -> Conditioning {
    let data: Vec<f32> = values.iter().flat_map(|&v| [v, v]).collect();
    Conditioning::PerFrame(Tensor::from_data(
        TensorData::new(data, [1, values.len(), 1, 2]),
        device,
    ))
}

fn host(t: &Tensor<5>) -> Vec<f32> {
    t.to_data().convert::<f32>().try_to_vec::<f32>().unwrap()
}

fn guidance(device: &Device) -> Guidance {
    Guidance {
        scale: 3.0,
        negative: Conditioning::Shared(Tensor::zeros([1, 1, 2], device)),
    }
}

/// A NaN model output in the warm-up stops the stream, naming the window's per-frame
/// timesteps.
#[test]
fn a_nan_model_output_stops_fifo() {
    let device = Device::flex();
    let model = crate::sampler::BadAfter::new(2, f32::NAN);
    let sampler = FifoSampler::new(&model, from_config_json(DDIM).unwrap(), Fifo::new(2, 2));
    let e = sampler
        .sample(
            VideoShape::new([1, 1, 3, 1, 1]),
            Conditioning::None,
            &mut SeededNoise::new(0),
            &device,
            &mut |_| Control::Continue,
        )
        .unwrap_err();
    assert!(matches!(e, Error::NonFinite { .. }), "{e}");
    let msg = e.to_string();
    assert!(
        msg.starts_with("non-finite value in the model output at the per-frame timesteps "),
        "{msg}"
    );
    assert!(msg.contains("of a FIFO window"), "{msg}");
}

#[test]
fn every_fresh_frame_equals_ddim_of_that_frame_alone() {
    let device = Device::flex();
    let frames = 10;
    let shape = VideoShape::new([1, 2, frames, 2, 3]);
    let contexts: Vec<f32> = (0..frames).map(|f| 0.05 * f as f32 - 0.2).collect();
    for lookahead in [false, true] {
        for guided in [false, true] {
            let model = FrameLocal::default();
            let plan = Fifo {
                lookahead,
                eta: 0.0,
                ..Fifo::new(4, 2)
            };
            let mut sampler = FifoSampler::new(&model, from_config_json(DDIM).unwrap(), plan);
            if guided {
                sampler = sampler.with_guidance(guidance(&device));
            }
            let video = sampler
                .sample(
                    shape,
                    per_frame_context(&contexts, &device),
                    &mut ConstantDraws(0),
                    &device,
                    &mut |_| Control::Continue,
                )
                .unwrap();
            assert_eq!(video.dims(), shape.dims());
            // Draw 0: the warm-up clip, draw 1: the queue's noise, then one fresh frame per
            // iteration: video frame k ≥ window started as draw 2 + k − window.
            for k in plan.window..frames {
                let alone = FrameLocal::default();
                let mut direct = LongVideoSampler::new(&alone, from_config_json(DDIM).unwrap());
                if guided {
                    direct = direct.with_guidance(guidance(&device));
                }
                let want = direct
                    .sample(
                        shape.with_frames(1),
                        per_frame_context(&contexts[k..k + 1], &device),
                        plan.num_levels(),
                        &mut ConstantDraws(2 + k - plan.window),
                        &device,
                        &mut |_| Control::Continue,
                    )
                    .unwrap();
                let got = host(&video.clone().narrow(2, k, 1));
                for (g, w) in got.iter().zip(host(&want)) {
                    assert!(
                        (g - w).abs() < 1e-5,
                        "lookahead {lookahead}, guided {guided}, frame {k}: {g} vs {w}"
                    );
                }
            }
        }
    }
}

#[test]
fn the_queue_and_the_calls_per_frame_do_not_grow_with_length() {
    let device = Device::flex();
    for lookahead in [false, true] {
        let plan = Fifo {
            lookahead,
            ..Fifo::new(4, 3)
        };
        for frames in [5, 40] {
            let model = FrameLocal::default();
            let sampler = FifoSampler::new(&model, from_config_json(DDIM).unwrap(), plan);
            let mut noise = SeededNoise::new(3);
            let shape = VideoShape::new([1, 2, frames, 2, 2]);
            let mut stream = sampler
                .stream(shape, Conditioning::None, &mut noise, &device)
                .unwrap();
            assert_eq!(stream.size_hint(), (frames, Some(frames)));
            let mut got = 0;
            while let Some(frame) = stream.next() {
                assert_eq!(frame.unwrap().dims(), [1, 2, 1, 2, 2]);
                assert_eq!(stream.queue().unwrap().dims()[2], plan.queue_len());
                got += 1;
            }
            assert_eq!(got, frames);
            assert!(stream.next().is_none());
            let calls = model.calls.lock().unwrap();
            let dropped = plan.num_levels() - plan.window;
            assert_eq!(
                calls.len(),
                plan.num_levels() + (dropped + frames) * plan.calls_per_frame()
            );
            assert!(calls.iter().all(|ts| ts.len() == plan.window));
            // The warm-up runs the levels from the noisiest down, all frames together.
            // Leading spacing: level i is timestep i·(1000 / S).
            let stride = 1000 / plan.num_levels();
            let levels: Vec<f64> = (0..plan.num_levels())
                .map(|i| (i * stride) as f64)
                .collect();
            for (step, ts) in calls[..plan.num_levels()].iter().enumerate() {
                assert!(
                    ts.iter()
                        .all(|&t| t == levels[plan.num_levels() - 1 - step])
                );
            }
            // Then windows back to front, each frame at its own level; the front window of
            // lookahead starts with window/2 context frames labelled t_0.
            let mut windows = plan.windows();
            let first = &calls[plan.num_levels()];
            let (start, _, end) = windows[0];
            let want: Vec<f64> = (start..end).map(|p| levels[plan.level_of(p)]).collect();
            assert_eq!(first, &want);
            let front = windows.pop().unwrap();
            let front_call = &calls[plan.num_levels() + plan.calls_per_frame() - 1];
            let want: Vec<f64> = (front.0..front.2)
                .map(|p| levels[plan.level_of(p)])
                .collect();
            assert_eq!(front_call, &want);
            if lookahead {
                assert_eq!(front_call, &[0.0, 0.0, 0.0, stride as f64]);
            }
        }
    }
}

#[test]
fn the_stream_is_the_sample_and_one_seed_gives_one_video() {
    let device = Device::flex();
    let model = FrameLocal::default();
    let sampler = FifoSampler::new(&model, from_config_json(DDIM).unwrap(), Fifo::new(4, 2))
        .with_guidance(guidance(&device));
    let shape = VideoShape::new([1, 2, 7, 2, 2]);
    let cond = || Conditioning::Shared(Tensor::ones([1, 1, 2], &device).mul_scalar(0.3));
    let sample = |seed| {
        host(
            &sampler
                .sample(
                    shape,
                    cond(),
                    &mut SeededNoise::new(seed),
                    &device,
                    &mut |_| Control::Continue,
                )
                .unwrap(),
        )
    };
    let a = sample(5);
    assert_eq!(a, sample(5));
    assert_ne!(a, sample(6));
    let mut noise = SeededNoise::new(5);
    let frames: Vec<Tensor<5>> = sampler
        .stream(shape, cond(), &mut noise, &device)
        .unwrap()
        .collect::<Result<_>>()
        .unwrap();
    assert_eq!(host(&Tensor::cat(frames, 2)), a);
    assert!(a.iter().all(|v| v.is_finite()));
}

/// A model that mixes the frames of each batch item (`ε` of [`FrameLocal`] plus `0.3·` the
/// item's mean over frames), so lookahead's context frames change the output; records the
/// batch of every call.
#[derive(Default)]
struct FrameMixing {
    local: FrameLocal,
    batches: Mutex<Vec<usize>>,
}

impl Denoiser for FrameMixing {
    fn prediction_type(&self) -> PredictionType {
        PredictionType::Epsilon
    }
    fn predict(&self, input: DenoiserInput<'_>) -> Result<Tensor<5>> {
        let [b, _, f, _, _] = input.latents.dims();
        self.batches.lock().unwrap().push(b);
        let mix = input.latents.clone().mean_dim(2).mul_scalar(0.3);
        let local = self.local.predict(input)?;
        Ok(local + mix.repeat_dim(2, f))
    }
}

/// Windows stacked into one model call (2, 3, or more than an iteration has) give the video
/// of one call per window, bit for bit, with and without lookahead and guidance, with
/// per-frame prompts and `η = 1` (the noise is drawn in the same order); the calls per frame
/// drop to `⌈windows / windows_per_call⌉`, each `windows_per_call` batches wide.
#[test]
fn windows_per_call_do_not_change_the_video() {
    let device = Device::flex();
    let frames = 9;
    let shape = VideoShape::new([1, 2, frames, 2, 3]);
    let contexts: Vec<f32> = (0..frames).map(|f| 0.07 * f as f32 - 0.3).collect();
    for lookahead in [false, true] {
        for guided in [false, true] {
            let run = |per_call: usize| {
                let model = FrameMixing::default();
                let plan = Fifo {
                    lookahead,
                    ..Fifo::new(4, 3).windows_per_call(per_call)
                };
                let mut sampler = FifoSampler::new(&model, from_config_json(DDIM).unwrap(), plan);
                if guided {
                    sampler = sampler.with_guidance(guidance(&device));
                }
                let video = sampler
                    .sample(
                        shape,
                        per_frame_context(&contexts, &device),
                        &mut SeededNoise::new(11),
                        &device,
                        &mut |_| Control::Continue,
                    )
                    .unwrap();
                let batches = model.batches.lock().unwrap().clone();
                (host(&video), plan, batches)
            };
            let (want, _, one) = run(1);
            assert!(want.iter().all(|v| v.is_finite()));
            for per_call in [2, 3, 64] {
                let (got, plan, batches) = run(per_call);
                assert_eq!(
                    got, want,
                    "lookahead {lookahead}, guided {guided}, {per_call}"
                );
                let windows = plan.windows_per_frame();
                assert_eq!(plan.calls_per_frame(), windows.div_ceil(per_call));
                let width = if guided { 2 } else { 1 };
                let levels = plan.num_levels();
                // The warm-up's calls are one window each; then every iteration's windows in
                // groups of `per_call`, the last group the rest.
                assert!(batches[..levels].iter().all(|&b| b == width));
                let iterations = (batches.len() - levels) / plan.calls_per_frame();
                assert_eq!(batches.len() - levels, iterations * plan.calls_per_frame());
                assert_eq!(
                    batches.len() - levels,
                    (one.len() - levels) / windows * plan.calls_per_frame()
                );
                let mut group: Vec<usize> = (0..windows)
                    .step_by(per_call)
                    .map(|s| width * (windows - s).min(per_call))
                    .collect();
                group = group.repeat(iterations);
                assert_eq!(&batches[levels..], &group[..]);
            }
        }
    }
}

#[test]
fn progress_sees_the_warm_up_and_every_frame_and_may_cancel() {
    let device = Device::flex();
    let model = FrameLocal::default();
    let plan = Fifo::new(2, 2);
    let sampler = FifoSampler::new(&model, from_config_json(DDIM).unwrap(), plan);
    let shape = VideoShape::new([1, 1, 3, 1, 1]);
    let mut seen = Vec::new();
    sampler
        .sample(
            shape,
            Conditioning::None,
            &mut SeededNoise::new(0),
            &device,
            &mut |p| {
                seen.push((p.iteration, p.step, p.num_steps));
                Control::Continue
            },
        )
        .unwrap();
    let want: Vec<(usize, usize, usize)> = (0..4)
        .map(|s| (0, s, 4))
        .chain((0..3).map(|s| (1, s, 3)))
        .collect();
    assert_eq!(seen, want);
    let err = sampler
        .sample(
            shape,
            Conditioning::None,
            &mut SeededNoise::new(0),
            &device,
            &mut |p| {
                if p.iteration == 1 {
                    Control::Cancel
                } else {
                    Control::Continue
                }
            },
        )
        .unwrap_err();
    assert!(matches!(err, Error::Cancelled { step: 0 }));
}

#[test]
fn bad_requests_are_named_before_any_model_call() {
    let device = Device::flex();
    let shape = VideoShape::new([1, 2, 6, 2, 2]);
    let model = FrameLocal::default();
    let try_plan = |plan: Fifo, config: &str, cond: Conditioning| {
        let sampler = FifoSampler::new(&model, from_config_json(config).unwrap(), plan);
        let mut noise = SeededNoise::new(0);
        sampler
            .stream(shape, cond, &mut noise, &device)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default()
    };
    let none = || Conditioning::None;
    assert!(try_plan(Fifo::new(3, 2), DDIM, none()).contains("window"));
    assert!(try_plan(Fifo::new(0, 2), DDIM, none()).contains("window"));
    assert!(try_plan(Fifo::new(4, 0), DDIM, none()).contains("partitions"));
    let stacked = Fifo::new(4, 2).windows_per_call(0);
    assert!(try_plan(stacked, DDIM, none()).contains("windows_per_call"));
    for eta in [-1.0, f64::NAN] {
        let plan = Fifo {
            eta,
            ..Fifo::new(4, 2)
        };
        assert!(try_plan(plan, DDIM, none()).contains("eta"));
    }
    let heun = r#"{"_class_name": "HeunDiscreteScheduler"}"#;
    assert!(try_plan(Fifo::new(4, 2), heun, none()).contains("scheduler"));
    let v = r#"{"_class_name": "DDIMScheduler", "prediction_type": "v_prediction"}"#;
    assert!(try_plan(Fifo::new(4, 2), v, none()).contains("prediction_type"));
    let short = per_frame_context(&[0.0; 5], &device);
    assert!(try_plan(Fifo::new(4, 2), DDIM, short).contains("conditioning"));
    let odd_window = Fifo {
        lookahead: false,
        ..Fifo::new(3, 2)
    };
    assert!(try_plan(odd_window, DDIM, none()).is_empty());
    assert!(model.calls.lock().unwrap().is_empty());
}

proptest! {
    #[test]
    fn each_iteration_writes_every_level_once(
        half in 1usize..10,
        partitions in 1usize..6,
        lookahead: bool,
    ) {
        let plan = Fifo { lookahead, ..Fifo::new(2 * half, partitions) };
        let mut written = vec![0usize; plan.queue_len()];
        for (start, write_from, end) in plan.windows() {
            prop_assert_eq!(end - start, plan.window);
            prop_assert!(start <= write_from && end <= plan.queue_len());
            for w in &mut written[write_from..end] {
                *w += 1;
            }
        }
        prop_assert!(written[..plan.context()].iter().all(|&w| w == 0));
        prop_assert!(written[plan.context()..].iter().all(|&w| w == 1));
        prop_assert_eq!(plan.windows().len(), plan.calls_per_frame());
    }
}
