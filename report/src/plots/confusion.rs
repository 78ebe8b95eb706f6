//! Confusion matrix: a heat map with the count written in every cell, class
//! names on both axes and a colour bar.

use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use super::axis::TickedAxis;
use super::frame::titled;
use super::style::{centre_nudge, shorten, text_style, STANDARD_FONTS};
use super::{render, DrawResult, PlotError};

const SIZE: (u32, u32) = (800, 700);
const COLORBAR_WIDTH: u32 = 120;

/// Confusion matrix heat map with counts written in each cell (rows = true
/// label, columns = predicted label), axis titles "true" / "predicted", class
/// names as tick labels. 800x700 px.
///
/// `matrix[i][j]` counts the examples of true class `labels[i]` predicted as
/// `labels[j]`.
pub fn confusion_matrix(
    title: &str,
    labels: &[String],
    matrix: &[Vec<u64>],
) -> Result<Vec<u8>, PlotError> {
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
    render("matrix", SIZE, |root| {
        draw_matrix(root, title, labels, matrix)
    })
}

fn draw_matrix<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    title: &str,
    labels: &[String],
    matrix: &[Vec<u64>],
) -> DrawResult<(), DB> {
    let fonts = STANDARD_FONTS;
    let body = titled(root, title, fonts, (8, 8, 12, 12))?;
    let n = labels.len();
    let labels: Vec<String> = labels.iter().map(|l| shorten(l)).collect();
    let max_count = matrix.iter().flatten().copied().max().unwrap_or(0);

    let (main_w, _) = body.dim_in_pixel();
    let (main, colorbar) = body.split_horizontally(main_w.saturating_sub(COLORBAR_WIDTH));

    // Size the label areas from the class names; turn the column labels
    // sideways when they do not fit under their column.
    let label_font = if n > 12 { 14 } else { fonts.label };
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
        .axis_desc_style(text_style(fonts.desc, &BLACK))
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plots::testing::{assert_png, names};

    fn labels() -> Vec<String> {
        names(&["negative", "neutral", "positive"])
    }

    #[test]
    fn confusion_matrix_renders_png() {
        let matrix = vec![vec![50, 3, 2], vec![4, 31, 9], vec![1, 6, 44]];
        let png = confusion_matrix("confusion", &labels(), &matrix).unwrap();
        assert_png(&png, (800, 700));
        let png = confusion_matrix("one class", &labels()[..1], &[vec![0]]).unwrap();
        assert_png(&png, (800, 700));
    }

    #[test]
    fn confusion_matrix_with_many_long_labels() {
        // The column labels are turned sideways and shortened.
        let labels: Vec<String> = (0..15)
            .map(|i| format!("a very long class name number {i}"))
            .collect();
        let matrix: Vec<Vec<u64>> = (0..15)
            .map(|i| (0..15).map(|j| if i == j { 10_000 } else { j }).collect())
            .collect();
        let png = confusion_matrix("many", &labels, &matrix).unwrap();
        assert_png(&png, (800, 700));
    }

    #[test]
    fn empty_and_misshapen_input_is_rejected() {
        assert!(matches!(
            confusion_matrix("t", &[], &[]),
            Err(PlotError::Empty(_))
        ));
        assert!(matches!(
            confusion_matrix("t", &labels(), &[vec![1, 2, 3]]),
            Err(PlotError::Shape(_))
        ));
        assert!(matches!(
            confusion_matrix("t", &labels(), &[vec![1], vec![2], vec![3]]),
            Err(PlotError::Shape(_))
        ));
    }

    #[test]
    fn colour_scale() {
        assert_eq!(cell_colour(0, 0), RGBColor(255, 255, 255));
        assert_eq!(cell_colour(5, 5), RGBColor(8, 48, 107));
        assert_eq!(scale_colour(f64::NAN), RGBColor(255, 255, 255));
        assert_eq!(text_colour(WHITE), BLACK);
        assert_eq!(text_colour(RGBColor(8, 48, 107)), WHITE);
        assert_eq!(count_ticks(1), vec![0.0, 1.0]);
        assert_eq!(count_ticks(50), vec![0.0, 10.0, 20.0, 30.0, 40.0, 50.0]);
    }
}
