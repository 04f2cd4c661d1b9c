//! Child processes of a test, every wait bounded: a test never hangs on its child, and no
//! child outlives its test (it is killed when its [`Supervised`] guard drops, e.g. on a failed
//! assertion). Shared by the tests that run a child process (this crate's `determinism`,
//! `killed_write` and `backends` binaries, mounted with `#[path]`, and the examples' tests).

#![allow(dead_code)] // each test binary uses the part it needs

use std::io::Read;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// A running child process, killed and reaped when dropped.
pub struct Supervised(pub Child);

impl Drop for Supervised {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Supervised {
    /// Starts `command` (panics naming it when it cannot start).
    pub fn spawn(command: &mut Command) -> Self {
        Self(
            command
                .spawn()
                .unwrap_or_else(|e| panic!("cannot start {command:?}: {e}")),
        )
    }

    /// Whether the child has ended: its status if so.
    pub fn ended(&mut self) -> Option<ExitStatus> {
        self.0.try_wait().expect("the child's status")
    }

    /// Waits at most `limit` for the child to end and returns its status; past `limit` the
    /// child is killed and the test panics naming `what`.
    pub fn wait_within(&mut self, limit: Duration, what: &str) -> ExitStatus {
        let start = Instant::now();
        loop {
            if let Some(status) = self.ended() {
                return status;
            }
            if start.elapsed() > limit {
                let _ = self.0.kill();
                let _ = self.0.wait();
                panic!("{what} ran past {} s", limit.as_secs());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits like [`Self::wait_within`] and returns the status with what the child wrote to its
    /// piped stdout and stderr (read as it comes, so a full pipe cannot stall the child).
    pub fn output_within(mut self, limit: Duration, what: &str) -> Output {
        let stdout = drain(self.0.stdout.take());
        let stderr = drain(self.0.stderr.take());
        let status = self.wait_within(limit, what);
        Output {
            status,
            stdout: stdout.join().expect("the stdout reader"),
            stderr: stderr.join().expect("the stderr reader"),
        }
    }
}

/// Reads `pipe` (if any) to its end on a thread of its own.
fn drain(pipe: Option<impl Read + Send + 'static>) -> JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut bytes = Vec::new();
        if let Some(mut pipe) = pipe {
            let _ = pipe.read_to_end(&mut bytes);
        }
        bytes
    })
}

/// Runs the ignored test `test` of this test binary again as a child process (`--exact
/// --ignored`), with the environment variable `out_var` naming a file for it to write and
/// `configure` applied to its command (more variables); waits at most `limit`, checks that it
/// passed (its stderr in the panic message otherwise) and returns what it wrote.
pub fn child_test_output(
    test: &str,
    out_var: &str,
    limit: Duration,
    configure: impl FnOnce(&mut Command),
) -> Vec<u8> {
    static RUNS: AtomicUsize = AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!(
        "vdm-child-{}-{}",
        std::process::id(),
        RUNS.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let out = dir.join("out");
    let mut command = Command::new(std::env::current_exe().unwrap());
    command
        .args([test, "--exact", "--ignored"])
        .env(out_var, &out)
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    configure(&mut command);
    let what = format!("the child test `{test}`");
    let output = Supervised::spawn(&mut command).output_within(limit, &what);
    assert!(
        output.status.success(),
        "{what} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let written = std::fs::read(&out).unwrap_or_else(|e| panic!("{what} wrote nothing: {e}"));
    let _ = std::fs::remove_dir_all(&dir);
    written
}
