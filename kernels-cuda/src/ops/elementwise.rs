//! Launchers for `kernels/elementwise.cu`: casts between f32 and bf16, and `add`, over flat
//! buffers of equal length.

use cudarc::driver::{CudaSlice, LaunchConfig, PushKernelArg};
use half::bf16;

use super::{check_len, grid_stride, KernelFloat};
use crate::error::{DriverContext, Result};
use crate::gpu::Gpu;
use crate::source::ELEMENTWISE;

/// Threads per block of the elementwise kernels.
const BLOCK: u32 = 256;

/// The launch shape for `n` elements on `gpu`: one thread per 8 elements, at most 32 blocks per
/// multiprocessor.
fn config(gpu: &Gpu, n: usize) -> LaunchConfig {
    grid_stride(n.div_ceil(8).div_ceil(BLOCK as usize), BLOCK, 32, gpu.multiprocessors())
}

/// `y = bf16(x)`, rounding to nearest even; `x` and `y` of equal length (zero is a no-op).
pub fn cast_f32_to_bf16(gpu: &Gpu, x: &CudaSlice<f32>, y: &mut CudaSlice<bf16>) -> Result<()> {
    cast(gpu, "cast_f32_to_bf16", x, y)
}

/// `y = f32(x)` (exact); `x` and `y` of equal length (zero is a no-op).
pub fn cast_bf16_to_f32(gpu: &Gpu, x: &CudaSlice<bf16>, y: &mut CudaSlice<f32>) -> Result<()> {
    cast(gpu, "cast_bf16_to_f32", x, y)
}

/// Launches the cast kernel `kernel` from `x` into `y`.
fn cast<S: KernelFloat, D: KernelFloat>(
    gpu: &Gpu,
    kernel: &'static str,
    x: &CudaSlice<S>,
    y: &mut CudaSlice<D>,
) -> Result<()> {
    let n = x.len();
    check_len(kernel, "y", y.len(), n)?;
    if n == 0 {
        return Ok(());
    }
    let function = gpu.kernel(&ELEMENTWISE, kernel)?;
    let n_arg = n as u64;
    let mut launch = gpu.stream().launch_builder(&function);
    launch.arg(x).arg(y).arg(&n_arg);
    // SAFETY: (pointer, pointer, u64) matches the kernel; both buffers hold n elements.
    unsafe { launch.launch(config(gpu, n)) }.during(kernel)?;
    Ok(())
}

/// `out = a + b` elementwise (bf16: summed in f32, rounded once); all three of equal length
/// (zero is a no-op).
pub fn add<T: KernelFloat>(gpu: &Gpu, a: &CudaSlice<T>, b: &CudaSlice<T>, out: &mut CudaSlice<T>) -> Result<()> {
    let kernel = T::pick("add_fwd_f32", "add_fwd_bf16");
    let n = a.len();
    check_len(kernel, "b", b.len(), n)?;
    check_len(kernel, "out", out.len(), n)?;
    if n == 0 {
        return Ok(());
    }
    let function = gpu.kernel(&ELEMENTWISE, kernel)?;
    let n_arg = n as u64;
    let mut launch = gpu.stream().launch_builder(&function);
    launch.arg(a).arg(b).arg(out).arg(&n_arg);
    // SAFETY: (pointer x3, u64) matches the kernel; every buffer holds n elements.
    unsafe { launch.launch(config(gpu, n)) }.during(kernel)?;
    Ok(())
}

/// `out = x * s` elementwise (bf16: product in f32, rounded once); equal lengths.
pub fn scale<T: KernelFloat>(gpu: &Gpu, x: &CudaSlice<T>, s: f32, out: &mut CudaSlice<T>) -> Result<()> {
    let kernel = T::pick("scale_fwd_f32", "scale_fwd_bf16");
    let n = x.len();
    check_len(kernel, "out", out.len(), n)?;
    if n == 0 {
        return Ok(());
    }
    let function = gpu.kernel(&ELEMENTWISE, kernel)?;
    let n_arg = n as u64;
    let mut launch = gpu.stream().launch_builder(&function);
    launch.arg(x).arg(out).arg(&s).arg(&n_arg);
    // SAFETY: (pointer x2, float, u64) matches the kernel; both buffers hold n elements.
    unsafe { launch.launch(config(gpu, n)) }.during(kernel)?;
    Ok(())
}
