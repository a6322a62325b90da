//! Weights of a Hugging Face model folder: `model.safetensors`, or shards listed by
//! `model.safetensors.index.json`. Files are memory-mapped; a tensor is copied out only
//! when asked for.

use crate::error::{LoadError, Result};
use engine::Tensor;
use half::{bf16, f16};
use memmap2::Mmap;
use safetensors::{Dtype, SafeTensors};
use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};

pub struct SafetensorsDir {
    files: Vec<(PathBuf, Mmap)>,
    /// Tensor name -> index into `files`.
    index: HashMap<String, usize>,
}

impl SafetensorsDir {
    /// Opens the weights of the model folder `dir`.
    pub fn open(dir: &Path) -> Result<SafetensorsDir> {
        let index_path = dir.join("model.safetensors.index.json");
        let shard_names: Vec<String> = if index_path.exists() {
            shards_of_index(&index_path)?
        } else {
            let single = dir.join("model.safetensors");
            if !single.exists() {
                return Err(LoadError::Invalid(format!(
                    "{}: no model.safetensors or model.safetensors.index.json",
                    dir.display()
                )));
            }
            vec!["model.safetensors".into()]
        };
        let paths: Vec<PathBuf> = shard_names.iter().map(|n| dir.join(n)).collect();
        SafetensorsDir::open_files(&paths)
    }

    /// Opens the given safetensors files as one set of named tensors.
    pub fn open_files(paths: &[PathBuf]) -> Result<SafetensorsDir> {
        let mut files = Vec::new();
        let mut index = HashMap::new();
        for path in paths {
            let path = path.clone();
            let file = File::open(&path).map_err(|e| LoadError::io(&path, e))?;
            // SAFETY: the file is opened read-only; ferrotune never writes model files in
            // place, and a concurrent truncation by another program is outside our control
            // as with any mmap-based loader.
            let mmap = unsafe { Mmap::map(&file) }.map_err(|e| LoadError::io(&path, e))?;
            let st = SafeTensors::deserialize(&mmap).map_err(|e| LoadError::InFile {
                path: path.clone(),
                msg: format!("not a valid safetensors file ({e}); is it truncated or still downloading?"),
            })?;
            for n in st.names() {
                index.insert(n.to_string(), files.len());
            }
            drop(st);
            files.push((path, mmap));
        }
        Ok(SafetensorsDir { files, index })
    }

    /// The `__metadata__` string map of the first file.
    pub fn metadata(&self) -> Result<HashMap<String, String>> {
        let Some((path, mmap)) = self.files.first() else { return Ok(HashMap::new()) };
        let (_, meta) = SafeTensors::read_metadata(mmap)
            .map_err(|e| LoadError::InFile { path: path.clone(), msg: e.to_string() })?;
        Ok(meta.metadata().clone().unwrap_or_default())
    }

    pub fn contains(&self, name: &str) -> bool {
        self.index.contains_key(name)
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.index.keys().map(|s| s.as_str())
    }

    /// The tensor `name` in its stored dtype (f32, f16, bf16; integer types as i32/u32).
    pub fn get(&self, name: &str) -> Result<Tensor> {
        let &i = self
            .index
            .get(name)
            .ok_or_else(|| LoadError::Invalid(format!("tensor \"{name}\" not found in the model files")))?;
        let (path, mmap) = &self.files[i];
        let st =
            SafeTensors::deserialize(mmap).map_err(|e| LoadError::InFile { path: path.clone(), msg: e.to_string() })?;
        let view = st.tensor(name).map_err(|e| LoadError::InFile { path: path.clone(), msg: e.to_string() })?;
        let shape = view.shape().to_vec();
        let bytes = view.data();
        let t = match view.dtype() {
            Dtype::F32 => Tensor::from_vec(cast_le::<f32>(bytes), &shape),
            Dtype::F16 => Tensor::from_vec(cast_le::<f16>(bytes), &shape),
            Dtype::BF16 => Tensor::from_vec(cast_le::<bf16>(bytes), &shape),
            Dtype::F64 => Tensor::from_vec(cast_le::<f64>(bytes), &shape),
            Dtype::I64 => {
                Tensor::from_vec(cast_le::<i64>(bytes).into_iter().map(|v| v as i32).collect::<Vec<i32>>(), &shape)
            }
            Dtype::I32 => Tensor::from_vec(cast_le::<i32>(bytes), &shape),
            other => {
                return Err(LoadError::InFile {
                    path: path.clone(),
                    msg: format!("tensor \"{name}\" has dtype {other:?}; expected F32, F16, BF16, F64, I32 or I64"),
                })
            }
        };
        Ok(t?)
    }
}

/// Copies little-endian values out of a byte slice of any alignment.
fn cast_le<T: bytemuck::Pod>(bytes: &[u8]) -> Vec<T> {
    let n = bytes.len() / std::mem::size_of::<T>();
    let mut out = vec![T::zeroed(); n];
    bytemuck::cast_slice_mut::<T, u8>(&mut out).copy_from_slice(&bytes[..n * std::mem::size_of::<T>()]);
    out
}

fn shards_of_index(path: &Path) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(path).map_err(|e| LoadError::io(path, e))?;
    let v: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| LoadError::InFile { path: path.to_path_buf(), msg: format!("invalid JSON: {e}") })?;
    let map = v
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or_else(|| LoadError::InFile { path: path.to_path_buf(), msg: "missing object \"weight_map\"".into() })?;
    let mut shards: Vec<String> = map.values().filter_map(|s| s.as_str().map(String::from)).collect();
    shards.sort();
    shards.dedup();
    Ok(shards)
}
