//! `train`: trains vdm's embedded Moving Shapes text-to-video model from scratch on the CPU.
//!
//! ```text
//! cargo run --release --example train -- --out models/moving-shapes
//! cargo run --release --example train -- --out models/moving-shapes --resume   # after a stop
//! ```
//!
//! Everything is a function of `--seed`: the frozen text encoder's weights, the UNet's initial
//! weights, and every batch, timestep, noise draw and caption dropout (drawn per step, so a
//! resumed run replays the same data). The run writes, under `--out`:
//! a diffusers-style folder that `generate` loads (`model_index.json`, `unet/`, `text_encoder/`,
//! `tokenizer/`, `scheduler/`, `vae/`), the resumable state in `training/`, and the loss log
//! `training/loss.csv` with its curve `training/loss.png`. See `docs/embedded-model.md` for the model, the measured costs and
//! the choices (pixel space with 4×4 patches, a frozen tiny CLIP, x₀-prediction on latents
//! of standard deviation 0.5) and the measured alternatives (`--latent-std raw`, `--latent-std
//! 1`, `--prediction v_prediction --weighting capped-snr-plus-one`).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use clap::Parser;
use indicatif::{ProgressBar, ProgressStyle};
use vdm::burn::tensor::{Device, FloatDType};
use vdm::core::PredictionType;
use vdm::core::SeededNoise;
use vdm::models::clip::{CLIPTextConfig, CLIPTextModel, CLIPTokenizer, PromptEncoder};
use vdm::models::patchify::{Patchify, PatchifyConfig};
use vdm::models::unet3d::{UNet3DConditionModel, UNet3DConditionModelConfig};
use vdm::schedulers::options::BetaSchedule;
use vdm::schedulers::schedule::{BetaConfig, NoiseSchedule};
use vdm::shapes::vocab::write_tokenizer;
use vdm::training::export::PipelineExport;
use vdm::training::{LossWeighting, ShapesData, TrainConfig, Trainer};

/// Frame side in pixels.
const SIDE: usize = 32;
/// Tokens per prompt (the captions have at most 8 words).
const MAX_LENGTH: usize = 16;

/// Train the embedded Moving Shapes model.
#[derive(Debug, Parser)]
#[command(name = "train", version)]
struct Args {
    /// Output folder (the model folder and its training state).
    #[arg(long, default_value = "models/moving-shapes")]
    out: PathBuf,
    /// Optimiser steps in total.
    #[arg(long, default_value_t = 1000)]
    steps: usize,
    /// Videos per step.
    #[arg(long, default_value_t = 8)]
    batch: usize,
    /// Peak learning rate.
    #[arg(long, default_value_t = 1e-3)]
    lr: f64,
    /// Seed of everything random.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Save a checkpoint (and the model folder) every N steps.
    #[arg(long, default_value_t = 250)]
    checkpoint_every: usize,
    /// Continue the run saved in --out.
    #[arg(long)]
    resume: bool,
    /// Stop after this many steps in this invocation (the run resumes later with --resume).
    #[arg(long)]
    max_steps_now: Option<usize>,
    /// Only redraw `training/loss.png` from `training/loss.csv` of --out, then exit.
    #[arg(long)]
    plot_only: bool,
    /// Only rewrite the model folder from the run saved in --out (e.g. with another
    /// --unet-dtype), then exit.
    #[arg(long)]
    export_only: bool,
    /// The dtype of the UNet weights in the model folder: `f32` (the shipped model's) or `f16`
    /// (half the bytes; the loader casts back to f32). The resumable state in `training/` is
    /// always f32.
    #[arg(long, default_value = "f32", value_parser = parse_dtype)]
    unet_dtype: FloatDType,
    /// Stop (saving) once this many minutes have passed in this invocation.
    #[arg(long)]
    max_minutes: Option<f64>,
    /// The UNet's channels per level (`block_out_channels`), comma-separated.
    #[arg(long, value_delimiter = ',', default_values_t = [64, 96])]
    channels: Vec<usize>,
    /// What the model predicts: `epsilon`, `v_prediction` or `sample` (x₀).
    #[arg(long, default_value = "sample", value_parser = parse_prediction)]
    prediction: PredictionType,
    /// How the loss weighs the noise levels, by the weight it gives the x₀ error: `uniform`
    /// (the plain error of the target, the default), `min-snr` (`min(SNR, γ)`, Hang et al.
    /// 2023) or `capped-snr-plus-one` (`min(SNR + 1, γ)`). Min-SNR weighs the highest noise
    /// levels, where the caption decides colour, shape and motion, about 0: a v run with it
    /// predicted x₀ at t = 999 worse than the mean clip does (0.20 against 0.07 at step 400).
    #[arg(long, default_value = "uniform")]
    weighting: Weighting,
    /// γ of the weighting.
    #[arg(long, default_value_t = 5.0)]
    gamma: f64,
    /// The latents' scale: a number S shifts the patched pixels to zero mean and scales them to
    /// standard deviation S (both measured on 256 clips; the factors go to `vae/config.json`,
    /// like a VAE's `shift_factor` / `scaling_factor`); `raw` keeps the pixels as they are
    /// (standard deviation 0.294). Below 1 the data sits lower against the noise, a log-SNR
    /// shift of `2 ln S` at every timestep (Hoogeboom et al. 2023, "simple diffusion"). The
    /// shipped model uses 0.5; `docs/embedded-model.md` has the runs with `raw` and 1.
    #[arg(long, default_value = "0.5", value_parser = parse_latent_std)]
    latent_std: Option<f64>,
}

/// `raw` (no shift or scale) or a positive standard deviation.
fn parse_latent_std(s: &str) -> Result<Option<f64>, String> {
    if s == "raw" {
        return Ok(None);
    }
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() && v > 0.0 => Ok(Some(v)),
        _ => Err(format!("expected `raw` or a positive number, got `{s}`")),
    }
}

/// The loss weightings `--weighting` names.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum Weighting {
    Uniform,
    MinSnr,
    CappedSnrPlusOne,
}

impl Weighting {
    fn with_gamma(self, gamma: f64) -> LossWeighting {
        match self {
            Self::Uniform => LossWeighting::Uniform,
            Self::MinSnr => LossWeighting::MinSnr { gamma },
            Self::CappedSnrPlusOne => LossWeighting::CappedSnrPlusOne { gamma },
        }
    }
}

fn parse_dtype(value: &str) -> Result<FloatDType, String> {
    match value {
        "f16" => Ok(FloatDType::F16),
        "f32" => Ok(FloatDType::F32),
        other => Err(format!("`{other}`: expected f16 or f32")),
    }
}

fn parse_prediction(value: &str) -> Result<PredictionType, String> {
    PredictionType::parse(value).map_err(|e| e.to_string())
}

/// The scheduler the model is trained for and ships with: cosine betas (Nichol & Dhariwal
/// 2021: better than linear at low resolution), DDIM with trailing spacing, and the run's
/// prediction type.
fn scheduler_config(prediction: PredictionType) -> String {
    format!(
        r#"{{
  "_class_name": "DDIMScheduler",
  "num_train_timesteps": 1000,
  "beta_schedule": "squaredcos_cap_v2",
  "prediction_type": "{}",
  "timestep_spacing": "trailing",
  "clip_sample": false,
  "set_alpha_to_one": false,
  "steps_offset": 0
}}"#,
        prediction.as_str()
    )
}

/// The UNet of a new run: two levels of `channels`, cross-attention at both.
///
/// The first level must have at least the 48 patch channels for an ε or v target: with 32, a
/// v-prediction run predicted v at t = 50 with a mean squared error of 0.73 against 1.0 for
/// predicting zero (the level cannot carry the per-pixel noise), see `docs/embedded-model.md`.
fn unet_config(channels: &[usize]) -> Result<UNet3DConditionModelConfig, String> {
    let blocks = channels.len();
    let json = serde_json::json!({
        "in_channels": 48, "out_channels": 48, "sample_size": 8,
        "block_out_channels": channels, "layers_per_block": 1,
        "down_block_types": vec!["CrossAttnDownBlock3D"; blocks],
        "up_block_types": vec!["CrossAttnUpBlock3D"; blocks],
        "attention_head_dim": 8, "cross_attention_dim": 32, "norm_num_groups": 8
    });
    UNet3DConditionModelConfig::from_json_str(&json.to_string()).map_err(|e| e.to_string())
}

fn text_config(vocab_size: usize, tokenizer: &CLIPTokenizer) -> CLIPTextConfig {
    CLIPTextConfig {
        vocab_size,
        hidden_size: 32,
        intermediate_size: 64,
        num_hidden_layers: 2,
        num_attention_heads: 2,
        max_position_embeddings: MAX_LENGTH,
        bos_token_id: Some(i64::from(tokenizer.bos_token_id())),
        eos_token_id: Some(i64::from(tokenizer.eos_token_id())),
        pad_token_id: Some(i64::from(tokenizer.pad_token_id())),
        ..CLIPTextConfig::default()
    }
}

/// Mixed into the seed for the clips that measure the pixels' moments (not training clips).
const MOMENTS_STREAM: u64 = 0x6d6f_6d65_6e74;

fn shapes_data(patchify: PatchifyConfig) -> Result<ShapesData, String> {
    Ok(ShapesData {
        side: SIDE,
        turn_probability: 0.2,
        patchify: Patchify::new(patchify).map_err(|e| e.to_string())?,
    })
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &Args) -> Result<(), String> {
    let err = |e: vdm::Error| e.to_string();
    if args.plot_only {
        let dir = args.out.join("training");
        return vdm_examples::plot::loss_curve(&dir.join("loss.csv"), &dir.join("loss.png"));
    }
    let resume = args.resume || args.export_only;
    let device = Device::flex();
    device.seed(args.seed);
    let tokenizer_dir = args.out.join("tokenizer");
    std::fs::create_dir_all(&tokenizer_dir).map_err(|e| e.to_string())?;
    let vocab_size = write_tokenizer(&tokenizer_dir, MAX_LENGTH).map_err(err)?;
    let tokenizer = CLIPTokenizer::from_dir(&tokenizer_dir).map_err(err)?;
    let text_config = text_config(vocab_size, &tokenizer);
    let text_encoder = if resume {
        CLIPTextModel::from_pretrained(args.out.join("text_encoder"), &Default::default(), &device)
            .map_err(err)?
    } else {
        CLIPTextModel::new(&text_config, &device).map_err(err)?
    };
    let prompts = PromptEncoder::new(tokenizer, text_encoder.clone()).map_err(err)?;
    let beta = BetaConfig {
        beta_schedule: BetaSchedule::SquaredcosCapV2,
        ..BetaConfig::default()
    };
    let config = TrainConfig {
        steps: args.steps,
        batch_size: args.batch,
        learning_rate: args.lr,
        warmup_steps: 100.min(args.steps / 10 + 1),
        seed: args.seed,
        prediction_type: args.prediction,
        loss_weighting: args.weighting.with_gamma(args.gamma),
        ..TrainConfig::default()
    };
    let schedule = NoiseSchedule::new(&beta).map_err(err)?;
    // A resumed run keeps its architecture and settings (from the folder it wrote).
    let unet_config = if resume {
        let path = args.out.join("unet").join("config.json");
        let text =
            std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        UNet3DConditionModelConfig::from_json_str(&text).map_err(err)?
    } else {
        unet_config(&args.channels)?
    };
    let unet = UNet3DConditionModel::new(&unet_config, &device).map_err(err)?;
    let mut trainer = if resume {
        Trainer::resume(unet, prompts, schedule, &args.out, &device).map_err(err)?
    } else {
        Trainer::new(
            unet.with_prediction_type(config.prediction_type),
            prompts,
            schedule,
            config,
            &device,
        )
        .map_err(err)?
    };
    let patchify = if resume {
        PatchifyConfig::from_file(args.out.join("vae").join("config.json")).map_err(err)?
    } else {
        let plain = PatchifyConfig::default();
        if let Some(latent_std) = args.latent_std {
            let (mean, std) = shapes_data(plain)?.pixel_moments(
                &mut SeededNoise::new(args.seed ^ MOMENTS_STREAM),
                256,
                16,
            );
            println!(
                "pixels: mean {mean:.4}, std {std:.4} (latents shifted by the mean and scaled \
                 to std {})",
                latent_std
            );
            plain.normalized(mean, std / latent_std).map_err(err)?
        } else {
            plain
        }
    };
    let data = shapes_data(patchify)?;
    if args.export_only {
        save(
            &trainer,
            &text_encoder,
            patchify,
            args.unet_dtype,
            &args.out,
        )
        .map_err(err)?;
        println!("model folder rewritten: {}", args.out.display());
        return Ok(());
    }
    let total = trainer.config().steps;
    let stop = args
        .max_steps_now
        .map_or(total, |n| (trainer.steps_done() + n).min(total));
    let log_path = args.out.join("training").join("loss.csv");
    std::fs::create_dir_all(log_path.parent().expect("a parent")).map_err(|e| e.to_string())?;
    let mut log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .map_err(|e| format!("{}: {e}", log_path.display()))?;
    if trainer.steps_done() == 0 {
        writeln!(log, "step,loss,learning_rate,grad_norm,image_step,seconds")
            .map_err(|e| e.to_string())?;
    }
    let bar = ProgressBar::new(total as u64).with_position(trainer.steps_done() as u64);
    bar.set_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} steps  {msg}  [{elapsed} < {eta}]")
            .expect("a valid template"),
    );
    let started = Instant::now();
    let mut smoothed: Option<f32> = None;
    while trainer.steps_done() < stop {
        let report = trainer.step(&data).map_err(err)?;
        smoothed = Some(smoothed.map_or(report.loss, |s| 0.98 * s + 0.02 * report.loss));
        writeln!(
            log,
            "{},{},{},{},{},{:.2}",
            report.step,
            report.loss,
            report.learning_rate,
            report.grad_norm,
            u8::from(report.image_step),
            started.elapsed().as_secs_f64()
        )
        .map_err(|e| e.to_string())?;
        bar.set_position(report.step as u64);
        bar.set_message(format!("loss {:.4}", smoothed.unwrap_or(report.loss)));
        let out_of_time = args
            .max_minutes
            .is_some_and(|m| started.elapsed().as_secs_f64() > 60.0 * m);
        if report.step % args.checkpoint_every == 0 || report.step == stop || out_of_time {
            save(
                &trainer,
                &text_encoder,
                patchify,
                args.unet_dtype,
                &args.out,
            )
            .map_err(err)?;
        }
        if out_of_time {
            break;
        }
    }
    bar.finish();
    let png = args.out.join("training").join("loss.png");
    vdm_examples::plot::loss_curve(&log_path, &png)?;
    println!(
        "{} steps done in {:.1} min; model folder: {}",
        trainer.steps_done(),
        started.elapsed().as_secs_f64() / 60.0,
        args.out.display()
    );
    println!("loss curve: {}", png.display());
    Ok(())
}

/// Writes the resumable state and the model folder (EMA weights).
fn save(
    trainer: &Trainer<UNet3DConditionModel>,
    text_encoder: &CLIPTextModel,
    patchify: PatchifyConfig,
    unet_dtype: FloatDType,
    out: &Path,
) -> vdm::Result<()> {
    trainer.save_checkpoint(out)?;
    let unet = trainer.inference_model();
    PipelineExport {
        unet: &unet,
        text_encoder,
        patchify,
        unet_dtype,
        scheduler_config: &scheduler_config(trainer.config().prediction_type),
        write_tokenizer: &|dir| write_tokenizer(dir, MAX_LENGTH).map(|_| ()),
    }
    .write(out)
}
