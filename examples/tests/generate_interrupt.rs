//! Ctrl-C during `generate` (the README's main job): the command stops at the next step
//! boundary, says so, exits with status 130 and writes nothing; with `--keep-partial` it
//! writes the frames finished before the stop (FIFO-Diffusion finishes them one by one).
//!
//! The example binary is the one `cargo test` builds next to this test
//! (`target/<profile>/examples/generate`); the test fails (never skips) when it is missing.
//! Every wait is bounded.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::time::{Duration, Instant};

use vdm_examples::harness::process::example_binary;

// The facade's bounded child-process helper: one copy for every test that runs a child.
#[path = "../../crates/vdm/tests/common/child.rs"]
mod child;
use child::Supervised;

/// An empty scratch folder of this test process.
fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("vdm-interrupt-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// `generate` with `args`, writing to `out`, and the lines of its stdout as they come.
fn start(args: &[&str], out: &Path) -> (Supervised, Receiver<String>) {
    let mut child = Supervised::spawn(
        Command::new(example_binary("generate"))
            .args(["--prompt", "a red circle moving right", "--seed", "1"])
            .args(args)
            .arg("--out")
            .arg(out)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped()),
    );
    let stdout = child.0.stdout.take().unwrap();
    let (lines, received) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if lines.send(line).is_err() {
                break;
            }
        }
    });
    (child, received)
}

/// Waits (at most `seconds`) for a line of stdout holding `needle`.
fn wait_for(lines: &Receiver<String>, needle: &str, seconds: u64) -> String {
    let deadline = Instant::now() + Duration::from_secs(seconds);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match lines.recv_timeout(left) {
            Ok(line) if line.contains(needle) => return line,
            Ok(_) => {}
            Err(e) => panic!(
                "generate printed no `{needle}` within {seconds} s ({e}): a stale binary? \
                 `cargo test` without target filters (or `cargo build --release --example \
                 generate`) rebuilds it"
            ),
        }
    }
}

/// Sends Ctrl-C (SIGINT) and waits (at most 60 s) for the child to end: its status and stderr.
fn interrupt(child: &mut Supervised) -> (ExitStatus, String) {
    // SAFETY: `kill` sends SIGINT to our own child process, which is still running.
    assert_eq!(
        unsafe { libc::kill(child.0.id() as libc::pid_t, libc::SIGINT) },
        0
    );
    let status = child.wait_within(Duration::from_secs(60), "generate after Ctrl-C");
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.0.stderr.take().unwrap(), &mut stderr).unwrap();
    (status, stderr)
}

/// The names of the files in `dir`.
fn files(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect()
}

#[test]
fn ctrl_c_stops_at_a_step_boundary_and_writes_nothing() {
    let dir = scratch("nothing");
    // 400 steps of the embedded model: a minute or more, far longer than the test waits.
    let (mut child, lines) = start(&["--frames", "16", "--steps", "400"], &dir.join("x.gif"));
    // The line saying the handler is installed: the model is in memory and sampling starts.
    wait_for(&lines, "Ctrl-C", 120);
    std::thread::sleep(Duration::from_millis(300));
    let (status, stderr) = interrupt(&mut child);
    assert_eq!(status.code(), Some(130), "stderr: {stderr}");
    assert!(
        stderr.contains("interrupted") && stderr.contains("nothing written"),
        "{stderr}"
    );
    // Nothing written: neither the video nor a temporary file.
    assert!(files(&dir).is_empty(), "{:?}", files(&dir));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn ctrl_c_with_keep_partial_writes_the_finished_frames() {
    let dir = scratch("partial");
    let out = dir.join("partial.gif");
    // FIFO-Diffusion over 128 frames: each frame leaves the queue finished. One partition
    // (a 16-level queue) makes the first frame leave after the 16-step start instead of 48
    // more iterations of 8 model calls (the default 4 partitions drop those re-noised copies),
    // and the rest of the run, two model calls per frame, outlasts the interrupt by far.
    let (mut child, lines) = start(
        &[
            "--frames",
            "128",
            "--long",
            "fifo",
            "--fifo-partitions",
            "1",
            "--keep-partial",
        ],
        &out,
    );
    wait_for(&lines, "writes the frames finished so far", 120);
    wait_for(&lines, "finished frames 0..1 of 128", 240);
    let (status, stderr) = interrupt(&mut child);
    assert_eq!(status.code(), Some(130), "stderr: {stderr}");
    // "interrupted (...): wrote the N finished frames of 128 to PATH"
    let kept: usize = stderr
        .split("wrote the ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no `wrote the N finished frames` in: {stderr}"));
    assert!(stderr.contains("interrupted"), "{stderr}");
    assert!((1..128).contains(&kept), "{stderr}");
    // The file holds exactly those frames, and nothing else was left behind.
    let frames = vdm::video::read_frames(&out).unwrap();
    assert_eq!(frames.len(), kept);
    assert_eq!(files(&dir), ["partial.gif"]);
    let _ = std::fs::remove_dir_all(&dir);
}
