//! Gradient accumulation: the parameter gradients of `grad_accum`
//! micro-batches summed into one store, then rescaled (a short final group
//! becomes a mean over what it had) and clipped before the optimiser step;
//! a group whose gradient norm is not finite is dropped.

use candle_core::backprop::GradStore;
use candle_core::{Device, Result, Tensor, Var};

use super::optim;

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

    /// The summed gradients, rescaled for a short group and clipped to
    /// `clip_norm`; `None` when their norm is not finite (the step is
    /// skipped rather than spreading NaN or infinity into the weights). The
    /// accumulator starts over either way.
    pub fn take(&mut self, vars: &[Var], clip_norm: Option<f64>) -> Result<Option<GradStore>> {
        let Some(mut store) = self.store.take() else {
            candle_core::bail!("no gradients to apply");
        };
        if self.count < self.every {
            optim::scale_grads(&mut store, vars, self.every as f64 / self.count as f64)?;
        }
        self.count = 0;
        let norm = optim::grad_norm(&store, vars)?;
        if !norm.is_finite() {
            return Ok(None);
        }
        let f = optim::clip_factor(norm, clip_norm);
        if f != 1.0 {
            optim::scale_grads(&mut store, vars, f)?;
        }
        Ok(Some(store))
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
        let s = acc.take(std::slice::from_ref(&w), None).unwrap().unwrap();
        assert_eq!(values(&s, &w), [4.0, 6.0]);
        assert!(!acc.ready(true), "starts over after take");
    }

    #[test]
    fn a_short_last_group_becomes_a_mean_over_what_it_had() {
        let w = Var::new(&[0f32], &Device::Cpu).unwrap();
        let mut acc = GradAccumulator::new(4);
        acc.add(grads(&w, &[2.0]), std::slice::from_ref(&w))
            .unwrap();
        assert!(acc.ready(true));
        // One micro-batch of a group of 4: scaled by 4 (its loss was / 4).
        let s = acc.take(std::slice::from_ref(&w), None).unwrap().unwrap();
        assert_eq!(values(&s, &w), [8.0]);
    }

    #[test]
    fn clipping_scales_to_the_norm() {
        let w = Var::new(&[0f32, 0.0], &Device::Cpu).unwrap();
        let mut acc = GradAccumulator::new(1);
        acc.add(grads(&w, &[3.0, 4.0]), std::slice::from_ref(&w))
            .unwrap();
        let s = acc
            .take(std::slice::from_ref(&w), Some(1.0))
            .unwrap()
            .unwrap();
        let v = values(&s, &w);
        assert!(
            (v[0] - 0.6).abs() < 1e-5 && (v[1] - 0.8).abs() < 1e-5,
            "{v:?}"
        );
        assert!(acc.take(std::slice::from_ref(&w), None).is_err());
    }

    #[test]
    fn a_non_finite_norm_skips_the_step() {
        let w = Var::new(&[0f32, 0.0], &Device::Cpu).unwrap();
        let mut acc = GradAccumulator::new(1);
        acc.add(grads(&w, &[f32::NAN, 1.0]), std::slice::from_ref(&w))
            .unwrap();
        assert!(acc
            .take(std::slice::from_ref(&w), Some(1.0))
            .unwrap()
            .is_none());
        acc.add(grads(&w, &[f32::INFINITY, 1.0]), std::slice::from_ref(&w))
            .unwrap();
        assert!(acc.take(std::slice::from_ref(&w), None).unwrap().is_none());
        // The next group starts clean.
        acc.add(grads(&w, &[1.0, 1.0]), std::slice::from_ref(&w))
            .unwrap();
        assert!(acc.take(std::slice::from_ref(&w), None).unwrap().is_some());
    }
}
