//! LoRA adapters and QLoRA training.

pub mod lora;

pub use lora::{attach, named_parameters, LoraConfig};
