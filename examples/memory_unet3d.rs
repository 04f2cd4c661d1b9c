//! Memory benchmark: peak resident memory of one `UNet3DConditionModel` forward against the
//! frame count, with and without chunked inference.
//!
//! The model is the parity-test config (`fixtures/oracle/unet3d_config.json`, 1.33 M
//! parameters, with its fixture weights), sample `[1, 4, F, 16, 16]`, text `[1, 77, 32]`,
//! timestep 500. Each measurement runs in its own process: the peak-RSS mark (`VmHWM` in
//! `/proc/self/status`) is reset just before the forward (`echo 5 > /proc/self/clear_refs`,
//! after the model is loaded and a 2-frame warm-up forward has run), so the reported *forward
//! peak* is the resident memory at the forward's high-water mark minus the RSS before it.
//!
//! ```text
//! cargo run --release --example memory_unet3d                   # driver: F = 16, 64, 256, both modes
//! cargo run --release --example memory_unet3d -- --frames 16,64,256,512 --chunk 8,64
//! cargo run --release --example memory_unet3d -- --one 64 [--chunk 8,64]   # one measurement
//! ```
//!
//! `--chunk FRAMES,POSITIONS` is `Chunking::new(FRAMES, POSITIONS)`: spatial layers over 8
//! frames at a time, temporal layers over 64 spatial positions at a time by default. The
//! driver prints, per mode, the table and the least-squares slope of the forward peak in MiB
//! per frame.

use std::process::Command;
use std::time::Instant;

use vdm::burn::tensor::Tensor;
use vdm::core::noise::{SeededNoise, draw};
use vdm::core::readback::read_f32_scalar;
use vdm::core::{AllFrames, Conditioning, Result, Timesteps};
use vdm::models::chunking::Chunking;
use vdm::models::loading::LoadOptions;
use vdm::models::unet3d::{PretrainedSource, UNet3DConditionModel};
use vdm_examples::measure::{linear_fit, reset_hwm, rss_mib};

const TEXT: [usize; 3] = [1, 77, 32];
const SIZE: usize = 16;

fn parse_pair(s: &str) -> (usize, usize) {
    let v: Vec<usize> = s
        .split(',')
        .map(|x| x.trim().parse().expect("--chunk FRAMES,POSITIONS"))
        .collect();
    assert_eq!(v.len(), 2, "--chunk FRAMES,POSITIONS");
    (v[0], v[1])
}

fn fixtures() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/oracle")
}

/// One measurement in this process: prints a `RESULT` line.
fn measure(frames: usize, chunk: Option<(usize, usize)>) -> Result<()> {
    let device = vdm::device();
    let dir = fixtures();
    let source = PretrainedSource::Files {
        config: dir.join("unet3d_config.json"),
        weights: dir.join("unet3d_weights.safetensors"),
    };
    let mut model = UNet3DConditionModel::from_pretrained(source, &LoadOptions::new(), &device)?;
    if let Some((f, p)) = chunk {
        model = model.with_chunking(Chunking::new(f, p));
    }
    let mut noise = SeededNoise::new(7101);
    let text: Tensor<3> = draw(&mut noise, TEXT, &device)?;
    let conditioning = Conditioning::Shared(text);
    let timesteps = Timesteps::Shared(500.0);
    let mut noise = SeededNoise::new(7100);
    let warm: Tensor<5> = draw(&mut noise, [1, 4, 2, SIZE, SIZE], &device)?;
    let sample: Tensor<5> = draw(&mut noise, [1, 4, frames, SIZE, SIZE], &device)?;
    let warm = model.forward(warm, &timesteps, &conditioning, &AllFrames)?;
    read_f32_scalar(warm.sum(), "the sum of the warm-up output")?;

    let (_, before) = rss_mib();
    let reset = reset_hwm();
    let t0 = Instant::now();
    let out = model.forward(sample, &timesteps, &conditioning, &AllFrames)?;
    read_f32_scalar(
        out.slice([0..1, 0..1, 0..1, 0..1, 0..1]),
        "one output value",
    )?;
    let secs = t0.elapsed().as_secs_f64();
    let (hwm, _) = rss_mib();
    println!(
        "RESULT frames={frames} before={before:.1} peak={hwm:.1} fwd={:.1} secs={secs:.3} reset={reset}",
        hwm - before
    );
    Ok(())
}

fn main() -> Result<()> {
    let mut frames = vec![16, 64, 256];
    let mut chunk = (8, 64);
    let mut one = None;
    let mut chunked_one = false;
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut value = || it.next().unwrap_or_else(|| panic!("{a} needs a value"));
        match a.as_str() {
            "--frames" => {
                frames = value()
                    .split(',')
                    .map(|s| s.trim().parse().expect("--frames 16,64,256"))
                    .collect()
            }
            "--chunk" => {
                chunk = parse_pair(&value());
                chunked_one = true;
            }
            "--one" => one = Some(value().parse::<usize>().expect("--one F")),
            "-h" | "--help" => {
                println!(
                    "memory_unet3d [--frames 16,64,256] [--chunk FRAMES,POSITIONS] | --one F [--chunk F,P]"
                );
                return Ok(());
            }
            other => panic!("unknown argument {other:?} (try --help)"),
        }
    }
    if let Some(f) = one {
        return measure(f, chunked_one.then_some(chunk));
    }

    let exe = std::env::current_exe().expect("own executable");
    println!(
        "UNet3DConditionModel, parity config (fixtures/oracle/unet3d_config.json), sample \
         [1,4,F,{SIZE},{SIZE}], text {TEXT:?}; one process per row; backend {}",
        vdm::backend_name()
    );
    println!(
        "| mode | F | RSS before fwd MiB | peak RSS MiB | forward peak (peak − before) MiB | s / fwd |"
    );
    println!("|---|---:|---:|---:|---:|---:|");
    let mut summary = Vec::new();
    for chunked in [false, true] {
        let mode = if chunked {
            format!("Chunking::new({}, {})", chunk.0, chunk.1)
        } else {
            "no chunking".to_string()
        };
        let mut points = Vec::new();
        for &f in &frames {
            let mut cmd = Command::new(&exe);
            cmd.args(["--one", &f.to_string()]);
            if chunked {
                cmd.args(["--chunk", &format!("{},{}", chunk.0, chunk.1)]);
            }
            let out = cmd.output().expect("spawn measurement");
            let text = String::from_utf8_lossy(&out.stdout);
            let Some(line) = text.lines().find(|l| l.starts_with("RESULT ")) else {
                println!(
                    "| {mode} | {f} | failed: {} |",
                    String::from_utf8_lossy(&out.stderr)
                        .lines()
                        .last()
                        .unwrap_or("no output")
                );
                continue;
            };
            let get = |key: &str| -> f64 {
                line.split_whitespace()
                    .find_map(|kv| kv.strip_prefix(&format!("{key}=")))
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(f64::NAN)
            };
            let (before, peak, fwd, secs) = (get("before"), get("peak"), get("fwd"), get("secs"));
            println!("| {mode} | {f} | {before:.1} | {peak:.1} | {fwd:.1} | {secs:.3} |");
            points.push((f as f64, fwd));
        }
        if points.len() >= 2 {
            summary.push((mode, linear_fit(&points).0, points));
        }
    }
    println!();
    for (mode, s, points) in summary {
        let last = points.last().expect("points");
        println!(
            "{mode}: forward peak grows {s:.3} MiB per frame (least squares over F = {:?}); \
             {:.1} MiB at F = {}",
            points.iter().map(|p| p.0 as usize).collect::<Vec<_>>(),
            last.1,
            last.0
        );
    }
    Ok(())
}
