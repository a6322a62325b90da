//! SwiGLU gate: `silu(gate) * up`, the Llama MLP's activation.

use super::{output, run_cpu, same_dtype, same_shape, CpuKernel};
use crate::autograd::{Backward, GradStore};
use crate::storage::StorageElem;
use crate::{Real, Result, Tensor};
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
    let mut o = run_cpu("swiglu", &Fwd, &[gate, up])?;
    let y = output(o.remove(0), gate.shape(), gate.dtype());
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
        let mut o = run_cpu("swiglu_bwd", &Bwd, &[&self.gate, &self.up, g])?;
        let dup = output(o.remove(1), self.up.shape(), self.up.dtype());
        let dgate = output(o.remove(0), self.gate.shape(), self.gate.dtype());
        Ok(vec![Some(dgate), Some(dup)])
    }
}
