//! Finiteness checks on tensors: how the samplers and the pipeline stop at the first NaN or
//! infinity with a typed [`Error::NonFinite`] instead of returning a silently broken video.
//!
//! A check costs one reduction over the tensor (its sum) and one host read of the scalar; only
//! when that sum is not finite is the tensor read back to count the offending values.
//!
//! ```
//! use burn::tensor::{Device, Tensor};
//! use vdm_core::finite::{all_finite, ensure_all_finite};
//!
//! let device = Device::flex();
//! let ok = Tensor::<2>::from_data([[1.0, -2.0], [3.0, 4.0]], &device);
//! assert!(all_finite(&ok));
//! let bad = Tensor::<2>::from_data([[1.0, f32::NAN], [f32::INFINITY, 4.0]], &device);
//! let e = ensure_all_finite(&bad, || "the example".into(), "why").unwrap_err();
//! assert_eq!(
//!     e.to_string(),
//!     "non-finite value in the example: 1 NaN and 1 infinite of 4 values; why"
//! );
//! ```

use burn::tensor::Tensor;

use crate::readback::{read_f32, read_f32_scalar};
use crate::{Error, Result};

/// Whether every value of `tensor` is finite.
///
/// One reduction (the sum) and one host read: a sum is NaN or infinite whenever any of its
/// terms is. The converse does not hold (finite values near `f32::MAX` can overflow the sum),
/// but latents, model outputs and pixels are many orders of magnitude below that; should the
/// sum still overflow, the values are counted on the host before the tensor is called
/// non-finite, so the answer is exact either way. A tensor that cannot be read back counts as
/// not finite ([`ensure_all_finite`] tells the two apart).
pub fn all_finite<const D: usize>(tensor: &Tensor<D>) -> bool {
    ensure_all_finite(tensor, String::new, "").is_ok()
}

/// `Ok` when every value of `tensor` is finite (see [`all_finite`] for the cost); otherwise
/// [`Error::NonFinite`] whose `what` is `what()` and whose reason counts the NaN and infinite
/// values and ends with `hint` (what produced them, what to try).
///
/// # Errors
/// [`Error::NonFinite`], as above; [`Error::ReadBack`] when the backend cannot read the tensor
/// back.
pub fn ensure_all_finite<const D: usize>(
    tensor: &Tensor<D>,
    what: impl FnOnce() -> String,
    hint: &str,
) -> Result<()> {
    let sum = match read_f32_scalar(tensor.clone().sum(), "") {
        Ok(sum) if sum.is_finite() => return Ok(()),
        Ok(_) => None,
        Err(Error::ReadBack { reason, .. }) => Some(reason),
        Err(e) => return Err(e),
    };
    let what = what();
    if let Some(reason) = sum {
        return Err(Error::ReadBack { what, reason });
    }
    let (nan, inf) = count_non_finite(tensor, &what)?;
    if nan == 0 && inf == 0 {
        return Ok(()); // finite values whose sum overflowed
    }
    Err(Error::NonFinite {
        what,
        reason: format!(
            "{nan} NaN and {inf} infinite of {} values; {hint}",
            tensor.shape().num_elements()
        ),
    })
}

/// `(NaN count, infinite count)` of `tensor`, read back to the host (the slow path).
fn count_non_finite<const D: usize>(tensor: &Tensor<D>, what: &str) -> Result<(usize, usize)> {
    let values = read_f32(tensor.clone(), what)?;
    Ok(values.iter().fold((0, 0), |(nan, inf), v| {
        (
            nan + usize::from(v.is_nan()),
            inf + usize::from(v.is_infinite()),
        )
    }))
}

#[cfg(test)]
mod tests {
    use burn::tensor::Device;

    use super::*;

    #[test]
    fn nan_and_inf_are_found_and_counted() {
        let device = Device::flex();
        let mut values = vec![0.5f32; 24];
        assert!(all_finite(&Tensor::<1>::from_floats(
            values.as_slice(),
            &device
        )));
        values[3] = f32::NAN;
        values[7] = f32::NEG_INFINITY;
        values[9] = f32::INFINITY;
        let t = Tensor::<1>::from_floats(values.as_slice(), &device);
        assert!(!all_finite(&t));
        let e = ensure_all_finite(&t, || "x".into(), "hint").unwrap_err();
        assert!(matches!(e, Error::NonFinite { .. }), "{e}");
        assert!(
            e.to_string()
                .contains("1 NaN and 2 infinite of 24 values; hint"),
            "{e}"
        );
    }

    /// Finite values whose sum overflows `f32` are confirmed finite, not reported.
    #[test]
    fn an_overflowing_sum_of_finite_values_is_not_an_error() {
        let device = Device::flex();
        let t = Tensor::<1>::from_floats([f32::MAX, f32::MAX, f32::MAX].as_slice(), &device);
        assert!(!t.clone().sum().into_scalar::<f32>().is_finite());
        assert!(all_finite(&t));
        ensure_all_finite(&t, || "x".into(), "hint").unwrap();
    }
}
