//! Launchers for `kernels/cross_entropy.cu`: cross-entropy of a chunk of logits `[rows, vocab]`
//! (f32 or bf16) against i32 labels, one row per block, so that the LM head and the loss can run
//! chunk by chunk without ever holding the `[tokens x vocab]` f32 logits.
//!
//! Per row: `lse = log(sum(exp(x)))`, `loss = lse - x[label]` (f32), and the gradient written
//! over the logits: `(softmax(x) - onehot(label)) * scale`. The mean over the whole batch is the
//! caller's: `scale = dloss / count` with `count` the non-ignored labels of every chunk
//! ([`count_targets`]), and the loss `sum(loss) / count`. Labels equal to [`IGNORE_INDEX`] give
//! loss 0, lse 0 and a zero gradient row without reading their logits; any other label outside
//! `0..vocab` gives a NaN loss and a NaN gradient row (labels live on the device and are not
//! checked here).

use cudarc::driver::{CudaSlice, LaunchConfig, PushKernelArg};

use super::{check_len, invalid, KernelFloat};
use crate::error::{DriverContext, Result};
use crate::gpu::Gpu;
use crate::source::CROSS_ENTROPY;

/// Labels equal to this contribute nothing (PyTorch's convention).
pub const IGNORE_INDEX: i32 = -100;

/// The number of labels that are not [`IGNORE_INDEX`]: the divisor of the mean.
pub fn count_targets(labels: &[i32]) -> usize {
    labels.iter().filter(|&&l| l != IGNORE_INDEX).count()
}

/// Threads per block for rows of `vocab`: about 8 elements per thread, a multiple of 32, from 32
/// to 1024.
pub fn block_dim(vocab: usize) -> u32 {
    (vocab.div_ceil(8).div_ceil(32) * 32).clamp(32, 1024) as u32
}

/// Checks the dimensions and returns `rows * vocab`.
fn check_dims(kernel: &str, rows: usize, vocab: usize) -> Result<usize> {
    if vocab == 0 || vocab > (i32::MAX as usize) - 1024 * 8 {
        return Err(invalid(kernel, format!("vocab {vocab} outside 1..2^31")));
    }
    if rows > i32::MAX as usize {
        return Err(invalid(kernel, format!("{rows} rows exceed {}", i32::MAX)));
    }
    rows.checked_mul(vocab).ok_or_else(|| invalid(kernel, format!("{rows} x {vocab} overflows")))
}

fn config(rows: usize, vocab: usize) -> LaunchConfig {
    LaunchConfig { grid_dim: (rows as u32, 1, 1), block_dim: (block_dim(vocab), 1, 1), shared_mem_bytes: 0 }
}

/// Forward only: `loss` and `lse` (`rows` each) from `logits` (`rows * vocab`) and `labels`
/// (`rows`). Zero rows is a no-op.
#[allow(clippy::too_many_arguments)]
pub fn cross_entropy_fwd<T: KernelFloat>(
    gpu: &Gpu,
    logits: &CudaSlice<T>,
    labels: &CudaSlice<i32>,
    loss: &mut CudaSlice<f32>,
    lse: &mut CudaSlice<f32>,
    rows: usize,
    vocab: usize,
) -> Result<()> {
    let kernel = T::pick("cross_entropy_fwd_f32", "cross_entropy_fwd_bf16");
    let n = check_dims(kernel, rows, vocab)?;
    check_len(kernel, "logits", logits.len(), n)?;
    check_len(kernel, "labels", labels.len(), rows)?;
    check_len(kernel, "loss", loss.len(), rows)?;
    check_len(kernel, "lse", lse.len(), rows)?;
    if rows == 0 {
        return Ok(());
    }
    let function = gpu.kernel(&CROSS_ENTROPY, kernel)?;
    let v = vocab as i32;
    let mut launch = gpu.stream().launch_builder(&function);
    launch.arg(logits).arg(labels).arg(loss).arg(lse).arg(&v);
    // SAFETY: (pointer x4, int) matches the kernel; lengths checked above.
    unsafe { launch.launch(config(rows, vocab)) }.during(kernel)?;
    Ok(())
}

/// Backward only, in place: `logits <- (softmax(logits) - onehot(labels)) * scale` from the
/// `lse` the forward saved. Zero rows is a no-op.
#[allow(clippy::too_many_arguments)]
pub fn cross_entropy_bwd<T: KernelFloat>(
    gpu: &Gpu,
    logits: &mut CudaSlice<T>,
    labels: &CudaSlice<i32>,
    lse: &CudaSlice<f32>,
    scale: f32,
    rows: usize,
    vocab: usize,
) -> Result<()> {
    let kernel = T::pick("cross_entropy_bwd_f32", "cross_entropy_bwd_bf16");
    let n = check_dims(kernel, rows, vocab)?;
    check_len(kernel, "logits", logits.len(), n)?;
    check_len(kernel, "labels", labels.len(), rows)?;
    check_len(kernel, "lse", lse.len(), rows)?;
    if rows == 0 {
        return Ok(());
    }
    let function = gpu.kernel(&CROSS_ENTROPY, kernel)?;
    let v = vocab as i32;
    let mut launch = gpu.stream().launch_builder(&function);
    launch.arg(logits).arg(labels).arg(lse).arg(&scale).arg(&v);
    // SAFETY: (pointer x3, float, int) matches the kernel; lengths checked above.
    unsafe { launch.launch(config(rows, vocab)) }.during(kernel)?;
    Ok(())
}

/// Forward and backward in one launch: writes `loss` and `lse`, then overwrites `logits` with
/// the gradient `(softmax - onehot) * scale`. Zero rows is a no-op.
#[allow(clippy::too_many_arguments)]
pub fn cross_entropy_fused<T: KernelFloat>(
    gpu: &Gpu,
    logits: &mut CudaSlice<T>,
    labels: &CudaSlice<i32>,
    loss: &mut CudaSlice<f32>,
    lse: &mut CudaSlice<f32>,
    scale: f32,
    rows: usize,
    vocab: usize,
) -> Result<()> {
    let kernel = T::pick("cross_entropy_fused_f32", "cross_entropy_fused_bf16");
    let n = check_dims(kernel, rows, vocab)?;
    check_len(kernel, "logits", logits.len(), n)?;
    check_len(kernel, "labels", labels.len(), rows)?;
    check_len(kernel, "loss", loss.len(), rows)?;
    check_len(kernel, "lse", lse.len(), rows)?;
    if rows == 0 {
        return Ok(());
    }
    let function = gpu.kernel(&CROSS_ENTROPY, kernel)?;
    let v = vocab as i32;
    let mut launch = gpu.stream().launch_builder(&function);
    launch.arg(logits).arg(labels).arg(loss).arg(lse).arg(&scale).arg(&v);
    // SAFETY: (pointer x4, float, int) matches the kernel; lengths checked above.
    unsafe { launch.launch(config(rows, vocab)) }.during(kernel)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_dim_and_dims() {
        assert_eq!(block_dim(1), 32);
        assert_eq!(block_dim(49152), 1024);
        assert_eq!(block_dim(128256), 1024);
        assert_eq!(block_dim(1000), 128);
        assert_eq!(check_dims("k", 3, 7).unwrap(), 21);
        assert!(check_dims("k", 3, 0).is_err());
        assert!(check_dims("k", i32::MAX as usize + 1, 1).is_err());
        assert_eq!(count_targets(&[1, -100, 3, -100]), 2);
    }
}
