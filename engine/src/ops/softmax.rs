//! Log-softmax over the last dimension.

use super::{output, run_cpu, CpuKernel};
use crate::autograd::{Backward, GradStore};
use crate::storage::StorageElem;
use crate::{Real, Result, Tensor};
use rayon::prelude::*;
use std::sync::Arc;

struct Fwd(usize);
impl CpuKernel for Fwd {
    fn run<T: Real + StorageElem>(&self, i: &[&[T]]) -> Result<Vec<Vec<T>>> {
        let mut y = i[0].to_vec();
        y.par_chunks_mut(self.0.max(1)).for_each(|row| {
            let m = row.iter().copied().fold(T::NEG_INFINITY, T::max);
            let lse = m + row.iter().map(|&x| (x - m).exp()).sum::<T>().ln();
            row.iter_mut().for_each(|x| *x -= lse);
        });
        Ok(vec![y])
    }
}

struct Bwd(usize);
impl CpuKernel for Bwd {
    fn run<T: Real + StorageElem>(&self, i: &[&[T]]) -> Result<Vec<Vec<T>>> {
        let (y, g) = (i[0], i[1]);
        let mut d = g.to_vec();
        d.par_chunks_mut(self.0.max(1)).zip(y.par_chunks(self.0.max(1))).for_each(|(dr, yr)| {
            let s = dr.iter().copied().sum::<T>();
            dr.iter_mut().zip(yr).for_each(|(dj, &yj)| *dj -= yj.exp() * s);
        });
        Ok(vec![d])
    }
}

/// `x - logsumexp(x)` along the last dimension.
pub fn log_softmax(x: &Tensor) -> Result<Tensor> {
    let n = super::last_dim("log_softmax", x)?;
    let mut o = run_cpu("log_softmax", &Fwd(n), &[x])?;
    let y = output(o.remove(0), x.shape(), x.dtype());
    let saved = y.detach();
    Ok(y.track(&[x], || Arc::new(LogSoftmaxBackward { x: x.clone(), y: saved })))
}

struct LogSoftmaxBackward {
    x: Tensor,
    y: Tensor,
}
impl Backward for LogSoftmaxBackward {
    fn name(&self) -> &'static str {
        "log_softmax"
    }
    fn inputs(&self) -> Vec<Tensor> {
        vec![self.x.clone()]
    }
    fn backward(&self, g: &Tensor, _: &mut GradStore) -> Result<Vec<Option<Tensor>>> {
        let mut o = run_cpu("log_softmax_bwd", &Bwd(self.x.dim(-1)), &[&self.y, g])?;
        Ok(vec![Some(output(o.remove(0), self.x.shape(), self.x.dtype()))])
    }
}
