//! Errors of model loading and running. Messages name the file and what was wrong.

use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{0}")]
    Invalid(String),
    #[error("unsupported {0}")]
    Unsupported(String),
    #[error("{}: {msg}", path.display())]
    InFile { path: PathBuf, msg: String },
    #[error(transparent)]
    Engine(#[from] engine::Error),
    #[error(transparent)]
    Gguf(#[from] gguf::GgufError),
    #[error(transparent)]
    Hub(#[from] crate::hub::HubError),
}

impl LoadError {
    pub fn io(path: &Path, source: std::io::Error) -> Self {
        LoadError::Io { path: path.to_path_buf(), source }
    }
    pub fn in_file(self, path: &Path) -> Self {
        match self {
            LoadError::InFile { .. } | LoadError::Io { .. } => self,
            other => LoadError::InFile { path: path.to_path_buf(), msg: other.to_string() },
        }
    }
}

pub type Result<T> = std::result::Result<T, LoadError>;
