//! `bench`: vdm and diffusers / PyTorch side by side on the same cases, one command.
//!
//! ```text
//! bench/setup_python.sh                                # once: the PyTorch side (PyPI only)
//! cargo run --release --example bench                  # every case, 2 rounds
//! cargo run --release --example bench -- --cases "unet3d bench F16,gemm 1024" --rounds 3
//! cargo run --release --example bench -- --list
//! ```
//!
//! Every case (UNet3D tiny at F = 8 to 64 and bench at F = 16, 32, 64; AnimateDiff's motion model
//! direct and with FreeNoise up to 128 frames; FreeInit's filter and mix; 50 DDIM steps; VAE
//! decode; the text encoder; one pipeline step with classifier-free guidance; a 1024² matmul) runs
//! on each side in a fresh process per round (so peak memory is per case and side), the two sides
//! alternating which goes first, with the same thread count (`RAYON_NUM_THREADS` for vdm,
//! `torch.set_num_threads` for PyTorch). The table gives each side's median time per round, the
//! per-round ratios vdm / PyTorch (below 1: vdm is faster), peak RSS, and the achieved GFLOP/s
//! (work counted by torch's `FlopCounterMode`) against the fastest matmul measured in the same run
//! and the CPU's theoretical peak. Without the PyTorch side (no `.venv-bench`, or `--no-python`) it
//! prints vdm's figures alone and says so, taking the FLOP counts from `bench/gflop.json` (written
//! by the last run that had the PyTorch side).
//!
//! Every child process has a time limit (`--case-timeout`); a side that fails or runs out of
//! time is reported in the table's notes, and the other cases go on.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::{Duration, Instant};

use clap::Parser;
use vdm_examples::harness::machine::Machine;
use vdm_examples::harness::process::run_child;
use vdm_examples::harness::report::{CaseRounds, Round, failures, gemm_rate, table};
use vdm_examples::harness::{Case, Measured, cases, vdm_side};
use vdm_examples::measure::load_average;

/// vdm's programs run on mimalloc (docs/benchmarks.md, "The allocator"), and so does vdm's side
/// of this harness (its child processes are this binary); PyTorch's side runs on glibc's
/// `malloc`, as pip's torch does, unless the run's environment preloads another.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// vdm against diffusers / PyTorch, side by side.
#[derive(Debug, Parser)]
#[command(name = "bench", version)]
struct Args {
    /// Case names, comma separated (default: every case; `--list` shows them).
    #[arg(long, value_delimiter = ',')]
    cases: Vec<String>,
    /// Rounds: each runs every case once per side, in a fresh process.
    #[arg(long, default_value_t = 2)]
    rounds: usize,
    /// Timed runs per process, for every case (default: the case's own, 3 to 20).
    #[arg(long)]
    repeats: Option<usize>,
    /// Threads of each side (default: the CPUs available).
    #[arg(long)]
    threads: Option<usize>,
    /// The Python of the PyTorch side (default: `.venv-bench/bin/python` of the repository,
    /// made by `bench/setup_python.sh`).
    #[arg(long)]
    python: Option<PathBuf>,
    /// vdm's figures alone.
    #[arg(long)]
    no_python: bool,
    /// Seconds a side may take for one case (warm-up and timed runs) before it is stopped.
    #[arg(long, default_value_t = 1800)]
    case_timeout: u64,
    /// List the cases and exit.
    #[arg(long)]
    list: bool,
    /// (internal) Run one case on the vdm side in this process and print its RESULT line.
    #[arg(long, hide = true)]
    child: Option<String>,
}

/// The repository's root.
fn repo_dir() -> PathBuf {
    let examples = Path::new(env!("CARGO_MANIFEST_DIR"));
    examples.parent().unwrap_or(examples).to_path_buf()
}

/// The repository's `bench/` folder.
fn bench_dir() -> PathBuf {
    repo_dir().join("bench")
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

/// The selected cases, with `--repeats` applied.
fn selected(args: &Args) -> Result<Vec<Case>, String> {
    let all = cases();
    let mut chosen: Vec<Case> = if args.cases.is_empty() {
        all
    } else {
        args.cases
            .iter()
            .map(|name| {
                all.iter()
                    .find(|c| c.name == name.trim())
                    .cloned()
                    .ok_or_else(|| format!("--cases: no case `{name}` (see --list)"))
            })
            .collect::<Result<_, _>>()?
    };
    if let Some(r) = args.repeats {
        if r == 0 {
            return Err("--repeats must be at least 1".into());
        }
        for c in &mut chosen {
            c.repeats = r;
        }
    }
    Ok(chosen)
}

fn run(args: &Args) -> Result<(), String> {
    if args.list {
        for c in cases() {
            println!("{}", c.name);
        }
        return Ok(());
    }
    let chosen = selected(args)?;
    if let Some(name) = &args.child {
        let case = chosen
            .iter()
            .find(|c| &c.name == name)
            .ok_or_else(|| format!("no case `{name}`"))?;
        let device = vdm::try_device().map_err(|e| e.to_string())?;
        let m = vdm_side::run(case, &device).map_err(|e| e.to_string())?;
        println!("{}", m.to_output());
        return Ok(());
    }
    if args.rounds == 0 {
        return Err("--rounds must be at least 1".into());
    }
    let threads = args.threads.unwrap_or_else(|| {
        std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
    });
    let machine = Machine::read();
    let python = if args.no_python {
        Err("--no-python".to_string())
    } else {
        find_python(args.python.clone())
    };
    println!(
        "{} ({} CPUs at {:.0} MHz, {}; theoretical fp32 peak {:.0} GFLOP/s); {threads} threads per side; backend {}; load {}",
        machine.model,
        machine.cpus,
        machine.mhz,
        machine.isa,
        machine.peak_gflops(),
        vdm::backend_name(),
        load_average(3)
    );
    match &python {
        Ok((_, versions)) => println!("PyTorch side: {versions}"),
        Err(why) => println!(
            "PyTorch side: not available ({why}); vdm's figures alone (bench/setup_python.sh sets it up)"
        ),
    }
    let gflop_file = bench_dir().join("gflop.json");
    let mut known: BTreeMap<String, f64> = std::fs::read_to_string(&gflop_file)
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or_default();

    let timeout = Duration::from_secs(args.case_timeout);
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let mut results: Vec<CaseRounds> = chosen
        .iter()
        .map(|c| CaseRounds {
            case: c.clone(),
            rounds: Vec::new(),
        })
        .collect();
    for round in 0..args.rounds {
        for r in &mut results {
            let case = &r.case;
            let vdm = || {
                let mut cmd = Command::new(&exe);
                cmd.arg("--child")
                    .arg(&case.name)
                    .arg("--repeats")
                    .arg(case.repeats.to_string())
                    .env("RAYON_NUM_THREADS", threads.to_string());
                run_side(cmd, timeout)
            };
            let torch = |py: &Path| {
                let mut cmd = Command::new(py);
                cmd.arg(bench_dir().join("pytorch_side.py"))
                    .arg(case.python_json(threads).to_string())
                    .env("OMP_NUM_THREADS", threads.to_string());
                run_side(cmd, timeout)
            };
            let started = Instant::now();
            let (v, t) = match (&python, round % 2) {
                (Ok((py, _)), 0) => {
                    let v = vdm();
                    (v, Some(torch(py)))
                }
                (Ok((py, _)), _) => {
                    let t = torch(py);
                    (vdm(), Some(t))
                }
                (Err(_), _) => (vdm(), None),
            };
            eprintln!(
                "round {}/{}, {}: {:.0} s",
                round + 1,
                args.rounds,
                case.name,
                started.elapsed().as_secs_f64()
            );
            r.rounds.push(Round { vdm: v, torch: t });
        }
    }

    println!("\n{}", table(&results, &known, machine.peak_gflops()));
    if let Some(g) = gemm_rate(&results, &known) {
        println!("GEMM rate (the faster side's 1024² matmul in this run): {g:.0} GFLOP/s");
    }
    println!("load after: {}", load_average(3));
    let failed = failures(&results);
    for line in &failed {
        println!("failed: {line}");
    }
    if python.is_ok() {
        let mut updated = false;
        for r in &results {
            if let Some(g) = r
                .rounds
                .iter()
                .find_map(|x| x.torch.as_ref()?.as_ref().ok()?.gflop)
            {
                known.insert(r.case.name.clone(), g);
                updated = true;
            }
        }
        if updated {
            let text = serde_json::to_string_pretty(&known).map_err(|e| e.to_string())?;
            std::fs::write(&gflop_file, text + "\n")
                .map_err(|e| format!("{}: {e}", gflop_file.display()))?;
            println!("FLOP counts written to {}", gflop_file.display());
        }
    }
    if failed.is_empty() {
        Ok(())
    } else {
        Err(format!("{} side runs failed", failed.len()))
    }
}

/// The PyTorch side's interpreter and its versions, or why there is none.
fn find_python(given: Option<PathBuf>) -> Result<(PathBuf, String), String> {
    let py = given.unwrap_or_else(|| repo_dir().join(".venv-bench/bin/python"));
    if !py.exists() {
        return Err(format!("no {}", py.display()));
    }
    let mut cmd = Command::new(&py);
    cmd.arg("-c").arg(
        "import torch, diffusers, transformers; print('diffusers', diffusers.__version__, 'torch', torch.__version__, 'transformers', transformers.__version__)",
    );
    let out = run_child(cmd, Duration::from_secs(300))?;
    Ok((py, out.trim().to_string()))
}

/// Runs one side of one case and reads its RESULT line.
fn run_side(cmd: Command, timeout: Duration) -> Result<Measured, String> {
    Measured::from_output(&run_child(cmd, timeout)?)
}
