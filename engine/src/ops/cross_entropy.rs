//! Cross-entropy of logits against integer labels, mean over the labels that are not
//! [`IGNORE_INDEX`].

use super::dense;
use super::{output, run_cpu, CpuKernel};
use crate::autograd::{Backward, GradStore};
use crate::cuda::{self, CudaBuf, CudaStorage};
use crate::storage::StorageElem;
use crate::tensor::Storage;
use crate::{DType, Error, Real, Result, Tensor};
use kernels_cuda::ops::cross_entropy as kernels;
use rayon::prelude::*;
use std::sync::Arc;

/// Labels equal to this value contribute no loss (PyTorch's convention).
pub const IGNORE_INDEX: i32 = -100;

fn row_lse<T: Real>(row: &[T]) -> T {
    let m = row.iter().copied().fold(T::NEG_INFINITY, T::max);
    m + row.iter().map(|&x| (x - m).exp()).sum::<T>().ln()
}

struct Fwd<'a> {
    labels: &'a [i32],
    count: usize,
}
impl CpuKernel for Fwd<'_> {
    fn run<T: Real + StorageElem>(&self, i: &[&[T]]) -> Result<Vec<Vec<T>>> {
        let v = i[0].len() / self.labels.len();
        // Per-row losses in parallel, summed in a fixed order: the logged loss must not
        // depend on thread scheduling (resumed runs reproduce it bit for bit).
        let rows: Vec<T> = i[0]
            .par_chunks(v)
            .zip(self.labels)
            .map(|(row, &l)| if l == IGNORE_INDEX { T::ZERO } else { row_lse(row) - row[l as usize] })
            .collect();
        let total: T = rows.into_iter().sum();
        Ok(vec![vec![total / T::from_f64(self.count as f64)]])
    }
}

struct Bwd<'a> {
    labels: &'a [i32],
    count: usize,
}
impl CpuKernel for Bwd<'_> {
    fn run<T: Real + StorageElem>(&self, i: &[&[T]]) -> Result<Vec<Vec<T>>> {
        let (logits, g) = (i[0], i[1][0]);
        let v = logits.len() / self.labels.len();
        let c = g / T::from_f64(self.count as f64);
        let mut d = vec![T::ZERO; logits.len()];
        d.par_chunks_mut(v).zip(logits.par_chunks(v)).zip(self.labels).for_each(|((dr, row), &l)| {
            if l == IGNORE_INDEX {
                return;
            }
            let lse = row_lse(row);
            for (dj, &x) in dr.iter_mut().zip(row) {
                *dj = (x - lse).exp() * c;
            }
            dr[l as usize] -= c;
        });
        Ok(vec![d])
    }
}

/// Mean cross-entropy of `logits: [n, vocab]` for `labels: [n]` (i32, may hold -100).
pub fn cross_entropy(logits: &Tensor, labels: &Tensor) -> Result<Tensor> {
    labels.check_dtype::<i32>("cross_entropy labels")?;
    if logits.rank() != 2 || labels.shape() != [logits.dim(0)] {
        return Err(Error::shape("cross_entropy", format!("logits {:?}, labels {:?}", logits.shape(), labels.shape())));
    }
    let lab: Vec<i32> = labels.to_vec()?;
    let vocab = logits.dim(1);
    if let Some(bad) = lab.iter().find(|&&l| l != IGNORE_INDEX && (l < 0 || l as usize >= vocab)) {
        return Err(Error::shape("cross_entropy", format!("label {bad} outside the vocabulary (0..{vocab})")));
    }
    let count = lab.iter().filter(|&&l| l != IGNORE_INDEX).count();
    if count == 0 {
        return Err(Error::Msg("cross_entropy: every label is the ignore index -100".into()));
    }
    let (loss, lse) = if logits.device().is_cpu() {
        let mut o = run_cpu("cross_entropy", &Fwd { labels: &lab, count }, &[logits])?;
        let out_dtype = if logits.dtype() == DType::F64 { DType::F64 } else { DType::F32 };
        (output(o.remove(0), &[], out_dtype), None)
    } else {
        let (loss, lse) = cuda_fwd(logits, &lab, count)?;
        (loss, Some(lse))
    };
    Ok(loss.track(&[logits], || Arc::new(CrossEntropyBackward { logits: logits.clone(), labels: lab, count, lse })))
}

struct CrossEntropyBackward {
    logits: Tensor,
    labels: Vec<i32>,
    count: usize,
    /// Row log-sum-exp from the GPU forward (the CPU backward recomputes it).
    lse: Option<Tensor>,
}
impl Backward for CrossEntropyBackward {
    fn name(&self) -> &'static str {
        "cross_entropy"
    }
    fn inputs(&self) -> Vec<Tensor> {
        vec![self.logits.clone()]
    }
    fn backward(&self, g: &Tensor, _: &mut GradStore) -> Result<Vec<Option<Tensor>>> {
        if let Some(lse) = &self.lse {
            let scale = g.to_scalar::<f32>()? / self.count as f32;
            return Ok(vec![Some(cuda_bwd(&self.logits, &self.labels, lse, scale)?)]);
        }
        let g = super::cast(g, self.logits.dtype().compute())?;
        let k = Bwd { labels: &self.labels, count: self.count };
        let mut o = run_cpu("cross_entropy_bwd", &k, &[&self.logits, &g])?;
        Ok(vec![Some(output(o.remove(0), self.logits.shape(), self.logits.dtype()))])
    }
}

/// GPU forward: the mean loss as a device scalar, and the row log-sum-exp. The per-row losses
/// are summed on the host (one small download per step).
fn cuda_fwd(logits: &Tensor, labels: &[i32], count: usize) -> Result<(Tensor, Tensor)> {
    let logits = dense(logits)?;
    let gl = logits.cuda_storage()?;
    let sl = cuda::cs(&gl);
    let (rows, vocab) = (logits.dim(0), logits.dim(1));
    let dev = &sl.dev;
    let dev_labels = cuda::upload(dev, labels)?;
    let mut loss = CudaStorage::uninit(DType::F32, rows, dev)?;
    let mut lse = CudaStorage::uninit(DType::F32, rows, dev)?;
    let (CudaBuf::F32(lo), CudaBuf::F32(ls)) = (&mut loss.buf, &mut lse.buf) else { unreachable!("allocated as f32") };
    let r = cuda::cuda_float!("cross_entropy"; x = &sl.buf => kernels::cross_entropy_fwd(&dev.gpu, x, &dev_labels, lo, ls, rows, vocab));
    r.map_err(|e| cuda::err("cross_entropy", e))?;
    let per_row = loss.download()?;
    let total: f64 = per_row.gather::<f64>(&crate::Layout::contiguous(&[rows])).iter().sum();
    let mean = Tensor::from_vec(vec![(total / count as f64) as f32], &[])?.to_device(logits.device())?;
    Ok((mean, cuda::tensor(lse, &[rows])))
}

/// GPU backward: `(softmax - onehot) * scale` written over a copy of the logits.
fn cuda_bwd(logits: &Tensor, labels: &[i32], lse: &Tensor, scale: f32) -> Result<Tensor> {
    let d = super::dense_copy(logits)?;
    {
        let (rows, vocab) = (logits.dim(0), logits.dim(1));
        let gl = lse.cuda_storage()?;
        let CudaBuf::F32(l) = &cuda::cs(&gl).buf else { unreachable!("lse is f32") };
        let mut gd = d.storage_mut();
        let Storage::Cuda(sd) = &mut *gd else { unreachable!("copy of a CUDA tensor") };
        let dev = sd.dev.clone();
        let dev_labels = cuda::upload(&dev, labels)?;
        let r = cuda::cuda_float!("cross_entropy backward"; x = &mut sd.buf
            => kernels::cross_entropy_bwd(&dev.gpu, x, &dev_labels, l, scale, rows, vocab));
        r.map_err(|e| cuda::err("cross_entropy backward", e))?;
    }
    Ok(d)
}
