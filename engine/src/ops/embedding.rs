//! Embedding lookup: rows of a table gathered by token id; backward scatter-adds.

use super::dense;
use super::{output, run_cpu, CpuKernel};
use crate::autograd::{Backward, GradStore};
use crate::cuda::{self, CudaBuf, CudaStorage};
use crate::storage::StorageElem;
use crate::{DType, Error, Real, Result, Tensor};
use kernels_cuda::ops::embedding as kernels;
use rayon::prelude::*;
use std::sync::Arc;

struct Gather<'a> {
    ids: &'a [u32],
    h: usize,
}
impl CpuKernel for Gather<'_> {
    fn run<T: Real + StorageElem>(&self, i: &[&[T]]) -> Result<Vec<Vec<T>>> {
        let (table, h) = (i[0], self.h);
        let mut out = vec![T::ZERO; self.ids.len() * h];
        out.par_chunks_mut(h.max(1)).zip(self.ids).for_each(|(o, &id)| {
            o.copy_from_slice(&table[id as usize * h..(id as usize + 1) * h]);
        });
        Ok(vec![out])
    }
}

struct Scatter<'a> {
    ids: &'a [u32],
    rows: usize,
    h: usize,
}
impl CpuKernel for Scatter<'_> {
    fn run<T: Real + StorageElem>(&self, i: &[&[T]]) -> Result<Vec<Vec<T>>> {
        let g = i[0];
        let h = self.h;
        let mut d = vec![T::ZERO; self.rows * h];
        for (t, &id) in self.ids.iter().enumerate() {
            for j in 0..h {
                d[id as usize * h + j] += g[t * h + j];
            }
        }
        Ok(vec![d])
    }
}

/// Rows of `table: [vocab, h]` for `ids` (u32, any shape): result `[..ids.shape, h]`.
pub fn embedding(ids: &Tensor, table: &Tensor) -> Result<Tensor> {
    ids.check_dtype::<u32>("embedding ids")?;
    if table.rank() != 2 {
        return Err(Error::shape("embedding", format!("table must be 2-D, got {:?}", table.shape())));
    }
    let (vocab, h) = (table.dim(0), table.dim(1));
    let idv: Vec<u32> = ids.to_vec()?;
    if let Some(bad) = idv.iter().find(|&&i| i as usize >= vocab) {
        return Err(Error::shape("embedding", format!("token id {bad} outside the vocabulary (0..{vocab})")));
    }
    let mut shape = ids.shape().to_vec();
    shape.push(h);
    let out = if table.device().is_cpu() {
        let mut o = run_cpu("embedding", &Gather { ids: &idv, h }, &[table])?;
        output(o.remove(0), &shape, table.dtype())
    } else {
        cuda_fwd(&idv, table, &shape)?
    };
    Ok(out.track(&[table], || Arc::new(EmbeddingBackward { table: table.clone(), ids: idv })))
}

struct EmbeddingBackward {
    table: Tensor,
    ids: Vec<u32>,
}
impl Backward for EmbeddingBackward {
    fn name(&self) -> &'static str {
        "embedding"
    }
    fn inputs(&self) -> Vec<Tensor> {
        vec![self.table.clone()]
    }
    fn backward(&self, g: &Tensor, _: &mut GradStore) -> Result<Vec<Option<Tensor>>> {
        let (rows, h) = (self.table.dim(0), self.table.dim(1));
        if !g.device().is_cpu() {
            return Ok(vec![Some(cuda_bwd(&self.ids, &self.table, g)?)]);
        }
        let mut o = run_cpu("embedding_bwd", &Scatter { ids: &self.ids, rows, h }, &[g])?;
        Ok(vec![Some(output(o.remove(0), self.table.shape(), self.table.dtype()))])
    }
}

fn cuda_fwd(ids: &[u32], table: &Tensor, shape: &[usize]) -> Result<Tensor> {
    let table = dense(table)?;
    let gt = table.cuda_storage()?;
    let st = cuda::cs(&gt);
    let (vocab, h) = (table.dim(0), table.dim(1));
    let dev_ids = cuda::upload(&st.dev, ids)?;
    let mut out = CudaStorage::uninit(st.dtype(), ids.len() * h, &st.dev)?;
    let r = cuda::cuda_float!("embedding"; t = &st.buf, o = &mut out.buf
        => kernels::embedding_fwd(&st.dev.gpu, &dev_ids, t, o, vocab, h));
    r.map_err(|e| cuda::err("embedding", e))?;
    Ok(cuda::tensor(out, shape))
}

/// Scatter-adds `g` into an f32 gradient table, then casts it to the table's dtype.
fn cuda_bwd(ids: &[u32], table: &Tensor, g: &Tensor) -> Result<Tensor> {
    let g = dense(g)?;
    let gg = g.cuda_storage()?;
    let sg = cuda::cs(&gg);
    let (vocab, h) = (table.dim(0), table.dim(1));
    let dev_ids = cuda::upload(&sg.dev, ids)?;
    let mut dtable = CudaStorage::zeros(DType::F32, vocab * h, &sg.dev)?;
    let CudaBuf::F32(d) = &mut dtable.buf else { unreachable!("allocated as f32") };
    let r = cuda::cuda_float!("embedding backward"; x = &sg.buf => kernels::embedding_bwd(&sg.dev.gpu, &dev_ids, x, d, vocab, h));
    r.map_err(|e| cuda::err("embedding backward", e))?;
    super::cast(&cuda::tensor(dtable, table.shape()), table.dtype())
}
