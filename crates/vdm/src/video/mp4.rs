//! MP4 / H.264 output without a system ffmpeg: Cisco's OpenH264 encoder (the `openh264` crate,
//! compiled from its bundled C++ source by `cc`, so nothing is downloaded) and the pure-Rust
//! `mp4` muxer.
//!
//! Why these: OpenH264 is the one H.264 encoder with maintained Rust bindings that builds from
//! source offline (x264 bindings need a system library; `rav1e` makes AV1, which many players
//! and editors still lack); the `mp4` crate writes the plain `moov` + `mdat` file every player
//! reads. The encoder runs at constant quality-oriented bitrate control
//! ([`Mp4Options::bits_per_pixel`]); frames are converted to YUV 4:2:0 by the encoder crate
//! (BT.601), so width and height must be even.

use std::io::{Seek, Write};

use image::RgbImage;
use mp4::{
    AvcConfig, FourCC, MediaConfig, Mp4Config, Mp4Sample, Mp4Writer, TrackConfig, TrackType,
};
use openh264::OpenH264API;
use openh264::encoder::{BitRate, Encoder, EncoderConfig, FrameRate, RateControlMode};
use openh264::formats::{RgbSliceU8, YUVBuffer};
use vdm_core::{Error, Result};

/// How MP4 files are encoded.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Mp4Options {
    /// Target bits per pixel per frame (bitrate = this × width × height × fps, at least
    /// 10 kbit/s); 0.5 by default (about 0.7 Mbit/s at 576 × 320 and 8 fps).
    pub bits_per_pixel: f64,
}

impl Default for Mp4Options {
    fn default() -> Self {
        Self {
            bits_per_pixel: 0.5,
        }
    }
}

/// The media timescale: ticks per second of the sample times.
const TIMESCALE: u32 = 90_000;

/// Encodes `frames` as H.264 in an MP4 container at `fps`.
///
/// # Errors
/// [`Error::InvalidConfig`] naming `frames` for odd or over-large sizes and `bits_per_pixel`
/// unless it is finite and positive; [`Error::File`] naming `what` for encoder or I/O errors.
pub(crate) fn encode_mp4<W: Write + Seek>(
    out: W,
    frames: &[RgbImage],
    fps: f64,
    options: &Mp4Options,
    what: &str,
) -> Result<()> {
    let (w, h) = super::frame_size::frame_size(frames, "an MP4")?;
    if !w.is_multiple_of(2) || !h.is_multiple_of(2) || w > u16::MAX as u32 || h > u16::MAX as u32 {
        return Err(Error::invalid(
            "frames",
            format!("H.264 (4:2:0) needs even sides of at most 65535 pixels, got {w}×{h}"),
        ));
    }
    vdm_core::error::ensure_positive("bits_per_pixel", options.bits_per_pixel)?;
    let fail = |e: &dyn std::fmt::Display| Error::File {
        path: what.to_string(),
        reason: e.to_string(),
    };
    let bitrate = (options.bits_per_pixel * w as f64 * h as f64 * fps).clamp(10_000.0, 2e9);
    let config = EncoderConfig::new()
        .bitrate(BitRate::from_bps(bitrate as u32))
        .max_frame_rate(FrameRate::from_hz(fps as f32))
        .rate_control_mode(RateControlMode::Quality)
        .skip_frames(false);
    let mut encoder =
        Encoder::with_api_config(OpenH264API::from_source(), config).map_err(|e| fail(&e))?;

    let mut samples: Vec<(Vec<u8>, bool)> = Vec::with_capacity(frames.len());
    let (mut sps, mut pps) = (None, None);
    for frame in frames {
        let yuv =
            YUVBuffer::from_rgb_source(RgbSliceU8::new(frame.as_raw(), (w as usize, h as usize)));
        let stream = encoder.encode(&yuv).map_err(|e| fail(&e))?;
        let mut sample = Vec::new();
        let mut sync = false;
        for l in 0..stream.num_layers() {
            let layer = stream.layer(l).expect("layer index below num_layers");
            for n in 0..layer.nal_count() {
                let nal = strip_start_code(layer.nal_unit(n).expect("NAL index below nal_count"));
                match nal.first().map(|b| b & 0x1f) {
                    Some(7) => sps = Some(nal.to_vec()),
                    Some(8) => pps = Some(nal.to_vec()),
                    Some(kind) => {
                        sync |= kind == 5;
                        // AVCC: each NAL unit prefixed by its 4-byte big-endian length.
                        sample.extend_from_slice(&(nal.len() as u32).to_be_bytes());
                        sample.extend_from_slice(nal);
                    }
                    None => {}
                }
            }
        }
        samples.push((sample, sync));
    }
    let (Some(sps), Some(pps)) = (sps, pps) else {
        return Err(fail(&"the encoder produced no SPS / PPS"));
    };

    let mp4_config = Mp4Config {
        major_brand: FourCC::from(*b"isom"),
        minor_version: 512,
        compatible_brands: [*b"isom", *b"iso2", *b"avc1", *b"mp41"]
            .map(FourCC::from)
            .to_vec(),
        timescale: 1000,
    };
    let mut writer = Mp4Writer::write_start(out, &mp4_config).map_err(|e| fail(&e))?;
    writer
        .add_track(&TrackConfig {
            track_type: TrackType::Video,
            timescale: TIMESCALE,
            language: "und".into(),
            media_conf: MediaConfig::AvcConfig(AvcConfig {
                width: w as u16,
                height: h as u16,
                seq_param_set: sps,
                pic_param_set: pps,
            }),
        })
        .map_err(|e| fail(&e))?;
    // Frame i starts at round(i · TIMESCALE / fps); durations are the differences, so the
    // times never drift for fps that do not divide the timescale.
    let start = |i: usize| (i as f64 * TIMESCALE as f64 / fps).round() as u64;
    for (i, (bytes, is_sync)) in samples.into_iter().enumerate() {
        let sample = Mp4Sample {
            start_time: start(i),
            duration: (start(i + 1) - start(i)) as u32,
            rendering_offset: 0,
            is_sync,
            bytes: bytes.into(),
        };
        writer.write_sample(1, &sample).map_err(|e| fail(&e))?;
    }
    writer.write_end().map_err(|e| fail(&e))?;
    Ok(())
}

/// A NAL unit without its Annex B start code (`00 00 01` or `00 00 00 01`).
fn strip_start_code(nal: &[u8]) -> &[u8] {
    if nal.starts_with(&[0, 0, 0, 1]) {
        &nal[4..]
    } else if nal.starts_with(&[0, 0, 1]) {
        &nal[3..]
    } else {
        nal
    }
}
