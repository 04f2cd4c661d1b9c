//! Hierarchical keyframe sampling (ControlVideo's long-video sampler, Zhang et al. 2023,
//! "ControlVideo: Training-free Controllable Text-to-Video Generation", reference code
//! `models/pipeline_controlvideo.py::generate_long_video`; the coarse-to-fine idea of NUWA-XL,
//! Yin et al. 2023; see `shared/reference/algorithms.md` §10).
//!
//! Sparse keyframes span the whole video; the frames between two keyframes are generated
//! conditioned on them. At every step:
//! 1. the keyframes are denoised together, each attending to all keyframes
//!    ([`CrossFrame::Full`]), so the whole video's layout is decided jointly;
//! 2. every gap is denoised as one clip `[k_i, inner frames…, k_{i+1}]` in which every frame's
//!    spatial self-attention reads the two keyframes ([`Endpoints`]), and only the inner frames
//!    are stepped from that call.
//!
//! Every group (the keyframes, each gap) keeps its own scheduler clone, so multistep solvers
//! stay correct. Model calls per step: one on the keyframes and one per gap (each of at most
//! `key_stride + 1` frames); the video's frames are all stepped exactly once.
//!
//! Unlike the reference: keyframes are every `key_stride` frames plus the last (the reference
//! uses `√F − 1`, which grows with the video; a stride of the model's clip length keeps every
//! call within it), and the inner frames attend to the two keyframes around them as the paper
//! says (the reference's index `−1` picks the last inner frame).
//!
//! Invariant (tested): for a model whose frames do not interact, it equals direct sampling.

use burn::tensor::{Device, Int, Tensor, TensorData};
use vdm_core::{Conditioning, CrossFrame, CrossFrameHook, Error, NoiseSource, Result, VideoShape};
use vdm_schedulers::Scheduler;

use crate::noise_prior::{Gaussian, InitialNoise};
use crate::sampler::{
    At, Control, GuidedModel, MethodSampler, Progress, Routing, report, select_frames,
};

/// Every frame of a clip attends to the clip's first and last frames (the two keyframes of a
/// gap).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Endpoints;

impl CrossFrameHook for Endpoints {
    fn key_frames(&self, _frame: usize, frames: usize) -> Option<Vec<usize>> {
        Some(vec![0, frames - 1])
    }
}

/// The keyframe plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Keyframes {
    /// Frames from one keyframe to the next (a gap clip has `key_stride + 1` frames: keep it
    /// within the model's clip length, e.g. 15 for 16-frame models).
    pub key_stride: usize,
}

impl Keyframes {
    /// Keyframes every `key_stride` frames.
    pub fn new(key_stride: usize) -> Self {
        Self { key_stride }
    }

    /// The keyframes of a `frames`-frame video: `0, s, 2s, …` and the last frame.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] naming `key_stride` when it is 0, `frames` when it is below 2.
    pub fn keyframes(&self, frames: usize) -> Result<Vec<usize>> {
        if self.key_stride == 0 {
            return Err(Error::invalid("key_stride", "must be ≥ 1"));
        }
        if frames < 2 {
            return Err(Error::invalid(
                "frames",
                format!("keyframe sampling needs at least 2 frames, got {frames}"),
            ));
        }
        let mut keys: Vec<usize> = (0..frames).step_by(self.key_stride).collect();
        if keys.last() != Some(&(frames - 1)) {
            keys.push(frames - 1);
        }
        Ok(keys)
    }
}

/// The hierarchical keyframe sampler.
pub type KeyframeSampler<'a> = MethodSampler<'a, Keyframes>;

impl KeyframeSampler<'_> {
    /// Samples a video of `shape`; `conditioning` is shared or per frame (each group gets its
    /// frames'); `noise` provides every random number; `progress` sees every step.
    ///
    /// # Errors
    /// A bad plan or the checks of every sampler before any model work; then the model's and
    /// the scheduler's errors; [`Error::Cancelled`].
    pub fn sample(
        &mut self,
        shape: VideoShape,
        conditioning: Conditioning,
        num_inference_steps: usize,
        noise: &mut dyn NoiseSource,
        device: &Device,
        progress: &mut dyn FnMut(Progress<'_>) -> Control,
    ) -> Result<Tensor<5>> {
        let keys = self.plan.keyframes(shape.frames)?;
        let guided = self.check(num_inference_steps)?;
        // The groups: the keyframes, then every gap as [k_i, inner…, k_{i+1}] (inner stepped).
        let mut groups: Vec<Group> = vec![Group {
            frames: keys.clone(),
            stepped: 0..keys.len(),
            hook: &CrossFrame::Full,
        }];
        for pair in keys.windows(2) {
            if pair[1] - pair[0] > 1 {
                groups.push(Group {
                    frames: (pair[0]..=pair[1]).collect(),
                    stepped: 1..pair[1] - pair[0],
                    hook: &Endpoints,
                });
            }
        }
        let conditioning_of = |frames: &[usize]| -> Result<Conditioning> {
            let own = select_frames(&conditioning, frames, device);
            match &guided {
                Some(g) => Conditioning::cat(vec![select_frames(&g.negative, frames, device), own]),
                None => Ok(own),
            }
        };
        let contexts = groups
            .iter()
            .map(|g| conditioning_of(&g.frames))
            .collect::<Result<Vec<_>>>()?;
        self.scheduler.set_timesteps(num_inference_steps)?;
        let mut schedulers: Vec<Box<dyn Scheduler>> =
            groups.iter().map(|_| self.scheduler.box_clone()).collect();
        let mut latents = Gaussian
            .sample(shape, noise, device)?
            .mul_scalar(self.scheduler.init_noise_sigma() as f32);
        let timesteps = self.scheduler.timesteps().to_vec();
        let model = GuidedModel {
            denoiser: self.denoiser,
            guidance: guided.as_ref(),
            finite_checks: self.finite_checks,
        };
        for (step, &t) in timesteps.iter().enumerate() {
            let mut next = latents.clone();
            for (i, group) in groups.iter().enumerate() {
                let x = gather(&latents, &group.frames, device);
                let routing = Routing {
                    cross_frame: Some(group.hook),
                    ..Routing::default()
                };
                let stepped = model
                    .step(
                        schedulers[i].as_mut(),
                        x,
                        At::new(step, timesteps.len(), t),
                        &contexts[i],
                        routing,
                        noise,
                    )?
                    .prev_sample;
                for (j, &frame) in group.frames[group.stepped.clone()].iter().enumerate() {
                    let value = stepped.clone().narrow(2, group.stepped.start + j, 1);
                    let [b, c, _, h, w] = next.dims();
                    next = next.slice_assign([0..b, 0..c, frame..frame + 1, 0..h, 0..w], value);
                }
            }
            latents = next;
            report(
                progress,
                Progress::single_pass(step, timesteps.len(), t, &latents, None),
                self.finite_checks,
            )?;
        }
        Ok(latents)
    }
}

/// One group of frames denoised by one model call per step.
struct Group<'h> {
    /// The video frames of the call, in order.
    frames: Vec<usize>,
    /// The positions (in `frames`) this group steps.
    stepped: std::ops::Range<usize>,
    /// The cross-frame attention of the call.
    hook: &'h dyn CrossFrameHook,
}

fn index(frames: &[usize], device: &Device) -> Tensor<1, Int> {
    let values: Vec<i64> = frames.iter().map(|&f| f as i64).collect();
    Tensor::from_data(TensorData::new(values, [frames.len()]), device)
}

/// The frames `frames` of a video `[B, C, F, H, W]`.
fn gather(video: &Tensor<5>, frames: &[usize], device: &Device) -> Tensor<5> {
    video.clone().select(2, index(frames, device))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use vdm_core::{DenoiserInput, PredictionType, SeededNoise};
    use vdm_schedulers::from_config_json;

    use crate::sampler::{Guidance, LongVideoSampler};
    use vdm_core::Denoiser;

    /// `ε = 0.1·x + c_f`, frame by frame (ignores other frames and cross-frame attention);
    /// records the cross-frame plans it was given.
    #[derive(Default)]
    struct FrameLocal {
        calls: std::sync::Mutex<Vec<Option<Vec<Vec<usize>>>>>,
    }

    impl Denoiser for FrameLocal {
        fn prediction_type(&self) -> PredictionType {
            PredictionType::Epsilon
        }
        fn predict(&self, input: DenoiserInput<'_>) -> Result<Tensor<5>> {
            let shape = input.shape()?;
            let plan = vdm_core::cross_frame::key_frame_plan(input.cross_frame, shape.frames)?;
            self.calls.lock().unwrap().push(plan);
            let out = input.latents.clone().mul_scalar(0.1);
            Ok(
                match input.conditioning.per_frame(shape.batch, shape.frames)? {
                    Some(ctx) => {
                        out + ctx.mean_dim(2).mean_dim(1).reshape([
                            shape.batch,
                            1,
                            shape.frames,
                            1,
                            1,
                        ])
                    }
                    None => out,
                },
            )
        }
    }

    fn host(t: Tensor<5>) -> Vec<f32> {
        t.into_data().convert::<f32>().try_to_vec::<f32>().unwrap()
    }

    #[test]
    fn a_frame_local_model_is_sampled_as_directly() {
        let device = Device::flex();
        let frames = 11;
        let shape = VideoShape::new([1, 2, frames, 2, 3]);
        let values: Vec<f32> = (0..frames).flat_map(|f| [0.1 * f as f32; 2]).collect();
        let cond = Conditioning::PerFrame(Tensor::from_data(
            TensorData::new(values, [1, frames, 1, 2]),
            &device,
        ));
        for config in [
            r#"{"_class_name": "DDIMScheduler", "clip_sample": false}"#,
            r#"{"_class_name": "DPMSolverMultistepScheduler", "solver_order": 2}"#,
        ] {
            let guidance = Guidance {
                scale: 3.0,
                negative: Conditioning::Shared(Tensor::zeros([1, 1, 2], &device)),
            };
            let model = FrameLocal::default();
            let want = LongVideoSampler::new(&model, from_config_json(config).unwrap())
                .with_guidance(guidance.clone())
                .sample(
                    shape,
                    cond.clone(),
                    6,
                    &mut SeededNoise::new(1),
                    &device,
                    &mut |_| Control::Continue,
                )
                .unwrap();
            let model = FrameLocal::default();
            let got =
                KeyframeSampler::new(&model, from_config_json(config).unwrap(), Keyframes::new(4))
                    .with_guidance(guidance)
                    .sample(
                        shape,
                        cond.clone(),
                        6,
                        &mut SeededNoise::new(1),
                        &device,
                        &mut |_| Control::Continue,
                    )
                    .unwrap();
            for (a, b) in host(got).iter().zip(host(want)) {
                assert!((a - b).abs() < 1e-5, "{config}: {a} vs {b}");
            }
            // Keyframes 0, 4, 8, 10: one call on them (full attention) and three gap calls
            // (endpoint attention) per step.
            let calls = model.calls.lock().unwrap();
            assert_eq!(calls.len(), 6 * 4);
            assert_eq!(calls[0], Some(vec![vec![0, 1, 2, 3]; 4]));
            assert_eq!(calls[1], Some(vec![vec![0, 4]; 5]));
            assert_eq!(calls[3], Some(vec![vec![0, 2]; 3]));
        }
    }

    #[test]
    fn bad_plans_are_named() {
        let device = Device::flex();
        let model = FrameLocal::default();
        let ddim = r#"{"_class_name": "DDIMScheduler"}"#;
        let err = |stride: usize, frames: usize| {
            KeyframeSampler::new(
                &model,
                from_config_json(ddim).unwrap(),
                Keyframes::new(stride),
            )
            .sample(
                VideoShape::new([1, 1, frames, 1, 1]),
                Conditioning::None,
                2,
                &mut SeededNoise::new(0),
                &device,
                &mut |_| Control::Continue,
            )
            .unwrap_err()
            .to_string()
        };
        assert!(err(0, 8).contains("key_stride"));
        assert!(err(3, 1).contains("frames"));
        assert!(model.calls.lock().unwrap().is_empty());
    }

    proptest! {
        #[test]
        fn keyframes_cover_the_video(frames in 2usize..300, stride in 1usize..40) {
            let keys = Keyframes::new(stride).keyframes(frames).unwrap();
            prop_assert_eq!(keys[0], 0);
            prop_assert_eq!(*keys.last().unwrap(), frames - 1);
            for pair in keys.windows(2) {
                prop_assert!(pair[0] < pair[1] && pair[1] - pair[0] <= stride);
            }
        }
    }
}
