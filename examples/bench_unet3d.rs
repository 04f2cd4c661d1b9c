//! Benchmark: one `UNet3DConditionModel` forward at the "bench" config of
//! `shared/bench/BASELINE.md` §1 (block_out_channels (64, 128, 256, 256), layers_per_block 2,
//! cross_attention_dim 256, attention_head_dim 32, norm_num_groups 32; 57.99 M parameters),
//! sample `[1, 4, F, 32, 32]`, text `[1, 77, 256]`, timestep 500.
//!
//! Prints, per frame count: the counted GFLOP (FlopCounterMode's convention: convolutions,
//! linear layers and SDPA at 2 FLOP per multiply-accumulate, SDPA as `4·B·H·L·S·D`; norms,
//! activations and softmax not counted), the median / min wall time of `repeats` forwards
//! after `warmup` warm-up forwards, GFLOP/s, and the peak RSS of the process (`VmHWM`) plus its
//! growth during the forwards of that frame count (the high-water mark is reset before them
//! when `/proc/self/clear_refs` is writable).
//!
//! Weights are Burn's default initialisation (timing does not depend on values); inputs are
//! seeded host noise.
//!
//! ```text
//! cargo run --release --example bench_unet3d                     # F = 16, 32, 64; 1 warm-up, 5 runs
//! cargo run --release --example bench_unet3d -- --frames 16 --repeats 9 --warmup 2
//! cargo run --release --example bench_unet3d -- --frames 16 --profile   # time per layer type
//! ```
//!
//! `--profile` runs an instrumented copy of the forward (the model's own layers, in the same
//! order, each timed; Burn's flex backend executes eagerly) and prints the time per layer and
//! resolution level; it checks that its output equals the model's. For the time per
//! operation inside the layers use `perf record` on the plain benchmark.

use std::collections::BTreeMap;
use std::time::Instant;

use vdm::burn::module::Module;
use vdm::burn::nn::Linear;
use vdm::burn::nn::conv::Conv2d;
use vdm::burn::tensor::activation::silu;
use vdm::burn::tensor::{Device, Tensor};
use vdm::core::layout::{batch_to_frames, frames_to_batch};
use vdm::core::noise::{SeededNoise, draw};
use vdm::core::readback::read_f32_scalar;
use vdm::core::{AllFrames, Conditioning, Result, Timesteps};
use vdm::models::attention::{Attention, BasicTransformerBlock, FeedForward};
use vdm::models::embeddings::TimestepProjection;
use vdm::models::resnet::ResnetBlock2D;
use vdm::models::temporal::{TemporalConvLayer, TransformerTemporalModel};
use vdm::models::transformer_2d::{Projection, Transformer2DModel};
use vdm::models::unet3d::{UNet3DConditionModel, UNet3DConditionModelConfig, temporal_transformer};
use vdm_examples::harness::UNET3D_BENCH;
use vdm_examples::measure::{load_average, median, process_cpu_seconds, reset_hwm, rss_mib};

const TEXT_LEN: usize = 77;
const TIMESTEP: f64 = 500.0;

struct Args {
    frames: Vec<usize>,
    repeats: usize,
    warmup: usize,
    profile: bool,
    /// Print every timed forward, not only the median and minimum.
    times: bool,
    size: usize,
}

fn parse_args() -> Args {
    let mut args = Args {
        frames: vec![16, 32, 64],
        repeats: 5,
        warmup: 1,
        profile: false,
        times: false,
        size: 32,
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut value = || it.next().unwrap_or_else(|| panic!("{a} needs a value"));
        match a.as_str() {
            "--frames" => {
                args.frames = value()
                    .split(',')
                    .map(|s| s.trim().parse().expect("--frames takes a list like 16,32"))
                    .collect()
            }
            "--repeats" => args.repeats = value().parse().expect("--repeats N"),
            "--warmup" => args.warmup = value().parse().expect("--warmup N"),
            "--size" => args.size = value().parse().expect("--size H (= W)"),
            "--profile" => args.profile = true,
            "--times" => args.times = true,
            "-h" | "--help" => {
                println!(
                    "bench_unet3d [--frames 16,32,64] [--repeats 5] [--warmup 1] [--size 32] [--profile] [--times]"
                );
                std::process::exit(0);
            }
            other => panic!("unknown argument {other:?} (try --help)"),
        }
    }
    args.repeats = args.repeats.max(1);
    args
}

// ---------------------------------------------------------------------------------------------
// FLOP count (FlopCounterMode's convention), walked from the weights' shapes.
// ---------------------------------------------------------------------------------------------

fn linear_flops(l: &Linear, rows: usize) -> f64 {
    let [i, o] = l.weight.dims();
    2.0 * (rows * i * o) as f64
}

fn conv_flops(c: &Conv2d, n: usize, h_out: usize, w_out: usize) -> f64 {
    let [o, i, kh, kw] = c.weight.dims();
    2.0 * (n * o * h_out * w_out * i * kh * kw) as f64
}

fn attention_flops(a: &Attention, n: usize, lq: usize, lk: usize) -> f64 {
    linear_flops(&a.to_q, n * lq)
        + linear_flops(&a.to_k, n * lk)
        + linear_flops(&a.to_v, n * lk)
        + linear_flops(&a.to_out, n * lq)
        + 4.0 * (n * a.heads * lq * lk * a.head_dim) as f64
}

fn ff_flops(ff: &FeedForward, rows: usize) -> f64 {
    linear_flops(&ff.proj, rows) + linear_flops(&ff.proj_out, rows)
}

fn resnet_flops(r: &ResnetBlock2D, n: usize, h: usize, w: usize) -> f64 {
    conv_flops(&r.conv1, n, h, w)
        + conv_flops(&r.conv2, n, h, w)
        + r.conv_shortcut
            .as_ref()
            .map_or(0.0, |c| conv_flops(c, n, h, w))
        + r.time_emb_proj.as_ref().map_or(0.0, |l| linear_flops(l, n))
}

fn temp_conv_flops(t: &TemporalConvLayer, n: usize, h: usize, w: usize) -> f64 {
    let c = t.channels;
    4.0 * 2.0 * (n * h * w * c * c * 3) as f64
}

fn spatial_flops(t: &Transformer2DModel, n: usize, h: usize, w: usize, text: usize) -> f64 {
    let rows = n * h * w;
    let proj = |p: &Projection| match p {
        Projection::Linear(l) => linear_flops(l, rows),
        Projection::Conv(c) => conv_flops(c, n, h, w),
    };
    proj(&t.proj_in) + proj(&t.proj_out) + blocks_flops(&t.transformer_blocks, n, h * w, text)
}

/// Transformer blocks on `items` sequences of `len` tokens; `attn2` attends to `attn2_len`
/// tokens (the text, or the same sequence).
fn blocks_flops(
    blocks: &[BasicTransformerBlock],
    items: usize,
    len: usize,
    attn2_len: usize,
) -> f64 {
    blocks
        .iter()
        .map(|b| {
            attention_flops(&b.attn1, items, len, len)
                + ff_flops(&b.ff, items * len)
                + b.attn2
                    .as_ref()
                    .map_or(0.0, |a| attention_flops(a, items, len, attn2_len))
        })
        .sum()
}

fn temporal_flops(t: &TransformerTemporalModel, frames: usize, h: usize, w: usize) -> f64 {
    let rows = frames * h * w;
    linear_flops(&t.proj_in, rows)
        + linear_flops(&t.proj_out, rows)
        + blocks_flops(&t.transformer_blocks, h * w, frames, frames)
}

/// Counted FLOPs of one forward on `[1, C, frames, size, size]` (batch 1).
fn unet_flops(m: &UNet3DConditionModel, frames: usize, size: usize) -> f64 {
    let n = frames;
    let mut s = size;
    let te = &m.time_embedding;
    let mut f = conv_flops(&m.conv_in, n, s, s)
        + linear_flops(&te.linear_1, 1)
        + linear_flops(&te.linear_2, 1)
        + temporal_flops(&m.transformer_in, frames, s, s);
    for block in &m.down_blocks {
        for j in 0..block.resnets.len() {
            f += resnet_flops(&block.resnets[j], n, s, s)
                + temp_conv_flops(&block.temp_convs[j], n, s, s);
            if let Some(a) = block.attentions.get(j) {
                f += spatial_flops(a, n, s, s, TEXT_LEN);
            }
            if let Some(t) = block.temp_attentions.get(j) {
                f += temporal_flops(t, frames, s, s);
            }
        }
        for d in &block.downsamplers {
            s = s.div_ceil(2);
            f += conv_flops(&d.conv, n, s, s);
        }
    }
    let mid = &m.mid_block;
    f += resnet_flops(&mid.resnets[0], n, s, s) + temp_conv_flops(&mid.temp_convs[0], n, s, s);
    f += spatial_flops(&mid.attentions[0], n, s, s, TEXT_LEN)
        + temporal_flops(&mid.temp_attentions[0], frames, s, s);
    f += resnet_flops(&mid.resnets[1], n, s, s) + temp_conv_flops(&mid.temp_convs[1], n, s, s);
    for block in &m.up_blocks {
        for j in 0..block.resnets.len() {
            f += resnet_flops(&block.resnets[j], n, s, s)
                + temp_conv_flops(&block.temp_convs[j], n, s, s);
            if let Some(a) = block.attentions.get(j) {
                f += spatial_flops(a, n, s, s, TEXT_LEN);
            }
            if let Some(t) = block.temp_attentions.get(j) {
                f += temporal_flops(t, frames, s, s);
            }
        }
        for u in &block.upsamplers {
            s *= 2;
            f += conv_flops(&u.conv, n, s, s);
        }
    }
    f + conv_flops(&m.conv_out, n, s, s)
}

// ---------------------------------------------------------------------------------------------
// Instrumented copy of the forward (--profile).
// ---------------------------------------------------------------------------------------------

/// Accumulated wall time, process CPU time and call count per layer kind.
#[derive(Default)]
struct Prof {
    t: BTreeMap<String, (f64, f64, usize)>,
}

impl Prof {
    fn time<T>(&mut self, kind: &str, f: impl FnOnce() -> T) -> T {
        let (t0, c0) = (Instant::now(), process_cpu_seconds());
        let out = f();
        let e = self.t.entry(kind.to_string()).or_default();
        e.0 += t0.elapsed().as_secs_f64();
        e.1 += process_cpu_seconds() - c0;
        e.2 += 1;
        out
    }
}

/// The stack of one 3-D block layer, each layer timed under `<kind> <level>` (level = the
/// resolution, 0 = full).
#[allow(clippy::too_many_arguments)]
fn p_layer(
    p: &mut Prof,
    level: usize,
    resnet: &ResnetBlock2D,
    temp_conv: &TemporalConvLayer,
    attn: Option<&Transformer2DModel>,
    temp: Option<&TransformerTemporalModel>,
    x: Tensor<4>,
    temb: &Tensor<2>,
    ctx: &Tensor<3>,
    frames: usize,
) -> Result<Tensor<4>> {
    let mut x = p.time(&format!("resnet L{level}"), || {
        resnet.forward(x, Some(temb.clone()))
    })?;
    x = p.time(&format!("temp_conv L{level}"), || {
        temp_conv.forward_frames(x, frames)
    })?;
    if let Some(a) = attn {
        x = p.time(&format!("spatial transformer L{level}"), || {
            a.forward(x, Some(ctx.clone()))
        })?;
    }
    if let Some(t) = temp {
        x = p.time(&format!("temporal transformer L{level}"), || {
            temporal_transformer(t, x, frames, &AllFrames, "t", None)
        })?;
    }
    Ok(x)
}

/// The model's forward (batch 1, shared timestep and text), every layer timed.
fn profiled_forward(
    p: &mut Prof,
    m: &UNet3DConditionModel,
    sample: Tensor<5>,
    text: Tensor<3>,
    device: &Device,
) -> Result<Tensor<5>> {
    let f = sample.dims()[2];
    let c0 = m.config.block_out_channels[0];
    let temb = p.time("time embedding", || -> Result<Tensor<2>> {
        let proj = TimestepProjection::unet(c0).embed(&[TIMESTEP], device)?;
        let e = m.time_embedding.forward(proj)?;
        let c = e.dims()[1];
        Ok(e.expand([f, c]))
    })?;
    let x = p.time("conv_in / norm_out / conv_out", || {
        m.conv_in.forward(frames_to_batch(sample))
    });
    let x = p.time("temporal transformer L0 (transformer_in)", || {
        temporal_transformer(&m.transformer_in, x, f, &AllFrames, "transformer_in", None)
    })?;
    let mut residuals = vec![x.clone()];
    let mut x = x;
    let mut level = 0;
    for block in &m.down_blocks {
        for j in 0..block.resnets.len() {
            x = p_layer(
                p,
                level,
                &block.resnets[j],
                &block.temp_convs[j],
                block.attentions.get(j),
                block.temp_attentions.get(j),
                x,
                &temb,
                &text,
                f,
            )?;
            residuals.push(x.clone());
        }
        for dn in &block.downsamplers {
            x = p.time("down/upsample conv", || dn.forward(x))?;
            residuals.push(x.clone());
            level += 1;
        }
    }
    let mid = &m.mid_block;
    x = p_layer(
        p,
        level,
        &mid.resnets[0],
        &mid.temp_convs[0],
        mid.attentions.first(),
        mid.temp_attentions.first(),
        x,
        &temb,
        &text,
        f,
    )?;
    x = p_layer(
        p,
        level,
        &mid.resnets[1],
        &mid.temp_convs[1],
        None,
        None,
        x,
        &temb,
        &text,
        f,
    )?;
    for block in &m.up_blocks {
        for j in 0..block.resnets.len() {
            let skip = residuals.pop().expect("skip");
            x = p.time("skip cat", || Tensor::cat(vec![x, skip], 1));
            x = p_layer(
                p,
                level,
                &block.resnets[j],
                &block.temp_convs[j],
                block.attentions.get(j),
                block.temp_attentions.get(j),
                x,
                &temb,
                &text,
                f,
            )?;
        }
        for up in &block.upsamplers {
            x = p.time("down/upsample conv", || up.forward(x, None))?;
            level -= 1;
        }
    }
    let x = p.time("conv_in / norm_out / conv_out", || {
        m.conv_out.forward(silu(m.conv_norm_out.forward(x)))
    });
    Ok(batch_to_frames(x, f))
}

fn profile(m: &UNet3DConditionModel, frames: usize, size: usize, runs: usize) -> Result<()> {
    let device = vdm::device();
    let mut noise = SeededNoise::new(7100);
    let sample: Tensor<5> = draw(&mut noise, [1, 4, frames, size, size], &device)?;
    let mut noise = SeededNoise::new(7101);
    let text: Tensor<3> = draw(&mut noise, [1, TEXT_LEN, 256], &device)?;
    let want = m.forward(
        sample.clone(),
        &Timesteps::Shared(TIMESTEP),
        &Conditioning::Shared(text.clone()),
        &AllFrames,
    )?;
    // Warm-up, then `runs` profiled forwards.
    let mut p = Prof::default();
    let got = profiled_forward(&mut p, m, sample.clone(), text.clone(), &device)?;
    let diff = read_f32_scalar((got - want).abs().max(), "the largest difference")?;
    let mut p = Prof::default();
    let t0 = Instant::now();
    for _ in 0..runs {
        profiled_forward(&mut p, m, sample.clone(), text.clone(), &device)?;
    }
    let total = t0.elapsed().as_secs_f64() / runs as f64;
    println!(
        "\nprofile F={frames} {size}x{size}: {total:.3} s per forward ({runs} runs; instrumented \
         output vs model: max |diff| = {diff:.2e}); load {}",
        load_average(3)
    );
    let mut groups: BTreeMap<String, (f64, f64)> = BTreeMap::new();
    println!(
        "| layer (L = level, 0 = full resolution) | s / fwd | % | CPU s / wall s | calls / fwd |"
    );
    println!("|---|---:|---:|---:|---:|");
    let mut rows: Vec<_> = p.t.iter().collect();
    rows.sort_by(|a, b| b.1.0.total_cmp(&a.1.0));
    for (name, (t, cpu, n)) in rows {
        let (t, cpu) = (t / runs as f64, cpu / runs as f64);
        let kind = name.split(" L").next().unwrap_or(name).to_string();
        let g = groups.entry(kind).or_default();
        g.0 += t;
        g.1 += cpu;
        println!(
            "| {name} | {t:.3} | {:.1} | {:.2} | {} |",
            100.0 * t / total,
            cpu / t.max(1e-12),
            n / runs
        );
    }
    let mut groups: Vec<_> = groups.into_iter().collect();
    groups.sort_by(|a, b| b.1.0.total_cmp(&a.1.0));
    println!("\n| layer kind | s / fwd | % | CPU s / wall s |");
    println!("|---|---:|---:|---:|");
    for (g, (t, cpu)) in groups {
        println!(
            "| {g} | {t:.3} | {:.1} | {:.2} |",
            100.0 * t / total,
            cpu / t.max(1e-12)
        );
    }
    Ok(())
}

fn main() -> Result<()> {
    let args = parse_args();
    let device = vdm::device();
    let config = UNet3DConditionModelConfig::from_json_str(UNET3D_BENCH)?;
    let t0 = Instant::now();
    let model = UNet3DConditionModel::new(&config, &device)?;
    let build_s = t0.elapsed().as_secs_f64();
    let (_, rss_built) = rss_mib();
    println!(
        "UNet3DConditionModel bench config: {:.2} M params, built in {build_s:.2} s, RSS {rss_built:.0} MiB; \
         backend {}, {} rayon threads; text [1,{TEXT_LEN},256], timestep {TIMESTEP}; \
         {} warm-up + {} timed forwards; load {}",
        model.num_params() as f64 / 1e6,
        vdm::backend_name(),
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        args.warmup,
        args.repeats,
        load_average(3),
    );
    if args.profile {
        for &f in &args.frames {
            profile(&model, f, args.size, args.repeats)?;
        }
        return Ok(());
    }

    let mut noise = SeededNoise::new(7101);
    let text: Tensor<3> = draw(&mut noise, [1, TEXT_LEN, 256], &device)?;
    let conditioning = Conditioning::Shared(text);
    let timesteps = Timesteps::Shared(TIMESTEP);
    println!(
        "| {:>3} | {:<16} | {:>6} | {:>8} | {:>8} | {:>7} | {:>8} | {:>10} | {:>12} |",
        "F", "sample", "GFLOP", "s median", "s min", "GFLOP/s", "peak MiB", "fwd +MiB", "load"
    );
    println!(
        "|{:->5}|{:-<18}|{:->8}|{:->10}|{:->10}|{:->9}|{:->10}|{:->12}|{:->14}|",
        "", "", "", "", "", "", "", "", ""
    );
    for &f in &args.frames {
        let shape = [1, 4, f, args.size, args.size];
        let mut noise = SeededNoise::new(7100);
        let sample: Tensor<5> = draw(&mut noise, shape, &device)?;
        let gflop = unet_flops(&model, f, args.size) / 1e9;
        let (_, rss_before) = rss_mib();
        let reset = reset_hwm();
        let load0 = load_average(3);
        let mut times = Vec::new();
        for r in 0..args.warmup + args.repeats {
            let t0 = Instant::now();
            let out = model.forward(sample.clone(), &timesteps, &conditioning, &AllFrames)?;
            read_f32_scalar(
                out.slice([0..1, 0..1, 0..1, 0..1, 0..1]),
                "one output value",
            )?;
            if r >= args.warmup {
                times.push(t0.elapsed().as_secs_f64());
            }
        }
        let (hwm, _) = rss_mib();
        let min = times.iter().copied().fold(f64::INFINITY, f64::min);
        let med = median(&times);
        println!(
            "| {f:>3} | {:<16} | {gflop:>6.1} | {med:>8.3} | {min:>8.3} | {:>7.1} | {hwm:>8.0} | {:>10} | {:>12} |",
            format!("{shape:?}").replace(' ', ""),
            gflop / med,
            if reset {
                format!("{:.0}", hwm - rss_before)
            } else {
                "n/a".into()
            },
            format!("{load0}"),
        );
        if args.times {
            let all: Vec<String> = times.iter().map(|t| format!("{t:.3}")).collect();
            println!("  F = {f}, every forward (s): {}", all.join(" "));
        }
    }
    println!("load after: {}", load_average(3));
    Ok(())
}
