//! FreeInit's spatio-temporal low-pass filters (Wu et al. 2023, §3.3; diffusers
//! `FreeInitMixin._get_free_init_freq_filter` in `src/diffusers/pipelines/free_init_utils.py`,
//! and `box_low_pass_filter` of the original repository `TianxingWu/FreeInit`,
//! `freeinit_utils.py`).
//!
//! A mask has one value per voxel `(t, h, w)` of a `[F, H, W]` volume, laid out like the
//! **`fftshift`ed** spectrum (zero frequency near the centre), and is shared by every
//! `(batch, channel)` slice. For every voxel, with `d_s` / `d_t` the spatial / temporal stop
//! frequencies:
//!
//! ```text
//! d² = ((d_s/d_t)·(2t/F − 1))² + (2h/H − 1)² + (2w/W − 1)²
//! butterworth(n): 1 / (1 + (d²/d_s²)^n)
//! gaussian:       exp(−d² / (2·d_s²))
//! ideal:          1 if d² ≤ 2·d_s else 0          (sic: `d_s*2`, not `d_s**2`, as both repos)
//! box:            1 on [cF−tt, cF+tt) × [cH−ts, cH+ts) × [cW−ts, cW+ts), c = n//2,
//!                 ts = round(H//2 · d_s), tt = round(F//2 · d_t)   (original repo only)
//! ```
//!
//! and the mask is all zeros when either stop frequency is 0.
//!
//! # Fidelity to diffusers
//!
//! Every value is computed in `f64` per element with the same operation order as the Python
//! loop (`2·t/F` as an exact integer over `F`, the three squared terms summed left to right)
//! and then rounded to `f32` (diffusers assigns Python floats into a `float32` tensor), so the
//! masks agree with diffusers to float rounding (the oracle fixtures match within 1e-6; the only
//! difference is `powi` instead of libm `pow` for the Butterworth power, ≤ 2 ulp in `f64`). The
//! `d² ≤ 2·d_s` test of the "ideal" filter is a quirk of both implementations (its radius is
//! `sqrt(2·d_s)`, ≈ 0.707 for `d_s = 0.25`, instead of `d_s`); it is reproduced literally.
//!
//! # Odd sizes
//!
//! The filter's coordinate zero lies at index `n/2` of each axis (`2i/n − 1 = 0`), while
//! `fftshift` puts the zero frequency at index `⌊n/2⌋`. For even `n` they coincide. For odd `n`
//! the filter is centred half a bin off the DC bin, so the mask maximum is below 1 (0.989 for
//! a Butterworth mask on `7 × 12 × 10`) and the mask is not symmetric under `k → −k`. This is
//! reproduced literally, as in diffusers; [`super::spectral`] applies exactly what diffusers'
//! `ifftn(...).real` applies, i.e. the symmetric part of the mask.
//!
//! The box filter (not in diffusers) follows the original repository: Python's banker's
//! rounding for the thresholds and the *height* threshold for the width too. Unlike the
//! original's Python slices, ranges are clamped to `[0, n)` (a negative start would wrap around
//! in Python when `W < H` and `d_s` is large).

use burn::tensor::{Device, Tensor, TensorData};
use vdm_core::{Error, Result};

/// The shape of the low-pass filter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FilterMethod {
    /// Butterworth filter `1 / (1 + (d²/d_s²)^order)` (the default, `order = 4`).
    Butterworth {
        /// The filter order `n ≥ 1`; higher is sharper.
        order: u32,
    },
    /// Gaussian filter `exp(−d² / (2·d_s²))`; smoother, recommended by the FreeInit authors for
    /// base models with larger temporal inconsistencies.
    Gaussian,
    /// "Ideal" filter: 1 where `d² ≤ 2·d_s` (the literal diffusers / original-repo test).
    Ideal,
    /// Box filter of the original FreeInit repository (not in diffusers).
    Box,
}

impl FilterMethod {
    /// The method's name as diffusers spells it (`"butterworth"`, `"gaussian"`, `"ideal"`,
    /// and `"box"` for the original repository's box filter).
    pub fn name(&self) -> &'static str {
        match self {
            FilterMethod::Butterworth { .. } => "butterworth",
            FilterMethod::Gaussian => "gaussian",
            FilterMethod::Ideal => "ideal",
            FilterMethod::Box => "box",
        }
    }

    /// Parses a diffusers `method` string; `order` is used for `"butterworth"` only.
    ///
    /// # Errors
    /// [`Error::UnknownVariant`] naming `method` for any other name.
    pub fn from_name(name: &str, order: u32) -> Result<Self> {
        match name {
            "butterworth" => Ok(FilterMethod::Butterworth { order }),
            "gaussian" => Ok(FilterMethod::Gaussian),
            "ideal" => Ok(FilterMethod::Ideal),
            "box" => Ok(FilterMethod::Box),
            other => Err(Error::unknown_variant(
                "method",
                other,
                &["butterworth", "gaussian", "ideal", "box"],
            )),
        }
    }
}

/// A FreeInit low-pass filter configuration: method and stop frequencies.
///
/// Defaults (diffusers `enable_free_init` and the FreeInit README): Butterworth of order 4,
/// `spatial_stop_frequency = temporal_stop_frequency = 0.25`.
///
/// ```
/// use vdm_longvideo::freeinit::{FilterMethod, LowPassFilter};
///
/// let filter = LowPassFilter::new(FilterMethod::Butterworth { order: 4 }, 0.25, 0.25).unwrap();
/// let mask = filter.mask(16, 64, 64).unwrap();
/// assert_eq!(mask.get(8, 32, 32), 1.0); // the centre (zero frequency) passes
/// assert!((mask.get(8, 32, 40) - 0.5).abs() < 1e-6); // half power at radius d_s
/// assert!(mask.get(0, 0, 0) < 1e-6); // the highest frequencies are stopped
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LowPassFilter {
    /// Filter shape.
    pub method: FilterMethod,
    /// Normalised spatial stop frequency `d_s` in `[0, 1]` (the Butterworth half-power radius).
    pub spatial_stop_frequency: f64,
    /// Normalised temporal stop frequency `d_t` in `[0, 1]`.
    pub temporal_stop_frequency: f64,
}

impl Default for LowPassFilter {
    fn default() -> Self {
        Self {
            method: FilterMethod::Butterworth { order: 4 },
            spatial_stop_frequency: 0.25,
            temporal_stop_frequency: 0.25,
        }
    }
}

impl LowPassFilter {
    /// A validated filter.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] naming `spatial_stop_frequency` or `temporal_stop_frequency`
    /// when one is not a finite number in `[0, 1]`, or `order` for a Butterworth order of 0.
    pub fn new(
        method: FilterMethod,
        spatial_stop_frequency: f64,
        temporal_stop_frequency: f64,
    ) -> Result<Self> {
        let filter = Self {
            method,
            spatial_stop_frequency,
            temporal_stop_frequency,
        };
        filter.validate()?;
        Ok(filter)
    }

    /// A Butterworth filter of `order` (see [`LowPassFilter::new`] for the errors).
    pub fn butterworth(order: u32, spatial: f64, temporal: f64) -> Result<Self> {
        Self::new(FilterMethod::Butterworth { order }, spatial, temporal)
    }

    /// A Gaussian filter (see [`LowPassFilter::new`] for the errors).
    pub fn gaussian(spatial: f64, temporal: f64) -> Result<Self> {
        Self::new(FilterMethod::Gaussian, spatial, temporal)
    }

    /// Checks the stop frequencies (finite, in `[0, 1]`) and the Butterworth order (`≥ 1`).
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] naming the offending field.
    pub fn validate(&self) -> Result<()> {
        for (field, value) in [
            ("spatial_stop_frequency", self.spatial_stop_frequency),
            ("temporal_stop_frequency", self.temporal_stop_frequency),
        ] {
            if !(value.is_finite() && (0.0..=1.0).contains(&value)) {
                return Err(Error::invalid(
                    field,
                    format!("must be a normalised frequency in [0, 1], got {value}"),
                ));
            }
        }
        if let FilterMethod::Butterworth { order: 0 } = self.method {
            return Err(Error::invalid(
                "order",
                "the Butterworth order must be >= 1",
            ));
        }
        Ok(())
    }

    /// The mask for a `[frames, height, width]` volume, in diffusers' (`fftshift`ed) layout.
    ///
    /// Cost: `F·H·W` scalar evaluations from three per-axis tables (`d²` is a sum of per-axis
    /// terms), about a millisecond for `64 × 64 × 64`; diffusers' Python triple loop takes
    /// ~0.8 s there.
    ///
    /// # Errors
    /// The errors of [`LowPassFilter::validate`], and [`Error::Shape`] when a size is 0.
    pub fn mask(&self, frames: usize, height: usize, width: usize) -> Result<FrequencyMask> {
        self.validate()?;
        let dims = [frames, height, width];
        if dims.contains(&0) {
            return Err(Error::shape(
                "frequency mask",
                "[F, H, W] with every size > 0",
                &dims,
            ));
        }
        let len = frames * height * width;
        let (ds, dt) = (self.spatial_stop_frequency, self.temporal_stop_frequency);
        if ds == 0.0 || dt == 0.0 {
            return Ok(FrequencyMask {
                dims,
                values: vec![0.0; len],
            });
        }
        if self.method == FilterMethod::Box {
            return Ok(box_mask(dims, ds, dt));
        }

        // Per-axis terms exactly as the Python expression evaluates them.
        let ratio = ds / dt;
        let axis = |n: usize, scale: f64| -> Vec<f64> {
            (0..n)
                .map(|i| {
                    let u = scale * ((2 * i) as f64 / n as f64 - 1.0);
                    u * u
                })
                .collect()
        };
        let (at, ah, aw) = (axis(frames, ratio), axis(height, 1.0), axis(width, 1.0));

        let values = match self.method {
            FilterMethod::Butterworth { order } => {
                // Python: `1 / (1 + (x / d_s**2) ** order)`.
                let ds2 = ds * ds;
                let order = order.min(i32::MAX as u32) as i32;
                fill(&at, &ah, &aw, |d2| 1.0 / (1.0 + (d2 / ds2).powi(order)))
            }
            FilterMethod::Gaussian => {
                // Python: `math.exp(-1 / (2 * d_s**2) * x)`.
                let c = -1.0 / (2.0 * (ds * ds));
                fill(&at, &ah, &aw, |d2| (c * d2).exp())
            }
            FilterMethod::Ideal => {
                // Python: `1 if x <= d_s * 2 else 0`.
                let radius2 = ds * 2.0;
                fill(&at, &ah, &aw, |d2| if d2 <= radius2 { 1.0 } else { 0.0 })
            }
            FilterMethod::Box => unreachable!("handled above"),
        };
        Ok(FrequencyMask { dims, values })
    }
}

/// `value(d²)` as `f32` for every voxel, `d² = (a_t[t] + a_h[h]) + a_w[w]` (Python's order).
fn fill(at: &[f64], ah: &[f64], aw: &[f64], value: impl Fn(f64) -> f64) -> Vec<f32> {
    let mut values = Vec::with_capacity(at.len() * ah.len() * aw.len());
    for &t in at {
        for &h in ah {
            let th = t + h;
            values.extend(aw.iter().map(|&w| value(th + w) as f32));
        }
    }
    values
}

/// The original repository's box filter (`box_low_pass_filter`), ranges clamped to the volume.
fn box_mask(dims: [usize; 3], ds: f64, dt: f64) -> FrequencyMask {
    let [frames, height, width] = dims;
    // Python: `round(int(H // 2) * d_s)` and `round(T // 2 * d_t)`, round half to even.
    let ts = ((height / 2) as f64 * ds).round_ties_even() as usize;
    let tt = ((frames / 2) as f64 * dt).round_ties_even() as usize;
    let range = |n: usize, half: usize| {
        let c = n / 2;
        c.saturating_sub(half)..(c + half).min(n)
    };
    let (rf, rh, rw) = (range(frames, tt), range(height, ts), range(width, ts));
    let mut values = vec![0.0f32; frames * height * width];
    for t in rf {
        for h in rh.clone() {
            let row = (t * height + h) * width;
            values[row + rw.start..row + rw.end].fill(1.0);
        }
    }
    FrequencyMask { dims, values }
}

/// A low-pass mask over a `[F, H, W]` volume, in diffusers' (`fftshift`ed) layout, row-major,
/// `f32`. Broadcast over batch and channels.
#[derive(Debug, Clone, PartialEq)]
pub struct FrequencyMask {
    dims: [usize; 3],
    values: Vec<f32>,
}

impl FrequencyMask {
    /// A mask from row-major values over `[F, H, W]`.
    ///
    /// # Errors
    /// [`Error::Shape`] when a size is 0 or `values.len() != F·H·W`.
    pub fn from_values(dims: [usize; 3], values: Vec<f32>) -> Result<Self> {
        if dims.contains(&0) || values.len() != dims.iter().product::<usize>() {
            return Err(Error::shape(
                "frequency mask",
                format!(
                    "{dims:?} with every size > 0 and {} values",
                    dims.iter().product::<usize>()
                ),
                &[values.len()],
            ));
        }
        Ok(Self { dims, values })
    }

    /// A mask from a `[F, H, W]` tensor (any float dtype; read back as `f32`).
    ///
    /// # Errors
    /// [`Error::Shape`] when a size is 0; [`Error::ReadBack`] when the tensor cannot be read
    /// back to the host as `f32`.
    pub fn from_tensor(mask: Tensor<3>) -> Result<Self> {
        let dims = mask.dims();
        let values = vdm_core::readback::read_f32(mask, "the frequency mask")?;
        Self::from_values(dims, values)
    }

    /// The sizes `[F, H, W]`.
    pub fn dims(&self) -> [usize; 3] {
        self.dims
    }

    /// The values, row-major over `[F, H, W]`.
    pub fn values(&self) -> &[f32] {
        &self.values
    }

    /// The values, consuming the mask.
    pub fn into_values(self) -> Vec<f32> {
        self.values
    }

    /// The value at `(t, h, w)` (shifted layout: the zero frequency is at `(F//2, H//2, W//2)`).
    ///
    /// # Panics
    /// When an index is out of range.
    pub fn get(&self, t: usize, h: usize, w: usize) -> f32 {
        let [f, hh, ww] = self.dims;
        assert!(t < f && h < hh && w < ww, "index out of range");
        self.values[(t * hh + h) * ww + w]
    }

    /// The mask as a `[F, H, W]` tensor on `device`.
    pub fn to_tensor(&self, device: &Device) -> Tensor<3> {
        Tensor::from_data(TensorData::new(self.values.clone(), self.dims), device)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field_of(e: Error) -> String {
        match e {
            Error::InvalidConfig { field, .. } | Error::UnknownVariant { field, .. } => field,
            other => panic!("expected a config error, got {other}"),
        }
    }

    #[test]
    fn reference_values_of_algorithms_md() {
        // shared/reference/algorithms.md §3.2 test vectors (F=16, H=W=64, d_s=d_t=0.25, n=4).
        let bw = LowPassFilter::default().mask(16, 64, 64).unwrap();
        let ga = LowPassFilter::gaussian(0.25, 0.25)
            .unwrap()
            .mask(16, 64, 64)
            .unwrap();
        let id = LowPassFilter::new(FilterMethod::Ideal, 0.25, 0.25)
            .unwrap()
            .mask(16, 64, 64)
            .unwrap();
        // The reference values are rounded to 6 digits.
        let close = |a: f32, b: f64| (a as f64 - b).abs() < 1e-6;
        assert_eq!(bw.get(8, 32, 32), 1.0);
        assert_eq!(ga.get(8, 32, 32), 1.0);
        assert_eq!(id.get(8, 32, 32), 1.0);
        assert!(close(bw.get(8, 32, 40), 0.5));
        assert!(close(ga.get(8, 32, 40), 0.606531));
        assert!(close(bw.get(10, 32, 32), 0.5));
        assert!(close(bw.get(8, 40, 40), 0.0588235));
        assert!(close(ga.get(8, 40, 40), 0.367879));
        assert!(close(bw.get(12, 32, 32), 0.00389105));
        assert!(close(ga.get(12, 32, 32), 0.135335));
        assert!((bw.get(0, 0, 0) as f64 - 1.8838e-7).abs() < 1e-10);
        assert_eq!(id.get(0, 0, 0), 0.0);
        // Box thresholds ts = 8, tt = 2: frames [6, 10), rows/cols [24, 40).
        let bx = LowPassFilter::new(FilterMethod::Box, 0.25, 0.25)
            .unwrap()
            .mask(16, 64, 64)
            .unwrap();
        assert_eq!(bx.get(6, 24, 24), 1.0);
        assert_eq!(bx.get(9, 39, 39), 1.0);
        assert_eq!(bx.get(5, 32, 32), 0.0);
        assert_eq!(bx.get(10, 32, 32), 0.0);
        assert_eq!(bx.get(8, 40, 32), 0.0);
        assert_eq!(
            bx.values().iter().filter(|&&v| v == 1.0).count(),
            4 * 16 * 16
        );
    }

    #[test]
    fn zero_stop_frequency_gives_a_zero_mask() {
        for method in [
            FilterMethod::Butterworth { order: 4 },
            FilterMethod::Gaussian,
            FilterMethod::Ideal,
            FilterMethod::Box,
        ] {
            for (s, t) in [(0.0, 0.25), (0.25, 0.0), (0.0, 0.0)] {
                let mask = LowPassFilter::new(method, s, t)
                    .unwrap()
                    .mask(4, 8, 7)
                    .unwrap();
                assert_eq!(mask.dims(), [4, 8, 7]);
                assert!(
                    mask.values().iter().all(|&v| v == 0.0),
                    "{method:?} {s} {t}"
                );
            }
        }
    }

    #[test]
    fn bad_parameters_are_typed_errors_naming_the_parameter() {
        let bw = FilterMethod::Butterworth { order: 4 };
        for bad in [-0.1, 1.5, f64::NAN, f64::INFINITY] {
            assert_eq!(
                field_of(LowPassFilter::new(bw, bad, 0.25).unwrap_err()),
                "spatial_stop_frequency"
            );
            assert_eq!(
                field_of(LowPassFilter::new(bw, 0.25, bad).unwrap_err()),
                "temporal_stop_frequency"
            );
        }
        assert_eq!(
            field_of(LowPassFilter::butterworth(0, 0.25, 0.25).unwrap_err()),
            "order"
        );
        assert_eq!(
            field_of(FilterMethod::from_name("sinc", 4).unwrap_err()),
            "method"
        );
        assert_eq!(
            FilterMethod::from_name("butterworth", 2).unwrap(),
            FilterMethod::Butterworth { order: 2 }
        );
        // A public field set out of range is caught when the mask is built.
        let f = LowPassFilter {
            spatial_stop_frequency: 2.0,
            ..LowPassFilter::default()
        };
        assert_eq!(
            field_of(f.mask(2, 2, 2).unwrap_err()),
            "spatial_stop_frequency"
        );
        assert!(matches!(
            LowPassFilter::default().mask(0, 2, 2),
            Err(Error::Shape { .. })
        ));
        assert!(FrequencyMask::from_values([2, 2, 2], vec![0.0; 7]).is_err());
    }

    #[test]
    fn odd_sizes_are_centred_at_n_over_2() {
        // 2i/n − 1 = 0 needs i = n/2: for odd n the maximum is below 1 and lies at ⌊n/2⌋ and
        // ⌈n/2⌉ (equal distance); the fftshift DC bin is ⌊n/2⌋.
        let m = LowPassFilter::default().mask(7, 12, 10).unwrap();
        let max = m.values().iter().cloned().fold(0.0f32, f32::max);
        assert!(max < 1.0 && max > 0.98, "{max}");
        assert!((m.get(3, 6, 5) - m.get(4, 6, 5)).abs() < 1e-6);
        assert!((m.get(3, 6, 5) - max).abs() < 1e-6);
    }
}
