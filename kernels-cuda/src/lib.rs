//! ferrotune's CUDA kernels: CUDA C sources shipped in the crate, compiled at run time by NVRTC
//! for the device's own architecture, cached in memory and on disk, and launched through typed
//! Rust functions.
//!
//! The crate builds and its tests run on machines without CUDA: libcuda, libnvrtc and libcublas
//! are opened at run time (cudarc's `dynamic-loading`), and every entry point checks for them
//! first, so a missing library is an [`Error::LibraryNotFound`] naming it, never a panic
//! (see [`libs`]).
//!
//! ```no_run
//! use kernels_cuda::{bf16, ops::rms_norm::rms_norm_fwd, Gpu};
//! # fn main() -> kernels_cuda::Result<()> {
//! let gpu = Gpu::new(0)?;
//! let (rows, width) = (2, 4);
//! let s = gpu.stream();
//! let x = s.clone_htod(&vec![bf16::ONE; rows * width]).unwrap();
//! let w = s.clone_htod(&vec![bf16::ONE; width]).unwrap();
//! let mut y = s.alloc_zeros::<bf16>(rows * width).unwrap();
//! let mut rstd = s.alloc_zeros::<f32>(rows).unwrap();
//! rms_norm_fwd(&gpu, &x, &w, &mut y, &mut rstd, rows, width, 1e-5)?;
//! gpu.synchronize()?;
//! # Ok(()) }
//! ```
//!
//! Layout: [`source`] (the shipped `.cu` files), [`compile`] (NVRTC and the caches), [`gpu`]
//! (devices, module loading, [`probe`]), [`ops`] (launchers), [`libs`] (finding the libraries).

pub mod compile;
pub mod error;
pub mod gpu;
pub mod libs;
pub mod ops;
pub mod source;

pub use compile::{cache_stats, CacheSource, CacheStats};
pub use cudarc;
pub use error::{Error, Result};
pub use gpu::{probe, DeviceInfo, Gpu, GpuInfo, LoadedModule};
pub use half::bf16;
pub use libs::{find_libraries, CudaLibrary, LibraryInfo};
pub use ops::{Dtype, KernelFloat};
