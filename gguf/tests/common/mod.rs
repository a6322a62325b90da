//! Test helpers: a byte-level GGUF builder (written from the format description, independent
//! of the reader), temp files, and the repository's Python environment.

#![allow(dead_code)] // each test file uses a different subset

pub mod gguf_py;

use std::path::{Path, PathBuf};
use std::process::Command;

/// Value type ids of the GGUF format.
pub mod ty {
    pub const U8: u32 = 0;
    pub const I8: u32 = 1;
    pub const U16: u32 = 2;
    pub const I16: u32 = 3;
    pub const U32: u32 = 4;
    pub const I32: u32 = 5;
    pub const F32: u32 = 6;
    pub const BOOL: u32 = 7;
    pub const STRING: u32 = 8;
    pub const ARRAY: u32 = 9;
    pub const U64: u32 = 10;
    pub const I64: u32 = 11;
    pub const F64: u32 = 12;
}

/// GGUF string encoding: u64 length, bytes.
pub fn gstr(s: &[u8]) -> Vec<u8> {
    let mut v = (s.len() as u64).to_le_bytes().to_vec();
    v.extend_from_slice(s);
    v
}

/// An array value's payload: element type, count, elements.
pub fn garray(elem_type: u32, count: u64, elems: &[u8]) -> Vec<u8> {
    let mut v = elem_type.to_le_bytes().to_vec();
    v.extend_from_slice(&count.to_le_bytes());
    v.extend_from_slice(elems);
    v
}

/// A tensor to write: name, dims (GGML order), type id, data, and an explicit offset
/// (`None`: the next aligned offset).
pub struct TensorSpec {
    pub name: String,
    pub dims: Vec<u64>,
    pub type_id: u32,
    pub data: Vec<u8>,
    pub offset: Option<u64>,
}

/// Builds GGUF files byte by byte.
pub struct Builder {
    pub magic: [u8; 4],
    pub version: u32,
    pub alignment: u64,
    kvs: Vec<u8>,
    n_kv: u64,
    pub tensors: Vec<TensorSpec>,
}

impl Builder {
    pub fn new() -> Builder {
        Builder { magic: *b"GGUF", version: 3, alignment: 32, kvs: vec![], n_kv: 0, tensors: vec![] }
    }

    /// Adds a metadata entry whose value bytes are given raw.
    pub fn kv_raw(mut self, key: &str, type_id: u32, value: &[u8]) -> Builder {
        self.kvs.extend(gstr(key.as_bytes()));
        self.kvs.extend_from_slice(&type_id.to_le_bytes());
        self.kvs.extend_from_slice(value);
        self.n_kv += 1;
        self
    }

    pub fn kv_u32(self, key: &str, v: u32) -> Builder {
        self.kv_raw(key, ty::U32, &v.to_le_bytes())
    }

    pub fn kv_str(self, key: &str, v: &str) -> Builder {
        self.kv_raw(key, ty::STRING, &gstr(v.as_bytes()))
    }

    /// Sets `general.alignment` (as a u32 entry) and uses it for the layout (0 is written
    /// but the layout keeps the default).
    pub fn alignment(mut self, a: u32) -> Builder {
        if a != 0 {
            self.alignment = a as u64;
        }
        self.kv_u32("general.alignment", a)
    }

    pub fn tensor(mut self, name: &str, dims: &[u64], type_id: u32, data: Vec<u8>) -> Builder {
        self.tensors.push(TensorSpec { name: name.into(), dims: dims.to_vec(), type_id, data, offset: None });
        self
    }

    /// The file's bytes: header, metadata, tensor infos, padding, data (each tensor's data at
    /// its offset, padded to the alignment).
    pub fn build(&self) -> Vec<u8> {
        let align = |x: u64| x.div_ceil(self.alignment) * self.alignment;
        let mut offsets = vec![];
        let mut next = 0u64;
        for t in &self.tensors {
            let off = t.offset.unwrap_or(align(next));
            offsets.push(off);
            next = off.saturating_add(t.data.len() as u64);
        }
        let mut out = self.magic.to_vec();
        out.extend_from_slice(&self.version.to_le_bytes());
        out.extend_from_slice(&(self.tensors.len() as u64).to_le_bytes());
        out.extend_from_slice(&self.n_kv.to_le_bytes());
        out.extend_from_slice(&self.kvs);
        for (t, off) in self.tensors.iter().zip(&offsets) {
            out.extend(gstr(t.name.as_bytes()));
            out.extend_from_slice(&(t.dims.len() as u32).to_le_bytes());
            for d in &t.dims {
                out.extend_from_slice(&d.to_le_bytes());
            }
            out.extend_from_slice(&t.type_id.to_le_bytes());
            out.extend_from_slice(&off.to_le_bytes());
        }
        let data_start = align(out.len() as u64) as usize;
        out.resize(data_start, 0);
        // Tensors with an explicit (possibly bogus) offset get no data written.
        for (t, off) in self.tensors.iter().zip(&offsets).filter(|(t, _)| t.offset.is_none()) {
            let at = data_start + *off as usize;
            if out.len() < at + t.data.len() {
                out.resize(at + t.data.len(), 0);
            }
            out[at..at + t.data.len()].copy_from_slice(&t.data);
        }
        let end = align(out.len() as u64) as usize;
        out.resize(end, 0);
        out
    }
}

/// Writes `bytes` to `<dir>/<name>` and returns the path.
pub fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    path
}

/// The repository root (the workspace folder).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

/// The repository's `.venv` Python with the `gguf` package, or `None` (the caller prints
/// that it skipped).
pub fn python() -> Option<PathBuf> {
    let py = repo_root().join(".venv/bin/python");
    let ok = py.exists()
        && Command::new(&py).args(["-c", "import gguf, numpy"]).output().map(|o| o.status.success()).unwrap_or(false);
    ok.then_some(py)
}

/// Runs `python script args...` from the repository root; panics with its stderr on failure.
pub fn run_python(py: &Path, script: &str, args: &[&str]) -> Vec<u8> {
    let out = Command::new(py)
        .current_dir(repo_root())
        .arg(repo_root().join("scripts").join(script))
        .args(args)
        .output()
        .expect("running python");
    assert!(out.status.success(), "{script} failed:\n{}", String::from_utf8_lossy(&out.stderr));
    out.stdout
}

/// Reads little-endian f32 values.
pub fn read_f32(path: &Path) -> Vec<f32> {
    std::fs::read(path).unwrap().chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect()
}

/// A small deterministic generator (SplitMix64) for test data.
pub struct Rng(pub u64);

impl Rng {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next_u64() as u8).collect()
    }

    /// Uniform in [-1, 1).
    pub fn f32(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 23) as f32 - 1.0
    }
}
