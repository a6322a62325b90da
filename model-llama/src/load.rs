//! One entry point from what the user typed (`--model`) to a ready model and tokenizer:
//! a Hugging Face folder, a `.gguf` file, or a repo id resolved through the HF cache.

use crate::config::LlamaConfig;
use crate::error::Result;
use crate::gguf_weights::GgufWeights;
use crate::hub::{resolve_model, ResolvedModel};
use crate::model::{Llama, Placement};
use crate::safetensors_dir::SafetensorsDir;
use crate::tokenizer::Tokenizer;
use engine::DType;
use std::path::PathBuf;

pub struct LoadedModel {
    pub model: Llama,
    pub tokenizer: Tokenizer,
    /// The file or folder the weights came from.
    pub path: PathBuf,
}

/// Loads `spec` with weights stored as `dtype` in host memory.
pub fn load_model(spec: &str, dtype: DType) -> Result<LoadedModel> {
    load_model_placed(spec, Placement::cpu(dtype))
}

/// Loads `spec` layer by layer onto `place.device` (NF4 projections when `place.nf4`).
pub fn load_model_placed(spec: &str, place: Placement) -> Result<LoadedModel> {
    match resolve_model(spec, &[])? {
        ResolvedModel::Gguf(path) => {
            let weights = GgufWeights::open(&path)?;
            let config = weights.config()?;
            let tokenizer = Tokenizer::from_gguf(weights.file())?;
            let model = Llama::load_placed(config, &weights, place).map_err(|e| e.in_file(&path))?;
            Ok(LoadedModel { model, tokenizer, path })
        }
        ResolvedModel::Safetensors(files) => {
            let config = LlamaConfig::from_file(&files.config)?;
            let tokenizer = Tokenizer::from_file(&files.tokenizer)?;
            let weights = SafetensorsDir::open_files(&files.weights)?;
            let model = Llama::load_placed(config, &weights, place).map_err(|e| e.in_file(&files.dir))?;
            Ok(LoadedModel { model, tokenizer, path: files.dir })
        }
    }
}
