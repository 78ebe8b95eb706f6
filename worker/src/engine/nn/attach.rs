//! Attaching a result computed on *detached* inputs to the graph with a
//! hand-written backward: the pattern every differentiable building block
//! of the engine uses. The forward can then be any fast kernel (candle's
//! fused softmax, layer norm, quantized matmul, a CPU row kernel) and the
//! backward computes exactly the gradients that are needed, with no
//! full-size gradient built for constant operands.
//!
//! The result is handed to candle through a custom op that holds it and
//! gives its buffer back as the op's output (moved, not copied, when
//! nothing else holds it).

use std::sync::{Arc, Mutex};

use candle_core::{
    CpuStorage, CudaStorage, CustomOp1, CustomOp2, CustomOp3, Layout, Result, Shape, Storage,
    Tensor,
};

/// Backward of an attached result: `(inputs, which inputs need a
/// gradient, result, grad) -> one gradient per input`, all detached.
type Backward =
    dyn Fn(&[&Tensor], &[bool], &Tensor, &Tensor) -> Result<Vec<Option<Tensor>>> + Send + Sync;

struct Given {
    name: &'static str,
    result: Mutex<Option<Tensor>>,
    bwd: Arc<Backward>,
}

impl Given {
    fn take(&self) -> Result<Tensor> {
        self.result
            .lock()
            .map_err(|_| candle_core::Error::Msg(format!("{}: poisoned", self.name)))?
            .take()
            .ok_or_else(|| candle_core::Error::Msg(format!("{}: forward ran twice", self.name)))
    }

    fn cpu(&self) -> Result<(CpuStorage, Shape)> {
        match given_storage(self.take()?)? {
            (Storage::Cpu(c), shape) => Ok((c, shape)),
            _ => candle_core::bail!("{}: result on another device", self.name),
        }
    }

    fn cuda(&self) -> Result<(CudaStorage, Shape)> {
        match given_storage(self.take()?)? {
            (Storage::Cuda(c), shape) => Ok((c, shape)),
            _ => candle_core::bail!("{}: result on another device", self.name),
        }
    }

    fn grads(&self, inputs: &[&Tensor], res: &Tensor, g: &Tensor) -> Result<Vec<Option<Tensor>>> {
        let detached: Vec<Tensor> = inputs.iter().map(|t| t.detach()).collect();
        let refs: Vec<&Tensor> = detached.iter().collect();
        let needs: Vec<bool> = inputs.iter().map(|t| t.track_op()).collect();
        let mut out = (self.bwd)(&refs, &needs, &res.detach(), &g.detach())?;
        // Only inputs that track a gradient get one.
        for (o, t) in out.iter_mut().zip(inputs) {
            if !t.track_op() {
                *o = None;
            }
        }
        Ok(out)
    }
}

impl CustomOp1 for Given {
    fn name(&self) -> &'static str {
        self.name
    }
    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout) -> Result<(CpuStorage, Shape)> {
        self.cpu()
    }
    fn cuda_fwd(&self, _: &CudaStorage, _: &Layout) -> Result<(CudaStorage, Shape)> {
        self.cuda()
    }
    fn bwd(&self, a: &Tensor, res: &Tensor, g: &Tensor) -> Result<Option<Tensor>> {
        Ok(self.grads(&[a], res, g)?.into_iter().next().flatten())
    }
}

impl CustomOp2 for Given {
    fn name(&self) -> &'static str {
        self.name
    }
    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        self.cpu()
    }
    fn cuda_fwd(
        &self,
        _: &CudaStorage,
        _: &Layout,
        _: &CudaStorage,
        _: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        self.cuda()
    }
    fn bwd(
        &self,
        a: &Tensor,
        b: &Tensor,
        res: &Tensor,
        g: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let mut v = self.grads(&[a, b], res, g)?.into_iter();
        Ok((v.next().flatten(), v.next().flatten()))
    }
}

impl CustomOp3 for Given {
    fn name(&self) -> &'static str {
        self.name
    }
    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        self.cpu()
    }
    fn cuda_fwd(
        &self,
        _: &CudaStorage,
        _: &Layout,
        _: &CudaStorage,
        _: &Layout,
        _: &CudaStorage,
        _: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        self.cuda()
    }
    fn bwd(
        &self,
        a: &Tensor,
        b: &Tensor,
        c: &Tensor,
        res: &Tensor,
        g: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let mut v = self.grads(&[a, b, c], res, g)?.into_iter();
        Ok((v.next().flatten(), v.next().flatten(), v.next().flatten()))
    }
}

/// A precomputed result's buffer as a custom op's output: moved when the
/// result is the only holder of it (the usual case), copied otherwise.
pub(crate) fn given_storage(y: Tensor) -> Result<(Storage, Shape)> {
    match y.into_storage() {
        Ok(moved) => Ok(moved),
        Err(y) => {
            let (s, l) = y.storage_and_layout();
            Ok((s.try_clone(l)?, l.shape().clone()))
        }
    }
}

fn given(
    name: &'static str,
    y: Tensor,
    bwd: impl Fn(&[&Tensor], &[bool], &Tensor, &Tensor) -> Result<Vec<Option<Tensor>>>
        + Send
        + Sync
        + 'static,
) -> Given {
    Given {
        name,
        result: Mutex::new(Some(y)),
        bwd: Arc::new(bwd),
    }
}

/// Makes `y` (computed from `x.detach()`) the differentiable output of `x`,
/// with `grad_x = bwd(x, y, grad_y)` (all three detached). When `x` needs
/// no gradient, `y` is returned as is.
pub fn attach(
    name: &'static str,
    x: &Tensor,
    y: Tensor,
    bwd: impl Fn(&Tensor, &Tensor, &Tensor) -> Result<Tensor> + Send + Sync + 'static,
) -> Result<Tensor> {
    if !x.track_op() {
        return Ok(y);
    }
    x.apply_op1(given(name, y, move |i, _, y, g| {
        Ok(vec![Some(bwd(i[0], y, g)?)])
    }))
}

/// [`attach`] for a result of two inputs: `bwd(inputs, needs, y, g)`
/// returns a gradient for each input; `needs[i]` says whether input `i`
/// tracks one (the others are dropped anyway: skip computing them).
pub fn attach2(
    name: &'static str,
    (a, b): (&Tensor, &Tensor),
    y: Tensor,
    bwd: impl Fn(&[&Tensor], &[bool], &Tensor, &Tensor) -> Result<Vec<Option<Tensor>>>
        + Send
        + Sync
        + 'static,
) -> Result<Tensor> {
    if !a.track_op() && !b.track_op() {
        return Ok(y);
    }
    a.apply_op2(b, given(name, y, bwd))
}

/// [`attach2`] for a result of three inputs.
pub fn attach3(
    name: &'static str,
    (a, b, c): (&Tensor, &Tensor, &Tensor),
    y: Tensor,
    bwd: impl Fn(&[&Tensor], &[bool], &Tensor, &Tensor) -> Result<Vec<Option<Tensor>>>
        + Send
        + Sync
        + 'static,
) -> Result<Tensor> {
    if !a.track_op() && !b.track_op() && !c.track_op() {
        return Ok(y);
    }
    a.apply_op3(b, c, given(name, y, bwd))
}
