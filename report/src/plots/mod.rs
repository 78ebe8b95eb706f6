//! PNG plots for a fine-tuning run: training curves (loss on the left,
//! validation accuracy and macro-F1 on the right, per epoch), a confusion
//! matrix heat map with the count written in every cell, a four-panel figure
//! of a dendritic (or baseline) run, and charts that compare the variants
//! (arms) of a sweep across (split, seed) pairs: per-run values with the
//! mean and its 95% confidence interval, the paired differences of
//! contrasts between arms, and validation curves in one panel per pair
//! with each arm's mean validation score and training loss.
//!
//! Everything is drawn with `plotters` on its bitmap backend in memory, using
//! the DejaVu Sans font that is compiled into the binary, and returned as PNG
//! bytes: this module does no IO.
//!
//! Each figure has its own file; they share a small kit: `style` (font,
//! sizes, colours), `axis` (ticks and ranges), `line` (the one line type),
//! `legend` (the one legend) and `frame` (charts and panels).

mod axis;
mod comparison;
mod confusion;
mod curves;
mod differences;
mod frame;
mod legend;
mod line;
mod pai;
mod runs;
mod style;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Once;

use plotters::coord::Shift;
use plotters::prelude::*;

pub use comparison::variant_comparison;
pub use confusion::confusion_matrix;
pub use curves::{training_curves, CurvePoint};
pub use differences::{contrast_effects, Contrast, EffectBar};
pub use pai::{pai_figure, LayerSeries, PaiData, PaiEpoch};
pub use runs::{training_comparison, RunLine};

static FONT_BYTES: &[u8] = include_bytes!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../assets/fonts/DejaVuSans.ttf"
));
static FONT_REGISTRATION: Once = Once::new();
static FONT_REGISTERED: AtomicBool = AtomicBool::new(false);

/// Errors from drawing a plot.
#[derive(Debug, thiserror::Error)]
pub enum PlotError {
    /// There was nothing to draw.
    #[error("nothing to plot: {0}")]
    Empty(&'static str),
    /// The confusion matrix is not square with one row and column per label.
    #[error("confusion matrix shape mismatch: {0}")]
    Shape(String),
    /// The bundled font could not be registered with plotters.
    #[error("the bundled plot font (DejaVu Sans) could not be loaded")]
    Font,
    /// Drawing or encoding the figure failed.
    #[error("failed to draw the {figure} figure: {message}")]
    Draw {
        /// Which figure was being drawn.
        figure: &'static str,
        /// What plotters or the PNG encoder reported.
        message: String,
    },
}

type DrawResult<T, DB> = Result<T, DrawingAreaErrorKind<<DB as DrawingBackend>::ErrorType>>;

/// Rejects an empty list of `names`, and `values` that do not pair one to
/// one with them (`what`: how to name both in the message).
fn check_pairs(
    names: usize,
    values: usize,
    empty: &'static str,
    what: (&str, &str),
) -> Result<(), PlotError> {
    if names == 0 {
        return Err(PlotError::Empty(empty));
    }
    if values != names {
        return Err(PlotError::Shape(format!(
            "{names} {} but {values} {}",
            what.0, what.1
        )));
    }
    Ok(())
}

/// Draws a figure of `size` pixels in memory and encodes it as PNG.
fn render<F>(figure: &'static str, size: (u32, u32), draw: F) -> Result<Vec<u8>, PlotError>
where
    F: for<'b> FnOnce(&DrawingArea<BitMapBackend<'b>, Shift>) -> DrawResult<(), BitMapBackend<'b>>,
{
    ensure_font()?;
    let fail = |message: String| PlotError::Draw { figure, message };
    let mut pixels = vec![0u8; size.0 as usize * size.1 as usize * 3];
    {
        let root = BitMapBackend::with_buffer(&mut pixels, size).into_drawing_area();
        draw(&root)
            .and_then(|()| root.present())
            .map_err(|e| fail(e.to_string()))?;
    }
    let image = image::RgbImage::from_raw(size.0, size.1, pixels)
        .ok_or_else(|| fail("pixel buffer has the wrong size".into()))?;
    let mut png = std::io::Cursor::new(Vec::new());
    image
        .write_to(&mut png, image::ImageOutputFormat::Png)
        .map_err(|e| fail(e.to_string()))?;
    Ok(png.into_inner())
}

/// Registers the bundled font under [`style::FONT`], once per process.
fn ensure_font() -> Result<(), PlotError> {
    FONT_REGISTRATION.call_once(|| {
        let ok = plotters::style::register_font(style::FONT, FontStyle::Normal, FONT_BYTES).is_ok();
        FONT_REGISTERED.store(ok, Ordering::Release);
    });
    if FONT_REGISTERED.load(Ordering::Acquire) {
        Ok(())
    } else {
        Err(PlotError::Font)
    }
}

/// Helpers for the figures' tests.
#[cfg(test)]
mod testing {
    /// Decodes `png` and checks its size in pixels.
    pub(super) fn assert_png(png: &[u8], size: (u32, u32)) {
        let image = image::load_from_memory(png).expect("a PNG");
        assert_eq!((image.width(), image.height()), size);
    }

    pub(super) fn names(names: &[&str]) -> Vec<String> {
        names.iter().map(|n| n.to_string()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn render_returns_png_of_the_size() {
        let png = render("test", (30, 20), |root| root.fill(&WHITE)).unwrap();
        testing::assert_png(&png, (30, 20));
    }

    #[test]
    fn draw_errors_name_the_figure() {
        let err = render("test", (30, 20), |root| {
            root.draw(&Text::new("x", (5, 5), ("no such font", 12).into_font()))
        })
        .unwrap_err();
        assert!(
            matches!(err, PlotError::Draw { figure: "test", .. }),
            "{err}"
        );
        assert!(err.to_string().contains("test figure"), "{err}");
    }
}
