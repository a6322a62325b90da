//! The GGUF reader's and writer's error type. Every message starts with the file's path.

use std::path::PathBuf;

/// What went wrong reading or writing a GGUF file. Each variant names the file (for the
/// writer: the final path asked for).
#[derive(Debug, thiserror::Error)]
pub enum GgufError {
    /// The file could not be opened, inspected or mapped.
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
    /// The first four bytes are not `GGUF`.
    #[error("{}: not a GGUF file (magic {}, expected \"GGUF\")", path.display(), show_magic(magic))]
    NotGguf { path: PathBuf, magic: Vec<u8> },
    /// A GGUF version this reader does not know (it reads versions 2 and 3).
    #[error("{}: unsupported GGUF version {version} (supported: 2 and 3)", path.display())]
    UnsupportedVersion { path: PathBuf, version: u32 },
    /// The file ends before a header field, metadata value or tensor info it announces.
    #[error(
        "{}: truncated file: {what} needs {needed} bytes at offset {offset}, but the file has {file_len} bytes",
        path.display()
    )]
    Truncated { path: PathBuf, what: String, offset: u64, needed: u64, file_len: u64 },
    /// A string (key, value or tensor name) is not valid UTF-8.
    #[error("{}: {what} is not valid UTF-8", path.display())]
    BadUtf8 { path: PathBuf, what: String },
    /// A tensor's GGML type id is not one ggml defines.
    #[error("{}: tensor '{tensor}' has unknown GGML type id {id}", path.display())]
    UnknownTensorType { path: PathBuf, tensor: String, id: u32 },
    /// A tensor's data does not lie inside the file.
    #[error(
        "{}: tensor '{tensor}' data [{start}, {end}) lies outside the file ({file_len} bytes)",
        path.display()
    )]
    TensorOutOfBounds { path: PathBuf, tensor: String, start: u64, end: u64, file_len: u64 },
    /// Any other malformed content (bad counts, dimensions, alignment, duplicates...).
    #[error("{}: {msg}", path.display())]
    Invalid { path: PathBuf, msg: String },
    /// A metadata key that was asked for is absent.
    #[error("{}: metadata key '{key}' missing", path.display())]
    MissingKey { path: PathBuf, key: String },
    /// A metadata value has another type than the one asked for.
    #[error("{}: metadata key '{key}' is {found}, expected {expected}", path.display())]
    WrongType { path: PathBuf, key: String, expected: &'static str, found: String },
    /// A tensor that was asked for is absent.
    #[error("{}: tensor '{name}' not found", path.display())]
    MissingTensor { path: PathBuf, name: String },
    /// A tensor could not be converted (e.g. an unsupported block format).
    #[error("{}: tensor '{tensor}': {source}", path.display())]
    Tensor { path: PathBuf, tensor: String, source: engine::Error },
    /// Writing a GGUF file failed: `what` says which step (creating the temporary file in
    /// its folder, writing a tensor, renaming...) and names the temporary file or folder.
    #[error("{}: {what}: {source}", path.display())]
    Write { path: PathBuf, what: String, source: std::io::Error },
}

/// The magic bytes as an escaped string, e.g. `"PK\x03\x04"`.
fn show_magic(magic: &[u8]) -> String {
    format!("\"{}\"", magic.escape_ascii())
}

/// Result of the GGUF reader.
pub type Result<T> = std::result::Result<T, GgufError>;
