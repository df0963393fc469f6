//! Line plots (SVG and PNG) of per-step curves: one line per series, optional shaded band.

use crate::{Error, Result};
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use std::path::{Path, PathBuf};
use std::sync::Once;

/// DejaVu Sans (Bitstream Vera licence, see `assets/fonts/NOTICE`), used for PNG text.
static FONT: &[u8] = include_bytes!("../../assets/fonts/DejaVuSans.ttf");
static FONT_ONCE: Once = Once::new();

/// Registers the embedded font as plotters' "sans-serif" (once per process).
fn register_font() {
    FONT_ONCE.call_once(|| {
        // The font is embedded at compile time and known to parse; a failure would only lose PNG text,
        // which the plot call then reports as an error.
        let _ = plotters::style::register_font("sans-serif", FontStyle::Normal, FONT);
    });
}

/// Distinct colours (matplotlib's tab10).
pub const PALETTE: [RGBColor; 10] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
];

/// One line of a plot.
#[derive(Debug, Clone)]
pub struct Series {
    /// Legend label.
    pub label: String,
    /// Line colour.
    pub color: RGBColor,
    /// Dashed instead of solid.
    pub dashed: bool,
    /// (x, y) points, by increasing x.
    pub points: Vec<(f64, f64)>,
    /// Shaded band (x, low, high), by increasing x; empty for none.
    pub band: Vec<(f64, f64, f64)>,
}

/// One figure.
#[derive(Debug, Clone)]
pub struct PlotSpec {
    /// File name without extension (`<stem>.svg` and `<stem>.png` are written).
    pub stem: String,
    /// Title.
    pub title: String,
    /// X-axis label.
    pub x_label: String,
    /// Y-axis label.
    pub y_label: String,
    /// The lines.
    pub series: Vec<Series>,
}

/// Plot size in pixels.
const SIZE: (u32, u32) = (960, 600);

fn draw_err<E: std::fmt::Debug>(stem: &str) -> impl Fn(E) -> Error + '_ {
    move |e| Error::Io(std::io::Error::other(format!("plot {stem}: {e:?}")))
}

/// Data range of a plot, padded; a flat or empty range is widened.
fn ranges(spec: &PlotSpec) -> (std::ops::Range<f64>, std::ops::Range<f64>) {
    let (mut x0, mut x1, mut y0, mut y1) = (
        f64::INFINITY,
        f64::NEG_INFINITY,
        f64::INFINITY,
        f64::NEG_INFINITY,
    );
    for s in &spec.series {
        let pts = s.points.iter().map(|&(x, y)| (x, y, y));
        for (x, lo, hi) in pts.chain(s.band.iter().copied()) {
            if x.is_finite() && lo.is_finite() && hi.is_finite() {
                x0 = x0.min(x);
                x1 = x1.max(x);
                y0 = y0.min(lo);
                y1 = y1.max(hi);
            }
        }
    }
    if !x0.is_finite() {
        return (0.0..1.0, 0.0..1.0);
    }
    if x1 - x0 < 1e-12 {
        x0 -= 1.0;
        x1 += 1.0;
    }
    let pad = if y1 - y0 < 1e-12 {
        y0.abs().max(1.0) * 0.05
    } else {
        (y1 - y0) * 0.08
    };
    (x0..x1, (y0 - pad)..(y1 + pad))
}

/// Curves with at most this many points get point markers.
const MARKER_MAX_POINTS: usize = 25;

/// Width of the legend panel right of the chart, in pixels.
const LEGEND_W: u32 = 210;

fn draw<DB: DrawingBackend>(root: DrawingArea<DB, Shift>, spec: &PlotSpec) -> Result<()>
where
    DB::ErrorType: 'static,
{
    let err = draw_err(&spec.stem);
    root.fill(&WHITE).map_err(&err)?;
    let body = root
        .margin(8, 0, 0, 0)
        .titled(&spec.title, ("sans-serif", 24))
        .map_err(&err)?;
    let (w, _) = body.dim_in_pixel();
    let (plot_area, legend_area) = body.split_horizontally(w.saturating_sub(LEGEND_W));
    let (xr, yr) = ranges(spec);
    let span = (xr.end - xr.start).round().max(1.0) as usize;
    let mut chart = ChartBuilder::on(&plot_area)
        .margin(14)
        .x_label_area_size(52)
        .y_label_area_size(80)
        .build_cartesian_2d(xr.clone(), yr.clone())
        .map_err(&err)?;
    // Steps are integers: fractional ticks get no label.
    let x_fmt = |x: &f64| {
        if (x - x.round()).abs() < 1e-9 {
            format!("{}", x.round() as i64)
        } else {
            String::new()
        }
    };
    chart
        .configure_mesh()
        .x_desc(&spec.x_label)
        .y_desc(&spec.y_label)
        .x_labels((span + 1).min(12))
        .x_label_formatter(&x_fmt)
        .axis_desc_style(("sans-serif", 20))
        .label_style(("sans-serif", 16))
        .light_line_style(RGBColor(244, 244, 244))
        .bold_line_style(RGBColor(215, 215, 215))
        .draw()
        .map_err(&err)?;
    let has_data = spec.series.iter().any(|s| !s.points.is_empty());
    if !has_data {
        let mid = ((xr.start + xr.end) / 2.0, (yr.start + yr.end) / 2.0);
        chart
            .draw_series(std::iter::once(Text::new(
                "no data",
                mid,
                ("sans-serif", 24).into_font().color(&BLACK),
            )))
            .map_err(&err)?;
        root.present().map_err(&err)?;
        return Ok(());
    }
    for s in spec.series.iter().filter(|s| s.band.len() > 1) {
        let mut poly: Vec<(f64, f64)> = s.band.iter().map(|&(x, _, hi)| (x, hi)).collect();
        poly.extend(s.band.iter().rev().map(|&(x, lo, _)| (x, lo)));
        chart
            .draw_series(std::iter::once(Polygon::new(
                poly,
                s.color.mix(0.18).filled(),
            )))
            .map_err(&err)?;
    }
    for s in spec.series.iter().filter(|s| !s.points.is_empty()) {
        let style = s.color.stroke_width(3);
        if s.points.len() == 1 {
            chart
                .draw_series(std::iter::once(Circle::new(s.points[0], 5, style.filled())))
                .map_err(&err)?;
        } else if s.dashed {
            chart
                .draw_series(DashedLineSeries::new(
                    s.points.iter().copied(),
                    10,
                    6,
                    style,
                ))
                .map_err(&err)?;
        } else {
            chart
                .draw_series(LineSeries::new(s.points.iter().copied(), style))
                .map_err(&err)?;
        }
        // Sparse curves (held-out evaluations, short runs) get a marker at each measured point.
        if s.points.len() > 1 && s.points.len() <= MARKER_MAX_POINTS {
            chart
                .draw_series(s.points.iter().map(|&p| Circle::new(p, 4, style.filled())))
                .map_err(&err)?;
        }
    }
    // Legend in its own panel, so it never hides data.
    let font = ("sans-serif", 17)
        .into_font()
        .color(&BLACK)
        .pos(Pos::new(HPos::Left, VPos::Center));
    let mut y = 30;
    for s in spec.series.iter().filter(|s| !s.points.is_empty()) {
        let style = s.color.stroke_width(3);
        let segments: Vec<(i32, i32)> = if s.dashed {
            vec![(8, 16), (22, 30), (36, 44)]
        } else {
            vec![(8, 44)]
        };
        if !s.band.is_empty() {
            legend_area
                .draw(&Rectangle::new(
                    [(8, y - 7), (44, y + 7)],
                    s.color.mix(0.18).filled(),
                ))
                .map_err(&err)?;
        }
        for (a, b) in segments {
            legend_area
                .draw(&PathElement::new(vec![(a, y), (b, y)], style))
                .map_err(&err)?;
        }
        legend_area
            .draw(&Text::new(s.label.clone(), (52, y), font.clone()))
            .map_err(&err)?;
        y += 28;
    }
    root.present().map_err(&err)?;
    Ok(())
}

/// Draws `spec` into `<dir>/<stem>.svg` and `<dir>/<stem>.png` (each written atomically);
/// returns the two paths.
pub fn write_plot(dir: &Path, spec: &PlotSpec) -> Result<(PathBuf, PathBuf)> {
    register_font();
    let svg_path = dir.join(format!("{}.svg", spec.stem));
    let png_path = dir.join(format!("{}.png", spec.stem));
    let mut svg = String::new();
    draw(
        SVGBackend::with_string(&mut svg, SIZE).into_drawing_area(),
        spec,
    )?;
    crate::atomic::write(&svg_path, svg.as_bytes())?;
    // The bitmap backend picks the encoder from the extension, so the temporary name ends in .png.
    crate::atomic::write_with(&png_path, ".png", |tmp| {
        draw(BitMapBackend::new(tmp, SIZE).into_drawing_area(), spec)
    })?;
    Ok((svg_path, png_path))
}
