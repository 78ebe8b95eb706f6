//! Paired differences per seed (dendritic minus baseline) as bars, with the
//! zero line and the mean difference.

use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::full_palette::{BLUE_700, GREY_800, PURPLE_500, RED_700};
use plotters::style::text_anchor::{HPos, Pos, VPos};

use super::axis::{data_range, with_headroom, CategoryLabels, XAxis, YAxis};
use super::comparison::{value_decimals, Summary};
use super::frame::{build_chart, titled, Frame};
use super::legend::{LegendEntry, Sample};
use super::style::{text_style, STANDARD_FONTS};
use super::{check_pairs, render, DrawResult, PlotError};

const SIZE: (u32, u32) = (1000, 700);

/// Paired differences per seed (dendritic minus baseline) as bars, a horizontal line at 0, the mean difference as a dashed line, labelled. x axis: seed labels. ~1000x700 px.
///
/// `diffs[i]` belongs to `seeds[i]`; a non-finite difference is marked "n/a".
pub fn paired_differences(
    title: &str,
    metric: &str,
    seeds: &[String],
    diffs: &[f64],
) -> Result<Vec<u8>, PlotError> {
    check_pairs(
        seeds.len(),
        diffs.len(),
        "paired differences need at least one seed",
        ("seeds", "differences"),
    )?;
    render("differences", SIZE, |root| {
        draw_differences(root, title, metric, seeds, diffs)
    })
}

fn draw_differences<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    title: &str,
    metric: &str,
    seeds: &[String],
    diffs: &[f64],
) -> DrawResult<(), DB> {
    let fonts = STANDARD_FONTS;
    let body = titled(root, title, fonts, (8, 8, 12, 12))?;
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
    let plan_y = YAxis::new(&body, fonts, base.clone())?;
    let plan = Frame::new(body.clone(), fonts, plan_y, &entries)?;
    let names = CategoryLabels::new(&body, fonts, seeds, plan.plot_width())?;
    let strip = plan.legend.strip_height();
    let plot_h = plan.plot_height(strip, names.label_area(fonts));
    // "n/a" is written above the zero line.
    let any_missing = finite.len() < diffs.len();
    let top_px = if any_up || any_missing { label_px } else { 0 };
    let bottom_px = if any_down { label_px } else { 0 };
    let y_range = with_headroom(base, top_px, bottom_px, plot_h);
    let frame = Frame::new(
        body.clone(),
        fonts,
        YAxis::new(&body, fonts, y_range)?,
        &entries,
    )?;
    let chart_area = frame.draw_legend(strip)?;

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plots::testing::{assert_png, names};

    #[test]
    fn paired_differences_renders_png() {
        let seeds = names(&["seed 1", "seed 2", "seed 3"]);
        let png = paired_differences("d", "macro-F1", &seeds, &[0.01, -0.004, 0.02]).unwrap();
        assert_png(&png, (1000, 700));

        let diffs = [-0.01, f64::NAN, -0.03];
        let png = paired_differences("d", "macro-F1", &seeds, &diffs).unwrap();
        assert_png(&png, (1000, 700));

        let png = paired_differences("d", "F1", &seeds[..1], &[0.0]).unwrap();
        assert_png(&png, (1000, 700));
    }

    #[test]
    fn paired_differences_many_seeds() {
        let many: Vec<String> = (0..60).map(|i| format!("seed {i}")).collect();
        let diffs: Vec<f64> = (0..60).map(|i| (i as f64).sin() * 0.01).collect();
        let png = paired_differences("d", "F1", &many, &diffs).unwrap();
        assert_png(&png, (1000, 700));
    }

    #[test]
    fn paired_differences_reject_empty_and_misshapen_input() {
        assert!(matches!(
            paired_differences("t", "m", &[], &[]),
            Err(PlotError::Empty(_))
        ));
        assert!(matches!(
            paired_differences("t", "m", &names(&["a"]), &[1.0, 2.0]),
            Err(PlotError::Shape(_))
        ));
    }

    #[test]
    fn bar_labels() {
        assert_eq!(bar_label(0.0123, 3), "+0.012");
        assert_eq!(bar_label(-0.5, 1), "-0.5");
        assert_eq!(bar_label(f64::NAN, 3), "n/a");
    }
}
