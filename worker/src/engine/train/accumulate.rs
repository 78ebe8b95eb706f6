//! Gradient accumulation: the parameter gradients of `grad_accum`
//! micro-batches summed into one store, with the factor that makes a short
//! final group a mean over what it had (the optimiser applies it with the
//! clipping, see [`super::optim::AdamW::step_with`]).

use candle_core::backprop::GradStore;
use candle_core::{Device, Result, Tensor, Var};

/// Sums micro-batch gradients of a fixed set of parameters.
pub struct GradAccumulator {
    every: usize,
    store: Option<GradStore>,
    count: usize,
}

/// A gradient store with no entries (candle offers no constructor): the
/// backward of an untracked constant holds only that constant.
fn empty_store() -> Result<GradStore> {
    let c = Tensor::zeros((), candle_core::DType::F32, &Device::Cpu)?;
    let mut s = c.backward()?;
    s.remove(&c);
    Ok(s)
}

impl GradAccumulator {
    /// Accumulates `every` micro-batches per optimiser step.
    pub fn new(every: usize) -> Self {
        GradAccumulator {
            every: every.max(1),
            store: None,
            count: 0,
        }
    }

    /// A micro-batch loss scaled for `backward`: divided by the group size.
    pub fn scale_loss(&self, loss: &Tensor) -> Result<Tensor> {
        loss / self.every as f64
    }

    /// Adds this micro-batch's gradients of `vars` (intermediate gradients
    /// are dropped at once).
    pub fn add(&mut self, mut grads: GradStore, vars: &[Var]) -> Result<()> {
        let store = match &mut self.store {
            Some(s) => s,
            None => self.store.insert(empty_store()?),
        };
        for v in vars {
            if let Some(g) = grads.remove(v.as_tensor()) {
                let sum = match store.remove(v.as_tensor()) {
                    Some(prev) => (prev + g)?,
                    None => g,
                };
                store.insert(v.as_tensor(), sum);
            }
        }
        self.count += 1;
        Ok(())
    }

    /// Whether a step is due: the group is full, or this was the epoch's
    /// last micro-batch.
    pub fn ready(&self, last: bool) -> bool {
        self.count > 0 && (self.count == self.every || last)
    }

    /// The summed gradients and the factor for a short group (1 for a
    /// full one); the accumulator starts over.
    pub fn take(&mut self) -> Result<(GradStore, f64)> {
        let Some(store) = self.store.take() else {
            candle_core::bail!("no gradients to apply");
        };
        let rescale = self.every as f64 / self.count as f64;
        self.count = 0;
        Ok((store, rescale))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The gradient of `sum(w * x)` is `x`.
    fn grads(w: &Var, x: &[f32]) -> GradStore {
        let x = Tensor::new(x, &Device::Cpu).unwrap();
        (w.as_tensor() * x)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap()
    }

    fn values(store: &GradStore, w: &Var) -> Vec<f32> {
        store.get(w.as_tensor()).unwrap().to_vec1().unwrap()
    }

    #[test]
    fn sums_a_full_group_and_keeps_only_parameters() {
        let w = Var::new(&[0f32, 0.0], &Device::Cpu).unwrap();
        let mut acc = GradAccumulator::new(2);
        let half = acc
            .scale_loss(&Tensor::new(1f32, &Device::Cpu).unwrap())
            .unwrap();
        assert_eq!(half.to_scalar::<f32>().unwrap(), 0.5);
        acc.add(grads(&w, &[1.0, 2.0]), std::slice::from_ref(&w))
            .unwrap();
        assert!(!acc.ready(false));
        acc.add(grads(&w, &[3.0, 4.0]), std::slice::from_ref(&w))
            .unwrap();
        assert!(acc.ready(false));
        let (s, rescale) = acc.take().unwrap();
        assert_eq!((values(&s, &w), rescale), (vec![4.0, 6.0], 1.0));
        assert!(!acc.ready(true), "starts over after take");
        assert!(acc.take().is_err());
    }

    #[test]
    fn a_short_last_group_becomes_a_mean_over_what_it_had() {
        let w = Var::new(&[0f32], &Device::Cpu).unwrap();
        let mut acc = GradAccumulator::new(4);
        acc.add(grads(&w, &[2.0]), std::slice::from_ref(&w))
            .unwrap();
        assert!(acc.ready(true));
        // One micro-batch of a group of 4: to be scaled by 4 (its loss was
        // divided by 4).
        let (s, rescale) = acc.take().unwrap();
        assert_eq!((values(&s, &w), rescale), (vec![2.0], 4.0));
    }
}
