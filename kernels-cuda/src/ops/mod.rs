//! Typed launchers: one file per kernel module, each checking buffer sizes and dimensions before
//! enqueueing on [`Gpu::stream`](crate::Gpu::stream). Launches are asynchronous; errors of the
//! kernel itself surface at the next synchronization.

pub mod adamw;
pub mod attention;
pub mod copy;
pub mod cross_entropy;
pub mod elementwise;
pub mod embedding;
pub mod nf4;
pub mod nf4_gemm;
pub mod reduce;
pub mod rms_norm;
pub mod rope;
pub mod swiglu;

use std::sync::Mutex;

use cudarc::driver::sys::CUfunction_attribute;
use cudarc::driver::{CudaFunction, DeviceRepr, LaunchArgs, LaunchConfig};
use half::bf16;

use crate::error::{DriverContext, Error, Result};

/// A storage dtype of the kernels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dtype {
    /// IEEE binary32.
    F32,
    /// bfloat16.
    Bf16,
}

mod sealed {
    pub trait Sealed {}
    impl Sealed for f32 {}
    impl Sealed for half::bf16 {}
}

/// An element type the kernels take: `f32` or `bf16`.
pub trait KernelFloat: DeviceRepr + Copy + sealed::Sealed + 'static {
    /// Which dtype this is.
    const DTYPE: Dtype;

    /// `f32_kernel` or `bf16_kernel`, whichever matches this type.
    fn pick(f32_kernel: &'static str, bf16_kernel: &'static str) -> &'static str {
        match Self::DTYPE {
            Dtype::F32 => f32_kernel,
            Dtype::Bf16 => bf16_kernel,
        }
    }
}

impl KernelFloat for f32 {
    const DTYPE: Dtype = Dtype::F32;
}

impl KernelFloat for bf16 {
    const DTYPE: Dtype = Dtype::Bf16;
}

/// The 1-D launch of a grid-stride kernel: `blocks` blocks of `threads`, but at most
/// `per_multiprocessor` blocks per multiprocessor (the kernel loops over the rest) and at least
/// one.
fn grid_stride(blocks: usize, threads: u32, per_multiprocessor: usize, multiprocessors: u32) -> LaunchConfig {
    let cap = multiprocessors.max(1) as usize * per_multiprocessor;
    LaunchConfig { grid_dim: (blocks.clamp(1, cap) as u32, 1, 1), block_dim: (threads, 1, 1), shared_mem_bytes: 0 }
}

/// An [`Error::InvalidArgument`] for `kernel`.
fn invalid(kernel: &str, message: String) -> Error {
    Error::InvalidArgument { kernel: kernel.to_string(), message }
}

/// Fails unless buffer `what` holds exactly `want` elements.
fn check_len(kernel: &str, what: &str, got: usize, want: usize) -> Result<()> {
    if got == want {
        Ok(())
    } else {
        Err(invalid(kernel, format!("{what} has {got} elements, expected {want}")))
    }
}

/// Launches `launch` of `function` with `config`, first letting the function use the config's
/// dynamic shared memory (more than the default 48 KiB needs the attribute). The attribute is set
/// once per function handle and size (setting it before every launch costs several
/// microseconds); if the launch fails, it is set again and the launch retried once, for a
/// handle that belongs to a module loaded since (handles are reused).
///
/// # Safety
/// As [`LaunchArgs::launch`]: the arguments pushed must match the kernel's parameters, every
/// buffer must hold what the kernel touches with this config, and the shared memory must be
/// what the kernel expects.
unsafe fn launch_with_shared_memory(
    function: &CudaFunction,
    launch: &mut LaunchArgs,
    config: LaunchConfig,
    kernel: &str,
) -> Result<()> {
    let bytes = config.shared_mem_bytes as usize;
    allow_shared_memory(function, bytes, false)?;
    // SAFETY: the caller's contract.
    if unsafe { launch.launch(config) }.is_err() {
        allow_shared_memory(function, bytes, true)?;
        // SAFETY: the caller's contract.
        unsafe { launch.launch(config) }.during(kernel)?;
    }
    Ok(())
}

/// Lets `function` use `bytes` of dynamic shared memory, once per handle and size unless `force`.
fn allow_shared_memory(function: &CudaFunction, bytes: usize, force: bool) -> Result<()> {
    static ALLOWED: Mutex<Vec<(usize, usize)>> = Mutex::new(Vec::new());
    let key = (function.cu_function() as usize, bytes);
    let mut allowed = ALLOWED.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    if force || !allowed.contains(&key) {
        function
            .set_attribute(CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES, bytes as i32)
            .during("setting a kernel's dynamic shared memory size")?;
        if !allowed.contains(&key) {
            allowed.push(key);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grid_stride_covers_small_work_and_caps_large() {
        let blocks = |n, per, sms| grid_stride(n, 256, per, sms).grid_dim.0;
        assert_eq!(blocks(0, 32, 132), 1);
        assert_eq!(blocks(2, 32, 132), 2);
        assert_eq!(blocks(1 << 30, 32, 132), 132 * 32);
        assert_eq!(blocks(1 << 30, 8, 0), 8);
        assert_eq!(grid_stride(5, 128, 8, 132).block_dim, (128, 1, 1));
    }
}
