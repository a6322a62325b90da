//! Small safetensors reading and writing for adapters, optimizer states and checkpoints:
//! f32 and u8 tensors, files written to a temporary name and renamed into place.

use crate::{Result, TrainError};
use safetensors::tensor::{Dtype, TensorView};
use safetensors::SafeTensors;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

/// Values of one stored tensor.
#[derive(Debug, Clone, PartialEq)]
pub enum Values {
    F32(Vec<f32>),
    U8(Vec<u8>),
}

/// A tensor read from or written to a safetensors file.
#[derive(Debug, Clone, PartialEq)]
pub struct Stored {
    pub shape: Vec<usize>,
    pub values: Values,
}

impl Stored {
    pub fn f32(shape: &[usize], v: Vec<f32>) -> Stored {
        Stored { shape: shape.to_vec(), values: Values::F32(v) }
    }
    pub fn u8(shape: &[usize], v: Vec<u8>) -> Stored {
        Stored { shape: shape.to_vec(), values: Values::U8(v) }
    }
    fn bytes(&self) -> (Dtype, Vec<u8>) {
        match &self.values {
            Values::F32(v) => (Dtype::F32, v.iter().flat_map(|x| x.to_le_bytes()).collect()),
            Values::U8(v) => (Dtype::U8, v.clone()),
        }
    }
}

/// `path` with `.tmp` appended to its file name.
pub(crate) fn tmp_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    name.push(".tmp");
    path.with_file_name(name)
}

/// Writes `bytes` to `path` through a temporary file in the same folder and a rename.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = tmp_path(path);
    std::fs::write(&tmp, bytes).map_err(|e| TrainError::io(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| TrainError::io(path, e))
}

/// Writes `tensors` (sorted by name) and `metadata` to `path` atomically.
pub fn write(path: &Path, tensors: &BTreeMap<String, Stored>, metadata: HashMap<String, String>) -> Result<()> {
    let owned: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = tensors
        .iter()
        .map(|(n, t)| {
            let (dt, b) = t.bytes();
            (n.clone(), dt, t.shape.clone(), b)
        })
        .collect();
    let mut views = Vec::with_capacity(owned.len());
    for (n, dt, shape, b) in &owned {
        let view = TensorView::new(*dt, shape.clone(), b)
            .map_err(|e| TrainError::Checkpoint(format!("{}: tensor {n}: {e}", path.display())))?;
        views.push((n.as_str(), view));
    }
    let bytes = safetensors::tensor::serialize(views, Some(metadata))
        .map_err(|e| TrainError::Checkpoint(format!("{}: {e}", path.display())))?;
    write_atomic(path, &bytes)
}

/// Every tensor of the safetensors file at `path` (f32, f16, bf16 read as f32; u8 as bytes)
/// and its metadata.
pub fn read(path: &Path) -> Result<(BTreeMap<String, Stored>, HashMap<String, String>)> {
    let bytes = std::fs::read(path).map_err(|e| TrainError::io(path, e))?;
    let bad = |m: String| TrainError::Checkpoint(format!("{}: {m}", path.display()));
    let st = SafeTensors::deserialize(&bytes).map_err(|e| bad(format!("not a valid safetensors file ({e})")))?;
    let (_, meta) = SafeTensors::read_metadata(&bytes).map_err(|e| bad(e.to_string()))?;
    let mut out = BTreeMap::new();
    for (name, view) in st.tensors() {
        let d = view.data();
        let values = match view.dtype() {
            Dtype::F32 => {
                Values::F32(d.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect())
            }
            Dtype::F16 => {
                Values::F32(d.chunks_exact(2).map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32()).collect())
            }
            Dtype::BF16 => {
                Values::F32(d.chunks_exact(2).map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32()).collect())
            }
            Dtype::U8 => Values::U8(d.to_vec()),
            other => return Err(bad(format!("tensor {name} has dtype {other:?}; expected F32, F16, BF16 or U8"))),
        };
        out.insert(name, Stored { shape: view.shape().to_vec(), values });
    }
    Ok((out, meta.metadata().clone().unwrap_or_default()))
}

/// The f32 values of tensor `name` in `map`, or an error naming it and the file.
pub(crate) fn take_f32(map: &mut BTreeMap<String, Stored>, name: &str, file: &Path) -> Result<(Vec<usize>, Vec<f32>)> {
    match map.remove(name) {
        Some(Stored { shape, values: Values::F32(v) }) => Ok((shape, v)),
        Some(_) => Err(TrainError::Checkpoint(format!("{}: tensor {name} is not a float tensor", file.display()))),
        None => Err(TrainError::Checkpoint(format!("{}: tensor {name} is missing", file.display()))),
    }
}

pub(crate) fn take_u8(map: &mut BTreeMap<String, Stored>, name: &str, file: &Path) -> Result<Vec<u8>> {
    match map.remove(name) {
        Some(Stored { values: Values::U8(v), .. }) => Ok(v),
        Some(_) => Err(TrainError::Checkpoint(format!("{}: tensor {name} is not a u8 tensor", file.display()))),
        None => Err(TrainError::Checkpoint(format!("{}: tensor {name} is missing", file.display()))),
    }
}
