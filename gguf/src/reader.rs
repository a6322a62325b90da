//! Parsing of the GGUF header, metadata and tensor infos from the file's bytes.
//!
//! Layout (little-endian): magic `GGUF`, u32 version, u64 tensor count, u64 metadata count;
//! each metadata entry is a string key, a u32 value type and the value; each tensor info is a
//! string name, u32 dimension count, that many u64 dimensions, u32 GGML type id, u64 offset.
//! Strings are a u64 byte length and UTF-8 bytes; arrays a u32 element type, a u64 count and
//! the elements. Tensor data starts at the next multiple of the alignment after the infos.
//!
//! Every read is bounds-checked, and every count is checked against the bytes left before
//! anything is allocated for it, so a corrupt file yields an error, never a panic or an
//! absurd allocation.

use crate::error::{GgufError, Result};
use crate::value::{Array, Value, ValueType};
use engine::quant::ggml::GgmlType;
use std::path::Path;

/// Deepest nesting of arrays accepted (llama.cpp writes none; gguf-py can write a few).
const MAX_ARRAY_DEPTH: usize = 8;
/// ggml's `GGML_MAX_DIMS`.
pub const MAX_DIMS: u32 = 4;
/// Smallest possible tensor info: name length, dimension count, type, offset.
const MIN_TENSOR_INFO: u64 = 8 + 4 + 4 + 8;
/// Smallest possible metadata entry: key length, value type, a one-byte value.
const MIN_KV: u64 = 8 + 4 + 1;

/// A tensor info as read, before its type and data range are checked.
pub(crate) struct RawTensorInfo {
    pub name: String,
    pub dims: Vec<u64>,
    pub type_id: u32,
    pub offset: u64,
}

/// Everything before the tensor data.
pub(crate) struct Header {
    pub version: u32,
    pub metadata: Vec<(String, Value)>,
    pub tensors: Vec<RawTensorInfo>,
    /// Offset just past the last tensor info (not yet aligned).
    pub end: u64,
}

/// A bounds-checked little-endian cursor over the file's bytes.
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    path: &'a Path,
}

impl<'a> Reader<'a> {
    fn remaining(&self) -> u64 {
        (self.buf.len() - self.pos) as u64
    }

    fn truncated(&self, what: &str, needed: u64) -> GgufError {
        GgufError::Truncated {
            path: self.path.to_path_buf(),
            what: what.to_string(),
            offset: self.pos as u64,
            needed,
            file_len: self.buf.len() as u64,
        }
    }

    fn invalid(&self, msg: String) -> GgufError {
        GgufError::Invalid { path: self.path.to_path_buf(), msg }
    }

    fn bytes(&mut self, n: u64, what: &dyn Fn() -> String) -> Result<&'a [u8]> {
        if n > self.remaining() {
            return Err(self.truncated(&what(), n));
        }
        let start = self.pos;
        self.pos += n as usize;
        Ok(&self.buf[start..self.pos])
    }

    fn array<const N: usize>(&mut self, what: &dyn Fn() -> String) -> Result<[u8; N]> {
        let b = self.bytes(N as u64, what)?;
        let mut out = [0u8; N];
        out.copy_from_slice(b);
        Ok(out)
    }

    fn u32(&mut self, what: &dyn Fn() -> String) -> Result<u32> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    fn u64(&mut self, what: &dyn Fn() -> String) -> Result<u64> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    fn string(&mut self, what: &dyn Fn() -> String) -> Result<String> {
        let len = self.u64(&|| format!("length of {}", what()))?;
        let bytes = self.bytes(len, what)?;
        String::from_utf8(bytes.to_vec())
            .map_err(|_| GgufError::BadUtf8 { path: self.path.to_path_buf(), what: what() })
    }

    /// Checks that `count` items of at least `min_size` bytes each can fit in what is left.
    fn check_count(&self, count: u64, min_size: u64, what: &str) -> Result<usize> {
        match count.checked_mul(min_size) {
            Some(n) if n <= self.remaining() => Ok(count as usize),
            _ => Err(self.invalid(format!(
                "{what} count {count} cannot fit in the {} bytes left at offset {} (truncated or corrupt file)",
                self.remaining(),
                self.pos
            ))),
        }
    }

    fn value_type(&mut self, what: &dyn Fn() -> String) -> Result<ValueType> {
        let id = self.u32(&|| format!("type of {}", what()))?;
        ValueType::from_id(id).ok_or_else(|| self.invalid(format!("{} has unknown value type {id}", what())))
    }

    fn value(&mut self, ty: ValueType, what: &dyn Fn() -> String, depth: usize) -> Result<Value> {
        Ok(match ty {
            ValueType::U8 => Value::U8(self.array::<1>(what)?[0]),
            ValueType::I8 => Value::I8(self.array::<1>(what)?[0] as i8),
            ValueType::U16 => Value::U16(u16::from_le_bytes(self.array(what)?)),
            ValueType::I16 => Value::I16(i16::from_le_bytes(self.array(what)?)),
            ValueType::U32 => Value::U32(self.u32(what)?),
            ValueType::I32 => Value::I32(i32::from_le_bytes(self.array(what)?)),
            ValueType::U64 => Value::U64(self.u64(what)?),
            ValueType::I64 => Value::I64(i64::from_le_bytes(self.array(what)?)),
            ValueType::F32 => Value::F32(f32::from_le_bytes(self.array(what)?)),
            ValueType::F64 => Value::F64(f64::from_le_bytes(self.array(what)?)),
            ValueType::Bool => Value::Bool(self.array::<1>(what)?[0] != 0),
            ValueType::String => Value::String(self.string(what)?),
            ValueType::Array => Value::Array(self.array_value(what, depth)?),
        })
    }

    fn array_value(&mut self, what: &dyn Fn() -> String, depth: usize) -> Result<Array> {
        if depth >= MAX_ARRAY_DEPTH {
            return Err(self.invalid(format!("{} nests arrays deeper than {MAX_ARRAY_DEPTH} levels", what())));
        }
        let ty = self.value_type(&|| format!("elements of {}", what()))?;
        let count = self.u64(&|| format!("element count of {}", what()))?;
        let n = self.check_count(count, ty.min_size(), &format!("{} element", what()))?;
        let elem = |i: usize| move || format!("element {i} of {}", what());
        macro_rules! collect {
            ($variant:ident, $w:ident => $read:expr) => {{
                let mut v = Vec::with_capacity(n);
                for i in 0..n {
                    let f = elem(i);
                    let $w: &dyn Fn() -> String = &f;
                    v.push($read?);
                }
                Array::$variant(v)
            }};
        }
        Ok(match ty {
            ValueType::U8 => collect!(U8, w => self.array::<1>(w).map(|b| b[0])),
            ValueType::I8 => collect!(I8, w => self.array::<1>(w).map(|b| b[0] as i8)),
            ValueType::U16 => collect!(U16, w => self.array(w).map(u16::from_le_bytes)),
            ValueType::I16 => collect!(I16, w => self.array(w).map(i16::from_le_bytes)),
            ValueType::U32 => collect!(U32, w => self.u32(w)),
            ValueType::I32 => collect!(I32, w => self.array(w).map(i32::from_le_bytes)),
            ValueType::U64 => collect!(U64, w => self.u64(w)),
            ValueType::I64 => collect!(I64, w => self.array(w).map(i64::from_le_bytes)),
            ValueType::F32 => collect!(F32, w => self.array(w).map(f32::from_le_bytes)),
            ValueType::F64 => collect!(F64, w => self.array(w).map(f64::from_le_bytes)),
            ValueType::Bool => collect!(Bool, w => self.array::<1>(w).map(|b| b[0] != 0)),
            ValueType::String => collect!(String, w => self.string(w)),
            ValueType::Array => collect!(Array, w => self.array_value(w, depth + 1)),
        })
    }

    fn tensor_info(&mut self, index: usize) -> Result<RawTensorInfo> {
        let name = self.string(&|| format!("name of tensor #{index}"))?;
        let n_dims = self.u32(&|| format!("dimension count of tensor '{name}'"))?;
        if n_dims > MAX_DIMS {
            return Err(self.invalid(format!("tensor '{name}' has {n_dims} dimensions (at most {MAX_DIMS})")));
        }
        let mut dims = Vec::with_capacity(n_dims as usize);
        for d in 0..n_dims {
            dims.push(self.u64(&|| format!("dimension {d} of tensor '{name}'"))?);
        }
        let type_id = self.u32(&|| format!("type of tensor '{name}'"))?;
        let offset = self.u64(&|| format!("offset of tensor '{name}'"))?;
        Ok(RawTensorInfo { name, dims, type_id, offset })
    }
}

/// Parses everything before the tensor data.
pub(crate) fn read_header(buf: &[u8], path: &Path) -> Result<Header> {
    let mut r = Reader { buf, pos: 0, path };
    let magic = r
        .bytes(4, &|| "the magic bytes".to_string())
        .map_err(|_| GgufError::NotGguf { path: path.to_path_buf(), magic: buf.to_vec() })?;
    if magic != b"GGUF" {
        return Err(GgufError::NotGguf { path: path.to_path_buf(), magic: magic.to_vec() });
    }
    let version = r.u32(&|| "the version".to_string())?;
    if version.swap_bytes() == 2 || version.swap_bytes() == 3 {
        return Err(r.invalid(format!("big-endian GGUF (version {}) is not supported", version.swap_bytes())));
    }
    if version != 2 && version != 3 {
        return Err(GgufError::UnsupportedVersion { path: path.to_path_buf(), version });
    }
    let n_tensors = r.u64(&|| "the tensor count".to_string())?;
    let n_kv = r.u64(&|| "the metadata count".to_string())?;
    let n_kv = r.check_count(n_kv, MIN_KV, "metadata")?;
    let mut metadata = Vec::with_capacity(n_kv);
    for i in 0..n_kv {
        let key = r.string(&|| format!("metadata key #{i}"))?;
        let what = || format!("metadata value '{key}'");
        let ty = r.value_type(&what)?;
        let value = r.value(ty, &what, 0)?;
        metadata.push((key, value));
    }
    let n_tensors = r.check_count(n_tensors, MIN_TENSOR_INFO, "tensor")?;
    let mut tensors = Vec::with_capacity(n_tensors);
    for i in 0..n_tensors {
        tensors.push(r.tensor_info(i)?);
    }
    Ok(Header { version, metadata, tensors, end: r.pos as u64 })
}

/// Checks a raw tensor info against the file: known type, whole blocks, aligned offset, data
/// inside the file. Returns the type, the element count and the absolute data range.
pub(crate) fn check_tensor(
    t: &RawTensorInfo,
    data_offset: u64,
    alignment: u64,
    file_len: u64,
    path: &Path,
) -> Result<(GgmlType, u64, std::ops::Range<u64>)> {
    let invalid = |msg: String| GgufError::Invalid { path: path.to_path_buf(), msg };
    let ty = GgmlType::from_id(t.type_id).ok_or_else(|| GgufError::UnknownTensorType {
        path: path.to_path_buf(),
        tensor: t.name.clone(),
        id: t.type_id,
    })?;
    let mut n: u64 = 1;
    for &d in &t.dims {
        n = n
            .checked_mul(d)
            .filter(|&n| n <= i64::MAX as u64)
            .ok_or_else(|| invalid(format!("tensor '{}' dimensions {:?} overflow", t.name, t.dims)))?;
    }
    let inner = t.dims.first().copied().unwrap_or(1);
    if inner % ty.block_size() as u64 != 0 {
        return Err(invalid(format!(
            "tensor '{}' ({ty}) has a first dimension {inner} that is not a multiple of the block size {}",
            t.name,
            ty.block_size()
        )));
    }
    if !t.offset.is_multiple_of(alignment) {
        return Err(invalid(format!(
            "tensor '{}' offset {} is not a multiple of the alignment {alignment}",
            t.name, t.offset
        )));
    }
    let out_of_bounds = |end: u64| GgufError::TensorOutOfBounds {
        path: path.to_path_buf(),
        tensor: t.name.clone(),
        start: data_offset.saturating_add(t.offset),
        end,
        file_len,
    };
    let bytes = ty.bytes_for(n).ok_or_else(|| out_of_bounds(u64::MAX))?;
    let start = data_offset.checked_add(t.offset).ok_or_else(|| out_of_bounds(u64::MAX))?;
    let end = start.checked_add(bytes).ok_or_else(|| out_of_bounds(u64::MAX))?;
    if end > file_len {
        return Err(out_of_bounds(end));
    }
    Ok((ty, n, start..end))
}
