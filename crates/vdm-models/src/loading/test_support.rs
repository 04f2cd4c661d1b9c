//! The fixtures shared by the loader's tests: a small diffusers-like module ([`Net`]), its
//! checkpoint in PyTorch layout, safetensors serialisation and temporary files.

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};

use burn::module::{Module, Param};
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{GroupNorm, GroupNormConfig, Linear, LinearConfig};
use burn::tensor::{Device, Tensor};
use safetensors::Dtype;
use safetensors::tensor::TensorView;
use vdm_core::Result;

use super::{KeyRemap, LoadOptions, LoadReport, load_safetensors};

/// A diffusers attention-output-like block: `to_out` is `ModuleList([Linear, Dropout])`
/// in PyTorch, a plain Linear here.
#[derive(Module, Debug)]
pub(super) struct Block {
    pub(super) to_out: Linear,
}

#[derive(Module, Debug)]
pub(super) struct Net {
    pub(super) proj: Linear,
    pub(super) norm: GroupNorm,
    pub(super) conv: Conv2d,
    pub(super) blocks: Vec<Block>,
}

pub(super) const REMAPS: &[KeyRemap] = &[KeyRemap::new(
    r"^(blocks\.\d+\.to_out)\.0\.",
    "${1}.",
    "to_out is ModuleList([Linear, Dropout]) in diffusers",
)];

pub(super) fn device() -> Device {
    Device::flex()
}

pub(super) fn net() -> Net {
    let device = device();
    Net {
        proj: LinearConfig::new(3, 2).init(&device),
        norm: GroupNormConfig::new(2, 4).init(&device),
        conv: Conv2dConfig::new([2, 4], [3, 3]).init(&device),
        blocks: (0..2)
            .map(|_| Block {
                to_out: LinearConfig::new(3, 2).init(&device),
            })
            .collect(),
    }
}

/// A PyTorch-layout tensor: key, shape, values.
pub(super) type Entry = (String, Vec<usize>, Vec<f32>);

pub(super) fn entry(key: &str, shape: &[usize], seed: usize) -> Entry {
    let n: usize = shape.iter().product();
    let values = (0..n)
        .map(|i| ((i * 7 + seed * 13) % 23) as f32 * 0.173 - 1.9)
        .collect();
    (key.to_string(), shape.to_vec(), values)
}

/// Every tensor of `Net` as diffusers would save it.
pub(super) fn full_checkpoint() -> Vec<Entry> {
    vec![
        entry("proj.weight", &[2, 3], 1),
        entry("proj.bias", &[2], 2),
        entry("norm.weight", &[4], 3),
        entry("norm.bias", &[4], 4),
        entry("conv.weight", &[4, 2, 3, 3], 5),
        entry("conv.bias", &[4], 6),
        entry("blocks.0.to_out.0.weight", &[2, 3], 7),
        entry("blocks.0.to_out.0.bias", &[2], 8),
        entry("blocks.1.to_out.0.weight", &[2, 3], 9),
        entry("blocks.1.to_out.0.bias", &[2], 10),
    ]
}

pub(super) fn values<'a>(entries: &'a [Entry], key: &str) -> &'a [f32] {
    &entries.iter().find(|e| e.0 == key).unwrap().2
}

pub(super) fn serialize(entries: &[Entry], dtype: Dtype) -> Vec<u8> {
    let bytes: Vec<Vec<u8>> = entries
        .iter()
        .map(|(_, _, v)| match dtype {
            Dtype::F32 => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            Dtype::F16 => v
                .iter()
                .flat_map(|x| half::f16::from_f32(*x).to_le_bytes())
                .collect(),
            Dtype::BF16 => v
                .iter()
                .flat_map(|x| half::bf16::from_f32(*x).to_le_bytes())
                .collect(),
            other => panic!("test helper does not write {other:?}"),
        })
        .collect();
    let views: Vec<(String, TensorView<'_>)> = entries
        .iter()
        .zip(&bytes)
        .map(|((key, shape, _), data)| {
            (
                key.clone(),
                TensorView::new(dtype, shape.clone(), data).unwrap(),
            )
        })
        .collect();
    safetensors::serialize(views, None).unwrap()
}

/// A file under the temp dir, deleted on drop.
pub(super) struct TempFile(pub(super) PathBuf);

impl TempFile {
    pub(super) fn new(bytes: &[u8]) -> Self {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let path = std::env::temp_dir().join(format!(
            "vdm-loading-test-{}-{}.safetensors",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::write(&path, bytes).unwrap();
        Self(path)
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

pub(super) fn to_vec<const D: usize>(tensor: Tensor<D>) -> Vec<f32> {
    tensor.into_data().try_to_vec::<f32>().unwrap()
}

pub(super) fn param_vec<const D: usize>(param: &Param<Tensor<D>>) -> Vec<f32> {
    to_vec(param.val())
}

/// `[rows, cols]` row-major → `[cols, rows]` row-major.
pub(super) fn transpose(values: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    (0..cols)
        .flat_map(|c| (0..rows).map(move |r| values[r * cols + c]))
        .collect()
}

pub(super) fn load_file(entries: &[Entry], options: &LoadOptions) -> Result<(Net, LoadReport)> {
    let file = TempFile::new(&serialize(entries, Dtype::F32));
    load_safetensors(net(), &file.0, REMAPS, options)
}
