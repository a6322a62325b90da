//! SwiGLU gate: `silu(gate) * up`, the Llama MLP's activation.

use super::dense;
use super::{output, run_cpu, same_dtype, same_shape, CpuKernel};
use crate::autograd::{Backward, GradStore};
use crate::cuda::{self, cs, cuda_float, CudaStorage};
use crate::storage::StorageElem;
use crate::{Real, Result, Tensor};
use kernels_cuda::ops::swiglu as kernels;
use rayon::prelude::*;
use std::sync::Arc;

fn sigmoid<T: Real>(x: T) -> T {
    T::ONE / (T::ONE + (-x).exp())
}

struct Fwd;
impl CpuKernel for Fwd {
    fn run<T: Real + StorageElem>(&self, i: &[&[T]]) -> Result<Vec<Vec<T>>> {
        Ok(vec![i[0].par_iter().zip(i[1]).map(|(&g, &u)| g * sigmoid(g) * u).collect()])
    }
}

struct Bwd;
impl CpuKernel for Bwd {
    fn run<T: Real + StorageElem>(&self, i: &[&[T]]) -> Result<Vec<Vec<T>>> {
        let (gate, up, dy) = (i[0], i[1], i[2]);
        let (dgate, dup): (Vec<T>, Vec<T>) = (0..gate.len())
            .into_par_iter()
            .map(|j| {
                let (x, s) = (gate[j], sigmoid(gate[j]));
                (dy[j] * up[j] * s * (T::ONE + x * (T::ONE - s)), dy[j] * x * s)
            })
            .unzip();
        Ok(vec![dgate, dup])
    }
}

/// `silu(gate) * up` elementwise.
pub fn swiglu(gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    same_shape("swiglu", gate, up)?;
    same_dtype("swiglu", gate, up)?;
    gate.check_same_device(up, "swiglu")?;
    let y = if gate.device().is_cpu() {
        let mut o = run_cpu("swiglu", &Fwd, &[gate, up])?;
        output(o.remove(0), gate.shape(), gate.dtype())
    } else {
        cuda_fwd(gate, up)?
    };
    Ok(y.track(&[gate, up], || Arc::new(SwigluBackward { gate: gate.clone(), up: up.clone() })))
}

struct SwigluBackward {
    gate: Tensor,
    up: Tensor,
}
impl Backward for SwigluBackward {
    fn name(&self) -> &'static str {
        "swiglu"
    }
    fn inputs(&self) -> Vec<Tensor> {
        vec![self.gate.clone(), self.up.clone()]
    }
    fn backward(&self, g: &Tensor, _: &mut GradStore) -> Result<Vec<Option<Tensor>>> {
        if !g.device().is_cpu() {
            let (dgate, dup) = cuda_bwd(&self.gate, &self.up, g)?;
            return Ok(vec![Some(dgate), Some(dup)]);
        }
        let mut o = run_cpu("swiglu_bwd", &Bwd, &[&self.gate, &self.up, g])?;
        let dup = output(o.remove(1), self.up.shape(), self.up.dtype());
        let dgate = output(o.remove(0), self.gate.shape(), self.gate.dtype());
        Ok(vec![Some(dgate), Some(dup)])
    }
}

fn cuda_fwd(gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    let (gate, up) = (dense(gate)?, dense(up)?);
    let (gg, gu) = (gate.cuda_storage()?, up.cuda_storage()?);
    let (sg, su) = (cs(&gg), cs(&gu));
    let mut out = CudaStorage::uninit(sg.dtype(), gate.elem_count(), &sg.dev)?;
    let r =
        cuda_float!("swiglu"; a = &sg.buf, b = &su.buf, o = &mut out.buf => kernels::swiglu_fwd(&sg.dev.gpu, a, b, o));
    r.map_err(|e| cuda::err("swiglu", e))?;
    Ok(cuda::tensor(out, gate.shape()))
}

fn cuda_bwd(gate: &Tensor, up: &Tensor, dy: &Tensor) -> Result<(Tensor, Tensor)> {
    let (gate, up, dy) = (dense(gate)?, dense(up)?, dense(dy)?);
    let (gg, gu, gd) = (gate.cuda_storage()?, up.cuda_storage()?, dy.cuda_storage()?);
    let (sg, su, sd) = (cs(&gg), cs(&gu), cs(&gd));
    let n = gate.elem_count();
    let mut dgate = CudaStorage::uninit(sg.dtype(), n, &sg.dev)?;
    let mut dup = CudaStorage::uninit(sg.dtype(), n, &sg.dev)?;
    let r = cuda_float!("swiglu backward"; a = &sg.buf, b = &su.buf, d = &sd.buf, x = &mut dgate.buf, y = &mut dup.buf
        => kernels::swiglu_bwd(&sg.dev.gpu, a, b, d, x, y));
    r.map_err(|e| cuda::err("swiglu backward", e))?;
    Ok((cuda::tensor(dgate, gate.shape()), cuda::tensor(dup, gate.shape())))
}
