//! A wgpu build on a machine whose graphics drivers cannot be loaded, for real: a child process
//! of this test binary runs [`vdm::try_device`] with no Vulkan driver (`VK_ICD_FILENAMES` and
//! `VK_DRIVER_FILES` name a file that does not exist) and no EGL vendor for wgpu's OpenGL
//! fallback (`__EGL_VENDOR_LIBRARY_FILENAMES` likewise), so Burn's wgpu backend finds no
//! adapter at all. Without the probe it panics inside its device thread ("Unable to acquire
//! wgpu device: AdapterUnavailable ...") and then again in the caller's first tensor operation
//! ("RecvError"); with it the caller gets [`Error::Device`] naming the backend, the device
//! thread's reason and what to install, in one line, before any model work.
//!
//! A child process, because a backend that failed to start stays failed for the life of the
//! process (the other tests of this binary need a working wgpu device).

use std::path::PathBuf;
use std::time::Duration;

use vdm::core::Error;

use crate::child::child_test_output;

/// Where the child writes the error's one line.
const CHILD_OUT: &str = "VDM_DRIVERLESS_CHILD_OUT";

/// A file name that exists nowhere: the Vulkan loader and glvnd then load no driver.
const NO_DRIVER: &str = "/nonexistent/vdm-no-driver.json";

/// The child's side: the probe must fail with a typed device error; its line goes to
/// [`CHILD_OUT`].
#[test]
#[ignore = "not a test alone: the child process that `a_wgpu_device_without_any_driver_is_a_typed_error_with_a_hint` runs (with --ignored --exact and no driver visible), so CI covers it through that test"]
fn child_probes_the_default_device() {
    let out = PathBuf::from(std::env::var_os(CHILD_OUT).expect("run by the parent test"));
    let err = match vdm::try_device() {
        Ok(device) => panic!("no driver is visible, yet {device:?} passed the probe"),
        Err(err) => err,
    };
    assert!(
        matches!(&err, Error::Device { backend, .. } if backend == "wgpu"),
        "{err:?}"
    );
    std::fs::write(out, err.to_string()).unwrap();
}

#[test]
fn a_wgpu_device_without_any_driver_is_a_typed_error_with_a_hint() {
    let line = child_test_output(
        "driverless::child_probes_the_default_device",
        CHILD_OUT,
        Duration::from_secs(120),
        |command| {
            command
                .env("VK_ICD_FILENAMES", NO_DRIVER)
                .env("VK_DRIVER_FILES", NO_DRIVER)
                .env("__EGL_VENDOR_LIBRARY_FILENAMES", NO_DRIVER)
                .env_remove("VK_ADD_DRIVER_FILES")
                .env_remove("DISPLAY")
                .env_remove("WAYLAND_DISPLAY");
        },
    );
    let line = String::from_utf8(line).unwrap();
    println!("without a driver: {line}");
    assert!(!line.contains('\n'), "one line: {line}");
    // The reason is the backend's own (its device thread's panic), not the caller thread's
    // bare `RecvError` that follows it.
    assert!(
        line.starts_with("cannot use the wgpu device: Unable to acquire wgpu device: "),
        "{line}"
    );
    assert!(line.contains("AdapterUnavailable"), "{line}");
    assert!(!line.contains("RecvError"), "{line}");
    assert!(line.contains("mesa-vulkan-drivers"), "{line}");
    assert!(line.contains("without the `wgpu` feature"), "{line}");
}
