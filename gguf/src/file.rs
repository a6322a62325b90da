//! [`GgufFile`]: a memory-mapped GGUF file with its metadata and tensor table.

use crate::error::{GgufError, Result};
use crate::reader::{check_tensor, read_header};
use crate::value::{Array, FromValue, Value};
use engine::quant::ggml::{self, GgmlType};
use memmap2::Mmap;
use std::collections::HashMap;
use std::fs::File;
use std::ops::Range;
use std::path::{Path, PathBuf};

/// Tensor-data alignment when `general.alignment` is absent (`GGUF_DEFAULT_ALIGNMENT`).
pub const DEFAULT_ALIGNMENT: u64 = 32;

/// One tensor's entry in the file's tensor table, checked against the file when it was
/// opened: its type is known, its first dimension is a whole number of blocks and its data
/// lies inside the file.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorInfo {
    name: String,
    dims: Vec<u64>,
    ggml_type: GgmlType,
    offset: u64,
    n_elements: u64,
    data: Range<u64>,
}

impl TensorInfo {
    /// The tensor's name, e.g. `blk.0.attn_q.weight`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Dimensions in GGML order: `dims()[0]` is the innermost (contiguous) one, so a
    /// `[out, in]` PyTorch weight has dims `[in, out]`.
    pub fn dims(&self) -> &[u64] {
        &self.dims
    }

    /// Dimensions outermost first (row-major, as PyTorch and safetensors write them).
    pub fn shape(&self) -> Vec<usize> {
        self.dims.iter().rev().map(|&d| d as usize).collect()
    }

    /// The element type.
    pub fn ggml_type(&self) -> GgmlType {
        self.ggml_type
    }

    /// Offset of the data from the start of the file's tensor-data section.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// Number of elements (1 for a tensor with no dimensions).
    pub fn n_elements(&self) -> u64 {
        self.n_elements
    }

    /// Size of the data in bytes.
    pub fn n_bytes(&self) -> u64 {
        self.data.end - self.data.start
    }
}

/// A GGUF file (version 2 or 3), memory-mapped. Opening parses and checks the header, the
/// metadata and the tensor table; tensor data is read from the mapping on demand.
pub struct GgufFile {
    path: PathBuf,
    mmap: Mmap,
    version: u32,
    metadata: Vec<(String, Value)>,
    keys: HashMap<String, usize>,
    tensors: Vec<TensorInfo>,
    names: HashMap<String, usize>,
    alignment: u64,
    data_offset: u64,
}

impl std::fmt::Debug for GgufFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GgufFile")
            .field("path", &self.path)
            .field("version", &self.version)
            .field("metadata", &self.metadata.len())
            .field("tensors", &self.tensors.len())
            .finish()
    }
}

impl GgufFile {
    /// Opens and maps `path`, and parses and checks everything but the tensor data.
    pub fn open(path: impl AsRef<Path>) -> Result<GgufFile> {
        let path = path.as_ref();
        let io = |source| GgufError::Io { path: path.to_path_buf(), source };
        let file = File::open(path).map_err(io)?;
        if file.metadata().map_err(io)?.len() < 4 {
            let bytes = std::fs::read(path).map_err(io)?;
            return Err(GgufError::NotGguf { path: path.to_path_buf(), magic: bytes });
        }
        // SAFETY: the mapping is read-only and private to this value. As with every
        // memory-mapped reader, a file truncated by another process while mapped is outside
        // what this type can guard against.
        let mmap = unsafe { Mmap::map(&file) }.map_err(io)?;
        GgufFile::parse(path, mmap)
    }

    fn parse(path: &Path, mmap: Mmap) -> Result<GgufFile> {
        let header = read_header(&mmap, path)?;
        let invalid = |msg: String| GgufError::Invalid { path: path.to_path_buf(), msg };
        let mut keys = HashMap::with_capacity(header.metadata.len());
        for (i, (key, _)) in header.metadata.iter().enumerate() {
            if keys.insert(key.clone(), i).is_some() {
                return Err(invalid(format!("duplicate metadata key '{key}'")));
            }
        }
        let alignment = match keys.get("general.alignment").map(|&i| &header.metadata[i].1) {
            None => DEFAULT_ALIGNMENT,
            Some(v) => match u64::from_value(v) {
                Some(a) if a.is_power_of_two() => a,
                _ => return Err(invalid(format!("general.alignment must be a nonzero power of two, got {v:?}"))),
            },
        };
        let data_offset = header
            .end
            .checked_next_multiple_of(alignment)
            .ok_or_else(|| invalid(format!("general.alignment {alignment} is too large")))?;
        let file_len = mmap.len() as u64;
        let mut tensors = Vec::with_capacity(header.tensors.len());
        let mut names = HashMap::with_capacity(header.tensors.len());
        for raw in header.tensors {
            let (ggml_type, n_elements, data) = check_tensor(&raw, data_offset, alignment, file_len, path)?;
            if names.insert(raw.name.clone(), tensors.len()).is_some() {
                return Err(invalid(format!("duplicate tensor name '{}'", raw.name)));
            }
            tensors.push(TensorInfo {
                name: raw.name,
                dims: raw.dims,
                ggml_type,
                offset: raw.offset,
                n_elements,
                data,
            });
        }
        Ok(GgufFile {
            path: path.to_path_buf(),
            mmap,
            version: header.version,
            metadata: header.metadata,
            keys,
            tensors,
            names,
            alignment,
            data_offset,
        })
    }

    /// The path the file was opened from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The GGUF version (2 or 3).
    pub fn version(&self) -> u32 {
        self.version
    }

    /// Tensor-data alignment (`general.alignment`, default 32).
    pub fn alignment(&self) -> u64 {
        self.alignment
    }

    /// Absolute file offset where tensor data starts.
    pub fn data_offset(&self) -> u64 {
        self.data_offset
    }

    /// Every metadata entry, in file order.
    pub fn metadata(&self) -> &[(String, Value)] {
        &self.metadata
    }

    /// The value of `key`, if present.
    pub fn value(&self, key: &str) -> Option<&Value> {
        self.keys.get(key).map(|&i| &self.metadata[i].1)
    }

    /// The value of `key` as `T` (see [`FromValue`] for the conversions); an error names the
    /// file and the key when it is missing or of another type.
    pub fn get<'a, T: FromValue<'a>>(&'a self, key: &str) -> Result<T> {
        self.get_opt(key)?.ok_or_else(|| GgufError::MissingKey { path: self.path.clone(), key: key.to_string() })
    }

    /// Like [`GgufFile::get`], but `Ok(None)` when the key is absent.
    pub fn get_opt<'a, T: FromValue<'a>>(&'a self, key: &str) -> Result<Option<T>> {
        let Some(v) = self.value(key) else { return Ok(None) };
        T::from_value(v).map(Some).ok_or_else(|| GgufError::WrongType {
            path: self.path.clone(),
            key: key.to_string(),
            expected: T::EXPECTED,
            found: v.describe(),
        })
    }

    /// `key` as a u32 (any integer value that fits).
    pub fn get_u32(&self, key: &str) -> Result<u32> {
        self.get(key)
    }

    /// `key` as a u64 (any integer value that fits).
    pub fn get_u64(&self, key: &str) -> Result<u64> {
        self.get(key)
    }

    /// `key` as an f32 (an f32 value).
    pub fn get_f32(&self, key: &str) -> Result<f32> {
        self.get(key)
    }

    /// `key` as a bool.
    pub fn get_bool(&self, key: &str) -> Result<bool> {
        self.get(key)
    }

    /// `key` as a string.
    pub fn get_str(&self, key: &str) -> Result<&str> {
        self.get(key)
    }

    /// `key` as an array of any element type.
    pub fn get_array(&self, key: &str) -> Result<&Array> {
        self.get(key)
    }

    /// `key` as an array of strings.
    pub fn get_str_array(&self, key: &str) -> Result<&[String]> {
        self.get(key)
    }

    /// Every tensor, in file order.
    pub fn tensors(&self) -> &[TensorInfo] {
        &self.tensors
    }

    /// The tensor called `name`; an error names the file and the tensor when it is absent.
    pub fn tensor(&self, name: &str) -> Result<&TensorInfo> {
        self.names
            .get(name)
            .map(|&i| &self.tensors[i])
            .ok_or_else(|| GgufError::MissingTensor { path: self.path.clone(), name: name.to_string() })
    }

    /// Whether a tensor called `name` exists.
    pub fn contains_tensor(&self, name: &str) -> bool {
        self.names.contains_key(name)
    }

    /// The raw bytes of a tensor of this file (GGML blocks, little-endian).
    pub fn tensor_bytes(&self, info: &TensorInfo) -> Result<&[u8]> {
        let foreign = || GgufError::Invalid {
            path: self.path.clone(),
            msg: format!("tensor info '{}' does not belong to this file", info.name),
        };
        let own = self.names.get(&info.name).map(|&i| &self.tensors[i]).ok_or_else(foreign)?;
        if own != info {
            return Err(foreign());
        }
        // In bounds: checked when the file was opened.
        Ok(&self.mmap[own.data.start as usize..own.data.end as usize])
    }

    /// A tensor's values as f32, in GGML element order (`dims()[0]` fastest), dequantized
    /// exactly as ggml does; an error names the file and tensor for unsupported types.
    pub fn dequantize_f32(&self, info: &TensorInfo) -> Result<Vec<f32>> {
        let bytes = self.tensor_bytes(info)?;
        let tensor_err = |source| GgufError::Tensor { path: self.path.clone(), tensor: info.name.clone(), source };
        let n = usize::try_from(info.n_elements)
            .map_err(|_| tensor_err(engine::Error::Msg("too many elements for this platform".into())))?;
        ggml::dequantize_to_vec(info.ggml_type, bytes, n).map_err(tensor_err)
    }
}
