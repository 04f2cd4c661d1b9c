//! A fixed, lossless "VAE": space-to-depth patches (PyTorch's `pixel_unshuffle` per frame).
//!
//! A pixel-space video model can run its UNet on `p × p` patches folded into channels instead
//! of on pixels: `[B, C, F, H, W]` becomes `[B, C·p², F, H/p, W/p]`, exactly invertible. vdm's
//! embedded Moving Shapes model uses it (`p = 4`: a 32×32 RGB frame is an 8×8 grid of 48
//! channels) because on a 2-core CPU a learned VAE would cost training time of its own and blur
//! the shapes' edges, while patches cost nothing and lose nothing; the UNet's work drops by the
//! factor `p²` in positions (measured in `docs/embedded-model.md`). DiT's patchify and Imagen
//! Video's pixel-space models are the precedent.
//!
//! Like a VAE's `scaling_factor` / `shift_factor` (Stable Diffusion's 0.18215, SD3's shift), the
//! codec can map the pixels to latents of zero mean and unit variance:
//! `latents = patches(video − shift_factor) · scaling_factor`. Diffusion's noise levels are
//! relative to the data's scale; Moving Shapes pixels in `[-1, 1]` are mostly a dark background
//! (standard deviation ≈ 0.3), so unscaled, the object disappears under the noise at a small
//! timestep and the sampler has few steps left to draw it (Rombach et al. 2022 rescale their
//! latents to unit variance for the same reason).
//!
//! A diffusers-style folder names it `"vae": ["vdm", "Patchify"]` in `model_index.json`, with a
//! `vae/config.json` of `{"_class_name": "Patchify", "patch_size": 4, "in_channels": 3}`
//! (+ `"scaling_factor"` and `"shift_factor"`, 1 and 0 when absent).

use std::path::Path;

use burn::tensor::Tensor;
use serde::{Deserialize, Serialize};
use vdm_core::{Error, Result, VideoShape};

use crate::loading::read_config;

/// The `config.json` of a [`Patchify`] codec.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct PatchifyConfig {
    /// Side `p` of a patch (the spatial factor, like a VAE's 8).
    pub patch_size: usize,
    /// Channels of the pixels (3 for RGB).
    pub in_channels: usize,
    /// Latents are the patches times this (a VAE's `scaling_factor`); 1 when absent.
    #[serde(default = "one")]
    pub scaling_factor: f64,
    /// Subtracted from the pixels before scaling (a VAE's `shift_factor`); 0 when absent.
    #[serde(default)]
    pub shift_factor: f64,
}

fn one() -> f64 {
    1.0
}

impl Default for PatchifyConfig {
    /// 4×4 patches of RGB, unscaled.
    fn default() -> Self {
        Self {
            patch_size: 4,
            in_channels: 3,
            scaling_factor: 1.0,
            shift_factor: 0.0,
        }
    }
}

impl PatchifyConfig {
    /// Parses and validates a `config.json` text.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] for malformed JSON or a zero field.
    pub fn from_json_str(json: &str) -> Result<Self> {
        let config: Self = serde_json::from_str(json)
            .map_err(|e| Error::invalid("config.json", format!("not a Patchify config: {e}")))?;
        config.validate()?;
        Ok(config)
    }

    /// Reads and validates `config.json` at `path`.
    ///
    /// # Errors
    /// [`Error::File`] naming the path; the errors of [`Self::from_json_str`].
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        read_config(path.as_ref(), Self::from_json_str)
    }

    /// The config as `config.json` text (with `_class_name`).
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(&serde_json::json!({
            "_class_name": "Patchify",
            "patch_size": self.patch_size,
            "in_channels": self.in_channels,
            "scaling_factor": self.scaling_factor,
            "shift_factor": self.shift_factor,
        }))
        .expect("plain JSON")
    }

    /// # Errors
    /// [`Error::InvalidConfig`] naming a zero size, a scaling factor that is not finite and
    /// positive, or a shift that is not finite.
    pub fn validate(&self) -> Result<()> {
        if self.patch_size == 0 {
            return Err(Error::invalid("patch_size", "must be ≥ 1"));
        }
        if self.in_channels == 0 {
            return Err(Error::invalid("in_channels", "must be ≥ 1"));
        }
        if !(self.scaling_factor.is_finite() && self.scaling_factor > 0.0) {
            return Err(Error::invalid("scaling_factor", "must be finite and > 0"));
        }
        if !self.shift_factor.is_finite() {
            return Err(Error::invalid("shift_factor", "must be finite"));
        }
        Ok(())
    }

    /// The config whose latents have zero mean and unit variance for pixels of this `mean` and
    /// standard deviation `std`.
    ///
    /// # Errors
    /// As [`validate`](Self::validate) (e.g. `std` of 0).
    pub fn normalized(self, mean: f64, std: f64) -> Result<Self> {
        let config = Self {
            scaling_factor: 1.0 / std,
            shift_factor: mean,
            ..self
        };
        config.validate()?;
        Ok(config)
    }

    fn is_identity(&self) -> bool {
        self.scaling_factor == 1.0 && self.shift_factor == 0.0
    }

    /// Channels of the patched video: `in_channels · patch_size²`.
    pub fn latent_channels(&self) -> usize {
        self.in_channels * self.patch_size * self.patch_size
    }
}

/// Space-to-depth patches of every frame (see the [module docs](self)).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Patchify {
    /// The configuration.
    pub config: PatchifyConfig,
}

impl Patchify {
    /// A codec of `config`.
    ///
    /// # Errors
    /// As [`PatchifyConfig::validate`].
    pub fn new(config: PatchifyConfig) -> Result<Self> {
        config.validate()?;
        Ok(Self { config })
    }

    /// Folds each `p × p` patch into channels; channel `c·p² + i·p + j` holds pixel `(i, j)` of
    /// the patch in channel `c` (`pixel_unshuffle`'s order), then shifts and scales
    /// (`(pixel − shift_factor) · scaling_factor`).
    ///
    /// # Shapes
    /// - `video`: `[B, C, F, H, W]`, `H` and `W` multiples of `p`
    /// - output: `[B, C·p², F, H/p, W/p]`
    ///
    /// # Errors
    /// [`Error::Shape`] naming `video` for a wrong channel count or sides not divisible by `p`.
    pub fn encode(&self, video: Tensor<5>) -> Result<Tensor<5>> {
        let s = VideoShape::of("video", &video)?;
        let p = self.config.patch_size;
        if s.channels != self.config.in_channels || s.height % p != 0 || s.width % p != 0 {
            return Err(Error::shape(
                "video",
                format!(
                    "[B, {}, F, H, W] with H and W multiples of {p}",
                    self.config.in_channels
                ),
                &video.dims(),
            ));
        }
        let (h, w) = (s.height / p, s.width / p);
        let patches = video
            .reshape([s.batch * s.channels, s.frames, h, p, w, p])
            .permute([0, 3, 5, 1, 2, 4])
            .reshape([s.batch, s.channels * p * p, s.frames, h, w]);
        let c = &self.config;
        Ok(if c.is_identity() {
            patches
        } else {
            (patches - c.shift_factor) * c.scaling_factor
        })
    }

    /// The inverse of [`encode`](Self::encode).
    ///
    /// # Shapes
    /// - `latents`: `[B, C·p², F, h, w]`
    /// - output: `[B, C, F, h·p, w·p]`
    ///
    /// # Errors
    /// [`Error::Shape`] naming `latents` for a wrong channel count.
    pub fn decode(&self, latents: Tensor<5>) -> Result<Tensor<5>> {
        let s = VideoShape::of("latents", &latents)?;
        let p = self.config.patch_size;
        let c = self.config.in_channels;
        if s.channels != self.config.latent_channels() {
            return Err(Error::shape(
                "latents",
                format!("[B, {}, F, h, w]", self.config.latent_channels()),
                &latents.dims(),
            ));
        }
        let latents = if self.config.is_identity() {
            latents
        } else {
            latents / self.config.scaling_factor + self.config.shift_factor
        };
        Ok(latents
            .reshape([s.batch * c, p, p, s.frames, s.height, s.width])
            .permute([0, 3, 4, 1, 5, 2])
            .reshape([s.batch, c, s.frames, s.height * p, s.width * p]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::{Device, Distribution, TensorData};

    fn codec(p: usize) -> Patchify {
        Patchify::new(PatchifyConfig {
            patch_size: p,
            ..PatchifyConfig::default()
        })
        .unwrap()
    }

    #[test]
    fn encode_is_pixel_unshuffle_and_decode_inverts_it() {
        let device = Device::flex();
        let values: Vec<f32> = (0..2 * 3 * 2 * 4 * 8).map(|v| v as f32).collect();
        let video = Tensor::<5>::from_data(TensorData::new(values, [2, 3, 2, 4, 8]), &device);
        let latents = codec(2).encode(video.clone()).unwrap();
        assert_eq!(latents.dims(), [2, 12, 2, 2, 4]);
        // Latent channel c·4 + i·2 + j at (b, f, y, x) is pixel (2y + i, 2x + j) of channel c.
        let l = latents.to_data().try_to_vec::<f32>().unwrap();
        let v = video.to_data().try_to_vec::<f32>().unwrap();
        for (b, c, i, j, f, y, x) in [
            (0, 0, 0, 0, 0, 0, 0),
            (1, 2, 1, 0, 1, 1, 3),
            (0, 1, 1, 1, 0, 1, 2),
        ] {
            let lat = l[(((b * 12 + c * 4 + i * 2 + j) * 2 + f) * 2 + y) * 4 + x];
            let pix = v[(((b * 3 + c) * 2 + f) * 4 + 2 * y + i) * 8 + 2 * x + j];
            assert_eq!(lat, pix);
        }
        let back = codec(2).decode(latents).unwrap();
        assert_eq!(back.to_data(), video.to_data());
    }

    #[test]
    fn round_trip_at_patch_4_and_bad_shapes_are_named() {
        let device = Device::flex();
        let video = Tensor::<5>::random([1, 3, 3, 8, 12], Distribution::Default, &device);
        let c = codec(4);
        let back = c.decode(c.encode(video.clone()).unwrap()).unwrap();
        assert_eq!(back.to_data(), video.to_data());
        let bad = Tensor::<5>::zeros([1, 3, 1, 6, 8], &device);
        assert!(c.encode(bad).unwrap_err().to_string().contains("video"));
        let bad = Tensor::<5>::zeros([1, 47, 1, 2, 2], &device);
        assert!(c.decode(bad).unwrap_err().to_string().contains("latents"));
        let err = PatchifyConfig::from_json_str(r#"{"patch_size": 0, "in_channels": 3}"#);
        assert!(err.unwrap_err().to_string().contains("patch_size"));
        let ok = PatchifyConfig::from_json_str(&c.config.to_json()).unwrap();
        assert_eq!(ok, c.config);
    }

    #[test]
    fn a_normalized_codec_centres_and_scales_and_still_inverts() {
        let device = Device::flex();
        let video = Tensor::<5>::random([1, 3, 2, 8, 8], Distribution::Default, &device);
        let config = PatchifyConfig::default().normalized(0.5, 0.25).unwrap();
        let scaled = Patchify::new(config).unwrap();
        let plain = codec(4).encode(video.clone()).unwrap();
        let latents = scaled.encode(video.clone()).unwrap();
        let want = (plain - 0.5) * 4.0;
        let gap: f32 = (latents.clone() - want).abs().max().into_scalar();
        assert!(gap < 1e-6, "{gap}");
        let back = scaled.decode(latents).unwrap();
        let gap: f32 = (back - video).abs().max().into_scalar();
        assert!(gap < 1e-6, "{gap}");
        // Old folders without the factors read as unscaled; the factors round-trip.
        let old = PatchifyConfig::from_json_str(r#"{"patch_size": 4, "in_channels": 3}"#);
        assert_eq!(old.unwrap(), PatchifyConfig::default());
        assert_eq!(
            PatchifyConfig::from_json_str(&config.to_json()).unwrap(),
            config
        );
        let json = r#"{"patch_size": 4, "in_channels": 3, "scaling_factor": 0}"#;
        let err = PatchifyConfig::from_json_str(json).unwrap_err().to_string();
        assert!(err.contains("scaling_factor"), "{err}");
        let nan_shift = PatchifyConfig {
            shift_factor: f64::NAN,
            ..PatchifyConfig::default()
        };
        let err = nan_shift.validate().unwrap_err().to_string();
        assert!(err.contains("shift_factor"), "{err}");
        assert!(PatchifyConfig::default().normalized(0.0, 0.0).is_err());
    }
}
