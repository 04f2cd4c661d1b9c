//! Learned α mixing of a spatial and a temporal branch: Video LDM's `z' = α·z + (1 − α)·z''`
//! (Blattmann et al. 2023, "Align your Latents", §3.1) as implemented by diffusers'
//! `AlphaBlender` for Stable Video Diffusion (`src/diffusers/models/resnet.py`, mirrored here
//! parameter for parameter).
//!
//! After each spatial layer the video model runs a temporal layer and blends the two outputs
//! with a per-layer factor `α ∈ [0, 1]`. With `α = 1` the image model is recovered exactly,
//! which is what lets Video LDM and SVD start from a frozen image backbone.
//!
//! ```
//! use burn::tensor::{Device, Tensor};
//! use vdm_models::alpha_blender::AlphaBlenderConfig;
//!
//! let device = Device::flex();
//! // SVD's `time_mixer`: α = sigmoid(mix_factor), image-only frames keep the spatial output.
//! let blender = AlphaBlenderConfig::new(0.5).init(&device).unwrap();
//! let spatial = Tensor::<5>::ones([1, 4, 3, 2, 2], &device);
//! let temporal = Tensor::<5>::zeros([1, 4, 3, 2, 2], &device);
//! let indicator = Tensor::<2>::zeros([1, 3], &device); // no image-only frames
//! let mixed = blender.forward(spatial, temporal, Some(indicator)).unwrap();
//! assert_eq!(mixed.dims(), [1, 4, 3, 2, 2]);
//! ```

use std::fmt;
use std::str::FromStr;

use burn::config::Config;
use burn::module::{Module, Param};
use burn::tensor::activation::sigmoid;
use burn::tensor::{Device, Tensor, TensorData};
use vdm_core::{Error, Result};

/// How [`AlphaBlender`] computes α (diffusers' `AlphaBlender.strategies`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MergeStrategy {
    /// `"fixed"`: α is the constant `mix_factor` (a buffer in diffusers, not trained).
    Fixed,
    /// `"learned"`: α = sigmoid(`mix_factor`).
    Learned,
    /// `"learned_with_images"`: α = 1 for frames flagged by `image_only_indicator`, else
    /// sigmoid(`mix_factor`) (SVD's default).
    LearnedWithImages,
}

impl MergeStrategy {
    /// Every accepted `merge_strategy` string, in diffusers' order.
    pub const NAMES: [&'static str; 3] = ["learned", "fixed", "learned_with_images"];

    /// The diffusers name of the strategy.
    pub fn as_str(self) -> &'static str {
        match self {
            MergeStrategy::Fixed => "fixed",
            MergeStrategy::Learned => "learned",
            MergeStrategy::LearnedWithImages => "learned_with_images",
        }
    }

    /// Parses a diffusers `merge_strategy` string.
    ///
    /// # Errors
    /// [`Error::UnknownVariant`] naming `merge_strategy` for any other value.
    pub fn parse(value: &str) -> Result<Self> {
        match value {
            "fixed" => Ok(MergeStrategy::Fixed),
            "learned" => Ok(MergeStrategy::Learned),
            "learned_with_images" => Ok(MergeStrategy::LearnedWithImages),
            other => Err(Error::unknown_variant(
                "merge_strategy",
                other,
                &Self::NAMES,
            )),
        }
    }
}

impl FromStr for MergeStrategy {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        Self::parse(s)
    }
}

impl fmt::Display for MergeStrategy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Configuration of an [`AlphaBlender`], with diffusers' argument names and defaults.
#[derive(Config, Debug)]
pub struct AlphaBlenderConfig {
    /// Initial value of `mix_factor` (diffusers' `alpha`; SVD uses 0.5). For `fixed` this is
    /// α itself, for the learned strategies α = sigmoid(`alpha`).
    pub alpha: f64,
    /// `"fixed"`, `"learned"` or `"learned_with_images"` (see [`MergeStrategy`]).
    #[config(default = "String::from(\"learned_with_images\")")]
    pub merge_strategy: String,
    /// Use `1 − α` instead of α (diffusers sets it for the temporal VAE decoder, where the
    /// temporal branch is the one kept at α = 1).
    #[config(default = false)]
    pub switch_spatial_to_temporal_mix: bool,
}

impl AlphaBlenderConfig {
    /// Creates the blender with `mix_factor = [alpha]`.
    ///
    /// # Errors
    /// - [`Error::UnknownVariant`] naming `merge_strategy` for an unknown strategy;
    /// - [`Error::InvalidConfig`] naming `alpha` if it is not finite.
    pub fn init(&self, device: &Device) -> Result<AlphaBlender> {
        let merge_strategy = MergeStrategy::parse(&self.merge_strategy)?;
        vdm_core::error::ensure_finite("alpha", self.alpha)?;
        let value = Tensor::<1>::from_data(TensorData::new(vec![self.alpha as f32], [1]), device);
        let mut mix_factor = Param::from_tensor(value);
        if merge_strategy == MergeStrategy::Fixed {
            // A registered buffer in diffusers: saved and loaded, never trained.
            mix_factor = mix_factor.set_require_grad(false);
        }
        Ok(AlphaBlender {
            mix_factor,
            merge_strategy,
            switch_spatial_to_temporal_mix: self.switch_spatial_to_temporal_mix,
        })
    }
}

/// Blends a spatial and a temporal branch, `x = α·x_spatial + (1 − α)·x_temporal`
/// (Video LDM §3.1; diffusers `models/resnet.py::AlphaBlender`, used as `time_mixer` in
/// `TransformerSpatioTemporalModel` and in `SpatioTemporalResBlock` / the temporal VAE).
///
/// The checkpoint key of the single parameter is `mix_factor` (shape `[1]`), as in diffusers.
#[derive(Module, Debug)]
pub struct AlphaBlender {
    /// The blending logit (`learned*`) or α itself (`fixed`), shape `[1]`.
    pub mix_factor: Param<Tensor<1>>,
    /// How α is computed from `mix_factor`.
    #[module(skip)]
    pub merge_strategy: MergeStrategy,
    /// Whether α is replaced by `1 − α` before blending.
    pub switch_spatial_to_temporal_mix: bool,
}

impl AlphaBlender {
    /// α before the optional switch, shaped to broadcast against a tensor of dimensions `dims`
    /// (diffusers' `get_alpha`).
    ///
    /// # Shapes
    /// - `fixed` / `learned`: `[1, …, 1]` (the indicator is ignored)
    /// - `learned_with_images`, `D = 5` (`dims = [B, C, F, H, W]`): indicator `[B, F]`,
    ///   output `[B, 1, F, 1, 1]`
    /// - `learned_with_images`, `D = 3` (`dims = [B·F, H·W, C]`): indicator `[B, F]`,
    ///   output `[B·F, 1, 1]`
    ///
    /// # Errors
    /// For `learned_with_images`: [`Error::InvalidConfig`] naming `image_only_indicator` when
    /// it is missing or the rank is not 3 or 5; [`Error::Shape`] naming
    /// `image_only_indicator` when it does not match `dims`.
    pub fn alpha<const D: usize>(
        &self,
        image_only_indicator: Option<Tensor<2>>,
        dims: [usize; D],
    ) -> Result<Tensor<D>> {
        let mix = self.mix_factor.val();
        match self.merge_strategy {
            MergeStrategy::Fixed => Ok(mix.reshape([1; D])),
            MergeStrategy::Learned => Ok(sigmoid(mix).reshape([1; D])),
            MergeStrategy::LearnedWithImages => {
                let indicator = image_only_indicator.ok_or_else(|| {
                    Error::invalid(
                        "image_only_indicator",
                        "required by merge_strategy \"learned_with_images\" ([B, F], \
                         nonzero = image-only frame)",
                    )
                })?;
                let [b, f] = indicator.dims();
                let mut shape = [1usize; D];
                match D {
                    5 => {
                        if dims[0] != b || dims[2] != f {
                            return Err(Error::shape(
                                "image_only_indicator",
                                format!(
                                    "[B, F] = [{}, {}] to match x_spatial [B, C, F, H, W] = {dims:?}",
                                    dims[0], dims[2]
                                ),
                                &[b, f],
                            ));
                        }
                        shape[0] = b;
                        shape[2] = f;
                    }
                    3 => {
                        if dims[0] != b * f {
                            return Err(Error::shape(
                                "image_only_indicator",
                                format!(
                                    "[B, F] with B·F = {} to match x_spatial [B·F, H·W, C] = \
                                     {dims:?}",
                                    dims[0]
                                ),
                                &[b, f],
                            ));
                        }
                        shape[0] = b * f;
                    }
                    _ => {
                        return Err(Error::invalid(
                            "image_only_indicator",
                            format!(
                                "merge_strategy \"learned_with_images\" needs 3-D \
                                 ([B·F, H·W, C]) or 5-D ([B, C, F, H, W]) inputs, got {D}-D"
                            ),
                        ));
                    }
                }
                let learned = sigmoid(mix).reshape([1, 1]).expand([b, f]);
                let image_only = indicator.not_equal_elem(0.0);
                Ok(learned.mask_fill(image_only, 1.0).reshape(shape))
            }
        }
    }

    /// Blends the two branches: `α·x_spatial + (1 − α)·x_temporal`, with `α ← 1 − α` if
    /// `switch_spatial_to_temporal_mix`.
    ///
    /// # Shapes
    /// - `x_spatial`, `x_temporal`: identical shapes; for `learned_with_images` either
    ///   `[B, C, F, H, W]` (diffusers' resnet / VAE layout) or `[B·F, H·W, C]` (the token
    ///   layout of `TransformerSpatioTemporalModel`, frame index fastest inside the batch);
    ///   any shape for `fixed` / `learned`
    /// - `image_only_indicator`: `[B, F]`, nonzero marks a frame that is a still image (it keeps
    ///   `x_spatial`); required for `learned_with_images`, ignored otherwise
    /// - output: the shape of `x_spatial`
    ///
    /// # Errors
    /// [`Error::Shape`] naming `x_temporal` if the branch shapes differ, and the errors of
    /// [`AlphaBlender::alpha`].
    pub fn forward<const D: usize>(
        &self,
        x_spatial: Tensor<D>,
        x_temporal: Tensor<D>,
        image_only_indicator: Option<Tensor<2>>,
    ) -> Result<Tensor<D>> {
        let dims = x_spatial.dims();
        if x_temporal.dims() != dims {
            return Err(Error::shape(
                "x_temporal",
                format!("{dims:?} (the shape of x_spatial)"),
                &x_temporal.dims(),
            ));
        }
        let mut alpha = self.alpha(image_only_indicator, dims)?;
        if self.switch_spatial_to_temporal_mix {
            alpha = alpha.neg().add_scalar(1.0);
        }
        let one_minus = alpha.clone().neg().add_scalar(1.0);
        Ok(alpha * x_spatial + one_minus * x_temporal)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn device() -> Device {
        Device::flex()
    }

    fn values<const D: usize>(t: Tensor<D>) -> Vec<f32> {
        t.into_data().try_to_vec::<f32>().unwrap()
    }

    fn iota<const D: usize>(dims: [usize; D], offset: f32) -> Tensor<D> {
        let n: usize = dims.iter().product();
        let v: Vec<f32> = (0..n).map(|i| i as f32 * 0.5 + offset).collect();
        Tensor::from_data(TensorData::new(v, dims), &device())
    }

    fn sig(x: f32) -> f32 {
        1.0 / (1.0 + (-x).exp())
    }

    fn close(got: &[f32], want: &[f32]) {
        assert_eq!(got.len(), want.len());
        for (i, (g, w)) in got.iter().zip(want).enumerate() {
            assert!((g - w).abs() < 1e-5, "element {i}: got {g}, want {w}");
        }
    }

    #[test]
    fn fixed_mixes_with_the_constant() {
        let b = AlphaBlenderConfig::new(0.3)
            .with_merge_strategy("fixed".into())
            .init(&device())
            .unwrap();
        let xs = iota([2, 3, 4], 1.0);
        let xt = iota([2, 3, 4], -7.0);
        let want: Vec<f32> = values(xs.clone())
            .iter()
            .zip(values(xt.clone()))
            .map(|(s, t)| 0.3 * s + 0.7 * t)
            .collect();
        close(&values(b.forward(xs, xt, None).unwrap()), &want);
        // The buffer is not trained.
        assert!(!b.mix_factor.is_require_grad());
    }

    #[test]
    fn learned_mixes_with_the_sigmoid_and_switch_flips_it() {
        let cfg = AlphaBlenderConfig::new(0.8).with_merge_strategy("learned".into());
        let b = cfg.init(&device()).unwrap();
        let a = sig(0.8);
        let xs = iota([1, 2, 3, 2, 2], 0.0);
        let xt = iota([1, 2, 3, 2, 2], 3.0);
        let want: Vec<f32> = values(xs.clone())
            .iter()
            .zip(values(xt.clone()))
            .map(|(s, t)| a * s + (1.0 - a) * t)
            .collect();
        close(
            &values(b.forward(xs.clone(), xt.clone(), None).unwrap()),
            &want,
        );

        let switched = cfg
            .with_switch_spatial_to_temporal_mix(true)
            .init(&device())
            .unwrap();
        let want: Vec<f32> = values(xs.clone())
            .iter()
            .zip(values(xt.clone()))
            .map(|(s, t)| (1.0 - a) * s + a * t)
            .collect();
        close(&values(switched.forward(xs, xt, None).unwrap()), &want);
    }

    #[test]
    fn learned_with_images_keeps_image_frames_spatial_5d() {
        let b = AlphaBlenderConfig::new(-0.4).init(&device()).unwrap();
        assert_eq!(b.merge_strategy, MergeStrategy::LearnedWithImages);
        let a = sig(-0.4);
        let dims = [2, 3, 4, 2, 1];
        let xs = iota(dims, 0.0);
        let xt = iota(dims, 100.0);
        // Video 0: frame 1 is an image; video 1: frames 0 and 3.
        let ind = Tensor::<2>::from_data(
            TensorData::new(vec![0.0f32, 1.0, 0.0, 0.0, 1.0, 0.0, 0.0, 1.0], [2, 4]),
            &device(),
        );
        let image =
            |bi: usize, fi: usize| (bi == 0 && fi == 1) || (bi == 1 && (fi == 0 || fi == 3));
        let (s, t) = (values(xs.clone()), values(xt.clone()));
        let mut want = Vec::new();
        for bi in 0..2 {
            for ci in 0..3 {
                for fi in 0..4 {
                    for hw in 0..2 {
                        let i = ((bi * 3 + ci) * 4 + fi) * 2 + hw;
                        let al = if image(bi, fi) { 1.0 } else { a };
                        want.push(al * s[i] + (1.0 - al) * t[i]);
                    }
                }
            }
        }
        close(&values(b.forward(xs, xt, Some(ind)).unwrap()), &want);
    }

    #[test]
    fn learned_with_images_token_layout_3d() {
        let b = AlphaBlenderConfig::new(1.5).init(&device()).unwrap();
        let a = sig(1.5);
        // [B·F, H·W, C] with B = 1, F = 3; frame 2 is an image.
        let xs = iota([3, 2, 2], 0.0);
        let xt = iota([3, 2, 2], -5.0);
        let ind =
            Tensor::<2>::from_data(TensorData::new(vec![0.0f32, 0.0, 1.0], [1, 3]), &device());
        let (s, t) = (values(xs.clone()), values(xt.clone()));
        let want: Vec<f32> = (0..12)
            .map(|i| {
                let al = if i / 4 == 2 { 1.0 } else { a };
                al * s[i] + (1.0 - al) * t[i]
            })
            .collect();
        close(&values(b.forward(xs, xt, Some(ind)).unwrap()), &want);
    }

    #[test]
    fn unknown_strategy_is_a_typed_error() {
        let e = AlphaBlenderConfig::new(0.5)
            .with_merge_strategy("learnt".into())
            .init(&device())
            .unwrap_err();
        assert!(
            matches!(&e, Error::UnknownVariant { field, value, .. } if field == "merge_strategy" && value == "learnt"),
            "{e}"
        );
        assert!(e.to_string().contains("learned_with_images"), "{e}");
        assert_eq!(
            "fixed".parse::<MergeStrategy>().unwrap(),
            MergeStrategy::Fixed
        );
    }

    #[test]
    fn bad_inputs_are_typed_errors() {
        let b = AlphaBlenderConfig::new(0.5).init(&device()).unwrap();
        let x = Tensor::<5>::zeros([1, 2, 3, 2, 2], &device());
        // Missing indicator.
        let e = b.forward(x.clone(), x.clone(), None).unwrap_err();
        assert!(
            matches!(&e, Error::InvalidConfig { field, .. } if field == "image_only_indicator"),
            "{e}"
        );
        // Indicator with the wrong frame count.
        let ind = Tensor::<2>::zeros([1, 4], &device());
        let e = b.forward(x.clone(), x.clone(), Some(ind)).unwrap_err();
        assert!(
            matches!(&e, Error::Shape { tensor, .. } if tensor == "image_only_indicator"),
            "{e}"
        );
        // Branch shapes differ.
        let y = Tensor::<5>::zeros([1, 2, 4, 2, 2], &device());
        let e = b.forward(x, y, None).unwrap_err();
        assert!(
            matches!(&e, Error::Shape { tensor, .. } if tensor == "x_temporal"),
            "{e}"
        );
        // Rank 4 is not a layout diffusers knows for `learned_with_images`.
        let z = Tensor::<4>::zeros([3, 2, 2, 2], &device());
        let ind = Tensor::<2>::zeros([1, 3], &device());
        let e = b.forward(z.clone(), z, Some(ind)).unwrap_err();
        assert!(
            matches!(&e, Error::InvalidConfig { field, .. } if field == "image_only_indicator"),
            "{e}"
        );
        // Non-finite alpha.
        let e = AlphaBlenderConfig::new(f64::NAN)
            .init(&device())
            .unwrap_err();
        assert!(
            matches!(&e, Error::InvalidConfig { field, .. } if field == "alpha"),
            "{e}"
        );
    }

    #[test]
    fn checkpoint_key_is_mix_factor() {
        use burn::store::ModuleSnapshot;
        let b = AlphaBlenderConfig::new(0.5).init(&device()).unwrap();
        let tensors = b.collect(None, None, false);
        let keys: Vec<(String, Vec<usize>)> = tensors
            .iter()
            .map(|t| (t.name.clone(), t.shape.to_vec()))
            .collect();
        assert_eq!(keys, [("mix_factor".to_string(), vec![1])]);
    }
}
