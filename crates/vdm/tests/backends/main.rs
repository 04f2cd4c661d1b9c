//! The GPU code path, tested: the parity suites of the schedulers, the models (UNet3D,
//! UNetMotion, the VAE decoder and encoder, CLIP) and the long-video methods (FreeNoise,
//! FreeInit) run again on Burn's `wgpu` backend, against the same diffusers 0.42.1 / transformers
//! vectors and the same tolerances as on flex; and one seed gives the same video on ndarray and
//! wgpu as flex's committed frames within a stated tolerance ([`cross_backend`]); and a wgpu
//! device on a machine without any graphics driver ([`driverless`]) and a tensor the device
//! cannot hold ([`readback`]) are typed errors, not panics.
//!
//! The parity modules are the crates' own test files, mounted here with `#[path]`, so one copy of
//! each check serves every backend: they take their device from [`test_device`]. Not mounted:
//! `vdm-models`' `saving` (it checks file round trips on flex, not a backend's numbers).
//!
//! Built only with both features, as `.ci/run` does after installing Mesa's software Vulkan
//! driver lavapipe (`mesa-vulkan-drivers libvulkan1`), without flex (nothing here needs it):
//! `cargo test --release -p vdm --no-default-features --features wgpu,ndarray --test backends`.

#![cfg(all(feature = "wgpu", feature = "ndarray"))]

#[path = "../common/child.rs"]
mod child;
mod cross_backend;
mod driverless;
mod readback;
#[path = "../common/reference_frames.rs"]
mod reference_frames;

/// The device of the mounted parity modules: Burn's wgpu backend on the first adapter (lavapipe
/// in CI, the GPU where there is one).
fn test_device() -> burn::tensor::Device {
    burn::tensor::Device::wgpu(Default::default())
}

/// The scheduler products compute a covering subset of their cases here: every value of every
/// config field, step count and kind of diffusers outcome, 3 to 10 cases per file, at the same
/// tolerances (`fixtures::computed_cases`); `vdm-schedulers`' own parity suite computes every
/// case on flex. With every case, the four largest products (DDPM, Euler ancestral, Heun,
/// UniPC) took over 60 s each on lavapipe, most of this binary's time in CI.
const COVER_PRODUCTS: bool = true;

/// Bound on `max |Δ|` between two routes to the same math (conditioning given to every block
/// against the plain call; exactly 0 on flex; chunked against whole inference, 1e-5 on flex):
/// wgpu's fused kernels depend on the graph, so the sums round differently (measured on
/// lavapipe: 3.1e-6 on UNetMotion and 7.6e-6 on UNet3D for the conditioning routes, up to
/// 1.001e-5 on UNet3D chunked against whole, which failed a CI run at the flex bound).
const SAME_MATH_TOL: f32 = 2e-5;

/// Factor on the f16 / bf16 compute tolerances measured on flex: wgpu keeps more of the work in
/// half precision (measured on lavapipe: UNet3D f16 6.2e-2 against flex's bound 5e-2, the VAE
/// decoder f16 3.2e-2 against 1.5e-2).
const HALF_TOL_FACTOR: f32 = 3.0;

// vdm-schedulers' parity suite (`crates/vdm-schedulers/tests/parity`).
#[path = "../../../vdm-schedulers/tests/parity/beta_sigmas.rs"]
mod beta_sigmas;
#[path = "../../../vdm-schedulers/tests/parity/ddim.rs"]
mod ddim;
#[path = "../../../vdm-schedulers/tests/parity/ddim_inverse.rs"]
mod ddim_inverse;
#[path = "../../../vdm-schedulers/tests/parity/ddpm.rs"]
mod ddpm;
#[path = "../../../vdm-schedulers/tests/parity/deis.rs"]
mod deis;
#[path = "../../../vdm-schedulers/tests/parity/dpm_singlestep.rs"]
mod dpm_singlestep;
#[path = "../../../vdm-schedulers/tests/parity/dpm_solver.rs"]
mod dpm_solver;
#[path = "../../../vdm-schedulers/tests/parity/euler.rs"]
mod euler;
#[path = "../../../vdm-schedulers/tests/parity/euler_ancestral.rs"]
mod euler_ancestral;
#[path = "../../../vdm-schedulers/tests/parity/fixtures.rs"]
mod fixtures;
#[path = "../../../vdm-schedulers/tests/parity/lcm.rs"]
mod lcm;
#[path = "../../../vdm-schedulers/tests/parity/shapes.rs"]
mod shapes;
#[path = "../../../vdm-schedulers/tests/parity/tcd.rs"]
mod tcd;
#[path = "../../../vdm-schedulers/tests/parity/two_stage.rs"]
mod two_stage;
#[path = "../../../vdm-schedulers/tests/parity/unipc.rs"]
mod unipc;

// vdm-models' parity suite (`crates/vdm-models/tests/parity`).
#[path = "../../../vdm-models/tests/parity/clip.rs"]
mod clip;
#[path = "../../../vdm-models/tests/parity/motion.rs"]
mod motion;
#[path = "../../../vdm-models/tests/parity/unet3d.rs"]
mod unet3d;
#[path = "../../../vdm-models/tests/parity/vae.rs"]
mod vae;
#[path = "../../../vdm-models/tests/parity/vae_encoder.rs"]
mod vae_encoder;

// vdm-longvideo's parity suite (`crates/vdm-longvideo/tests/parity`).
#[path = "../../../vdm-longvideo/tests/parity/freeinit.rs"]
mod freeinit;
#[path = "../../../vdm-longvideo/tests/parity/freenoise.rs"]
mod freenoise;
