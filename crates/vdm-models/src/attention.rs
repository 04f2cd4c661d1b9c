//! Attention, the GEGLU feed-forward and the transformer block shared by every spatial and
//! temporal transformer, mirroring diffusers' `models/attention_processor.py` (`Attention` with
//! `AttnProcessor2_0`) and `models/attention.py` (`FeedForward`, `GEGLU` from
//! `models/activations.py`, `BasicTransformerBlock`).
//!
//! Field names follow the checkpoint keys; the few `nn.ModuleList` indices diffusers adds
//! (`to_out.0`, `ff.net.0.proj`, `ff.net.2`) are renamed by [`crate::keymap`].
//!
//! Dropout layers of the PyTorch modules are not materialised: vdm runs inference only, where
//! dropout is the identity (diffusers models are used in `.eval()` mode).
//!
//! One idea per file:
//! - `attention/multi_head.rs`: [`AttentionConfig`] and [`Attention`] (diffusers
//!   `attention_processor.py`), with the host-kernel glue of the flex backend;
//! - `attention/packed.rs`: the packed q/k/v API of [`Attention`] that temporal stages drive;
//! - `attention/feed_forward.rs`: [`FeedForwardConfig`] and the GEGLU [`FeedForward`]
//!   (`attention.py`, `activations.py`), fused on the flex backend by
//!   `attention/feed_forward/cpu_fused.rs`;
//! - `attention/transformer_block.rs`: [`BasicTransformerBlockConfig`] and
//!   [`BasicTransformerBlock`] (`attention.py`);
//! - `attention/temporal_stages.rs`: a temporal [`BasicTransformerBlock`] as
//!   [`TemporalStages`](vdm_core::temporal::TemporalStages).
//!
//! The crate-wide argument checks (`ensure_nonzero`, `ensure_groups`, `ensure_dropout`,
//! `ensure_eps`, `expect_tokens`, `expect_images`) live in `crate::checks` and are re-exported
//! here, where they used to be defined. The host kernels themselves are in their own layer,
//! `crate::cpu`.

mod feed_forward;
mod multi_head;
mod packed;
mod temporal_stages;
#[cfg(test)]
mod test_support;
mod transformer_block;

pub(crate) use crate::checks::{
    ensure_dropout, ensure_eps, ensure_groups, ensure_nonzero, expect_images, expect_tokens,
};
pub use feed_forward::{FeedForward, FeedForwardConfig};
pub use multi_head::{Attention, AttentionConfig};
pub use transformer_block::{BasicTransformerBlock, BasicTransformerBlockConfig};
