//! The CUDA C sources shipped inside the crate (`kernels/*.cu`, via `include_str!`).
//!
//! One [`KernelModule`] per op family; each exports `extern "C"` kernels named
//! `<op>_fwd_<dtype>` / `<op>_bwd_<dtype>` (DESIGN.md, convention 2). Shared helpers live in
//! `kernels/common.cuh`, handed to NVRTC as an in-memory [`Header`].

/// A header made available to `#include "<name>"` during compilation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    /// The name used in `#include "..."`.
    pub name: &'static str,
    /// Its text.
    pub source: &'static str,
}

/// One `.cu` file: compiled as a unit by NVRTC and loaded as one CUDA module.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KernelModule {
    /// Short unique name, used in cache keys and file names (e.g. `rms_norm`).
    pub name: &'static str,
    /// The file name shown in compile errors (e.g. `rms_norm.cu`).
    pub file: &'static str,
    /// The CUDA C++ source.
    pub source: &'static str,
    /// In-memory headers the source may include.
    pub headers: &'static [Header],
    /// The `extern "C"` kernels the module exports; all are looked up when it is loaded.
    pub kernels: &'static [&'static str],
}

/// `kernels/common.cuh`: f32/bf16 conversions, vector packs, warp and block reductions.
pub const COMMON: Header = Header { name: "common.cuh", source: include_str!("../kernels/common.cuh") };

/// `kernels/nf4.cuh`: the NF4 code values and the absmax decoding (plain or double-quantized).
pub const NF4_HEADER: Header = Header { name: "nf4.cuh", source: include_str!("../kernels/nf4.cuh") };

/// `kernels/mma.cuh`: bf16 tensor-core products (mma.sync m16n8k16) and ldmatrix loads.
pub const MMA: Header = Header { name: "mma.cuh", source: include_str!("../kernels/mma.cuh") };

/// `kernels/rms_norm.cu`: row-wise RMSNorm forward (y and 1/rms) and backward (dx only).
pub const RMS_NORM: KernelModule = KernelModule {
    name: "rms_norm",
    file: "rms_norm.cu",
    source: include_str!("../kernels/rms_norm.cu"),
    headers: &[COMMON],
    kernels: &["rms_norm_fwd_f32", "rms_norm_fwd_bf16", "rms_norm_bwd_f32", "rms_norm_bwd_bf16"],
};

/// `kernels/elementwise.cu`: f32 <-> bf16 casts, `add` and `scale`.
pub const ELEMENTWISE: KernelModule = KernelModule {
    name: "elementwise",
    file: "elementwise.cu",
    source: include_str!("../kernels/elementwise.cu"),
    headers: &[COMMON],
    kernels: &[
        "cast_f32_to_bf16",
        "cast_bf16_to_f32",
        "add_fwd_f32",
        "add_fwd_bf16",
        "scale_fwd_f32",
        "scale_fwd_bf16",
    ],
};

/// `kernels/rope.cu`: rotary position embedding in place (rotate-half layout), backward = the
/// same rotation with sin negated.
pub const ROPE: KernelModule = KernelModule {
    name: "rope",
    file: "rope.cu",
    source: include_str!("../kernels/rope.cu"),
    headers: &[COMMON],
    kernels: &["rope_fwd_f32", "rope_fwd_bf16", "rope_bwd_f32", "rope_bwd_bf16"],
};

/// `kernels/swiglu.cu`: `silu(gate) * up` and its backward, out of place or over its inputs.
pub const SWIGLU: KernelModule = KernelModule {
    name: "swiglu",
    file: "swiglu.cu",
    source: include_str!("../kernels/swiglu.cu"),
    headers: &[COMMON],
    kernels: &[
        "swiglu_fwd_f32",
        "swiglu_fwd_bf16",
        "swiglu_bwd_f32",
        "swiglu_bwd_bf16",
        "swiglu_bwd_inplace_f32",
        "swiglu_bwd_inplace_bf16",
    ],
};

/// `kernels/embedding.cu`: row gather by u32 id, scatter-add backward into an f32 table.
pub const EMBEDDING: KernelModule = KernelModule {
    name: "embedding",
    file: "embedding.cu",
    source: include_str!("../kernels/embedding.cu"),
    headers: &[COMMON],
    kernels: &["embedding_fwd_f32", "embedding_fwd_bf16", "embedding_bwd_f32", "embedding_bwd_bf16"],
};

/// `kernels/cross_entropy.cu`: per-row logsumexp and loss (label -100 ignored), the gradient in
/// place, or both in one launch.
pub const CROSS_ENTROPY: KernelModule = KernelModule {
    name: "cross_entropy",
    file: "cross_entropy.cu",
    source: include_str!("../kernels/cross_entropy.cu"),
    headers: &[COMMON],
    kernels: &[
        "cross_entropy_fwd_f32",
        "cross_entropy_fwd_bf16",
        "cross_entropy_bwd_f32",
        "cross_entropy_bwd_bf16",
        "cross_entropy_fused_f32",
        "cross_entropy_fused_bf16",
    ],
};

/// `kernels/nf4.cu`: NF4 dequantization (bit-exact with the CPU twin) and the fused NF4 GEMV.
pub const NF4: KernelModule = KernelModule {
    name: "nf4",
    file: "nf4.cu",
    source: include_str!("../kernels/nf4.cu"),
    headers: &[COMMON, NF4_HEADER],
    kernels: &[
        "nf4_dequant_f32",
        "nf4_dequant_bf16",
        "nf4_quantize_f32",
        "nf4_quantize_bf16",
        "nf4_gemv1_f32",
        "nf4_gemv2_f32",
        "nf4_gemv3_f32",
        "nf4_gemv4_f32",
        "nf4_gemv5_f32",
        "nf4_gemv6_f32",
        "nf4_gemv7_f32",
        "nf4_gemv8_f32",
        "nf4_gemv1_bf16",
        "nf4_gemv2_bf16",
        "nf4_gemv3_bf16",
        "nf4_gemv4_bf16",
        "nf4_gemv5_bf16",
        "nf4_gemv6_bf16",
        "nf4_gemv7_bf16",
        "nf4_gemv8_bf16",
    ],
};

/// `kernels/nf4_gemm.cu`: bf16 GEMMs with an NF4 weight decoded tile by tile (forward
/// `a @ W^T` and backward `a @ W`), and the reduction of their split-k partial sums.
pub const NF4_GEMM: KernelModule = KernelModule {
    name: "nf4_gemm",
    file: "nf4_gemm.cu",
    source: include_str!("../kernels/nf4_gemm.cu"),
    headers: &[COMMON, MMA, NF4_HEADER],
    kernels: &[
        "nf4_gemm_fwd_bf16_m64",
        "nf4_gemm_fwd_bf16_m128",
        "nf4_gemm_bwd_bf16_m64",
        "nf4_gemm_bwd_bf16_m128",
        "nf4_gemm_reduce_bf16",
    ],
};

/// `kernels/copy.cu`: strided copies between views of one shape (2- and 4-byte elements).
pub const COPY: KernelModule = KernelModule {
    name: "copy",
    file: "copy.cu",
    source: include_str!("../kernels/copy.cu"),
    headers: &[],
    kernels: &["copy_strided_b16", "copy_strided_b32"],
};

/// `kernels/attention.cu`: causal GQA flash attention, forward (o, lse) and backward (dq, dk, dv);
/// bf16 on tensor cores (head_dim 64, 128), f32 on CUDA cores.
pub const ATTENTION: KernelModule = KernelModule {
    name: "attention",
    file: "attention.cu",
    source: include_str!("../kernels/attention.cu"),
    headers: &[COMMON, MMA],
    kernels: &[
        "attention_fwd_bf16_d64",
        "attention_fwd_bf16_d128",
        "attention_fwd_f32",
        "attention_bwd_pre_bf16",
        "attention_bwd_pre_f32",
        "attention_bwd_bf16_d64",
        "attention_bwd_bf16_d128",
        "attention_bwd_post_bf16",
        "attention_bwd_dq_f32",
        "attention_bwd_dkdv_f32",
    ],
};

/// `kernels/adamw.cu`: AdamW steps (f32 masters; f32 or blockwise 8-bit moments; f32 or bf16 grads).
pub const ADAMW: KernelModule = KernelModule {
    name: "adamw",
    file: "adamw.cu",
    source: include_str!("../kernels/adamw.cu"),
    headers: &[COMMON],
    kernels: &["adamw_f32_gf32", "adamw_f32_gbf16", "adamw_8bit_gf32", "adamw_8bit_gbf16"],
};

/// `kernels/reduce.cu`: per-block f64 partial sums of squares (gradient norms).
pub const REDUCE: KernelModule = KernelModule {
    name: "reduce",
    file: "reduce.cu",
    source: include_str!("../kernels/reduce.cu"),
    headers: &[COMMON],
    kernels: &["sum_squares_f32", "sum_squares_bf16"],
};

/// Every module shipped with the crate.
pub const MODULES: &[KernelModule] =
    &[COPY, RMS_NORM, ELEMENTWISE, ROPE, SWIGLU, EMBEDDING, CROSS_ENTROPY, NF4, NF4_GEMM, ATTENTION, ADAMW, REDUCE];

#[cfg(test)]
mod tests {
    use super::*;

    /// The names after each `extern "C" __global__ void` of `source` (past an optional
    /// `__launch_bounds__(...)`).
    fn defined_kernels(source: &str) -> Vec<&str> {
        source
            .split("extern \"C\" __global__ void ")
            .skip(1)
            .map(|rest| {
                let rest = rest.trim_start();
                let rest = match rest.strip_prefix("__launch_bounds__(") {
                    Some(bounds) => bounds.split_once(')').expect("closed launch bounds").1.trim_start(),
                    None => rest,
                };
                rest.split('(').next().unwrap().trim()
            })
            .collect()
    }

    #[test]
    fn every_listed_kernel_is_defined_extern_c_in_its_source() {
        for module in MODULES {
            let defined = defined_kernels(module.source);
            for kernel in module.kernels {
                assert!(defined.contains(kernel), "{} does not define `{kernel}` extern \"C\"", module.file);
            }
            assert_eq!(defined.len(), module.kernels.len(), "{} defines kernels missing from its list", module.file);
        }
    }

    #[test]
    fn module_names_are_unique_and_headers_are_included() {
        for (i, a) in MODULES.iter().enumerate() {
            for b in &MODULES[i + 1..] {
                assert_ne!(a.name, b.name);
            }
            for header in a.headers {
                assert!(a.source.contains(&format!("#include \"{}\"", header.name)));
            }
        }
    }
}
