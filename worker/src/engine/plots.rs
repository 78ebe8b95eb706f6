//! PNG plots for a fine-tuning run: training curves (loss on the left,
//! validation accuracy and macro-F1 on the right, per epoch), a confusion
//! matrix heat map with the count written in every cell, a four-panel figure
//! of a dendritic (or baseline) run, and charts that compare the variants of
//! a sweep across seeds.
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
use plotters::element::DashedPathElement;
use plotters::prelude::*;
use plotters::style::full_palette::{
    BLUE_300, BLUE_700, GREEN_700, GREY_500, GREY_700, GREY_800, ORANGE, ORANGE_800, PURPLE_500,
    RED_700, TEAL_700,
};
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
const PAI_SIZE: (u32, u32) = (2800, 1400);
const COMPARISON_SIZE: (u32, u32) = (1000, 700);
const RUNS_SIZE: (u32, u32) = (1400, 700);

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

/// One epoch of a tracked (dendritic or baseline) run. `epoch` is 1-based.
#[derive(Debug, Clone, PartialEq)]
pub struct PaiEpoch {
    pub epoch: usize,
    /// Validation score of this epoch.
    pub val: f64,
    /// Running (smoothed) validation score.
    pub val_running: f64,
    /// Training score, if known.
    pub train: Option<f64>,
    /// Test score, if known.
    pub test: Option<f64>,
    pub lr: f64,
    pub train_seconds: f64,
    pub val_seconds: f64,
    /// Epoch whose weights were discarded by a restore (drawn faded).
    pub discarded: bool,
}

/// A per-layer dendrite quantity over epochs (for example mean |T| of a wrapped layer).
#[derive(Debug, Clone, PartialEq)]
pub struct LayerSeries {
    pub layer: String,
    pub points: Vec<(usize, f64)>,
}

/// Everything [`pai_figure`] draws.
pub struct PaiData {
    pub title: String,
    /// Name of the score, e.g. "macro-F1".
    pub score_name: String,
    pub epochs: Vec<PaiEpoch>,
    /// Epochs (1-based) after which a dendrite set was added: an orange vertical line at epoch + 0.5.
    pub switch_epochs: Vec<usize>,
    /// Black dot on the validation curve.
    pub best_epoch: Option<usize>,
    /// Grey dot on the validation curve.
    pub last_improved_epoch: Option<usize>,
    pub layers: Vec<LayerSeries>,
    /// Y-axis label of the top-right panel, e.g. "mean |T| (gate weight) per wrapped layer".
    pub layer_quantity: String,
}

/// 2x2 panel figure, 2800x1400 px:
/// top-left: scores per epoch (validation solid, validation running score faded/dashed-looking lighter colour, train and test if present), black dot at best_epoch, grey dot at last_improved_epoch, orange vertical lines at each switch, discarded epochs drawn faded (lighter colour markers / segments);
/// top-right: one line per LayerSeries (if more than 8 layers, draw 8 and say "+N more" in the legend), y label = layer_quantity; with no layers write a centred note "no dendrites added";
/// bottom-left: learning rate per epoch (log-scale not required; scientific tick labels like 1e-4 are fine), orange switch lines too;
/// bottom-right: seconds per epoch, train and validation as two lines (or stacked bars), orange switch lines too.
/// Every panel has a title, x label "epoch" with integer ticks starting at 1, and a y label.
///
/// Epochs may come in any order; non-finite values are left out of the plot.
pub fn pai_figure(path: &Path, data: &PaiData) -> Result<(), PlotError> {
    if data.epochs.is_empty() {
        return Err(PlotError::Empty(
            "the dendrite figure needs at least one epoch",
        ));
    }
    ensure_font()?;
    let mut epochs = data.epochs.clone();
    epochs.sort_by_key(|e| e.epoch);
    let root = BitMapBackend::new(path, PAI_SIZE).into_drawing_area();
    draw_pai(&root, data, &epochs)
        .and_then(|()| root.present())
        .map_err(|e| PlotError::draw(path, e))
}

/// Sweep comparison for one metric: for each variant (e.g. "baseline", "dendritic") the per-seed values as points, with mean and +-1 sd as a bar/error bar, and the numeric mean +- sd written above each variant. ~1000x700 px. `values[i]` are the values of `variants[i]`, one per seed, in seed order.
///
/// The sd is the sample standard deviation (0 for a single value); points of
/// the same seed are joined across variants when every variant has the same
/// number of values. Non-finite values are left out.
pub fn variant_comparison(
    path: &Path,
    title: &str,
    metric: &str,
    variants: &[String],
    values: &[Vec<f64>],
) -> Result<(), PlotError> {
    if variants.is_empty() {
        return Err(PlotError::Empty(
            "the variant comparison needs at least one variant",
        ));
    }
    if values.len() != variants.len() {
        return Err(PlotError::Shape(format!(
            "{} variants but {} lists of values",
            variants.len(),
            values.len()
        )));
    }
    ensure_font()?;
    let root = BitMapBackend::new(path, COMPARISON_SIZE).into_drawing_area();
    draw_comparison(&root, title, metric, variants, values)
        .and_then(|()| root.present())
        .map_err(|e| PlotError::draw(path, e))
}

/// Paired differences per seed (dendritic minus baseline) as bars, a horizontal line at 0, the mean difference as a dashed line, labelled. x axis: seed labels. ~1000x700 px.
///
/// `diffs[i]` belongs to `seeds[i]`; a non-finite difference is marked "n/a".
pub fn paired_differences(
    path: &Path,
    title: &str,
    metric: &str,
    seeds: &[String],
    diffs: &[f64],
) -> Result<(), PlotError> {
    if seeds.is_empty() {
        return Err(PlotError::Empty(
            "paired differences need at least one seed",
        ));
    }
    if diffs.len() != seeds.len() {
        return Err(PlotError::Shape(format!(
            "{} seeds but {} differences",
            seeds.len(),
            diffs.len()
        )));
    }
    ensure_font()?;
    let root = BitMapBackend::new(path, COMPARISON_SIZE).into_drawing_area();
    draw_differences(&root, title, metric, seeds, diffs)
        .and_then(|()| root.present())
        .map_err(|e| PlotError::draw(path, e))
}

/// Validation-score curves of several runs over epochs on one chart (e.g. baseline vs dendritic per seed), one colour per variant, one line per run, orange ticks optional; legend by variant. `runs`: (variant, seed label, points (epoch, score)). ~1400x700 px.
///
/// Variants are coloured in the order they first appear; points may come in
/// any order and non-finite scores are left out.
#[allow(clippy::type_complexity)]
pub fn training_comparison(
    path: &Path,
    title: &str,
    score_name: &str,
    runs: &[(String, String, Vec<(usize, f64)>)],
) -> Result<(), PlotError> {
    let any_point = runs
        .iter()
        .flat_map(|(_, _, points)| points)
        .any(|(_, y)| y.is_finite());
    if !any_point {
        return Err(PlotError::Empty(
            "the training comparison needs at least one finite score",
        ));
    }
    ensure_font()?;
    let root = BitMapBackend::new(path, RUNS_SIZE).into_drawing_area();
    draw_runs(&root, title, score_name, runs)
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
    Square,
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

/// The epoch (x) axis of `points`: a padded range with integer ticks.
fn epoch_axis(points: &[CurvePoint]) -> TickedAxis {
    epoch_axis_over(points.iter().map(|p| p.epoch))
}

/// An epoch (x) axis from 1 (or the lowest epoch, if lower) to the highest
/// of `epochs`: a padded range with integer ticks.
fn epoch_axis_over(epochs: impl Iterator<Item = usize>) -> TickedAxis {
    let (min, max) = epochs
        .fold(None, |acc: Option<(usize, usize)>, e| match acc {
            None => Some((e, e)),
            Some((lo, hi)) => Some((lo.min(e), hi.max(e))),
        })
        .unwrap_or((1, 1));
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
    // A span lost in rounding (equal values summed differently) counts as 0.
    let pad = if span > 1e-9 * hi.abs().max(lo.abs()) {
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
        for p in s.data.iter().copied().filter(|(_, y)| y.is_finite()) {
            draw_marker(chart.plotting_area(), p, s.marker, s.color)?;
        }
    }
    Ok(())
}

/// A boxed legend centred over the plot area of the panel below.
fn draw_legend<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    series: &[Series],
) -> DrawResult<(), DB> {
    let entries: Vec<LegendEntry> = series
        .iter()
        .map(|s| LegendEntry::new(s.label, s.color, Sample::Line(Some(s.marker))))
        .collect();
    let (w, _) = area.dim_in_pixel();
    let plot_left = CURVE_Y_LABEL_AREA as i32;
    let plot_right = w as i32 - CURVE_MARGIN_RIGHT as i32;
    let layout = LegendLayout::new(area, &entries, LEGEND_FONT, plot_right - plot_left)?;
    layout.draw(area, &entries, plot_left, plot_right)
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

// ---------------------------------------------------------------------------
// Pieces shared by the dendrite figure and the sweep charts

/// Font sizes of one figure.
#[derive(Clone, Copy)]
struct Fonts {
    title: u32,
    caption: u32,
    desc: u32,
    label: u32,
    legend: u32,
}

const STANDARD_FONTS: Fonts = Fonts {
    title: TITLE_FONT,
    caption: CAPTION_FONT,
    desc: DESC_FONT,
    label: LABEL_FONT,
    legend: LEGEND_FONT,
};

/// For the 2800 px wide dendrite figure.
const LARGE_FONTS: Fonts = Fonts {
    title: 40,
    caption: 31,
    desc: 27,
    label: 23,
    legend: 23,
};

/// Line colours, one per variant or layer (no orange: that marks switches).
const PALETTE: [RGBColor; 8] = [
    RGBColor(31, 119, 180),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
];

/// The vertical lines where dendrites were added.
const SWITCH_COLOR: RGBColor = ORANGE;

const CHART_MARGIN_TOP: u32 = 8;
const LEGEND_SAMPLE: i32 = 40;
const LEGEND_GAP: i32 = 8;
const LEGEND_SPACING: i32 = 30;
const LEGEND_PAD: i32 = 14;

type Chart<'a, DB> = ChartContext<'a, DB, Cartesian2d<TickedAxis, TickedAxis>>;

/// `color` blended most of the way to white.
fn fade(color: RGBColor) -> RGBColor {
    let blend = |c: u8| (f64::from(c) + (255.0 - f64::from(c)) * 0.62).round() as u8;
    RGBColor(blend(color.0), blend(color.1), blend(color.2))
}

fn draw_marker<DB: DrawingBackend, CT: CoordTranslate>(
    area: &DrawingArea<DB, CT>,
    at: CT::From,
    marker: Marker,
    color: RGBColor,
) -> DrawResult<(), DB> {
    let fill = color.filled();
    match marker {
        Marker::Circle => area.draw(&Circle::new(at, 5, fill)),
        Marker::Triangle => area.draw(&TriangleMarker::new(at, 7, fill)),
        Marker::Square => {
            area.draw(&(EmptyElement::at(at) + Rectangle::new([(-5, -5), (5, 5)], fill)))
        }
    }
}

/// How tick values are written.
#[derive(Clone, Copy, Debug, PartialEq)]
enum TickFormat {
    /// With this many decimals.
    Fixed(usize),
    /// Like `2.5e-5`.
    Scientific,
}

impl TickFormat {
    fn for_ticks(ticks: &[f64]) -> Self {
        let largest = ticks.iter().map(|t| t.abs()).fold(0.0, f64::max);
        if largest > 0.0 && !(1e-3..1e6).contains(&largest) {
            Self::Scientific
        } else {
            Self::Fixed(tick_decimals(ticks))
        }
    }

    fn apply(self, value: f64) -> String {
        match self {
            Self::Fixed(decimals) => format!("{value:.decimals$}"),
            Self::Scientific => scientific(value),
        }
    }
}

/// `value` as `1e-4` or `2.5e-5`, with the shortest mantissa that keeps it.
fn scientific(value: f64) -> String {
    if value == 0.0 || !value.is_finite() {
        return format!("{value}");
    }
    for precision in 0..6 {
        let text = format!("{value:.precision$e}");
        let close = text
            .parse::<f64>()
            .is_ok_and(|back| (back - value).abs() <= value.abs() * 1e-6);
        if close {
            return text;
        }
    }
    format!("{value:.6e}")
}

/// A y axis: its range, its round ticks, how they are written and how wide
/// the label area left of the plot must be.
struct YAxis {
    range: Range<f64>,
    ticks: Vec<f64>,
    format: TickFormat,
    label_area: u32,
}

impl YAxis {
    fn new<DB: DrawingBackend>(
        area: &DrawingArea<DB, Shift>,
        fonts: Fonts,
        range: Range<f64>,
    ) -> DrawResult<Self, DB> {
        let ticks = RangedCoordf64::from(range.clone()).key_points(Y_TICKS);
        let format = TickFormat::for_ticks(&ticks);
        let style = text_style(fonts.label, &BLACK);
        let mut widest = 0;
        for &tick in &ticks {
            widest = widest.max(area.estimate_text_size(&format.apply(tick), &style)?.0);
        }
        Ok(Self {
            range,
            ticks,
            format,
            label_area: widest + fonts.desc + 40,
        })
    }

    fn axis(&self) -> TickedAxis {
        TickedAxis {
            range: self.range.clone(),
            ticks: self.ticks.clone(),
        }
    }
}

/// The x axis of a chart and how its ticks are written.
struct XAxis<'a> {
    axis: TickedAxis,
    desc: &'a str,
    format: &'a dyn Fn(&f64) -> String,
    /// Height of the label area under the plot.
    label_area: u32,
}

fn format_epoch(value: &f64) -> String {
    format!("{}", value.round() as i64)
}

/// Builds a chart with a light grid and labelled axes on `area`. A y
/// description too long for the plot's height is set smaller or shortened.
fn build_chart<'a, DB: DrawingBackend>(
    area: &'a DrawingArea<DB, Shift>,
    fonts: Fonts,
    x: &XAxis<'_>,
    y: &YAxis,
    y_desc: &str,
) -> DrawResult<Chart<'a, DB>, DB> {
    let mut chart = ChartBuilder::on(area)
        .margin_top(CHART_MARGIN_TOP)
        .margin_right(CURVE_MARGIN_RIGHT)
        .x_label_area_size(x.label_area)
        .y_label_area_size(y.label_area)
        .build_cartesian_2d(x.axis.clone(), y.axis())?;
    let format_y = |v: &f64| y.format.apply(*v);
    chart
        .configure_mesh()
        .x_desc(x.desc)
        .x_label_formatter(x.format)
        .y_label_formatter(&format_y)
        .label_style(text_style(fonts.label, &BLACK))
        .y_label_offset(centre_nudge(fonts.label))
        .axis_desc_style(text_style(fonts.desc, &BLACK))
        .set_all_tick_mark_size(5)
        .bold_line_style(BLACK.mix(0.15))
        .draw()?;

    // Where plotters would put it: at the left edge, centred on the plot.
    let plot = chart.plotting_area();
    let (_, plot_h) = plot.dim_in_pixel();
    let plot_top = plot.get_base_pixel().1 - area.get_base_pixel().1;
    let (y_desc, font) = fit_text(area, y_desc, fonts.desc, plot_h.saturating_sub(8))?;
    let style = text_style(font, &BLACK)
        .transform(FontTransform::Rotate270)
        .pos(Pos::new(HPos::Center, VPos::Top));
    area.draw(&Text::new(y_desc, (0, plot_top + plot_h as i32 / 2), style))?;
    Ok(chart)
}

/// `text` in a font of `size`, or smaller (down to three quarters of it), so
/// that it is at most `max_px` wide; shortened with an ellipsis when even the
/// smallest font is too wide.
fn fit_text<DB: DrawingBackend, CT: CoordTranslate>(
    area: &DrawingArea<DB, CT>,
    text: &str,
    size: u32,
    max_px: u32,
) -> DrawResult<(String, u32), DB> {
    let smallest = (size * 3 / 4).max(8);
    let mut font = size;
    loop {
        let width = area.estimate_text_size(text, &text_style(font, &BLACK))?.0;
        if width <= max_px {
            return Ok((text.to_string(), font));
        }
        if font <= smallest {
            break;
        }
        font -= 1;
    }
    let chars: Vec<char> = text.chars().collect();
    for keep in (1..chars.len()).rev() {
        let mut short: String = chars[..keep].iter().collect();
        short.push('…');
        if area
            .estimate_text_size(&short, &text_style(font, &BLACK))?
            .0
            <= max_px
        {
            return Ok((short, font));
        }
    }
    Ok(("…".to_string(), font))
}

/// What a legend entry shows left of its label.
#[derive(Clone, Copy)]
enum Sample {
    /// A line with the series' marker, if any, in its middle.
    Line(Option<Marker>),
    Dashed,
    /// A dot of this radius.
    Dot(i32),
    /// A vertical line.
    Rule,
    Bar,
    /// A pale box with a line across its middle.
    Crossbar,
    /// Nothing: the entry is a note.
    Nothing,
}

struct LegendEntry {
    label: String,
    color: RGBColor,
    sample: Sample,
}

impl LegendEntry {
    fn new(label: impl Into<String>, color: RGBColor, sample: Sample) -> Self {
        Self {
            label: label.into(),
            color,
            sample,
        }
    }
}

/// Legend entries in rows that fit a width, for a box drawn with [`Self::draw`].
struct LegendLayout {
    font: u32,
    /// Width of each entry, its sample included.
    widths: Vec<i32>,
    /// The entries of each row.
    rows: Vec<Range<usize>>,
}

impl LegendLayout {
    fn new<DB: DrawingBackend>(
        area: &DrawingArea<DB, Shift>,
        entries: &[LegendEntry],
        font: u32,
        max_width: i32,
    ) -> DrawResult<Self, DB> {
        let style = text_style(font, &BLACK);
        let mut widths = Vec::with_capacity(entries.len());
        for entry in entries {
            let text = area.estimate_text_size(&entry.label, &style)?.0 as i32;
            widths.push(match entry.sample {
                Sample::Nothing => text,
                _ => LEGEND_SAMPLE + LEGEND_GAP + text,
            });
        }
        let room = max_width - 2 * LEGEND_PAD;
        let mut rows = Vec::new();
        let mut start = 0;
        let mut used = 0;
        for (i, &width) in widths.iter().enumerate() {
            if i == start {
                used = width;
            } else if used + LEGEND_SPACING + width > room {
                rows.push(start..i);
                start = i;
                used = width;
            } else {
                used += LEGEND_SPACING + width;
            }
        }
        if start < widths.len() {
            rows.push(start..widths.len());
        }
        Ok(Self { font, widths, rows })
    }

    fn row_height(&self) -> i32 {
        self.font as i32 + 16
    }

    /// Height of a strip that holds the legend with some air (0 if empty).
    fn strip_height(&self) -> u32 {
        if self.rows.is_empty() {
            0
        } else {
            (self.rows.len() as i32 * self.row_height() + 14) as u32
        }
    }

    fn row_width(&self, row: &Range<usize>) -> i32 {
        self.widths[row.clone()].iter().sum::<i32>()
            + LEGEND_SPACING * (row.len() as i32 - 1).max(0)
    }

    /// Draws the legend box centred between `left` and `right`, rows
    /// aligned on the left.
    fn draw<DB: DrawingBackend>(
        &self,
        area: &DrawingArea<DB, Shift>,
        entries: &[LegendEntry],
        left: i32,
        right: i32,
    ) -> DrawResult<(), DB> {
        if self.rows.is_empty() {
            return Ok(());
        }
        let style = text_style(self.font, &BLACK).pos(Pos::new(HPos::Left, VPos::Center));
        let content = self
            .rows
            .iter()
            .map(|row| self.row_width(row))
            .max()
            .unwrap_or(0);
        let box_w = content + 2 * LEGEND_PAD;
        let box_h = self.rows.len() as i32 * self.row_height();
        let (w, h) = area.dim_in_pixel();
        let x0 = ((left + right - box_w) / 2).clamp(0, (w as i32 - box_w).max(0));
        let y0 = ((h as i32 - box_h) / 2).max(0);
        let corners = [(x0, y0), (x0 + box_w, y0 + box_h)];
        area.draw(&Rectangle::new(corners, WHITE.filled()))?;
        area.draw(&Rectangle::new(corners, BLACK.mix(0.55).stroke_width(1)))?;

        for (r, row) in self.rows.iter().enumerate() {
            let cy = y0 + r as i32 * self.row_height() + self.row_height() / 2;
            let mut x = x0 + LEGEND_PAD;
            for (entry, &width) in entries[row.clone()].iter().zip(&self.widths[row.clone()]) {
                let text_x = match entry.sample {
                    Sample::Nothing => x,
                    sample => {
                        self.draw_sample(area, sample, entry.color, x, cy)?;
                        x + LEGEND_SAMPLE + LEGEND_GAP
                    }
                };
                let text_pos = (text_x, cy + centre_nudge(self.font));
                area.draw(&Text::new(entry.label.as_str(), text_pos, style.clone()))?;
                x += width + LEGEND_SPACING;
            }
        }
        Ok(())
    }

    fn draw_sample<DB: DrawingBackend>(
        &self,
        area: &DrawingArea<DB, Shift>,
        sample: Sample,
        color: RGBColor,
        x: i32,
        cy: i32,
    ) -> DrawResult<(), DB> {
        let mid = (x + LEGEND_SAMPLE / 2, cy);
        let line = ShapeStyle::from(&color).stroke_width(3);
        let ends = vec![(x, cy), (x + LEGEND_SAMPLE, cy)];
        let half = self.font as i32 / 2;
        match sample {
            Sample::Line(marker) => {
                area.draw(&PathElement::new(ends, line))?;
                if let Some(marker) = marker {
                    draw_marker(area, mid, marker, color)?;
                }
            }
            Sample::Dashed => area.draw(&DashedPathElement::new(ends, 9, 5, line))?,
            Sample::Dot(radius) => area.draw(&Circle::new(mid, radius, color.filled()))?,
            Sample::Rule => {
                let rule = vec![(mid.0, cy - half - 3), (mid.0, cy + half + 3)];
                area.draw(&PathElement::new(rule, line))?;
            }
            Sample::Bar => {
                let corners = [(x + 10, cy - half), (x + LEGEND_SAMPLE - 10, cy + half)];
                area.draw(&Rectangle::new(corners, color.filled()))?;
            }
            Sample::Crossbar => {
                let corners = [(x + 6, cy - half), (x + LEGEND_SAMPLE - 6, cy + half)];
                area.draw(&Rectangle::new(corners, color.mix(0.2).filled()))?;
                area.draw(&Rectangle::new(corners, color.stroke_width(1)))?;
                let across = vec![(x + 6, cy), (x + LEGEND_SAMPLE - 6, cy)];
                area.draw(&PathElement::new(across, line))?;
            }
            Sample::Nothing => {}
        }
        Ok(())
    }
}

/// A captioned (or uncaptioned) chart with its legend in a strip above the
/// plot, planned before it is drawn so that neighbours can share a strip
/// height.
struct Frame<DB: DrawingBackend> {
    inner: DrawingArea<DB, Shift>,
    y: YAxis,
    legend: LegendLayout,
}

impl<DB: DrawingBackend> Frame<DB> {
    fn new(
        inner: DrawingArea<DB, Shift>,
        fonts: Fonts,
        y_range: Range<f64>,
        entries: &[LegendEntry],
    ) -> DrawResult<Self, DB> {
        let y = YAxis::new(&inner, fonts, y_range)?;
        let (w, _) = inner.dim_in_pixel();
        let plot_w = w as i32 - y.label_area as i32 - CURVE_MARGIN_RIGHT as i32;
        let legend = LegendLayout::new(&inner, entries, fonts.legend, plot_w)?;
        Ok(Self { inner, y, legend })
    }

    /// Draws the legend in a strip of height `strip` and returns the area
    /// left for the chart.
    fn draw_legend(
        &self,
        entries: &[LegendEntry],
        strip: u32,
    ) -> DrawResult<DrawingArea<DB, Shift>, DB> {
        let (legend_area, chart_area) = self.inner.split_vertically(strip);
        let (w, _) = self.inner.dim_in_pixel();
        let left = self.y.label_area as i32;
        let right = w as i32 - CURVE_MARGIN_RIGHT as i32;
        self.legend.draw(&legend_area, entries, left, right)?;
        Ok(chart_area)
    }

    /// Width of the plot (the chart less its y label area and margin).
    fn plot_width(&self) -> u32 {
        let (w, _) = self.inner.dim_in_pixel();
        w.saturating_sub(self.y.label_area + CURVE_MARGIN_RIGHT)
    }

    /// Height of the plot under a strip of `strip` px and above an x label
    /// area of `x_label_area` px.
    fn plot_height(&self, strip: u32, x_label_area: u32) -> u32 {
        let (_, h) = self.inner.dim_in_pixel();
        h.saturating_sub(strip + CHART_MARGIN_TOP + x_label_area)
            .max(1)
    }
}

/// A line over epochs (or any x); points flagged `true` are drawn faded, and
/// so is every segment that touches one.
struct Trace {
    color: RGBColor,
    marker: Option<Marker>,
    dashed: bool,
    points: Vec<(f64, f64, bool)>,
}

impl Trace {
    fn finite_values(&self) -> impl Iterator<Item = f64> + '_ {
        self.points
            .iter()
            .map(|&(_, y, _)| y)
            .filter(|y| y.is_finite())
    }
}

/// The polylines of a trace: runs of segments between consecutive finite
/// points that are all faded or all not.
fn line_runs(points: &[(f64, f64, bool)]) -> Vec<(bool, Vec<(f64, f64)>)> {
    let mut runs: Vec<(bool, Vec<(f64, f64)>)> = Vec::new();
    let mut joined = false;
    for pair in points.windows(2) {
        let ((x0, y0, faded0), (x1, y1, faded1)) = (pair[0], pair[1]);
        if !(y0.is_finite() && y1.is_finite()) {
            joined = false;
            continue;
        }
        let faded = faded0 || faded1;
        match runs.last_mut() {
            Some((f, run)) if joined && *f == faded => run.push((x1, y1)),
            _ => runs.push((faded, vec![(x0, y0), (x1, y1)])),
        }
        joined = true;
    }
    runs
}

fn draw_trace<DB: DrawingBackend>(
    chart: &mut Chart<'_, DB>,
    trace: &Trace,
    width: u32,
) -> DrawResult<(), DB> {
    for (faded, run) in line_runs(&trace.points) {
        let color = if faded {
            fade(trace.color)
        } else {
            trace.color
        };
        let style = ShapeStyle::from(&color).stroke_width(width);
        if trace.dashed {
            chart.draw_series(DashedLineSeries::new(run, 12, 7, style))?;
        } else {
            chart.draw_series(LineSeries::new(run, style))?;
        }
    }
    let finite = |i: usize| trace.points.get(i).is_some_and(|p| p.1.is_finite());
    for (i, &(x, y, faded)) in trace.points.iter().enumerate() {
        if !y.is_finite() {
            continue;
        }
        let color = if faded {
            fade(trace.color)
        } else {
            trace.color
        };
        match trace.marker {
            Some(marker) => draw_marker(chart.plotting_area(), (x, y), marker, color)?,
            // A point without a line to either side would not show.
            None if !finite(i + 1) && (i == 0 || !finite(i - 1)) => {
                chart.draw_series([Circle::new((x, y), 4, color.filled())])?;
            }
            None => {}
        }
    }
    Ok(())
}

/// Orange vertical lines across the whole plot at `xs`.
fn draw_switches<DB: DrawingBackend>(
    chart: &mut Chart<'_, DB>,
    xs: &[f64],
    y_range: &Range<f64>,
) -> DrawResult<(), DB> {
    let style = SWITCH_COLOR.stroke_width(3);
    chart.draw_series(
        xs.iter()
            .map(|&x| PathElement::new(vec![(x, y_range.start), (x, y_range.end)], style)),
    )?;
    Ok(())
}

/// Writes `text` in the middle of the plot.
fn draw_centre_note<DB: DrawingBackend>(
    chart: &Chart<'_, DB>,
    x_range: &Range<f64>,
    y_range: &Range<f64>,
    text: &str,
    font: u32,
) -> DrawResult<(), DB> {
    let centre = (
        (x_range.start + x_range.end) / 2.0,
        (y_range.start + y_range.end) / 2.0,
    );
    let style = text_style(font, &GREY_800).pos(Pos::new(HPos::Center, VPos::Center));
    let note = Text::new(text.to_string(), (0, centre_nudge(font)), style);
    chart
        .plotting_area()
        .draw(&(EmptyElement::at(centre) + note))
}

/// From 0 to a bit above the largest finite value (for quantities that are
/// never negative); [`data_range`] if some value is negative.
fn zero_based_range(values: impl Iterator<Item = f64>) -> Range<f64> {
    let values: Vec<f64> = values.filter(|v| v.is_finite()).collect();
    if values.iter().any(|&v| v < 0.0) {
        return data_range(values.into_iter());
    }
    let top = values.iter().copied().fold(0.0, f64::max);
    if top > 0.0 {
        0.0..top * 1.08
    } else {
        0.0..1.0
    }
}

/// `range` grown so that `top_px` pixels above its old top and `bottom_px`
/// pixels below its old bottom are free in a plot `plot_px` pixels tall.
fn with_headroom(range: Range<f64>, top_px: u32, bottom_px: u32, plot_px: u32) -> Range<f64> {
    let plot = f64::from(plot_px.max(1));
    let mut top = f64::from(top_px) / plot;
    let mut bottom = f64::from(bottom_px) / plot;
    let free = top + bottom;
    if free > 0.6 {
        top *= 0.6 / free;
        bottom *= 0.6 / free;
    }
    let span = (range.end - range.start) / (1.0 - top - bottom);
    range.start - bottom * span..range.end + top * span
}

/// Mean and sample standard deviation of the finite values.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Summary {
    n: usize,
    mean: f64,
    sd: f64,
}

impl Summary {
    fn of(values: &[f64]) -> Option<Self> {
        let finite: Vec<f64> = values.iter().copied().filter(|v| v.is_finite()).collect();
        if finite.is_empty() {
            return None;
        }
        let n = finite.len();
        let mean = finite.iter().sum::<f64>() / n as f64;
        let sd = if n > 1 {
            let squares: f64 = finite.iter().map(|v| (v - mean).powi(2)).sum();
            (squares / (n - 1) as f64).sqrt()
        } else {
            0.0
        };
        // Equal values can leave a rounding error's worth of spread.
        let sd = if sd <= 1e-12 * mean.abs() { 0.0 } else { sd };
        Some(Self { n, mean, sd })
    }
}

/// Decimals that show `scale` with three significant digits (two to six).
fn value_decimals(scale: f64) -> usize {
    if !scale.is_finite() || scale <= 0.0 {
        return 3;
    }
    (2.0 - scale.log10().floor()).clamp(0.0, 6.0) as usize
}

/// Names under a categorical x axis (category `i` at x = `i`), turned
/// sideways when they do not fit under their slots.
struct CategoryLabels {
    names: Vec<String>,
    font: u32,
    rotate: bool,
    widest: u32,
}

impl CategoryLabels {
    fn new<DB: DrawingBackend>(
        area: &DrawingArea<DB, Shift>,
        fonts: Fonts,
        names: &[String],
        plot_w: u32,
    ) -> DrawResult<Self, DB> {
        let names: Vec<String> = names.iter().map(|n| shorten(n)).collect();
        let font = if names.len() > 12 { 14 } else { fonts.label };
        let style = text_style(font, &BLACK);
        let mut widest = 0;
        for name in &names {
            widest = widest.max(area.estimate_text_size(name, &style)?.0);
        }
        let slot = plot_w / names.len().max(1) as u32;
        Ok(Self {
            rotate: widest + 10 > slot,
            names,
            font,
            widest,
        })
    }

    fn axis(&self) -> TickedAxis {
        let n = self.names.len().max(1) as f64;
        TickedAxis {
            range: -0.5..n - 0.5,
            ticks: (0..self.names.len()).map(|i| i as f64).collect(),
        }
    }

    fn label_area(&self, fonts: Fonts) -> u32 {
        if self.rotate {
            self.widest + fonts.desc + 44
        } else {
            self.font + fonts.desc + 24
        }
    }

    /// The tick label at `value` (empty when the labels are drawn sideways).
    fn label(&self, value: f64) -> String {
        if self.rotate || value < 0.0 {
            return String::new();
        }
        self.names
            .get(value.round() as usize)
            .cloned()
            .unwrap_or_default()
    }

    /// Draws the sideways labels (if they are sideways) under the plot.
    fn draw_rotated<DB: DrawingBackend>(
        &self,
        area: &DrawingArea<DB, Shift>,
        chart: &Chart<'_, DB>,
        y_bottom: f64,
    ) -> DrawResult<(), DB> {
        if !self.rotate {
            return Ok(());
        }
        // Rotated a quarter turn clockwise, the text runs down from its
        // anchor; "down" in the text's frame is to the left on the page.
        let style = text_style(self.font, &BLACK)
            .transform(FontTransform::Rotate90)
            .pos(Pos::new(HPos::Left, VPos::Center));
        let (base_x, base_y) = area.get_base_pixel();
        for (i, name) in self.names.iter().enumerate() {
            let (x, y) = chart.backend_coord(&(i as f64, y_bottom));
            let anchor = (x - base_x - centre_nudge(self.font), y - base_y + 12);
            area.draw(&Text::new(name.as_str(), anchor, style.clone()))?;
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------
// Dendrite figure

/// Layers drawn in the layer panel; the rest are counted in its legend.
const MAX_LAYERS: usize = 8;
/// Layer names longer than this keep only their end.
const MAX_LAYER_CHARS: usize = 32;

/// One panel of the dendrite figure.
struct EpochPanel {
    caption: String,
    y_desc: String,
    y_range: Range<f64>,
    traces: Vec<Trace>,
    /// Points drawn last, over the lines: (x, y), radius, colour.
    dots: Vec<((f64, f64), i32, RGBColor)>,
    note: Option<&'static str>,
    legend: Vec<LegendEntry>,
}

impl EpochPanel {
    fn new(caption: String, y_desc: String) -> Self {
        Self {
            caption,
            y_desc,
            y_range: 0.0..1.0,
            traces: Vec::new(),
            dots: Vec::new(),
            note: None,
            legend: Vec::new(),
        }
    }

    /// Adds a line with its legend entry.
    fn trace(&mut self, label: impl Into<String>, trace: Trace) {
        let sample = if trace.dashed {
            Sample::Dashed
        } else {
            Sample::Line(trace.marker)
        };
        self.legend
            .push(LegendEntry::new(label, trace.color, sample));
        self.traces.push(trace);
    }

    fn values(&self) -> impl Iterator<Item = f64> + '_ {
        self.traces.iter().flat_map(Trace::finite_values)
    }
}

fn draw_pai<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    data: &PaiData,
    epochs: &[PaiEpoch],
) -> DrawResult<(), DB> {
    root.fill(&WHITE)?;
    let fonts = LARGE_FONTS;
    let body = root
        .margin(10, 10, 14, 14)
        .titled(&data.title, text_style(fonts.title, &BLACK))?;
    let areas = body.split_evenly((2, 2));

    let switches: Vec<f64> = data.switch_epochs.iter().map(|&e| e as f64 + 0.5).collect();
    let layer_epochs = data
        .layers
        .iter()
        .flat_map(|l| l.points.iter().map(|&(e, _)| e));
    let mut x_axis = epoch_axis_over(
        epochs
            .iter()
            .map(|e| e.epoch)
            .chain(layer_epochs)
            .chain(data.switch_epochs.iter().copied()),
    );
    if let Some(last_switch) = switches.iter().copied().reduce(f64::max) {
        x_axis.range.end = x_axis.range.end.max(last_switch + 0.3);
    }

    let mut panels = [
        score_panel(data, epochs),
        layer_panel(data),
        lr_panel(epochs),
        time_panel(epochs),
    ];
    if !switches.is_empty() {
        for panel in &mut panels {
            panel.legend.push(LegendEntry::new(
                "dendrites added",
                SWITCH_COLOR,
                Sample::Rule,
            ));
        }
    }

    let mut frames = Vec::with_capacity(panels.len());
    for (area, panel) in areas.iter().zip(&panels) {
        let inner = area
            .margin(14, 10, 18, 18)
            .titled(&panel.caption, text_style(fonts.caption, &BLACK))?;
        frames.push(Frame::new(
            inner,
            fonts,
            panel.y_range.clone(),
            &panel.legend,
        )?);
    }
    // Panels side by side get the same legend strip, so their plots line up.
    let strip = |a: usize, b: usize| {
        frames[a]
            .legend
            .strip_height()
            .max(frames[b].legend.strip_height())
    };
    let strips = [strip(0, 1), strip(0, 1), strip(2, 3), strip(2, 3)];

    let x = XAxis {
        axis: x_axis,
        desc: "epoch",
        format: &format_epoch,
        label_area: fonts.label + fonts.desc + 30,
    };
    for ((panel, frame), strip) in panels.iter().zip(&frames).zip(strips) {
        let chart_area = frame.draw_legend(&panel.legend, strip)?;
        let mut chart = build_chart(&chart_area, fonts, &x, &frame.y, &panel.y_desc)?;
        draw_switches(&mut chart, &switches, &frame.y.range)?;
        for trace in &panel.traces {
            draw_trace(&mut chart, trace, 3)?;
        }
        for &(at, radius, color) in &panel.dots {
            chart.draw_series([Circle::new(at, radius, color.filled())])?;
        }
        if let Some(note) = panel.note {
            draw_centre_note(&chart, &x.axis.range, &frame.y.range, note, fonts.caption)?;
        }
    }
    Ok(())
}

/// Scores per epoch, with the best and last-improved epochs marked.
fn score_panel(data: &PaiData, epochs: &[PaiEpoch]) -> EpochPanel {
    let score = &data.score_name;
    let mut panel = EpochPanel::new(format!("{score} per epoch"), score.clone());
    let trace = |color, marker, dashed, value: &dyn Fn(&PaiEpoch) -> f64| Trace {
        color,
        marker,
        dashed,
        points: epochs
            .iter()
            .map(|e| (e.epoch as f64, value(e), e.discarded))
            .collect(),
    };
    panel.trace(
        "validation (running)",
        trace(BLUE_300, None, true, &|e| e.val_running),
    );
    panel.trace(
        "validation",
        trace(BLUE_700, Some(Marker::Circle), false, &|e| e.val),
    );
    if epochs.iter().any(|e| e.train.is_some()) {
        panel.trace(
            "train",
            trace(GREEN_700, Some(Marker::Triangle), false, &|e| {
                e.train.unwrap_or(f64::NAN)
            }),
        );
    }
    if epochs.iter().any(|e| e.test.is_some()) {
        panel.trace(
            "test",
            trace(PURPLE_500, Some(Marker::Square), false, &|e| {
                e.test.unwrap_or(f64::NAN)
            }),
        );
    }
    panel.y_range = data_range(panel.values());

    let val_at = |epoch: Option<usize>| {
        let epoch = epoch?;
        let found = epochs.iter().find(|e| e.epoch == epoch)?;
        found
            .val
            .is_finite()
            .then_some((epoch, (epoch as f64, found.val)))
    };
    // The grey dot is larger, so it rings the black one when they coincide.
    if let Some((epoch, at)) = val_at(data.last_improved_epoch) {
        panel.dots.push((at, 11, GREY_500));
        panel.legend.push(LegendEntry::new(
            format!("last improvement (epoch {epoch})"),
            GREY_500,
            Sample::Dot(9),
        ));
    }
    if let Some((epoch, at)) = val_at(data.best_epoch) {
        panel.dots.push((at, 7, BLACK));
        panel.legend.push(LegendEntry::new(
            format!("best (epoch {epoch})"),
            BLACK,
            Sample::Dot(7),
        ));
    }
    if epochs.iter().any(|e| e.discarded) {
        panel.legend.push(LegendEntry::new(
            "discarded by a restore",
            fade(BLUE_700),
            Sample::Line(Some(Marker::Circle)),
        ));
    }
    panel
}

/// The per-layer dendrite quantity, or a note if there is none.
fn layer_panel(data: &PaiData) -> EpochPanel {
    let mut panel = EpochPanel::new(
        "dendrites per layer".to_string(),
        data.layer_quantity.clone(),
    );
    let shown = &data.layers[..data.layers.len().min(MAX_LAYERS)];
    let names: Vec<&str> = shown.iter().map(|l| l.layer.as_str()).collect();
    for ((layer, name), color) in shown.iter().zip(layer_labels(&names)).zip(PALETTE) {
        let mut points: Vec<(f64, f64, bool)> = layer
            .points
            .iter()
            .map(|&(e, v)| (e as f64, v, false))
            .collect();
        points.sort_by(|a, b| a.0.total_cmp(&b.0));
        let trace = Trace {
            color,
            marker: Some(Marker::Circle),
            dashed: false,
            points,
        };
        panel.trace(name, trace);
    }
    let hidden = data.layers.len() - shown.len();
    if hidden > 0 {
        panel.legend.push(LegendEntry::new(
            format!("+{hidden} more"),
            BLACK,
            Sample::Nothing,
        ));
    }
    if panel.values().next().is_none() {
        panel.traces.clear();
        panel.legend.clear();
        panel.note = Some("no dendrites added");
    } else {
        panel.y_range = data_range(panel.values());
    }
    panel
}

fn lr_panel(epochs: &[PaiEpoch]) -> EpochPanel {
    let mut panel = EpochPanel::new("learning rate".to_string(), "learning rate".to_string());
    panel.trace(
        "learning rate",
        Trace {
            color: TEAL_700,
            marker: Some(Marker::Circle),
            dashed: false,
            points: epochs
                .iter()
                .map(|e| (e.epoch as f64, e.lr, false))
                .collect(),
        },
    );
    panel.y_range = zero_based_range(panel.values());
    panel
}

fn time_panel(epochs: &[PaiEpoch]) -> EpochPanel {
    let mut panel = EpochPanel::new("time per epoch".to_string(), "seconds".to_string());
    let trace = |color, marker, value: fn(&PaiEpoch) -> f64| Trace {
        color,
        marker: Some(marker),
        dashed: false,
        points: epochs
            .iter()
            .map(|e| (e.epoch as f64, value(e), false))
            .collect(),
    };
    panel.trace(
        "train",
        trace(GREEN_700, Marker::Circle, |e| e.train_seconds),
    );
    panel.trace(
        "validation",
        trace(BLUE_700, Marker::Triangle, |e| e.val_seconds),
    );
    panel.y_range = zero_based_range(panel.values());
    panel
}

/// Layer names without the dot-separated prefix that they all share, and
/// shortened from the front to at most [`MAX_LAYER_CHARS`] characters.
fn layer_labels(names: &[&str]) -> Vec<String> {
    let parts: Vec<Vec<&str>> = names.iter().map(|n| n.split('.').collect()).collect();
    let mut common = 0;
    if let [first, rest @ ..] = parts.as_slice() {
        if !rest.is_empty() {
            let shortest = parts.iter().map(Vec::len).min().unwrap_or(0);
            // Every name keeps at least its last part.
            while common + 1 < shortest && rest.iter().all(|p| p[common] == first[common]) {
                common += 1;
            }
        }
    }
    parts
        .iter()
        .map(|p| {
            let name = p[common..].join(".");
            let chars: Vec<char> = name.chars().collect();
            if chars.len() <= MAX_LAYER_CHARS {
                name
            } else {
                let tail: String = chars[chars.len() - (MAX_LAYER_CHARS - 1)..]
                    .iter()
                    .collect();
                format!("…{tail}")
            }
        })
        .collect()
}

// ---------------------------------------------------------------------------
// Sweep comparisons

/// Half the width of a variant's mean ± sd box, in slots.
const CROSSBAR_HALF: f64 = 0.3;
/// Half the width over which a variant's seed points are spread.
const SPREAD_HALF: f64 = 0.2;

fn draw_comparison<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    title: &str,
    metric: &str,
    variants: &[String],
    values: &[Vec<f64>],
) -> DrawResult<(), DB> {
    root.fill(&WHITE)?;
    let fonts = STANDARD_FONTS;
    let body = root
        .margin(8, 8, 12, 12)
        .titled(title, text_style(fonts.title, &BLACK))?;
    let stats: Vec<Option<Summary>> = values.iter().map(|v| Summary::of(v)).collect();
    let extent = values
        .iter()
        .flatten()
        .copied()
        .filter(|v| v.is_finite())
        .chain(
            stats
                .iter()
                .flatten()
                .flat_map(|s| [s.mean - s.sd, s.mean + s.sd]),
        );
    let base = data_range(extent);
    let entries = [
        LegendEntry::new("one seed", GREY_700, Sample::Dot(5)),
        LegendEntry::new("mean ± 1 sd", GREY_700, Sample::Crossbar),
    ];

    // The summary above each variant takes two lines.
    let note_px = fonts.desc + fonts.label + 30;
    let plan = Frame::new(body.clone(), fonts, base.clone(), &entries)?;
    let names = CategoryLabels::new(&body, fonts, variants, plan.plot_width())?;
    let strip = plan.legend.strip_height();
    let plot_h = plan.plot_height(strip, names.label_area(fonts));
    let y_range = with_headroom(base, note_px, 0, plot_h);
    let frame = Frame::new(body, fonts, y_range, &entries)?;
    let chart_area = frame.draw_legend(&entries, strip)?;

    let format_x = |v: &f64| names.label(*v);
    let x = XAxis {
        axis: names.axis(),
        desc: "variant",
        format: &format_x,
        label_area: names.label_area(fonts),
    };
    let mut chart = build_chart(&chart_area, fonts, &x, &frame.y, metric)?;
    names.draw_rotated(&chart_area, &chart, frame.y.range.start)?;

    let spread = |k: usize, n: usize| {
        if n > 1 {
            -SPREAD_HALF + 2.0 * SPREAD_HALF * k as f64 / (n - 1) as f64
        } else {
            0.0
        }
    };
    // Paired seeds: join the values of one seed across the variants.
    let seeds = values[0].len();
    if values.len() > 1 && values.iter().all(|v| v.len() == seeds) {
        let style = BLACK.mix(0.18).stroke_width(1);
        for k in 0..seeds {
            let points: Vec<(f64, f64)> = values
                .iter()
                .enumerate()
                .map(|(i, v)| (i as f64 + spread(k, seeds), v[k]))
                .collect();
            for pair in points.windows(2) {
                if pair[0].1.is_finite() && pair[1].1.is_finite() {
                    chart.draw_series([PathElement::new(pair.to_vec(), style)])?;
                }
            }
        }
    }

    let slot_px = (frame.plot_width() / variants.len() as u32).saturating_sub(8);
    for (i, (seed_values, stat)) in values.iter().zip(&stats).enumerate() {
        let color = PALETTE[i % PALETTE.len()];
        let x = i as f64;
        let Some(stat) = stat else {
            let mid = (frame.y.range.start + frame.y.range.end) / 2.0;
            let style =
                text_style(fonts.label, &GREY_800).pos(Pos::new(HPos::Center, VPos::Center));
            let note = Text::new("no values", (0, 0), style);
            chart.draw_series([EmptyElement::at((x, mid)) + note])?;
            continue;
        };
        let (lo, hi) = (stat.mean - stat.sd, stat.mean + stat.sd);
        let corners = [(x - CROSSBAR_HALF, lo), (x + CROSSBAR_HALF, hi)];
        chart.draw_series([
            Rectangle::new(corners, color.mix(0.18).filled()),
            Rectangle::new(corners, color.stroke_width(1)),
        ])?;
        let mean_line = vec![
            (x - CROSSBAR_HALF, stat.mean),
            (x + CROSSBAR_HALF, stat.mean),
        ];
        chart.draw_series([PathElement::new(mean_line, color.stroke_width(4))])?;

        let n = seed_values.len();
        for (k, &v) in seed_values.iter().enumerate() {
            if v.is_finite() {
                let at = (x + spread(k, n), v);
                chart.draw_series([
                    Circle::new(at, 7, WHITE.filled()),
                    Circle::new(at, 5, color.filled()),
                ])?;
            }
        }

        // mean ± sd, and the number of seeds under it, above the highest mark.
        let top = seed_values
            .iter()
            .copied()
            .filter(|v| v.is_finite())
            .fold(hi, f64::max);
        let decimals = value_decimals(if stat.sd > 0.0 {
            stat.sd * 10.0
        } else {
            stat.mean.abs()
        });
        let summary = format!("{:.decimals$} ± {:.decimals$}", stat.mean, stat.sd);
        let (summary, font) = fit_text(&chart_area, &summary, fonts.desc, slot_px)?;
        let count = if stat.n == 1 {
            "1 seed".to_string()
        } else {
            format!("{} seeds", stat.n)
        };
        let anchor = Pos::new(HPos::Center, VPos::Bottom);
        let count_style = text_style(fonts.label, &GREY_800).pos(anchor);
        let summary_style = text_style(font, &BLACK).pos(anchor);
        let gap = 12;
        chart.draw_series([EmptyElement::at((x, top))
            + Text::new(count, (0, -gap), count_style)
            + Text::new(summary, (0, -gap - fonts.label as i32 - 8), summary_style)])?;
    }
    Ok(())
}

fn draw_differences<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    title: &str,
    metric: &str,
    seeds: &[String],
    diffs: &[f64],
) -> DrawResult<(), DB> {
    root.fill(&WHITE)?;
    let fonts = STANDARD_FONTS;
    let body = root
        .margin(8, 8, 12, 12)
        .titled(title, text_style(fonts.title, &BLACK))?;
    let finite: Vec<f64> = diffs.iter().copied().filter(|d| d.is_finite()).collect();
    let stat = Summary::of(diffs);
    let decimals = value_decimals(finite.iter().map(|d| d.abs()).fold(0.0, f64::max));
    let any_up = finite.iter().any(|&d| d >= 0.0);
    let any_down = finite.iter().any(|&d| d < 0.0);
    let (up_color, down_color, mean_color) = (BLUE_700, RED_700, PURPLE_500);

    let mut entries = Vec::new();
    if any_up {
        entries.push(LegendEntry::new("difference ≥ 0", up_color, Sample::Bar));
    }
    if any_down {
        entries.push(LegendEntry::new("difference < 0", down_color, Sample::Bar));
    }
    if let Some(s) = stat {
        entries.push(LegendEntry::new(
            format!(
                "mean {:+.decimals$} (sd {:.decimals$}, n = {})",
                s.mean, s.sd, s.n
            ),
            mean_color,
            Sample::Dashed,
        ));
    }

    let extent = finite
        .iter()
        .copied()
        .chain([0.0])
        .chain(stat.map(|s| s.mean));
    let base = data_range(extent);
    let label_px = fonts.label + 14;
    let plan = Frame::new(body.clone(), fonts, base.clone(), &entries)?;
    let names = CategoryLabels::new(&body, fonts, seeds, plan.plot_width())?;
    let strip = plan.legend.strip_height();
    let plot_h = plan.plot_height(strip, names.label_area(fonts));
    // "n/a" is written above the zero line.
    let any_missing = finite.len() < diffs.len();
    let top_px = if any_up || any_missing { label_px } else { 0 };
    let bottom_px = if any_down { label_px } else { 0 };
    let y_range = with_headroom(base, top_px, bottom_px, plot_h);
    let frame = Frame::new(body, fonts, y_range, &entries)?;
    let chart_area = frame.draw_legend(&entries, strip)?;

    let format_x = |v: &f64| names.label(*v);
    let y_desc = format!("Δ {metric}");
    let x = XAxis {
        axis: names.axis(),
        desc: "seed",
        format: &format_x,
        label_area: names.label_area(fonts),
    };
    let mut chart = build_chart(&chart_area, fonts, &x, &frame.y, &y_desc)?;
    names.draw_rotated(&chart_area, &chart, frame.y.range.start)?;

    // Labels at the bar ends must fit their slot: in a smaller font, then
    // with a decimal less; with too many seeds they are left out.
    let slot_px = (frame.plot_width() / seeds.len() as u32).saturating_sub(6);
    let mut bar_labels = None;
    'fit: for decimals in [decimals, decimals.saturating_sub(1)] {
        for font in (fonts.label * 3 / 4..=fonts.label).rev() {
            let mut widest = 0;
            for d in finite.iter().copied().chain([f64::NAN]) {
                let text = bar_label(d, decimals);
                widest = widest.max(
                    chart_area
                        .estimate_text_size(&text, &text_style(font, &BLACK))?
                        .0,
                );
            }
            if widest <= slot_px {
                bar_labels = Some((font, decimals));
                break 'fit;
            }
        }
    }
    for (i, &d) in diffs.iter().enumerate() {
        if d.is_finite() {
            let color = if d >= 0.0 { up_color } else { down_color };
            let x = i as f64;
            chart.draw_series([Rectangle::new(
                [(x - 0.35, 0.0), (x + 0.35, d)],
                color.filled(),
            )])?;
        }
    }
    let x_range = &x.axis.range;
    let zero = vec![(x_range.start, 0.0), (x_range.end, 0.0)];
    chart.draw_series([PathElement::new(zero, BLACK.stroke_width(2))])?;
    if let Some(s) = stat {
        let mean = vec![(x_range.start, s.mean), (x_range.end, s.mean)];
        let style = mean_color.stroke_width(3);
        chart.draw_series(DashedLineSeries::new(mean, 14, 8, style))?;
    }
    // Values at the bar ends (above up bars, below down bars), on a white
    // backing so that the lines do not run through them.
    let Some((label_font, decimals)) = bar_labels else {
        return Ok(());
    };
    for (i, &d) in diffs.iter().enumerate() {
        let text = bar_label(d, decimals);
        let (color, at_y, above) = if d.is_finite() {
            (BLACK, d, d >= 0.0)
        } else {
            (GREY_800, 0.0, true)
        };
        let (w, h) = chart_area.estimate_text_size(&text, &text_style(label_font, &color))?;
        let (half_w, h) = (w as i32 / 2 + 3, h as i32 + 2);
        let (vpos, dy, backing) = if above {
            (VPos::Bottom, -6, [(-half_w, -6 - h), (half_w, -5)])
        } else {
            (VPos::Top, 6, [(-half_w, 5), (half_w, 6 + h)])
        };
        let style = text_style(label_font, &color).pos(Pos::new(HPos::Center, vpos));
        chart.draw_series([EmptyElement::at((i as f64, at_y))
            + Rectangle::new(backing, WHITE.mix(0.85).filled())
            + Text::new(text, (0, dy), style)])?;
    }
    Ok(())
}

/// A difference with its sign, or "n/a" if it is not finite.
fn bar_label(diff: f64, decimals: usize) -> String {
    if diff.is_finite() {
        format!("{diff:+.decimals$}")
    } else {
        "n/a".to_string()
    }
}

/// Runs with more points than this are drawn without markers.
const MAX_RUN_MARKERS: usize = 12;

/// A run's variant, seed label and (epoch, score) points.
type Run = (String, String, Vec<(usize, f64)>);

fn draw_runs<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    title: &str,
    score_name: &str,
    runs: &[Run],
) -> DrawResult<(), DB> {
    root.fill(&WHITE)?;
    let fonts = STANDARD_FONTS;
    let body = root
        .margin(8, 8, 12, 12)
        .titled(title, text_style(fonts.title, &BLACK))?;

    // Variants in order of first appearance, with their number of runs.
    let mut variants: Vec<(&str, usize)> = Vec::new();
    for (variant, _, _) in runs {
        match variants.iter_mut().find(|(v, _)| v == variant) {
            Some((_, count)) => *count += 1,
            None => variants.push((variant, 1)),
        }
    }
    let color_of = |variant: &str| {
        let i = variants
            .iter()
            .position(|(v, _)| *v == variant)
            .unwrap_or(0);
        PALETTE[i % PALETTE.len()]
    };
    let entries: Vec<LegendEntry> = variants
        .iter()
        .map(|&(variant, count)| {
            let marked = runs
                .iter()
                .any(|(v, _, points)| v == variant && points.len() <= MAX_RUN_MARKERS);
            let noun = if count == 1 { "run" } else { "runs" };
            LegendEntry::new(
                format!("{} ({count} {noun})", shorten(variant)),
                color_of(variant),
                Sample::Line(marked.then_some(Marker::Circle)),
            )
        })
        .collect();

    let traces: Vec<Trace> = runs
        .iter()
        .map(|(variant, _, points)| {
            let mut points: Vec<(f64, f64, bool)> =
                points.iter().map(|&(e, v)| (e as f64, v, false)).collect();
            points.sort_by(|a, b| a.0.total_cmp(&b.0));
            Trace {
                color: color_of(variant),
                // Markers would crowd long runs laid over each other.
                marker: (points.len() <= MAX_RUN_MARKERS).then_some(Marker::Circle),
                dashed: false,
                points,
            }
        })
        .collect();
    let y_range = data_range(traces.iter().flat_map(Trace::finite_values));
    let frame = Frame::new(body, fonts, y_range, &entries)?;
    let chart_area = frame.draw_legend(&entries, frame.legend.strip_height())?;

    let x = XAxis {
        axis: epoch_axis_over(
            runs.iter()
                .flat_map(|(_, _, points)| points.iter().map(|&(e, _)| e)),
        ),
        desc: "epoch",
        format: &format_epoch,
        label_area: CURVE_X_LABEL_AREA,
    };
    let y_desc = format!("validation {score_name}");
    let mut chart = build_chart(&chart_area, fonts, &x, &frame.y, &y_desc)?;
    for trace in &traces {
        draw_trace(&mut chart, trace, 2)?;
    }
    Ok(())
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

    fn pai_epochs(n: usize) -> Vec<PaiEpoch> {
        (1..=n)
            .map(|epoch| {
                let e = epoch as f64;
                PaiEpoch {
                    epoch,
                    val: 0.6 + 0.02 * e.min(10.0),
                    val_running: 0.58 + 0.02 * e.min(10.0),
                    train: Some(0.65 + 0.025 * e.min(10.0)),
                    test: Some(0.59 + 0.02 * e.min(10.0)),
                    lr: 2e-5 / e,
                    train_seconds: 40.0 + e,
                    val_seconds: 5.0,
                    discarded: false,
                }
            })
            .collect()
    }

    fn layer(name: &str, epochs: std::ops::RangeInclusive<usize>) -> LayerSeries {
        LayerSeries {
            layer: name.to_string(),
            points: epochs.map(|e| (e, 0.1 * e as f64)).collect(),
        }
    }

    fn pai_data(epochs: Vec<PaiEpoch>) -> PaiData {
        PaiData {
            title: "dendrites".to_string(),
            score_name: "macro-F1".to_string(),
            epochs,
            switch_epochs: Vec::new(),
            best_epoch: None,
            last_improved_epoch: None,
            layers: Vec::new(),
            layer_quantity: "mean |T| (gate weight) per wrapped layer".to_string(),
        }
    }

    fn names(names: &[&str]) -> Vec<String> {
        names.iter().map(|n| n.to_string()).collect()
    }

    #[test]
    fn pai_figure_writes_png() {
        let dir = TempDir::new("pai");
        let mut epochs = pai_epochs(20);
        for e in &mut epochs[5..8] {
            e.discarded = true;
        }
        epochs[3].val = f64::NAN;
        epochs[4].train = None;
        epochs.reverse();
        let mut data = pai_data(epochs);
        data.switch_epochs = vec![8, 14, 20];
        data.best_epoch = Some(17);
        data.last_improved_epoch = Some(19);
        data.layers = (0..11)
            .map(|l| layer(&format!("bert.encoder.layer.{l}.output.dense"), 9..=20))
            .collect();
        let path = dir.0.join("pai.png");
        pai_figure(&path, &data).unwrap();
        assert_png(&path);
    }

    #[test]
    fn pai_figure_degenerate_input() {
        let dir = TempDir::new("pai-degenerate");
        // One epoch, no switches, no layers, no train or test scores.
        let mut epochs = pai_epochs(1);
        epochs[0].train = None;
        epochs[0].test = None;
        let mut data = pai_data(epochs);
        data.best_epoch = Some(1);
        data.last_improved_epoch = Some(1);
        let path = dir.0.join("one.png");
        pai_figure(&path, &data).unwrap();
        assert_png(&path);

        // Layers without points, a best epoch that was never run, flat
        // values, zero learning rate and times, a switch after the last epoch.
        let mut epochs = pai_epochs(3);
        for e in &mut epochs {
            e.val = 0.5;
            e.val_running = 0.5;
            e.lr = 0.0;
            e.train_seconds = 0.0;
            e.val_seconds = 0.0;
            e.discarded = true;
        }
        let mut data = pai_data(epochs);
        data.switch_epochs = vec![3];
        data.best_epoch = Some(9);
        data.layers = vec![LayerSeries {
            layer: "classifier".to_string(),
            points: Vec::new(),
        }];
        data.layer_quantity = "x".repeat(300);
        let path = dir.0.join("flat.png");
        pai_figure(&path, &data).unwrap();
        assert_png(&path);

        let path = dir.0.join("never.png");
        assert!(matches!(
            pai_figure(&path, &pai_data(Vec::new())),
            Err(PlotError::Empty(_))
        ));
        assert!(!path.exists());
    }

    #[test]
    fn pai_panels_follow_the_data() {
        let mut data = pai_data(pai_epochs(4));
        data.epochs[1].discarded = true;
        data.best_epoch = Some(3);
        data.last_improved_epoch = Some(4);
        data.layers = (0..11)
            .map(|l| layer(&format!("encoder.layer.{l}"), 2..=4))
            .collect();
        let labels = |panel: &EpochPanel| -> Vec<String> {
            panel.legend.iter().map(|e| e.label.clone()).collect()
        };

        let score = score_panel(&data, &data.epochs);
        assert_eq!(score.traces.len(), 4);
        assert_eq!(score.dots.len(), 2);
        assert!(labels(&score).contains(&"best (epoch 3)".to_string()));
        assert!(labels(&score).contains(&"discarded by a restore".to_string()));
        // Epoch 2 and the segments to its neighbours are faded.
        let runs = line_runs(&score.traces[1].points);
        assert_eq!(
            runs.iter()
                .map(|(faded, run)| (*faded, run.len()))
                .collect::<Vec<_>>(),
            vec![(true, 3), (false, 2)]
        );

        let layers = layer_panel(&data);
        assert_eq!(layers.traces.len(), MAX_LAYERS);
        assert_eq!(layers.legend.last().unwrap().label, "+3 more");
        assert_eq!(layers.legend[0].label, "0");
        assert!(layers.note.is_none());

        data.layers.clear();
        let empty = layer_panel(&data);
        assert!(empty.traces.is_empty() && empty.legend.is_empty());
        assert_eq!(empty.note, Some("no dendrites added"));

        for e in &mut data.epochs {
            e.train = None;
            e.test = None;
        }
        data.best_epoch = None;
        let score = score_panel(&data, &data.epochs);
        assert_eq!(score.traces.len(), 2);
        assert_eq!(score.dots.len(), 1);
    }

    #[test]
    fn variant_comparison_writes_png() {
        let dir = TempDir::new("variants");
        let path = dir.0.join("two.png");
        let values = vec![vec![0.80, 0.81, 0.79], vec![0.82, 0.83, 0.815]];
        variant_comparison(
            &path,
            "F1",
            "macro-F1",
            &names(&["baseline", "dendritic"]),
            &values,
        )
        .unwrap();
        assert_png(&path);

        let path = dir.0.join("single.png");
        variant_comparison(&path, "one", "F1", &names(&["baseline"]), &[vec![0.8]]).unwrap();
        assert_png(&path);

        // Zero sd, negative values, a missing value, an empty variant and
        // names that must be turned sideways.
        let path = dir.0.join("odd.png");
        let variants: Vec<String> = (0..7).map(|i| format!("variant number {i}")).collect();
        let mut values = vec![vec![-0.4, -0.4, -0.4]; 6];
        values[1][1] = f64::NAN;
        values.push(Vec::new());
        variant_comparison(&path, "odd", "loss", &variants, &values).unwrap();
        assert_png(&path);
    }

    #[test]
    fn paired_differences_writes_png() {
        let dir = TempDir::new("diffs");
        let seeds = names(&["seed 1", "seed 2", "seed 3"]);
        let path = dir.0.join("mixed.png");
        paired_differences(&path, "d", "macro-F1", &seeds, &[0.01, -0.004, 0.02]).unwrap();
        assert_png(&path);

        let path = dir.0.join("negative.png");
        let diffs = [-0.01, f64::NAN, -0.03];
        paired_differences(&path, "d", "macro-F1", &seeds, &diffs).unwrap();
        assert_png(&path);

        let path = dir.0.join("single.png");
        paired_differences(&path, "d", "F1", &seeds[..1], &[0.0]).unwrap();
        assert_png(&path);

        let path = dir.0.join("many.png");
        let many: Vec<String> = (0..60).map(|i| format!("seed {i}")).collect();
        let diffs: Vec<f64> = (0..60).map(|i| (i as f64).sin() * 0.01).collect();
        paired_differences(&path, "d", "F1", &many, &diffs).unwrap();
        assert_png(&path);
    }

    #[test]
    fn training_comparison_writes_png() {
        let dir = TempDir::new("runs");
        let runs: Vec<Run> = (0..3)
            .flat_map(|seed| {
                ["baseline", "dendritic"].map(|variant| {
                    let points = (1..=15)
                        .rev()
                        .map(|e| (e, 0.6 + 0.01 * (e + seed) as f64))
                        .collect();
                    (variant.to_string(), format!("seed {seed}"), points)
                })
            })
            .collect();
        let path = dir.0.join("runs.png");
        training_comparison(&path, "runs", "macro-F1", &runs).unwrap();
        assert_png(&path);

        let single = [("baseline".to_string(), "seed 0".to_string(), vec![(1, 0.7)])];
        let path = dir.0.join("single.png");
        training_comparison(&path, "one", "accuracy", &single).unwrap();
        assert_png(&path);
    }

    #[test]
    fn sweep_charts_reject_empty_and_misshapen_input() {
        let dir = TempDir::new("sweep-errors");
        let path = dir.0.join("never.png");
        assert!(matches!(
            variant_comparison(&path, "t", "m", &[], &[]),
            Err(PlotError::Empty(_))
        ));
        assert!(matches!(
            variant_comparison(&path, "t", "m", &names(&["a", "b"]), &[vec![1.0]]),
            Err(PlotError::Shape(_))
        ));
        assert!(matches!(
            paired_differences(&path, "t", "m", &[], &[]),
            Err(PlotError::Empty(_))
        ));
        assert!(matches!(
            paired_differences(&path, "t", "m", &names(&["a"]), &[1.0, 2.0]),
            Err(PlotError::Shape(_))
        ));
        assert!(matches!(
            training_comparison(&path, "t", "m", &[]),
            Err(PlotError::Empty(_))
        ));
        let no_scores = [("a".to_string(), "s".to_string(), vec![(1, f64::NAN)])];
        assert!(matches!(
            training_comparison(&path, "t", "m", &no_scores),
            Err(PlotError::Empty(_))
        ));
        assert!(!path.exists());
    }

    #[test]
    fn tick_labels() {
        assert_eq!(scientific(1e-4), "1e-4");
        assert_eq!(scientific(2.5e-5), "2.5e-5");
        assert_eq!(scientific(1.2000000000000002e-5), "1.2e-5");
        assert_eq!(scientific(0.0), "0");
        let lr_ticks = [0.0, 5e-6, 1e-5, 1.5e-5];
        assert_eq!(TickFormat::for_ticks(&lr_ticks), TickFormat::Scientific);
        assert_eq!(
            TickFormat::for_ticks(&[0.5, 0.55, 0.6]),
            TickFormat::Fixed(2)
        );
        assert_eq!(TickFormat::for_ticks(&[0.0]), TickFormat::Fixed(2));
    }

    #[test]
    fn summaries_and_ranges() {
        let s = Summary::of(&[1.0, 2.0, 3.0, f64::NAN]).unwrap();
        assert_eq!((s.n, s.mean, s.sd), (3, 2.0, 1.0));
        assert_eq!(Summary::of(&[0.8; 3]).unwrap().sd, 0.0);
        assert_eq!(Summary::of(&[0.8]).unwrap().sd, 0.0);
        assert!(Summary::of(&[f64::NAN]).is_none());

        let flat = data_range([0.8, 0.8 + 1e-16].into_iter());
        assert!(flat.end - flat.start > 0.1, "{flat:?}");
        assert_eq!(zero_based_range([0.0, 0.0].into_iter()), 0.0..1.0);
        assert!(zero_based_range([2e-5].into_iter()).end > 2e-5);
        let grown = with_headroom(0.0..1.0, 100, 0, 500);
        assert_eq!(grown.start, 0.0);
        assert!((grown.end - 1.25).abs() < 1e-12, "{grown:?}");
        assert_eq!(value_decimals(0.011), 4);
        assert_eq!(value_decimals(0.8), 3);
        assert_eq!(value_decimals(0.0), 3);
    }

    #[test]
    fn layer_labels_drop_the_shared_prefix() {
        assert_eq!(
            layer_labels(&["bert.layer.0.dense", "bert.layer.1.dense"]),
            vec!["0.dense", "1.dense"]
        );
        assert_eq!(layer_labels(&["a.b", "a.b"]), vec!["b", "b"]);
        assert_eq!(layer_labels(&["bert.pooler"]), vec!["bert.pooler"]);
        let long = format!("{}.dense", "x".repeat(40));
        let label = &layer_labels(&[long.as_str()])[0];
        assert_eq!(label.chars().count(), MAX_LAYER_CHARS);
        assert!(label.starts_with('…') && label.ends_with(".dense"));
    }

    #[test]
    fn line_runs_split_at_gaps_and_fading() {
        let points = [
            (1.0, 1.0, false),
            (2.0, 2.0, false),
            (3.0, f64::NAN, false),
            (4.0, 4.0, false),
            (5.0, 5.0, true),
            (6.0, 6.0, false),
            (7.0, 7.0, false),
        ];
        let runs = line_runs(&points);
        assert_eq!(
            runs,
            vec![
                (false, vec![(1.0, 1.0), (2.0, 2.0)]),
                (true, vec![(4.0, 4.0), (5.0, 5.0), (6.0, 6.0)]),
                (false, vec![(6.0, 6.0), (7.0, 7.0)]),
            ]
        );
        assert!(line_runs(&points[..1]).is_empty());
    }
}
