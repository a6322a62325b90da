//! Embedding lookup: rows of a table gathered by token id; backward scatter-adds.

use super::{output, run_cpu, CpuKernel};
use crate::autograd::{Backward, GradStore};
use crate::storage::StorageElem;
use crate::{Error, Real, Result, Tensor};
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
    let mut o = run_cpu("embedding", &Gather { ids: &idv, h }, &[table])?;
    let mut shape = ids.shape().to_vec();
    shape.push(h);
    let out = output(o.remove(0), &shape, table.dtype());
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
        let mut o = run_cpu("embedding_bwd", &Scatter { ids: &self.ids, rows, h }, &[g])?;
        Ok(vec![Some(output(o.remove(0), self.table.shape(), self.table.dtype()))])
    }
}
