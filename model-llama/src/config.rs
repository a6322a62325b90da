//! Model configuration: Hugging Face `config.json` (Llama, Llama-3, DeepSeek-R1-Distill-Llama)
//! and the same fields read from GGUF metadata.

use crate::error::{LoadError, Result};
use serde::Deserialize;
use std::path::Path;

/// llama3-style rope scaling (Llama-3.1 and its distills).
#[derive(Debug, Clone, PartialEq)]
pub struct Llama3Scaling {
    pub factor: f64,
    pub low_freq_factor: f64,
    pub high_freq_factor: f64,
    pub original_max_position_embeddings: usize,
}

#[derive(Debug, Clone, PartialEq)]
pub struct LlamaConfig {
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    pub head_dim: usize,
    pub vocab_size: usize,
    pub rms_norm_eps: f64,
    pub rope_theta: f64,
    pub rope_scaling: Option<Llama3Scaling>,
    /// Per-pair divisors of the rotary frequencies, as GGUF files carry llama3 scaling
    /// (`rope_freqs.weight`); applied instead of `rope_scaling` when present.
    pub rope_freq_factors: Option<Vec<f64>>,
    pub max_position_embeddings: usize,
    pub tie_word_embeddings: bool,
    pub bos_token_id: Option<u32>,
    pub eos_token_ids: Vec<u32>,
}

#[derive(Deserialize)]
struct RawConfig {
    architectures: Option<Vec<String>>,
    model_type: Option<String>,
    hidden_size: Option<usize>,
    intermediate_size: Option<usize>,
    num_hidden_layers: Option<usize>,
    num_attention_heads: Option<usize>,
    num_key_value_heads: Option<usize>,
    head_dim: Option<usize>,
    vocab_size: Option<usize>,
    rms_norm_eps: Option<f64>,
    rope_theta: Option<f64>,
    rope_scaling: Option<serde_json::Value>,
    /// transformers 5 groups rope settings (theta included) under this key.
    rope_parameters: Option<serde_json::Value>,
    max_position_embeddings: Option<usize>,
    tie_word_embeddings: Option<bool>,
    bos_token_id: Option<u32>,
    eos_token_id: Option<serde_json::Value>,
}

impl LlamaConfig {
    /// Reads and checks a Hugging Face `config.json`.
    pub fn from_file(path: &Path) -> Result<LlamaConfig> {
        let text = std::fs::read_to_string(path).map_err(|e| LoadError::io(path, e))?;
        LlamaConfig::from_json(&text).map_err(|e| e.in_file(path))
    }

    pub fn from_json(text: &str) -> Result<LlamaConfig> {
        let raw: RawConfig =
            serde_json::from_str(text).map_err(|e| LoadError::Invalid(format!("invalid JSON: {e}")))?;
        let arch = raw.architectures.as_ref().and_then(|a| a.first().cloned()).unwrap_or_default();
        let model_type = raw.model_type.clone().unwrap_or_default();
        if model_type != "llama" && arch != "LlamaForCausalLM" {
            return Err(LoadError::Unsupported(format!(
                "architecture '{arch}' (model_type '{model_type}'): ferrotune supports Llama-family models \
                 (LlamaForCausalLM, model_type \"llama\")"
            )));
        }
        let need =
            |v: Option<usize>, key: &str| v.ok_or_else(|| LoadError::Invalid(format!("missing field \"{key}\"")));
        let hidden_size = need(raw.hidden_size, "hidden_size")?;
        let num_attention_heads = need(raw.num_attention_heads, "num_attention_heads")?;
        let rope = raw.rope_parameters.as_ref().or(raw.rope_scaling.as_ref());
        let rope_theta = raw
            .rope_theta
            .or_else(|| raw.rope_parameters.as_ref().and_then(|p| p.get("rope_theta")?.as_f64()))
            .unwrap_or(10000.0);
        let cfg = LlamaConfig {
            hidden_size,
            intermediate_size: need(raw.intermediate_size, "intermediate_size")?,
            num_hidden_layers: need(raw.num_hidden_layers, "num_hidden_layers")?,
            num_attention_heads,
            num_key_value_heads: raw.num_key_value_heads.unwrap_or(num_attention_heads),
            head_dim: raw.head_dim.unwrap_or(hidden_size / num_attention_heads.max(1)),
            vocab_size: need(raw.vocab_size, "vocab_size")?,
            rms_norm_eps: raw.rms_norm_eps.unwrap_or(1e-6),
            rope_theta,
            rope_scaling: rope.map(parse_scaling).transpose()?.flatten(),
            rope_freq_factors: None,
            max_position_embeddings: raw.max_position_embeddings.unwrap_or(2048),
            tie_word_embeddings: raw.tie_word_embeddings.unwrap_or(false),
            bos_token_id: raw.bos_token_id,
            eos_token_ids: match &raw.eos_token_id {
                Some(serde_json::Value::Number(n)) => n.as_u64().into_iter().map(|v| v as u32).collect(),
                Some(serde_json::Value::Array(a)) => a.iter().filter_map(|v| v.as_u64()).map(|v| v as u32).collect(),
                _ => vec![],
            },
        };
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks the relations between sizes that the forward pass relies on.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(LoadError::Invalid(m));
        if self.num_key_value_heads == 0 || !self.num_attention_heads.is_multiple_of(self.num_key_value_heads) {
            return bad(format!(
                "num_attention_heads ({}) must be a multiple of num_key_value_heads ({})",
                self.num_attention_heads, self.num_key_value_heads
            ));
        }
        if self.head_dim == 0 || !self.head_dim.is_multiple_of(2) {
            return bad(format!("head_dim ({}) must be even and nonzero", self.head_dim));
        }
        if self.hidden_size == 0 || self.vocab_size == 0 || self.num_hidden_layers == 0 {
            return bad("hidden_size, vocab_size and num_hidden_layers must be nonzero".into());
        }
        Ok(())
    }

    /// Rotary inverse frequencies per dimension pair, with llama3 scaling applied (as
    /// transformers' `_compute_llama3_parameters`).
    pub fn rope_inv_freq(&self) -> Vec<f64> {
        let d = self.head_dim;
        // f32 as in transformers: 1 / base^(arange(0, d, 2).float() / d)
        let base: Vec<f64> =
            (0..d / 2).map(|i| (1.0f32 / (self.rope_theta as f32).powf((2 * i) as f32 / d as f32)) as f64).collect();
        if let Some(factors) = &self.rope_freq_factors {
            return base.iter().zip(factors).map(|(f, k)| (f / k) as f32 as f64).collect();
        }
        let Some(s) = &self.rope_scaling else { return base };
        let old = s.original_max_position_embeddings as f64;
        let low_wavelen = old / s.low_freq_factor;
        let high_wavelen = old / s.high_freq_factor;
        base.into_iter()
            .map(|f| {
                let wavelen = 2.0 * std::f64::consts::PI / f;
                if wavelen < high_wavelen {
                    f
                } else if wavelen > low_wavelen {
                    f / s.factor
                } else {
                    let smooth = (old / wavelen - s.low_freq_factor) / (s.high_freq_factor - s.low_freq_factor);
                    (1.0 - smooth) * f / s.factor + smooth * f
                }
            })
            .map(|f| f as f32 as f64)
            .collect()
    }

    pub fn kv_dim(&self) -> usize {
        self.num_key_value_heads * self.head_dim
    }
    pub fn q_dim(&self) -> usize {
        self.num_attention_heads * self.head_dim
    }

    /// Every weight the model reads, by Hugging Face name, with the shape this configuration
    /// implies, in load order: embeddings, final norm, then per layer its two norms and the
    /// seven projections (in [`crate::PROJECTIONS`] order), and `lm_head.weight` last when the
    /// embeddings are not tied.
    pub fn weight_shapes(&self) -> Vec<(String, Vec<usize>)> {
        let (h, i, q, kv, v) = (self.hidden_size, self.intermediate_size, self.q_dim(), self.kv_dim(), self.vocab_size);
        let mut out =
            vec![("model.embed_tokens.weight".to_string(), vec![v, h]), ("model.norm.weight".into(), vec![h])];
        for l in 0..self.num_hidden_layers {
            let p = format!("model.layers.{l}");
            out.push((format!("{p}.input_layernorm.weight"), vec![h]));
            out.push((format!("{p}.post_attention_layernorm.weight"), vec![h]));
            for (name, shape) in [
                ("self_attn.q_proj", [q, h]),
                ("self_attn.k_proj", [kv, h]),
                ("self_attn.v_proj", [kv, h]),
                ("self_attn.o_proj", [h, q]),
                ("mlp.gate_proj", [i, h]),
                ("mlp.up_proj", [i, h]),
                ("mlp.down_proj", [h, i]),
            ] {
                out.push((format!("{p}.{name}.weight"), shape.to_vec()));
            }
        }
        if !self.tie_word_embeddings {
            out.push(("lm_head.weight".into(), vec![v, h]));
        }
        out
    }
}

fn parse_scaling(v: &serde_json::Value) -> Result<Option<Llama3Scaling>> {
    let kind = v.get("rope_type").or_else(|| v.get("type")).and_then(|t| t.as_str()).unwrap_or("default");
    match kind {
        "default" => Ok(None),
        "llama3" => {
            let f = |k: &str| {
                v.get(k)
                    .and_then(|x| x.as_f64())
                    .ok_or_else(|| LoadError::Invalid(format!("rope_scaling: missing \"{k}\"")))
            };
            Ok(Some(Llama3Scaling {
                factor: f("factor")?,
                low_freq_factor: f("low_freq_factor")?,
                high_freq_factor: f("high_freq_factor")?,
                original_max_position_embeddings: f("original_max_position_embeddings")? as usize,
            }))
        }
        other => Err(LoadError::Unsupported(format!("rope_scaling type \"{other}\" (supported: default, llama3)"))),
    }
}
