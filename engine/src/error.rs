//! The engine's error type. Every fallible engine call returns [`Result`].

use crate::{DType, Device};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("shape mismatch in {op}: {msg}")]
    Shape { op: &'static str, msg: String },
    #[error("{op} does not support dtype {dtype:?}")]
    DType { op: &'static str, dtype: DType },
    #[error("{op}: tensors are on different devices ({a:?} and {b:?})")]
    DeviceMismatch { op: &'static str, a: Device, b: Device },
    #[error("CUDA device {ordinal} is not available: {reason}")]
    CudaUnavailable { ordinal: usize, reason: String },
    /// The GPU ran out of memory (the driver's or cuBLAS's allocation failure).
    #[error("out of GPU memory: {0}")]
    OutOfMemory(String),
    #[error("{0}")]
    Msg(String),
}

impl Error {
    pub fn shape(op: &'static str, msg: impl Into<String>) -> Self {
        Error::Shape { op, msg: msg.into() }
    }
}

pub type Result<T> = std::result::Result<T, Error>;

/// Returns early with an [`Error::Msg`] built from a format string.
#[macro_export]
macro_rules! bail {
    ($($arg:tt)*) => { return Err($crate::Error::Msg(format!($($arg)*))) };
}
