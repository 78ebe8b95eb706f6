//! Sequence classifiers written with differentiable ops: BERT-family
//! encoders and Phi decoders, both loading Hugging Face checkpoints by
//! their original tensor names. Every linear layer is a
//! [`crate::engine::nn::linear::Linear`], so adapters attach by name.

pub mod bert;
pub mod phi;

use candle_core::{DType, Device, Result, Tensor};

use candle_core::Var;
use common::spec::{Arch, DendriteSpec};
use rand_chacha::ChaCha8Rng;

use crate::engine::nn::dendrite::{self, Dendrites};
use crate::engine::nn::linear::Linear;
use crate::engine::nn::matmul::matmul;
use crate::engine::nn::ops;
use crate::engine::nn::params::{Param, Params};
use crate::engine::nn::Pass;

/// Names of the classification head's tensors (their own learning rate).
pub fn head_prefixes(arch: Arch) -> &'static [&'static str] {
    match arch {
        Arch::Bert => bert::HEAD_PREFIXES,
        Arch::Phi => phi::HEAD_PREFIXES,
    }
}

/// The layers LoRA adapts when a spec names none.
pub fn default_lora_targets(arch: Arch) -> Vec<String> {
    let names: &[&str] = match arch {
        Arch::Bert => bert::LORA_TARGETS,
        Arch::Phi => phi::LORA_TARGETS,
    };
    names.iter().map(|n| n.to_string()).collect()
}

/// One padded batch of token ids (right padding).
pub struct Batch {
    /// `[b, s]` u32 token ids.
    pub ids: Tensor,
    /// Real (unpadded) length of each row.
    pub lengths: Vec<usize>,
    /// `[b, s]` 1.0 for real tokens, 0.0 for padding (f32).
    pub mask: Tensor,
}

impl Batch {
    /// Builds a right-padded batch.
    pub fn new(rows: &[Vec<u32>], pad_id: u32, device: &Device) -> Result<Batch> {
        let s = rows.iter().map(|r| r.len()).max().unwrap_or(1).max(1);
        let b = rows.len();
        let mut ids = Vec::with_capacity(b * s);
        let mut mask = Vec::with_capacity(b * s);
        for r in rows {
            ids.extend_from_slice(r);
            ids.extend(std::iter::repeat_n(pad_id, s - r.len()));
            mask.extend(std::iter::repeat_n(1f32, r.len()));
            mask.extend(std::iter::repeat_n(0f32, s - r.len()));
        }
        Ok(Batch {
            ids: Tensor::from_vec(ids, (b, s), device)?,
            lengths: rows.iter().map(|r| r.len()).collect(),
            mask: Tensor::from_vec(mask, (b, s), device)?,
        })
    }

    pub fn size(&self) -> usize {
        self.lengths.len()
    }

    pub fn seq_len(&self) -> usize {
        self.ids.dim(1).unwrap_or(0)
    }

    /// `[b, 1, 1, s]` additive key mask: 0 for real tokens, -1e4 for padding
    /// (finite, so it stays finite in bf16).
    pub fn key_mask(&self, dtype: DType) -> Result<Tensor> {
        let (b, s) = self.mask.dims2()?;
        ((self.mask.clone() - 1.0)? * 1e4)?
            .to_dtype(dtype)?
            .reshape((b, 1, 1, s))
    }
}

/// A loaded classifier.
pub enum Model {
    Bert(bert::Bert),
    Phi(phi::Phi),
}

impl Model {
    /// Class logits `[b, num_labels]` in f32.
    pub fn forward(&self, batch: &Batch, ctx: &Pass) -> Result<Tensor> {
        match self {
            Model::Bert(m) => m.forward(batch, ctx),
            Model::Phi(m) => m.forward(batch, ctx),
        }
    }

    /// The body's output `[b, hidden]`: what the head reads (the `[CLS]`
    /// state for BERT, the last real token's for Phi).
    pub fn body(&self, batch: &Batch, ctx: &Pass) -> Result<Tensor> {
        match self {
            Model::Bert(m) => m.body(batch, ctx),
            Model::Phi(m) => m.body(batch, ctx),
        }
    }

    /// Class logits `[b, num_labels]` in f32 from [`Model::body`]'s output.
    pub fn head(&self, features: &Tensor, ctx: &Pass) -> Result<Tensor> {
        match self {
            Model::Bert(m) => m.head(features, ctx),
            Model::Phi(m) => m.head(features, ctx),
        }
    }

    /// The dtype activations are computed in.
    pub fn dtype(&self) -> DType {
        match self {
            Model::Bert(m) => m.dtype(),
            Model::Phi(m) => m.dtype(),
        }
    }

    /// Every linear layer, for adapter merging and placement.
    pub fn linears_mut(&mut self) -> Vec<&mut Linear> {
        match self {
            Model::Bert(m) => m.linears_mut(),
            Model::Phi(m) => m.linears_mut(),
        }
    }

    /// Folds LoRA adapters into frozen dense weights (inference only).
    pub fn merge_lora(&mut self) -> Result<()> {
        for l in self.linears_mut() {
            l.merge_lora()?;
        }
        Ok(())
    }

    /// Wraps every linear layer matching `spec.targets` (or the
    /// architecture's default) with an empty dendrite set; rebuilds saved
    /// dendrites from `saved` (trained parameters of an earlier run).
    /// Returns the wrapped layer names.
    pub fn attach_dendrites(
        &mut self,
        spec: &DendriteSpec,
        saved: Option<&Params>,
    ) -> candle_core::Result<Vec<String>> {
        let targets = if spec.targets.is_empty() {
            self.default_dendrite_targets()
        } else {
            spec.targets.clone()
        };
        let mut names = Vec::new();
        for l in self.linears_mut() {
            if !targets.iter().any(|t| dendrite::matches(t, &l.name)) {
                continue;
            }
            let d = Dendrites::new(
                spec.kind,
                spec.rank,
                spec.activation,
                l.in_features,
                l.out_features,
                l.bias.is_some(),
            );
            let d = match saved {
                Some(p) => d.from_saved(&l.name, |n| p.get_raw(n))?,
                None => d,
            };
            l.dendrites = Some(d);
            names.push(l.name.clone());
        }
        if names.is_empty() {
            candle_core::bail!(
                "`dendrites.targets` {targets:?} match no linear layer of this model"
            );
        }
        Ok(names)
    }

    /// Default dendrite placement: the classification head plus, for BERT,
    /// the pooler, and for Phi the MLP output of every block (low-rank
    /// there under `kind = "auto"`).
    pub fn default_dendrite_targets(&self) -> Vec<String> {
        match self {
            Model::Bert(_) => vec!["classifier".into(), "pooler.dense".into()],
            Model::Phi(_) => vec!["score".into(), "fc2".into()],
        }
    }

    /// Turns every attached dendrite layer into a plain linear branch (the
    /// branch arm).
    pub fn make_branches(&mut self) {
        for l in self.linears_mut() {
            if let Some(d) = l.dendrites.take() {
                l.dendrites = Some(d.into_branch());
            }
        }
    }

    /// Elements of the dendrite tensors that do not train (the branch arm's
    /// constant gates and cascades).
    pub fn constant_dendrite_params(&mut self) -> usize {
        self.dendrite_tensors()
            .iter()
            .filter_map(|(_, p)| match p {
                Param::Frozen(t) => Some(t.elem_count()),
                Param::Train(_) => None,
            })
            .sum()
    }

    /// Adds one dendrite (or branch) to every wrapped layer.
    pub fn add_dendrite_set(
        &mut self,
        rng: &mut ChaCha8Rng,
        init_scale: f64,
    ) -> candle_core::Result<()> {
        for l in self.linears_mut() {
            let device = match &l.weight {
                crate::engine::nn::linear::Weight::Dense(p) => p.get(DType::F32)?.device().clone(),
                crate::engine::nn::linear::Weight::Quantized(q) => q.device(),
            };
            if let Some(d) = &mut l.dendrites {
                d.add(rng, init_scale, &device)?;
            }
        }
        Ok(())
    }

    /// Every dendrite tensor by name, trainable and frozen.
    pub fn dendrite_tensors(&mut self) -> Vec<(String, Param)> {
        let mut v = Vec::new();
        for l in self.linears_mut() {
            if let Some(d) = &l.dendrites {
                v.extend(d.named(&l.name));
            }
        }
        v
    }

    /// The trainable dendrite tensors (new gate rows, modules, cascades).
    pub fn dendrite_trainables(&mut self) -> Vec<(String, Var)> {
        self.dendrite_tensors()
            .into_iter()
            .filter_map(|(n, p)| match p {
                Param::Train(v) => Some((n, v)),
                Param::Frozen(_) => None,
            })
            .collect()
    }

    /// (layer name, dendrite count, [`Dendrites::magnitude`]) of every wrapped layer.
    pub fn dendrite_summary(&mut self) -> candle_core::Result<Vec<(String, usize, f64)>> {
        let mut v = Vec::new();
        for l in self.linears_mut() {
            if let Some(d) = &l.dendrites {
                v.push((l.name.clone(), d.count(), d.magnitude()?));
            }
        }
        Ok(v)
    }

    /// Deep copies of every layer's dendrites (None where unwrapped).
    pub fn dendrite_snapshot(&mut self) -> candle_core::Result<Vec<Option<Dendrites>>> {
        self.linears_mut()
            .into_iter()
            .map(|l| l.dendrites.as_ref().map(|d| d.snapshot()).transpose())
            .collect()
    }

    /// Puts back dendrites from [`Model::dendrite_snapshot`] (copied again,
    /// so the snapshot can be restored more than once).
    pub fn restore_dendrites(&mut self, snap: &[Option<Dendrites>]) -> candle_core::Result<()> {
        for (l, s) in self.linears_mut().into_iter().zip(snap) {
            l.dendrites = s.as_ref().map(|d| d.snapshot()).transpose()?;
        }
        Ok(())
    }

    /// The tensors of dendrites taken with [`Model::dendrite_snapshot`],
    /// named as in [`Model::dendrite_tensors`].
    pub fn dendrite_tensors_of(&mut self, snap: &[Option<Dendrites>]) -> Vec<(String, Param)> {
        let mut v = Vec::new();
        for (l, s) in self.linears_mut().into_iter().zip(snap) {
            if let Some(d) = s {
                v.extend(d.named(&l.name));
            }
        }
        v
    }

    /// Dendrites rebuilt from tensors named as in
    /// [`Model::dendrite_tensors`] (`get` returns one by name), shaped as
    /// this model's wrapped layers, for [`Model::restore_dendrites`].
    pub fn dendrites_from(
        &mut self,
        mut get: impl FnMut(&str) -> Option<Tensor>,
    ) -> candle_core::Result<Vec<Option<Dendrites>>> {
        self.linears_mut()
            .into_iter()
            .map(|l| {
                l.dendrites
                    .as_ref()
                    .map(|d| d.emptied().from_saved(&l.name, &mut get))
                    .transpose()
            })
            .collect()
    }

    /// The token that pads batches.
    pub fn pad_id(&self) -> u32 {
        match self {
            Model::Bert(m) => m.pad_id,
            Model::Phi(m) => m.pad_id,
        }
    }
}

/// Rows `index[i]` of `[b, s, h]` hidden states at position `pos[i]` -> `[b, h]`.
pub(crate) fn gather_positions(h: &Tensor, pos: &[usize]) -> Result<Tensor> {
    let (b, s, hidden) = h.dims3()?;
    let idx: Vec<u32> = pos
        .iter()
        .enumerate()
        .map(|(i, p)| (i * s + p) as u32)
        .collect();
    let idx = Tensor::from_vec(idx, b, h.device())?;
    h.reshape((b * s, hidden))?.index_select(&idx, 0)
}

/// Embedding lookup that stays differentiable for trainable tables.
pub(crate) fn embed(table: &Tensor, ids: &Tensor) -> Result<Tensor> {
    let (b, s) = ids.dims2()?;
    let flat = ids.flatten_all()?;
    let e = table.index_select(&flat, 0)?;
    e.reshape((b, s, table.dim(1)?))
}

/// Scaled dot-product attention over `[b, heads, s, d]` with an additive mask.
pub(crate) fn attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: &Tensor,
    dropout: f64,
    ctx: &Pass,
) -> Result<Tensor> {
    let d = q.dim(3)?;
    // `k^T` is a transposed view: the product reads it in place.
    let scores = matmul(q, &k.transpose(2, 3)?, None)?;
    let probs = ops::masked_softmax(&scores, mask, 1.0 / (d as f64).sqrt())?;
    let probs = ctx.dropout(&probs, dropout)?;
    matmul(&probs, v, None)
}

/// [`attention`] with the heads merged, `[b, q, heads*d]`: in one pass per
/// batch row where no gradient is built and no dropout applies (CPU).
pub(crate) fn attention_merged(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: &Tensor,
    dropout: f64,
    ctx: &Pass,
) -> Result<Tensor> {
    if !ctx.train || dropout <= 0.0 {
        let scale = 1.0 / (q.dim(3)? as f64).sqrt();
        if let Some(y) = crate::engine::nn::attention::attend(q, k, v, mask, scale)? {
            return Ok(y);
        }
    }
    merge_heads(&attention(q, k, v, mask, dropout, ctx)?)
}

/// `[b, s, heads*d]` -> `[b, heads, s, d]`: a strided view where the
/// product reads one in place (the CPU's BLAS path, rows `heads*d` apart),
/// else a contiguous copy.
pub(crate) fn split_heads(x: &Tensor, heads: usize) -> Result<Tensor> {
    let (b, s, h) = x.dims3()?;
    let view = x.reshape((b, s, heads, h / heads))?.transpose(1, 2)?;
    if crate::engine::nn::matmul::reads_strided(&view) {
        Ok(view)
    } else {
        view.contiguous()
    }
}

/// `[b, heads, s, d]` -> `[b, s, heads*d]`.
pub(crate) fn merge_heads(x: &Tensor) -> Result<Tensor> {
    let (b, heads, s, d) = x.dims4()?;
    x.transpose(1, 2)?.contiguous()?.reshape((b, s, heads * d))
}
