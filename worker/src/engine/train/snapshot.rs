//! The best network so far: copies of every base trainable tensor, the
//! dendrite sets and the tracker state, taken when an epoch beats the best
//! validation score and restored when the tracker switches or stops.

use candle_core::{Result, Tensor, Var};
use common::tracker::TrackerState;

use crate::engine::models::Model;
use crate::engine::nn::dendrite::Dendrites;

/// A saved copy of the trained state at the end of `epoch`.
pub struct Snapshot {
    vars: Vec<Tensor>,
    dendrites: Vec<Option<Dendrites>>,
    pub state: TrackerState,
    pub epoch: usize,
}

impl Snapshot {
    /// Copies `base_vars` and the model's dendrites.
    pub fn take(
        model: &mut Model,
        base_vars: &[Var],
        state: TrackerState,
        epoch: usize,
    ) -> Result<Self> {
        Ok(Snapshot {
            vars: base_vars
                .iter()
                .map(|v| v.as_tensor().copy().map(|t| t.detach()))
                .collect::<Result<_>>()?,
            dendrites: model.dendrite_snapshot()?,
            state,
            epoch,
        })
    }

    /// A snapshot from its parts (a checkpoint read back).
    pub fn from_parts(
        vars: Vec<Tensor>,
        dendrites: Vec<Option<Dendrites>>,
        state: TrackerState,
        epoch: usize,
    ) -> Self {
        Snapshot {
            vars,
            dendrites,
            state,
            epoch,
        }
    }

    /// The saved copies of the base trainable tensors, in their order.
    pub fn vars(&self) -> &[Tensor] {
        &self.vars
    }

    /// The saved dendrites, one entry per linear layer of the model.
    pub fn dendrites(&self) -> &[Option<Dendrites>] {
        &self.dendrites
    }

    /// Puts the saved weights and dendrites back.
    pub fn restore(&self, model: &mut Model, base_vars: &[Var]) -> Result<()> {
        for (v, t) in base_vars.iter().zip(&self.vars) {
            v.set(t)?;
        }
        model.restore_dendrites(&self.dendrites)
    }
}
