//! Reading videos back as RGB frames, with the same libraries the writers use: the `mp4`
//! demuxer with OpenH264's decoder, the `gif` decoder, the `image` PNG decoder. For checking
//! what was written, and as the input side of video-to-video work.

use std::path::Path;

use image::RgbImage;
use openh264::formats::YUVSource;
use vdm_core::{Error, Result};

use super::atomic::file_error;
use super::format::VideoFormat;

/// The frames of an MP4 (H.264), a GIF, or a folder of PNG frames (in file-name order), chosen
/// by the path as [`VideoFormat::from_path`].
///
/// # Errors
/// [`Error::File`] naming the path for unreadable or malformed files;
/// [`Error::Unsupported`] for a contact sheet (its grid cannot be split back unambiguously).
pub fn read_frames(path: impl AsRef<Path>) -> Result<Vec<RgbImage>> {
    let path = path.as_ref();
    match VideoFormat::from_path(path)? {
        VideoFormat::Mp4 => read_mp4(path),
        VideoFormat::Gif => read_gif(path),
        VideoFormat::PngFrames => read_png_frames(path),
        VideoFormat::ContactSheet => Err(Error::Unsupported(format!(
            "{}: a contact sheet cannot be read back as frames",
            path.display()
        ))),
    }
}

fn read_mp4(path: &Path) -> Result<Vec<RgbImage>> {
    let fail = |e: &dyn std::fmt::Display| file_error(path, e);
    let size = std::fs::metadata(path).map_err(|e| fail(&e))?.len();
    let file = std::fs::File::open(path).map_err(|e| fail(&e))?;
    let mut mp4 =
        mp4::Mp4Reader::read_header(std::io::BufReader::new(file), size).map_err(|e| fail(&e))?;
    let (id, header) = {
        let (&id, track) = mp4
            .tracks()
            .iter()
            .find(|(_, t)| t.sequence_parameter_set().is_ok())
            .ok_or_else(|| fail(&"no H.264 track"))?;
        let mut header = Vec::new();
        annex_b(
            track.sequence_parameter_set().map_err(|e| fail(&e))?,
            &mut header,
        );
        annex_b(
            track.picture_parameter_set().map_err(|e| fail(&e))?,
            &mut header,
        );
        (id, header)
    };
    let count = mp4.sample_count(id).map_err(|e| fail(&e))?;
    let mut decoder = openh264::decoder::Decoder::new().map_err(|e| fail(&e))?;
    let mut frames = Vec::with_capacity(count as usize);
    for sample_id in 1..=count {
        let Some(sample) = mp4.read_sample(id, sample_id).map_err(|e| fail(&e))? else {
            continue;
        };
        let mut packet = if sample_id == 1 {
            header.clone()
        } else {
            Vec::new()
        };
        let mut rest: &[u8] = &sample.bytes;
        while rest.len() >= 4 {
            let n = u32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
            let nal = rest
                .get(4..4 + n)
                .ok_or_else(|| fail(&format!("sample {sample_id} is truncated")))?;
            annex_b(nal, &mut packet);
            rest = &rest[4 + n..];
        }
        if let Some(yuv) = decoder.decode(&packet).map_err(|e| fail(&e))? {
            frames.push(to_rgb(&yuv));
        }
    }
    for yuv in decoder.flush_remaining().map_err(|e| fail(&e))? {
        frames.push(to_rgb(&yuv));
    }
    Ok(frames)
}

/// Appends `nal` with an Annex B start code.
fn annex_b(nal: &[u8], out: &mut Vec<u8>) {
    out.extend_from_slice(&[0, 0, 0, 1]);
    out.extend_from_slice(nal);
}

fn to_rgb(yuv: &openh264::decoder::DecodedYUV<'_>) -> RgbImage {
    let (w, h) = yuv.dimensions();
    let mut rgb = vec![0u8; w * h * 3];
    yuv.write_rgb8(&mut rgb);
    RgbImage::from_raw(w as u32, h as u32, rgb).expect("a buffer of w × h × 3 bytes")
}

fn read_gif(path: &Path) -> Result<Vec<RgbImage>> {
    let fail = |e: &dyn std::fmt::Display| file_error(path, e);
    let mut options = gif::DecodeOptions::new();
    options.set_color_output(gif::ColorOutput::RGBA);
    let file = std::fs::File::open(path).map_err(|e| fail(&e))?;
    let mut decoder = options
        .read_info(std::io::BufReader::new(file))
        .map_err(|e| fail(&e))?;
    let (w, h) = (decoder.width() as u32, decoder.height() as u32);
    let mut frames = Vec::new();
    // Frames may cover part of the canvas; our writer's always cover all of it, and others
    // are composed onto the previous frame (disposal "keep").
    let mut canvas = RgbImage::new(w, h);
    while let Some(frame) = decoder.read_next_frame().map_err(|e| fail(&e))? {
        for (i, p) in frame.buffer.chunks_exact(4).enumerate() {
            let (x, y) = (
                frame.left as u32 + (i as u32 % frame.width as u32),
                frame.top as u32 + (i as u32 / frame.width as u32),
            );
            if p[3] > 0 && x < w && y < h {
                canvas.put_pixel(x, y, image::Rgb([p[0], p[1], p[2]]));
            }
        }
        frames.push(canvas.clone());
    }
    Ok(frames)
}

fn read_png_frames(dir: &Path) -> Result<Vec<RgbImage>> {
    let mut paths: Vec<_> = std::fs::read_dir(dir)
        .map_err(|e| file_error(dir, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e.eq_ignore_ascii_case("png")))
        .collect();
    paths.sort();
    paths
        .iter()
        .map(|p| {
            image::open(p)
                .map(|i| i.to_rgb8())
                .map_err(|e| file_error(p, e))
        })
        .collect()
}
