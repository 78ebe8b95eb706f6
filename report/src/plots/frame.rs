//! Charts and their frames: a [`Frame`] plans a chart (its y axis and its
//! legend) before anything is drawn, [`build_chart`] draws its grid and
//! labelled axes, and [`draw_panels`] lays out captioned [`Panel`]s of lines
//! side by side, for the training curves and the dendrite figure.

use std::ops::Range;

use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::full_palette::GREY_800;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use super::axis::{Chart, XAxis, YAxis};
use super::legend::{Legend, LegendEntry, Sample};
use super::line::Line;
use super::style::{centre_nudge, fit_text, text_style, Fonts, SWITCH_COLOR};
use super::DrawResult;

/// Above the plot, under the legend strip.
const MARGIN_TOP: u32 = 8;
/// Right of the plot.
const MARGIN_RIGHT: u32 = 24;

/// A chart with its legend in a strip above the plot, planned before it is
/// drawn so that neighbours can share a strip height.
pub(super) struct Frame<DB: DrawingBackend> {
    inner: DrawingArea<DB, Shift>,
    pub(super) y: YAxis,
    pub(super) legend: Legend,
}

/// Fills a figure white and writes its title inside `margin` (top,
/// bottom, left, right); returns the area under the title.
pub(super) fn titled<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    title: &str,
    fonts: Fonts,
    margin: (u32, u32, u32, u32),
) -> DrawResult<DrawingArea<DB, Shift>, DB> {
    root.fill(&WHITE)?;
    let (top, bottom, left, right) = margin;
    root.margin(top, bottom, left, right)
        .titled(title, text_style(fonts.title, &BLACK))
}

impl<DB: DrawingBackend> Frame<DB> {
    /// Plans a chart on `inner` with the y axis `y` and a legend of `entries`
    /// that fits over the plot.
    pub(super) fn new(
        inner: DrawingArea<DB, Shift>,
        fonts: Fonts,
        y: YAxis,
        entries: &[LegendEntry],
    ) -> DrawResult<Self, DB> {
        let (w, _) = inner.dim_in_pixel();
        let plot_w = w as i32 - y.label_area as i32 - MARGIN_RIGHT as i32;
        let legend = Legend::new(&inner, entries, fonts.legend, plot_w)?;
        Ok(Self { inner, y, legend })
    }

    /// Draws the legend centred over the plot in a strip of height `strip`
    /// and returns the area left for the chart.
    pub(super) fn draw_legend(&self, strip: u32) -> DrawResult<DrawingArea<DB, Shift>, DB> {
        let (legend_area, chart_area) = self.inner.split_vertically(strip);
        let (w, _) = self.inner.dim_in_pixel();
        let left = self.y.label_area as i32;
        let right = w as i32 - MARGIN_RIGHT as i32;
        self.legend.draw(&legend_area, left, right)?;
        Ok(chart_area)
    }

    /// Width of the plot (the chart less its y label area and margin).
    pub(super) fn plot_width(&self) -> u32 {
        let (w, _) = self.inner.dim_in_pixel();
        w.saturating_sub(self.y.label_area + MARGIN_RIGHT)
    }

    /// Height of the plot under a strip of `strip` px and above an x label
    /// area of `x_label_area` px.
    pub(super) fn plot_height(&self, strip: u32, x_label_area: u32) -> u32 {
        let (_, h) = self.inner.dim_in_pixel();
        h.saturating_sub(strip + MARGIN_TOP + x_label_area).max(1)
    }
}

/// Builds a chart with a light grid and labelled axes on `area`. A y
/// description too long for the plot's height is set smaller or shortened.
pub(super) fn build_chart<'a, DB: DrawingBackend>(
    area: &'a DrawingArea<DB, Shift>,
    fonts: Fonts,
    x: &XAxis<'_>,
    y: &YAxis,
    y_desc: &str,
) -> DrawResult<Chart<'a, DB>, DB> {
    let mut chart = ChartBuilder::on(area)
        .margin_top(MARGIN_TOP)
        .margin_right(MARGIN_RIGHT)
        .x_label_area_size(x.label_area)
        .y_label_area_size(y.label_area)
        .build_cartesian_2d(x.axis.clone(), y.axis())?;
    let format_y = |v: &f64| y.format.apply(*v);
    chart
        .configure_mesh()
        .x_desc(x.desc)
        .x_label_formatter(x.format)
        .y_label_formatter(&format_y)
        .label_style(text_style(fonts.label, &BLACK))
        .y_label_offset(centre_nudge(fonts.label))
        .axis_desc_style(text_style(fonts.desc, &BLACK))
        .set_all_tick_mark_size(5)
        .bold_line_style(BLACK.mix(0.15))
        .draw()?;

    // Where plotters would put it: at the left edge, centred on the plot.
    let plot = chart.plotting_area();
    let (_, plot_h) = plot.dim_in_pixel();
    let plot_top = plot.get_base_pixel().1 - area.get_base_pixel().1;
    let (y_desc, font) = fit_text(area, y_desc, fonts.desc, plot_h.saturating_sub(8))?;
    let style = text_style(font, &BLACK)
        .transform(FontTransform::Rotate270)
        .pos(Pos::new(HPos::Center, VPos::Top));
    area.draw(&Text::new(y_desc, (0, plot_top + plot_h as i32 / 2), style))?;
    Ok(chart)
}

/// One captioned chart of lines in a grid of panels.
pub(super) struct Panel {
    pub(super) caption: String,
    pub(super) y_desc: String,
    pub(super) y_range: Range<f64>,
    pub(super) lines: Vec<Line>,
    /// Points drawn last, over the lines: (x, y), radius, colour.
    pub(super) dots: Vec<((f64, f64), i32, RGBColor)>,
    /// Written in the middle of the plot.
    pub(super) note: Option<&'static str>,
    pub(super) legend: Vec<LegendEntry>,
}

impl Panel {
    pub(super) fn new(caption: impl Into<String>, y_desc: impl Into<String>) -> Self {
        Self {
            caption: caption.into(),
            y_desc: y_desc.into(),
            y_range: 0.0..1.0,
            lines: Vec::new(),
            dots: Vec::new(),
            note: None,
            legend: Vec::new(),
        }
    }

    /// Adds a line with its legend entry.
    pub(super) fn line(&mut self, label: impl Into<String>, line: Line) {
        self.legend
            .push(LegendEntry::new(label, line.color, Sample::of(&line)));
        self.lines.push(line);
    }

    /// The finite y values of the lines.
    pub(super) fn values(&self) -> impl Iterator<Item = f64> + '_ {
        self.lines.iter().flat_map(Line::finite_values)
    }
}

/// How a grid of panels is laid out; the panels share their x axis.
pub(super) struct PanelGrid<'a> {
    pub(super) fonts: Fonts,
    /// Space around each panel: top, bottom, left, right (as for
    /// [`DrawingArea::margin`]).
    pub(super) margin: (u32, u32, u32, u32),
    /// Panels per row.
    pub(super) columns: usize,
    pub(super) x: XAxis<'a>,
    /// The same y label area for every panel (so that their plots line
    /// up), or `None` for one as wide as each panel's tick labels need.
    pub(super) y_label_area: Option<u32>,
    /// x values of the orange lines across every plot (where dendrites were
    /// added).
    pub(super) switches: &'a [f64],
}

/// Draws `panels` on `areas` (one each, row by row). Panels in the same row
/// get the same legend strip height, so that their plots line up.
pub(super) fn draw_panels<DB: DrawingBackend>(
    areas: &[DrawingArea<DB, Shift>],
    grid: &PanelGrid<'_>,
    panels: &[Panel],
) -> DrawResult<(), DB> {
    let fonts = grid.fonts;
    let (top, bottom, left, right) = grid.margin;
    let mut frames = Vec::with_capacity(panels.len());
    for (area, panel) in areas.iter().zip(panels) {
        let inner = area
            .margin(top, bottom, left, right)
            .titled(&panel.caption, text_style(fonts.caption, &BLACK))?;
        let mut y = YAxis::new(&inner, fonts, panel.y_range.clone())?;
        if let Some(label_area) = grid.y_label_area {
            y.label_area = label_area;
        }
        frames.push(Frame::new(inner, fonts, y, &panel.legend)?);
    }
    let strips = legend_strips(&frames, grid.columns);

    for ((panel, frame), strip) in panels.iter().zip(&frames).zip(strips) {
        let chart_area = frame.draw_legend(strip)?;
        let mut chart = build_chart(&chart_area, fonts, &grid.x, &frame.y, &panel.y_desc)?;
        draw_switches(&mut chart, grid.switches, &frame.y.range)?;
        for line in &panel.lines {
            line.draw(&mut chart)?;
        }
        for &(at, radius, color) in &panel.dots {
            chart.draw_series([Circle::new(at, radius, color.filled())])?;
        }
        if let Some(note) = panel.note {
            let x_range = &grid.x.axis.range;
            draw_centre_note(&chart, x_range, &frame.y.range, note, fonts.caption)?;
        }
    }
    Ok(())
}

/// Orange vertical lines across the whole plot at `xs`.
fn draw_switches<DB: DrawingBackend>(
    chart: &mut Chart<'_, DB>,
    xs: &[f64],
    y_range: &Range<f64>,
) -> DrawResult<(), DB> {
    let style = SWITCH_COLOR.stroke_width(3);
    chart.draw_series(
        xs.iter()
            .map(|&x| PathElement::new(vec![(x, y_range.start), (x, y_range.end)], style)),
    )?;
    Ok(())
}

/// Writes `text` in the middle of the plot.
fn draw_centre_note<DB: DrawingBackend>(
    chart: &Chart<'_, DB>,
    x_range: &Range<f64>,
    y_range: &Range<f64>,
    text: &str,
    font: u32,
) -> DrawResult<(), DB> {
    let centre = (
        (x_range.start + x_range.end) / 2.0,
        (y_range.start + y_range.end) / 2.0,
    );
    let style = text_style(font, &GREY_800).pos(Pos::new(HPos::Center, VPos::Center));
    let note = Text::new(text.to_string(), (0, centre_nudge(font)), style);
    chart
        .plotting_area()
        .draw(&(EmptyElement::at(centre) + note))
}

/// The legend strip height of each panel: the tallest legend of its row of
/// `columns`, so the charts of a row line up.
pub(super) fn legend_strips<DB: DrawingBackend>(frames: &[Frame<DB>], columns: usize) -> Vec<u32> {
    frames
        .chunks(columns.max(1))
        .flat_map(|row| {
            let strip = row
                .iter()
                .map(|f| f.legend.strip_height())
                .max()
                .unwrap_or(0);
            row.iter().map(move |_| strip)
        })
        .collect()
}
