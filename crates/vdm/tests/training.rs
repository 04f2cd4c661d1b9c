//! The training loop on tiny models: checkpoints resume bit for bit (weights, EMA, optimiser
//! state, data order), temporal-only training leaves the spatial layers untouched, joint image
//! steps run on single frames, the global gradient norm is clipped, the EMA follows its
//! formula, and an exported folder loads in the pipeline with the trained weights.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use burn::module::{Module, ModuleVisitor, Param};
use burn::nn::{Linear, LinearConfig};
use burn::optim::GradientsParams;
use burn::tensor::{Device, FloatDType, Tensor, TensorData};
use vdm::core::{NoiseSource, SeededNoise};
use vdm::models::clip::{CLIPTextModel, CLIPTokenizer, PromptEncoder};
use vdm::models::loading::LoadOptions;
use vdm::models::patchify::PatchifyConfig;
use vdm::models::unet3d::{UNet3DConditionModel, UNet3DConditionModelConfig};
use vdm::pipeline::{Generation, TextToVideoPipeline};
use vdm::schedulers::options::BetaSchedule;
use vdm::schedulers::schedule::{BetaConfig, NoiseSchedule};
use vdm::training::export::PipelineExport;
use vdm::training::params::{clip_grad_norm, ema_update, parameters};
use vdm::training::{TrainConfig, Trainer, TrainingData};

fn dev() -> Device {
    Device::flex()
}

/// `fixtures/pipelines/text_to_video_sd/<part>`; panics (never skips) if missing.
fn fixture(part: &str) -> PathBuf {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../fixtures/pipelines/text_to_video_sd")
        .join(part);
    assert!(path.exists(), "missing fixture {}", path.display());
    path
}

fn prompts() -> PromptEncoder {
    let tokenizer = CLIPTokenizer::from_dir(fixture("tokenizer")).unwrap();
    let text = CLIPTextModel::from_pretrained(fixture("text_encoder"), &LoadOptions::new(), &dev())
        .unwrap();
    PromptEncoder::new(tokenizer, text).unwrap()
}

/// A tiny UNet3D with `channels` latent channels (cross-attention width 32, as the fixture's
/// text encoder).
fn unet(channels: usize) -> UNet3DConditionModel {
    let config = UNet3DConditionModelConfig::from_json_str(&format!(
        r#"{{"in_channels": {channels}, "out_channels": {channels}, "sample_size": 4,
        "block_out_channels": [16, 32], "layers_per_block": 1,
        "down_block_types": ["CrossAttnDownBlock3D", "DownBlock3D"],
        "up_block_types": ["UpBlock3D", "CrossAttnUpBlock3D"],
        "attention_head_dim": 8, "cross_attention_dim": 32, "norm_num_groups": 8}}"#
    ))
    .unwrap();
    UNet3DConditionModel::new(&config, &dev()).unwrap()
}

/// The schedule the trainer's objective runs on (v-prediction with min-SNR-5: the config
/// defaults).
fn schedule() -> NoiseSchedule {
    let beta = BetaConfig {
        beta_schedule: BetaSchedule::SquaredcosCapV2,
        ..BetaConfig::default()
    };
    NoiseSchedule::new(&beta).unwrap()
}

/// Random latents and captions, drawn from the trainer's per-step generator.
struct RandomLatents {
    channels: usize,
}

impl TrainingData for RandomLatents {
    fn sample(
        &self,
        rng: &mut SeededNoise,
        count: usize,
        frames: usize,
        device: &Device,
    ) -> vdm::Result<(Tensor<5>, Vec<String>)> {
        let data = rng.normal(&[count, self.channels, frames, 4, 4])?;
        let captions = (0..count)
            .map(|_| {
                if rng.uniform() < 0.5 {
                    "a red circle moving right".to_string()
                } else {
                    "a blue square moving up".to_string()
                }
            })
            .collect();
        Ok((Tensor::from_data(data, device), captions))
    }
}

fn config(steps: usize) -> TrainConfig {
    TrainConfig {
        steps,
        batch_size: 2,
        frames: 3,
        warmup_steps: 1,
        ema_decay: Some(0.9),
        cfg_dropout: 0.3,
        seed: 11,
        ..TrainConfig::default()
    }
}

/// Every parameter's values by path.
fn weights<M: Module>(module: &M) -> HashMap<String, Vec<f32>> {
    #[derive(Default)]
    struct Collect {
        path: Vec<String>,
        values: HashMap<String, Vec<f32>>,
    }
    impl ModuleVisitor for Collect {
        fn enter_module(&mut self, name: &str, _: &str) {
            self.path.push(name.to_string());
        }
        fn exit_module(&mut self, _: &str, _: &str) {
            self.path.pop();
        }
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            let values = param.val().into_data().try_to_vec::<f32>().unwrap();
            self.values.insert(self.path.join("."), values);
        }
    }
    let mut collect = Collect::default();
    module.visit(&mut collect);
    collect.values
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("vdm-training-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn a_resumed_run_equals_an_uninterrupted_one_bit_for_bit() {
    let data = RandomLatents { channels: 4 };
    let model = unet(4);
    let mut straight =
        Trainer::new(model.clone(), prompts(), schedule(), config(3), &dev()).unwrap();
    let mut losses = Vec::new();
    for _ in 0..3 {
        losses.push(straight.step(&data).unwrap().loss);
    }

    let dir = temp_dir("resume");
    let mut first = Trainer::new(model.clone(), prompts(), schedule(), config(3), &dev()).unwrap();
    let report = first.step(&data).unwrap();
    assert_eq!(report.loss, losses[0]);
    first.save_checkpoint(&dir).unwrap();
    drop(first);
    let mut resumed = Trainer::resume(unet(4), prompts(), schedule(), &dir, &dev()).unwrap();
    assert_eq!(resumed.steps_done(), 1);
    assert_eq!(resumed.config(), &config(3));
    for want in &losses[1..] {
        assert_eq!(resumed.step(&data).unwrap().loss, *want);
    }
    let (a, b) = (
        weights(&straight.current_model()),
        weights(&resumed.current_model()),
    );
    assert_eq!(a.len(), b.len());
    for (path, values) in &a {
        assert!(values == &b[path], "{path} differs after resuming");
    }
    let (a, b) = (
        weights(&straight.inference_model()),
        weights(&resumed.inference_model()),
    );
    for (path, values) in &a {
        assert!(values == &b[path], "EMA {path} differs after resuming");
    }
    // The weights moved at all, and the EMA moved with them: with decay 0.9 over 3 steps it
    // lies 27.1% of the way from the initial weights to... a mix of the three updates; at
    // least it is neither the initial weights nor the current ones.
    let init = weights(&model);
    let current = weights(&straight.current_model());
    assert!(init.iter().any(|(p, v)| v != &current[p]));
    let moved = init.iter().filter(|(p, v)| *v != &a[p.as_str()]).count();
    assert!(
        moved > init.len() / 2,
        "the EMA moved {moved} of {} tensors",
        init.len()
    );
    assert!(current.iter().any(|(p, v)| v != &a[p]));
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn resuming_from_a_missing_checkpoint_names_the_file() {
    let dir = temp_dir("missing");
    let err = Trainer::resume(unet(4), prompts(), schedule(), &dir, &dev()).unwrap_err();
    assert!(err.to_string().contains("state.json"), "{err}");
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn temporal_only_training_leaves_the_spatial_layers_untouched() {
    let data = RandomLatents { channels: 4 };
    let model = unet(4);
    let config = TrainConfig {
        temporal_only: true,
        ema_decay: None,
        ..config(2)
    };
    let mut trainer =
        Trainer::new(model.clone(), prompts(), schedule(), config.clone(), &dev()).unwrap();
    trainer.step(&data).unwrap();
    trainer.step(&data).unwrap();
    let (before, after) = (weights(&model), weights(&trainer.current_model()));
    let temporal = |path: &str| {
        config
            .temporal_patterns
            .iter()
            .any(|p| path.contains(p.as_str()))
    };
    let mut changed_temporal = 0;
    for (path, values) in &before {
        if temporal(path) {
            changed_temporal += usize::from(values != &after[path]);
        } else {
            assert!(values == &after[path], "spatial {path} changed");
        }
    }
    assert!(
        changed_temporal > 10,
        "only {changed_temporal} temporal tensors changed"
    );
}

#[test]
fn image_steps_train_on_single_frames() {
    let data = RandomLatents { channels: 4 };
    let config = TrainConfig {
        image_step_every: Some(2),
        image_batch_size: 3,
        ..config(4)
    };
    let mut trainer = Trainer::new(unet(4), prompts(), schedule(), config, &dev()).unwrap();
    let flags: Vec<bool> = (0..4)
        .map(|_| trainer.step(&data).unwrap().image_step)
        .collect();
    assert_eq!(flags, [false, true, false, true]);
}

#[test]
fn gradients_are_clipped_to_the_global_norm() {
    let device = dev().autodiff();
    let layer: Linear = LinearConfig::new(3, 2).init(&device).train();
    let x = Tensor::<2>::from_data(TensorData::new(vec![1.0f32, 2.0, 3.0], [1, 3]), &device);
    let loss = layer.forward(x).powi_scalar(2).sum().mul_scalar(100.0);
    let mut grads = GradientsParams::from_grads(loss.backward(), &layer);
    let norm = clip_grad_norm(&layer, &mut grads, Some(0.5)).unwrap();
    assert!(norm > 0.5);
    let after = clip_grad_norm(&layer, &mut grads, None).unwrap();
    assert!((after - 0.5).abs() < 1e-4, "{after}");
}

#[test]
fn the_ema_moves_each_weight_towards_the_model() {
    let device = dev();
    let model: Linear = LinearConfig::new(2, 2).init(&device);
    let ema = model.clone().map(&mut Zero);
    let ema = ema_update(ema, &model, 0.75);
    let (m, e) = (weights(&model), weights(&ema));
    for (path, values) in &m {
        for (a, b) in values.iter().zip(&e[path]) {
            assert!((b - 0.25 * a).abs() < 1e-7, "{path}");
        }
    }
    assert_eq!(parameters(&model).len(), 2);

    struct Zero;
    impl burn::module::ModuleMapper for Zero {
        fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
            param.map(|t| t.zeros_like())
        }
    }
}

#[test]
fn an_exported_folder_loads_in_the_pipeline_with_the_trained_weights() {
    let dir = temp_dir("export");
    let patchify = PatchifyConfig {
        patch_size: 2,
        ..PatchifyConfig::default()
    };
    let model = unet(patchify.latent_channels());
    let prompts = prompts();
    let scheduler = r#"{"_class_name": "DDIMScheduler", "beta_schedule": "squaredcos_cap_v2",
        "prediction_type": "v_prediction", "timestep_spacing": "trailing", "clip_sample": false}"#;
    let tokenizer_src = fixture("tokenizer");
    PipelineExport {
        unet: &model,
        text_encoder: &prompts.text_encoder,
        patchify,
        unet_dtype: FloatDType::F32,
        scheduler_config: scheduler,
        write_tokenizer: &|to: &Path| {
            for name in ["tokenizer.json", "tokenizer_config.json"] {
                std::fs::copy(tokenizer_src.join(name), to.join(name)).unwrap();
            }
            Ok(())
        },
    }
    .write(&dir)
    .unwrap();
    let pipe = TextToVideoPipeline::from_dir(&dir, &dev()).unwrap();
    assert_eq!(pipe.vae_scale_factor(), 2);
    let vdm::pipeline::VideoUNet::UNet3D(loaded) = &pipe.unet else {
        panic!("a UNet3D pipeline");
    };
    let (a, b) = (weights(&model), weights(loaded));
    for (path, values) in &a {
        assert!(values == &b[path], "{path}");
    }
    let video = pipe
        .generate(
            &Generation::new("a red circle moving right")
                .frames(2)
                .steps(2)
                .seed(1),
        )
        .unwrap();
    assert_eq!(video.frames.dims(), [2, 3, 8, 8]);
    std::fs::remove_dir_all(dir).unwrap();
}
