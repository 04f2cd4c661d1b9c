//! End-to-end parity with diffusers 0.42.1: the tiny `TextToVideoSDPipeline` and
//! `AnimateDiffPipeline` folders of `fixtures/pipelines` (written by diffusers'
//! `save_pretrained` in `fixtures/pipelines/gen_pipelines.py`) are loaded unchanged, and the
//! frames of a 3-step DDIM run with guidance 7.5 and a negative prompt, from diffusers' own
//! initial latents, must equal diffusers' frames.
//!
//! Tolerances (fp32 against fp32): prompt embeddings 1e-5 abs; latents after each step
//! 2e-5 × their largest magnitude (they reach ~42 with these random weights); frames 2e-4 abs.

use std::path::PathBuf;

use burn::tensor::{Device, Tensor, TensorData};
use vdm::Error;
use vdm::core::noise::NoiseBank;
use vdm::longvideo::sampler::Control;
use vdm::models::clip::PromptOptions;
use vdm::pipeline::{
    Generation, PipelineClass, PipelineProgress, SchedulerChoice, TextToVideoPipeline,
};

const EMBED_TOLERANCE: f32 = 1e-5;
const LATENT_RELATIVE_TOLERANCE: f32 = 2e-5;
const FRAME_TOLERANCE: f32 = 2e-4;

fn dev() -> Device {
    Device::flex()
}

/// `fixtures/pipelines/<name>`; panics (never skips) if it is missing.
fn fixture(name: &str) -> PathBuf {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../fixtures/pipelines")
        .join(name);
    assert!(
        path.exists(),
        "missing pipeline fixture {} (regenerate with fixtures/pipelines/gen_pipelines.py)",
        path.display()
    );
    path
}

/// `(shape, values)` of one tensor of `expected.safetensors`.
fn expected(key: &str) -> (Vec<usize>, Vec<f32>) {
    let bytes = std::fs::read(fixture("expected.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let view = st.tensor(key).unwrap_or_else(|_| panic!("no tensor {key}"));
    let values = view
        .data()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    (view.shape().to_vec(), values)
}

fn values<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data().convert::<f32>().try_to_vec::<f32>().unwrap()
}

/// `(max |ours − theirs|, max |theirs|)`.
fn errors(ours: &[f32], theirs: &[f32]) -> (f32, f32) {
    assert_eq!(ours.len(), theirs.len());
    let err = ours
        .iter()
        .zip(theirs)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f32::max);
    (err, theirs.iter().map(|v| v.abs()).fold(0.0, f32::max))
}

fn settings() -> Generation {
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("expected.json")).unwrap()).unwrap();
    Generation::new(meta["prompt"].as_str().unwrap())
        .negative_prompt(meta["negative_prompt"].as_str().unwrap())
        .steps(meta["num_inference_steps"].as_u64().unwrap() as usize)
        .guidance_scale(meta["guidance_scale"].as_f64().unwrap())
        .frames(meta["num_frames"].as_u64().unwrap() as usize)
        .size(
            meta["height"].as_u64().unwrap() as usize,
            meta["width"].as_u64().unwrap() as usize,
        )
}

/// Loads `folder`, checks the prompt embeddings, runs the recorded latents through the
/// pipeline and compares every step's latents and the frames with diffusers'.
fn check_pipeline(folder: &std::path::Path, tag: &str, class: PipelineClass, settings: Generation) {
    let pipe = TextToVideoPipeline::from_dir(folder, &dev()).unwrap();
    assert_eq!(pipe.class, class);

    let (cond, uncond) = pipe
        .prompt_encoder
        .embed_pair(
            &settings.prompt,
            &settings.negative_prompt,
            PromptOptions::default(),
        )
        .unwrap();
    for (ours, key) in [(cond, "prompt_embeds"), (uncond, "negative_prompt_embeds")] {
        let (shape, theirs) = expected(&format!("{tag}.{key}"));
        assert_eq!(ours.dims().to_vec(), shape, "{key}");
        let (err, _) = errors(&values(ours), &theirs);
        assert!(err <= EMBED_TOLERANCE, "{tag}.{key}: {err:e}");
    }

    let (shape, initial) = expected(&format!("{tag}.latents"));
    let mut noise = NoiseBank::new();
    noise.push_tensor(TensorData::new(initial, shape));
    let mut steps: Vec<Vec<f32>> = Vec::new();
    let mut decoded = Vec::new();
    let video = pipe
        .generate_with(&settings, &mut noise, &mut |p| {
            match p {
                PipelineProgress::Denoise(p) => steps.push(values(p.latents.clone())),
                PipelineProgress::Decode { done, total } => decoded.push((done, total)),
            }
            Control::Continue
        })
        .unwrap();
    assert_eq!(
        noise.remaining(),
        0,
        "the pipeline must draw exactly the initial latents"
    );
    assert_eq!(steps.len(), settings.steps);
    for (i, ours) in steps.iter().enumerate() {
        let (_, theirs) = expected(&format!("{tag}.latents_step{i}"));
        let (err, scale) = errors(ours, &theirs);
        eprintln!("{tag} step {i}: max abs {err:e}, max |x| {scale}");
        assert!(
            err <= LATENT_RELATIVE_TOLERANCE * scale,
            "{tag} latents after step {i}: {err:e} > {LATENT_RELATIVE_TOLERANCE:e} × {scale}"
        );
    }
    let frames = settings.frames;
    assert_eq!(decoded.last(), Some(&(frames, frames)));

    let (shape, theirs) = expected(&format!("{tag}.frames")); // [1, F, 3, H, W]
    assert_eq!(video.frames.dims().to_vec(), shape[1..].to_vec());
    let (err, _) = errors(&values(video.frames.clone()), &theirs);
    eprintln!("{tag} frames: max abs {err:e}");
    assert!(
        err <= FRAME_TOLERANCE,
        "{tag} frames: {err:e} > {FRAME_TOLERANCE:e}"
    );
    let images = video.to_rgb_images().unwrap();
    assert_eq!(images.len(), frames);
}

#[test]
fn text_to_video_sd_folder_matches_diffusers() {
    check_pipeline(
        &fixture("text_to_video_sd"),
        "t2v",
        PipelineClass::TextToVideoSD,
        settings(),
    );
}

#[test]
fn animatediff_folder_matches_diffusers() {
    check_pipeline(
        &fixture("animatediff"),
        "animatediff",
        PipelineClass::AnimateDiff,
        settings().decode_chunk_size(3),
    );
}

#[test]
fn bad_settings_fail_before_any_model_work() {
    let pipe = TextToVideoPipeline::from_dir(fixture("text_to_video_sd"), &dev()).unwrap();
    // NoNoise-like: an empty bank fails if anything is drawn, so these errors come first.
    let cases: Vec<(Generation, &str)> = vec![
        (settings().frames(0), "frames"),
        (settings().steps(0), "steps"),
        (settings().guidance_scale(f64::NAN), "guidance_scale"),
        (settings().size(33, 32), "height"),
        (settings().size(32, 31), "width"),
        (settings().clip_skip(5), "clip_skip"),
        (
            settings().scheduler(SchedulerChoice::Class("PNDMScheduler".into())),
            "scheduler",
        ),
        (
            settings().scheduler(SchedulerChoice::Class("DDIMInverseScheduler".into())),
            "inversion",
        ),
        (settings().decode_chunk_size(0), "decode_chunk_size"),
    ];
    for (s, field) in cases {
        let err = pipe
            .generate_with(&s, &mut NoiseBank::new(), &mut |_| Control::Continue)
            .unwrap_err();
        assert!(err.to_string().contains(field), "{field}: {err}");
    }

    // AnimateDiff: more frames than the motion modules' positions needs FreeNoise.
    let anim = TextToVideoPipeline::from_dir(fixture("animatediff"), &dev()).unwrap();
    let err = anim
        .generate_with(&settings().frames(33), &mut NoiseBank::new(), &mut |_| {
            Control::Continue
        })
        .unwrap_err();
    assert!(err.to_string().contains("frames"), "{err}");

    // Cancelling from the progress callback.
    let err = pipe
        .generate_with(
            &settings().steps(2),
            &mut vdm::core::SeededNoise::new(0),
            &mut |_| Control::Cancel,
        )
        .unwrap_err();
    assert!(matches!(err, Error::Cancelled { .. }), "{err}");
}

#[test]
fn folder_errors_name_the_path() {
    let dir = std::env::temp_dir().join(format!("vdm-pipeline-test-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let err = TextToVideoPipeline::from_dir(&dir, &dev()).unwrap_err();
    assert!(err.to_string().contains("model_index.json"), "{err}");

    std::fs::write(
        dir.join("model_index.json"),
        r#"{"_class_name": "StableDiffusionPipeline"}"#,
    )
    .unwrap();
    let err = TextToVideoPipeline::from_dir(&dir, &dev()).unwrap_err();
    assert!(err.to_string().contains("StableDiffusionPipeline"), "{err}");

    std::fs::write(
        dir.join("model_index.json"),
        r#"{"_class_name": "TextToVideoSDPipeline", "scheduler": ["diffusers", "DDIMScheduler"]}"#,
    )
    .unwrap();
    let err = TextToVideoPipeline::from_dir(&dir, &dev()).unwrap_err();
    assert!(err.to_string().contains("scheduler"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn seeded_generation_is_reproducible_and_other_schedulers_run() {
    let pipe = TextToVideoPipeline::from_dir(fixture("text_to_video_sd"), &dev()).unwrap();
    let s = settings().steps(2).seed(11);
    let a = values(pipe.generate(&s).unwrap().frames);
    let b = values(pipe.generate(&s).unwrap().frames);
    assert_eq!(a, b);
    let c = values(pipe.generate(&s.clone().seed(12)).unwrap().frames);
    assert_ne!(a, c);
    let euler = s
        .clone()
        .scheduler(SchedulerChoice::Class("EulerDiscreteScheduler".into()));
    let video = pipe.generate(&euler).unwrap();
    assert_eq!(video.num_frames(), 4);
    assert!(values(video.frames).iter().all(|v| (0.0..=1.0).contains(v)));
    // "Euler a" draws its step noise from the seed too: the same seed, the same video.
    let euler_a = s.scheduler(SchedulerChoice::Class(
        "EulerAncestralDiscreteScheduler".into(),
    ));
    let a = values(pipe.generate(&euler_a).unwrap().frames);
    assert_eq!(a, values(pipe.generate(&euler_a).unwrap().frames));
    assert!(a.iter().all(|v| (0.0..=1.0).contains(v)));
}

/// No silent NaN: a guidance scale of 1e300 (finite, so accepted, but infinite in the f32 the
/// guided output is computed in) makes the model output non-finite at the first step, which
/// the pipeline names; with the checks off the same run returns (NaN) latents, and decoding
/// them is stopped at the VAE-decoded frames.
#[test]
fn a_non_finite_generation_is_named_not_returned() {
    let pipe = TextToVideoPipeline::from_dir(fixture("text_to_video_sd"), &dev()).unwrap();
    let s = settings().steps(2).seed(3).guidance_scale(1e300);
    let e = pipe.generate(&s).unwrap_err();
    assert!(matches!(e, Error::NonFinite { .. }), "{e}");
    assert!(
        e.to_string()
            .starts_with("non-finite value in the model output at step 0 of 2 (timestep "),
        "{e}"
    );
    let latents = pipe
        .sample_latents(
            &s.finite_checks(false),
            &mut vdm::core::SeededNoise::new(3),
            &mut |_| Control::Continue,
        )
        .unwrap();
    assert!(values(latents.clone()).iter().any(|v| !v.is_finite()));
    let e = pipe
        .decode(latents, None, &mut |_| Control::Continue)
        .unwrap_err();
    assert!(matches!(e, Error::NonFinite { .. }), "{e}");
    assert!(
        e.to_string()
            .starts_with("non-finite value in the VAE-decoded frames 0..4 of 4: "),
        "{e}"
    );
}

#[test]
fn long_video_methods_run_through_the_pipeline() {
    use vdm::longvideo::freeinit::{FreeInit, LowPassFilter};
    use vdm::longvideo::freenoise::FreeNoiseConfig;

    // AnimateDiff beyond its 32 positions with FreeNoise windows of 16 frames.
    let anim = TextToVideoPipeline::from_dir(fixture("animatediff"), &dev()).unwrap();
    let s = settings()
        .frames(40)
        .steps(1)
        .freenoise(FreeNoiseConfig::new(16, 4));
    let video = anim.generate(&s).unwrap();
    assert_eq!(video.num_frames(), 40);

    // Gen-L-Video co-denoising: 40 frames as windows of 16 every 8 (one model call per window
    // per step); not combinable with FreeNoise; windows past the motion modules' positions are
    // refused before any model work.
    use vdm::longvideo::co_denoising::CoDenoising;
    let co = settings()
        .frames(40)
        .steps(1)
        .co_denoising(CoDenoising::new(16, 8));
    let mut calls = 0;
    let video = anim
        .generate_with(&co, &mut vdm::core::SeededNoise::new(3), &mut |p| {
            calls += usize::from(matches!(p, PipelineProgress::Denoise(_)));
            Control::Continue
        })
        .unwrap();
    assert_eq!((video.num_frames(), calls), (40, 1));
    // Windows stacked two per model call: the same video (each batch item computed alone; the
    // larger products may round differently); none per call is refused before model work.
    let stacked = settings()
        .frames(40)
        .steps(1)
        .co_denoising(CoDenoising::new(16, 8).windows_per_call(2));
    let stacked = values(
        anim.generate_with(&stacked, &mut vdm::core::SeededNoise::new(3), &mut |_| {
            Control::Continue
        })
        .unwrap()
        .frames,
    );
    let single = values(video.frames.clone());
    let most = stacked
        .iter()
        .zip(&single)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    assert!(most < 1e-5, "windows per call 2 vs 1: {most}");
    let e = anim
        .generate(
            &settings()
                .frames(40)
                .co_denoising(CoDenoising::new(16, 8).windows_per_call(0)),
        )
        .unwrap_err();
    assert!(e.to_string().contains("windows_per_call"), "{e}");
    let e = anim
        .generate(&co.clone().freenoise(FreeNoiseConfig::new(16, 4)))
        .unwrap_err();
    assert!(e.to_string().contains("co_denoising"), "{e}");
    let e = anim
        .generate(
            &settings()
                .frames(40)
                .steps(1)
                .co_denoising(CoDenoising::new(40, 8)),
        )
        .unwrap_err();
    assert!(e.to_string().contains("window"), "{e}");

    // FIFO-Diffusion: 12 frames out of a queue of 8 levels (windows of 8, one partition,
    // lookahead: two model calls per frame), reported as the warm-up (pass 0, 8 levels) and the
    // frames (pass 1); not combinable with the others; windows past the positions refused.
    use vdm::longvideo::fifo::Fifo;
    let fifo = settings().frames(12).fifo(Fifo::new(8, 1));
    let mut passes = Vec::new();
    let video = anim
        .generate_with(&fifo, &mut vdm::core::SeededNoise::new(3), &mut |p| {
            if let PipelineProgress::Denoise(p) = p {
                passes.push((p.iteration, p.num_steps));
            }
            Control::Continue
        })
        .unwrap();
    assert_eq!(video.num_frames(), 12);
    let want: Vec<(usize, usize)> = [(0, 8); 8].into_iter().chain([(1, 12); 12]).collect();
    assert_eq!(passes, want);
    assert!(values(video.frames.clone()).iter().all(|v| v.is_finite()));
    // Its two windows per frame stacked into one model call: the same video (the larger
    // products may round differently).
    let stacked = settings()
        .frames(12)
        .fifo(Fifo::new(8, 1).windows_per_call(2));
    let stacked = values(
        anim.generate_with(&stacked, &mut vdm::core::SeededNoise::new(3), &mut |_| {
            Control::Continue
        })
        .unwrap()
        .frames,
    );
    let most = stacked
        .iter()
        .zip(&values(video.frames.clone()))
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    assert!(most < 1e-5, "FIFO windows per call 2 vs 1: {most}");
    // Frame by frame, as they leave the queue: the same video, one frame per piece.
    let mut pieces = Vec::new();
    let mut frames = Vec::new();
    anim.generate_frames(
        &fifo,
        &mut vdm::core::SeededNoise::new(3),
        &mut |_| Control::Continue,
        &mut |first, piece| {
            pieces.push((first, piece.num_frames()));
            frames.extend(values(piece.frames));
            Ok(())
        },
    )
    .unwrap();
    assert_eq!(pieces, (0..12).map(|i| (i, 1)).collect::<Vec<_>>());
    assert_eq!(frames, values(video.frames));
    let e = anim
        .generate(&fifo.clone().freenoise(FreeNoiseConfig::new(16, 4)))
        .unwrap_err();
    assert!(e.to_string().contains("fifo"), "{e}");
    let e = anim
        .generate(&settings().frames(40).fifo(Fifo::new(40, 1)))
        .unwrap_err();
    assert!(e.to_string().contains("window"), "{e}");

    // FreeInit: two sampling passes, reported as iterations.
    let pipe = TextToVideoPipeline::from_dir(fixture("text_to_video_sd"), &dev()).unwrap();
    let s = settings()
        .steps(2)
        .freeinit(FreeInit::new(LowPassFilter::default(), 2).unwrap());
    let mut passes = Vec::new();
    let video = pipe
        .generate_with(&s, &mut vdm::core::SeededNoise::new(3), &mut |p| {
            if let PipelineProgress::Denoise(p) = p {
                passes.push((p.iteration, p.iterations));
            }
            Control::Continue
        })
        .unwrap();
    assert_eq!(passes, vec![(0, 2), (0, 2), (1, 2), (1, 2)]);
    assert_eq!(video.num_frames(), 4);

    // Without FIFO, generate_frames hands over decode chunks of the same video.
    let chunked = settings().steps(2).decode_chunk_size(3);
    let whole = values(pipe.generate(&chunked).unwrap().frames);
    let mut pieces = Vec::new();
    let mut frames = Vec::new();
    pipe.generate_frames(
        &chunked,
        &mut vdm::core::SeededNoise::new(chunked.seed),
        &mut |_| Control::Continue,
        &mut |first, piece| {
            pieces.push((first, piece.num_frames()));
            frames.extend(values(piece.frames));
            Ok(())
        },
    )
    .unwrap();
    assert_eq!(pieces, vec![(0, 3), (3, 1)]);
    assert_eq!(frames, whole);

    // FreeLong: with local windows covering the video it is plain sampling; shorter windows
    // blend global and local attention (UNet3D here, the motion modules below); it does not
    // combine with FreeNoise.
    use vdm::longvideo::freelong::FreeLong;
    let plain = values(pipe.generate(&settings().steps(2)).unwrap().frames);
    let covering = settings().steps(2).freelong(FreeLong::new(16));
    assert_eq!(values(pipe.generate(&covering).unwrap().frames), plain);
    let blended = settings().steps(2).freelong(FreeLong::new(2));
    let blended = values(pipe.generate(&blended).unwrap().frames);
    assert!(blended.iter().all(|v| v.is_finite()));
    assert!(
        blended
            .iter()
            .zip(&plain)
            .any(|(a, b)| (a - b).abs() > 1e-6)
    );
    let e = pipe
        .generate(&covering.freenoise(FreeNoiseConfig::new(16, 4)))
        .unwrap_err();
    assert!(e.to_string().contains("freelong"), "{e}");
    let video = anim
        .generate(&settings().frames(12).steps(1).freelong(FreeLong::new(4)))
        .unwrap();
    assert_eq!(video.num_frames(), 12);

    // Text2Video-Zero: frame 0 alone, then every frame with cross-frame attention to it;
    // reported as two passes; not combinable; t1 checked against the steps.
    use vdm::longvideo::text2video_zero::Text2VideoZero;
    let zero = settings()
        .steps(5)
        .text2video_zero(Text2VideoZero::for_steps((1.0, 0.0), 5));
    let mut passes = Vec::new();
    let video = pipe
        .generate_with(&zero, &mut vdm::core::SeededNoise::new(3), &mut |p| {
            if let PipelineProgress::Denoise(p) = p {
                passes.push((p.iteration, p.step));
            }
            Control::Continue
        })
        .unwrap();
    assert_eq!(video.num_frames(), 4);
    assert!(values(video.frames).iter().all(|v| v.is_finite()));
    // 5 steps: t1 = 4, t0 = 3: frame 0 alone for step 0, then the video from step 0.
    assert_eq!(passes, vec![(0, 0), (1, 0), (1, 1), (1, 2), (1, 3), (1, 4)]);
    let e = pipe
        .generate(&zero.clone().freelong(FreeLong::new(2)))
        .unwrap_err();
    assert!(e.to_string().contains("text2video_zero"), "{e}");
    let e = pipe
        .generate(
            &settings()
                .steps(3)
                .text2video_zero(Text2VideoZero::new((1.0, 0.0))),
        )
        .unwrap_err();
    assert!(e.to_string().contains("t1"), "{e}");

    // Autoregressive extension: the first clip is direct sampling; the next window keeps its
    // last 2 frames and is guided through the UNet on the autodiff device.
    use vdm::longvideo::reconstruction::Extension;
    let first = values(
        pipe.generate(&settings().steps(2).frames(4))
            .unwrap()
            .frames,
    );
    let extended = settings()
        .steps(2)
        .frames(6)
        .extension(Extension::new(4, 2, 1.0));
    let video = pipe.generate(&extended).unwrap();
    assert_eq!(video.num_frames(), 6);
    let frames = values(video.frames);
    assert!(frames.iter().all(|v| v.is_finite()));
    for (a, b) in frames[..first.len()].iter().zip(&first) {
        assert!((a - b).abs() < 1e-5, "{a} vs {b}");
    }
    // Piece by piece: the first clip when it is sampled, then each window's new frames; a
    // run cancelled in the second window has handed over the first clip's frames.
    let streamed = |cancel_at: Option<usize>| {
        let (mut pieces, mut streamed, mut steps) = (Vec::new(), Vec::new(), 0);
        let outcome = pipe.generate_frames(
            &extended,
            &mut vdm::core::SeededNoise::new(extended.seed),
            &mut |p| {
                if let PipelineProgress::Denoise(_) = p {
                    steps += 1;
                    if Some(steps) == cancel_at {
                        return Control::Cancel;
                    }
                }
                Control::Continue
            },
            &mut |first, piece| {
                pieces.push((first, piece.num_frames()));
                streamed.extend(values(piece.frames));
                Ok(())
            },
        );
        (outcome, pieces, streamed)
    };
    let (outcome, pieces, streamed_frames) = streamed(None);
    outcome.unwrap();
    assert_eq!(pieces, vec![(0, 4), (4, 2)]);
    assert_eq!(streamed_frames.len(), frames.len());
    for (a, b) in streamed_frames.iter().zip(&frames) {
        // The same latents, decoded in two VAE calls instead of one.
        assert!((a - b).abs() < 1e-5, "{a} vs {b}");
    }
    let (outcome, pieces, kept) = streamed(Some(3));
    assert!(
        matches!(outcome, Err(vdm::core::Error::Cancelled { .. })),
        "{outcome:?}"
    );
    assert_eq!(pieces, vec![(0, 4)]);
    assert_eq!(kept, streamed_frames[..kept.len()]);
    let e = pipe
        .generate(&extended.clone().freelong(FreeLong::new(2)))
        .unwrap_err();
    assert!(e.to_string().contains("extension"), "{e}");
    let e = pipe
        .generate(&settings().extension(Extension::new(4, 4, 1.0)))
        .unwrap_err();
    assert!(e.to_string().contains("context"), "{e}");

    // Hierarchical keyframes (AnimateDiff: cross-frame attention in its spatial transformers)
    // and the interleaved-frame smoother (UNet3D, steps 0 and 1 of 2); neither combines with
    // loops of their own.
    use vdm::longvideo::keyframes::Keyframes;
    use vdm::longvideo::smoother::InterleavedSmoother;
    let keyed = settings().frames(12).steps(1).keyframes(Keyframes::new(4));
    let video = anim.generate(&keyed).unwrap();
    assert_eq!(video.num_frames(), 12);
    assert!(values(video.frames).iter().all(|v| v.is_finite()));
    let e = anim
        .generate(&keyed.freelong(FreeLong::new(4)))
        .unwrap_err();
    assert!(e.to_string().contains("keyframes"), "{e}");
    let smoothed = settings()
        .steps(2)
        .smoother(InterleavedSmoother::controlvideo(2));
    let smoothed_frames = values(pipe.generate(&smoothed).unwrap().frames);
    assert!(smoothed_frames.iter().all(|v| v.is_finite()));
    assert!(
        smoothed_frames
            .iter()
            .zip(&plain)
            .any(|(a, b)| (a - b).abs() > 1e-6)
    );
    let e = pipe.generate(&smoothed.fifo(Fifo::new(4, 1))).unwrap_err();
    assert!(e.to_string().contains("smoother"), "{e}");

    // Reuse and Diffuse: clips of 4 sharing 2 over 7 frames; the first clip is direct.
    use vdm::longvideo::reuse_diffuse::ReuseDiffuse;
    let reused = settings()
        .steps(2)
        .frames(7)
        .reuse_diffuse(ReuseDiffuse::new(4, 2));
    let frames = values(pipe.generate(&reused).unwrap().frames);
    assert_eq!(frames.len(), first.len() / 4 * 7);
    for (a, b) in frames[..first.len()].iter().zip(&first) {
        assert!((a - b).abs() < 1e-5, "{a} vs {b}");
    }
    let e = pipe
        .generate(&reused.smoother(InterleavedSmoother::controlvideo(2)))
        .unwrap_err();
    assert!(e.to_string().contains("reuse_diffuse"), "{e}");

    // FIFO-Diffusion on UNet3D (per-frame timesteps in its time embedding).
    let video = pipe
        .generate(&settings().frames(6).fifo(Fifo::new(4, 1)))
        .unwrap();
    assert_eq!(video.num_frames(), 6);
}

/// Copies folder `from` into `to`, recursively.
fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

#[test]
fn a_folder_scheduler_vdm_lacks_loads_and_asks_for_another() {
    // SD 1.x folders often carry PNDM, which vdm does not implement.
    let dir = std::env::temp_dir().join(format!("vdm-pndm-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    copy_dir(&fixture("text_to_video_sd"), &dir);
    let config = dir.join("scheduler/scheduler_config.json");
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace("DDIMScheduler", "PNDMScheduler");
    std::fs::write(&config, text).unwrap();
    let index = dir.join("model_index.json");
    let text = std::fs::read_to_string(&index)
        .unwrap()
        .replace("DDIMScheduler", "PNDMScheduler");
    std::fs::write(&index, text).unwrap();

    let pipe = TextToVideoPipeline::from_dir(&dir, &dev()).unwrap();
    let err = pipe.generate(&settings().steps(1)).unwrap_err();
    assert!(err.to_string().contains("scheduler"), "{err}");
    assert!(err.to_string().contains("PNDMScheduler"), "{err}");
    // The same folder sampled with DDIM on its configuration equals the DDIM folder.
    let ddim = settings().scheduler(SchedulerChoice::Class("DDIMScheduler".into()));
    let ours = values(pipe.generate(&ddim).unwrap().frames);
    let reference = TextToVideoPipeline::from_dir(fixture("text_to_video_sd"), &dev()).unwrap();
    assert_eq!(
        ours,
        values(reference.generate(&settings()).unwrap().frames)
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn prompt_travel_interpolates_per_frame_prompts() {
    let pipe = TextToVideoPipeline::from_dir(fixture("text_to_video_sd"), &dev()).unwrap();
    let s = settings().steps(2).seed(4);
    let single = values(pipe.generate(&s).unwrap().frames);
    // One keyframe holding the prompt is the plain prompt, through per-frame conditioning.
    let held = s.clone().prompt_travel([(0, s.prompt.clone())]);
    let travel = values(pipe.generate(&held).unwrap().frames);
    let (err, _) = errors(&travel, &single);
    assert!(err <= 1e-5, "held keyframe: {err:e}");
    // Two different keyframes change the later frames but keep frame 0's prompt.
    let two = s
        .clone()
        .prompt_travel([(0, "a photo of a cat"), (3, "a red sofa")]);
    let moved = values(pipe.generate(&two).unwrap().frames);
    assert_ne!(moved, single);
    // Keyframes are checked before any model work.
    for bad in [
        vec![(1, "a")],
        vec![(0, "a"), (0, "b")],
        vec![(0, "a"), (4, "b")],
    ] {
        let err = pipe
            .generate_with(
                &s.clone().prompt_travel(bad),
                &mut NoiseBank::new(),
                &mut |_| Control::Continue,
            )
            .unwrap_err();
        assert!(err.to_string().contains("prompt_keyframes"), "{err}");
    }
}

#[test]
fn animatediff_from_an_sd_unet_and_a_motion_adapter_matches_diffusers() {
    // The layout users assemble: an SD-style UNet2DConditionModel in unet/, the MotionAdapter
    // beside it. diffusers merges the two exactly as its own save_pretrained folder holds them.
    let dir = std::env::temp_dir().join(format!("vdm-split-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    copy_dir(&fixture("animatediff"), &dir);
    std::fs::remove_dir_all(dir.join("unet")).unwrap();
    copy_dir(&fixture("animatediff_unet2d"), &dir.join("unet"));
    let index = dir.join("model_index.json");
    let text = std::fs::read_to_string(&index)
        .unwrap()
        .replace("UNetMotionModel", "UNet2DConditionModel");
    std::fs::write(&index, text).unwrap();
    check_pipeline(
        &dir,
        "animatediff",
        PipelineClass::AnimateDiff,
        settings().decode_chunk_size(3),
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
