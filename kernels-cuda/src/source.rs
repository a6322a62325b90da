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
pub const COMMON: Header = Header {
    name: "common.cuh",
    source: include_str!("../kernels/common.cuh"),
};

/// `kernels/rms_norm.cu`: row-wise RMSNorm forward (y and 1/rms) and backward (dx only).
pub const RMS_NORM: KernelModule = KernelModule {
    name: "rms_norm",
    file: "rms_norm.cu",
    source: include_str!("../kernels/rms_norm.cu"),
    headers: &[COMMON],
    kernels: &[
        "rms_norm_fwd_f32",
        "rms_norm_fwd_bf16",
        "rms_norm_bwd_f32",
        "rms_norm_bwd_bf16",
    ],
};

/// `kernels/elementwise.cu`: f32 <-> bf16 casts and `add`.
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
    ],
};

/// Every module shipped with the crate.
pub const MODULES: &[KernelModule] = &[RMS_NORM, ELEMENTWISE];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_listed_kernel_is_defined_extern_c_in_its_source() {
        for module in MODULES {
            for kernel in module.kernels {
                let decl = format!("extern \"C\" __global__ void {kernel}(");
                assert!(
                    module.source.contains(&decl),
                    "{} does not define `{decl}`",
                    module.file
                );
            }
            let defined = module
                .source
                .matches("extern \"C\" __global__ void ")
                .count();
            assert_eq!(
                defined,
                module.kernels.len(),
                "{} defines kernels missing from its list",
                module.file
            );
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
