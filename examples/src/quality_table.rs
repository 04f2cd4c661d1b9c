//! The rows of the `quality` benchmark's table: one format, printed by `quality` as a markdown
//! table and read back by `quality --replot`, so that the plots of `docs/quality/` can be drawn
//! from the tables of several runs (say 16 to 128 frames in one run and 256 in another) kept in
//! one file beside them.

use std::path::Path;

use vdm::shapes::analyse::VideoScores;

use crate::plot::{Chart, Series, line_chart};

/// The header of the table (two markdown lines).
pub const HEADER: &str = "| method | frames | valid | colour | shape | direction | consistency | accel (px/f²) | jumps | travel dir | s/video |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|";

/// The number of columns of a row.
const COLUMNS: usize = 11;

/// One (method, length) cell of the table: means over its videos.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    /// The method, as `quality --methods` names it (e.g. `freenoise+freeinit`).
    pub method: String,
    /// Video length.
    pub frames: usize,
    /// Mean scores of the single-prompt videos.
    pub scores: VideoScores,
    /// Mean direction score of the prompt-travel videos against the turned expectation.
    pub travel_direction: f32,
    /// Seconds per video.
    pub seconds: f64,
}

impl Row {
    /// The row as a markdown table line (three decimals; seconds to one).
    pub fn to_markdown(&self) -> String {
        let scores: Vec<String> = self.figures().iter().map(|x| format!("{x:.3}")).collect();
        format!(
            "| {} | {} | {} | {:.1} |",
            self.method,
            self.frames,
            scores.join(" | "),
            self.seconds
        )
    }
}

/// The rows of `text`: every line of the [`HEADER`]'s shape whose `frames` cell is a number;
/// other lines (headers, separators, prose) are skipped.
///
/// # Errors
/// A table line with a numeric `frames` cell but the wrong number of cells or a cell that is not
/// a number, naming the line (1-based).
pub fn parse_table(text: &str) -> Result<Vec<Row>, String> {
    let mut rows = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if !line.starts_with('|') || !line.ends_with('|') || line.len() < 2 {
            continue;
        }
        let cells: Vec<&str> = line[1..line.len() - 1].split('|').map(str::trim).collect();
        let Some(Ok(frames)) = cells.get(1).map(|c| c.parse::<usize>()) else {
            continue;
        };
        let bad = |what: &str| format!("line {}: {what}: `{line}`", i + 1);
        if cells.len() != COLUMNS {
            return Err(bad(&format!("{} cells, expected {COLUMNS}", cells.len())));
        }
        let mut numbers = [0.0f64; COLUMNS - 2];
        for (n, cell) in numbers.iter_mut().zip(&cells[2..]) {
            *n = cell
                .parse()
                .map_err(|_| bad(&format!("`{cell}` is not a number")))?;
        }
        let [scores @ .., travel, seconds] = numbers;
        rows.push(Row {
            method: cells[0].to_string(),
            frames,
            scores: VideoScores::from_array(scores.map(|x| x as f32)),
            travel_direction: travel as f32,
            seconds,
        });
    }
    Ok(rows)
}

/// Merges the rows of several runs (each a table of distinct seeds, same prompts): a (method,
/// length) cell found in several runs has the mean of their scores, each run weighted equally,
/// and the fastest run's seconds per video (a run that shared the machine with other work only
/// gets slower); cells come in order of first appearance, each with the number of runs it was
/// found in.
///
/// # Errors
/// A run holding the same cell twice (the runs would no longer be of distinct seeds), naming it.
pub fn merge_runs(runs: &[Vec<Row>]) -> Result<Vec<(Row, usize)>, String> {
    let mut merged: Vec<(Row, usize)> = Vec::new();
    for (i, run) in runs.iter().enumerate() {
        for (j, row) in run.iter().enumerate() {
            let same = |r: &Row| r.method == row.method && r.frames == row.frames;
            if run[..j].iter().any(same) {
                return Err(format!(
                    "run {} holds `{}` at {} frames twice",
                    i + 1,
                    row.method,
                    row.frames
                ));
            }
            match merged.iter_mut().find(|(r, _)| same(r)) {
                Some((sum, n)) => {
                    sum.add(row);
                    *n += 1;
                }
                None => merged.push((row.clone(), 1)),
            }
        }
    }
    for (row, n) in &mut merged {
        row.scale(1.0 / *n as f64);
    }
    Ok(merged)
}

impl Row {
    /// Adds `other`'s scores to this row's; keeps the smaller seconds per video.
    fn add(&mut self, other: &Row) {
        let (a, b) = (self.figures(), other.figures());
        self.set_figures(std::array::from_fn(|i| a[i] + b[i]));
        self.seconds = self.seconds.min(other.seconds);
    }

    /// Multiplies every score by `k`.
    fn scale(&mut self, k: f64) {
        self.set_figures(self.figures().map(|a| (f64::from(a) * k) as f32));
    }

    /// The scores, in table order: [`VideoScores::to_array`], then the travel direction.
    fn figures(&self) -> [f32; 8] {
        let [a, b, c, d, e, f, g] = self.scores.to_array();
        [a, b, c, d, e, f, g, self.travel_direction]
    }

    /// Sets the scores from [`Row::figures`]' order.
    fn set_figures(&mut self, [a, b, c, d, e, f, g, travel]: [f32; 8]) {
        self.scores = VideoScores::from_array([a, b, c, d, e, f, g]);
        self.travel_direction = travel;
    }
}

/// A figure of a row, for the plots.
type Metric = fn(&Row) -> f32;

/// The plotted metrics: file name, title, figure.
const METRICS: [(&str, &str, Metric); 6] = [
    ("validity", "frames with one plausible object", |r| {
        r.scores.validity
    }),
    (
        "adherence",
        "prompt adherence (colour, shape, direction)",
        |r| r.scores.adherence(),
    ),
    ("direction", "direction of motion as prompted", |r| {
        r.scores.direction
    }),
    ("consistency", "consistency (colour, shape, area)", |r| {
        r.scores.consistency
    }),
    (
        "acceleration",
        "mean centroid acceleration (px/frame²)",
        |r| r.scores.acceleration,
    ),
    (
        "travel",
        "prompt travel: direction before and after the switch",
        |r| r.travel_direction,
    ),
];

/// Writes one PNG per metric into `dir` (`validity.png`, `adherence.png`, `direction.png`,
/// `consistency.png`, `acceleration.png`, `travel.png`): the metric against video length, one
/// line per method in order of first appearance, points in increasing length.
///
/// # Errors
/// No rows, or the folder or a file cannot be written.
pub fn write_plots(dir: &Path, rows: &[Row]) -> Result<(), String> {
    if rows.is_empty() {
        return Err("no table rows to plot".into());
    }
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let mut methods: Vec<&str> = Vec::new();
    for r in rows {
        if !methods.contains(&r.method.as_str()) {
            methods.push(&r.method);
        }
    }
    for (name, title, metric) in METRICS {
        let series: Vec<Series> = methods
            .iter()
            .map(|m| {
                let mut points: Vec<(f64, f64)> = rows
                    .iter()
                    .filter(|r| r.method == *m)
                    .map(|r| (r.frames as f64, f64::from(metric(r))))
                    .collect();
                points.sort_by(|a, b| a.0.total_cmp(&b.0));
                Series {
                    label: m.to_string(),
                    points,
                }
            })
            .collect();
        line_chart(
            &dir.join(format!("{name}.png")),
            &Chart {
                title,
                x_label: "frames",
                y_label: name,
                log_y: false,
                log_x: true,
            },
            &series,
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(method: &str, frames: usize, validity: f32) -> Row {
        Row {
            method: method.into(),
            frames,
            scores: VideoScores {
                validity,
                colour: 0.829,
                shape: 0.406,
                direction: 0.248,
                consistency: 0.851,
                acceleration: 0.695,
                jumps: 0.004,
            },
            travel_direction: 0.067,
            seconds: 41.8,
        }
    }

    #[test]
    fn printed_rows_read_back_with_the_header_and_prose_skipped() {
        let rows = vec![
            row("direct", 16, 0.95),
            row("freenoise+freeinit", 256, 0.712),
        ];
        let mut text = String::from("model …; 25 steps\n\n");
        text.push_str(HEADER);
        text.push('\n');
        for r in &rows {
            text.push_str(&r.to_markdown());
            text.push('\n');
        }
        text.push_str("\nplots in docs/quality\n");
        assert_eq!(parse_table(&text).unwrap(), rows);
    }

    #[test]
    fn a_broken_row_is_an_error_naming_its_line() {
        let good = row("direct", 16, 0.95).to_markdown();
        let short = "| direct | 64 | 0.716 | 0.702 |";
        let err = parse_table(&format!("{good}\n{short}\n")).unwrap_err();
        assert!(err.starts_with("line 2: 4 cells, expected 11"), "{err}");
        let word = good.replace("0.950", "high");
        let err = parse_table(&word).unwrap_err();
        assert!(err.contains("`high` is not a number"), "{err}");
    }

    #[test]
    fn runs_merge_into_the_mean_of_each_cell_in_order_of_first_appearance() {
        let first = vec![row("direct", 16, 0.9), row("direct", 256, 0.6)];
        let mut late = row("direct", 256, 0.8);
        late.seconds = 43.8;
        late.travel_direction = 0.167;
        let second = vec![late, row("fifo", 256, 0.5)];
        let merged = merge_runs(&[first, second]).unwrap();
        let cells: Vec<(&str, usize, usize)> = merged
            .iter()
            .map(|(r, n)| (r.method.as_str(), r.frames, *n))
            .collect();
        assert_eq!(
            cells,
            [("direct", 16, 1), ("direct", 256, 2), ("fifo", 256, 1)]
        );
        let mean = &merged[1].0;
        assert!((mean.scores.validity - 0.7).abs() < 1e-6);
        assert!((mean.travel_direction - 0.117).abs() < 1e-6);
        assert_eq!(mean.seconds, 41.8);
        assert!((mean.scores.consistency - 0.851).abs() < 1e-6);
        assert_eq!(merged[0].0, row("direct", 16, 0.9));
    }

    #[test]
    fn a_run_holding_a_cell_twice_is_refused() {
        let twice = vec![row("direct", 16, 0.9), row("direct", 16, 0.8)];
        let err = merge_runs(&[vec![], twice]).unwrap_err();
        assert_eq!(err, "run 2 holds `direct` at 16 frames twice");
    }

    #[test]
    fn plots_need_rows() {
        let dir = std::env::temp_dir().join("vdm-quality-table-empty");
        assert_eq!(write_plots(&dir, &[]).unwrap_err(), "no table rows to plot");
    }
}
