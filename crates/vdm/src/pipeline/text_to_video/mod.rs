//! The text-to-video pipeline over a diffusers folder: diffusers' `TextToVideoSDPipeline`
//! (`pipelines/deprecated/text_to_video_synthesis/pipeline_text_to_video_synth.py`) and
//! `AnimateDiffPipeline` (`pipelines/animatediff/pipeline_animatediff.py`), which differ only in
//! the UNet: both encode the prompt pair, start from `randn · init_noise_sigma`, run the
//! scheduler with classifier-free guidance on the batch `[uncond, cond]`, decode every frame with
//! the VAE and map it to `[0, 1]`.
//!
//! This file samples; `loading.rs` reads the folder and `decoding.rs` turns latents into frames.

mod decoding;
mod loading;

use std::cell::RefCell;

use burn::tensor::{Device, Tensor};
use vdm_core::{
    Conditioning, Denoiser, Error, NoiseSource, Result, SeededNoise, Shard, ShardedDenoiser,
    VideoShape,
};
use vdm_longvideo::co_denoising::CoDenoisingSampler;
use vdm_longvideo::fifo::FifoSampler;
use vdm_longvideo::freenoise::{
    FreeNoiseHook, Lerp, NoiseRescheduling, NoiseType, travelling_conditioning,
};
use vdm_longvideo::keyframes::KeyframeSampler;
use vdm_longvideo::reconstruction::{Extension, ExtensionSampler};
use vdm_longvideo::reuse_diffuse::ReuseDiffuseSampler;
use vdm_longvideo::sampler::{Control, Guidance, LongVideoSampler, Progress};
use vdm_longvideo::text2video_zero::Text2VideoZeroSampler;
use vdm_models::chunking::Chunking;
use vdm_models::clip::{PromptEncoder, PromptOptions};
use vdm_schedulers::config::config_value;
use vdm_schedulers::{Scheduler, SchedulerConfig};

pub use super::components::{FrameDecoder, VideoUNet};
use super::folder::PipelineClass;
use super::generation::{Generation, SchedulerChoice, check_side};
use crate::video::Video;

/// Frames per VAE call when [`Generation::decode_chunk_size`] is not set (AnimateDiff's
/// `decode_chunk_size`).
pub const DEFAULT_DECODE_CHUNK: usize = 16;

/// A checked sampling request ([`TextToVideoPipeline::request`]).
struct Request {
    shape: VideoShape,
    scheduler: Box<dyn Scheduler>,
    conditioning: Conditioning,
    guidance: Option<Guidance>,
    freenoise: Option<(FreeNoiseHook, NoiseRescheduling)>,
}

/// What the progress callback of [`TextToVideoPipeline::generate_with`] sees.
#[derive(Debug)]
pub enum PipelineProgress<'a> {
    /// A denoising step finished (with FreeInit, `iteration` counts the passes).
    Denoise(Progress<'a>),
    /// `done` of `total` frames are decoded.
    Decode {
        /// Frames decoded so far.
        done: usize,
        /// Frames to decode.
        total: usize,
    },
}

/// A text-to-video pipeline loaded from a diffusers folder.
///
/// ```no_run
/// use vdm::pipeline::{Generation, TextToVideoPipeline};
///
/// let device = vdm::device();
/// let pipe = TextToVideoPipeline::from_dir("zeroscope_v2_576w", &device)?;
/// let video = pipe.generate(&Generation::new("a corgi on the beach").frames(24).seed(7))?;
/// let images = video.to_rgb_images()?;
/// # Ok::<(), vdm::Error>(())
/// ```
#[derive(Debug)]
pub struct TextToVideoPipeline {
    /// Which diffusers pipeline the folder holds.
    pub class: PipelineClass,
    /// Tokenizer and text encoder.
    pub prompt_encoder: PromptEncoder,
    /// The video UNet.
    pub unet: VideoUNet,
    /// The VAE (decoder only), or the patches of a pixel-space model.
    pub vae: FrameDecoder,
    /// The folder's `scheduler/scheduler_config.json`.
    pub scheduler_config: String,
    /// Where the models run.
    pub device: Device,
    /// The UNet spread over several devices ([`with_devices`](Self::with_devices)), or `None`:
    /// it runs on [`device`](Self::device).
    pub shards: Option<ShardedDenoiser>,
}

impl TextToVideoPipeline {
    /// Sets the UNet's chunked inference ([`Chunking`]): spatial layers see at most
    /// `chunking.frames` frames per call, temporal layers `chunking.positions` positions, so
    /// activation memory stays bounded however many frames are generated.
    pub fn with_chunking(mut self, chunking: Chunking) -> Self {
        self.unet = self.unet.with_chunking(chunking);
        if let Some(sharded) = self.shards.take() {
            let devices: Vec<(String, Device)> = sharded
                .shards()
                .iter()
                .map(|s| (s.name.clone(), s.device.clone()))
                .collect();
            self.shards = Some(self.sharded_unet(&devices));
        }
        self
    }

    /// Spreads the UNet over `devices` (name, device): one replica of its weights on each,
    /// every model call split along the batch ([`ShardedDenoiser`]: classifier-free
    /// guidance's two halves run on two devices at once). The text encoder and the decoder
    /// stay on [`device`](Self::device), where the sampler's latents and the outputs live.
    /// Devices are local (`Device::cuda(1)`, ...) or remote (`vdm::remote::connect`, with the
    /// `remote` feature; a server that stops answering ends the run with an error naming it).
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] (`devices`) for an empty list.
    pub fn with_devices(mut self, devices: &[(String, Device)]) -> Result<Self> {
        if devices.is_empty() {
            return Err(Error::InvalidConfig {
                field: "devices".into(),
                reason: "at least one device is needed".into(),
            });
        }
        self.shards = Some(self.sharded_unet(devices));
        Ok(self)
    }

    /// Replicas of the UNet on `devices` (not empty).
    fn sharded_unet(&self, devices: &[(String, Device)]) -> ShardedDenoiser {
        let shards = devices
            .iter()
            .map(|(name, device)| {
                let shard = Shard::new(name.clone(), device.clone(), self.unet.to_device(device));
                // A remote device from `vdm::remote::connect` is watched while calls wait on it.
                #[cfg(feature = "remote")]
                if let Some(watch) = crate::remote::watch(device) {
                    return shard.with_watch(watch);
                }
                shard
            })
            .collect();
        ShardedDenoiser::new(shards, self.device.clone())
            .expect("replicas of one UNet, at least one")
    }

    /// The model the samplers call: the UNet, or its shards.
    fn denoiser(&self) -> &dyn Denoiser {
        match &self.shards {
            Some(sharded) => sharded,
            None => &self.unet,
        }
    }

    /// The VAE's spatial factor (8 for every SD-family VAE; the patch size of a pixel-space
    /// model): height and width must be multiples of it.
    pub fn vae_scale_factor(&self) -> usize {
        self.vae.scale_factor()
    }

    /// The `(height, width)` in pixels a generation will have, checked against the VAE's
    /// scale factor.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] naming `height` when neither the settings nor the UNet config
    /// give a size, or naming the side that is not a positive multiple of the VAE's factor.
    pub fn resolve_size(&self, settings: &Generation) -> Result<(usize, usize)> {
        let f = self.vae_scale_factor();
        let default = self.unet.sample_size().map(|(h, w)| (h * f, w * f));
        let height = settings.height.or(default.map(|d| d.0));
        let width = settings.width.or(settings.height).or(default.map(|d| d.1));
        let (Some(height), Some(width)) = (height, width) else {
            return Err(Error::invalid(
                "height",
                "not given, and the UNet config has no sample_size to default to",
            ));
        };
        check_side("height", height, f)?;
        check_side("width", width, f)?;
        Ok((height, width))
    }

    /// Generates a video with seeded noise ([`Generation::seed`]) and no progress reporting.
    ///
    /// # Errors
    /// As [`generate_with`](Self::generate_with).
    pub fn generate(&self, settings: &Generation) -> Result<Video> {
        let mut noise = SeededNoise::new(settings.seed);
        self.generate_with(settings, &mut noise, &mut |_| Control::Continue)
    }

    /// Generates a video, drawing every random number from `noise` and reporting each step and
    /// decoded chunk to `progress` (which may cancel).
    ///
    /// # Errors
    /// Bad settings ([`Generation::validate`], sizes, frames over the motion modules' table
    /// without FreeNoise, an unknown scheduler) before any model work; then the models' errors;
    /// [`Error::NonFinite`] naming the step, the timestep and the component (model output,
    /// latents, VAE-decoded frames) at the first NaN or infinity, unless
    /// [`Generation::finite_checks`] is off; [`Error::Cancelled`] when `progress` cancels.
    pub fn generate_with(
        &self,
        settings: &Generation,
        noise: &mut dyn NoiseSource,
        progress: &mut dyn FnMut(PipelineProgress<'_>) -> Control,
    ) -> Result<Video> {
        let latents = self.sample_latents(settings, noise, progress)?;
        let (chunk, checks) = (settings.decode_chunk_size, settings.finite_checks);
        self.decode_video(latents, chunk, checks, progress)
    }

    /// The denoised latents `[1, C, F, h, w]` (scaled as the UNet sees them).
    ///
    /// # Errors
    /// As [`generate_with`](Self::generate_with).
    pub fn sample_latents(
        &self,
        settings: &Generation,
        noise: &mut dyn NoiseSource,
        progress: &mut dyn FnMut(PipelineProgress<'_>) -> Control,
    ) -> Result<Tensor<5>> {
        let request = self.request(settings)?;
        let mut progress = |p: Progress<'_>| progress(PipelineProgress::Denoise(p));
        // The long-video methods exclude each other (`Generation::validate`).
        if let Some(plan) = settings.long_video.extension {
            let mut parts = Vec::new();
            self.extension_parts(settings, plan, request, noise, &mut progress, &mut |part| {
                parts.push(part);
                Ok(())
            })?;
            return Ok(Tensor::cat(parts, 2));
        }
        let (shape, cond, device) = (request.shape, request.conditioning, &self.device);
        if let Some(plan) = settings.long_video.fifo {
            let mut sampler = FifoSampler::new(self.denoiser(), request.scheduler, plan)
                .with_finite_checks(settings.finite_checks);
            if let Some(g) = request.guidance {
                sampler = sampler.with_guidance(g);
            }
            return sampler.sample(shape, cond, noise, device, &mut progress);
        }
        if let Some(plan) = settings.long_video.reuse_diffuse.clone() {
            let mut sampler = ReuseDiffuseSampler::new(self.denoiser(), request.scheduler, plan)
                .with_finite_checks(settings.finite_checks);
            if let Some(g) = request.guidance {
                sampler = sampler.with_guidance(g);
            }
            return sampler.sample(shape, cond, settings.steps, noise, device, &mut progress);
        }
        if let Some(plan) = settings.long_video.keyframes {
            let mut sampler = KeyframeSampler::new(self.denoiser(), request.scheduler, plan)
                .with_finite_checks(settings.finite_checks);
            if let Some(g) = request.guidance {
                sampler = sampler.with_guidance(g);
            }
            return sampler.sample(shape, cond, settings.steps, noise, device, &mut progress);
        }
        if let Some(plan) = settings.long_video.text2video_zero {
            let mut sampler = Text2VideoZeroSampler::new(self.denoiser(), request.scheduler, plan)
                .with_finite_checks(settings.finite_checks);
            if let Some(g) = request.guidance {
                sampler = sampler.with_guidance(g);
            }
            return sampler.sample(shape, cond, settings.steps, noise, device, &mut progress);
        }
        if let Some(plan) = settings.long_video.co_denoising.clone() {
            let mut sampler = CoDenoisingSampler::new(self.denoiser(), request.scheduler, plan)
                .with_finite_checks(settings.finite_checks);
            if let Some(g) = request.guidance {
                sampler = sampler.with_guidance(g);
            }
            return sampler.sample(shape, cond, settings.steps, noise, device, &mut progress);
        }
        let mut sampler = LongVideoSampler::new(self.denoiser(), request.scheduler)
            .with_finite_checks(settings.finite_checks);
        if let Some(g) = request.guidance {
            sampler = sampler.with_guidance(g);
        }
        if let Some((hook, rescheduling)) = &request.freenoise {
            sampler = sampler
                .with_temporal(hook)
                .with_initial_noise(*rescheduling);
        }
        if let Some(freelong) = &settings.long_video.freelong {
            sampler = sampler.with_temporal(freelong);
        }
        if let Some(smoother) = &settings.long_video.smoother {
            sampler = sampler.with_smoother(smoother.clone());
        }
        if let Some(freeinit) = &settings.long_video.freeinit {
            sampler = sampler.with_refinement(*freeinit);
        }
        sampler.sample(shape, cond, settings.steps, noise, device, &mut progress)
    }

    /// Autoregressive extension: the first clip (`plan.window` frames) sampled directly, then
    /// window after window from its last frames; the clip and each window's new frames (clean
    /// latents `[1, C, n, h, w]`, in order) go to `on_part` as soon as they exist.
    fn extension_parts(
        &self,
        settings: &Generation,
        plan: Extension,
        request: Request,
        noise: &mut dyn NoiseSource,
        progress: &mut dyn FnMut(Progress<'_>) -> Control,
        on_part: &mut dyn FnMut(Tensor<5>) -> Result<()>,
    ) -> Result<()> {
        let (shape, cond, device) = (request.shape, request.conditioning, &self.device);
        let first = plan.window.min(shape.frames);
        let mut direct = LongVideoSampler::new(self.denoiser(), request.scheduler.clone())
            .with_finite_checks(settings.finite_checks);
        if let Some(g) = &request.guidance {
            direct = direct.with_guidance(g.clone());
        }
        let clip = direct.sample(
            shape.with_frames(first),
            cond.frames(0, first),
            settings.steps,
            noise,
            device,
            progress,
        )?;
        on_part(clip.clone())?;
        if first == shape.frames {
            return Ok(());
        }
        let mut sampler = ExtensionSampler::new(self.denoiser(), request.scheduler, plan.weight)
            .with_finite_checks(settings.finite_checks);
        if let Some(g) = request.guidance {
            sampler = sampler.with_guidance(g);
        }
        sampler.extend_parts(
            clip,
            shape.frames,
            plan.window,
            plan.context,
            cond,
            settings.steps,
            noise,
            progress,
            on_part,
        )
    }

    /// Generates a video piece by piece: every decoded piece (a [`Video`] of one frame with
    /// FIFO-Diffusion, of up to [`Generation::decode_chunk_size`] frames otherwise) goes to
    /// `on_frames` with the index of its first frame as soon as it exists, so the decoded
    /// video is never held whole. With FIFO-Diffusion frames come out while sampling goes on
    /// and the memory does not grow with the length; with autoregressive extension each
    /// window's new frames come out when the window is sampled; the other methods sample every
    /// latent first (small beside the frames), then decode. Either way, when the run stops
    /// early (a cancel, a failing device), the frames handed over so far are the finished
    /// frames of the video it would have made.
    ///
    /// # Errors
    /// As [`generate_with`](Self::generate_with); the errors of `on_frames`, which stop the
    /// generation.
    pub fn generate_frames(
        &self,
        settings: &Generation,
        noise: &mut dyn NoiseSource,
        progress: &mut dyn FnMut(PipelineProgress<'_>) -> Control,
        on_frames: &mut dyn FnMut(usize, Video) -> Result<()>,
    ) -> Result<()> {
        let (chunk, checks) = (settings.decode_chunk_size, settings.finite_checks);
        if let (None, Some(plan)) = (settings.long_video.fifo, settings.long_video.extension) {
            let request = self.request(settings)?;
            let total = request.shape.frames;
            // The sampler reports denoising and the decoder decoding through the one callback,
            // never at the same time.
            let progress = RefCell::new(progress);
            let mut done = 0;
            return self.extension_parts(
                settings,
                plan,
                request,
                noise,
                &mut |p| (*progress.borrow_mut())(PipelineProgress::Denoise(p)),
                &mut |part| {
                    let n = part.dims()[2];
                    self.decode_pieces(
                        part,
                        chunk,
                        checks,
                        &mut |p| match p {
                            PipelineProgress::Decode { done: piece, .. } => {
                                (*progress.borrow_mut())(PipelineProgress::Decode {
                                    done: done + piece,
                                    total,
                                })
                            }
                            other => (*progress.borrow_mut())(other),
                        },
                        &mut |i, v| on_frames(done + i, v),
                    )?;
                    done += n;
                    Ok(())
                },
            );
        }
        let Some(plan) = settings.long_video.fifo else {
            let latents = self.sample_latents(settings, noise, progress)?;
            return self.decode_pieces(latents, chunk, checks, progress, on_frames);
        };
        let request = self.request(settings)?;
        let mut sampler =
            FifoSampler::new(self.denoiser(), request.scheduler, plan).with_finite_checks(checks);
        if let Some(g) = request.guidance {
            sampler = sampler.with_guidance(g);
        }
        let total = request.shape.frames;
        let mut stream =
            sampler.stream(request.shape, request.conditioning, noise, &self.device)?;
        let mut done = 0;
        while let Some(latent) = stream.next_frame(&mut |p| progress(PipelineProgress::Denoise(p)))
        {
            self.decode_pieces(
                latent?,
                Some(1),
                checks,
                &mut |_| Control::Continue,
                &mut |_, v| on_frames(done, v),
            )?;
            done += 1;
            if progress(PipelineProgress::Decode { done, total }) == Control::Cancel {
                return Err(Error::Cancelled { step: done });
            }
        }
        Ok(())
    }

    /// Everything a sampling run needs, checked before any model work: the settings, the
    /// size, the scheduler, `clip_skip`, the frame count against the motion modules'
    /// positions, FreeNoise's windows, the prompts' embeddings.
    fn request(&self, settings: &Generation) -> Result<Request> {
        let factor = self.vae_scale_factor();
        settings.validate(factor)?;
        let (height, width) = self.resolve_size(settings)?;
        let scheduler = self.scheduler(&settings.scheduler)?;
        self.prompt_encoder
            .text_encoder
            .check_clip_skip(settings.clip_skip)?;
        if let Some(max) = self.unet.max_frames() {
            let long = &settings.long_video;
            let windowed = match (&long.co_denoising, &long.fifo) {
                (Some(plan), _) => Some(("co-denoising", plan.window)),
                (None, Some(plan)) => Some(("FIFO", plan.window)),
                (None, None) => None,
            };
            match windowed {
                Some((method, window)) if window > max => {
                    return Err(Error::invalid(
                        "window",
                        format!(
                            "{method} windows of {window} frames exceed the motion modules' \
                             {max} positions"
                        ),
                    ));
                }
                None if long.freenoise.is_none() && settings.frames > max => {
                    return Err(Error::invalid(
                        "frames",
                        format!(
                            "{} frames exceed the motion modules' {max} positions; enable \
                             FreeNoise, co-denoising or FIFO-Diffusion for longer videos",
                            settings.frames
                        ),
                    ));
                }
                _ => {}
            }
        }
        // FreeNoise: window fusion in the temporal layers, and the matching noise rescheduling.
        let freenoise = match settings.long_video.freenoise {
            Some(config) => {
                let rescheduling = NoiseRescheduling::new(
                    config.context_length,
                    config.context_stride,
                    NoiseType::ShuffleContext,
                );
                rescheduling.validate(settings.frames)?;
                Some((FreeNoiseHook::new(config)?, rescheduling))
            }
            None => None,
        };
        let shape = VideoShape::new([
            1,
            self.unet.in_channels(),
            settings.frames,
            height / factor,
            width / factor,
        ]);
        let options = PromptOptions {
            clip_skip: settings.clip_skip,
            long_prompt: settings.long_prompt,
        };
        let (conditioning, uncond) = self.conditioning(settings, options)?;
        let guidance = uncond.map(|uncond| Guidance {
            scale: settings.guidance_scale,
            negative: Conditioning::Shared(uncond),
        });
        Ok(Request {
            shape,
            scheduler,
            conditioning,
            guidance,
            freenoise,
        })
    }

    /// The conditional and (with guidance) unconditional conditioning: one prompt shared by
    /// every frame, or prompt travel as per-frame embeddings.
    fn conditioning(
        &self,
        settings: &Generation,
        options: PromptOptions,
    ) -> Result<(Conditioning, Option<Tensor<3>>)> {
        let guided = settings.guidance_scale > 1.0;
        let mut texts: Vec<&str> = if settings.prompt_keyframes.is_empty() {
            vec![settings.prompt.as_str()]
        } else {
            settings
                .prompt_keyframes
                .iter()
                .map(|(_, p)| p.as_str())
                .collect()
        };
        if guided {
            texts.push(&settings.negative_prompt);
        }
        let mut embeds = self.prompt_encoder.embed_all(&texts, options)?;
        let uncond = guided.then(|| embeds.pop().expect("the negative prompt's embedding"));
        let cond = if settings.prompt_keyframes.is_empty() {
            Conditioning::Shared(embeds.pop().expect("the prompt's embedding"))
        } else {
            let keys: Vec<(usize, Tensor<3>)> = settings
                .prompt_keyframes
                .iter()
                .map(|(f, _)| *f)
                .zip(embeds)
                .collect();
            travelling_conditioning(&keys, settings.frames, &Lerp)?
        };
        Ok((cond, uncond))
    }

    /// The scheduler of a generation.
    fn scheduler(&self, choice: &SchedulerChoice) -> Result<Box<dyn Scheduler>> {
        let json = match choice {
            SchedulerChoice::Folder => {
                let config = SchedulerConfig::from_json(&self.scheduler_config).map_err(|e| {
                    Error::invalid(
                        "scheduler",
                        format!(
                            "the folder's scheduler config cannot be used ({e}); pick one of \
                             vdm's schedulers on the same configuration with \
                             SchedulerChoice::Class (generate: --scheduler ddim, euler, dpmpp, \
                             ...)"
                        ),
                    )
                })?;
                return self.checked(config.build()?);
            }
            SchedulerChoice::Config(json) => json.clone(),
            SchedulerChoice::Class(class) => {
                if !SchedulerConfig::CLASS_NAMES.contains(&class.as_str()) {
                    return Err(Error::unknown_variant(
                        "scheduler",
                        class.as_str(),
                        SchedulerConfig::CLASS_NAMES,
                    ));
                }
                let mut value = config_value(&self.scheduler_config)?;
                value["_class_name"] = serde_json::Value::String(class.clone());
                value.to_string()
            }
        };
        self.checked(SchedulerConfig::from_json(&json)?.build()?)
    }

    /// `scheduler` if it predicts what the model was trained for.
    fn checked(&self, scheduler: Box<dyn Scheduler>) -> Result<Box<dyn Scheduler>> {
        if scheduler.inverts() {
            return Err(Error::invalid(
                "scheduler",
                "an inversion scheduler (DDIMInverseScheduler) turns videos into noise and \
                 cannot sample; pick a sampler such as DDIMScheduler",
            ));
        }
        if scheduler.prediction_type() != self.unet.prediction_type() {
            return Err(Error::invalid(
                "scheduler",
                format!(
                    "predicts {} but the model was trained for {}",
                    scheduler.prediction_type().as_str(),
                    self.unet.prediction_type().as_str()
                ),
            ));
        }
        Ok(scheduler)
    }
}
