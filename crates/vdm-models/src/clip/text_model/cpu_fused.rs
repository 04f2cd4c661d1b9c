//! One CLIP encoder layer on the flex backend's fused kernels ([`encoder_layer`]): the
//! LayerNorms, the projections with their biases and residuals folded into the GEMMs, and the
//! MLP's activation in place, on every core; the causal attention itself stays Burn's.
//!
//! Why: on the tensor ops each `Linear` is a GEMM plus a single-threaded bias pass, each
//! residual another pass, and quick GELU three single-threaded passes (one through libm
//! `expf`) over `[L, intermediate_size]`, each allocating. It lives beside the text model
//! rather than in the kernel layer because it is glue between the module and the kernels.

use burn::tensor::{Tensor, TensorData};

use super::CLIPEncoderLayer;
use crate::cpu::{
    Activation, InitRows, activate_in_place, f32s, host, layer_norm, linear_rows, project_host,
    tensor,
};

/// [`CLIPEncoderLayer::forward`] on the kernels: `x + out_proj(attn(ln1(x)))`, then
/// `+ fc2(act(fc1(ln2(·))))`; `eps` is the LayerNorms' epsilon. Results agree with the tensor
/// ops to float rounding. Only call when [`crate::cpu::enabled`].
///
/// # Shapes
/// - `x`: `[B, L, D]`
/// - output: `[B, L, D]`
pub(crate) fn encoder_layer(
    layer: &CLIPEncoderLayer,
    eps: f64,
    act: Activation,
    x: Tensor<3>,
) -> Tensor<3> {
    let [b, l, d] = x.dims();
    let rows = b * l;
    let device = x.device();
    let attn = &layer.self_attn;
    let mlp = &layer.mlp;

    // Attention: the three projections side by side in one buffer, then Burn's causal
    // attention on views of it, then `out_proj` + bias + residual in one GEMM.
    let normed = host(layer_norm(&layer.layer_norm1, eps, x.clone()));
    let qkv = project_host(
        &[&attn.q_proj, &attn.k_proj, &attn.v_proj],
        f32s(&normed),
        rows,
    );
    let qkv: Tensor<3> = tensor(TensorData::new(qkv, [b, l, 3 * d]), &device);
    let part = |i: usize| qkv.clone().slice([0..b, 0..l, i * d..(i + 1) * d]);
    let heads = host(attn.attend(part(0), part(1), part(2)));
    let xs = host(x);
    let x1 = linear_rows(
        &attn.out_proj,
        f32s(&heads),
        rows,
        Some(InitRows::rows(f32s(&xs), d)),
    );

    // MLP: fc1 + bias, the activation in place, fc2 + bias + residual.
    let x1: Tensor<3> = tensor(TensorData::new(x1, [b, l, d]), &device);
    let normed = host(layer_norm(&layer.layer_norm2, eps, x1.clone()));
    let mut hidden = linear_rows(&mlp.fc1, f32s(&normed), rows, None);
    activate_in_place(&mut hidden, act);
    let x1s = host(x1);
    let out = linear_rows(&mlp.fc2, &hidden, rows, Some(InitRows::rows(f32s(&x1s), d)));
    tensor(TensorData::new(out, [b, l, d]), &device)
}

#[cfg(test)]
mod tests {
    use burn::tensor::{Device, Int, Tensor};

    use crate::clip::{CLIPTextConfig, CLIPTextModel};
    use crate::cpu::FORCE_BURN;

    #[test]
    fn fused_layers_match_the_tensor_ops() {
        let device = Device::flex();
        for act in ["quick_gelu", "gelu"] {
            let config = CLIPTextConfig {
                vocab_size: 40,
                hidden_size: 64,
                intermediate_size: 256,
                num_hidden_layers: 2,
                num_attention_heads: 4,
                hidden_act: act.into(),
                eos_token_id: Some(39),
                ..CLIPTextConfig::default()
            };
            let model = CLIPTextModel::new(&config, &device).unwrap();
            let ids = Tensor::<2, Int>::from_ints(
                [[38, 3, 17, 5, 39, 39], [38, 9, 2, 39, 0, 0]],
                &device,
            );
            let fused = model.hidden_states(ids.clone()).unwrap();
            let last = model.forward(ids.clone()).unwrap().last_hidden_state;
            FORCE_BURN.with(|f| f.set(true));
            let plain = model.hidden_states(ids.clone()).unwrap();
            let plain_last = model.forward(ids).unwrap().last_hidden_state;
            FORCE_BURN.with(|f| f.set(false));
            let pairs = fused.into_iter().zip(plain).chain([(last, plain_last)]);
            for (i, (a, b)) in pairs.enumerate() {
                let scale: f32 = b.clone().abs().max().into_scalar();
                let diff: f32 = (a - b).abs().max().into_scalar();
                assert!(
                    diff <= 1e-5 * scale.max(1.0),
                    "{act}, hidden state {i}: max |diff| {diff} (values up to {scale})"
                );
            }
        }
    }
}
