//! Loading diffusers-format safetensors checkpoints into Burn modules, unchanged.
//!
//! A diffusers checkpoint (`diffusion_pytorch_model.safetensors`, often `fp16`) is loaded
//! straight into a Burn module whose field names mirror the PyTorch attribute names. The loader
//! is model-agnostic: everything model-specific lives in the [`KeyRemap`] table the model
//! passes in.
//!
//! # What [`load_safetensors`] does
//!
//! 1. Reads and validates the safetensors header ([`read_safetensors_header`]); a truncated or
//!    corrupt file is an [`Error::File`](vdm_core::Error::File) naming the path and the problem.
//! 2. Selects the keys under [`LoadOptions::prefix`] if one is set (stripping it), then renames
//!    the keys with the caller's extra remaps ([`LoadOptions::remap`]) and the model's
//!    [`KeyRemap`] table. Two file keys that end up with one name are an error rather than a
//!    silent overwrite.
//! 3. Applies the tensors with burn-store's `PyTorchToBurnAdapter` (every 2-D `weight` of a
//!    `burn::nn::Linear` is transposed from PyTorch's `[out, in]` to Burn's `[in, out]`;
//!    `weight`/`bias` of `GroupNorm`/`LayerNorm`/`BatchNorm`/`RmsNorm` load into
//!    `gamma`/`beta`; convolutions and embeddings already share PyTorch's layout), casting every
//!    float tensor to [`LoadOptions::dtype`] (the file may hold `f32`, `f16` or `bf16`). Enum
//!    variant names are not part of the paths ([`LoadOptions::skip_enum_variants`]).
//! 4. Collects every discrepancy at once: model parameters the file lacks (*missing*), file
//!    tensors the model does not use (*unexpected*, minus the ones matching
//!    [`LoadOptions::ignore_unexpected`]) and tensors of the wrong shape (*mismatched*, with the
//!    expected and found shapes). Any of them is one
//!    [`Error::Weights`](vdm_core::Error::Weights) unless [`LoadOptions::allow_partial`] is
//!    set, in which case they are listed in the [`LoadReport`] and the affected parameters
//!    keep their initial values.
//!
//! One idea per file, every item re-exported here:
//! - `loading/options.rs`: [`KeyRemap`] and [`LoadOptions`];
//! - `loading/load.rs`: [`load_safetensors`], [`load_safetensors_bytes`] and the load path
//!   they share (steps 1 to 4 above);
//! - `loading/remap.rs`: compiling the prefix selection, remaps and ignore patterns (step 2);
//! - `loading/probe.rs`: the adapter that applies and records each tensor's layout, so that
//!   shape errors are stated in the file's layout and keys (step 3);
//! - `loading/report.rs`: [`LoadReport`] and [`ShapeMismatch`] (step 4);
//! - `loading/header.rs`: reading and validating the safetensors header;
//! - `loading/files.rs`: finding a model folder's weight and config files;
//! - `loading/save.rs`: the inverse, writing a module as a diffusers checkpoint
//!   ([`save_safetensors`]).
//!
//! # Key remapping
//!
//! Field names should equal the diffusers attribute names (`down_blocks`, `resnets`, `norm1`,
//! `time_emb_proj`, …): a `Vec<M>` field `blocks` holds its elements at `blocks.0.`,
//! `blocks.1.`, …, exactly like a PyTorch `ModuleList`. What remains to remap are the indices of
//! `nn.Sequential`/`ModuleList` wrappers around a single layer (`to_out.0`, `ff.net.2`, …),
//! which a model lists in a `&'static [KeyRemap]` table.
//!
//! Remap semantics are those of burn-store's `KeyRemapper`: **every** entry is tried in order,
//! each on the name produced by the entries before it (not first-match-wins), and a matching
//! entry replaces *all* its matches. Anchor patterns (`^…`, `…$`) and write capture groups
//! followed by a name character as `${1}` (`$1_x` would mean the group named `1_x`).
//!
//! ```no_run
//! use burn::nn::{Linear, LinearConfig};
//! use burn::module::Module;
//! use burn::tensor::Device;
//! use vdm_models::loading::{KeyRemap, LoadOptions, load_safetensors};
//!
//! #[derive(Module, Debug)]
//! struct Attention {
//!     to_out: Linear,
//! }
//!
//! // diffusers' `to_out` is `ModuleList([Linear, Dropout])`.
//! const REMAPS: &[KeyRemap] = &[KeyRemap::new(
//!     r"^to_out\.0\.",
//!     "to_out.",
//!     "diffusers wraps the output projection in a ModuleList with a dropout",
//! )];
//!
//! let device = Device::flex();
//! let model = Attention { to_out: LinearConfig::new(320, 320).init(&device) };
//! let (model, report) = load_safetensors(
//!     model,
//!     "attention.safetensors",
//!     REMAPS,
//!     &LoadOptions::new().ignore_prefix("to_q."),
//! )?;
//! println!("{report}");
//! # Ok::<(), vdm_core::Error>(())
//! ```

mod files;
mod header;
mod load;
mod options;
mod probe;
mod remap;
mod report;
mod save;
#[cfg(test)]
mod test_support;

pub use files::find_weight_file;
pub(crate) use files::read_config;
pub use header::{
    SafetensorsHeader, TensorEntry, parse_safetensors_header, read_safetensors_header,
};
pub use load::{load_safetensors, load_safetensors_bytes};
pub use options::{KeyRemap, LoadOptions};
pub use report::{LoadReport, ShapeMismatch};
pub use save::{save_safetensors, save_safetensors_as};
