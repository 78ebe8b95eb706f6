//! Validation-score curves of a sweep's runs over epochs: one small panel
//! per (split, seed) pair, in a grid three panels wide with a shared y
//! range, and in each panel one line per variant. Each variant has its own
//! colour, dash and marker (solid with filled circles, dashed with open
//! triangles, dotted with open squares, ...), and later variants are drawn
//! thinner on top, so that lines that coincide stay visible; one legend by
//! variant serves the whole figure.

use plotters::coord::Shift;
use plotters::element::DashedPathElement;
use plotters::prelude::*;
use plotters::style::full_palette::GREY_800;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use super::axis::{data_range, epoch_axis, format_epoch, Chart, XAxis, YAxis};
use super::frame::{build_chart, titled};
use super::style::{centre_nudge, fit_text, shorten, text_style, Fonts, PALETTE, STANDARD_FONTS};
use super::{render, DrawResult, PlotError};

/// The size of one panel, and the most panels in a row.
const PANEL: (u32, u32) = (600, 380);
const COLUMNS: usize = 3;
/// The figure is at least this wide, so that its title and legend fit.
const MIN_WIDTH: u32 = 900;
/// Height of the title, and of each row of the legend, above the panels.
const TITLE_H: u32 = 56;
const LEGEND_ROW_H: u32 = 34;
/// Room a legend entry is assumed to take when the figure is sized.
const LEGEND_ENTRY_W: u32 = 300;
const X_LABEL_AREA: u32 = 62;
/// Margin around each panel: top, bottom, left, right.
const PANEL_MARGIN: (u32, u32, u32, u32) = (10, 6, 10, 14);
/// At most this many markers on a line; longer runs mark every few epochs.
const MAX_RUN_MARKERS: usize = 12;
/// The legend's sample width, gaps and padding (as in the kit's legend).
const SAMPLE: i32 = 48;
const GAP: i32 = 8;
const SPACING: i32 = 30;
const PAD: i32 = 14;

/// A run's variant, pair label and (epoch, score) points.
type Run = (String, String, Vec<(usize, f64)>);

/// Validation-score curves of a sweep's runs over epochs, one small panel
/// per pair label (e.g. "split 0 · seed 1", in order of first appearance)
/// in a grid three panels wide, sharing one y range. In each panel one line
/// per variant: each variant (in order of first appearance) has its own
/// colour, dash (solid, dashed, dotted) and marker (filled circle, open
/// triangle, open square), later ones drawn thinner on top. One legend by
/// variant for the whole figure, counting the lines of each (`line` names
/// one: "run", "split mean"). `runs`: (variant, pair label, points
/// (epoch, score)). 600x380 px per panel, at least 916 px wide, plus the
/// title and legend above.
///
/// Points may come in any order; non-finite scores break the line.
#[allow(clippy::type_complexity)]
pub fn training_comparison(
    title: &str,
    score_name: &str,
    line: &str,
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
    let layout = Layout::of(runs);
    render("runs", layout.size(), |root| {
        draw_runs(root, title, score_name, line, runs, &layout)
    })
}

/// The variants and pairs of the runs, in order of first appearance.
struct Layout<'a> {
    /// Each variant with its number of runs.
    variants: Vec<(&'a str, usize)>,
    pairs: Vec<&'a str>,
}

impl<'a> Layout<'a> {
    fn of(runs: &'a [Run]) -> Self {
        let mut variants: Vec<(&str, usize)> = Vec::new();
        let mut pairs: Vec<&str> = Vec::new();
        for (variant, pair, _) in runs {
            match variants.iter_mut().find(|(v, _)| v == variant) {
                Some((_, count)) => *count += 1,
                None => variants.push((variant, 1)),
            }
            if !pairs.contains(&pair.as_str()) {
                pairs.push(pair);
            }
        }
        Self { variants, pairs }
    }

    fn columns(&self) -> usize {
        self.pairs.len().clamp(1, COLUMNS)
    }

    fn rows(&self) -> usize {
        self.pairs.len().max(1).div_ceil(COLUMNS)
    }

    fn width(&self) -> u32 {
        (PANEL.0 * self.columns() as u32).max(MIN_WIDTH) + 16
    }

    fn size(&self) -> (u32, u32) {
        let width = self.width();
        let per_row = (width / LEGEND_ENTRY_W).max(1) as usize;
        let legend_rows = self.variants.len().div_ceil(per_row) as u32;
        let height = TITLE_H + legend_rows * LEGEND_ROW_H + 16 + PANEL.1 * self.rows() as u32;
        (width, height)
    }

    /// The position of `variant` among the variants.
    fn index(&self, variant: &str) -> usize {
        self.variants
            .iter()
            .position(|(v, _)| *v == variant)
            .unwrap_or(0)
    }

    fn style(&self, variant: &str) -> VariantStyle {
        VariantStyle::nth(self.index(variant))
    }
}

/// How a line is stroked.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Dash {
    Solid,
    Dashed,
    Dotted,
}

/// The shape at a line's points: the first variant's filled, the others
/// open so that a marker under them still shows.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Shape {
    FilledCircle,
    OpenTriangle,
    OpenSquare,
    OpenDiamond,
}

/// How the lines of one variant are drawn.
#[derive(Clone, Copy, Debug, PartialEq)]
struct VariantStyle {
    color: RGBColor,
    dash: Dash,
    shape: Shape,
    width: u32,
}

impl VariantStyle {
    /// The style of the `i`th variant: later ones thinner, with lighter
    /// dashes and open markers.
    fn nth(i: usize) -> Self {
        const DASHES: [Dash; 3] = [Dash::Solid, Dash::Dashed, Dash::Dotted];
        const SHAPES: [Shape; 4] = [
            Shape::FilledCircle,
            Shape::OpenTriangle,
            Shape::OpenSquare,
            Shape::OpenDiamond,
        ];
        Self {
            color: PALETTE[i % PALETTE.len()],
            dash: DASHES[i % DASHES.len()],
            shape: SHAPES[i % SHAPES.len()],
            width: if i == 0 { 3 } else { 2 },
        }
    }

    /// Draws a polyline of backend coordinates on `area`.
    fn draw_path<DB: DrawingBackend, CT: plotters::coord::CoordTranslate>(
        &self,
        area: &DrawingArea<DB, CT>,
        points: Vec<CT::From>,
    ) -> DrawResult<(), DB>
    where
        CT::From: Clone,
    {
        let style = self.color.stroke_width(self.width);
        match self.dash {
            Dash::Solid => area.draw(&PathElement::new(points, style)),
            Dash::Dashed => area.draw(&DashedPathElement::new(points, 12, 7, style)),
            Dash::Dotted => area.draw(&DashedPathElement::new(points, 3, 5, style)),
        }
    }

    /// Draws the marker at `at` on `area`.
    fn draw_marker<DB: DrawingBackend, CT: plotters::coord::CoordTranslate>(
        &self,
        area: &DrawingArea<DB, CT>,
        at: CT::From,
    ) -> DrawResult<(), DB>
    where
        CT::From: Clone,
    {
        let open = self.color.stroke_width(2);
        let outline = |corners: &[(i32, i32)]| {
            let mut path = corners.to_vec();
            path.push(corners[0]);
            EmptyElement::at(at.clone()) + PathElement::new(path, open)
        };
        match self.shape {
            Shape::FilledCircle => area.draw(&Circle::new(at, 5, self.color.filled())),
            Shape::OpenTriangle => area.draw(&outline(&[(0, -12), (10, 6), (-10, 6)])),
            Shape::OpenSquare => area.draw(&outline(&[(-7, -7), (7, -7), (7, 7), (-7, 7)])),
            Shape::OpenDiamond => area.draw(&outline(&[(0, -9), (9, 0), (0, 9), (-9, 0)])),
        }
    }
}

fn draw_runs<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    title: &str,
    score_name: &str,
    line: &str,
    runs: &[Run],
    layout: &Layout<'_>,
) -> DrawResult<(), DB> {
    let fonts = STANDARD_FONTS;
    let body = titled(root, title, fonts, (8, 8, 8, 8))?;
    let entries: Vec<(String, VariantStyle)> = layout
        .variants
        .iter()
        .map(|&(variant, count)| {
            let plural = if count == 1 { "" } else { "s" };
            let label = format!("{} ({count} {line}{plural})", shorten(variant));
            (label, layout.style(variant))
        })
        .collect();
    let (w, _) = body.dim_in_pixel();
    let rows = legend_rows(&body, fonts, &entries, w as i32)?;
    let strip = rows.len() as u32 * (fonts.legend + 16) + 14;
    let (legend_area, grid_area) = body.split_vertically(strip);
    draw_legend(&legend_area, fonts, &entries, &rows)?;

    let values = runs
        .iter()
        .flat_map(|(_, _, points)| points.iter().map(|&(_, y)| y))
        .filter(|y| y.is_finite());
    let y_range = data_range(values);
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
    let columns = layout.columns();
    let (grid_w, grid_h) = grid_area.dim_in_pixel();
    let panel_w = grid_w / columns as u32;
    let panel_h = grid_h / layout.rows() as u32;
    for (p, pair) in layout.pairs.iter().enumerate() {
        let (row, column) = ((p / columns) as u32, (p % columns) as u32);
        let area = grid_area
            .clone()
            .shrink((column * panel_w, row * panel_h), (panel_w, panel_h));
        let (m_top, m_bottom, m_left, m_right) = PANEL_MARGIN;
        let area = area.margin(m_top, m_bottom, m_left, m_right);
        let (caption, font) = fit_text(&area, pair, fonts.caption, panel_w.saturating_sub(40))?;
        let inner = area.titled(&caption, text_style(font, &BLACK))?;
        let y = YAxis::new(&inner, fonts, y_range.clone())?;
        let mut chart = build_chart(&inner, fonts, &x, &y, &y_desc)?;
        // In variant order, so that later (thinner) variants lie on top.
        let mut members: Vec<(usize, &Run)> = runs
            .iter()
            .filter(|(_, q, _)| q == pair)
            .map(|run| (layout.index(&run.0), run))
            .collect();
        members.sort_by_key(|&(i, _)| i);
        let mut any = false;
        for (i, (_, _, points)) in members {
            any |= draw_run(&mut chart, i, points)?;
        }
        if !any {
            let centre = (
                (x.axis.range.start + x.axis.range.end) / 2.0,
                (y_range.start + y_range.end) / 2.0,
            );
            let style =
                text_style(fonts.label, &GREY_800).pos(Pos::new(HPos::Center, VPos::Center));
            let note = Text::new("no scores", (0, centre_nudge(fonts.label)), style);
            chart.draw_series([EmptyElement::at(centre) + note])?;
        }
    }
    Ok(())
}

/// Draws one run of the `variant`th variant, its line and markers; false
/// if it has no finite score. When only every few points are marked, each
/// variant marks different ones, so that markers do not hide each other.
fn draw_run<DB: DrawingBackend>(
    chart: &mut Chart<'_, DB>,
    variant: usize,
    points: &[(usize, f64)],
) -> DrawResult<bool, DB> {
    let style = VariantStyle::nth(variant);
    let mut points: Vec<(f64, f64)> = points.iter().map(|&(e, v)| (e as f64, v)).collect();
    points.sort_by(|a, b| a.0.total_cmp(&b.0));
    let area = chart.plotting_area();
    for run in finite_runs(&points) {
        if run.len() > 1 {
            style.draw_path(area, run)?;
        }
    }
    let finite: Vec<(f64, f64)> = points.into_iter().filter(|p| p.1.is_finite()).collect();
    let every = finite.len().div_ceil(MAX_RUN_MARKERS).max(1);
    for (i, &at) in finite.iter().enumerate() {
        // A lone point gets its marker whatever the spacing.
        if (i + variant).is_multiple_of(every) || finite.len() == 1 {
            style.draw_marker(area, at)?;
        }
    }
    Ok(!finite.is_empty())
}

/// The stretches of consecutive finite points.
fn finite_runs(points: &[(f64, f64)]) -> Vec<Vec<(f64, f64)>> {
    let mut runs: Vec<Vec<(f64, f64)>> = Vec::new();
    let mut open = false;
    for &p in points {
        if p.1.is_finite() {
            match runs.last_mut() {
                Some(run) if open => run.push(p),
                _ => runs.push(vec![p]),
            }
            open = true;
        } else {
            open = false;
        }
    }
    runs
}

/// The legend's entries split into rows that fit `width`.
fn legend_rows<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    fonts: Fonts,
    entries: &[(String, VariantStyle)],
    width: i32,
) -> DrawResult<Vec<Vec<(usize, i32)>>, DB> {
    let style = text_style(fonts.legend, &BLACK);
    let mut rows: Vec<Vec<(usize, i32)>> = Vec::new();
    let mut used = 0;
    for (i, (label, _)) in entries.iter().enumerate() {
        let w = SAMPLE + GAP + area.estimate_text_size(label, &style)?.0 as i32;
        match rows.last_mut() {
            Some(row) if used + SPACING + w <= width - 2 * PAD => {
                row.push((i, w));
                used += SPACING + w;
            }
            _ => {
                rows.push(vec![(i, w)]);
                used = w;
            }
        }
    }
    Ok(rows)
}

/// The legend, as the kit's legend looks: a white box with a grey border,
/// centred, each entry a sample of the variant's line and marker and its
/// label.
fn draw_legend<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    fonts: Fonts,
    entries: &[(String, VariantStyle)],
    rows: &[Vec<(usize, i32)>],
) -> DrawResult<(), DB> {
    let row_h = fonts.legend as i32 + 16;
    let row_w = |row: &Vec<(usize, i32)>| {
        row.iter().map(|&(_, w)| w).sum::<i32>() + SPACING * (row.len() as i32 - 1)
    };
    let box_w = rows.iter().map(row_w).max().unwrap_or(0) + 2 * PAD;
    let box_h = rows.len() as i32 * row_h;
    let (w, h) = area.dim_in_pixel();
    let x0 = ((w as i32 - box_w) / 2).max(0);
    let y0 = ((h as i32 - box_h) / 2).max(0);
    let corners = [(x0, y0), (x0 + box_w, y0 + box_h)];
    area.draw(&Rectangle::new(corners, WHITE.filled()))?;
    area.draw(&Rectangle::new(corners, BLACK.mix(0.55).stroke_width(1)))?;
    let text = text_style(fonts.legend, &BLACK).pos(Pos::new(HPos::Left, VPos::Center));
    for (r, row) in rows.iter().enumerate() {
        let cy = y0 + r as i32 * row_h + row_h / 2;
        let mut x = x0 + PAD;
        for &(i, width) in row {
            let (label, style) = &entries[i];
            style.draw_path(area, vec![(x, cy), (x + SAMPLE, cy)])?;
            style.draw_marker(area, (x + SAMPLE / 2, cy))?;
            let at = (x + SAMPLE + GAP, cy + centre_nudge(fonts.legend));
            area.draw(&Text::new(label.as_str(), at, text.clone()))?;
            x += width + SPACING;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plots::testing::assert_png;

    /// Three arms on `pairs` pairs; the restart arm follows the baseline
    /// exactly until epoch 3, and the dendritic arm matches it throughout
    /// on the first pair.
    fn runs(pairs: usize, epochs: usize) -> Vec<Run> {
        (0..pairs)
            .flat_map(|p| {
                ["baseline", "dendritic", "restart"].map(|variant| {
                    let points = (1..=epochs)
                        .rev()
                        .map(|e| {
                            let base =
                                0.6 + 0.25 * (1.0 - 0.7f64.powi(e as i32)) + 0.005 * p as f64;
                            let lift = match variant {
                                "dendritic" if p > 0 => 0.004 * e as f64,
                                "restart" if e > 3 => -0.003 * e as f64,
                                _ => 0.0,
                            };
                            (e, base + lift)
                        })
                        .collect();
                    let pair = format!("split {} · seed {}", p / 3, p % 3);
                    (variant.to_string(), pair, points)
                })
            })
            .collect()
    }

    #[test]
    fn training_comparison_renders_png() {
        let nine = runs(9, 10);
        let png = training_comparison(
            "MiniLM on FPB: validation macro-F1 per epoch",
            "macro-F1",
            "run",
            &nine,
        )
        .unwrap();
        assert_eq!(Layout::of(&nine).size(), (1816, 56 + 34 + 16 + 3 * 380));
        assert_png(&png, Layout::of(&nine).size());
        std::fs::write("/tmp/plots-b-runs.png", &png).ok();

        let one = runs(1, 30);
        let png = training_comparison("one pair", "macro-F1", "run", &one).unwrap();
        assert_png(&png, Layout::of(&one).size());
        std::fs::write("/tmp/plots-b-runs-one.png", &png).ok();

        let single = [("baseline".to_string(), "seed 0".to_string(), vec![(1, 0.7)])];
        let png = training_comparison("one", "accuracy", "run", &single).unwrap();
        assert_png(&png, Layout::of(&single).size());
    }

    #[test]
    fn training_comparison_rejects_no_scores() {
        assert!(matches!(
            training_comparison("t", "m", "run", &[]),
            Err(PlotError::Empty(_))
        ));
        let no_scores = [("a".to_string(), "s".to_string(), vec![(1, f64::NAN)])];
        assert!(matches!(
            training_comparison("t", "m", "run", &no_scores),
            Err(PlotError::Empty(_))
        ));
    }

    #[test]
    fn layout_and_styles() {
        let runs = runs(4, 3);
        let layout = Layout::of(&runs);
        assert_eq!(
            layout.variants,
            [("baseline", 4), ("dendritic", 4), ("restart", 4)]
        );
        assert_eq!(layout.pairs.len(), 4);
        assert_eq!((layout.columns(), layout.rows()), (3, 2));
        let styles: Vec<VariantStyle> = ["baseline", "dendritic", "restart"]
            .iter()
            .map(|v| layout.style(v))
            .collect();
        assert_eq!(
            styles
                .iter()
                .map(|s| (s.dash, s.shape, s.width))
                .collect::<Vec<_>>(),
            [
                (Dash::Solid, Shape::FilledCircle, 3),
                (Dash::Dashed, Shape::OpenTriangle, 2),
                (Dash::Dotted, Shape::OpenSquare, 2),
            ]
        );
        assert_ne!(styles[0].color, styles[1].color);
        assert_eq!(Layout::of(&runs[..1]).size().0, MIN_WIDTH + 16);
    }

    #[test]
    fn finite_runs_break_at_gaps() {
        let points = [(1.0, 0.1), (2.0, f64::NAN), (3.0, 0.3), (4.0, 0.4)];
        assert_eq!(
            finite_runs(&points),
            vec![vec![(1.0, 0.1)], vec![(3.0, 0.3), (4.0, 0.4)]]
        );
    }
}
