//! Why a job failed, and whether retrying it could help.

use super::train::TrainError;

/// Why a run failed. Permanent failures (bad spec, missing files) fail
/// the same way on any retry.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    #[error("{0}")]
    Spec(String),
    #[error(transparent)]
    Data(#[from] super::data::DataError),
    #[error(transparent)]
    Tokenize(#[from] super::tokenize::TokenizeError),
    #[error(transparent)]
    Params(#[from] super::nn::params::ParamError),
    #[error("base model: {0}")]
    BaseModel(#[from] super::base_model::BaseModelError),
    #[error("model config {path}: {message}")]
    Config { path: String, message: String },
    #[error("training failed: {0}")]
    Candle(#[from] candle_core::Error),
    #[error("training failed: {0}")]
    Diverged(String),
    #[error("cannot write artifacts: {0}")]
    Artifacts(String),
    #[error("stopped on request")]
    Stopped,
    /// A checkpoint of this configuration that does not fit its model.
    #[error("cannot resume: {0}")]
    Resume(String),
    /// Anything else that may pass on a retry (a store out of reach, a
    /// training thread that panicked).
    #[error("{0}")]
    Transient(String),
}

impl JobError {
    /// Whether retrying the same spec cannot help.
    pub fn is_permanent(&self) -> bool {
        !matches!(
            self,
            JobError::Candle(_)
                | JobError::Diverged(_)
                | JobError::Artifacts(_)
                | JobError::Stopped
                | JobError::Resume(_)
                | JobError::Transient(_)
        )
    }
}

impl From<TrainError> for JobError {
    fn from(e: TrainError) -> Self {
        match e {
            TrainError::Stopped => JobError::Stopped,
            TrainError::Candle(e) => JobError::Candle(e),
            TrainError::Checkpoint(e) => JobError::Resume(e.to_string()),
            e @ TrainError::NonFinite { .. } => JobError::Diverged(e.to_string()),
        }
    }
}

impl From<report::ReportError> for JobError {
    fn from(e: report::ReportError) -> Self {
        JobError::Artifacts(e.to_string())
    }
}
