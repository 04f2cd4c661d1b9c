//! Ctrl-C as a request to stop, not a kill: [`install`] makes SIGINT set a flag
//! that a long-running command reads at its step boundaries ([`requested`]), so `generate`
//! stops at the next denoising step, says so and writes nothing. A second Ctrl-C exits at once
//! (exit status 130); the output file is still never half-written, because video files are
//! written under a temporary name and renamed only when complete.
//!
//! Signals through the `ctrlc` crate (its `termination` feature is off: SIGINT only on Unix,
//! Ctrl-C and Ctrl-Break on Windows).

use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};

/// Set by the handler on the first Ctrl-C.
static REQUESTED: AtomicBool = AtomicBool::new(false);

/// The exit status of a command stopped by Ctrl-C (128 + SIGINT, as shells report it).
pub const EXIT_STATUS: u8 = 130;

/// Installs the handler (once per process; later calls return the first call's result).
///
/// # Errors
/// The reason the handler could not be installed (another handler already owns the signal).
pub fn install() -> Result<(), String> {
    static INSTALLED: OnceLock<Result<(), String>> = OnceLock::new();
    INSTALLED
        .get_or_init(|| {
            ctrlc::set_handler(|| {
                if REQUESTED.swap(true, Ordering::SeqCst) {
                    eprintln!("\ninterrupted again: exiting now");
                    std::process::exit(i32::from(EXIT_STATUS));
                }
                eprintln!("\ninterrupted: stopping at the next step (Ctrl-C again to quit now)");
            })
            .map_err(|e| format!("cannot install the Ctrl-C handler: {e}"))
        })
        .clone()
}

/// Whether Ctrl-C was pressed since [`install`].
pub fn requested() -> bool {
    REQUESTED.load(Ordering::SeqCst)
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::*;

    #[test]
    fn sigint_sets_the_flag_and_the_process_lives_on() {
        install().unwrap();
        // Installing twice is harmless.
        install().unwrap();
        assert!(!requested());
        // SAFETY: `raise` only delivers a signal to this process, whose handler is installed.
        assert_eq!(unsafe { libc::raise(libc::SIGINT) }, 0);
        // The handler runs on ctrlc's own thread: wait for it, at most 10 s.
        let start = Instant::now();
        while !requested() {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "the handler did not run"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}
