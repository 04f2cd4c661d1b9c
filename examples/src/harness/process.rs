//! Child processes with a time limit, for the harness (each case runs in its own process) and
//! the tests that start the example binaries.

use std::io::Read;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The example binary `name` built beside the running executable: from a test
/// (`target/<profile>/deps/<test>-<hash>`), `target/<profile>/examples/<name>`.
///
/// # Panics
/// When it is missing (`cargo test` builds the examples before it runs the tests), naming it.
pub fn example_binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("the running executable");
    let profile_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target/<profile>/deps/<test>");
    let binary = profile_dir
        .join("examples")
        .join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    assert!(
        binary.is_file(),
        "{} is missing: `cargo test` builds the examples before it runs tests",
        binary.display()
    );
    binary
}

/// Runs `cmd` to its end or until `timeout` (then kills it), returning its standard output, or
/// an error with the exit status and the last three lines of its standard error.
///
/// # Errors
/// The command cannot start, fails, or runs past `timeout`.
pub fn run_child(mut cmd: Command, timeout: Duration) -> Result<String, String> {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot start {cmd:?}: {e}"))?;
    let mut stdout = child.stdout.take().expect("piped");
    let mut stderr = child.stderr.take().expect("piped");
    let out = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stdout.read_to_string(&mut s);
        s
    });
    let err = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let deadline = Instant::now() + timeout;
    let status = loop {
        match child.try_wait().map_err(|e| e.to_string())? {
            Some(status) => break status,
            None if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                // The readers are left to finish on their own: a grandchild may still hold
                // the pipes open.
                return Err(format!("stopped after {:.1} s", timeout.as_secs_f64()));
            }
            None => std::thread::sleep(Duration::from_millis(50)),
        }
    };
    let stdout = out.join().unwrap_or_default();
    let stderr = err.join().unwrap_or_default();
    if status.success() {
        return Ok(stdout);
    }
    let tail: Vec<&str> = stderr.lines().rev().take(3).collect();
    let tail: Vec<&str> = tail.into_iter().rev().collect();
    Err(format!("{status}: {}", tail.join(" | ")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(script: &str) -> Command {
        let mut cmd = Command::new("sh");
        cmd.arg("-c").arg(script);
        cmd
    }

    #[test]
    fn output_failure_and_time_limit() {
        let out = run_child(sh("echo one; echo two"), Duration::from_secs(30)).unwrap();
        assert_eq!(out, "one\ntwo\n");
        let err = run_child(
            sh("echo a >&2; echo b >&2; exit 3"),
            Duration::from_secs(30),
        );
        assert_eq!(err.unwrap_err(), "exit status: 3: a | b");
        let started = Instant::now();
        let err = run_child(sh("sleep 30"), Duration::from_millis(300)).unwrap_err();
        assert_eq!(err, "stopped after 0.3 s");
        assert!(started.elapsed() < Duration::from_secs(10));
    }
}
