//! The parameters of a Moving Shapes clip and their caption.

use vdm_core::SeededNoise;

/// The shape's colour: five hues far apart, so a frame's object can be told from the others
/// (and from the dark background) by its mean colour alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Colour {
    /// `(0.90, 0.15, 0.15)`.
    Red,
    /// `(0.15, 0.80, 0.25)`.
    Green,
    /// `(0.20, 0.35, 0.95)`.
    Blue,
    /// `(0.95, 0.85, 0.15)`.
    Yellow,
    /// `(0.65, 0.25, 0.85)`.
    Purple,
}

impl Colour {
    /// Every colour, in caption-vocabulary order.
    pub const ALL: [Colour; 5] = [
        Colour::Red,
        Colour::Green,
        Colour::Blue,
        Colour::Yellow,
        Colour::Purple,
    ];

    /// Linear RGB in `[0, 1]`.
    pub fn rgb(self) -> [f32; 3] {
        match self {
            Colour::Red => [0.90, 0.15, 0.15],
            Colour::Green => [0.15, 0.80, 0.25],
            Colour::Blue => [0.20, 0.35, 0.95],
            Colour::Yellow => [0.95, 0.85, 0.15],
            Colour::Purple => [0.65, 0.25, 0.85],
        }
    }

    /// The caption word.
    pub fn name(self) -> &'static str {
        match self {
            Colour::Red => "red",
            Colour::Green => "green",
            Colour::Blue => "blue",
            Colour::Yellow => "yellow",
            Colour::Purple => "purple",
        }
    }
}

/// The shape drawn.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ShapeKind {
    /// A disc of diameter `size`.
    Circle,
    /// An axis-aligned square of side `size`.
    Square,
    /// An upright isosceles triangle of base and height `size`.
    Triangle,
}

impl ShapeKind {
    /// Every shape.
    pub const ALL: [ShapeKind; 3] = [ShapeKind::Circle, ShapeKind::Square, ShapeKind::Triangle];

    /// The caption word.
    pub fn name(self) -> &'static str {
        match self {
            ShapeKind::Circle => "circle",
            ShapeKind::Square => "square",
            ShapeKind::Triangle => "triangle",
        }
    }

    /// The fraction of its `size × size` bounding box the shape fills (π/4, 1, 1/2): what the
    /// analyser tells shapes apart by.
    pub fn fill_ratio(self) -> f32 {
        match self {
            ShapeKind::Circle => std::f32::consts::FRAC_PI_4,
            ShapeKind::Square => 1.0,
            ShapeKind::Triangle => 0.5,
        }
    }
}

/// The direction of motion (image coordinates: `x` to the right, `y` down).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// `-x`.
    Left,
    /// `+x`.
    Right,
    /// `-y`.
    Up,
    /// `+y`.
    Down,
}

impl Direction {
    /// Every direction.
    pub const ALL: [Direction; 4] = [
        Direction::Left,
        Direction::Right,
        Direction::Up,
        Direction::Down,
    ];

    /// The unit step `(dx, dy)`.
    pub fn unit(self) -> (f32, f32) {
        match self {
            Direction::Left => (-1.0, 0.0),
            Direction::Right => (1.0, 0.0),
            Direction::Up => (0.0, -1.0),
            Direction::Down => (0.0, 1.0),
        }
    }

    /// The caption word.
    pub fn name(self) -> &'static str {
        match self {
            Direction::Left => "left",
            Direction::Right => "right",
            Direction::Up => "up",
            Direction::Down => "down",
        }
    }

    /// Whether the two directions are at right angles.
    pub fn is_perpendicular(self, other: Direction) -> bool {
        let (a, b) = (self.unit(), other.unit());
        a.0 * b.0 + a.1 * b.1 == 0.0
    }
}

/// A change of direction during a clip.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Turn {
    /// The first frame moving in the new direction.
    pub frame: usize,
    /// The new direction (perpendicular to the first).
    pub direction: Direction,
}

/// Everything a clip is a function of.
#[derive(Debug, Clone, PartialEq)]
pub struct Scene {
    /// The shape's colour.
    pub colour: Colour,
    /// The shape.
    pub shape: ShapeKind,
    /// Side of the shape's bounding box in pixels.
    pub size: f32,
    /// Centre at frame 0, in pixels (`x`, `y`).
    pub start: (f32, f32),
    /// Pixels per frame.
    pub speed: f32,
    /// The direction of motion from frame 0.
    pub direction: Direction,
    /// An optional change of direction.
    pub turn: Option<Turn>,
    /// Grey level of the background.
    pub background: f32,
    /// Amplitude of the background's static texture (0: plain).
    pub texture: f32,
    /// Seed of the texture pattern.
    pub texture_seed: u64,
}

impl Scene {
    /// Shape sizes are drawn from `[SIZE_MIN, SIZE_MAX)` pixels (at a 32-pixel frame).
    pub const SIZE_MIN: f32 = 9.0;
    /// See [`Self::SIZE_MIN`].
    pub const SIZE_MAX: f32 = 12.0;
    /// Speeds are drawn from `[SPEED_MIN, SPEED_MAX)` pixels per frame.
    pub const SPEED_MIN: f32 = 1.0;
    /// See [`Self::SPEED_MIN`].
    pub const SPEED_MAX: f32 = 1.5;

    /// A random scene for a `side × side` frame of `frames` frames; with probability
    /// `turn_probability` it turns once, at frame `frames / 2`, to a perpendicular direction.
    pub fn random(
        rng: &mut SeededNoise,
        side: usize,
        frames: usize,
        turn_probability: f64,
    ) -> Self {
        let pick =
            |rng: &mut SeededNoise, n: usize| ((rng.uniform() * n as f64) as usize).min(n - 1);
        let range = |rng: &mut SeededNoise, lo: f32, hi: f32| lo + (hi - lo) * rng.uniform() as f32;
        let colour = Colour::ALL[pick(rng, Colour::ALL.len())];
        let shape = ShapeKind::ALL[pick(rng, ShapeKind::ALL.len())];
        let direction = Direction::ALL[pick(rng, Direction::ALL.len())];
        let size = range(rng, Self::SIZE_MIN, Self::SIZE_MAX) * side as f32 / 32.0;
        let start = (range(rng, 0.0, side as f32), range(rng, 0.0, side as f32));
        let speed = range(rng, Self::SPEED_MIN, Self::SPEED_MAX) * side as f32 / 32.0;
        let turn = if rng.uniform() < turn_probability && frames >= 2 {
            let options: Vec<Direction> = Direction::ALL
                .into_iter()
                .filter(|d| d.is_perpendicular(direction))
                .collect();
            Some(Turn {
                frame: frames / 2,
                direction: options[pick(rng, options.len())],
            })
        } else {
            None
        };
        let background = range(rng, 0.06, 0.22);
        let texture = if rng.uniform() < 0.5 { 0.0 } else { 0.04 };
        let texture_seed = (rng.uniform() * (1u64 << 53) as f64) as u64;
        Self {
            colour,
            shape,
            size,
            start,
            speed,
            direction,
            turn,
            background,
            texture,
            texture_seed,
        }
    }

    /// The caption: `"a red circle moving right"`, or with a turn
    /// `"a red circle moving right then up"`.
    pub fn caption(&self) -> String {
        let mut caption = caption(self.colour, self.shape, self.direction);
        if let Some(turn) = self.turn {
            caption.push_str(" then ");
            caption.push_str(turn.direction.name());
        }
        caption
    }

    /// The direction of motion between frames `frame` and `frame + 1`.
    pub fn direction_at(&self, frame: usize) -> Direction {
        match self.turn {
            Some(turn) if frame >= turn.frame => turn.direction,
            _ => self.direction,
        }
    }

    /// The shape's centre at `frame`, unwrapped (not reduced modulo the frame size).
    pub fn centre(&self, frame: usize) -> (f32, f32) {
        let (mut x, mut y) = self.start;
        let first = self.turn.map_or(frame, |t| frame.min(t.frame));
        let (dx, dy) = self.direction.unit();
        x += dx * self.speed * first as f32;
        y += dy * self.speed * first as f32;
        if let Some(turn) = self.turn
            && frame > turn.frame
        {
            let (dx, dy) = turn.direction.unit();
            let n = (frame - turn.frame) as f32;
            x += dx * self.speed * n;
            y += dy * self.speed * n;
        }
        (x, y)
    }
}

/// The caption of a one-direction clip: `"a {colour} {shape} moving {direction}"`.
pub fn caption(colour: Colour, shape: ShapeKind, direction: Direction) -> String {
    format!(
        "a {} {} moving {}",
        colour.name(),
        shape.name(),
        direction.name()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn captions_name_the_parameters() {
        let mut rng = SeededNoise::new(3);
        for _ in 0..50 {
            let scene = Scene::random(&mut rng, 32, 16, 0.5);
            let caption = scene.caption();
            assert!(caption.starts_with("a "), "{caption}");
            assert!(caption.contains(scene.colour.name()));
            assert!(caption.contains(scene.shape.name()));
            assert!(caption.contains(&format!("moving {}", scene.direction.name())));
            if let Some(turn) = scene.turn {
                assert!(caption.ends_with(&format!("then {}", turn.direction.name())));
                assert!(turn.direction.is_perpendicular(scene.direction));
            }
        }
    }

    #[test]
    fn the_centre_moves_at_the_speed_and_turns_once() {
        let scene = Scene {
            colour: Colour::Red,
            shape: ShapeKind::Square,
            size: 10.0,
            start: (5.0, 6.0),
            speed: 1.5,
            direction: Direction::Right,
            turn: Some(Turn {
                frame: 4,
                direction: Direction::Up,
            }),
            background: 0.1,
            texture: 0.0,
            texture_seed: 0,
        };
        assert_eq!(scene.centre(0), (5.0, 6.0));
        assert_eq!(scene.centre(4), (11.0, 6.0));
        assert_eq!(scene.centre(6), (11.0, 3.0));
        assert_eq!(scene.direction_at(3), Direction::Right);
        assert_eq!(scene.direction_at(4), Direction::Up);
    }
}
