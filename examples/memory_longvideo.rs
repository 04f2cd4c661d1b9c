//! Peak memory of long-video inference: one forward of the "bench-size" AnimateDiff
//! `UNetMotionModel` (`shared/bench/BASELINE.md` §3: MOTION_U2 + MOTION_MA, 13.3 M parameters,
//! random weights; latent `[1, 4, F, 32, 32]`, text `[1, 77, 128]`, timestep 500) with FreeNoise
//! (context 16 / stride 4 / pyramid) and chunked inference, for `F` up to 512 frames.
//!
//! Each `F` runs in its own process, so the peak is that forward's own: the example measures
//! `VmHWM` of `/proc/self/status` after the forward, with the high-water mark reset just before
//! it (`echo 5 > /proc/self/clear_refs`; if the kernel refuses, the peak includes the build).
//! Burn initialises parameters lazily, so a one-frame forward first materialises the weights;
//! the *forward increment* is the peak minus the RSS before the measured forward (model,
//! inputs, allocator state), i.e. the activations.
//!
//! ```text
//! # driver: one child process per F, then the table and the slope (MiB per frame)
//! cargo run --release --example memory_longvideo
//! cargo run --release --example memory_longvideo -- --frames-list 64,128,256,512 --positions 256 --frame-chunk 16 --sequential
//! # one measurement (what the driver runs per F)
//! cargo run --release --example memory_longvideo -- --frames 512
//! # without chunking, for comparison
//! cargo run --release --example memory_longvideo -- --no-chunking
//! ```
//!
//! Options: `--frame-chunk K` (frames per call of the per-frame layers, default 16),
//! `--positions P` (spatial positions per call of the motion modules, default 256; diffusers'
//! `enable_free_noise_split_inference` defaults are 256 / 16), `--no-chunking`,
//! `--max-windows M` (stack up to `M` FreeNoise windows per stage call; `all` = no cap),
//! `--sequential` (one window per call, as diffusers; the default).

use std::process::Command;
use std::time::Instant;

use vdm::burn::module::Module;
use vdm::burn::tensor::Tensor;
use vdm::core::noise::{SeededNoise, draw};
use vdm::core::readback::{read_data, read_f32_scalar};
use vdm::core::{Conditioning, Denoiser, DenoiserInput, Result, Timesteps};
use vdm::longvideo::freenoise::{FreeNoiseConfig, FreeNoiseHook, WindowBatching};
use vdm::models::chunking::Chunking;
use vdm::models::unet_motion::UNetMotionModel;
use vdm_examples::measure::{linear_fit, load_average, reset_hwm, status_mib};
use vdm_examples::motion_bench::bench_motion_config;

#[derive(Debug, Clone)]
struct Options {
    frames: Option<usize>,
    frames_list: Vec<usize>,
    chunking: Chunking,
    batching: WindowBatching,
}

impl Options {
    fn parse() -> Self {
        let mut o = Options {
            frames: None,
            frames_list: vec![64, 128, 256, 512],
            chunking: Chunking::new(16, 256),
            batching: WindowBatching::default(),
        };
        let argv: Vec<String> = std::env::args().skip(1).collect();
        let value = |i: usize| -> &str {
            argv.get(i + 1)
                .map(String::as_str)
                .unwrap_or_else(|| panic!("{} needs a value", argv[i]))
        };
        let num = |i: usize| -> usize {
            value(i)
                .parse()
                .unwrap_or_else(|_| panic!("{} needs a number", argv[i]))
        };
        let mut i = 0;
        while i < argv.len() {
            match argv[i].as_str() {
                "--frames" => o.frames = Some(num(i)),
                "--frames-list" => {
                    o.frames_list = value(i)
                        .split(',')
                        .map(|s| s.parse().expect("--frames-list 64,128"))
                        .collect()
                }
                "--frame-chunk" => o.chunking.frames = Some(num(i)),
                "--positions" => o.chunking.positions = Some(num(i)),
                "--max-windows" => {
                    o.batching = WindowBatching::Stacked {
                        max_windows: (value(i) != "all").then(|| num(i)),
                    }
                }
                "--sequential" => {
                    o.batching = WindowBatching::Sequential;
                    i -= 1;
                }
                "--no-chunking" => {
                    o.chunking = Chunking::none();
                    i -= 1;
                }
                other => panic!("unknown argument {other} (see the file's docs)"),
            }
            i += 2;
        }
        o
    }

    /// The options as arguments for a child process (without `--frames`).
    fn child_args(&self) -> Vec<String> {
        let mut a = Vec::new();
        match self.chunking {
            Chunking {
                frames: None,
                positions: None,
            } => a.push("--no-chunking".to_string()),
            Chunking { frames, positions } => {
                if let Some(k) = frames {
                    a.extend(["--frame-chunk".to_string(), k.to_string()]);
                }
                if let Some(p) = positions {
                    a.extend(["--positions".to_string(), p.to_string()]);
                }
            }
        }
        match self.batching {
            WindowBatching::Sequential => a.push("--sequential".into()),
            WindowBatching::Stacked { max_windows } => a.extend([
                "--max-windows".to_string(),
                max_windows.map_or("all".to_string(), |m| m.to_string()),
            ]),
        }
        a
    }

    fn describe(&self) -> String {
        format!(
            "chunking frames {:?} / positions {:?}, FreeNoise 16/4 pyramid, windows {:?}",
            self.chunking.frames, self.chunking.positions, self.batching
        )
    }
}

/// One forward at `frames` frames in this process; prints a `RESULT {json}` line.
fn measure(o: &Options, frames: usize) -> Result<()> {
    let device = vdm::device();
    let rss_start = status_mib("VmRSS");
    let model = UNetMotionModel::new(&bench_motion_config()?, &device)?.with_chunking(o.chunking);
    let hook = FreeNoiseHook::new(FreeNoiseConfig::new(16, 4).with_batching(o.batching))?;
    let mut noise = SeededNoise::new(8100);
    let x: Tensor<5> = draw(&mut noise, [1, 4, frames, 32, 32], &device)?;
    let mut text_noise = SeededNoise::new(8101);
    let text: Tensor<3> = draw(&mut text_noise, [1, 77, 128], &device)?;
    // Burn initialises parameters lazily: a one-frame forward materialises the weights, so
    // that the measured part is the forward's activations only.
    let one: Tensor<5> = draw(&mut SeededNoise::new(1), [1, 4, 1, 32, 32], &device)?;
    let warm = DenoiserInput::new(
        one,
        Timesteps::Shared(500.0),
        Conditioning::Shared(text.clone()),
    );
    read_data(model.predict(warm)?, "the warm-up output")?;
    let rss_built = status_mib("VmRSS");
    let reset = reset_hwm();
    let load_before = load_average(1);
    let t0 = Instant::now();
    let input = DenoiserInput::new(x, Timesteps::Shared(500.0), Conditioning::Shared(text))
        .with_temporal(&hook);
    // Where the high-water mark rises: the module during which it last grew, and the RSS at
    // every block boundary.
    let mut hwm = status_mib("VmHWM");
    let mut peak_in = String::from("(before conv_in)");
    let mut blocks = Vec::new();
    let y = model.forward_traced(input, &mut |path: &str, _t: &Tensor<4>| {
        let now = status_mib("VmHWM");
        if now > hwm + 0.5 {
            peak_in = path.to_string();
            hwm = now;
        }
        // Block ends: `conv_in`, `down_blocks.N`, `mid_block`, `up_blocks.N`, `conv_out`.
        if path.matches('.').count() <= 1 && !path.contains("motion") {
            blocks.push(serde_json::json!([path, status_mib("VmRSS").round()]));
        }
    })?;
    let sum = read_f32_scalar(y.sum(), "the sum of the output")?;
    let seconds = t0.elapsed().as_secs_f64();
    let peak = status_mib("VmHWM");
    if peak > hwm + 0.5 {
        peak_in = "(after conv_out)".into();
    }
    let result = serde_json::json!({
        "frames": frames,
        "params": model.num_params(),
        "rss_start_mib": rss_start,
        "rss_built_mib": rss_built,
        "hwm_reset": reset,
        "peak_rss_mib": peak,
        "forward_increment_mib": peak - rss_built,
        "forward_s": seconds,
        "output_finite": sum.is_finite(),
        "peak_reached_in": peak_in,
        "rss_at_block_ends_mib": blocks,
        "load_before": load_before,
        "load_after": load_average(1),
        "config": o.describe(),
    });
    println!("RESULT {result}");
    Ok(())
}

/// Spawns this executable once per frame count and prints the table.
fn drive(o: &Options) -> Result<()> {
    let exe = std::env::current_exe().expect("current executable");
    println!(
        "Peak RSS of one bench-size UNetMotionModel forward, {} ({} backend), one process per F",
        o.describe(),
        vdm::backend_name()
    );
    let mut rows: Vec<serde_json::Value> = Vec::new();
    for &f in &o.frames_list {
        let out = Command::new(&exe)
            .arg("--frames")
            .arg(f.to_string())
            .args(o.child_args())
            .output()
            .expect("spawning the measurement");
        let stdout = String::from_utf8_lossy(&out.stdout);
        match stdout
            .lines()
            .find_map(|l| l.strip_prefix("RESULT "))
            .and_then(|j| serde_json::from_str::<serde_json::Value>(j).ok())
        {
            Some(r) if out.status.success() => {
                eprintln!("F = {f}: {r}");
                rows.push(r);
            }
            _ => {
                println!(
                    "F = {f}: failed ({}): {}",
                    out.status,
                    String::from_utf8_lossy(&out.stderr)
                        .lines()
                        .rev()
                        .take(5)
                        .collect::<Vec<_>>()
                        .join(" | ")
                );
            }
        }
    }
    println!(
        "\n| F | peak RSS MiB (VmHWM) | RSS before (model + inputs) MiB | forward increment MiB | MiB / frame (increment) | s / forward | s / frame | peak reached in | load 1-min before -> after |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    let get = |r: &serde_json::Value, k: &str| r[k].as_f64().unwrap_or(f64::NAN);
    for r in &rows {
        let f = get(r, "frames");
        println!(
            "| {f} | {:.0} | {:.0} | {:.0} | {:.2} | {:.1} | {:.3} | {} | {} -> {} |",
            get(r, "peak_rss_mib"),
            get(r, "rss_built_mib"),
            get(r, "forward_increment_mib"),
            get(r, "forward_increment_mib") / f,
            get(r, "forward_s"),
            get(r, "forward_s") / f,
            r["peak_reached_in"].as_str().unwrap_or("?"),
            r["load_before"].as_str().unwrap_or("?"),
            r["load_after"].as_str().unwrap_or("?"),
        );
    }
    if rows.len() >= 2 {
        // Least-squares slope of peak RSS and of time over F.
        let fit = |key: &str| {
            let points: Vec<(f64, f64)> = rows
                .iter()
                .map(|r| (get(r, "frames"), get(r, key)))
                .collect();
            linear_fit(&points)
        };
        let (rss_slope, rss_icpt) = fit("peak_rss_mib");
        let (t_slope, t_icpt) = fit("forward_s");
        println!(
            "\nLeast-squares fit over F: peak RSS ≈ {rss_icpt:.0} MiB + {rss_slope:.2} MiB × F; forward ≈ {t_icpt:.1} s + {t_slope:.3} s × F"
        );
    }
    if rows.iter().any(|r| r["hwm_reset"] == false) {
        println!("note: /proc/self/clear_refs was not writable; peaks include the model build");
    }
    Ok(())
}

fn main() -> Result<()> {
    let o = Options::parse();
    match o.frames {
        Some(f) => measure(&o, f),
        None => drive(&o),
    }
}
