//! The dendrite figure of a tracked (dendritic or baseline) run: scores with
//! the best and last-improved epochs marked, the per-layer dendrite quantity
//! from the first epoch with dendrites on, the learning rate (the range of
//! each epoch's optimiser steps and its last step, so that a restarted
//! schedule shows) and the time of each epoch, with orange lines where
//! dendrites were added.

use std::ops::Range;

use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::full_palette::{
    BLUE_300, BLUE_700, GREEN_700, GREY_600, GREY_800, PURPLE_500, TEAL_200, TEAL_700,
};
use plotters::style::text_anchor::{HPos, Pos, VPos};

use super::axis::{
    data_range, epoch_axis, format_epoch, zero_based_range, Chart, TickedAxis, XAxis, YAxis,
};
use super::frame::{build_chart, legend_strips, titled, Frame, Panel, PanelGrid};
use super::legend::{LegendEntry, Sample};
use super::line::{Line, Marker};
use super::style::{centre_nudge, fade, fit_text, text_style, LARGE_FONTS, PALETTE, SWITCH_COLOR};
use super::{render, DrawResult, PlotError};

const SIZE: (u32, u32) = (2800, 1400);
/// Layers drawn in the layer panel; the rest are counted in its legend.
const MAX_LAYERS: usize = 8;
/// Layer names longer than this keep only their end.
const MAX_LAYER_CHARS: usize = 32;
/// Half the width, in epochs, of a learning-rate range bar.
const LR_BAR_HALF_WIDTH: f64 = 0.3;
/// The learning-rate range bars.
const LR_RANGE_COLOR: RGBColor = TEAL_200;
/// The ring around the last-improved epoch: radius and stroke width in pixels.
const RING: (i32, u32) = (14, 4);

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
    /// Learning rate of the epoch's last optimiser step.
    pub lr: f64,
    /// Lowest learning rate of the epoch's optimiser steps. Unknown (and
    /// not drawn) when it or `lr_max` is not finite, or both are 0.
    pub lr_min: f64,
    /// Highest learning rate of the epoch's optimiser steps.
    pub lr_max: f64,
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
    /// Epochs (1-based) after which a dendrite set was added (or, in a
    /// restart arm, the network restored and training restarted): an orange
    /// vertical line at epoch + 0.5.
    pub switch_epochs: Vec<usize>,
    /// Black dot on the validation curve.
    pub best_epoch: Option<usize>,
    /// Grey ring on the validation curve.
    pub last_improved_epoch: Option<usize>,
    pub layers: Vec<LayerSeries>,
    /// Y-axis label of the top-right panel, e.g. "mean |T| (gate weight) per wrapped layer".
    pub layer_quantity: String,
    /// Written in the middle of the top-right panel when no layer has a
    /// point to draw, e.g. "no dendrites added".
    pub no_layers_note: String,
    /// Legend label of the orange switch lines, e.g. "dendrites added" or
    /// "restart (no set added)".
    pub switch_label: String,
    /// The added tensors' learning rate over the plotted one, when they
    /// train at their own (`dendrites.lr`): named in the rate panel's title.
    pub added_lr_scale: Option<f64>,
}

/// 2x2 panel figure, 2800x1400 px:
/// top-left: scores per epoch (validation solid, validation running score
/// dashed in a lighter colour, train and test if present), a black dot at
/// best_epoch and a larger hollow grey ring around the validation point at
/// last_improved_epoch (so both show when they are the same epoch), orange
/// vertical lines at each switch, discarded epochs drawn faded;
/// top-right: one line per LayerSeries from the first epoch with dendrites
/// (the first after the first switch; points up to it are not drawn, and the
/// x axis starts there), at most 8 lines and "+N more" in the legend, y label
/// = layer_quantity; with nothing to draw, `no_layers_note` in the middle;
/// bottom-left: learning rate per epoch: a light bar from the lowest to the
/// highest rate of the epoch's steps (where known) under a line through the
/// last step's rate; scientific tick labels like 1e-4; with
/// `added_lr_scale`, the title says the added tensors train at that multiple;
/// bottom-right: seconds per epoch, train and validation as two lines.
/// Every panel has a title, x label "epoch" with integer ticks (from 1 but in
/// the top-right panel) and a y label; the orange lines cross each of them.
///
/// Epochs may come in any order; non-finite values are left out of the plot.
pub fn pai_figure(data: &PaiData) -> Result<Vec<u8>, PlotError> {
    if data.epochs.is_empty() {
        return Err(PlotError::Empty(
            "the dendrite figure needs at least one epoch",
        ));
    }
    let mut epochs = data.epochs.clone();
    epochs.sort_by_key(|e| e.epoch);
    render("pai", SIZE, |root| draw_pai(root, data, &epochs))
}

fn draw_pai<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    data: &PaiData,
    epochs: &[PaiEpoch],
) -> DrawResult<(), DB> {
    let fonts = LARGE_FONTS;
    let body = titled(root, &data.title, fonts, (10, 10, 14, 14))?;
    let areas = body.split_evenly((2, 2));

    let switches: Vec<f64> = data.switch_epochs.iter().map(|&e| e as f64 + 0.5).collect();
    let layer_epochs = data
        .layers
        .iter()
        .flat_map(|l| l.points.iter().map(|&(e, _)| e));
    let all_epochs = || {
        epochs
            .iter()
            .map(|e| e.epoch)
            .chain(layer_epochs.clone())
            .chain(data.switch_epochs.iter().copied())
    };
    let mut x_axis = epoch_axis(all_epochs());
    if let Some(last_switch) = switches.iter().copied().reduce(f64::max) {
        x_axis.range.end = x_axis.range.end.max(last_switch + 0.3);
    }
    let last_epoch = all_epochs().max().unwrap_or(1);

    let mut panels = [
        score_panel(data, epochs),
        layer_panel(data, last_epoch, x_axis.range.end),
        lr_panel(epochs, data.added_lr_scale),
        time_panel(epochs),
    ];
    for panel in &mut panels {
        let range = panel.x.as_ref().unwrap_or(&x_axis).range.clone();
        if switches.iter().any(|s| range.contains(s)) {
            panel.panel.legend.push(LegendEntry::new(
                data.switch_label.clone(),
                SWITCH_COLOR,
                Sample::Rule,
            ));
        }
    }
    let grid = PanelGrid {
        fonts,
        margin: (14, 10, 18, 18),
        columns: 2,
        x: XAxis {
            axis: x_axis,
            desc: "epoch",
            format: &format_epoch,
            label_area: fonts.label + fonts.desc + 30,
        },
        y_label_area: None,
        switches: &switches,
    };
    draw_pai_panels(&areas, &grid, &panels)
}

/// A panel of the dendrite figure: a [`Panel`] of lines and dots, and what
/// the dendrite figure draws besides.
struct PaiPanel {
    panel: Panel,
    /// The panel's own x axis; `None` for the figure's.
    x: Option<TickedAxis>,
    /// Filled boxes under everything else: two opposite corners and a colour.
    boxes: Vec<([(f64, f64); 2], RGBColor)>,
    /// Hollow rings over everything else: centre, radius and colour.
    rings: Vec<((f64, f64), i32, RGBColor)>,
    /// Written in the middle of the plot.
    note: Option<String>,
}

impl From<Panel> for PaiPanel {
    fn from(panel: Panel) -> Self {
        Self {
            panel,
            x: None,
            boxes: Vec::new(),
            rings: Vec::new(),
            note: None,
        }
    }
}

/// Draws `panels` on `areas` (one each, row by row) as
/// [`super::frame::draw_panels`] does (panels in a row share a legend strip
/// height, so that their plots line up), each over its own x axis if it has
/// one, with its boxes, rings and note.
fn draw_pai_panels<DB: DrawingBackend>(
    areas: &[DrawingArea<DB, Shift>],
    grid: &PanelGrid<'_>,
    panels: &[PaiPanel],
) -> DrawResult<(), DB> {
    let fonts = grid.fonts;
    let (top, bottom, left, right) = grid.margin;
    let mut frames = Vec::with_capacity(panels.len());
    for (area, p) in areas.iter().zip(panels) {
        let inner = area
            .margin(top, bottom, left, right)
            .titled(&p.panel.caption, text_style(fonts.caption, &BLACK))?;
        let mut y = YAxis::new(&inner, fonts, p.panel.y_range.clone())?;
        if let Some(label_area) = grid.y_label_area {
            y.label_area = label_area;
        }
        frames.push(Frame::new(inner, fonts, y, &p.panel.legend)?);
    }
    let strips = legend_strips(&frames, grid.columns);

    for ((p, frame), strip) in panels.iter().zip(&frames).zip(strips) {
        let chart_area = frame.draw_legend(strip)?;
        let x = XAxis {
            axis: p.x.clone().unwrap_or_else(|| grid.x.axis.clone()),
            ..grid.x
        };
        let mut chart = build_chart(&chart_area, fonts, &x, &frame.y, &p.panel.y_desc)?;
        let (x_range, y_range) = (&x.axis.range, &frame.y.range);
        chart.draw_series(
            p.boxes
                .iter()
                .map(|&(corners, color)| Rectangle::new(corners, color.filled())),
        )?;
        let switch = SWITCH_COLOR.stroke_width(3);
        chart.draw_series(
            grid.switches
                .iter()
                .filter(|s| x_range.contains(s))
                .map(|&s| PathElement::new(vec![(s, y_range.start), (s, y_range.end)], switch)),
        )?;
        for line in &p.panel.lines {
            line.draw(&mut chart)?;
        }
        for &(at, radius, color) in &p.panel.dots {
            chart.draw_series([Circle::new(at, radius, color.filled())])?;
        }
        for &(at, radius, color) in &p.rings {
            chart.draw_series([Circle::new(at, radius, color.stroke_width(RING.1))])?;
        }
        if let Some(note) = &p.note {
            draw_centre_note(&chart, x_range, y_range, note, fonts.caption)?;
        }
    }
    Ok(())
}

/// Writes `text` on white in the middle of the plot, smaller or shortened
/// if it is too wide for it.
fn draw_centre_note<DB: DrawingBackend>(
    chart: &Chart<'_, DB>,
    x_range: &Range<f64>,
    y_range: &Range<f64>,
    text: &str,
    font: u32,
) -> DrawResult<(), DB> {
    let plot = chart.plotting_area();
    let width = plot.dim_in_pixel().0;
    let (text, font) = fit_text(plot, text, font, width.saturating_sub(20))?;
    let centre = (
        (x_range.start + x_range.end) / 2.0,
        (y_range.start + y_range.end) / 2.0,
    );
    let style = text_style(font, &GREY_800).pos(Pos::new(HPos::Center, VPos::Center));
    // On white, so that the orange lines do not cross it.
    let (w, h) = plot.estimate_text_size(&text, &style)?;
    let (w, h, nudge) = (w as i32 / 2 + 12, h as i32 / 2 + 8, centre_nudge(font));
    let backing = Rectangle::new([(-w, nudge - h), (w, nudge + h)], WHITE.filled());
    let note = Text::new(text, (0, nudge), style);
    plot.draw(&(EmptyElement::at(centre) + backing + note))
}

/// Scores per epoch, with a black dot at the best epoch and a grey ring
/// around the last-improved one (drawn after the dot, so that both show
/// when they are the same epoch).
fn score_panel(data: &PaiData, epochs: &[PaiEpoch]) -> PaiPanel {
    let score = &data.score_name;
    let mut panel = Panel::new(format!("{score} per epoch"), score.clone());
    let line = |color, marker, value: &dyn Fn(&PaiEpoch) -> f64| Line {
        marker,
        points: epochs
            .iter()
            .map(|e| (e.epoch as f64, value(e), e.discarded))
            .collect(),
        ..Line::new(color, [])
    };
    panel.line(
        "validation (running)",
        Line {
            dashed: true,
            ..line(BLUE_300, None, &|e| e.val_running)
        },
    );
    panel.line(
        "validation",
        line(BLUE_700, Some(Marker::Circle), &|e| e.val),
    );
    if epochs.iter().any(|e| e.train.is_some()) {
        panel.line(
            "train",
            line(GREEN_700, Some(Marker::Triangle), &|e| {
                e.train.unwrap_or(f64::NAN)
            }),
        );
    }
    if epochs.iter().any(|e| e.test.is_some()) {
        panel.line(
            "test",
            line(PURPLE_500, Some(Marker::Square), &|e| {
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
    let mut rings = Vec::new();
    if let Some((epoch, at)) = val_at(data.best_epoch) {
        panel.dots.push((at, 8, BLACK));
        panel.legend.push(LegendEntry::new(
            format!("best (selected) epoch: {epoch}"),
            BLACK,
            Sample::Dot(8),
        ));
    }
    if let Some((epoch, at)) = val_at(data.last_improved_epoch) {
        rings.push((at, RING.0, GREY_600));
        panel.legend.push(LegendEntry::new(
            format!("last improved epoch: {epoch}"),
            GREY_600,
            Sample::Dot(8),
        ));
    }
    if epochs.iter().any(|e| e.discarded) {
        panel.legend.push(LegendEntry::new(
            "discarded by a restore",
            fade(BLUE_700),
            Sample::Line(Some(Marker::Circle)),
        ));
    }
    PaiPanel {
        rings,
        ..panel.into()
    }
}

/// The per-layer dendrite quantity from the first epoch with dendrites (the
/// first after the first switch) to `last_epoch`, over an x axis that starts
/// there and ends at `x_end`; or [`PaiData::no_layers_note`] if no layer has
/// a finite value after the first switch.
fn layer_panel(data: &PaiData, last_epoch: usize, x_end: f64) -> PaiPanel {
    let mut panel = Panel::new("dendrites per layer", data.layer_quantity.clone());
    let first_switch = data.switch_epochs.iter().min().copied();
    let drawn: Vec<(&str, Vec<(f64, f64)>)> = data
        .layers
        .iter()
        .map(|layer| {
            let mut points: Vec<(f64, f64)> = layer
                .points
                .iter()
                .filter(|&&(e, v)| v.is_finite() && first_switch.is_none_or(|s| e > s))
                .map(|&(e, v)| (e as f64, v))
                .collect();
            points.sort_by(|a, b| a.0.total_cmp(&b.0));
            (layer.layer.as_str(), points)
        })
        .filter(|(_, points)| !points.is_empty())
        .collect();
    let Some(first) = drawn
        .iter()
        .flat_map(|(_, points)| points.iter().map(|p| p.0 as usize))
        .min()
    else {
        return PaiPanel {
            note: Some(data.no_layers_note.clone()),
            ..panel.into()
        };
    };

    let shown = &drawn[..drawn.len().min(MAX_LAYERS)];
    let names: Vec<&str> = shown.iter().map(|(name, _)| *name).collect();
    for (((_, points), name), color) in shown.iter().zip(layer_labels(&names)).zip(PALETTE) {
        let line = Line {
            marker: Some(Marker::Circle),
            ..Line::new(color, points.iter().copied())
        };
        panel.line(name, line);
    }
    let hidden = drawn.len() - shown.len();
    if hidden > 0 {
        panel.legend.push(LegendEntry::new(
            format!("+{hidden} more"),
            BLACK,
            Sample::Nothing,
        ));
    }
    panel.y_range = data_range(panel.values());
    let mut x = epoch_axis_from(first, last_epoch.max(first));
    // Room for the orange line half an epoch before the first point.
    x.range.start = x.range.start.min(first as f64 - 0.8);
    x.range.end = x.range.end.max(x_end);
    PaiPanel {
        x: Some(x),
        ..panel.into()
    }
}

/// An epoch axis like [`epoch_axis`]'s, but from `first` (not 1) to `last`:
/// `first`, then round multiples of a round step.
fn epoch_axis_from(first: usize, last: usize) -> TickedAxis {
    // From 0, the ticks of `epoch_axis` are 0 and the multiples of its step.
    let from_zero = epoch_axis([0, last - first].into_iter());
    let step = from_zero.ticks.get(1).map_or(1, |&t| t as usize).max(1);
    let mut ticks = vec![first];
    if step <= 2 {
        ticks.extend((first + step..=last).step_by(step));
    } else {
        let round = (first / step + 1) * step;
        ticks.extend(
            (round..=last)
                .step_by(step)
                .filter(|&t| t - first >= step - step / 2),
        );
    }
    let shift = first as f64;
    TickedAxis {
        range: from_zero.range.start + shift..from_zero.range.end + shift,
        ticks: ticks.into_iter().map(|t| t as f64).collect(),
    }
}

/// The lowest and highest learning rate of an epoch's steps, if known.
fn lr_range(e: &PaiEpoch) -> Option<(f64, f64)> {
    let (lo, hi) = (e.lr_min, e.lr_max);
    let known = lo.is_finite() && hi.is_finite() && (lo != 0.0 || hi != 0.0);
    known.then(|| (lo.min(hi), lo.max(hi)))
}

/// The learning rate per epoch: a light bar over the range of the epoch's
/// steps, where known, under a line through its last step's rate. A scale
/// other than 1 is named in the title ("added tensors at 50× this").
fn lr_panel(epochs: &[PaiEpoch], added_scale: Option<f64>) -> PaiPanel {
    let caption = match added_scale {
        Some(k) if k.is_finite() && k > 0.0 && k != 1.0 => {
            let k = format!("{:.3}", k);
            let k = k.trim_end_matches('0').trim_end_matches('.');
            format!("learning rate (added tensors at {k}× this)")
        }
        _ => "learning rate".to_string(),
    };
    let mut panel = Panel::new(caption, "learning rate");
    let ranges: Vec<(f64, f64, f64)> = epochs
        .iter()
        .filter_map(|e| lr_range(e).map(|(lo, hi)| (e.epoch as f64, lo, hi)))
        .collect();
    if !ranges.is_empty() {
        panel.legend.push(LegendEntry::new(
            "range over the epoch's steps",
            LR_RANGE_COLOR,
            Sample::Bar,
        ));
    }
    let points = epochs.iter().map(|e| (e.epoch as f64, e.lr));
    let line = Line {
        marker: Some(Marker::Circle),
        ..Line::new(TEAL_700, points)
    };
    let label = if ranges.is_empty() {
        "learning rate"
    } else {
        "last step"
    };
    panel.line(label, line);
    let bounds = ranges.iter().flat_map(|&(_, lo, hi)| [lo, hi]);
    panel.y_range = zero_based_range(panel.values().chain(bounds));
    let boxes = ranges
        .iter()
        .map(|&(x, lo, hi)| {
            let corners = [(x - LR_BAR_HALF_WIDTH, lo), (x + LR_BAR_HALF_WIDTH, hi)];
            (corners, LR_RANGE_COLOR)
        })
        .collect();
    PaiPanel {
        boxes,
        ..panel.into()
    }
}

fn time_panel(epochs: &[PaiEpoch]) -> PaiPanel {
    let mut panel = Panel::new("time per epoch", "seconds");
    let line = |color, marker, value: fn(&PaiEpoch) -> f64| Line {
        marker: Some(marker),
        ..Line::new(color, epochs.iter().map(|e| (e.epoch as f64, value(e))))
    };
    panel.line(
        "train",
        line(GREEN_700, Marker::Circle, |e| e.train_seconds),
    );
    panel.line(
        "validation",
        line(BLUE_700, Marker::Triangle, |e| e.val_seconds),
    );
    panel.y_range = zero_based_range(panel.values());
    panel.into()
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plots::testing::assert_png;

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
                    lr_min: 0.0,
                    lr_max: 0.0,
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
            no_layers_note: "no dendrites added".to_string(),
            switch_label: "dendrites added".to_string(),
            added_lr_scale: None,
        }
    }

    /// A run whose schedule (a warm-up epoch, then a linear decay over
    /// `phase` epochs) restarts after each switch.
    fn restarted_epochs(n: usize, switches: &[usize]) -> Vec<PaiEpoch> {
        let (peak, phase) = (5e-5, 6.0);
        let mut epochs = pai_epochs(n);
        for e in &mut epochs {
            let start = switches
                .iter()
                .filter(|&&s| s < e.epoch)
                .max()
                .map_or(1, |s| s + 1);
            let k = (e.epoch - start) as f64;
            let at = |k: f64| peak * (1.0 - k / phase).max(0.05);
            (e.lr_min, e.lr_max, e.lr) = if k == 0.0 {
                (peak / 100.0, peak, peak)
            } else {
                (at(k), at(k - 1.0), at(k))
            };
        }
        epochs
    }

    #[test]
    fn pai_figure_renders_png() {
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
        assert_png(&pai_figure(&data).unwrap(), (2800, 1400));
    }

    /// Two switches, each followed by a restarted learning-rate schedule;
    /// the best and last-improved epochs are the same. Set `PAI_CHECK_PNG`
    /// to a path to have the figure written there to look at.
    #[test]
    fn pai_figure_of_a_restarted_run() {
        let switches = [8, 14];
        let mut epochs = restarted_epochs(20, &switches);
        for e in &mut epochs[8..14] {
            e.discarded = true;
        }
        // A record from before the range was kept: the line only.
        (epochs[3].lr_min, epochs[3].lr_max) = (f64::NAN, f64::NAN);
        let mut data = pai_data(epochs);
        data.title = "bert dendritic seed 0: 2 dendrite set(s) in the best network".to_string();
        data.switch_epochs = switches.to_vec();
        data.best_epoch = Some(18);
        data.last_improved_epoch = Some(18);
        data.added_lr_scale = Some(50.0);
        // Zero before the first switch, as recorded.
        data.layers = (0..3)
            .map(|l| LayerSeries {
                layer: format!("bert.encoder.layer.{l}.output.dense"),
                points: (1..=20)
                    .map(|e| {
                        (
                            e,
                            if e > 8 {
                                0.02 * (e - 8) as f64 + 0.01 * l as f64
                            } else {
                                0.0
                            },
                        )
                    })
                    .collect(),
            })
            .collect();
        let png = pai_figure(&data).unwrap();
        assert_png(&png, (2800, 1400));
        if let Some(path) = std::env::var_os("PAI_CHECK_PNG") {
            std::fs::write(path, &png).unwrap();
        }

        let lr = lr_panel(&data.epochs, None);
        assert_eq!(lr.boxes.len(), 19);
        assert_eq!(lr.panel.caption, "learning rate");
        let scaled = lr_panel(&data.epochs, Some(1e-3 / 2e-5));
        assert_eq!(
            scaled.panel.caption,
            "learning rate (added tensors at 50× this)"
        );
        let scaled = lr_panel(&data.epochs, Some(0.125));
        assert_eq!(
            scaled.panel.caption,
            "learning rate (added tensors at 0.125× this)"
        );
        assert_eq!(
            lr_panel(&data.epochs, Some(1.0)).panel.caption,
            "learning rate"
        );
        // The bars of the epochs after a switch start again from the warm-up.
        let bar = |epoch: f64| {
            lr.boxes
                .iter()
                .find(|b| b.0[0].0 < epoch && epoch < b.0[1].0)
                .unwrap()
                .0
        };
        assert_eq!((bar(9.0)[0].1, bar(9.0)[1].1), (5e-5 / 100.0, 5e-5));
        assert!(bar(8.0)[1].1 < 2e-5);
        assert_eq!(lr.panel.legend[0].label, "range over the epoch's steps");
        assert_eq!(lr.panel.legend[1].label, "last step");
        assert_eq!(lr.panel.y_range.start, 0.0);
        assert!(lr.panel.y_range.end >= 5e-5);
    }

    #[test]
    fn pai_figure_degenerate_input() {
        // One epoch, no switches, no layers, no train or test scores.
        let mut epochs = pai_epochs(1);
        epochs[0].train = None;
        epochs[0].test = None;
        let mut data = pai_data(epochs);
        data.best_epoch = Some(1);
        data.last_improved_epoch = Some(1);
        assert_png(&pai_figure(&data).unwrap(), (2800, 1400));

        // Layers without points, a best epoch that was never run, flat
        // values, zero learning rate and times, a switch after the last
        // epoch, a long note.
        let mut epochs = pai_epochs(3);
        for e in &mut epochs {
            e.val = 0.5;
            e.val_running = 0.5;
            e.lr = 0.0;
            (e.lr_min, e.lr_max) = (f64::INFINITY, 1e-5);
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
        data.no_layers_note = "y".repeat(300);
        assert_png(&pai_figure(&data).unwrap(), (2800, 1400));

        // Dendrite values only up to the first switch, one epoch after it.
        let mut data = pai_data(pai_epochs(3));
        data.switch_epochs = vec![2];
        data.layers = vec![layer("classifier", 1..=2)];
        assert_eq!(
            layer_panel(&data, 3, 3.5).note.as_deref(),
            Some("no dendrites added")
        );
        data.layers = vec![layer("classifier", 1..=3)];
        assert_png(&pai_figure(&data).unwrap(), (2800, 1400));
    }

    #[test]
    fn pai_figure_rejects_no_epochs() {
        assert!(matches!(
            pai_figure(&pai_data(Vec::new())),
            Err(PlotError::Empty(_))
        ));
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
        let labels = |panel: &PaiPanel| -> Vec<String> {
            panel.panel.legend.iter().map(|e| e.label.clone()).collect()
        };

        let score = score_panel(&data, &data.epochs);
        assert_eq!(score.panel.lines.len(), 4);
        assert_eq!(score.panel.dots, [((3.0, data.epochs[2].val), 8, BLACK)]);
        assert_eq!(score.rings, [((4.0, data.epochs[3].val), RING.0, GREY_600)]);
        assert!(labels(&score).contains(&"best (selected) epoch: 3".to_string()));
        assert!(labels(&score).contains(&"last improved epoch: 4".to_string()));
        assert!(labels(&score).contains(&"discarded by a restore".to_string()));
        // Epoch 2 is drawn faded; the running score is dashed.
        let faded: Vec<bool> = score.panel.lines[1].points.iter().map(|p| p.2).collect();
        assert_eq!(faded, [false, true, false, false]);
        assert!(score.panel.lines[0].dashed && !score.panel.lines[1].dashed);

        // Without switches, every point is drawn, from the first one.
        let layers = layer_panel(&data, 4, 4.5);
        assert_eq!(layers.panel.lines.len(), MAX_LAYERS);
        assert_eq!(layers.panel.legend.last().unwrap().label, "+3 more");
        assert_eq!(layers.panel.legend[0].label, "0");
        assert!(layers.note.is_none());
        assert_eq!(layers.x.unwrap().ticks, [2.0, 3.0, 4.0]);

        // With switches, only the points after the first one.
        data.switch_epochs = vec![2, 3];
        let layers = layer_panel(&data, 4, 4.5);
        let x = layers.x.unwrap();
        assert_eq!(x.ticks, [3.0, 4.0]);
        assert!(x.range.start < 2.5 && 2.5 < 3.0 && x.range.end == 4.5);
        assert!(layers.panel.lines[0].points.iter().all(|p| p.0 > 2.0));
        assert_eq!(layers.panel.lines[0].points.len(), 2);

        data.layers.clear();
        data.no_layers_note = "no dendrites in this arm".to_string();
        let empty = layer_panel(&data, 4, 4.5);
        assert!(empty.panel.lines.is_empty() && empty.panel.legend.is_empty());
        assert!(empty.x.is_none());
        assert_eq!(empty.note.as_deref(), Some("no dendrites in this arm"));

        // Old records without the learning-rate range: the line only.
        let lr = lr_panel(&data.epochs, None);
        assert!(lr.boxes.is_empty());
        assert_eq!(labels(&lr), ["learning rate"]);

        for e in &mut data.epochs {
            e.train = None;
            e.test = None;
        }
        data.best_epoch = None;
        let score = score_panel(&data, &data.epochs);
        assert_eq!(score.panel.lines.len(), 2);
        assert!(score.panel.dots.is_empty());
        assert_eq!(score.rings.len(), 1);
    }

    #[test]
    fn later_epoch_axes_start_at_their_first_epoch() {
        assert_eq!(epoch_axis_from(9, 9).ticks, [9.0]);
        assert_eq!(epoch_axis_from(9, 12).ticks, [9.0, 10.0, 11.0, 12.0]);
        let axis = epoch_axis_from(9, 100);
        assert_eq!(axis.ticks[..3], [9.0, 20.0, 30.0]);
        assert!(axis.ticks.len() <= super::super::axis::MAX_EPOCH_TICKS);
        assert!(axis.range.start < 9.0 && axis.range.end > 100.0);
    }

    #[test]
    fn learning_rate_ranges() {
        let mut e = pai_epochs(1).remove(0);
        assert_eq!(lr_range(&e), None);
        (e.lr_min, e.lr_max) = (2e-5, 1e-5);
        assert_eq!(lr_range(&e), Some((1e-5, 2e-5)));
        (e.lr_min, e.lr_max) = (0.0, 1e-5);
        assert_eq!(lr_range(&e), Some((0.0, 1e-5)));
        (e.lr_min, e.lr_max) = (f64::NAN, 1e-5);
        assert_eq!(lr_range(&e), None);
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
}
