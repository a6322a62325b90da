//! A merged 16-bit Hugging Face model folder: what `transformers` loads with
//! `AutoModelForCausalLM.from_pretrained(dir)`.
//!
//! [`save_merged_hf`] merges every LoRA adapter into its base weight in f32
//! ([`merged_weight`]: `W + scale * B @ A`, an NF4 base dequantized first), rounds each
//! tensor once to the stored dtype (bf16 by default, f16 or f32 on request) and streams the
//! tensors, one at a time, into safetensors shards of at most
//! [`SaveHfOptions::max_shard_bytes`] bytes of tensor data (a larger tensor gets a shard of its
//! own, as `transformers` does). One shard is `model.safetensors`; several are
//! `model-0000i-of-0000n.safetensors` listed by `model.safetensors.index.json`. Tensor names
//! are Hugging Face's (`model.layers.N.self_attn.q_proj.weight`, ...), `lm_head.weight` only
//! when the embeddings are untied.
//!
//! `config.json` is the source folder's own (every key kept) with `torch_dtype` / `dtype` set
//! to the stored dtype and `tie_word_embeddings` set to what was written; a model from a GGUF
//! file (or from no folder) gets one built from its [`LlamaConfig`]. The tokenizer files of
//! the source folder are copied as they are ([`TOKENIZER_FILES`]); for a GGUF source the
//! caller passes the tokenizer's files ([`SaveHfOptions::tokenizer`], built by
//! [`TokenizerFiles::from_tokenizer`] from the serialized `tokenizer.json` and the
//! [`Tokenizer`]'s special tokens and chat template), else the save is refused with an error
//! saying so.
//!
//! Everything is written into `<out>.tmp` and renamed to `<out>` at the end: a folder under
//! the final name is always complete. An existing non-empty `<out>` is refused unless
//! [`SaveHfOptions::overwrite`] is set.

use crate::config::LlamaConfig;
use crate::error::{LoadError, Result};
use crate::export_gguf::merged_weight;
use crate::model::Llama;
use crate::tokenizer::Tokenizer;
use serde_json::{json, Map, Value as Json};
use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

/// transformers' default shard size (`max_shard_size="5GB"`).
pub const DEFAULT_MAX_SHARD_BYTES: u64 = 5_000_000_000;

/// Files copied from a source model folder when present.
pub const TOKENIZER_FILES: [&str; 6] = [
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "generation_config.json",
    "tokenizer.model",
    "chat_template.jinja",
];

pub const INDEX_FILE: &str = "model.safetensors.index.json";
pub const SINGLE_FILE: &str = "model.safetensors";

/// The dtype the weights are stored in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HfDtype {
    Bf16,
    F16,
    /// Exact merged values; for checks and for tools that want full precision.
    F32,
}

impl HfDtype {
    /// The name `config.json` uses (`torch_dtype`).
    pub fn torch_name(self) -> &'static str {
        match self {
            HfDtype::Bf16 => "bfloat16",
            HfDtype::F16 => "float16",
            HfDtype::F32 => "float32",
        }
    }
    /// The safetensors header name.
    fn st_name(self) -> &'static str {
        match self {
            HfDtype::Bf16 => "BF16",
            HfDtype::F16 => "F16",
            HfDtype::F32 => "F32",
        }
    }
    pub fn size(self) -> u64 {
        match self {
            HfDtype::Bf16 | HfDtype::F16 => 2,
            HfDtype::F32 => 4,
        }
    }
}

impl std::str::FromStr for HfDtype {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "bf16" | "bfloat16" => Ok(HfDtype::Bf16),
            "f16" | "fp16" | "float16" => Ok(HfDtype::F16),
            "f32" | "fp32" | "float32" => Ok(HfDtype::F32),
            _ => Err(format!("unknown dtype \"{s}\" (expected bf16, f16 or f32)")),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct SaveHfOptions {
    pub dtype: HfDtype,
    /// Most bytes of tensor data in one shard.
    pub max_shard_bytes: u64,
    /// Replace an existing non-empty output folder.
    pub overwrite: bool,
    /// Tokenizer files to write when the source is not a model folder (a GGUF file).
    pub tokenizer: Option<TokenizerFiles>,
}

impl Default for SaveHfOptions {
    fn default() -> Self {
        SaveHfOptions {
            dtype: HfDtype::Bf16,
            max_shard_bytes: DEFAULT_MAX_SHARD_BYTES,
            overwrite: false,
            tokenizer: None,
        }
    }
}

/// The tokenizer files of a model that has no folder to copy them from.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenizerFiles {
    /// `tokenizer.json` text (the `tokenizers` crate's serialization).
    pub tokenizer_json: String,
    pub tokenizer_config: Json,
    pub generation_config: Option<Json>,
}

impl TokenizerFiles {
    /// `tokenizer_config.json` (BOS/EOS tokens, whether BOS is added, the chat template) and
    /// `generation_config.json` (BOS and end-of-generation ids) from `tok`, with
    /// `tokenizer_json` as serialized from it.
    pub fn from_tokenizer(tok: &Tokenizer, tokenizer_json: String) -> TokenizerFiles {
        let text = |id: Option<u32>| id.and_then(|i| tok.token_to_str(i));
        let mut config = json!({
            "tokenizer_class": "PreTrainedTokenizerFast",
            "bos_token": text(tok.bos_id()),
            "eos_token": text(tok.eos_id()),
            "add_bos_token": tok.add_bos(),
            "clean_up_tokenization_spaces": false,
        });
        if let Some(t) = tok.chat_template() {
            config["chat_template"] = json!(t);
        }
        let generation_config = (tok.bos_id().is_some() || !tok.eos_ids().is_empty()).then(|| {
            json!({
                "bos_token_id": tok.bos_id(),
                "eos_token_id": match tok.eos_ids() {
                    [one] => json!(one),
                    many => json!(many),
                },
            })
        });
        TokenizerFiles { tokenizer_json, tokenizer_config: config, generation_config }
    }
}

/// What [`save_merged_hf`] wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SaveHfSummary {
    pub dir: PathBuf,
    /// Shard file names, in order.
    pub shards: Vec<String>,
    pub n_tensors: usize,
    /// Bytes of tensor data over all shards (the index's `total_size`).
    pub total_size: u64,
    /// Files copied from the source folder (or written for it, like `tokenizer.json`).
    pub tokenizer_files: Vec<String>,
}

/// One tensor to write: its Hugging Face name, shape and where its values come from.
struct Planned {
    name: String,
    shape: Vec<usize>,
    src: Src,
}

enum Src {
    Embed,
    Norm,
    Head,
    InputNorm(usize),
    PostNorm(usize),
    Proj(usize, &'static str),
}

/// The projections with their Hugging Face module paths, in transformers' order.
const HF_PROJ: [(&str, &str); 7] = [
    ("q_proj", "self_attn.q_proj"),
    ("k_proj", "self_attn.k_proj"),
    ("v_proj", "self_attn.v_proj"),
    ("o_proj", "self_attn.o_proj"),
    ("gate_proj", "mlp.gate_proj"),
    ("up_proj", "mlp.up_proj"),
    ("down_proj", "mlp.down_proj"),
];

fn plan(model: &Llama) -> Vec<Planned> {
    let c = &model.config;
    let hd = c.hidden_size;
    let p = |name: String, shape: Vec<usize>, src: Src| Planned { name, shape, src };
    let mut out = vec![p("model.embed_tokens.weight".into(), vec![c.vocab_size, hd], Src::Embed)];
    for (i, layer) in model.layers.iter().enumerate() {
        out.push(p(format!("model.layers.{i}.input_layernorm.weight"), vec![hd], Src::InputNorm(i)));
        for (proj, path) in HF_PROJ {
            let (rows, cols) = layer.projection(proj).expect("known projection").base.dims();
            out.push(p(format!("model.layers.{i}.{path}.weight"), vec![rows, cols], Src::Proj(i, proj)));
        }
        out.push(p(format!("model.layers.{i}.post_attention_layernorm.weight"), vec![hd], Src::PostNorm(i)));
    }
    out.push(p("model.norm.weight".into(), vec![hd], Src::Norm));
    if let Some(head) = &model.lm_head {
        let (rows, cols) = head.base.dims();
        out.push(p("lm_head.weight".into(), vec![rows, cols], Src::Head));
    }
    out
}

/// The f32 values of one planned tensor, adapters merged.
fn values(model: &Llama, src: &Src) -> Result<Vec<f32>> {
    Ok(match src {
        Src::Embed => model.embed_tokens.to_vec_f32()?,
        Src::Norm => model.norm.to_vec_f32()?,
        Src::Head => merged_weight(model.lm_head.as_ref().expect("planned only when present"), "lm_head")?,
        Src::InputNorm(i) => model.layers[*i].input_norm.to_vec_f32()?,
        Src::PostNorm(i) => model.layers[*i].post_attention_norm.to_vec_f32()?,
        Src::Proj(i, p) => {
            merged_weight(model.layers[*i].projection(p).expect("known projection"), &format!("layer {i} {p}"))?
        }
    })
}

/// Little-endian bytes of `v` in `dtype`; a finite value that f16 cannot hold is an error.
fn encode(v: &[f32], dtype: HfDtype, name: &str) -> Result<Vec<u8>> {
    let mut out = Vec::with_capacity(v.len() * dtype.size() as usize);
    match dtype {
        HfDtype::F32 => v.iter().for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
        HfDtype::Bf16 => v.iter().for_each(|x| out.extend_from_slice(&half::bf16::from_f32(*x).to_le_bytes())),
        HfDtype::F16 => {
            for x in v {
                let h = half::f16::from_f32(*x);
                if x.is_finite() && !h.is_finite() {
                    return Err(LoadError::Invalid(format!(
                        "tensor \"{name}\" holds {x}, beyond the f16 range (±65504): store bf16 instead"
                    )));
                }
                out.extend_from_slice(&h.to_le_bytes());
            }
        }
    }
    Ok(out)
}

/// Splits `plan` into shards of at most `max` bytes (a larger tensor alone in its shard).
fn shard_ranges(plan: &[Planned], dtype: HfDtype, max: u64) -> Vec<std::ops::Range<usize>> {
    let mut ranges = Vec::new();
    let (mut start, mut size) = (0, 0u64);
    for (i, t) in plan.iter().enumerate() {
        let bytes = t.shape.iter().product::<usize>() as u64 * dtype.size();
        if i > start && size + bytes > max {
            ranges.push(start..i);
            (start, size) = (i, 0);
        }
        size += bytes;
    }
    if start < plan.len() {
        ranges.push(start..plan.len());
    }
    ranges
}

fn shard_name(i: usize, n: usize) -> String {
    if n == 1 {
        SINGLE_FILE.to_string()
    } else {
        format!("model-{:05}-of-{n:05}.safetensors", i + 1)
    }
}

fn io_in(path: &Path) -> impl Fn(std::io::Error) -> LoadError + '_ {
    move |e| LoadError::io(path, e)
}

/// Writes one safetensors file of `tensors` (values streamed one tensor at a time); returns
/// its tensor data size.
fn write_shard(model: &Llama, tensors: &[Planned], dtype: HfDtype, path: &Path) -> Result<u64> {
    let mut header = Map::new();
    header.insert("__metadata__".into(), json!({ "format": "pt" }));
    let mut offset = 0u64;
    for t in tensors {
        let bytes = t.shape.iter().product::<usize>() as u64 * dtype.size();
        header.insert(
            t.name.clone(),
            json!({ "dtype": dtype.st_name(), "shape": t.shape, "data_offsets": [offset, offset + bytes] }),
        );
        offset += bytes;
    }
    let mut head = serde_json::to_vec(&Json::Object(header)).expect("JSON value serializes");
    // The data starts 8-byte aligned, as the safetensors writer pads the header.
    head.resize(head.len().div_ceil(8) * 8, b' ');
    let mut w = BufWriter::new(File::create(path).map_err(io_in(path))?);
    w.write_all(&(head.len() as u64).to_le_bytes()).map_err(io_in(path))?;
    w.write_all(&head).map_err(io_in(path))?;
    for t in tensors {
        let v = values(model, &t.src).map_err(|e| e.in_file(path))?;
        debug_assert_eq!(v.len(), t.shape.iter().product::<usize>());
        w.write_all(&encode(&v, dtype, &t.name).map_err(|e| e.in_file(path))?).map_err(io_in(path))?;
    }
    w.into_inner().map_err(|e| LoadError::io(path, e.into_error()))?.sync_all().map_err(io_in(path))?;
    Ok(offset)
}

/// `config.json` built from the model's configuration (for a source without one).
pub fn config_json(c: &LlamaConfig, tied: bool) -> Result<Json> {
    if c.rope_scaling.is_none() && c.rope_freq_factors.is_some() {
        return Err(LoadError::Unsupported(
            "rope frequency factors without llama3 scaling parameters (a GGUF's rope_freqs.weight): \
             config.json cannot express them; save from the Hugging Face folder instead"
                .into(),
        ));
    }
    let mut j = json!({
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_act": "silu",
        "attention_bias": false,
        "mlp_bias": false,
        "hidden_size": c.hidden_size,
        "intermediate_size": c.intermediate_size,
        "num_hidden_layers": c.num_hidden_layers,
        "num_attention_heads": c.num_attention_heads,
        "num_key_value_heads": c.num_key_value_heads,
        "head_dim": c.head_dim,
        "vocab_size": c.vocab_size,
        "rms_norm_eps": c.rms_norm_eps,
        "rope_theta": c.rope_theta,
        "max_position_embeddings": c.max_position_embeddings,
        "tie_word_embeddings": tied,
        "bos_token_id": c.bos_token_id,
        "eos_token_id": match c.eos_token_ids.as_slice() {
            [] => Json::Null,
            [one] => json!(one),
            many => json!(many),
        },
    });
    if let Some(s) = &c.rope_scaling {
        j["rope_scaling"] = json!({
            "rope_type": "llama3",
            "factor": s.factor,
            "low_freq_factor": s.low_freq_factor,
            "high_freq_factor": s.high_freq_factor,
            "original_max_position_embeddings": s.original_max_position_embeddings,
        });
    }
    Ok(j)
}

/// Sets the stored dtype (every dtype key the config has, `torch_dtype` when it has none) and
/// whether the embeddings are tied.
fn patch_config(cfg: &mut Json, dtype: HfDtype, tied: bool) {
    let Some(obj) = cfg.as_object_mut() else { return };
    let mut set = false;
    for key in ["torch_dtype", "dtype"] {
        if obj.contains_key(key) {
            obj.insert(key.into(), json!(dtype.torch_name()));
            set = true;
        }
    }
    if !set {
        obj.insert("torch_dtype".into(), json!(dtype.torch_name()));
    }
    obj.insert("tie_word_embeddings".into(), json!(tied));
}

fn is_nonempty_dir(p: &Path) -> bool {
    std::fs::read_dir(p).map(|mut d| d.next().is_some()).unwrap_or(false)
}

/// `<out>.tmp`.
fn tmp_dir(out: &Path) -> PathBuf {
    let mut name = out.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    name.push(".tmp");
    out.with_file_name(name)
}

/// Writes `model`, adapters merged, as a Hugging Face folder at `out` (see the module docs).
/// `source` is the folder or `.gguf` file the model was loaded from (`None`: no files to copy,
/// a `config.json` built from the model's configuration).
pub fn save_merged_hf(model: &Llama, source: Option<&Path>, out: &Path, opts: &SaveHfOptions) -> Result<SaveHfSummary> {
    if out.exists() && !out.is_dir() {
        return Err(LoadError::InFile { path: out.to_path_buf(), msg: "exists and is not a folder".into() });
    }
    if is_nonempty_dir(out) && !opts.overwrite {
        return Err(LoadError::InFile {
            path: out.to_path_buf(),
            msg: "the output folder exists and is not empty; choose another folder or allow overwriting".into(),
        });
    }
    if opts.max_shard_bytes == 0 {
        return Err(LoadError::Invalid("max_shard_bytes must be above 0".into()));
    }
    let source_dir = source.filter(|p| p.is_dir());
    let same = |d: &Path| matches!((d.canonicalize(), out.canonicalize()), (Ok(a), Ok(b)) if a == b);
    if source_dir.is_some_and(same) {
        return Err(LoadError::InFile {
            path: out.to_path_buf(),
            msg: "the output folder is the source model's folder; write the merged model elsewhere".into(),
        });
    }
    if let Some(p) = source.filter(|p| !p.is_dir() && !p.is_file()) {
        return Err(LoadError::InFile { path: p.to_path_buf(), msg: "source model not found".into() });
    }
    let tied = model.lm_head.is_none();
    let mut config = match source_dir {
        Some(dir) => {
            let path = dir.join("config.json");
            let text = std::fs::read_to_string(&path).map_err(io_in(&path))?;
            serde_json::from_str(&text)
                .map_err(|e| LoadError::InFile { path: path.clone(), msg: format!("invalid JSON: {e}") })?
        }
        None => config_json(&model.config, tied)?,
    };
    patch_config(&mut config, opts.dtype, tied);
    if let (None, Some(src), None) = (source_dir, source, &opts.tokenizer) {
        return Err(LoadError::InFile {
            path: src.to_path_buf(),
            msg: "the model comes from a GGUF file, whose tokenizer has no tokenizer.json to copy: pass the \
                  serialized tokenizer (SaveHfOptions::tokenizer) or save from the Hugging Face folder"
                .into(),
        });
    }

    let tmp = tmp_dir(out);
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(io_in(&tmp))?;
    }
    let parent = out.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).and_then(|_| std::fs::create_dir(&tmp)).map_err(|e| LoadError::InFile {
        path: parent.to_path_buf(),
        msg: format!("cannot create {}: {e}", tmp.display()),
    })?;
    let result = write_folder(model, source_dir, &config, &tmp, opts);
    let summary = match result {
        Ok(s) => s,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&tmp);
            return Err(e);
        }
    };
    if out.exists() {
        std::fs::remove_dir_all(out).map_err(io_in(out))?;
    }
    std::fs::rename(&tmp, out).map_err(io_in(out))?;
    Ok(SaveHfSummary { dir: out.to_path_buf(), ..summary })
}

/// Everything of the folder, written into `dir`.
fn write_folder(
    model: &Llama,
    source_dir: Option<&Path>,
    config: &Json,
    dir: &Path,
    opts: &SaveHfOptions,
) -> Result<SaveHfSummary> {
    let planned = plan(model);
    let ranges = shard_ranges(&planned, opts.dtype, opts.max_shard_bytes);
    let n = ranges.len();
    let mut weight_map = BTreeMap::new();
    let mut shards = Vec::with_capacity(n);
    let mut total_size = 0;
    for (i, r) in ranges.into_iter().enumerate() {
        let name = shard_name(i, n);
        total_size += write_shard(model, &planned[r.clone()], opts.dtype, &dir.join(&name))?;
        for t in &planned[r] {
            weight_map.insert(t.name.clone(), name.clone());
        }
        shards.push(name);
    }
    if n > 1 {
        let index = json!({ "metadata": { "total_size": total_size }, "weight_map": weight_map });
        write_json(&dir.join(INDEX_FILE), &index)?;
    }
    write_json(&dir.join("config.json"), config)?;
    let mut tokenizer_files = Vec::new();
    if let Some(src) = source_dir {
        for f in TOKENIZER_FILES {
            let from = src.join(f);
            if from.is_file() {
                std::fs::copy(&from, dir.join(f)).map_err(io_in(&from))?;
                tokenizer_files.push(f.to_string());
            }
        }
    }
    if let Some(t) = opts.tokenizer.as_ref().filter(|_| tokenizer_files.is_empty()) {
        let path = dir.join("tokenizer.json");
        std::fs::write(&path, &t.tokenizer_json).map_err(io_in(&path))?;
        write_json(&dir.join("tokenizer_config.json"), &t.tokenizer_config)?;
        tokenizer_files.extend(["tokenizer.json".to_string(), "tokenizer_config.json".to_string()]);
        if let Some(g) = &t.generation_config {
            write_json(&dir.join("generation_config.json"), g)?;
            tokenizer_files.push("generation_config.json".into());
        }
    }
    Ok(SaveHfSummary { dir: dir.to_path_buf(), shards, n_tensors: planned.len(), total_size, tokenizer_files })
}

fn write_json(path: &Path, v: &Json) -> Result<()> {
    let text = serde_json::to_string_pretty(v).expect("JSON value serializes");
    std::fs::write(path, text + "\n").map_err(io_in(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn planned(sizes: &[usize]) -> Vec<Planned> {
        sizes.iter().map(|&s| Planned { name: format!("t{s}"), shape: vec![s], src: Src::Norm }).collect()
    }

    #[test]
    fn shards_pack_greedily_and_big_tensors_stand_alone() {
        // bf16: 2 bytes per value; limit 100 bytes = 50 values.
        let r = shard_ranges(&planned(&[20, 20, 20, 80, 5, 5]), HfDtype::Bf16, 100);
        assert_eq!(r, vec![0..2, 2..3, 3..4, 4..6]);
        assert_eq!(shard_ranges(&planned(&[1, 1]), HfDtype::F32, DEFAULT_MAX_SHARD_BYTES), vec![0..2]);
    }

    #[test]
    fn f16_overflow_is_an_error_naming_the_tensor() {
        let e = encode(&[1.0, 1e6], HfDtype::F16, "model.norm.weight").unwrap_err().to_string();
        assert!(e.contains("model.norm.weight") && e.contains("bf16"), "{e}");
        assert_eq!(encode(&[1.0], HfDtype::Bf16, "x").unwrap(), half::bf16::from_f32(1.0).to_le_bytes());
    }

    #[test]
    fn config_dtype_keys_are_set() {
        let mut c = json!({"dtype": "float32", "tie_word_embeddings": true});
        patch_config(&mut c, HfDtype::Bf16, false);
        assert_eq!(c, json!({"dtype": "bfloat16", "tie_word_embeddings": false}));
        let mut c = json!({});
        patch_config(&mut c, HfDtype::F16, true);
        assert_eq!(c, json!({"torch_dtype": "float16", "tie_word_embeddings": true}));
    }
}
