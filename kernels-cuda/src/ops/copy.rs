//! Launcher for `kernels/copy.cu`: copies between two strided views of one shape, moving raw
//! 2- or 4-byte words (so every dtype of that size shares the kernel).

use cudarc::driver::{CudaSlice, DeviceRepr, PushKernelArg};

use super::{grid_stride, invalid};
use crate::error::{DriverContext, Result};
use crate::gpu::Gpu;
use crate::source::COPY;

/// The most dimensions a view may have.
pub const MAX_RANK: usize = 8;

/// Where the elements of a view sit in its buffer (in elements).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct View<'a> {
    pub shape: &'a [usize],
    pub strides: &'a [usize],
    pub offset: usize,
}

/// Kernel parameters, laid out as `struct Strided` in copy.cu.
#[repr(C)]
#[derive(Clone, Copy)]
struct Strided {
    n: u64,
    shape: [u64; MAX_RANK],
    src_strides: [u64; MAX_RANK],
    dst_strides: [u64; MAX_RANK],
    src_offset: u64,
    dst_offset: u64,
    rank: i32,
}

// SAFETY: plain old data with the C layout of the kernel's parameter struct.
unsafe impl DeviceRepr for Strided {}

/// Copies the elements of `src` (view `from`) into `dst` (view `to`, same shape). `T` is a
/// 2- or 4-byte element type.
pub fn copy_strided<T: DeviceRepr>(
    gpu: &Gpu,
    src: &CudaSlice<T>,
    from: &View,
    dst: &mut CudaSlice<T>,
    to: &View,
) -> Result<()> {
    let kernel = match std::mem::size_of::<T>() {
        2 => "copy_strided_b16",
        4 => "copy_strided_b32",
        other => {
            return Err(invalid("copy_strided", format!("{other}-byte elements are not supported")));
        }
    };
    let rank = from.shape.len();
    if from.shape != to.shape || rank > MAX_RANK || from.strides.len() != rank || to.strides.len() != rank {
        return Err(invalid(
            kernel,
            format!(
                "views {:?}/{:?} and {:?}/{:?} (rank at most {MAX_RANK})",
                from.shape, from.strides, to.shape, to.strides
            ),
        ));
    }
    let n: usize = from.shape.iter().product();
    if n == 0 {
        return Ok(());
    }
    let last = |v: &View| v.offset + v.shape.iter().zip(v.strides).map(|(d, s)| (d - 1) * s).sum::<usize>();
    if last(from) >= src.len() || last(to) >= dst.len() {
        return Err(invalid(
            kernel,
            format!(
                "a view reaches past its buffer (last elements {} and {}, buffers {} and {})",
                last(from),
                last(to),
                src.len(),
                dst.len()
            ),
        ));
    }
    let mut p = Strided {
        n: n as u64,
        shape: [1; MAX_RANK],
        src_strides: [0; MAX_RANK],
        dst_strides: [0; MAX_RANK],
        src_offset: from.offset as u64,
        dst_offset: to.offset as u64,
        rank: rank as i32,
    };
    for k in 0..rank {
        p.shape[k] = from.shape[k] as u64;
        p.src_strides[k] = from.strides[k] as u64;
        p.dst_strides[k] = to.strides[k] as u64;
    }
    let function = gpu.kernel(&COPY, kernel)?;
    let cfg = grid_stride(n.div_ceil(256), 256, 32, gpu.multiprocessors());
    let mut launch = gpu.stream().launch_builder(&function);
    launch.arg(src).arg(dst).arg(&p);
    // SAFETY: (pointer, pointer, Strided) matches the kernel, and every index it computes lies
    // within the buffers (checked above).
    unsafe { launch.launch(cfg) }.during(kernel)?;
    Ok(())
}
