//! Elementwise ops and full reductions: add, mul, scale, cast, sum.

use super::dense;
use super::{output, run_cpu, same_dtype, same_shape, CpuKernel};
use crate::autograd::{Backward, GradStore};
use crate::cuda::{self, CudaBuf, CudaStorage};
use crate::storage::{CpuStorage, StorageElem};
use crate::tensor::Storage;
use crate::{DType, Device, Error, Real, Result, Tensor};
use kernels_cuda::ops::elementwise as kernels;
use rayon::prelude::*;
use std::sync::Arc;

struct Binary(BinOp);
#[derive(Clone, Copy)]
enum BinOp {
    Add,
    Mul,
}

impl CpuKernel for Binary {
    fn run<T: Real + StorageElem>(&self, x: &[&[T]]) -> Result<Vec<Vec<T>>> {
        let out = match self.0 {
            BinOp::Add => x[0].par_iter().zip(x[1]).map(|(&a, &b)| a + b).collect(),
            BinOp::Mul => x[0].par_iter().zip(x[1]).map(|(&a, &b)| a * b).collect(),
        };
        Ok(vec![out])
    }
}

fn binary(op: &'static str, kind: BinOp, a: &Tensor, b: &Tensor) -> Result<Tensor> {
    same_shape(op, a, b)?;
    same_dtype(op, a, b)?;
    a.check_same_device(b, op)?;
    if let (Device::Cuda(_), BinOp::Add) = (a.device(), kind) {
        return add_cuda(a, b);
    }
    let mut outs = run_cpu(op, &Binary(kind), &[a, b])?;
    Ok(output(outs.remove(0), a.shape(), a.dtype()))
}

fn add_cuda(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    let (a, b) = (dense(a)?, dense(b)?);
    let (ga, gb) = (a.storage(), b.storage());
    let (Storage::Cuda(sa), Storage::Cuda(sb)) = (&*ga, &*gb) else { unreachable!("device checked") };
    let mut out = CudaStorage::uninit(sa.dtype(), a.elem_count(), &sa.dev)?;
    let g = &sa.dev.gpu;
    match (&sa.buf, &sb.buf, &mut out.buf) {
        (CudaBuf::F32(x), CudaBuf::F32(y), CudaBuf::F32(z)) => kernels::add(g, x, y, z),
        (CudaBuf::BF16(x), CudaBuf::BF16(y), CudaBuf::BF16(z)) => kernels::add(g, x, y, z),
        _ => return Err(Error::DType { op: "add (cuda)", dtype: a.dtype() }),
    }
    .map_err(|e| cuda::err("add", e))?;
    Ok(Tensor::from_storage(Storage::Cuda(out), a.shape()))
}

/// `a + b` (same shape and dtype).
pub fn add(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    let out = binary("add", BinOp::Add, a, b)?;
    Ok(out.track(&[a, b], || Arc::new(AddBackward { a: a.clone(), b: b.clone() })))
}

struct AddBackward {
    a: Tensor,
    b: Tensor,
}
impl Backward for AddBackward {
    fn name(&self) -> &'static str {
        "add"
    }
    fn inputs(&self) -> Vec<Tensor> {
        vec![self.a.clone(), self.b.clone()]
    }
    fn backward(&self, g: &Tensor, _: &mut GradStore) -> Result<Vec<Option<Tensor>>> {
        Ok(vec![Some(g.clone()), Some(g.clone())])
    }
}

/// `a * b` elementwise (same shape and dtype).
pub fn mul(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    let out = binary("mul", BinOp::Mul, a, b)?;
    Ok(out.track(&[a, b], || Arc::new(MulBackward { a: a.clone(), b: b.clone() })))
}

struct MulBackward {
    a: Tensor,
    b: Tensor,
}
impl Backward for MulBackward {
    fn name(&self) -> &'static str {
        "mul"
    }
    fn inputs(&self) -> Vec<Tensor> {
        vec![self.a.clone(), self.b.clone()]
    }
    fn backward(&self, g: &Tensor, _: &mut GradStore) -> Result<Vec<Option<Tensor>>> {
        let ga = self.a.requires_grad().then(|| mul(g, &self.b)).transpose()?;
        let gb = self.b.requires_grad().then(|| mul(g, &self.a)).transpose()?;
        Ok(vec![ga, gb])
    }
}

struct Scale(f64);
impl CpuKernel for Scale {
    fn run<T: Real + StorageElem>(&self, x: &[&[T]]) -> Result<Vec<Vec<T>>> {
        let s = T::from_f64(self.0);
        Ok(vec![x[0].par_iter().map(|&v| v * s).collect()])
    }
}

/// `x * s` for a constant `s`.
pub fn scale(x: &Tensor, s: f64) -> Result<Tensor> {
    let out = if x.device().is_cpu() {
        let mut outs = run_cpu("scale", &Scale(s), &[x])?;
        output(outs.remove(0), x.shape(), x.dtype())
    } else {
        let x = dense(x)?;
        let gx = x.cuda_storage()?;
        let sx = cuda::cs(&gx);
        let mut out = CudaStorage::uninit(sx.dtype(), x.elem_count(), &sx.dev)?;
        let r =
            cuda::cuda_float!("scale"; a = &sx.buf, o = &mut out.buf => kernels::scale(&sx.dev.gpu, a, s as f32, o));
        r.map_err(|e| cuda::err("scale", e))?;
        cuda::tensor(out, x.shape())
    };
    Ok(out.track(&[x], || Arc::new(ScaleBackward { x: x.clone(), s })))
}

struct ScaleBackward {
    x: Tensor,
    s: f64,
}
impl Backward for ScaleBackward {
    fn name(&self) -> &'static str {
        "scale"
    }
    fn inputs(&self) -> Vec<Tensor> {
        vec![self.x.clone()]
    }
    fn backward(&self, g: &Tensor, _: &mut GradStore) -> Result<Vec<Option<Tensor>>> {
        Ok(vec![Some(scale(g, self.s)?)])
    }
}

/// `x` converted to `dtype` (rounding to nearest); the gradient is cast back.
pub fn cast(x: &Tensor, dtype: DType) -> Result<Tensor> {
    if x.dtype() == dtype {
        return Ok(x.clone());
    }
    let out = if x.device().is_cpu() {
        let values: Vec<f64> = x.to_vec()?;
        Tensor::from_cpu(CpuStorage::from_compute(values, dtype), x.shape())
    } else {
        cast_cuda(x, dtype)?
    };
    Ok(out.track(&[x], || Arc::new(CastBackward { x: x.clone() })))
}

fn cast_cuda(x: &Tensor, dtype: DType) -> Result<Tensor> {
    let x = dense(x)?;
    let gx = x.storage();
    let Storage::Cuda(sx) = &*gx else { unreachable!("cuda tensor") };
    let mut out = CudaStorage::uninit(dtype, x.elem_count(), &sx.dev)?;
    let g = &sx.dev.gpu;
    match (&sx.buf, &mut out.buf) {
        (CudaBuf::F32(a), CudaBuf::BF16(b)) => kernels::cast_f32_to_bf16(g, a, b),
        (CudaBuf::BF16(a), CudaBuf::F32(b)) => kernels::cast_bf16_to_f32(g, a, b),
        _ => {
            return Err(Error::Msg(format!(
                "cast on CUDA from {} to {} has no kernel yet (f32 <-> bf16 only)",
                x.dtype().name(),
                dtype.name()
            )))
        }
    }
    .map_err(|e| cuda::err("cast", e))?;
    Ok(Tensor::from_storage(Storage::Cuda(out), x.shape()))
}

struct CastBackward {
    x: Tensor,
}
impl Backward for CastBackward {
    fn name(&self) -> &'static str {
        "cast"
    }
    fn inputs(&self) -> Vec<Tensor> {
        vec![self.x.clone()]
    }
    fn backward(&self, g: &Tensor, _: &mut GradStore) -> Result<Vec<Option<Tensor>>> {
        Ok(vec![Some(cast(g, self.x.dtype())?)])
    }
}

/// A tensor shaped like `like`, every element `v`, on its device.
fn filled(like: &Tensor, v: f64) -> Result<Tensor> {
    if v == 0.0 {
        return Tensor::zeros(like.shape(), like.dtype(), like.device());
    }
    let n = like.elem_count();
    Tensor::from_cpu(CpuStorage::from_compute(vec![v; n], like.dtype()), like.shape()).to_device(like.device())
}

pub fn ones_like(x: &Tensor) -> Result<Tensor> {
    filled(x, 1.0)
}

pub fn zeros_like(x: &Tensor) -> Result<Tensor> {
    filled(x, 0.0)
}

struct SumAll;
impl CpuKernel for SumAll {
    fn run<T: Real + StorageElem>(&self, x: &[&[T]]) -> Result<Vec<Vec<T>>> {
        // Chunked partial sums keep f32 accumulation error small and parallel.
        let s = x[0].par_chunks(4096).map(|c| c.iter().copied().sum::<T>()).collect::<Vec<T>>();
        Ok(vec![vec![s.into_iter().sum()]])
    }
}

/// Sum of all elements, as a scalar tensor (shape `[]`).
pub fn sum_all(x: &Tensor) -> Result<Tensor> {
    let mut outs = run_cpu("sum_all", &SumAll, &[x])?;
    let out = output(outs.remove(0), &[], x.dtype());
    Ok(out.track(&[x], || Arc::new(SumBackward { x: x.clone() })))
}

struct SumBackward {
    x: Tensor,
}
impl Backward for SumBackward {
    fn name(&self) -> &'static str {
        "sum_all"
    }
    fn inputs(&self) -> Vec<Tensor> {
        vec![self.x.clone()]
    }
    fn backward(&self, g: &Tensor, _: &mut GradStore) -> Result<Vec<Option<Tensor>>> {
        let g = g.to_scalar::<f64>()?;
        Ok(vec![Some(filled(&self.x, g)?)])
    }
}
