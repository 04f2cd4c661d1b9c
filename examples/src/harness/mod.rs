//! The benchmark harness of `examples/bench.rs`: one list of cases that both sides run, vdm
//! in a child process of the harness and diffusers / PyTorch in `bench/pytorch_side.py`, each
//! case in a fresh process per side and round so that peak memory is per case.
//!
//! The configs live here once: the vdm side builds its models from the same diffusers config
//! JSON the PyTorch side receives in the case it is sent.

use serde_json::{Value, json};

pub mod machine;
pub mod process;
pub mod report;
pub mod vdm_side;

/// `UNET3D_BENCH` of `shared/bench/BASELINE.md`: 57.99 M parameters.
pub const UNET3D_BENCH: &str = r#"{
    "sample_size": 32, "in_channels": 4, "out_channels": 4,
    "down_block_types": ["CrossAttnDownBlock3D", "CrossAttnDownBlock3D", "CrossAttnDownBlock3D", "DownBlock3D"],
    "up_block_types": ["UpBlock3D", "CrossAttnUpBlock3D", "CrossAttnUpBlock3D", "CrossAttnUpBlock3D"],
    "block_out_channels": [64, 128, 256, 256], "layers_per_block": 2, "cross_attention_dim": 256,
    "attention_head_dim": 32, "norm_num_groups": 32
}"#;

/// The parity-test UNet3D (`UNET3D_CFG` of the oracle generator).
pub const UNET3D_TINY: &str = r#"{
    "sample_size": 16, "in_channels": 4, "out_channels": 4,
    "down_block_types": ["CrossAttnDownBlock3D", "DownBlock3D"],
    "up_block_types": ["UpBlock3D", "CrossAttnUpBlock3D"],
    "block_out_channels": [32, 64], "layers_per_block": 1, "cross_attention_dim": 32,
    "attention_head_dim": 8, "norm_num_groups": 8
}"#;

/// `MOTION_U2` of `shared/bench/BASELINE.md`: SD 1.5's UNet layout with channels / 10.
pub const MOTION_UNET2D: &str = r#"{
    "sample_size": 32, "in_channels": 4, "out_channels": 4,
    "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
    "block_out_channels": [32, 64, 128, 128], "layers_per_block": 2, "cross_attention_dim": 128,
    "attention_head_dim": 8, "norm_num_groups": 32
}"#;

/// `MOTION_MA` of `shared/bench/BASELINE.md`: motion modules with 32-row positional tables.
pub const MOTION_ADAPTER: &str = r#"{
    "block_out_channels": [32, 64, 128, 128], "motion_layers_per_block": 2,
    "motion_mid_block_layers_per_block": 1, "motion_num_attention_heads": 8,
    "motion_norm_num_groups": 32, "motion_max_seq_length": 32, "use_motion_mid_block": true
}"#;

/// SD 1.x's VAE layout with a quarter of its channels (32 to 128), 256-pixel frames.
pub const VAE_BENCH: &str = r#"{
    "in_channels": 3, "out_channels": 3, "latent_channels": 4, "sample_size": 256,
    "down_block_types": ["DownEncoderBlock2D", "DownEncoderBlock2D", "DownEncoderBlock2D", "DownEncoderBlock2D"],
    "up_block_types": ["UpDecoderBlock2D", "UpDecoderBlock2D", "UpDecoderBlock2D", "UpDecoderBlock2D"],
    "block_out_channels": [32, 64, 128, 128], "layers_per_block": 2, "norm_num_groups": 32
}"#;

/// SD 1.x's text encoder (CLIP ViT-L/14's text tower: 12 layers of width 768, 123 M
/// parameters).
pub const CLIP_L: &str = r#"{
    "vocab_size": 49408, "hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12,
    "num_attention_heads": 12, "max_position_embeddings": 77, "hidden_act": "quick_gelu",
    "layer_norm_eps": 1e-5, "pad_token_id": 1, "bos_token_id": 49406, "eos_token_id": 49407
}"#;

/// The DDIM config of AnimateDiff's and ModelScope's pipelines (linear 0.00085 → 0.012).
pub const DDIM: &str = r#"{
    "_class_name": "DDIMScheduler", "num_train_timesteps": 1000, "beta_start": 0.00085,
    "beta_end": 0.012, "beta_schedule": "linear", "clip_sample": false, "set_alpha_to_one": false,
    "steps_offset": 1, "timestep_spacing": "linspace", "prediction_type": "epsilon"
}"#;

/// FreeNoise as both sides run it: windows of 16 every 4, pyramid weights.
pub const FREENOISE: (usize, usize) = (16, 4);

/// What one case runs.
#[derive(Debug, Clone, PartialEq)]
pub enum Kind {
    /// One `UNet3DConditionModel` forward on `[1, 4, frames, size, size]`, text `[1, text_len, D]`.
    UNet3D {
        /// The diffusers config.
        config: &'static str,
        /// Frames.
        frames: usize,
        /// Latent height and width.
        size: usize,
        /// Text tokens.
        text_len: usize,
    },
    /// One `UNetMotionModel` (AnimateDiff) forward on `[1, 4, frames, 32, 32]`, directly or with
    /// FreeNoise windows in its motion modules.
    Motion {
        /// Frames.
        frames: usize,
        /// With FreeNoise ([`FREENOISE`]).
        freenoise: bool,
    },
    /// The work of one FreeInit re-initialisation: the Butterworth low-pass mask and one
    /// spectral mix of a `[1, 4, F, H, W]` latent.
    FreeInit {
        /// The latent's shape.
        shape: [usize; 5],
    },
    /// `set_timesteps(steps)` and `steps` DDIM steps with a fixed model output.
    Scheduler {
        /// Steps.
        steps: usize,
        /// The latent's shape.
        shape: [usize; 5],
    },
    /// VAE decode of every frame of `[1, 4, frames, 32, 32]` latents at once ([`VAE_BENCH`]).
    VaeDecode {
        /// Frames.
        frames: usize,
    },
    /// The text encoder ([`CLIP_L`]) on one 77-token prompt.
    TextEncoder,
    /// One denoising step of a text-to-video pipeline with classifier-free guidance: the bench
    /// UNet3D on the conditional and unconditional halves, the guidance mix, a DDIM step.
    CfgStep {
        /// Frames.
        frames: usize,
    },
    /// An `n × n` by `n × n` fp32 matrix product: the practical matmul rate of each side.
    Gemm {
        /// The side of the matrices.
        n: usize,
    },
}

/// One benchmark case.
#[derive(Debug, Clone, PartialEq)]
pub struct Case {
    /// Its name in the table and in `--cases`.
    pub name: String,
    /// What it runs.
    pub kind: Kind,
    /// Untimed runs before the timed ones (per process).
    pub warmup: usize,
    /// Timed runs (per process); the table shows their median.
    pub repeats: usize,
}

impl Case {
    fn new(name: impl Into<String>, kind: Kind, warmup: usize, repeats: usize) -> Self {
        Self {
            name: name.into(),
            kind,
            warmup,
            repeats,
        }
    }

    /// The case as the PyTorch side reads it (`bench/pytorch_side.py`), with its thread count.
    pub fn python_json(&self, threads: usize) -> Value {
        let parse =
            |s: &str| -> Value { serde_json::from_str(s).expect("a valid built-in config") };
        let mut case = match &self.kind {
            Kind::UNet3D {
                config,
                frames,
                size,
                text_len,
            } => {
                let cfg = parse(config);
                let dim = cfg["cross_attention_dim"].clone();
                json!({"kind": "unet3d", "config": cfg, "sample": [1, 4, frames, size, size],
                       "text": [1, text_len, dim]})
            }
            Kind::Motion { frames, freenoise } => {
                let fnoise = freenoise.then(|| {
                    json!({"context_length": FREENOISE.0, "context_stride": FREENOISE.1,
                           "weighting_scheme": "pyramid"})
                });
                json!({"kind": "motion", "unet2d": parse(MOTION_UNET2D),
                       "motion_adapter": parse(MOTION_ADAPTER), "sample": [1, 4, frames, 32, 32],
                       "text": [1, 77, 128], "freenoise": fnoise})
            }
            Kind::FreeInit { shape } => json!({"kind": "freeinit", "shape": shape}),
            Kind::Scheduler { steps, shape } => {
                let mut cfg = parse(DDIM);
                cfg.as_object_mut()
                    .expect("an object")
                    .remove("_class_name");
                json!({"kind": "sched", "config": cfg, "steps": steps, "shape": shape})
            }
            Kind::VaeDecode { frames } => {
                json!({"kind": "vae_decode", "config": parse(VAE_BENCH),
                       "latents": [frames, 4, 32, 32]})
            }
            Kind::TextEncoder => json!({"kind": "text_encoder", "config": parse(CLIP_L),
                                        "ids": prompt_ids()}),
            Kind::CfgStep { frames } => {
                let mut sched = parse(DDIM);
                sched
                    .as_object_mut()
                    .expect("an object")
                    .remove("_class_name");
                json!({"kind": "cfg_step", "config": parse(UNET3D_BENCH), "scheduler": sched,
                       "steps": CFG_STEPS, "sample": [1, 4, frames, 32, 32], "text": [1, 77, 256],
                       "guidance_scale": CFG_SCALE})
            }
            Kind::Gemm { n } => json!({"kind": "gemm", "n": n}),
        };
        let obj = case.as_object_mut().expect("an object");
        obj.insert("warmup".into(), self.warmup.into());
        obj.insert("repeats".into(), self.repeats.into());
        obj.insert("threads".into(), threads.into());
        case
    }
}

/// Inference steps the CFG-step case sets on its scheduler (it times the first step).
pub const CFG_STEPS: usize = 1;

/// Guidance scale of the CFG-step case (ModelScope's pipeline default).
pub const CFG_SCALE: f64 = 9.0;

/// The token ids of the text-encoder case: start, 20 word ids, end, then padding to 77 with the
/// end token (what `CLIPTokenizer` gives SD 1.x's pipelines).
pub fn prompt_ids() -> Vec<i64> {
    let mut ids = vec![49406];
    ids.extend((0..20).map(|i| 320 + 37 * i));
    ids.resize(77, 49407);
    ids
}

/// Every case, in table order: the models at the sizes of the issue (UNet3D tiny at F = 8, 16,
/// 32, 64 and bench at F = 16, 32, 64; the motion model direct at 16 and with FreeNoise from 16
/// to 128 frames), FreeInit, a 50-step scheduler loop, VAE decode, the text encoder, one CFG
/// step, and the matmul rate.
pub fn cases() -> Vec<Case> {
    let mut c = Vec::new();
    // Tiny at 8 frames too: the case of earlier tables (and of the harness's own test).
    for frames in [8, 16, 32, 64] {
        c.push(Case::new(
            format!("unet3d tiny F{frames}"),
            Kind::UNet3D {
                config: UNET3D_TINY,
                frames,
                size: 16,
                text_len: 7,
            },
            3,
            20,
        ));
    }
    for frames in [16, 32, 64] {
        c.push(Case::new(
            format!("unet3d bench F{frames}"),
            Kind::UNet3D {
                config: UNET3D_BENCH,
                frames,
                size: 32,
                text_len: 77,
            },
            1,
            3,
        ));
    }
    c.push(Case::new(
        "motion direct F16",
        Kind::Motion {
            frames: 16,
            freenoise: false,
        },
        1,
        3,
    ));
    for frames in [16, 32, 64, 128] {
        c.push(Case::new(
            format!("motion freenoise F{frames}"),
            Kind::Motion {
                frames,
                freenoise: true,
            },
            1,
            3,
        ));
    }
    c.push(Case::new(
        "freeinit 16x64x64",
        Kind::FreeInit {
            shape: [1, 4, 16, 64, 64],
        },
        1,
        5,
    ));
    c.push(Case::new(
        "ddim 50 steps",
        Kind::Scheduler {
            steps: 50,
            shape: [1, 4, 16, 64, 64],
        },
        1,
        5,
    ));
    c.push(Case::new(
        "vae decode F8",
        Kind::VaeDecode { frames: 8 },
        1,
        3,
    ));
    c.push(Case::new("text encoder", Kind::TextEncoder, 2, 10));
    c.push(Case::new(
        "cfg step F16",
        Kind::CfgStep { frames: 16 },
        1,
        3,
    ));
    c.push(Case::new("gemm 1024", Kind::Gemm { n: 1024 }, 2, 10));
    c
}

/// What one side measured for one case in one process.
#[derive(Debug, Clone, PartialEq)]
pub struct Measured {
    /// Wall seconds of the timed runs.
    pub times: Vec<f64>,
    /// The work of one run in GFLOP as torch's `FlopCounterMode` counts it (PyTorch side only).
    pub gflop: Option<f64>,
    /// Peak resident memory of the process, MiB.
    pub peak_rss_mib: f64,
}

impl Measured {
    /// Reads the `RESULT {json}` line a side prints.
    ///
    /// # Errors
    /// No such line, or its JSON lacks `times` / `peak_rss_mib`.
    pub fn from_output(stdout: &str) -> Result<Self, String> {
        let line = stdout
            .lines()
            .rev()
            .find_map(|l| l.strip_prefix("RESULT "))
            .ok_or("no RESULT line")?;
        let v: Value = serde_json::from_str(line).map_err(|e| format!("RESULT: {e}"))?;
        let times: Vec<f64> = v["times"]
            .as_array()
            .ok_or("RESULT without times")?
            .iter()
            .filter_map(Value::as_f64)
            .collect();
        if times.is_empty() {
            return Err("RESULT with no times".into());
        }
        Ok(Self {
            times,
            gflop: v["gflop"].as_f64(),
            peak_rss_mib: v["peak_rss_mib"]
                .as_f64()
                .ok_or("RESULT without peak_rss_mib")?,
        })
    }

    /// The `RESULT {json}` line of this measurement.
    pub fn to_output(&self) -> String {
        format!(
            "RESULT {}",
            json!({"times": self.times, "gflop": self.gflop, "peak_rss_mib": self.peak_rss_mib})
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn case_names_are_unique_and_every_config_parses() {
        let cases = cases();
        for (i, c) in cases.iter().enumerate() {
            assert!(
                cases[..i].iter().all(|d| d.name != c.name),
                "{} twice",
                c.name
            );
            let v = c.python_json(2);
            assert_eq!(v["threads"], 2);
            assert!(v["kind"].is_string());
        }
        assert_eq!(prompt_ids().len(), 77);
    }

    #[test]
    fn results_round_trip_and_bad_output_is_an_error() {
        let m = Measured {
            times: vec![1.5, 1.25],
            gflop: Some(255.9),
            peak_rss_mib: 402.0,
        };
        let text = format!("warming up\n{}\n", m.to_output());
        assert_eq!(Measured::from_output(&text).unwrap(), m);
        assert!(Measured::from_output("Traceback ...").is_err());
        assert!(Measured::from_output("RESULT {\"times\": []}").is_err());
    }
}
