//! Prompt → `encoder_hidden_states`: diffusers' `encode_prompt`
//! (`pipelines/deprecated/text_to_video_synthesis/pipeline_text_to_video_synth.py`,
//! `pipelines/animatediff/pipeline_animatediff.py`) without the CFG concatenation, which the
//! sampler does.

use burn::tensor::{Device, Int, Tensor, TensorData};
use vdm_core::{Error, Result};

use super::text_model::CLIPTextModel;
use super::tokenizer::{CLIPTokenizer, LongPrompt};

/// A tokenizer and a text encoder, with the two prompt options of the pipelines.
///
/// With [`LongPrompt::Chunks`] a prompt of `k` chunks embeds to `[1, k·77, D]` (each chunk
/// encoded on its own, as common SD front ends do); [`PromptEncoder::embed_pair`] pads the
/// shorter of a prompt and its negative prompt with chunks of the empty prompt, so that both
/// halves of a classifier-free-guidance batch have one length.
#[derive(Debug)]
pub struct PromptEncoder {
    /// The tokenizer.
    pub tokenizer: CLIPTokenizer,
    /// The text encoder.
    pub text_encoder: CLIPTextModel,
    /// diffusers' `clip_skip` (0: the last layer; see [`CLIPTextModel::prompt_embeds`]).
    pub clip_skip: usize,
    /// What to do with prompts over `max_length − 2` tokens.
    pub long_prompt: LongPrompt,
}

impl PromptEncoder {
    /// Truncating, without clip skip: exactly diffusers' defaults.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] naming `max_length` when the tokenizer pads past the text
    /// encoder's `max_position_embeddings`.
    pub fn new(tokenizer: CLIPTokenizer, text_encoder: CLIPTextModel) -> Result<Self> {
        let positions = text_encoder.config.max_position_embeddings;
        if tokenizer.max_length() > positions {
            return Err(Error::invalid(
                "max_length",
                format!(
                    "the tokenizer pads to {} tokens but the text encoder has {positions} \
                     positions",
                    tokenizer.max_length()
                ),
            ));
        }
        Ok(Self {
            tokenizer,
            text_encoder,
            clip_skip: 0,
            long_prompt: LongPrompt::Truncate,
        })
    }

    /// Sets `clip_skip`.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] naming `clip_skip` when it exceeds the encoder's layers.
    pub fn with_clip_skip(mut self, clip_skip: usize) -> Result<Self> {
        let layers = self.text_encoder.config.num_hidden_layers;
        if clip_skip > layers {
            return Err(Error::invalid(
                "clip_skip",
                format!("{clip_skip} exceeds the text encoder's {layers} layers"),
            ));
        }
        self.clip_skip = clip_skip;
        Ok(self)
    }

    /// Sets the long-prompt policy.
    pub fn with_long_prompt(mut self, long_prompt: LongPrompt) -> Self {
        self.long_prompt = long_prompt;
        self
    }

    /// The device of the text encoder's weights.
    pub fn device(&self) -> Device {
        self.text_encoder
            .embeddings
            .token_embedding
            .weight
            .val()
            .device()
    }

    /// The token ids of `prompt`, one sequence per chunk.
    ///
    /// # Errors
    /// As [`CLIPTokenizer::encode_long`].
    pub fn ids(&self, prompt: &str) -> Result<Vec<Vec<u32>>> {
        self.tokenizer.encode_long(prompt, self.long_prompt)
    }

    /// The embedding of one prompt (the empty prompt is the unconditional one).
    ///
    /// # Shapes
    /// - output: `[1, chunks · max_length, D]`
    ///
    /// # Errors
    /// As [`CLIPTokenizer::encode_long`] and [`CLIPTextModel::prompt_embeds`].
    pub fn embed(&self, prompt: &str) -> Result<Tensor<3>> {
        self.embed_ids(&self.ids(prompt)?)
    }

    /// The embeddings of a prompt and its negative prompt, of equal length.
    ///
    /// # Shapes
    /// - output: two `[1, chunks · max_length, D]`
    ///
    /// # Errors
    /// As [`embed`](Self::embed).
    pub fn embed_pair(&self, prompt: &str, negative: &str) -> Result<(Tensor<3>, Tensor<3>)> {
        let mut cond = self.ids(prompt)?;
        let mut uncond = self.ids(negative)?;
        let chunks = cond.len().max(uncond.len());
        let empty = self.tokenizer.encode("")?;
        cond.resize(chunks, empty.clone());
        uncond.resize(chunks, empty);
        Ok((self.embed_ids(&cond)?, self.embed_ids(&uncond)?))
    }

    /// Encodes the chunks as one batch and lays them end to end.
    fn embed_ids(&self, chunks: &[Vec<u32>]) -> Result<Tensor<3>> {
        let l = self.tokenizer.max_length();
        let flat: Vec<i64> = chunks.iter().flatten().map(|&id| id as i64).collect();
        let ids =
            Tensor::<2, Int>::from_data(TensorData::new(flat, [chunks.len(), l]), &self.device());
        let embeds = self.text_encoder.prompt_embeds(ids, self.clip_skip)?;
        let [k, l, d] = embeds.dims();
        Ok(embeds.reshape([1, k * l, d]))
    }
}
