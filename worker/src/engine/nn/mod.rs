//! The network toolkit: differentiable ops ([`ops`]), the parameter store
//! that decides which weights train ([`params`]) and the one linear layer
//! every model uses ([`linear`]), which is where adapters attach (a LoRA
//! adapter as one op with its frozen product: [`lora`]).

pub mod attach;
pub mod attention;
pub mod dendrite;
pub mod fused;
pub mod linear;
pub mod lora;
pub mod matmul;
pub mod ops;
pub mod params;
pub mod rows;

use std::cell::RefCell;
use std::collections::HashMap;

use candle_core::{DType, Device, Result, Tensor};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;

use params::Param;

/// How one forward pass runs: training mode (dropout on), whether a
/// gradient graph is built, what it does with the dendrite terms, and the
/// seeded source of dropout masks.
pub struct Pass {
    pub train: bool,
    grad: bool,
    /// What the forward pass does with the dendrite terms.
    pub dendrites: DendriteUse,
    rng: RefCell<ChaCha8Rng>,
}

/// How a forward pass uses each layer's dendrite term.
pub enum DendriteUse {
    /// Added, as trained.
    Keep,
    /// Left out (zero-ablation knock-out: what the network computes without
    /// its dendrites, weights unchanged).
    Drop,
    /// Added, and each layer's sum over rows and row count recorded (the
    /// training-split means that [`DendriteUse::Mean`] uses).
    Record(RefCell<HashMap<String, (Tensor, usize)>>),
    /// Replaced by the layer's mean term (`[C]`, by layer name): the
    /// mean-ablation knock-out, which keeps the constant offset a layer
    /// learned to expect and removes what varies with the input.
    Mean(HashMap<String, Tensor>),
}

impl Pass {
    /// A training context: dropout on, gradients tracked.
    pub fn new(train: bool, rng: ChaCha8Rng) -> Pass {
        Pass {
            train,
            grad: true,
            dendrites: DendriteUse::Keep,
            rng: RefCell::new(rng),
        }
    }

    /// Dropout off, graph kept (gradient checks of the eval-mode network).
    pub fn eval() -> Pass {
        Pass::new(false, ChaCha8Rng::seed_from_u64(0))
    }

    /// Dropout off and no graph: parameters are read detached, like
    /// PyTorch's `inference_mode` (evaluation, latency, benchmarks).
    pub fn inference() -> Pass {
        Pass {
            grad: false,
            ..Pass::eval()
        }
    }

    /// [`Pass::inference`] with every dendrite term left out (knock-out).
    pub fn knockout() -> Pass {
        Pass {
            dendrites: DendriteUse::Drop,
            ..Pass::inference()
        }
    }

    /// [`Pass::inference`] recording each layer's mean dendrite term
    /// ([`Pass::dendrite_means`]).
    pub fn recording() -> Pass {
        Pass {
            dendrites: DendriteUse::Record(RefCell::new(HashMap::new())),
            ..Pass::inference()
        }
    }

    /// [`Pass::inference`] with each layer's dendrite term replaced by its
    /// mean (from [`Pass::dendrite_means`]).
    pub fn mean_ablated(means: HashMap<String, Tensor>) -> Pass {
        Pass {
            dendrites: DendriteUse::Mean(means),
            ..Pass::inference()
        }
    }

    /// Adds a layer's term (`[n, C]`) to the record, when recording.
    pub fn record_term(&self, layer: &str, term: &Tensor) -> Result<()> {
        if let DendriteUse::Record(r) = &self.dendrites {
            let sum = term.to_dtype(DType::F32)?.sum(0)?;
            let mut r = r.borrow_mut();
            match r.get_mut(layer) {
                Some((s, n)) => {
                    *s = (&*s + sum)?;
                    *n += term.dim(0)?;
                }
                None => {
                    r.insert(layer.to_string(), (sum, term.dim(0)?));
                }
            }
        }
        Ok(())
    }

    /// The mean term of each layer seen while recording (empty otherwise).
    pub fn dendrite_means(&self) -> Result<HashMap<String, Tensor>> {
        let DendriteUse::Record(r) = &self.dendrites else {
            return Ok(HashMap::new());
        };
        r.borrow()
            .iter()
            .map(|(k, (s, n))| Ok((k.clone(), (s / (*n).max(1) as f64)?)))
            .collect()
    }

    /// A parameter in the compute dtype, detached when no graph is built.
    pub fn param(&self, p: &Param, dtype: DType) -> Result<Tensor> {
        let t = p.get(dtype)?;
        Ok(if self.grad { t } else { t.detach() })
    }

    /// Inverted dropout, attached with backward `g * mask`. On the CPU the
    /// mask comes from this context's seeded stream, so runs are
    /// reproducible bit for bit; on CUDA it is the fused kernel's
    /// counter-based draw (one kernel forward, one backward, no mask
    /// stored), seeded for each call from the same stream.
    pub fn dropout(&self, x: &Tensor, p: f64) -> Result<Tensor> {
        let draw = self.draw(x, p)?;
        if let Draw::Keep = draw {
            return Ok(x.clone());
        }
        let y = draw.apply(&x.detach())?;
        ops::attach("dropout", x, y, move |_, _, g| draw.apply(g))
    }

    /// The dropout mask of `x` at rate `p`, drawn from this context's
    /// stream ([`Draw::Keep`] outside training and at `p = 0`).
    pub fn draw(&self, x: &Tensor, p: f64) -> Result<Draw> {
        self.scaled_draw(x, p, 1.0)
    }

    /// [`Pass::draw`] with the kept values `factor / (1 - p)` instead of
    /// `1 / (1 - p)`: a constant factor on the masked input for free.
    pub fn scaled_draw(&self, x: &Tensor, p: f64, factor: f64) -> Result<Draw> {
        if !self.train || p <= 0.0 {
            return Ok(Draw::Keep);
        }
        let keep = 1.0 - p;
        if x.device().is_cuda() && fused::applies(x) {
            let seed: u64 = self.rng.borrow_mut().random();
            return Ok(Draw::Philox { seed, keep, factor });
        }
        Ok(Draw::Mask(self.mask(x, keep, factor)?))
    }

    /// `[x.shape]` of `0` or `factor / keep` in `x`'s dtype and device, from
    /// this context's stream (drawn on the CPU).
    fn mask(&self, x: &Tensor, keep: f64, factor: f64) -> Result<Tensor> {
        let scale = factor / keep;
        let device = x.device();
        let mut bits = vec![0u32; x.elem_count()];
        fill_in_parallel(&mut self.rng.borrow_mut(), &mut bits);
        // keep with probability `keep`: u32 below keep * 2^32.
        let threshold = (keep * 4_294_967_296.0) as u64;
        let s = scale as f32;
        let mask: Vec<f32> = bits
            .into_par_iter()
            .map(|b| if (b as u64) < threshold { s } else { 0.0 })
            .collect();
        Tensor::from_vec(mask, x.shape(), device)?.to_dtype(x.dtype())
    }
}

/// One dropout mask: applied to the input it is the forward, applied to
/// the gradient the backward.
#[derive(Clone)]
pub enum Draw {
    /// No dropout.
    Keep,
    /// `0` or `factor / keep` per element (CPU: drawn on the host).
    Mask(Tensor),
    /// The fused kernel's counter-based draw (CUDA: no mask stored).
    Philox { seed: u64, keep: f64, factor: f64 },
}

impl Draw {
    /// `x` with this mask applied (`x` itself under [`Draw::Keep`]).
    pub fn apply(&self, x: &Tensor) -> Result<Tensor> {
        match self {
            Draw::Keep => Ok(x.clone()),
            Draw::Mask(mask) => x * mask,
            Draw::Philox { seed, keep, factor } => fused::scaled_dropout(x, *seed, *keep, *factor),
        }
    }
}

/// Fills `out` with the next `out.len()` words of `rng`'s stream, chunks
/// over the thread pool (each from its own position of the stream): the
/// same values as one sequential fill, and `rng` ends where that would.
fn fill_in_parallel(rng: &mut ChaCha8Rng, out: &mut [u32]) {
    const CHUNK: usize = 1 << 16;
    let start = rng.get_word_pos();
    let base = rng.clone();
    out.par_chunks_mut(CHUNK).enumerate().for_each(|(i, c)| {
        let mut r = base.clone();
        r.set_word_pos(start + (i * CHUNK) as u128);
        r.fill(c);
    });
    rng.set_word_pos(start + out.len() as u128);
}

/// The compute dtype for a device and a requested precision.
pub fn compute_dtype(device: &Device, precision: common::spec::Precision) -> DType {
    use common::spec::Precision;
    match precision {
        Precision::F32 => DType::F32,
        Precision::Bf16 => DType::BF16,
        Precision::F16 => DType::F16,
        Precision::Auto if device.is_cuda() => DType::BF16,
        Precision::Auto => DType::F32,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Var;

    fn dropped(seed: u64, p: f64) -> (Tensor, Tensor) {
        let x =
            Var::from_tensor(&Tensor::ones((400, 250), DType::F32, &Device::Cpu).unwrap()).unwrap();
        let ctx = Pass::new(true, ChaCha8Rng::seed_from_u64(seed));
        let y = ctx.dropout(x.as_tensor(), p).unwrap();
        let g = y.sum_all().unwrap().backward().unwrap();
        (y, g.get(x.as_tensor()).unwrap().clone())
    }

    /// The parallel fill gives the stream a sequential fill gives, and
    /// leaves the generator where that one does.
    #[test]
    fn parallel_fill_is_the_sequential_stream() {
        for n in [0, 5, (1 << 16) + 3, 3 << 16] {
            let mut a = ChaCha8Rng::seed_from_u64(9);
            let mut b = ChaCha8Rng::seed_from_u64(9);
            let _: u32 = a.random();
            let _: u32 = b.random();
            let mut want = vec![0u32; n];
            a.fill(&mut want[..]);
            let mut got = vec![0u32; n];
            fill_in_parallel(&mut b, &mut got);
            assert_eq!(got, want, "{n}");
            assert_eq!(a.random::<u64>(), b.random::<u64>(), "{n}");
        }
    }

    /// Inverted dropout: about `p` of the values are zero, the others are
    /// `1 / (1 - p)`, the mean is kept, the gradient is the same mask, and
    /// the seed decides the mask.
    #[test]
    fn dropout_statistics_and_gradient() {
        let p = 0.1;
        let (y, g) = dropped(7, p);
        let v = y.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let n = v.len() as f64;
        let zeros = v.iter().filter(|&&e| e == 0.0).count() as f64 / n;
        // 100 000 draws: the standard deviation of the rate is ~0.00095.
        assert!((zeros - p).abs() < 0.005, "dropped fraction {zeros}");
        let keep = (1.0 / (1.0 - p)) as f32;
        assert!(v.iter().all(|&e| e == 0.0 || e == keep));
        let mean = v.iter().map(|&e| e as f64).sum::<f64>() / n;
        assert!((mean - 1.0).abs() < 0.01, "mean {mean}");
        // d(sum y)/dx = mask (x is all ones, so y is the mask).
        assert_eq!(g.to_vec2::<f32>().unwrap(), y.to_vec2::<f32>().unwrap());
        let (again, _) = dropped(7, p);
        assert_eq!(again.to_vec2::<f32>().unwrap(), y.to_vec2::<f32>().unwrap());
        let (other, _) = dropped(8, p);
        assert_ne!(other.to_vec2::<f32>().unwrap(), y.to_vec2::<f32>().unwrap());
        // Off outside training and at p = 0.
        let x = Tensor::ones(10, DType::F32, &Device::Cpu).unwrap();
        let out = Pass::eval().dropout(&x, 0.5).unwrap();
        assert_eq!(out.to_vec1::<f32>().unwrap(), vec![1.0; 10]);
    }
}
