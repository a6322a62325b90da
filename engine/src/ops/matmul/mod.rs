//! Matrix products: `matmul` (batched, with a 2-D right operand broadcast over the batch)
//! and `matmul_nt` (`x @ w^T`, the linear layer). CPU: matrixmultiply's blocked, packed
//! GEMM (strided operands, so transposed views are read without copying), batches in
//! parallel with rayon.

use super::{reshape, same_dtype, transpose};
use crate::autograd::{Backward, GradStore};
use crate::storage::{CpuStorage, StorageElem};
use crate::tensor::Storage;
use crate::{DType, Error, Real, Result, Tensor};

mod cublas;
use rayon::prelude::*;
use std::borrow::Cow;
use std::sync::Arc;

/// `a @ b` for `a: [..., m, k]` and `b: [..., k, n]` (same batch dims) or `b: [k, n]`.
pub fn matmul(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    same_dtype("matmul", a, b)?;
    if !a.dtype().is_float() {
        return Err(Error::DType { op: "matmul", dtype: a.dtype() });
    }
    a.check_same_device(b, "matmul")?;
    let (ra, rb) = (a.rank(), b.rank());
    if ra < 2 || rb < 2 {
        return Err(Error::shape(
            "matmul",
            format!("operands must be at least 2-D: {:?} @ {:?}", a.shape(), b.shape()),
        ));
    }
    let (m, k) = (a.shape()[ra - 2], a.shape()[ra - 1]);
    let (k2, n) = (b.shape()[rb - 2], b.shape()[rb - 1]);
    let batch_a = &a.shape()[..ra - 2];
    let batch_b = &b.shape()[..rb - 2];
    if k != k2 || !(batch_b.is_empty() || batch_b == batch_a) {
        return Err(Error::shape("matmul", format!("{:?} @ {:?}", a.shape(), b.shape())));
    }
    let batch: usize = batch_a.iter().product();
    let mut out_shape = batch_a.to_vec();
    out_shape.extend([m, n]);
    let dims = Dims { batch, m, k, n, b_batched: !batch_b.is_empty() };
    let out = if a.device().is_cpu() {
        let storage = if a.dtype() == DType::F64 {
            CpuStorage::F64(gemm_cpu::<f64>(a, b, &dims))
        } else {
            CpuStorage::F32(gemm_cpu::<f32>(a, b, &dims))
        };
        super::output(storage, &out_shape, a.dtype())
    } else {
        Tensor::from_storage(Storage::Cuda(cublas::gemm(a, b, &dims)?), &out_shape)
    };
    Ok(out.track(&[a, b], || Arc::new(MatmulBackward { a: a.clone(), b: b.clone() })))
}

/// `x @ w^T` for `x: [..., k]` and `w: [n, k]` (a linear layer without bias).
pub fn matmul_nt(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    if w.rank() != 2 {
        return Err(Error::shape("matmul_nt", format!("weight must be 2-D, got {:?}", w.shape())));
    }
    let k = super::last_dim("matmul_nt", x)?;
    let lead: Vec<usize> = x.shape()[..x.rank() - 1].to_vec();
    let rows: usize = lead.iter().product();
    let y = matmul(&reshape(x, &[rows, k])?, &transpose(w, 0, 1)?)?;
    let mut shape = lead;
    shape.push(w.shape()[0]);
    reshape(&y, &shape)
}

struct MatmulBackward {
    a: Tensor,
    b: Tensor,
}

impl Backward for MatmulBackward {
    fn name(&self) -> &'static str {
        "matmul"
    }
    fn inputs(&self) -> Vec<Tensor> {
        vec![self.a.clone(), self.b.clone()]
    }
    fn backward(&self, g: &Tensor, _: &mut GradStore) -> Result<Vec<Option<Tensor>>> {
        let (a, b) = (&self.a, &self.b);
        let (ra, rb) = (a.rank(), b.rank());
        let ga = a.requires_grad().then(|| matmul(g, &transpose(b, rb - 2, rb - 1)?)).transpose()?;
        let gb = if !b.requires_grad() {
            None
        } else if rb == 2 && ra > 2 {
            // b was broadcast over the batch: sum its gradient over all rows of a.
            let k = a.dim(-1);
            let rows = a.elem_count() / k;
            let a2 = reshape(a, &[rows, k])?;
            let g2 = reshape(g, &[rows, g.dim(-1)])?;
            Some(matmul(&transpose(&a2, 0, 1)?, &g2)?)
        } else {
            Some(matmul(&transpose(a, ra - 2, ra - 1)?, g)?)
        };
        Ok(vec![ga, gb])
    }
}

/// One operand as seen by the GEMM: values and (batch, row, col) strides.
struct Operand<'a, T: Clone> {
    data: Cow<'a, [T]>,
    offset: usize,
    batch_stride: usize,
    rs: isize,
    cs: isize,
}

fn operand<'a, T: Real + StorageElem>(t: &Tensor, s: &'a CpuStorage) -> Operand<'a, T> {
    let l = t.layout();
    let r = t.rank();
    let st = l.strides();
    // Batch dims must flatten to one stride; otherwise copy to row-major.
    let flat_batch = (0..r - 2).all(|i| i + 1 >= r - 2 || st[i] == st[i + 1] * t.shape()[i + 1]);
    if let (Some(raw), true) = (T::slice(s), flat_batch) {
        return Operand {
            data: Cow::Borrowed(raw),
            offset: l.offset(),
            batch_stride: if r > 2 { st[r - 3] } else { 0 },
            rs: st[r - 2] as isize,
            cs: st[r - 1] as isize,
        };
    }
    let (rows, cols) = (t.shape()[r - 2], t.shape()[r - 1]);
    Operand { data: Cow::Owned(s.gather(l)), offset: 0, batch_stride: rows * cols, rs: cols as isize, cs: 1 }
}

/// f32/f64 GEMM entry points of matrixmultiply.
pub(crate) trait Gemm: Real + StorageElem {
    #[allow(clippy::too_many_arguments)]
    unsafe fn gemm(
        m: usize,
        k: usize,
        n: usize,
        a: *const Self,
        rsa: isize,
        csa: isize,
        b: *const Self,
        rsb: isize,
        csb: isize,
        c: *mut Self,
        rsc: isize,
        csc: isize,
    );
}
impl Gemm for f32 {
    unsafe fn gemm(
        m: usize,
        k: usize,
        n: usize,
        a: *const f32,
        rsa: isize,
        csa: isize,
        b: *const f32,
        rsb: isize,
        csb: isize,
        c: *mut f32,
        rsc: isize,
        csc: isize,
    ) {
        matrixmultiply::sgemm(m, k, n, 1.0, a, rsa, csa, b, rsb, csb, 0.0, c, rsc, csc)
    }
}
impl Gemm for f64 {
    unsafe fn gemm(
        m: usize,
        k: usize,
        n: usize,
        a: *const f64,
        rsa: isize,
        csa: isize,
        b: *const f64,
        rsb: isize,
        csb: isize,
        c: *mut f64,
        rsc: isize,
        csc: isize,
    ) {
        matrixmultiply::dgemm(m, k, n, 1.0, a, rsa, csa, b, rsb, csb, 0.0, c, rsc, csc)
    }
}

/// Sizes of a (batched) product `[batch, m, k] @ [batch or 1, k, n]`.
pub(crate) struct Dims {
    pub batch: usize,
    pub m: usize,
    pub k: usize,
    pub n: usize,
    /// Whether `b` has the batch dimension (else it is shared by every batch entry).
    pub b_batched: bool,
}

fn gemm_cpu<T: Gemm>(a: &Tensor, b: &Tensor, d: &Dims) -> Vec<T> {
    let (batch, m, k, n, b_batched) = (d.batch, d.m, d.k, d.n, d.b_batched);
    let ga = a.storage();
    let gb = b.storage();
    let (Storage::Cpu(sa), Storage::Cpu(sb)) = (&*ga, &*gb) else {
        unreachable!("matmul dispatches device storage to cuBLAS")
    };
    let oa = operand::<T>(a, sa);
    let ob = operand::<T>(b, sb);
    let mut out = vec![T::ZERO; batch * m * n];
    if batch == 1 && m <= GEMV_MAX_ROWS && oa.cs == 1 && ob.rs == 1 {
        gemv_rows(&oa, &ob, m, k, n, &mut out);
        return out;
    }
    out.par_chunks_mut((m * n).max(1)).enumerate().for_each(|(i, c)| {
        let pa = oa.offset + i * oa.batch_stride;
        let pb = ob.offset + if b_batched { i * ob.batch_stride } else { 0 };
        // SAFETY: strides and offsets come from the tensors' own layouts, which were
        // checked against the storage length when the views were made.
        unsafe {
            T::gemm(
                m,
                k,
                n,
                oa.data.as_ptr().add(pa),
                oa.rs,
                oa.cs,
                ob.data.as_ptr().add(pb),
                ob.rs,
                ob.cs,
                c.as_mut_ptr(),
                n as isize,
                1,
            );
        }
    });
    out
}

/// Up to this many rows of `a`, a product with a `b` whose columns are contiguous (a
/// transposed weight, as in every linear layer) runs as dot products: GEMM packing would
/// copy the whole weight for each decoded token.
const GEMV_MAX_ROWS: usize = 4;

fn gemv_rows<T: Gemm>(a: &Operand<T>, b: &Operand<T>, m: usize, k: usize, n: usize, out: &mut [T]) {
    let rows: Vec<&[T]> = (0..m).map(|i| &a.data[a.offset + i * a.rs as usize..][..k]).collect();
    let cols_per_task = 64;
    let mut by_col = vec![T::ZERO; n * m];
    by_col.par_chunks_mut(cols_per_task * m).enumerate().for_each(|(task, chunk)| {
        for (j, o) in chunk.chunks_mut(m).enumerate() {
            let col = task * cols_per_task + j;
            let w = &b.data[b.offset + col * b.cs as usize..][..k];
            for (i, row) in rows.iter().enumerate() {
                o[i] = dot(row, w);
            }
        }
    });
    for col in 0..n {
        for i in 0..m {
            out[i * n + col] = by_col[col * m + i];
        }
    }
}

/// Dot product with eight independent accumulators, so the compiler can vectorize it.
fn dot<T: Real>(x: &[T], y: &[T]) -> T {
    let mut acc = [T::ZERO; 8];
    let (xc, yc) = (x.chunks_exact(8), y.chunks_exact(8));
    let tail: T = xc.remainder().iter().zip(yc.remainder()).map(|(&p, &q)| p * q).sum();
    for (p, q) in xc.zip(yc) {
        for l in 0..8 {
            acc[l] += p[l] * q[l];
        }
    }
    acc.into_iter().sum::<T>() + tail
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    /// The dot-product path (few rows, transposed weight) equals a naive f64 product.
    #[test]
    fn gemv_path_matches_naive() {
        let mut rng = Rng::new(3);
        for (m, k, n) in [(1, 1, 1), (1, 13, 7), (3, 67, 130), (4, 9, 65), (5, 17, 3)] {
            let a = rng.normal_vec(m * k, 1.0);
            let w = rng.normal_vec(n * k, 1.0);
            let x = Tensor::from_vec(a.clone(), &[m, k]).unwrap();
            let wt = Tensor::from_vec(w.clone(), &[n, k]).unwrap();
            let y = matmul_nt(&x, &wt).unwrap().to_vec_f32().unwrap();
            for i in 0..m {
                for j in 0..n {
                    let r: f64 = (0..k).map(|p| a[i * k + p] as f64 * w[j * k + p] as f64).sum();
                    assert!((y[i * n + j] as f64 - r).abs() < 1e-4 * (1.0 + r.abs()), "{m}x{k}x{n} at {i},{j}");
                }
            }
        }
    }
}
