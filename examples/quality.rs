//! `quality`: the Moving Shapes long-video quality benchmark.
//!
//! ```text
//! cargo run --release --example quality                          # the full table + plots
//! cargo run --release --example quality -- --frames 16,64 --seeds 1   # a quick look
//! cargo run --release --example quality -- --replot docs/quality/results.md  # plots only
//! ```
//!
//! For every method (direct sampling, FreeNoise, FreeInit, FreeNoise + FreeInit, Gen-L-Video
//! co-denoising), video length
//! and seed, it generates each prompt with the embedded model (or `--model-dir`), judges every
//! video with `vdm::shapes::analyse` against its caption, and prints one table row per method
//! and length (means over prompts and seeds): validity, prompt adherence (colour, shape,
//! direction), consistency, smoothness (mean centroid acceleration, jumps), and for the
//! prompt-travel cases ("moving right" until half-way, then "moving up") the direction score
//! against the turned expectation. Plots of each metric against length are written to
//! `--plots` (default `docs/quality/`). Everything is seeded: the same command prints the same
//! table.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use clap::Parser;
use vdm::longvideo::co_denoising::{CoDenoising, CoWeights};
use vdm::longvideo::fifo::Fifo;
use vdm::longvideo::freeinit::{FreeInit, LowPassFilter};
use vdm::longvideo::freelong::FreeLong;
use vdm::longvideo::freenoise::FreeNoiseConfig;
use vdm::longvideo::keyframes::Keyframes;
use vdm::longvideo::reconstruction::Extension;
use vdm::longvideo::reuse_diffuse::ReuseDiffuse;
use vdm::longvideo::smoother::InterleavedSmoother;
use vdm::longvideo::text2video_zero::Text2VideoZero;
use vdm::pipeline::{Generation, TextToVideoPipeline};
use vdm::shapes::analyse::{Expectation, VideoScores, score};
use vdm::shapes::{Direction, Turn};
use vdm_examples::quality_table::{HEADER, Row, merge_runs, parse_table, write_plots};

/// The Moving Shapes quality benchmark.
#[derive(Debug, Parser)]
#[command(name = "quality", version)]
struct Args {
    /// Model folder (default: the embedded Moving Shapes model).
    #[arg(long)]
    model_dir: Option<PathBuf>,
    /// Video lengths, comma separated.
    #[arg(long, value_delimiter = ',', default_value = "16,64,128,256")]
    frames: Vec<usize>,
    /// Seeds per prompt.
    #[arg(long, default_value_t = 2)]
    seeds: u64,
    /// The first seed: the run uses seeds `first-seed .. first-seed + seeds` (so that a later
    /// run can add seeds to an earlier one's; `--replot` averages the runs).
    #[arg(long, default_value_t = 0)]
    first_seed: u64,
    /// Denoising steps [default: the embedded model's `vdm::embedded::STEPS` (50), or 20 with
    /// `--model-dir`].
    #[arg(long)]
    steps: Option<usize>,
    /// Classifier-free guidance scale [default: the embedded model's
    /// `vdm::embedded::GUIDANCE_SCALE` (2), or 4 with `--model-dir`].
    #[arg(long)]
    guidance: Option<f64>,
    /// Methods, comma separated: direct, freenoise, freeinit, freenoise+freeinit, co-denoise
    /// (Gen-L-Video: windows of 16 every 4, pyramid weights), fifo (FIFO-Diffusion: windows of
    /// 16, 2 partitions = 32 levels, lookahead, η = 1; `--steps` does not apply), freelong
    /// (local windows of 16), t2v-zero (Text2Video-Zero, motion 0.3 latent px per frame to
    /// the right; not in the default list: its motion ignores the caption), extend
    /// (autoregressive windows of 16 keeping 8, reconstruction weight 2), keyframes
    /// (ControlVideo's hierarchical sampler, keyframes every 15 frames), smooth (ControlVideo's
    /// interleaved-frame smoother, combinable: `direct+smooth`), reuse (Reuse and Diffuse, clips
    /// of 16 sharing 8).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "direct,freenoise,freeinit,freenoise+freeinit,co-denoise,fifo,freelong"
    )]
    methods: Vec<String>,
    /// FreeInit iterations.
    #[arg(long, default_value_t = 2)]
    freeinit_iters: usize,
    /// How many of the built-in prompts to use (1 to 5).
    #[arg(long, default_value_t = 5)]
    prompts: usize,
    /// Where the PNG plots go (`none`: no plots).
    #[arg(long, default_value = "docs/quality")]
    plots: PathBuf,
    /// Sample nothing: draw the plots into `--plots` from the table rows in these files (what
    /// earlier runs printed, e.g. `docs/quality/results.md`, which holds the rows of several
    /// runs), comma separated. Files are runs of different seeds: a cell found in several has
    /// their mean scores and the fastest run's seconds per video, printed as the merged table.
    #[arg(long, value_delimiter = ',')]
    replot: Vec<PathBuf>,
}

/// The prompts of the single-prompt cases: every colour, shape and direction at least once.
const PROMPTS: &[&str] = &[
    "a red circle moving right",
    "a blue square moving left",
    "a green triangle moving up",
    "a yellow circle moving down",
    "a purple square moving right",
];

fn main() -> ExitCode {
    match run(&Args::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

impl Args {
    /// `--steps`, or the default of the model (see the flag).
    fn steps(&self) -> usize {
        match self.model_dir {
            None => self.steps.unwrap_or(vdm::embedded::STEPS),
            Some(_) => self.steps.unwrap_or(20),
        }
    }

    /// `--guidance`, or the default of the model (see the flag).
    fn guidance(&self) -> f64 {
        match self.model_dir {
            None => self.guidance.unwrap_or(vdm::embedded::GUIDANCE_SCALE),
            Some(_) => self.guidance.unwrap_or(4.0),
        }
    }
}

fn settings(args: &Args, method: &str, frames: usize) -> Result<Generation, String> {
    let mut g = Generation::new("")
        .frames(frames)
        .steps(args.steps())
        .guidance_scale(args.guidance());
    for part in method.split('+') {
        match part {
            "direct" => {}
            "freenoise" => g = g.freenoise(FreeNoiseConfig::new(16, 4)),
            "co-denoise" => {
                g = g.co_denoising(CoDenoising {
                    weights: CoWeights::Pyramid,
                    ..CoDenoising::new(16.min(frames), 4)
                })
            }
            "fifo" => g = g.fifo(Fifo::new(16, 2)),
            "freelong" => g = g.freelong(FreeLong::new(16)),
            "extend" => g = g.extension(Extension::new(16, 8, 2.0)),
            "keyframes" => g = g.keyframes(Keyframes::new(15)),
            "reuse" => g = g.reuse_diffuse(ReuseDiffuse::new(16, 8)),
            "smooth" => g = g.smoother(InterleavedSmoother::controlvideo(args.steps())),
            "t2v-zero" => {
                let plan = Text2VideoZero::for_steps((0.3, 0.0), args.steps());
                g = g.text2video_zero(plan)
            }
            "freeinit" => {
                g = g.freeinit(
                    FreeInit::new(LowPassFilter::default(), args.freeinit_iters)
                        .map_err(|e| e.to_string())?,
                )
            }
            other => return Err(format!("unknown method `{other}`")),
        }
    }
    Ok(g)
}

fn judge(
    pipe: &TextToVideoPipeline,
    settings: &Generation,
    expected: &Expectation,
) -> Result<VideoScores, String> {
    let video = pipe.generate(settings).map_err(|e| e.to_string())?;
    score(&video, expected).map_err(|e| e.to_string())
}

fn run(args: &Args) -> Result<(), String> {
    if !args.replot.is_empty() {
        return replot(args);
    }
    let dir = args
        .model_dir
        .clone()
        .unwrap_or_else(vdm::embedded::moving_shapes_dir);
    let device = vdm::try_device().map_err(|e| e.to_string())?;
    let pipe = TextToVideoPipeline::from_dir(&dir, &device).map_err(|e| e.to_string())?;
    if !(1..=PROMPTS.len()).contains(&args.prompts) {
        return Err(format!("--prompts must be 1 to {}", PROMPTS.len()));
    }
    let prompts = &PROMPTS[..args.prompts];
    println!(
        "model {}; {} steps, guidance {}, {} seed(s) × {} prompts (+1 prompt-travel case) per cell\n",
        dir.display(),
        args.steps(),
        args.guidance(),
        args.seeds,
        prompts.len()
    );
    println!("{HEADER}");
    let mut table: Vec<Row> = Vec::new();
    for method in &args.methods {
        for &frames in &args.frames {
            let base = settings(args, method, frames)?;
            let mut sums = [0.0f32; 7];
            let mut videos = 0usize;
            let mut travel = 0.0f32;
            let seeds = args.first_seed..args.first_seed + args.seeds;
            let started = Instant::now();
            for seed in seeds {
                for prompt in prompts {
                    let expected = Expectation::from_caption(prompt).expect("a domain caption");
                    let mut s = base.clone().seed(seed);
                    s.prompt = prompt.to_string();
                    let v = judge(&pipe, &s, &expected)?;
                    for (sum, x) in sums.iter_mut().zip(v.to_array()) {
                        *sum += x;
                    }
                    videos += 1;
                }
                // Prompt travel: right until half-way, then up (a sharp switch: the first
                // prompt is held until the frame before the second).
                let half = frames / 2;
                let keys = vec![
                    (0, "a red circle moving right".to_string()),
                    (half - 1, "a red circle moving right".to_string()),
                    (half, "a red circle moving up".to_string()),
                ];
                let expected = Expectation {
                    turn: Some(Turn {
                        frame: half,
                        direction: Direction::Up,
                    }),
                    ..Expectation::from_caption("a red circle moving right").expect("caption")
                };
                let s = base.clone().seed(seed).prompt_travel(keys);
                travel += judge(&pipe, &s, &expected)?.direction;
            }
            let n = videos as f32;
            let row = Row {
                method: method.clone(),
                frames,
                scores: VideoScores::from_array(sums.map(|sum| sum / n)),
                travel_direction: travel / args.seeds as f32,
                seconds: started.elapsed().as_secs_f64() / (videos as f64 + args.seeds as f64),
            };
            println!("{}", row.to_markdown());
            table.push(row);
        }
    }
    if args.plots.as_os_str() != "none" && args.frames.len() > 1 {
        write_plots(&args.plots, &table)?;
        println!("\nplots in {}", args.plots.display());
    }
    Ok(())
}

/// `--replot`: reads the rows of every file, merges the runs, prints the merged table and draws
/// the plots.
fn replot(args: &Args) -> Result<(), String> {
    if args.plots.as_os_str() == "none" {
        return Err("--replot draws plots: give --plots a folder".into());
    }
    let mut runs = Vec::with_capacity(args.replot.len());
    for file in &args.replot {
        let text = std::fs::read_to_string(file).map_err(|e| format!("{}: {e}", file.display()))?;
        runs.push(parse_table(&text).map_err(|e| format!("{}: {e}", file.display()))?);
    }
    let merged = merge_runs(&runs).map_err(|e| format!("--replot: {e}"))?;
    println!("{HEADER}");
    for (row, _) in &merged {
        println!("{}", row.to_markdown());
    }
    let partial: Vec<String> = merged
        .iter()
        .filter(|(_, n)| *n < runs.len())
        .map(|(r, n)| format!("{} at {} ({n} of {})", r.method, r.frames, runs.len()))
        .collect();
    if !partial.is_empty() {
        println!("\ncells missing from some files: {}", partial.join(", "));
    }
    let rows: Vec<Row> = merged.into_iter().map(|(r, _)| r).collect();
    write_plots(&args.plots, &rows)?;
    println!(
        "\n{} cells of {} file(s) plotted in {}",
        rows.len(),
        runs.len(),
        args.plots.display()
    );
    Ok(())
}
