//! Launchers for `kernels/swiglu.cu`: the SwiGLU gate `silu(gate) * up` of the Llama MLP and
//! its backward, over flat buffers of equal length.
//!
//! With `s = sigmoid(gate)`: `dgate = dy * up * s * (1 + gate * (1 - s))`, `dup = dy * gate * s`.
//! [`swiglu_bwd_inplace`] writes them over `gate` and `up` (Unsloth-style: the backward
//! allocates nothing), and [`swiglu_bwd_inplace_h`] also writes the recomputed forward output
//! `h = silu(gate) * up` over `dy`, for the LoRA gradients of the down projection.

use cudarc::driver::{CudaSlice, LaunchConfig, PushKernelArg};

use super::{check_len, grid_stride, KernelFloat};
use crate::error::{DriverContext, Result};
use crate::gpu::Gpu;
use crate::source::SWIGLU;

/// Threads per block.
const BLOCK: u32 = 256;

/// The launch shape for `n` elements: one thread per 8, at most 32 blocks per multiprocessor
/// (the kernels loop), at least one block.
fn config(gpu: &Gpu, n: usize) -> LaunchConfig {
    grid_stride(n.div_ceil(8).div_ceil(BLOCK as usize), BLOCK, 32, gpu.multiprocessors())
}

/// `out = silu(gate) * up`; all three of equal length (zero is a no-op).
pub fn swiglu_fwd<T: KernelFloat>(
    gpu: &Gpu,
    gate: &CudaSlice<T>,
    up: &CudaSlice<T>,
    out: &mut CudaSlice<T>,
) -> Result<()> {
    let kernel = T::pick("swiglu_fwd_f32", "swiglu_fwd_bf16");
    let n = gate.len();
    check_len(kernel, "up", up.len(), n)?;
    check_len(kernel, "out", out.len(), n)?;
    if n == 0 {
        return Ok(());
    }
    let function = gpu.kernel(&SWIGLU, kernel)?;
    let n_arg = n as u64;
    let mut launch = gpu.stream().launch_builder(&function);
    launch.arg(gate).arg(up).arg(out).arg(&n_arg);
    // SAFETY: (pointer x3, u64) matches the kernel; every buffer holds n elements.
    unsafe { launch.launch(config(gpu, n)) }.during(kernel)?;
    Ok(())
}

/// `dgate` and `dup` from `gate`, `up` and the output gradient `dy`, into separate buffers; all
/// five of equal length (zero is a no-op).
pub fn swiglu_bwd<T: KernelFloat>(
    gpu: &Gpu,
    gate: &CudaSlice<T>,
    up: &CudaSlice<T>,
    dy: &CudaSlice<T>,
    dgate: &mut CudaSlice<T>,
    dup: &mut CudaSlice<T>,
) -> Result<()> {
    let kernel = T::pick("swiglu_bwd_f32", "swiglu_bwd_bf16");
    let n = gate.len();
    check_len(kernel, "up", up.len(), n)?;
    check_len(kernel, "dy", dy.len(), n)?;
    check_len(kernel, "dgate", dgate.len(), n)?;
    check_len(kernel, "dup", dup.len(), n)?;
    if n == 0 {
        return Ok(());
    }
    let function = gpu.kernel(&SWIGLU, kernel)?;
    let n_arg = n as u64;
    let mut launch = gpu.stream().launch_builder(&function);
    launch.arg(gate).arg(up).arg(dy).arg(dgate).arg(dup).arg(&n_arg);
    // SAFETY: (pointer x5, u64) matches the kernel; every buffer holds n elements.
    unsafe { launch.launch(config(gpu, n)) }.during(kernel)?;
    Ok(())
}

/// The backward over its inputs: `gate <- dgate`, `up <- dup`; `dy` is only read. All three of
/// equal length (zero is a no-op).
pub fn swiglu_bwd_inplace<T: KernelFloat>(
    gpu: &Gpu,
    gate: &mut CudaSlice<T>,
    up: &mut CudaSlice<T>,
    dy: &CudaSlice<T>,
) -> Result<()> {
    inplace(gpu, gate, up, dy, 0)
}

/// The backward over its inputs, Unsloth-style: `gate <- dgate`, `up <- dup` and
/// `dy <- h = silu(gate) * up` (the forward output, recomputed). All three of equal length.
pub fn swiglu_bwd_inplace_h<T: KernelFloat>(
    gpu: &Gpu,
    gate: &mut CudaSlice<T>,
    up: &mut CudaSlice<T>,
    dy: &mut CudaSlice<T>,
) -> Result<()> {
    inplace(gpu, gate, up, dy, 1)
}

fn inplace<T: KernelFloat>(
    gpu: &Gpu,
    gate: &mut CudaSlice<T>,
    up: &mut CudaSlice<T>,
    dy: &CudaSlice<T>,
    store_h: i32,
) -> Result<()> {
    let kernel = T::pick("swiglu_bwd_inplace_f32", "swiglu_bwd_inplace_bf16");
    let n = gate.len();
    check_len(kernel, "up", up.len(), n)?;
    check_len(kernel, "dy", dy.len(), n)?;
    if n == 0 {
        return Ok(());
    }
    let function = gpu.kernel(&SWIGLU, kernel)?;
    let n_arg = n as u64;
    let mut launch = gpu.stream().launch_builder(&function);
    launch.arg(gate).arg(up).arg(dy).arg(&store_h).arg(&n_arg);
    // SAFETY: (pointer x3, int, u64) matches the kernel; every buffer holds n elements. `dy` is
    // written only when store_h is 1, which only `swiglu_bwd_inplace_h` passes, holding it `&mut`.
    unsafe { launch.launch(config(gpu, n)) }.during(kernel)?;
    Ok(())
}
