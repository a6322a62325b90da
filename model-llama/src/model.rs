//! The Llama forward pass: embeddings, decoder layers (RMSNorm, RoPE, causal GQA
//! attention, SwiGLU MLP), final norm and LM head. One code path for training
//! (optionally checkpointed per layer) and for cached generation.

use crate::config::LlamaConfig;
use crate::error::{LoadError, Result};
use crate::kv_cache::KvCache;
use crate::linear::{BaseWeight, Linear};
use engine::ops::{self, RopeTable};
use engine::{autograd, DType, Tensor};
use std::sync::Arc;

/// Where the model's weights come from, by Hugging Face tensor name.
pub trait WeightSource {
    fn get(&self, name: &str) -> Result<Tensor>;
    fn contains(&self, name: &str) -> bool;
}

impl WeightSource for crate::safetensors_dir::SafetensorsDir {
    fn get(&self, name: &str) -> Result<Tensor> {
        crate::safetensors_dir::SafetensorsDir::get(self, name)
    }
    fn contains(&self, name: &str) -> bool {
        crate::safetensors_dir::SafetensorsDir::contains(self, name)
    }
}

/// Rows of logits the loss computes at a time: 256 x vocab (bf16: 66 MB for Llama-3's
/// 128256 tokens, plus as much for its gradient) instead of all `batch x seq` rows at once.
pub const LOSS_CHUNK_ROWS: usize = 256;

/// The seven projections LoRA can target, by their Hugging Face module names.
pub const PROJECTIONS: [&str; 7] = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"];

pub struct Layer {
    pub input_norm: Tensor,
    pub post_attention_norm: Tensor,
    pub q_proj: Linear,
    pub k_proj: Linear,
    pub v_proj: Linear,
    pub o_proj: Linear,
    pub gate_proj: Linear,
    pub up_proj: Linear,
    pub down_proj: Linear,
    cfg: Arc<LlamaConfig>,
    rope: RopeTable,
}

pub struct Llama {
    pub config: Arc<LlamaConfig>,
    pub embed_tokens: Tensor,
    pub layers: Vec<Arc<Layer>>,
    pub norm: Tensor,
    /// `None` when the embeddings are tied (the LM head is `embed_tokens`).
    pub lm_head: Option<Linear>,
    pub dtype: DType,
}

impl Layer {
    /// The projection called `name` (one of [`PROJECTIONS`]).
    pub fn projection_mut(&mut self, name: &str) -> Option<&mut Linear> {
        Some(match name {
            "q_proj" => &mut self.q_proj,
            "k_proj" => &mut self.k_proj,
            "v_proj" => &mut self.v_proj,
            "o_proj" => &mut self.o_proj,
            "gate_proj" => &mut self.gate_proj,
            "up_proj" => &mut self.up_proj,
            "down_proj" => &mut self.down_proj,
            _ => return None,
        })
    }
    pub fn projection(&self, name: &str) -> Option<&Linear> {
        Some(match name {
            "q_proj" => &self.q_proj,
            "k_proj" => &self.k_proj,
            "v_proj" => &self.v_proj,
            "o_proj" => &self.o_proj,
            "gate_proj" => &self.gate_proj,
            "up_proj" => &self.up_proj,
            "down_proj" => &self.down_proj,
            _ => return None,
        })
    }

    /// One decoder layer on `x: [b, t, hidden]` whose tokens sit at `start..start+t`.
    /// With a cache, this layer's keys and values are appended to `cache` slot `index`.
    pub fn forward(&self, x: &Tensor, start: usize, cache: Option<(&mut KvCache, usize)>) -> engine::Result<Tensor> {
        let c = &self.cfg;
        let (b, t) = (x.dim(0), x.dim(1));
        let positions: Vec<usize> = (start..start + t).collect();
        let heads = |y: Tensor, n: usize| -> engine::Result<Tensor> {
            ops::transpose(&ops::reshape(&y, &[b, t, n, c.head_dim])?, 1, 2)
        };
        let h = ops::rms_norm(x, &self.input_norm, c.rms_norm_eps)?;
        let q = ops::rope(&heads(self.q_proj.forward(&h)?, c.num_attention_heads)?, &self.rope, &positions)?;
        let k = ops::rope(&heads(self.k_proj.forward(&h)?, c.num_key_value_heads)?, &self.rope, &positions)?;
        let v = heads(self.v_proj.forward(&h)?, c.num_key_value_heads)?;
        let (k, v) = match cache {
            Some((cache, index)) => cache.append(index, &k, &v)?,
            None => (k, v),
        };
        let a = ops::attention(&q, &k, &v)?;
        let a = ops::reshape(&ops::transpose(&a, 1, 2)?, &[b, t, c.q_dim()])?;
        let x = ops::add(x, &self.o_proj.forward(&a)?)?;
        let h = ops::rms_norm(&x, &self.post_attention_norm, c.rms_norm_eps)?;
        let m = ops::swiglu(&self.gate_proj.forward(&h)?, &self.up_proj.forward(&h)?)?;
        ops::add(&x, &self.down_proj.forward(&m)?)
    }
}

/// What a training forward keeps for backward.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Checkpointing {
    /// Every activation (fastest, most memory).
    Off,
    /// Only each decoder layer's input; the layer runs again in backward.
    Recompute,
    /// As `Recompute`, with the layer inputs parked in pinned host memory (on a GPU).
    Offload,
}

impl From<bool> for Checkpointing {
    /// `true`: [`Checkpointing::Recompute`].
    fn from(on: bool) -> Checkpointing {
        if on {
            Checkpointing::Recompute
        } else {
            Checkpointing::Off
        }
    }
}

/// Where and how [`Llama::load_placed`] stores the weights as it reads them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Placement {
    pub device: engine::Device,
    /// Storage (and compute) dtype of the dense weights.
    pub dtype: DType,
    /// Quantize the seven projections of every layer to NF4 with double-quantized scales
    /// (bitsandbytes' `load_in_4bit`).
    pub nf4: bool,
}

impl Placement {
    /// Dense weights of `dtype` in host memory.
    pub fn cpu(dtype: DType) -> Placement {
        Placement { device: engine::Device::Cpu, dtype, nf4: false }
    }
}

impl Layer {
    /// Moves this layer's frozen weights to `device`, dense ones cast to `dtype`.
    pub fn to_device(&mut self, device: engine::Device, dtype: DType) -> engine::Result<()> {
        self.input_norm = ops::cast(&self.input_norm.to_device(device)?, dtype)?;
        self.post_attention_norm = ops::cast(&self.post_attention_norm.to_device(device)?, dtype)?;
        for p in PROJECTIONS {
            self.projection_mut(p).expect("known projection").base_to(device, dtype)?;
        }
        Ok(())
    }

    /// Replaces the seven projections' dense weights by their NF4 quantization.
    pub fn quantize_nf4(&mut self, double_quant: bool) -> engine::Result<()> {
        for p in PROJECTIONS {
            self.projection_mut(p).expect("known projection").quantize_nf4(double_quant)?;
        }
        Ok(())
    }
}

impl Llama {
    /// Builds the model from `source`, storing weights as `dtype` in host memory.
    pub fn load(config: LlamaConfig, source: &dyn WeightSource, dtype: DType) -> Result<Llama> {
        Llama::load_placed(config, source, Placement::cpu(dtype))
    }

    /// Builds the model from `source` layer by layer, each quantized and moved to its device as
    /// soon as it is read: host memory holds one layer at a time (an 8B model in bf16 never
    /// exists whole outside the file).
    pub fn load_placed(config: LlamaConfig, source: &dyn WeightSource, place: Placement) -> Result<Llama> {
        let config = Arc::new(config);
        let dtype = place.dtype;
        // Read into host memory as `dtype`, checking the shape.
        let read = |name: &str, shape: &[usize]| -> Result<Tensor> {
            let t = source.get(name)?;
            if t.shape() != shape {
                return Err(LoadError::Invalid(format!(
                    "tensor \"{name}\" has shape {:?}, the config implies {shape:?}",
                    t.shape()
                )));
            }
            Ok(ops::cast(&t, dtype)?)
        };
        let get = |name: &str, shape: &[usize]| -> Result<Tensor> { Ok(read(name, shape)?.to_device(place.device)?) };
        let c = &*config;
        let (hd, inter) = (c.hidden_size, c.intermediate_size);
        let rope = RopeTable::new(&c.rope_inv_freq(), c.max_position_embeddings);
        let mut layers = Vec::with_capacity(c.num_hidden_layers);
        for i in 0..c.num_hidden_layers {
            let p = format!("model.layers.{i}");
            let lin =
                |name: &str, out: usize, inp: usize| read(&format!("{p}.{name}.weight"), &[out, inp]).map(Linear::new);
            let mut layer = Layer {
                input_norm: get(&format!("{p}.input_layernorm.weight"), &[hd])?,
                post_attention_norm: get(&format!("{p}.post_attention_layernorm.weight"), &[hd])?,
                q_proj: lin("self_attn.q_proj", c.q_dim(), hd)?,
                k_proj: lin("self_attn.k_proj", c.kv_dim(), hd)?,
                v_proj: lin("self_attn.v_proj", c.kv_dim(), hd)?,
                o_proj: lin("self_attn.o_proj", hd, c.q_dim())?,
                gate_proj: lin("mlp.gate_proj", inter, hd)?,
                up_proj: lin("mlp.up_proj", inter, hd)?,
                down_proj: lin("mlp.down_proj", hd, inter)?,
                cfg: config.clone(),
                rope: rope.clone(),
            };
            // Moved first, so that a GPU quantizes its own weights (bit-identical to the CPU).
            layer.to_device(place.device, dtype)?;
            if place.nf4 {
                layer.quantize_nf4(true)?;
            }
            layers.push(Arc::new(layer));
        }
        let embed_tokens = get("model.embed_tokens.weight", &[c.vocab_size, hd])?;
        let lm_head = if c.tie_word_embeddings && !source.contains("lm_head.weight") {
            None
        } else {
            Some(Linear::new(get("lm_head.weight", &[c.vocab_size, hd])?))
        };
        Ok(Llama { embed_tokens, layers, norm: get("model.norm.weight", &[hd])?, lm_head, dtype, config })
    }

    /// Moves every frozen weight to `device`, cast to `dtype` (call before attaching adapters).
    pub fn to_device(&mut self, device: engine::Device, dtype: DType) -> engine::Result<()> {
        let mv = |t: &Tensor| ops::cast(&t.to_device(device)?, dtype);
        self.embed_tokens = mv(&self.embed_tokens)?;
        self.norm = mv(&self.norm)?;
        if let Some(head) = &mut self.lm_head {
            head.base_to(device, dtype)?;
        }
        for layer in &mut self.layers {
            let layer = Arc::get_mut(layer).ok_or_else(|| engine::Error::Msg("the model is shared".into()))?;
            layer.to_device(device, dtype)?;
        }
        self.dtype = dtype;
        Ok(())
    }

    /// Mutable access to layer `i` for attaching adapters (before any forward shares it).
    pub fn layer_mut(&mut self, i: usize) -> Option<&mut Layer> {
        self.layers.get_mut(i).and_then(Arc::get_mut)
    }

    /// Final hidden states `[b, t, hidden]` (after the last norm) for `ids: [b, t]` (u32).
    /// `checkpoint` says what each layer keeps for backward (see [`Checkpointing`]).
    pub fn hidden_states(
        &self,
        ids: &Tensor,
        mut cache: Option<&mut KvCache>,
        checkpoint: impl Into<Checkpointing>,
    ) -> engine::Result<Tensor> {
        let checkpoint = checkpoint.into();
        let start = cache.as_ref().map_or(0, |c| c.len());
        let mut x = ops::embedding(ids, &self.embed_tokens)?;
        for (i, layer) in self.layers.iter().enumerate() {
            x = match cache.as_deref_mut() {
                Some(c) => layer.forward(&x, start, Some((c, i)))?,
                None if checkpoint != Checkpointing::Off && autograd::is_grad_enabled() => {
                    let layer = layer.clone();
                    let segment: autograd::Segment = Arc::new(move |xs| layer.forward(&xs[0], start, None));
                    match checkpoint {
                        Checkpointing::Offload => autograd::checkpoint_offloaded(&[x], segment)?,
                        _ => autograd::checkpoint(&[x], segment)?,
                    }
                }
                None => layer.forward(&x, start, None)?,
            };
        }
        if let Some(c) = cache {
            c.advance(ids.dim(1));
        }
        ops::rms_norm(&x, &self.norm, self.config.rms_norm_eps)
    }

    /// Logits `[.., vocab]` of hidden states `[.., hidden]`.
    pub fn lm_logits(&self, h: &Tensor) -> engine::Result<Tensor> {
        match &self.lm_head {
            Some(head) => head.forward(h),
            None => ops::matmul_nt(h, &self.embed_tokens),
        }
    }

    /// Logits `[b, t, vocab]` for `ids: [b, t]`.
    pub fn forward(&self, ids: &Tensor, cache: Option<&mut KvCache>) -> engine::Result<Tensor> {
        let h = self.hidden_states(ids, cache, false)?;
        self.lm_logits(&h)
    }

    /// The next-token log-softmax after the last of `ids` (one sequence), computed in f64 from
    /// the f32 logits: what the comparisons with llama.cpp and transformers look at.
    pub fn next_token_logprobs(&self, ids: &[u32]) -> engine::Result<Vec<f32>> {
        let _ng = autograd::no_grad();
        let t = Tensor::from_vec(ids.to_vec(), &[1, ids.len()])?;
        let logits = self.forward(&t, None)?;
        let last = ops::narrow(&logits, 1, ids.len() - 1, 1)?.to_vec_f32()?;
        let max = last.iter().cloned().fold(f32::NEG_INFINITY, f32::max) as f64;
        let lse = max + last.iter().map(|&x| (x as f64 - max).exp()).sum::<f64>().ln();
        Ok(last.iter().map(|&x| (x as f64 - lse) as f32).collect())
    }

    /// Mean next-token cross-entropy, as transformers computes it: position `i` predicts
    /// `labels[i + 1]`; labels of -100 are ignored.
    pub fn loss(&self, ids: &Tensor, labels: &Tensor, checkpoint: impl Into<Checkpointing>) -> engine::Result<Tensor> {
        let (b, t) = (ids.dim(0), ids.dim(1));
        let h = self.hidden_states(ids, None, checkpoint)?;
        let h = ops::reshape(&ops::narrow(&h, 1, 0, t - 1)?, &[b * (t - 1), self.config.hidden_size])?;
        let targets = ops::reshape(&ops::contiguous(&ops::narrow(labels, 1, 1, t - 1)?)?, &[b * (t - 1)])?;
        let head = match &self.lm_head {
            None => Some(&self.embed_tokens),
            Some(Linear { base: BaseWeight::Dense(w), lora: None }) => Some(w),
            Some(_) => None,
        };
        match head {
            // A frozen dense head: chunked, never holding [tokens x vocab] logits.
            Some(w) => ops::lm_head_cross_entropy(&h, w, &targets, LOSS_CHUNK_ROWS),
            None => ops::cross_entropy(&self.lm_logits(&h)?, &targets),
        }
    }

    /// The base weight of every projection, for code that walks the model (export, stats).
    pub fn base_weight(&self, layer: usize, proj: &str) -> Option<&BaseWeight> {
        self.layers.get(layer)?.projection(proj).map(|l| &l.base)
    }
}
