//! Video writers side by side: time, file size and PSNR of every output format on one clip.
//!
//! ```text
//! cargo run --release --example bench_video                 # 24 frames of 576 × 320
//! cargo run --release --example bench_video -- 16 256 256   # frames height width
//! ```
//!
//! The clip is synthetic but video-like (a moving colour ramp under a brightness gradient, with
//! a little texture). PSNR is measured on the frames read back from each file
//! (`vdm::video::read_frames`); the contact sheet is lossless like the PNG frames.

use std::time::Instant;

use vdm::burn::tensor::{Device, Tensor, TensorData};
use vdm::video::{GifOptions, GifPalette, Mp4Options, Video, WriteOptions, psnr, read_frames};

fn main() {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .map(|a| a.parse().expect("frames height width"))
        .collect();
    let (frames, height, width) = match args.as_slice() {
        [] => (24, 320, 576),
        [f, h, w] => (*f, *h, *w),
        _ => panic!("usage: bench_video [frames height width]"),
    };
    let video = clip(frames, height, width);
    let reference = video.to_rgb_images().expect("frames");
    let dir = std::env::temp_dir().join(format!("vdm-bench-video-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("scratch folder");

    println!(
        "{frames} frames of {width} × {height}, written to {}",
        dir.display()
    );
    println!("| output | time | size | PSNR |");
    println!("|---|---|---|---|");
    let gif = |palette, dither| WriteOptions {
        gif: GifOptions {
            palette,
            dither,
            ..GifOptions::default()
        },
        ..WriteOptions::default()
    };
    let cases: Vec<(&str, &str, WriteOptions)> = vec![
        ("MP4 (0.5 bit/pixel)", "clip.mp4", WriteOptions::default()),
        (
            "MP4 (2 bit/pixel)",
            "clip2.mp4",
            WriteOptions {
                mp4: Mp4Options {
                    bits_per_pixel: 2.0,
                },
                ..WriteOptions::default()
            },
        ),
        (
            "GIF, per-frame palettes",
            "clip.gif",
            gif(GifPalette::PerFrame, false),
        ),
        (
            "GIF, global palette",
            "global.gif",
            gif(GifPalette::Global, false),
        ),
        (
            "GIF, per-frame, dithered",
            "dither.gif",
            gif(GifPalette::PerFrame, true),
        ),
        ("PNG frames", "frames", WriteOptions::default()),
        ("PNG contact sheet", "sheet.png", WriteOptions::default()),
    ];
    for (name, file, options) in cases {
        let path = dir.join(file);
        let start = Instant::now();
        video.write(&path, &options).expect("write");
        let seconds = start.elapsed().as_secs_f64();
        let size = disk_size(&path);
        let quality = if file.ends_with(".png") {
            "lossless".into()
        } else {
            let db =
                psnr(&read_frames(&path).expect("read back"), &reference).expect("same frames");
            if db.is_finite() {
                format!("{db:.1} dB")
            } else {
                "lossless".into()
            }
        };
        println!(
            "| {name} | {seconds:.2} s | {:.0} KiB | {quality} |",
            size as f64 / 1024.0
        );
    }
    std::fs::remove_dir_all(&dir).expect("clean up");
}

/// `[F, 3, H, W]` in `[0, 1]`.
fn clip(frames: usize, height: usize, width: usize) -> Video {
    let mut data = Vec::with_capacity(frames * 3 * height * width);
    for f in 0..frames {
        for c in 0..3 {
            for y in 0..height {
                for x in 0..width {
                    let t = f as f32 / frames as f32;
                    let s = 0.5
                        + 0.5
                            * (x as f32 * 12.0 / width as f32
                                + y as f32 * 9.0 / height as f32
                                + 6.0 * t)
                                .sin();
                    let texture = 0.03 * ((x * 7 + y * 13) % 5) as f32 / 5.0;
                    let brightness = 0.6 + 0.4 * y as f32 / (height - 1) as f32;
                    let v = match c {
                        0 => s,
                        1 => 0.3 + 0.5 * s * s,
                        _ => 1.0 - 0.8 * s,
                    };
                    data.push((v * brightness + texture).min(1.0));
                }
            }
        }
    }
    let frames = Tensor::<4>::from_data(
        TensorData::new(data, [frames, 3, height, width]),
        &Device::flex(),
    );
    Video::new(frames).expect("a video")
}

fn disk_size(path: &std::path::Path) -> u64 {
    if path.is_dir() {
        std::fs::read_dir(path)
            .expect("folder")
            .map(|e| e.expect("entry").metadata().expect("metadata").len())
            .sum()
    } else {
        std::fs::metadata(path).expect("file").len()
    }
}
