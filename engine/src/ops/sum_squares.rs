//! `sum_squares(x)`: the sum of the squared elements, in f64, returned to the host (squared L2
//! norms for gradient clipping); `sum_squares_each` does it for many tensors at once. Not
//! differentiable.
//!
//! CPU: one sequential f64 sum in element order. CUDA: per-block f64 partial sums over a fixed
//! grid (`kernels/reduce.cu`), added on the host; the same value on every run, equal to the CPU
//! sum up to f64 reassociation. The partials of every tensor on one device go to one buffer and
//! come back in one copy (one synchronization for all of a step's gradients, not one each).

use super::view::dense;
use crate::cuda::{cs, drv, err, CudaBuf};
use crate::storage::CpuStorage;
use crate::tensor::Storage;
use crate::{Device, Result, Tensor};
use kernels_cuda::ops::reduce;

pub fn sum_squares(x: &Tensor) -> Result<f64> {
    Ok(sum_squares_each(std::slice::from_ref(x))?[0])
}

/// `sum_squares` of every tensor, in order.
pub fn sum_squares_each(xs: &[Tensor]) -> Result<Vec<f64>> {
    let xs = xs.iter().map(dense).collect::<Result<Vec<_>>>()?;
    let mut sums = vec![0f64; xs.len()];
    let mut devices: Vec<Device> = Vec::new();
    for (x, sum) in xs.iter().zip(sums.iter_mut()) {
        let device = x.device();
        match &*x.storage() {
            Storage::Cpu(s) => {
                *sum = match s {
                    CpuStorage::F64(v) => squares(v.iter().copied()),
                    _ => squares(s.floats::<f32>(x.layout()).iter().map(|&v| v as f64)),
                }
            }
            Storage::Cuda(_) if !devices.contains(&device) => devices.push(device),
            Storage::Cuda(_) => {}
        }
    }
    for device in devices {
        let on_device: Vec<usize> = (0..xs.len()).filter(|&i| xs[i].device() == device).collect();
        let sizes: Vec<usize> = on_device.iter().map(|&i| reduce::partials_for(xs[i].elem_count())).collect();
        let dev = cs(&xs[on_device[0]].storage()).dev.clone();
        let stream = dev.gpu.stream();
        // SAFETY: every launch below writes its whole piece, and only those pieces are read.
        let mut partials = drv(unsafe { stream.alloc::<f64>(sizes.iter().sum()) }, "device allocation")?;
        let mut start = 0;
        for (&i, &size) in on_device.iter().zip(&sizes) {
            let guard = xs[i].storage();
            let s = cs(&guard);
            let mut piece = partials.slice_mut(start..start + size);
            match &s.buf {
                CudaBuf::F32(v) => reduce::sum_squares(&dev.gpu, v, &mut piece),
                CudaBuf::BF16(v) => reduce::sum_squares(&dev.gpu, v, &mut piece),
                _ => return Err(crate::Error::DType { op: "sum_squares(cuda)", dtype: s.dtype() }),
            }
            .map_err(|e| err("sum_squares", e))?;
            start += size;
        }
        let host = drv(stream.clone_dtoh(&partials), "device -> host copy")?;
        let mut pieces = host.as_slice();
        for (&i, &size) in on_device.iter().zip(&sizes) {
            let (piece, rest) = pieces.split_at(size);
            sums[i] = piece.iter().sum();
            pieces = rest;
        }
    }
    Ok(sums)
}

fn squares(values: impl Iterator<Item = f64>) -> f64 {
    values.map(|v| v * v).sum()
}
