//! RMSNorm over the last dimension: `y = x / sqrt(mean(x^2) + eps) * w`.
//! Forward saves only `1/rms` per row; backward computes `dx`, and `dw` only when the
//! weight requires grad (it is frozen in LoRA training).

use super::{output, run_cpu, same_dtype, CpuKernel};
use crate::autograd::{Backward, GradStore};
use crate::storage::StorageElem;
use crate::{Error, Real, Result, Tensor};
use rayon::prelude::*;
use std::sync::Arc;


struct Fwd {
    h: usize,
    eps: f64,
}
impl CpuKernel for Fwd {
    fn run<T: Real + StorageElem>(&self, i: &[&[T]]) -> Result<Vec<Vec<T>>> {
        let (x, w, h) = (i[0], i[1], self.h);
        let rows = x.len() / h;
        let mut y = vec![T::ZERO; x.len()];
        let mut rstd = vec![T::ZERO; rows];
        y.par_chunks_mut(h).zip(rstd.par_iter_mut()).enumerate().for_each(|(r, (yr, rs))| {
            let xr = &x[r * h..(r + 1) * h];
            let ms = xr.iter().map(|&v| v * v).sum::<T>() / T::from_f64(h as f64);
            *rs = T::ONE / (ms + T::from_f64(self.eps)).sqrt();
            for j in 0..h {
                yr[j] = xr[j] * *rs * w[j];
            }
        });
        Ok(vec![y, rstd])
    }
}

struct Bwd {
    h: usize,
}
impl CpuKernel for Bwd {
    fn run<T: Real + StorageElem>(&self, i: &[&[T]]) -> Result<Vec<Vec<T>>> {
        let (x, w, rstd, g, h) = (i[0], i[1], i[2], i[3], self.h);
        let mut dx = vec![T::ZERO; x.len()];
        dx.par_chunks_mut(h).enumerate().for_each(|(r, dxr)| {
            let (xr, gr, rs) = (&x[r * h..(r + 1) * h], &g[r * h..(r + 1) * h], rstd[r]);
            let dot = (0..h).map(|j| gr[j] * w[j] * xr[j]).sum::<T>();
            let c = rs * rs * rs * dot / T::from_f64(h as f64);
            for j in 0..h {
                dxr[j] = rs * gr[j] * w[j] - xr[j] * c;
            }
        });
        let rows = rstd.len();
        let dw = (0..h)
            .into_par_iter()
            .map(|j| (0..rows).map(|r| g[r * h + j] * x[r * h + j] * rstd[r]).sum::<T>())
            .collect();
        Ok(vec![dx, dw])
    }
}

/// RMSNorm of `x: [..., h]` with weight `w: [h]`.
pub fn rms_norm(x: &Tensor, w: &Tensor, eps: f64) -> Result<Tensor> {
    same_dtype("rms_norm", x, w)?;
    let h = super::last_dim("rms_norm", x)?;
    if w.shape() != [h] {
        return Err(Error::shape("rms_norm", format!("weight {:?} for input {:?}", w.shape(), x.shape())));
    }
    let mut o = run_cpu("rms_norm", &Fwd { h, eps }, &[x, w])?;
    let rows = x.elem_count() / h.max(1);
    let rstd = output(o.remove(1), &[rows], x.dtype().compute());
    let y = output(o.remove(0), x.shape(), x.dtype());
    Ok(y.track(&[x, w], || Arc::new(RmsNormBackward { x: x.clone(), w: w.clone(), rstd })))
}

struct RmsNormBackward {
    x: Tensor,
    w: Tensor,
    rstd: Tensor,
}
impl Backward for RmsNormBackward {
    fn name(&self) -> &'static str {
        "rms_norm"
    }
    fn inputs(&self) -> Vec<Tensor> {
        vec![self.x.clone(), self.w.clone()]
    }
    fn backward(&self, g: &Tensor, _: &mut GradStore) -> Result<Vec<Option<Tensor>>> {
        let h = self.x.dim(-1);
        let rstd = super::cast(&self.rstd, self.x.dtype().compute())?;
        let mut o = run_cpu("rms_norm_bwd", &Bwd { h }, &[&self.x, &self.w, &rstd, g])?;
        let dw = self.w.requires_grad().then(|| output(o.remove(1), &[h], self.w.dtype()));
        let dx = output(o.remove(0), self.x.shape(), self.x.dtype());
        Ok(vec![Some(dx), dw])
    }
}
