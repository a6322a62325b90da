//! Launchers for `kernels/reduce.cu`.

use cudarc::driver::{CudaSlice, CudaViewMut, LaunchConfig, PushKernelArg};

use super::KernelFloat;
use crate::error::{DriverContext, Result};
use crate::gpu::Gpu;
use crate::source::REDUCE;

/// Threads per block.
const BLOCK: u32 = 256;
/// At most this many blocks (and partial sums) per reduction.
pub const MAX_PARTIALS: usize = 256;

/// The number of partial sums [`sum_squares`] writes for `n` elements.
pub fn partials_for(n: usize) -> usize {
    n.div_ceil(BLOCK as usize * 4).clamp(1, MAX_PARTIALS)
}

/// Writes `partials_for(x.len())` f64 partial sums of `x[i]^2` into the front of `partials`
/// (which must hold at least that many); their sum is the squared L2 norm of `x`. `partials` may
/// be a piece of a larger buffer, so that the reductions of many tensors come back in one copy.
pub fn sum_squares<T: KernelFloat>(gpu: &Gpu, x: &CudaSlice<T>, partials: &mut CudaViewMut<'_, f64>) -> Result<usize> {
    let kernel = T::pick("sum_squares_f32", "sum_squares_bf16");
    let n = x.len();
    let blocks = partials_for(n);
    if partials.len() < blocks {
        return Err(super::invalid(kernel, format!("partials holds {}, needs {blocks}", partials.len())));
    }
    let function = gpu.kernel(&REDUCE, kernel)?;
    let n_arg = n as u64;
    let mut launch = gpu.stream().launch_builder(&function);
    launch.arg(x).arg(&n_arg).arg(partials);
    let config = LaunchConfig { grid_dim: (blocks as u32, 1, 1), block_dim: (BLOCK, 1, 1), shared_mem_bytes: 0 };
    // SAFETY: (pointer, u64, pointer) matches the kernel; x holds n elements and partials at
    // least `blocks` (checked above).
    unsafe { launch.launch(config) }.during(kernel)?;
    Ok(blocks)
}
