//! ferrotune: QLoRA fine-tuning of Llama-family models in Rust.
//!
//! This crate is the CLI plus a thin re-export of the workspace's crates, so that an
//! application can depend on `ferrotune` alone.

pub use engine;
pub use gguf;
pub use model_llama;
pub use trainer;
