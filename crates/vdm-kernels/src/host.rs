//! Host views of tensors: the `f32` values of a tensor on the host ([`Host`]; with vdm-core's
//! `flex` feature flex tensors are read in place, so weights and shared activations are not
//! copied), flex tensors built from kernel outputs ([`tensor`]), and output buffers written in
//! place ([`filled`]).

use burn::tensor::{Device, Tensor, TensorData};

/// The `f32` values of a tensor on the host ([`vdm_core::host::HostF32`]: flex tensors are
/// read in place).
pub type Host = vdm_core::host::HostF32;

/// The host values of `t` (an `f32` tensor: the kernels run only when
/// [`enabled`](crate::enabled)).
pub fn host<const D: usize>(t: Tensor<D>) -> Host {
    Host::new(t).expect("cpu kernels run on f32 tensors only")
}

/// A flex tensor owning `data`.
pub fn tensor<const D: usize>(data: TensorData, device: &Device) -> Tensor<D> {
    Tensor::from_data(data, device)
}

/// The values of `data`.
pub fn f32s(data: &Host) -> &[f32] {
    data.as_slice()
}

/// The values of `data`, mutable (copied first if the buffer is shared).
pub fn f32s_mut(data: &mut Host) -> &mut [f32] {
    data.as_mut_slice()
}

/// A buffer of `len` values filled by `fill`, without zeroing it first.
///
/// # Safety
/// `fill` must initialise all `len` elements behind the pointer it is given (and write
/// nothing past them) before it returns.
pub unsafe fn filled(len: usize, fill: impl FnOnce(*mut f32)) -> Vec<f32> {
    let mut out: Vec<f32> = Vec::with_capacity(len);
    fill(out.as_mut_ptr());
    // SAFETY: `fill` initialised all `len` elements.
    unsafe { out.set_len(len) };
    out
}
