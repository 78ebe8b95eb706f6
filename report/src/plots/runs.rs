//! Validation-score curves of several runs over epochs on one chart, one
//! colour per variant, with a legend by variant.

use plotters::coord::Shift;
use plotters::prelude::*;

use super::axis::{data_range, epoch_axis, format_epoch, XAxis, YAxis};
use super::frame::{build_chart, titled, Frame};
use super::legend::{LegendEntry, Sample};
use super::line::{Line, Marker};
use super::style::{shorten, PALETTE, STANDARD_FONTS};
use super::{render, DrawResult, PlotError};

const SIZE: (u32, u32) = (1400, 700);
const X_LABEL_AREA: u32 = 62;
/// Runs with more points than this are drawn without markers.
const MAX_RUN_MARKERS: usize = 12;

/// A run's variant, seed label and (epoch, score) points.
type Run = (String, String, Vec<(usize, f64)>);

/// Validation-score curves of several runs over epochs on one chart (e.g. baseline vs dendritic per seed), one colour per variant, one line per run, orange ticks optional; legend by variant. `runs`: (variant, seed label, points (epoch, score)). ~1400x700 px.
///
/// Variants are coloured in the order they first appear; points may come in
/// any order and non-finite scores are left out.
#[allow(clippy::type_complexity)]
pub fn training_comparison(
    title: &str,
    score_name: &str,
    runs: &[(String, String, Vec<(usize, f64)>)],
) -> Result<Vec<u8>, PlotError> {
    let any_point = runs
        .iter()
        .flat_map(|(_, _, points)| points)
        .any(|(_, y)| y.is_finite());
    if !any_point {
        return Err(PlotError::Empty(
            "the training comparison needs at least one finite score",
        ));
    }
    render("runs", SIZE, |root| {
        draw_runs(root, title, score_name, runs)
    })
}

fn draw_runs<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    title: &str,
    score_name: &str,
    runs: &[Run],
) -> DrawResult<(), DB> {
    let fonts = STANDARD_FONTS;
    let body = titled(root, title, fonts, (8, 8, 12, 12))?;
    let (lines, entries) = run_lines(runs);
    let y = YAxis::new(
        &body,
        fonts,
        data_range(lines.iter().flat_map(Line::finite_values)),
    )?;
    let frame = Frame::new(body, fonts, y, &entries)?;
    let chart_area = frame.draw_legend(frame.legend.strip_height())?;

    let x = XAxis {
        axis: epoch_axis(
            runs.iter()
                .flat_map(|(_, _, points)| points.iter().map(|&(e, _)| e)),
        ),
        desc: "epoch",
        format: &format_epoch,
        label_area: X_LABEL_AREA,
    };
    let y_desc = format!("validation {score_name}");
    let mut chart = build_chart(&chart_area, fonts, &x, &frame.y, &y_desc)?;
    for line in &lines {
        line.draw(&mut chart)?;
    }
    Ok(())
}

/// One line per run, coloured by variant, and one legend entry per variant.
fn run_lines(runs: &[Run]) -> (Vec<Line>, Vec<LegendEntry>) {
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
    let lines: Vec<Line> = runs
        .iter()
        .map(|(variant, _, points)| {
            let mut points: Vec<(f64, f64)> = points.iter().map(|&(e, v)| (e as f64, v)).collect();
            points.sort_by(|a, b| a.0.total_cmp(&b.0));
            Line {
                // Markers would crowd long runs laid over each other.
                marker: (points.len() <= MAX_RUN_MARKERS).then_some(Marker::Circle),
                width: 2,
                ..Line::new(color_of(variant), points)
            }
        })
        .collect();
    let entries = variants
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
    (lines, entries)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plots::testing::assert_png;

    fn runs(epochs: usize) -> Vec<Run> {
        (0..3)
            .flat_map(|seed| {
                ["baseline", "dendritic"].map(|variant| {
                    let points = (1..=epochs)
                        .rev()
                        .map(|e| (e, 0.6 + 0.01 * (e + seed) as f64))
                        .collect();
                    (variant.to_string(), format!("seed {seed}"), points)
                })
            })
            .collect()
    }

    #[test]
    fn training_comparison_renders_png() {
        let png = training_comparison("runs", "macro-F1", &runs(15)).unwrap();
        assert_png(&png, (1400, 700));

        let single = [("baseline".to_string(), "seed 0".to_string(), vec![(1, 0.7)])];
        let png = training_comparison("one", "accuracy", &single).unwrap();
        assert_png(&png, (1400, 700));
    }

    #[test]
    fn training_comparison_rejects_no_scores() {
        assert!(matches!(
            training_comparison("t", "m", &[]),
            Err(PlotError::Empty(_))
        ));
        let no_scores = [("a".to_string(), "s".to_string(), vec![(1, f64::NAN)])];
        assert!(matches!(
            training_comparison("t", "m", &no_scores),
            Err(PlotError::Empty(_))
        ));
    }

    #[test]
    fn run_lines_by_variant() {
        let (lines, entries) = run_lines(&runs(4));
        assert_eq!(lines.len(), 6);
        // Sorted by epoch, coloured by variant, marked when short.
        assert!(lines[0].points.windows(2).all(|w| w[0].0 < w[1].0));
        assert_eq!(lines[0].color, PALETTE[0]);
        assert_eq!(lines[1].color, PALETTE[1]);
        assert_eq!(lines[2].color, PALETTE[0]);
        assert!(lines.iter().all(|l| l.marker.is_some() && l.width == 2));
        let labels: Vec<&str> = entries.iter().map(|e| e.label.as_str()).collect();
        assert_eq!(labels, ["baseline (3 runs)", "dendritic (3 runs)"]);

        let (lines, _) = run_lines(&runs(MAX_RUN_MARKERS + 1));
        assert!(lines.iter().all(|l| l.marker.is_none()));
    }
}
