//! `trained.safetensors`: the trained tensors only (adapters, head,
//! dendrites and the base weights that full fine-tuning trained), in f32,
//! with the spec, ids, tracker state, dendrite layout and the base model's
//! identity ([`BaseModel`]) in the metadata, so they reload onto the same
//! checkpoint; [`read_trained`] reads that metadata back.

use std::collections::{BTreeMap, HashMap};
use std::io::Read;
use std::path::Path;

use candle_core::{DType, Tensor};
use common::spec::JobSpec;
use common::tracker::TrackerState;
use serde::{Deserialize, Serialize};

use super::base_model::BaseModel;
use super::error::JobError;

/// Identifies a run in its artifacts.
pub struct RunIds<'a> {
    pub sweep: &'a str,
    pub job_id: &'a str,
    pub config_hash: &'a str,
}

/// The dendrite layout in the metadata.
#[derive(Serialize, Deserialize)]
struct Layout {
    layers: Vec<LayerDendrites>,
    kind: common::spec::DendriteKind,
    rank: usize,
    activation: common::spec::Activation,
}

#[derive(Serialize, Deserialize)]
struct LayerDendrites {
    layer: String,
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
    base_model: &BaseModel,
) -> Result<Vec<u8>, JobError> {
    let tensors: Vec<(&str, Tensor)> = trained
        .iter()
        .map(|(n, t)| Ok((n.as_str(), t.to_dtype(DType::F32)?)))
        .collect::<Result<_, candle_core::Error>>()?;
    let layout = Layout {
        layers: dendrite_layout
            .iter()
            .map(|(layer, dendrites, _)| LayerDendrites {
                layer: layer.clone(),
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
        ("base_model".to_string(), to_json(base_model)?),
        ("job_id".to_string(), ids.job_id.to_string()),
        ("sweep".to_string(), ids.sweep.to_string()),
        ("config_hash".to_string(), ids.config_hash.to_string()),
    ]);
    safetensors::serialize(tensors, Some(meta)).map_err(|e| JobError::Artifacts(e.to_string()))
}

/// Why a `trained.safetensors` cannot be read back.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {message}")]
pub struct TrainedError {
    pub path: String,
    pub message: String,
}

/// What a `trained.safetensors` says about its run.
#[derive(Debug, Clone)]
pub struct TrainedMeta {
    pub spec: JobSpec,
    pub job_id: Option<String>,
    pub sweep: Option<String>,
    /// Dendrites per wrapped layer when the run was saved.
    pub dendrites: Vec<(String, usize)>,
    /// The base model the run was trained on (`None` for runs saved before
    /// it was recorded).
    pub base_model: Option<BaseModel>,
    /// Every stored tensor's shape, by name.
    pub tensors: BTreeMap<String, Vec<usize>>,
}

/// Reads the metadata and tensor shapes of a `trained.safetensors` (its
/// header only; the tensors are read when the model is built).
pub fn read_trained(path: &Path) -> Result<TrainedMeta, TrainedError> {
    let err = |message: String| TrainedError {
        path: path.display().to_string(),
        message,
    };
    let mut f = std::fs::File::open(path).map_err(|e| err(format!("cannot open: {e}")))?;
    let size = f.metadata().map(|m| m.len()).unwrap_or(0);
    let mut len = [0u8; 8];
    f.read_exact(&mut len)
        .map_err(|_| err("not a safetensors file (shorter than its header)".into()))?;
    let n = u64::from_le_bytes(len);
    if n.saturating_add(8) > size || n > 100 << 20 {
        return Err(err(format!(
            "not a safetensors file (a header of {n} bytes in a file of {size})"
        )));
    }
    let mut text = vec![0u8; n as usize];
    f.read_exact(&mut text)
        .map_err(|e| err(format!("cannot read the header: {e}")))?;
    parse_header(&text).map_err(err)
}

#[derive(Deserialize)]
struct Entry {
    shape: Vec<usize>,
}

/// The header's JSON: tensors and `__metadata__`.
fn parse_header(text: &[u8]) -> Result<TrainedMeta, String> {
    let mut raw: BTreeMap<String, serde_json::Value> = serde_json::from_slice(text)
        .map_err(|e| format!("not a safetensors file (header: {e})"))?;
    let meta: HashMap<String, String> = match raw.remove("__metadata__") {
        Some(m) => serde_json::from_value(m).map_err(|e| format!("metadata: {e}"))?,
        None => HashMap::new(),
    };
    let spec_text = meta.get("spec").ok_or_else(|| {
        "no `spec` in the metadata: not the trained parameters of a run".to_string()
    })?;
    let spec: JobSpec =
        serde_json::from_str(spec_text).map_err(|e| format!("the recorded spec: {e}"))?;
    let dendrites = match meta.get("dendrites") {
        Some(t) => serde_json::from_str::<Layout>(t)
            .map_err(|e| format!("the recorded dendrite layout: {e}"))?
            .layers
            .into_iter()
            .map(|l| (l.layer, l.dendrites))
            .collect(),
        None => Vec::new(),
    };
    let base_model = meta
        .get("base_model")
        .map(|t| serde_json::from_str::<BaseModel>(t))
        .transpose()
        .map_err(|e| format!("the recorded base model: {e}"))?;
    let tensors = raw
        .into_iter()
        .map(|(k, v)| {
            serde_json::from_value::<Entry>(v)
                .map(|e| (k.clone(), e.shape))
                .map_err(|e| format!("tensor {k}: {e}"))
        })
        .collect::<Result<_, _>>()?;
    Ok(TrainedMeta {
        spec,
        job_id: meta.get("job_id").cloned(),
        sweep: meta.get("sweep").cloned(),
        dendrites,
        base_model,
        tensors,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn spec() -> JobSpec {
        serde_json::from_str(r#"{"model": {"arch": "bert", "path": "/m"}, "data": {"path": "/d"}}"#)
            .unwrap()
    }

    fn base() -> BaseModel {
        BaseModel {
            name: "m".into(),
            model_type: Some("bert".into()),
            hidden_size: Some(4),
            layers: Some(1),
            vocab_size: Some(9),
            weights_sha256: "ab".repeat(32),
            tokenizer_sha256: "cd".repeat(32),
        }
    }

    /// What is written is read back: spec, ids, layout, base model, shapes.
    #[test]
    fn metadata_round_trip() {
        let t = Tensor::zeros((3, 4), DType::F32, &Device::Cpu).unwrap();
        let bytes = trained_safetensors(
            &[("classifier.weight".into(), t)],
            &spec(),
            &RunIds {
                sweep: "s",
                job_id: "j",
                config_hash: "h",
            },
            &TrackerState::default(),
            &[("classifier".into(), 2, 0.5)],
            &base(),
        )
        .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("trained.safetensors");
        std::fs::write(&path, bytes).unwrap();
        let m = read_trained(&path).unwrap();
        assert_eq!(m.spec, spec());
        assert_eq!(m.job_id.as_deref(), Some("j"));
        assert_eq!(m.sweep.as_deref(), Some("s"));
        assert_eq!(m.dendrites, vec![("classifier".to_string(), 2)]);
        assert_eq!(m.base_model, Some(base()));
        assert_eq!(m.tensors["classifier.weight"], vec![3, 4]);
    }

    /// Runs saved before the base model was recorded still read; files
    /// that are not a run's parameters say why, naming the file.
    #[test]
    fn older_and_foreign_files() {
        let spec_json = serde_json::to_string(&spec()).unwrap();
        let t = Tensor::zeros(2, DType::F32, &Device::Cpu).unwrap();
        let old = safetensors::serialize(
            vec![("classifier.bias", t.clone())],
            Some(HashMap::from([("spec".to_string(), spec_json)])),
        )
        .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("trained.safetensors");
        std::fs::write(&path, old).unwrap();
        let m = read_trained(&path).unwrap();
        assert!(m.base_model.is_none() && m.dendrites.is_empty());

        let plain = safetensors::serialize(vec![("x", t)], None).unwrap();
        std::fs::write(&path, plain).unwrap();
        let e = read_trained(&path).unwrap_err().to_string();
        assert!(
            e.contains("trained.safetensors") && e.contains("spec"),
            "{e}"
        );

        std::fs::write(&path, b"hello").unwrap();
        let e = read_trained(&path).unwrap_err().to_string();
        assert!(e.contains("not a safetensors file"), "{e}");
    }
}
