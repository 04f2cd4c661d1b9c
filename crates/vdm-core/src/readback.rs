//! Reading tensors back to the host as a typed error instead of a panic.
//!
//! Burn's `into_data` and `into_scalar` panic when the backend cannot read a tensor back (a
//! GPU buffer that could not be allocated, a lost or poisoned device: on wgpu a failed
//! allocation surfaces only at the next read-back). Every read-back of vdm's library code goes
//! through this module, which calls Burn's fallible `try_into_data` and returns
//! [`Error::ReadBack`] naming what was being read, so a caller can report it and stop cleanly.
//!
//! ```
//! use burn::tensor::{Device, Tensor};
//! use vdm_core::readback::{read_f32, read_f32_scalar};
//!
//! let t = Tensor::<2>::from_data([[1.0, 2.0], [3.0, 4.0]], &Device::flex());
//! assert_eq!(read_f32(t.clone(), "t").unwrap(), [1.0, 2.0, 3.0, 4.0]);
//! assert_eq!(read_f32_scalar(t.sum(), "the sum of t").unwrap(), 10.0);
//! ```

use burn::tensor::kind::Basic;
use burn::tensor::{Tensor, TensorData};

use crate::{Error, Result};

/// The data of `tensor` on the host, as the backend holds it.
///
/// # Errors
/// [`Error::ReadBack`] naming `what` when the backend cannot read it back.
pub fn read_data<const D: usize, K: Basic>(tensor: Tensor<D, K>, what: &str) -> Result<TensorData> {
    tensor.try_into_data().map_err(|e| Error::ReadBack {
        what: what.to_string(),
        reason: one_line(&e.to_string()),
    })
}

/// The values of the float tensor `tensor` on the host as `f32` (converted from other float
/// dtypes), row-major.
///
/// # Errors
/// [`Error::ReadBack`] naming `what` when the backend cannot read it back or its values cannot
/// be read as `f32`.
pub fn read_f32<const D: usize>(tensor: Tensor<D>, what: &str) -> Result<Vec<f32>> {
    read_data(tensor, what)?
        .try_into_vec_as::<f32>()
        .map_err(|e| Error::ReadBack {
            what: what.to_string(),
            reason: format!("its values cannot be read as f32: {e}"),
        })
}

/// The one value of a single-element float tensor (a reduction's result) as `f32`.
///
/// # Errors
/// As [`read_f32`]; also when `tensor` does not hold exactly one value.
pub fn read_f32_scalar<const D: usize>(tensor: Tensor<D>, what: &str) -> Result<f32> {
    match read_f32(tensor, what)?[..] {
        [value] => Ok(value),
        ref values => Err(Error::ReadBack {
            what: what.to_string(),
            reason: format!("expected one value, got {}", values.len()),
        }),
    }
}

/// The lines of a backend's message joined into one (Burn's execution errors span several).
fn one_line(message: &str) -> String {
    message
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use burn::tensor::{Device, Int};

    use super::*;

    #[test]
    fn values_dtypes_and_kinds_read_back() {
        let device = Device::flex();
        let t = Tensor::<1>::from_floats([1.5, -2.0], &device);
        assert_eq!(read_f32(t.clone(), "t").unwrap(), [1.5, -2.0]);
        let half = t.clone().cast(burn::tensor::DType::F16);
        assert_eq!(read_f32(half, "half").unwrap(), [1.5, -2.0]);
        let ids = Tensor::<1, Int>::from_ints([3, 4], &device);
        let data = read_data(ids, "ids").unwrap();
        assert_eq!(data.convert::<i64>().try_to_vec::<i64>().unwrap(), [3, 4]);
    }

    #[test]
    fn a_scalar_read_needs_exactly_one_value() {
        let t = Tensor::<1>::from_floats([1.0, 2.0], &Device::flex());
        assert_eq!(read_f32_scalar(t.clone().sum(), "sum").unwrap(), 3.0);
        let e = read_f32_scalar(t, "two values").unwrap_err();
        assert!(matches!(e, Error::ReadBack { .. }), "{e}");
        assert_eq!(
            e.to_string(),
            "reading two values back from the device failed: expected one value, got 2"
        );
    }

    #[test]
    fn backend_messages_become_one_line() {
        assert_eq!(
            one_line("An error happened during execution\nCaused by:\n  buffer lost\n"),
            "An error happened during execution Caused by: buffer lost"
        );
    }
}
