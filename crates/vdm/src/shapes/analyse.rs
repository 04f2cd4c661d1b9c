//! Judging a Moving Shapes video exactly: what the papers measure with CLIP and optical flow,
//! measured here with geometry, because the domain's ground truth is known.
//!
//! Per frame ([`analyse_frame`]): the background colour is the per-channel median (the object
//! covers under 15% of a frame); pixels farther than [`FOREGROUND`] from it (largest channel
//! difference) are foreground; their 4-connected components are found on the torus (the shape
//! wraps around the edges); the largest one is *the object*: its area, its circular-mean
//! centroid, its colour class (the nearest palette colour to the mean of its core pixels) and
//! its shape class (from how much of its bounding box it fills: a square ≈ 1, a disc ≈ π/4, a
//! triangle ≈ 1/2).
//!
//! Per video ([`score_video`], against the [`Expectation`] parsed from a caption):
//! - **validity**: frames holding exactly one object of plausible area;
//! - **prompt adherence**: colour, shape and direction of motion matching the caption (for a
//!   caption with a turn, the direction expected at each frame);
//! - **consistency** (the analogue of the papers' CLIP-SIM between frames): how stable the
//!   object's colour class, shape class and area are over the video;
//! - **smoothness**: the centroid's mean acceleration and its jumps (displacements over
//!   [`JUMP`] pixels per frame at a 32-pixel frame: three times the fastest motion).

use vdm_core::Result;

use super::render::wrap;
use super::scene::{Colour, Direction, ShapeKind, Turn};
use crate::video::Video;

/// Largest-channel distance from the background above which a pixel is foreground.
pub const FOREGROUND: f32 = 0.2;
/// Distance above which a foreground pixel is *core* (used for the colour).
const CORE: f32 = 0.45;
/// Components smaller than this many pixels (at a 32-pixel frame) are specks, not objects.
const SPECK: f32 = 4.0;
/// Plausible object areas in pixels at a 32-pixel frame (the data's smallest triangle covers
/// about 40, its largest square 144).
pub const AREA_RANGE: (f32, f32) = (25.0, 200.0);
/// A centroid displacement over this many pixels per frame (at 32 pixels) is a jump.
pub const JUMP: f32 = 4.5;

/// What one frame shows.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FrameAnalysis {
    /// Foreground components larger than a speck.
    pub objects: usize,
    /// Pixels of the largest component.
    pub area: f32,
    /// Its centroid `(x, y)` in `[0, W) × [0, H)`.
    pub centroid: (f32, f32),
    /// Its colour class.
    pub colour: Option<Colour>,
    /// Its shape class.
    pub shape: Option<ShapeKind>,
    /// The fraction of its bounding box it fills.
    pub fill: f32,
    /// Whether the frame holds exactly one object of plausible area.
    pub valid: bool,
}

/// What a caption asks for.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Expectation {
    /// The colour.
    pub colour: Colour,
    /// The shape.
    pub shape: ShapeKind,
    /// The direction from frame 0.
    pub direction: Direction,
    /// A change of direction (for prompt travel: the keyed frame and the new direction).
    pub turn: Option<Turn>,
}

impl Expectation {
    /// Parses `"a {colour} {shape} moving {direction}"`; `None` for any other text.
    pub fn from_caption(caption: &str) -> Option<Self> {
        let words: Vec<&str> = caption.split_whitespace().collect();
        let [_, colour, shape, "moving", direction] = words.as_slice() else {
            return None;
        };
        Some(Self {
            colour: *Colour::ALL.iter().find(|c| c.name() == *colour)?,
            shape: *ShapeKind::ALL.iter().find(|s| s.name() == *shape)?,
            direction: *Direction::ALL.iter().find(|d| d.name() == *direction)?,
            turn: None,
        })
    }

    /// The expected direction between frames `frame` and `frame + 1`.
    pub fn direction_at(&self, frame: usize) -> Direction {
        match self.turn {
            Some(turn) if frame >= turn.frame => turn.direction,
            _ => self.direction,
        }
    }
}

/// The scores of one video (fractions in `[0, 1]` unless said otherwise).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct VideoScores {
    /// Frames holding exactly one object of plausible area.
    pub validity: f32,
    /// Valid frames whose colour class is the caption's.
    pub colour: f32,
    /// Valid frames whose shape class is the caption's.
    pub shape: f32,
    /// Steps between consecutive valid frames that move in the expected direction (over 0.25 px
    /// along it, and more along it than across).
    pub direction: f32,
    /// Mean of the modal colour's share, the modal shape's share and `1 − min(1, CV(area))`
    /// over valid frames.
    pub consistency: f32,
    /// Mean centroid acceleration in pixels per frame² (scaled to a 32-pixel frame; lower is
    /// smoother).
    pub acceleration: f32,
    /// Fraction of steps that jump (see [`JUMP`]).
    pub jumps: f32,
}

impl VideoScores {
    /// Prompt adherence: the mean of colour, shape and direction.
    pub fn adherence(&self) -> f32 {
        (self.colour + self.shape + self.direction) / 3.0
    }

    /// The scores in field order (validity, colour, shape, direction, consistency,
    /// acceleration, jumps): for sums, means and tables over many videos.
    pub fn to_array(&self) -> [f32; 7] {
        [
            self.validity,
            self.colour,
            self.shape,
            self.direction,
            self.consistency,
            self.acceleration,
            self.jumps,
        ]
    }

    /// The scores from [`VideoScores::to_array`]'s order.
    pub fn from_array(
        [
            validity,
            colour,
            shape,
            direction,
            consistency,
            acceleration,
            jumps,
        ]: [f32; 7],
    ) -> Self {
        Self {
            validity,
            colour,
            shape,
            direction,
            consistency,
            acceleration,
            jumps,
        }
    }
}

/// Analyses frame `f` of `frames` (`[F, 3, H, W]`, values in `[0, 1]`).
///
/// # Panics
/// If `frames` is shorter than `F·3·H·W` for the given sizes.
pub fn analyse_frame(frames: &[f32], f: usize, height: usize, width: usize) -> FrameAnalysis {
    let plane = height * width;
    let frame = &frames[f * 3 * plane..(f + 1) * 3 * plane];
    let pixel = |i: usize| [frame[i], frame[plane + i], frame[2 * plane + i]];
    let mut background = [0.0f32; 3];
    for (c, value) in background.iter_mut().enumerate() {
        let mut channel = frame[c * plane..(c + 1) * plane].to_vec();
        channel.sort_by(f32::total_cmp);
        *value = channel[plane / 2];
    }
    let distance = |i: usize| {
        let p = pixel(i);
        (0..3)
            .map(|c| (p[c] - background[c]).abs())
            .fold(0.0, f32::max)
    };
    let foreground: Vec<bool> = (0..plane).map(|i| distance(i) > FOREGROUND).collect();
    let components = components_on_torus(&foreground, height, width);
    let scale = (height * width) as f32 / (32.0 * 32.0);
    let objects = components
        .iter()
        .filter(|c| c.len() as f32 >= SPECK * scale)
        .count();
    let Some(largest) = components.iter().max_by_key(|c| c.len()) else {
        return FrameAnalysis {
            objects: 0,
            area: 0.0,
            centroid: (0.0, 0.0),
            colour: None,
            shape: None,
            fill: 0.0,
            valid: false,
        };
    };
    let area = largest.len() as f32;
    // Each pixel weighs its coverage (its distance from the background relative to the
    // component's largest), so edge pixels place the centroid to a fraction of a pixel.
    let full = largest.iter().map(|&i| distance(i)).fold(0.0, f32::max);
    let weights: Vec<f32> = largest
        .iter()
        .map(|&i| (distance(i) / full).min(1.0))
        .collect();
    let centroid = (
        circular_mean(
            largest
                .iter()
                .map(|i| (i % width) as f32 + 0.5)
                .zip(weights.iter().copied()),
            width as f32,
        ),
        circular_mean(
            largest
                .iter()
                .map(|i| (i / width) as f32 + 0.5)
                .zip(weights.iter().copied()),
            height as f32,
        ),
    );
    // Soft measures (each pixel counts by its coverage), so a shape at a fractional position
    // keeps its proportions: the extents are the sums over columns (rows) of the largest
    // coverage in each, and a square fills exactly its box, a disc π/4 of it, a triangle half.
    let mut columns = vec![0.0f32; width];
    let mut rows = vec![0.0f32; height];
    for (&i, &w) in largest.iter().zip(&weights) {
        columns[i % width] = columns[i % width].max(w);
        rows[i / width] = rows[i / width].max(w);
    }
    let mass: f32 = weights.iter().sum();
    let box_area = columns.iter().sum::<f32>() * rows.iter().sum::<f32>();
    let fill = if box_area > 0.0 { mass / box_area } else { 0.0 };
    // An upright triangle holds a quarter of its area above its box's middle; a disc or a
    // square half.
    let offsets: Vec<f32> = largest
        .iter()
        .map(|i| wrap((i / width) as f32 + 0.5 - centroid.1, height as f32))
        .collect();
    let solid = offsets.iter().zip(&weights).filter(|(_, w)| **w >= 0.5);
    let (top, bottom) = solid.fold((f32::MAX, f32::MIN), |(lo, hi), (dy, _)| {
        (lo.min(*dy), hi.max(*dy))
    });
    let middle = (top + bottom) / 2.0;
    let upper: f32 = offsets
        .iter()
        .zip(&weights)
        .map(|(dy, w)| {
            if *dy < middle - 0.25 {
                *w
            } else if *dy <= middle + 0.25 {
                w / 2.0
            } else {
                0.0
            }
        })
        .sum::<f32>()
        / mass.max(f32::MIN_POSITIVE);
    let shape = Some(if upper < 0.4 || fill < 0.64 {
        ShapeKind::Triangle
    } else if fill > 0.89 {
        ShapeKind::Square
    } else {
        ShapeKind::Circle
    });
    let core: Vec<usize> = largest
        .iter()
        .copied()
        .filter(|&i| distance(i) > CORE)
        .collect();
    let source = if core.is_empty() { largest } else { &core };
    let mut mean = [0.0f32; 3];
    for &i in source {
        let p = pixel(i);
        for c in 0..3 {
            mean[c] += p[c] / source.len() as f32;
        }
    }
    let colour = Colour::ALL.iter().copied().min_by(|a, b| {
        let d = |c: Colour| {
            let rgb = c.rgb();
            (0..3).map(|k| (rgb[k] - mean[k]).powi(2)).sum::<f32>()
        };
        d(*a).total_cmp(&d(*b))
    });
    let valid = objects == 1 && (AREA_RANGE.0 * scale..=AREA_RANGE.1 * scale).contains(&area);
    FrameAnalysis {
        objects,
        area,
        centroid,
        colour,
        shape,
        fill,
        valid,
    }
}

/// Every frame of `frames` (`[F, 3, H, W]`).
pub fn analyse_video(
    frames: &[f32],
    count: usize,
    height: usize,
    width: usize,
) -> Vec<FrameAnalysis> {
    (0..count)
        .map(|f| analyse_frame(frames, f, height, width))
        .collect()
}

/// Scores a video's frame analyses against what its caption asks for; `side` is the frame
/// width in pixels (distances are reported at a 32-pixel frame).
pub fn score_video(frames: &[FrameAnalysis], expected: &Expectation, side: usize) -> VideoScores {
    let n = frames.len().max(1) as f32;
    let valid: Vec<(usize, &FrameAnalysis)> =
        frames.iter().enumerate().filter(|(_, a)| a.valid).collect();
    let share = |count: usize, of: usize| {
        if of == 0 {
            0.0
        } else {
            count as f32 / of as f32
        }
    };
    let colour = share(
        valid
            .iter()
            .filter(|(_, a)| a.colour == Some(expected.colour))
            .count(),
        valid.len(),
    );
    let shape = share(
        valid
            .iter()
            .filter(|(_, a)| a.shape == Some(expected.shape))
            .count(),
        valid.len(),
    );
    let to32 = 32.0 / side as f32;
    // Displacements between consecutive frames that are both valid.
    let mut steps = Vec::new();
    for w in valid.windows(2) {
        let ((i, a), (j, b)) = (w[0], w[1]);
        if j == i + 1 {
            let dx = wrap(b.centroid.0 - a.centroid.0, side as f32) * to32;
            let dy = wrap(b.centroid.1 - a.centroid.1, side as f32) * to32;
            steps.push((i, dx, dy));
        }
    }
    let direction = share(
        steps
            .iter()
            .filter(|(i, dx, dy)| {
                let (ux, uy) = expected.direction_at(*i).unit();
                let along = dx * ux + dy * uy;
                let across = (dx * uy - dy * ux).abs();
                along > 0.25 && along > across
            })
            .count(),
        steps.len(),
    );
    let jumps = share(
        steps
            .iter()
            .filter(|(_, dx, dy)| dx.hypot(*dy) > JUMP)
            .count(),
        steps.len(),
    );
    let mut accelerations = Vec::new();
    for w in steps.windows(2) {
        if w[1].0 == w[0].0 + 1 {
            accelerations.push((w[1].1 - w[0].1).hypot(w[1].2 - w[0].2));
        }
    }
    let acceleration = if accelerations.is_empty() {
        0.0
    } else {
        accelerations.iter().sum::<f32>() / accelerations.len() as f32
    };
    let modal = |key: &dyn Fn(&FrameAnalysis) -> usize, classes: usize| {
        let mut counts = vec![0usize; classes];
        for (_, a) in &valid {
            counts[key(a)] += 1;
        }
        share(counts.into_iter().max().unwrap_or(0), valid.len())
    };
    let colour_index = |a: &FrameAnalysis| {
        Colour::ALL
            .iter()
            .position(|c| Some(*c) == a.colour)
            .unwrap_or(0)
    };
    let shape_index = |a: &FrameAnalysis| {
        ShapeKind::ALL
            .iter()
            .position(|s| Some(*s) == a.shape)
            .unwrap_or(0)
    };
    let areas: Vec<f32> = valid.iter().map(|(_, a)| a.area).collect();
    let area_stability = if areas.is_empty() {
        0.0
    } else {
        let mean = areas.iter().sum::<f32>() / areas.len() as f32;
        let var = areas.iter().map(|a| (a - mean).powi(2)).sum::<f32>() / areas.len() as f32;
        1.0 - (var.sqrt() / mean).min(1.0)
    };
    let consistency = if valid.is_empty() {
        0.0
    } else {
        (modal(&colour_index, Colour::ALL.len())
            + modal(&shape_index, ShapeKind::ALL.len())
            + area_stability)
            / 3.0
    };
    VideoScores {
        validity: valid.len() as f32 / n,
        colour,
        shape,
        direction,
        consistency,
        acceleration,
        jumps,
    }
}

/// Analyses and scores a generated [`Video`] against what its caption asks for.
///
/// # Errors
/// [`Video::to_values`]'s.
pub fn score(video: &Video, expected: &Expectation) -> Result<VideoScores> {
    let [f, _, h, w] = video.frames.dims();
    let frames = analyse_video(&video.to_values()?, f, h, w);
    Ok(score_video(&frames, expected, w))
}

/// The weighted circular mean of positions on a circle of circumference `period`, in `[0, period)`.
fn circular_mean(values: impl Iterator<Item = (f32, f32)>, period: f32) -> f32 {
    let (mut s, mut c) = (0.0f64, 0.0f64);
    for (v, weight) in values {
        let angle = f64::from(v / period) * std::f64::consts::TAU;
        s += f64::from(weight) * angle.sin();
        c += f64::from(weight) * angle.cos();
    }
    let mean = s.atan2(c) / std::f64::consts::TAU * f64::from(period);
    (mean as f32).rem_euclid(period)
}

/// The 4-connected components of `mask` (`H × W`, row-major) on a torus, as pixel indices.
fn components_on_torus(mask: &[bool], height: usize, width: usize) -> Vec<Vec<usize>> {
    let mut seen = vec![false; mask.len()];
    let mut components = Vec::new();
    for start in 0..mask.len() {
        if !mask[start] || seen[start] {
            continue;
        }
        seen[start] = true;
        let mut stack = vec![start];
        let mut component = Vec::new();
        while let Some(i) = stack.pop() {
            component.push(i);
            let (y, x) = (i / width, i % width);
            let neighbours = [
                y * width + (x + 1) % width,
                y * width + (x + width - 1) % width,
                ((y + 1) % height) * width + x,
                ((y + height - 1) % height) * width + x,
            ];
            for j in neighbours {
                if mask[j] && !seen[j] {
                    seen[j] = true;
                    stack.push(j);
                }
            }
        }
        components.push(component);
    }
    components
}

#[cfg(test)]
mod tests {
    use super::super::scene::Scene;
    use super::*;
    use vdm_core::SeededNoise;

    fn expectation(scene: &Scene) -> Expectation {
        Expectation {
            colour: scene.colour,
            shape: scene.shape,
            direction: scene.direction,
            turn: scene.turn,
        }
    }

    #[test]
    fn ground_truth_clips_score_perfectly() {
        let mut rng = SeededNoise::new(2024);
        for _ in 0..200 {
            let scene = Scene::random(&mut rng, 32, 16, 0.3);
            let clip = scene.render(16, 32);
            let frames = analyse_video(&clip.pixels, 16, 32, 32);
            let s = score_video(&frames, &expectation(&scene), 32);
            let perfect = VideoScores {
                validity: 1.0,
                colour: 1.0,
                shape: 1.0,
                direction: 1.0,
                consistency: s.consistency,
                acceleration: s.acceleration,
                jumps: 0.0,
            };
            assert_eq!(s, perfect, "{scene:?}");
            assert!(s.consistency > 0.95, "{scene:?}: {s:?}");
            assert!(s.acceleration < 0.5, "{scene:?}: {s:?}");
            // The centroid is where the scene put it.
            for (f, a) in frames.iter().enumerate() {
                let (x, y) = scene.centre(f);
                let ex = wrap(a.centroid.0 - x, 32.0).abs();
                let ey = wrap(a.centroid.1 - y, 32.0).abs();
                // A triangle's area centroid lies a sixth of its height below its centre.
                let tolerance = if scene.shape == ShapeKind::Triangle {
                    2.5
                } else {
                    0.5
                };
                assert!(ex < 0.5 && ey < tolerance, "{scene:?} frame {f}: {a:?}");
            }
        }
    }

    #[test]
    fn captions_parse_and_other_text_does_not() {
        let e = Expectation::from_caption("a purple triangle moving down").unwrap();
        assert_eq!(
            (e.colour, e.shape, e.direction),
            (Colour::Purple, ShapeKind::Triangle, Direction::Down)
        );
        assert!(Expectation::from_caption("a corgi on the beach").is_none());
        assert!(Expectation::from_caption("").is_none());
    }

    fn scene(seed: u64) -> Scene {
        let mut rng = SeededNoise::new(seed);
        Scene {
            turn: None,
            ..Scene::random(&mut rng, 32, 16, 0.0)
        }
    }

    #[test]
    fn shuffled_frames_lose_direction_and_jump() {
        let s = scene(5);
        let clip = s.render(16, 32);
        let plane = 3 * 32 * 32;
        let order = [0, 9, 3, 14, 6, 1, 11, 4, 15, 8, 2, 13, 7, 10, 5, 12];
        let shuffled: Vec<f32> = order
            .iter()
            .flat_map(|&f| clip.pixels[f * plane..(f + 1) * plane].to_vec())
            .collect();
        let scores = score_video(&analyse_video(&shuffled, 16, 32, 32), &expectation(&s), 32);
        assert!(scores.direction < 0.7, "{scores:?}");
        assert!(scores.jumps > 0.3, "{scores:?}");
        assert!(scores.acceleration > 3.0, "{scores:?}");
    }

    #[test]
    fn wrong_colour_wrong_shape_and_extra_objects_are_noticed() {
        let mut s = scene(6);
        s.colour = Colour::Red;
        s.shape = ShapeKind::Circle;
        let want = expectation(&s);
        let mut other = s.clone();
        other.colour = Colour::Blue;
        other.shape = ShapeKind::Square;
        let scores = score_video(
            &analyse_video(&other.render(16, 32).pixels, 16, 32, 32),
            &want,
            32,
        );
        assert_eq!((scores.colour, scores.shape), (0.0, 0.0), "{scores:?}");
        // A second object in every frame: no frame is valid.
        let mut second = s.clone();
        second.start = (s.start.0 + 16.0, s.start.1 + 16.0);
        let (a, b) = (s.render(16, 32), second.render(16, 32));
        let both: Vec<f32> = a
            .pixels
            .iter()
            .zip(&b.pixels)
            .map(|(x, y)| x.max(*y))
            .collect();
        let scores = score_video(&analyse_video(&both, 16, 32, 32), &want, 32);
        assert_eq!(scores.validity, 0.0, "{scores:?}");
        // Blank frames: nothing valid, nothing matched.
        let blank = vec![0.1f32; 16 * 3 * 32 * 32];
        let scores = score_video(&analyse_video(&blank, 16, 32, 32), &want, 32);
        assert_eq!(
            scores,
            VideoScores {
                ..Default::default()
            }
        );
    }

    #[test]
    fn a_shape_that_changes_size_and_colour_midway_is_inconsistent() {
        let s = scene(7);
        let mut changed = s.clone();
        changed.size = s.size * 0.6;
        changed.colour = if s.colour == Colour::Green {
            Colour::Red
        } else {
            Colour::Green
        };
        let (a, b) = (s.render(16, 32), changed.render(16, 32));
        let half = 8 * 3 * 32 * 32;
        let mixed: Vec<f32> = a.pixels[..half]
            .iter()
            .chain(&b.pixels[half..])
            .copied()
            .collect();
        let steady = score_video(&analyse_video(&a.pixels, 16, 32, 32), &expectation(&s), 32);
        let scores = score_video(&analyse_video(&mixed, 16, 32, 32), &expectation(&s), 32);
        assert!(
            scores.consistency < steady.consistency - 0.2,
            "{scores:?} vs {steady:?}"
        );
    }

    #[test]
    fn a_turn_is_judged_against_the_direction_at_each_frame() {
        let mut rng = SeededNoise::new(8);
        let s = Scene::random(&mut rng, 32, 16, 1.0);
        let turn = s.turn.unwrap();
        let frames = analyse_video(&s.render(16, 32).pixels, 16, 32, 32);
        assert_eq!(score_video(&frames, &expectation(&s), 32).direction, 1.0);
        let no_turn = Expectation {
            turn: None,
            ..expectation(&s)
        };
        let d = score_video(&frames, &no_turn, 32).direction;
        assert!(d < 0.6, "{d} (turn at {})", turn.frame);
    }
}
