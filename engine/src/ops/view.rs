//! Views and layout changes: reshape, transpose, narrow, contiguous.

use crate::autograd::{Backward, GradStore};
use crate::cuda::CudaStorage;
use crate::tensor::Storage;
use crate::{Error, Layout, Result, Tensor};
use std::sync::Arc;

/// A contiguous copy of the tensor's values (the tensor itself when already contiguous).
pub fn contiguous(x: &Tensor) -> Result<Tensor> {
    if x.is_contiguous() {
        return Ok(x.clone());
    }
    let out = Tensor::from_storage(copy_values(x)?, x.shape());
    Ok(out.track(&[x], || Arc::new(Identity { x: x.clone(), name: "contiguous" })))
}

/// A tensor whose storage holds exactly its elements in row-major order: `x` itself when it
/// already does, else a copy (no history). Kernels over flat buffers take these.
pub(crate) fn dense(x: &Tensor) -> Result<Tensor> {
    let whole = x.is_contiguous() && x.layout().offset() == 0 && x.storage_len() == x.elem_count();
    if whole {
        return Ok(x.clone());
    }
    Ok(Tensor::from_storage(copy_values(x)?, x.shape()))
}

/// A new contiguous copy of `x`'s values (no history), for kernels that work in place.
pub(crate) fn dense_copy(x: &Tensor) -> Result<Tensor> {
    Ok(Tensor::from_storage(copy_values(x)?, x.shape()))
}

/// The tensor's elements as new contiguous storage on the same device.
fn copy_values(x: &Tensor) -> Result<Storage> {
    let guard = x.storage();
    Ok(match &*guard {
        Storage::Cpu(s) => Storage::Cpu(s.select(x.layout())),
        Storage::Cuda(s) => {
            let mut out = CudaStorage::uninit(s.dtype(), x.elem_count(), &s.dev)?;
            s.copy_into(x.layout(), &mut out, &Layout::contiguous(x.shape()))?;
            Storage::Cuda(out)
        }
    })
}

/// Same values, new shape (copies first when `x` is not contiguous).
pub fn reshape(x: &Tensor, shape: &[usize]) -> Result<Tensor> {
    let n: usize = shape.iter().product();
    if n != x.elem_count() {
        return Err(Error::shape("reshape", format!("{:?} -> {shape:?}", x.shape())));
    }
    let base = contiguous(x)?;
    let layout = Layout::contiguous(shape).with_offset(base.layout().offset());
    let out = base.view(layout);
    Ok(out.track(&[x], || Arc::new(Identity { x: x.clone(), name: "reshape" })))
}

/// Swaps dimensions `a` and `b` (a view).
pub fn transpose(x: &Tensor, a: usize, b: usize) -> Result<Tensor> {
    let out = x.view(x.layout().transpose(a, b)?);
    Ok(out.track(&[x], || Arc::new(TransposeBackward { x: x.clone(), a, b })))
}

/// Elements `start..start+len` of dimension `dim` (a view).
pub fn narrow(x: &Tensor, dim: usize, start: usize, len: usize) -> Result<Tensor> {
    let out = x.view(x.layout().narrow(dim, start, len)?);
    Ok(out.track(&[x], || Arc::new(NarrowBackward { x: x.clone(), dim, start })))
}

/// Backward of ops that keep values and order (contiguous copies, reshapes).
struct Identity {
    x: Tensor,
    name: &'static str,
}
impl Backward for Identity {
    fn name(&self) -> &'static str {
        self.name
    }
    fn inputs(&self) -> Vec<Tensor> {
        vec![self.x.clone()]
    }
    fn backward(&self, g: &Tensor, _: &mut GradStore) -> Result<Vec<Option<Tensor>>> {
        Ok(vec![Some(reshape(g, self.x.shape())?)])
    }
}

struct TransposeBackward {
    x: Tensor,
    a: usize,
    b: usize,
}
impl Backward for TransposeBackward {
    fn name(&self) -> &'static str {
        "transpose"
    }
    fn inputs(&self) -> Vec<Tensor> {
        vec![self.x.clone()]
    }
    fn backward(&self, g: &Tensor, _: &mut GradStore) -> Result<Vec<Option<Tensor>>> {
        Ok(vec![Some(transpose(g, self.a, self.b)?)])
    }
}

struct NarrowBackward {
    x: Tensor,
    dim: usize,
    start: usize,
}
impl Backward for NarrowBackward {
    fn name(&self) -> &'static str {
        "narrow"
    }
    fn inputs(&self) -> Vec<Tensor> {
        vec![self.x.clone()]
    }
    fn backward(&self, g: &Tensor, _: &mut GradStore) -> Result<Vec<Option<Tensor>>> {
        let full = Tensor::zeros(self.x.shape(), g.dtype(), g.device())?;
        full.write_slice(self.dim, self.start, g)?;
        Ok(vec![Some(full)])
    }
}

impl Tensor {
    /// Overwrites `self[.., start..start+len, ..]` along `dim` with `src` in place (no
    /// autograd; used for KV caches and gradient assembly). `src` is cast to `self`'s dtype.
    pub fn write_slice(&self, dim: usize, start: usize, src: &Tensor) -> Result<()> {
        let len = src.shape().get(dim).copied().unwrap_or(0);
        let target = self.layout().narrow(dim, start, len)?;
        if target.shape() != src.shape() {
            return Err(Error::shape("write_slice", format!("{:?} into {:?}", src.shape(), target.shape())));
        }
        let values = super::cast(&src.detach(), self.dtype())?;
        self.check_same_device(&values, "write_slice")?;
        let values = copy_values(&values)?;
        let mut guard = self.storage_mut();
        match (&mut *guard, &values) {
            (Storage::Cpu(dst), Storage::Cpu(src)) => dst.write(&target, src),
            (Storage::Cuda(dst), Storage::Cuda(src)) => {
                src.copy_into(&Layout::contiguous(target.shape()), dst, &target)?;
            }
            _ => unreachable!("devices checked above"),
        }
        Ok(())
    }
}
