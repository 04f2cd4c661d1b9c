//! CI's fuzz run: every harness of `vdm_examples::fuzz::targets` on its seed corpus and 10,000
//! mutated inputs (seed 0), with no panic allowed and a 10 s bound per input (the watchdog
//! ends the process past it). The full runs (1,000,000 inputs each) are
//! `cargo run --release --example fuzz`; their table is in `docs/reliability.md`.

use std::time::Duration;

use vdm_examples::fuzz::{campaign, targets};

#[test]
fn every_harness_survives_ten_thousand_inputs() {
    let mut failures = Vec::new();
    for target in targets::all() {
        let report = campaign(&target, 10_000, 0, Duration::from_secs(10));
        println!(
            "{}: {} inputs, {} accepted, {} panics, slowest {:?}",
            report.target, report.runs, report.accepted, report.panic_count, report.slowest
        );
        assert_eq!(report.runs, report.corpus as u64 + 10_000);
        assert!(report.corpus > 0, "{}: empty corpus", report.target);
        // The corpus is real files: the parser must accept some inputs, or it rejects all.
        assert!(report.accepted > 0, "{}: nothing accepted", report.target);
        for finding in &report.panics {
            failures.push(format!(
                "{}: {} on {:?}",
                report.target,
                finding.message,
                String::from_utf8_lossy(&finding.input[..finding.input.len().min(300)])
            ));
        }
    }
    targets::remove_scratch();
    assert!(failures.is_empty(), "{failures:#?}");
}
