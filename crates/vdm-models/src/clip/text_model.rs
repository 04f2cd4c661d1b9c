//! transformers' `CLIPTextModel` (`models/clip/modeling_clip.py`): the text tower of CLIP that
//! Stable Diffusion 1.x (OpenAI CLIP ViT-L/14), ModelScope / ZeroScope and SD 2.x (OpenCLIP-H)
//! condition on.
//!
//! Pre-LayerNorm transformer: token + learned position embeddings, `num_hidden_layers` layers of
//! causal multi-head self-attention and an MLP, each with a residual, then `final_layer_norm`.
//! The pipelines pass no padding mask: padding tokens attend causally like any other.
//!
//! Field names are the checkpoint keys. transformers 5 writes them as they are here
//! (`embeddings.token_embedding.weight`); earlier versions and the hub's SD folders prefix them
//! with `text_model.`, which [`crate::keymap`] removes, and carry a `position_ids` buffer, which
//! the loader ignores.

mod cpu_fused;

use std::path::Path;

use burn::module::Module;
use burn::nn::{Embedding, EmbeddingConfig, LayerNorm, LayerNormConfig, Linear, LinearConfig};
use burn::tensor::activation::{gelu, sigmoid};
use burn::tensor::module::attention;
use burn::tensor::ops::AttentionModuleOptions;
use burn::tensor::{Device, Int, Tensor, TensorData};
use vdm_core::{Error, Result};

use super::config::{CLIPTextConfig, HiddenAct};
use crate::cpu;
use crate::keymap::{DIFFUSERS_KEY_REMAP, SKIP_ENUM_VARIANTS};
use crate::loading::{KeyRemap, LoadOptions, LoadReport, find_weight_file, load_safetensors};

/// File names [`CLIPTextModel::from_pretrained`] looks for in a `text_encoder/` folder, in
/// order.
pub const WEIGHT_FILE_NAMES: &[&str] = &[
    "model.safetensors",
    "model.fp16.safetensors",
    "model.bf16.safetensors",
];

/// Token and position embeddings (`embeddings.*`).
#[derive(Module, Debug)]
pub struct CLIPTextEmbeddings {
    /// `[vocab_size, D]`.
    pub token_embedding: Embedding,
    /// `[max_position_embeddings, D]`.
    pub position_embedding: Embedding,
}

/// Multi-head self-attention with biased projections (`self_attn.*`).
#[derive(Module, Debug)]
pub struct CLIPAttention {
    /// Query projection `D → D`.
    pub q_proj: Linear,
    /// Key projection `D → D`.
    pub k_proj: Linear,
    /// Value projection `D → D`.
    pub v_proj: Linear,
    /// Output projection `D → D`.
    pub out_proj: Linear,
    /// Number of heads.
    pub heads: usize,
}

impl CLIPAttention {
    /// Causal self-attention.
    ///
    /// # Shapes
    /// - `x`: `[B, L, D]`
    /// - output: `[B, L, D]`
    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let q = self.q_proj.forward(x.clone());
        let k = self.k_proj.forward(x.clone());
        let v = self.v_proj.forward(x);
        self.out_proj.forward(self.attend(q, k, v))
    }

    /// Causal multi-head attention of projected queries, keys and values, heads merged back
    /// (what `out_proj` takes).
    ///
    /// # Shapes
    /// - `q`, `k`, `v`: `[B, L, D]`
    /// - output: `[B, L, D]`
    pub(crate) fn attend(&self, q: Tensor<3>, k: Tensor<3>, v: Tensor<3>) -> Tensor<3> {
        let [b, l, d] = q.dims();
        let head_dim = d / self.heads;
        let split = |t: Tensor<3>| t.reshape([b, l, self.heads, head_dim]).swap_dims(1, 2);
        let options = AttentionModuleOptions {
            scale: Some((head_dim as f64).powf(-0.5)),
            softcap: None,
            is_causal: true,
        };
        attention(split(q), split(k), split(v), None, None, options)
            .swap_dims(1, 2)
            .reshape([b, l, d])
    }
}

/// The MLP `fc2(act(fc1(x)))` (`mlp.*`).
#[derive(Module, Debug)]
pub struct CLIPMLP {
    /// `D → intermediate_size`.
    pub fc1: Linear,
    /// `intermediate_size → D`.
    pub fc2: Linear,
    /// The activation between them.
    #[module(skip)]
    pub act: HiddenAct,
}

impl CLIPMLP {
    /// # Shapes
    /// - `x`: `[B, L, D]`
    /// - output: `[B, L, D]`
    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let h = self.fc1.forward(x);
        let h = match self.act {
            HiddenAct::QuickGelu => h.clone() * sigmoid(h.mul_scalar(1.702)),
            HiddenAct::Gelu => gelu(h),
            HiddenAct::GeluTanh => {
                // 0.5 x (1 + tanh(√(2/π) (x + 0.044715 x³)))
                let inner = (h.clone() + h.clone().powi_scalar(3).mul_scalar(0.044715))
                    .mul_scalar((2.0 / std::f64::consts::PI).sqrt());
                h.mul_scalar(0.5) * (inner.tanh() + 1.0)
            }
        };
        self.fc2.forward(h)
    }
}

/// One pre-LayerNorm encoder layer (`encoder.layers.N.*`).
#[derive(Module, Debug)]
pub struct CLIPEncoderLayer {
    /// Causal self-attention.
    pub self_attn: CLIPAttention,
    /// LayerNorm before the attention.
    pub layer_norm1: LayerNorm,
    /// The MLP.
    pub mlp: CLIPMLP,
    /// LayerNorm before the MLP.
    pub layer_norm2: LayerNorm,
}

impl CLIPEncoderLayer {
    /// `x + attn(ln1(x))`, then `+ mlp(ln2(·))`.
    ///
    /// # Shapes
    /// - `x`: `[B, L, D]`
    /// - output: `[B, L, D]`
    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let x = x.clone() + self.self_attn.forward(self.layer_norm1.forward(x));
        x.clone() + self.mlp.forward(self.layer_norm2.forward(x))
    }
}

/// The stack of encoder layers (`encoder.layers`).
#[derive(Module, Debug)]
pub struct CLIPEncoder {
    /// `num_hidden_layers` layers.
    pub layers: Vec<CLIPEncoderLayer>,
}

/// What [`CLIPTextModel::forward`] returns (transformers' `BaseModelOutputWithPooling`).
#[derive(Debug, Clone)]
pub struct CLIPTextOutput {
    /// The last layer's output after `final_layer_norm`: what the pipelines condition on.
    /// `[B, L, D]`.
    pub last_hidden_state: Tensor<3>,
    /// `last_hidden_state` at each sequence's end-of-text token (see
    /// [`CLIPTextConfig::eos_token_id`]). `[B, D]`.
    pub pooler_output: Tensor<2>,
}

/// transformers' `CLIPTextModel`. Build with [`CLIPTextModel::new`] (random weights) or
/// [`CLIPTextModel::from_pretrained`].
///
/// ```
/// use burn::tensor::{Device, Int, Tensor};
/// use vdm_models::clip::{CLIPTextConfig, CLIPTextModel};
///
/// let device = Device::flex();
/// let config = CLIPTextConfig {
///     vocab_size: 10,
///     hidden_size: 8,
///     intermediate_size: 16,
///     num_hidden_layers: 2,
///     num_attention_heads: 2,
///     eos_token_id: Some(9),
///     ..CLIPTextConfig::default()
/// };
/// let model = CLIPTextModel::new(&config, &device)?;
/// let ids = Tensor::<2, Int>::from_ints([[8, 3, 4, 9, 9]], &device);
/// let out = model.forward(ids.clone())?;
/// assert_eq!(out.last_hidden_state.dims(), [1, 5, 8]);
/// assert_eq!(out.pooler_output.dims(), [1, 8]);
/// // clip_skip = 1: the second-to-last layer's output, through final_layer_norm.
/// assert_eq!(model.prompt_embeds(ids, 1)?.dims(), [1, 5, 8]);
/// # Ok::<(), vdm_core::Error>(())
/// ```
#[derive(Module, Debug)]
pub struct CLIPTextModel {
    /// Token and position embeddings.
    pub embeddings: CLIPTextEmbeddings,
    /// The encoder layers.
    pub encoder: CLIPEncoder,
    /// LayerNorm after the last layer.
    pub final_layer_norm: LayerNorm,
    /// The configuration the model was built from.
    #[module(skip)]
    pub config: CLIPTextConfig,
}

impl CLIPTextModel {
    /// Builds the model with randomly initialised weights.
    ///
    /// # Errors
    /// The errors of [`CLIPTextConfig::validate`].
    pub fn new(config: &CLIPTextConfig, device: &Device) -> Result<Self> {
        config.validate()?;
        let d = config.hidden_size;
        let act = config.activation()?;
        let norm = || {
            LayerNormConfig::new(d)
                .with_epsilon(config.layer_norm_eps)
                .init(device)
        };
        let linear = |i, o| LinearConfig::new(i, o).init(device);
        let layers = (0..config.num_hidden_layers)
            .map(|_| CLIPEncoderLayer {
                self_attn: CLIPAttention {
                    q_proj: linear(d, d),
                    k_proj: linear(d, d),
                    v_proj: linear(d, d),
                    out_proj: linear(d, d),
                    heads: config.num_attention_heads,
                },
                layer_norm1: norm(),
                mlp: CLIPMLP {
                    fc1: linear(d, config.intermediate_size),
                    fc2: linear(config.intermediate_size, d),
                    act,
                },
                layer_norm2: norm(),
            })
            .collect();
        Ok(Self {
            embeddings: CLIPTextEmbeddings {
                token_embedding: EmbeddingConfig::new(config.vocab_size, d).init(device),
                position_embedding: EmbeddingConfig::new(config.max_position_embeddings, d)
                    .init(device),
            },
            encoder: CLIPEncoder { layers },
            final_layer_norm: norm(),
            config: config.clone(),
        })
    }

    /// Loads a transformers `text_encoder/` folder: `config.json` and the first of
    /// [`WEIGHT_FILE_NAMES`] present (`f32`, `f16` or `bf16`, cast to `options.dtype`).
    ///
    /// ```no_run
    /// use burn::tensor::Device;
    /// use vdm_models::clip::CLIPTextModel;
    /// use vdm_models::loading::LoadOptions;
    ///
    /// let text_encoder = CLIPTextModel::from_pretrained(
    ///     "zeroscope_v2_576w/text_encoder",
    ///     &LoadOptions::new(),
    ///     &Device::flex(),
    /// )?;
    /// # Ok::<(), vdm_core::Error>(())
    /// ```
    ///
    /// # Errors
    /// - [`Error::File`] naming the path: no `config.json`, no weights, unreadable or corrupt
    ///   files;
    /// - config errors of [`CLIPTextConfig::validate`];
    /// - [`Error::Weights`]: missing, unexpected or mis-shaped tensors (unless
    ///   `options.allow_partial`), each named by its checkpoint key.
    pub fn from_pretrained(
        dir: impl AsRef<Path>,
        options: &LoadOptions,
        device: &Device,
    ) -> Result<Self> {
        let dir = dir.as_ref();
        let config = CLIPTextConfig::from_file(dir.join("config.json"))?;
        let weights = find_weight_file(dir, WEIGHT_FILE_NAMES, "CLIPTextModel")?;
        let (model, _report) = Self::new(&config, device)?.load_weights(weights, options)?;
        Ok(model)
    }

    /// Loads a safetensors state dict into this model (with the crate's key table
    /// [`DIFFUSERS_KEY_REMAP`]; the old `position_ids` buffer is ignored), returning the load
    /// report.
    ///
    /// # Errors
    /// As [`load_safetensors`].
    pub fn load_weights(
        self,
        path: impl AsRef<Path>,
        options: &LoadOptions,
    ) -> Result<(Self, LoadReport)> {
        let options = options
            .clone()
            .skip_enum_variants(SKIP_ENUM_VARIANTS)
            .ignore_unexpected(r"(^|\.)embeddings\.position_ids$");
        load_safetensors(self, path, &KeyRemap::table(DIFFUSERS_KEY_REMAP), &options)
    }

    /// Runs the encoder and returns the last hidden state and the pooled output.
    ///
    /// # Shapes
    /// - `input_ids`: `[B, L]` with `1 ≤ L ≤ max_position_embeddings`
    /// - output: [`CLIPTextOutput`] with `[B, L, D]` and `[B, D]`
    ///
    /// # Errors
    /// [`Error::Shape`] for an empty or over-long `input_ids`; [`Error::InvalidConfig`] naming
    /// `input_ids` when an id is outside the vocabulary or a sequence lacks the end-of-text
    /// token the pooled output is read at.
    pub fn forward(&self, input_ids: Tensor<2, Int>) -> Result<CLIPTextOutput> {
        let ids = self.check_ids(&input_ids)?;
        let pooled_at = self.pool_positions(&ids, input_ids.dims())?;
        let hidden = self.run(input_ids, self.config.num_hidden_layers);
        let last_hidden_state = self.final_norm(hidden);
        let [b, l, d] = last_hidden_state.dims();
        let flat = last_hidden_state.clone().reshape([b * l, d]);
        let rows: Vec<i64> = pooled_at
            .iter()
            .enumerate()
            .map(|(i, &p)| (i * l + p) as i64)
            .collect();
        let index = Tensor::<1, Int>::from_data(TensorData::new(rows, [b]), &flat.device());
        let pooler_output = flat.select(0, index);
        Ok(CLIPTextOutput {
            last_hidden_state,
            pooler_output,
        })
    }

    /// The prompt embedding the pipelines condition on, with diffusers' `clip_skip`: `0` is
    /// `last_hidden_state`; `k > 0` takes the output of layer `num_hidden_layers − k`
    /// (`hidden_states[-(k + 1)]`) through `final_layer_norm`, as diffusers' `encode_prompt`.
    ///
    /// # Shapes
    /// - `input_ids`: `[B, L]`
    /// - output: `[B, L, D]`
    ///
    /// # Errors
    /// As [`forward`](Self::forward) (except the end-of-text check); [`Error::InvalidConfig`]
    /// naming `clip_skip` when it exceeds `num_hidden_layers`.
    pub fn prompt_embeds(&self, input_ids: Tensor<2, Int>, clip_skip: usize) -> Result<Tensor<3>> {
        self.check_clip_skip(clip_skip)?;
        self.check_ids(&input_ids)?;
        let layers = self.config.num_hidden_layers - clip_skip;
        Ok(self.final_norm(self.run(input_ids, layers)))
    }

    /// Checks a `clip_skip` for [`prompt_embeds`](Self::prompt_embeds) without running the
    /// model (pipelines check it before any work).
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] naming `clip_skip` when it exceeds `num_hidden_layers`.
    pub fn check_clip_skip(&self, clip_skip: usize) -> Result<()> {
        let layers = self.config.num_hidden_layers;
        if clip_skip > layers {
            return Err(Error::invalid(
                "clip_skip",
                format!("{clip_skip} exceeds the text encoder's {layers} layers"),
            ));
        }
        Ok(())
    }

    /// Every hidden state, as transformers' `output_hidden_states=True`: the embeddings, then
    /// each layer's output (`num_hidden_layers + 1` tensors `[B, L, D]`, none through
    /// `final_layer_norm`).
    ///
    /// # Errors
    /// As [`prompt_embeds`](Self::prompt_embeds).
    pub fn hidden_states(&self, input_ids: Tensor<2, Int>) -> Result<Vec<Tensor<3>>> {
        self.check_ids(&input_ids)?;
        let mut h = self.embed(input_ids);
        let mut out = vec![h.clone()];
        for layer in &self.encoder.layers {
            h = self.layer(layer, h);
            out.push(h.clone());
        }
        Ok(out)
    }

    /// Embeddings, then the first `layers` encoder layers.
    fn run(&self, input_ids: Tensor<2, Int>, layers: usize) -> Tensor<3> {
        self.encoder.layers[..layers]
            .iter()
            .fold(self.embed(input_ids), |h, layer| self.layer(layer, h))
    }

    /// `layer` on `h`: fused on the flex backend ([`cpu_fused::encoder_layer`]; not for the
    /// tanh GELU), else [`CLIPEncoderLayer::forward`].
    fn layer(&self, layer: &CLIPEncoderLayer, h: Tensor<3>) -> Tensor<3> {
        let act = match layer.mlp.act {
            HiddenAct::QuickGelu => Some(cpu::Activation::QuickGelu),
            HiddenAct::Gelu => Some(cpu::Activation::Gelu),
            HiddenAct::GeluTanh => None,
        };
        match act {
            Some(act) if cpu::enabled(&h.device(), h.dtype()) => {
                cpu_fused::encoder_layer(layer, self.config.layer_norm_eps, act, h)
            }
            _ => layer.forward(h),
        }
    }

    /// `final_layer_norm` on `h` (on the kernels on the flex backend).
    fn final_norm(&self, h: Tensor<3>) -> Tensor<3> {
        if cpu::enabled(&h.device(), h.dtype()) {
            cpu::layer_norm(&self.final_layer_norm, self.config.layer_norm_eps, h)
        } else {
            self.final_layer_norm.forward(h)
        }
    }

    /// Token embeddings plus the position embeddings of positions `0..L`.
    fn embed(&self, input_ids: Tensor<2, Int>) -> Tensor<3> {
        let [b, l] = input_ids.dims();
        let device = input_ids.device();
        let positions = Tensor::<1, Int>::arange(0..l as i64, &device)
            .reshape([1, l])
            .expand([b, l]);
        self.embeddings.token_embedding.forward(input_ids)
            + self.embeddings.position_embedding.forward(positions)
    }

    /// Checks the shape and range of `input_ids`, returning them on the host.
    fn check_ids(&self, input_ids: &Tensor<2, Int>) -> Result<Vec<i64>> {
        let [b, l] = input_ids.dims();
        let max = self.config.max_position_embeddings;
        if b == 0 || l == 0 || l > max {
            return Err(Error::shape(
                "input_ids",
                format!("[B, L] with B ≥ 1 and 1 ≤ L ≤ max_position_embeddings = {max}"),
                &[b, l],
            ));
        }
        let ids: Vec<i64> = vdm_core::readback::read_data(input_ids.clone(), "input_ids")?
            .convert::<i64>()
            .try_into_vec::<i64>()
            .map_err(|e| Error::invalid("input_ids", format!("unreadable ids: {e:?}")))?;
        let vocab = self.config.vocab_size as i64;
        if let Some(bad) = ids.iter().find(|&&id| id < 0 || id >= vocab) {
            return Err(Error::invalid(
                "input_ids",
                format!("id {bad} is outside the vocabulary (vocab_size = {vocab})"),
            ));
        }
        Ok(ids)
    }

    /// The position each sequence's pooled output is read at: the first end-of-text token, or
    /// for legacy configs with `eos_token_id == 2` the (first) largest id.
    fn pool_positions(&self, ids: &[i64], [b, l]: [usize; 2]) -> Result<Vec<usize>> {
        let eos = self.config.eos_token_id;
        (0..b)
            .map(|i| {
                let row = &ids[i * l..(i + 1) * l];
                match eos {
                    Some(2) | None => Ok(argmax_first(row)),
                    Some(eos) => row.iter().position(|&id| id == eos).ok_or_else(|| {
                        Error::invalid(
                            "input_ids",
                            format!(
                                "sequence {i} has no end-of-text token (id {eos}) to read the \
                                 pooled output at"
                            ),
                        )
                    }),
                }
            })
            .collect()
    }
}

/// The first position of the largest value (`torch.argmax` on CPU).
fn argmax_first(row: &[i64]) -> usize {
    let mut best = 0;
    for (i, &v) in row.iter().enumerate() {
        if v > row[best] {
            best = i;
        }
    }
    best
}
