//! What identifies a base model: its weights and tokenizer, by content,
//! plus the few config values that name its shape in messages. A run
//! records it in `trained.safetensors` (metadata `base_model`), so that
//! trained parameters are only ever put back onto the checkpoint they were
//! trained on.
//!
//! The weights' digest covers every tensor of the directory's
//! `*.safetensors` files (the ones [`crate::engine::nn::params::Params`]
//! loads, later files overriding earlier ones by name) in name order: name,
//! dtype, shape and a digest of its bytes. It does not depend on how the
//! tensors are split into files or ordered inside them, nor on the files'
//! own metadata.

use std::collections::{BTreeMap, HashMap};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Why a model directory cannot be fingerprinted.
#[derive(Debug, thiserror::Error)]
pub enum BaseModelError {
    #[error("cannot read {path}: {message}")]
    Read { path: String, message: String },
    #[error("no *.safetensors files in {0}")]
    NoWeights(String),
    #[error("{path}: not a safetensors file: {message}")]
    Format { path: String, message: String },
}

fn read_err(path: &Path, e: impl std::fmt::Display) -> BaseModelError {
    BaseModelError::Read {
        path: path.display().to_string(),
        message: e.to_string(),
    }
}

/// A base model's identity.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BaseModel {
    /// The directory's name, for messages.
    pub name: String,
    /// `model_type` of `config.json`.
    #[serde(default)]
    pub model_type: Option<String>,
    #[serde(default)]
    pub hidden_size: Option<usize>,
    #[serde(default)]
    pub layers: Option<usize>,
    #[serde(default)]
    pub vocab_size: Option<usize>,
    /// Hex SHA-256 of every weight tensor (see the module documentation).
    pub weights_sha256: String,
    /// Hex SHA-256 of `tokenizer.json`.
    pub tokenizer_sha256: String,
}

/// The config values a [`BaseModel`] shows.
#[derive(Deserialize, Default)]
struct Shape {
    model_type: Option<String>,
    hidden_size: Option<usize>,
    num_hidden_layers: Option<usize>,
    vocab_size: Option<usize>,
}

/// Fingerprints already computed in this process, by directory, with the
/// size and modification time of every file read (a worker hashes its
/// model once, not once per job).
type Known = HashMap<PathBuf, (Vec<(PathBuf, u64, Option<SystemTime>)>, BaseModel)>;
static KNOWN: Mutex<Option<Known>> = Mutex::new(None);

impl BaseModel {
    /// Fingerprints the model directory `dir` (`config.json`,
    /// `tokenizer.json`, `*.safetensors`).
    pub fn of_dir(dir: &Path) -> Result<BaseModel, BaseModelError> {
        let weights = weight_files(dir)?;
        let tokenizer = dir.join("tokenizer.json");
        let config = dir.join("config.json");
        let stamps = [config.clone(), tokenizer.clone()]
            .into_iter()
            .chain(weights.iter().cloned())
            .map(|p| {
                let m = std::fs::metadata(&p).map_err(|e| read_err(&p, e))?;
                Ok((p, m.len(), m.modified().ok()))
            })
            .collect::<Result<Vec<_>, BaseModelError>>()?;
        let mut known = KNOWN.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((s, m)) = known.as_ref().and_then(|k| k.get(dir)) {
            if *s == stamps {
                return Ok(m.clone());
            }
        }
        let config_text = std::fs::read_to_string(&config).map_err(|e| read_err(&config, e))?;
        let shape: Shape = serde_json::from_str(&config_text).unwrap_or_default();
        let tokenizer_sha256 = {
            let bytes = std::fs::read(&tokenizer).map_err(|e| read_err(&tokenizer, e))?;
            hex(&Sha256::digest(&bytes))
        };
        let model = BaseModel {
            name: dir_name(dir),
            model_type: shape.model_type,
            hidden_size: shape.hidden_size,
            layers: shape.num_hidden_layers,
            vocab_size: shape.vocab_size,
            weights_sha256: weights_digest(&weights)?,
            tokenizer_sha256,
        };
        known
            .get_or_insert_with(HashMap::new)
            .insert(dir.to_path_buf(), (stamps, model.clone()));
        Ok(model)
    }

    /// What differs between the model a run was trained on (`self`) and
    /// `other`; empty when they are the same model. The name and the
    /// directory do not count: a copy of the same files elsewhere is the
    /// same model.
    pub fn differences(&self, other: &BaseModel) -> Vec<&'static str> {
        let mut d = Vec::new();
        if self.weights_sha256 != other.weights_sha256 {
            d.push("weights");
        }
        if self.tokenizer_sha256 != other.tokenizer_sha256 {
            d.push("tokenizer");
        }
        d
    }

    /// `name (bert, hidden 384, 6 layers, vocab 30522, weights sha256 1a2b3c4d5e6f)`.
    pub fn describe(&self) -> String {
        let mut parts: Vec<String> = Vec::new();
        if let Some(t) = &self.model_type {
            parts.push(t.clone());
        }
        if let Some(h) = self.hidden_size {
            parts.push(format!("hidden {h}"));
        }
        if let Some(l) = self.layers {
            parts.push(format!("{l} layers"));
        }
        if let Some(v) = self.vocab_size {
            parts.push(format!("vocab {v}"));
        }
        parts.push(format!(
            "weights sha256 {}",
            &self.weights_sha256[..self.weights_sha256.len().min(12)]
        ));
        parts.push(format!(
            "tokenizer sha256 {}",
            &self.tokenizer_sha256[..self.tokenizer_sha256.len().min(12)]
        ));
        format!("{} ({})", self.name, parts.join(", "))
    }
}

/// A model directory's name for messages (the parent's for a package's
/// generic `model` folder).
fn dir_name(dir: &Path) -> String {
    let name = |p: &Path| p.file_name().map(|s| s.to_string_lossy().to_string());
    match name(dir) {
        Some(n) if n == "model" => dir.parent().and_then(name).unwrap_or(n),
        Some(n) => n,
        None => dir.display().to_string(),
    }
}

/// The `*.safetensors` files of `dir`, sorted by name.
fn weight_files(dir: &Path) -> Result<Vec<PathBuf>, BaseModelError> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| read_err(dir, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(BaseModelError::NoWeights(dir.display().to_string()));
    }
    Ok(files)
}

/// One tensor's entry in a safetensors header.
#[derive(Deserialize)]
struct Entry {
    dtype: String,
    shape: Vec<u64>,
    data_offsets: (u64, u64),
}

/// The tensors of a safetensors file: name -> entry, and where the data
/// starts.
fn header(
    path: &Path,
    file: &mut std::fs::File,
) -> Result<(BTreeMap<String, Entry>, u64), BaseModelError> {
    let format = |message: String| BaseModelError::Format {
        path: path.display().to_string(),
        message,
    };
    let mut len = [0u8; 8];
    file.read_exact(&mut len).map_err(|e| read_err(path, e))?;
    let n = u64::from_le_bytes(len);
    if n > 100 << 20 {
        return Err(format(format!("header of {n} bytes")));
    }
    let mut text = vec![0u8; n as usize];
    file.read_exact(&mut text).map_err(|e| read_err(path, e))?;
    let mut raw: BTreeMap<String, serde_json::Value> =
        serde_json::from_slice(&text).map_err(|e| format(e.to_string()))?;
    raw.remove("__metadata__");
    let entries = raw
        .into_iter()
        .map(|(k, v)| {
            serde_json::from_value::<Entry>(v)
                .map(|e| (k.clone(), e))
                .map_err(|e| format(format!("tensor {k}: {e}")))
        })
        .collect::<Result<_, _>>()?;
    Ok((entries, 8 + n))
}

/// The digest of every tensor of `files` (later files override earlier
/// ones by name): SHA-256 over, in name order, each tensor's name, dtype,
/// shape and the SHA-256 of its bytes (those are computed in parallel).
fn weights_digest(files: &[PathBuf]) -> Result<String, BaseModelError> {
    use rayon::prelude::*;
    // name -> (file index, entry)
    let mut all: BTreeMap<String, (usize, Entry)> = BTreeMap::new();
    let mut starts = Vec::new();
    for (i, path) in files.iter().enumerate() {
        let mut f = std::fs::File::open(path).map_err(|e| read_err(path, e))?;
        let (entries, start) = header(path, &mut f)?;
        starts.push(start);
        for (name, e) in entries {
            all.insert(name, (i, e));
        }
    }
    let tensors: Vec<(&String, &(usize, Entry))> = all.iter().collect();
    let digests = tensors
        .par_iter()
        .map(|(name, (i, e))| tensor_digest(&files[*i], starts[*i], name, e))
        .collect::<Result<Vec<_>, _>>()?;
    let mut h = Sha256::new();
    for ((name, (_, e)), d) in tensors.iter().zip(digests) {
        h.update(name.as_bytes());
        h.update([0]);
        h.update(e.dtype.as_bytes());
        h.update([0]);
        h.update((e.shape.len() as u64).to_le_bytes());
        for dim in &e.shape {
            h.update(dim.to_le_bytes());
        }
        h.update(d);
    }
    Ok(hex(&h.finalize()))
}

/// SHA-256 of one tensor's bytes (`start`: where the file's data begins).
fn tensor_digest(
    path: &Path,
    start: u64,
    name: &str,
    e: &Entry,
) -> Result<[u8; 32], BaseModelError> {
    use std::io::{Seek, SeekFrom};
    let (from, to) = e.data_offsets;
    if to < from {
        return Err(BaseModelError::Format {
            path: path.display().to_string(),
            message: format!("tensor {name}: offsets {from}..{to}"),
        });
    }
    let mut f = std::fs::File::open(path).map_err(|e| read_err(path, e))?;
    f.seek(SeekFrom::Start(start + from))
        .map_err(|e| read_err(path, e))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; (to - from).min(1 << 20) as usize];
    let mut left = to - from;
    while left > 0 {
        let n = left.min(buf.len() as u64) as usize;
        f.read_exact(&mut buf[..n]).map_err(|e| read_err(path, e))?;
        h.update(&buf[..n]);
        left -= n as u64;
    }
    Ok(h.finalize().into())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Tensor};

    fn write_model(dir: &Path, files: &[(&str, Vec<(&str, Tensor)>)], tokenizer: &str) {
        std::fs::write(
            dir.join("config.json"),
            r#"{"model_type": "bert", "hidden_size": 4, "num_hidden_layers": 2, "vocab_size": 9}"#,
        )
        .unwrap();
        std::fs::write(dir.join("tokenizer.json"), tokenizer).unwrap();
        for (name, tensors) in files {
            let t: Vec<(&str, Tensor)> = tensors.to_vec();
            let bytes = safetensors::serialize(t, None).unwrap();
            std::fs::write(dir.join(name), bytes).unwrap();
        }
    }

    fn t(v: &[f32]) -> Tensor {
        Tensor::new(v, &Device::Cpu).unwrap()
    }

    /// The same tensors give the same digest however they are split into
    /// files; one changed value, a changed tokenizer or a renamed tensor
    /// give another.
    #[test]
    fn digest_follows_content_not_layout() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        write_model(
            a.path(),
            &[(
                "model.safetensors",
                vec![("x", t(&[1.0, 2.0])), ("y", t(&[3.0]))],
            )],
            "{}",
        );
        write_model(
            b.path(),
            &[
                ("model-00001.safetensors", vec![("y", t(&[3.0]))]),
                ("model-00002.safetensors", vec![("x", t(&[1.0, 2.0]))]),
            ],
            "{}",
        );
        let (ma, mb) = (
            BaseModel::of_dir(a.path()).unwrap(),
            BaseModel::of_dir(b.path()).unwrap(),
        );
        assert!(ma.differences(&mb).is_empty(), "{ma:?} {mb:?}");
        assert_eq!(ma.hidden_size, Some(4));
        assert_eq!(ma.layers, Some(2));

        let c = tempfile::tempdir().unwrap();
        write_model(
            c.path(),
            &[(
                "model.safetensors",
                vec![("x", t(&[1.0, 2.5])), ("y", t(&[3.0]))],
            )],
            "{}",
        );
        let mc = BaseModel::of_dir(c.path()).unwrap();
        assert_eq!(ma.differences(&mc), vec!["weights"]);

        let d = tempfile::tempdir().unwrap();
        write_model(
            d.path(),
            &[(
                "model.safetensors",
                vec![("x", t(&[1.0, 2.0])), ("z", t(&[3.0]))],
            )],
            "{\"other\": 1}",
        );
        let md = BaseModel::of_dir(d.path()).unwrap();
        assert_eq!(ma.differences(&md), vec!["weights", "tokenizer"]);
        let text = md.describe();
        assert!(
            text.contains("hidden 4") && text.contains("2 layers"),
            "{text}"
        );
    }

    /// A file that changes in place is hashed again, not served from the
    /// process's cache.
    #[test]
    fn changed_files_are_hashed_again() {
        let a = tempfile::tempdir().unwrap();
        write_model(
            a.path(),
            &[("model.safetensors", vec![("x", t(&[1.0]))])],
            "{}",
        );
        let before = BaseModel::of_dir(a.path()).unwrap();
        write_model(
            a.path(),
            &[(
                "model.safetensors",
                vec![("x", t(&[1.0])), ("w", t(&[2.0]))],
            )],
            "{}",
        );
        let after = BaseModel::of_dir(a.path()).unwrap();
        assert_eq!(before.differences(&after), vec!["weights"]);
    }

    #[test]
    fn missing_weights_name_the_directory() {
        let a = tempfile::tempdir().unwrap();
        std::fs::write(a.path().join("config.json"), "{}").unwrap();
        std::fs::write(a.path().join("tokenizer.json"), "{}").unwrap();
        let e = BaseModel::of_dir(a.path()).unwrap_err().to_string();
        assert!(e.contains(&a.path().display().to_string()), "{e}");
    }
}
