//! Benchmark: what the samplers' non-finite checks cost (`docs/reliability.md`, "The cost").
//!
//! Two tables, measured in one run:
//! - one check (`vdm::core::finite::ensure_all_finite`: a sum and a one-value read-back) on
//!   latents of a 16- and a 64-frame video with classifier-free guidance, on one tensor (in
//!   cache) and cycling through 16 (out of cache), beside Burn's `is_finite().all()` read back
//!   and one elementwise `x·0.5 + x` read back, for scale;
//! - whole runs of the embedded model (`TextToVideoPipeline`, 16 frames, guidance) with the
//!   checks on and off, alternating rounds, so the ratio is measured side by side.
//!
//! ```text
//! cargo run --release --example bench_finite [-- rounds]
//! ```

use std::time::Instant;

use vdm::burn::tensor::Tensor;
use vdm::core::Result;
use vdm::core::finite::ensure_all_finite;
use vdm::core::noise::{SeededNoise, draw};
use vdm::core::readback::{read_data, read_f32_scalar};
use vdm::pipeline::TextToVideoPipeline;
use vdm_examples::measure::{load_average, median, min};

/// Calls per timed sample of the one-check cases.
const CALLS: usize = 200;
/// Tensors cycled through by the out-of-cache case.
const CYCLE: usize = 16;

/// One timed operation on a tensor.
type Operation<'a> = &'a dyn Fn(&Tensor<5>) -> Result<()>;

fn main() -> Result<()> {
    let rounds: usize = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(5);
    let device = vdm::try_device()?;
    println!(
        "non-finite checks, backend {}, {rounds} rounds, load {}",
        vdm::backend_name(),
        load_average(3)
    );
    println!();
    println!("| tensor | MiB | operation | µs per call, median | min |");
    println!("|---|---:|---|---:|---:|");
    let mut noise = SeededNoise::new(0);
    for shape in [[2, 4, 16, 40, 64], [2, 4, 64, 40, 64]] {
        let tensors = (0..CYCLE)
            .map(|_| draw::<5>(&mut noise, shape, &device))
            .collect::<Result<Vec<Tensor<5>>>>()?;
        let mib = (shape.iter().product::<usize>() * 4) as f64 / (1 << 20) as f64;
        let cases: [(&str, usize, Operation); 4] = [
            ("`ensure_all_finite`, one tensor", 1, &check),
            ("`ensure_all_finite`, 16 tensors in turn", CYCLE, &check),
            ("Burn's `is_finite().all()`, read back", 1, &|t| {
                read_data(t.clone().is_finite().all(), "all finite").map(drop)
            }),
            ("elementwise `x·0.5 + x`, read back", 1, &|t| {
                let y = t.clone().mul_scalar(0.5) + t.clone();
                read_f32_scalar(y.slice([0..1, 0..1, 0..1, 0..1, 0..1]), "one value").map(drop)
            }),
        ];
        for (name, cycle, op) in cases {
            let mut micros = Vec::with_capacity(rounds);
            for round in 0..=rounds {
                let t0 = Instant::now();
                for call in 0..CALLS {
                    op(&tensors[call % cycle])?;
                }
                if round > 0 {
                    micros.push(t0.elapsed().as_secs_f64() * 1e6 / CALLS as f64);
                }
            }
            println!(
                "| {shape:?} | {mib:.2} | {name} | {:.1} | {:.1} |",
                median(&micros),
                min(&micros)
            );
        }
    }

    println!();
    let pipeline = TextToVideoPipeline::from_dir(vdm::embedded::moving_shapes_dir(), &device)?;
    let steps = 10;
    let settings = vdm::embedded::generation("a red circle moving right")
        .frames(16)
        .steps(steps)
        .seed(1);
    println!(
        "whole runs of the embedded model: 16 frames, {steps} steps, guidance {}; \
         rounds alternate which goes first",
        vdm::embedded::GUIDANCE_SCALE
    );
    println!();
    println!("| checks | s per run, per round | median | min | median run ÷ steps (ms) |");
    println!("|---|---|---:|---:|---:|");
    pipeline.generate(&settings)?; // warm-up
    let mut seconds = [Vec::new(), Vec::new()];
    for round in 0..rounds {
        for k in [round % 2, 1 - round % 2] {
            let on = k == 0;
            let t0 = Instant::now();
            pipeline.generate(&settings.clone().finite_checks(on))?;
            seconds[k].push(t0.elapsed().as_secs_f64());
        }
    }
    for (k, label) in ["on", "off"].iter().enumerate() {
        let per_round: Vec<String> = seconds[k].iter().map(|s| format!("{s:.3}")).collect();
        println!(
            "| {label} | {} | {:.3} | {:.3} | {:.1} |",
            per_round.join(" / "),
            median(&seconds[k]),
            min(&seconds[k]),
            median(&seconds[k]) * 1e3 / steps as f64
        );
    }
    let ratios: Vec<f64> = seconds[0]
        .iter()
        .zip(&seconds[1])
        .map(|(on, off)| on / off)
        .collect();
    println!();
    println!(
        "on / off per round: {} (median {:.3}×)",
        ratios
            .iter()
            .map(|r| format!("{r:.3}×"))
            .collect::<Vec<_>>()
            .join(" "),
        median(&ratios)
    );
    Ok(())
}

/// One sampler check, as `report` and `GuidedModel::step` make it.
fn check(t: &Tensor<5>) -> Result<()> {
    ensure_all_finite(t, || "the latents".to_string(), "")
}
