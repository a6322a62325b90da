//! Launchers for `kernels/rms_norm.cu`: RMSNorm over the last dimension of a row-major
//! `[rows, width]` buffer with a `[width]` weight.
//!
//! The forward writes `y` and `rstd = 1/sqrt(mean(x^2) + eps)` per row (f32); the backward takes
//! `x`, the weight, that `rstd` and `dy` and writes `dx` only (the weight is frozen). All sums are
//! f32 whatever the storage dtype.

use cudarc::driver::{CudaSlice, LaunchConfig, PushKernelArg};

use super::{check_len, invalid, KernelFloat};
use crate::error::{DriverContext, Result};
use crate::gpu::Gpu;
use crate::source::RMS_NORM;

/// The widest row the kernels take: their int loop counters step by up to 1024 x 8 elements.
pub const MAX_WIDTH: usize = i32::MAX as usize - 1024 * 8;

/// The most rows one launch takes (one block per row; CUDA's grid limit).
pub const MAX_ROWS: usize = i32::MAX as usize;

/// Threads per block for rows of `width` elements: about 8 elements per thread, a multiple of 32,
/// from 32 to 1024.
pub fn block_dim(width: usize) -> u32 {
    (width.div_ceil(8).div_ceil(32) * 32).clamp(32, 1024) as u32
}

/// Checks `rows` and `width` and returns `rows * width`.
fn check_dims(kernel: &str, rows: usize, width: usize) -> Result<usize> {
    if width == 0 || width > MAX_WIDTH {
        return Err(invalid(kernel, format!("width {width} outside 1..={MAX_WIDTH}")));
    }
    if rows > MAX_ROWS {
        return Err(invalid(kernel, format!("{rows} rows exceed {MAX_ROWS}")));
    }
    rows.checked_mul(width).ok_or_else(|| invalid(kernel, format!("{rows} x {width} overflows")))
}

/// The launch shape for `rows` rows of `width`.
fn config(rows: usize, width: usize) -> LaunchConfig {
    LaunchConfig { grid_dim: (rows as u32, 1, 1), block_dim: (block_dim(width), 1, 1), shared_mem_bytes: 0 }
}

/// RMSNorm forward: `y = x * rstd * weight` row by row, and `rstd` per row.
///
/// `x` and `y` hold `rows * width` elements, `weight` `width`, `rstd` `rows`; `eps` must be finite
/// and non-negative. Zero rows is a no-op.
#[allow(clippy::too_many_arguments)]
pub fn rms_norm_fwd<T: KernelFloat>(
    gpu: &Gpu,
    x: &CudaSlice<T>,
    weight: &CudaSlice<T>,
    y: &mut CudaSlice<T>,
    rstd: &mut CudaSlice<f32>,
    rows: usize,
    width: usize,
    eps: f32,
) -> Result<()> {
    let kernel = T::pick("rms_norm_fwd_f32", "rms_norm_fwd_bf16");
    let n = check_dims(kernel, rows, width)?;
    check_len(kernel, "x", x.len(), n)?;
    check_len(kernel, "weight", weight.len(), width)?;
    check_len(kernel, "y", y.len(), n)?;
    check_len(kernel, "rstd", rstd.len(), rows)?;
    if !(eps.is_finite() && eps >= 0.0) {
        return Err(invalid(kernel, format!("eps {eps} is not finite and >= 0")));
    }
    if rows == 0 {
        return Ok(());
    }
    let function = gpu.kernel(&RMS_NORM, kernel)?;
    let width_arg = width as i32;
    let mut launch = gpu.stream().launch_builder(&function);
    launch.arg(x).arg(weight).arg(y).arg(rstd).arg(&width_arg).arg(&eps);
    // SAFETY: the arguments match the kernel's signature (pointers, int, float) and every buffer
    // holds the elements the kernel touches (checked above).
    unsafe { launch.launch(config(rows, width)) }.during(kernel)?;
    Ok(())
}

/// RMSNorm backward, dx only: `dx = rstd * (dy*w - x*rstd * mean(dy*w * x*rstd))` row by row.
///
/// `x`, `dy` and `dx` hold `rows * width` elements, `weight` `width`, `rstd` `rows` (as written by
/// [`rms_norm_fwd`]). Zero rows is a no-op.
#[allow(clippy::too_many_arguments)]
pub fn rms_norm_bwd<T: KernelFloat>(
    gpu: &Gpu,
    x: &CudaSlice<T>,
    weight: &CudaSlice<T>,
    rstd: &CudaSlice<f32>,
    dy: &CudaSlice<T>,
    dx: &mut CudaSlice<T>,
    rows: usize,
    width: usize,
) -> Result<()> {
    let kernel = T::pick("rms_norm_bwd_f32", "rms_norm_bwd_bf16");
    let n = check_dims(kernel, rows, width)?;
    check_len(kernel, "x", x.len(), n)?;
    check_len(kernel, "weight", weight.len(), width)?;
    check_len(kernel, "rstd", rstd.len(), rows)?;
    check_len(kernel, "dy", dy.len(), n)?;
    check_len(kernel, "dx", dx.len(), n)?;
    if rows == 0 {
        return Ok(());
    }
    let function = gpu.kernel(&RMS_NORM, kernel)?;
    let width_arg = width as i32;
    let mut launch = gpu.stream().launch_builder(&function);
    launch.arg(x).arg(weight).arg(rstd).arg(dy).arg(dx).arg(&width_arg);
    // SAFETY: as in `rms_norm_fwd`.
    unsafe { launch.launch(config(rows, width)) }.during(kernel)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_dim_is_a_warp_multiple_within_limits() {
        for width in [1, 7, 255, 256, 257, 576, 4096, 4097, 8192, 1 << 20] {
            let b = block_dim(width);
            assert!(b.is_multiple_of(32) && (32..=1024).contains(&b), "{width}: {b}");
        }
        assert_eq!(block_dim(1), 32);
        assert_eq!(block_dim(576), 96);
        assert_eq!(block_dim(4096), 512);
        assert_eq!(block_dim(1 << 20), 1024);
    }

    #[test]
    fn dims_are_checked() {
        assert_eq!(check_dims("k", 3, 7).unwrap(), 21);
        assert_eq!(check_dims("k", 0, 7).unwrap(), 0);
        for (rows, width) in [(3, 0), (1, MAX_WIDTH + 1), (MAX_ROWS + 1, 1)] {
            let err = check_dims("k", rows, width).unwrap_err().to_string();
            assert!(err.starts_with("k: "), "{err}");
        }
    }
}
