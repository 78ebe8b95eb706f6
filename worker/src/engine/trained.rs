//! `trained.safetensors`: the trained tensors only (adapters, head,
//! dendrites and the base weights that full fine-tuning trained), in f32,
//! with the spec, ids, tracker state and dendrite layout in the metadata,
//! so they reload onto the same architecture.

use std::collections::HashMap;

use candle_core::{DType, Tensor};
use common::spec::JobSpec;
use common::tracker::TrackerState;
use serde::Serialize;

use super::error::JobError;

/// Identifies a run in its artifacts.
pub struct RunIds<'a> {
    pub sweep: &'a str,
    pub job_id: &'a str,
    pub config_hash: &'a str,
}

/// The dendrite layout in the metadata.
#[derive(Serialize)]
struct Layout<'a> {
    layers: Vec<LayerDendrites<'a>>,
    kind: common::spec::DendriteKind,
    rank: usize,
    activation: common::spec::Activation,
}

#[derive(Serialize)]
struct LayerDendrites<'a> {
    layer: &'a str,
    dendrites: usize,
}

fn to_json<T: Serialize>(v: &T) -> Result<String, JobError> {
    serde_json::to_string(v).map_err(|e| JobError::Artifacts(e.to_string()))
}

/// Serialises `trained` (name, tensor) as f32 safetensors with the metadata.
pub fn trained_safetensors(
    trained: &[(String, Tensor)],
    spec: &JobSpec,
    ids: &RunIds,
    tracker: &TrackerState,
    dendrite_layout: &[(String, usize, f64)],
) -> Result<Vec<u8>, JobError> {
    let tensors: Vec<(&str, Tensor)> = trained
        .iter()
        .map(|(n, t)| Ok((n.as_str(), t.to_dtype(DType::F32)?)))
        .collect::<Result<_, candle_core::Error>>()?;
    let layout = Layout {
        layers: dendrite_layout
            .iter()
            .map(|(layer, dendrites, _)| LayerDendrites {
                layer,
                dendrites: *dendrites,
            })
            .collect(),
        kind: spec.dendrites.kind,
        rank: spec.dendrites.rank,
        activation: spec.dendrites.activation,
    };
    let meta = HashMap::from([
        ("spec".to_string(), to_json(spec)?),
        ("tracker".to_string(), to_json(tracker)?),
        ("dendrites".to_string(), to_json(&layout)?),
        ("job_id".to_string(), ids.job_id.to_string()),
        ("sweep".to_string(), ids.sweep.to_string()),
        ("config_hash".to_string(), ids.config_hash.to_string()),
    ]);
    safetensors::serialize(tensors, Some(meta)).map_err(|e| JobError::Artifacts(e.to_string()))
}
