//! Training curves: loss (train and validation) on the left, validation
//! accuracy and macro-F1 on the right, per epoch.

use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::full_palette::{BLUE_700, GREEN_700, ORANGE_800, PURPLE_500};

use super::axis::{data_range, epoch_axis, format_epoch, score_range, XAxis};
use super::frame::{draw_panels, titled, Panel, PanelGrid};
use super::line::{Line, Marker};
use super::style::STANDARD_FONTS;
use super::{render, DrawResult, PlotError};

const SIZE: (u32, u32) = (1600, 700);
const X_LABEL_AREA: u32 = 62;
/// The same for both panels, so that their plots line up.
const Y_LABEL_AREA: u32 = 92;

/// One epoch of a training run (epochs are numbered from 1).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CurvePoint {
    pub epoch: usize,
    pub train_loss: f64,
    pub val_loss: f64,
    pub val_accuracy: f64,
    pub val_macro_f1: f64,
}

/// Training curves: left panel loss (train and validation) per epoch, right
/// panel validation accuracy and macro-F1 per epoch. 1600x700 px.
///
/// Points may come in any order; non-finite values are left out of the plot.
pub fn training_curves(title: &str, points: &[CurvePoint]) -> Result<Vec<u8>, PlotError> {
    if points.is_empty() {
        return Err(PlotError::Empty("training curves need at least one epoch"));
    }
    let mut points = points.to_vec();
    points.sort_by_key(|p| p.epoch);
    render("curves", SIZE, |root| draw_curves(root, title, &points))
}

fn draw_curves<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    title: &str,
    points: &[CurvePoint],
) -> DrawResult<(), DB> {
    let fonts = STANDARD_FONTS;
    let body = titled(root, title, fonts, (8, 8, 8, 8))?;
    let areas = body.split_evenly((1, 2));
    let panels = curve_panels(points);
    let grid = PanelGrid {
        fonts,
        margin: (4, 6, 12, 12),
        columns: 2,
        x: XAxis {
            axis: epoch_axis(points.iter().map(|p| p.epoch)),
            desc: "epoch",
            format: &format_epoch,
            label_area: X_LABEL_AREA,
        },
        y_label_area: Some(Y_LABEL_AREA),
        switches: &[],
    };
    draw_panels(&areas, &grid, &panels)
}

/// The loss panel and the validation metrics panel.
fn curve_panels(points: &[CurvePoint]) -> [Panel; 2] {
    let line = |color, marker, value: fn(&CurvePoint) -> f64| Line {
        marker: Some(marker),
        ..Line::new(color, points.iter().map(|p| (p.epoch as f64, value(p))))
    };
    let mut loss = Panel::new("loss", "loss");
    loss.line(
        "train loss",
        line(BLUE_700, Marker::Circle, |p| p.train_loss),
    );
    loss.line(
        "validation loss",
        line(ORANGE_800, Marker::Triangle, |p| p.val_loss),
    );
    loss.y_range = data_range(loss.values());

    let mut scores = Panel::new("validation metrics", "score");
    scores.line(
        "accuracy",
        line(GREEN_700, Marker::Circle, |p| p.val_accuracy),
    );
    scores.line(
        "macro-F1",
        line(PURPLE_500, Marker::Triangle, |p| p.val_macro_f1),
    );
    scores.y_range = score_range(scores.values());
    [loss, scores]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plots::testing::assert_png;

    fn curve(epochs: usize) -> Vec<CurvePoint> {
        (1..=epochs)
            .map(|epoch| {
                let e = epoch as f64;
                CurvePoint {
                    epoch,
                    train_loss: 1.1 / e,
                    val_loss: 0.9 / e + 0.02 * e,
                    val_accuracy: 0.6 + 0.05 * e.min(6.0),
                    val_macro_f1: 0.55 + 0.05 * e.min(6.0),
                }
            })
            .collect()
    }

    #[test]
    fn training_curves_renders_png() {
        assert_png(&training_curves("run", &curve(6)).unwrap(), (1600, 700));
    }

    #[test]
    fn training_curves_single_epoch() {
        assert_png(
            &training_curves("one epoch", &curve(1)).unwrap(),
            (1600, 700),
        );
    }

    #[test]
    fn training_curves_tolerate_odd_values() {
        let mut points = curve(40);
        points[3].val_loss = f64::NAN;
        points[7].train_loss = f64::INFINITY;
        points.reverse();
        assert_png(&training_curves("odd", &points).unwrap(), (1600, 700));

        let flat = vec![
            CurvePoint {
                epoch: 1,
                train_loss: f64::NAN,
                val_loss: f64::NAN,
                val_accuracy: 1.0,
                val_macro_f1: 1.0,
            };
            2
        ];
        assert_png(&training_curves("flat", &flat).unwrap(), (1600, 700));
    }

    #[test]
    fn training_curves_reject_no_epochs() {
        assert!(matches!(
            training_curves("t", &[]),
            Err(PlotError::Empty(_))
        ));
    }

    #[test]
    fn curve_panels_follow_the_points() {
        let mut points = curve(3);
        points[1].val_loss = f64::NAN;
        let [loss, scores] = curve_panels(&points);
        let labels: Vec<&str> = loss.legend.iter().map(|e| e.label.as_str()).collect();
        assert_eq!(labels, ["train loss", "validation loss"]);
        assert_eq!(loss.values().count(), 5);
        assert!(loss.y_range.start < 0.36 && loss.y_range.end > 1.1);
        assert_eq!(scores.lines.len(), 2);
        assert!(scores.y_range.end > 1.0);
    }
}
