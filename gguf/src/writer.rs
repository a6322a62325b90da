//! [`GgufWriter`]: writes a GGUF v3 file, streaming the tensor data.
//!
//! ```no_run
//! use gguf::{GgmlType, GgufWriter, TensorSpec, Value};
//! let metadata: Vec<(String, Value)> = vec![
//!     ("general.architecture".into(), "llama".into()),
//!     ("llama.block_count".into(), 30u32.into()),
//! ];
//! let tensors = vec![
//!     TensorSpec::new("token_embd.weight", &[49152, 576], GgmlType::Q8_0),
//!     TensorSpec::new("output_norm.weight", &[576], GgmlType::F32),
//! ];
//! let mut w = GgufWriter::create("out/model.gguf", metadata, tensors)?;
//! # let (embd, norm) = (vec![0f32; 49152 * 576], vec![1f32; 576]);
//! w.write_tensor("token_embd.weight", &embd)?; // f32 values, quantized to Q8_0 here
//! w.write_tensor("output_norm.weight", &norm)?;
//! let path = w.finish()?; // renamed into place only now
//! # Ok::<(), gguf::GgufError>(())
//! ```
//!
//! Layout (little-endian, as llama.cpp's `gguf.c` writes it): `GGUF`, version 3, tensor count,
//! metadata count, the metadata entries, the tensor infos (name, dimension count, dimensions
//! innermost first, GGML type id, data offset), zero padding to the alignment, then each
//! tensor's data at its offset, each padded with zeros to the alignment (32 bytes, or
//! `general.alignment`, which must then be a u32 power of two as llama.cpp requires).
//!
//! Metadata may hold every value type, arrays of any element type and arrays of arrays (up to
//! 8 levels, what our reader and gguf-py read back); but llama.cpp's own reader refuses arrays
//! of arrays (checked in gguf/tests/llama_load.rs), so model files should not carry them.
//!
//! Every tensor's size follows from its shape and type, so the header with all offsets is
//! written first and the data then streamed in the order of the specs: memory use is the
//! caller's current tensor (or a few of its rows, [`GgufWriter::write_tensor_rows`]) plus a
//! bounded quantization buffer, never the whole model.
//!
//! The file is written to a temporary file in the target folder (`<name>.<pid>.<n>.tmp`) and
//! renamed to its final name by [`GgufWriter::finish`] after an fsync. On any error (a failed
//! write such as a full disk, a wrong tensor, a missing one at `finish`) the temporary file is
//! removed at once and the writer refuses further calls; a writer dropped before `finish`
//! removes it too. So no file ever appears under the final name unless it is complete.

use crate::error::{GgufError, Result};
use crate::file::DEFAULT_ALIGNMENT;
use crate::reader::MAX_DIMS;
use crate::value::{Array, Value};
use engine::quant::ggml::{self, GgmlType};
use std::collections::HashSet;
use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// The GGUF version written.
pub const GGUF_VERSION: u32 = 3;
/// Longest tensor name llama.cpp accepts, in bytes (`GGML_MAX_NAME` - 1).
pub const MAX_TENSOR_NAME: usize = 63;
/// Deepest nesting of metadata arrays written (the reader's limit).
const MAX_ARRAY_DEPTH: usize = 8;
/// Elements quantized per step when streaming a tensor's f32 values.
const CHUNK_ELEMENTS: usize = 1 << 22;
/// Sequence number for temporary file names, unique within the process.
static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// One tensor of the file to write: its name, its shape outermost first (row-major, as
/// PyTorch and safetensors give it; a `[out, in]` weight is stored with GGML dims
/// `[in, out]`) and the GGML type its data is stored as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorSpec {
    pub name: String,
    pub shape: Vec<usize>,
    pub ggml_type: GgmlType,
}

impl TensorSpec {
    /// A spec from its parts.
    pub fn new(name: impl Into<String>, shape: &[usize], ggml_type: GgmlType) -> TensorSpec {
        TensorSpec { name: name.into(), shape: shape.to_vec(), ggml_type }
    }

    /// Number of elements.
    pub fn n_elements(&self) -> u64 {
        self.shape.iter().map(|&d| d as u64).product()
    }

    /// Elements per row (the innermost dimension, GGML's `ne[0]`).
    pub fn row_len(&self) -> usize {
        self.shape.last().copied().unwrap_or(1)
    }

    /// Dimensions in GGML order (innermost first), as the tensor info stores them.
    pub fn dims(&self) -> Vec<u64> {
        self.shape.iter().rev().map(|&d| d as u64).collect()
    }

    /// Size of the data in bytes, or `None` when the row length is not a whole number of
    /// blocks of the type (or the size overflows).
    pub fn n_bytes(&self) -> Option<u64> {
        let mut n: u64 = 1;
        for &d in &self.shape {
            n = n.checked_mul(d as u64)?;
        }
        if !self.row_len().is_multiple_of(self.ggml_type.block_size()) {
            return None;
        }
        self.ggml_type.bytes_for(n)
    }
}

/// Where the writer stands.
enum State<S> {
    /// Writing; `sink` receives the bytes.
    Open(S),
    /// Renamed into place.
    Finished,
    /// An error happened (the temporary file is gone); the message is repeated to later calls.
    Failed(String),
}

/// Writes a GGUF v3 file: the header at [`create`](GgufWriter::create), then each tensor's
/// data in the order of the specs, then [`finish`](GgufWriter::finish). See the module docs.
///
/// The sink type `S` is what the temporary [`File`] is wrapped in: a [`BufWriter`] normally;
/// [`GgufWriter::create_with_sink`] lets tests put a failing writer there.
pub struct GgufWriter<S: Write = BufWriter<File>> {
    path: PathBuf,
    temp_path: PathBuf,
    state: State<S>,
    tensors: Vec<TensorSpec>,
    alignment: u64,
    /// Index of the tensor being written (== tensors.len() when all are done).
    next: usize,
    /// Elements of `tensors[next]` written so far.
    written: u64,
    /// Scratch for quantized chunks.
    buf: Vec<u8>,
}

impl<S: Write> std::fmt::Debug for GgufWriter<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GgufWriter")
            .field("path", &self.path)
            .field("temp_path", &self.temp_path)
            .field("tensors", &self.tensors.len())
            .field("next", &self.next)
            .finish()
    }
}

impl GgufWriter<BufWriter<File>> {
    /// Checks the metadata and tensor specs, creates the temporary file in `path`'s folder
    /// and writes the header. Then write each tensor in the order of `tensors` and call
    /// [`finish`](GgufWriter::finish).
    ///
    /// Errors name `path`: invalid specs or metadata (duplicate keys or tensor names, a
    /// `general.alignment` that is not a u32 power of two, more than 4 dimensions, a zero
    /// dimension, a row length that is not a whole number of blocks, a name over 63 bytes),
    /// or a folder where no file can be created (named in the message).
    pub fn create(
        path: impl AsRef<Path>,
        metadata: Vec<(String, Value)>,
        tensors: Vec<TensorSpec>,
    ) -> Result<GgufWriter<BufWriter<File>>> {
        GgufWriter::create_with_sink(path, metadata, tensors, |f| BufWriter::with_capacity(1 << 20, f))
    }
}

impl<S: Write> GgufWriter<S> {
    /// [`create`](GgufWriter::create), with the temporary file wrapped by `wrap` before
    /// anything is written to it (tests use this to simulate a full disk).
    pub fn create_with_sink(
        path: impl AsRef<Path>,
        metadata: Vec<(String, Value)>,
        tensors: Vec<TensorSpec>,
        wrap: impl FnOnce(File) -> S,
    ) -> Result<GgufWriter<S>> {
        let path = path.as_ref().to_path_buf();
        let invalid = |msg: String| GgufError::Invalid { path: path.clone(), msg };
        let alignment = check_metadata(&metadata).map_err(invalid)?;
        check_tensors(&tensors).map_err(invalid)?;
        let header = header_bytes(&metadata, &tensors, alignment);

        let file_name = path.file_name().ok_or_else(|| invalid("the path has no file name".into()))?;
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let n = TEMP_COUNTER.fetch_add(1, Ordering::Relaxed);
        let mut temp_name = file_name.to_os_string();
        temp_name.push(format!(".{}.{n}.tmp", std::process::id()));
        let temp_path = dir.join(temp_name);
        let file =
            OpenOptions::new().write(true).create_new(true).open(&temp_path).map_err(|source| GgufError::Write {
                path: path.clone(),
                what: format!("cannot create a file in the folder {}", dir.display()),
                source,
            })?;
        let mut writer = GgufWriter {
            path,
            temp_path,
            state: State::Open(wrap(file)),
            tensors,
            alignment,
            next: 0,
            written: 0,
            buf: Vec::new(),
        };
        writer.write_raw(&header, || "writing the header".to_string())?;
        Ok(writer)
    }

    /// The final path (the file exists there only after [`finish`](GgufWriter::finish)).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The temporary file being written.
    pub fn temp_path(&self) -> &Path {
        &self.temp_path
    }

    /// The tensor specs, in file order.
    pub fn tensors(&self) -> &[TensorSpec] {
        &self.tensors
    }

    /// The tensor-data alignment in use.
    pub fn alignment(&self) -> u64 {
        self.alignment
    }

    /// The tensor whose data is expected next, or `None` when all are written.
    pub fn next_tensor(&self) -> Option<&TensorSpec> {
        self.tensors.get(self.next)
    }

    /// Writes the whole tensor `name` (the next one in order) from f32 values in row-major
    /// order, quantized to its spec'd type as ggml's reference quantizers do (see
    /// [`engine::quant::ggml::quantize`]; f32, f16, bf16 and the block types there).
    pub fn write_tensor(&mut self, name: &str, values: &[f32]) -> Result<()> {
        self.begin(name, "write_tensor")?;
        if self.written != 0 {
            return Err(self.fail_invalid(format!("tensor '{name}': write_tensor after some rows were written")));
        }
        self.write_tensor_rows(name, values)?;
        self.check_complete(name)
    }

    /// Writes some whole rows (innermost-dimension slices) of the tensor `name` from f32
    /// values, after the rows already written: a large tensor can be streamed a few rows at
    /// a time. The next tensor may be started once all its rows are written.
    pub fn write_tensor_rows(&mut self, name: &str, rows: &[f32]) -> Result<()> {
        let spec = self.begin(name, "write_tensor_rows")?.clone();
        let row = spec.row_len();
        if !rows.len().is_multiple_of(row) {
            return Err(self.fail_invalid(format!(
                "tensor '{name}': {} values is not a whole number of rows of {row}",
                rows.len()
            )));
        }
        self.check_room(&spec, rows.len() as u64)?;
        if !spec.ggml_type.can_quantize() {
            return Err(self.fail_invalid(format!(
                "tensor '{name}': GGML type {} cannot be quantized from f32 here; write its bytes with write_tensor_bytes",
                spec.ggml_type
            )));
        }
        let chunk = (CHUNK_ELEMENTS / row).max(1) * row;
        let mut buf = std::mem::take(&mut self.buf);
        for part in rows.chunks(chunk) {
            let n_bytes = (part.len() / spec.ggml_type.block_size()) * spec.ggml_type.type_size();
            buf.resize(n_bytes, 0);
            if let Err(source) = ggml::quantize_into(spec.ggml_type, part, &mut buf) {
                self.buf = buf;
                let err = GgufError::Tensor { path: self.path.clone(), tensor: name.to_string(), source };
                return Err(self.fail(err));
            }
            self.write_raw(&buf, || format!("writing tensor '{name}'"))?;
            self.written += part.len() as u64;
        }
        self.buf = buf;
        self.end_if_complete(&spec)
    }

    /// Writes the whole tensor `name` (the next one in order) from bytes already in its
    /// spec'd GGML type (e.g. blocks copied from another GGUF file).
    pub fn write_tensor_bytes(&mut self, name: &str, bytes: &[u8]) -> Result<()> {
        let spec = self.begin(name, "write_tensor_bytes")?.clone();
        if self.written != 0 {
            return Err(self.fail_invalid(format!("tensor '{name}': write_tensor_bytes after some rows were written")));
        }
        let want = spec.n_bytes().unwrap_or(0);
        if bytes.len() as u64 != want {
            return Err(self.fail_invalid(format!(
                "tensor '{name}' ({} {:?}) takes {want} bytes, got {}",
                spec.ggml_type,
                spec.shape,
                bytes.len()
            )));
        }
        self.write_raw(bytes, || format!("writing tensor '{name}'"))?;
        self.written = spec.n_elements();
        self.end_if_complete(&spec)
    }

    /// Checks that every tensor was written, flushes and syncs the temporary file and renames
    /// it to the final path (replacing a file there). Returns the final path.
    pub fn finish(mut self) -> Result<PathBuf> {
        self.usable("finish")?;
        if let Some(spec) = self.tensors.get(self.next) {
            let msg = if self.written == 0 {
                format!(
                    "finish called before tensor '{}' ({} of {} tensors written)",
                    spec.name,
                    self.next,
                    self.tensors.len()
                )
            } else {
                format!(
                    "finish called with tensor '{}' incomplete ({} of {} values written)",
                    spec.name,
                    self.written,
                    spec.n_elements()
                )
            };
            return Err(self.fail_invalid(msg));
        }
        let State::Open(mut sink) = std::mem::replace(&mut self.state, State::Finished) else {
            unreachable!("checked by usable()")
        };
        let temp = self.temp_path.display().to_string();
        let flushed = sink.flush();
        drop(sink);
        let result = flushed
            .map_err(|e| (format!("writing {temp}"), e))
            .and_then(|()| {
                OpenOptions::new()
                    .write(true)
                    .open(&self.temp_path)
                    .and_then(|f| f.sync_all())
                    .map_err(|e| (format!("syncing {temp} to disk"), e))
            })
            .and_then(|()| {
                std::fs::rename(&self.temp_path, &self.path)
                    .map_err(|e| (format!("renaming {temp} to the final name"), e))
            });
        if let Err((what, source)) = result {
            let err = GgufError::Write { path: self.path.clone(), what, source };
            return Err(self.fail(err));
        }
        // Make the rename durable too (best effort: not every filesystem allows it).
        if let Some(dir) = self.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            let _ = File::open(dir).and_then(|d| d.sync_all());
        }
        Ok(self.path.clone())
    }

    /// Errors unless the writer is open.
    fn usable(&self, op: &str) -> Result<()> {
        match &self.state {
            State::Open(_) => Ok(()),
            State::Finished => Err(GgufError::Invalid { path: self.path.clone(), msg: format!("{op} after finish") }),
            State::Failed(msg) => Err(GgufError::Invalid {
                path: self.path.clone(),
                msg: format!("{op} after an earlier error (the temporary file was removed): {msg}"),
            }),
        }
    }

    /// Checks that the writer is open and `name` is the tensor expected now.
    fn begin(&mut self, name: &str, op: &str) -> Result<&TensorSpec> {
        self.usable(op)?;
        match self.tensors.get(self.next) {
            Some(spec) if spec.name == name => Ok(&self.tensors[self.next]),
            Some(spec) => {
                let msg = if self.tensors.iter().any(|t| t.name == name) {
                    format!("tensor '{name}' written out of order: the next tensor is '{}'", spec.name)
                } else {
                    format!("tensor '{name}' is not in the file's tensor list (the next tensor is '{}')", spec.name)
                };
                Err(self.fail_invalid(msg))
            }
            None => {
                let msg = format!("tensor '{name}': all {} tensors are already written", self.tensors.len());
                Err(self.fail_invalid(msg))
            }
        }
    }

    /// Errors when `n` more elements would overflow the current tensor.
    fn check_room(&mut self, spec: &TensorSpec, n: u64) -> Result<()> {
        if self.written + n > spec.n_elements() {
            let msg = format!(
                "tensor '{}' {:?} has {} values; {} written and {n} more given",
                spec.name,
                spec.shape,
                spec.n_elements(),
                self.written
            );
            return Err(self.fail_invalid(msg));
        }
        Ok(())
    }

    /// Errors unless the tensor `name` (just written whole) is complete.
    fn check_complete(&mut self, name: &str) -> Result<()> {
        // end_if_complete moved on when the tensor was complete.
        if self.tensors.get(self.next).is_some_and(|t| t.name == name) {
            let spec = &self.tensors[self.next];
            let msg =
                format!("tensor '{name}' {:?} has {} values, got {}", spec.shape, spec.n_elements(), self.written);
            return Err(self.fail_invalid(msg));
        }
        Ok(())
    }

    /// Pads and moves to the next tensor once the current one has all its elements.
    fn end_if_complete(&mut self, spec: &TensorSpec) -> Result<()> {
        if self.written == spec.n_elements() {
            let size = spec.n_bytes().unwrap_or(0);
            let pad = size.next_multiple_of(self.alignment) - size;
            let zeros = vec![0u8; pad as usize];
            self.write_raw(&zeros, || format!("writing tensor '{}'", spec.name))?;
            self.next += 1;
            self.written = 0;
        }
        Ok(())
    }

    /// Writes bytes to the sink; on failure removes the temporary file.
    fn write_raw(&mut self, bytes: &[u8], what: impl Fn() -> String) -> Result<()> {
        let State::Open(sink) = &mut self.state else {
            return self.usable("write").and(Ok(()));
        };
        if let Err(source) = sink.write_all(bytes) {
            let what = format!("{} to {}", what(), self.temp_path.display());
            let err = GgufError::Write { path: self.path.clone(), what, source };
            return Err(self.fail(err));
        }
        Ok(())
    }

    /// An `Invalid` error, after failing the writer.
    fn fail_invalid(&mut self, msg: String) -> GgufError {
        let err = GgufError::Invalid { path: self.path.clone(), msg };
        self.fail(err)
    }

    /// Marks the writer failed, drops the sink and removes the temporary file; returns `err`.
    fn fail(&mut self, err: GgufError) -> GgufError {
        if !matches!(self.state, State::Failed(_)) {
            self.state = State::Failed(err.to_string());
            let _ = std::fs::remove_file(&self.temp_path);
        }
        err
    }
}

impl<S: Write> Drop for GgufWriter<S> {
    /// An unfinished writer removes its temporary file.
    fn drop(&mut self) {
        if let State::Open(_) = self.state {
            // Close the file before removing it.
            self.state = State::Failed("dropped".into());
            let _ = std::fs::remove_file(&self.temp_path);
        }
    }
}

/// Checks the metadata; returns the alignment to use.
fn check_metadata(metadata: &[(String, Value)]) -> std::result::Result<u64, String> {
    let mut keys = HashSet::new();
    let mut alignment = DEFAULT_ALIGNMENT;
    for (key, value) in metadata {
        if key.is_empty() {
            return Err("empty metadata key".into());
        }
        if !keys.insert(key.as_str()) {
            return Err(format!("duplicate metadata key '{key}'"));
        }
        if let Value::Array(a) = value {
            check_depth(a, 1).map_err(|depth| {
                format!("metadata value '{key}' nests arrays {depth} deep (at most {MAX_ARRAY_DEPTH})")
            })?;
        }
        if key == "general.alignment" {
            alignment = match value {
                Value::U32(a) if a.is_power_of_two() => *a as u64,
                v => {
                    return Err(format!(
                        "general.alignment must be a u32 power of two (as llama.cpp requires), got {v:?}"
                    ))
                }
            };
        }
    }
    Ok(alignment)
}

/// Errors with the depth when `a` nests deeper than the reader accepts.
fn check_depth(a: &Array, depth: usize) -> std::result::Result<(), usize> {
    if depth > MAX_ARRAY_DEPTH {
        return Err(depth);
    }
    if let Array::Array(inner) = a {
        for i in inner {
            check_depth(i, depth + 1)?;
        }
    }
    Ok(())
}

/// Checks the tensor specs.
fn check_tensors(tensors: &[TensorSpec]) -> std::result::Result<(), String> {
    let mut names = HashSet::new();
    for t in tensors {
        let name = &t.name;
        if name.is_empty() {
            return Err("empty tensor name".into());
        }
        if name.len() > MAX_TENSOR_NAME {
            return Err(format!(
                "tensor name '{name}' is {} bytes long (llama.cpp takes at most {MAX_TENSOR_NAME})",
                name.len()
            ));
        }
        if !names.insert(name.as_str()) {
            return Err(format!("duplicate tensor name '{name}'"));
        }
        if t.shape.is_empty() || t.shape.len() > MAX_DIMS as usize {
            return Err(format!("tensor '{name}' has shape {:?}: 1 to {MAX_DIMS} dimensions are needed", t.shape));
        }
        if t.shape.contains(&0) {
            return Err(format!("tensor '{name}' has shape {:?} with a zero dimension", t.shape));
        }
        let bs = t.ggml_type.block_size();
        if t.row_len() % bs != 0 {
            return Err(format!(
                "tensor '{name}' {:?}: its row length {} is not a multiple of the {} block size {bs}",
                t.shape,
                t.row_len(),
                t.ggml_type
            ));
        }
        if t.n_bytes().is_none_or(|n| n > i64::MAX as u64) {
            return Err(format!("tensor '{name}' {:?} is too large", t.shape));
        }
    }
    Ok(())
}

/// Everything before the tensor data, padded to the alignment.
fn header_bytes(metadata: &[(String, Value)], tensors: &[TensorSpec], alignment: u64) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(b"GGUF");
    out.extend_from_slice(&GGUF_VERSION.to_le_bytes());
    out.extend_from_slice(&(tensors.len() as u64).to_le_bytes());
    out.extend_from_slice(&(metadata.len() as u64).to_le_bytes());
    for (key, value) in metadata {
        put_str(&mut out, key);
        out.extend_from_slice(&(value.value_type() as u32).to_le_bytes());
        put_value(&mut out, value);
    }
    let mut offset = 0u64;
    for t in tensors {
        put_str(&mut out, &t.name);
        out.extend_from_slice(&(t.shape.len() as u32).to_le_bytes());
        for d in t.dims() {
            out.extend_from_slice(&d.to_le_bytes());
        }
        out.extend_from_slice(&t.ggml_type.id().to_le_bytes());
        out.extend_from_slice(&offset.to_le_bytes());
        // Checked by check_tensors.
        offset += t.n_bytes().unwrap_or(0).next_multiple_of(alignment);
    }
    out.resize((out.len() as u64).next_multiple_of(alignment) as usize, 0);
    out
}

/// A GGUF string: u64 byte length, UTF-8 bytes.
fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u64).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

/// A value's payload (its type id is written by the caller).
fn put_value(out: &mut Vec<u8>, v: &Value) {
    match v {
        Value::U8(x) => out.push(*x),
        Value::I8(x) => out.push(*x as u8),
        Value::U16(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::I16(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::U32(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::I32(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::U64(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::I64(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::F32(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::F64(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::Bool(x) => out.push(*x as u8),
        Value::String(s) => put_str(out, s),
        Value::Array(a) => put_array(out, a),
    }
}

/// An array payload: element type id, u64 count, elements.
fn put_array(out: &mut Vec<u8>, a: &Array) {
    out.extend_from_slice(&(a.element_type() as u32).to_le_bytes());
    out.extend_from_slice(&(a.len() as u64).to_le_bytes());
    macro_rules! le {
        ($v:expr) => {
            for x in $v {
                out.extend_from_slice(&x.to_le_bytes());
            }
        };
    }
    match a {
        Array::U8(v) => out.extend_from_slice(v),
        Array::I8(v) => out.extend(v.iter().map(|&x| x as u8)),
        Array::U16(v) => le!(v),
        Array::I16(v) => le!(v),
        Array::U32(v) => le!(v),
        Array::I32(v) => le!(v),
        Array::U64(v) => le!(v),
        Array::I64(v) => le!(v),
        Array::F32(v) => le!(v),
        Array::F64(v) => le!(v),
        Array::Bool(v) => out.extend(v.iter().map(|&x| x as u8)),
        Array::String(v) => v.iter().for_each(|s| put_str(out, s)),
        Array::Array(v) => v.iter().for_each(|inner| put_array(out, inner)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_layout_by_hand() {
        let md = vec![("a".to_string(), Value::U8(7)), ("b".to_string(), Value::from(vec!["x"]))];
        let t = vec![TensorSpec::new("t", &[2, 32], GgmlType::Q8_0)];
        let h = header_bytes(&md, &t, 32);
        let mut want = b"GGUF".to_vec();
        want.extend(3u32.to_le_bytes());
        want.extend(1u64.to_le_bytes());
        want.extend(2u64.to_le_bytes());
        want.extend(1u64.to_le_bytes());
        want.push(b'a');
        want.extend(0u32.to_le_bytes());
        want.push(7);
        want.extend(1u64.to_le_bytes());
        want.push(b'b');
        want.extend(9u32.to_le_bytes());
        want.extend(8u32.to_le_bytes());
        want.extend(1u64.to_le_bytes());
        want.extend(1u64.to_le_bytes());
        want.push(b'x');
        want.extend(1u64.to_le_bytes());
        want.push(b't');
        want.extend(2u32.to_le_bytes());
        want.extend(32u64.to_le_bytes());
        want.extend(2u64.to_le_bytes());
        want.extend(8u32.to_le_bytes());
        want.extend(0u64.to_le_bytes());
        want.resize(want.len().next_multiple_of(32), 0);
        assert_eq!(h, want);
    }

    #[test]
    fn spec_sizes() {
        let t = TensorSpec::new("x", &[3, 512], GgmlType::Q4_K);
        assert_eq!((t.n_elements(), t.row_len(), t.dims(), t.n_bytes()), (1536, 512, vec![512, 3], Some(3 * 2 * 144)));
        assert_eq!(TensorSpec::new("x", &[2, 576], GgmlType::Q4_K).n_bytes(), None);
    }
}
