//! Quantization mixes: which GGML type each tensor of a `llama`-architecture model gets in a
//! llama.cpp file type, as `llama-quantize` decides (`llama_tensor_get_type` in llama.cpp's
//! `src/llama-quant.cpp`, without an importance matrix, type overrides or `--pure`).
//!
//! ```
//! use gguf::mixes::{tensor_type, FileType, ModelInfo};
//! use gguf::GgmlType;
//! // SmolLM2-135M: 30 layers, 9 heads, 3 KV heads, tied embeddings, hidden size 576.
//! let smol = ModelInfo { n_layers: 30, n_head: 9, n_head_kv: 3, tied_embeddings: true };
//! let t = |name, shape: &[usize]| tensor_type(FileType::Q4_K_M, name, shape, &smol);
//! assert_eq!(t("blk.0.ffn_down.weight", &[576, 1536]), GgmlType::Q6_K); // more bits, first layers
//! assert_eq!(t("blk.3.ffn_down.weight", &[576, 1536]), GgmlType::Q4_K);
//! assert_eq!(t("blk.3.ffn_up.weight", &[1536, 576]), GgmlType::Q5_0); // 576 columns: no K-quant
//! assert_eq!(t("blk.0.attn_v.weight", &[192, 576]), GgmlType::Q8_0); // Q6_K, falling back
//! assert_eq!(t("token_embd.weight", &[49152, 576]), GgmlType::Q8_0); // tied: the output rules
//! assert_eq!(t("blk.0.attn_norm.weight", &[576]), GgmlType::F32);
//! assert_eq!(FileType::Q4_K_M.id(), 15); // general.file_type
//! ```
//!
//! The rules, for the file types here:
//! - Tensors llama.cpp never quantizes keep their source type, which is f32 in what ferrotune
//!   writes: 1-D tensors (norms, `rope_freqs`), names not ending in `weight`, `*_norm.weight`.
//! - F32, F16, BF16: every other tensor gets that type.
//! - The output (`output.weight`, or `token_embd.weight` when the embeddings are tied):
//!   Q8_0 when its row length is not a multiple of the file type's block size, else Q6_K
//!   (Q8_0 files keep Q8_0).
//! - Q4_K_M / Q5_K_M: `attn_v` and `ffn_down` get Q6_K in the layers where
//!   `use_more_bits(i, n) = i < n/8 || i >= 7n/8 || (i - n/8) % 3 == 2`; with 80 layers and
//!   grouped-query attention (llama.cpp's "70B") the other `attn_v` get Q5_K.
//! - Everything else gets the file type's base type (Q4_K for Q4_K_M, Q5_K for Q5_K_M...).
//! - Fallback when the row length (innermost dimension) is not a multiple of the type's
//!   block size: Q4_K -> Q5_0, Q5_K -> Q5_1, Q6_K -> Q8_0, and F16 when even that does not
//!   fit (for a 32-block base type whose rows do not fit, llama.cpp refuses to quantize; F16
//!   is returned here). SmolLM2's hidden size 576 = 2.25 x 256 makes this matter.
//!
//! Checked tensor by tensor against `llama_model_quantize` of a llama.cpp build
//! (gguf/tests/mixes.rs, fixture from scripts/llama_quantize_ref.py) for SmolLM2-135M and
//! synthetic 32- and 80-layer models, for every file type here.

use engine::quant::ggml::GgmlType;
use std::fmt;
use std::str::FromStr;

/// A llama.cpp file type (`enum llama_ftype`), the `general.file_type` of a GGUF file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[allow(non_camel_case_types)]
pub enum FileType {
    F32,
    F16,
    BF16,
    Q8_0,
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q4_K_M,
    Q5_K_M,
    Q6_K,
}

/// (type, `general.file_type` id, name, base GGML type), from llama.h's `llama_ftype` and
/// llama-quant.cpp's `llama_ftype_get_default_type`.
const FILE_TYPES: [(FileType, u32, &str, GgmlType); 11] = [
    (FileType::F32, 0, "F32", GgmlType::F32),
    (FileType::F16, 1, "F16", GgmlType::F16),
    (FileType::Q4_0, 2, "Q4_0", GgmlType::Q4_0),
    (FileType::Q4_1, 3, "Q4_1", GgmlType::Q4_1),
    (FileType::Q8_0, 7, "Q8_0", GgmlType::Q8_0),
    (FileType::Q5_0, 8, "Q5_0", GgmlType::Q5_0),
    (FileType::Q5_1, 9, "Q5_1", GgmlType::Q5_1),
    (FileType::Q4_K_M, 15, "Q4_K_M", GgmlType::Q4_K),
    (FileType::Q5_K_M, 17, "Q5_K_M", GgmlType::Q5_K),
    (FileType::Q6_K, 18, "Q6_K", GgmlType::Q6_K),
    (FileType::BF16, 32, "BF16", GgmlType::BF16),
];

/// `general.quantization_version` that llama.cpp writes into quantized files
/// (`GGML_QNT_VERSION`).
pub const QUANTIZATION_VERSION: u32 = 2;

impl FileType {
    /// Every file type here, in id order.
    pub fn all() -> impl Iterator<Item = FileType> {
        FILE_TYPES.iter().map(|e| e.0)
    }

    fn entry(self) -> &'static (FileType, u32, &'static str, GgmlType) {
        // Every variant has one row (checked by a unit test).
        FILE_TYPES.iter().find(|e| e.0 == self).unwrap_or(&FILE_TYPES[0])
    }

    /// The `general.file_type` value (`LLAMA_FTYPE_ALL_F32` = 0, `MOSTLY_Q4_K_M` = 15, ...).
    pub fn id(self) -> u32 {
        self.entry().1
    }

    /// The file type with `general.file_type` value `id`, if it is one of these.
    pub fn from_id(id: u32) -> Option<FileType> {
        FILE_TYPES.iter().find(|e| e.1 == id).map(|e| e.0)
    }

    /// The name as llama-quantize spells it: `Q4_K_M`, `F16`, `BF16`...
    pub fn name(self) -> &'static str {
        self.entry().2
    }

    /// The file type called `name` (case-insensitive: `q4_k_m`, `Q8_0`, `f16`).
    pub fn from_name(name: &str) -> Option<FileType> {
        FILE_TYPES.iter().find(|e| e.2.eq_ignore_ascii_case(name)).map(|e| e.0)
    }

    /// The type most tensors get (Q4_K for Q4_K_M).
    pub fn base_type(self) -> GgmlType {
        self.entry().3
    }
}

impl fmt::Display for FileType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for FileType {
    type Err = String;
    fn from_str(s: &str) -> Result<FileType, String> {
        FileType::from_name(s).ok_or_else(|| {
            let names: Vec<&str> = FileType::all().map(FileType::name).collect();
            format!("unknown file type '{s}' (known: {})", names.join(", "))
        })
    }
}

/// What the mix rules need to know about the model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ModelInfo {
    /// Number of transformer blocks (`llama.block_count`).
    pub n_layers: usize,
    /// Attention heads (`llama.attention.head_count`).
    pub n_head: usize,
    /// Key/value heads (`llama.attention.head_count_kv`).
    pub n_head_kv: usize,
    /// True when there is no `output.weight` (the output reuses `token_embd.weight`).
    pub tied_embeddings: bool,
}

impl ModelInfo {
    /// llama.cpp's `LLM_TYPE_70B` for the llama architecture: 80 layers with grouped-query
    /// attention.
    fn is_70b(&self) -> bool {
        self.n_layers == 80 && self.n_head != self.n_head_kv
    }
}

/// The part of llama.cpp's `tensor_category` that the llama rules use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Category {
    TokenEmbd,
    Output,
    AttnV,
    AttnQkv,
    FfnDown,
    Other,
}

/// llama.cpp's `tensor_get_category` (same tests in the same order), reduced to the
/// categories with rules for the llama architecture and these file types.
fn category(name: &str) -> Category {
    const OTHER: [&str; 5] = ["attn_k.weight", "attn_q.weight", "attn_output.weight", "ffn_up", "ffn_gate"];
    if name == "output.weight" {
        Category::Output
    } else if name == "token_embd.weight" {
        Category::TokenEmbd
    } else if name.contains("attn_qkv.weight") {
        Category::AttnQkv
    } else if name.contains("attn_kv_b.weight") || name.contains("attn_v.weight") {
        Category::AttnV
    } else if OTHER.iter().any(|c| name.contains(c)) {
        Category::Other
    } else if name.contains("ffn_down") {
        Category::FfnDown
    } else {
        Category::Other
    }
}

/// llama.cpp's `tensor_allows_quantization`, for the names a llama model has.
fn allows_quantization(name: &str, shape: &[usize]) -> bool {
    shape.len() >= 2
        && name.ends_with("weight")
        && !name.contains("_norm.weight")
        && !name.contains("ffn_gate_inp.weight")
        && name != "position_embd.weight"
        && name != "token_types.weight"
}

/// The layer index of a `blk.N.` tensor.
fn layer_of(name: &str) -> Option<usize> {
    name.strip_prefix("blk.")?.split('.').next()?.parse().ok()
}

/// llama.cpp's `use_more_bits`: the first and last eighth of the layers and every third
/// layer in between.
pub fn use_more_bits(i_layer: usize, n_layers: usize) -> bool {
    let (i, n) = (i_layer as i64, n_layers as i64);
    i < n / 8 || i >= 7 * n / 8 || (i - n / 8) % 3 == 2
}

/// The GGML type `llama-quantize` gives the tensor `name` of shape `shape` (outermost first,
/// so `shape.last()` is the row length) in a file of type `file_type`. Tensors that llama.cpp
/// leaves unquantized get F32 (the type ferrotune writes them from). See the module docs.
pub fn tensor_type(file_type: FileType, name: &str, shape: &[usize], model: &ModelInfo) -> GgmlType {
    if !allows_quantization(name, shape) {
        return GgmlType::F32;
    }
    let base = file_type.base_type();
    if matches!(base, GgmlType::F32 | GgmlType::F16 | GgmlType::BF16) {
        return base;
    }
    let row_len = shape[shape.len() - 1];
    let mut ty = base;
    let cat = category(name);
    match cat {
        Category::Output | Category::TokenEmbd if cat == Category::Output || model.tied_embeddings => {
            if !row_len.is_multiple_of(base.block_size()) {
                ty = GgmlType::Q8_0;
            } else if ty != GgmlType::Q8_0 {
                ty = GgmlType::Q6_K;
            }
        }
        Category::AttnV => {
            let more_bits = layer_of(name).is_some_and(|i| use_more_bits(i, model.n_layers));
            if matches!(file_type, FileType::Q4_K_M | FileType::Q5_K_M) && more_bits {
                ty = GgmlType::Q6_K;
            }
            if model.is_70b() && matches!(ty, GgmlType::Q3_K | GgmlType::Q4_K) {
                ty = GgmlType::Q5_K;
            }
        }
        Category::FfnDown => {
            let more_bits = layer_of(name).is_some_and(|i| use_more_bits(i, model.n_layers));
            if matches!(file_type, FileType::Q4_K_M | FileType::Q5_K_M) && more_bits {
                ty = GgmlType::Q6_K;
            }
        }
        Category::AttnQkv => match file_type {
            FileType::Q4_K_M => ty = GgmlType::Q5_K,
            FileType::Q5_K_M => ty = GgmlType::Q6_K,
            _ => {}
        },
        _ => {}
    }
    // llama.cpp's tensor_type_fallback: rows that are not whole blocks of the chosen type.
    if !row_len.is_multiple_of(ty.block_size()) {
        ty = match ty {
            GgmlType::Q4_K => GgmlType::Q5_0,
            GgmlType::Q5_K => GgmlType::Q5_1,
            GgmlType::Q6_K => GgmlType::Q8_0,
            // llama.cpp has no fallback for these and refuses to quantize.
            _ => GgmlType::F16,
        };
        if !row_len.is_multiple_of(ty.block_size()) {
            ty = GgmlType::F16;
        }
    }
    ty
}

/// [`tensor_type`] for every tensor of a model, given as (name, shape) in any order; whether
/// the embeddings are tied follows from the absence of `output.weight`.
pub fn tensor_types<N: AsRef<str>, S: AsRef<[usize]>>(
    file_type: FileType,
    tensors: &[(N, S)],
    n_layers: usize,
    n_head: usize,
    n_head_kv: usize,
) -> Vec<GgmlType> {
    let tied_embeddings = !tensors.iter().any(|(n, _)| n.as_ref() == "output.weight");
    let model = ModelInfo { n_layers, n_head, n_head_kv, tied_embeddings };
    tensors.iter().map(|(n, s)| tensor_type(file_type, n.as_ref(), s.as_ref(), &model)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_names_and_base_types() {
        for ft in FileType::all() {
            assert_eq!(FileType::from_id(ft.id()), Some(ft));
            assert_eq!(FileType::from_name(&ft.name().to_lowercase()), Some(ft));
            assert_eq!(ft.to_string().parse::<FileType>(), Ok(ft));
            assert_eq!(FILE_TYPES.iter().filter(|e| e.0 == ft).count(), 1);
        }
        let ids: Vec<u32> = FileType::all().map(FileType::id).collect();
        assert_eq!(ids, [0, 1, 2, 3, 7, 8, 9, 15, 17, 18, 32]);
        assert_eq!(FileType::Q5_K_M.base_type(), GgmlType::Q5_K);
        assert_eq!(FileType::from_id(14), None, "Q4_K_S is not supported");
        assert!("q3_k_m".parse::<FileType>().unwrap_err().contains("known: F32, F16"));
    }

    #[test]
    fn use_more_bits_for_32_layers() {
        let layers: Vec<usize> = (0..32).filter(|&i| use_more_bits(i, 32)).collect();
        assert_eq!(layers, [0, 1, 2, 3, 6, 9, 12, 15, 18, 21, 24, 27, 28, 29, 30, 31]);
    }

    #[test]
    fn llama_3_8b_q4_k_m() {
        // 32 layers, hidden 4096, FFN 14336, untied: every row length is whole 256-blocks.
        let m = ModelInfo { n_layers: 32, n_head: 32, n_head_kv: 8, tied_embeddings: false };
        let t = |name, shape: &[usize]| tensor_type(FileType::Q4_K_M, name, shape, &m);
        assert_eq!(t("token_embd.weight", &[128256, 4096]), GgmlType::Q4_K);
        assert_eq!(t("output.weight", &[128256, 4096]), GgmlType::Q6_K);
        assert_eq!(t("blk.0.attn_v.weight", &[1024, 4096]), GgmlType::Q6_K);
        assert_eq!(t("blk.4.attn_v.weight", &[1024, 4096]), GgmlType::Q4_K);
        assert_eq!(t("blk.6.ffn_down.weight", &[4096, 14336]), GgmlType::Q6_K);
        assert_eq!(t("blk.7.ffn_down.weight", &[4096, 14336]), GgmlType::Q4_K);
        assert_eq!(t("blk.7.attn_q.weight", &[4096, 4096]), GgmlType::Q4_K);
        assert_eq!(t("rope_freqs.weight", &[64]), GgmlType::F32);
        assert_eq!(t("blk.7.ffn_norm.weight", &[4096]), GgmlType::F32);
    }
}
