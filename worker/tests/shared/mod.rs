//! What several engine tests share: a small made-up data set.

use std::path::Path;

/// 90 distinct sentences of three kinds, in the data set's format.
pub fn write_data(dir: &Path) {
    let mut lines = Vec::new();
    for i in 0..30 {
        lines.push(format!(
            "Operating profit rose by {i} percent to EUR {} mn in the quarter .@positive",
            10 + i
        ));
        lines.push(format!(
            "Net sales fell {i} % and the company warned of further losses in {} .@negative",
            2000 + i
        ));
        lines.push(format!(
            "The annual general meeting will be held in Helsinki on May {i} , {} .@neutral",
            1990 + i
        ));
    }
    std::fs::write(dir.join("Sentences_AllAgree.txt"), lines.join("\n")).unwrap();
}
