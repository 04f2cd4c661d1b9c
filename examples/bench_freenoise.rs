//! Benchmark: the cost of FreeNoise window fusion against direct inference **at the same frame
//! count**, on the "bench-size" AnimateDiff model of `shared/bench/BASELINE.md` §3 (MOTION_U2 +
//! MOTION_MA: SD-1.5 layout with channels / 10, 13.3 M parameters, random weights), latent
//! `[1, 4, F, 32, 32]` (`--size S`: `S × S`) and text `[1, 77, 128]` from seeded host noise,
//! timestep 500. On a GPU backend (`--features wgpu`) every forward ends with a read-back, so
//! its wall time is the device's work; the stage / fusion split is then only the host's side
//! (Mesa's lavapipe needs `--size 16`: at 32 × 32 the forward asks for a 512 MiB buffer, past
//! what it allocates).
//!
//! For every `F` the variants run in this process with the same weights and inputs: `direct`
//! ([`AllFrames`]: every motion module attends over all `F` frames) and `freenoise`
//! ([`FreeNoiseHook`] with context 16 / stride 4 / pyramid and the default window batching),
//! plus any extra batchings given with `--batching`. Their timed runs alternate, the order
//! reversed every other round. The figures are the median of the per-round ratios
//! `variant / direct` (wall time and process CPU time) and the ratio of the minimums; load from
//! other processes drifts by ±20 % or more on this VM, the ratios much less.
//!
//! Every forward also goes through a timing wrapper around the hook, which splits the time into
//! *stages* (the motion modules' attention stages `x + attn(norm(x) + pe)`, twice per block, as
//! handed to the hook), *fusion* (everything else the hook does: window stacking, weighting,
//! accumulation) and *rest* (the UNet outside the hooks, the same work in every variant). Hence
//! the *hook estimate* `1 + (hook_variant − hook_direct) / direct`, which does not see load
//! changes in the rest of the forward. `--breakdown` adds one traced forward per variant, timed
//! by module kind. `--attention` times the temporal attention cores alone instead (one pass
//! over 32 frames against five in-place windows of 16, at the model's three head dims). `F = 16` is a single window, so both variants compute the same thing (max |Δ|
//! is printed).
//!
//! ```text
//! cargo run --release --example bench_freenoise [-- [--rounds N] [--frames 16,24,32]
//!     [--size 32] [--batching stacked,stacked:2,sequential] [--per-stage] [--breakdown]
//!     [--attention]]
//! ```
//!
//! Compare with diffusers (same model config and the pipeline's own FreeNoise code, PyTorch
//! CPU), run in the same sitting: `/work/venv-torch/bin/python shared/bench/baseline.py --cases
//! motion_pair_direct_vs_freenoise_F16,motion_pair_direct_vs_freenoise_F32`.

use std::collections::BTreeMap;
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use vdm::burn::module::Module;
use vdm::burn::tensor::{Bool, Device, Tensor};
use vdm::core::noise::{SeededNoise, draw};
use vdm::core::readback::{read_data, read_f32_scalar};
use vdm::core::temporal::{
    AllFrames, AttentionStage, FrameWindow, TemporalHook, TemporalSite, TemporalStages,
};
use vdm::core::{Conditioning, DenoiserInput, Result, Timesteps};
use vdm::longvideo::freenoise::{FreeNoiseConfig, FreeNoiseHook, FusionVariant, WindowBatching};
use vdm::models::attention::AttentionConfig;
use vdm::models::unet_motion::UNetMotionModel;
use vdm_examples::measure::{load_average, median, min, process_cpu_seconds};
use vdm_examples::motion_bench::bench_motion_config;

/// Nanoseconds spent inside the hook and inside the stages it ran.
#[derive(Default)]
struct Clock {
    apply: AtomicU64,
    stages: AtomicU64,
}

impl Clock {
    fn take(&self) -> (f64, f64) {
        let a = self.apply.swap(0, Ordering::Relaxed) as f64 * 1e-9;
        let s = self.stages.swap(0, Ordering::Relaxed) as f64 * 1e-9;
        (a, s)
    }
}

/// A hook that times another hook (flex is eager, so wall time is work done).
struct Timed<'a> {
    inner: &'a dyn TemporalHook,
    clock: &'a Clock,
}

struct TimedStages<'a> {
    inner: &'a dyn TemporalStages,
    clock: &'a Clock,
}

impl TemporalStages for TimedStages<'_> {
    fn num_stages(&self) -> usize {
        self.inner.num_stages()
    }
    fn run_stage(&self, stage: usize, x: Tensor<3>, window: &FrameWindow) -> Result<Tensor<3>> {
        let t0 = Instant::now();
        let y = self.inner.run_stage(stage, x, window);
        let ns = t0.elapsed().as_nanos() as u64;
        self.clock.stages.fetch_add(ns, Ordering::Relaxed);
        y
    }
    fn attention_stage(&self, stage: usize) -> Option<Box<dyn AttentionStage + '_>> {
        let inner = self.inner.attention_stage(stage)?;
        Some(Box::new(TimedAttention {
            inner,
            clock: self.clock,
        }))
    }
}

/// An [`AttentionStage`] whose parts count as stage time.
struct TimedAttention<'a> {
    inner: Box<dyn AttentionStage + 'a>,
    clock: &'a Clock,
}

/// Time in the [`AttentionStage`] parts (project, positions, attend, output), ns.
static PARTS: [AtomicU64; 4] = [const { AtomicU64::new(0) }; 4];

impl TimedAttention<'_> {
    fn timed<T>(&self, part: usize, f: impl FnOnce() -> T) -> T {
        let t0 = Instant::now();
        let y = f();
        let ns = t0.elapsed().as_nanos() as u64;
        self.clock.stages.fetch_add(ns, Ordering::Relaxed);
        PARTS[part].fetch_add(ns, Ordering::Relaxed);
        y
    }
}

impl AttentionStage for TimedAttention<'_> {
    fn projection_width(&self) -> usize {
        self.inner.projection_width()
    }
    fn attention_width(&self) -> usize {
        self.inner.attention_width()
    }
    fn project(&self, tokens: Tensor<3>) -> Result<Tensor<3>> {
        self.timed(0, || self.inner.project(tokens))
    }
    fn project_positions(
        &self,
        positions: std::ops::Range<usize>,
        device: &Device,
    ) -> Result<Option<Tensor<2>>> {
        self.timed(1, || self.inner.project_positions(positions, device))
    }
    fn attend(&self, p: Tensor<3>, mask: Option<&Tensor<2, Bool>>) -> Result<Tensor<3>> {
        self.timed(2, || self.inner.attend(p, mask))
    }
    fn attend_at(
        &self,
        p: &Tensor<3>,
        frames: Range<usize>,
        terms: Option<&Tensor<2>>,
        mask: Option<&Tensor<2, Bool>>,
    ) -> Result<Tensor<3>> {
        self.timed(2, || self.inner.attend_at(p, frames, terms, mask))
    }
    fn output(&self, a: Tensor<3>, residual: Tensor<3>) -> Result<Tensor<3>> {
        self.timed(3, || self.inner.output(a, residual))
    }
    fn output_at(
        &self,
        a: Tensor<3>,
        residual: &Tensor<3>,
        frames: Range<usize>,
    ) -> Result<Tensor<3>> {
        self.timed(3, || self.inner.output_at(a, residual, frames))
    }
}

impl TemporalHook for Timed<'_> {
    fn apply(
        &self,
        site: &TemporalSite<'_>,
        tokens: Tensor<3>,
        stages: &dyn TemporalStages,
    ) -> Result<Tensor<3>> {
        let t0 = Instant::now();
        let timed = TimedStages {
            inner: stages,
            clock: self.clock,
        };
        let y = self.inner.apply(site, tokens, &timed);
        let ns = t0.elapsed().as_nanos() as u64;
        self.clock.apply.fetch_add(ns, Ordering::Relaxed);
        y
    }
}

/// One timed run.
#[derive(Clone, Copy)]
struct Sample {
    wall: f64,
    cpu: f64,
    hook: f64,
    stages: f64,
}

struct Bench<'a> {
    model: &'a UNetMotionModel,
    text: &'a Tensor<3>,
    clock: Clock,
}

impl Bench<'_> {
    fn input<'h>(&self, x: &Tensor<5>, hook: &'h dyn TemporalHook) -> DenoiserInput<'h> {
        DenoiserInput::new(
            x.clone(),
            Timesteps::Shared(500.0),
            Conditioning::Shared(self.text.clone()),
        )
        .with_temporal(hook)
    }

    /// One forward through the timing wrapper.
    fn run(&self, x: &Tensor<5>, hook: &dyn TemporalHook) -> Result<(Sample, Tensor<5>)> {
        let timed = Timed {
            inner: hook,
            clock: &self.clock,
        };
        let c0 = process_cpu_seconds();
        let t0 = Instant::now();
        let y = self.model.forward(self.input(x, &timed))?;
        let y = Tensor::<5>::from_data(read_data(y, "the model output")?, &x.device());
        let wall = t0.elapsed().as_secs_f64();
        let cpu = process_cpu_seconds() - c0;
        let (hook, stages) = self.clock.take();
        let sample = Sample {
            wall,
            cpu,
            hook,
            stages,
        };
        Ok((sample, y))
    }

    /// One traced forward: seconds per module kind.
    fn breakdown(&self, x: &Tensor<5>, hook: &dyn TemporalHook) -> Result<BTreeMap<String, f64>> {
        let timed = Timed {
            inner: hook,
            clock: &self.clock,
        };
        let mut kinds: BTreeMap<String, f64> = BTreeMap::new();
        let mut last = Instant::now();
        let y = self.model.forward_traced(
            self.input(x, &timed),
            &mut |path: &str, _t: &Tensor<4>| {
                let now = Instant::now();
                let kind = if path.contains(".resnets.") {
                    "ResNets"
                } else if path.contains(".attentions.") {
                    "spatial transformers"
                } else if path.contains(".motion_modules.") {
                    "motion modules"
                } else if path.contains("samplers.") {
                    "up/down samplers"
                } else if path == "conv_in" {
                    "conv_in + embeddings"
                } else if path == "conv_out" {
                    "norm + conv_out"
                } else {
                    "block glue"
                };
                *kinds.entry(kind.to_string()).or_default() += (now - last).as_secs_f64();
                last = now;
            },
        )?;
        read_data(y, "the model output")?;
        let (hook, stages) = self.clock.take();
        let motion = kinds.get("motion modules").copied().unwrap_or(0.0);
        kinds.insert("motion modules".into(), motion - hook);
        kinds.insert("  hook: attention stages".into(), stages);
        kinds.insert("  hook: stacking + fusion".into(), hook - stages);
        Ok(kinds)
    }
}

struct Args {
    rounds: usize,
    frames: Vec<usize>,
    size: usize,
    batchings: Vec<(String, WindowBatching)>,
    per_stage: bool,
    breakdown: bool,
    attention: bool,
}

fn parse_batching(s: &str) -> WindowBatching {
    match s {
        "sequential" => WindowBatching::Sequential,
        "stacked" => WindowBatching::Stacked { max_windows: None },
        other => match other.strip_prefix("stacked:").map(str::parse) {
            Some(Ok(m)) => WindowBatching::Stacked {
                max_windows: Some(m),
            },
            _ => panic!("--batching: sequential, stacked or stacked:M, got {other}"),
        },
    }
}

fn args() -> Args {
    let mut a = Args {
        rounds: 7,
        frames: vec![16, 24, 32],
        size: 32,
        batchings: Vec::new(),
        per_stage: false,
        breakdown: false,
        attention: false,
    };
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    while i < argv.len() {
        let value = || argv.get(i + 1).expect("missing value").as_str();
        match argv[i].as_str() {
            "--rounds" => a.rounds = value().parse().expect("--rounds N"),
            "--frames" => {
                a.frames = value()
                    .split(',')
                    .map(|s| s.parse().expect("--frames 16,24,32"))
                    .collect()
            }
            "--size" => a.size = value().parse().expect("--size S (latent side)"),
            "--batching" => {
                a.batchings = value()
                    .split(',')
                    .map(|s| (format!("fn {s}"), parse_batching(s)))
                    .collect()
            }
            "--breakdown" => {
                a.breakdown = true;
                i += 1;
                continue;
            }
            "--per-stage" => {
                a.per_stage = true;
                i += 1;
                continue;
            }
            "--attention" => {
                a.attention = true;
                i += 1;
                continue;
            }
            other => panic!(
                "unknown argument {other}; usage: [--rounds N] [--frames 16,24,32] [--size 32] \
                 [--batching stacked,stacked:2,sequential] [--per-stage] [--breakdown] \
                 [--attention]"
            ),
        }
        i += 2;
    }
    a
}

/// `--attention`: the temporal attention cores alone, at this model's motion-module shapes
/// (8 heads; head dims 4, 8 and 16 on the 32×32, 16×16 and 8×8 latents): five windows of 16
/// frames read in place from the projections of 32 frames, positional terms added, against
/// one pass over the 32 frames. The windows hold 1.25× the scores; the last column is what
/// a score of a window costs against a score of the pass. Best of `rounds` repetitions.
fn attention_table(device: &Device, rounds: usize) -> Result<()> {
    println!(
        "\nTemporal attention cores (Attention::attend_packed / attend_packed_at), best of {rounds}:"
    );
    println!(
        "| tokens | head dim | one pass over 32 frames, ms | 5 windows of 16 (in place), ms | windows / pass | per score |"
    );
    println!("|---|---|---|---|---|---|");
    let mut noise = SeededNoise::new(8102);
    for (n, d) in [(1024, 4), (256, 8), (64, 16)] {
        let heads = 8;
        let c = heads * d;
        let attn = AttentionConfig::new(c, heads, d).try_init(device)?;
        let p: Tensor<3> = draw(&mut noise, [n, 32, 3 * c], device)?;
        let terms: Tensor<2> = draw(&mut noise, [16, 3 * c], device)?;
        let best = |run: &dyn Fn() -> Result<()>| -> Result<f64> {
            let mut best = f64::INFINITY;
            for _ in 0..rounds.max(1) {
                let t0 = Instant::now();
                run()?;
                best = best.min(t0.elapsed().as_secs_f64());
            }
            Ok(best)
        };
        let pass = best(&|| attn.attend_packed(p.clone(), None).map(drop))?;
        let windows = best(&|| {
            for start in (0..=16).step_by(4) {
                attn.attend_packed_at(&p, start..start + 16, Some(&terms), None)?;
            }
            Ok(())
        })?;
        println!(
            "| {n} | {d} | {:.2} | {:.2} | {:.2} | {:.2} |",
            pass * 1e3,
            windows * 1e3,
            windows / pass,
            windows / pass / 1.25
        );
    }
    Ok(())
}

fn main() -> Result<()> {
    let args = args();
    let device: Device = vdm::device();
    if args.attention {
        return attention_table(&device, args.rounds.max(7));
    }
    let config = bench_motion_config()?;
    let model = UNetMotionModel::new(&config, &device)?;
    let default = FreeNoiseConfig::new(16, 4);
    let mut variants: Vec<(String, Box<dyn TemporalHook>)> =
        vec![("direct".into(), Box::new(AllFrames))];
    variants.push(("freenoise".into(), Box::new(FreeNoiseHook::new(default)?)));
    for (name, batching) in &args.batchings {
        variants.push((
            name.clone(),
            Box::new(FreeNoiseHook::new(default.with_batching(*batching))?),
        ));
    }
    if args.per_stage {
        variants.push((
            "fn per-stage".into(),
            Box::new(FreeNoiseHook::new(
                default.with_variant(FusionVariant::PerStage),
            )?),
        ));
    }
    println!(
        "FreeNoise vs direct, bench-size UNetMotionModel ({:.2} M params incl. the {}-row positional tables), latents {}×{}, backend {}, {} rounds; \
         freenoise = {}/{} {:?}, default batching {:?}; threads available: {}",
        model.num_params() as f64 / 1e6,
        config.motion_max_seq_length,
        args.size,
        args.size,
        vdm::backend_name(),
        args.rounds,
        default.context_length,
        default.context_stride,
        default.weighting_scheme,
        default.batching,
        std::thread::available_parallelism().map_or(1, |n| n.get()),
    );
    let mut text_noise = SeededNoise::new(8101);
    let text: Tensor<3> = draw(&mut text_noise, [1, 77, 128], &device)?;
    let bench = Bench {
        model: &model,
        text: &text,
        clock: Clock::default(),
    };

    let mut summary = Vec::new();
    for &f in &args.frames {
        let load0 = load_average(1);
        let mut noise = SeededNoise::new(8100);
        let x: Tensor<5> = draw(&mut noise, [1, 4, f, args.size, args.size], &device)?;
        let windows = if f > default.context_length {
            FreeNoiseHook::new(default)?.plan(f)?.windows().len()
        } else {
            1
        };
        // Warm-up, and the equality check of the single-window case.
        let mut outputs = Vec::new();
        for (_, hook) in &variants {
            outputs.push(bench.run(&x, hook.as_ref())?.1);
        }
        let diff = read_f32_scalar(
            (outputs[0].clone() - outputs[1].clone()).abs().max(),
            "the largest difference of the variants",
        )?;
        let mut finite = true;
        for y in &outputs {
            finite &= read_f32_scalar(y.clone().sum(), "the sum of an output")?.is_finite();
        }
        drop(outputs);

        let n = variants.len();
        let mut samples: Vec<Vec<Sample>> = vec![Vec::new(); n];
        for r in 0..args.rounds {
            for k in 0..n {
                let v = if r % 2 == 0 { k } else { n - 1 - k };
                samples[v].push(bench.run(&x, variants[v].1.as_ref())?.0);
            }
        }
        let load1 = load_average(1);
        let col =
            |v: usize, get: fn(&Sample) -> f64| samples[v].iter().map(get).collect::<Vec<_>>();
        let d_wall = median(&col(0, |s| s.wall));
        println!(
            "\nF = {f} ({windows} window(s)); load (1 min) {load0} -> {load1}; freenoise vs direct max |d| = {diff:.2e}; outputs finite: {finite}"
        );
        println!(
            "| variant | wall s med / min | CPU s med | stages s | fusion s | rest s | ratio: median of rounds (wall) | ratio of minimums | CPU-time ratio | hook estimate |"
        );
        println!("|---|---|---|---|---|---|---|---|---|---|");
        for v in 0..n {
            let wall = col(v, |s| s.wall);
            let stages = median(&col(v, |s| s.stages));
            let fusion = median(
                &samples[v]
                    .iter()
                    .map(|s| s.hook - s.stages)
                    .collect::<Vec<_>>(),
            );
            let rest = median(
                &samples[v]
                    .iter()
                    .map(|s| s.wall - s.hook)
                    .collect::<Vec<_>>(),
            );
            let per_round = |get: fn(&Sample) -> f64| {
                median(
                    &samples[v]
                        .iter()
                        .zip(&samples[0])
                        .map(|(a, d)| get(a) / get(d))
                        .collect::<Vec<_>>(),
                )
            };
            let wall_ratio = per_round(|s| s.wall);
            let cpu_ratio = per_round(|s| s.cpu);
            let min_ratio = min(&wall) / min(&col(0, |s| s.wall));
            let hook_est = median(
                &samples[v]
                    .iter()
                    .zip(&samples[0])
                    .map(|(a, d)| 1.0 + (a.hook - d.hook) / d.wall)
                    .collect::<Vec<_>>(),
            );
            println!(
                "| {} | {:.3} / {:.3} | {:.2} | {stages:.3} | {fusion:.3} | {rest:.3} | {wall_ratio:.3} | {min_ratio:.3} | {cpu_ratio:.3} | {hook_est:.3} |",
                variants[v].0,
                median(&wall),
                min(&wall),
                median(&col(v, |s| s.cpu)),
            );
            if v > 0 {
                summary.push((
                    f,
                    windows,
                    variants[v].0.clone(),
                    wall_ratio,
                    min_ratio,
                    cpu_ratio,
                    hook_est,
                    (stages - median(&col(0, |s| s.stages))) / d_wall,
                    fusion / d_wall,
                    format!("{load0} -> {load1}"),
                ));
            }
        }
        let rounds: Vec<String> = (1..n)
            .map(|v| {
                let r: Vec<String> = samples[v]
                    .iter()
                    .zip(&samples[0])
                    .map(|(a, d)| format!("{:.3}", a.wall / d.wall))
                    .collect();
                format!("{}: {}", variants[v].0, r.join(" "))
            })
            .collect();
        println!("per-round wall ratios: {}", rounds.join("; "));
        if args.breakdown {
            println!("breakdown (one traced forward each, s):");
            for (name, hook) in &variants {
                PARTS.iter().for_each(|p| p.store(0, Ordering::Relaxed));
                let kinds = bench.breakdown(&x, hook.as_ref())?;
                let total: f64 = kinds.values().sum();
                let parts: Vec<String> = kinds
                    .iter()
                    .map(|(k, s)| format!("{k} {s:.2} ({:.0} %)", 100.0 * s / total))
                    .collect();
                println!("  {name} (total {total:.2}): {}", parts.join(", "));
                let p = |i: usize| PARTS[i].load(Ordering::Relaxed) as f64 * 1e-9;
                if p(0) + p(2) > 0.0 {
                    println!(
                        "    shared-projection stages: project {:.3}, positions {:.3}, attend {:.3}, output {:.3}",
                        p(0),
                        p(1),
                        p(2),
                        p(3)
                    );
                }
            }
        }
    }
    println!(
        "\n| F | windows | variant | variant / direct: median of round ratios (wall) | ratio of minimums | CPU-time ratio | hook estimate | extra stages / direct | stacking + fusion / direct | load 1-min |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for (f, w, name, wall, mn, cpu, hk, st, fu, load) in summary {
        println!(
            "| {f} | {w} | {name} | {wall:.3} | {mn:.3} | {cpu:.3} | {hk:.3} | {:+.1} % | {:+.1} % | {load} |",
            100.0 * st,
            100.0 * fu
        );
    }
    println!(
        "\nReference (shared/bench/BASELINE.md §3, diffusers 0.42.1 / PyTorch 2.15 on this machine type, same config, interleaved): \
         FreeNoise/direct F=16: 1.00-1.04 (15 rounds 1.017), F=32: 1.10-1.16 (15 rounds 1.129; FLOP ratio 1.127). Target: <= 1.10."
    );
    Ok(())
}
