//! Benchmark: 50 scheduler steps on a `[1, 4, 16, 64, 64]` latent (step only, plus
//! `scale_model_input`), the setting of `shared/bench/BASELINE.md` §5. Prints a table; the
//! figure to compare is against one model forward (≥ 1 s for the bench UNet3D), where the
//! scheduler must be negligible.
//!
//! ```text
//! cargo run --release --example bench_schedulers [-- repeats]
//! ```

use std::time::Instant;

use vdm::burn::tensor::Tensor;
use vdm::core::Result;
use vdm::core::noise::{SeededNoise, draw};
use vdm::core::readback::read_f32_scalar;
use vdm::schedulers::from_config_json;
use vdm_examples::catalogue::schedulers;
use vdm_examples::measure::median;

fn main() -> Result<()> {
    let repeats: usize = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(7);
    let device = vdm::device();
    let shape = [1, 4, 16, 64, 64];
    let mut noise = SeededNoise::new(0);
    let x0: Tensor<5> = draw(&mut noise, shape, &device)?;
    let model_output: Tensor<5> = draw(&mut noise, shape, &device)?;

    println!(
        "scheduler steps on {shape:?} ({} floats), backend {}, {repeats} repeats",
        x0.shape().num_elements(),
        vdm::backend_name()
    );
    println!(
        "| {:<26} | {:>5} | {:>14} | {:>8} | {:>9} | {:>17} |",
        "scheduler", "steps", "loop ms median", "min", "ms / step", "set_timesteps ms"
    );
    println!(
        "|{:-<28}|{:->7}|{:->16}|{:->10}|{:->11}|{:->19}|",
        "", "", "", "", "", ""
    );
    for case in schedulers() {
        let (name, config, steps) = (&case.name, &case.config, &case.bench_steps);
        let mut loops = Vec::new();
        let mut sets = Vec::new();
        for r in 0..repeats + 1 {
            let mut s = from_config_json(config)?;
            let t0 = Instant::now();
            s.set_timesteps(*steps)?;
            let set_ms = t0.elapsed().as_secs_f64() * 1e3;
            let mut x = x0.clone();
            let mut step_noise = SeededNoise::new(r as u64);
            let t0 = Instant::now();
            for t in s.timesteps().to_vec() {
                let x_in = s.scale_model_input(x.clone(), t)?;
                let _ = x_in;
                x = s
                    .step(model_output.clone(), t, x, &mut step_noise)?
                    .prev_sample;
            }
            // Make sure the work is done before stopping the clock.
            read_f32_scalar(x.sum(), "the sum of the latents")?;
            let ms = t0.elapsed().as_secs_f64() * 1e3;
            if r > 0 {
                loops.push(ms);
                sets.push(set_ms);
            }
        }
        let min = loops.iter().cloned().fold(f64::INFINITY, f64::min);
        let med = median(&loops);
        println!(
            "| {name:<26} | {steps:>5} | {med:>14.2} | {min:>8.2} | {:>9.3} | {:>17.3} |",
            med / *steps as f64,
            median(&sets)
        );
    }
    println!(
        "\nReference (shared/bench/BASELINE.md §5, diffusers/PyTorch on this machine type): DDIM 50 steps 7.4-14.2 ms; one bench UNet3D forward >= 1.7 s."
    );
    Ok(())
}
