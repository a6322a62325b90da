//! Export to llama.cpp: a merged model GGUF ([`export_gguf`]) and a LoRA adapter GGUF
//! ([`export_lora_adapter_gguf`]).
//!
//! [`export_gguf`] merges every LoRA adapter into its base weight in f32
//! (`W + scale * B @ A`, an NF4 base dequantized first), permutes the Q and K rows into
//! llama.cpp's interleaved-RoPE order, types each tensor as `llama-quantize` would
//! ([`gguf::mixes::tensor_type`]) and streams the tensors one at a time through
//! [`GgufWriter`] (temporary file renamed into place: nothing appears under the final name
//! unless the file is complete). Metadata: the `llama` architecture keys, llama3 rope scaling
//! as the `rope_freqs.weight` tensor (as llama.cpp's `convert_hf_to_gguf.py` computes it), and
//! the tokenizer: copied verbatim from the source GGUF when the model came from one, else
//! built from the `tokenizer.json` the [`Tokenizer`] was read from (as the converter does:
//! `gpt2` model, tokens by id, token types, merges, special ids, chat template).
//!
//! [`export_lora_adapter_gguf`] writes llama.cpp's LoRA adapter format (as
//! `convert_lora_to_gguf.py`): `general.type = adapter`, `adapter.type = lora`,
//! `adapter.lora.alpha`, tensors `blk.N.attn_q.weight.lora_a` (`[r, in]`, GGML dims
//! `[in, r]`) and `.lora_b` (`[out, r]`, rows of Q and K permuted as the base's).

use crate::error::{LoadError, Result};
use crate::linear::{BaseWeight, Linear};
use crate::model::Llama;
use crate::tokenizer::Tokenizer;
use engine::{DType, Tensor};
use gguf::mixes::{self, FileType, ModelInfo};
use gguf::{Array, GgmlType, GgufFile, GgufWriter, TensorSpec, Value};
use rayon::prelude::*;
use serde_json::Value as Json;
use std::path::{Path, PathBuf};

/// What [`export_gguf`] wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportSummary {
    pub path: PathBuf,
    /// File size in bytes.
    pub size: u64,
    /// Number of tensors in the file.
    pub n_tensors: usize,
}

/// llama.cpp's `LLAMA_TOKEN_TYPE_*` values.
const TOKEN_NORMAL: i32 = 1;
const TOKEN_CONTROL: i32 = 3;
const TOKEN_USER_DEFINED: i32 = 4;
const TOKEN_UNUSED: i32 = 5;

/// llama.cpp's `permute` (convert_hf_to_gguf.py): Hugging Face row `h*d + s*d/2 + i` goes to
/// GGUF row `h*d + 2i + s` (head `h`, pair `i`, half `s`). Inverse of
/// [`crate::gguf_weights::unpermute_rows`].
pub fn permute_rows(w: &[f32], rows: usize, cols: usize, heads: usize) -> Vec<f32> {
    crate::gguf_weights::reorder_rows(w, rows, cols, heads, true)
}

/// The base weight of `lin` as f32 values `[out, in]` (NF4 dequantized).
fn base_f32(lin: &Linear) -> Result<Vec<f32>> {
    Ok(match &lin.base {
        BaseWeight::Dense(w) => w.to_vec_f32()?,
        BaseWeight::Nf4(n) => n.dequantize(DType::F32)?.to_vec_f32()?,
    })
}

/// The adapter of `lin` as f32 `(a [r, in], b [out, r], r)`, its shapes checked against the
/// base; `what` names the projection in errors.
/// An adapter as f32 values: `a [r, in]`, `b [out, r]`, rank, scale.
struct LoraF32 {
    a: Vec<f32>,
    b: Vec<f32>,
    r: usize,
    scale: f64,
}

fn lora_f32(lin: &Linear, what: &str) -> Result<Option<LoraF32>> {
    let Some(l) = &lin.lora else { return Ok(None) };
    let (rows, cols) = lin.base.dims();
    let (sa, sb) = (l.a.shape().to_vec(), l.b.shape().to_vec());
    let ok = sa.len() == 2 && sb.len() == 2 && sa[1] == cols && sb[0] == rows && sa[0] == sb[1] && sa[0] > 0;
    if !ok {
        return Err(LoadError::Invalid(format!(
            "{what}: LoRA shapes A {sa:?} and B {sb:?} do not fit the base weight [{rows}, {cols}] \
             (A must be [r, {cols}] and B [{rows}, r])"
        )));
    }
    Ok(Some(LoraF32 { a: l.a.to_vec_f32()?, b: l.b.to_vec_f32()?, r: sa[0], scale: l.scale }))
}

/// `W + scale * B @ A` of `lin` in f32, `[out, in]` row-major; `what` names it in errors.
pub fn merged_weight(lin: &Linear, what: &str) -> Result<Vec<f32>> {
    let adapter = lora_f32(lin, what)?;
    let mut w = base_f32(lin)?;
    let Some(LoraF32 { a, b, r, scale }) = adapter else { return Ok(w) };
    let (_, cols) = lin.base.dims();
    w.par_chunks_mut(cols).enumerate().for_each(|(o, row)| {
        for k in 0..r {
            let coef = (scale * b[o * r + k] as f64) as f32;
            if coef == 0.0 {
                continue;
            }
            for (x, &av) in row.iter_mut().zip(&a[k * cols..(k + 1) * cols]) {
                *x += coef * av;
            }
        }
    });
    Ok(w)
}

/// Merges every adapter of `model` into its base in place (dense f32 bases, adapters removed).
pub fn merge_adapters(model: &mut Llama) -> Result<()> {
    let n = model.layers.len();
    for i in 0..n {
        let layer = model
            .layer_mut(i)
            .ok_or_else(|| LoadError::Invalid(format!("layer {i} is shared and cannot be merged in place")))?;
        for p in crate::model::PROJECTIONS {
            let lin = layer.projection_mut(p).expect("known projection");
            if lin.lora.is_some() {
                let (rows, cols) = lin.base.dims();
                let w = merged_weight(lin, &format!("layer {i} {p}"))?;
                *lin = Linear::new(Tensor::from_vec(w, &[rows, cols])?);
            }
        }
    }
    if let Some(head) = &mut model.lm_head {
        if head.lora.is_some() {
            let (rows, cols) = head.base.dims();
            let w = merged_weight(head, "lm_head")?;
            *head = Linear::new(Tensor::from_vec(w, &[rows, cols])?);
        }
    }
    Ok(())
}

/// llama3 rope scaling factors per dimension pair, as llama.cpp's converter computes them
/// (`LlamaModel.generate_extra_tensors`), or the factors the model already carries.
fn rope_factors(model: &Llama) -> Option<Vec<f32>> {
    let c = &model.config;
    if let Some(f) = &c.rope_freq_factors {
        return Some(f.iter().map(|&v| v as f32).collect());
    }
    let s = c.rope_scaling.as_ref()?;
    let dim = c.head_dim;
    let old = s.original_max_position_embeddings as f64;
    let low_wavelen = old / s.low_freq_factor;
    let high_wavelen = old / s.high_freq_factor;
    Some(
        (0..dim / 2)
            .map(|i| {
                // freqs = 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim))
                let freq = (1.0f32 / (c.rope_theta as f32).powf((2 * i) as f32 / dim as f32)) as f64;
                let wavelen = 2.0 * std::f64::consts::PI / freq;
                let f = if wavelen < high_wavelen {
                    1.0
                } else if wavelen > low_wavelen {
                    s.factor
                } else {
                    let smooth = (old / wavelen - s.low_freq_factor) / (s.high_freq_factor - s.low_freq_factor);
                    1.0 / ((1.0 - smooth) / s.factor + smooth)
                };
                f as f32
            })
            .collect(),
    )
}

/// Where each exported tensor's values come from.
enum Src {
    Embd,
    Norm,
    Head,
    RopeFreqs(Vec<f32>),
    AttnNorm(usize),
    FfnNorm(usize),
    /// Layer, projection, head count to permute the rows with.
    Proj(usize, &'static str, Option<usize>),
}

const GGUF_PROJ: [(&str, &str); 7] = [
    ("q_proj", "attn_q"),
    ("k_proj", "attn_k"),
    ("v_proj", "attn_v"),
    ("o_proj", "attn_output"),
    ("gate_proj", "ffn_gate"),
    ("up_proj", "ffn_up"),
    ("down_proj", "ffn_down"),
];

fn in_file(out: &Path, e: LoadError) -> LoadError {
    match e {
        LoadError::Gguf(_) | LoadError::Io { .. } | LoadError::InFile { .. } => e,
        other => LoadError::InFile { path: out.to_path_buf(), msg: other.to_string() },
    }
}

fn u32v(v: usize) -> Value {
    Value::U32(v as u32)
}

/// The `llama.*` hyperparameter keys.
fn llama_metadata(model: &Llama) -> Vec<(String, Value)> {
    let c = &model.config;
    let mut md: Vec<(String, Value)> = vec![
        ("llama.context_length".into(), u32v(c.max_position_embeddings)),
        ("llama.embedding_length".into(), u32v(c.hidden_size)),
        ("llama.block_count".into(), u32v(c.num_hidden_layers)),
        ("llama.feed_forward_length".into(), u32v(c.intermediate_size)),
        ("llama.attention.head_count".into(), u32v(c.num_attention_heads)),
        ("llama.attention.head_count_kv".into(), u32v(c.num_key_value_heads)),
        ("llama.rope.freq_base".into(), Value::F32(c.rope_theta as f32)),
        ("llama.attention.layer_norm_rms_epsilon".into(), Value::F32(c.rms_norm_eps as f32)),
        ("llama.rope.dimension_count".into(), u32v(c.head_dim)),
        ("llama.vocab_size".into(), u32v(c.vocab_size)),
    ];
    if c.head_dim * c.num_attention_heads != c.hidden_size {
        md.push(("llama.attention.key_length".into(), u32v(c.head_dim)));
        md.push(("llama.attention.value_length".into(), u32v(c.head_dim)));
    }
    md
}

/// Writes `model` (adapters merged) with `tokenizer` as a llama.cpp GGUF of `file_type` at
/// `out`. `source` is the GGUF the model was loaded from, if any: its `tokenizer.*` keys are
/// copied verbatim (so llama.cpp tokenizes as it did for the source), and its architecture
/// must be `llama`. Without it, a tokenizer read from a GGUF has that file's keys copied, and
/// one read from a `tokenizer.json` has the metadata built from it. Errors name the file; nothing is left under `out` on failure.
pub fn export_gguf(
    model: &Llama,
    tokenizer: &Tokenizer,
    source: Option<&GgufFile>,
    out: &Path,
    file_type: FileType,
    name: &str,
) -> Result<ExportSummary> {
    let c = model.config.clone();
    if let Some(src) = source {
        let arch = src.get_str("general.architecture")?;
        if arch != "llama" {
            return Err(LoadError::InFile {
                path: src.path().to_path_buf(),
                msg: format!("unsupported architecture \"{arch}\": export writes the \"llama\" architecture only"),
            });
        }
    }
    // Check every adapter before creating anything.
    for (i, layer) in model.layers.iter().enumerate() {
        for p in crate::model::PROJECTIONS {
            lora_f32(layer.projection(p).expect("known projection"), &format!("layer {i} {p}"))
                .map_err(|e| in_file(out, e))?;
        }
    }

    let mut md: Vec<(String, Value)> = vec![
        ("general.architecture".into(), Value::String("llama".into())),
        ("general.type".into(), Value::String("model".into())),
        ("general.name".into(), Value::String(name.into())),
        ("general.file_type".into(), Value::U32(file_type.id())),
        ("general.quantization_version".into(), Value::U32(mixes::QUANTIZATION_VERSION)),
    ];
    md.extend(llama_metadata(model));
    let copy = |src: &GgufFile| -> Vec<(String, Value)> {
        src.metadata().iter().filter(|(k, _)| k.starts_with("tokenizer.")).cloned().collect()
    };
    let tok_md = match source {
        Some(src) => copy(src),
        // A tokenizer rebuilt from a GGUF: copy that file's keys.
        None if tokenizer.source().extension().is_some_and(|e| e.eq_ignore_ascii_case("gguf")) => {
            copy(&GgufFile::open(tokenizer.source())?)
        }
        None => tokenizer_metadata_from_json(tokenizer, c.vocab_size).map_err(|e| in_file(out, e))?,
    };
    if let Some((_, Value::Array(Array::String(tokens)))) = tok_md.iter().find(|(k, _)| k == "tokenizer.ggml.tokens") {
        if tokens.len() != c.vocab_size {
            return Err(LoadError::InFile {
                path: out.to_path_buf(),
                msg: format!(
                    "the tokenizer has {} tokens but the model's vocabulary is {}",
                    tokens.len(),
                    c.vocab_size
                ),
            });
        }
    }
    md.extend(tok_md);

    // Tensor list, in llama.cpp converter order.
    let hd = c.hidden_size;
    let mut plan: Vec<(String, Vec<usize>, Src)> =
        vec![("token_embd.weight".into(), vec![c.vocab_size, hd], Src::Embd)];
    if let Some(f) = rope_factors(model) {
        plan.push(("rope_freqs.weight".into(), vec![f.len()], Src::RopeFreqs(f)));
    }
    for i in 0..c.num_hidden_layers {
        plan.push((format!("blk.{i}.attn_norm.weight"), vec![hd], Src::AttnNorm(i)));
        for (p, g) in GGUF_PROJ {
            let (rows, cols) = model.layers[i].projection(p).expect("known projection").base.dims();
            let heads = match p {
                "q_proj" => Some(c.num_attention_heads),
                "k_proj" => Some(c.num_key_value_heads),
                _ => None,
            };
            plan.push((format!("blk.{i}.{g}.weight"), vec![rows, cols], Src::Proj(i, p, heads)));
        }
        plan.push((format!("blk.{i}.ffn_norm.weight"), vec![hd], Src::FfnNorm(i)));
    }
    plan.push(("output_norm.weight".into(), vec![hd], Src::Norm));
    if model.lm_head.is_some() {
        plan.push(("output.weight".into(), vec![c.vocab_size, hd], Src::Head));
    }

    let info = ModelInfo {
        n_layers: c.num_hidden_layers,
        n_head: c.num_attention_heads,
        n_head_kv: c.num_key_value_heads,
        tied_embeddings: model.lm_head.is_none(),
    };
    let specs: Vec<TensorSpec> = plan
        .iter()
        .map(|(n, shape, _)| TensorSpec::new(n.clone(), shape, mixes::tensor_type(file_type, n, shape, &info)))
        .collect();
    let n_tensors = specs.len();
    let mut w = GgufWriter::create(out, md, specs)?;
    for (tname, shape, src) in &plan {
        let values = match src {
            Src::Embd => model.embed_tokens.to_vec_f32()?,
            Src::Norm => model.norm.to_vec_f32()?,
            Src::Head => {
                merged_weight(model.lm_head.as_ref().expect("planned"), "lm_head").map_err(|e| in_file(out, e))?
            }
            Src::RopeFreqs(f) => f.clone(),
            Src::AttnNorm(i) => model.layers[*i].input_norm.to_vec_f32()?,
            Src::FfnNorm(i) => model.layers[*i].post_attention_norm.to_vec_f32()?,
            Src::Proj(i, p, heads) => {
                let lin = model.layers[*i].projection(p).expect("known projection");
                let v = merged_weight(lin, &format!("layer {i} {p}")).map_err(|e| in_file(out, e))?;
                match heads {
                    Some(h) => permute_rows(&v, shape[0], shape[1], *h),
                    None => v,
                }
            }
        };
        w.write_tensor(tname, &values)?;
    }
    let path = w.finish()?;
    let size = std::fs::metadata(&path).map_err(|e| LoadError::io(&path, e))?.len();
    Ok(ExportSummary { path, size, n_tensors })
}

/// The pre-tokenizer name llama.cpp gives this vocabulary (its converter decides by hashing
/// the tokenizer's output; here by its special tokens): `llama-bpe` for Llama-3 and the
/// DeepSeek-R1-Distill-Llama models, `smollm` for SmolLM2, else `default`.
fn guess_pre(tok: &Tokenizer) -> &'static str {
    let has = |t: &str| tok.token_to_id(t).is_some();
    if has("<|begin_of_text|>") || has("<｜begin▁of▁sentence｜>") {
        "llama-bpe"
    } else if has("<|im_start|>") && tok.vocab_size() == 49152 {
        "smollm"
    } else {
        "default"
    }
}

/// `tokenizer.*` keys built from the `tokenizer.json` the tokenizer was read from.
fn tokenizer_metadata_from_json(tok: &Tokenizer, n_vocab: usize) -> Result<Vec<(String, Value)>> {
    let path = tok.source().to_path_buf();
    let bad = |msg: String| LoadError::InFile { path: path.clone(), msg };
    let text = std::fs::read_to_string(&path).map_err(|e| LoadError::io(&path, e))?;
    let json: Json = serde_json::from_str(&text).map_err(|e| bad(format!("invalid JSON: {e}")))?;
    let m = json.get("model").ok_or_else(|| bad("no \"model\" section".into()))?;
    if m.get("type").and_then(Json::as_str) != Some("BPE") {
        return Err(LoadError::Unsupported(format!(
            "tokenizer model in {} (export supports byte-level BPE tokenizers)",
            path.display()
        )));
    }
    let mut tokens: Vec<Option<String>> = vec![None; n_vocab];
    let mut types = vec![TOKEN_NORMAL; n_vocab];
    let vocab = m.get("vocab").and_then(Json::as_object).ok_or_else(|| bad("no model.vocab".into()))?;
    let mut put = |id: u64, s: &str| -> Result<()> {
        let slot = tokens.get_mut(id as usize).ok_or_else(|| LoadError::InFile {
            path: path.clone(),
            msg: format!("token id {id} ('{s}') is outside the model's vocabulary of {n_vocab}"),
        })?;
        *slot = Some(s.to_string());
        Ok(())
    };
    for (s, id) in vocab {
        put(id.as_u64().ok_or_else(|| bad(format!("vocab entry '{s}' has no integer id")))?, s)?;
    }
    for t in json.get("added_tokens").and_then(Json::as_array).into_iter().flatten() {
        let (Some(id), Some(s)) = (t.get("id").and_then(Json::as_u64), t.get("content").and_then(Json::as_str)) else {
            continue;
        };
        put(id, s)?;
        let special = t.get("special").and_then(Json::as_bool).unwrap_or(false);
        types[id as usize] = if special { TOKEN_CONTROL } else { TOKEN_USER_DEFINED };
    }
    let tokens: Vec<String> = tokens
        .into_iter()
        .enumerate()
        .map(|(i, t)| {
            t.unwrap_or_else(|| {
                types[i] = TOKEN_UNUSED;
                format!("[PAD{i}]")
            })
        })
        .collect();
    let merges: Vec<String> = m
        .get("merges")
        .and_then(Json::as_array)
        .into_iter()
        .flatten()
        .filter_map(|v| match v {
            Json::String(s) => Some(s.clone()),
            Json::Array(p) => Some(p.iter().filter_map(Json::as_str).collect::<Vec<_>>().join(" ")),
            _ => None,
        })
        .collect();
    let mut md: Vec<(String, Value)> = vec![
        ("tokenizer.ggml.model".into(), Value::String("gpt2".into())),
        ("tokenizer.ggml.pre".into(), Value::String(guess_pre(tok).into())),
        ("tokenizer.ggml.tokens".into(), Value::Array(Array::String(tokens))),
        ("tokenizer.ggml.token_type".into(), Value::Array(Array::I32(types))),
        ("tokenizer.ggml.merges".into(), Value::Array(Array::String(merges))),
    ];
    if let Some(b) = tok.bos_id() {
        md.push(("tokenizer.ggml.bos_token_id".into(), Value::U32(b)));
    }
    if let Some(e) = tok.eos_id() {
        md.push(("tokenizer.ggml.eos_token_id".into(), Value::U32(e)));
        md.push(("tokenizer.ggml.padding_token_id".into(), Value::U32(e)));
    }
    md.push(("tokenizer.ggml.add_bos_token".into(), Value::Bool(tok.add_bos())));
    if let Some(t) = tok.chat_template() {
        md.push(("tokenizer.chat_template".into(), Value::String(t.into())));
    }
    Ok(md)
}

/// Writes the model's LoRA adapters as a llama.cpp LoRA adapter GGUF at `out` (F32 tensors),
/// for the base model `base_name` (written as `general.basename`). llama.cpp scales each adapter by `alpha / r`; `adapter.lora.alpha`
/// is the first adapter's `scale * r`, and an adapter with another scale has it folded into
/// its B. Errors: no adapters, shapes that do not fit the base, an unwritable output.
pub fn export_lora_adapter_gguf(model: &Llama, out: &Path, base_name: &str) -> Result<ExportSummary> {
    let c = &model.config;
    // (GGUF base tensor name, adapter, rows of the base, heads to permute B's rows with).
    let mut found: Vec<(String, LoraF32, usize, Option<usize>)> = Vec::new();
    for (i, layer) in model.layers.iter().enumerate() {
        for (p, g) in GGUF_PROJ {
            let lin = layer.projection(p).expect("known projection");
            if let Some(l) = lora_f32(lin, &format!("layer {i} {p}")).map_err(|e| in_file(out, e))? {
                let rows = lin.base.dims().0;
                let heads = match p {
                    "q_proj" => Some(c.num_attention_heads),
                    "k_proj" => Some(c.num_key_value_heads),
                    _ => None,
                };
                found.push((format!("blk.{i}.{g}.weight"), l, rows, heads));
            }
        }
    }
    if let Some(head) = &model.lm_head {
        if let Some(l) = lora_f32(head, "lm_head").map_err(|e| in_file(out, e))? {
            found.push(("output.weight".into(), l, head.base.dims().0, None));
        }
    }
    if found.is_empty() {
        return Err(LoadError::InFile {
            path: out.to_path_buf(),
            msg: "the model has no LoRA adapters to export".into(),
        });
    }
    let alpha = found[0].1.scale * found[0].1.r as f64;
    let md: Vec<(String, Value)> = vec![
        ("general.architecture".into(), Value::String("llama".into())),
        ("general.type".into(), Value::String("adapter".into())),
        ("general.name".into(), Value::String(format!("{base_name} LoRA"))),
        ("general.basename".into(), Value::String(base_name.into())),
        ("adapter.type".into(), Value::String("lora".into())),
        ("adapter.lora.alpha".into(), Value::F32(alpha as f32)),
    ];
    let mut specs = Vec::new();
    for (n, l, rows, _) in &found {
        specs.push(TensorSpec::new(format!("{n}.lora_a"), &[l.r, l.a.len() / l.r], GgmlType::F32));
        specs.push(TensorSpec::new(format!("{n}.lora_b"), &[*rows, l.r], GgmlType::F32));
    }
    let n_tensors = specs.len();
    let mut w = GgufWriter::create(out, md, specs)?;
    for (n, LoraF32 { a, b, r, scale }, rows, heads) in found {
        // llama.cpp applies alpha / r; fold whatever differs from this adapter's scale into B.
        let fold = (scale / (alpha / r as f64)) as f32;
        let mut b = if fold != 1.0 { b.iter().map(|v| v * fold).collect() } else { b };
        if let Some(h) = heads {
            b = permute_rows(&b, rows, r, h);
        }
        w.write_tensor(&format!("{n}.lora_a"), &a)?;
        w.write_tensor(&format!("{n}.lora_b"), &b)?;
    }
    let path = w.finish()?;
    let size = std::fs::metadata(&path).map_err(|e| LoadError::io(&path, e))?.len();
    Ok(ExportSummary { path, size, n_tensors })
}
