//! The CLIP byte-level BPE tokenizer, as transformers' `CLIPTokenizer`
//! (`models/clip/tokenization_clip.py`, backed by HuggingFace `tokenizers`) and as diffusers
//! calls it: `padding="max_length", max_length=77, truncation=True`.
//!
//! The BPE itself is HuggingFace's `tokenizers` crate (with `fancy-regex`, no C build), the
//! implementation transformers 5 runs. A `tokenizer/` folder comes in two layouts, both read
//! unchanged by [`CLIPTokenizer::from_dir`]:
//!
//! - `tokenizer.json` (+ `tokenizer_config.json`), as transformers 5 saves it: the whole
//!   pipeline, loaded as it is;
//! - `vocab.json` + `merges.txt` (+ `special_tokens_map.json`, `tokenizer_config.json`), as the
//!   SD 1.x / 2.x / ModelScope hub folders have it: the pipeline transformers builds from these
//!   files is rebuilt here (NFC, whitespace runs to one space, lowercase; CLIP's split regex
//!   then byte-level; BPE with the `</w>` end-of-word suffix), and the special tokens are
//!   registered as transformers registers them. A consequence worth knowing: SD 2.x folders
//!   pad with `!`, which transformers (and so this type) then splits off whole wherever it
//!   appears in a prompt, where an SD 1.x folder merges it (`!</w>`).
//!
//! Special tokens (`<|startoftext|>`, `<|endoftext|>`, the pad token) come from
//! `tokenizer_config.json` and `special_tokens_map.json`; their ids from the vocabulary.

use std::collections::HashMap;
use std::path::Path;

use serde_json::Value;
use tokenizers::models::bpe::BPE;
use tokenizers::normalizers::{Lowercase, NFC, Replace, Sequence as NormalizerSequence};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::sequence::Sequence as PreTokenizerSequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{AddedToken, SplitDelimiterBehavior, Tokenizer};
use vdm_core::{Error, Result};

/// CLIP's pre-tokenization regex (transformers `CLIPTokenizer`, from OpenAI's `simple_tokenizer`).
pub const CLIP_SPLIT_REGEX: &str =
    r"<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+";

/// The sequence length of every SD-family text encoder.
pub const DEFAULT_MAX_LENGTH: usize = 77;

/// What to do with prompts longer than `max_length − 2` tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LongPrompt {
    /// Keep the first `max_length − 2` tokens, as diffusers does (the default).
    #[default]
    Truncate,
    /// Split the tokens into chunks of `max_length − 2`, each framed by start / end tokens and
    /// padded to `max_length`, and embed every chunk (concatenated along the sequence), as
    /// common SD front ends do. At most `max_chunks` chunks; tokens past them are dropped.
    Chunks {
        /// Most chunks kept (≥ 1).
        max_chunks: usize,
    },
}

/// A special token as a tokenizer config names it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct SpecialToken {
    content: String,
    /// Whether it is matched on the normalised (lower-cased) text.
    normalized: bool,
}

impl SpecialToken {
    /// `"<|endoftext|>"` or `{"content": "<|endoftext|>", "normalized": true, …}`. A plain
    /// string is not normalised (as transformers registers it).
    fn parse(value: &Value) -> Option<Self> {
        match value {
            Value::String(s) => Some(Self {
                content: s.clone(),
                normalized: false,
            }),
            Value::Object(map) => Some(Self {
                content: map.get("content")?.as_str()?.to_string(),
                normalized: map
                    .get("normalized")
                    .and_then(Value::as_bool)
                    .unwrap_or(false),
            }),
            _ => None,
        }
    }
}

/// transformers' `CLIPTokenizer`: text to CLIP token ids.
///
/// ```no_run
/// use vdm_models::clip::{CLIPTokenizer, LongPrompt};
///
/// let tokenizer = CLIPTokenizer::from_dir("zeroscope_v2_576w/tokenizer")?;
/// let ids = tokenizer.encode("a photo of a cat")?;
/// assert_eq!(ids.len(), 77);
/// assert_eq!(&ids[..7], &[49406, 320, 1125, 539, 320, 2368, 49407]);
/// let chunks = tokenizer.encode_long("a very long prompt …", LongPrompt::Chunks { max_chunks: 3 })?;
/// # Ok::<(), vdm_core::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct CLIPTokenizer {
    inner: Tokenizer,
    bos: u32,
    eos: u32,
    pad: u32,
    max_length: usize,
}

impl CLIPTokenizer {
    /// Reads a `tokenizer/` folder in either layout (see the [module docs](self)); a
    /// `tokenizer.json` wins when both are present.
    ///
    /// # Errors
    /// [`Error::File`] naming the folder or file: no usable files, unreadable or malformed
    /// JSON, a special token that is not in the vocabulary.
    pub fn from_dir(dir: impl AsRef<Path>) -> Result<Self> {
        let dir = dir.as_ref();
        if !dir.is_dir() {
            return Err(Error::File {
                path: dir.display().to_string(),
                reason: "no such tokenizer folder".into(),
            });
        }
        let config = read_json_if_present(&dir.join("tokenizer_config.json"))?;
        let map = read_json_if_present(&dir.join("special_tokens_map.json"))?;
        // special_tokens_map.json overrides tokenizer_config.json, as in transformers.
        let special = |name: &str, default: &str| -> SpecialToken {
            [&map, &config]
                .into_iter()
                .flatten()
                .find_map(|json| json.get(name).and_then(SpecialToken::parse))
                .unwrap_or_else(|| SpecialToken {
                    content: default.into(),
                    normalized: false,
                })
        };
        let bos = special("bos_token", "<|startoftext|>");
        let eos = special("eos_token", "<|endoftext|>");
        let unk = special("unk_token", "<|endoftext|>");
        let pad = special("pad_token", &eos.content);

        let json_path = dir.join("tokenizer.json");
        let (inner, origin) = if json_path.is_file() {
            (read_tokenizer_json(&json_path)?, json_path)
        } else {
            let vocab = dir.join("vocab.json");
            let merges = dir.join("merges.txt");
            for path in [&vocab, &merges] {
                if !path.is_file() {
                    return Err(Error::File {
                        path: path.display().to_string(),
                        reason: "a tokenizer folder needs tokenizer.json, or vocab.json and \
                                 merges.txt"
                            .into(),
                    });
                }
            }
            let added = added_tokens(config.as_ref(), [&bos, &eos, &unk, &pad]);
            (
                legacy_tokenizer(&vocab, &merges, &unk.content, &added)?,
                vocab,
            )
        };
        let id = |token: &SpecialToken| {
            inner
                .token_to_id(&token.content)
                .ok_or_else(|| Error::File {
                    path: origin.display().to_string(),
                    reason: format!("special token {:?} is not in the vocabulary", token.content),
                })
        };
        let max_length = config
            .as_ref()
            .and_then(|c| c.get("model_max_length"))
            .and_then(Value::as_f64)
            .filter(|&n| (2.0..=1_000_000.0).contains(&n))
            .map_or(DEFAULT_MAX_LENGTH, |n| n as usize);
        Ok(Self {
            bos: id(&bos)?,
            eos: id(&eos)?,
            pad: id(&pad)?,
            inner,
            max_length,
        })
    }

    /// Sets the padded length (default: `model_max_length` of `tokenizer_config.json`, or 77).
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] naming `max_length` when it is below 2 (room for the start and
    /// end tokens).
    pub fn with_max_length(mut self, max_length: usize) -> Result<Self> {
        if max_length < 2 {
            return Err(Error::invalid(
                "max_length",
                format!("must be ≥ 2 (start and end tokens), got {max_length}"),
            ));
        }
        self.max_length = max_length;
        Ok(self)
    }

    /// Length of every encoded sequence.
    pub fn max_length(&self) -> usize {
        self.max_length
    }

    /// Id of `<|startoftext|>`.
    pub fn bos_token_id(&self) -> u32 {
        self.bos
    }

    /// Id of `<|endoftext|>`.
    pub fn eos_token_id(&self) -> u32 {
        self.eos
    }

    /// Id of the padding token (`<|endoftext|>` in SD 1.x folders, `!` in SD 2.x ones).
    pub fn pad_token_id(&self) -> u32 {
        self.pad
    }

    /// Number of ids, added tokens included.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// The ids of `text` without start, end or padding tokens, however many there are.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] naming `prompt` if the tokenizer fails on the text.
    pub fn tokenize(&self, text: &str) -> Result<Vec<u32>> {
        let encoding = self
            .inner
            .encode(text, false)
            .map_err(|e| Error::invalid("prompt", format!("tokenizer failed: {e}")))?;
        Ok(encoding.get_ids().to_vec())
    }

    /// What diffusers' pipelines feed the text encoder: `[bos] + first max_length − 2 tokens +
    /// [eos]`, padded to `max_length`.
    ///
    /// # Errors
    /// As [`tokenize`](Self::tokenize).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let tokens = self.tokenize(text)?;
        Ok(self.frame(&tokens[..tokens.len().min(self.max_length - 2)]))
    }

    /// [`encode`](Self::encode) with a [`LongPrompt`] policy: one sequence of `max_length` ids
    /// per chunk (always one with [`LongPrompt::Truncate`], and for an empty prompt).
    ///
    /// # Errors
    /// As [`tokenize`](Self::tokenize); [`Error::InvalidConfig`] naming `max_chunks` when it is
    /// 0.
    pub fn encode_long(&self, text: &str, policy: LongPrompt) -> Result<Vec<Vec<u32>>> {
        match policy {
            LongPrompt::Truncate => Ok(vec![self.encode(text)?]),
            LongPrompt::Chunks { max_chunks } => {
                if max_chunks == 0 {
                    return Err(Error::invalid("max_chunks", "must be ≥ 1"));
                }
                let tokens = self.tokenize(text)?;
                if tokens.is_empty() {
                    return Ok(vec![self.frame(&[])]);
                }
                Ok(tokens
                    .chunks(self.max_length - 2)
                    .take(max_chunks)
                    .map(|chunk| self.frame(chunk))
                    .collect())
            }
        }
    }

    /// `[bos] + tokens + [eos]`, padded to `max_length` (`tokens` fits).
    fn frame(&self, tokens: &[u32]) -> Vec<u32> {
        let mut ids = Vec::with_capacity(self.max_length);
        ids.push(self.bos);
        ids.extend_from_slice(tokens);
        ids.push(self.eos);
        ids.resize(self.max_length, self.pad);
        ids
    }
}

/// The special tokens of a legacy folder, in transformers' order: the `added_tokens_decoder`
/// of `tokenizer_config.json` when present (transformers ≥ 4.34 writes it), else bos, eos, unk
/// and pad, a token named twice taking the flags of its last mention.
fn added_tokens(config: Option<&Value>, specials: [&SpecialToken; 4]) -> Vec<SpecialToken> {
    if let Some(Value::Object(decoder)) = config.and_then(|c| c.get("added_tokens_decoder")) {
        let mut entries: Vec<(u64, SpecialToken)> = decoder
            .iter()
            .filter_map(|(id, v)| Some((id.parse().ok()?, SpecialToken::parse(v)?)))
            .collect();
        entries.sort_by_key(|(id, _)| *id);
        return entries.into_iter().map(|(_, t)| t).collect();
    }
    let mut order: Vec<String> = Vec::new();
    let mut flags: HashMap<String, bool> = HashMap::new();
    for token in specials {
        if flags
            .insert(token.content.clone(), token.normalized)
            .is_none()
        {
            order.push(token.content.clone());
        }
    }
    order
        .into_iter()
        .map(|content| SpecialToken {
            normalized: flags[&content],
            content,
        })
        .collect()
}

/// The pipeline transformers' `CLIPTokenizer.__init__` builds from `vocab.json` + `merges.txt`.
fn legacy_tokenizer(
    vocab: &Path,
    merges: &Path,
    unk: &str,
    added: &[SpecialToken],
) -> Result<Tokenizer> {
    let file_error = |path: &Path, e: &dyn std::fmt::Display| Error::File {
        path: path.display().to_string(),
        reason: e.to_string(),
    };
    let (vocab_map, merge_list) =
        BPE::read_file(&vocab.to_string_lossy(), &merges.to_string_lossy()).map_err(|e| {
            file_error(
                vocab,
                &format!("not a BPE vocab.json / merges.txt pair: {e}"),
            )
        })?;
    let bpe = BPE::builder()
        .vocab_and_merges(vocab_map, merge_list)
        .unk_token(unk.to_string())
        .continuing_subword_prefix(String::new())
        .end_of_word_suffix("</w>".to_string())
        .fuse_unk(false)
        .build()
        .map_err(|e| file_error(vocab, &e))?;
    let internal = |e: &dyn std::fmt::Display| Error::invalid("tokenizer", e.to_string());
    let mut tokenizer = Tokenizer::new(bpe);
    tokenizer.with_normalizer(Some(NormalizerSequence::new(vec![
        NFC.into(),
        Replace::new(
            tokenizers::normalizers::replace::ReplacePattern::Regex(r"\s+".into()),
            " ",
        )
        .map_err(|e| internal(&e))?
        .into(),
        Lowercase.into(),
    ])));
    tokenizer.with_pre_tokenizer(Some(PreTokenizerSequence::new(vec![
        Split::new(
            SplitPattern::Regex(CLIP_SPLIT_REGEX.into()),
            SplitDelimiterBehavior::Removed,
            true,
        )
        .map_err(|e| internal(&e))?
        .into(),
        ByteLevel::default().add_prefix_space(false).into(),
    ])));
    tokenizer.with_decoder(Some(tokenizers::decoders::byte_level::ByteLevel::default()));
    let tokens: Vec<AddedToken> = added
        .iter()
        .map(|t| AddedToken::from(t.content.clone(), true).normalized(t.normalized))
        .collect();
    tokenizer.add_special_tokens(&tokens);
    Ok(tokenizer)
}

/// The parsed JSON file at `path`, or `None` when there is no such file.
/// Reads a `tokenizer.json` through the `tokenizers` crate, which panics (instead of
/// returning its error) on some malformed files: its syntax is checked with serde_json first,
/// and a panic of the crate on a well-formed but wrong file is caught here and returned as
/// the same typed error (found by the `tokenizer` fuzz harness, `examples/src/fuzz`).
fn read_tokenizer_json(path: &Path) -> Result<Tokenizer> {
    let error = |reason: String| Error::File {
        path: path.display().to_string(),
        reason: format!("not a tokenizers JSON file: {reason}"),
    };
    let bytes = std::fs::read(path).map_err(|e| error(e.to_string()))?;
    serde_json::from_slice::<serde::de::IgnoredAny>(&bytes).map_err(|e| error(e.to_string()))?;
    let parsed = std::panic::catch_unwind(|| Tokenizer::from_bytes(&bytes));
    match parsed {
        Ok(Ok(tokenizer)) => Ok(tokenizer),
        Ok(Err(e)) => Err(error(e.to_string())),
        Err(panic) => Err(error(vdm_core::error::panic_message(panic.as_ref()))),
    }
}

fn read_json_if_present(path: &Path) -> Result<Option<Value>> {
    if !path.is_file() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(path).map_err(|e| Error::File {
        path: path.display().to_string(),
        reason: e.to_string(),
    })?;
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|e| Error::File {
            path: path.display().to_string(),
            reason: format!("malformed JSON: {e}"),
        })
}
