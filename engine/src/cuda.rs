//! The CUDA side of the engine: one context, stream and cuBLAS handle per device, device
//! storage, and host <-> device copies. Kernels come from the `kernels-cuda` crate; ops call
//! them from their own files (see `ops/`).

use crate::storage::CpuStorage;
use crate::{DType, Error, Layout, Result};
use half::{bf16, f16};
use kernels_cuda::cudarc::cublas::CudaBlas;
use kernels_cuda::cudarc::driver::{CudaSlice, CudaStream, DeviceRepr, PinnedHostSlice, ValidAsZeroBits};
use kernels_cuda::ops::copy::{copy_strided, View};
use kernels_cuda::Gpu;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

/// A GPU as the engine uses it.
pub struct CudaDevice {
    pub ordinal: usize,
    pub gpu: Gpu,
    pub blas: CudaBlas,
    /// A second stream for host <-> device copies that overlap the kernels (made on first use).
    copy: OnceLock<Arc<CudaStream>>,
    /// Page-locked host buffers free for reuse (see `offload`).
    pinned: Mutex<Vec<PinnedHostSlice<u8>>>,
}

impl CudaDevice {
    /// The copy stream (offloading runs there, beside the compute stream `gpu.stream()`).
    pub fn copy_stream(&self) -> Result<Arc<CudaStream>> {
        if let Some(s) = self.copy.get() {
            return Ok(s.clone());
        }
        let s = drv(self.gpu.context().new_stream(), "creating the copy stream")?;
        Ok(self.copy.get_or_init(|| s).clone())
    }

    /// A pinned host buffer of exactly `n` bytes: a pooled one when there is one, else new.
    pub(crate) fn take_pinned(&self, n: usize) -> Result<PinnedHostSlice<u8>> {
        let mut pool = self.pinned.lock().expect("pinned pool poisoned");
        if let Some(i) = pool.iter().position(|b| b.len() == n) {
            return Ok(pool.swap_remove(i));
        }
        drop(pool);
        // SAFETY: the buffer is written by a device -> host copy before anything reads it.
        drv(unsafe { self.gpu.context().alloc_pinned::<u8>(n) }, "allocating pinned host memory")
    }

    /// Gives a pinned buffer back to the pool.
    pub(crate) fn return_pinned(&self, b: PinnedHostSlice<u8>) {
        self.pinned.lock().expect("pinned pool poisoned").push(b);
    }
}

impl std::fmt::Debug for CudaDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CudaDevice({}: {})", self.ordinal, self.gpu.name())
    }
}

/// The device `ordinal`, opened on first use and shared afterwards.
pub fn device(ordinal: usize) -> Result<Arc<CudaDevice>> {
    static DEVICES: OnceLock<Mutex<HashMap<usize, Arc<CudaDevice>>>> = OnceLock::new();
    let mut map = DEVICES.get_or_init(Default::default).lock().expect("device registry poisoned");
    if let Some(d) = map.get(&ordinal) {
        return Ok(d.clone());
    }
    let unavailable = |reason: String| Error::CudaUnavailable { ordinal, reason };
    let gpu = Gpu::new(ordinal).map_err(|e| unavailable(e.to_string()))?;
    let blas = CudaBlas::new(gpu.stream().clone()).map_err(|e| unavailable(format!("cuBLAS: {e}")))?;
    let d = Arc::new(CudaDevice { ordinal, gpu, blas, copy: OnceLock::new(), pinned: Mutex::new(Vec::new()) });
    map.insert(ordinal, d.clone());
    Ok(d)
}

/// Turns a kernels-cuda, cuBLAS or driver error into the engine's; every CUDA error enters
/// the engine here, so an allocation failure becomes [`Error::OutOfMemory`] in one place
/// (recognized by the names the driver and cuBLAS give it).
pub(crate) fn err(context: &str, e: impl std::fmt::Display) -> Error {
    let msg = format!("{context}: {e}");
    if msg.contains("CUDA_ERROR_OUT_OF_MEMORY") || msg.contains("CUBLAS_STATUS_ALLOC_FAILED") {
        Error::OutOfMemory(msg)
    } else {
        Error::Msg(msg)
    }
}

/// Maps a driver result into the engine's, naming what was being done.
pub(crate) fn drv<T, E: std::fmt::Display>(r: std::result::Result<T, E>, what: &str) -> Result<T> {
    r.map_err(|e| err(what, e))
}

/// Device memory of one dtype.
pub enum CudaBuf {
    F32(CudaSlice<f32>),
    F16(CudaSlice<f16>),
    BF16(CudaSlice<bf16>),
    U32(CudaSlice<u32>),
    I32(CudaSlice<i32>),
}

pub struct CudaStorage {
    pub buf: CudaBuf,
    pub dev: Arc<CudaDevice>,
}

/// Bytes held by tensor storage on each device now and at most since the last reset (the
/// activations, gradients and scratch of a step; weights uploaded outside tensors, such as NF4
/// blocks, are not counted: see `driver_used_bytes`).
static LIVE: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
static PEAK: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// `(live, peak)` bytes of tensor storage on the GPUs.
pub fn tensor_bytes() -> (usize, usize) {
    use std::sync::atomic::Ordering::Relaxed;
    (LIVE.load(Relaxed), PEAK.load(Relaxed))
}

/// Starts a new peak from the bytes live now.
pub fn reset_peak() {
    use std::sync::atomic::Ordering::Relaxed;
    PEAK.store(LIVE.load(Relaxed), Relaxed);
}

/// Device memory in use according to the driver (total - free) on the current context.
pub fn driver_used_bytes(dev: &CudaDevice) -> Result<usize> {
    dev.gpu.context().bind_to_thread().map_err(|e| err("binding the CUDA context", e))?;
    let (free, total) = drv(kernels_cuda::cudarc::driver::result::mem_get_info(), "cuMemGetInfo")?;
    Ok(total - free)
}

fn track(bytes: usize) {
    use std::sync::atomic::Ordering::Relaxed;
    let now = LIVE.fetch_add(bytes, Relaxed) + bytes;
    PEAK.fetch_max(now, Relaxed);
}

impl Drop for CudaStorage {
    fn drop(&mut self) {
        LIVE.fetch_sub(self.len() * self.dtype().size_in_bytes(), std::sync::atomic::Ordering::Relaxed);
    }
}

impl std::fmt::Debug for CudaStorage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CudaStorage({:?}, {} elements on {:?})", self.dtype(), self.len(), self.dev)
    }
}

macro_rules! each_buf {
    ($b:expr, $v:ident => $body:expr) => {
        match $b {
            CudaBuf::F32($v) => $body,
            CudaBuf::F16($v) => $body,
            CudaBuf::BF16($v) => $body,
            CudaBuf::U32($v) => $body,
            CudaBuf::I32($v) => $body,
        }
    };
}

impl CudaStorage {
    pub fn dtype(&self) -> DType {
        match self.buf {
            CudaBuf::F32(_) => DType::F32,
            CudaBuf::F16(_) => DType::F16,
            CudaBuf::BF16(_) => DType::BF16,
            CudaBuf::U32(_) => DType::U32,
            CudaBuf::I32(_) => DType::I32,
        }
    }
    pub fn len(&self) -> usize {
        each_buf!(&self.buf, v => v.len())
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Copies host storage to `dev`.
    pub fn upload(cpu: &CpuStorage, dev: &Arc<CudaDevice>) -> Result<CudaStorage> {
        let s = dev.gpu.stream();
        let buf = match cpu {
            CpuStorage::F32(v) => CudaBuf::F32(drv(s.clone_htod(v), "host -> device copy")?),
            CpuStorage::F16(v) => CudaBuf::F16(drv(s.clone_htod(v), "host -> device copy")?),
            CpuStorage::BF16(v) => CudaBuf::BF16(drv(s.clone_htod(v), "host -> device copy")?),
            CpuStorage::U32(v) => CudaBuf::U32(drv(s.clone_htod(v), "host -> device copy")?),
            CpuStorage::I32(v) => CudaBuf::I32(drv(s.clone_htod(v), "host -> device copy")?),
            CpuStorage::F64(_) => {
                return Err(Error::DType { op: "to_device(cuda)", dtype: DType::F64 });
            }
        };
        Ok(CudaStorage::tracked(buf, dev))
    }

    /// Wraps a new device buffer, counting its bytes (see [`tensor_bytes`]).
    pub fn tracked(buf: CudaBuf, dev: &Arc<CudaDevice>) -> CudaStorage {
        let s = CudaStorage { buf, dev: dev.clone() };
        track(s.len() * s.dtype().size_in_bytes());
        s
    }

    /// Copies the whole buffer to the host (waits for the stream).
    pub fn download(&self) -> Result<CpuStorage> {
        let s = self.dev.gpu.stream();
        Ok(match &self.buf {
            CudaBuf::F32(v) => CpuStorage::F32(drv(s.clone_dtoh(v), "device -> host copy")?),
            CudaBuf::F16(v) => CpuStorage::F16(drv(s.clone_dtoh(v), "device -> host copy")?),
            CudaBuf::BF16(v) => CpuStorage::BF16(drv(s.clone_dtoh(v), "device -> host copy")?),
            CudaBuf::U32(v) => CpuStorage::U32(drv(s.clone_dtoh(v), "device -> host copy")?),
            CudaBuf::I32(v) => CpuStorage::I32(drv(s.clone_dtoh(v), "device -> host copy")?),
        })
    }

    /// `n` zeros of `dtype` on `dev`.
    pub fn zeros(dtype: DType, n: usize, dev: &Arc<CudaDevice>) -> Result<CudaStorage> {
        Self::allocate(dtype, n, dev, true)
    }

    /// `n` elements of `dtype` on `dev`, not initialized: for outputs that a kernel, cuBLAS
    /// (beta = 0) or a copy writes in full before anything reads them (the kernels' GPU tests
    /// poison their outputs with NaN to check that every element is written). Skips the memset
    /// that [`CudaStorage::zeros`] costs.
    pub(crate) fn uninit(dtype: DType, n: usize, dev: &Arc<CudaDevice>) -> Result<CudaStorage> {
        Self::allocate(dtype, n, dev, false)
    }

    fn allocate(dtype: DType, n: usize, dev: &Arc<CudaDevice>, zeroed: bool) -> Result<CudaStorage> {
        fn alloc<T: DeviceRepr + ValidAsZeroBits>(s: &Arc<CudaStream>, n: usize, zeroed: bool) -> Result<CudaSlice<T>> {
            // SAFETY (not zeroed): `uninit`'s callers overwrite every element before any kernel
            // reads the buffer.
            let r = if zeroed { s.alloc_zeros(n) } else { unsafe { s.alloc(n) } };
            drv(r, "device allocation")
        }
        let s = dev.gpu.stream();
        let buf = match dtype {
            DType::F32 => CudaBuf::F32(alloc(s, n, zeroed)?),
            DType::F16 => CudaBuf::F16(alloc(s, n, zeroed)?),
            DType::BF16 => CudaBuf::BF16(alloc(s, n, zeroed)?),
            DType::U32 => CudaBuf::U32(alloc(s, n, zeroed)?),
            DType::I32 => CudaBuf::I32(alloc(s, n, zeroed)?),
            DType::F64 => return Err(Error::DType { op: if zeroed { "zeros(cuda)" } else { "uninit(cuda)" }, dtype }),
        };
        Ok(CudaStorage::tracked(buf, dev))
    }

    /// Copies the elements of view `from` of `self` into view `to` of `dst` (same shape).
    pub fn copy_into(&self, from: &Layout, dst: &mut CudaStorage, to: &Layout) -> Result<()> {
        fn view(l: &Layout) -> View<'_> {
            View { shape: l.shape(), strides: l.strides(), offset: l.offset() }
        }
        fn go<T: DeviceRepr>(g: &Gpu, a: &CudaSlice<T>, f: &Layout, b: &mut CudaSlice<T>, t: &Layout) -> Result<()> {
            copy_strided(g, a, &view(f), b, &view(t)).map_err(|e| err("strided copy", e))
        }
        let g = &self.dev.gpu;
        match (&self.buf, &mut dst.buf) {
            (CudaBuf::F32(a), CudaBuf::F32(b)) => go(g, a, from, b, to),
            (CudaBuf::F16(a), CudaBuf::F16(b)) => go(g, a, from, b, to),
            (CudaBuf::BF16(a), CudaBuf::BF16(b)) => go(g, a, from, b, to),
            (CudaBuf::U32(a), CudaBuf::U32(b)) => go(g, a, from, b, to),
            (CudaBuf::I32(a), CudaBuf::I32(b)) => go(g, a, from, b, to),
            _ => Err(Error::Msg(format!("strided copy between {:?} and {:?}", self.dtype(), dst.dtype()))),
        }
    }
}

/// Binds each listed buffer to its typed device slice, all f32 or all bf16, and evaluates
/// `$body` (generic code over the kernels' `KernelFloat`); any other dtype is an error
/// naming `$op`.
macro_rules! cuda_float {
    ($op:expr; $($name:ident = $buf:expr),+ => $body:expr) => {
        match ($($buf,)+) {
            ($($crate::cuda::CudaBuf::F32($name),)+) => $body,
            ($($crate::cuda::CudaBuf::BF16($name),)+) => $body,
            _ => {
                return Err($crate::Error::Msg(format!(
                    "{}: the CUDA kernels take f32 or bf16 tensors, all of one dtype",
                    $op
                )))
            }
        }
    };
}
pub(crate) use cuda_float;

impl crate::Tensor {
    /// This tensor's device storage (it must be dense: see `ops::dense`).
    pub(crate) fn cuda_storage(&self) -> Result<std::sync::RwLockReadGuard<'_, crate::tensor::Storage>> {
        let g = self.storage();
        match &*g {
            crate::tensor::Storage::Cuda(_) => Ok(g),
            crate::tensor::Storage::Cpu(_) => Err(Error::Msg("expected a CUDA tensor".into())),
        }
    }
}

/// The device storage inside a guard from [`crate::Tensor::cuda_storage`].
pub(crate) fn cs(g: &crate::tensor::Storage) -> &CudaStorage {
    match g {
        crate::tensor::Storage::Cuda(s) => s,
        crate::tensor::Storage::Cpu(_) => unreachable!("checked by cuda_storage"),
    }
}

/// Copies host values to `dev` (small index arrays: positions, token ids, labels).
pub(crate) fn upload<T: DeviceRepr>(dev: &CudaDevice, v: &[T]) -> Result<CudaSlice<T>> {
    drv(dev.gpu.stream().clone_htod(v), "host -> device copy")
}

/// A tensor on `dev` wrapping new device storage.
/// Takes over the buffer of `s` (already counted) as a tensor of `shape`.
pub(crate) fn tensor(s: CudaStorage, shape: &[usize]) -> crate::Tensor {
    crate::Tensor::from_storage(crate::tensor::Storage::Cuda(s), shape)
}

impl crate::Tensor {
    /// Runs `f` on the device buffer of this f32 CUDA tensor, which must be whole (contiguous,
    /// not a view of a larger buffer): for kernels that update a tensor in place, such as an
    /// optimizer step. Autograd does not see the change.
    pub fn with_cuda_f32_mut<R>(&self, f: impl FnOnce(&Arc<CudaDevice>, &mut CudaSlice<f32>) -> R) -> Result<R> {
        self.check_whole("with_cuda_f32_mut")?;
        let mut g = self.storage_mut();
        match &mut *g {
            crate::tensor::Storage::Cuda(CudaStorage { buf: CudaBuf::F32(v), dev }) => Ok(f(dev, v)),
            _ => Err(Error::Msg(format!("with_cuda_f32_mut: expected an f32 CUDA tensor, got {:?}", self.dtype()))),
        }
    }

    /// Runs `f` on the device buffer of this whole f32 CUDA tensor (see `with_cuda_f32_mut`).
    pub fn with_cuda_f32<R>(&self, f: impl FnOnce(&Arc<CudaDevice>, &CudaSlice<f32>) -> R) -> Result<R> {
        self.check_whole("with_cuda_f32")?;
        let g = self.storage();
        match &*g {
            crate::tensor::Storage::Cuda(CudaStorage { buf: CudaBuf::F32(v), dev }) => Ok(f(dev, v)),
            _ => Err(Error::Msg(format!("with_cuda_f32: expected an f32 CUDA tensor, got {:?}", self.dtype()))),
        }
    }

    fn check_whole(&self, what: &str) -> Result<()> {
        if self.is_contiguous() && self.layout().offset() == 0 && self.storage_len() == self.elem_count() {
            Ok(())
        } else {
            Err(Error::Msg(format!("{what}: the tensor is a view of a larger buffer")))
        }
    }
}

#[cfg(test)]
mod tests {
    /// Allocation failures become `OutOfMemory` whatever the layer that reports them.
    #[test]
    fn allocation_failures_are_out_of_memory() {
        let oom = super::err("device allocation", "DriverError(CUDA_ERROR_OUT_OF_MEMORY, \"out of memory\")");
        assert!(matches!(oom, crate::Error::OutOfMemory(_)), "{oom}");
        let blas = super::err("cuBLAS gemm", "CUBLAS_STATUS_ALLOC_FAILED");
        assert!(matches!(blas, crate::Error::OutOfMemory(_)), "{blas}");
        let other = super::err("device allocation", "DriverError(CUDA_ERROR_INVALID_VALUE, \"invalid argument\")");
        assert!(matches!(other, crate::Error::Msg(_)), "{other}");
    }
}
