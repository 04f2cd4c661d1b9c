//! Prompt → `encoder_hidden_states`: diffusers' `encode_prompt`
//! (`pipelines/deprecated/text_to_video_synthesis/pipeline_text_to_video_synth.py`,
//! `pipelines/animatediff/pipeline_animatediff.py`) without the CFG concatenation, which the
//! sampler does.

use burn::tensor::{Device, Int, Tensor, TensorData};
use vdm_core::{Error, Result};

use super::text_model::CLIPTextModel;
use super::tokenizer::{CLIPTokenizer, LongPrompt};

/// The two prompt options of the pipelines.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PromptOptions {
    /// diffusers' `clip_skip` (0: the last layer; see [`CLIPTextModel::prompt_embeds`]).
    pub clip_skip: usize,
    /// What to do with prompts over `max_length − 2` tokens.
    pub long_prompt: LongPrompt,
}

/// A tokenizer and a text encoder.
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
}

impl PromptEncoder {
    /// Pairs a tokenizer with a text encoder.
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
        })
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
    pub fn ids(&self, prompt: &str, options: PromptOptions) -> Result<Vec<Vec<u32>>> {
        self.tokenizer.encode_long(prompt, options.long_prompt)
    }

    /// The embedding of one prompt (the empty prompt is the unconditional one).
    ///
    /// # Shapes
    /// - output: `[1, chunks · max_length, D]`
    ///
    /// # Errors
    /// As [`CLIPTokenizer::encode_long`] and [`CLIPTextModel::prompt_embeds`] (a `clip_skip`
    /// over the encoder's layers is an error naming it).
    pub fn embed(&self, prompt: &str, options: PromptOptions) -> Result<Tensor<3>> {
        self.embed_ids(&self.ids(prompt, options)?, options)
    }

    /// The embeddings of a prompt and its negative prompt, of equal length.
    ///
    /// # Shapes
    /// - output: two `[1, chunks · max_length, D]`
    ///
    /// # Errors
    /// As [`embed`](Self::embed).
    pub fn embed_pair(
        &self,
        prompt: &str,
        negative: &str,
        options: PromptOptions,
    ) -> Result<(Tensor<3>, Tensor<3>)> {
        let mut both = self.embed_all(&[prompt, negative], options)?;
        let uncond = both.pop().expect("two embeddings");
        let cond = both.pop().expect("two embeddings");
        Ok((cond, uncond))
    }

    /// The embeddings of several prompts, of equal length: prompts with fewer chunks are
    /// padded with chunks of the empty prompt (for classifier-free guidance and prompt travel,
    /// whose embeddings are mixed or batched).
    ///
    /// # Shapes
    /// - output: one `[1, chunks · max_length, D]` per prompt, `chunks` the largest count
    ///
    /// # Errors
    /// As [`embed`](Self::embed).
    pub fn embed_all(&self, prompts: &[&str], options: PromptOptions) -> Result<Vec<Tensor<3>>> {
        let mut ids = prompts
            .iter()
            .map(|p| self.ids(p, options))
            .collect::<Result<Vec<_>>>()?;
        let chunks = ids.iter().map(Vec::len).max().unwrap_or(1);
        let empty = self.tokenizer.encode("")?;
        ids.iter_mut()
            .map(|chunk_ids| {
                chunk_ids.resize(chunks, empty.clone());
                self.embed_ids(chunk_ids, options)
            })
            .collect()
    }

    /// Encodes the chunks as one batch and lays them end to end.
    fn embed_ids(&self, chunks: &[Vec<u32>], options: PromptOptions) -> Result<Tensor<3>> {
        let l = self.tokenizer.max_length();
        let flat: Vec<i64> = chunks.iter().flatten().map(|&id| id as i64).collect();
        let ids =
            Tensor::<2, Int>::from_data(TensorData::new(flat, [chunks.len(), l]), &self.device());
        let embeds = self.text_encoder.prompt_embeds(ids, options.clip_skip)?;
        let [k, l, d] = embeds.dims();
        Ok(embeds.reshape([1, k * l, d]))
    }
}
