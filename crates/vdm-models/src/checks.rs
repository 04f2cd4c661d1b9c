//! Argument checks shared by the configurations and forward passes of the whole crate: a
//! configuration value that must be non-zero, a GroupNorm split, a dropout probability or a
//! normalisation epsilon, and the channel dimension of a token or image tensor. Each error names
//! the offending field or input.
//!
//! They are also re-exported from [`crate::attention`], where they used to live.

use burn::tensor::Tensor;
use vdm_core::{Error, Result};

/// Checks that `value > 0`, naming `field`.
pub(crate) fn ensure_nonzero(field: &str, value: usize) -> Result<()> {
    if value == 0 {
        return Err(Error::invalid(field, "must be > 0"));
    }
    Ok(())
}

/// Checks that `channels` splits into `groups` GroupNorm groups, naming `field`.
pub(crate) fn ensure_groups(field: &str, channels: usize, groups: usize) -> Result<()> {
    if groups == 0 || channels == 0 || !channels.is_multiple_of(groups) {
        return Err(Error::invalid(
            field,
            format!("{channels} channels cannot be split into {groups} GroupNorm groups"),
        ));
    }
    Ok(())
}

/// Checks a dropout probability (`[0, 1)`), naming `field`.
pub(crate) fn ensure_dropout(field: &str, p: f64) -> Result<()> {
    if !(0.0..1.0).contains(&p) {
        return Err(Error::invalid(field, format!("must be in [0, 1), got {p}")));
    }
    Ok(())
}

/// Checks a normalisation epsilon, naming `field`.
pub(crate) fn ensure_eps(field: &str, eps: f64) -> Result<()> {
    vdm_core::error::ensure_positive(field, eps).map(|_| ())
}

/// Checks the trailing (channel) dimension of a token tensor `[N, L, C]`.
pub(crate) fn expect_tokens(name: &str, x: &Tensor<3>, channels: usize) -> Result<()> {
    let dims = x.dims();
    if dims[2] != channels || dims[0] == 0 || dims[1] == 0 {
        return Err(Error::shape(
            name,
            format!("[N, L, C] with C = {channels} and N, L > 0"),
            &dims,
        ));
    }
    Ok(())
}

/// Checks the channel dimension of an image batch `[N, C, H, W]`.
pub(crate) fn expect_images(name: &str, x: &Tensor<4>, channels: usize) -> Result<()> {
    let dims = x.dims();
    if dims[1] != channels || dims.contains(&0) {
        return Err(Error::shape(
            name,
            format!("[N, C, H, W] with C = {channels} and every dimension > 0"),
            &dims,
        ));
    }
    Ok(())
}
