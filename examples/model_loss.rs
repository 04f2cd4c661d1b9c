//! `model_loss`: how well a Moving Shapes model folder denoises, per noise level.
//!
//! ```text
//! cargo run --release --example model_loss                          # the embedded model
//! cargo run --release --example model_loss -- --model-dir path/to/folder --timesteps 50,500,950
//! ```
//!
//! For each timestep it noises fresh clips from `vdm::shapes` (seeded, not the training
//! seed's), asks the model, and prints the mean squared error of its own target (ε, v or x₀)
//! beside what predicting zero would score, and the error of the clean sample `x̂₀` it implies
//! beside predicting the mean clip (the background). A model that learned nothing scores the
//! baselines; the x₀ columns are in pixel units (`[-1, 1]`, after the codec's scaling is
//! undone), comparable between prediction types and latent scalings. Used to choose and check
//! the embedded model's recipe (`docs/embedded-model.md`).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use vdm::burn::tensor::{Device, Tensor};
use vdm::core::readback::read_f32_scalar;
use vdm::core::{Conditioning, Denoiser, DenoiserInput, NoiseSource, SeededNoise, Timesteps};
use vdm::models::clip::PromptOptions;
use vdm::pipeline::{FrameDecoder, TextToVideoPipeline};
use vdm::schedulers::from_config_json;
use vdm::schedulers::prediction::to_x0_and_eps;
use vdm::training::{LossWeighting, Objective, ShapesData, TrainingData};

/// Denoising error of a Moving Shapes model per timestep.
#[derive(Debug, Parser)]
#[command(name = "model_loss", version)]
struct Args {
    /// The model folder (default: the embedded model).
    #[arg(long)]
    model_dir: Option<PathBuf>,
    /// Timesteps to probe.
    #[arg(long, value_delimiter = ',', default_values_t = [20, 50, 100, 200, 400, 600, 800, 950, 999])]
    timesteps: Vec<usize>,
    /// Clips per timestep.
    #[arg(long, default_value_t = 16)]
    batch: usize,
    /// Seed of the clips and the noise.
    #[arg(long, default_value_t = 1_000_003)]
    seed: u64,
}

fn main() -> ExitCode {
    match run(&Args::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn mse(a: Tensor<5>, b: Tensor<5>) -> vdm::Result<f32> {
    read_f32_scalar((a - b).powf_scalar(2.0).mean(), "a mean squared error")
}

fn run(args: &Args) -> vdm::Result<()> {
    let dir = args
        .model_dir
        .clone()
        .unwrap_or_else(vdm::embedded::moving_shapes_dir);
    let device = Device::flex();
    let pipe = TextToVideoPipeline::from_dir(&dir, &device)?;
    let FrameDecoder::Patchify(patchify) = &pipe.vae else {
        return Err(vdm::Error::invalid(
            "model_dir",
            "not a Moving Shapes folder (its vae is not Patchify)",
        ));
    };
    let scheduler = from_config_json(&pipe.scheduler_config)?;
    let prediction = pipe.unet.prediction_type();
    let objective = Objective::new(
        scheduler.noise_schedule().clone(),
        prediction,
        LossWeighting::Uniform,
    )?;
    let data = ShapesData {
        side: 32,
        turn_probability: 0.2,
        patchify: *patchify,
    };
    println!("{} ({} prediction)", dir.display(), prediction.as_str());
    println!("| t | target MSE | predict 0 | x̂₀ MSE | predict background | x̂₀ MSE, no caption |");
    println!("|---:|---:|---:|---:|---:|---:|");
    for &t in &args.timesteps {
        let mut rng = SeededNoise::new(args.seed);
        let (x0, captions) = data.sample(&mut rng, args.batch, 16, &device)?;
        let noise = Tensor::<5>::from_data(rng.normal(&x0.dims())?, &device);
        let batch = objective.noise(x0.clone(), noise, &vec![t; args.batch])?;
        let scales = objective.scales(t)?;
        let background = x0.clone().mean_dim(0).mean_dim(2).mean_dim(3).mean_dim(4);
        let mut row = Vec::new();
        for with_caption in [true, false] {
            let mut parts = Vec::new();
            for caption in &captions {
                let text = if with_caption { caption.as_str() } else { "" };
                parts.push(pipe.prompt_encoder.embed(text, PromptOptions::default())?);
            }
            let output = pipe.unet.predict(DenoiserInput::new(
                batch.noisy.clone(),
                Timesteps::Shared(t as f64),
                Conditioning::Shared(Tensor::cat(parts, 0)),
            ))?;
            let (x0_hat, _) =
                to_x0_and_eps(prediction, output.clone(), batch.noisy.clone(), scales)?;
            let x0_error = mse(patchify.decode(x0_hat)?, patchify.decode(x0.clone())?)?;
            row.push((mse(output, batch.target.clone())?, x0_error));
        }
        let zero = read_f32_scalar(
            batch.target.clone().powf_scalar(2.0).mean(),
            "the mean square of the target",
        )?;
        let bg = mse(
            patchify.decode(background.expand(x0.dims()))?,
            patchify.decode(x0.clone())?,
        )?;
        println!(
            "| {t} | {:.4} | {zero:.4} | {:.4} | {bg:.4} | {:.4} |",
            row[0].0, row[0].1, row[1].1
        );
    }
    Ok(())
}
