//! Everything a person reads about a run or a sweep, rendered in memory
//! from the typed records of [`common::summary`]: a run's files
//! ([`run`]: `Results.csv`, `metrics.json`, `spec.json`, `history.csv`, the
//! `PAI/` tables and the PNG figures), the `Results.csv` row ([`results`]),
//! the statistics that compare variants ([`compare`]) and the sweep-level
//! report ([`sweep`]). Figures come from [`plots`] as PNG bytes. Nothing
//! here does IO: callers decide where the bytes go.

pub mod compare;
pub mod plots;
pub mod results;
pub mod run;
pub mod stats;
pub mod sweep;

/// Files rendered in memory: (name relative to their folder, bytes).
pub type Files = Vec<(String, Vec<u8>)>;

/// Why a report could not be rendered or read.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error(transparent)]
    Plot(#[from] plots::PlotError),
    #[error("{file}: {message}")]
    Read { file: String, message: String },
    #[error("cannot encode {what}: {message}")]
    Encode { what: &'static str, message: String },
}
