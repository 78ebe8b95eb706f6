//! A sweep's runs over epochs in a grid of small panels (a panel per
//! (split, seed) pair, or summary panels of each arm's mean with a band),
//! each panel a line per arm. Each arm has its own colour, dash and marker
//! (solid with filled circles, dashed with open triangles, dotted with open
//! squares, ...), and later arms are drawn thinner on top, so that lines
//! that coincide stay visible; a run's selected epoch is ringed, its
//! switches are orange lines and the epochs a restore discarded are faded.
//! One legend serves the whole figure.

use plotters::coord::Shift;
use plotters::element::DashedPathElement;
use plotters::prelude::*;
use plotters::style::full_palette::GREY_800;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use super::axis::{data_range, epoch_axis, format_epoch, Chart, XAxis, YAxis};
use super::frame::{build_chart, titled};
use super::style::{
    centre_nudge, fit_text, text_style, Fonts, PALETTE, STANDARD_FONTS, SWITCH_COLOR,
};
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

/// One line of the training figure.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct RunLine {
    /// The arm the line belongs to: its colour, dash and marker.
    pub arm: String,
    /// The panel it is drawn in (its caption).
    pub panel: String,
    /// The panel's y label; panels with the same label share a y range.
    pub quantity: String,
    /// (epoch, value, faded): faded points (epochs a restore discarded)
    /// and the segments that touch them are drawn light.
    pub points: Vec<(usize, f64, bool)>,
    /// (epoch, low, high): a light band of the arm's colour behind lines.
    pub band: Vec<(usize, f64, f64)>,
    /// The epoch whose network the run kept: ringed in black.
    pub selected: Option<usize>,
    /// Epochs after which a set was added (or the arm restored and
    /// restarted): an orange line at epoch + 0.5 across the panel.
    pub switches: Vec<usize>,
}

/// Lines of a sweep's runs over epochs in a grid of small panels, three
/// wide, in order of each panel's first line. `arms`: (arm, legend label),
/// in legend and drawing order: each arm has its own colour, dash (solid,
/// dashed, dotted) and marker (filled circle, open triangle, open square),
/// later ones drawn thinner on top. Bands are drawn under every line.
/// The legend adds an entry for each mark some line carries (selected
/// epoch, switch, faded epochs). 600x380 px per panel, at least 916 px
/// wide, plus the title and legend above.
///
/// Points may come in any order; non-finite values break the line.
pub fn training_comparison(
    title: &str,
    arms: &[(String, String)],
    lines: &[RunLine],
) -> Result<Vec<u8>, PlotError> {
    let any_point = lines
        .iter()
        .flat_map(|l| &l.points)
        .any(|(_, y, _)| y.is_finite());
    if !any_point {
        return Err(PlotError::Empty(
            "the training comparison needs at least one finite score",
        ));
    }
    let layout = Layout::of(arms, lines);
    render("runs", layout.size(), |root| {
        draw_runs(root, title, lines, &layout)
    })
}

/// The legend's entries and the panels of the lines, in order of first
/// appearance.
struct Layout<'a> {
    entries: Vec<Entry>,
    /// Arm names, in drawing order.
    arms: Vec<&'a str>,
    /// (caption, y label)
    panels: Vec<(&'a str, &'a str)>,
    /// Each y label's range, shared by its panels.
    y_ranges: Vec<(&'a str, std::ops::Range<f64>)>,
}

/// A legend entry: an arm's line, or a mark.
#[derive(Debug, Clone, PartialEq)]
enum Entry {
    Arm(String, VariantStyle),
    Selected,
    Switch,
    Faded,
}

impl Entry {
    fn label(&self) -> &str {
        match self {
            Entry::Arm(label, _) => label,
            Entry::Selected => "selected epoch",
            Entry::Switch => "set added / restart",
            Entry::Faded => "discarded by a restore",
        }
    }
}

impl<'a> Layout<'a> {
    fn of(arms: &'a [(String, String)], lines: &'a [RunLine]) -> Self {
        let mut entries: Vec<Entry> = arms
            .iter()
            .enumerate()
            .map(|(i, (_, label))| Entry::Arm(label.clone(), VariantStyle::nth(i)))
            .collect();
        if lines.iter().any(|l| l.selected.is_some()) {
            entries.push(Entry::Selected);
        }
        if lines.iter().any(|l| !l.switches.is_empty()) {
            entries.push(Entry::Switch);
        }
        if lines.iter().flat_map(|l| &l.points).any(|p| p.2) {
            entries.push(Entry::Faded);
        }
        let mut panels: Vec<(&str, &str)> = Vec::new();
        for l in lines {
            if !panels.iter().any(|(p, _)| *p == l.panel) {
                panels.push((&l.panel, &l.quantity));
            }
        }
        let mut y_ranges: Vec<(&str, std::ops::Range<f64>)> = Vec::new();
        for &(_, quantity) in &panels {
            if !y_ranges.iter().any(|(q, _)| *q == quantity) {
                y_ranges.push((quantity, y_range_of(lines, quantity)));
            }
        }
        Self {
            entries,
            arms: arms.iter().map(|(a, _)| a.as_str()).collect(),
            panels,
            y_ranges,
        }
    }

    fn columns(&self) -> usize {
        self.panels.len().clamp(1, COLUMNS)
    }

    fn rows(&self) -> usize {
        self.panels.len().max(1).div_ceil(COLUMNS)
    }

    fn width(&self) -> u32 {
        (PANEL.0 * self.columns() as u32).max(MIN_WIDTH) + 16
    }

    fn size(&self) -> (u32, u32) {
        let width = self.width();
        let per_row = (width / LEGEND_ENTRY_W).max(1) as usize;
        let legend_rows = self.entries.len().div_ceil(per_row) as u32;
        let height = TITLE_H + legend_rows * LEGEND_ROW_H + 16 + PANEL.1 * self.rows() as u32;
        (width, height)
    }

    /// The y range of the panels labelled `quantity`.
    fn y_range(&self, quantity: &str) -> std::ops::Range<f64> {
        let found = self.y_ranges.iter().find(|(q, _)| *q == quantity);
        found.map_or(0.0..1.0, |(_, r)| r.clone())
    }

    /// The position of `arm` among the arms.
    fn index(&self, arm: &str) -> usize {
        self.arms.iter().position(|a| *a == arm).unwrap_or(0)
    }

    #[cfg(test)]
    fn style(&self, arm: &str) -> VariantStyle {
        VariantStyle::nth(self.index(arm))
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

    /// Draws a polyline on `area`, at `alpha` (1: full colour).
    fn draw_path<DB: DrawingBackend, CT: plotters::coord::CoordTranslate>(
        &self,
        area: &DrawingArea<DB, CT>,
        points: Vec<CT::From>,
        alpha: f64,
    ) -> DrawResult<(), DB>
    where
        CT::From: Clone,
    {
        let style = self.color.mix(alpha).stroke_width(self.width);
        match self.dash {
            Dash::Solid => area.draw(&PathElement::new(points, style)),
            Dash::Dashed => area.draw(&DashedPathElement::new(points, 12, 7, style)),
            Dash::Dotted => area.draw(&DashedPathElement::new(points, 3, 5, style)),
        }
    }

    /// Draws the marker at `at` on `area`, at `alpha`.
    fn draw_marker<DB: DrawingBackend, CT: plotters::coord::CoordTranslate>(
        &self,
        area: &DrawingArea<DB, CT>,
        at: CT::From,
        alpha: f64,
    ) -> DrawResult<(), DB>
    where
        CT::From: Clone,
    {
        let color = self.color.mix(alpha);
        let open = color.stroke_width(2);
        let outline = |corners: &[(i32, i32)]| {
            let mut path = corners.to_vec();
            path.push(corners[0]);
            EmptyElement::at(at.clone()) + PathElement::new(path, open)
        };
        match self.shape {
            Shape::FilledCircle => area.draw(&Circle::new(at, 5, color.filled())),
            Shape::OpenTriangle => area.draw(&outline(&[(0, -12), (10, 6), (-10, 6)])),
            Shape::OpenSquare => area.draw(&outline(&[(-7, -7), (7, -7), (7, 7), (-7, 7)])),
            Shape::OpenDiamond => area.draw(&outline(&[(0, -9), (9, 0), (0, 9), (-9, 0)])),
        }
    }
}

/// How light faded points and bands are drawn.
const FADED: f64 = 0.3;
const BAND: f64 = 0.15;
/// Radius of the ring around a selected epoch's point.
const RING: i32 = 10;

fn draw_runs<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    title: &str,
    lines: &[RunLine],
    layout: &Layout<'_>,
) -> DrawResult<(), DB> {
    let fonts = STANDARD_FONTS;
    let body = titled(root, title, fonts, (8, 8, 8, 8))?;
    let (w, _) = body.dim_in_pixel();
    let rows = legend_rows(&body, fonts, &layout.entries, w as i32)?;
    let strip = rows.len() as u32 * (fonts.legend + 16) + 14;
    let (legend_area, grid_area) = body.split_vertically(strip);
    draw_legend(&legend_area, fonts, &layout.entries, &rows)?;

    let x = XAxis {
        axis: epoch_axis(lines.iter().flat_map(|l| l.points.iter().map(|p| p.0))),
        desc: "epoch",
        format: &format_epoch,
        label_area: X_LABEL_AREA,
    };
    let columns = layout.columns();
    let (grid_w, grid_h) = grid_area.dim_in_pixel();
    let panel_w = grid_w / columns as u32;
    let panel_h = grid_h / layout.rows() as u32;
    for (p, &(panel, quantity)) in layout.panels.iter().enumerate() {
        let (row, column) = ((p / columns) as u32, (p % columns) as u32);
        let area = grid_area
            .clone()
            .shrink((column * panel_w, row * panel_h), (panel_w, panel_h));
        let (m_top, m_bottom, m_left, m_right) = PANEL_MARGIN;
        let area = area.margin(m_top, m_bottom, m_left, m_right);
        let (caption, font) = fit_text(&area, panel, fonts.caption, panel_w.saturating_sub(40))?;
        let inner = area.titled(&caption, text_style(font, &BLACK))?;
        let y_range = layout.y_range(quantity);
        let y = YAxis::new(&inner, fonts, y_range.clone())?;
        let mut chart = build_chart(&inner, fonts, &x, &y, quantity)?;
        // In arm order, so that later (thinner) arms lie on top.
        let mut members: Vec<(usize, &RunLine)> = lines
            .iter()
            .filter(|l| l.panel == panel)
            .map(|l| (layout.index(&l.arm), l))
            .collect();
        members.sort_by_key(|&(i, _)| i);
        let mut switches: Vec<usize> = members
            .iter()
            .flat_map(|(_, l)| l.switches.iter().copied())
            .collect();
        switches.sort_unstable();
        switches.dedup();
        let switch_style = SWITCH_COLOR.stroke_width(2);
        chart.draw_series(switches.iter().map(|&s| {
            let x = s as f64 + 0.5;
            PathElement::new(vec![(x, y_range.start), (x, y_range.end)], switch_style)
        }))?;
        for &(i, line) in &members {
            draw_band(&mut chart, i, &line.band)?;
        }
        let mut any = false;
        for &(i, line) in &members {
            any |= draw_run(&mut chart, i, line)?;
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

/// The y range of the panels labelled `quantity`: their points and bands.
fn y_range_of(lines: &[RunLine], quantity: &str) -> std::ops::Range<f64> {
    let of = lines.iter().filter(|l| l.quantity == quantity);
    let points = of.clone().flat_map(|l| l.points.iter().map(|p| p.1));
    let bands = of.flat_map(|l| l.band.iter().flat_map(|b| [b.1, b.2]));
    data_range(points.chain(bands).filter(|y| y.is_finite()))
}

/// A light band of the `arm`th arm's colour between (epoch, low, high).
fn draw_band<DB: DrawingBackend>(
    chart: &mut Chart<'_, DB>,
    arm: usize,
    band: &[(usize, f64, f64)],
) -> DrawResult<(), DB> {
    let mut band: Vec<(f64, f64, f64)> = band
        .iter()
        .filter(|b| b.1.is_finite() && b.2.is_finite())
        .map(|&(e, lo, hi)| (e as f64, lo, hi))
        .collect();
    if band.len() < 2 {
        return Ok(());
    }
    band.sort_by(|a, b| a.0.total_cmp(&b.0));
    let upper = band.iter().map(|&(x, _, hi)| (x, hi));
    let lower = band.iter().rev().map(|&(x, lo, _)| (x, lo));
    let color = VariantStyle::nth(arm).color.mix(BAND).filled();
    chart.draw_series([Polygon::new(upper.chain(lower).collect::<Vec<_>>(), color)])?;
    Ok(())
}

/// Draws one line of the `arm`th arm: its segments and markers (light
/// where they touch a faded point), and a ring at its selected epoch;
/// false if it has no finite value. When only every few points are
/// marked, each arm marks different ones, so that markers do not hide
/// each other.
fn draw_run<DB: DrawingBackend>(
    chart: &mut Chart<'_, DB>,
    arm: usize,
    line: &RunLine,
) -> DrawResult<bool, DB> {
    let style = VariantStyle::nth(arm);
    let mut points: Vec<(f64, f64, bool)> = line
        .points
        .iter()
        .map(|&(e, v, faded)| (e as f64, v, faded))
        .collect();
    points.sort_by(|a, b| a.0.total_cmp(&b.0));
    let alpha = |faded: bool| if faded { FADED } else { 1.0 };
    let area = chart.plotting_area();
    for pair in points.windows(2) {
        let (a, b) = (pair[0], pair[1]);
        if a.1.is_finite() && b.1.is_finite() {
            let path = vec![(a.0, a.1), (b.0, b.1)];
            style.draw_path(area, path, alpha(a.2 || b.2))?;
        }
    }
    let finite: Vec<(f64, f64, bool)> = points.into_iter().filter(|p| p.1.is_finite()).collect();
    let every = finite.len().div_ceil(MAX_RUN_MARKERS).max(1);
    for (i, &(x, y, faded)) in finite.iter().enumerate() {
        // A lone point gets its marker whatever the spacing.
        if (i + arm).is_multiple_of(every) || finite.len() == 1 {
            style.draw_marker(area, (x, y), alpha(faded))?;
        }
    }
    let selected = line
        .selected
        .and_then(|e| finite.iter().find(|p| p.0 == e as f64));
    if let Some(&(x, y, _)) = selected {
        area.draw(&Circle::new((x, y), RING, BLACK.stroke_width(2)))?;
    }
    Ok(!finite.is_empty())
}

/// The legend's entries split into rows that fit `width`.
fn legend_rows<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    fonts: Fonts,
    entries: &[Entry],
    width: i32,
) -> DrawResult<Vec<Vec<(usize, i32)>>, DB> {
    let style = text_style(fonts.legend, &BLACK);
    let mut rows: Vec<Vec<(usize, i32)>> = Vec::new();
    let mut used = 0;
    for (i, entry) in entries.iter().enumerate() {
        let w = SAMPLE + GAP + area.estimate_text_size(entry.label(), &style)?.0 as i32;
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
/// centred, each entry a sample (an arm's line and marker, a ring, an
/// orange line, a faded line) and its label.
fn draw_legend<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    fonts: Fonts,
    entries: &[Entry],
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
            let entry = &entries[i];
            let (mid, across) = ((x + SAMPLE / 2, cy), vec![(x, cy), (x + SAMPLE, cy)]);
            match entry {
                Entry::Arm(_, style) => {
                    style.draw_path(area, across, 1.0)?;
                    style.draw_marker(area, mid, 1.0)?;
                }
                Entry::Selected => area.draw(&Circle::new(mid, RING, BLACK.stroke_width(2)))?,
                Entry::Switch => {
                    let up = vec![(mid.0, cy - row_h / 2 + 4), (mid.0, cy + row_h / 2 - 4)];
                    area.draw(&PathElement::new(up, SWITCH_COLOR.stroke_width(2)))?
                }
                Entry::Faded => {
                    let style = VariantStyle::nth(0);
                    style.draw_path(area, across, FADED)?;
                    style.draw_marker(area, mid, FADED)?;
                }
            }
            let at = (x + SAMPLE + GAP, cy + centre_nudge(fonts.legend));
            area.draw(&Text::new(entry.label(), at, text.clone()))?;
            x += width + SPACING;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plots::testing::assert_png;

    const ARMS: [&str; 3] = ["baseline", "dendritic", "restart"];

    fn arms() -> Vec<(String, String)> {
        ARMS.iter()
            .map(|a| (a.to_string(), format!("{a} (9 runs)")))
            .collect()
    }

    /// Three arms on `pairs` pairs; the restart arm follows the baseline
    /// exactly until epoch 3, and the dendritic arm matches it throughout
    /// on the first pair. The dendritic arm switches after epoch 3, and
    /// its epochs 4-5 are discarded on the second pair.
    fn runs(pairs: usize, epochs: usize) -> Vec<RunLine> {
        (0..pairs)
            .flat_map(|p| {
                ARMS.map(|arm| {
                    let points = (1..=epochs)
                        .rev()
                        .map(|e| {
                            let base =
                                0.6 + 0.25 * (1.0 - 0.7f64.powi(e as i32)) + 0.005 * p as f64;
                            let lift = match arm {
                                "dendritic" if p > 0 => 0.004 * e as f64,
                                "restart" if e > 3 => -0.003 * e as f64,
                                _ => 0.0,
                            };
                            let faded = arm == "dendritic" && p == 1 && (4..=5).contains(&e);
                            (e, base + lift, faded)
                        })
                        .collect();
                    RunLine {
                        arm: arm.to_string(),
                        panel: format!("split {} · seed {}", p / 3, p % 3),
                        quantity: "validation macro-F1".to_string(),
                        points,
                        selected: Some(epochs.min(3)),
                        switches: if arm == "dendritic" { vec![3] } else { vec![] },
                        ..RunLine::default()
                    }
                })
            })
            .collect()
    }

    /// A summary panel: each arm's mean and a band, and a loss panel.
    fn summary(epochs: usize) -> Vec<RunLine> {
        ARMS.iter()
            .enumerate()
            .flat_map(|(i, arm)| {
                let mean = |e: usize| 0.7 + 0.02 * i as f64 + 0.01 * e as f64;
                let loss = |e: usize| 1.0 / e as f64 + 0.05 * i as f64;
                [
                    RunLine {
                        arm: arm.to_string(),
                        panel: "mean of 36 runs ± 1 sd".to_string(),
                        quantity: "validation macro-F1".to_string(),
                        points: (1..=epochs).map(|e| (e, mean(e), false)).collect(),
                        band: (1..=epochs)
                            .map(|e| (e, mean(e) - 0.02, mean(e) + 0.02))
                            .collect(),
                        ..RunLine::default()
                    },
                    RunLine {
                        arm: arm.to_string(),
                        panel: "training loss".to_string(),
                        quantity: "training loss".to_string(),
                        points: (1..=epochs).map(|e| (e, loss(e), false)).collect(),
                        ..RunLine::default()
                    },
                ]
            })
            .collect()
    }

    #[test]
    fn training_comparison_renders_png() {
        let mut nine = runs(9, 10);
        nine.extend(summary(10));
        let arms = arms();
        let png = training_comparison("MiniLM on FPB: per epoch", &arms, &nine).unwrap();
        let layout = Layout::of(&arms, &nine);
        assert_eq!(layout.panels.len(), 11);
        assert_eq!(layout.size(), (1816, 56 + 34 + 16 + 4 * 380));
        assert_png(&png, layout.size());
        std::fs::write("/tmp/plots-b-runs.png", &png).ok();

        let one = runs(1, 30);
        let png = training_comparison("one pair", &arms, &one).unwrap();
        assert_png(&png, Layout::of(&arms, &one).size());
        std::fs::write("/tmp/plots-b-runs-one.png", &png).ok();

        let png = training_comparison("summary", &arms, &summary(30)).unwrap();
        std::fs::write("/tmp/plots-b-runs-summary.png", &png).ok();

        let single = [RunLine {
            arm: "baseline".to_string(),
            panel: "seed 0".to_string(),
            quantity: "accuracy".to_string(),
            points: vec![(1, 0.7, false)],
            ..RunLine::default()
        }];
        let png = training_comparison("one", &arms, &single).unwrap();
        assert_png(&png, Layout::of(&arms, &single).size());
    }

    #[test]
    fn training_comparison_rejects_no_scores() {
        assert!(matches!(
            training_comparison("t", &arms(), &[]),
            Err(PlotError::Empty(_))
        ));
        let no_scores = [RunLine {
            points: vec![(1, f64::NAN, false)],
            ..RunLine::default()
        }];
        assert!(matches!(
            training_comparison("t", &arms(), &no_scores),
            Err(PlotError::Empty(_))
        ));
    }

    #[test]
    fn layout_entries_and_styles() {
        let runs = runs(4, 3);
        let arms = arms();
        let layout = Layout::of(&arms, &runs);
        let labels: Vec<&str> = layout.entries.iter().map(Entry::label).collect();
        assert_eq!(
            labels,
            [
                "baseline (9 runs)",
                "dendritic (9 runs)",
                "restart (9 runs)",
                "selected epoch",
                "set added / restart",
            ],
            "no point is faded in 3 epochs"
        );
        assert_eq!(layout.panels.len(), 4);
        assert_eq!((layout.columns(), layout.rows()), (3, 2));
        let styles: Vec<VariantStyle> = ARMS.iter().map(|v| layout.style(v)).collect();
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
        assert_eq!(Layout::of(&arms, &runs[..1]).size().0, MIN_WIDTH + 16);
        let two = self::runs(2, 6);
        let faded = Layout::of(&arms, &two);
        assert_eq!(faded.entries.last(), Some(&Entry::Faded));
    }

    /// Panels with the same y label share a range; others have their own.
    #[test]
    fn y_ranges_follow_the_quantity() {
        let lines = summary(4);
        let loss = y_range_of(&lines, "training loss");
        let val = y_range_of(&lines, "validation macro-F1");
        assert!(loss.end > 1.0 && loss.start < 0.4, "{loss:?}");
        assert!(
            val.start < 0.69 && val.end > 0.8 && val.end < 1.0,
            "{val:?}"
        );
    }
}
