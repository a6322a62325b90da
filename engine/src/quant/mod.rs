//! Packed weight formats. Tensors in these formats are frozen: ops read them through
//! dequantization, and never compute gradients for them.

pub mod dynamic_map;
pub mod ggml;
pub mod nf4;
