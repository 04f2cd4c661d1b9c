//! [`FrameTokens`]: the token projections of a temporal transformer working straight on the
//! frame layout `[B·F, C, H, W]`.
//!
//! Why: the temporal transformer attends over the frames of each pixel, i.e. tokens
//! `[B·H·W, F, C]`; reading them in place through strided GEMM views (and adding the
//! processed tokens back the same way) replaces two permuted copies of the activations per
//! block, and lets chunked inference process a range of pixels at a time.

use std::ops::Range;

use burn::tensor::{Device, Tensor, TensorData};

use super::conv::add_channel_bias;
use super::host::{Host, f32s, f32s_mut, filled, host, tensor};
use super::linear::{LinearHost, Mat, MatMut, gemm_into};
use super::threads::{SharedOut, parallel};

/// The token projections of a temporal transformer working straight on the frame layout:
/// `proj_in` reads the normalised frames `[B·F, C, H, W]` as temporal tokens `[n, F, C]`
/// (token `i·F + f` = pixel `p₀ + i` of frame `f`, no permuted copy), and `proj_out` adds the
/// processed tokens back into the output frames, which start as `residual + bias`. Chunks
/// of pixels can be processed one at a time (chunked inference).
pub struct FrameTokens {
    proj_in: LinearHost,
    proj_out: LinearHost,
    normed: Host,
    out: Host,
    dims: [usize; 4],
    frames: usize,
    device: Device,
}

impl FrameTokens {
    /// `normed`, `residual`: `[B·F, C, H, W]` with `frames` frames per video; `proj_in`
    /// `C → d`, `proj_out` `d → C`. Only call when [`enabled`](crate::enabled).
    pub fn new(
        proj_in: LinearHost,
        proj_out: LinearHost,
        normed: Tensor<4>,
        residual: Tensor<4>,
        frames: usize,
    ) -> Self {
        let dims = residual.dims();
        let device = residual.device();
        let mut out = host(residual);
        if let Some(b) = proj_out.bias.as_ref().map(f32s) {
            let cs = dims[1] * dims[2] * dims[3];
            for frame in f32s_mut(&mut out).chunks_exact_mut(cs) {
                add_channel_bias(frame, b);
            }
        }
        Self {
            proj_in,
            proj_out,
            normed: host(normed),
            out,
            dims,
            frames,
            device,
        }
    }

    /// The video segments `(video, pixels, first token)` of the token sequences `seqs`
    /// (sequence `v·H·W + p` is pixel `p` of video `v`).
    fn segments(&self, seqs: Range<usize>) -> Vec<(usize, Range<usize>, usize)> {
        let s = self.dims[2] * self.dims[3];
        let mut out = Vec::new();
        let mut g = seqs.start;
        while g < seqs.end {
            let (v, p) = (g / s, g % s);
            let end = (seqs.end - v * s).min(s);
            out.push((v, p..end, g - seqs.start));
            g = v * s + end;
        }
        out
    }

    /// The tokens `[len, F, d]` of the token sequences `seqs` (of `B·H·W`).
    pub fn tokens(&self, seqs: Range<usize>) -> Tensor<3> {
        let [_, c, h, w] = self.dims;
        let (s, f_n, len) = (h * w, self.frames, seqs.len());
        let d = self.proj_in.d_out;
        let xs = f32s(&self.normed);
        let segments = self.segments(seqs);
        let out = {
            let fill = |ptr| {
                let out = SharedOut(ptr);
                parallel(f_n, 2 * f_n * len * c * d, |frames| {
                    for f in frames {
                        for (v, pixels, first) in &segments {
                            // SAFETY: frame f reads its own pixels and writes token rows i·F + f.
                            unsafe {
                                self.proj_in.apply(
                                    pixels.len(),
                                    Mat {
                                        ptr: xs
                                            .as_ptr()
                                            .add(((v * f_n + f) * c) * s + pixels.start),
                                        rs: 1,
                                        cs: s as isize,
                                    },
                                    MatMut {
                                        ptr: out.at((first * f_n + f) * d),
                                        rs: (f_n * d) as isize,
                                        cs: 1,
                                    },
                                    None,
                                    1,
                                )
                            }
                        }
                    }
                });
            };
            // SAFETY: `fill` writes every element of the buffer.
            unsafe { filled(len * f_n * d, fill) }
        };
        tensor(TensorData::new(out, [len, f_n, d]), &self.device)
    }

    /// Adds `proj_out(tokens)` (`[len, F, d]`, as [`tokens`](Self::tokens) made them for
    /// `seqs`) into the output pixels.
    pub fn write(&mut self, seqs: Range<usize>, tokens: Tensor<3>) {
        let [_, c, h, w] = self.dims;
        let (s, f_n, len) = (h * w, self.frames, seqs.len());
        let d = self.proj_out.d_in;
        let segments = self.segments(seqs);
        let td = host(tokens);
        let ts = f32s(&td);
        let out = SharedOut(f32s_mut(&mut self.out).as_mut_ptr());
        let proj_out = &self.proj_out;
        parallel(f_n, 2 * f_n * len * c * d, |frames| {
            for f in frames {
                for (v, pixels, first) in &segments {
                    // SAFETY: frame f of video v owns these output pixels.
                    unsafe {
                        gemm_into(
                            pixels.len(),
                            c,
                            d,
                            MatMut {
                                ptr: out.at(((v * f_n + f) * c) * s + pixels.start),
                                rs: 1,
                                cs: s as isize,
                            },
                            true,
                            Mat {
                                ptr: ts.as_ptr().add((first * f_n + f) * d),
                                rs: (f_n * d) as isize,
                                cs: 1,
                            },
                            proj_out.w(),
                            1,
                        );
                    }
                }
            }
        });
    }

    /// The output frames `[B·F, C, H, W]`.
    pub fn finish(self) -> Tensor<4> {
        self.out.into_tensor(&self.device)
    }
}
