//! The optimizer's states on the GPU: for an f32 parameter tensor on a CUDA device, the
//! tensor itself is the master copy, its moments live in device buffers, and a step is one
//! launch of the AdamW kernel of `kernels-cuda` (bit-identical to the CPU twins in
//! `optim.rs`, see `kernels-cuda/src/ops/adamw.rs`). Nothing leaves the device during a step.

use crate::optim::{AdamWConfig, Moments};
use crate::quant8::{signed_map, unsigned_map, Blockwise8, STATE_BLOCK};
use crate::TrainError;
use engine::cuda::CudaDevice;
use engine::Tensor;
use kernels_cuda::cudarc::driver::{CudaSlice, CudaStream};
use kernels_cuda::ops::adamw::{adamw_8bit, adamw_f32, AdamWHyper, State8bit};
use std::sync::Arc;

/// The moments of one parameter, on the device.
pub(crate) enum DeviceMoments {
    F32 { m: CudaSlice<f32>, v: CudaSlice<f32> },
    Q8 { m: Q8Buffers, v: Q8Buffers },
}

pub(crate) struct Q8Buffers {
    codes: CudaSlice<u8>,
    absmax: CudaSlice<f32>,
}

fn cuda_err(what: &str, e: impl std::fmt::Display) -> TrainError {
    TrainError::Engine(engine::Error::Msg(format!("{what}: {e}")))
}

fn upload<T: kernels_cuda::cudarc::driver::DeviceRepr>(
    s: &Arc<CudaStream>,
    v: &[T],
) -> Result<CudaSlice<T>, TrainError> {
    s.clone_htod(v).map_err(|e| cuda_err("optimizer state upload", e))
}

fn download<T: kernels_cuda::cudarc::driver::DeviceRepr>(
    s: &Arc<CudaStream>,
    v: &CudaSlice<T>,
) -> Result<Vec<T>, TrainError> {
    s.clone_dtoh(v).map_err(|e| cuda_err("optimizer state download", e))
}

impl DeviceMoments {
    /// Copies host moments to the device.
    pub(crate) fn upload(dev: &CudaDevice, m: &Moments) -> Result<DeviceMoments, TrainError> {
        let s = dev.gpu.stream();
        let q8 = |b: &Blockwise8| -> Result<Q8Buffers, TrainError> {
            Ok(Q8Buffers { codes: upload(s, &b.codes)?, absmax: upload(s, &b.absmax)? })
        };
        Ok(match m {
            Moments::F32 { m, v } => DeviceMoments::F32 { m: upload(s, m)?, v: upload(s, v)? },
            Moments::Q8 { m, v } => DeviceMoments::Q8 { m: q8(m)?, v: q8(v)? },
        })
    }

    /// Copies the moments back to the host.
    pub(crate) fn download(&self, dev: &CudaDevice) -> Result<Moments, TrainError> {
        let s = dev.gpu.stream();
        let q8 = |b: &Q8Buffers, signed: bool| -> Result<Blockwise8, TrainError> {
            Ok(Blockwise8 { codes: download(s, &b.codes)?, absmax: download(s, &b.absmax)?, signed })
        };
        Ok(match self {
            DeviceMoments::F32 { m, v } => Moments::F32 { m: download(s, m)?, v: download(s, v)? },
            DeviceMoments::Q8 { m, v } => Moments::Q8 { m: q8(m, true)?, v: q8(v, false)? },
        })
    }

    /// One AdamW step of `param` (the f32 master on the device) with gradient `grad *
    /// grad_scale`: torch's rule for f32 moments, bitsandbytes' blockwise rule for 8-bit ones.
    pub(crate) fn step(
        &mut self,
        param: &Tensor,
        grad: &Tensor,
        maps: Option<&CudaSlice<f32>>,
        c: AdamWConfig,
        lr: f64,
        step: u64,
        grad_scale: f32,
    ) -> Result<(), TrainError> {
        let h = AdamWHyper { lr, beta1: c.beta1, beta2: c.beta2, eps: c.eps, weight_decay: c.weight_decay };
        let grad = engine::ops::cast(grad, engine::DType::F32)?;
        let grad = engine::ops::contiguous(&grad)?;
        grad.with_cuda_f32(|_, g| {
            param.with_cuda_f32_mut(|dev, p| match self {
                DeviceMoments::F32 { m, v } => adamw_f32(&dev.gpu, p, m, v, g, &h, step, grad_scale),
                DeviceMoments::Q8 { m, v } => {
                    let maps = maps.ok_or_else(|| kernels_cuda::Error::InvalidArgument {
                        kernel: "adamw_8bit".into(),
                        message: "the dynamic maps were not uploaded".into(),
                    })?;
                    let sm = State8bit { codes: &mut m.codes, absmax: &mut m.absmax };
                    let sv = State8bit { codes: &mut v.codes, absmax: &mut v.absmax };
                    adamw_8bit(&dev.gpu, p, sm, sv, g, maps, &h, step, grad_scale)
                }
            })
        })??
        .map_err(|e| cuda_err("optimizer step", e))
    }
}

/// bitsandbytes' signed then unsigned dynamic map, on the device (the 8-bit kernel's `maps`).
pub(crate) fn upload_maps(dev: &CudaDevice) -> Result<CudaSlice<f32>, TrainError> {
    let mut both = signed_map().to_vec();
    both.extend_from_slice(unsigned_map());
    debug_assert_eq!(STATE_BLOCK, kernels_cuda::ops::adamw::STATE_BLOCK);
    upload(dev.gpu.stream(), &both)
}
