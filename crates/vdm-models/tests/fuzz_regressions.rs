//! Inputs the fuzz harnesses (`examples/src/fuzz`, `cargo run --release --example fuzz`) found
//! to panic, kept as regression tests: each must now be a typed error. The files are in
//! `fixtures/fuzz/`.

use std::path::{Path, PathBuf};

use vdm_models::clip::CLIPTokenizer;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures")
}

/// A copy of the fixture tokenizer folder (`tokenizer.json` layout) with `tokenizer.json`
/// replaced by `fixtures/fuzz/<finding>`.
fn tokenizer_folder_with(finding: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "vdm-fuzz-regression-{finding}-{}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    for entry in std::fs::read_dir(fixtures().join("clip/tokenizer")).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), dir.join(entry.file_name())).unwrap();
    }
    let bytes = std::fs::read(fixtures().join("fuzz").join(finding))
        .unwrap_or_else(|e| panic!("fixture {finding}: {e}"));
    std::fs::write(dir.join("tokenizer.json"), bytes).unwrap();
    dir
}

/// Malformed `tokenizer.json` files on which the `tokenizers` crate panicked ("Helper:
/// Error(...)") instead of returning its error.
#[test]
fn malformed_tokenizer_json_is_a_typed_error() {
    for finding in [
        "tokenizer-json-unclosed-array.json",
        "tokenizer-json-bad-ident.json",
    ] {
        let dir = tokenizer_folder_with(finding);
        let err = CLIPTokenizer::from_dir(&dir).unwrap_err().to_string();
        assert!(
            err.contains("not a tokenizers JSON file"),
            "{finding}: {err}"
        );
        assert!(
            err.contains("tokenizer.json"),
            "{finding}: the error names the file: {err}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
    // The unmodified folder still loads.
    assert!(CLIPTokenizer::from_dir(fixtures().join("clip/tokenizer")).is_ok());
}
