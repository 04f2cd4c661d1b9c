//! Ctrl-C during `generate` (the README's main job): the command stops at the next step
//! boundary, says so, exits with status 130 and writes nothing.
//!
//! The example binary is the one `cargo test` builds next to this test
//! (`target/<profile>/examples/generate`); the test fails (never skips) when it is missing.
//! Every wait is bounded.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use vdm_examples::harness::process::example_binary;

/// Kills the child when the test ends early (a failed assertion), so no process outlives it.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn ctrl_c_stops_at_a_step_boundary_and_writes_nothing() {
    let dir = std::env::temp_dir().join(format!("vdm-interrupt-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let out = dir.join("interrupted.gif");
    // 400 steps of the embedded model: a minute or more, far longer than the test waits.
    let child = Command::new(example_binary("generate"))
        .args(["--prompt", "a red circle moving right", "--frames", "16"])
        .args(["--steps", "400", "--seed", "1", "--out"])
        .arg(&out)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut child = KillOnDrop(child);

    // Wait (at most 120 s) for the line saying the handler is installed: the model is in
    // memory and sampling starts.
    let stdout = child.0.stdout.take().unwrap();
    let (lines, received) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if lines.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match received.recv_timeout(left) {
            Ok(line) if line.contains("Ctrl-C") => break,
            Ok(_) => {}
            Err(e) => panic!(
                "generate did not say it handles Ctrl-C within 120 s ({e}): a stale binary? \
                 `cargo test` without target filters (or `cargo build --release --example \
                 generate`) rebuilds it"
            ),
        }
    }
    std::thread::sleep(Duration::from_millis(300));

    // SAFETY: `kill` sends SIGINT to our own child process, which is still running.
    assert_eq!(
        unsafe { libc::kill(child.0.id() as libc::pid_t, libc::SIGINT) },
        0
    );
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.0.try_wait().unwrap() {
            break status;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "generate did not stop within 60 s of Ctrl-C"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.0.stderr.take().unwrap(), &mut stderr).unwrap();
    assert_eq!(status.code(), Some(130), "stderr: {stderr}");
    assert!(
        stderr.contains("interrupted") && stderr.contains("nothing written"),
        "{stderr}"
    );
    // Nothing written: neither the video nor a temporary file.
    let left: Vec<_> = std::fs::read_dir(&dir).unwrap().collect();
    assert!(left.is_empty(), "{left:?}");
    let _ = std::fs::remove_dir_all(&dir);
}
