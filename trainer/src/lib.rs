//! LoRA adapters and QLoRA training.
//!
//! - [`lora`]: adapters on the projections by PEFT names, PEFT's initialization.
//! - [`adapter`]: PEFT adapter folders (`adapter_config.json` + `adapter_model.safetensors`).
//! - [`data`]: JSONL / JSON data sets, prompt templates, chat rendering, padding and labels.
//! - [`optim`]: AdamW (torch) and AdamW 8-bit (bitsandbytes), gradient clipping.
//! - [`quant8`]: blockwise 8-bit optimizer states on bitsandbytes' dynamic maps.
//! - [`plot`]: the loss curve as a PNG, from the step records or `metrics.jsonl`.
//! - [`schedule`]: warm-up with linear, cosine or constant learning rate.
//! - [`train`]: the loop with gradient accumulation, metrics, checkpoints and resume.

pub mod adapter;
pub mod data;
pub mod error;
pub mod lora;
pub mod optim;
mod optim_cuda;
pub mod plot;
pub mod quant8;
pub mod schedule;
mod st;
pub mod train;

pub use adapter::{load_adapter, read_adapter_config, save_adapter};
pub use data::{collate, Batch, DataFormat, DataOptions, Dataset, Example, PromptTemplate, TextEncoder};
pub use error::{Result, TrainError};
pub use lora::{attach, named_parameters, LoraConfig};
pub use optim::{clip_grad_norm, AdamWConfig, Optimizer, OptimizerKind};
pub use schedule::{Schedule, ScheduleKind};
pub use train::{accumulate_gradients, latest_checkpoint, GpuMemory, StepLog, TrainConfig, Trainer};
