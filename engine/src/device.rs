//! Where a tensor lives.

use crate::{Error, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Device {
    Cpu,
    Cuda(usize),
}

impl Device {
    /// The CUDA device with this ordinal. Until the CUDA backend is compiled in, this is a
    /// clear error on every machine, which callers report instead of panicking.
    pub fn cuda(ordinal: usize) -> Result<Device> {
        Err(Error::CudaUnavailable {
            ordinal,
            reason: "this build of ferrotune's engine has no CUDA backend yet; use --device cpu"
                .into(),
        })
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
