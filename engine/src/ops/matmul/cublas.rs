//! The CUDA side of `matmul`: cuBLAS GEMM (strided-batched for batches) with f32
//! accumulation (`CUBLAS_COMPUTE_32F` for bf16/f16 through cudarc's `gemm_ex`).
//!
//! cuBLAS is column-major; a row-major `C = A @ B` is computed as `C^T = B^T @ A^T`. A
//! row-major operand is its own transpose in column-major terms, a column-major one (a
//! transposed view such as `w^T`) is passed with `op = T`, so neither is copied.

use super::Dims;
use crate::cuda::{drv, CudaBuf, CudaStorage};
use crate::ops::contiguous;
use crate::tensor::Storage;
use crate::{Error, Result, Tensor};
use kernels_cuda::cudarc::cublas::{sys::cublasOperation_t, Gemm, GemmConfig, StridedBatchedConfig};
use kernels_cuda::cudarc::driver::{CudaSlice, DeviceRepr, ValidAsZeroBits};

/// How cuBLAS sees one operand: transpose flag, leading dimension, offset, batch stride.
struct Operand {
    t: Tensor,
    op: cublasOperation_t,
    ld: usize,
    offset: usize,
    batch_stride: usize,
}

/// `t: [.., rows, cols]` as the column-major `cols x rows` matrix cuBLAS multiplies (its
/// transpose), copied to contiguous first when its layout does not allow that.
fn operand(t: &Tensor) -> Result<Operand> {
    let fits = |t: &Tensor| -> Option<Operand> {
        let r = t.rank();
        let (rows, cols) = (t.shape()[r - 2], t.shape()[r - 1]);
        let st = t.layout().strides();
        let (rs, cs) = (st[r - 2], st[r - 1]);
        let flat_batch = (0..r.saturating_sub(3)).all(|i| st[i] == st[i + 1] * t.shape()[i + 1]);
        let batch_stride = if r > 2 { st[r - 3] } else { 0 };
        let (op, ld) = if cs == 1 && rs >= cols.max(1) {
            (cublasOperation_t::CUBLAS_OP_N, rs)
        } else if rs == 1 && cs >= rows.max(1) {
            (cublasOperation_t::CUBLAS_OP_T, cs)
        } else {
            return None;
        };
        flat_batch.then(|| Operand { t: t.clone(), op, ld, offset: t.layout().offset(), batch_stride })
    };
    match fits(t) {
        Some(o) => Ok(o),
        None => fits(&contiguous(t)?).ok_or_else(|| Error::Msg("matmul: contiguous operand rejected".into())),
    }
}

/// `a @ b` on the GPU (dtypes and shapes already checked by `matmul`).
pub(super) fn gemm(a: &Tensor, b: &Tensor, d: &Dims) -> Result<CudaStorage> {
    let (oa, ob) = (operand(a)?, operand(b)?);
    let (ga, gb) = (oa.t.storage(), ob.t.storage());
    let (Storage::Cuda(sa), Storage::Cuda(sb)) = (&*ga, &*gb) else {
        return Err(Error::DeviceMismatch { op: "matmul", a: a.device(), b: b.device() });
    };
    let mut out = CudaStorage::uninit(sa.dtype(), d.batch * d.m * d.n, &sa.dev)?;
    match (&sa.buf, &sb.buf, &mut out.buf) {
        (CudaBuf::F32(x), CudaBuf::F32(y), CudaBuf::F32(z)) => launch(sa, x, &oa, y, &ob, z, d, 1.0f32, 0.0)?,
        (CudaBuf::BF16(x), CudaBuf::BF16(y), CudaBuf::BF16(z)) => {
            launch(sa, x, &oa, y, &ob, z, d, half::bf16::ONE, half::bf16::ZERO)?
        }
        (CudaBuf::F16(x), CudaBuf::F16(y), CudaBuf::F16(z)) => {
            launch(sa, x, &oa, y, &ob, z, d, half::f16::ONE, half::f16::ZERO)?
        }
        _ => return Err(Error::DType { op: "matmul (cuda)", dtype: a.dtype() }),
    }
    Ok(out)
}

#[allow(clippy::too_many_arguments)]
fn launch<T: DeviceRepr + ValidAsZeroBits>(
    dev: &CudaStorage,
    a: &CudaSlice<T>,
    oa: &Operand,
    b: &CudaSlice<T>,
    ob: &Operand,
    c: &mut CudaSlice<T>,
    d: &Dims,
    one: T,
    zero: T,
) -> Result<()>
where
    kernels_cuda::cudarc::cublas::CudaBlas: Gemm<T>,
{
    let gemm = GemmConfig {
        transa: ob.op,
        transb: oa.op,
        m: d.n as i32,
        n: d.m as i32,
        k: d.k as i32,
        alpha: one,
        lda: ob.ld as i32,
        ldb: oa.ld as i32,
        beta: zero,
        ldc: d.n as i32,
    };
    let (bv, av) = (b.slice(ob.offset..), a.slice(oa.offset..));
    let blas = &dev.dev.blas;
    // SAFETY: shapes, strides and offsets come from the operands' layouts, which lie inside
    // their buffers; `c` holds batch * m * n elements.
    unsafe {
        if d.batch == 1 {
            drv(blas.gemm(gemm, &bv, &av, c), "cuBLAS gemm")
        } else {
            let cfg = StridedBatchedConfig {
                gemm,
                batch_size: d.batch as i32,
                stride_a: if d.b_batched { ob.batch_stride as i64 } else { 0 },
                stride_b: oa.batch_stride as i64,
                stride_c: (d.m * d.n) as i64,
            };
            drv(blas.gemm_strided_batched(cfg, &bv, &av, c), "cuBLAS strided batched gemm")
        }
    }
}
