//! Noise that is the same on every backend, and noise that the caller injects.
//!
//! Every place in vdm that draws Gaussian noise (initial latents, stochastic scheduler steps,
//! FreeInit's fresh high-frequency noise, FreeNoise permutations) takes a
//! [`NoiseSource`]. Seeded noise ([`SeededNoise`]) is generated on the host with a fixed,
//! documented algorithm, so one seed gives bit-identical noise whether the model then runs on
//! flex, wgpu or CUDA (Burn's own `device.seed` streams differ per backend). Recorded noise
//! ([`NoiseBank`]) replays given tensors in order, which is how our tests reproduce diffusers
//! trajectories exactly.

use std::collections::VecDeque;

use burn::tensor::{Device, Tensor, TensorData};

use crate::{Error, Result};

/// A source of standard-normal noise and of random permutations.
///
/// Implementations decide where numbers come from; consumers only ask for a shape.
pub trait NoiseSource: Send {
    /// Draws `shape.iter().product()` standard-normal values (row-major) as host data.
    fn normal(&mut self, shape: &[usize]) -> Result<TensorData>;

    /// Draws a uniformly random permutation of `0..n`.
    fn permutation(&mut self, n: usize) -> Result<Vec<usize>>;
}

/// Draws a standard-normal tensor of `shape` on `device` from `source`.
pub fn draw<const D: usize>(
    source: &mut dyn NoiseSource,
    shape: [usize; D],
    device: &Device,
) -> Result<Tensor<D>> {
    let data = source.normal(&shape)?;
    if data.shape().as_slice() != shape.as_slice() {
        return Err(Error::Noise(format!(
            "asked for shape {shape:?}, the source returned {:?}",
            data.shape()
        )));
    }
    Ok(Tensor::from_data(data, device))
}

/// Host-side seeded Gaussian noise: xoshiro256++ seeded through SplitMix64, normals by the
/// 256-layer Ziggurat method (Marsaglia & Tsang 2000) in `f64`, rounded to `f32`.
///
/// The stream is a pure function of the seed and the sequence of requests, independent of the
/// compute backend and of thread count. (It is not PyTorch's stream: to reproduce a PyTorch run,
/// record its noise and replay it with [`NoiseBank`].)
///
/// ```
/// use vdm_core::noise::{NoiseSource, SeededNoise};
/// let a = SeededNoise::new(42).normal(&[2, 3]).unwrap();
/// let b = SeededNoise::new(42).normal(&[2, 3]).unwrap();
/// assert_eq!(a, b);
/// ```
#[derive(Debug, Clone)]
pub struct SeededNoise {
    state: [u64; 4],
}

impl SeededNoise {
    /// A generator for `seed`.
    pub fn new(seed: u64) -> Self {
        let mut sm = seed;
        let mut next = || {
            sm = sm.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = sm;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        };
        Self {
            state: [next(), next(), next(), next()],
        }
    }

    /// An independent generator derived from this seed and a stream index, e.g. one stream
    /// per batch item or per FreeInit iteration.
    pub fn stream(seed: u64, stream: u64) -> Self {
        Self::new(seed ^ stream.wrapping_mul(0xD1B5_4A32_D192_ED03).rotate_left(17))
    }

    fn next_u64(&mut self) -> u64 {
        let s = &mut self.state;
        let result = s[0].wrapping_add(s[3]).rotate_left(23).wrapping_add(s[0]);
        let t = s[1] << 17;
        s[2] ^= s[0];
        s[3] ^= s[1];
        s[1] ^= s[2];
        s[0] ^= s[3];
        s[2] ^= t;
        s[3] = s[3].rotate_left(45);
        result
    }

    /// A uniform `f64` in `[0, 1)` with 53 random bits.
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// One standard-normal `f64` (Ziggurat; ~99% of draws cost one `u64` and a comparison).
    pub fn standard_normal(&mut self) -> f64 {
        let (x_table, f_table) = ziggurat_tables();
        loop {
            let bits = self.next_u64();
            let i = (bits & 0xff) as usize;
            // Symmetric uniform in (−1, 1) from the top 53 bits.
            let u = 2.0 * ((bits >> 11) as f64 * (1.0 / (1u64 << 53) as f64)) - 1.0;
            let x = u * x_table[i];
            if x.abs() < x_table[i + 1] {
                return x;
            }
            if i == 0 {
                // The tail beyond R (Marsaglia 1964).
                loop {
                    let a = (1.0 - self.uniform()).ln() / ZIGGURAT_R;
                    let b = (1.0 - self.uniform()).ln();
                    if -2.0 * b >= a * a {
                        return if u < 0.0 {
                            a - ZIGGURAT_R
                        } else {
                            ZIGGURAT_R - a
                        };
                    }
                }
            }
            if f_table[i + 1] + (f_table[i] - f_table[i + 1]) * self.uniform()
                < (-0.5 * x * x).exp()
            {
                return x;
            }
        }
    }

    /// A uniform integer in `0..n` (Lemire's unbiased method). `n` must be > 0.
    fn below(&mut self, n: u64) -> u64 {
        debug_assert!(n > 0);
        loop {
            let m = (self.next_u64() as u128) * (n as u128);
            let low = m as u64;
            if low >= n.wrapping_neg() % n {
                return (m >> 64) as u64;
            }
        }
    }
}

impl NoiseSource for SeededNoise {
    fn normal(&mut self, shape: &[usize]) -> Result<TensorData> {
        let n: usize = shape.iter().product();
        let values: Vec<f32> = (0..n).map(|_| self.standard_normal() as f32).collect();
        Ok(TensorData::new(values, shape.to_vec()))
    }

    fn permutation(&mut self, n: usize) -> Result<Vec<usize>> {
        // Fisher–Yates.
        let mut perm: Vec<usize> = (0..n).collect();
        for i in (1..n).rev() {
            let j = self.below(i as u64 + 1) as usize;
            perm.swap(i, j);
        }
        Ok(perm)
    }
}

/// Start of the tail of the 256-layer normal Ziggurat.
const ZIGGURAT_R: f64 = 3.654_152_885_361_009;
/// Area of each layer.
const ZIGGURAT_V: f64 = 0.004_928_673_233_99;

/// Layer edges `x[0..=256]` (`x[0] = V/f(R)`, `x[1] = R`, `x[256] = 0`) and `f(x) = e^{−x²/2}`
/// at them, computed once.
fn ziggurat_tables() -> &'static ([f64; 257], [f64; 257]) {
    static TABLES: std::sync::OnceLock<([f64; 257], [f64; 257])> = std::sync::OnceLock::new();
    TABLES.get_or_init(|| {
        let pdf = |x: f64| (-0.5 * x * x).exp();
        let mut x = [0.0f64; 257];
        x[0] = ZIGGURAT_V / pdf(ZIGGURAT_R);
        x[1] = ZIGGURAT_R;
        for i in 2..256 {
            x[i] = (-2.0 * (ZIGGURAT_V / x[i - 1] + pdf(x[i - 1])).ln()).sqrt();
        }
        x[256] = 0.0;
        let mut f = [0.0f64; 257];
        for i in 0..257 {
            f[i] = pdf(x[i]);
        }
        (x, f)
    })
}

/// Replays recorded noise tensors and permutations in the order they were recorded.
///
/// Asking for more than was recorded, or for a different shape, is an error (never a silent
/// fallback), so a replay either reproduces the recorded run or says why not.
#[derive(Debug, Clone, Default)]
pub struct NoiseBank {
    tensors: VecDeque<TensorData>,
    permutations: VecDeque<Vec<usize>>,
    drawn: usize,
}

impl NoiseBank {
    /// An empty bank.
    pub fn new() -> Self {
        Self::default()
    }

    /// A bank that replays `tensors` in order.
    pub fn from_tensors(tensors: impl IntoIterator<Item = TensorData>) -> Self {
        Self {
            tensors: tensors.into_iter().collect(),
            ..Self::default()
        }
    }

    /// Appends a tensor to replay.
    pub fn push_tensor(&mut self, tensor: TensorData) -> &mut Self {
        self.tensors.push_back(tensor);
        self
    }

    /// Appends a permutation to replay.
    pub fn push_permutation(&mut self, perm: Vec<usize>) -> &mut Self {
        self.permutations.push_back(perm);
        self
    }

    /// Number of tensors handed out so far.
    pub fn drawn(&self) -> usize {
        self.drawn
    }

    /// Number of tensors not yet handed out.
    pub fn remaining(&self) -> usize {
        self.tensors.len()
    }
}

impl NoiseSource for NoiseBank {
    fn normal(&mut self, shape: &[usize]) -> Result<TensorData> {
        let data = self.tensors.pop_front().ok_or_else(|| {
            Error::Noise(format!(
                "noise bank exhausted after {} tensors (asked for {shape:?})",
                self.drawn
            ))
        })?;
        if data.shape().as_slice() != shape {
            return Err(Error::Noise(format!(
                "recorded tensor {} has shape {:?}, asked for {shape:?}",
                self.drawn,
                data.shape()
            )));
        }
        self.drawn += 1;
        Ok(data)
    }

    fn permutation(&mut self, n: usize) -> Result<Vec<usize>> {
        let perm = self.permutations.pop_front().ok_or_else(|| {
            Error::Noise(format!(
                "no recorded permutation left (asked for one of {n})"
            ))
        })?;
        let mut seen = vec![false; n];
        if perm.len() != n
            || !perm
                .iter()
                .all(|&i| i < n && !std::mem::replace(&mut seen[i], true))
        {
            return Err(Error::Noise(format!(
                "recorded permutation {perm:?} is not a permutation of 0..{n}"
            )));
        }
        Ok(perm)
    }
}

/// A source that always fails: for deterministic code paths that must not draw noise.
///
/// Passing it to a deterministic sampler proves that nothing was drawn.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoNoise;

impl NoiseSource for NoNoise {
    fn normal(&mut self, shape: &[usize]) -> Result<TensorData> {
        Err(Error::Noise(format!(
            "this computation was declared deterministic but asked for noise of shape {shape:?}"
        )))
    }

    fn permutation(&mut self, n: usize) -> Result<Vec<usize>> {
        Err(Error::Noise(format!(
            "this computation was declared deterministic but asked for a permutation of {n}"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn seeded_noise_is_standard_normal() {
        let data = SeededNoise::new(7).normal(&[100_000]).unwrap();
        let v = data.try_to_vec::<f32>().unwrap();
        let n = v.len() as f64;
        let mean = v.iter().map(|&x| x as f64).sum::<f64>() / n;
        let var = v.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / n;
        assert!(mean.abs() < 0.02, "mean {mean}");
        assert!((var - 1.0).abs() < 0.02, "var {var}");
    }

    #[test]
    fn seeded_noise_has_gaussian_tails() {
        let n = 2_000_000;
        let v = SeededNoise::new(11)
            .normal(&[n])
            .unwrap()
            .try_to_vec::<f32>()
            .unwrap();
        let frac = |t: f32| v.iter().filter(|x| x.abs() > t).count() as f64 / n as f64;
        // P(|Z| > 1) = 0.3173, P(|Z| > 2) = 0.0455, P(|Z| > 3.7) = 2.16e-4 (the Ziggurat tail).
        assert!((frac(1.0) - 0.3173).abs() < 0.002, "{}", frac(1.0));
        assert!((frac(2.0) - 0.0455).abs() < 0.001, "{}", frac(2.0));
        assert!((frac(3.7) - 2.16e-4).abs() < 4e-5, "{}", frac(3.7));
        let skew = v.iter().map(|&x| (x as f64).powi(3)).sum::<f64>() / n as f64;
        assert!(skew.abs() < 0.01, "skew {skew}");
    }

    #[test]
    fn ziggurat_layers_have_equal_area() {
        let (x, f) = ziggurat_tables();
        for i in 1..256 {
            let area = x[i] * (f[i + 1] - f[i]);
            assert!((area - ZIGGURAT_V).abs() < 1e-9, "layer {i}: {area}");
        }
        assert!(x[255] > 0.0 && x[255] < 0.3);
    }

    #[test]
    fn streams_differ() {
        let a = SeededNoise::stream(1, 0).normal(&[8]).unwrap();
        let b = SeededNoise::stream(1, 1).normal(&[8]).unwrap();
        assert_ne!(a, b);
    }

    #[test]
    fn bank_replays_and_reports_exhaustion() {
        let t = TensorData::new(vec![1.0f32, 2.0], vec![2]);
        let mut bank = NoiseBank::from_tensors([t.clone()]);
        assert_eq!(bank.normal(&[2]).unwrap(), t);
        assert!(matches!(bank.normal(&[2]), Err(Error::Noise(_))));
        let mut bank = NoiseBank::from_tensors([t]);
        assert!(matches!(bank.normal(&[3]), Err(Error::Noise(_))));
    }

    #[test]
    fn bank_rejects_non_permutations() {
        let mut bank = NoiseBank::new();
        bank.push_permutation(vec![0, 0, 1]);
        assert!(bank.permutation(3).is_err());
    }

    proptest! {
        #[test]
        fn permutations_are_permutations(seed in any::<u64>(), n in 0usize..64) {
            let mut p = SeededNoise::new(seed).permutation(n).unwrap();
            p.sort_unstable();
            prop_assert_eq!(p, (0..n).collect::<Vec<_>>());
        }
    }
}
