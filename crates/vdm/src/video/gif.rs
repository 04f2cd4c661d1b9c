//! Animated GIF output with the `gif` crate (image-rs) and NeuQuant palettes from
//! `color_quant` (the quantiser the `gif` crate itself uses): one palette per frame (best
//! colours) or one for the whole video (no palette flicker between frames), optional
//! Floyd–Steinberg dithering (written here: neither crate dithers), looping forever.

use std::io::Write;

use color_quant::NeuQuant;
use image::RgbImage;
use vdm_core::{Error, Result};

/// Which palettes a GIF uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum GifPalette {
    /// 256 colours chosen for each frame (the default: best colours).
    #[default]
    PerFrame,
    /// 256 colours chosen once for all frames (no colour flicker; smaller files).
    Global,
}

/// How GIFs are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GifOptions {
    /// Palette choice.
    pub palette: GifPalette,
    /// Floyd–Steinberg dithering (smoother gradients, larger files).
    pub dither: bool,
    /// NeuQuant sampling factor, 1 (best, the default) to 30 (fastest). On video frames 1 is
    /// several dB better than 10 (35 against 29 dB PSNR in `tests/video_files.rs`).
    pub quantizer_speed: i32,
}

impl Default for GifOptions {
    fn default() -> Self {
        Self {
            palette: GifPalette::PerFrame,
            dither: false,
            quantizer_speed: 1,
        }
    }
}

/// GIF frame delay in hundredths of a second for `fps` (at least 2: browsers slow shorter
/// delays down to 10).
pub fn gif_delay(fps: f64) -> u16 {
    (100.0 / fps).round().clamp(2.0, u16::MAX as f64) as u16
}

/// Encodes `frames` as a looping GIF at `fps`.
///
/// # Errors
/// [`Error::InvalidConfig`] for frames over 65535 pixels a side or of different sizes;
/// [`Error::File`] naming `what` when writing fails.
pub(crate) fn encode_gif(
    out: &mut dyn Write,
    frames: &[RgbImage],
    fps: f64,
    options: &GifOptions,
    what: &str,
) -> Result<()> {
    let (w, h) = super::frame_size::frame_size(frames, "a GIF")?;
    let (w16, h16) = match (u16::try_from(w), u16::try_from(h)) {
        (Ok(a), Ok(b)) => (a, b),
        _ => {
            return Err(Error::invalid(
                "frames",
                format!("{w}×{h} exceeds GIF's 65535-pixel sides"),
            ));
        }
    };
    let speed = options.quantizer_speed.clamp(1, 30);
    let io = |e: gif::EncodingError| Error::File {
        path: what.to_string(),
        reason: e.to_string(),
    };
    let global = match options.palette {
        GifPalette::Global => Some(quantizer(frames, speed)),
        GifPalette::PerFrame => None,
    };
    let global_map = global
        .as_ref()
        .map(NeuQuant::color_map_rgb)
        .unwrap_or_default();
    let mut encoder = gif::Encoder::new(out, w16, h16, &global_map).map_err(io)?;
    encoder.set_repeat(gif::Repeat::Infinite).map_err(io)?;
    let delay = gif_delay(fps);
    for frame in frames {
        let local;
        let (quant, palette) = match &global {
            Some(q) => (q, None),
            None => {
                local = quantizer(std::slice::from_ref(frame), speed);
                (&local, Some(local.color_map_rgb()))
            }
        };
        let indices = if options.dither {
            dither(frame, quant)
        } else {
            frame
                .pixels()
                .map(|p| quant.index_of(&[p[0], p[1], p[2], 255]) as u8)
                .collect()
        };
        let mut out = match palette {
            Some(p) => gif::Frame::from_palette_pixels(w16, h16, indices, p, None),
            None => gif::Frame::from_indexed_pixels(w16, h16, indices, None),
        };
        out.delay = delay;
        encoder.write_frame(&out).map_err(io)?;
    }
    encoder.into_inner().map_err(io)?;
    Ok(())
}

/// A 256-colour NeuQuant palette trained on `frames` (every pixel, or a regular subsample of
/// at most ~1M pixels for long videos).
fn quantizer(frames: &[RgbImage], speed: i32) -> NeuQuant {
    let total: usize = frames.iter().map(|f| f.pixels().len()).sum();
    let step = total.div_ceil(1 << 20).max(1);
    let rgba: Vec<u8> = frames
        .iter()
        .flat_map(|f| f.pixels())
        .step_by(step)
        .flat_map(|p| [p[0], p[1], p[2], 255])
        .collect();
    NeuQuant::new(speed, 256, &rgba)
}

/// Floyd–Steinberg error diffusion onto `quant`'s palette (serpentine-free, left to right).
fn dither(frame: &RgbImage, quant: &NeuQuant) -> Vec<u8> {
    let (w, h) = (frame.width() as usize, frame.height() as usize);
    let mut work: Vec<[f32; 3]> = frame
        .pixels()
        .map(|p| [p[0] as f32, p[1] as f32, p[2] as f32])
        .collect();
    let mut indices = vec![0u8; w * h];
    for y in 0..h {
        for x in 0..w {
            let i = y * w + x;
            let px = work[i].map(|v| v.round().clamp(0.0, 255.0) as u8);
            let index = quant.index_of(&[px[0], px[1], px[2], 255]);
            indices[i] = index as u8;
            let chosen = quant.lookup(index).unwrap_or([0, 0, 0, 255]);
            let err: [f32; 3] = std::array::from_fn(|c| work[i][c] - chosen[c] as f32);
            let mut spread = |dx: isize, dy: usize, weight: f32| {
                let nx = x as isize + dx;
                if nx >= 0 && (nx as usize) < w && y + dy < h {
                    let j = (y + dy) * w + nx as usize;
                    for c in 0..3 {
                        work[j][c] += err[c] * weight;
                    }
                }
            };
            spread(1, 0, 7.0 / 16.0);
            spread(-1, 1, 3.0 / 16.0);
            spread(0, 1, 5.0 / 16.0);
            spread(1, 1, 1.0 / 16.0);
        }
    }
    indices
}
