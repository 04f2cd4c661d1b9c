//! The embedded Moving Shapes model (`crates/vdm/models/moving-shapes`, trained by
//! `examples/train.rs`) loads through the ordinary pipeline and makes what it is asked for:
//! seeded 16-frame videos judged by `vdm::shapes::analyse` against their captions.
//!
//! The bounds sit under the figures measured when the model was trained (see
//! `docs/embedded-model.md`) with a margin; a model that lost its training (random weights, a
//! broken loader or sampler) scores 0 on them (it draws noise, or nothing).

use burn::tensor::Device;
use vdm::pipeline::TextToVideoPipeline;
use vdm::shapes::analyse::{Expectation, score};

#[test]
fn the_embedded_model_draws_one_shape_in_the_prompted_colour() {
    let dir = vdm::embedded::moving_shapes_dir();
    assert!(
        dir.join("model_index.json").is_file(),
        "missing {}",
        dir.display()
    );
    let pipe = TextToVideoPipeline::from_dir(&dir, &Device::flex()).unwrap();
    let prompts = [
        "a red circle moving right",
        "a blue square moving left",
        "a yellow triangle moving down",
    ];
    let (mut valid, mut colour) = (0.0, 0.0);
    for (seed, prompt) in prompts.iter().enumerate() {
        let video = pipe
            .generate(&vdm::embedded::generation(*prompt).seed(seed as u64))
            .unwrap();
        assert_eq!(video.frames.dims(), [16, 3, 32, 32]);
        let expected = Expectation::from_caption(prompt).unwrap();
        let scores = score(&video, &expected).unwrap();
        println!("{prompt}: {scores:?}");
        valid += scores.validity / 3.0;
        colour += scores.colour / 3.0;
    }
    assert!(valid >= VALID, "validity {valid}");
    assert!(colour >= COLOUR, "colour {colour}");
}

/// Lower bounds (see the module docs): measured 0.75 and 1.00 for the shipped weights (x₀ on
/// latents of standard deviation 0.5, 64/96 channels, seed 0, 1000 steps) with the embedded
/// model's sampling settings (`vdm::embedded::generation`: 50 steps, guidance 2); the previous
/// weights (raw pixels, 1200 steps) measured 0.77 and 0.92 at 50 steps and guidance 3. Direction
/// of motion is not bounded: the model moves its shapes the prompted way little more often than
/// chance (`docs/embedded-model.md`).
const VALID: f32 = 0.6;
const COLOUR: f32 = 0.75;
