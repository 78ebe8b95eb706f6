//! PNG plots for a fine-tuning run: training curves (loss on the left,
//! validation accuracy and macro-F1 on the right, per epoch) and a confusion
//! matrix heat map with the count written in every cell.
//!
//! Everything is drawn with `plotters` on its bitmap backend, using the DejaVu
//! Sans font that is compiled into the binary. This module does no IO other
//! than writing the PNG files it is asked for: it reads no files and creates
//! no directories.

use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Once;

use plotters::coord::ranged1d::{DefaultFormatting, KeyPointHint};
use plotters::coord::types::RangedCoordf64;
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::full_palette::{BLUE_700, GREEN_700, ORANGE_800, PURPLE_500};
use plotters::style::text_anchor::{HPos, Pos, VPos};

/// Font family used for every piece of text.
const FONT: &str = "sans-serif";
static FONT_BYTES: &[u8] = include_bytes!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../assets/fonts/DejaVuSans.ttf"
));
static FONT_REGISTRATION: Once = Once::new();
static FONT_REGISTERED: AtomicBool = AtomicBool::new(false);

const CURVES_SIZE: (u32, u32) = (1600, 700);
const MATRIX_SIZE: (u32, u32) = (800, 700);

const TITLE_FONT: u32 = 30;
const CAPTION_FONT: u32 = 24;
const DESC_FONT: u32 = 21;
const LABEL_FONT: u32 = 18;
const LEGEND_FONT: u32 = 18;

/// Height of the strip above each curve panel that holds its legend.
const LEGEND_STRIP: u32 = 48;
const CURVE_X_LABEL_AREA: u32 = 62;
const CURVE_Y_LABEL_AREA: u32 = 92;
const CURVE_MARGIN_RIGHT: u32 = 24;
/// At most this many epoch ticks are labelled.
const MAX_EPOCH_TICKS: usize = 12;
/// About this many y ticks are labelled on the curve panels.
const Y_TICKS: usize = 10;

const COLORBAR_WIDTH: u32 = 120;
/// Class names longer than this are shortened with an ellipsis.
const MAX_LABEL_CHARS: usize = 24;

/// Errors from drawing a plot.
#[derive(Debug, thiserror::Error)]
pub enum PlotError {
    /// There was nothing to draw.
    #[error("nothing to plot: {0}")]
    Empty(&'static str),
    /// The confusion matrix is not square with one row and column per label.
    #[error("confusion matrix shape mismatch: {0}")]
    Shape(String),
    /// The bundled font could not be registered with plotters.
    #[error("the bundled plot font (DejaVu Sans) could not be loaded")]
    Font,
    /// Drawing or writing the PNG file failed.
    #[error("failed to draw plot {}: {message}", path.display())]
    Draw {
        /// The PNG file that was being written.
        path: PathBuf,
        /// What plotters reported.
        message: String,
    },
}

impl PlotError {
    fn draw(path: &Path, err: impl std::fmt::Display) -> Self {
        Self::Draw {
            path: path.to_path_buf(),
            message: err.to_string(),
        }
    }
}

/// One epoch of a training run (epochs are numbered from 1).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CurvePoint {
    pub epoch: usize,
    pub train_loss: f64,
    pub val_loss: f64,
    pub val_accuracy: f64,
    pub val_macro_f1: f64,
}

/// Training curves: left panel loss (train and validation) per epoch, right
/// panel validation accuracy and macro-F1 per epoch. 1600x700 px.
///
/// Points may come in any order; non-finite values are left out of the plot.
pub fn training_curves(path: &Path, title: &str, points: &[CurvePoint]) -> Result<(), PlotError> {
    if points.is_empty() {
        return Err(PlotError::Empty("training curves need at least one epoch"));
    }
    ensure_font()?;
    let mut points = points.to_vec();
    points.sort_by_key(|p| p.epoch);
    let root = BitMapBackend::new(path, CURVES_SIZE).into_drawing_area();
    draw_curves(&root, title, &points)
        .and_then(|()| root.present())
        .map_err(|e| PlotError::draw(path, e))
}

/// Confusion matrix heat map with counts written in each cell (rows = true
/// label, columns = predicted label), axis titles "true" / "predicted", class
/// names as tick labels. 800x700 px.
///
/// `matrix[i][j]` counts the examples of true class `labels[i]` predicted as
/// `labels[j]`.
pub fn confusion_matrix(
    path: &Path,
    title: &str,
    labels: &[String],
    matrix: &[Vec<u64>],
) -> Result<(), PlotError> {
    if labels.is_empty() {
        return Err(PlotError::Empty(
            "confusion matrix needs at least one class",
        ));
    }
    let n = labels.len();
    if matrix.len() != n {
        return Err(PlotError::Shape(format!(
            "{n} labels but {} rows",
            matrix.len()
        )));
    }
    if let Some((i, row)) = matrix.iter().enumerate().find(|(_, row)| row.len() != n) {
        return Err(PlotError::Shape(format!(
            "{n} labels but row {i} has {} columns",
            row.len()
        )));
    }
    ensure_font()?;
    let root = BitMapBackend::new(path, MATRIX_SIZE).into_drawing_area();
    draw_matrix(&root, title, labels, matrix)
        .and_then(|()| root.present())
        .map_err(|e| PlotError::draw(path, e))
}

/// Registers the bundled font under [`FONT`], once per process.
fn ensure_font() -> Result<(), PlotError> {
    FONT_REGISTRATION.call_once(|| {
        let ok = plotters::style::register_font(FONT, FontStyle::Normal, FONT_BYTES).is_ok();
        FONT_REGISTERED.store(ok, Ordering::Release);
    });
    if FONT_REGISTERED.load(Ordering::Acquire) {
        Ok(())
    } else {
        Err(PlotError::Font)
    }
}

type DrawResult<T, DB> = Result<T, DrawingAreaErrorKind<<DB as DrawingBackend>::ErrorType>>;

fn text_style(size: u32, color: &RGBColor) -> TextStyle<'static> {
    (FONT, size).into_font().color(color)
}

/// How far (in pixels) to move a vertically centred label down so that it
/// looks centred: plotters' ab_glyph layout puts such text a little high.
fn centre_nudge(font_size: u32) -> i32 {
    (f64::from(font_size) * 0.2).round() as i32
}

/// A linear f64 axis whose (only) ticks are the given values.
#[derive(Clone)]
struct TickedAxis {
    range: Range<f64>,
    ticks: Vec<f64>,
}

impl Ranged for TickedAxis {
    type FormatOption = DefaultFormatting;
    type ValueType = f64;

    fn map(&self, value: &f64, limit: (i32, i32)) -> i32 {
        RangedCoordf64::from(self.range.clone()).map(value, limit)
    }

    fn key_points<Hint: KeyPointHint>(&self, hint: Hint) -> Vec<f64> {
        if hint.weight().allow_light_points() {
            Vec::new()
        } else {
            self.ticks.clone()
        }
    }

    fn range(&self) -> Range<f64> {
        self.range.clone()
    }
}

// ---------------------------------------------------------------------------
// Training curves

#[derive(Clone, Copy)]
enum Marker {
    Circle,
    Triangle,
}

struct Series {
    label: &'static str,
    color: RGBColor,
    marker: Marker,
    data: Vec<(f64, f64)>,
}

impl Series {
    fn new(
        label: &'static str,
        color: RGBColor,
        marker: Marker,
        points: &[CurvePoint],
        value: impl Fn(&CurvePoint) -> f64,
    ) -> Self {
        Self {
            label,
            color,
            marker,
            data: points.iter().map(|p| (p.epoch as f64, value(p))).collect(),
        }
    }

    fn finite_values(&self) -> impl Iterator<Item = f64> + '_ {
        self.data.iter().map(|&(_, y)| y).filter(|y| y.is_finite())
    }

    /// Runs of consecutive finite points; a non-finite value breaks the line.
    fn segments(&self) -> Vec<Vec<(f64, f64)>> {
        let mut segments = Vec::new();
        let mut current = Vec::new();
        for &(x, y) in &self.data {
            if y.is_finite() {
                current.push((x, y));
            } else if !current.is_empty() {
                segments.push(std::mem::take(&mut current));
            }
        }
        segments.push(current);
        segments.retain(|s| s.len() > 1);
        segments
    }
}

fn draw_curves<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    title: &str,
    points: &[CurvePoint],
) -> DrawResult<(), DB> {
    root.fill(&WHITE)?;
    let body = root
        .margin(8, 8, 8, 8)
        .titled(title, text_style(TITLE_FONT, &BLACK))?;
    let panels = body.split_evenly((1, 2));
    let epochs = epoch_axis(points);

    let loss = [
        Series::new("train loss", BLUE_700, Marker::Circle, points, |p| {
            p.train_loss
        }),
        Series::new(
            "validation loss",
            ORANGE_800,
            Marker::Triangle,
            points,
            |p| p.val_loss,
        ),
    ];
    let loss_range = data_range(loss.iter().flat_map(Series::finite_values));

    let scores = [
        Series::new("accuracy", GREEN_700, Marker::Circle, points, |p| {
            p.val_accuracy
        }),
        Series::new("macro-F1", PURPLE_500, Marker::Triangle, points, |p| {
            p.val_macro_f1
        }),
    ];
    let score_range = score_range(scores.iter().flat_map(Series::finite_values));

    let loss_panel = Panel {
        caption: "loss",
        y_desc: "loss",
        y_range: loss_range,
        series: &loss,
    };
    let score_panel = Panel {
        caption: "validation metrics",
        y_desc: "score",
        y_range: score_range,
        series: &scores,
    };
    draw_panel(&panels[0], &epochs, loss_panel)?;
    draw_panel(&panels[1], &epochs, score_panel)?;
    Ok(())
}

/// The epoch (x) axis: a padded range with integer ticks.
fn epoch_axis(points: &[CurvePoint]) -> TickedAxis {
    let min = points.iter().map(|p| p.epoch).min().unwrap_or(1);
    let max = points.iter().map(|p| p.epoch).max().unwrap_or(1);
    // `first` is at most 1, so the arithmetic below cannot overflow.
    let first = min.min(1);
    let last = max.max(first);
    let span = last - first;
    let step = nice_step(span, MAX_EPOCH_TICKS);
    let mut ticks = vec![first];
    if step <= 2 {
        ticks.extend((first + step..=last).step_by(step));
    } else {
        // `first`, then the round multiples of the step not too close to it.
        let mut tick = step;
        while tick <= last {
            if tick - first >= step - step / 2 {
                ticks.push(tick);
            }
            match tick.checked_add(step) {
                Some(next) => tick = next,
                None => break,
            }
        }
    }
    let pad = (span as f64 * 0.03).max(0.5);
    TickedAxis {
        range: first as f64 - pad..last as f64 + pad,
        ticks: ticks.into_iter().map(|t| t as f64).collect(),
    }
}

/// The smallest of 1, 2, 5, 10, 20, 50, ... that splits `span` into at most
/// `max_ticks` ticks.
fn nice_step(span: usize, max_ticks: usize) -> usize {
    let max_intervals = max_ticks.saturating_sub(1).max(1);
    let mut magnitude = 1usize;
    loop {
        for factor in [1usize, 2, 5] {
            let step = factor.saturating_mul(magnitude);
            if span.div_ceil(step) <= max_intervals {
                return step;
            }
        }
        magnitude = match magnitude.checked_mul(10) {
            Some(m) => m,
            None => return usize::MAX,
        };
    }
}

/// The range of finite `values` with some room above and below, never empty.
fn data_range(values: impl Iterator<Item = f64>) -> Range<f64> {
    let Some((lo, hi)) = min_max(values) else {
        return 0.0..1.0;
    };
    let span = hi - lo;
    let pad = if span > 0.0 {
        span * 0.08
    } else {
        (hi.abs() * 0.1).max(0.05)
    };
    lo - pad..hi + pad
}

/// From a bit below the lowest score to 1.0 (plus a sliver of headroom so a
/// marker at 1.0 is drawn whole).
fn score_range(values: impl Iterator<Item = f64>) -> Range<f64> {
    let (lo, hi) = min_max(values).unwrap_or((0.0, 1.0));
    let top = hi.max(1.0);
    let pad = ((top - lo) * 0.1).max(0.02);
    // At least 0.1 tall, so two-decimal tick labels stay distinct.
    let bottom = (lo - pad).min(top - 0.1);
    bottom..top + (top - bottom) * 0.015
}

/// Decimals needed to tell evenly spaced `ticks` apart (two for one tick).
fn tick_decimals(ticks: &[f64]) -> usize {
    let step = ticks
        .windows(2)
        .map(|w| (w[1] - w[0]).abs())
        .fold(f64::INFINITY, f64::min);
    if !step.is_finite() || step <= 0.0 {
        return 2;
    }
    (-step.log10() - 1e-9).ceil().clamp(0.0, 8.0) as usize
}

fn min_max(values: impl Iterator<Item = f64>) -> Option<(f64, f64)> {
    values.fold(None, |acc, v| match acc {
        None => Some((v, v)),
        Some((lo, hi)) => Some((lo.min(v), hi.max(v))),
    })
}

/// One of the two side-by-side curve charts.
struct Panel<'a> {
    caption: &'a str,
    y_desc: &'a str,
    y_range: Range<f64>,
    series: &'a [Series],
}

fn draw_panel<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    epochs: &TickedAxis,
    panel: Panel<'_>,
) -> DrawResult<(), DB> {
    let Panel {
        caption,
        y_desc,
        y_range,
        series,
    } = panel;
    let area = area
        .margin(4, 6, 12, 12)
        .titled(caption, text_style(CAPTION_FONT, &BLACK))?;
    let (legend_area, chart_area) = area.split_vertically(LEGEND_STRIP);
    // plotters' own round ticks, labelled with one number of decimals.
    let y_ticks = RangedCoordf64::from(y_range.clone()).key_points(Y_TICKS);
    let decimals = tick_decimals(&y_ticks);
    let y_axis = TickedAxis {
        range: y_range,
        ticks: y_ticks,
    };
    draw_legend(&legend_area, series)?;

    let mut chart = ChartBuilder::on(&chart_area)
        .margin_top(8)
        .margin_right(CURVE_MARGIN_RIGHT)
        .x_label_area_size(CURVE_X_LABEL_AREA)
        .y_label_area_size(CURVE_Y_LABEL_AREA)
        .build_cartesian_2d(epochs.clone(), y_axis)?;

    let format_epoch = |v: &f64| format!("{}", v.round() as i64);
    let format_y = |v: &f64| format!("{v:.decimals$}");
    chart
        .configure_mesh()
        .x_desc("epoch")
        .y_desc(y_desc)
        .x_label_formatter(&format_epoch)
        .y_label_formatter(&format_y)
        .label_style(text_style(LABEL_FONT, &BLACK))
        .y_label_offset(centre_nudge(LABEL_FONT))
        .axis_desc_style(text_style(DESC_FONT, &BLACK))
        .set_all_tick_mark_size(5)
        .bold_line_style(BLACK.mix(0.15))
        .draw()?;

    for s in series {
        let line = ShapeStyle::from(&s.color).stroke_width(3);
        for segment in s.segments() {
            chart.draw_series(LineSeries::new(segment, line))?;
        }
        let finite = s.data.iter().copied().filter(|(_, y)| y.is_finite());
        let fill = s.color.filled();
        match s.marker {
            Marker::Circle => chart.draw_series(finite.map(|p| Circle::new(p, 5, fill)))?,
            Marker::Triangle => {
                chart.draw_series(finite.map(|p| TriangleMarker::new(p, 7, fill)))?
            }
        };
    }
    Ok(())
}

/// A boxed, single-row legend centred over the plot area of the panel below.
fn draw_legend<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    series: &[Series],
) -> DrawResult<(), DB> {
    const SAMPLE: i32 = 40;
    const GAP: i32 = 8;
    const SPACING: i32 = 30;
    const PAD: i32 = 14;
    const BOX_H: i32 = 34;

    let style = text_style(LEGEND_FONT, &BLACK).pos(Pos::new(HPos::Left, VPos::Center));
    let mut widths = Vec::with_capacity(series.len());
    for s in series {
        widths.push(area.estimate_text_size(s.label, &style)?.0 as i32);
    }
    let content: i32 = widths.iter().map(|w| SAMPLE + GAP + w).sum::<i32>()
        + SPACING * (series.len() as i32 - 1).max(0);
    let box_w = content + 2 * PAD;

    let (w, h) = area.dim_in_pixel();
    let (w, h) = (w as i32, h as i32);
    let plot_left = CURVE_Y_LABEL_AREA as i32;
    let plot_right = w - CURVE_MARGIN_RIGHT as i32;
    let x0 = ((plot_left + plot_right - box_w) / 2).max(0);
    let y0 = ((h - BOX_H) / 2).max(0);
    let corners = [(x0, y0), (x0 + box_w, y0 + BOX_H)];
    area.draw(&Rectangle::new(corners, WHITE.filled()))?;
    area.draw(&Rectangle::new(corners, BLACK.mix(0.55).stroke_width(1)))?;

    let cy = y0 + BOX_H / 2;
    let mut x = x0 + PAD;
    for (s, width) in series.iter().zip(widths) {
        let line = ShapeStyle::from(&s.color).stroke_width(3);
        area.draw(&PathElement::new(vec![(x, cy), (x + SAMPLE, cy)], line))?;
        let centre = (x + SAMPLE / 2, cy);
        match s.marker {
            Marker::Circle => area.draw(&Circle::new(centre, 5, s.color.filled()))?,
            Marker::Triangle => area.draw(&TriangleMarker::new(centre, 7, s.color.filled()))?,
        }
        let text_pos = (x + SAMPLE + GAP, cy + centre_nudge(LEGEND_FONT));
        area.draw(&Text::new(s.label, text_pos, style.clone()))?;
        x += SAMPLE + GAP + width + SPACING;
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Confusion matrix

fn draw_matrix<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    title: &str,
    labels: &[String],
    matrix: &[Vec<u64>],
) -> DrawResult<(), DB> {
    root.fill(&WHITE)?;
    let body = root
        .margin(8, 8, 12, 12)
        .titled(title, text_style(TITLE_FONT, &BLACK))?;
    let n = labels.len();
    let labels: Vec<String> = labels.iter().map(|l| shorten(l)).collect();
    let max_count = matrix.iter().flatten().copied().max().unwrap_or(0);

    let (main_w, _) = body.dim_in_pixel();
    let (main, colorbar) = body.split_horizontally(main_w.saturating_sub(COLORBAR_WIDTH));

    // Size the label areas from the class names; turn the column labels
    // sideways when they do not fit under their column.
    let label_font = if n > 12 { 14 } else { LABEL_FONT };
    let label_style = text_style(label_font, &BLACK);
    let mut widest = 0u32;
    for label in &labels {
        widest = widest.max(main.estimate_text_size(label, &label_style)?.0);
    }
    let y_label_area = widest + 52;
    let margin_right = 16;
    let plot_w = main_w
        .saturating_sub(COLORBAR_WIDTH + y_label_area + margin_right)
        .max(1);
    let rotate = widest + 10 > plot_w / n as u32;
    let x_label_area = if rotate { widest + 56 } else { 64 };

    let size = n as f64;
    let centres: Vec<f64> = (0..n).map(|i| i as f64 + 0.5).collect();
    let mut chart = ChartBuilder::on(&main)
        .margin_top(10)
        .margin_right(margin_right)
        .x_label_area_size(x_label_area)
        .y_label_area_size(y_label_area)
        .build_cartesian_2d(
            TickedAxis {
                range: 0.0..size,
                ticks: centres.clone(),
            },
            TickedAxis {
                range: 0.0..size,
                ticks: centres,
            },
        )?;

    // Cells: row `i` (true label) is drawn from the top down.
    let (plot_w, plot_h) = chart.plotting_area().dim_in_pixel();
    let cell_px = (plot_w.min(plot_h) as f64 / size).max(1.0);
    let widest_count = matrix
        .iter()
        .flatten()
        .map(|c| c.to_string())
        .max_by_key(String::len)
        .unwrap_or_default();
    let mut count_font = (cell_px * 0.3).clamp(9.0, 30.0);
    let probe = main.estimate_text_size(&widest_count, &text_style(count_font as u32, &BLACK))?;
    if probe.0 as f64 > cell_px * 0.85 {
        count_font = (count_font * cell_px * 0.85 / probe.0 as f64).max(7.0);
    }
    let count_font = count_font as u32;

    for (i, row) in matrix.iter().enumerate() {
        let top = size - i as f64;
        for (j, &count) in row.iter().enumerate() {
            let colour = cell_colour(count, max_count);
            let corners = [(j as f64, top - 1.0), (j as f64 + 1.0, top)];
            chart.draw_series([
                Rectangle::new(corners, colour.filled()),
                Rectangle::new(corners, WHITE.stroke_width(1)),
            ])?;
            let style = text_style(count_font, &text_colour(colour))
                .pos(Pos::new(HPos::Center, VPos::Center));
            let text = Text::new(count.to_string(), (0, centre_nudge(count_font)), style);
            chart.draw_series([EmptyElement::at((j as f64 + 0.5, top - 0.5)) + text])?;
        }
    }

    let label_at = |v: f64, flip: bool| {
        let idx = (v.floor().max(0.0) as usize).min(n - 1);
        labels[if flip { n - 1 - idx } else { idx }].clone()
    };
    // Sideways column labels are drawn below (plotters would centre them on
    // the tick, across the matrix); the mesh then only draws the tick marks.
    let x_label = |v: &f64| {
        if rotate {
            String::new()
        } else {
            label_at(*v, false)
        }
    };
    let y_label = |v: &f64| label_at(*v, true);
    chart
        .configure_mesh()
        .disable_mesh()
        .x_desc("predicted")
        .y_desc("true")
        .x_label_formatter(&x_label)
        .y_label_formatter(&y_label)
        .label_style(label_style.clone())
        .y_label_offset(centre_nudge(label_font))
        .set_all_tick_mark_size(5)
        .axis_desc_style(text_style(DESC_FONT, &BLACK))
        .draw()?;
    if rotate {
        // Rotated a quarter turn clockwise, the text runs down from its
        // anchor; "down" in the text's frame is to the left on the page.
        let style = label_style
            .transform(FontTransform::Rotate90)
            .pos(Pos::new(HPos::Left, VPos::Center));
        for (j, label) in labels.iter().enumerate() {
            let (x, y) = chart.backend_coord(&(j as f64 + 0.5, 0.0));
            let anchor = (x - centre_nudge(label_font), y + 12);
            root.draw(&Text::new(label.as_str(), anchor, style.clone()))?;
        }
    }

    draw_colorbar(&colorbar, max_count, x_label_area)
}

/// A vertical colour scale from 0 to `max_count`, aligned with the matrix.
fn draw_colorbar<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    max_count: u64,
    x_label_area: u32,
) -> DrawResult<(), DB> {
    const STEPS: u32 = 128;
    let top = max_count.max(1) as f64;
    let ticks = count_ticks(max_count.max(1));
    let mut chart = ChartBuilder::on(area)
        .margin_top(10)
        .margin_left(4)
        .margin_right(4)
        .x_label_area_size(x_label_area)
        .right_y_label_area_size(64)
        .build_cartesian_2d(
            0.0..1.0,
            TickedAxis {
                range: 0.0..top,
                ticks,
            },
        )?;
    chart.draw_series((0..STEPS).map(|k| {
        let lo = top * k as f64 / STEPS as f64;
        let hi = top * (k + 1) as f64 / STEPS as f64;
        let t = (k as f64 + 0.5) / STEPS as f64;
        Rectangle::new([(0.0, lo), (1.0, hi)], scale_colour(t).filled())
    }))?;
    chart.draw_series([Rectangle::new(
        [(0.0, 0.0), (1.0, top)],
        BLACK.mix(0.55).stroke_width(1),
    )])?;
    let format_count = |v: &f64| format!("{}", v.round() as u64);
    chart
        .configure_mesh()
        .disable_mesh()
        .disable_x_axis()
        .y_label_formatter(&format_count)
        .label_style(text_style(16, &BLACK))
        .y_label_offset(centre_nudge(16))
        .set_all_tick_mark_size(5)
        .draw()
}

/// Integer ticks from 0 to `max` with a 1-2-5 step, about 6 of them.
fn count_ticks(max: u64) -> Vec<f64> {
    let mut step = 1u64;
    'search: loop {
        for factor in [1, 2, 5] {
            let candidate = step.saturating_mul(factor);
            if max / candidate <= 6 || candidate == u64::MAX {
                step = candidate;
                break 'search;
            }
        }
        step = step.saturating_mul(10);
    }
    (0..=max / step).map(|k| (k * step) as f64).collect()
}

/// Colour of a cell holding `count` when the largest cell holds `max`.
fn cell_colour(count: u64, max: u64) -> RGBColor {
    if max == 0 {
        scale_colour(0.0)
    } else {
        scale_colour(count as f64 / max as f64)
    }
}

/// White (t = 0) through mid blue to dark blue (t = 1).
fn scale_colour(t: f64) -> RGBColor {
    const STOPS: [(f64, [f64; 3]); 3] = [
        (0.0, [255.0, 255.0, 255.0]),
        (0.5, [107.0, 174.0, 214.0]),
        (1.0, [8.0, 48.0, 107.0]),
    ];
    let t = if t.is_finite() {
        t.clamp(0.0, 1.0)
    } else {
        0.0
    };
    let (a, b) = if t <= STOPS[1].0 {
        (STOPS[0], STOPS[1])
    } else {
        (STOPS[1], STOPS[2])
    };
    let f = (t - a.0) / (b.0 - a.0);
    let channel = |k: usize| (a.1[k] + (b.1[k] - a.1[k]) * f).round() as u8;
    RGBColor(channel(0), channel(1), channel(2))
}

/// Black on light cells, white on dark ones.
fn text_colour(background: RGBColor) -> RGBColor {
    let RGBColor(r, g, b) = background;
    let luminance = 0.299 * r as f64 + 0.587 * g as f64 + 0.114 * b as f64;
    if luminance < 140.0 {
        WHITE
    } else {
        BLACK
    }
}

fn shorten(label: &str) -> String {
    if label.chars().count() <= MAX_LABEL_CHARS {
        label.to_string()
    } else {
        let mut short: String = label.chars().take(MAX_LABEL_CHARS - 1).collect();
        short.push('…');
        short
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::fs;
    use std::sync::atomic::AtomicUsize;

    const PNG_MAGIC: [u8; 8] = [0x89, b'P', b'N', b'G', b'\r', b'\n', 0x1a, b'\n'];

    /// A fresh, unique directory under the system temp dir, removed on drop.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(name: &str) -> Self {
            static COUNTER: AtomicUsize = AtomicUsize::new(0);
            let unique = format!(
                "plots-test-{}-{}-{name}",
                std::process::id(),
                COUNTER.fetch_add(1, Ordering::Relaxed)
            );
            let dir = std::env::temp_dir().join(unique);
            fs::create_dir_all(&dir).unwrap();
            Self(dir)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn assert_png(path: &Path) {
        let bytes = fs::read(path).unwrap();
        assert!(bytes.len() > PNG_MAGIC.len(), "{} is empty", path.display());
        assert_eq!(bytes[..8], PNG_MAGIC, "{} is not a PNG", path.display());
    }

    fn curve(epochs: usize) -> Vec<CurvePoint> {
        (1..=epochs)
            .map(|epoch| {
                let e = epoch as f64;
                CurvePoint {
                    epoch,
                    train_loss: 1.1 / e,
                    val_loss: 0.9 / e + 0.02 * e,
                    val_accuracy: 0.6 + 0.05 * e.min(6.0),
                    val_macro_f1: 0.55 + 0.05 * e.min(6.0),
                }
            })
            .collect()
    }

    fn labels() -> Vec<String> {
        ["negative", "neutral", "positive"]
            .map(String::from)
            .to_vec()
    }

    #[test]
    fn training_curves_writes_png() {
        let dir = TempDir::new("curves");
        let path = dir.0.join("curves.png");
        training_curves(&path, "run", &curve(6)).unwrap();
        assert_png(&path);
    }

    #[test]
    fn training_curves_single_epoch() {
        let dir = TempDir::new("single");
        let path = dir.0.join("single.png");
        training_curves(&path, "one epoch", &curve(1)).unwrap();
        assert_png(&path);
    }

    #[test]
    fn training_curves_tolerate_odd_values() {
        let dir = TempDir::new("odd");
        let mut points = curve(40);
        points[3].val_loss = f64::NAN;
        points[7].train_loss = f64::INFINITY;
        points.reverse();
        let path = dir.0.join("odd.png");
        training_curves(&path, "odd", &points).unwrap();
        assert_png(&path);

        let flat = vec![
            CurvePoint {
                epoch: 1,
                train_loss: f64::NAN,
                val_loss: f64::NAN,
                val_accuracy: 1.0,
                val_macro_f1: 1.0,
            };
            2
        ];
        let path = dir.0.join("flat.png");
        training_curves(&path, "flat", &flat).unwrap();
        assert_png(&path);
    }

    #[test]
    fn confusion_matrix_writes_png() {
        let dir = TempDir::new("matrix");
        let path = dir.0.join("matrix.png");
        let matrix = vec![vec![50, 3, 2], vec![4, 31, 9], vec![1, 6, 44]];
        confusion_matrix(&path, "confusion", &labels(), &matrix).unwrap();
        assert_png(&path);

        let path = dir.0.join("single.png");
        confusion_matrix(&path, "one class", &labels()[..1], &[vec![0]]).unwrap();
        assert_png(&path);
    }

    #[test]
    fn empty_and_misshapen_input_is_rejected() {
        let dir = TempDir::new("errors");
        let path = dir.0.join("never.png");
        assert!(matches!(
            training_curves(&path, "t", &[]),
            Err(PlotError::Empty(_))
        ));
        assert!(matches!(
            confusion_matrix(&path, "t", &[], &[]),
            Err(PlotError::Empty(_))
        ));
        assert!(matches!(
            confusion_matrix(&path, "t", &labels(), &[vec![1, 2, 3]]),
            Err(PlotError::Shape(_))
        ));
        assert!(matches!(
            confusion_matrix(&path, "t", &labels(), &[vec![1], vec![2], vec![3]]),
            Err(PlotError::Shape(_))
        ));
        assert!(!path.exists());
    }

    #[test]
    fn draw_errors_name_the_file() {
        let path = std::env::temp_dir()
            .join(format!("plots-test-missing-{}", std::process::id()))
            .join("no")
            .join("curves.png");
        let err = training_curves(&path, "t", &curve(2)).unwrap_err();
        assert!(matches!(err, PlotError::Draw { .. }));
        assert!(err.to_string().contains("curves.png"), "{err}");
    }

    #[test]
    fn epoch_ticks_are_integers_from_one() {
        assert_eq!(epoch_axis(&curve(1)).ticks, vec![1.0]);
        assert_eq!(
            epoch_axis(&curve(6)).ticks,
            vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]
        );
        let many = epoch_axis(&curve(100)).ticks;
        assert_eq!(many[0], 1.0);
        assert!(many.len() <= MAX_EPOCH_TICKS);
        assert!(many.iter().all(|t| t.fract() == 0.0));
    }
}
