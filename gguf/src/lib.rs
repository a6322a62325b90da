//! GGUF files (llama.cpp's model format): read through a memory map, written by streaming.
//!
//! ```no_run
//! let file = gguf::GgufFile::open("models/SmolLM2-135M-Instruct.Q4_1.gguf")?;
//! let layers = file.get_u32("llama.block_count")?;
//! let tokens: &[String] = file.get("tokenizer.ggml.tokens")?;
//! let embd = file.tensor("token_embd.weight")?;
//! let values: Vec<f32> = file.dequantize_f32(embd)?;
//! # Ok::<(), gguf::GgufError>(())
//! ```
//!
//! - [`GgufFile`]: header, metadata (every value type, nested arrays) and the tensor table,
//!   all checked when the file is opened; typed metadata getters; tensor bytes and f32
//!   dequantization (block formats in [`engine::quant::ggml`]).
//! - [`Value`], [`Array`], [`ValueType`], [`FromValue`]: metadata values.
//! - [`GgufWriter`], [`TensorSpec`]: write a GGUF v3 file, header first, then each tensor's
//!   data streamed (f32 values quantized on the way, or raw blocks), into a temporary file
//!   renamed into place by `finish`.
//! - [`mixes`]: which GGML type each tensor gets for a llama.cpp file type (`Q4_K_M`...),
//!   as `llama-quantize` decides for the `llama` architecture.
//! - [`GgufError`]: every message names the file and what was wrong with it.

mod error;
mod file;
pub mod mixes;
mod reader;
mod value;
mod writer;

pub use engine::quant::ggml::GgmlType;
pub use error::{GgufError, Result};
pub use file::{GgufFile, TensorInfo, DEFAULT_ALIGNMENT};
pub use reader::MAX_DIMS;
pub use value::{Array, FromValue, Value, ValueType};
pub use writer::{GgufWriter, TensorSpec, GGUF_VERSION, MAX_TENSOR_NAME};
