//! `x @ W^T` with a frozen NF4 weight. Gradients flow to `x` only (`dx = g @ W`): the
//! base weight of QLoRA is never trained. The CPU reference dequantizes the weight into
//! a temporary of `x`'s dtype and runs the dense GEMM.

use super::{cast, matmul, matmul_nt};
use crate::autograd::{Backward, GradStore};
use crate::quant::nf4::Nf4Weight;
use crate::{autograd, Error, Result, Tensor};
use std::sync::Arc;

fn dense(w: &Nf4Weight, like: &Tensor) -> Result<Tensor> {
    let (rows, cols) = w.rows_cols();
    cast(&Tensor::from_vec(w.dequantize(), &[rows, cols])?, like.dtype())
}

/// `x @ W^T` for `x: [..., in]` and an NF4 weight of shape `[out, in]`.
pub fn nf4_matmul_nt(x: &Tensor, w: &Arc<Nf4Weight>) -> Result<Tensor> {
    let (_, cols) = w.rows_cols();
    if super::last_dim("nf4_matmul", x)? != cols {
        return Err(Error::shape("nf4_matmul", format!("input {:?} for an NF4 weight {:?}", x.shape(), w.shape())));
    }
    let y = {
        let _g = autograd::no_grad();
        matmul_nt(&x.detach(), &dense(w, x)?)?
    };
    Ok(y.track(&[x], || Arc::new(Nf4MatmulBackward { x: x.clone(), w: w.clone() })))
}

struct Nf4MatmulBackward {
    x: Tensor,
    w: Arc<Nf4Weight>,
}
impl Backward for Nf4MatmulBackward {
    fn name(&self) -> &'static str {
        "nf4_matmul"
    }
    fn inputs(&self) -> Vec<Tensor> {
        vec![self.x.clone()]
    }
    fn backward(&self, g: &Tensor, _: &mut GradStore) -> Result<Vec<Option<Tensor>>> {
        let w = dense(&self.w, g)?;
        let lead = &g.shape()[..g.rank() - 1];
        let rows: usize = lead.iter().product();
        let g2 = super::reshape(g, &[rows, g.dim(-1)])?;
        let dx = matmul(&g2, &w)?;
        Ok(vec![Some(super::reshape(&dx, self.x.shape())?)])
    }
}
