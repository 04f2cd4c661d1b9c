//! The CLIP text side of the SD-family video pipelines: the BPE [`CLIPTokenizer`], the
//! [`CLIPTextModel`] text encoder and the [`PromptEncoder`] that turns a prompt into the
//! `encoder_hidden_states` a UNet attends to, as diffusers' `encode_prompt` does (with
//! `clip_skip` and an optional chunked mode for prompts over 75 tokens).
//!
//! Both load the `tokenizer/` and `text_encoder/` folders of a diffusers pipeline unchanged.

pub mod config;
pub mod prompt;
pub mod text_model;
pub mod tokenizer;

pub use config::{CLIPTextConfig, HiddenAct};
pub use prompt::{PromptEncoder, PromptOptions};
pub use text_model::{
    CLIPAttention, CLIPEncoder, CLIPEncoderLayer, CLIPMLP, CLIPTextEmbeddings, CLIPTextModel,
    CLIPTextOutput, WEIGHT_FILE_NAMES,
};
pub use tokenizer::{CLIP_SPLIT_REGEX, CLIPTokenizer, DEFAULT_MAX_LENGTH, LongPrompt};
