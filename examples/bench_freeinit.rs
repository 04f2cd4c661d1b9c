//! Benchmark: FreeInit's frequency filter and spectral mix (Wu et al. 2023), the setting of
//! `shared/bench/BASELINE.md` §4: a Butterworth mask (order 4, stop frequencies 0.25) for the
//! latent's `[F, H, W]`, then the low/high-frequency mix of two `[1, 4, F, H, W]` latents —
//! exactly what one FreeInit re-initialisation does (diffusers `_get_free_init_freq_filter` +
//! `_apply_freq_filter`, see `free_init_utils.py`).
//!
//! Columns: `mask` = [`LowPassFilter::mask`]; `mix` = [`apply_frequency_filter`] on tensors (it
//! builds the mixer: mask re-layout and FFT plans, reads both tensors back to the host and
//! uploads the result); `total` = both, the cost of one re-initialisation. The breakdown columns
//! give the mixer setup ([`SpectralMixer::new`]: mask re-layout and plans) and the host-only
//! mix with a prepared mixer (default threads, one thread, and `f64` transforms).
//!
//! ```text
//! cargo run --release --example bench_freeinit [-- repeats]
//! ```
//!
//! Compare with `/work/venv-torch/bin/python shared/bench/baseline.py --only freeinit`, run
//! alternately in the same sitting (the machine's load changes timings by ±20 %).

use std::time::Instant;

use vdm::burn::tensor::Tensor;
use vdm::core::Result;
use vdm::core::noise::{SeededNoise, draw};
use vdm::core::readback::read_data;
use vdm::longvideo::freeinit::{
    FftPrecision, LowPassFilter, SpectralMixer, apply_frequency_filter,
};
use vdm_examples::measure::{median, min};

fn ms(t0: Instant) -> f64 {
    t0.elapsed().as_secs_f64() * 1e3
}

fn main() -> Result<()> {
    let repeats: usize = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(7);
    let device = vdm::device();
    let filter = LowPassFilter::default();
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!(
        "FreeInit butterworth(4, 0.25, 0.25) mask + spectral mix, backend {}, {threads} threads available, {repeats} repeats (median / min ms)",
        vdm::backend_name()
    );
    println!(
        "| {:<10} | {:>13} | {:>15} | {:>15} | {:>8} | {:>8} | {:>10} | {:>8} |",
        "latent", "mask", "mix (tensors)", "total", "setup", "host mix", "host 1 thr", "host f64"
    );
    println!(
        "|{:-<12}|{:->15}|{:->17}|{:->17}|{:->10}|{:->10}|{:->12}|{:->10}|",
        "", "", "", "", "", "", "", ""
    );
    for shape in [[1, 4, 16, 64, 64], [1, 4, 64, 64, 64], [1, 4, 128, 40, 64]] {
        let [_, _, f, h, w] = shape;
        let mut rng = SeededNoise::new(4000);
        let x: Tensor<5> = draw(&mut rng, shape, &device)?;
        let noise: Tensor<5> = draw(&mut rng, shape, &device)?;
        let xs = x.to_data().try_to_vec::<f32>().expect("f32 latent");
        let ns = noise.to_data().try_to_vec::<f32>().expect("f32 latent");
        let mut out = vec![0.0f32; xs.len()];

        let (mut mask_ms, mut mix_ms, mut total_ms) = (vec![], vec![], vec![]);
        let (mut host_ms, mut host1_ms, mut host64_ms) = (vec![], vec![], vec![]);
        let mut setup_ms = vec![];
        for r in 0..repeats + 1 {
            let t0 = Instant::now();
            let mask = filter.mask(f, h, w)?;
            let m = ms(t0);
            let t0 = Instant::now();
            let y = apply_frequency_filter(x.clone(), noise.clone(), &mask)?;
            read_data(y, "the filtered latents")?;
            let a = ms(t0);

            let t0 = Instant::now();
            let mixer = SpectralMixer::new(&mask);
            let setup = ms(t0);
            let t0 = Instant::now();
            mixer.mix_into(&xs, &ns, &mut out)?;
            let host = ms(t0);
            let mixer1 = SpectralMixer::new(&mask).with_threads(1);
            let t0 = Instant::now();
            mixer1.mix_into(&xs, &ns, &mut out)?;
            let host1 = ms(t0);
            let mixer64 = SpectralMixer::with_precision(&mask, FftPrecision::F64);
            let t0 = Instant::now();
            mixer64.mix_into(&xs, &ns, &mut out)?;
            let host64 = ms(t0);
            if r > 0 {
                mask_ms.push(m);
                mix_ms.push(a);
                total_ms.push(m + a);
                setup_ms.push(setup);
                host_ms.push(host);
                host1_ms.push(host1);
                host64_ms.push(host64);
            }
        }
        let cell = |v: &Vec<f64>| format!("{:.2} / {:.2}", median(v), min(v));
        println!(
            "| {:<10} | {:>13} | {:>15} | {:>15} | {:>8.2} | {:>8.2} | {:>10.2} | {:>8.2} |",
            format!("{f}x{h}x{w}"),
            cell(&mask_ms),
            cell(&mix_ms),
            cell(&total_ms),
            median(&setup_ms),
            median(&host_ms),
            median(&host1_ms),
            median(&host64_ms),
        );
    }
    println!(
        "\nReference (shared/bench/BASELINE.md §4, diffusers/PyTorch on this machine type, s): \
         total 0.209-0.327 (16x64x64), 0.958-1.353 (64x64x64), 1.106-1.134 (128x40x64)."
    );
    Ok(())
}
