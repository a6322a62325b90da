//! Llama-family models: config, weights (safetensors folders, GGUF files), tokenizer,
//! forward pass with LoRA injection points, KV cache and generation.

pub mod chat;
pub mod config;
pub mod error;
pub mod export_gguf;
pub mod generate;
pub mod gguf_weights;
pub mod hub;
pub mod kv_cache;
pub mod linear;
pub mod load;
pub mod model;
pub mod modelfile;
pub mod safetensors_dir;
pub mod save_hf;
pub mod tokenizer;

pub use config::LlamaConfig;
pub use error::{LoadError, Result};
pub use kv_cache::KvCache;
pub use linear::{BaseWeight, Linear, Lora};
pub use load::{load_model, load_model_placed, LoadedModel};
pub use model::{Checkpointing, Layer, Llama, Placement, WeightSource, PROJECTIONS};
pub use safetensors_dir::SafetensorsDir;
pub use tokenizer::Tokenizer;
