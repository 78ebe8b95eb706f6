//! The dendrite figure of a tracked (dendritic or baseline) run: scores, the
//! per-layer dendrite quantity, the learning rate and the time of each epoch,
//! with orange lines where dendrites were added.

use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::full_palette::{
    BLUE_300, BLUE_700, GREEN_700, GREY_500, PURPLE_500, TEAL_700,
};

use super::axis::{data_range, epoch_axis, format_epoch, zero_based_range, XAxis};
use super::frame::{draw_panels, titled, Panel, PanelGrid};
use super::legend::{LegendEntry, Sample};
use super::line::{Line, Marker};
use super::style::{fade, LARGE_FONTS, PALETTE, SWITCH_COLOR};
use super::{render, DrawResult, PlotError};

const SIZE: (u32, u32) = (2800, 1400);
/// Layers drawn in the layer panel; the rest are counted in its legend.
const MAX_LAYERS: usize = 8;
/// Layer names longer than this keep only their end.
const MAX_LAYER_CHARS: usize = 32;

/// One epoch of a tracked (dendritic or baseline) run. `epoch` is 1-based.
#[derive(Debug, Clone, PartialEq)]
pub struct PaiEpoch {
    pub epoch: usize,
    /// Validation score of this epoch.
    pub val: f64,
    /// Running (smoothed) validation score.
    pub val_running: f64,
    /// Training score, if known.
    pub train: Option<f64>,
    /// Test score, if known.
    pub test: Option<f64>,
    pub lr: f64,
    pub train_seconds: f64,
    pub val_seconds: f64,
    /// Epoch whose weights were discarded by a restore (drawn faded).
    pub discarded: bool,
}

/// A per-layer dendrite quantity over epochs (for example mean |T| of a wrapped layer).
#[derive(Debug, Clone, PartialEq)]
pub struct LayerSeries {
    pub layer: String,
    pub points: Vec<(usize, f64)>,
}

/// Everything [`pai_figure`] draws.
pub struct PaiData {
    pub title: String,
    /// Name of the score, e.g. "macro-F1".
    pub score_name: String,
    pub epochs: Vec<PaiEpoch>,
    /// Epochs (1-based) after which a dendrite set was added: an orange vertical line at epoch + 0.5.
    pub switch_epochs: Vec<usize>,
    /// Black dot on the validation curve.
    pub best_epoch: Option<usize>,
    /// Grey dot on the validation curve.
    pub last_improved_epoch: Option<usize>,
    pub layers: Vec<LayerSeries>,
    /// Y-axis label of the top-right panel, e.g. "mean |T| (gate weight) per wrapped layer".
    pub layer_quantity: String,
}

/// 2x2 panel figure, 2800x1400 px:
/// top-left: scores per epoch (validation solid, validation running score faded/dashed-looking lighter colour, train and test if present), black dot at best_epoch, grey dot at last_improved_epoch, orange vertical lines at each switch, discarded epochs drawn faded (lighter colour markers / segments);
/// top-right: one line per LayerSeries (if more than 8 layers, draw 8 and say "+N more" in the legend), y label = layer_quantity; with no layers write a centred note "no dendrites added";
/// bottom-left: learning rate per epoch (log-scale not required; scientific tick labels like 1e-4 are fine), orange switch lines too;
/// bottom-right: seconds per epoch, train and validation as two lines (or stacked bars), orange switch lines too.
/// Every panel has a title, x label "epoch" with integer ticks starting at 1, and a y label.
///
/// Epochs may come in any order; non-finite values are left out of the plot.
pub fn pai_figure(data: &PaiData) -> Result<Vec<u8>, PlotError> {
    if data.epochs.is_empty() {
        return Err(PlotError::Empty(
            "the dendrite figure needs at least one epoch",
        ));
    }
    let mut epochs = data.epochs.clone();
    epochs.sort_by_key(|e| e.epoch);
    render("pai", SIZE, |root| draw_pai(root, data, &epochs))
}

fn draw_pai<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    data: &PaiData,
    epochs: &[PaiEpoch],
) -> DrawResult<(), DB> {
    let fonts = LARGE_FONTS;
    let body = titled(root, &data.title, fonts, (10, 10, 14, 14))?;
    let areas = body.split_evenly((2, 2));

    let switches: Vec<f64> = data.switch_epochs.iter().map(|&e| e as f64 + 0.5).collect();
    let layer_epochs = data
        .layers
        .iter()
        .flat_map(|l| l.points.iter().map(|&(e, _)| e));
    let mut x_axis = epoch_axis(
        epochs
            .iter()
            .map(|e| e.epoch)
            .chain(layer_epochs)
            .chain(data.switch_epochs.iter().copied()),
    );
    if let Some(last_switch) = switches.iter().copied().reduce(f64::max) {
        x_axis.range.end = x_axis.range.end.max(last_switch + 0.3);
    }

    let mut panels = [
        score_panel(data, epochs),
        layer_panel(data),
        lr_panel(epochs),
        time_panel(epochs),
    ];
    if !switches.is_empty() {
        for panel in &mut panels {
            panel.legend.push(LegendEntry::new(
                "dendrites added",
                SWITCH_COLOR,
                Sample::Rule,
            ));
        }
    }
    let grid = PanelGrid {
        fonts,
        margin: (14, 10, 18, 18),
        columns: 2,
        x: XAxis {
            axis: x_axis,
            desc: "epoch",
            format: &format_epoch,
            label_area: fonts.label + fonts.desc + 30,
        },
        y_label_area: None,
        switches: &switches,
    };
    draw_panels(&areas, &grid, &panels)
}

/// Scores per epoch, with the best and last-improved epochs marked.
fn score_panel(data: &PaiData, epochs: &[PaiEpoch]) -> Panel {
    let score = &data.score_name;
    let mut panel = Panel::new(format!("{score} per epoch"), score.clone());
    let line = |color, marker, value: &dyn Fn(&PaiEpoch) -> f64| Line {
        marker,
        points: epochs
            .iter()
            .map(|e| (e.epoch as f64, value(e), e.discarded))
            .collect(),
        ..Line::new(color, [])
    };
    panel.line(
        "validation (running)",
        Line {
            dashed: true,
            ..line(BLUE_300, None, &|e| e.val_running)
        },
    );
    panel.line(
        "validation",
        line(BLUE_700, Some(Marker::Circle), &|e| e.val),
    );
    if epochs.iter().any(|e| e.train.is_some()) {
        panel.line(
            "train",
            line(GREEN_700, Some(Marker::Triangle), &|e| {
                e.train.unwrap_or(f64::NAN)
            }),
        );
    }
    if epochs.iter().any(|e| e.test.is_some()) {
        panel.line(
            "test",
            line(PURPLE_500, Some(Marker::Square), &|e| {
                e.test.unwrap_or(f64::NAN)
            }),
        );
    }
    panel.y_range = data_range(panel.values());

    let val_at = |epoch: Option<usize>| {
        let epoch = epoch?;
        let found = epochs.iter().find(|e| e.epoch == epoch)?;
        found
            .val
            .is_finite()
            .then_some((epoch, (epoch as f64, found.val)))
    };
    // The grey dot is larger, so it rings the black one when they coincide.
    if let Some((epoch, at)) = val_at(data.last_improved_epoch) {
        panel.dots.push((at, 11, GREY_500));
        panel.legend.push(LegendEntry::new(
            format!("last improvement (epoch {epoch})"),
            GREY_500,
            Sample::Dot(9),
        ));
    }
    if let Some((epoch, at)) = val_at(data.best_epoch) {
        panel.dots.push((at, 7, BLACK));
        panel.legend.push(LegendEntry::new(
            format!("best (epoch {epoch})"),
            BLACK,
            Sample::Dot(7),
        ));
    }
    if epochs.iter().any(|e| e.discarded) {
        panel.legend.push(LegendEntry::new(
            "discarded by a restore",
            fade(BLUE_700),
            Sample::Line(Some(Marker::Circle)),
        ));
    }
    panel
}

/// The per-layer dendrite quantity, or a note if there is none.
fn layer_panel(data: &PaiData) -> Panel {
    let mut panel = Panel::new("dendrites per layer", data.layer_quantity.clone());
    let shown = &data.layers[..data.layers.len().min(MAX_LAYERS)];
    let names: Vec<&str> = shown.iter().map(|l| l.layer.as_str()).collect();
    for ((layer, name), color) in shown.iter().zip(layer_labels(&names)).zip(PALETTE) {
        let mut points: Vec<(f64, f64)> =
            layer.points.iter().map(|&(e, v)| (e as f64, v)).collect();
        points.sort_by(|a, b| a.0.total_cmp(&b.0));
        let line = Line {
            marker: Some(Marker::Circle),
            ..Line::new(color, points)
        };
        panel.line(name, line);
    }
    let hidden = data.layers.len() - shown.len();
    if hidden > 0 {
        panel.legend.push(LegendEntry::new(
            format!("+{hidden} more"),
            BLACK,
            Sample::Nothing,
        ));
    }
    if panel.values().next().is_none() {
        panel.lines.clear();
        panel.legend.clear();
        panel.note = Some("no dendrites added");
    } else {
        panel.y_range = data_range(panel.values());
    }
    panel
}

fn lr_panel(epochs: &[PaiEpoch]) -> Panel {
    let mut panel = Panel::new("learning rate", "learning rate");
    let points = epochs.iter().map(|e| (e.epoch as f64, e.lr));
    let line = Line {
        marker: Some(Marker::Circle),
        ..Line::new(TEAL_700, points)
    };
    panel.line("learning rate", line);
    panel.y_range = zero_based_range(panel.values());
    panel
}

fn time_panel(epochs: &[PaiEpoch]) -> Panel {
    let mut panel = Panel::new("time per epoch", "seconds");
    let line = |color, marker, value: fn(&PaiEpoch) -> f64| Line {
        marker: Some(marker),
        ..Line::new(color, epochs.iter().map(|e| (e.epoch as f64, value(e))))
    };
    panel.line(
        "train",
        line(GREEN_700, Marker::Circle, |e| e.train_seconds),
    );
    panel.line(
        "validation",
        line(BLUE_700, Marker::Triangle, |e| e.val_seconds),
    );
    panel.y_range = zero_based_range(panel.values());
    panel
}

/// Layer names without the dot-separated prefix that they all share, and
/// shortened from the front to at most [`MAX_LAYER_CHARS`] characters.
fn layer_labels(names: &[&str]) -> Vec<String> {
    let parts: Vec<Vec<&str>> = names.iter().map(|n| n.split('.').collect()).collect();
    let mut common = 0;
    if let [first, rest @ ..] = parts.as_slice() {
        if !rest.is_empty() {
            let shortest = parts.iter().map(Vec::len).min().unwrap_or(0);
            // Every name keeps at least its last part.
            while common + 1 < shortest && rest.iter().all(|p| p[common] == first[common]) {
                common += 1;
            }
        }
    }
    parts
        .iter()
        .map(|p| {
            let name = p[common..].join(".");
            let chars: Vec<char> = name.chars().collect();
            if chars.len() <= MAX_LAYER_CHARS {
                name
            } else {
                let tail: String = chars[chars.len() - (MAX_LAYER_CHARS - 1)..]
                    .iter()
                    .collect();
                format!("…{tail}")
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plots::testing::assert_png;

    fn pai_epochs(n: usize) -> Vec<PaiEpoch> {
        (1..=n)
            .map(|epoch| {
                let e = epoch as f64;
                PaiEpoch {
                    epoch,
                    val: 0.6 + 0.02 * e.min(10.0),
                    val_running: 0.58 + 0.02 * e.min(10.0),
                    train: Some(0.65 + 0.025 * e.min(10.0)),
                    test: Some(0.59 + 0.02 * e.min(10.0)),
                    lr: 2e-5 / e,
                    train_seconds: 40.0 + e,
                    val_seconds: 5.0,
                    discarded: false,
                }
            })
            .collect()
    }

    fn layer(name: &str, epochs: std::ops::RangeInclusive<usize>) -> LayerSeries {
        LayerSeries {
            layer: name.to_string(),
            points: epochs.map(|e| (e, 0.1 * e as f64)).collect(),
        }
    }

    fn pai_data(epochs: Vec<PaiEpoch>) -> PaiData {
        PaiData {
            title: "dendrites".to_string(),
            score_name: "macro-F1".to_string(),
            epochs,
            switch_epochs: Vec::new(),
            best_epoch: None,
            last_improved_epoch: None,
            layers: Vec::new(),
            layer_quantity: "mean |T| (gate weight) per wrapped layer".to_string(),
        }
    }

    #[test]
    fn pai_figure_renders_png() {
        let mut epochs = pai_epochs(20);
        for e in &mut epochs[5..8] {
            e.discarded = true;
        }
        epochs[3].val = f64::NAN;
        epochs[4].train = None;
        epochs.reverse();
        let mut data = pai_data(epochs);
        data.switch_epochs = vec![8, 14, 20];
        data.best_epoch = Some(17);
        data.last_improved_epoch = Some(19);
        data.layers = (0..11)
            .map(|l| layer(&format!("bert.encoder.layer.{l}.output.dense"), 9..=20))
            .collect();
        assert_png(&pai_figure(&data).unwrap(), (2800, 1400));
    }

    #[test]
    fn pai_figure_degenerate_input() {
        // One epoch, no switches, no layers, no train or test scores.
        let mut epochs = pai_epochs(1);
        epochs[0].train = None;
        epochs[0].test = None;
        let mut data = pai_data(epochs);
        data.best_epoch = Some(1);
        data.last_improved_epoch = Some(1);
        assert_png(&pai_figure(&data).unwrap(), (2800, 1400));

        // Layers without points, a best epoch that was never run, flat
        // values, zero learning rate and times, a switch after the last epoch.
        let mut epochs = pai_epochs(3);
        for e in &mut epochs {
            e.val = 0.5;
            e.val_running = 0.5;
            e.lr = 0.0;
            e.train_seconds = 0.0;
            e.val_seconds = 0.0;
            e.discarded = true;
        }
        let mut data = pai_data(epochs);
        data.switch_epochs = vec![3];
        data.best_epoch = Some(9);
        data.layers = vec![LayerSeries {
            layer: "classifier".to_string(),
            points: Vec::new(),
        }];
        data.layer_quantity = "x".repeat(300);
        assert_png(&pai_figure(&data).unwrap(), (2800, 1400));
    }

    #[test]
    fn pai_figure_rejects_no_epochs() {
        assert!(matches!(
            pai_figure(&pai_data(Vec::new())),
            Err(PlotError::Empty(_))
        ));
    }

    #[test]
    fn pai_panels_follow_the_data() {
        let mut data = pai_data(pai_epochs(4));
        data.epochs[1].discarded = true;
        data.best_epoch = Some(3);
        data.last_improved_epoch = Some(4);
        data.layers = (0..11)
            .map(|l| layer(&format!("encoder.layer.{l}"), 2..=4))
            .collect();
        let labels = |panel: &Panel| -> Vec<String> {
            panel.legend.iter().map(|e| e.label.clone()).collect()
        };

        let score = score_panel(&data, &data.epochs);
        assert_eq!(score.lines.len(), 4);
        assert_eq!(score.dots.len(), 2);
        assert!(labels(&score).contains(&"best (epoch 3)".to_string()));
        assert!(labels(&score).contains(&"discarded by a restore".to_string()));
        // Epoch 2 is drawn faded; the running score is dashed.
        let faded: Vec<bool> = score.lines[1].points.iter().map(|p| p.2).collect();
        assert_eq!(faded, [false, true, false, false]);
        assert!(score.lines[0].dashed && !score.lines[1].dashed);

        let layers = layer_panel(&data);
        assert_eq!(layers.lines.len(), MAX_LAYERS);
        assert_eq!(layers.legend.last().unwrap().label, "+3 more");
        assert_eq!(layers.legend[0].label, "0");
        assert!(layers.note.is_none());

        data.layers.clear();
        let empty = layer_panel(&data);
        assert!(empty.lines.is_empty() && empty.legend.is_empty());
        assert_eq!(empty.note, Some("no dendrites added"));

        for e in &mut data.epochs {
            e.train = None;
            e.test = None;
        }
        data.best_epoch = None;
        let score = score_panel(&data, &data.epochs);
        assert_eq!(score.lines.len(), 2);
        assert_eq!(score.dots.len(), 1);
    }

    #[test]
    fn layer_labels_drop_the_shared_prefix() {
        assert_eq!(
            layer_labels(&["bert.layer.0.dense", "bert.layer.1.dense"]),
            vec!["0.dense", "1.dense"]
        );
        assert_eq!(layer_labels(&["a.b", "a.b"]), vec!["b", "b"]);
        assert_eq!(layer_labels(&["bert.pooler"]), vec!["bert.pooler"]);
        let long = format!("{}.dense", "x".repeat(40));
        let label = &layer_labels(&[long.as_str()])[0];
        assert_eq!(label.chars().count(), MAX_LAYER_CHARS);
        assert!(label.starts_with('…') && label.ends_with(".dense"));
    }
}
