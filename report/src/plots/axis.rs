//! Axes: a linear axis with chosen ticks ([`TickedAxis`]), epoch axes with
//! integer ticks, value ranges with room around the data, how tick values
//! are written ([`TickFormat`]), the y and x axis descriptions a chart is
//! built from, and class or variant names under a categorical x axis.

use std::ops::Range;

use plotters::coord::ranged1d::{DefaultFormatting, KeyPointHint};
use plotters::coord::types::RangedCoordf64;
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use super::style::{centre_nudge, shorten, text_style, Fonts};
use super::DrawResult;

/// A chart over two [`TickedAxis`] axes, as every figure but the confusion
/// matrix draws.
pub(super) type Chart<'a, DB> = ChartContext<'a, DB, Cartesian2d<TickedAxis, TickedAxis>>;

/// At most this many epoch ticks are labelled.
pub(super) const MAX_EPOCH_TICKS: usize = 12;
/// About this many y ticks are labelled.
const Y_TICKS: usize = 10;

/// A linear f64 axis whose (only) ticks are the given values.
#[derive(Clone)]
pub(super) struct TickedAxis {
    pub(super) range: Range<f64>,
    pub(super) ticks: Vec<f64>,
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

/// An epoch (x) axis from 1 (or the lowest epoch, if lower) to the highest
/// of `epochs`: a padded range with integer ticks.
pub(super) fn epoch_axis(epochs: impl Iterator<Item = usize>) -> TickedAxis {
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

/// An epoch tick label.
pub(super) fn format_epoch(value: &f64) -> String {
    format!("{}", value.round() as i64)
}

/// The range of finite `values` with some room above and below, never empty.
pub(super) fn data_range(values: impl Iterator<Item = f64>) -> Range<f64> {
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
pub(super) fn score_range(values: impl Iterator<Item = f64>) -> Range<f64> {
    let (lo, hi) = min_max(values).unwrap_or((0.0, 1.0));
    let top = hi.max(1.0);
    let pad = ((top - lo) * 0.1).max(0.02);
    // At least 0.1 tall, so two-decimal tick labels stay distinct.
    let bottom = (lo - pad).min(top - 0.1);
    bottom..top + (top - bottom) * 0.015
}

/// From 0 to a bit above the largest finite value (for quantities that are
/// never negative); [`data_range`] if some value is negative.
pub(super) fn zero_based_range(values: impl Iterator<Item = f64>) -> Range<f64> {
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
pub(super) fn with_headroom(
    range: Range<f64>,
    top_px: u32,
    bottom_px: u32,
    plot_px: u32,
) -> Range<f64> {
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

fn min_max(values: impl Iterator<Item = f64>) -> Option<(f64, f64)> {
    values.fold(None, |acc, v| match acc {
        None => Some((v, v)),
        Some((lo, hi)) => Some((lo.min(v), hi.max(v))),
    })
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

/// How tick values are written.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(super) enum TickFormat {
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

    pub(super) fn apply(self, value: f64) -> String {
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
/// the label area left of the plot is.
pub(super) struct YAxis {
    pub(super) range: Range<f64>,
    ticks: Vec<f64>,
    pub(super) format: TickFormat,
    pub(super) label_area: u32,
}

impl YAxis {
    /// Round ticks over `range`, with a label area as wide as the widest
    /// tick label needs.
    pub(super) fn new<DB: DrawingBackend>(
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

    pub(super) fn axis(&self) -> TickedAxis {
        TickedAxis {
            range: self.range.clone(),
            ticks: self.ticks.clone(),
        }
    }
}

/// The x axis of a chart and how its ticks are written.
pub(super) struct XAxis<'a> {
    pub(super) axis: TickedAxis,
    pub(super) desc: &'a str,
    pub(super) format: &'a dyn Fn(&f64) -> String,
    /// Height of the label area under the plot.
    pub(super) label_area: u32,
}

/// Names under a categorical x axis (category `i` at x = `i`), turned
/// sideways when they do not fit under their slots.
pub(super) struct CategoryLabels {
    names: Vec<String>,
    font: u32,
    rotate: bool,
    widest: u32,
}

impl CategoryLabels {
    pub(super) fn new<DB: DrawingBackend>(
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

    pub(super) fn axis(&self) -> TickedAxis {
        let n = self.names.len().max(1) as f64;
        TickedAxis {
            range: -0.5..n - 0.5,
            ticks: (0..self.names.len()).map(|i| i as f64).collect(),
        }
    }

    pub(super) fn label_area(&self, fonts: Fonts) -> u32 {
        if self.rotate {
            self.widest + fonts.desc + 44
        } else {
            self.font + fonts.desc + 24
        }
    }

    /// The tick label at `value` (empty when the labels are drawn sideways).
    pub(super) fn label(&self, value: f64) -> String {
        if self.rotate || value < 0.0 {
            return String::new();
        }
        self.names
            .get(value.round() as usize)
            .cloned()
            .unwrap_or_default()
    }

    /// Draws the sideways labels (if they are sideways) under the plot.
    pub(super) fn draw_rotated<DB: DrawingBackend>(
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epoch_ticks_are_integers_from_one() {
        assert_eq!(epoch_axis(1..=1).ticks, vec![1.0]);
        assert_eq!(
            epoch_axis((1..=6).rev()).ticks,
            vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]
        );
        let many = epoch_axis(1..=100).ticks;
        assert_eq!(many[0], 1.0);
        assert!(many.len() <= MAX_EPOCH_TICKS);
        assert!(many.iter().all(|t| t.fract() == 0.0));
        // No epochs at all: just epoch 1.
        assert_eq!(epoch_axis(std::iter::empty()).ticks, vec![1.0]);
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
    fn ranges() {
        let flat = data_range([0.8, 0.8 + 1e-16].into_iter());
        assert!(flat.end - flat.start > 0.1, "{flat:?}");
        assert_eq!(data_range(std::iter::empty()), 0.0..1.0);
        let scores = score_range([1.0, 1.0].into_iter());
        assert!(scores.end > 1.0 && scores.end - scores.start >= 0.1);
        assert_eq!(zero_based_range([0.0, 0.0].into_iter()), 0.0..1.0);
        assert!(zero_based_range([2e-5].into_iter()).end > 2e-5);
        let grown = with_headroom(0.0..1.0, 100, 0, 500);
        assert_eq!(grown.start, 0.0);
        assert!((grown.end - 1.25).abs() < 1e-12, "{grown:?}");
    }
}
