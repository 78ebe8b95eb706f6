//! A run's resumable state at the end of an epoch, as one safetensors
//! file: the tensors `cur.<name>` (every trained base tensor and every
//! dendrite tensor as the next epoch starts with them), `best.<name>` (the
//! best snapshot's, left out while it equals the current state),
//! `adam.m.<name>` and `adam.v.<name>` (AdamW's moments), and in the
//! metadata `key` (the run's configuration hash) and `state` (JSON: epoch,
//! schedule, optimiser step, RNG positions, tracker, best epoch, history).
//! [`encode`] writes it from the training loop's state; [`restore`] puts a
//! decoded [`Checkpoint`] back into a freshly loaded model, so that the
//! run goes on as if it had never stopped.

use std::collections::HashMap;

use candle_core::{Device, Tensor, Var};
use common::summary::EpochRecord;
use common::tracker::TrackerState;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use super::epoch::Optimised;
use super::schedule::LrSchedule;
use super::snapshot::Snapshot;
use super::{LoopState, RunConfig};
use crate::engine::models::Model;
use crate::engine::nn::params::Param;

/// Why a checkpoint cannot be read or does not fit the run.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("not a checkpoint: {0}")]
    Format(String),
    #[error("checkpoint does not fit this run: {0}")]
    Mismatch(String),
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

/// The JSON part of a checkpoint.
#[derive(Serialize, Deserialize)]
struct Saved {
    /// Epochs finished.
    epoch: usize,
    schedule: LrSchedule,
    adam_steps: u64,
    /// AdamW's parameters in its order.
    adam_params: Vec<String>,
    /// ChaCha word positions (u128 as text).
    rng_word_pos: String,
    dendrite_rng_word_pos: String,
    tracker: TrackerState,
    best: Option<SavedBest>,
    history: Vec<EpochRecord>,
    switches: Vec<usize>,
    train_seconds: f64,
}

#[derive(Serialize, Deserialize)]
struct SavedBest {
    epoch: usize,
    tracker: TrackerState,
    /// The snapshot equals the current tensors (no `best.` tensors stored).
    is_current: bool,
}

/// A decoded checkpoint, its tensors on the CPU.
pub struct Checkpoint {
    key: String,
    saved: Saved,
    tensors: HashMap<String, Tensor>,
}

impl Checkpoint {
    /// Reads a checkpoint written by [`encode`].
    pub fn decode(bytes: &[u8]) -> Result<Checkpoint, CheckpointError> {
        let format = |e: String| CheckpointError::Format(e);
        let (_, meta) =
            safetensors::SafeTensors::read_metadata(bytes).map_err(|e| format(e.to_string()))?;
        let meta = meta.metadata().clone().unwrap_or_default();
        let get = |k: &str| {
            meta.get(k)
                .cloned()
                .ok_or_else(|| format(format!("no `{k}` in its metadata")))
        };
        let key = get("key")?;
        let saved: Saved =
            serde_json::from_str(&get("state")?).map_err(|e| format(format!("state: {e}")))?;
        let tensors = candle_core::safetensors::load_buffer(bytes, &Device::Cpu)?;
        Ok(Checkpoint {
            key,
            saved,
            tensors,
        })
    }

    /// The epoch a checkpoint was written after, read from its metadata only.
    pub fn epoch_of(bytes: &[u8]) -> Result<usize, CheckpointError> {
        let (_, meta) = safetensors::SafeTensors::read_metadata(bytes)
            .map_err(|e| CheckpointError::Format(e.to_string()))?;
        let state = meta
            .metadata()
            .as_ref()
            .and_then(|m| m.get("state"))
            .ok_or_else(|| CheckpointError::Format("no `state` in its metadata".into()))?;
        #[derive(Deserialize)]
        struct Epoch {
            epoch: usize,
        }
        serde_json::from_str::<Epoch>(state)
            .map(|e| e.epoch)
            .map_err(|e| CheckpointError::Format(format!("state: {e}")))
    }

    /// The configuration hash of the run that wrote it.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// Epochs finished when it was written.
    pub fn epoch(&self) -> usize {
        self.saved.epoch
    }

    fn tensor(&self, name: &str, device: &Device) -> Result<Tensor, CheckpointError> {
        self.tensors
            .get(name)
            .ok_or_else(|| CheckpointError::Mismatch(format!("no tensor `{name}`")))?
            .to_device(device)
            .map_err(Into::into)
    }
}

/// The training loop's state after `epoch`, as checkpoint bytes.
pub(super) fn encode(
    key: &str,
    epoch: usize,
    model: &mut Model,
    base: &[(String, Var)],
    lp: &LoopState,
    train_seconds: f64,
) -> candle_core::Result<Vec<u8>> {
    let mut tensors: Vec<(String, Tensor)> = Vec::new();
    for (n, v) in base {
        tensors.push((format!("cur.{n}"), v.as_tensor().clone()));
    }
    for (n, p) in model.dendrite_tensors() {
        tensors.push((format!("cur.{n}"), param_tensor(&p)));
    }
    let best_is_current = lp
        .best
        .as_ref()
        .is_some_and(|b| b.epoch == epoch && lp.switches.last() != Some(&epoch));
    if let Some(b) = lp.best.as_ref().filter(|_| !best_is_current) {
        for ((n, _), t) in base.iter().zip(b.vars()) {
            tensors.push((format!("best.{n}"), t.clone()));
        }
        for (n, p) in model.dendrite_tensors_of(b.dendrites()) {
            tensors.push((format!("best.{n}"), param_tensor(&p)));
        }
    }
    let moments = lp.params.opt.moments()?;
    for (n, (m, v)) in lp.params.names.iter().zip(moments) {
        let len = m.len();
        tensors.push((
            format!("adam.m.{n}"),
            Tensor::from_vec(m, len, &Device::Cpu)?,
        ));
        tensors.push((
            format!("adam.v.{n}"),
            Tensor::from_vec(v, len, &Device::Cpu)?,
        ));
    }
    let saved = Saved {
        epoch,
        schedule: lp.schedule.clone(),
        adam_steps: lp.params.opt.steps()?,
        adam_params: lp.params.names.clone(),
        rng_word_pos: lp.rng.get_word_pos().to_string(),
        dendrite_rng_word_pos: lp.dendrite_rng.get_word_pos().to_string(),
        tracker: lp.state.clone(),
        best: lp.best.as_ref().map(|b| SavedBest {
            epoch: b.epoch,
            tracker: b.state.clone(),
            is_current: best_is_current,
        }),
        history: lp.history.clone(),
        switches: lp.switches.clone(),
        train_seconds,
    };
    let json = |e: serde_json::Error| candle_core::Error::Msg(e.to_string());
    let meta = HashMap::from([
        ("key".to_string(), key.to_string()),
        (
            "state".to_string(),
            serde_json::to_string(&saved).map_err(json)?,
        ),
    ]);
    safetensors::serialize(tensors, Some(meta)).map_err(|e| candle_core::Error::Msg(e.to_string()))
}

fn param_tensor(p: &Param) -> Tensor {
    match p {
        Param::Train(v) => v.as_tensor().clone(),
        Param::Frozen(t) => t.clone(),
    }
}

/// Puts `ck` into `model` (freshly loaded, no dendrite set added) and
/// returns the loop state to go on with; the seconds trained before.
pub(super) fn restore(
    ck: &Checkpoint,
    model: &mut Model,
    base: &[(String, Var)],
    cfg: &RunConfig,
    device: &Device,
) -> Result<(LoopState, f64), CheckpointError> {
    let s = &ck.saved;
    // Checked before anything changes: a checkpoint of another model.
    for (n, v) in base {
        let t = ck.tensor(&format!("cur.{n}"), &Device::Cpu)?;
        if t.dims() != v.dims() {
            return Err(CheckpointError::Mismatch(format!(
                "`{n}` is {:?} there, {:?} here",
                t.dims(),
                v.dims()
            )));
        }
    }
    for (n, v) in base {
        let t = ck.tensor(&format!("cur.{n}"), device)?;
        v.set(&t.to_dtype(v.dtype())?)?;
    }
    let current = model.dendrites_from(|n| ck.tensor(&format!("cur.{n}"), device).ok())?;
    model.restore_dendrites(&current)?;
    let mut params = Optimised::new(base, model, cfg)?;
    if params.names != s.adam_params {
        return Err(CheckpointError::Mismatch(
            "its optimiser trains other parameters".into(),
        ));
    }
    let moments = s
        .adam_params
        .iter()
        .map(|n| {
            let m = ck.tensor(&format!("adam.m.{n}"), &Device::Cpu)?;
            let v = ck.tensor(&format!("adam.v.{n}"), &Device::Cpu)?;
            Ok((m.to_vec1::<f32>()?, v.to_vec1::<f32>()?))
        })
        .collect::<Result<Vec<_>, CheckpointError>>()?;
    params.opt.load(s.adam_steps, moments)?;
    let best = match &s.best {
        None => None,
        Some(b) if b.is_current => Some(Snapshot::take(
            model,
            &base.iter().map(|(_, v)| v.clone()).collect::<Vec<_>>(),
            b.tracker.clone(),
            b.epoch,
        )?),
        Some(b) => {
            let vars = base
                .iter()
                .map(|(n, v)| {
                    Ok(ck
                        .tensor(&format!("best.{n}"), device)?
                        .to_dtype(v.dtype())?)
                })
                .collect::<Result<Vec<_>, CheckpointError>>()?;
            let dendrites =
                model.dendrites_from(|n| ck.tensor(&format!("best.{n}"), device).ok())?;
            Some(Snapshot::from_parts(
                vars,
                dendrites,
                b.tracker.clone(),
                b.epoch,
            ))
        }
    };
    let pos = |p: &str| {
        p.parse::<u128>()
            .map_err(|e| CheckpointError::Format(format!("RNG position `{p}`: {e}")))
    };
    let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed);
    rng.set_word_pos(pos(&s.rng_word_pos)?);
    let mut dendrite_rng = ChaCha8Rng::seed_from_u64(super::dendrite_seed(cfg.seed));
    dendrite_rng.set_word_pos(pos(&s.dendrite_rng_word_pos)?);
    Ok((
        LoopState {
            params,
            schedule: s.schedule.clone(),
            rng,
            dendrite_rng,
            state: s.tracker.clone(),
            best,
            history: s.history.clone(),
            switches: s.switches.clone(),
            epoch: s.epoch,
        },
        s.train_seconds,
    ))
}
