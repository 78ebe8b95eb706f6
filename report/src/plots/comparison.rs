//! Sweep comparison for one metric: each variant's (arm's) per-run values
//! as points, beside them the mean with its 95% confidence interval (a
//! Student t interval over the runs), and "mean [lo, hi]" written above.
//! Runs of the same pair (same index in every arm) are joined by faint
//! lines. The y axis is at least [`MIN_SPAN`] tall, so small gaps between
//! arms are not blown up. Also home of the statistics the sweep figures
//! share: [`Summary`] and the t quantile [`t_975`].

use std::ops::Range;

use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::full_palette::{GREY_500, GREY_700, GREY_800};
use plotters::style::text_anchor::{HPos, Pos, VPos};

use super::axis::{with_headroom, CategoryLabels, XAxis, YAxis};
use super::frame::{build_chart, titled, Frame};
use super::legend::{LegendEntry, Sample};
use super::style::{fit_text, text_style, PALETTE, STANDARD_FONTS};
use super::{check_pairs, render, DrawResult, PlotError};

const SIZE: (u32, u32) = (1000, 700);
/// An arm's run points are spread over this x range around its slot
/// (left of the mean, so that the whisker stays clear of them).
const POINTS: Range<f64> = -0.34..-0.04;
/// Where the mean and its whisker stand, right of the slot's centre.
const MEAN_X: f64 = 0.16;
/// Half the width of the mean's bar.
const MEAN_HALF: f64 = 0.1;
/// Half the width of the whisker's caps.
const CAP_HALF: f64 = 0.05;
/// The y axis of the comparison is at least this tall (five points of a
/// metric in [0, 1]), so that tiny differences look tiny.
pub(super) const MIN_SPAN: f64 = 0.05;

/// Sweep comparison for one metric: for each variant (e.g. "baseline",
/// "dendritic", "restart") the per-run values as points, their mean with a
/// 95% confidence interval of the mean as a whisker (Student t, n − 1
/// degrees of freedom), and "mean [lo, hi]" with the number of runs written
/// above. ~1000x700 px. `values[i]` are the values of `variants[i]`, one per
/// run, in pair order (the same (split, seed) pair at the same index in
/// every variant).
///
/// Points of the same pair are joined across variants when every variant
/// has the same number of values. The y axis spans at least 0.05
/// (centred on the data, kept inside [0, 1] when the data are). A variant
/// with a single value has no interval. Non-finite values are left out.
pub fn variant_comparison(
    title: &str,
    metric: &str,
    variants: &[String],
    values: &[Vec<f64>],
) -> Result<Vec<u8>, PlotError> {
    check_pairs(
        variants.len(),
        values.len(),
        "the variant comparison needs at least one variant",
        ("variants", "lists of values"),
    )?;
    render("comparison", SIZE, |root| {
        draw_comparison(root, title, metric, variants, values)
    })
}

/// The 97.5% quantile of Student's t distribution with `df` degrees of
/// freedom (the factor of a two-sided 95% interval); NaN for `df` = 0.
pub(super) fn t_975(df: usize) -> f64 {
    const TABLE: [f64; 30] = [
        12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160,
        2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056,
        2.052, 2.048, 2.045, 2.042,
    ];
    match df {
        0 => f64::NAN,
        1..=30 => TABLE[df - 1],
        _ => {
            // Cornish-Fisher expansion around the normal quantile: within
            // 0.001 of the exact value from 30 degrees of freedom on.
            let z: f64 = 1.959_964;
            let d = df as f64;
            z + (z.powi(3) + z) / (4.0 * d)
                + (5.0 * z.powi(5) + 16.0 * z.powi(3) + 3.0 * z) / (96.0 * d * d)
        }
    }
}

/// Mean, sample standard deviation and 95% confidence interval of the mean
/// of the finite values.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(super) struct Summary {
    pub(super) n: usize,
    pub(super) mean: f64,
    pub(super) sd: f64,
    /// Lower and upper bound of the 95% t interval of the mean; NaN for a
    /// single value.
    pub(super) lo: f64,
    pub(super) hi: f64,
}

impl Summary {
    pub(super) fn of(values: &[f64]) -> Option<Self> {
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
        let half = t_975(n - 1) * sd / (n as f64).sqrt();
        Some(Self {
            n,
            mean,
            sd,
            lo: mean - half,
            hi: mean + half,
        })
    }
}

/// Decimals that show `scale` with three significant digits (two to six).
pub(super) fn value_decimals(scale: f64) -> usize {
    if !scale.is_finite() || scale <= 0.0 {
        return 3;
    }
    (2.0 - scale.log10().floor()).clamp(0.0, 6.0) as usize
}

/// Decimals for a mean and its interval: three significant digits of the
/// mean, and at least one of the interval's half width.
pub(super) fn interval_decimals(mean: f64, half_width: f64) -> usize {
    let of_mean = value_decimals(mean.abs());
    if half_width.is_finite() && half_width > 0.0 {
        of_mean.max((-half_width.log10().floor()).clamp(0.0, 6.0) as usize)
    } else {
        of_mean
    }
}

/// A y range at least `min_span` tall around the finite `values` (centred
/// on them, then moved inside `within` if they all lie in it), with 8% of
/// room above and below.
pub(super) fn span_range(
    values: impl Iterator<Item = f64>,
    min_span: f64,
    within: Option<Range<f64>>,
) -> Range<f64> {
    let (lo, hi) = values
        .filter(|v| v.is_finite())
        .fold(None, |acc: Option<(f64, f64)>, v| match acc {
            None => Some((v, v)),
            Some((lo, hi)) => Some((lo.min(v), hi.max(v))),
        })
        .unwrap_or((0.0, 1.0));
    let (mut lo, mut hi) = (lo, hi);
    if hi - lo < min_span {
        let inside = within
            .as_ref()
            .is_some_and(|w| w.start <= lo && hi <= w.end && w.end - w.start >= min_span);
        let centre = (lo + hi) / 2.0;
        lo = centre - min_span / 2.0;
        hi = centre + min_span / 2.0;
        if let (true, Some(w)) = (inside, within) {
            let shift = (w.start - lo).max(0.0) - (hi - w.end).max(0.0);
            lo += shift;
            hi += shift;
        }
    }
    let pad = (hi - lo) * 0.08;
    lo - pad..hi + pad
}

/// Where the `k`th of `n` run points of a slot goes, relative to its centre.
fn spread(k: usize, n: usize) -> f64 {
    if n > 1 {
        POINTS.start + (POINTS.end - POINTS.start) * k as f64 / (n - 1) as f64
    } else {
        (POINTS.start + POINTS.end) / 2.0
    }
}

fn draw_comparison<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    title: &str,
    metric: &str,
    variants: &[String],
    values: &[Vec<f64>],
) -> DrawResult<(), DB> {
    let fonts = STANDARD_FONTS;
    let body = titled(root, title, fonts, (8, 8, 12, 12))?;
    let stats: Vec<Option<Summary>> = values.iter().map(|v| Summary::of(v)).collect();
    let runs = values[0].len();
    let paired = values.len() > 1 && values.iter().all(|v| v.len() == runs);
    let extent = values
        .iter()
        .flatten()
        .copied()
        .chain(stats.iter().flatten().flat_map(|s| [s.lo, s.hi]));
    let base = span_range(extent, MIN_SPAN, Some(0.0..1.0));
    let mut entries = vec![
        LegendEntry::new("one run", GREY_700, Sample::Dot(5)),
        LegendEntry::new(
            "mean and 95% CI of the mean over runs",
            GREY_800,
            Sample::Rule,
        ),
    ];
    if paired {
        entries.push(LegendEntry::new("same pair", GREY_500, Sample::Line(None)));
    }

    // The summary above each variant takes two lines.
    let note_px = fonts.desc + fonts.label + 30;
    let plan_y = YAxis::new(&body, fonts, base.clone())?;
    let plan = Frame::new(body.clone(), fonts, plan_y, &entries)?;
    let names = CategoryLabels::new(&body, fonts, variants, plan.plot_width())?;
    let strip = plan.legend.strip_height();
    let plot_h = plan.plot_height(strip, names.label_area(fonts));
    let y = YAxis::new(&body, fonts, with_headroom(base, note_px, 0, plot_h))?;
    let frame = Frame::new(body, fonts, y, &entries)?;
    let chart_area = frame.draw_legend(strip)?;

    let format_x = |v: &f64| names.label(*v);
    let x = XAxis {
        axis: names.axis(),
        desc: "arm",
        format: &format_x,
        label_area: names.label_area(fonts),
    };
    let mut chart = build_chart(&chart_area, fonts, &x, &frame.y, metric)?;
    names.draw_rotated(&chart_area, &chart, frame.y.range.start)?;

    // Paired runs: join the values of one pair across the variants.
    if paired {
        let style = BLACK.mix(0.15).stroke_width(1);
        for k in 0..runs {
            let points: Vec<(f64, f64)> = values
                .iter()
                .enumerate()
                .map(|(i, v)| (i as f64 + spread(k, runs), v[k]))
                .collect();
            for pair in points.windows(2) {
                if pair[0].1.is_finite() && pair[1].1.is_finite() {
                    chart.draw_series([PathElement::new(pair.to_vec(), style)])?;
                }
            }
        }
    }

    let slot_px = (frame.plot_width() / variants.len() as u32).saturating_sub(8);
    let top = values
        .iter()
        .flatten()
        .copied()
        .chain(stats.iter().flatten().map(|s| s.hi))
        .filter(|v| v.is_finite())
        .fold(f64::NEG_INFINITY, f64::max);
    for (i, (run_values, stat)) in values.iter().zip(&stats).enumerate() {
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

        let n = run_values.len();
        for (k, &v) in run_values.iter().enumerate() {
            if v.is_finite() {
                let at = (x + spread(k, n), v);
                chart.draw_series([
                    Circle::new(at, 7, WHITE.filled()),
                    Circle::new(at, 5, color.filled()),
                ])?;
            }
        }

        // The whisker with its caps, then the mean's bar over it.
        let xm = x + MEAN_X;
        let has_ci = stat.lo.is_finite() && stat.hi.is_finite();
        if has_ci {
            let whisker = color.stroke_width(3);
            chart.draw_series([
                PathElement::new(vec![(xm, stat.lo), (xm, stat.hi)], whisker),
                PathElement::new(
                    vec![(xm - CAP_HALF, stat.lo), (xm + CAP_HALF, stat.lo)],
                    whisker,
                ),
                PathElement::new(
                    vec![(xm - CAP_HALF, stat.hi), (xm + CAP_HALF, stat.hi)],
                    whisker,
                ),
            ])?;
        }
        let mean_bar = vec![(xm - MEAN_HALF, stat.mean), (xm + MEAN_HALF, stat.mean)];
        chart.draw_series([
            PathElement::new(mean_bar.clone(), WHITE.stroke_width(8)),
            PathElement::new(mean_bar, color.stroke_width(5)),
        ])?;

        // "mean [lo, hi]", and the number of runs under it, above the
        // highest mark of all the variants.
        let (mut summary, mut count) = summary_lines(stat);
        // Too wide even in a smaller font: the interval goes on the second
        // line, in place of the number of runs (which the points show).
        let smallest = text_style(fonts.desc * 3 / 4, &BLACK);
        if chart_area.estimate_text_size(&summary, &smallest)?.0 > slot_px {
            if let Some((mean, interval)) = summary.split_once(" [") {
                count = format!("[{interval}");
                summary = mean.to_string();
            }
        }
        let (summary, font) = fit_text(&chart_area, &summary, fonts.desc, slot_px)?;
        let (count, count_font) = fit_text(&chart_area, &count, fonts.label, slot_px)?;
        let anchor = Pos::new(HPos::Center, VPos::Bottom);
        let count_style = text_style(count_font, &GREY_800).pos(anchor);
        let summary_style = text_style(font, &BLACK).pos(anchor);
        let gap = 12;
        chart.draw_series([EmptyElement::at((x, top))
            + Text::new(count, (0, -gap), count_style)
            + Text::new(summary, (0, -gap - fonts.label as i32 - 8), summary_style)])?;
    }
    Ok(())
}

/// The two lines written above a variant: "mean [lo, hi]" and the number
/// of runs.
fn summary_lines(stat: &Summary) -> (String, String) {
    let half = (stat.hi - stat.lo) / 2.0;
    let d = interval_decimals(stat.mean, half);
    if stat.lo.is_finite() && stat.hi.is_finite() {
        (
            format!("{:.d$} [{:.d$}, {:.d$}]", stat.mean, stat.lo, stat.hi),
            format!("{} runs", stat.n),
        )
    } else {
        (
            format!("{:.d$}", stat.mean),
            "1 run, no interval".to_string(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plots::testing::{assert_png, names};

    /// Three arms on nine pairs, with differences of a few thousandths.
    fn arms() -> (Vec<String>, Vec<Vec<f64>>) {
        let base: Vec<f64> = (0..9)
            .map(|k| 0.80 + 0.012 * ((k * 7 % 9) as f64 / 8.0 - 0.5))
            .collect();
        let shifted = |by: f64, wobble: f64| -> Vec<f64> {
            base.iter()
                .enumerate()
                .map(|(k, b)| b + by + wobble * ((k % 3) as f64 - 1.0))
                .collect()
        };
        (
            names(&["baseline", "dendritic", "restart"]),
            vec![base.clone(), shifted(0.003, 0.002), shifted(0.001, 0.003)],
        )
    }

    #[test]
    fn variant_comparison_renders_png() {
        let (variants, values) = arms();
        let png = variant_comparison(
            "MiniLM on FPB: test macro-F1 per run",
            "test macro-F1",
            &variants,
            &values,
        )
        .unwrap();
        assert_png(&png, SIZE);
        std::fs::write("/tmp/plots-b-comparison.png", &png).ok();

        // One pair: a single run per arm, no interval.
        let one: Vec<Vec<f64>> = values.iter().map(|v| v[..1].to_vec()).collect();
        let png = variant_comparison("one pair", "test macro-F1", &variants, &one).unwrap();
        assert_png(&png, SIZE);
        std::fs::write("/tmp/plots-b-comparison-one.png", &png).ok();
    }

    #[test]
    fn variant_comparison_odd_values() {
        // Zero sd, negative values, a missing value, an empty variant and
        // names that must be turned sideways.
        let variants: Vec<String> = (0..7).map(|i| format!("variant number {i}")).collect();
        let mut values = vec![vec![-0.4, -0.4, -0.4]; 6];
        values[1][1] = f64::NAN;
        values.push(Vec::new());
        let png = variant_comparison("odd", "loss", &variants, &values).unwrap();
        assert_png(&png, SIZE);
        std::fs::write("/tmp/plots-b-comparison-odd.png", &png).ok();
    }

    #[test]
    fn variant_comparison_rejects_empty_and_misshapen_input() {
        assert!(matches!(
            variant_comparison("t", "m", &[], &[]),
            Err(PlotError::Empty(_))
        ));
        assert!(matches!(
            variant_comparison("t", "m", &names(&["a", "b"]), &[vec![1.0]]),
            Err(PlotError::Shape(_))
        ));
    }

    #[test]
    fn t_quantiles() {
        assert!(t_975(0).is_nan());
        assert_eq!(t_975(1), 12.706);
        assert_eq!(t_975(8), 2.306);
        assert_eq!(t_975(30), 2.042);
        // Exact values: 2.0395 (31), 2.0211 (40), 2.0003 (60), 1.9799 (120).
        for (df, exact) in [(31, 2.0395), (40, 2.0211), (60, 2.0003), (120, 1.9799)] {
            assert!((t_975(df) - exact).abs() < 1e-3, "{df}: {}", t_975(df));
        }
        assert!((t_975(100_000) - 1.96).abs() < 1e-3);
    }

    #[test]
    fn summaries() {
        let s = Summary::of(&[1.0, 2.0, 3.0, f64::NAN]).unwrap();
        assert_eq!((s.n, s.mean, s.sd), (3, 2.0, 1.0));
        let half = 4.303 / 3f64.sqrt();
        assert!((s.lo - (2.0 - half)).abs() < 1e-12 && (s.hi - (2.0 + half)).abs() < 1e-12);
        let flat = Summary::of(&[0.8; 3]).unwrap();
        assert_eq!(flat.sd, 0.0);
        assert!(flat.lo == flat.mean && flat.hi == flat.mean);
        let one = Summary::of(&[0.8]).unwrap();
        assert_eq!(one.sd, 0.0);
        assert!(one.lo.is_nan() && one.hi.is_nan());
        assert!(Summary::of(&[f64::NAN]).is_none());
        assert_eq!(value_decimals(0.011), 4);
        assert_eq!(value_decimals(0.8), 3);
        assert_eq!(value_decimals(0.0), 3);
        assert_eq!(interval_decimals(0.81, 0.0077), 3);
        assert_eq!(interval_decimals(0.81, 0.0004), 4);
        assert_eq!(interval_decimals(0.81, f64::NAN), 3);
        let (line, count) = summary_lines(&s);
        assert_eq!(
            (line.as_str(), count.as_str()),
            ("2.00 [-0.48, 4.48]", "3 runs")
        );
        assert_eq!(summary_lines(&one).1, "1 run, no interval");
    }

    #[test]
    fn span_ranges() {
        // Tiny gaps: at least MIN_SPAN, centred, kept inside [0, 1].
        let r = span_range([0.800, 0.803].into_iter(), MIN_SPAN, Some(0.0..1.0));
        assert!(r.end - r.start >= MIN_SPAN);
        assert!(((r.start + r.end) / 2.0 - 0.8015).abs() < 1e-12, "{r:?}");
        let r = span_range([0.99, 1.0].into_iter(), MIN_SPAN, Some(0.0..1.0));
        let pad = MIN_SPAN * 0.08;
        assert!((r.end - (1.0 + pad)).abs() < 1e-12, "{r:?}");
        // Values outside [0, 1] are only centred.
        let r = span_range([-0.4].into_iter(), MIN_SPAN, Some(0.0..1.0));
        assert!(((r.start + r.end) / 2.0 + 0.4).abs() < 1e-12, "{r:?}");
        // A wide span is only padded.
        let r = span_range([0.5, 0.7, f64::NAN].into_iter(), MIN_SPAN, None);
        assert!((r.start - 0.484).abs() < 1e-12 && (r.end - 0.716).abs() < 1e-12);
    }
}
