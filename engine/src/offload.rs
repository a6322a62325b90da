//! Parking a tensor's values in pinned host memory while a GPU does not need them (the saved
//! layer inputs of offloaded gradient checkpointing), and bringing them back.
//!
//! Copies run on the device's copy stream (see [`CudaDevice::copy_stream`]) so that they
//! overlap the kernels of the compute stream; cudarc's per-buffer events order them: the
//! device -> host copy waits for the kernel that wrote the tensor, the tensor's memory is
//! freed only after the copy read it, and kernels that read a restored tensor wait for its
//! host -> device copy. One order cudarc does not see is added here: a restored tensor's
//! buffer is allocated on the compute stream, so the copy into it waits for that stream. Pinned buffers are allocated once (page-locking is slow) and reused
//! through a per-device pool.

use crate::cuda::{drv, CudaBuf, CudaDevice, CudaStorage};
use crate::tensor::Storage;
use crate::{DType, Result, Tensor};
use kernels_cuda::cudarc::driver::{CudaSlice, DeviceRepr, PinnedHostSlice};
use std::sync::Arc;

/// A tensor's values: still the tensor itself on the CPU, pinned host bytes for a GPU tensor.
pub struct HostCopy {
    shape: Vec<usize>,
    place: Place,
}

enum Place {
    Cpu(Tensor),
    Pinned { bytes: Option<PinnedHostSlice<u8>>, dtype: DType, dev: Arc<CudaDevice> },
}

impl HostCopy {
    /// Starts copying `t` (made contiguous first) to pinned host memory; returns at once.
    pub fn start(t: &Tensor) -> Result<HostCopy> {
        let t = crate::ops::contiguous(&t.detach())?;
        let shape = t.shape().to_vec();
        let guard = t.storage();
        let Storage::Cuda(s) = &*guard else {
            drop(guard);
            return Ok(HostCopy { shape, place: Place::Cpu(t) });
        };
        let dev = s.dev.clone();
        let n_bytes = s.len() * s.dtype().size_in_bytes();
        let mut bytes = dev.take_pinned(n_bytes)?;
        let stream = dev.copy_stream()?;
        fn go<T: DeviceRepr>(
            stream: &Arc<kernels_cuda::cudarc::driver::CudaStream>,
            v: &CudaSlice<T>,
            dst: &mut PinnedHostSlice<u8>,
            n: usize,
        ) -> Result<()> {
            // SAFETY: every bit pattern of the tensor's element type is a valid byte sequence.
            let view = unsafe { v.transmute::<u8>(n) }.expect("n bytes fit the buffer");
            drv(stream.memcpy_dtoh(&view, dst), "device -> pinned host copy")
        }
        match &s.buf {
            CudaBuf::F32(v) => go(&stream, v, &mut bytes, n_bytes)?,
            CudaBuf::BF16(v) => go(&stream, v, &mut bytes, n_bytes)?,
            CudaBuf::F16(v) => go(&stream, v, &mut bytes, n_bytes)?,
            CudaBuf::U32(v) => go(&stream, v, &mut bytes, n_bytes)?,
            CudaBuf::I32(v) => go(&stream, v, &mut bytes, n_bytes)?,
        }
        Ok(HostCopy { shape, place: Place::Pinned { bytes: Some(bytes), dtype: s.dtype(), dev } })
    }

    /// A new tensor on the original device holding the values (an asynchronous copy on the
    /// copy stream for a GPU tensor; kernels that read it wait for the copy).
    pub fn restore(&self) -> Result<Tensor> {
        let (bytes, dtype, dev) = match &self.place {
            Place::Cpu(t) => return Ok(t.clone()),
            Place::Pinned { bytes, dtype, dev } => (bytes.as_ref().expect("held until drop"), *dtype, dev),
        };
        let n: usize = self.shape.iter().product();
        let mut out = CudaStorage::uninit(dtype, n, dev)?;
        let stream = dev.copy_stream()?;
        // The allocation is ordered on the compute stream (its memory may have been freed
        // there by work still queued); a fresh buffer has no recorded events for cudarc to
        // wait on, so the copy stream waits for the compute stream explicitly.
        let allocated = drv(dev.gpu.stream().record_event(None), "recording an event")?;
        drv(stream.wait(&allocated), "ordering the copy stream after the allocation")?;
        fn go<T: DeviceRepr>(
            stream: &Arc<kernels_cuda::cudarc::driver::CudaStream>,
            src: &PinnedHostSlice<u8>,
            v: &mut CudaSlice<T>,
            n: usize,
        ) -> Result<()> {
            // SAFETY: the bytes were copied from a buffer of this element type.
            let mut view = unsafe { v.transmute_mut::<u8>(n) }.expect("n bytes fit the buffer");
            drv(stream.memcpy_htod(src, &mut view), "pinned host -> device copy")
        }
        let n_bytes = n * dtype.size_in_bytes();
        match &mut out.buf {
            CudaBuf::F32(v) => go(&stream, bytes, v, n_bytes)?,
            CudaBuf::BF16(v) => go(&stream, bytes, v, n_bytes)?,
            CudaBuf::F16(v) => go(&stream, bytes, v, n_bytes)?,
            CudaBuf::U32(v) => go(&stream, bytes, v, n_bytes)?,
            CudaBuf::I32(v) => go(&stream, bytes, v, n_bytes)?,
        }
        Ok(crate::cuda::tensor(out, &self.shape))
    }

    /// Bytes held in pinned host memory.
    pub fn pinned_bytes(&self) -> usize {
        match &self.place {
            Place::Cpu(_) => 0,
            Place::Pinned { bytes, .. } => bytes.as_ref().map_or(0, |b| b.len()),
        }
    }
}

impl Drop for HostCopy {
    fn drop(&mut self) {
        if let Place::Pinned { bytes, dev, .. } = &mut self.place {
            if let Some(b) = bytes.take() {
                dev.return_pinned(b);
            }
        }
    }
}
