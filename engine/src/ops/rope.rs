//! Rotary position embedding (the Hugging Face "rotate half" layout) on `[b, h, t, d]`.
//! Backward is the same rotation with `sin` negated.

use super::dense_copy as copy;
use super::{output, run_cpu, CpuKernel};
use crate::autograd::{Backward, GradStore};
use crate::cuda::{self, CudaDevice};
use crate::storage::StorageElem;
use crate::tensor::Storage;
use crate::{Error, Real, Result, Tensor};
use kernels_cuda::cudarc::driver::CudaSlice;
use kernels_cuda::ops::rope::{self as kernels, RopeShape};
use rayon::prelude::*;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::Mutex;

/// cos/sin of `position * inv_freq[i]` for every position below `max_positions`.
#[derive(Debug, Clone)]
pub struct RopeTable {
    half: usize,
    // Shared: every recorded rope op keeps a handle for its backward.
    cos: Arc<[f64]>,
    sin: Arc<[f64]>,
    /// f32 copies of the tables per CUDA device, uploaded on first use there.
    on_device: Arc<Mutex<HashMap<usize, Arc<DeviceTable>>>>,
}

struct DeviceTable {
    cos: CudaSlice<f32>,
    sin: CudaSlice<f32>,
    /// The positions last uploaded, kept while they stay the same: every layer (and the
    /// recompute and the backward) of a batch rotates at the same positions, so they cross to
    /// the device once, not once per call.
    positions: Mutex<Option<UploadedPositions>>,
}

/// Host positions and their device copy.
type UploadedPositions = (Vec<usize>, Arc<CudaSlice<u32>>);

impl DeviceTable {
    /// `positions` as u32 on `dev`.
    fn positions(&self, dev: &CudaDevice, positions: &[usize]) -> Result<Arc<CudaSlice<u32>>> {
        let mut last = self.positions.lock().expect("rope positions lock poisoned");
        if let Some((host, device)) = &*last {
            if host == positions {
                return Ok(device.clone());
            }
        }
        let pos: Vec<u32> = positions.iter().map(|&p| p as u32).collect();
        let device = Arc::new(cuda::upload(dev, &pos)?);
        *last = Some((positions.to_vec(), device.clone()));
        Ok(device)
    }
}

impl std::fmt::Debug for DeviceTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "DeviceTable({} entries)", self.cos.len())
    }
}

impl RopeTable {
    /// `inv_freq` has `head_dim / 2` entries (already scaled, e.g. by llama3 rope scaling).
    pub fn new(inv_freq: &[f64], max_positions: usize) -> RopeTable {
        let half = inv_freq.len();
        let mut cos = Vec::with_capacity(max_positions * half);
        let mut sin = Vec::with_capacity(max_positions * half);
        for p in 0..max_positions {
            for &f in inv_freq {
                // f32 angle, as transformers computes `positions.float() @ inv_freq.float()`.
                let angle = (p as f32 * f as f32) as f64;
                cos.push(angle.cos());
                sin.push(angle.sin());
            }
        }
        RopeTable { half, cos: cos.into(), sin: sin.into(), on_device: Default::default() }
    }
    pub fn head_dim(&self) -> usize {
        2 * self.half
    }
    pub fn max_positions(&self) -> usize {
        self.cos.len() / self.half.max(1)
    }

    fn device_table(&self, dev: &CudaDevice) -> Result<Arc<DeviceTable>> {
        let mut map = self.on_device.lock().expect("rope table lock poisoned");
        if let Some(t) = map.get(&dev.ordinal) {
            return Ok(t.clone());
        }
        let f32s = |v: &[f64]| v.iter().map(|&x| x as f32).collect::<Vec<f32>>();
        let t = Arc::new(DeviceTable {
            cos: cuda::upload(dev, &f32s(&self.cos))?,
            sin: cuda::upload(dev, &f32s(&self.sin))?,
            positions: Mutex::new(None),
        });
        map.insert(dev.ordinal, t.clone());
        Ok(t)
    }
}

struct Rotate<'a> {
    table: &'a RopeTable,
    positions: &'a [usize],
    sign: f64,
}
impl CpuKernel for Rotate<'_> {
    fn run<T: Real + StorageElem>(&self, i: &[&[T]]) -> Result<Vec<Vec<T>>> {
        let x = i[0];
        let half = self.table.half;
        let d = 2 * half;
        let t = self.positions.len();
        let mut y = vec![T::ZERO; x.len()];
        y.par_chunks_mut(d).enumerate().for_each(|(row, yr)| {
            let p = self.positions[row % t];
            let xr = &x[row * d..(row + 1) * d];
            for j in 0..half {
                let c = T::from_f64(self.table.cos[p * half + j]);
                let s = T::from_f64(self.sign * self.table.sin[p * half + j]);
                yr[j] = xr[j] * c - xr[j + half] * s;
                yr[j + half] = xr[j + half] * c + xr[j] * s;
            }
        });
        Ok(vec![y])
    }
}

fn rotate(x: &Tensor, table: &RopeTable, positions: &[usize], sign: f64) -> Result<Tensor> {
    if !x.device().is_cpu() {
        return rotate_cuda(x, table, positions, sign);
    }
    let mut o = run_cpu("rope", &Rotate { table, positions, sign }, &[x])?;
    Ok(output(o.remove(0), x.shape(), x.dtype()))
}

/// Rotates `x: [b, h, t, head_dim]`; token `i` of every sequence sits at `positions[i]`.
pub fn rope(x: &Tensor, table: &RopeTable, positions: &[usize]) -> Result<Tensor> {
    if x.rank() != 4 || x.dim(-1) != table.head_dim() || x.dim(2) != positions.len() {
        return Err(Error::shape(
            "rope",
            format!("input {:?}, head_dim {}, {} positions", x.shape(), table.head_dim(), positions.len()),
        ));
    }
    if let Some(&p) = positions.iter().find(|&&p| p >= table.max_positions()) {
        return Err(Error::shape("rope", format!("position {p} beyond the table ({})", table.max_positions())));
    }
    let y = rotate(x, table, positions, 1.0)?;
    Ok(y.track(&[x], || Arc::new(RopeBackward { x: x.clone(), table: table.clone(), positions: positions.to_vec() })))
}

struct RopeBackward {
    x: Tensor,
    table: RopeTable,
    positions: Vec<usize>,
}
impl Backward for RopeBackward {
    fn name(&self) -> &'static str {
        "rope"
    }
    fn inputs(&self) -> Vec<Tensor> {
        vec![self.x.clone()]
    }
    fn backward(&self, g: &Tensor, _: &mut GradStore) -> Result<Vec<Option<Tensor>>> {
        Ok(vec![Some(rotate(g, &self.table, &self.positions, -1.0)?)])
    }
}

/// The GPU rotation: a copy of `x` rotated in place by the kernel.
fn rotate_cuda(x: &Tensor, table: &RopeTable, positions: &[usize], sign: f64) -> Result<Tensor> {
    let y = copy(x)?;
    {
        let mut gy = y.storage_mut();
        let Storage::Cuda(sy) = &mut *gy else { unreachable!("copy of a CUDA tensor") };
        let dev = sy.dev.clone();
        let t = table.device_table(&dev)?;
        let pos = t.positions(&dev, positions)?;
        let shape = RopeShape::bhtd(x.dim(0), x.dim(1), x.dim(2), x.dim(3));
        let r = cuda::cuda_float!("rope"; b = &mut sy.buf => if sign > 0.0 {
            kernels::rope_fwd(&dev.gpu, b, &t.cos, &t.sin, &pos, shape)
        } else {
            kernels::rope_bwd(&dev.gpu, b, &t.cos, &t.sin, &pos, shape)
        });
        r.map_err(|e| cuda::err("rope", e))?;
    }
    Ok(y)
}
