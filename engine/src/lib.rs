//! ferrotune's tensor engine.
//!
//! - [`Tensor`]: a view over shared storage with shape/strides, a [`DType`] and a [`Device`].
//! - [`autograd`]: reverse-mode differentiation for tensors that require grad (trainable
//!   leaves only; frozen weights record nothing), a no-grad mode and [`autograd::checkpoint`].
//! - [`ops`]: every op with its forward, backward rule and CPU reference kernel in one file.
//!   The CPU kernels are generic over f32/f64 ([`Real`]) and accumulate in f32 for 16-bit
//!   storage; they are the reference twin of the CUDA kernels.
//! - [`quant`]: packed storage formats (bitsandbytes NF4 with double quantization, GGML blocks).

pub mod autograd;
pub mod cuda;
pub mod device;
pub mod dtype;
pub mod error;
pub mod layout;
pub mod offload;
pub mod ops;
pub mod quant;
pub mod rng;
pub mod storage;
pub mod tensor;

pub use autograd::{backward_from, checkpoint, checkpoint_offloaded, is_grad_enabled, no_grad, GradStore};
pub use device::Device;
pub use dtype::{DType, Real, WithDType};
pub use error::{Error, Result};
pub use layout::Layout;
pub use tensor::{Tensor, TensorId};

/// Worker threads the CPU backend uses (rayon's global pool; `RAYON_NUM_THREADS` sets it).
pub fn cpu_threads() -> usize {
    rayon::current_num_threads()
}
