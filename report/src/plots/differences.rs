//! Effects of contrasts between arms (e.g. dendritic − restart): two panels
//! side by side, the primary metric on the left and accuracy on the right.
//! For each contrast a test bar and a validation bar show the mean paired
//! difference, with its 95% confidence interval as a whisker and the
//! per-pair differences as dots; the accuracy panel has a second y axis on
//! the right that counts the difference in test sentences.

use std::ops::Range;

use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::full_palette::GREY_800;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use super::axis::{with_headroom, CategoryLabels, XAxis, YAxis};
use super::comparison::{span_range, value_decimals, Summary};
use super::frame::{build_chart, titled, Frame};
use super::legend::{Legend, LegendEntry, Sample};
use super::style::{centre_nudge, fit_text, text_style, Fonts, STANDARD_FONTS};
use super::{render, DrawResult, PlotError};

const SIZE: (u32, u32) = (1600, 750);
/// The y axis spans at least this much (two points of a metric in [0, 1]).
const MIN_SPAN: f64 = 0.02;
/// Where a contrast's test and validation bars stand, left and right of its
/// slot's centre, and half their width.
const BAR_OFFSET: f64 = 0.2;
const BAR_HALF: f64 = 0.17;
/// Half the width over which a bar's per-pair dots are spread.
const DOTS_HALF: f64 = 0.11;
/// Half the width of a whisker's caps.
const CAP_HALF: f64 = 0.06;
/// Margin around each panel: top, bottom, left, right.
const PANEL_MARGIN: (u32, u32, u32, u32) = (4, 6, 12, 12);
const TEST_COLOR: RGBColor = RGBColor(148, 103, 189);
const VAL_COLOR: RGBColor = RGBColor(23, 190, 207);

/// One bar of [`contrast_effects`]: the mean of the per-pair differences,
/// the bounds of its 95% confidence interval (NaN when there is none), and
/// the per-pair differences themselves.
#[derive(Debug, Clone, PartialEq)]
pub struct EffectBar {
    pub mean: f64,
    pub lo: f64,
    pub hi: f64,
    pub points: Vec<f64>,
}

impl EffectBar {
    /// The mean of the finite `points` and its 95% Student t interval
    /// (n − 1 degrees of freedom); the bounds are NaN for fewer than two
    /// finite points, and everything is NaN for none.
    pub fn from_points(points: Vec<f64>) -> Self {
        let (mean, lo, hi) =
            Summary::of(&points).map_or((f64::NAN, f64::NAN, f64::NAN), |s| (s.mean, s.lo, s.hi));
        Self {
            mean,
            lo,
            hi,
            points,
        }
    }

    fn has_interval(&self) -> bool {
        self.lo.is_finite() && self.hi.is_finite()
    }

    /// Every finite value the bar draws.
    fn values(&self) -> impl Iterator<Item = f64> + '_ {
        [self.mean, self.lo, self.hi]
            .into_iter()
            .chain(self.points.iter().copied())
            .filter(|v| v.is_finite())
    }
}

/// One contrast between two arms, e.g. "dendritic − restart": its paired
/// differences on the test set and on the validation set.
#[derive(Debug, Clone, PartialEq)]
pub struct Contrast {
    pub label: String,
    pub test: EffectBar,
    pub val: EffectBar,
}

/// Two panels side by side: left the primary metric (e.g. "macro-F1"),
/// right accuracy. In each panel, for each contrast (the x categories), a
/// test bar and a validation bar side by side, as tall as the mean paired
/// difference, with its 95% confidence interval as a whisker (none when a
/// bound is NaN), the per-pair differences as small dots on the bar, the
/// mean written above, and a zero line. The accuracy panel has a second y
/// axis on the right: the same difference in test sentences (Δ accuracy ×
/// `test_sentences`; left out when `test_sentences` is 0). Both panels
/// share their y range, at least 0.02 tall. 1600x750 px.
pub fn contrast_effects(
    title: &str,
    primary_metric: &str,
    primary: &[Contrast],
    accuracy: &[Contrast],
    test_sentences: usize,
) -> Result<Vec<u8>, PlotError> {
    if primary.is_empty() && accuracy.is_empty() {
        return Err(PlotError::Empty("the contrast figure needs a contrast"));
    }
    render("contrasts", SIZE, |root| {
        let panels = [
            EffectPanel {
                caption: primary_metric.to_string(),
                contrasts: primary,
                sentences: None,
            },
            EffectPanel {
                caption: "accuracy".to_string(),
                contrasts: accuracy,
                sentences: (test_sentences > 0).then_some(test_sentences),
            },
        ];
        draw_effects(root, title, &panels)
    })
}

/// One panel of the figure.
struct EffectPanel<'a> {
    caption: String,
    contrasts: &'a [Contrast],
    /// The number of test sentences, for the axis on the right.
    sentences: Option<usize>,
}

fn draw_effects<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    title: &str,
    panels: &[EffectPanel<'_>; 2],
) -> DrawResult<(), DB> {
    let fonts = STANDARD_FONTS;
    let body = titled(root, title, fonts, (8, 8, 8, 8))?;
    let bars: Vec<&EffectBar> = panels
        .iter()
        .flat_map(|p| p.contrasts)
        .flat_map(|c| [&c.test, &c.val])
        .collect();
    let mut entries = vec![
        LegendEntry::new("test", TEST_COLOR, Sample::Bar),
        LegendEntry::new("validation", VAL_COLOR, Sample::Bar),
        LegendEntry::new("one pair (split, seed)", GREY_800, Sample::Dot(4)),
        LegendEntry::new(
            "mean paired difference, 95% CI over pairs (unadjusted; report.md: by split, Holm)",
            BLACK,
            Sample::Rule,
        ),
    ];
    if bars.iter().any(|b| b.mean.is_finite() && !b.has_interval()) {
        entries.push(LegendEntry::new(
            "(no whisker: fewer than two pairs)",
            BLACK,
            Sample::Nothing,
        ));
    }
    let (w, _) = body.dim_in_pixel();
    let legend = Legend::new(&body, &entries, fonts.legend, w as i32)?;
    let (legend_area, panels_area) = body.split_vertically(legend.strip_height());
    legend.draw(&legend_area, 0, w as i32)?;

    let values: Vec<f64> = bars.iter().flat_map(|b| b.values()).collect();
    let base = span_range(values.iter().copied().chain([0.0]), MIN_SPAN, None);
    let largest = values.iter().map(|v| v.abs()).fold(0.0, f64::max);
    // Two significant digits of the largest value, and at least three
    // decimals (differences of a few points of a score in [0, 1]).
    let decimals = value_decimals(largest * 10.0).max(3);

    let areas = panels_area.split_evenly((1, 2));
    // The y range is planned on the first panel and shared, so that the
    // panels can be compared bar by bar.
    let mut range = None;
    for (area, panel) in areas.iter().zip(panels) {
        let inner = area
            .margin(
                PANEL_MARGIN.0,
                PANEL_MARGIN.1,
                PANEL_MARGIN.2,
                PANEL_MARGIN.3,
            )
            .titled(&panel.caption, text_style(fonts.caption, &BLACK))?;
        let y_range = match &range {
            Some(r) => Range::clone(r),
            None => {
                let r = plan_range(&inner, fonts, panel, base.clone())?;
                range = Some(r.clone());
                r
            }
        };
        draw_panel(&inner, fonts, panel, y_range, decimals)?;
    }
    Ok(())
}

/// `base` grown so that the means written above the bars fit.
fn plan_range<DB: DrawingBackend>(
    inner: &DrawingArea<DB, Shift>,
    fonts: Fonts,
    panel: &EffectPanel<'_>,
    base: Range<f64>,
) -> DrawResult<Range<f64>, DB> {
    let (chart_part, _) = split_right_axis(inner, fonts, panel, &base)?;
    let frame = Frame::new(
        chart_part,
        fonts,
        YAxis::new(inner, fonts, base.clone())?,
        &[],
    )?;
    let labels: Vec<String> = panel.contrasts.iter().map(|c| c.label.clone()).collect();
    let names = CategoryLabels::new(inner, fonts, &labels, frame.plot_width())?;
    let plot_h = frame.plot_height(0, names.label_area(fonts));
    Ok(with_headroom(base, fonts.label + 16, 0, plot_h))
}

/// The panel's area split into the chart and, when the panel counts test
/// sentences, a strip on the right for that axis, with the axis.
#[allow(clippy::type_complexity)]
fn split_right_axis<DB: DrawingBackend>(
    inner: &DrawingArea<DB, Shift>,
    fonts: Fonts,
    panel: &EffectPanel<'_>,
    y_range: &Range<f64>,
) -> DrawResult<(DrawingArea<DB, Shift>, Option<(YAxis, f64)>), DB> {
    let Some(sentences) = panel.sentences else {
        return Ok((inner.clone(), None));
    };
    let n = sentences as f64;
    let axis = YAxis::new(inner, fonts, y_range.start * n..y_range.end * n)?;
    let (w, _) = inner.dim_in_pixel();
    // The chart keeps its own margin on the right, which the ticks use.
    let width = axis.label_area.saturating_sub(24);
    let (chart_part, _) = inner.split_horizontally(w.saturating_sub(width));
    Ok((chart_part, Some((axis, n))))
}

fn draw_panel<DB: DrawingBackend>(
    inner: &DrawingArea<DB, Shift>,
    fonts: Fonts,
    panel: &EffectPanel<'_>,
    y_range: Range<f64>,
    decimals: usize,
) -> DrawResult<(), DB> {
    let (chart_part, right_axis) = split_right_axis(inner, fonts, panel, &y_range)?;
    let y = YAxis::new(inner, fonts, y_range)?;
    let frame = Frame::new(chart_part.clone(), fonts, y, &[])?;
    let labels: Vec<String> = panel.contrasts.iter().map(|c| c.label.clone()).collect();
    let names = CategoryLabels::new(inner, fonts, &labels, frame.plot_width())?;
    let format_x = |v: &f64| names.label(*v);
    let x = XAxis {
        axis: names.axis(),
        desc: "contrast (paired on the same split and seed)",
        format: &format_x,
        label_area: names.label_area(fonts),
    };
    let y_desc = format!("Δ {}", panel.caption);
    let mut chart = build_chart(&chart_part, fonts, &x, &frame.y, &y_desc)?;
    names.draw_rotated(&chart_part, &chart, frame.y.range.start)?;

    let x_range = &x.axis.range;
    let zero = vec![(x_range.start, 0.0), (x_range.end, 0.0)];
    chart.draw_series([PathElement::new(zero, BLACK.stroke_width(2))])?;

    if panel.contrasts.is_empty() {
        let centre = (0.0, (frame.y.range.start + frame.y.range.end) / 2.0);
        let style = text_style(fonts.caption, &GREY_800).pos(Pos::new(HPos::Center, VPos::Center));
        let note = Text::new("no contrasts", (0, centre_nudge(fonts.caption)), style);
        chart.draw_series([EmptyElement::at(centre) + note])?;
    }

    let slot_px = (frame.plot_width() / panel.contrasts.len().max(1) as u32 / 2).saturating_sub(4);
    let bars = || {
        panel
            .contrasts
            .iter()
            .enumerate()
            .flat_map(|(i, contrast)| {
                [
                    (i, &contrast.test, -BAR_OFFSET, TEST_COLOR),
                    (i, &contrast.val, BAR_OFFSET, VAL_COLOR),
                ]
            })
    };
    for (i, bar, offset, color) in bars() {
        draw_bar(&mut chart, bar, i as f64 + offset, color)?;
    }
    // Labels last, on a light box, so that no bar's dots cover them; a
    // label that would overlap its neighbour's moves one line further out.
    {
        let mut previous: Option<(usize, (i32, i32, i32, i32))> = None;
        for (i, bar, offset, _) in bars() {
            let x = i as f64 + offset;
            let label = bar_label(bar, decimals);
            let (label, font) = fit_text(&chart_part, &label, fonts.label, slot_px)?;
            // On the bar: above its whisker (below it for a negative mean),
            // not above the highest pair's dot.
            let (end, below) = label_anchor(bar);
            let (v, dy) = if below {
                (VPos::Top, 10)
            } else {
                (VPos::Bottom, -10)
            };
            let style = text_style(font, &BLACK).pos(Pos::new(HPos::Center, v));
            let (w, h) = chart_part.estimate_text_size(&label, &text_style(font, &BLACK))?;
            let (w, h) = (w as i32 / 2 + 3, h as i32 + 2);
            let (px, py) = chart.backend_coord(&(x, end));
            let mut dy = dy;
            let boxed = |dy: i32| {
                let (top, bottom) = if below {
                    (dy - 1, dy + h)
                } else {
                    (dy - h, dy + 1)
                };
                (px - w, py + top, px + w, py + bottom)
            };
            if let Some((j, b)) = previous {
                let a = boxed(dy);
                if j == i && a.0 < b.2 && b.0 < a.2 && a.1 < b.3 && b.1 < a.3 {
                    // Past the neighbour's box, away from zero.
                    dy = if below { b.3 - py + 2 } else { b.1 - py - 2 };
                }
            }
            let placed = boxed(dy);
            previous = Some((i, placed));
            let (top, bottom) = (placed.1 - py, placed.3 - py);
            let bg = Rectangle::new([(-w, top), (w, bottom)], WHITE.mix(0.85).filled());
            chart.draw_series([EmptyElement::at((x, end))
                + bg
                + Text::new(label, (0, dy), style)])?;
        }
    }

    if let Some((axis, n)) = right_axis {
        draw_right_axis(inner, &chart, fonts, &axis, n)?;
    }
    Ok(())
}

/// A bar from 0 to the mean, its whisker and its per-pair dots.
fn draw_bar<DB: DrawingBackend>(
    chart: &mut super::axis::Chart<'_, DB>,
    bar: &EffectBar,
    x: f64,
    color: RGBColor,
) -> DrawResult<(), DB> {
    if bar.mean.is_finite() {
        let corners = [(x - BAR_HALF, 0.0), (x + BAR_HALF, bar.mean)];
        chart.draw_series([
            Rectangle::new(corners, tint(color).filled()),
            Rectangle::new(corners, color.stroke_width(2)),
        ])?;
    }
    let n = bar.points.len();
    for (k, &d) in bar.points.iter().enumerate() {
        if d.is_finite() {
            let dx = if n > 1 {
                -DOTS_HALF + 2.0 * DOTS_HALF * k as f64 / (n - 1) as f64
            } else {
                0.0
            };
            chart.draw_series([
                Circle::new((x + dx, d), 5, WHITE.filled()),
                Circle::new((x + dx, d), 4, GREY_800.filled()),
            ])?;
        }
    }
    if bar.has_interval() {
        let style = BLACK.stroke_width(2);
        let (lo, hi) = (bar.lo, bar.hi);
        chart.draw_series([
            PathElement::new(vec![(x, lo), (x, hi)], style),
            PathElement::new(vec![(x - CAP_HALF, lo), (x + CAP_HALF, lo)], style),
            PathElement::new(vec![(x - CAP_HALF, hi), (x + CAP_HALF, hi)], style),
        ])?;
    }
    Ok(())
}

/// The count of test sentences along the right edge of the plot: an axis
/// line, ticks, their labels and the description.
fn draw_right_axis<DB: DrawingBackend>(
    inner: &DrawingArea<DB, Shift>,
    chart: &super::axis::Chart<'_, DB>,
    fonts: Fonts,
    axis: &YAxis,
    sentences: f64,
) -> DrawResult<(), DB> {
    let (base_x, base_y) = inner.get_base_pixel();
    let plot = chart.plotting_area();
    let (plot_x, plot_y) = plot.get_base_pixel();
    let (plot_w, plot_h) = plot.dim_in_pixel();
    let right = plot_x - base_x + plot_w as i32 - 1;
    let (top, bottom) = (plot_y - base_y, plot_y - base_y + plot_h as i32 - 1);
    inner.draw(&PathElement::new(
        vec![(right, top), (right, bottom)],
        BLACK.stroke_width(1),
    ))?;
    let label_style = text_style(fonts.label, &BLACK).pos(Pos::new(HPos::Left, VPos::Center));
    let x_any = chart.x_range().start;
    for tick in axis.axis().ticks {
        let y = chart.backend_coord(&(x_any, tick / sentences)).1 - base_y;
        if y < top || y > bottom {
            continue;
        }
        inner.draw(&PathElement::new(
            vec![(right, y), (right + 5, y)],
            BLACK.stroke_width(1),
        ))?;
        let at = (right + 9, y + centre_nudge(fonts.label));
        inner.draw(&Text::new(axis.format.apply(tick), at, label_style.clone()))?;
    }
    let (w, _) = inner.dim_in_pixel();
    let desc = "test sentences";
    let (desc, font) = fit_text(inner, desc, fonts.desc, plot_h.saturating_sub(8))?;
    // Turned a quarter clockwise, the text's top faces right.
    let style = text_style(font, &BLACK)
        .transform(FontTransform::Rotate90)
        .pos(Pos::new(HPos::Center, VPos::Top));
    inner.draw(&Text::new(desc, (w as i32 - 2, (top + bottom) / 2), style))?;
    Ok(())
}

/// `color` blended halfway to white, for the bars' fill (and a legend
/// sample of the same colour would not match a translucent fill).
fn tint(color: RGBColor) -> RGBColor {
    let blend = |c: u8| (f64::from(c) + (255.0 - f64::from(c)) * 0.45).round() as u8;
    RGBColor(blend(color.0), blend(color.1), blend(color.2))
}

/// The mean difference with its sign, or "n/a" if there is none.
/// Where a bar's value label goes: the end of its whisker (or of the bar
/// without one) away from zero, and whether that is below the bar.
fn label_anchor(bar: &EffectBar) -> (f64, bool) {
    let below = bar.mean.is_finite() && bar.mean < 0.0;
    let end = match (below, bar.has_interval()) {
        (true, true) => bar.lo,
        (false, true) => bar.hi,
        _ if bar.mean.is_finite() => bar.mean,
        _ => 0.0,
    };
    if below {
        (end.min(0.0), true)
    } else {
        (end.max(0.0), false)
    }
}

fn bar_label(bar: &EffectBar, decimals: usize) -> String {
    if bar.mean.is_finite() {
        format!("{:+.decimals$}", bar.mean)
    } else {
        "n/a".to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plots::testing::assert_png;

    /// `n` per-pair differences around `mean`, a few thousandths apart.
    fn diffs(mean: f64, n: usize) -> Vec<f64> {
        (0..n)
            .map(|k| mean + 0.004 * ((k * 5 % 9) as f64 / 8.0 - 0.5))
            .collect()
    }

    fn contrasts(n: usize) -> Vec<Contrast> {
        [
            ("dendritic − baseline", 0.004, 0.002),
            ("dendritic − restart", 0.001, 0.003),
            ("restart − baseline", 0.003, -0.001),
        ]
        .into_iter()
        .map(|(label, test, val)| Contrast {
            label: label.to_string(),
            test: EffectBar::from_points(diffs(test, n)),
            val: EffectBar::from_points(diffs(val, n)),
        })
        .collect()
    }

    #[test]
    fn contrast_effects_renders_png() {
        let primary = contrasts(9);
        let mut accuracy = contrasts(9);
        for c in &mut accuracy {
            c.test = EffectBar::from_points(c.test.points.iter().map(|p| p - 0.002).collect());
        }
        let png = contrast_effects(
            "MiniLM on FPB: paired differences between arms (9 pairs)",
            "macro-F1",
            &primary,
            &accuracy,
            339,
        )
        .unwrap();
        assert_png(&png, SIZE);
        std::fs::write("/tmp/plots-b-contrasts.png", &png).ok();

        // One pair: no intervals.
        let one = contrasts(1);
        assert!(one[0].test.lo.is_nan());
        let png = contrast_effects("one pair", "macro-F1", &one, &one, 339).unwrap();
        assert_png(&png, SIZE);
        std::fs::write("/tmp/plots-b-contrasts-one.png", &png).ok();
    }

    #[test]
    fn contrast_effects_odd_input() {
        // No accuracy contrasts, no sentence count, a bar without points
        // and a large negative difference.
        let mut primary = contrasts(3);
        primary[0].val = EffectBar::from_points(Vec::new());
        primary[1].test = EffectBar::from_points(vec![-0.2, -0.3, f64::NAN]);
        let png = contrast_effects("odd", "macro-F1", &primary, &[], 0).unwrap();
        assert_png(&png, SIZE);
        std::fs::write("/tmp/plots-b-contrasts-odd.png", &png).ok();
        assert!(matches!(
            contrast_effects("t", "m", &[], &[], 339),
            Err(PlotError::Empty(_))
        ));
    }

    #[test]
    fn effect_bars() {
        let bar = EffectBar::from_points(vec![0.01, 0.02, 0.03]);
        assert!((bar.mean - 0.02).abs() < 1e-12);
        let half = 4.303 * 0.01 / 3f64.sqrt();
        assert!((bar.hi - bar.mean - half).abs() < 1e-12, "{bar:?}");
        assert_eq!(bar_label(&bar, 3), "+0.020");
        let one = EffectBar::from_points(vec![-0.003]);
        assert!(one.lo.is_nan() && one.hi.is_nan());
        assert_eq!(bar_label(&one, 4), "-0.0030");
        let none = EffectBar::from_points(vec![f64::NAN]);
        assert!(none.mean.is_nan());
        assert_eq!(bar_label(&none, 3), "n/a");
        assert_eq!(tint(RGBColor(0, 255, 100)), RGBColor(115, 255, 170));
    }

    /// A value label sits at its whisker's end away from zero, whatever the
    /// outlying pairs' dots.
    #[test]
    fn labels_sit_on_their_bars() {
        let up = EffectBar::from_points(vec![
            0.01, 0.02, 0.03, 0.02, 0.01, 0.03, 0.02, 0.01, 0.03, 0.2,
        ]);
        let (end, below) = label_anchor(&up);
        assert!(!below);
        assert!((end - up.hi).abs() < 1e-12 && end < 0.2, "{end}");
        let down = EffectBar::from_points(vec![-0.01, -0.02, -0.03]);
        let (end, below) = label_anchor(&down);
        assert!(below && (end - down.lo).abs() < 1e-12);
        let one = EffectBar::from_points(vec![0.004]);
        assert_eq!(label_anchor(&one), (0.004, false));
    }
}
