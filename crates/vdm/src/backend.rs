//! The compute device of the enabled backend feature: [`device`] picks it, [`try_device`]
//! picks it and proves it works.
//!
//! Burn 0.22 has no fallible device constructor: a backend that cannot start (wgpu without a
//! Vulkan / Metal / DX12 adapter, cuda without a driver) panics, lazily, inside the first tensor
//! operation, deep in the first model call. [`probe_device`] makes that first operation
//! itself (a two-value tensor created, summed and read back) under `catch_unwind`, and turns a
//! panic into [`Error::Device`] naming the backend, what it reported and what to install or
//! choose instead, before any model work.
//!
//! The backend's own reason is often not the caller's panic: Burn's wgpu backend fails in its
//! device thread ("Unable to acquire wgpu device: AdapterUnavailable ..."), and the caller's
//! thread then panics with only "RecvError". So during the probe a panic hook records every
//! panic instead of printing it, and the error names the first one: the root cause. The hook is
//! the process's (Rust has no per-thread hook): it is installed for the probe alone and the
//! previous one restored, probes take turns, and a panic of another thread during those
//! milliseconds is recorded, not printed (it unwinds as before).

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::{Arc, Mutex, PoisonError};

use burn::tensor::{Device, Tensor};
use vdm_core::{Error, Result};

/// The device of the enabled backend feature, in the order `cuda`, `wgpu`, `flex`, `ndarray`.
///
/// Prefer naming a device explicitly (`Device::flex()`, ...) in tests: with several features
/// enabled by feature unification, this picks the first in that order. [`try_device`] is the
/// same device, probed.
///
/// # Panics
/// If no backend feature is enabled (the crate then does not compile unless `docsrs`).
pub fn device() -> Device {
    #[cfg(feature = "cuda")]
    {
        return Device::cuda(0);
    }
    #[cfg(all(feature = "wgpu", not(feature = "cuda")))]
    {
        return Device::wgpu(Default::default());
    }
    #[cfg(all(feature = "flex", not(any(feature = "cuda", feature = "wgpu"))))]
    {
        return Device::flex();
    }
    #[allow(deprecated, unreachable_code)]
    #[cfg(all(
        feature = "ndarray",
        not(any(feature = "cuda", feature = "wgpu", feature = "flex"))
    ))]
    {
        return Device::ndarray();
    }
    #[allow(unreachable_code)]
    {
        panic!("vdm: enable one backend feature (flex, ndarray, wgpu or cuda)")
    }
}

/// The name of the backend [`device`] returns.
pub fn backend_name() -> &'static str {
    if cfg!(feature = "cuda") {
        "cuda"
    } else if cfg!(feature = "wgpu") {
        "wgpu"
    } else if cfg!(feature = "flex") {
        "flex"
    } else if cfg!(feature = "ndarray") {
        "ndarray"
    } else {
        "none"
    }
}

/// [`device`], probed by [`probe_device`]: call it once, before loading a model.
///
/// # Errors
/// [`Error::Device`] when the backend cannot run a tensor operation.
pub fn try_device() -> Result<Device> {
    probe_device(backend_name(), device)
}

/// Makes a device with `make` and runs one tiny operation on it (create, sum, read back),
/// catching the backend's panic if it cannot start.
///
/// # Errors
/// [`Error::Device`] naming `backend`, with the first line of the backend's panic message (or
/// the wrong value it computed) and a hint of what to install or choose instead.
pub fn probe_device(backend: &str, make: impl FnOnce() -> Device) -> Result<Device> {
    let (outcome, panics) = with_recorded_panics(|| {
        catch_unwind(AssertUnwindSafe(|| {
            let device = make();
            let sum = Tensor::<1>::from_floats([1.0, 2.0], &device)
                .sum()
                .into_data()
                .try_to_vec::<f32>();
            (device, sum)
        }))
    });
    let error = |reason: String| Error::Device {
        backend: backend.to_string(),
        reason,
        hint: hint(backend).to_string(),
    };
    match outcome {
        Ok((device, Ok(sum))) if sum == [3.0] => Ok(device),
        Ok((_, Ok(sum))) => Err(error(format!("1 + 2 computed as {sum:?}"))),
        Ok((_, Err(e))) => Err(error(format!("reading a tensor back failed: {e:?}"))),
        Err(panic) => {
            let first = panics
                .into_iter()
                .next()
                .unwrap_or_else(|| vdm_core::error::panic_message(panic.as_ref()));
            Err(error(first_line(&first)))
        }
    }
}

/// Runs `f` (which must not unwind: it catches its own panics) with a panic hook that records
/// each panic's message, in the order they happen on any thread, instead of printing it; the
/// previous hook is restored before returning.
fn with_recorded_panics<T>(f: impl FnOnce() -> T) -> (T, Vec<String>) {
    /// Probes take turns, so each restores the hook it found.
    static TURN: Mutex<()> = Mutex::new(());
    let _turn = TURN.lock().unwrap_or_else(PoisonError::into_inner);
    let recorded = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::clone(&recorded);
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let message = vdm_core::error::panic_message(info.payload());
        sink.lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(message);
    }));
    let out = f();
    std::panic::set_hook(previous);
    let messages = std::mem::take(&mut *recorded.lock().unwrap_or_else(PoisonError::into_inner));
    (out, messages)
}

/// The first line of `text`.
fn first_line(text: &str) -> String {
    text.lines().next().unwrap_or_default().to_string()
}

/// What a user of `backend` is missing when it does not start.
fn hint(backend: &str) -> &'static str {
    match backend {
        "wgpu" => {
            "wgpu needs a Vulkan, Metal or DirectX 12 adapter: install the GPU's driver (on \
             Debian without a GPU, software Vulkan: `apt install mesa-vulkan-drivers \
             libvulkan1`), or build without the `wgpu` feature for the CPU backend (flex)"
        }
        "cuda" => {
            "cuda needs an NVIDIA GPU with its driver and CUDA runtime: check `nvidia-smi`, or \
             build without the `cuda` feature for the CPU backend (flex)"
        }
        _ => "this CPU backend should always start: please report it",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_device_passes_its_probe() {
        let device = try_device().unwrap();
        let x = Tensor::<1>::from_floats([4.0], &device);
        assert_eq!(x.into_data().try_to_vec::<f32>().unwrap(), [4.0]);
    }

    #[test]
    fn a_backend_that_panics_is_a_typed_error_with_a_hint() {
        let err =
            probe_device("wgpu", || panic!("No adapter found\nat some/file.rs:1")).unwrap_err();
        let Error::Device {
            backend,
            reason,
            hint,
        } = &err
        else {
            panic!("{err:?}")
        };
        assert_eq!(backend, "wgpu");
        assert_eq!(reason, "No adapter found");
        assert!(hint.contains("mesa-vulkan-drivers"), "{hint}");
        let line = err.to_string();
        assert!(!line.contains('\n'), "one line: {line}");
        assert!(line.starts_with("cannot use the wgpu device: No adapter found; "));
    }

    /// As Burn's wgpu backend fails: its device thread panics with the reason, then the
    /// caller's thread with a bare `RecvError`; the error names the device thread's reason.
    #[test]
    fn the_reason_is_the_first_panic_of_any_thread() {
        let err = probe_device("wgpu", || {
            let device_thread = std::thread::spawn(|| {
                panic!("Unable to acquire wgpu device: AdapterUnavailable\nbacktrace")
            });
            assert!(device_thread.join().is_err());
            panic!("called `Result::unwrap()` on an `Err` value: RecvError")
        })
        .unwrap_err();
        let Error::Device { reason, .. } = &err else {
            panic!("{err:?}")
        };
        assert_eq!(reason, "Unable to acquire wgpu device: AdapterUnavailable");
    }
}
