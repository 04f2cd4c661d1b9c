//! The vdm side of the harness: runs one [`Case`] in this process on the default device and
//! measures it. Models are built from the same diffusers configs the PyTorch side receives,
//! with Burn's default initialisation (the time of a forward does not depend on the weights'
//! values); inputs are seeded host noise.

use std::time::Instant;

use vdm::burn::tensor::{Device, Int, Tensor, TensorData};
use vdm::core::noise::{SeededNoise, draw};
use vdm::core::readback::read_f32_scalar;
use vdm::core::{AllFrames, Conditioning, DenoiserInput, Result, Timesteps, VideoShape};
use vdm::longvideo::freeinit::{LowPassFilter, apply_frequency_filter};
use vdm::longvideo::freenoise::{FreeNoiseConfig, FreeNoiseHook};
use vdm::longvideo::sampler::{Control, Guidance, LongVideoSampler};
use vdm::models::clip::{CLIPTextConfig, CLIPTextModel};
use vdm::models::unet_motion::{
    MotionAdapterConfig, UNet2DConditionConfig, UNetMotionConfig, UNetMotionModel,
};
use vdm::models::unet3d::{UNet3DConditionModel, UNet3DConditionModelConfig};
use vdm::models::vae::{AutoencoderKL, AutoencoderKLConfig, VaeParts};
use vdm::schedulers::from_config_json;

use super::{
    CFG_SCALE, CFG_STEPS, CLIP_L, Case, DDIM, FREENOISE, Kind, MOTION_ADAPTER, MOTION_UNET2D,
    Measured, UNET3D_BENCH, VAE_BENCH, prompt_ids,
};
use crate::measure::rss_mib;

/// Waits for a result by reading one of its values back to the host (every backend then has
/// finished the work that produced it).
fn finish<const D: usize>(t: Tensor<D>) -> Result<()> {
    read_f32_scalar(
        t.flatten::<1>(0, D - 1).slice(0..1),
        "one value of the result",
    )?;
    Ok(())
}

/// Runs `run` `warmup` times untimed, then `repeats` times timed.
fn time(case: &Case, mut run: impl FnMut() -> Result<()>) -> Result<Measured> {
    for _ in 0..case.warmup {
        run()?;
    }
    let mut times = Vec::with_capacity(case.repeats);
    for _ in 0..case.repeats {
        let t0 = Instant::now();
        run()?;
        times.push(t0.elapsed().as_secs_f64());
    }
    Ok(Measured {
        times,
        gflop: None,
        peak_rss_mib: rss_mib().0,
    })
}

/// The motion model of the motion cases ([`MOTION_UNET2D`] merged with [`MOTION_ADAPTER`]).
///
/// # Errors
/// A config the model rejects (none of the built-in ones).
pub fn motion_config() -> Result<UNetMotionConfig> {
    UNetMotionConfig::from_unet2d(
        &UNet2DConditionConfig::from_json_str(MOTION_UNET2D)?,
        &MotionAdapterConfig::from_json_str(MOTION_ADAPTER)?,
    )
}

/// Runs `case` with vdm on `device`.
///
/// # Errors
/// The errors of the models and samplers it runs.
pub fn run(case: &Case, device: &Device) -> Result<Measured> {
    let mut noise = SeededNoise::new(7100);
    match &case.kind {
        Kind::UNet3D {
            config,
            frames,
            size,
            text_len,
        } => {
            let config = UNet3DConditionModelConfig::from_json_str(config)?;
            let dim = config.cross_attention_dim;
            let model = UNet3DConditionModel::new(&config, device)?;
            let x: Tensor<5> = draw(&mut noise, [1, 4, *frames, *size, *size], device)?;
            let text = Conditioning::Shared(draw(&mut noise, [1, *text_len, dim], device)?);
            let t = Timesteps::Shared(500.0);
            time(case, || {
                finish(model.forward(x.clone(), &t, &text, &AllFrames)?)?;
                Ok(())
            })
        }
        Kind::Motion { frames, freenoise } => {
            let model = UNetMotionModel::new(&motion_config()?, device)?;
            let hook = FreeNoiseHook::new(FreeNoiseConfig::new(FREENOISE.0, FREENOISE.1))?;
            let x: Tensor<5> = draw(&mut noise, [1, 4, *frames, 32, 32], device)?;
            let text: Tensor<3> = draw(&mut noise, [1, 77, 128], device)?;
            time(case, || {
                let input = DenoiserInput::new(
                    x.clone(),
                    Timesteps::Shared(500.0),
                    Conditioning::Shared(text.clone()),
                );
                let input = if *freenoise {
                    input.with_temporal(&hook)
                } else {
                    input.with_temporal(&AllFrames)
                };
                finish(model.forward(input)?)?;
                Ok(())
            })
        }
        Kind::FreeInit { shape } => {
            let [_, _, f, h, w] = *shape;
            let filter = LowPassFilter::default();
            let x: Tensor<5> = draw(&mut noise, *shape, device)?;
            let fresh: Tensor<5> = draw(&mut noise, *shape, device)?;
            time(case, || {
                let mask = filter.mask(f, h, w)?;
                finish(apply_frequency_filter(x.clone(), fresh.clone(), &mask)?)?;
                Ok(())
            })
        }
        Kind::Scheduler { steps, shape } => {
            let init: Tensor<5> = draw(&mut noise, *shape, device)?;
            let eps: Tensor<5> = draw(&mut noise, *shape, device)?;
            // Built once, its timesteps set per run: as the PyTorch side.
            let mut s = from_config_json(DDIM)?;
            time(case, || {
                s.set_timesteps(*steps)?;
                let mut x = init.clone();
                let mut step_noise = SeededNoise::new(0);
                for t in s.timesteps().to_vec() {
                    x = s.step(eps.clone(), t, x, &mut step_noise)?.prev_sample;
                }
                finish(x)?;
                Ok(())
            })
        }
        Kind::VaeDecode { frames } => {
            let config = AutoencoderKLConfig::from_json_str(VAE_BENCH)?;
            let vae = AutoencoderKL::new(config, VaeParts::DecoderOnly, device)?;
            let z: Tensor<5> = draw(&mut noise, [1, 4, *frames, 32, 32], device)?;
            time(case, || {
                finish(vae.decode_video(z.clone(), true)?)?;
                Ok(())
            })
        }
        Kind::TextEncoder => {
            let encoder = CLIPTextModel::new(&CLIPTextConfig::from_json_str(CLIP_L)?, device)?;
            let ids = prompt_ids();
            let n = ids.len();
            let ids = Tensor::<2, Int>::from_data(TensorData::new(ids, [1, n]), device);
            time(case, || {
                finish(encoder.forward(ids.clone())?.last_hidden_state)?;
                Ok(())
            })
        }
        Kind::CfgStep { frames } => {
            let config = UNet3DConditionModelConfig::from_json_str(UNET3D_BENCH)?;
            let model = UNet3DConditionModel::new(&config, device)?;
            let text: Tensor<3> = draw(&mut noise, [1, 77, 256], device)?;
            let negative: Tensor<3> = draw(&mut noise, [1, 77, 256], device)?;
            // Built once (the scheduler too; `sample` sets its timesteps): as the PyTorch side.
            let mut sampler =
                LongVideoSampler::new(&model, from_config_json(DDIM)?).with_guidance(Guidance {
                    scale: CFG_SCALE,
                    negative: Conditioning::Shared(negative),
                });
            time(case, || {
                let video = sampler.sample(
                    VideoShape::new([1, 4, *frames, 32, 32]),
                    Conditioning::Shared(text.clone()),
                    CFG_STEPS,
                    &mut SeededNoise::new(7100),
                    device,
                    &mut |_| Control::Continue,
                )?;
                finish(video)?;
                Ok(())
            })
        }
        Kind::Gemm { n } => {
            let a: Tensor<2> = draw(&mut noise, [*n, *n], device)?;
            let b: Tensor<2> = draw(&mut noise, [*n, *n], device)?;
            time(case, || {
                finish(a.clone().matmul(b.clone()))?;
                Ok(())
            })
        }
    }
}
