//! Fuzzing vdm's parsers of untrusted input on stable Rust: a seeded mutator over seed
//! corpora from the real files in `fixtures/` and the embedded model, a campaign loop that
//! catches panics, and a watchdog that bounds the time of every input.
//!
//! Why not a fuzzing crate: our machines have stable Rust only, so cargo-fuzz (libFuzzer) is
//! out; bolero's stable engine draws fresh random values of a type and does not mutate seed
//! files, which is what finds bugs in parsers of long, structured files (a safetensors header,
//! a diffusers config) in a million runs. The mutator here is the classic byte-level set
//! (bit flips, interesting bytes and integers, deletions, duplications, splices) plus a
//! JSON-aware one that swaps a number or literal for `Infinity`, `NaN`, `null`, huge or
//! negative values and wrong types. The random stream is SplitMix64, written out so that a
//! campaign replays exactly from its seed whatever the versions of other crates (rand's
//! `StdRng` does not promise that).
//!
//! Each harness ([`targets`]) turns bytes into calls of a public vdm parser; a harness passes
//! when every input returns (`Ok` or a typed `Err`) without panicking, within the time bound.

pub mod targets;

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// SplitMix64: a small seeded random stream (see the module docs for why it is written out).
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A stream from `seed`.
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (`n` ≥ 1).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n.max(1) as u64) as usize
    }

    /// One of `items`.
    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

/// Bytes that break parsers: delimiters, signs, digits, quotes, high bytes, NUL.
const INTERESTING_BYTES: &[u8] = b"\0\xff\x7f\x80\"{}[],:-+.eE09\\ \n";

/// Integers that break length and offset arithmetic (as little-endian `u64`).
const INTERESTING_U64: &[u64] = &[
    0,
    1,
    7,
    8,
    0x7f,
    0xffff,
    0x7fff_ffff,
    0xffff_ffff,
    1 << 32,
    1 << 40,
    1 << 62,
    i64::MAX as u64,
    u64::MAX,
];

/// JSON values swapped in for a number or literal.
const JSON_SWAPS: &[&str] = &[
    "Infinity",
    "-Infinity",
    "NaN",
    "null",
    "1e309",
    "-1e309",
    "-1",
    "0",
    "-0",
    "0.5",
    "4294967296",
    "18446744073709551616",
    "1e-320",
    "\"x\"",
    "\"\"",
    "[]",
    "{}",
    "[1,2]",
    "true",
    "false",
];

/// One random mutation of `input`, in place; `others` (the corpus) feeds splices.
pub fn mutate_once(input: &mut Vec<u8>, others: &[Vec<u8>], rng: &mut Rng) {
    let len = input.len();
    match rng.below(9) {
        0 if len > 0 => {
            let i = rng.below(len);
            input[i] ^= 1 << rng.below(8);
        }
        1 if len > 0 => {
            let i = rng.below(len);
            input[i] = *rng.pick(INTERESTING_BYTES);
        }
        2 if len > 0 => {
            let start = rng.below(len);
            let end = (start + 1 + rng.below(16)).min(len);
            input.drain(start..end);
        }
        3 if len > 0 => {
            let start = rng.below(len);
            let end = (start + 1 + rng.below(32)).min(len);
            let piece = input[start..end].to_vec();
            let at = rng.below(len + 1);
            input.splice(at..at, piece);
        }
        4 => {
            let other = rng.pick(others);
            if !other.is_empty() {
                let start = rng.below(other.len());
                let end = (start + 1 + rng.below(64)).min(other.len());
                let at = rng.below(len + 1);
                let cut = (at + rng.below(64)).min(len);
                input.splice(at..cut, other[start..end].iter().copied());
            }
        }
        5 if len >= 8 => {
            // An interesting integer over 8 bytes: the safetensors length prefix half the time.
            let at = if rng.below(2) == 0 {
                0
            } else {
                rng.below(len - 7)
            };
            let value = rng.pick(INTERESTING_U64).to_le_bytes();
            input[at..at + 8].copy_from_slice(&value);
        }
        6 => swap_json_value(input, rng),
        7 if len > 0 => input.truncate(rng.below(len)),
        _ => {
            let at = rng.below(len + 1);
            input.insert(at, *rng.pick(INTERESTING_BYTES));
        }
    }
}

/// Replaces one number or literal (`true`, `false`, `null`) of a JSON text with a
/// [`JSON_SWAPS`] value.
fn swap_json_value(input: &mut Vec<u8>, rng: &mut Rng) {
    let is_start = |b: u8| b.is_ascii_digit() || b == b'-' || b == b't' || b == b'f' || b == b'n';
    let starts: Vec<usize> = (0..input.len())
        .filter(|&i| {
            is_start(input[i]) && (i == 0 || matches!(input[i - 1], b':' | b'[' | b',' | b' '))
        })
        .collect();
    if starts.is_empty() {
        return;
    }
    let start = *rng.pick(&starts);
    let end = (start..input.len())
        .find(|&i| matches!(input[i], b',' | b'}' | b']' | b' ' | b'\n'))
        .unwrap_or(input.len());
    input.splice(start..end, rng.pick(JSON_SWAPS).bytes());
}

/// A mutated copy of a corpus member: one to four stacked mutations.
pub fn mutated(corpus: &[Vec<u8>], rng: &mut Rng) -> Vec<u8> {
    let mut input = rng.pick(corpus).clone();
    for _ in 0..1 + rng.below(4) {
        mutate_once(&mut input, corpus, rng);
    }
    input
}

/// The calls a harness makes on one input; returns whether the parser accepted it.
pub type Harness = dyn Fn(&[u8]) -> bool;

/// A fuzz harness: a name, its seed corpus and the calls it makes on one input.
pub struct Target {
    /// The harness's name (`safetensors`, `scheduler-config`, ...).
    pub name: &'static str,
    /// What it feeds the input to.
    pub about: &'static str,
    /// The seed corpus (real files).
    pub corpus: Vec<Vec<u8>>,
    /// Runs one input; returns whether the parser accepted it. Must never panic.
    pub run: Box<Harness>,
}

/// An input that made a harness panic.
#[derive(Debug, Clone)]
pub struct Finding {
    /// The input.
    pub input: Vec<u8>,
    /// The panic message.
    pub message: String,
}

/// What a campaign did.
#[derive(Debug, Clone)]
pub struct Report {
    /// The harness.
    pub target: &'static str,
    /// Inputs run (the corpus first, then mutations).
    pub runs: u64,
    /// Size of the seed corpus.
    pub corpus: usize,
    /// Inputs the parser accepted (the rest were typed errors or panics).
    pub accepted: u64,
    /// Inputs that panicked (at most the first 16 kept).
    pub panics: Vec<Finding>,
    /// How many inputs panicked.
    pub panic_count: u64,
    /// The slowest input's time.
    pub slowest: Duration,
    /// The whole campaign's time.
    pub elapsed: Duration,
}

/// Runs `target` on its corpus, then on `runs` mutated inputs from `seed` (one thread).
///
/// A watchdog thread ends the process (exit status 3, after printing the harness and the
/// input's length and first bytes) when one input runs past `time_bound`: a hang must never
/// look like a slow pass.
pub fn campaign(target: &Target, runs: u64, seed: u64, time_bound: Duration) -> Report {
    let mut rng = Rng::new(seed);
    // What the watchdog prints of the running input: its length and its first bytes (the
    // whole input is not copied for it).
    let current: Arc<Mutex<(usize, Vec<u8>)>> = Arc::default();
    // Milliseconds since `origin` at which the current input started (0: none running).
    let started = Arc::new(AtomicU64::new(0));
    let origin = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let watchdog = {
        let (current, started, stop) = (current.clone(), started.clone(), stop.clone());
        let name = target.name;
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(50));
                let at = started.load(Ordering::Relaxed);
                let now = origin.elapsed().as_millis() as u64;
                if at != 0 && now.saturating_sub(at) > time_bound.as_millis() as u64 {
                    let (len, prefix) = current.lock().map(|c| c.clone()).unwrap_or_default();
                    eprintln!(
                        "fuzz {name}: an input ran past {time_bound:?} ({len} bytes, starting {:?})",
                        String::from_utf8_lossy(&prefix)
                    );
                    std::process::exit(3);
                }
            }
        })
    };

    let previous_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let mut report = Report {
        target: target.name,
        runs: 0,
        corpus: target.corpus.len(),
        accepted: 0,
        panics: Vec::new(),
        panic_count: 0,
        slowest: Duration::ZERO,
        elapsed: Duration::ZERO,
    };
    let total = target.corpus.len() as u64 + runs;
    for i in 0..total {
        let input = match target.corpus.get(i as usize) {
            Some(seed_input) => seed_input.clone(),
            None => mutated(&target.corpus, &mut rng),
        };
        if let Ok(mut slot) = current.lock() {
            slot.0 = input.len();
            slot.1.clear();
            slot.1.extend_from_slice(&input[..input.len().min(200)]);
        }
        let start = Instant::now();
        started.store(
            (origin.elapsed().as_millis() as u64).max(1),
            Ordering::Relaxed,
        );
        let outcome = catch_unwind(AssertUnwindSafe(|| (target.run)(&input)));
        started.store(0, Ordering::Relaxed);
        report.slowest = report.slowest.max(start.elapsed());
        report.runs += 1;
        match outcome {
            Ok(true) => report.accepted += 1,
            Ok(false) => {}
            Err(panic) => {
                report.panic_count += 1;
                if report.panics.len() < 16 {
                    report.panics.push(Finding {
                        input,
                        message: vdm::core::error::panic_message(panic.as_ref()),
                    });
                }
            }
        }
    }
    std::panic::set_hook(previous_hook);
    stop.store(true, Ordering::Relaxed);
    let _ = watchdog.join();
    report.elapsed = origin.elapsed();
    report
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_stream_replays_from_its_seed_and_mutations_change_inputs() {
        let corpus = vec![br#"{"a": 1, "b": [true, null]}"#.to_vec()];
        let (mut a, mut b) = (Rng::new(5), Rng::new(5));
        let first: Vec<_> = (0..50).map(|_| mutated(&corpus, &mut a)).collect();
        let again: Vec<_> = (0..50).map(|_| mutated(&corpus, &mut b)).collect();
        assert_eq!(first, again);
        let changed = first.iter().filter(|m| **m != corpus[0]).count();
        assert!(changed >= 45, "{changed} of 50 inputs changed");
    }

    #[test]
    fn a_campaign_counts_panics_and_accepts() {
        let target = Target {
            name: "toy",
            about: "panics on a leading 'X'",
            corpus: vec![b"abc".to_vec(), b"Xyz".to_vec()],
            run: Box::new(|bytes| {
                assert!(bytes.first() != Some(&b'X'), "a leading X");
                bytes.len() == 3
            }),
        };
        let report = campaign(&target, 200, 1, Duration::from_secs(10));
        assert_eq!(report.runs, 202);
        assert!(report.panic_count >= 1);
        assert!(report.panics[0].message.contains("a leading X"));
        assert!(report.accepted >= 1);
    }
}
