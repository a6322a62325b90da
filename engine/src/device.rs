//! Where a tensor lives.

use crate::Result;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Device {
    Cpu,
    Cuda(usize),
}

impl Device {
    /// The CUDA device with this ordinal, opened (context, stream, cuBLAS) on first use; a
    /// clear error where there is no GPU or driver.
    pub fn cuda(ordinal: usize) -> Result<Device> {
        crate::cuda::device(ordinal).map(|_| Device::Cuda(ordinal))
    }
    pub fn is_cpu(self) -> bool {
        self == Device::Cpu
    }
}

impl std::fmt::Display for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Device::Cpu => write!(f, "cpu"),
            Device::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}
