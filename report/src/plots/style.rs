//! The look shared by every figure: the font, font sizes, line colours, text
//! styles and the faded colour of discarded epochs.

use plotters::coord::CoordTranslate;
use plotters::prelude::*;
use plotters::style::full_palette::ORANGE;

use super::DrawResult;

/// Font family used for every piece of text (the bundled DejaVu Sans).
pub(super) const FONT: &str = "sans-serif";

/// Font sizes of one figure.
#[derive(Clone, Copy)]
pub(super) struct Fonts {
    pub(super) title: u32,
    pub(super) caption: u32,
    pub(super) desc: u32,
    pub(super) label: u32,
    pub(super) legend: u32,
}

/// For the 800 to 1600 px wide figures.
pub(super) const STANDARD_FONTS: Fonts = Fonts {
    title: 30,
    caption: 24,
    desc: 21,
    label: 18,
    legend: 18,
};

/// For the 2800 px wide dendrite figure.
pub(super) const LARGE_FONTS: Fonts = Fonts {
    title: 40,
    caption: 31,
    desc: 27,
    label: 23,
    legend: 23,
};

/// Line colours, one per variant or layer (no orange: that marks switches).
pub(super) const PALETTE: [RGBColor; 8] = [
    RGBColor(31, 119, 180),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
];

/// The vertical lines where dendrites were added.
pub(super) const SWITCH_COLOR: RGBColor = ORANGE;

pub(super) fn text_style(size: u32, color: &RGBColor) -> TextStyle<'static> {
    (FONT, size).into_font().color(color)
}

/// How far (in pixels) to move a vertically centred label down so that it
/// looks centred: plotters' ab_glyph layout puts such text a little high.
pub(super) fn centre_nudge(font_size: u32) -> i32 {
    (f64::from(font_size) * 0.2).round() as i32
}

/// `color` blended most of the way to white.
pub(super) fn fade(color: RGBColor) -> RGBColor {
    let blend = |c: u8| (f64::from(c) + (255.0 - f64::from(c)) * 0.62).round() as u8;
    RGBColor(blend(color.0), blend(color.1), blend(color.2))
}

/// `text` in a font of `size`, or smaller (down to three quarters of it), so
/// that it is at most `max_px` wide; shortened with an ellipsis when even the
/// smallest font is too wide.
pub(super) fn fit_text<DB: DrawingBackend, CT: CoordTranslate>(
    area: &DrawingArea<DB, CT>,
    text: &str,
    size: u32,
    max_px: u32,
) -> DrawResult<(String, u32), DB> {
    let smallest = (size * 3 / 4).max(8);
    let mut font = size;
    loop {
        let width = area.estimate_text_size(text, &text_style(font, &BLACK))?.0;
        if width <= max_px {
            return Ok((text.to_string(), font));
        }
        if font <= smallest {
            break;
        }
        font -= 1;
    }
    let chars: Vec<char> = text.chars().collect();
    for keep in (1..chars.len()).rev() {
        let mut short: String = chars[..keep].iter().collect();
        short.push('…');
        if area
            .estimate_text_size(&short, &text_style(font, &BLACK))?
            .0
            <= max_px
        {
            return Ok((short, font));
        }
    }
    Ok(("…".to_string(), font))
}

/// Class, variant and seed names longer than this are shortened.
const MAX_LABEL_CHARS: usize = 24;

/// `label`, shortened with an ellipsis to at most [`MAX_LABEL_CHARS`]
/// characters.
pub(super) fn shorten(label: &str) -> String {
    if label.chars().count() <= MAX_LABEL_CHARS {
        label.to_string()
    } else {
        let mut short: String = label.chars().take(MAX_LABEL_CHARS - 1).collect();
        short.push('…');
        short
    }
}
