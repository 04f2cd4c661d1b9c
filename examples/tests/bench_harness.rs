//! The benchmark harness (`cargo run --release --example bench`) end to end, vdm side only (CI
//! has no PyTorch): the binary `cargo test` builds runs three cases for two rounds, each in its
//! own child process, and prints a table row per case with one time per round; a bad case name
//! is an error naming it. Every wait is bounded.

use std::process::Command;
use std::time::Duration;

use vdm_examples::harness::process::{example_binary, run_child};

#[test]
fn vdm_alone_gives_a_row_per_case_with_a_time_per_round() {
    let cases = ["unet3d tiny F8", "ddim 50 steps", "gemm 1024"];
    let mut cmd = Command::new(example_binary("bench"));
    cmd.args(["--no-python", "--rounds", "2", "--repeats", "1", "--cases"])
        .arg(cases.join(","));
    let out = run_child(cmd, Duration::from_secs(300)).unwrap();
    assert!(
        out.contains("PyTorch side: not available (--no-python)"),
        "{out}"
    );
    for name in cases {
        let row = out
            .lines()
            .find(|l| l.starts_with(&format!("| {name} |")))
            .unwrap_or_else(|| panic!("no row for {name}:\n{out}"));
        let cells: Vec<&str> = row.split('|').map(str::trim).collect();
        // | case | GFLOP | vdm, per round | PyTorch, per round | ratios | median ratio | …
        assert_eq!(cells[3].split(" / ").count(), 2, "two vdm rounds: {row}");
        assert!(cells[3].ends_with('s'), "a time: {row}");
        assert_eq!((cells[4], cells[5]), ("–", "–"), "no PyTorch side: {row}");
    }
    // The matmul's work is known without the PyTorch side: 2·1024³ FLOP.
    assert!(out.contains("| gemm 1024 | 2.1 |"), "{out}");
}

#[test]
fn an_unknown_case_is_an_error_naming_it() {
    let mut cmd = Command::new(example_binary("bench"));
    cmd.args(["--no-python", "--cases", "unet3d tiny F8,nope"]);
    let err = run_child(cmd, Duration::from_secs(60)).unwrap_err();
    assert!(err.contains("no case `nope`"), "{err}");
}
