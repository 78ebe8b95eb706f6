//! BERT-family encoders (BERT-base, MiniLM, FinBERT) for sequence
//! classification: post-LN blocks, erf-GELU, `[CLS]` pooling through the
//! pooler when the checkpoint has one, then a linear head named
//! `classifier`. Reads checkpoints with or without the `bert.` prefix and
//! with `gamma`/`beta` or `weight`/`bias` layer-norm names.

use candle_core::{Result, Tensor};
use serde::Deserialize;

use super::{attention_merged, embed, gather_positions, split_heads, Batch};
use crate::engine::nn::linear::{Linear, LoraConfig};
use crate::engine::nn::params::{self, Param, Params};
use crate::engine::nn::{ops, rows, Pass};

/// The classification head's tensors (`classifier.weight`, `.bias`).
pub const HEAD_PREFIXES: &[&str] = &["classifier."];

/// LoRA's default targets: the attention's query and value projections.
pub const LORA_TARGETS: &[&str] = &["query", "value"];

/// The fields of a Hugging Face `config.json` that the model uses.
#[derive(Debug, Clone, Deserialize)]
pub struct BertConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub intermediate_size: usize,
    pub max_position_embeddings: usize,
    #[serde(default = "default_type_vocab")]
    pub type_vocab_size: usize,
    #[serde(default = "default_eps")]
    pub layer_norm_eps: f64,
    #[serde(default = "default_dropout")]
    pub hidden_dropout_prob: f64,
    #[serde(default = "default_dropout")]
    pub attention_probs_dropout_prob: f64,
    #[serde(default)]
    pub pad_token_id: Option<u32>,
    #[serde(default = "default_act")]
    pub hidden_act: String,
}

fn default_type_vocab() -> usize {
    2
}
fn default_eps() -> f64 {
    1e-12
}
fn default_dropout() -> f64 {
    0.1
}
fn default_act() -> String {
    "gelu".into()
}

struct LayerNorm {
    w: Param,
    b: Param,
    eps: f64,
}

impl LayerNorm {
    fn load(p: &mut Params, prefix: &str, n: usize, eps: f64) -> params::Result<LayerNorm> {
        let w = p.resolve(&[format!("{prefix}.weight"), format!("{prefix}.gamma")])?;
        let b = p.resolve(&[format!("{prefix}.bias"), format!("{prefix}.beta")])?;
        Ok(LayerNorm {
            w: p.base(&w, &[n])?,
            b: p.base(&b, &[n])?,
            eps,
        })
    }

    /// `layer_norm(a + residual)`: in `a`'s buffer in one pass under
    /// inference on the CPU.
    fn forward_residual(&self, a: Tensor, residual: &Tensor, ctx: &Pass) -> Result<Tensor> {
        let dt = a.dtype();
        let (w, b) = (ctx.param(&self.w, dt)?, ctx.param(&self.b, dt)?);
        match rows::add_layer_norm_in_place(a, residual, &w, &b, self.eps)? {
            Ok(y) => Ok(y),
            Err(a) => ops::layer_norm(&(a + residual)?, &w, &b, self.eps),
        }
    }

    fn forward(&self, x: &Tensor, ctx: &Pass) -> Result<Tensor> {
        let dt = x.dtype();
        ops::layer_norm(
            x,
            &ctx.param(&self.w, dt)?,
            &ctx.param(&self.b, dt)?,
            self.eps,
        )
    }
}

struct Layer {
    query: Linear,
    key: Linear,
    value: Linear,
    attn_out: Linear,
    attn_ln: LayerNorm,
    inter: Linear,
    out: Linear,
    out_ln: LayerNorm,
}

/// A BERT encoder with its classification head.
pub struct Bert {
    cfg: BertConfig,
    word: Param,
    position: Param,
    token_type: Param,
    emb_ln: LayerNorm,
    layers: Vec<Layer>,
    pooler: Option<Linear>,
    classifier: Linear,
    dropout: f64,
    /// The compute dtype of activations (the store's, whatever trains).
    dtype: candle_core::DType,
    pub pad_id: u32,
}

impl Bert {
    /// Builds the model from `p`; `dropout` overrides the config's.
    pub fn load(
        p: &mut Params,
        cfg: BertConfig,
        num_labels: usize,
        lora: Option<&LoraConfig>,
        dropout: Option<f64>,
    ) -> params::Result<Bert> {
        if cfg.hidden_act != "gelu" {
            return Err(params::ParamError::Candle(candle_core::Error::Msg(
                format!(
                    "unsupported hidden_act {:?} (this model implements \"gelu\")",
                    cfg.hidden_act
                ),
            )));
        }
        let pre = if p.contains("bert.embeddings.word_embeddings.weight") {
            "bert."
        } else {
            ""
        };
        let h = cfg.hidden_size;
        let eps = cfg.layer_norm_eps;
        let word = p.base(
            &format!("{pre}embeddings.word_embeddings.weight"),
            &[cfg.vocab_size, h],
        )?;
        let position = p.base(
            &format!("{pre}embeddings.position_embeddings.weight"),
            &[cfg.max_position_embeddings, h],
        )?;
        let token_type = p.base(
            &format!("{pre}embeddings.token_type_embeddings.weight"),
            &[cfg.type_vocab_size, h],
        )?;
        let emb_ln = LayerNorm::load(p, &format!("{pre}embeddings.LayerNorm"), h, eps)?;
        let mut layers = Vec::with_capacity(cfg.num_hidden_layers);
        for i in 0..cfg.num_hidden_layers {
            let l = format!("{pre}encoder.layer.{i}");
            let i_s = cfg.intermediate_size;
            layers.push(Layer {
                query: Linear::load(p, &format!("{l}.attention.self.query"), h, h, true, lora)?,
                key: Linear::load(p, &format!("{l}.attention.self.key"), h, h, true, lora)?,
                value: Linear::load(p, &format!("{l}.attention.self.value"), h, h, true, lora)?,
                attn_out: Linear::load(
                    p,
                    &format!("{l}.attention.output.dense"),
                    h,
                    h,
                    true,
                    lora,
                )?,
                attn_ln: LayerNorm::load(p, &format!("{l}.attention.output.LayerNorm"), h, eps)?,
                inter: Linear::load(p, &format!("{l}.intermediate.dense"), h, i_s, true, lora)?,
                out: Linear::load(p, &format!("{l}.output.dense"), i_s, h, true, lora)?,
                out_ln: LayerNorm::load(p, &format!("{l}.output.LayerNorm"), h, eps)?,
            });
        }
        let pooler = if p.contains(&format!("{pre}pooler.dense.weight")) {
            Some(Linear::load(
                p,
                &format!("{pre}pooler.dense"),
                h,
                h,
                true,
                lora,
            )?)
        } else {
            None
        };
        let classifier = Linear::new_head(p, "classifier", h, num_labels, true)?;
        Ok(Bert {
            dropout: dropout.unwrap_or(cfg.hidden_dropout_prob),
            dtype: p.dtype,
            pad_id: cfg.pad_token_id.unwrap_or(0),
            cfg,
            word,
            position,
            token_type,
            emb_ln,
            layers,
            pooler,
            classifier,
        })
    }

    /// Class logits `[b, num_labels]` in f32.
    pub fn forward(&self, batch: &Batch, ctx: &Pass) -> Result<Tensor> {
        self.head(&self.body(batch, ctx)?, ctx)
    }

    /// The encoder's `[CLS]` hidden state `[b, hidden]`: the head's input.
    pub fn body(&self, batch: &Batch, ctx: &Pass) -> Result<Tensor> {
        let dt = self.dtype;
        let (b, s) = batch.ids.dims2()?;
        if s > self.cfg.max_position_embeddings {
            candle_core::bail!(
                "sequence of {s} tokens is longer than max_position_embeddings {}",
                self.cfg.max_position_embeddings
            );
        }
        let h = self.cfg.hidden_size;
        let words = embed(&ctx.param(&self.word, dt)?, &batch.ids)?;
        let pos = ctx.param(&self.position, dt)?.narrow(0, 0, s)?;
        let tt = ctx.param(&self.token_type, dt)?.narrow(0, 0, 1)?;
        let x = ops::bias_add(
            &ops::bias_add(&words, &pos.unsqueeze(0)?)?,
            &tt.reshape((1, 1, h))?,
        )?;
        let mut x = ctx.dropout(&self.emb_ln.forward(&x, ctx)?, self.dropout)?;
        let mask = batch.key_mask(dt)?;
        let heads = self.cfg.num_attention_heads;
        let attn_drop = self.attention_dropout();
        let last = self.layers.len().saturating_sub(1);
        for (i, l) in self.layers.iter().enumerate() {
            // Only the `[CLS]` row of the last layer's output is read: that
            // layer's queries, attention output and feed-forward run on it
            // alone (keys and values on every token), which gives the same
            // logits and gradients for a fraction of the layer's work.
            let rows = if i == last {
                x.narrow(1, 0, 1)?
            } else {
                x.clone()
            };
            let q = split_heads(&l.query.forward(&rows, ctx)?, heads)?;
            let k = split_heads(&l.key.forward(&x, ctx)?, heads)?;
            let v = split_heads(&l.value.forward(&x, ctx)?, heads)?;
            let a = attention_merged(&q, &k, &v, &mask, attn_drop, ctx)?;
            let a = ctx.dropout(&l.attn_out.forward(&a, ctx)?, self.dropout)?;
            let x1 = l.attn_ln.forward_residual(a, &rows, ctx)?;
            let i = ops::gelu_erf_owned(l.inter.forward(&x1, ctx)?)?;
            let o = ctx.dropout(&l.out.forward(&i, ctx)?, self.dropout)?;
            x = l.out_ln.forward_residual(o, &x1, ctx)?;
        }
        gather_positions(&x, &vec![0; b])
    }

    /// Pooler (when the checkpoint has one), dropout and classifier on the
    /// `[CLS]` states: class logits in f32.
    pub fn head(&self, cls: &Tensor, ctx: &Pass) -> Result<Tensor> {
        let cls = cls.clone();
        let pooled = match &self.pooler {
            Some(pooler) => pooler.forward(&cls, ctx)?.tanh()?,
            None => cls,
        };
        let pooled = ctx.dropout(&pooled, self.dropout)?;
        self.classifier
            .forward(&pooled, ctx)?
            .to_dtype(candle_core::DType::F32)
    }

    /// The dtype activations are computed in.
    pub fn dtype(&self) -> candle_core::DType {
        self.dtype
    }

    fn attention_dropout(&self) -> f64 {
        if self.dropout == self.cfg.hidden_dropout_prob {
            self.cfg.attention_probs_dropout_prob
        } else {
            self.dropout
        }
    }

    pub fn linears_mut(&mut self) -> Vec<&mut Linear> {
        let mut v = Vec::new();
        for l in &mut self.layers {
            v.extend([
                &mut l.query,
                &mut l.key,
                &mut l.value,
                &mut l.attn_out,
                &mut l.inter,
                &mut l.out,
            ]);
        }
        if let Some(p) = &mut self.pooler {
            v.push(p);
        }
        v.push(&mut self.classifier);
        v
    }
}
