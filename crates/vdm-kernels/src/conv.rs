//! Convolutions: host copies of a 2-D convolution's weight and bias ([`ConvHost`]) run as
//! im2col per image into a per-thread buffer + GEMM written in place, or in the Winograd
//! `F(2×2, 3×3)` form (`conv/winograd.rs`) for 3×3, stride-1, padding-1 convolutions
//! ([`conv2d`]); the frame-shift sum
//! of ModelScope's temporal convolution ([`temporal_conv`]); and the per-thread buffers the
//! kernels keep between calls ([`Scratch`], [`with_scratch`]; the feed-forward uses them too).
//!
//! Why: flex's convolution allocates its im2col and output buffers per call and adds bias,
//! time embedding and residual in separate passes; here they are the GEMM's initial values,
//! and buffers are reused (fresh ones would be page-faulted in again on every call).

use burn::tensor::{Tensor, TensorData};

use super::host::{Host, f32s, filled, host, tensor};
use super::linear::{Mat, MatMut, gemm_into};
use super::norm::{GroupNormHost, group_norm};
use super::threads::{SharedOut, gemm_threads, parallel, threads};

mod winograd;

// ---------------------------------------------------------------------------------------------
// Convolutions: im2col per image into a per-thread buffer + GEMM, written in place.
// ---------------------------------------------------------------------------------------------

/// Host copy of a 2-D convolution (Burn's `Conv2d` layout) with groups 1, dilation 1 and
/// symmetric padding (what the UNets use).
pub struct ConvHost {
    weight: Host,
    /// The bias `[cout]`, if any.
    pub bias: Option<Host>,
    /// Output channels.
    pub cout: usize,
    cin: usize,
    kernel: [usize; 2],
    stride: [usize; 2],
    pad: [usize; 2],
    /// The Winograd form of a 3×3, stride-1, padding-1 convolution.
    winograd: Option<winograd::Winograd>,
}

/// Per-thread buffers of the kernels, kept between calls (see [`with_scratch`]).
#[derive(Default)]
pub struct Scratch {
    /// im2col columns.
    cols: Vec<f32>,
    winograd: winograd::Scratch,
    /// Feed-forward blocks: normed input, GEGLU input, GEGLU output.
    pub ff: [Vec<f32>; 3],
}

/// The first `len` values of `buf`, grown (never shrunk) as needed.
pub fn sized(buf: &mut Vec<f32>, len: usize) -> &mut [f32] {
    if buf.len() < len {
        buf.resize(len, 0.0);
    }
    &mut buf[..len]
}

thread_local! {
    /// Each thread's kernel buffers, kept between calls (a few MiB): fresh ones would be
    /// page-faulted in again on every call.
    static SCRATCH: std::cell::RefCell<Scratch> = std::cell::RefCell::default();
}

/// `f` with this thread's [`Scratch`] (fresh buffers when a nested job on this thread holds
/// them).
pub fn with_scratch<R>(f: impl FnOnce(&mut Scratch) -> R) -> R {
    SCRATCH.with(|cell| match cell.try_borrow_mut() {
        Ok(mut scratch) => {
            let r = f(&mut scratch);
            scratch.trim();
            r
        }
        Err(_) => f(&mut Scratch::default()),
    })
}

/// Values a kept buffer may hold (16 MiB); larger ones (im2col columns of a large image) are
/// freed after the call.
const KEEP: usize = 1 << 22;

/// Frees `buf` if it holds more than [`KEEP`] values.
fn trim(buf: &mut Vec<f32>) {
    if buf.capacity() > KEEP {
        *buf = Vec::new();
    }
}

impl Scratch {
    /// Frees the buffers that grew beyond [`KEEP`].
    fn trim(&mut self) {
        trim(&mut self.cols);
        self.ff.iter_mut().for_each(trim);
        self.winograd.trim();
    }
}

/// Output size on `[N, C, H, W]` of a convolution (groups 1, dilation 1) with weight dims
/// `[C_out, C_in, kh, kw]`, `stride` and symmetric padding `pad` (rows, columns), if these
/// kernels cover it (and `C` matches).
pub fn conv2d_output(
    weight: [usize; 4],
    stride: [usize; 2],
    pad: [usize; 2],
    dims: [usize; 4],
) -> Option<[usize; 2]> {
    let [_, cin, kh, kw] = weight;
    if dims[1] != cin || dims.contains(&0) {
        return None;
    }
    out_size([dims[2], dims[3]], [kh, kw], stride, pad)
}

fn out_size(
    [h, w]: [usize; 2],
    kernel: [usize; 2],
    stride: [usize; 2],
    pad: [usize; 2],
) -> Option<[usize; 2]> {
    let size =
        |n: usize, k: usize, s: usize, p: usize| (n + 2 * p).checked_sub(k).map(|v| v / s + 1);
    let oh = size(h, kernel[0], stride[0], pad[0])?;
    let ow = size(w, kernel[1], stride[1], pad[1])?;
    (oh > 0 && ow > 0).then_some([oh, ow])
}

impl ConvHost {
    /// Host copy of the convolution with `weight` `[C_out, C_in, kh, kw]`, `bias` `[C_out]`,
    /// `stride` and symmetric padding `pad` (rows, columns); groups 1, dilation 1 (check
    /// [`conv2d_output`] first).
    pub fn new(
        weight: Tensor<4>,
        bias: Option<Tensor<1>>,
        stride: [usize; 2],
        pad: [usize; 2],
    ) -> Self {
        let [cout, cin, kh, kw] = weight.dims();
        let weight = host(weight);
        let winograd = ([kh, kw] == [3, 3] && stride == [1, 1] && pad == [1, 1])
            .then(|| winograd::Winograd::new(f32s(&weight), cout, cin));
        Self {
            weight,
            bias: bias.map(host),
            cout,
            cin,
            kernel: [kh, kw],
            stride,
            pad,
            winograd,
        }
    }

    /// Images per [`accumulate_images`](Self::accumulate_images) call for `n` images of
    /// `h × w`: several for the Winograd form (wider GEMMs), else one.
    pub fn images_per_call(&self, n: usize, hw: [usize; 2]) -> usize {
        match self.winograd {
            Some(_) => winograd::Winograd::images_per_call(n, hw, threads()),
            None => 1,
        }
    }

    /// `out += conv(x)` for `imgs` consecutive images `x` `[imgs, cin, h, w]` into `out`
    /// `[imgs, cout, oh, ow]` (already initialised).
    ///
    /// # Safety
    /// `out` holds `imgs·cout·oh·ow` initialised values owned by the calling thread.
    pub unsafe fn accumulate_images(
        &self,
        x: &[f32],
        imgs: usize,
        [h, w]: [usize; 2],
        out: *mut f32,
        scratch: &mut Scratch,
        threads: usize,
    ) {
        // SAFETY (both arms): forwarded from the caller.
        if let Some(wg) = &self.winograd {
            unsafe { wg.accumulate(x, imgs, [h, w], out, &mut scratch.winograd, threads) };
            return;
        }
        let [oh, ow] = self.out_size(h, w).expect("checked by the caller");
        let (per_in, per_out) = (self.cin * h * w, self.cout * oh * ow);
        for i in 0..imgs {
            unsafe {
                self.accumulate(
                    &x[i * per_in..(i + 1) * per_in],
                    [h, w],
                    out.add(i * per_out),
                    &mut scratch.cols,
                    threads,
                )
            };
        }
    }

    /// Output height and width for an `h × w` input.
    fn out_size(&self, h: usize, w: usize) -> Option<[usize; 2]> {
        out_size([h, w], self.kernel, self.stride, self.pad)
    }

    fn is_pointwise(&self) -> bool {
        self.kernel == [1, 1] && self.stride == [1, 1] && self.pad == [0, 0]
    }

    /// `out += conv(x)` for one image `x` `[cin, h, w]` into `out` `[cout, oh, ow]`
    /// (already initialised), using `cols` as the im2col buffer.
    ///
    /// # Safety
    /// `out` holds `cout·oh·ow` initialised values owned by the calling thread.
    unsafe fn accumulate(
        &self,
        x: &[f32],
        [h, w]: [usize; 2],
        out: *mut f32,
        cols: &mut Vec<f32>,
        threads: usize,
    ) {
        let [oh, ow] = self.out_size(h, w).expect("checked by the caller");
        let s = oh * ow;
        let k = self.cin * self.kernel[0] * self.kernel[1];
        let rhs = if self.is_pointwise() {
            Mat::rows(x, s)
        } else {
            self.im2col(x, [h, w], [oh, ow], cols);
            Mat::rows(cols, s)
        };
        // SAFETY: caller's contract; weight [cout, cin·kh·kw] matches the im2col rows.
        unsafe {
            gemm_into(
                self.cout,
                s,
                k,
                MatMut::rows(out, s),
                true,
                Mat::rows(f32s(&self.weight), k),
                rhs,
                threads,
            )
        }
    }

    /// `cols[(c, a, b), (y, x)] = x[c, y·sh + a − ph, x·sw + b − pw]` (0 outside).
    fn im2col(&self, x: &[f32], [h, w]: [usize; 2], [oh, ow]: [usize; 2], cols: &mut Vec<f32>) {
        let [kh, kw] = self.kernel;
        let [sh, sw] = self.stride;
        let [ph, pw] = self.pad;
        let s = oh * ow;
        cols.resize(self.cin * kh * kw * s, 0.0);
        for c in 0..self.cin {
            let plane = &x[c * h * w..(c + 1) * h * w];
            for a in 0..kh {
                for b in 0..kw {
                    let row = ((c * kh + a) * kw + b) * s;
                    let dst = &mut cols[row..row + s];
                    // Output columns whose input column ox·sw + b − pw is inside the image.
                    let x_lo = pw.saturating_sub(b).div_ceil(sw).min(ow);
                    let x_hi = if w + pw > b {
                        ((w + pw - b - 1) / sw + 1).min(ow)
                    } else {
                        0
                    };
                    for oy in 0..oh {
                        let d = &mut dst[oy * ow..(oy + 1) * ow];
                        let y = (oy * sh + a) as isize - ph as isize;
                        if y < 0 || y >= h as isize || x_lo >= x_hi {
                            d.fill(0.0);
                            continue;
                        }
                        let src = &plane[y as usize * w..(y as usize + 1) * w];
                        d[..x_lo].fill(0.0);
                        d[x_hi..].fill(0.0);
                        let x0 = x_lo * sw + b - pw;
                        if sw == 1 {
                            d[x_lo..x_hi].copy_from_slice(&src[x0..x0 + (x_hi - x_lo)]);
                        } else {
                            for (i, v) in d[x_lo..x_hi].iter_mut().enumerate() {
                                *v = src[x0 + i * sw];
                            }
                        }
                    }
                }
            }
        }
    }

    /// `out[o, ·] = bias[o]` (+ `extra[o]`) for one image.
    pub fn init_bias(&self, out: &mut [f32], extra: Option<&[f32]>) {
        let bias = self.bias.as_ref().map(f32s);
        for (o, row) in out.chunks_exact_mut(out.len() / self.cout).enumerate() {
            row.fill(bias.map_or(0.0, |b| b[o]) + extra.map_or(0.0, |e| e[o]));
        }
    }
}

/// Adds `bias[c]` to every row `c` of `[C, S]`.
pub fn add_channel_bias(out: &mut [f32], bias: &[f32]) {
    let s = out.len() / bias.len();
    for (row, &b) in out.chunks_exact_mut(s).zip(bias) {
        for v in row {
            *v += b;
        }
    }
}

/// The convolution `cv` (as Burn's `Conv2d`) on `x` `[N, C, H, W]`, one image per work item.
/// Only call when [`enabled`](crate::enabled) and [`conv2d_output`] is `Some`.
pub fn conv2d(cv: &ConvHost, x: Tensor<4>) -> Tensor<4> {
    let [n, c, h, w] = x.dims();
    let [oh, ow] = cv.out_size(h, w).expect("checked by conv2d_output");
    let device = x.device();
    let xd = host(x);
    let xs = f32s(&xd);
    let per_out = cv.cout * oh * ow;
    let per_call = cv.images_per_call(n, [h, w]);
    let calls = n.div_ceil(per_call);
    let gemm_threads = gemm_threads(calls);
    let cost = 2 * n * per_out * c * cv.kernel[0] * cv.kernel[1];
    let out = {
        let fill = |ptr| {
            let out = SharedOut(ptr);
            parallel(calls, cost, |items| {
                with_scratch(|scratch| {
                    for call in items {
                        let images = call * per_call..((call + 1) * per_call).min(n);
                        let imgs = images.len();
                        // SAFETY: these images own their output block.
                        unsafe {
                            let o = std::slice::from_raw_parts_mut(
                                out.at(images.start * per_out),
                                imgs * per_out,
                            );
                            for image in o.chunks_exact_mut(per_out) {
                                cv.init_bias(image, None);
                            }
                            cv.accumulate_images(
                                &xs[images.start * c * h * w..images.end * c * h * w],
                                imgs,
                                [h, w],
                                o.as_mut_ptr(),
                                scratch,
                                gemm_threads,
                            );
                        }
                    }
                })
            });
        };
        // SAFETY: `fill` writes every element of the buffer.
        unsafe { filled(n * per_out, fill) }
    };
    tensor(TensorData::new(out, [n, cv.cout, oh, ow]), &device)
}

/// One stage of [`temporal_conv`]: GroupNorm across the frames of a video + SiLU, then a
/// `(3, 1, 1)` convolution over frames with zero padding.
pub struct TemporalConvStage {
    /// The GroupNorm (its statistics pool the frames of each video).
    pub norm: GroupNormHost,
    /// The convolution's weight `[C, C, 3, 1, 1]`.
    pub weight: Tensor<5>,
    /// The convolution's bias `[C]`, if any.
    pub bias: Option<Tensor<1>>,
}

/// ModelScope's `TemporalConvLayer` on frames folded into the batch (`x` `[B·F, C, H, W]`):
/// four stages of GroupNorm across the frames of a video + SiLU + a `(3, 1, 1)` convolution
/// over frames with zero padding, plus the input. Each stage's output frame is
/// `bias + W₁·a[f] + W₀·a[f−1] + W₂·a[f+1]` (`W_k` read in place from the `[C, C, 3, 1, 1]`
/// weight), accumulated by GEMM straight into the output. Only call when
/// [`enabled`](crate::enabled).
pub fn temporal_conv(stages: [TemporalConvStage; 4], x: Tensor<4>, frames: usize) -> Tensor<4> {
    let dims = x.dims();
    let [n, c, h, w] = dims;
    let s = h * w;
    let device = x.device();
    let xd = host(x.clone());
    let mut hidden = x;
    let gemm_threads = gemm_threads(n);
    for (i, stage) in stages.into_iter().enumerate() {
        let ad = host(group_norm(&stage.norm, hidden, frames, true));
        let a = f32s(&ad);
        let wd = host(stage.weight);
        let ws = f32s(&wd);
        let bias = stage.bias.map(host);
        let last = i == 3;
        let out = {
            let fill = |ptr| {
                let out = SharedOut(ptr);
                parallel(n, 6 * n * c * c * s, |items| {
                    for item in items {
                        let f = item % frames;
                        // SAFETY: frame `item` owns its output block; W_k is the strided view of
                        // taps k of the weight [C_out, C_in, 3].
                        unsafe {
                            let o = std::slice::from_raw_parts_mut(out.at(item * c * s), c * s);
                            if last {
                                o.copy_from_slice(&f32s(&xd)[item * c * s..(item + 1) * c * s]);
                            } else {
                                o.fill(0.0);
                            }
                            if let Some(b) = bias.as_ref().map(f32s) {
                                add_channel_bias(o, b);
                            }
                            for k in 0..3 {
                                let src = match k {
                                    0 if f == 0 => continue,
                                    0 => item - 1,
                                    1 => item,
                                    _ if f + 1 == frames => continue,
                                    _ => item + 1,
                                };
                                gemm_into(
                                    c,
                                    s,
                                    c,
                                    MatMut::rows(o.as_mut_ptr(), s),
                                    true,
                                    Mat {
                                        ptr: ws.as_ptr().add(k),
                                        rs: 3 * c as isize,
                                        cs: 3,
                                    },
                                    Mat::rows(&a[src * c * s..(src + 1) * c * s], s),
                                    gemm_threads,
                                );
                            }
                        }
                    }
                });
            };
            // SAFETY: `fill` writes every element of the buffer.
            unsafe { filled(n * c * s, fill) }
        };
        hidden = tensor(TensorData::new(out, dims), &device);
    }
    hidden
}
