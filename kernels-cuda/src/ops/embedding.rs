//! Launchers for `kernels/embedding.cu`: rows of a `[vocab, hidden]` table gathered by u32 token
//! id, and the backward that scatter-adds the output gradient into an f32 `[vocab, hidden]`
//! gradient table (atomicAdd, so repeated ids accumulate).
//!
//! Ids are not checked on the host (they live on the device): an id `>= vocab` is never
//! dereferenced; the forward fills its output row with NaN and the backward skips it.

use cudarc::driver::{CudaSlice, LaunchConfig, PushKernelArg};

use super::{check_len, grid_stride, invalid, KernelFloat};
use crate::error::{DriverContext, Result};
use crate::gpu::Gpu;
use crate::source::EMBEDDING;

/// Threads per block for rows of `hidden` elements: about 8 per thread, a multiple of 32, from 32
/// to 256.
fn block_dim(hidden: usize) -> u32 {
    (hidden.div_ceil(8).div_ceil(32) * 32).clamp(32, 256) as u32
}

/// Checks the dimensions and returns `ids * hidden`.
fn check_dims(kernel: &str, ids: usize, vocab: usize, hidden: usize) -> Result<usize> {
    if hidden == 0 || hidden > i32::MAX as usize {
        return Err(invalid(kernel, format!("hidden {hidden} outside 1..=i32::MAX")));
    }
    if vocab > u32::MAX as usize {
        return Err(invalid(kernel, format!("vocab {vocab} exceeds u32")));
    }
    vocab.checked_mul(hidden).ok_or_else(|| invalid(kernel, format!("{vocab} x {hidden} overflows")))?;
    ids.checked_mul(hidden).ok_or_else(|| invalid(kernel, format!("{ids} x {hidden} overflows")))
}

fn config(gpu: &Gpu, ids: usize, hidden: usize) -> LaunchConfig {
    grid_stride(ids, block_dim(hidden), 64, gpu.multiprocessors())
}

/// `out[i, :] = table[ids[i], :]`: `table` holds `vocab * hidden` elements, `out`
/// `ids.len() * hidden`. No ids is a no-op.
pub fn embedding_fwd<T: KernelFloat>(
    gpu: &Gpu,
    ids: &CudaSlice<u32>,
    table: &CudaSlice<T>,
    out: &mut CudaSlice<T>,
    vocab: usize,
    hidden: usize,
) -> Result<()> {
    let kernel = T::pick("embedding_fwd_f32", "embedding_fwd_bf16");
    let n = check_dims(kernel, ids.len(), vocab, hidden)?;
    check_len(kernel, "table", table.len(), vocab * hidden)?;
    check_len(kernel, "out", out.len(), n)?;
    if n == 0 {
        return Ok(());
    }
    let function = gpu.kernel(&EMBEDDING, kernel)?;
    let (n_ids, h, v) = (ids.len() as u64, hidden as i32, vocab as u32);
    let mut launch = gpu.stream().launch_builder(&function);
    launch.arg(ids).arg(table).arg(out).arg(&n_ids).arg(&h).arg(&v);
    // SAFETY: (pointer x3, u64, int, unsigned) matches the kernel; lengths checked above, ids
    // bounds-checked in the kernel.
    unsafe { launch.launch(config(gpu, ids.len(), hidden)) }.during(kernel)?;
    Ok(())
}

/// `dtable[ids[i], :] += dout[i, :]` in f32: `dout` holds `ids.len() * hidden` elements,
/// `dtable` `vocab * hidden` (accumulated into: zero it first for a fresh gradient). No ids is a
/// no-op.
pub fn embedding_bwd<T: KernelFloat>(
    gpu: &Gpu,
    ids: &CudaSlice<u32>,
    dout: &CudaSlice<T>,
    dtable: &mut CudaSlice<f32>,
    vocab: usize,
    hidden: usize,
) -> Result<()> {
    let kernel = T::pick("embedding_bwd_f32", "embedding_bwd_bf16");
    let n = check_dims(kernel, ids.len(), vocab, hidden)?;
    check_len(kernel, "dout", dout.len(), n)?;
    check_len(kernel, "dtable", dtable.len(), vocab * hidden)?;
    if n == 0 {
        return Ok(());
    }
    let function = gpu.kernel(&EMBEDDING, kernel)?;
    let (n_ids, h, v) = (ids.len() as u64, hidden as i32, vocab as u32);
    let mut launch = gpu.stream().launch_builder(&function);
    launch.arg(ids).arg(dout).arg(dtable).arg(&n_ids).arg(&h).arg(&v);
    // SAFETY: as in `embedding_fwd`.
    unsafe { launch.launch(config(gpu, ids.len(), hidden)) }.during(kernel)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dims_and_block() {
        assert_eq!(check_dims("k", 3, 10, 7).unwrap(), 21);
        assert!(check_dims("k", 3, 10, 0).is_err());
        assert!(check_dims("k", usize::MAX, 10, 2).is_err());
        assert_eq!(block_dim(1), 32);
        assert_eq!(block_dim(576), 96);
        assert_eq!(block_dim(4096), 256);
    }
}
