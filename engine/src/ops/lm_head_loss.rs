//! Mean cross-entropy through a frozen LM head, fused in chunks: `loss = CE(h @ w^T, labels)`
//! computed `chunk` rows at a time, so at most `chunk x vocab` logits (and their gradient)
//! exist at once instead of `[tokens x vocab]`. Backward recomputes each chunk's logits and
//! yields `dh` only (the head is frozen in LoRA training).

use super::{contiguous, cross_entropy, matmul, matmul_nt, narrow, IGNORE_INDEX};
use crate::autograd::{self, backward_from, Backward, GradStore};
use crate::{DType, Error, Result, Tensor};
use std::sync::Arc;

/// `h: [n, hidden]`, `w: [vocab, hidden]` (no gradient), `labels: [n]` i32 (-100 ignored).
pub fn lm_head_cross_entropy(h: &Tensor, w: &Tensor, labels: &Tensor, chunk: usize) -> Result<Tensor> {
    if h.rank() != 2 || w.rank() != 2 || h.dim(1) != w.dim(1) || labels.shape() != [h.dim(0)] || chunk == 0 {
        return Err(Error::shape(
            "lm_head_cross_entropy",
            format!("h {:?}, w {:?}, labels {:?}, chunk {chunk}", h.shape(), w.shape(), labels.shape()),
        ));
    }
    if w.requires_grad() {
        return Err(Error::Msg("lm_head_cross_entropy: the LM head must be frozen".into()));
    }
    let lab: Vec<i32> = labels.to_vec()?;
    let count = lab.iter().filter(|&&l| l != IGNORE_INDEX).count();
    if count == 0 {
        return Err(Error::Msg("cross_entropy: every label is the ignore index -100".into()));
    }
    let mut total = 0.0f64;
    {
        let _g = autograd::no_grad();
        for (start, rows, targets) in chunks(&lab, chunk) {
            let logits = matmul_nt(&narrow(&h.detach(), 0, start, rows)?, w)?;
            let mean = cross_entropy(&logits, &chunk_labels(labels, start, rows)?)?;
            total += mean.to_scalar::<f64>()? * targets as f64;
        }
    }
    // f32 like `cross_entropy`, f64 for f64 inputs.
    let mean = total / count as f64;
    let loss = match h.dtype() {
        DType::F64 => Tensor::from_vec(vec![mean], &[])?,
        _ => Tensor::from_vec(vec![mean as f32], &[])?,
    };
    let loss = loss.to_device(h.device())?;
    Ok(loss.track(&[h], || {
        Arc::new(LmHeadLossBackward { h: h.clone(), w: w.clone(), labels: labels.clone(), lab, count, chunk })
    }))
}

/// `(start, rows, targets)` of every chunk that has at least one target.
fn chunks(lab: &[i32], chunk: usize) -> impl Iterator<Item = (usize, usize, usize)> + '_ {
    (0..lab.len()).step_by(chunk).filter_map(move |start| {
        let rows = chunk.min(lab.len() - start);
        let targets = lab[start..start + rows].iter().filter(|&&l| l != IGNORE_INDEX).count();
        (targets > 0).then_some((start, rows, targets))
    })
}

fn chunk_labels(labels: &Tensor, start: usize, rows: usize) -> Result<Tensor> {
    contiguous(&narrow(&labels.detach(), 0, start, rows)?)
}

struct LmHeadLossBackward {
    h: Tensor,
    w: Tensor,
    labels: Tensor,
    lab: Vec<i32>,
    count: usize,
    chunk: usize,
}

impl Backward for LmHeadLossBackward {
    fn name(&self) -> &'static str {
        "lm_head_cross_entropy"
    }
    fn inputs(&self) -> Vec<Tensor> {
        vec![self.h.clone()]
    }
    fn backward(&self, g: &Tensor, _: &mut GradStore) -> Result<Vec<Option<Tensor>>> {
        let g = g.to_scalar::<f64>()?;
        let dh = Tensor::zeros(self.h.shape(), self.h.dtype(), self.h.device())?;
        for (start, rows, targets) in chunks(&self.lab, self.chunk) {
            let logits = {
                let _g = autograd::no_grad();
                matmul_nt(&narrow(&self.h.detach(), 0, start, rows)?, &self.w)?.into_var()
            };
            // This chunk's share of the mean, through the cross-entropy op's own backward
            // (recorded although the outer backward runs with grad off).
            let loss = {
                let _g = autograd::enable_grad();
                cross_entropy(&logits, &chunk_labels(&self.labels, start, rows)?)?
            };
            let seed = Tensor::from_vec(vec![(g * targets as f64 / self.count as f64) as f32], &[])?
                .to_device(loss.device())?;
            let dlogits = backward_from(&loss, &seed)?.remove(&logits).expect("logits are a leaf");
            let _g = autograd::no_grad();
            dh.write_slice(0, start, &matmul(&dlogits, &self.w)?)?;
        }
        Ok(vec![Some(dh)])
    }
}
