//! Every differentiable op: its forward, its [`Backward`](crate::autograd::Backward) rule
//! and its CPU reference kernel live in one file.
//!
//! CPU kernels are written once, generic over the compute type ([`Real`]: f32, or f64 for
//! the finite-difference checks). 16-bit inputs are widened to f32, the kernel computes in
//! f32, and results are rounded back to the input's dtype.

mod attention;
mod cross_entropy;
mod elementwise;
mod embedding;
mod lm_head_loss;
mod matmul;
mod nf4_matmul;
mod rms_norm;
mod rope;
mod softmax;
mod sum_squares;
mod swiglu;
mod view;

pub use attention::attention;
pub use cross_entropy::{cross_entropy, IGNORE_INDEX};
pub use elementwise::{add, cast, mul, ones_like, scale, sum_all, zeros_like};
pub use embedding::embedding;
pub use lm_head_loss::lm_head_cross_entropy;
pub use matmul::{matmul, matmul_nt};
pub use nf4_matmul::{nf4_matmul_nt, DeviceNf4, Nf4, NF4_FUSED_MAX_M};
pub use rms_norm::rms_norm;
pub use rope::{rope, RopeTable};
pub use softmax::log_softmax;
pub use sum_squares::{sum_squares, sum_squares_each};
pub use swiglu::swiglu;
pub use view::{contiguous, narrow, reshape, transpose};
pub(crate) use view::{dense, dense_copy};

use crate::storage::{CpuStorage, StorageElem};
use crate::tensor::Storage;
use crate::{DType, Error, Real, Result, Tensor};
use std::borrow::Cow;

/// A CPU kernel over float inputs, generic in the compute type.
pub(crate) trait CpuKernel {
    fn run<T: Real + StorageElem>(&self, inputs: &[&[T]]) -> Result<Vec<Vec<T>>>;
}

/// Runs `k` on the row-major values of `inputs` in their compute type (f64 if any input is
/// f64, else f32) and returns its outputs in that compute type.
pub(crate) fn run_cpu<K: CpuKernel>(op: &'static str, k: &K, inputs: &[&Tensor]) -> Result<Vec<CpuStorage>> {
    for t in inputs {
        if !t.dtype().is_float() {
            return Err(Error::DType { op, dtype: t.dtype() });
        }
        if let Some(first) = inputs.first() {
            first.check_same_device(t, op)?;
        }
    }
    let guards: Vec<_> = inputs.iter().map(|t| t.storage()).collect();
    let cpu: Vec<&CpuStorage> = guards
        .iter()
        .map(|g| match &**g {
            Storage::Cpu(s) => Ok(s),
            Storage::Cuda(_) => Err(Error::Msg(format!("{op} has no CUDA kernel in the engine yet"))),
        })
        .collect::<Result<_>>()?;
    if inputs.iter().any(|t| t.dtype() == DType::F64) {
        run_typed::<f64, K>(k, inputs, &cpu)
    } else {
        run_typed::<f32, K>(k, inputs, &cpu)
    }
}

fn run_typed<T: Real + StorageElem, K: CpuKernel>(
    k: &K,
    inputs: &[&Tensor],
    cpu: &[&CpuStorage],
) -> Result<Vec<CpuStorage>> {
    let vals: Vec<Cow<[T]>> = inputs.iter().zip(cpu).map(|(t, s)| s.floats::<T>(t.layout())).collect();
    let refs: Vec<&[T]> = vals.iter().map(|c| c.as_ref()).collect();
    Ok(k.run::<T>(&refs)?.into_iter().map(T::wrap).collect())
}

/// Wraps a kernel output as a tensor of `shape`, rounded to `dtype`.
pub(crate) fn output(storage: CpuStorage, shape: &[usize], dtype: DType) -> Tensor {
    let storage = if storage.dtype() == dtype { storage } else { convert(storage, dtype) };
    Tensor::from_cpu(storage, shape)
}

fn convert(s: CpuStorage, dtype: DType) -> CpuStorage {
    match s {
        CpuStorage::F32(v) => CpuStorage::from_compute(v, dtype),
        CpuStorage::F64(v) => CpuStorage::from_compute(v, dtype),
        other => {
            let n = other.len();
            let v: Vec<f64> = other.gather(&crate::Layout::contiguous(&[n]));
            CpuStorage::from_compute(v, dtype)
        }
    }
}

/// Size of the last dimension; an error for scalars and for an empty last dimension.
pub(crate) fn last_dim(op: &'static str, x: &Tensor) -> Result<usize> {
    match x.shape().last() {
        Some(&n) if n > 0 => Ok(n),
        _ => Err(Error::shape(op, format!("needs a nonempty last dimension, got shape {:?}", x.shape()))),
    }
}

/// Fails unless `a` and `b` have the same shape.
pub(crate) fn same_shape(op: &'static str, a: &Tensor, b: &Tensor) -> Result<()> {
    if a.shape() != b.shape() {
        return Err(Error::shape(op, format!("{:?} vs {:?}", a.shape(), b.shape())));
    }
    Ok(())
}

/// Fails unless `a` and `b` have the same float dtype (ops do not promote implicitly).
pub(crate) fn same_dtype(op: &'static str, a: &Tensor, b: &Tensor) -> Result<()> {
    if a.dtype() != b.dtype() {
        return Err(Error::Msg(format!(
            "{op}: dtypes differ ({} and {}); cast one first",
            a.dtype().name(),
            b.dtype().name()
        )));
    }
    Ok(())
}
