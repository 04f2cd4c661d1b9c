//! A process killed (SIGKILL: no clean-up runs) while `Video::write` is writing leaves the
//! destination as it was (the previous file) or holding a complete video, never a truncated
//! one: videos are written under a temporary name and renamed into place when complete.
//!
//! The writer is this test binary run again as a child process (the ignored test
//! `child_writes_until_killed`, selected by the environment variable [`CHILD_TARGET`]); the
//! parent kills it once a temporary file is being filled. Every wait is bounded.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use burn::tensor::{Device, Tensor, TensorData};
use vdm::video::{GifOptions, GifPalette, Video, WriteOptions, read_frames};

#[path = "common/child.rs"]
mod child;
use child::Supervised;

/// The variable naming the child's destination file.
const CHILD_TARGET: &str = "VDM_KILLED_WRITE_TARGET";

/// Frames of the child's videos: enough that one GIF takes a good fraction of a second.
const CHILD_FRAMES: usize = 48;

/// `[frames, 3, size, size]` of smooth moving colour (phase `phase`), in `[0, 1]`.
fn video(frames: usize, size: usize, phase: f32) -> Video {
    let mut data = Vec::with_capacity(frames * 3 * size * size);
    for f in 0..frames {
        for c in 0..3 {
            for y in 0..size {
                for x in 0..size {
                    let t = f as f32 * 0.2 + phase + c as f32 * 2.1;
                    data.push(0.5 + 0.5 * (x as f32 * 0.07 + y as f32 * 0.05 + t).sin());
                }
            }
        }
    }
    let frames = Tensor::<4>::from_data(
        TensorData::new(data, [frames, 3, size, size]),
        &Device::flex(),
    );
    Video::new(frames).unwrap()
}

/// Slow, dithered per-frame palettes: the child spends its time inside the write.
fn slow_gif() -> WriteOptions {
    WriteOptions {
        gif: GifOptions {
            palette: GifPalette::PerFrame,
            dither: true,
            ..GifOptions::default()
        },
        ..WriteOptions::default()
    }
}

/// The child's side: writes the same video to [`CHILD_TARGET`] again and again until killed.
#[test]
#[ignore = "not a test alone: the child process that `a_killed_write_leaves_the_previous_file_or_a_whole_one` runs (with --ignored --exact), so CI covers it through that test"]
fn child_writes_until_killed() {
    let target = PathBuf::from(std::env::var_os(CHILD_TARGET).expect("run by the parent test"));
    let video = video(CHILD_FRAMES, 160, 1.0);
    loop {
        video.write(&target, &slow_gif()).unwrap();
    }
}

/// The temporary files next to `target` (`.<name>.tmp-<pid>-<n>`) and their sizes.
fn temporaries(target: &Path) -> Vec<(PathBuf, u64)> {
    let name = target.file_name().unwrap().to_string_lossy().to_string();
    std::fs::read_dir(target.parent().unwrap())
        .unwrap()
        .filter_map(Result::ok)
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with(&format!(".{name}.tmp-"))
        })
        .map(|e| (e.path(), e.metadata().map_or(0, |m| m.len())))
        .collect()
}

#[test]
fn a_killed_write_leaves_the_previous_file_or_a_whole_one() {
    let dir = std::env::temp_dir().join(format!("vdm-killed-write-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let target = dir.join("video.gif");
    video(4, 32, 0.0)
        .write(&target, &WriteOptions::default())
        .unwrap();
    let previous = std::fs::read(&target).unwrap();

    let mut child = Supervised::spawn(
        Command::new(std::env::current_exe().unwrap())
            .args(["child_writes_until_killed", "--exact", "--ignored"])
            .env(CHILD_TARGET, &target)
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    );

    // Kill it while a temporary file is being filled (present and not empty: its first
    // buffer was flushed, so its write is under way and far from the rename).
    let start = Instant::now();
    let killed_at = loop {
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "no temporary file was being written within 120 s"
        );
        if let Some(status) = child.ended() {
            panic!("the writer exited by itself: {status}");
        }
        if let Some((path, size)) = temporaries(&target).into_iter().find(|(_, s)| *s > 0) {
            child.0.kill().unwrap();
            child.0.wait().unwrap();
            break (path, size);
        }
        std::thread::sleep(Duration::from_millis(1));
    };

    // The destination: byte for byte the previous file, or a whole video of the child's.
    let now = std::fs::read(&target).expect("the destination must still exist");
    let (temporary, size) = killed_at;
    println!(
        "killed with {size} bytes in {}; destination: {}",
        temporary.display(),
        if now == previous {
            "the previous file"
        } else {
            "a whole video of the child's"
        }
    );
    if now != previous {
        let frames = read_frames(&target).expect("a complete, readable GIF");
        assert_eq!(frames.len(), CHILD_FRAMES);
    }
    // The killed write is the temporary file left behind; it never took the destination's name.
    assert!(temporary.is_file(), "{}", temporary.display());
    assert!(size > 0);
    let _ = std::fs::remove_dir_all(&dir);
}
