//! `fuzz`: runs vdm's fuzz harnesses (`vdm_examples::fuzz`) and prints a table.
//!
//! ```text
//! cargo run --release --example fuzz                      # every harness, 1,000,000 inputs each
//! cargo run --release --example fuzz -- --quick           # 10,000 inputs each (as CI does)
//! cargo run --release --example fuzz -- --targets prompt --runs 50000 --seed 7
//! ```
//!
//! Exit status 1 when any input panicked (the first findings are written to
//! `--findings`, default `target/fuzz-findings/`, one file per input), 3 when one ran past the
//! time bound.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use vdm_examples::fuzz::{campaign, targets};
use vdm_examples::measure::{reset_hwm, rss_mib};

/// Fuzz vdm's parsers of untrusted input.
#[derive(Debug, Parser)]
#[command(name = "fuzz", version)]
struct Args {
    /// Harnesses, comma separated (default: all).
    #[arg(long, value_delimiter = ',')]
    targets: Vec<String>,
    /// Mutated inputs per harness (after the seed corpus).
    #[arg(long, default_value_t = 1_000_000)]
    runs: u64,
    /// 10,000 inputs per harness (overrides --runs).
    #[arg(long)]
    quick: bool,
    /// Seed of the mutation stream.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Longest time one input may take, in seconds, before the run is stopped as a hang.
    #[arg(long, default_value_t = 10.0)]
    time_bound: f64,
    /// Where inputs that panicked are written.
    #[arg(long, default_value = "target/fuzz-findings")]
    findings: PathBuf,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let runs = if args.quick { 10_000 } else { args.runs };
    let chosen: Vec<_> = if args.targets.is_empty() {
        targets::all()
    } else {
        let mut chosen = Vec::new();
        for name in &args.targets {
            match targets::by_name(name) {
                Some(t) => chosen.push(t),
                None => {
                    let names: Vec<_> = targets::all().iter().map(|t| t.name).collect();
                    eprintln!("error: unknown harness {name:?}; expected one of {names:?}");
                    return ExitCode::from(2);
                }
            }
        }
        chosen
    };
    println!(
        "| harness | inputs | corpus | accepted | panics | slowest (ms) | inputs/s | peak RSS (MiB) |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|");
    let mut failed = false;
    for target in &chosen {
        reset_hwm();
        let report = campaign(
            target,
            runs,
            args.seed,
            Duration::from_secs_f64(args.time_bound),
        );
        println!(
            "| {} | {} | {} | {} | {} | {:.1} | {:.0} | {:.0} |",
            report.target,
            report.runs,
            report.corpus,
            report.accepted,
            report.panic_count,
            report.slowest.as_secs_f64() * 1e3,
            report.runs as f64 / report.elapsed.as_secs_f64(),
            rss_mib().0,
        );
        for (i, finding) in report.panics.iter().enumerate() {
            failed = true;
            let _ = std::fs::create_dir_all(&args.findings);
            let path = args.findings.join(format!("{}-{i}.bin", report.target));
            let _ = std::fs::write(&path, &finding.input);
            eprintln!("  panic: {} (input: {})", finding.message, path.display());
        }
    }
    targets::remove_scratch();
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
