//! Line charts as PNG files (the training loss curve, the quality benchmark's metrics against
//! video length), drawn with `plotters` on its bitmap backend.
//!
//! Text is drawn with `ab_glyph` from a TrueType font read at run time (DejaVu Sans by default,
//! `VDM_PLOT_FONT` to choose another), so no fontconfig / freetype system library is needed.

use std::path::Path;
use std::sync::OnceLock;

use plotters::prelude::*;
use plotters::style::{FontStyle, register_font};

/// Where the default font is looked for.
const FONT_PATHS: &[&str] = &[
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
];

/// The family name the font is registered under.
const FAMILY: &str = "vdm-sans";

/// Registers the font once; the error says where it was looked for.
fn font() -> Result<(), String> {
    static REGISTERED: OnceLock<Result<(), String>> = OnceLock::new();
    REGISTERED
        .get_or_init(|| {
            let paths: Vec<String> = match std::env::var("VDM_PLOT_FONT") {
                Ok(p) => vec![p],
                Err(_) => FONT_PATHS.iter().map(|p| p.to_string()).collect(),
            };
            let bytes = paths
                .iter()
                .find_map(|p| std::fs::read(p).ok())
                .ok_or_else(|| {
                    format!(
                        "no TrueType font for the plot text: tried {}; set VDM_PLOT_FONT",
                        paths.join(", ")
                    )
                })?;
            let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
            register_font(FAMILY, FontStyle::Normal, bytes)
                .map_err(|_| "the plot font is not a valid TrueType font".to_string())
        })
        .clone()
}

/// One line of a chart.
#[derive(Debug, Clone)]
pub struct Series {
    /// Legend label.
    pub label: String,
    /// `(x, y)` points, in order.
    pub points: Vec<(f64, f64)>,
}

/// How a chart looks.
#[derive(Debug, Clone)]
pub struct Chart<'a> {
    /// Title above the plot.
    pub title: &'a str,
    /// X axis label.
    pub x_label: &'a str,
    /// Y axis label.
    pub y_label: &'a str,
    /// Logarithmic y axis.
    pub log_y: bool,
    /// Logarithmic x axis (base 2).
    pub log_x: bool,
}

/// Draws `series` as lines (with markers when a series has few points) into a 900×560 PNG.
///
/// # Errors
/// A message when the font is missing, a series is empty, or the file cannot be written.
pub fn line_chart(path: &Path, chart: &Chart<'_>, series: &[Series]) -> Result<(), String> {
    font()?;
    let all: Vec<(f64, f64)> = series
        .iter()
        .flat_map(|s| s.points.iter().copied())
        .collect();
    if all.is_empty() {
        return Err("nothing to plot".into());
    }
    let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
    for (x, y) in &all {
        x0 = x0.min(*x);
        x1 = x1.max(*x);
        y0 = y0.min(*y);
        y1 = y1.max(*y);
    }
    if x1 <= x0 {
        x1 = x0 + 1.0;
    }
    if chart.log_y {
        y0 = y0.max(1e-6) * 0.8;
        y1 *= 1.25;
    } else {
        let pad = ((y1 - y0) * 0.08).max(1e-3);
        (y0, y1) = (y0 - pad, y1 + pad);
    }
    let root = BitMapBackend::new(path, (900, 560)).into_drawing_area();
    let draw = |e: &dyn std::fmt::Display| format!("{}: {e}", path.display());
    root.fill(&WHITE).map_err(|e| draw(&e))?;
    let mut builder = ChartBuilder::on(&root);
    builder
        .caption(chart.title, (FAMILY, 24))
        .margin(16)
        .x_label_area_size(48)
        .y_label_area_size(72);
    let palette = [
        RGBColor(31, 119, 180),
        RGBColor(255, 127, 14),
        RGBColor(44, 160, 44),
        RGBColor(214, 39, 40),
        RGBColor(148, 103, 189),
        RGBColor(140, 86, 75),
    ];
    macro_rules! draw_series {
        ($ctx:expr) => {{
            let mut ctx = $ctx;
            ctx.configure_mesh()
                .x_desc(chart.x_label)
                .y_desc(chart.y_label)
                .label_style((FAMILY, 15))
                .x_label_formatter(&|v| format_tick(*v))
                .y_label_formatter(&|v| format_tick(*v))
                .axis_desc_style((FAMILY, 17))
                .draw()
                .map_err(|e| draw(&e))?;
            for (i, s) in series.iter().enumerate() {
                let colour = palette[i % palette.len()];
                ctx.draw_series(LineSeries::new(
                    s.points.iter().copied(),
                    colour.stroke_width(2),
                ))
                .map_err(|e| draw(&e))?
                .label(s.label.clone())
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], colour.stroke_width(2))
                });
                if s.points.len() <= 12 {
                    ctx.draw_series(s.points.iter().map(|p| Circle::new(*p, 4, colour.filled())))
                        .map_err(|e| draw(&e))?;
                }
            }
            if series.len() > 1 {
                ctx.configure_series_labels()
                    .background_style(WHITE.mix(0.85))
                    .border_style(BLACK)
                    .label_font((FAMILY, 15))
                    .draw()
                    .map_err(|e| draw(&e))?;
            }
        }};
    }
    match (chart.log_x, chart.log_y) {
        (false, false) => draw_series!(
            builder
                .build_cartesian_2d(x0..x1, y0..y1)
                .map_err(|e| draw(&e))?
        ),
        (false, true) => draw_series!(
            builder
                .build_cartesian_2d(x0..x1, (y0..y1).log_scale())
                .map_err(|e| draw(&e))?
        ),
        (true, false) => draw_series!(
            builder
                .build_cartesian_2d((x0..x1).log_scale().base(2.0), y0..y1)
                .map_err(|e| draw(&e))?
        ),
        (true, true) => draw_series!(
            builder
                .build_cartesian_2d((x0..x1).log_scale().base(2.0), (y0..y1).log_scale())
                .map_err(|e| draw(&e))?
        ),
    }
    root.present().map_err(|e| draw(&e))
}

/// A tick label with at most three significant decimals and no float noise.
fn format_tick(v: f64) -> String {
    if v == v.round() && v.abs() < 1e9 {
        format!("{v:.0}")
    } else if v.abs() >= 0.1 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}

/// The training loss curve from a `loss.csv` of the `train` example (raw losses and their
/// 50-step moving average, log scale).
///
/// # Errors
/// A message when the CSV cannot be read or the chart cannot be drawn.
pub fn loss_curve(csv: &Path, png: &Path) -> Result<(), String> {
    let text = std::fs::read_to_string(csv).map_err(|e| format!("{}: {e}", csv.display()))?;
    let mut points = Vec::new();
    for line in text.lines().skip(1) {
        let mut fields = line.split(',');
        let (Some(step), Some(loss)) = (fields.next(), fields.next()) else {
            continue;
        };
        if let (Ok(step), Ok(loss)) = (step.parse::<f64>(), loss.parse::<f64>()) {
            points.push((step, loss));
        }
    }
    let window = 50;
    let average: Vec<(f64, f64)> = (window..=points.len())
        .map(|end| {
            let slice = &points[end - window..end];
            (
                slice[window - 1].0,
                slice.iter().map(|p| p.1).sum::<f64>() / window as f64,
            )
        })
        .collect();
    line_chart(
        png,
        &Chart {
            title: "Moving Shapes model: training loss (x0-prediction MSE)",
            x_label: "step",
            y_label: "loss",
            log_y: true,
            log_x: false,
        },
        &[
            Series {
                label: "per step".into(),
                points,
            },
            Series {
                label: format!("mean of {window} steps"),
                points: average,
            },
        ],
    )
}
