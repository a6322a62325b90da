//! RMSNorm over the last dimension: `y = x / sqrt(mean(x^2) + eps) * w`.
//! Forward saves only `1/rms` per row; backward computes `dx`, and `dw` only when the
//! weight requires grad (it is frozen in LoRA training).

use super::dense;
use super::{output, run_cpu, same_dtype, CpuKernel};
use crate::autograd::{Backward, GradStore};
use crate::cuda::{self, CudaBuf, CudaStorage};
use crate::storage::StorageElem;
use crate::tensor::Storage;
use crate::{DType, Error, Real, Result, Tensor};
use kernels_cuda::ops::rms_norm as kernels;
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
    let rows = x.elem_count() / h;
    let (y, rstd) = if x.device().is_cpu() {
        let mut o = run_cpu("rms_norm", &Fwd { h, eps }, &[x, w])?;
        let rstd = output(o.remove(1), &[rows], x.dtype().compute());
        (output(o.remove(0), x.shape(), x.dtype()), rstd)
    } else {
        cuda_fwd(x, w, rows, h, eps)?
    };
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
        if !self.x.device().is_cpu() {
            if self.w.requires_grad() {
                return Err(Error::Msg("rms_norm on CUDA computes dx only; its weight must be frozen".into()));
            }
            return Ok(vec![Some(cuda_bwd(&self.x, &self.w, &self.rstd, g, h)?), None]);
        }
        let rstd = super::cast(&self.rstd, self.x.dtype().compute())?;
        let mut o = run_cpu("rms_norm_bwd", &Bwd { h }, &[&self.x, &self.w, &rstd, g])?;
        let dw = self.w.requires_grad().then(|| output(o.remove(1), &[h], self.w.dtype()));
        let dx = output(o.remove(0), self.x.shape(), self.x.dtype());
        Ok(vec![Some(dx), dw])
    }
}

/// Forward on the GPU: `(y, rstd)` with rstd in f32.
fn cuda_fwd(x: &Tensor, w: &Tensor, rows: usize, h: usize, eps: f64) -> Result<(Tensor, Tensor)> {
    let (x, w) = (dense(x)?, dense(w)?);
    let (gx, gw) = (x.storage(), w.storage());
    let (Storage::Cuda(sx), Storage::Cuda(sw)) = (&*gx, &*gw) else {
        return Err(Error::DeviceMismatch { op: "rms_norm", a: x.device(), b: w.device() });
    };
    let mut y = CudaStorage::uninit(sx.dtype(), x.elem_count(), &sx.dev)?;
    let mut rstd = CudaStorage::uninit(DType::F32, rows, &sx.dev)?;
    let (g, eps) = (&sx.dev.gpu, eps as f32);
    let CudaBuf::F32(r) = &mut rstd.buf else { unreachable!("allocated as f32") };
    match (&sx.buf, &sw.buf, &mut y.buf) {
        (CudaBuf::F32(a), CudaBuf::F32(b), CudaBuf::F32(c)) => kernels::rms_norm_fwd(g, a, b, c, r, rows, h, eps),
        (CudaBuf::BF16(a), CudaBuf::BF16(b), CudaBuf::BF16(c)) => kernels::rms_norm_fwd(g, a, b, c, r, rows, h, eps),
        _ => return Err(Error::DType { op: "rms_norm (cuda)", dtype: x.dtype() }),
    }
    .map_err(|e| cuda::err("rms_norm", e))?;
    Ok((Tensor::from_storage(Storage::Cuda(y), x.shape()), Tensor::from_storage(Storage::Cuda(rstd), &[rows])))
}

/// Backward on the GPU: `dx` only.
fn cuda_bwd(x: &Tensor, w: &Tensor, rstd: &Tensor, dy: &Tensor, h: usize) -> Result<Tensor> {
    let (x, w, dy) = (dense(x)?, dense(w)?, dense(dy)?);
    let (gx, gw, gr, gd) = (x.storage(), w.storage(), rstd.storage(), dy.storage());
    let (Storage::Cuda(sx), Storage::Cuda(sw), Storage::Cuda(sr), Storage::Cuda(sd)) = (&*gx, &*gw, &*gr, &*gd) else {
        return Err(Error::Msg("rms_norm backward: every tensor must be on the GPU".into()));
    };
    let CudaBuf::F32(r) = &sr.buf else { unreachable!("rstd is f32") };
    let rows = x.elem_count() / h;
    let mut dx = CudaStorage::uninit(sx.dtype(), x.elem_count(), &sx.dev)?;
    let g = &sx.dev.gpu;
    match (&sx.buf, &sw.buf, &sd.buf, &mut dx.buf) {
        (CudaBuf::F32(a), CudaBuf::F32(b), CudaBuf::F32(d), CudaBuf::F32(o)) => {
            kernels::rms_norm_bwd(g, a, b, r, d, o, rows, h)
        }
        (CudaBuf::BF16(a), CudaBuf::BF16(b), CudaBuf::BF16(d), CudaBuf::BF16(o)) => {
            kernels::rms_norm_bwd(g, a, b, r, d, o, rows, h)
        }
        _ => return Err(Error::DType { op: "rms_norm backward (cuda)", dtype: x.dtype() }),
    }
    .map_err(|e| cuda::err("rms_norm backward", e))?;
    Ok(Tensor::from_storage(Storage::Cuda(dx), x.shape()))
}
