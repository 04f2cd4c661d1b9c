//! Peak memory of whole long videos from the embedded Moving Shapes model, as a user makes them
//! (`TextToVideoPipeline::generate_frames`: prompt in, 8-bit frames out, each piece converted
//! and dropped as a writer would), for direct sampling, FreeNoise and FIFO-Diffusion at 64 and
//! 512 frames: FIFO-Diffusion's claim is that its memory does not grow with the video.
//!
//! Each (method, length) runs in its own process, so its peak is its own: `VmHWM` of
//! `/proc/self/status` at the end, beside `VmRSS` after loading the model and one warm-up
//! generation of 16 frames (Burn initialises and caches lazily); the *increment* is the peak
//! minus that.
//!
//! ```text
//! cargo run --release --example memory_fifo                       # the table (about 10 min)
//! cargo run --release --example memory_fifo -- --frames 64,512 --methods fifo
//! cargo run --release --example memory_fifo -- --child fifo --frames 512   # one measurement
//! ```
//!
//! Settings: "a red circle moving right", seed 0, guidance 4; direct and FreeNoise (windows of
//! 16 every 4) with 20 DDIM steps; FIFO-Diffusion with windows of 16, 2 partitions (32 levels),
//! lookahead, η = 1 (4 model calls of 16 frames per frame).

use std::process::{Command, ExitCode};
use std::time::Instant;

use clap::Parser;
use vdm::core::SeededNoise;
use vdm::longvideo::fifo::Fifo;
use vdm::longvideo::freenoise::FreeNoiseConfig;
use vdm::longvideo::sampler::Control;
use vdm::pipeline::{Generation, TextToVideoPipeline};
use vdm_examples::measure::{load_average, reset_hwm, status_mib};

#[derive(Parser, Debug)]
#[command(about = "Peak memory of long videos: direct, FreeNoise and FIFO-Diffusion")]
struct Args {
    /// Video lengths, comma separated.
    #[arg(long, value_delimiter = ',', default_value = "64,512")]
    frames: Vec<usize>,
    /// Methods, comma separated: direct, freenoise, fifo.
    #[arg(long, value_delimiter = ',', default_value = "direct,freenoise,fifo")]
    methods: Vec<String>,
    /// Measure one method (at the first of --frames) in this process and print a RESULT line.
    #[arg(long)]
    child: Option<String>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let result = match &args.child {
        Some(method) => measure(method, args.frames[0]),
        None => drive(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn settings(method: &str, frames: usize) -> Result<Generation, String> {
    let g = Generation::new("a red circle moving right")
        .frames(frames)
        .steps(20)
        .guidance_scale(4.0)
        .seed(0);
    Ok(match method {
        "direct" => g,
        "freenoise" => g.freenoise(FreeNoiseConfig::new(16, 4)),
        "fifo" => g.fifo(Fifo::new(16, 2)),
        other => {
            return Err(format!(
                "unknown method `{other}` (direct, freenoise, fifo)"
            ));
        }
    })
}

/// One generation in this process; prints `RESULT {json}`.
fn measure(method: &str, frames: usize) -> Result<(), String> {
    let err = |e: vdm::Error| e.to_string();
    let settings = settings(method, frames)?;
    let device = vdm::device();
    let pipe =
        TextToVideoPipeline::from_dir(vdm::embedded::moving_shapes_dir(), &device).map_err(err)?;
    // Warm-up: materialise the weights and the allocator's first pools.
    let warm = Generation::new("a blue square moving up").steps(2).seed(1);
    pipe.generate(&warm).map_err(err)?;
    let rss_loaded = status_mib("VmRSS");
    let reset = reset_hwm();
    let load_before = load_average(1);
    let t0 = Instant::now();
    let mut written = 0usize;
    let mut checksum = 0u64;
    pipe.generate_frames(
        &settings,
        &mut SeededNoise::new(settings.seed),
        &mut |_| Control::Continue,
        &mut |_, piece| {
            for image in piece.to_rgb_images()? {
                checksum += image.as_raw().iter().map(|&b| u64::from(b)).sum::<u64>();
                written += 1;
            }
            Ok(())
        },
    )
    .map_err(err)?;
    let seconds = t0.elapsed().as_secs_f64();
    let peak = status_mib("VmHWM");
    let result = serde_json::json!({
        "method": method,
        "frames": frames,
        "written": written,
        "checksum": checksum,
        "rss_loaded_mib": rss_loaded,
        "hwm_reset": reset,
        "peak_rss_mib": peak,
        "increment_mib": peak - rss_loaded,
        "seconds": seconds,
        "load_before": load_before,
        "load_after": load_average(1),
    });
    println!("RESULT {result}");
    Ok(())
}

/// One child process per (method, length), then the table.
fn drive(args: &Args) -> Result<(), String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    println!(
        "| method | frames | peak RSS (MiB) | RSS after loading (MiB) | increment (MiB) | s | s / frame |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|");
    for method in &args.methods {
        for &frames in &args.frames {
            let out = Command::new(&exe)
                .args(["--child", method, "--frames", &frames.to_string()])
                .output()
                .map_err(|e| e.to_string())?;
            let stdout = String::from_utf8_lossy(&out.stdout);
            let Some(line) = stdout.lines().find_map(|l| l.strip_prefix("RESULT ")) else {
                return Err(format!(
                    "{method} at {frames} frames failed: {}",
                    String::from_utf8_lossy(&out.stderr)
                ));
            };
            let r: serde_json::Value = serde_json::from_str(line).map_err(|e| e.to_string())?;
            let f = |k: &str| r[k].as_f64().unwrap_or(f64::NAN);
            if r["written"].as_u64() != Some(frames as u64) {
                return Err(format!(
                    "{method}: wrote {} of {frames} frames",
                    r["written"]
                ));
            }
            println!(
                "| {method} | {frames} | {:.0} | {:.0} | {:.0} | {:.1} | {:.3} |",
                f("peak_rss_mib"),
                f("rss_loaded_mib"),
                f("increment_mib"),
                f("seconds"),
                f("seconds") / frames as f64,
            );
            if r["hwm_reset"] != serde_json::Value::Bool(true) {
                println!(
                    "(the kernel refused to reset the high-water mark: that peak includes loading)"
                );
            }
        }
    }
    Ok(())
}
