//! Phi-1.5 / Phi-2 decoders for sequence classification: partial rotary
//! embeddings (rotate-half form on the first `partial_rotary_factor` of each
//! head), attention and MLP in parallel under one layer norm, `gelu_new`,
//! causal plus padding mask, and a bias-free `score` head applied to the
//! last non-pad token. Tensor names follow Hugging Face's `PhiForCausalLM`.

use std::collections::HashMap;
use std::sync::Mutex;

use candle_core::{DType, Device, Result, Tensor};
use serde::Deserialize;

use super::{attention_merged, embed, gather_positions, split_heads, Batch};
use crate::engine::nn::linear::{Linear, LoraConfig};
use crate::engine::nn::params::{self, Param, Params};
use crate::engine::nn::{ops, Pass};

/// The classification head's tensors (`score.weight`).
pub const HEAD_PREFIXES: &[&str] = &["score."];

/// LoRA's default targets: the attention's q, k, v and output projections.
pub const LORA_TARGETS: &[&str] = &["q_proj", "k_proj", "v_proj", "dense"];

/// The fields of a Hugging Face Phi `config.json` that the model uses.
#[derive(Debug, Clone, Deserialize)]
pub struct PhiConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub intermediate_size: usize,
    pub max_position_embeddings: usize,
    #[serde(default = "default_rotary")]
    pub partial_rotary_factor: f64,
    #[serde(default = "default_theta")]
    pub rope_theta: f64,
    #[serde(default)]
    pub rope_parameters: Option<RopeParameters>,
    #[serde(default = "default_eps")]
    pub layer_norm_eps: f64,
    #[serde(default)]
    pub resid_pdrop: f64,
    #[serde(default)]
    pub embd_pdrop: f64,
    #[serde(default)]
    pub attention_dropout: f64,
    #[serde(default)]
    pub qk_layernorm: bool,
    #[serde(default = "default_act")]
    pub hidden_act: String,
    #[serde(default)]
    pub pad_token_id: Option<u32>,
    #[serde(default)]
    pub eos_token_id: Option<u32>,
    #[serde(default)]
    pub num_key_value_heads: Option<usize>,
}

/// Newer configs keep the rotary settings in a nested table.
#[derive(Debug, Clone, Deserialize)]
pub struct RopeParameters {
    #[serde(default)]
    pub rope_theta: Option<f64>,
    #[serde(default)]
    pub partial_rotary_factor: Option<f64>,
}

fn default_rotary() -> f64 {
    0.5
}
fn default_theta() -> f64 {
    10000.0
}
fn default_eps() -> f64 {
    1e-5
}
fn default_act() -> String {
    "gelu_new".into()
}

struct LayerNorm {
    w: Param,
    b: Param,
    eps: f64,
}

impl LayerNorm {
    fn load(p: &mut Params, prefix: &str, n: usize, eps: f64) -> params::Result<LayerNorm> {
        Ok(LayerNorm {
            w: p.base(&format!("{prefix}.weight"), &[n])?,
            b: p.base(&format!("{prefix}.bias"), &[n])?,
            eps,
        })
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
    ln: LayerNorm,
    q: Linear,
    k: Linear,
    v: Linear,
    dense: Linear,
    fc1: Linear,
    fc2: Linear,
}

/// A Phi decoder with its classification head.
pub struct Phi {
    cfg: PhiConfig,
    embed: Param,
    layers: Vec<Layer>,
    final_ln: LayerNorm,
    score: Linear,
    rotary_dims: usize,
    theta: f64,
    dropout: Option<f64>,
    /// The compute dtype of activations (the store's, whatever trains).
    dtype: DType,
    /// Rotary `cos`/`sin` and the causal mask per sequence length, made
    /// once on the model's device.
    tables: Mutex<HashMap<usize, Tables>>,
    pub pad_id: u32,
}

/// What every forward of one sequence length shares.
#[derive(Clone)]
struct Tables {
    /// `[s, rotary_dims / 2]` in the compute dtype.
    cos: Tensor,
    sin: Tensor,
    /// `[1, 1, s, s]`, 0 on and below the diagonal, -1e4 above (f32).
    causal: Tensor,
}

impl Tables {
    /// The rotary tables at one position per batch row, `[b, 1, rd / 2]`
    /// (the form rope takes for per-row positions).
    fn at(&self, positions: &[usize]) -> Result<Tables> {
        let idx: Vec<u32> = positions.iter().map(|&p| p as u32).collect();
        let idx = Tensor::from_vec(idx, positions.len(), self.cos.device())?;
        let pick =
            |t: &Tensor| -> Result<Tensor> { t.index_select(&idx, 0)?.unsqueeze(1)?.contiguous() };
        Ok(Tables {
            cos: pick(&self.cos)?,
            sin: pick(&self.sin)?,
            causal: self.causal.clone(),
        })
    }
}

impl Phi {
    pub fn load(
        p: &mut Params,
        cfg: PhiConfig,
        num_labels: usize,
        lora: Option<&LoraConfig>,
        dropout: Option<f64>,
    ) -> params::Result<Phi> {
        let unsupported = |what: String| {
            params::ParamError::Candle(candle_core::Error::Msg(format!(
                "unsupported Phi config: {what}"
            )))
        };
        if cfg.qk_layernorm {
            return Err(unsupported("qk_layernorm = true".into()));
        }
        if cfg.hidden_act != "gelu_new" {
            return Err(unsupported(format!("hidden_act = {:?}", cfg.hidden_act)));
        }
        if let Some(kv) = cfg.num_key_value_heads {
            if kv != cfg.num_attention_heads {
                return Err(unsupported("grouped key/value heads".into()));
            }
        }
        let h = cfg.hidden_size;
        let head_dim = h / cfg.num_attention_heads;
        let factor = cfg
            .rope_parameters
            .as_ref()
            .and_then(|r| r.partial_rotary_factor)
            .unwrap_or(cfg.partial_rotary_factor);
        let theta = cfg
            .rope_parameters
            .as_ref()
            .and_then(|r| r.rope_theta)
            .unwrap_or(cfg.rope_theta);
        let rotary_dims = (head_dim as f64 * factor) as usize;
        if !rotary_dims.is_multiple_of(2) {
            return Err(unsupported(format!("odd rotary dimension {rotary_dims}")));
        }
        let embed = p.base("model.embed_tokens.weight", &[cfg.vocab_size, h])?;
        let eps = cfg.layer_norm_eps;
        let mut layers = Vec::with_capacity(cfg.num_hidden_layers);
        for i in 0..cfg.num_hidden_layers {
            let l = format!("model.layers.{i}");
            let f = cfg.intermediate_size;
            layers.push(Layer {
                ln: LayerNorm::load(p, &format!("{l}.input_layernorm"), h, eps)?,
                q: Linear::load(p, &format!("{l}.self_attn.q_proj"), h, h, true, lora)?,
                k: Linear::load(p, &format!("{l}.self_attn.k_proj"), h, h, true, lora)?,
                v: Linear::load(p, &format!("{l}.self_attn.v_proj"), h, h, true, lora)?,
                dense: Linear::load(p, &format!("{l}.self_attn.dense"), h, h, true, lora)?,
                fc1: Linear::load(p, &format!("{l}.mlp.fc1"), h, f, true, lora)?,
                fc2: Linear::load(p, &format!("{l}.mlp.fc2"), f, h, true, lora)?,
            });
        }
        let final_ln = LayerNorm::load(p, "model.final_layernorm", h, eps)?;
        let score = Linear::new_head(p, "score", h, num_labels, false)?;
        let pad_id = cfg.pad_token_id.or(cfg.eos_token_id).unwrap_or(50256);
        Ok(Phi {
            cfg,
            embed,
            layers,
            final_ln,
            score,
            rotary_dims,
            theta,
            dropout,
            dtype: p.dtype,
            tables: Mutex::new(HashMap::new()),
            pad_id,
        })
    }

    /// The rotary tables and causal mask for length `s` (cached).
    fn tables(&self, s: usize, device: &Device) -> Result<Tables> {
        let mut cache = self.tables.lock().expect("tables lock");
        if let Some(t) = cache.get(&s) {
            return Ok(t.clone());
        }
        let half = self.rotary_dims / 2;
        let angles: Vec<f64> = (0..s)
            .flat_map(|pos| {
                (0..half).map(move |i| {
                    pos as f64 / self.theta.powf((2 * i) as f64 / self.rotary_dims as f64)
                })
            })
            .collect();
        let table = |f: fn(f64) -> f64| -> Result<Tensor> {
            let v: Vec<f32> = angles.iter().map(|&a| f(a) as f32).collect();
            Tensor::from_vec(v, (s, half), device)?.to_dtype(self.dtype)
        };
        let causal: Vec<f32> = (0..s)
            .flat_map(|i| (0..s).map(move |j| if j > i { -1e4 } else { 0.0 }))
            .collect();
        let t = Tables {
            cos: table(f64::cos)?,
            sin: table(f64::sin)?,
            causal: Tensor::from_vec(causal, (1, 1, s, s), device)?,
        };
        cache.insert(s, t.clone());
        Ok(t)
    }

    /// Rotary embedding on the first `rotary_dims` of each head (candle's
    /// fused kernel, attached backward); the rest passes through.
    fn apply_rotary(&self, x: &Tensor, t: &Tables) -> Result<Tensor> {
        let rd = self.rotary_dims;
        if rd == 0 {
            return Ok(x.clone());
        }
        let d = x.dim(3)?;
        if rd == d {
            return ops::rope(x, &t.cos, &t.sin);
        }
        let out = ops::rope(&x.narrow(3, 0, rd)?, &t.cos, &t.sin)?;
        Tensor::cat(&[&out, &x.narrow(3, rd, d - rd)?], 3)
    }

    /// `[b, 1, s, s]`: causal mask plus key padding, additive, finite.
    fn mask(&self, batch: &Batch, t: &Tables) -> Result<Tensor> {
        let pad = batch.key_mask(DType::F32)?;
        t.causal
            .broadcast_add(&pad)?
            .clamp(-1e4f32, 0f32)?
            .to_dtype(self.dtype)
    }

    /// Class logits `[b, num_labels]` in f32.
    pub fn forward(&self, batch: &Batch, ctx: &Pass) -> Result<Tensor> {
        self.head(&self.body(batch, ctx)?, ctx)
    }

    /// The final-norm state of each row's last real token `[b, hidden]`.
    pub fn body(&self, batch: &Batch, ctx: &Pass) -> Result<Tensor> {
        let dt = self.dtype;
        let (_, s) = batch.ids.dims2()?;
        if s > self.cfg.max_position_embeddings {
            candle_core::bail!(
                "sequence of {s} tokens is longer than max_position_embeddings {}",
                self.cfg.max_position_embeddings
            );
        }
        let resid_p = self.dropout.unwrap_or(self.cfg.resid_pdrop);
        let embd_p = self.dropout.unwrap_or(self.cfg.embd_pdrop);
        let attn_p = self.dropout.unwrap_or(self.cfg.attention_dropout);
        let mut x = ctx.dropout(&embed(&ctx.param(&self.embed, dt)?, &batch.ids)?, embd_p)?;
        let tables = self.tables(s, x.device())?;
        let mask = self.mask(batch, &tables)?;
        let heads = self.cfg.num_attention_heads;
        let last: Vec<usize> = batch.lengths.iter().map(|&n| n.max(1) - 1).collect();
        let last_block = self.layers.len().saturating_sub(1);
        for (i, l) in self.layers.iter().enumerate() {
            let hn = l.ln.forward(&x, ctx)?;
            // Only each row's last real token is read from the last block:
            // its query, attention output and MLP run on that token alone
            // (keys and values on every token). That token sees every real
            // token and no padding, so the key mask is its causal mask:
            // the same logits and gradients for a fraction of the work.
            let (rows, rows_hn, rows_tables, rows_mask) = if i == last_block {
                let b = last.len();
                let pick = |t: &Tensor| -> Result<Tensor> {
                    gather_positions(t, &last)?.reshape((b, 1, t.dim(2)?))
                };
                (
                    pick(&x)?,
                    pick(&hn)?,
                    tables.at(&last)?,
                    batch.key_mask(dt)?,
                )
            } else {
                (x.clone(), hn.clone(), tables.clone(), mask.clone())
            };
            let q = self.apply_rotary(
                &split_heads(&l.q.forward(&rows_hn, ctx)?, heads)?,
                &rows_tables,
            )?;
            let k = self.apply_rotary(&split_heads(&l.k.forward(&hn, ctx)?, heads)?, &tables)?;
            let v = split_heads(&l.v.forward(&hn, ctx)?, heads)?;
            let a = attention_merged(&q, &k, &v, &rows_mask, attn_p, ctx)?;
            let a = ctx.dropout(&l.dense.forward(&a, ctx)?, resid_p)?;
            let m = l
                .fc2
                .forward(&ops::gelu_tanh_owned(l.fc1.forward(&rows_hn, ctx)?)?, ctx)?;
            let m = ctx.dropout(&m, resid_p)?;
            x = ((rows + a)? + m)?;
        }
        let x = self.final_ln.forward(&x, ctx)?;
        if self.layers.is_empty() {
            return gather_positions(&x, &last);
        }
        x.reshape((last.len(), x.dim(2)?))
    }

    /// The score layer on the last real tokens' states: logits in f32.
    pub fn head(&self, pooled: &Tensor, ctx: &Pass) -> Result<Tensor> {
        self.score.forward(pooled, ctx)?.to_dtype(DType::F32)
    }

    /// The dtype activations are computed in.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    pub fn linears_mut(&mut self) -> Vec<&mut Linear> {
        let mut v = Vec::new();
        for l in &mut self.layers {
            v.extend([
                &mut l.q,
                &mut l.k,
                &mut l.v,
                &mut l.dense,
                &mut l.fc1,
                &mut l.fc2,
            ]);
        }
        v.push(&mut self.score);
        v
    }
}
