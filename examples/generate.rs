//! `generate`: prompt in, video out.
//!
//! ```text
//! cargo run --release --example generate -- --prompt "a red circle moving right"
//! cargo run --release --example generate -- --prompt "a blue square moving up" \
//!     --frames 256 --long freenoise --out square.mp4
//! cargo run --release --example generate -- --model-dir path/to/zeroscope_v2_576w \
//!     --prompt "a corgi running on the beach" --frames 24 --steps 25 --out corgi.gif
//! cargo run --release --example generate -- --help
//! ```
//!
//! Without `--model-dir` it runs vdm's embedded Moving Shapes model (trained by
//! `examples/train.rs`, shipped in `crates/vdm/models/`; see `docs/embedded-model.md`).
//! `--model-dir` is a diffusers pipeline folder (`TextToVideoSDPipeline` or
//! `AnimateDiffPipeline`; see `docs/real-checkpoints.md`). Every argument is checked before any
//! model is loaded; nothing is written unless the whole video is, or, with `--keep-partial`,
//! the frames finished before the run stopped. Ctrl-C stops at the next denoising (or
//! decoding) step, says so, writes nothing (or those frames) and exits with status 130; a
//! second Ctrl-C exits at once.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Parser, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use vdm::burn::tensor::Tensor;
use vdm::core::SeededNoise;
use vdm::longvideo::co_denoising::{CoDenoising, CoWeights};
use vdm::longvideo::fifo::Fifo;
use vdm::longvideo::freeinit::{FreeInit, LowPassFilter};
use vdm::longvideo::freelong::FreeLong;
use vdm::longvideo::freenoise::FreeNoiseConfig;
use vdm::longvideo::keyframes::Keyframes;
use vdm::longvideo::reconstruction::Extension;
use vdm::longvideo::reuse_diffuse::ReuseDiffuse;
use vdm::longvideo::sampler::Control;
use vdm::longvideo::smoother::InterleavedSmoother;
use vdm::longvideo::text2video_zero::Text2VideoZero;
use vdm::models::chunking::Chunking;
use vdm::models::clip::LongPrompt;
use vdm::pipeline::{Generation, PipelineProgress, SchedulerChoice, TextToVideoPipeline};
use vdm::video::{GifOptions, GifPalette, Video, WriteOptions, check_output};
use vdm_examples::interrupt;

/// vdm's programs run on mimalloc: it keeps freed activation buffers for the next step where
/// glibc's `malloc` hands them back to the kernel and page-faults them in again (a VAE decode
/// about a third faster; docs/benchmarks.md, "The allocator").
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Text to video with vdm: load a diffusers text-to-video folder, sample, write a video file.
#[derive(Debug, Parser)]
#[command(name = "generate", version)]
struct Args {
    /// What the video shows (`""`: unconditional).
    #[arg(long, short)]
    prompt: Option<String>,

    /// Prompt travel: `FRAME=TEXT` keyframes (repeat the option; the first at frame 0). Between
    /// keyframes the prompt embeddings are interpolated; the last holds to the end. Replaces
    /// --prompt.
    #[arg(long = "prompt-at", value_name = "FRAME=TEXT", value_parser = parse_keyframe)]
    prompt_at: Vec<(usize, String)>,

    /// What it should not show (the unconditional half of classifier-free guidance).
    #[arg(long, default_value = "")]
    negative_prompt: String,

    /// A diffusers pipeline folder (model_index.json, scheduler/, text_encoder/, tokenizer/,
    /// unet/, vae/, and for AnimateDiff motion_adapter/). Without it the embedded model is used.
    #[arg(long)]
    model_dir: Option<PathBuf>,

    /// Output: `NAME.mp4` (H.264), `NAME.gif` (animated GIF), `NAME.png` (contact sheet of
    /// every frame) or a folder (`NAME/`: one PNG per frame).
    #[arg(long, short, default_value = "video.gif")]
    out: PathBuf,

    /// Number of frames. Past the model's training length (16 for AnimateDiff), use `--long
    /// freenoise`.
    #[arg(long, default_value_t = 16)]
    frames: usize,

    /// Height in pixels, a multiple of 8 (default: the model's own size).
    #[arg(long)]
    height: Option<usize>,

    /// Width in pixels, a multiple of 8 (default: the model's own size, or --height).
    #[arg(long)]
    width: Option<usize>,

    /// Denoising steps: more is slower and usually cleaner [default: 25; for the embedded model
    /// its measured best, `vdm::embedded::STEPS`].
    #[arg(long)]
    steps: Option<usize>,

    /// Classifier-free guidance scale: how strongly to follow the prompt (1 disables it)
    /// [default: 7.5; for the embedded model its measured best, `vdm::embedded::GUIDANCE_SCALE`].
    #[arg(long)]
    guidance: Option<f64>,

    /// Seed of all randomness: one seed, one video, on every backend (default: from the clock,
    /// printed).
    #[arg(long)]
    seed: Option<u64>,

    /// Sampler: the folder's own scheduler config, or another on the same noise schedule.
    #[arg(long, value_enum, default_value_t = SchedulerArg::Folder)]
    scheduler: SchedulerArg,

    /// Long-video methods, comma separated: `freenoise` (windows of --context-length frames,
    /// for videos longer than the model was trained on), `freeinit` (--freeinit-iters
    /// refinement passes for temporal consistency), or both; or `co-denoise` (Gen-L-Video:
    /// windows of --context-length frames denoised separately and averaged, pyramid weights);
    /// or `fifo` (FIFO-Diffusion: a queue of frames at increasing noise levels, one clean
    /// frame per iteration; --context-length × --fifo-partitions levels, --steps is ignored);
    /// or `freelong` (global and local temporal attention blended in frequency space); or
    /// `t2v-zero` (Text2Video-Zero: motion dynamics and cross-frame attention, --t2v-motion); or
    /// `extend` (autoregressive windows with reconstruction guidance); or `keyframes`
    /// (ControlVideo's hierarchical sampler); or `reuse` (Reuse and Diffuse, clip by clip).
    #[arg(long, value_enum, value_delimiter = ',')]
    long: Vec<LongArg>,

    /// FreeNoise / co-denoising / FIFO window: the number of frames the model was trained on.
    #[arg(long, default_value_t = 16)]
    context_length: usize,

    /// FreeNoise / co-denoising stride between windows.
    #[arg(long, default_value_t = 4)]
    context_stride: usize,

    /// Co-denoising and FIFO-Diffusion: windows stacked into one model call (the same video;
    /// larger products, more memory per call). With --devices, each call's batch (2 per window
    /// with guidance) is split over the devices, so N windows per call keep up to 2N devices
    /// busy.
    #[arg(long, default_value_t = 1)]
    windows_per_call: usize,

    /// FIFO-Diffusion partitions: --context-length × this many noise levels, and this many
    /// model calls per frame (twice with lookahead).
    #[arg(long, default_value_t = 4)]
    fifo_partitions: usize,

    /// FIFO-Diffusion without lookahead denoising (half the model calls).
    #[arg(long)]
    fifo_no_lookahead: bool,

    /// Text2Video-Zero's motion: the content's displacement per frame in latent pixels, `X,Y`
    /// (x to the right, y down).
    #[arg(
        long,
        value_delimiter = ',',
        default_values_t = [1.0, 0.0],
        allow_negative_numbers = true
    )]
    t2v_motion: Vec<f64>,

    /// Autoregressive extension: known frames at the start of every window.
    #[arg(long, default_value_t = 8)]
    extend_context: usize,

    /// Autoregressive extension: the reconstruction-guidance weight (0: replacement only).
    #[arg(long, default_value_t = 2.0)]
    recon_weight: f64,

    /// ControlVideo's interleaved-frame smoother at two steps (scaled from its steps 30, 31 of
    /// 50), with direct sampling, FreeNoise, FreeInit or FreeLong.
    #[arg(long)]
    smooth: bool,

    /// FreeInit sampling passes (each costs a full sampling).
    #[arg(long, default_value_t = 3)]
    freeinit_iters: usize,

    /// Text-encoder layers to skip from the end (diffusers' clip_skip).
    #[arg(long, default_value_t = 0)]
    clip_skip: usize,

    /// Prompts over 75 tokens: truncate (as diffusers), or embed up to this many 75-token
    /// chunks.
    #[arg(long)]
    prompt_chunks: Option<usize>,

    /// Chunked inference for long videos: frames per spatial-layer call (bounds memory; same
    /// result).
    #[arg(long)]
    chunk_frames: Option<usize>,

    /// Skip the NaN / infinity checks of every model output, of the latents after every step
    /// and of the decoded frames (on by default: a run that goes non-finite stops with an
    /// error naming the step, the timestep and the component instead of writing a broken
    /// video; each check costs one reduction and one host read).
    #[arg(long)]
    no_finite_checks: bool,

    /// When the run stops early (Ctrl-C, a device or a `vdm-serve` server that fails), write
    /// the frames finished so far instead of nothing, and print each piece as it is finished.
    /// `--long fifo` finishes frames one by one and `--long extend` window by window while
    /// sampling goes on; the other methods finish every frame at the end, so only a stop
    /// while decoding keeps frames. The exit status still says the run stopped (130 for
    /// Ctrl-C, 2 otherwise).
    #[arg(long)]
    keep_partial: bool,

    /// Spread the UNet over these devices, comma separated: `flex`, `ndarray`, `wgpu`,
    /// `wgpu:N`, `cuda:N`, `ws://host:port` (a `vdm-serve` server; needs `--features
    /// remote`). Each holds a replica; every model call is split along the batch, so with
    /// guidance the unconditional and conditional halves run on two devices at once. The text
    /// encoder, the sampler and the decoder stay on the default device.
    #[arg(long, value_name = "LIST")]
    devices: Option<String>,

    /// Frames per second of the output.
    #[arg(long, default_value_t = 8.0)]
    fps: f64,

    /// GIF palette: one per frame (best colours) or one for the whole video (no flicker).
    #[arg(long, value_enum, default_value_t = PaletteArg::PerFrame)]
    gif_palette: PaletteArg,

    /// Dither GIF frames (smoother gradients, larger files).
    #[arg(long)]
    dither: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum SchedulerArg {
    /// The folder's scheduler/scheduler_config.json.
    Folder,
    /// DDIM (deterministic).
    Ddim,
    /// DDPM (ancestral, needs many steps).
    Ddpm,
    /// Euler.
    Euler,
    /// Euler ancestral ("Euler a": stochastic, a new noise draw every step).
    EulerA,
    /// Heun (second order: two model calls per step).
    Heun,
    /// KDPM2 (DPM-Solver-2: two model calls per step).
    Kdpm2,
    /// DPM-Solver++ (good at 15–25 steps).
    Dpmpp,
    /// DPM-Solver singlestep (order 2 groups).
    DpmSingle,
    /// UniPC (predictor-corrector, good at 10–20 steps).
    Unipc,
    /// DEIS (exponential integrator, good at 10–20 steps).
    Deis,
    /// LCM (for LCM-distilled models, 4–8 steps).
    Lcm,
    /// TCD (for TCD-distilled models, 4–8 steps; gamma 0.3).
    Tcd,
}

impl SchedulerArg {
    fn choice(self) -> SchedulerChoice {
        let class = match self {
            Self::Folder => return SchedulerChoice::Folder,
            Self::Ddim => "DDIMScheduler",
            Self::Ddpm => "DDPMScheduler",
            Self::Euler => "EulerDiscreteScheduler",
            Self::EulerA => "EulerAncestralDiscreteScheduler",
            Self::Heun => "HeunDiscreteScheduler",
            Self::Kdpm2 => "KDPM2DiscreteScheduler",
            Self::Dpmpp => "DPMSolverMultistepScheduler",
            Self::DpmSingle => "DPMSolverSinglestepScheduler",
            Self::Unipc => "UniPCMultistepScheduler",
            Self::Deis => "DEISMultistepScheduler",
            Self::Lcm => "LCMScheduler",
            Self::Tcd => "TCDScheduler",
        };
        SchedulerChoice::Class(class.into())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum LongArg {
    /// FreeNoise: noise rescheduling and window fusion.
    Freenoise,
    /// FreeInit: low-frequency re-initialisation between passes.
    Freeinit,
    /// Gen-L-Video co-denoising: windows of --context-length frames every --context-stride,
    /// denoised separately and averaged at every step (one model call per window).
    CoDenoise,
    /// FreeLong: SpectralBlend temporal attention (global attention's low frequencies, local
    /// attention's high ones, local windows of --context-length frames); combines with FreeInit.
    Freelong,
    /// Text2Video-Zero: frame 0 denoised alone, moved by --t2v-motion per frame for the
    /// others, then every frame with cross-frame attention to frame 0.
    T2vZero,
    /// Autoregressive extension with reconstruction guidance (Video Diffusion Models): a first
    /// clip of --context-length frames, then windows that keep the last --extend-context frames
    /// and are guided to reconstruct them (weight --recon-weight).
    Extend,
    /// Hierarchical keyframes (ControlVideo): keyframes every --context-length − 1 frames
    /// denoised jointly, the frames between two keyframes conditioned on them.
    Keyframes,
    /// Reuse and Diffuse (VidRD): clips of --context-length frames, each reusing the last
    /// half and the noise of the one before.
    Reuse,
    /// FIFO-Diffusion: diagonal denoising, frames at increasing noise levels in a queue (DDIM,
    /// η = 1, lookahead), memory independent of the length.
    Fifo,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum PaletteArg {
    /// One palette per frame.
    PerFrame,
    /// One palette for all frames.
    Global,
}

/// Why `run` stopped, and what it wrote of the video before (with `--keep-partial`).
struct Stopped {
    message: String,
    kept: Option<String>,
}

impl From<String> for Stopped {
    fn from(message: String) -> Self {
        Self {
            message,
            kept: None,
        }
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Stopped { message, kept }) if interrupt::requested() => {
            let kept = kept.unwrap_or_else(|| "nothing written".into());
            eprintln!("interrupted ({message}): {kept}");
            ExitCode::from(interrupt::EXIT_STATUS)
        }
        Err(Stopped { message, kept }) => {
            eprintln!("error: {message}");
            if let Some(kept) = kept {
                eprintln!("{kept}");
            }
            ExitCode::from(2)
        }
    }
}

fn run(args: &Args) -> Result<(), Stopped> {
    let seed = args.seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64)
    });
    let settings = settings(args, seed)?;
    // Everything that needs no model is checked first.
    settings.validate(1).map_err(|e| e.to_string())?;
    let format = check_output(&args.out).map_err(|e| e.to_string())?;
    let write_options = WriteOptions {
        fps: args.fps,
        gif: GifOptions {
            palette: match args.gif_palette {
                PaletteArg::PerFrame => GifPalette::PerFrame,
                PaletteArg::Global => GifPalette::Global,
            },
            dither: args.dither,
            ..GifOptions::default()
        },
        mp4: Default::default(),
        columns: None,
    };
    vdm::core::error::ensure_positive("fps", args.fps).map_err(|e| e.to_string())?;
    let model_dir = args
        .model_dir
        .clone()
        .unwrap_or_else(vdm::embedded::moving_shapes_dir);
    let model_dir = &model_dir;

    let device = vdm::try_device().map_err(|e| e.to_string())?;
    let shard_devices = match &args.devices {
        Some(list) => Some(
            vdm::devices::parse_devices(list, vdm::devices::CONNECT_TIMEOUT)
                .map_err(|e| e.to_string())?,
        ),
        None => None,
    };
    let loading = Instant::now();
    let mut pipe = TextToVideoPipeline::from_dir(model_dir, &device).map_err(|e| e.to_string())?;
    if let Some(devices) = &shard_devices {
        pipe = pipe.with_devices(devices).map_err(|e| e.to_string())?;
    }
    if let Some(frames) = args.chunk_frames {
        // Temporal layers: 4096 positions per call (a 64 × 64 latent frame's worth).
        pipe = pipe.with_chunking(Chunking::new(frames, 4096));
    }
    let (height, width) = pipe.resolve_size(&settings).map_err(|e| e.to_string())?;
    let fifo = settings.long_video.fifo;
    let sampling = match fifo {
        Some(plan) => format!(
            "FIFO-Diffusion ({} levels, {} model calls per frame)",
            plan.num_levels(),
            plan.calls_per_frame()
        ),
        None => format!("{} steps", settings.steps),
    };
    println!(
        "loaded {} from {} in {:.1} s ({} backend); {} frames of {width}×{height}, {sampling}, seed {seed}",
        pipe.class.name(),
        model_dir.display(),
        loading.elapsed().as_secs_f64(),
        vdm::backend_name(),
        settings.frames,
    );

    // From here on Ctrl-C stops at the next step boundary (and writes nothing, or the frames
    // finished so far).
    interrupt::install()?;
    let keeps = if args.keep_partial {
        "the frames finished so far"
    } else {
        "nothing"
    };
    println!("sampling (Ctrl-C stops at the next step and writes {keeps})");
    let bar = progress_bar();
    let mut step_times = Vec::new();
    let mut last = Instant::now();
    let mut noise = SeededNoise::new(seed);
    let mut pieces = Vec::new();
    let result = pipe.generate_frames(
        &settings,
        &mut noise,
        &mut |p| {
            if interrupt::requested() {
                return Control::Cancel;
            }
            match p {
                PipelineProgress::Denoise(p) => {
                    step_times.push(last.elapsed());
                    last = Instant::now();
                    if fifo.is_some() {
                        // Pass 0: the warm-up clip's levels; pass 1: the frames.
                        bar.set_length(p.num_steps as u64);
                        bar.set_position((p.step + 1) as u64);
                        bar.set_message(if p.iteration == 0 {
                            "FIFO warm-up clip"
                        } else {
                            "FIFO frames"
                        });
                        return Control::Continue;
                    }
                    bar.set_length((p.num_steps * p.iterations) as u64);
                    bar.set_position((p.iteration * p.num_steps + p.step + 1) as u64);
                    bar.set_message(if p.iterations > 1 {
                        let pass = if settings.long_video.extension.is_some() {
                            "window"
                        } else {
                            "FreeInit pass"
                        };
                        format!("denoising ({pass} {}/{})", p.iteration + 1, p.iterations)
                    } else {
                        "denoising".into()
                    });
                }
                PipelineProgress::Decode { done, total } => {
                    bar.set_message("decoding");
                    bar.set_length(total as u64);
                    bar.set_position(done as u64);
                }
            }
            Control::Continue
        },
        &mut |first, piece| {
            if args.keep_partial {
                let line = format!(
                    "finished frames {first}..{} of {}",
                    first + piece.num_frames(),
                    settings.frames
                );
                if bar.is_hidden() {
                    println!("{line}");
                } else {
                    bar.println(line);
                }
            }
            pieces.push(piece.frames);
            Ok(())
        },
    );
    bar.finish_and_clear();
    let whole = |pieces: Vec<_>| Video::new(Tensor::cat(pieces, 0)).map_err(|e| e.to_string());
    if let Err(e) = result {
        let message = e.to_string();
        if !args.keep_partial || pieces.is_empty() {
            return Err(message.into());
        }
        let partial = whole(pieces)?;
        let kept = match partial.write(&args.out, &write_options) {
            Ok(_) => format!(
                "wrote the {} finished frames of {} to {}",
                partial.num_frames(),
                settings.frames,
                args.out.display()
            ),
            Err(e) => format!("writing the finished frames failed: {e}"),
        };
        return Err(Stopped {
            message,
            kept: Some(kept),
        });
    }
    let video = whole(pieces)?;
    video
        .write(&args.out, &write_options)
        .map_err(|e| e.to_string())?;
    let per_step = mean(&step_times);
    let unit = match fifo {
        Some(_) => "warm-up steps and frames",
        None => "steps",
    };
    println!(
        "wrote {} ({:?}, {} frames at {} fps); seed {seed}; {:.2} s each over {} {unit}",
        args.out.display(),
        format,
        video.num_frames(),
        args.fps,
        per_step.as_secs_f64(),
        step_times.len(),
    );
    Ok(())
}

impl Args {
    /// `--steps`, or the default of the model: 25 (diffusers' text-to-video examples), or the
    /// embedded model's measured best when no `--model-dir` is given.
    fn steps(&self) -> usize {
        let default = match self.model_dir {
            None => vdm::embedded::STEPS,
            Some(_) => 25,
        };
        self.steps.unwrap_or(default)
    }

    /// `--guidance`, or the default of the model: 7.5, or the embedded model's measured best
    /// when no `--model-dir` is given.
    fn guidance(&self) -> f64 {
        let default = match self.model_dir {
            None => vdm::embedded::GUIDANCE_SCALE,
            Some(_) => 7.5,
        };
        self.guidance.unwrap_or(default)
    }
}

/// The pipeline settings the arguments ask for.
fn settings(args: &Args, seed: u64) -> Result<Generation, String> {
    let mut settings = Generation::new(args.prompt.clone().unwrap_or_default())
        .negative_prompt(args.negative_prompt.clone())
        .frames(args.frames)
        .steps(args.steps())
        .guidance_scale(args.guidance())
        .seed(seed)
        .clip_skip(args.clip_skip)
        .scheduler(args.scheduler.choice())
        .finite_checks(!args.no_finite_checks);
    settings.height = args.height;
    settings.width = args.width;
    if !args.prompt_at.is_empty() {
        settings = settings.prompt_travel(args.prompt_at.clone());
    } else if args.prompt.is_none() {
        return Err(
            "give --prompt TEXT (or --prompt-at FRAME=TEXT keyframes; --prompt \"\" \
                    makes an unconditional video)"
                .into(),
        );
    }
    if let Some(max_chunks) = args.prompt_chunks {
        settings = settings.long_prompt(LongPrompt::Chunks { max_chunks });
    }
    if args.long.contains(&LongArg::Freenoise) {
        settings = settings.freenoise(FreeNoiseConfig::new(
            args.context_length,
            args.context_stride,
        ));
    }
    if args.long.contains(&LongArg::CoDenoise) {
        let plan = CoDenoising {
            weights: CoWeights::Pyramid,
            ..CoDenoising::new(args.context_length, args.context_stride)
        }
        .windows_per_call(args.windows_per_call);
        settings = settings.co_denoising(plan);
    }
    if args.long.contains(&LongArg::Freelong) {
        settings = settings.freelong(FreeLong::new(args.context_length));
    }
    if args.long.contains(&LongArg::T2vZero) {
        let &[x, y] = args.t2v_motion.as_slice() else {
            return Err(format!(
                "--t2v-motion takes two numbers X,Y, got {:?}",
                args.t2v_motion
            ));
        };
        let motion = (x, y);
        settings = settings.text2video_zero(Text2VideoZero::for_steps(motion, args.steps()));
    }
    if args.long.contains(&LongArg::Extend) {
        settings = settings.extension(Extension::new(
            args.context_length,
            args.extend_context,
            args.recon_weight,
        ));
    }
    if args.long.contains(&LongArg::Reuse) {
        let overlap = (args.context_length / 2).max(1);
        settings = settings.reuse_diffuse(ReuseDiffuse::new(args.context_length, overlap));
    }
    if args.long.contains(&LongArg::Keyframes) {
        let stride = args.context_length.saturating_sub(1).max(1);
        settings = settings.keyframes(Keyframes::new(stride));
    }
    if args.smooth {
        settings = settings.smoother(InterleavedSmoother::controlvideo(args.steps()));
    }
    if args.long.contains(&LongArg::Fifo) {
        settings = settings.fifo(Fifo {
            lookahead: !args.fifo_no_lookahead,
            ..Fifo::new(args.context_length, args.fifo_partitions)
                .windows_per_call(args.windows_per_call)
        });
    }
    if args.long.contains(&LongArg::Freeinit) {
        let freeinit = FreeInit::new(LowPassFilter::default(), args.freeinit_iters)
            .map_err(|e| e.to_string())?;
        settings = settings.freeinit(freeinit);
    }
    Ok(settings)
}

/// `FRAME=TEXT` → `(FRAME, TEXT)`.
fn parse_keyframe(value: &str) -> Result<(usize, String), String> {
    let (frame, text) = value
        .split_once('=')
        .ok_or_else(|| format!("expected FRAME=TEXT, got {value:?}"))?;
    let frame = frame
        .trim()
        .parse()
        .map_err(|e| format!("frame {frame:?} is not a frame number: {e}"))?;
    Ok((frame, text.to_string()))
}

/// An indicatif bar with ETA on a terminal, hidden otherwise.
fn progress_bar() -> ProgressBar {
    if !std::io::stdout().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(1);
    bar.set_style(
        ProgressStyle::with_template("{msg:>10} [{bar:40}] {pos}/{len} {elapsed} (ETA {eta})")
            .expect("a valid template")
            .progress_chars("=> "),
    );
    bar
}

fn mean(times: &[Duration]) -> Duration {
    if times.is_empty() {
        return Duration::ZERO;
    }
    times.iter().sum::<Duration>() / times.len() as u32
}
