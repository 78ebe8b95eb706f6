//! The network toolkit: differentiable ops ([`ops`]), the parameter store
//! that decides which weights train ([`params`]) and the one linear layer
//! every model uses ([`linear`]), which is where adapters attach.

pub mod dendrite;
pub mod linear;
pub mod ops;
pub mod params;

use std::cell::RefCell;

use candle_core::{DType, Device, Result, Tensor};
use rand::Rng;
use rand_chacha::ChaCha8Rng;

/// Per-forward context: training mode and the seeded source of dropout masks.
pub struct Ctx {
    pub train: bool,
    rng: RefCell<ChaCha8Rng>,
}

impl Ctx {
    pub fn new(train: bool, rng: ChaCha8Rng) -> Ctx {
        Ctx {
            train,
            rng: RefCell::new(rng),
        }
    }

    /// An inference context (dropout off).
    pub fn eval() -> Ctx {
        use rand::SeedableRng;
        Ctx::new(false, ChaCha8Rng::seed_from_u64(0))
    }

    /// Inverted dropout with a mask drawn from this context's seeded RNG, so
    /// CPU runs are reproducible bit for bit.
    pub fn dropout(&self, x: &Tensor, p: f64) -> Result<Tensor> {
        if !self.train || p <= 0.0 {
            return Ok(x.clone());
        }
        let n = x.elem_count();
        let keep = 1.0 - p;
        let scale = (1.0 / keep) as f32;
        let mut rng = self.rng.borrow_mut();
        let mask: Vec<f32> = (0..n)
            .map(|_| {
                if rng.random::<f64>() < keep {
                    scale
                } else {
                    0.0
                }
            })
            .collect();
        let mask = Tensor::from_vec(mask, x.shape(), &Device::Cpu)?
            .to_dtype(x.dtype())?
            .to_device(x.device())?;
        x * mask
    }
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
