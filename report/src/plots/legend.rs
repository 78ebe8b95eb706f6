//! The legend of every chart: entries (a sample and a label) laid out in
//! rows that fit the plot's width, drawn as a boxed block centred over the
//! plot in a strip above it.

use std::ops::Range;

use plotters::coord::Shift;
use plotters::element::DashedPathElement;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use super::line::{draw_marker, Line, Marker};
use super::style::{centre_nudge, text_style};
use super::DrawResult;

/// Width of an entry's sample.
const SAMPLE: i32 = 40;
/// Between an entry's sample and its label.
const GAP: i32 = 8;
/// Between the entries of a row.
const SPACING: i32 = 30;
/// Inside the box, left and right of the rows.
const PAD: i32 = 14;

/// What a legend entry shows left of its label.
#[derive(Clone, Copy)]
pub(super) enum Sample {
    /// A line with the series' marker, if any, in its middle.
    Line(Option<Marker>),
    Dashed,
    /// A dot of this radius.
    Dot(i32),
    /// A vertical line.
    Rule,
    Bar,
    /// Nothing: the entry is a note.
    Nothing,
}

impl Sample {
    /// What a line's legend entry shows.
    pub(super) fn of(line: &Line) -> Sample {
        if line.dashed {
            Sample::Dashed
        } else {
            Sample::Line(line.marker)
        }
    }
}

#[derive(Clone)]
pub(super) struct LegendEntry {
    pub(super) label: String,
    color: RGBColor,
    sample: Sample,
}

impl LegendEntry {
    pub(super) fn new(label: impl Into<String>, color: RGBColor, sample: Sample) -> Self {
        Self {
            label: label.into(),
            color,
            sample,
        }
    }
}

/// Legend entries in rows that fit a width, for a box drawn with [`Self::draw`].
pub(super) struct Legend {
    entries: Vec<LegendEntry>,
    font: u32,
    /// Width of each entry, its sample included.
    widths: Vec<i32>,
    /// The entries of each row.
    rows: Vec<Range<usize>>,
}

impl Legend {
    /// Lays out `entries` in a font of `font` px in rows at most `max_width`
    /// wide (box included).
    pub(super) fn new<DB: DrawingBackend>(
        area: &DrawingArea<DB, Shift>,
        entries: &[LegendEntry],
        font: u32,
        max_width: i32,
    ) -> DrawResult<Self, DB> {
        let style = text_style(font, &BLACK);
        let mut widths = Vec::with_capacity(entries.len());
        for entry in entries {
            let text = area.estimate_text_size(&entry.label, &style)?.0 as i32;
            widths.push(match entry.sample {
                Sample::Nothing => text,
                _ => SAMPLE + GAP + text,
            });
        }
        let room = max_width - 2 * PAD;
        let mut rows = Vec::new();
        let mut start = 0;
        let mut used = 0;
        for (i, &width) in widths.iter().enumerate() {
            if i == start {
                used = width;
            } else if used + SPACING + width > room {
                rows.push(start..i);
                start = i;
                used = width;
            } else {
                used += SPACING + width;
            }
        }
        if start < widths.len() {
            rows.push(start..widths.len());
        }
        Ok(Self {
            entries: entries.to_vec(),
            font,
            widths,
            rows,
        })
    }

    fn row_height(&self) -> i32 {
        self.font as i32 + 16
    }

    /// Height of a strip that holds the legend with some air (0 if empty).
    pub(super) fn strip_height(&self) -> u32 {
        if self.rows.is_empty() {
            0
        } else {
            (self.rows.len() as i32 * self.row_height() + 14) as u32
        }
    }

    fn row_width(&self, row: &Range<usize>) -> i32 {
        self.widths[row.clone()].iter().sum::<i32>() + SPACING * (row.len() as i32 - 1).max(0)
    }

    /// Draws the legend box on `area`, centred between `left` and `right`
    /// and vertically, its rows aligned on the left.
    pub(super) fn draw<DB: DrawingBackend>(
        &self,
        area: &DrawingArea<DB, Shift>,
        left: i32,
        right: i32,
    ) -> DrawResult<(), DB> {
        if self.rows.is_empty() {
            return Ok(());
        }
        let style = text_style(self.font, &BLACK).pos(Pos::new(HPos::Left, VPos::Center));
        let content = self
            .rows
            .iter()
            .map(|row| self.row_width(row))
            .max()
            .unwrap_or(0);
        let box_w = content + 2 * PAD;
        let box_h = self.rows.len() as i32 * self.row_height();
        let (w, h) = area.dim_in_pixel();
        let x0 = ((left + right - box_w) / 2).clamp(0, (w as i32 - box_w).max(0));
        let y0 = ((h as i32 - box_h) / 2).max(0);
        let corners = [(x0, y0), (x0 + box_w, y0 + box_h)];
        area.draw(&Rectangle::new(corners, WHITE.filled()))?;
        area.draw(&Rectangle::new(corners, BLACK.mix(0.55).stroke_width(1)))?;

        for (r, row) in self.rows.iter().enumerate() {
            let cy = y0 + r as i32 * self.row_height() + self.row_height() / 2;
            let mut x = x0 + PAD;
            for (entry, &width) in self.entries[row.clone()]
                .iter()
                .zip(&self.widths[row.clone()])
            {
                let text_x = match entry.sample {
                    Sample::Nothing => x,
                    sample => {
                        self.draw_sample(area, sample, entry.color, x, cy)?;
                        x + SAMPLE + GAP
                    }
                };
                let text_pos = (text_x, cy + centre_nudge(self.font));
                area.draw(&Text::new(entry.label.as_str(), text_pos, style.clone()))?;
                x += width + SPACING;
            }
        }
        Ok(())
    }

    fn draw_sample<DB: DrawingBackend>(
        &self,
        area: &DrawingArea<DB, Shift>,
        sample: Sample,
        color: RGBColor,
        x: i32,
        cy: i32,
    ) -> DrawResult<(), DB> {
        let mid = (x + SAMPLE / 2, cy);
        let line = ShapeStyle::from(&color).stroke_width(3);
        let ends = vec![(x, cy), (x + SAMPLE, cy)];
        let half = self.font as i32 / 2;
        match sample {
            Sample::Line(marker) => {
                area.draw(&PathElement::new(ends, line))?;
                if let Some(marker) = marker {
                    draw_marker(area, mid, marker, color)?;
                }
            }
            Sample::Dashed => area.draw(&DashedPathElement::new(ends, 9, 5, line))?,
            Sample::Dot(radius) => area.draw(&Circle::new(mid, radius, color.filled()))?,
            Sample::Rule => {
                let rule = vec![(mid.0, cy - half - 3), (mid.0, cy + half + 3)];
                area.draw(&PathElement::new(rule, line))?;
            }
            Sample::Bar => {
                let corners = [(x + 10, cy - half), (x + SAMPLE - 10, cy + half)];
                area.draw(&Rectangle::new(corners, color.filled()))?;
            }
            Sample::Nothing => {}
        }
        Ok(())
    }
}
