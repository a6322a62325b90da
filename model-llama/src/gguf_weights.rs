//! Weights and config of a llama.cpp GGUF file, presented under Hugging Face names.
//! Block-quantized tensors are dequantized to f32; Q and K projections are un-permuted
//! from llama.cpp's interleaved-RoPE row order back to the Hugging Face layout.

use crate::config::LlamaConfig;
use crate::error::{LoadError, Result};
use crate::model::WeightSource;
use engine::Tensor;
use gguf::GgufFile;
use std::path::Path;

pub struct GgufWeights {
    file: GgufFile,
    heads: usize,
    kv_heads: usize,
}

impl GgufWeights {
    pub fn open(path: &Path) -> Result<GgufWeights> {
        let file = GgufFile::open(path)?;
        let arch = file.get_str("general.architecture")?;
        if arch != "llama" {
            return Err(LoadError::InFile {
                path: path.to_path_buf(),
                msg: format!("unsupported architecture \"{arch}\" (ferrotune supports \"llama\")"),
            });
        }
        let heads = file.get_u32("llama.attention.head_count")? as usize;
        let kv_heads = file.get_opt::<u32>("llama.attention.head_count_kv")?.map_or(heads, |v| v as usize);
        Ok(GgufWeights { file, heads, kv_heads })
    }

    pub fn file(&self) -> &GgufFile {
        &self.file
    }

    /// The model configuration from the `llama.*` metadata.
    pub fn config(&self) -> Result<LlamaConfig> {
        let f = &self.file;
        let u = |k: &str| -> Result<usize> { Ok(f.get_u32(&format!("llama.{k}"))? as usize) };
        let hidden = u("embedding_length")?;
        let vocab = match f.get_opt::<u32>("llama.vocab_size")? {
            Some(v) => v as usize,
            None => f.get_str_array("tokenizer.ggml.tokens")?.len(),
        };
        let factors = match f.tensors().iter().find(|t| t.name() == "rope_freqs.weight") {
            Some(t) => Some(f.dequantize_f32(t)?.into_iter().map(f64::from).collect()),
            None => None,
        };
        let cfg = LlamaConfig {
            hidden_size: hidden,
            intermediate_size: u("feed_forward_length")?,
            num_hidden_layers: u("block_count")?,
            num_attention_heads: self.heads,
            num_key_value_heads: self.kv_heads,
            head_dim: f
                .get_opt::<u32>("llama.rope.dimension_count")?
                .map_or(hidden / self.heads.max(1), |v| v as usize),
            vocab_size: vocab,
            rms_norm_eps: f.get_f32("llama.attention.layer_norm_rms_epsilon")? as f64,
            rope_theta: f.get_opt::<f32>("llama.rope.freq_base")?.unwrap_or(10000.0) as f64,
            rope_scaling: None,
            rope_freq_factors: factors,
            max_position_embeddings: u("context_length")?,
            tie_word_embeddings: !f.contains_tensor("output.weight"),
            bos_token_id: f.get_opt::<u32>("tokenizer.ggml.bos_token_id")?,
            eos_token_ids: f.get_opt::<u32>("tokenizer.ggml.eos_token_id")?.into_iter().collect(),
        };
        cfg.validate().map_err(|e| e.in_file(f.path()))?;
        Ok(cfg)
    }
}

/// The GGUF name of a Hugging Face tensor name, and the head count to un-permute with.
fn gguf_name(hf: &str, heads: usize, kv_heads: usize) -> Option<(String, Option<usize>)> {
    let fixed = match hf {
        "model.embed_tokens.weight" => Some("token_embd.weight"),
        "model.norm.weight" => Some("output_norm.weight"),
        "lm_head.weight" => Some("output.weight"),
        _ => None,
    };
    if let Some(n) = fixed {
        return Some((n.to_string(), None));
    }
    let rest = hf.strip_prefix("model.layers.")?;
    let (layer, tail) = rest.split_once('.')?;
    let (name, permute) = match tail {
        "self_attn.q_proj.weight" => ("attn_q", Some(heads)),
        "self_attn.k_proj.weight" => ("attn_k", Some(kv_heads)),
        "self_attn.v_proj.weight" => ("attn_v", None),
        "self_attn.o_proj.weight" => ("attn_output", None),
        "mlp.gate_proj.weight" => ("ffn_gate", None),
        "mlp.up_proj.weight" => ("ffn_up", None),
        "mlp.down_proj.weight" => ("ffn_down", None),
        "input_layernorm.weight" => ("attn_norm", None),
        "post_attention_layernorm.weight" => ("ffn_norm", None),
        _ => return None,
    };
    Some((format!("blk.{layer}.{name}.weight"), permute))
}

/// Inverse of llama.cpp's `permute`: GGUF row `h*d + 2i + s` holds Hugging Face row
/// `h*d + s*d/2 + i` (for head `h`, pair `i`, half `s`).
pub fn unpermute_rows(w: &[f32], rows: usize, cols: usize, heads: usize) -> Vec<f32> {
    reorder_rows(w, rows, cols, heads, false)
}

/// Moves the rows of a Q or K weight between the Hugging Face order (row `h*d + s*d/2 + i`)
/// and llama.cpp's interleaved one (row `h*d + 2i + s`): towards llama.cpp with `to_gguf`.
pub(crate) fn reorder_rows(w: &[f32], rows: usize, cols: usize, heads: usize, to_gguf: bool) -> Vec<f32> {
    let d = rows / heads;
    let mut out = vec![0.0; w.len()];
    for h in 0..heads {
        for i in 0..d / 2 {
            for s in 0..2 {
                let (hf, gguf) = ((h * d + s * d / 2 + i) * cols, (h * d + 2 * i + s) * cols);
                let (src, dst) = if to_gguf { (hf, gguf) } else { (gguf, hf) };
                out[dst..dst + cols].copy_from_slice(&w[src..src + cols]);
            }
        }
    }
    out
}

impl WeightSource for GgufWeights {
    fn get(&self, name: &str) -> Result<Tensor> {
        let (gname, permute) = gguf_name(name, self.heads, self.kv_heads).ok_or_else(|| LoadError::InFile {
            path: self.file.path().to_path_buf(),
            msg: format!("no GGUF tensor corresponds to \"{name}\""),
        })?;
        let info = self.file.tensor(&gname)?;
        let shape = info.shape();
        let mut values = self.file.dequantize_f32(info)?;
        if let (Some(heads), [rows, cols]) = (permute, shape.as_slice()) {
            values = unpermute_rows(&values, *rows, *cols, heads);
        }
        Ok(Tensor::from_vec(values, &shape)?)
    }

    fn contains(&self, name: &str) -> bool {
        gguf_name(name, self.heads, self.kv_heads).is_some_and(|(g, _)| self.file.contains_tensor(&g))
    }
}
