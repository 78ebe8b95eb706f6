//! The one line type of every figure: a polyline over x (usually epochs)
//! with an optional marker at each point, solid or dashed, with points that
//! may be drawn faded. Non-finite values break the line.

use plotters::coord::CoordTranslate;
use plotters::prelude::*;

use super::axis::Chart;
use super::style::fade;
use super::DrawResult;

/// The shape drawn at each point of a line (and in its legend sample).
#[derive(Clone, Copy)]
pub(super) enum Marker {
    Circle,
    Triangle,
    Square,
}

pub(super) fn draw_marker<DB: DrawingBackend, CT: CoordTranslate>(
    area: &DrawingArea<DB, CT>,
    at: CT::From,
    marker: Marker,
    color: RGBColor,
) -> DrawResult<(), DB> {
    let fill = color.filled();
    match marker {
        Marker::Circle => area.draw(&Circle::new(at, 5, fill)),
        Marker::Triangle => area.draw(&TriangleMarker::new(at, 7, fill)),
        Marker::Square => {
            area.draw(&(EmptyElement::at(at) + Rectangle::new([(-5, -5), (5, 5)], fill)))
        }
    }
}

/// A line over epochs (or any x); points flagged `true` are drawn faded, and
/// so is every segment that touches one.
pub(super) struct Line {
    pub(super) color: RGBColor,
    pub(super) marker: Option<Marker>,
    pub(super) dashed: bool,
    /// Stroke width in pixels.
    pub(super) width: u32,
    /// (x, y, faded), in the order they are joined.
    pub(super) points: Vec<(f64, f64, bool)>,
}

impl Line {
    /// A solid line 3 px wide without markers through `points`, none faded.
    pub(super) fn new(color: RGBColor, points: impl IntoIterator<Item = (f64, f64)>) -> Self {
        Self {
            color,
            marker: None,
            dashed: false,
            width: 3,
            points: points.into_iter().map(|(x, y)| (x, y, false)).collect(),
        }
    }

    pub(super) fn finite_values(&self) -> impl Iterator<Item = f64> + '_ {
        self.points
            .iter()
            .map(|&(_, y, _)| y)
            .filter(|y| y.is_finite())
    }

    pub(super) fn draw<DB: DrawingBackend>(&self, chart: &mut Chart<'_, DB>) -> DrawResult<(), DB> {
        let color = |faded: bool| if faded { fade(self.color) } else { self.color };
        for (faded, run) in line_runs(&self.points) {
            let style = ShapeStyle::from(&color(faded)).stroke_width(self.width);
            if self.dashed {
                chart.draw_series(DashedLineSeries::new(run, 12, 7, style))?;
            } else {
                chart.draw_series(LineSeries::new(run, style))?;
            }
        }
        let finite = |i: usize| self.points.get(i).is_some_and(|p| p.1.is_finite());
        for (i, &(x, y, faded)) in self.points.iter().enumerate() {
            if !y.is_finite() {
                continue;
            }
            match self.marker {
                Some(marker) => draw_marker(chart.plotting_area(), (x, y), marker, color(faded))?,
                // A point without a line to either side would not show.
                None if !finite(i + 1) && (i == 0 || !finite(i - 1)) => {
                    chart.draw_series([Circle::new((x, y), 4, color(faded).filled())])?;
                }
                None => {}
            }
        }
        Ok(())
    }
}

/// The polylines of a line: runs of segments between consecutive finite
/// points that are all faded or all not.
fn line_runs(points: &[(f64, f64, bool)]) -> Vec<(bool, Vec<(f64, f64)>)> {
    let mut runs: Vec<(bool, Vec<(f64, f64)>)> = Vec::new();
    let mut joined = false;
    for pair in points.windows(2) {
        let ((x0, y0, faded0), (x1, y1, faded1)) = (pair[0], pair[1]);
        if !(y0.is_finite() && y1.is_finite()) {
            joined = false;
            continue;
        }
        let faded = faded0 || faded1;
        match runs.last_mut() {
            Some((f, run)) if joined && *f == faded => run.push((x1, y1)),
            _ => runs.push((faded, vec![(x0, y0), (x1, y1)])),
        }
        joined = true;
    }
    runs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_runs_split_at_gaps_and_fading() {
        let points = [
            (1.0, 1.0, false),
            (2.0, 2.0, false),
            (3.0, f64::NAN, false),
            (4.0, 4.0, false),
            (5.0, 5.0, true),
            (6.0, 6.0, false),
            (7.0, 7.0, false),
        ];
        let runs = line_runs(&points);
        assert_eq!(
            runs,
            vec![
                (false, vec![(1.0, 1.0), (2.0, 2.0)]),
                (true, vec![(4.0, 4.0), (5.0, 5.0), (6.0, 6.0)]),
                (false, vec![(6.0, 6.0), (7.0, 7.0)]),
            ]
        );
        assert!(line_runs(&points[..1]).is_empty());
    }

    #[test]
    fn line_runs_of_a_faded_epoch() {
        // Epoch 2 and the segments to its neighbours are faded.
        let points = [
            (1.0, 0.6, false),
            (2.0, 0.7, true),
            (3.0, 0.8, false),
            (4.0, 0.9, false),
        ];
        let runs: Vec<(bool, usize)> = line_runs(&points)
            .iter()
            .map(|(faded, run)| (*faded, run.len()))
            .collect();
        assert_eq!(runs, vec![(true, 3), (false, 2)]);
    }
}
