//! Video files written by `Video::write`, read back with `read_frames` (the `gif` crate's
//! decoder, the `image` crate's PNG decoder, the `mp4` crate's demuxer with OpenH264's decoder)
//! and the containers' own timing fields: frame count, size, timing and content.
//!
//! Content bounds (PSNR over all frames against the 8-bit input; measured 35.3 / 38.9 / 33.0 /
//! 37.5 dB, printed by the test): GIF with per-frame palettes ≥ 32 dB, global palette ≥ 35 dB,
//! per-frame dithered ≥ 30 dB, global dithered ≥ 34 dB; PNG frames and contact sheets are
//! lossless (equal pixels).

use std::path::{Path, PathBuf};

use burn::tensor::{Device, Tensor, TensorData};
use vdm::video::{
    GifOptions, GifPalette, Video, VideoFormat, WriteOptions, check_output, contact_sheet,
    frame_file_name, psnr, read_frames,
};

const FRAMES: usize = 8;
const HEIGHT: usize = 40;
const WIDTH: usize = 48;

/// A scratch folder unique to this test.
fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("vdm-video-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A moving colour ramp under a vertical brightness gradient, `[F, 3, H, W]` in `[0, 1]`: like
/// natural frames, its colours lie near a low-dimensional set (a GIF's 256 colours cannot hold
/// a video that fills the whole RGB cube at high PSNR, whatever the quantiser).
fn test_video() -> Video {
    let mut data = Vec::with_capacity(FRAMES * 3 * HEIGHT * WIDTH);
    for f in 0..FRAMES {
        for c in 0..3 {
            for y in 0..HEIGHT {
                for x in 0..WIDTH {
                    let t = f as f32 / FRAMES as f32;
                    let s = 0.5 + 0.5 * (x as f32 * 0.12 + y as f32 * 0.09 + 6.0 * t).sin();
                    let brightness = 0.6 + 0.4 * y as f32 / (HEIGHT - 1) as f32;
                    let v = match c {
                        0 => s,
                        1 => 0.3 + 0.5 * s * s,
                        _ => 1.0 - 0.8 * s,
                    };
                    data.push(v * brightness);
                }
            }
        }
    }
    let frames = Tensor::<4>::from_data(
        TensorData::new(data, [FRAMES, 3, HEIGHT, WIDTH]),
        &Device::flex(),
    );
    Video::new(frames).unwrap()
}

/// The frame delays of a GIF (hundredths of a second), read with the `gif` crate.
fn gif_delays(path: &Path) -> Vec<u16> {
    let mut decoder = gif::DecodeOptions::new()
        .read_info(std::fs::File::open(path).unwrap())
        .unwrap();
    let mut delays = Vec::new();
    while let Some(frame) = decoder.read_next_frame().unwrap() {
        delays.push(frame.delay);
    }
    delays
}

/// Each sample's duration in seconds, read with the `mp4` crate.
fn mp4_durations(path: &Path) -> Vec<f64> {
    let size = std::fs::metadata(path).unwrap().len();
    let reader = std::io::BufReader::new(std::fs::File::open(path).unwrap());
    let mut mp4 = mp4::Mp4Reader::read_header(reader, size).unwrap();
    let (&id, track) = mp4.tracks().iter().next().unwrap();
    let timescale = track.timescale() as f64;
    let count = mp4.sample_count(id).unwrap();
    (1..=count)
        .map(|i| mp4.read_sample(id, i).unwrap().unwrap().duration as f64 / timescale)
        .collect()
}

#[test]
fn gif_round_trips_with_every_palette_option() {
    let video = test_video();
    let reference = video.to_rgb_images().unwrap();
    let dir = scratch("gif");
    let cases = [
        ("per-frame", GifPalette::PerFrame, false, 32.0),
        ("global", GifPalette::Global, false, 35.0),
        ("dithered", GifPalette::PerFrame, true, 30.0),
        ("global-dithered", GifPalette::Global, true, 34.0),
    ];
    for (name, palette, dither, bound) in cases {
        let path = dir.join(format!("{name}.gif"));
        let options = WriteOptions {
            fps: 12.5,
            gif: GifOptions {
                palette,
                dither,
                ..GifOptions::default()
            },
            ..WriteOptions::default()
        };
        assert_eq!(video.write(&path, &options).unwrap(), VideoFormat::Gif);
        let frames = read_frames(&path).unwrap();
        assert_eq!(frames.len(), FRAMES, "{name}");
        assert_eq!(frames[0].dimensions(), (WIDTH as u32, HEIGHT as u32));
        let delays = gif_delays(&path);
        assert!(delays.iter().all(|&d| d == 8), "{name}: delays {delays:?}");
        let db = psnr(&frames, &reference).unwrap();
        let size = std::fs::metadata(&path).unwrap().len();
        eprintln!("{name}: PSNR {db:.1} dB, {size} bytes");
        assert!(db >= bound, "{name}: PSNR {db:.1} dB < {bound}");
    }
    // Only the four GIFs: no temporary files left.
    assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 4);
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn mp4_round_trips_through_openh264() {
    let video = test_video();
    let reference = video.to_rgb_images().unwrap();
    let dir = scratch("mp4");
    let path = dir.join("video.mp4");
    let options = WriteOptions {
        fps: 24.0,
        ..WriteOptions::default()
    };
    assert_eq!(video.write(&path, &options).unwrap(), VideoFormat::Mp4);
    let frames = read_frames(&path).unwrap();
    let durations = mp4_durations(&path);
    assert_eq!(frames.len(), FRAMES);
    assert_eq!(frames[0].dimensions(), (WIDTH as u32, HEIGHT as u32));
    assert!(
        durations.iter().all(|d| (d - 1.0 / 24.0).abs() < 1e-4),
        "{durations:?}"
    );
    let db = psnr(&frames, &reference).unwrap();
    let size = std::fs::metadata(&path).unwrap().len();
    eprintln!("mp4: PSNR {db:.1} dB, {size} bytes");
    assert!(db >= 31.0, "mp4: PSNR {db:.1} dB < 31");

    // Odd sizes cannot be 4:2:0: a named error, and no file.
    let odd = Video::new(video.frames.clone().narrow(3, 0, WIDTH - 1)).unwrap();
    let err = odd.write(dir.join("odd.mp4"), &options).unwrap_err();
    assert!(err.to_string().contains("frames"), "{err}");
    assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1);
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn png_frames_and_contact_sheet_are_lossless() {
    let video = test_video();
    let reference = video.to_rgb_images().unwrap();
    let dir = scratch("png");

    let frames_dir = dir.join("frames");
    let format = video.write(&frames_dir, &WriteOptions::default()).unwrap();
    assert_eq!(format, VideoFormat::PngFrames);
    for (i, expected) in reference.iter().enumerate() {
        let path = frames_dir.join(frame_file_name(i, FRAMES));
        let decoded = image::open(&path).unwrap().to_rgb8();
        assert_eq!(&decoded, expected, "{}", path.display());
    }
    assert_eq!(read_frames(&frames_dir).unwrap(), reference);
    assert_eq!(std::fs::read_dir(&frames_dir).unwrap().count(), FRAMES);
    // Writing again into the existing folder replaces the frames.
    video.write(&frames_dir, &WriteOptions::default()).unwrap();
    assert_eq!(std::fs::read_dir(&frames_dir).unwrap().count(), FRAMES);

    let sheet_path = dir.join("sheet.png");
    let options = WriteOptions {
        columns: Some(3),
        ..WriteOptions::default()
    };
    video.write(&sheet_path, &options).unwrap();
    let sheet = image::open(&sheet_path).unwrap().to_rgb8();
    assert_eq!(sheet.dimensions(), (3 * WIDTH as u32, 3 * HEIGHT as u32));
    assert_eq!(sheet, contact_sheet(&reference, Some(3)).unwrap());
    // Frame 4 is at row 1, column 1.
    let tile = image::imageops::crop_imm(
        &sheet,
        WIDTH as u32,
        HEIGHT as u32,
        WIDTH as u32,
        HEIGHT as u32,
    )
    .to_image();
    assert_eq!(tile, reference[4]);
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn bad_outputs_are_named_errors_and_leave_nothing() {
    let video = test_video();
    let dir = scratch("bad");
    let err = check_output(&dir.join("video.avi")).unwrap_err();
    assert!(err.to_string().contains("out"), "{err}");
    let err = check_output(&dir.join("missing/video.gif")).unwrap_err();
    assert!(err.to_string().contains("missing"), "{err}");
    assert_eq!(check_output(&dir.join("ok.gif")).unwrap(), VideoFormat::Gif);
    assert_eq!(
        check_output(&dir.join("frames/")).unwrap(),
        VideoFormat::PngFrames
    );

    let zero_fps = WriteOptions {
        fps: 0.0,
        ..WriteOptions::default()
    };
    let err = video.write(dir.join("a.gif"), &zero_fps).unwrap_err();
    assert!(err.to_string().contains("fps"), "{err}");
    let err = video
        .write(
            dir.join("sheet.png"),
            &WriteOptions {
                columns: Some(0),
                ..WriteOptions::default()
            },
        )
        .unwrap_err();
    assert!(err.to_string().contains("columns"), "{err}");
    // Frames into a path that is a file fail and leave the file alone.
    std::fs::write(dir.join("taken"), b"keep").unwrap();
    let err = video
        .write(dir.join("taken"), &WriteOptions::default())
        .unwrap_err();
    assert!(err.to_string().contains("taken"), "{err}");
    assert_eq!(std::fs::read(dir.join("taken")).unwrap(), b"keep");
    // Nothing else was written, not even temporary files.
    let names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, vec!["taken".to_string()]);
    std::fs::remove_dir_all(dir).unwrap();
}
