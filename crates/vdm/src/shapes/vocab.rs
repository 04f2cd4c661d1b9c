//! The Moving Shapes tokenizer: a CLIP BPE vocabulary in the hub's `vocab.json` +
//! `merges.txt` layout, read by [`CLIPTokenizer::from_dir`](vdm_models::clip::CLIPTokenizer)
//! like any real one.
//!
//! The vocabulary holds CLIP's 256 byte-level symbols, each also with the end-of-word mark
//! `</w>` (so any text tokenizes), merges that make every caption word one token, and the two
//! special tokens. The merges are built word by word: each word is first split by the merges
//! already made, then its pieces are joined left to right by new merges, which rank after every
//! earlier one; so no later word can split an earlier one (tested through the real tokenizer).

use std::collections::HashMap;
use std::path::Path;

use vdm_core::{Error, Result};

use super::scene::{Colour, Direction, ShapeKind};

/// The beginning-of-text token.
pub const BOS: &str = "<|startoftext|>";
/// The end-of-text token (also padding and unknown, as in CLIP).
pub const EOS: &str = "<|endoftext|>";

/// Every word a caption can hold.
pub fn words() -> Vec<&'static str> {
    let mut words = vec!["a", "moving", "then"];
    words.extend(Colour::ALL.iter().map(|c| c.name()));
    words.extend(ShapeKind::ALL.iter().map(|s| s.name()));
    words.extend(Direction::ALL.iter().map(|d| d.name()));
    words
}

/// GPT-2 / CLIP's reversible map from bytes to printable characters.
fn bytes_to_unicode() -> Vec<char> {
    let printable = |b: u32| {
        (u32::from(b'!')..=u32::from(b'~')).contains(&b)
            || (0xA1..=0xAC).contains(&b)
            || (0xAE..=0xFF).contains(&b)
    };
    let mut extra = 0;
    (0u32..256)
        .map(|b| {
            if printable(b) {
                char::from_u32(b).expect("a Latin-1 code point")
            } else {
                extra += 1;
                char::from_u32(255 + extra).expect("a code point below 512")
            }
        })
        .collect()
}

/// The symbols of `word` after applying `merges` by rank, as CLIP's BPE does.
fn apply_merges(word: &str, ranks: &HashMap<(String, String), usize>) -> Vec<String> {
    let chars: Vec<char> = word.chars().collect();
    let mut symbols: Vec<String> = chars
        .iter()
        .enumerate()
        .map(|(i, c)| {
            if i + 1 == chars.len() {
                format!("{c}</w>")
            } else {
                c.to_string()
            }
        })
        .collect();
    loop {
        let best = (0..symbols.len().saturating_sub(1))
            .filter_map(|i| {
                ranks
                    .get(&(symbols[i].clone(), symbols[i + 1].clone()))
                    .map(|r| (*r, i))
            })
            .min();
        let Some((_, i)) = best else {
            return symbols;
        };
        let joined = format!("{}{}", symbols[i], symbols[i + 1]);
        symbols.splice(i..i + 2, [joined]);
    }
}

/// The vocabulary (token → id) and merges of the domain.
pub fn vocabulary() -> (Vec<String>, Vec<(String, String)>) {
    let base = bytes_to_unicode();
    let mut vocab: Vec<String> = base.iter().map(|c| c.to_string()).collect();
    vocab.extend(base.iter().map(|c| format!("{c}</w>")));
    let mut merges: Vec<(String, String)> = Vec::new();
    let mut ranks: HashMap<(String, String), usize> = HashMap::new();
    for word in words() {
        let mut pieces = apply_merges(word, &ranks);
        while pieces.len() > 1 {
            let pair = (pieces[0].clone(), pieces[1].clone());
            let joined = format!("{}{}", pair.0, pair.1);
            ranks.insert(pair.clone(), merges.len());
            merges.push(pair);
            vocab.push(joined.clone());
            pieces.splice(0..2, [joined]);
        }
    }
    vocab.push(BOS.to_string());
    vocab.push(EOS.to_string());
    (vocab, merges)
}

/// Writes `vocab.json`, `merges.txt`, `special_tokens_map.json` and `tokenizer_config.json`
/// (`model_max_length` = `max_length`) into `dir`; returns the vocabulary size.
///
/// # Errors
/// [`Error::File`] naming the file that cannot be written.
pub fn write_tokenizer(dir: &Path, max_length: usize) -> Result<usize> {
    let (vocab, merges) = vocabulary();
    let ids: serde_json::Map<String, serde_json::Value> = vocab
        .iter()
        .enumerate()
        .map(|(i, t)| (t.clone(), serde_json::Value::from(i)))
        .collect();
    let mut merges_txt = String::from("#version: 0.2\n");
    for (a, b) in &merges {
        merges_txt.push_str(&format!("{a} {b}\n"));
    }
    let specials = serde_json::json!({
        "bos_token": BOS, "eos_token": EOS, "pad_token": EOS, "unk_token": EOS,
    });
    let config = serde_json::json!({
        "bos_token": BOS, "eos_token": EOS, "pad_token": EOS, "unk_token": EOS,
        "do_lower_case": true,
        "model_max_length": max_length,
        "tokenizer_class": "CLIPTokenizer",
    });
    let pretty = |v: &serde_json::Value| serde_json::to_string_pretty(v).expect("plain JSON");
    write(
        dir,
        "vocab.json",
        &serde_json::Value::Object(ids).to_string(),
    )?;
    write(dir, "merges.txt", &merges_txt)?;
    write(dir, "special_tokens_map.json", &pretty(&specials))?;
    write(dir, "tokenizer_config.json", &pretty(&config))?;
    Ok(vocab.len())
}

/// Writes `text` to `dir/name`, naming the path on failure.
pub(crate) fn write(dir: &Path, name: &str, text: &str) -> Result<()> {
    let path = dir.join(name);
    std::fs::write(&path, text).map_err(|e| Error::File {
        path: path.display().to_string(),
        reason: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use vdm_models::clip::CLIPTokenizer;

    #[test]
    fn every_caption_word_is_one_token_of_the_real_tokenizer() {
        let dir = std::env::temp_dir().join(format!("vdm-shapes-vocab-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let size = write_tokenizer(&dir, 16).unwrap();
        let tokenizer = CLIPTokenizer::from_dir(&dir).unwrap();
        assert_eq!(tokenizer.vocab_size(), size);
        assert_eq!(tokenizer.max_length(), 16);
        let (vocab, _) = vocabulary();
        for word in words() {
            let ids = tokenizer.tokenize(word).unwrap();
            assert_eq!(ids.len(), 1, "{word}: {ids:?}");
            assert_eq!(vocab[ids[0] as usize], format!("{word}</w>"));
        }
        let ids = tokenizer
            .encode("A Red circle moving right then up")
            .unwrap();
        assert_eq!(ids.len(), 16);
        assert_eq!(ids[0], tokenizer.bos_token_id());
        assert_eq!(ids[8], tokenizer.eos_token_id());
        // Text outside the domain still tokenizes (byte-level fallback).
        assert!(tokenizer.tokenize("zebra!").unwrap().len() > 1);
        std::fs::remove_dir_all(dir).unwrap();
    }
}
