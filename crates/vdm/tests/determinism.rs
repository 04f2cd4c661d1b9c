//! One seed, one video: the embedded model's frames are bitwise equal across runs in one
//! process, across processes with 1, 2 and the default number of threads (`RAYON_NUM_THREADS`
//! 1, 2, unset: rayon's pool, which flex, gemm and vdm's kernels share), and across chunk sizes
//! where the math is the same (VAE decode chunks; spatial layers over frame chunks).
//!
//! The thread-count runs are this test binary run again as child processes (the ignored test
//! `child_writes_frames`, selected by the environment variable [`CHILD_OUT`]); every wait on a
//! child is bounded.

use std::path::PathBuf;
use std::time::Duration;

use burn::tensor::Device;
use vdm::longvideo::freenoise::FreeNoiseConfig;
use vdm::models::chunking::Chunking;
use vdm::pipeline::{Generation, TextToVideoPipeline};

#[path = "common/child.rs"]
mod child;
use child::child_test_output;

/// The variable naming the file a child writes its frames to.
const CHILD_OUT: &str = "VDM_DETERMINISM_OUT";

fn pipeline() -> TextToVideoPipeline {
    let dir = vdm::embedded::moving_shapes_dir();
    TextToVideoPipeline::from_dir(&dir, &Device::flex()).unwrap()
}

/// Short runs of the embedded model: direct sampling of 16 frames, and FreeNoise over 24.
fn cases() -> [Generation; 2] {
    [
        vdm::embedded::generation("a red circle moving right")
            .steps(3)
            .seed(11),
        vdm::embedded::generation("a blue square moving up")
            .frames(24)
            .steps(3)
            .seed(12)
            .freenoise(FreeNoiseConfig::new(16, 4)),
    ]
}

/// The frames of `settings`, as values in `[0, 1]`.
fn frames(pipe: &TextToVideoPipeline, settings: &Generation) -> Vec<f32> {
    pipe.generate(settings).unwrap().to_values().unwrap()
}

/// The frames of every case, one after the other, as little-endian bytes.
fn all_frames_bytes(pipe: &TextToVideoPipeline) -> Vec<u8> {
    cases()
        .iter()
        .flat_map(|s| frames(pipe, s))
        .flat_map(f32::to_le_bytes)
        .collect()
}

/// Where two equally long value lists first differ, and by how much at most (for messages).
fn first_difference(a: &[f32], b: &[f32]) -> Option<(usize, f32)> {
    let first = a
        .iter()
        .zip(b)
        .position(|(x, y)| x.to_bits() != y.to_bits())?;
    let max = a
        .iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max);
    Some((first, max))
}

fn assert_bitwise(label: &str, a: &[f32], b: &[f32]) {
    assert_eq!(a.len(), b.len(), "{label}: lengths");
    if let Some((index, max)) = first_difference(a, b) {
        panic!("{label}: first difference at value {index}, max |Δ| {max:e}");
    }
}

#[test]
fn the_same_seed_gives_the_same_frames_within_a_process() {
    let pipe = pipeline();
    for settings in cases() {
        let a = frames(&pipe, &settings);
        let b = frames(&pipe, &settings);
        assert_bitwise("second run", &a, &b);
        let other = frames(&pipe, &settings.clone().seed(99));
        assert!(
            first_difference(&a, &other).is_some(),
            "another seed must give another video"
        );
    }
}

#[test]
fn chunk_sizes_give_the_same_frames() {
    let pipe = pipeline();
    for settings in cases() {
        let whole = frames(&pipe, &settings);
        for chunk in [1, 5] {
            let decoded = frames(&pipe, &settings.clone().decode_chunk_size(chunk));
            assert_bitwise(&format!("decode chunk {chunk}"), &whole, &decoded);
        }
        for chunk in [1, 4] {
            let chunked = pipeline().with_chunking(Chunking::new(chunk, 4096));
            let spatial = frames(&chunked, &settings);
            assert_bitwise(&format!("frame chunk {chunk}"), &whole, &spatial);
        }
    }
}

/// The child's side: writes the frames of every case to [`CHILD_OUT`].
#[test]
#[ignore = "not a test alone: the child process that `thread_counts_give_the_same_frames` runs (with --ignored --exact), so CI covers it through that test"]
fn child_writes_frames() {
    let out = PathBuf::from(std::env::var_os(CHILD_OUT).expect("run by the parent test"));
    std::fs::write(out, all_frames_bytes(&pipeline())).unwrap();
}

/// Runs [`child_writes_frames`] with `RAYON_NUM_THREADS` = `threads` (`None`: unset) and
/// returns its frames (at most 300 s).
fn frames_in_child(threads: Option<usize>) -> Vec<u8> {
    child_test_output(
        "child_writes_frames",
        CHILD_OUT,
        Duration::from_secs(300),
        |command| {
            match threads {
                Some(n) => command.env("RAYON_NUM_THREADS", n.to_string()),
                None => command.env_remove("RAYON_NUM_THREADS"),
            };
        },
    )
}

#[test]
fn thread_counts_give_the_same_frames() {
    let reference = frames_in_child(Some(1));
    assert!(!reference.is_empty());
    let values = |bytes: &[u8]| -> Vec<f32> {
        bytes
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect()
    };
    for threads in [Some(2), None] {
        let other = frames_in_child(threads);
        assert_bitwise(
            &format!("RAYON_NUM_THREADS={threads:?} against 1"),
            &values(&reference),
            &values(&other),
        );
    }
}
