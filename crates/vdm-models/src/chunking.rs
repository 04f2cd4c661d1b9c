//! Chunked inference: run a layer over slices of its batch dimension and concatenate, so that
//! peak memory grows with the chunk instead of the whole video.
//!
//! Spatial layers see `[B·F, C, H, W]` (chunks of frames), temporal layers `[B·H·W, F, C]`
//! (chunks of spatial positions). Every layer in vdm treats batch items independently, so the
//! chunked result equals the unchunked one (up to GEMM blocking, ~1e-6).

use burn::tensor::Tensor;
use vdm_core::Result;

/// How large the slices of chunked inference are (`None` = no chunking).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Chunking {
    /// Frames (items of `[B·F, …]`) per call of a spatial layer (ResNet, spatial transformer,
    /// up/down sampling, VAE decoder).
    pub frames: Option<usize>,
    /// Spatial positions (items of `[B·H·W, F, C]`) per call of a temporal layer.
    pub positions: Option<usize>,
}

impl Chunking {
    /// No chunking: every layer sees the whole video.
    pub fn none() -> Self {
        Self::default()
    }

    /// Chunks of `frames` frames for spatial layers and `positions` positions for temporal ones.
    pub fn new(frames: usize, positions: usize) -> Self {
        Self {
            frames: Some(frames.max(1)),
            positions: Some(positions.max(1)),
        }
    }
}

/// Applies `f` to slices of at most `chunk` items along dimension 0 of `x` and concatenates the
/// results along dimension 0 (`chunk = None`: one call).
///
/// # Shapes
/// - `x`: `[N, ...]`; `f` maps `[n, ...]` to `[n, ...']`
/// - output: `[N, ...']`
pub fn map_chunks<const D: usize, const E: usize>(
    x: Tensor<D>,
    chunk: Option<usize>,
    mut f: impl FnMut(Tensor<D>, std::ops::Range<usize>) -> Result<Tensor<E>>,
) -> Result<Tensor<E>> {
    let n = x.dims()[0];
    match chunk {
        Some(size) if size < n => {
            let mut outputs = Vec::with_capacity(n.div_ceil(size));
            let mut start = 0;
            while start < n {
                let len = size.min(n - start);
                outputs.push(f(x.clone().narrow(0, start, len), start..start + len)?);
                start += len;
            }
            Ok(Tensor::cat(outputs, 0))
        }
        _ => f(x, 0..n),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::{Device, Int};

    #[test]
    fn chunked_map_equals_whole_map() {
        let x = Tensor::<1, Int>::arange(0..10, &Device::flex())
            .float()
            .reshape([10, 1]);
        let whole = map_chunks(x.clone(), None, |t, _| Ok(t.mul_scalar(2.0))).unwrap();
        let mut ranges = Vec::new();
        let parts = map_chunks(x, Some(4), |t, r| {
            ranges.push(r);
            Ok(t.mul_scalar(2.0))
        })
        .unwrap();
        parts.into_data().assert_eq(&whole.into_data(), true);
        assert_eq!(ranges, [0..4, 4..8, 8..10]);
    }
}
