//! Decoding latents to frames: the VAE (or the patches) a chunk of frames per call, every
//! chunk checked for NaN and infinity before diffusers' mapping to `[0, 1]`.

use burn::tensor::Tensor;
use vdm_core::finite::ensure_all_finite;
use vdm_core::{Error, Result, VideoShape};
use vdm_longvideo::sampler::Control;

use super::{DEFAULT_DECODE_CHUNK, PipelineProgress, TextToVideoPipeline};
use crate::video::Video;

impl TextToVideoPipeline {
    /// Decodes latents `[1, C, F, h, w]` to frames in `[0, 1]`, `chunk` frames per VAE call
    /// (default [`DEFAULT_DECODE_CHUNK`]). Every chunk the decoder returns is checked for NaN
    /// and infinity before the `[0, 1]` clamp would hide them (one reduction and one host read
    /// per chunk).
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] naming `decode_chunk_size` when it is 0; the VAE's shape
    /// errors; [`Error::NonFinite`] naming the VAE-decoded frames; [`Error::Cancelled`] when
    /// `progress` cancels.
    pub fn decode(
        &self,
        latents: Tensor<5>,
        chunk: Option<usize>,
        progress: &mut dyn FnMut(PipelineProgress<'_>) -> Control,
    ) -> Result<Video> {
        self.decode_video(latents, chunk, true, progress)
    }

    /// [`decode`](Self::decode), the finite check of the frames on or off.
    pub(super) fn decode_video(
        &self,
        latents: Tensor<5>,
        chunk: Option<usize>,
        finite_checks: bool,
        progress: &mut dyn FnMut(PipelineProgress<'_>) -> Control,
    ) -> Result<Video> {
        let mut parts = Vec::new();
        self.decode_pieces(latents, chunk, finite_checks, progress, &mut |_, piece| {
            parts.push(piece.frames);
            Ok(())
        })?;
        Video::new(Tensor::cat(parts, 0))
    }

    /// Decodes latents `[1, C, F, h, w]` `chunk` frames per VAE call, handing every piece to
    /// `sink` with the index of its first frame (see [`decode`](Self::decode)); with
    /// `finite_checks`, [`Error::NonFinite`] naming the frames when a piece holds NaN or
    /// infinity.
    pub(super) fn decode_pieces(
        &self,
        latents: Tensor<5>,
        chunk: Option<usize>,
        finite_checks: bool,
        progress: &mut dyn FnMut(PipelineProgress<'_>) -> Control,
        sink: &mut dyn FnMut(usize, Video) -> Result<()>,
    ) -> Result<()> {
        let chunk = chunk.unwrap_or(DEFAULT_DECODE_CHUNK);
        if chunk == 0 {
            return Err(Error::invalid("decode_chunk_size", "must be ≥ 1"));
        }
        let shape = VideoShape::of("latents", &latents)?;
        if shape.batch != 1 {
            return Err(Error::shape("latents", "[1, C, F, h, w]", &latents.dims()));
        }
        let mut done = 0;
        while done < shape.frames {
            let n = chunk.min(shape.frames - done);
            let images = self.vae.decode(latents.clone().narrow(2, done, n))?;
            if finite_checks {
                // Before the clamp below, which would turn NaN and infinity into plausible
                // black or white pixels.
                ensure_all_finite(
                    &images,
                    || {
                        format!(
                            "the VAE-decoded frames {done}..{} of {}",
                            done + n,
                            shape.frames
                        )
                    },
                    "the decoder returned them from latents that were checked finite (unless \
                     the sampler's checks were off); check the VAE's weights and dtype (f16 \
                     overflows above 65504)",
                )?;
            }
            // diffusers' VideoProcessor.postprocess_video: (x / 2 + 0.5).clamp(0, 1).
            let images = images.div_scalar(2.0).add_scalar(0.5).clamp(0.0, 1.0);
            let [_, c, f, h, w] = images.dims(); // [1, 3, n, H, W]
            sink(
                done,
                Video::new(images.reshape([c, f, h, w]).swap_dims(0, 1))?,
            )?;
            done += n;
            if progress(PipelineProgress::Decode {
                done,
                total: shape.frames,
            }) == Control::Cancel
            {
                return Err(Error::Cancelled { step: done });
            }
        }
        Ok(())
    }
}
