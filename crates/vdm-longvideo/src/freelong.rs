//! FreeLong (Lu et al. 2024, "FreeLong: Training-Free Long Video Generation with SpectralBlend
//! Temporal Attention", NeurIPS; reference code `aniki-ly/FreeLong`,
//! `examples/LaVie/freelong/models/{attention.py,freelong_utils.py}` and
//! `examples/VideoCrafter2/lvdm/modules/attention.py`, see `shared/reference/algorithms.md` §9).
//!
//! Attention over a video longer than the training clips keeps the global layout but loses
//! detail (high frequencies); attention restricted to a window of the training length keeps
//! detail but drifts. **SpectralBlend temporal attention** runs every temporal attention stage
//! twice, over all frames (global) and with a banded mask (local: each frame attends to the
//! `local_window` frames around it), and blends the two outputs in 3-D frequency space over
//! `(F, H, W)`: the low frequencies of the global branch, the high ones of the local branch,
//!
//! ```text
//! y = real(ifftn(ifftshift( LPF·fftshift(fftn(global)) + (1 − LPF)·fftshift(fftn(local)) )))
//! ```
//!
//! with the Gaussian low-pass filter of stop frequencies 0.25 (FreeInit's; the same
//! [`SpectralMixer`]). It is a [`TemporalHook`], so every model whose temporal layers route
//! through the hook gains it; the blend needs the layer's spatial layout
//! ([`TemporalSite::spatial`]), which vdm's models give when a temporal layer sees every
//! position at once (no position [`Chunking`](https://docs.rs/vdm-models)).
//!
//! As the VideoCrafter2 code, every stage of a chain (AnimateDiff's attn1 → attn2) is blended
//! on its own; the residual inside a stage passes unchanged since the two filters sum to one.
//! Unlike the reference: the local mask gives every frame exactly `local_window` keys (centred,
//! shifted at the ends; LaVie's has 17 in the interior and 16 at the ends), the filter is built
//! for the actual `(F, H, W)` (the reference hard-codes 128 frames and four resolutions), and
//! every resolution is blended (LaVie keeps the local branch alone at its highest resolution).
//!
//! Invariants (tested): with `F ≤ local_window` it is plain attention ([`AllFrames`])
//! exactly; where the two branches agree (a stage that does not mix frames) it changes nothing.
//!
//! [`AllFrames`]: vdm_core::AllFrames

use burn::tensor::{Bool, Device, Tensor, TensorData};
use vdm_core::readback::read_f32;
use vdm_core::temporal::{FrameWindow, TemporalHook, TemporalSite, TemporalStages, run_chain};
use vdm_core::{Error, Result};

use crate::freeinit::{LowPassFilter, SpectralMixer};

/// The FreeLong temporal hook.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FreeLong {
    /// Keys per frame in the local branch: the model's training length (16 in the paper).
    pub local_window: usize,
    /// The low-pass filter of the blend (Gaussian, stop frequencies 0.25 in the paper).
    pub filter: LowPassFilter,
}

impl FreeLong {
    /// The paper's settings for a model trained on `local_window`-frame clips.
    pub fn new(local_window: usize) -> Self {
        Self {
            local_window,
            filter: LowPassFilter::gaussian(0.25, 0.25).expect("valid stop frequencies"),
        }
    }

    /// # Errors
    /// [`Error::InvalidConfig`] naming `local_window` (0) or the filter's field.
    pub fn validate(&self) -> Result<()> {
        if self.local_window == 0 {
            return Err(Error::invalid("local_window", "must be ≥ 1"));
        }
        self.filter.validate()
    }
}

/// The local branch's mask for `frames` frames: frame `i` may attend to the `window` frames
/// starting at `clamp(i − window/2, 0, frames − window)` (`true` = may not attend).
pub fn local_mask(frames: usize, window: usize, device: &Device) -> Tensor<2, Bool> {
    let window = window.min(frames);
    let mut blocked = Vec::with_capacity(frames * frames);
    for i in 0..frames {
        let start = i.saturating_sub(window / 2).min(frames - window);
        blocked.extend((0..frames).map(|j| !(start..start + window).contains(&j)));
    }
    Tensor::from_data(TensorData::new(blocked, [frames, frames]), device)
}

impl TemporalHook for FreeLong {
    fn apply(
        &self,
        site: &TemporalSite<'_>,
        tokens: Tensor<3>,
        stages: &dyn TemporalStages,
    ) -> Result<Tensor<3>> {
        self.validate()?;
        let [n, frames, _] = tokens.dims();
        let global = FrameWindow::full(frames);
        site.check_positions(&global.positions)?;
        if frames <= self.local_window {
            return run_chain(stages, tokens, &global);
        }
        let Some([b, h, w]) = site.spatial.filter(|[b, h, w]| b * h * w == n) else {
            return Err(Error::Unsupported(format!(
                "FreeLong blends across space and time, but temporal layer `{}` does not give \
                 the spatial layout of its {n} token sequences (it runs on chunks of \
                 positions?); disable position chunking",
                site.layer
            )));
        };
        let local = FrameWindow {
            mask: Some(local_mask(frames, self.local_window, &tokens.device())),
            ..global.clone()
        };
        let mixer = SpectralMixer::new(&self.filter.mask(frames, h, w)?);
        let mut x = tokens;
        for stage in 0..stages.num_stages() {
            let g = stages.run_stage(stage, x.clone(), &global)?;
            let l = stages.run_stage(stage, x, &local)?;
            x = spectral_blend(&mixer, g, l, [b, h, w])?;
        }
        Ok(x)
    }
}

/// The low frequencies of `global` and the high ones of `local` over `(F, H, W)`, both token
/// sequences `[B·H·W, F, C]` of `[B, H, W]` positions.
fn spectral_blend(
    mixer: &SpectralMixer,
    global: Tensor<3>,
    local: Tensor<3>,
    [b, h, w]: [usize; 3],
) -> Result<Tensor<3>> {
    let [n, f, c] = global.dims();
    let device = global.device();
    let volumes = |t: Tensor<3>| -> Result<Vec<f32>> {
        // [B·H·W, F, C] → [B, C, F, H, W]: one (F, H, W) volume per (batch, channel).
        read_f32(
            t.reshape([b, h, w, f, c]).permute([0, 4, 3, 1, 2]),
            "FreeLong's attention outputs",
        )
    };
    let mut mixed = volumes(global)?;
    mixer.mix_in_place(&mut mixed, &volumes(local)?)?;
    let video = Tensor::<5>::from_data(TensorData::new(mixed, [b, c, f, h, w]), &device);
    Ok(video.permute([0, 3, 4, 2, 1]).reshape([n, f, c]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use vdm_core::AllFrames;
    use vdm_core::noise::{SeededNoise, draw};

    /// One stage, `x + softmax(x·xᵀ)·x` with the window's mask: mixes frames.
    struct Attention;

    impl TemporalStages for Attention {
        fn num_stages(&self) -> usize {
            2
        }
        fn run_stage(&self, stage: usize, x: Tensor<3>, window: &FrameWindow) -> Result<Tensor<3>> {
            let mut scores = x
                .clone()
                .matmul(x.clone().swap_dims(1, 2))
                .mul_scalar(0.5 + stage as f32);
            if let Some(mask) = &window.mask {
                scores = scores.mask_fill(mask.clone().unsqueeze::<3>(), f32::NEG_INFINITY);
            }
            Ok(x.clone() + burn::tensor::activation::softmax(scores, 2).matmul(x))
        }
    }

    /// A stage that does not mix frames: `2·x + 1` whatever the mask.
    struct PerToken;

    impl TemporalStages for PerToken {
        fn num_stages(&self) -> usize {
            1
        }
        fn run_stage(&self, _: usize, x: Tensor<3>, _: &FrameWindow) -> Result<Tensor<3>> {
            Ok(x.mul_scalar(2.0).add_scalar(1.0))
        }
    }

    /// Ignores its input: volume `a` globally, volume `b` under a mask (`[N, F, C]` each).
    struct Branches(Tensor<3>, Tensor<3>);

    impl TemporalStages for Branches {
        fn num_stages(&self) -> usize {
            1
        }
        fn run_stage(&self, _: usize, _: Tensor<3>, window: &FrameWindow) -> Result<Tensor<3>> {
            Ok(match window.mask {
                Some(_) => self.1.clone(),
                None => self.0.clone(),
            })
        }
    }

    fn host(t: Tensor<3>) -> Vec<f32> {
        read_f32(t, "t").unwrap()
    }

    fn tokens(seed: u64, dims: [usize; 3]) -> Tensor<3> {
        draw(&mut SeededNoise::new(seed), dims, &Device::flex()).unwrap()
    }

    #[test]
    fn short_videos_are_plain_attention() {
        let x = tokens(1, [2 * 3 * 2, 16, 4]);
        let site = TemporalSite::new("t", 16).with_spatial(2, 3, 2);
        let ours = FreeLong::new(16)
            .apply(&site, x.clone(), &Attention)
            .unwrap();
        let plain = AllFrames.apply(&site, x, &Attention).unwrap();
        assert_eq!(host(ours), host(plain));
    }

    #[test]
    fn agreeing_branches_pass_unchanged() {
        let x = tokens(2, [3 * 4, 24, 5]);
        let site = TemporalSite::new("t", 24).with_spatial(1, 3, 4);
        let ours = host(FreeLong::new(8).apply(&site, x.clone(), &PerToken).unwrap());
        let plain = host(AllFrames.apply(&site, x, &PerToken).unwrap());
        for (a, b) in ours.iter().zip(&plain) {
            assert!((a - b).abs() < 2e-5, "{a} vs {b}");
        }
    }

    #[test]
    fn low_frequencies_come_from_the_global_branch_and_high_ones_from_the_local() {
        let device = Device::flex();
        let [b, h, w, f, c] = [2, 3, 4, 20, 3];
        let global = tokens(3, [b * h * w, f, c]);
        let local = tokens(4, [b * h * w, f, c]);
        let site = TemporalSite::new("t", f).with_spatial(b, h, w);
        let hook = FreeLong::new(8);
        let ours = host(
            hook.apply(
                &site,
                Tensor::zeros([b * h * w, f, c], &device),
                &Branches(global.clone(), local.clone()),
            )
            .unwrap(),
        );
        // The same mix computed on [B, C, F, H, W] volumes built independently.
        let video = |t: Tensor<3>| vdm_core::layout::frame_tokens_to_video(t, b, h, w);
        let mask = hook.filter.mask(f, h, w).unwrap();
        let mixed = SpectralMixer::new(&mask)
            .mix(video(global.clone()), video(local.clone()))
            .unwrap();
        let want = host(vdm_core::layout::video_to_frame_tokens(mixed));
        for (a, b) in ours.iter().zip(&want) {
            assert!((a - b).abs() < 1e-5, "{a} vs {b}");
        }
        // And it is neither branch.
        assert!(
            ours.iter()
                .zip(host(global))
                .any(|(a, g)| (a - g).abs() > 1e-2)
        );
        assert!(
            ours.iter()
                .zip(host(local))
                .any(|(a, l)| (a - l).abs() > 1e-2)
        );
    }

    #[test]
    fn the_local_branch_sees_only_its_band() {
        // Frame 0's output depends on frame 19 globally but not locally: with a filter that
        // passes nothing (stop frequency 0), the result is the local branch alone.
        let f = 20;
        let hook = FreeLong {
            filter: LowPassFilter::gaussian(0.0, 0.0).unwrap(),
            ..FreeLong::new(4)
        };
        let site = TemporalSite::new("t", f).with_spatial(1, 1, 2);
        let x = tokens(5, [2, f, 3]);
        let changed = x
            .clone()
            .slice_assign([0..2, f - 1..f, 0..3], Tensor::ones([2, 1, 3], &x.device()));
        let first = |t: Tensor<3>| host(t.narrow(1, 0, 1));
        let a = first(hook.apply(&site, x.clone(), &Attention).unwrap());
        let b = first(hook.apply(&site, changed.clone(), &Attention).unwrap());
        for (p, q) in a.iter().zip(&b) {
            assert!((p - q).abs() < 1e-5);
        }
        let a = first(AllFrames.apply(&site, x, &Attention).unwrap());
        let b = first(AllFrames.apply(&site, changed, &Attention).unwrap());
        assert!(a.iter().zip(&b).any(|(p, q)| (p - q).abs() > 1e-4));
    }

    #[test]
    fn missing_layouts_and_position_limits_are_errors() {
        let x = tokens(6, [6, 24, 2]);
        let e = FreeLong::new(8)
            .apply(&TemporalSite::new("down.0", 24), x.clone(), &Attention)
            .unwrap_err();
        assert!(
            e.to_string().contains("down.0") && e.to_string().contains("chunking"),
            "{e}"
        );
        let wrong = TemporalSite::new("t", 24).with_spatial(1, 2, 2);
        assert!(
            FreeLong::new(8)
                .apply(&wrong, x.clone(), &Attention)
                .is_err()
        );
        let limited = TemporalSite::new("t", 24)
            .with_spatial(1, 2, 3)
            .with_max_positions(16);
        let e = FreeLong::new(8)
            .apply(&limited, x.clone(), &Attention)
            .unwrap_err();
        assert!(e.to_string().contains("num_frames"), "{e}");
        let e = FreeLong::new(0)
            .apply(
                &TemporalSite::new("t", 24).with_spatial(1, 2, 3),
                x,
                &Attention,
            )
            .unwrap_err();
        assert!(e.to_string().contains("local_window"), "{e}");
    }

    proptest! {
        #[test]
        fn every_frame_sees_a_band_of_the_window_around_itself(frames in 1usize..40, window in 1usize..20) {
            let mask = local_mask(frames, window, &Device::flex());
            let blocked: Vec<bool> = mask.into_data().try_into_vec::<bool>().unwrap();
            let keys = window.min(frames);
            for i in 0..frames {
                let row = &blocked[i * frames..(i + 1) * frames];
                let allowed: Vec<usize> = (0..frames).filter(|&j| !row[j]).collect();
                prop_assert_eq!(allowed.len(), keys);
                prop_assert!(allowed.contains(&i));
                prop_assert_eq!(allowed[keys - 1] - allowed[0] + 1, keys);
            }
        }
    }
}
