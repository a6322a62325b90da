//! The tensor: a view (layout) over shared storage, with its place in the autograd graph.

use crate::autograd::{self, Backward};
use crate::cuda::{self, CudaStorage};
use crate::storage::{CpuStorage, StorageElem};
use crate::{DType, Device, Error, Layout, Result, WithDType};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

/// Backing memory of one or more tensor views.
#[derive(Debug)]
pub enum Storage {
    Cpu(CpuStorage),
    Cuda(CudaStorage),
}

impl Storage {
    pub fn device(&self) -> Device {
        match self {
            Storage::Cpu(_) => Device::Cpu,
            Storage::Cuda(s) => Device::Cuda(s.dev.ordinal),
        }
    }
    pub fn dtype(&self) -> DType {
        match self {
            Storage::Cpu(s) => s.dtype(),
            Storage::Cuda(s) => s.dtype(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TensorId(usize);

impl TensorId {
    fn new() -> Self {
        static NEXT: AtomicUsize = AtomicUsize::new(1);
        TensorId(NEXT.fetch_add(1, Ordering::Relaxed))
    }
}

pub(crate) struct TensorInner {
    pub(crate) id: TensorId,
    pub(crate) storage: Arc<RwLock<Storage>>,
    pub(crate) layout: Layout,
    pub(crate) dtype: DType,
    pub(crate) device: Device,
    /// True for trainable leaves and for every result computed from one while grad is on.
    pub(crate) requires_grad: bool,
    /// How this tensor was computed, for tensors that require grad and are not leaves.
    pub(crate) grad_fn: Option<Arc<dyn Backward>>,
}

/// A cheaply clonable handle: clones share storage and identity.
#[derive(Clone)]
pub struct Tensor(pub(crate) Arc<TensorInner>);

impl std::fmt::Debug for Tensor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Tensor(id={:?}, shape={:?}, dtype={}, device={}, requires_grad={})",
            self.id(),
            self.shape(),
            self.dtype().name(),
            self.device(),
            self.requires_grad()
        )
    }
}

impl Tensor {
    pub(crate) fn from_storage(storage: Storage, shape: &[usize]) -> Tensor {
        let dtype = storage.dtype();
        let device = storage.device();
        Tensor(Arc::new(TensorInner {
            id: TensorId::new(),
            storage: Arc::new(RwLock::new(storage)),
            layout: Layout::contiguous(shape),
            dtype,
            device,
            requires_grad: false,
            grad_fn: None,
        }))
    }

    pub(crate) fn from_cpu(storage: CpuStorage, shape: &[usize]) -> Tensor {
        Tensor::from_storage(Storage::Cpu(storage), shape)
    }

    /// A tensor of `shape` holding `data` (row-major) on the CPU.
    pub fn from_vec<T: StorageElem>(data: Vec<T>, shape: &[usize]) -> Result<Tensor> {
        let n: usize = shape.iter().product();
        if n != data.len() {
            return Err(Error::shape(
                "from_vec",
                format!("{} values do not fill shape {shape:?} ({n} elements)", data.len()),
            ));
        }
        Ok(Tensor::from_cpu(T::wrap(data), shape))
    }

    /// A tensor of `shape` built from `data` on `device`.
    pub fn from_vec_on<T: StorageElem>(data: Vec<T>, shape: &[usize], device: Device) -> Result<Tensor> {
        Tensor::from_vec(data, shape)?.to_device(device)
    }

    pub fn zeros(shape: &[usize], dtype: DType, device: Device) -> Result<Tensor> {
        let n = shape.iter().product();
        let storage = match device {
            Device::Cpu => Storage::Cpu(CpuStorage::zeros(dtype, n)),
            Device::Cuda(i) => Storage::Cuda(CudaStorage::zeros(dtype, n, &cuda::device(i)?)?),
        };
        Ok(Tensor::from_storage(storage, shape))
    }

    pub fn scalar(v: f32) -> Tensor {
        Tensor::from_cpu(CpuStorage::F32(vec![v]), &[])
    }

    /// Copies the tensor to `device` (a no-op handle clone when it is already there). The
    /// copy is contiguous and has no history.
    pub fn to_device(&self, device: Device) -> Result<Tensor> {
        if device == self.device() {
            return Ok(self.clone());
        }
        let host = self.host_values()?;
        let storage = match device {
            Device::Cpu => Storage::Cpu(host),
            Device::Cuda(i) => Storage::Cuda(CudaStorage::upload(&host, &cuda::device(i)?)?),
        };
        Ok(Tensor::from_storage(storage, self.shape()))
    }

    /// The selected elements, row-major, in this tensor's dtype, on the host.
    fn host_values(&self) -> Result<CpuStorage> {
        let guard = self.storage();
        let downloaded;
        let all = match &*guard {
            Storage::Cpu(s) => s,
            Storage::Cuda(s) => {
                downloaded = s.download()?;
                &downloaded
            }
        };
        Ok(all.select(self.layout()))
    }

    /// A trainable leaf: shares this tensor's storage, requires grad, has no history.
    pub fn into_var(self) -> Tensor {
        self.with_grad_state(true, None)
    }

    /// The same values cut off from the graph (no grad, no history).
    pub fn detach(&self) -> Tensor {
        self.with_grad_state(false, None)
    }

    pub(crate) fn with_grad_state(&self, requires_grad: bool, grad_fn: Option<Arc<dyn Backward>>) -> Tensor {
        Tensor(Arc::new(TensorInner {
            id: TensorId::new(),
            storage: self.0.storage.clone(),
            layout: self.0.layout.clone(),
            dtype: self.0.dtype,
            device: self.0.device,
            requires_grad,
            grad_fn,
        }))
    }

    /// A new view of this tensor's storage with another layout (no copy).
    /// This tensor's identity and history without its values (empty storage): what the
    /// graph needs of a checkpoint input whose values were parked elsewhere. Reading its
    /// values is a bug.
    pub(crate) fn shell(&self) -> Tensor {
        Tensor(Arc::new(TensorInner {
            id: self.0.id,
            storage: Arc::new(RwLock::new(Storage::Cpu(CpuStorage::zeros(self.dtype(), 0)))),
            layout: self.0.layout.clone(),
            dtype: self.0.dtype,
            device: self.0.device,
            requires_grad: self.0.requires_grad,
            grad_fn: self.0.grad_fn.clone(),
        }))
    }

    pub(crate) fn view(&self, layout: Layout) -> Tensor {
        Tensor(Arc::new(TensorInner {
            id: TensorId::new(),
            storage: self.0.storage.clone(),
            layout,
            dtype: self.0.dtype,
            device: self.0.device,
            requires_grad: false,
            grad_fn: None,
        }))
    }

    /// Attaches `grad_fn` as this result's history when grad is on and any input requires it.
    pub(crate) fn track(self, inputs: &[&Tensor], grad_fn: impl FnOnce() -> Arc<dyn Backward>) -> Tensor {
        if autograd::is_grad_enabled() && inputs.iter().any(|t| t.requires_grad()) {
            self.with_grad_state(true, Some(grad_fn()))
        } else {
            self
        }
    }

    pub fn id(&self) -> TensorId {
        self.0.id
    }
    pub fn shape(&self) -> &[usize] {
        self.0.layout.shape()
    }
    pub fn rank(&self) -> usize {
        self.shape().len()
    }
    /// Size of dimension `d`; negative values count from the end.
    pub fn dim(&self, d: isize) -> usize {
        let r = self.rank() as isize;
        self.shape()[if d < 0 { (r + d) as usize } else { d as usize }]
    }
    pub fn elem_count(&self) -> usize {
        self.0.layout.elem_count()
    }
    pub fn dtype(&self) -> DType {
        self.0.dtype
    }
    pub fn device(&self) -> Device {
        self.0.device
    }
    pub fn layout(&self) -> &Layout {
        &self.0.layout
    }
    pub fn requires_grad(&self) -> bool {
        self.0.requires_grad
    }
    pub fn grad_fn(&self) -> Option<&Arc<dyn Backward>> {
        self.0.grad_fn.as_ref()
    }
    pub fn is_contiguous(&self) -> bool {
        self.0.layout.is_contiguous()
    }
    /// Elements in the whole storage this tensor views.
    pub(crate) fn storage_len(&self) -> usize {
        match &*self.storage() {
            Storage::Cpu(s) => s.len(),
            Storage::Cuda(s) => s.len(),
        }
    }
    pub(crate) fn storage(&self) -> RwLockReadGuard<'_, Storage> {
        self.0.storage.read().expect("tensor storage lock poisoned")
    }
    pub(crate) fn storage_mut(&self) -> RwLockWriteGuard<'_, Storage> {
        self.0.storage.write().expect("tensor storage lock poisoned")
    }

    /// The values in row-major order, converted to `T`, copied to the host.
    pub fn to_vec<T: StorageElem>(&self) -> Result<Vec<T>> {
        match &*self.storage() {
            Storage::Cpu(s) => Ok(s.gather::<T>(self.layout())),
            Storage::Cuda(s) => Ok(s.download()?.gather::<T>(self.layout())),
        }
    }
    pub fn to_vec_f32(&self) -> Result<Vec<f32>> {
        self.to_vec::<f32>()
    }
    /// The single value of a one-element tensor.
    pub fn to_scalar<T: StorageElem>(&self) -> Result<T> {
        if self.elem_count() != 1 {
            return Err(Error::shape("to_scalar", format!("tensor has shape {:?}", self.shape())));
        }
        Ok(self.to_vec::<T>()?[0])
    }

    pub(crate) fn check_same_device(&self, other: &Tensor, op: &'static str) -> Result<()> {
        if self.device() != other.device() {
            return Err(Error::DeviceMismatch { op, a: self.device(), b: other.device() });
        }
        Ok(())
    }
    pub(crate) fn check_dtype<T: WithDType>(&self, op: &'static str) -> Result<()> {
        if self.dtype() != T::DTYPE {
            return Err(Error::DType { op, dtype: self.dtype() });
        }
        Ok(())
    }
}
