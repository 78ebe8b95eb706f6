//! Sweep comparison for one metric: each variant's per-seed values as
//! points over a mean ± 1 sd box, with the mean ± sd written above.

use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::full_palette::{GREY_700, GREY_800};
use plotters::style::text_anchor::{HPos, Pos, VPos};

use super::axis::{data_range, with_headroom, CategoryLabels, XAxis, YAxis};
use super::frame::{build_chart, titled, Frame};
use super::legend::{LegendEntry, Sample};
use super::style::{fit_text, text_style, PALETTE, STANDARD_FONTS};
use super::{check_pairs, render, DrawResult, PlotError};

const SIZE: (u32, u32) = (1000, 700);
/// Half the width of a variant's mean ± sd box, in slots.
const CROSSBAR_HALF: f64 = 0.3;
/// Half the width over which a variant's seed points are spread.
const SPREAD_HALF: f64 = 0.2;

/// Sweep comparison for one metric: for each variant (e.g. "baseline", "dendritic") the per-seed values as points, with mean and +-1 sd as a bar/error bar, and the numeric mean +- sd written above each variant. ~1000x700 px. `values[i]` are the values of `variants[i]`, one per seed, in seed order.
///
/// The sd is the sample standard deviation (0 for a single value); points of
/// the same seed are joined across variants when every variant has the same
/// number of values. Non-finite values are left out.
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

/// Mean and sample standard deviation of the finite values.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(super) struct Summary {
    pub(super) n: usize,
    pub(super) mean: f64,
    pub(super) sd: f64,
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
        Some(Self { n, mean, sd })
    }
}

/// Decimals that show `scale` with three significant digits (two to six).
pub(super) fn value_decimals(scale: f64) -> usize {
    if !scale.is_finite() || scale <= 0.0 {
        return 3;
    }
    (2.0 - scale.log10().floor()).clamp(0.0, 6.0) as usize
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plots::testing::{assert_png, names};

    #[test]
    fn variant_comparison_renders_png() {
        let values = vec![vec![0.80, 0.81, 0.79], vec![0.82, 0.83, 0.815]];
        let variants = names(&["baseline", "dendritic"]);
        let png = variant_comparison("F1", "macro-F1", &variants, &values).unwrap();
        assert_png(&png, (1000, 700));

        let png = variant_comparison("one", "F1", &names(&["baseline"]), &[vec![0.8]]).unwrap();
        assert_png(&png, (1000, 700));
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
        assert_png(&png, (1000, 700));
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
    fn summaries() {
        let s = Summary::of(&[1.0, 2.0, 3.0, f64::NAN]).unwrap();
        assert_eq!((s.n, s.mean, s.sd), (3, 2.0, 1.0));
        assert_eq!(Summary::of(&[0.8; 3]).unwrap().sd, 0.0);
        assert_eq!(Summary::of(&[0.8]).unwrap().sd, 0.0);
        assert!(Summary::of(&[f64::NAN]).is_none());
        assert_eq!(value_decimals(0.011), 4);
        assert_eq!(value_decimals(0.8), 3);
        assert_eq!(value_decimals(0.0), 3);
    }
}
