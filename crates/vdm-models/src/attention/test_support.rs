//! Helpers shared by the tests of the attention modules.

use burn::tensor::{Device, Distribution, Tensor, Tolerance};

pub(super) fn dev() -> Device {
    Device::flex()
}

pub(super) fn rand<const D: usize>(shape: [usize; D]) -> Tensor<D> {
    Tensor::random(shape, Distribution::Normal(0.0, 1.0), &dev())
}

pub(super) fn close<const D: usize>(a: Tensor<D>, b: Tensor<D>, tol: f32) {
    a.into_data()
        .assert_approx_eq::<f32>(&b.into_data(), Tolerance::absolute(tol));
}
