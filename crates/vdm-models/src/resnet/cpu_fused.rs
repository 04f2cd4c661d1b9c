//! diffusers' `ResnetBlock2D` fused on the flex backend ([`resnet`], [`resnet_supported`]):
//! GroupNorm + SiLU in one pass, the time embedding and biases written as the convolutions'
//! initial values, the shortcut accumulated into the output.
//!
//! It lives beside [`ResnetBlock2D`](super::ResnetBlock2D) rather than in the kernel layer
//! (the `vdm-kernels` crate, reached through [`crate::cpu`]) because it is glue between the
//! module and the kernels: the kernel layer imports no model module.

use burn::tensor::{Tensor, TensorData};

use crate::cpu::{
    SharedOut, add_channel_bias, conv_host, conv2d_output, f32s, filled, gemm_threads, group_norm,
    host, parallel, tensor, with_scratch,
};

/// diffusers' `ResnetBlock2D` on the flex backend:
/// `(shortcut(x) + conv2(silu(norm2(conv1(silu(norm1(x))) + temb)))) / scale` with fused
/// GroupNorm + SiLU, the time embedding and biases written as the convolutions' initial
/// values and the shortcut accumulated into the output. `temb` is the projected time
/// embedding `[N, C_out]`. Only call when [`enabled`] and [`resnet_supported`].
pub(crate) fn resnet(
    block: &crate::resnet::ResnetBlock2D,
    x: Tensor<4>,
    temb: Option<Tensor<2>>,
) -> Tensor<4> {
    let [n, cin, h, w] = x.dims();
    let conv1 = conv_host(&block.conv1);
    let conv2 = conv_host(&block.conv2);
    let shortcut = block.conv_shortcut.as_ref().map(conv_host);
    let cout = conv1.cout;
    let s = h * w;
    let device = x.device();
    let a = group_norm(&block.norm1, x.clone(), 1, true);
    let ad = host(a);
    let xd = host(x);
    let td = temb.map(host);
    let (xs, as_) = (f32s(&xd), f32s(&ad));
    let per_call = conv1.images_per_call(n, [h, w]);
    let calls = n.div_ceil(per_call);
    let gemm_threads = gemm_threads(calls);
    let cost = 2 * n * cout * s * 9 * (cin + cout);
    let images = |call: usize| call * per_call..((call + 1) * per_call).min(n);
    // h = conv1(a) + b1 + temb
    let hid = {
        let fill = |ptr| {
            let out = SharedOut(ptr);
            parallel(calls, cost / 2, |items| {
                with_scratch(|scratch| {
                    for images in items.map(images) {
                        // SAFETY: these images own their output block.
                        unsafe {
                            let o = std::slice::from_raw_parts_mut(
                                out.at(images.start * cout * s),
                                images.len() * cout * s,
                            );
                            for (i, image) in images.clone().zip(o.chunks_exact_mut(cout * s)) {
                                let t = td.as_ref().map(|t| &f32s(t)[i * cout..(i + 1) * cout]);
                                conv1.init_bias(image, t);
                            }
                            conv1.accumulate_images(
                                &as_[images.start * cin * s..images.end * cin * s],
                                images.len(),
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
        unsafe { filled(n * cout * s, fill) }
    };
    let b = group_norm(
        &block.norm2,
        tensor::<4>(TensorData::new(hid, [n, cout, h, w]), &device),
        1,
        true,
    );
    let bd = host(b);
    let bs = f32s(&bd);
    let scale = block.output_scale_factor;
    // out = shortcut(x) + conv2(b) + b2
    let out = {
        let fill = |ptr| {
            let out = SharedOut(ptr);
            parallel(calls, cost / 2, |items| {
                with_scratch(|scratch| {
                    for images in items.map(images) {
                        // SAFETY: these images own their output block.
                        unsafe {
                            let o = std::slice::from_raw_parts_mut(
                                out.at(images.start * cout * s),
                                images.len() * cout * s,
                            );
                            let xi = &xs[images.start * cin * s..images.end * cin * s];
                            match &shortcut {
                                Some(sc) => {
                                    for image in o.chunks_exact_mut(cout * s) {
                                        sc.init_bias(image, None);
                                    }
                                    sc.accumulate_images(
                                        xi,
                                        images.len(),
                                        [h, w],
                                        o.as_mut_ptr(),
                                        scratch,
                                        gemm_threads,
                                    );
                                }
                                None => o.copy_from_slice(xi),
                            }
                            if let Some(b2) = conv2.bias.as_ref().map(f32s) {
                                for image in o.chunks_exact_mut(cout * s) {
                                    add_channel_bias(image, b2);
                                }
                            }
                            conv2.accumulate_images(
                                &bs[images.start * cout * s..images.end * cout * s],
                                images.len(),
                                [h, w],
                                o.as_mut_ptr(),
                                scratch,
                                gemm_threads,
                            );
                            if scale != 1.0 {
                                let inv = (1.0 / scale) as f32;
                                for v in o.iter_mut() {
                                    *v *= inv;
                                }
                            }
                        }
                    }
                })
            });
        };
        // SAFETY: `fill` writes every element of the buffer.
        unsafe { filled(n * cout * s, fill) }
    };
    tensor(TensorData::new(out, [n, cout, h, w]), &device)
}

/// Whether [`resnet`] covers `block` on input dims `dims`: size-preserving convolutions and a
/// pointwise shortcut.
pub(crate) fn resnet_supported(block: &crate::resnet::ResnetBlock2D, dims: [usize; 4]) -> bool {
    let [n, _, h, w] = dims;
    let cout = block.conv1.weight.dims()[0];
    let same =
        |conv: &burn::nn::conv::Conv2d, d: [usize; 4]| conv2d_output(conv, d) == Some([h, w]);
    same(&block.conv1, dims)
        && same(&block.conv2, [n, cout, h, w])
        && block
            .conv_shortcut
            .as_ref()
            .is_none_or(|c| c.weight.dims()[2..] == [1, 1] && c.stride == [1, 1] && same(c, dims))
}
