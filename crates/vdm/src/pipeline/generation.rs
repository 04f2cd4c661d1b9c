//! What to generate: the settings of one text-to-video call, built with chained setters and
//! checked before any model work starts.

use vdm_core::error::ensure_finite;
use vdm_core::{Error, Result};
use vdm_longvideo::co_denoising::CoDenoising;
use vdm_longvideo::fifo::Fifo;
use vdm_longvideo::freeinit::FreeInit;
use vdm_longvideo::freelong::FreeLong;
use vdm_longvideo::freenoise::FreeNoiseConfig;
use vdm_longvideo::keyframes::Keyframes;
use vdm_longvideo::reconstruction::Extension;
use vdm_longvideo::reuse_diffuse::ReuseDiffuse;
use vdm_longvideo::smoother::InterleavedSmoother;
use vdm_longvideo::text2video_zero::Text2VideoZero;
use vdm_models::clip::LongPrompt;

/// Which scheduler samples the video.
#[derive(Debug, Clone, PartialEq, Default)]
pub enum SchedulerChoice {
    /// The folder's own `scheduler/scheduler_config.json` (the default).
    #[default]
    Folder,
    /// Another vdm scheduler class on the folder's configuration (its betas, spacing and
    /// prediction type), as diffusers' `EulerDiscreteScheduler.from_config(pipe.scheduler
    /// .config)`: any of [`SchedulerConfig::CLASS_NAMES`](vdm_schedulers::SchedulerConfig::CLASS_NAMES)
    /// (`"DDIMScheduler"`, `"EulerAncestralDiscreteScheduler"`, …).
    Class(String),
    /// A complete `scheduler_config.json` text.
    Config(String),
}

/// The training-free long-video methods to apply (any combination).
#[derive(Debug, Clone, Default)]
pub struct LongVideo {
    /// FreeNoise: noise rescheduling and window fusion in the temporal layers.
    pub freenoise: Option<FreeNoiseConfig>,
    /// FreeInit: refinement passes re-initialised from the previous result's low
    /// frequencies.
    pub freeinit: Option<FreeInit>,
    /// Gen-L-Video co-denoising: windows denoised separately at every step and their
    /// results averaged (not combinable with FreeNoise or FreeInit).
    pub co_denoising: Option<CoDenoising>,
    /// FIFO-Diffusion: diagonal denoising of a queue of frames at increasing noise levels
    /// (not combinable with the others; it runs `window · partitions` levels and ignores
    /// [`Generation::steps`]).
    pub fifo: Option<Fifo>,
    /// FreeLong: SpectralBlend temporal attention, global and local attention blended in
    /// frequency space (combinable with FreeInit only).
    pub freelong: Option<FreeLong>,
    /// Text2Video-Zero: frame 0 denoised alone, moved for the other frames, then all frames
    /// with cross-frame attention to frame 0 (not combinable with the others).
    pub text2video_zero: Option<Text2VideoZero>,
    /// Autoregressive extension with reconstruction guidance: a first clip of `window` frames,
    /// then windows continuing the video from its last `context` frames (not combinable with
    /// the others).
    pub extension: Option<Extension>,
    /// Hierarchical keyframes (ControlVideo): keyframes denoised jointly, the frames between
    /// two keyframes conditioned on them (not combinable with the others).
    pub keyframes: Option<Keyframes>,
    /// ControlVideo's interleaved-frame smoother at some steps (with direct sampling,
    /// FreeNoise, FreeInit or FreeLong).
    pub smoother: Option<InterleavedSmoother>,
    /// Reuse and Diffuse (VidRD): clip by clip, each reusing the last frames and the noise of
    /// the one before (not combinable with the others).
    pub reuse_diffuse: Option<ReuseDiffuse>,
}

/// The settings of one generation. Defaults: no negative prompt, 16 frames, the UNet's
/// `sample_size` × the VAE factor for height and width, 25 steps, guidance 7.5, seed 0,
/// no clip skip, prompts truncated to 77 tokens, the folder's scheduler, no long-video method,
/// NaN / infinity checks on.
///
/// ```
/// use vdm::pipeline::Generation;
///
/// let settings = Generation::new("a corgi running on the beach")
///     .negative_prompt("blurry")
///     .frames(24)
///     .size(256, 256)
///     .steps(30)
///     .guidance_scale(9.0)
///     .seed(42);
/// assert!(settings.validate(8).is_ok());
/// assert!(settings.clone().size(250, 256).validate(8).is_err());
/// ```
#[derive(Debug, Clone)]
pub struct Generation {
    /// The prompt (empty: unconditional).
    pub prompt: String,
    /// Prompt travel: `(frame, prompt)` keyframes, the first at frame 0, sorted; between two
    /// keys the embeddings are interpolated linearly and the last prompt holds to the end
    /// (diffusers' FreeNoise multi-prompt). When not empty it replaces `prompt`.
    pub prompt_keyframes: Vec<(usize, String)>,
    /// The negative prompt (the unconditional half of classifier-free guidance).
    pub negative_prompt: String,
    /// Frames to generate.
    pub frames: usize,
    /// Height in pixels (`None`: the UNet's `sample_size` × the VAE factor).
    pub height: Option<usize>,
    /// Width in pixels (`None`: as `height`).
    pub width: Option<usize>,
    /// Denoising steps.
    pub steps: usize,
    /// Classifier-free guidance scale; `≤ 1` disables guidance.
    pub guidance_scale: f64,
    /// Seed of every random number ([`vdm_core::SeededNoise`]).
    pub seed: u64,
    /// diffusers' `clip_skip`.
    pub clip_skip: usize,
    /// What to do with prompts over 75 tokens.
    pub long_prompt: LongPrompt,
    /// The scheduler.
    pub scheduler: SchedulerChoice,
    /// Long-video methods.
    pub long_video: LongVideo,
    /// Frames decoded per VAE call (`None`: 16, AnimateDiff's `decode_chunk_size`); bounds
    /// the decoder's memory whatever the number of frames.
    pub decode_chunk_size: Option<usize>,
    /// Whether the samplers check every model output and the latents after every step, and
    /// the pipeline the decoded frames, for NaN and infinity, stopping with
    /// [`Error::NonFinite`] naming the step, the timestep and the component (default `true`;
    /// one reduction and one host read per check, see `docs/reliability.md`).
    pub finite_checks: bool,
}

impl Generation {
    /// The defaults, with `prompt`.
    pub fn new(prompt: impl Into<String>) -> Self {
        Self {
            prompt: prompt.into(),
            prompt_keyframes: Vec::new(),
            negative_prompt: String::new(),
            frames: 16,
            height: None,
            width: None,
            steps: 25,
            guidance_scale: 7.5,
            seed: 0,
            clip_skip: 0,
            long_prompt: LongPrompt::Truncate,
            scheduler: SchedulerChoice::Folder,
            long_video: LongVideo::default(),
            decode_chunk_size: None,
            finite_checks: true,
        }
    }

    /// Sets prompt-travel keyframes `(frame, prompt)` (see
    /// [`prompt_keyframes`](Self::prompt_keyframes)).
    pub fn prompt_travel<S: Into<String>>(
        mut self,
        keyframes: impl IntoIterator<Item = (usize, S)>,
    ) -> Self {
        self.prompt_keyframes = keyframes.into_iter().map(|(f, p)| (f, p.into())).collect();
        self
    }

    /// Sets the negative prompt.
    pub fn negative_prompt(mut self, negative: impl Into<String>) -> Self {
        self.negative_prompt = negative.into();
        self
    }

    /// Sets the number of frames.
    pub fn frames(mut self, frames: usize) -> Self {
        self.frames = frames;
        self
    }

    /// Sets height and width in pixels.
    pub fn size(mut self, height: usize, width: usize) -> Self {
        self.height = Some(height);
        self.width = Some(width);
        self
    }

    /// Sets the number of denoising steps.
    pub fn steps(mut self, steps: usize) -> Self {
        self.steps = steps;
        self
    }

    /// Sets the guidance scale.
    pub fn guidance_scale(mut self, scale: f64) -> Self {
        self.guidance_scale = scale;
        self
    }

    /// Sets the seed.
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }

    /// Sets `clip_skip`.
    pub fn clip_skip(mut self, clip_skip: usize) -> Self {
        self.clip_skip = clip_skip;
        self
    }

    /// Sets the long-prompt policy.
    pub fn long_prompt(mut self, policy: LongPrompt) -> Self {
        self.long_prompt = policy;
        self
    }

    /// Sets the scheduler.
    pub fn scheduler(mut self, scheduler: SchedulerChoice) -> Self {
        self.scheduler = scheduler;
        self
    }

    /// Enables FreeNoise.
    pub fn freenoise(mut self, config: FreeNoiseConfig) -> Self {
        self.long_video.freenoise = Some(config);
        self
    }

    /// Enables FreeInit.
    pub fn freeinit(mut self, freeinit: FreeInit) -> Self {
        self.long_video.freeinit = Some(freeinit);
        self
    }

    /// Enables Gen-L-Video co-denoising.
    pub fn co_denoising(mut self, plan: CoDenoising) -> Self {
        self.long_video.co_denoising = Some(plan);
        self
    }

    /// Enables FIFO-Diffusion.
    pub fn fifo(mut self, plan: Fifo) -> Self {
        self.long_video.fifo = Some(plan);
        self
    }

    /// Enables FreeLong.
    pub fn freelong(mut self, freelong: FreeLong) -> Self {
        self.long_video.freelong = Some(freelong);
        self
    }

    /// Enables Text2Video-Zero.
    pub fn text2video_zero(mut self, plan: Text2VideoZero) -> Self {
        self.long_video.text2video_zero = Some(plan);
        self
    }

    /// Enables autoregressive extension with reconstruction guidance.
    pub fn extension(mut self, extension: Extension) -> Self {
        self.long_video.extension = Some(extension);
        self
    }

    /// Enables hierarchical keyframe sampling.
    pub fn keyframes(mut self, plan: Keyframes) -> Self {
        self.long_video.keyframes = Some(plan);
        self
    }

    /// Enables the interleaved-frame smoother.
    pub fn smoother(mut self, smoother: InterleavedSmoother) -> Self {
        self.long_video.smoother = Some(smoother);
        self
    }

    /// Enables Reuse and Diffuse.
    pub fn reuse_diffuse(mut self, plan: ReuseDiffuse) -> Self {
        self.long_video.reuse_diffuse = Some(plan);
        self
    }

    /// Turns the NaN / infinity checks on or off (see
    /// [`finite_checks`](Self::finite_checks)).
    pub fn finite_checks(mut self, enabled: bool) -> Self {
        self.finite_checks = enabled;
        self
    }

    /// Sets the frames per VAE decode call.
    pub fn decode_chunk_size(mut self, frames: usize) -> Self {
        self.decode_chunk_size = Some(frames);
        self
    }

    /// Checks the settings that need no model: `frames`, `steps`, `guidance_scale`,
    /// `decode_chunk_size`, and `height` / `width` (when given) as positive multiples of
    /// `vae_scale_factor`.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] naming the field.
    pub fn validate(&self, vae_scale_factor: usize) -> Result<()> {
        if self.frames == 0 {
            return Err(Error::invalid("frames", "must be ≥ 1"));
        }
        if self.steps == 0 {
            return Err(Error::invalid("steps", "must be ≥ 1"));
        }
        ensure_finite("guidance_scale", self.guidance_scale)?;
        if self.decode_chunk_size == Some(0) {
            return Err(Error::invalid("decode_chunk_size", "must be ≥ 1"));
        }
        for (name, value) in [("height", self.height), ("width", self.width)] {
            if let Some(v) = value {
                check_side(name, v, vae_scale_factor)?;
            }
        }
        if let Some(&(first, _)) = self.prompt_keyframes.first()
            && first != 0
        {
            return Err(Error::invalid(
                "prompt_keyframes",
                format!("the first keyframe must be at frame 0, got {first}"),
            ));
        }
        for pair in self.prompt_keyframes.windows(2) {
            if pair[1].0 <= pair[0].0 {
                return Err(Error::invalid(
                    "prompt_keyframes",
                    format!(
                        "frames must increase, got {} after {}",
                        pair[1].0, pair[0].0
                    ),
                ));
            }
        }
        if let Some(&(last, _)) = self.prompt_keyframes.last()
            && last >= self.frames
        {
            return Err(Error::invalid(
                "prompt_keyframes",
                format!(
                    "keyframe {last} is past the last frame ({})",
                    self.frames - 1
                ),
            ));
        }
        if let Some(f) = &self.long_video.freeinit {
            f.validate()?;
        }
        if let Some(plan) = &self.long_video.co_denoising {
            if self.long_video.freenoise.is_some() || self.long_video.freeinit.is_some() {
                return Err(Error::invalid(
                    "co_denoising",
                    "cannot be combined with FreeNoise or FreeInit: co-denoising runs its own \
                     windows and sampling loop",
                ));
            }
            plan.windows(self.frames)?;
        }
        if let Some(plan) = &self.long_video.fifo {
            let long = &self.long_video;
            if long.freenoise.is_some() || long.freeinit.is_some() || long.co_denoising.is_some() {
                return Err(Error::invalid(
                    "fifo",
                    "cannot be combined with FreeNoise, FreeInit or co-denoising:                      FIFO-Diffusion runs its own queue and sampling loop",
                ));
            }
            plan.validate()?;
        }
        if let Some(freelong) = &self.long_video.freelong {
            let long = &self.long_video;
            if long.freenoise.is_some() || long.co_denoising.is_some() || long.fifo.is_some() {
                return Err(Error::invalid(
                    "freelong",
                    "combines with FreeInit only: FreeNoise replaces the same temporal \
                     attention, and co-denoising and FIFO-Diffusion run windows of the \
                     training length, where FreeLong changes nothing",
                ));
            }
            freelong.validate()?;
        }
        if let Some(plan) = &self.long_video.text2video_zero {
            let long = &self.long_video;
            if long.freenoise.is_some()
                || long.freeinit.is_some()
                || long.co_denoising.is_some()
                || long.fifo.is_some()
                || long.freelong.is_some()
            {
                return Err(Error::invalid(
                    "text2video_zero",
                    "cannot be combined with the other long-video methods: it runs its own \
                     sampling loop",
                ));
            }
            plan.validate(self.steps)?;
        }
        if let Some(extension) = &self.long_video.extension {
            let long = &self.long_video;
            let others = [
                long.freenoise.is_some(),
                long.freeinit.is_some(),
                long.co_denoising.is_some(),
                long.fifo.is_some(),
                long.freelong.is_some(),
                long.text2video_zero.is_some(),
            ];
            if others.contains(&true) {
                return Err(Error::invalid(
                    "extension",
                    "cannot be combined with the other long-video methods: it runs its own \
                     window-by-window loop",
                ));
            }
            extension.validate()?;
        }
        let long = &self.long_video;
        let own_loops = [
            long.co_denoising.is_some(),
            long.fifo.is_some(),
            long.text2video_zero.is_some(),
            long.extension.is_some(),
        ];
        if let Some(plan) = &long.reuse_diffuse {
            let others = [
                long.freenoise.is_some(),
                long.freeinit.is_some(),
                long.freelong.is_some(),
                long.keyframes.is_some(),
                long.smoother.is_some(),
            ];
            if others.contains(&true) || own_loops.contains(&true) {
                return Err(Error::invalid(
                    "reuse_diffuse",
                    "cannot be combined with the other long-video methods: it runs its own \
                     clip-by-clip loop",
                ));
            }
            plan.validate()?;
        }
        if let Some(plan) = &long.keyframes {
            let others = [
                long.freenoise.is_some(),
                long.freeinit.is_some(),
                long.freelong.is_some(),
            ];
            if others.contains(&true) || own_loops.contains(&true) {
                return Err(Error::invalid(
                    "keyframes",
                    "cannot be combined with the other long-video methods: it runs its own \
                     groups of frames",
                ));
            }
            plan.keyframes(self.frames)?;
        }
        if long.smoother.is_some() && (own_loops.contains(&true) || long.keyframes.is_some()) {
            return Err(Error::invalid(
                "smoother",
                "runs inside the ordinary sampling loop (direct, FreeNoise, FreeInit, FreeLong), \
                 not with co-denoising, FIFO-Diffusion, Text2Video-Zero, extension or keyframes",
            ));
        }
        Ok(())
    }
}

/// Checks that a frame side (`height` or `width`, in pixels) is a positive multiple of the VAE's
/// scale factor, naming `name`.
///
/// # Errors
/// [`Error::InvalidConfig`] naming `name`.
pub(crate) fn check_side(name: &str, value: usize, vae_scale_factor: usize) -> Result<()> {
    if value == 0 || !value.is_multiple_of(vae_scale_factor) {
        return Err(Error::invalid(
            name,
            format!(
                "{value} is not a positive multiple of the VAE's scale factor {vae_scale_factor}"
            ),
        ));
    }
    Ok(())
}
