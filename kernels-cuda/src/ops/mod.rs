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
pub mod reduce;
pub mod rms_norm;
pub mod rope;
pub mod swiglu;

use cudarc::driver::DeviceRepr;
use half::bf16;

use crate::error::{Error, Result};

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
