//! [`DiagonalGaussian`]: the latent posterior of the VAE encoder, mirroring diffusers'
//! `DiagonalGaussianDistribution` (`models/autoencoders/vae.py`).

use burn::tensor::Tensor;
use vdm_core::noise::draw;
use vdm_core::{Error, NoiseSource, Result};

/// Lower clamp of the log-variance (diffusers: `torch.clamp(logvar, -30.0, 20.0)`).
pub const LOGVAR_MIN: f64 = -30.0;
/// Upper clamp of the log-variance.
pub const LOGVAR_MAX: f64 = 20.0;

/// A Gaussian with diagonal covariance over latents: `N(mean, exp(logvar))`, channels on
/// dimension 1 (`[N, C, h, w]` images or `[B, C, F, h, w]` videos).
///
/// ```
/// use burn::tensor::{Device, Tensor};
/// use vdm_models::vae::DiagonalGaussian;
///
/// let d = Device::flex();
/// // Moments [N, 2C, h, w]: mean channels first, then log-variance.
/// let moments = Tensor::<4>::from_floats([[[[1.0]], [[2.0]], [[0.0]], [[-100.0]]]], &d);
/// let g = DiagonalGaussian::from_moments(moments).unwrap();
/// assert_eq!(g.mode().into_data().try_to_vec::<f32>().unwrap(), [1.0, 2.0]);
/// // log-variance clamped to [-30, 20] as in diffusers.
/// assert_eq!(g.logvar.into_data().try_to_vec::<f32>().unwrap(), [0.0, -30.0]);
/// ```
#[derive(Debug, Clone)]
pub struct DiagonalGaussian<const D: usize> {
    /// The mean (diffusers `mean`).
    pub mean: Tensor<D>,
    /// The log-variance, clamped to `[-30, 20]` (diffusers `logvar`).
    pub logvar: Tensor<D>,
}

impl<const D: usize> DiagonalGaussian<D> {
    /// Splits encoder moments along dimension 1 into mean and log-variance (first and second
    /// half, diffusers `torch.chunk(parameters, 2, dim=1)`) and clamps the log-variance.
    ///
    /// # Errors
    /// [`Error::Shape`] unless `D ≥ 2` and dimension 1 is even and non-zero.
    pub fn from_moments(moments: Tensor<D>) -> Result<Self> {
        let dims = moments.dims();
        if D < 2 || dims[1] == 0 || !dims[1].is_multiple_of(2) {
            return Err(Error::shape(
                "moments",
                "[N, 2C, ...] (mean and log-variance stacked on dimension 1)",
                &dims,
            ));
        }
        let c = dims[1] / 2;
        let mean = moments.clone().narrow(1, 0, c);
        let logvar = moments.narrow(1, c, c);
        Self::new(mean, logvar)
    }

    /// A distribution from its mean and (unclamped) log-variance.
    ///
    /// # Errors
    /// [`Error::Shape`] if the shapes differ.
    pub fn new(mean: Tensor<D>, logvar: Tensor<D>) -> Result<Self> {
        if mean.dims() != logvar.dims() {
            return Err(Error::shape(
                "logvar",
                format!("{:?} (the shape of the mean)", mean.dims()),
                &logvar.dims(),
            ));
        }
        Ok(Self {
            mean,
            logvar: logvar.clamp(LOGVAR_MIN, LOGVAR_MAX),
        })
    }

    /// Standard deviation `exp(0.5 · logvar)`.
    pub fn std(&self) -> Tensor<D> {
        self.logvar.clone().mul_scalar(0.5).exp()
    }

    /// Variance `exp(logvar)`.
    pub fn var(&self) -> Tensor<D> {
        self.logvar.clone().exp()
    }

    /// The most likely latent: the mean (diffusers `mode()`, pipelines' `sample_mode="argmax"`).
    pub fn mode(&self) -> Tensor<D> {
        self.mean.clone()
    }

    /// A draw `mean + std · ε` with `ε ~ N(0, I)` of the mean's shape taken from `noise`
    /// (diffusers `sample(generator)`).
    ///
    /// # Errors
    /// [`Error::Noise`] if the source cannot provide the noise.
    pub fn sample(&self, noise: &mut dyn NoiseSource) -> Result<Tensor<D>> {
        let eps = draw(noise, self.mean.dims(), &self.mean.device())?;
        self.sample_with(eps)
    }

    /// `mean + std · eps` for given standard-normal `eps`.
    ///
    /// # Errors
    /// [`Error::Shape`] if `eps` does not have the mean's shape.
    pub fn sample_with(&self, eps: Tensor<D>) -> Result<Tensor<D>> {
        if eps.dims() != self.mean.dims() {
            return Err(Error::shape(
                "eps",
                format!("{:?} (the shape of the mean)", self.mean.dims()),
                &eps.dims(),
            ));
        }
        let eps = eps.cast(self.mean.dtype());
        Ok(self.mean.clone() + self.std() * eps)
    }
}
