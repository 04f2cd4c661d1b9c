//! What spreading the UNet over devices costs and gives: the embedded model's generation on
//! one device, on two local shards, and on one and two `vdm-serve` servers on the loopback
//! address (child processes of the `vdm-serve` example built beside this one), rounds
//! alternating, medians and ratios against one device in one table; plus the bytes that cross
//! to the shards per step. One server is also reached without vdm's relay (Burn's own
//! connection, unwatched), to show what the watch's relay costs.
//!
//! ```sh
//! cargo build --release --features remote --example vdm-serve --example bench_sharding
//! target/release/examples/bench_sharding                  # 16 frames, 10 steps, 3 rounds
//! target/release/examples/bench_sharding 64 10 3          # frames steps rounds
//! ```
//!
//! Each configuration makes the same video (checked: the largest difference to the
//! one-device frames is printed). On a machine of few cores the figure is about overhead and
//! correctness, not speed: the servers share the client's cores.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use vdm::burn::remote::RemoteHost;
use vdm::burn::tensor::Device;
use vdm::longvideo::freenoise::FreeNoiseConfig;
use vdm::pipeline::{Generation, TextToVideoPipeline};
use vdm::remote::ServerProcess;
use vdm_examples::measure::{load_average, median};

/// Starts `vdm-serve --port 0 --bind 127.0.0.1` (built beside this example) and reads the
/// address it prints (bounded).
fn start_server() -> Result<ServerProcess, String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let serve: PathBuf = exe.with_file_name("vdm-serve");
    if !serve.is_file() {
        return Err(format!(
            "{} is missing: cargo build --release --features remote --example vdm-serve",
            serve.display()
        ));
    }
    let mut command = Command::new(&serve);
    command.args(["--port", "0", "--bind", "127.0.0.1"]);
    ServerProcess::spawn(command, Duration::from_secs(60)).map_err(|e| e.to_string())
}

fn main() -> Result<(), String> {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .map(|a| {
            a.parse()
                .map_err(|_| format!("`{a}`: usage: frames steps rounds"))
        })
        .collect::<Result<_, _>>()?;
    let (frames, steps, rounds) = match args.as_slice() {
        [] => (16, 10, 3),
        [f, s, r] => (*f, *s, *r),
        _ => return Err("usage: bench_sharding [frames steps rounds]".into()),
    };
    let servers = [start_server()?, start_server()?];
    let connect = |s: &ServerProcess| -> Result<(String, Device), String> {
        let device = vdm::remote::connect(s.address(), Duration::from_secs(30))
            .map_err(|e| e.to_string())?;
        Ok((s.address().to_string(), device))
    };
    let remote = [connect(&servers[0])?, connect(&servers[1])?];
    // The first server again, reached by Burn's own connection: no vdm relay, so no watch (what
    // the relay's extra loopback hop costs).
    let direct = RemoteHost::websocket(servers[0].address());
    let direct = Device::remote_options(&direct)
        .init()
        .map_err(|e| format!("{}: {e}", servers[0].address()))?;
    let flex = |name: &str| (name.to_string(), Device::flex());
    let configs: Vec<(&str, Vec<(String, Device)>)> = vec![
        ("one device (flex)", Vec::new()),
        ("2 local shards (flex, flex)", vec![flex("a"), flex("b")]),
        ("1 server (loopback)", vec![remote[0].clone()]),
        (
            "1 server, unwatched (no relay)",
            vec![("direct".to_string(), direct)],
        ),
        ("2 servers (loopback)", remote.to_vec()),
    ];
    let mut pipes = Vec::new();
    for (_, devices) in &configs {
        let pipe =
            TextToVideoPipeline::from_dir(vdm::embedded::moving_shapes_dir(), &Device::flex())
                .map_err(|e| e.to_string())?;
        pipes.push(if devices.is_empty() {
            pipe
        } else {
            pipe.with_devices(devices).map_err(|e| e.to_string())?
        });
    }
    let mut settings: Generation = vdm::embedded::generation("a red circle moving right")
        .frames(frames)
        .steps(steps)
        .seed(3);
    if frames > 16 {
        settings = settings.freenoise(FreeNoiseConfig::new(16, 4));
    }
    let (height, width) = pipes[0]
        .resolve_size(&settings)
        .map_err(|e| e.to_string())?;
    println!(
        "embedded model, {frames} frames of {width} × {height}, {steps} DDIM steps, guidance {} \
         (batch 2), {rounds} rounds alternating; load {}",
        settings.guidance_scale,
        load_average(3)
    );
    let mut seconds = vec![Vec::new(); configs.len()];
    let mut reference: Option<Vec<f32>> = None;
    let mut differences = vec![0.0f32; configs.len()];
    for _ in 0..rounds {
        for (i, pipe) in pipes.iter().enumerate() {
            let started = Instant::now();
            let video = pipe.generate(&settings).map_err(|e| e.to_string())?;
            seconds[i].push(started.elapsed().as_secs_f64());
            let values = video.to_values().map_err(|e| e.to_string())?;
            match &reference {
                None => reference = Some(values),
                Some(r) => {
                    let d = r
                        .iter()
                        .zip(&values)
                        .map(|(a, b)| (a - b).abs())
                        .fold(0.0, f32::max);
                    differences[i] = differences[i].max(d);
                }
            }
        }
    }
    // Per step and shard (one batch item): its latents in and its output back (the embedded
    // model's latents are its pixels, patched), its text conditioning in (16 positions × 32).
    let latent = 4 * 3 * frames * height * width;
    let conditioning = 4 * 16 * 32;
    println!(
        "\nbytes to and from each shard per step: {} KiB latents in, {} KiB out, {} KiB text \
         conditioning (one batch item each of 2 shards)\n",
        latent / 1024,
        latent / 1024,
        conditioning / 1024
    );
    println!("| configuration | s/video (median) | vs one device | max abs Δ frame |");
    println!("|---|---:|---:|---:|");
    let one = median(&seconds[0]);
    for (i, (name, _)) in configs.iter().enumerate() {
        let s = median(&seconds[i]);
        println!(
            "| {name} | {s:.2} | {:.2}× | {:.1e} |",
            s / one,
            differences[i]
        );
    }
    Ok(())
}
