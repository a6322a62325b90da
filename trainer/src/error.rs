//! The trainer's error type. Messages name the file, line, field, step or tensor at fault.

use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error(transparent)]
    Engine(#[from] engine::Error),
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
    /// A data set or template problem; the message names the file and line.
    #[error("{0}")]
    Data(String),
    /// Inconsistent or unsupported settings.
    #[error("{0}")]
    Config(String),
    /// An adapter folder that cannot be written or does not fit the model.
    #[error("{0}")]
    Adapter(String),
    /// A checkpoint that cannot be written, read or resumed from.
    #[error("{0}")]
    Checkpoint(String),
    /// The loss or the gradient norm stopped being finite.
    #[error(
        "{what} is {value} at step {step}; training stopped. {}",
        match last_checkpoint {
            Some(p) => format!("The last good checkpoint is {}.", p.display()),
            None => "No checkpoint was written before it.".to_string(),
        }
    )]
    NonFinite { step: usize, what: &'static str, value: f64, last_checkpoint: Option<PathBuf> },
    /// The GPU ran out of memory during a step.
    #[error(
        "out of GPU memory at step {step} (batch_size {batch_size}, longest row {longest} tokens{}): lower batch_size \
         (raise grad_accum to keep the effective batch), lower max_seq_length, or turn gradient_checkpointing on ({detail})",
        if *checkpointing { ", gradient checkpointing on" } else { ", gradient checkpointing off" }
    )]
    OutOfMemory { step: usize, batch_size: usize, longest: usize, checkpointing: bool, detail: String },
    /// A stop was requested (Ctrl-C); the run ended between two steps.
    #[error(
        "training interrupted after step {step}. {}",
        match checkpoint {
            Some(p) => format!("Checkpoint written to {}; continue with --resume latest.", p.display()),
            None => "No output_dir, so no checkpoint was written.".to_string(),
        }
    )]
    Interrupted { step: usize, checkpoint: Option<PathBuf> },
}

impl TrainError {
    /// Whether this is the GPU's out-of-memory error.
    pub fn is_out_of_memory(&self) -> bool {
        matches!(self, TrainError::Engine(engine::Error::OutOfMemory(_)))
    }

    pub fn io(path: &Path, source: std::io::Error) -> TrainError {
        TrainError::Io { path: path.to_path_buf(), source }
    }
}

pub type Result<T> = std::result::Result<T, TrainError>;

#[cfg(test)]
mod tests {
    use super::*;

    /// The engine's out-of-memory error (engine::cuda::err makes it from the driver's) is
    /// recognized, and the message built from it names the settings to lower.
    #[test]
    fn out_of_memory_is_recognized_and_explained() {
        let driver = TrainError::Engine(engine::Error::OutOfMemory(
            "device allocation: DriverError(CUDA_ERROR_OUT_OF_MEMORY, \"out of memory\")".into(),
        ));
        assert!(driver.is_out_of_memory());
        assert!(!TrainError::Engine(engine::Error::Msg("device allocation: invalid value".into())).is_out_of_memory());
        assert!(!TrainError::Data("OUT_OF_MEMORY in a data file".into()).is_out_of_memory());
        let e = TrainError::OutOfMemory {
            step: 3,
            batch_size: 2,
            longest: 2048,
            checkpointing: false,
            detail: driver.to_string(),
        };
        let msg = e.to_string();
        for want in
            ["step 3", "batch_size 2", "2048 tokens", "lower batch_size", "max_seq_length", "gradient_checkpointing"]
        {
            assert!(msg.contains(want), "{want:?} missing from: {msg}");
        }
    }
}
