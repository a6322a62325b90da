//! `sum_squares(x)`: the sum of the squared elements, in f64, returned to the host (squared L2
//! norms for gradient clipping). Not differentiable.
//!
//! CPU: one sequential f64 sum in element order. CUDA: per-block f64 partial sums over a fixed
//! grid (`kernels/reduce.cu`), added on the host; the same value on every run, equal to the CPU
//! sum up to f64 reassociation.

use super::view::dense;
use crate::cuda::{cs, drv, err};
use crate::storage::CpuStorage;
use crate::tensor::Storage;
use crate::{Result, Tensor};
use kernels_cuda::ops::reduce;

pub fn sum_squares(x: &Tensor) -> Result<f64> {
    let x = dense(x)?;
    let guard = x.storage();
    match &*guard {
        Storage::Cpu(s) => Ok(match s {
            CpuStorage::F64(v) => squares(v.iter().copied()),
            _ => squares(s.floats::<f32>(x.layout()).iter().map(|&v| v as f64)),
        }),
        Storage::Cuda(_) => {
            let s = cs(&guard);
            let n = s.len();
            let stream = s.dev.gpu.stream();
            let mut partials = drv(stream.alloc_zeros::<f64>(reduce::partials_for(n)), "device allocation")?;
            let gpu = &s.dev.gpu;
            let blocks = match &s.buf {
                crate::cuda::CudaBuf::F32(v) => reduce::sum_squares(gpu, v, &mut partials),
                crate::cuda::CudaBuf::BF16(v) => reduce::sum_squares(gpu, v, &mut partials),
                _ => return Err(crate::Error::DType { op: "sum_squares(cuda)", dtype: s.dtype() }),
            }
            .map_err(|e| err("sum_squares", e))?;
            let host = drv(stream.clone_dtoh(&partials), "device -> host copy")?;
            Ok(host[..blocks].iter().sum())
        }
    }
}

fn squares(values: impl Iterator<Item = f64>) -> f64 {
    values.map(|v| v * v).sum()
}
