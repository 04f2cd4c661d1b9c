//! Host access to `f32` tensor values, for CPU kernels that beat chains of generic tensor ops
//! (the fused kernels of `vdm-kernels`, which `vdm-models` and `vdm-longvideo` call).
//!
//! [`cpu_kernels`] says whether such a kernel should run at all: on Burn's flex (CPU)
//! backend, for `f32` tensors without autodiff, unless the environment variable
//! `VDM_NO_CPU_KERNELS` is set (to anything but `0`). Everywhere else (GPU backends, `f16`,
//! training) callers keep their plain tensor-op path.
//!
//! [`HostF32`] holds a tensor's values on the host. With this crate's `flex` feature (the
//! `vdm` facade's `flex` switches it on) a contiguous flex tensor is read in place through
//! Burn's `try_into_primitive`: its buffer is shared, not copied, which matters for weights
//! and for activations that are still in use elsewhere. Without the feature, or for any
//! other tensor, the values come from `into_data` (itself zero-copy for a uniquely owned,
//! contiguous flex tensor).

use std::sync::OnceLock;

use burn::tensor::{DType, Device, Tensor, TensorData};

use crate::{Error, Result};

/// Whether CPU kernels apply to tensors of `dtype` on `device` (see the module docs).
pub fn cpu_kernels(device: &Device, dtype: DType) -> bool {
    dtype == DType::F32 && switched_on() && !device.is_autodiff() && is_flex(device)
}

fn switched_on() -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(|| {
        std::env::var("VDM_NO_CPU_KERNELS").map_or(true, |v| v.is_empty() || v == "0")
    })
}

fn is_flex(device: &Device) -> bool {
    #[cfg(feature = "flex")]
    {
        matches!(device.as_dispatch(), burn::backend::DispatchDevice::Flex(_))
    }
    // Without this crate's `flex` feature Burn's backend types are not named here (another
    // crate may still have switched flex on); `Debug` names the backend (`Device<Flex(..)>`).
    #[cfg(not(feature = "flex"))]
    {
        format!("{device:?}").contains("Flex")
    }
}

/// The `f32` values of a tensor on the host (see the module docs).
pub struct HostF32 {
    repr: Repr,
}

enum Repr {
    Data(TensorData),
    /// A contiguous flex tensor and its number of values (its buffer may be longer).
    #[cfg(feature = "flex")]
    Flex(burn::backend::flex::FlexTensor, usize),
}

impl HostF32 {
    /// The values of `t`, which must hold `f32`s.
    ///
    /// # Errors
    /// [`Error::Unsupported`] for any other dtype.
    pub fn new<const D: usize>(t: Tensor<D>) -> Result<Self> {
        if t.dtype() != DType::F32 {
            return Err(Error::Unsupported(format!(
                "host access is for f32 tensors, got {:?}",
                t.dtype()
            )));
        }
        #[cfg(feature = "flex")]
        {
            use burn::backend::Flex;
            if let Ok(p) = t.clone().try_into_primitive::<Flex>()
                && p.is_contiguous()
                && p.layout().start_offset() == 0
            {
                drop(t);
                let repr = if p.is_unique() {
                    Repr::Data(p.into_data())
                } else {
                    let len = p.layout().num_elements();
                    Repr::Flex(p, len)
                };
                return Ok(Self { repr });
            }
        }
        Ok(Self {
            repr: Repr::Data(crate::readback::read_data(t, "a tensor for a CPU kernel")?),
        })
    }

    /// The values, row-major.
    pub fn as_slice(&self) -> &[f32] {
        match &self.repr {
            Repr::Data(d) => d.as_slice::<f32>().expect("checked to be f32 by `new`"),
            #[cfg(feature = "flex")]
            Repr::Flex(p, len) => &p.storage::<f32>()[..*len],
        }
    }

    /// The values, mutable (copied first if the buffer is shared).
    pub fn as_mut_slice(&mut self) -> &mut [f32] {
        match &mut self.repr {
            Repr::Data(d) => d.as_mut_slice::<f32>().expect("checked to be f32 by `new`"),
            #[cfg(feature = "flex")]
            Repr::Flex(p, len) => &mut p.storage_mut::<f32>()[..*len],
        }
    }

    /// The tensor of these values (the same buffer) on `device`, with the shape they came
    /// with.
    pub fn into_tensor<const D: usize>(self, device: &Device) -> Tensor<D> {
        match self.repr {
            Repr::Data(data) => Tensor::from_data(data, device),
            #[cfg(feature = "flex")]
            Repr::Flex(p, _) => Tensor::from_primitive::<burn::backend::Flex>(p),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_shared_and_owned_tensors_alike() {
        let device = Device::flex();
        assert!(cpu_kernels(&device, DType::F32));
        assert!(!cpu_kernels(&device, DType::F16));
        let t = Tensor::<1>::from_floats([1.0, 2.0, 3.0], &device);
        // Shared with `t`: read in place, copied on write, `t` unchanged.
        let mut shared = HostF32::new(t.clone()).unwrap();
        assert_eq!(shared.as_slice(), &[1.0, 2.0, 3.0]);
        shared.as_mut_slice()[0] = 7.0;
        let back: Tensor<1> = shared.into_tensor(&device);
        assert_eq!(
            back.into_data().try_to_vec::<f32>().unwrap(),
            vec![7.0, 2.0, 3.0]
        );
        assert_eq!(
            t.clone().into_data().try_to_vec::<f32>().unwrap(),
            vec![1.0, 2.0, 3.0]
        );
        // A strided view is copied out.
        let view = Tensor::<2>::from_floats([[1.0, 2.0], [3.0, 4.0]], &device).transpose();
        assert_eq!(
            HostF32::new(view).unwrap().as_slice(),
            &[1.0, 3.0, 2.0, 4.0]
        );
        // Other dtypes are a typed error.
        assert!(HostF32::new(t.cast(DType::F16)).is_err());
    }
}
