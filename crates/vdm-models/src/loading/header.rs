//! The safetensors header: its types, and reading and validating it (from a file or from
//! memory) without touching the tensor data.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Read;
use std::path::Path;

use burn::tensor::{BoolStore, DType};
use vdm_core::{Error, Result};

/// Largest header the safetensors format allows (the reference implementation's limit).
const MAX_HEADER_LEN: u64 = 100_000_000;

/// One tensor described by a safetensors header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorEntry {
    /// The tensor's key.
    pub name: String,
    /// The safetensors dtype name (`F32`, `F16`, `BF16`, `I64`, …).
    pub dtype: String,
    /// The tensor's shape, in the file's (PyTorch) layout.
    pub shape: Vec<usize>,
    /// Byte range of the data, relative to the end of the header.
    pub data_offsets: (u64, u64),
}

impl TensorEntry {
    /// Number of elements.
    pub fn num_elements(&self) -> usize {
        self.shape.iter().product()
    }

    /// The Burn dtype this tensor loads as, or `None` when Burn cannot load the file's dtype
    /// (8-bit floats, sub-byte floats, `U16`, `C64`).
    pub fn burn_dtype(&self) -> Option<DType> {
        burn_dtype(&self.dtype)
    }
}

/// A parsed and validated safetensors header.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SafetensorsHeader {
    /// The tensors, sorted by key.
    pub tensors: Vec<TensorEntry>,
    /// The free-form `__metadata__` map (e.g. `{"format": "pt"}`).
    pub metadata: BTreeMap<String, String>,
}

/// Reads and validates the header of the safetensors file at `path`, without reading the
/// tensor data.
///
/// Useful for diagnostics (listing a checkpoint's keys, shapes and dtypes). The checks are
/// those of the format: a sane header length, valid JSON, known dtypes, data ranges that
/// match each shape and tile the data section exactly, and a data section as long as the
/// header says (so a truncated download is reported as such).
///
/// # Errors
///
/// [`Error::File`](vdm_core::Error::File) naming the path and the problem.
pub fn read_safetensors_header(path: impl AsRef<Path>) -> Result<SafetensorsHeader> {
    let path = path.as_ref();
    read_header_from_file(path).map_err(|reason| file_error(&path.display().to_string(), reason))
}

/// Parses and validates the header of an in-memory safetensors file (all of it, header and
/// data), as [`read_safetensors_header`] does for a path.
///
/// ```
/// use vdm_models::loading::parse_safetensors_header;
///
/// // An 8-byte length, then the JSON header; no tensors, so no data.
/// let json = br#"{"__metadata__":{"format":"pt"}}"#;
/// let mut file = (json.len() as u64).to_le_bytes().to_vec();
/// file.extend_from_slice(json);
/// let header = parse_safetensors_header(&file).unwrap();
/// assert!(header.tensors.is_empty());
/// assert_eq!(header.metadata["format"], "pt");
///
/// // Cut the file short: a typed error says what is wrong.
/// assert!(parse_safetensors_header(&file[..20]).is_err());
/// ```
///
/// # Errors
///
/// [`Error::File`](vdm_core::Error::File) describing the problem.
pub fn parse_safetensors_header(bytes: &[u8]) -> Result<SafetensorsHeader> {
    read_header_from_bytes(bytes).map_err(|reason| file_error(IN_MEMORY, reason))
}

/// Reads the header of a file, checking it against the file's length.
fn read_header_from_file(path: &Path) -> std::result::Result<SafetensorsHeader, String> {
    let mut file = File::open(path).map_err(|e| e.to_string())?;
    let file_len = file.metadata().map_err(|e| e.to_string())?.len();
    let mut prefix = [0u8; 8];
    if file_len < 8 {
        return Err(too_short(file_len));
    }
    file.read_exact(&mut prefix).map_err(|e| e.to_string())?;
    let header_len = check_header_len(u64::from_le_bytes(prefix), file_len)?;
    let mut json = vec![0u8; header_len as usize];
    file.read_exact(&mut json)
        .map_err(|e| format!("cannot read the {header_len}-byte header: {e}"))?;
    parse_header(&json, file_len - 8 - header_len)
}

/// Reads the header of an in-memory file.
fn read_header_from_bytes(bytes: &[u8]) -> std::result::Result<SafetensorsHeader, String> {
    let file_len = bytes.len() as u64;
    let Some((prefix, rest)) = bytes.split_first_chunk::<8>() else {
        return Err(too_short(file_len));
    };
    let header_len = check_header_len(u64::from_le_bytes(*prefix), file_len)?;
    let (json, data) = rest.split_at(header_len as usize);
    parse_header(json, data.len() as u64)
}

fn too_short(file_len: u64) -> String {
    format!(
        "not a safetensors file: it is {file_len} bytes long, shorter than the 8-byte header \
         length that starts the format"
    )
}

/// Checks the header length read from the first 8 bytes against the limit and the file size.
fn check_header_len(header_len: u64, file_len: u64) -> std::result::Result<u64, String> {
    if header_len > MAX_HEADER_LEN {
        return Err(format!(
            "not a safetensors file: the first 8 bytes announce a {header_len}-byte header, \
             more than the format's limit of {MAX_HEADER_LEN}"
        ));
    }
    if header_len > file_len - 8 {
        return Err(format!(
            "truncated or not a safetensors file: the header is announced as {header_len} \
             bytes but only {} bytes follow the length prefix",
            file_len - 8
        ));
    }
    Ok(header_len)
}

/// Parses the JSON header and checks every tensor's byte range against its shape and the
/// `data_len` bytes that follow the header.
fn parse_header(json: &[u8], data_len: u64) -> std::result::Result<SafetensorsHeader, String> {
    let text =
        std::str::from_utf8(json).map_err(|e| format!("the header is not UTF-8 text: {e}"))?;
    let value: serde_json::Value = serde_json::from_str(text)
        .map_err(|e| format!("the header is not valid JSON (corrupt file?): {e}"))?;
    let serde_json::Value::Object(entries) = value else {
        return Err("the header is not a JSON object".to_string());
    };

    let mut header = SafetensorsHeader::default();
    for (name, entry) in entries {
        if name == "__metadata__" {
            let serde_json::Value::Object(map) = entry else {
                return Err("`__metadata__` is not a JSON object".to_string());
            };
            for (key, value) in map {
                let serde_json::Value::String(value) = value else {
                    return Err(format!("`__metadata__.{key}` is not a string"));
                };
                header.metadata.insert(key, value);
            }
            continue;
        }
        header.tensors.push(parse_entry(name, &entry)?);
    }

    // The data section must be tiled exactly, in offset order.
    let mut by_offset: Vec<&TensorEntry> = header.tensors.iter().collect();
    by_offset.sort_by_key(|t| t.data_offsets);
    let mut end = 0u64;
    let mut previous: Option<&str> = None;
    for tensor in by_offset {
        let (begin, stop) = tensor.data_offsets;
        if begin != end {
            return Err(match previous {
                Some(previous) => format!(
                    "corrupt header: the data of `{}` starts at byte {begin} but that of \
                     `{previous}` ends at byte {end} (gap or overlap)",
                    tensor.name
                ),
                None => format!(
                    "corrupt header: the first tensor `{}` starts at byte {begin} instead of 0",
                    tensor.name
                ),
            });
        }
        end = stop;
        previous = Some(&tensor.name);
    }
    if end > data_len {
        return Err(format!(
            "the file is truncated: its header describes {end} bytes of tensor data but only \
             {data_len} bytes follow the header"
        ));
    }
    if end < data_len {
        return Err(format!(
            "corrupt file: {} unexplained bytes follow the last tensor's data",
            data_len - end
        ));
    }
    header.tensors.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(header)
}

/// Parses one tensor entry `{"dtype": .., "shape": [..], "data_offsets": [begin, end]}`.
fn parse_entry(
    name: String,
    entry: &serde_json::Value,
) -> std::result::Result<TensorEntry, String> {
    let field = |field: &str| {
        entry
            .get(field)
            .ok_or_else(|| format!("header entry `{name}` has no `{field}`"))
    };
    let dtype = field("dtype")?
        .as_str()
        .ok_or_else(|| format!("the dtype of `{name}` is not a string"))?
        .to_string();
    let bits =
        dtype_bits(&dtype).ok_or_else(|| format!("`{name}` has the unknown dtype {dtype:?}"))?;
    let shape = field("shape")?
        .as_array()
        .ok_or_else(|| format!("the shape of `{name}` is not an array"))?
        .iter()
        .map(|d| d.as_u64().and_then(|d| usize::try_from(d).ok()))
        .collect::<Option<Vec<usize>>>()
        .ok_or_else(|| format!("the shape of `{name}` is not a list of sizes"))?;
    let offsets = field("data_offsets")?
        .as_array()
        .and_then(|o| match o.as_slice() {
            [begin, end] => Some((begin.as_u64()?, end.as_u64()?)),
            _ => None,
        })
        .ok_or_else(|| format!("the data_offsets of `{name}` are not two byte positions"))?;
    let byte_len = shape
        .iter()
        .try_fold(bits as u64, |acc, &d| acc.checked_mul(d as u64))
        .filter(|bits| bits.is_multiple_of(8))
        .map(|bits| bits / 8)
        .ok_or_else(|| format!("`{name}` has an impossible shape {shape:?} for {dtype}"))?;
    if offsets.1 < offsets.0 || offsets.1 - offsets.0 != byte_len {
        return Err(format!(
            "corrupt header: `{name}` ({dtype} {shape:?}) needs {byte_len} bytes but its \
             data_offsets {offsets:?} span {}",
            offsets.1.saturating_sub(offsets.0)
        ));
    }
    Ok(TensorEntry {
        name,
        dtype,
        shape,
        data_offsets: offsets,
    })
}

/// Bits per element of a safetensors dtype name.
fn dtype_bits(dtype: &str) -> Option<usize> {
    Some(match dtype {
        "F4" => 4,
        "F6_E2M3" | "F6_E3M2" => 6,
        "BOOL" | "U8" | "I8" | "F8_E5M2" | "F8_E4M3" | "F8_E8M0" | "F8_E4M3FNUZ"
        | "F8_E5M2FNUZ" => 8,
        "I16" | "U16" | "F16" | "BF16" => 16,
        "I32" | "U32" | "F32" => 32,
        "I64" | "U64" | "F64" | "C64" => 64,
        _ => return None,
    })
}

/// The Burn dtype burn-store loads a safetensors dtype as, if it can.
fn burn_dtype(dtype: &str) -> Option<DType> {
    Some(match dtype {
        "F64" => DType::F64,
        "F32" => DType::F32,
        "F16" => DType::F16,
        "BF16" => DType::BF16,
        "I64" => DType::I64,
        "I32" => DType::I32,
        "I16" => DType::I16,
        "I8" => DType::I8,
        "U64" => DType::U64,
        "U32" => DType::U32,
        "U8" => DType::U8,
        "BOOL" => DType::Bool(BoolStore::Native),
        _ => return None,
    })
}

/// What [`Error::File`] names when the checkpoint came from memory rather than a path.
pub(super) const IN_MEMORY: &str = "<in-memory safetensors>";

/// [`Error::File`] naming the checkpoint at `path` (or [`IN_MEMORY`]).
pub(super) fn file_error(path: &str, reason: String) -> Error {
    Error::File {
        path: path.to_string(),
        reason,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::loading::test_support::*;
    use safetensors::Dtype;

    #[test]
    fn header_lists_keys_shapes_and_dtypes() {
        let mut entries = full_checkpoint();
        entries.truncate(2);
        let file = TempFile::new(&serialize(&entries, Dtype::BF16));
        let header = read_safetensors_header(&file.0).unwrap();
        let summary: Vec<(&str, &str, &[usize])> = header
            .tensors
            .iter()
            .map(|t| (t.name.as_str(), t.dtype.as_str(), t.shape.as_slice()))
            .collect();
        assert_eq!(
            summary,
            vec![
                ("proj.bias", "BF16", &[2usize][..]),
                ("proj.weight", "BF16", &[2, 3][..])
            ]
        );
        assert_eq!(header.tensors[1].num_elements(), 6);
        assert_eq!(header.tensors[1].burn_dtype(), Some(DType::BF16));
        assert_eq!(
            parse_safetensors_header(&std::fs::read(&file.0).unwrap()).unwrap(),
            header
        );
    }
}
