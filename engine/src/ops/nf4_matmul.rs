//! `x @ W^T` with a frozen NF4 weight. Gradients flow to `x` only (`dx = g @ W`): the
//! base weight of QLoRA is never trained.
//!
//! CPU reference: the weight is dequantized into a temporary of `x`'s dtype and the dense GEMM
//! runs. GPU, by the number of rows `m` of `x` (or of the gradient), whichever was faster on the
//! H200 (benches/RESULTS.md, `nf4_gemm`):
//! - `m <= 8` (decode, forward only): the fused NF4 GEMV, which reads the packed weight once;
//! - bf16 and `m <=` [`NF4_FUSED_MAX_M`]: the fused tiled GEMM, which decodes the weight tile by tile
//!   in shared memory (forward `x @ W^T` and backward `g @ W`);
//! - otherwise the weight is dequantized into a bf16/f32 scratch for cuBLAS.

use super::{cast, dense, matmul, matmul_nt};
use crate::autograd::{Backward, GradStore};
use crate::cuda::{self, CudaBuf, CudaDevice, CudaStorage};
use crate::quant::nf4::{dynamic_map, Nf4Scales, Nf4Weight};
use crate::{autograd, DType, Device, Error, Result, Tensor};
use kernels_cuda::cudarc::driver::CudaSlice;
use kernels_cuda::ops::nf4::{self as kernels, Nf4Absmax, Nf4Weights, GEMV_MAX_M};
use kernels_cuda::ops::nf4_gemm::{nf4_gemm, nf4_gemm_supports, nf4_gemm_workspace_len, Nf4Product};
use std::sync::Arc;

/// The most rows the fused tiled NF4 GEMM takes: measured on the H200 (benches/RESULTS.md), it
/// beats dequantize + cuBLAS by 5-25% from 16 to 64 rows at the 8B projection shapes, and loses
/// from 128 rows on (cuBLAS multiplies 3-4x faster than its mma.sync tiles once the scratch
/// traffic is hidden).
pub const NF4_FUSED_MAX_M: usize = 64;

/// An NF4 weight `[out, in]` where it lives: host memory or a GPU.
#[derive(Clone)]
pub enum Nf4 {
    Host(Arc<Nf4Weight>),
    Device(Arc<DeviceNf4>),
}

/// An NF4 weight copied to a GPU.
pub struct DeviceNf4 {
    packed: CudaSlice<u8>,
    absmax: DeviceAbsmax,
    rows: usize,
    cols: usize,
    dev: Arc<CudaDevice>,
}

enum DeviceAbsmax {
    Plain(CudaSlice<f32>),
    Double { codes: CudaSlice<u8>, scales: CudaSlice<f32>, offset: f32, map: CudaSlice<f32> },
}

impl Nf4 {
    /// `(out_features, in_features)`.
    pub fn rows_cols(&self) -> (usize, usize) {
        match self {
            Nf4::Host(w) => w.rows_cols(),
            Nf4::Device(w) => (w.rows, w.cols),
        }
    }

    pub fn device(&self) -> Device {
        match self {
            Nf4::Host(_) => Device::Cpu,
            Nf4::Device(w) => Device::Cuda(w.dev.ordinal),
        }
    }

    /// The weight on `device` (host weights are uploaded; device ones come back only through
    /// their host original, so moving a device weight elsewhere is an error).
    pub fn to_device(&self, device: Device) -> Result<Nf4> {
        match (self, device) {
            (_, d) if d == self.device() => Ok(self.clone()),
            (Nf4::Host(w), Device::Cuda(i)) => Ok(Nf4::Device(Arc::new(DeviceNf4::upload(w, &cuda::device(i)?)?))),
            _ => Err(Error::Msg("an NF4 weight on a GPU cannot be moved; reload it from the host".into())),
        }
    }

    /// Quantizes a dense 2-D weight `[out, in]` where it lives: on the CPU as
    /// [`Nf4Weight::quantize`], on a GPU with the quantization kernel (the 4-bit pass; the
    /// absmax vector, 1/64 of the values, is double-quantized on the host), bit-identical.
    pub fn quantize(w: &Tensor, double_quant: bool) -> Result<Nf4> {
        if w.rank() != 2 {
            return Err(Error::shape("nf4 quantize", format!("expected a 2-D weight, got {:?}", w.shape())));
        }
        if w.device().is_cpu() {
            return Ok(Nf4::Host(Arc::new(Nf4Weight::quantize(&w.to_vec_f32()?, w.shape(), double_quant)?)));
        }
        let w = dense(w)?;
        let g = w.cuda_storage()?;
        let s = cuda::cs(&g);
        let dev = s.dev.clone();
        let n = w.elem_count();
        let stream = dev.gpu.stream();
        let mut packed = cuda::drv(stream.alloc_zeros::<u8>(n.div_ceil(2)), "device allocation")?;
        let mut absmax = cuda::drv(stream.alloc_zeros::<f32>(n.div_ceil(kernels::NF4_BLOCK)), "device allocation")?;
        let r = match &s.buf {
            CudaBuf::F32(v) => kernels::nf4_quantize(&dev.gpu, v, &mut packed, &mut absmax),
            CudaBuf::BF16(v) => kernels::nf4_quantize(&dev.gpu, v, &mut packed, &mut absmax),
            _ => return Err(Error::DType { op: "nf4 quantize (cuda)", dtype: w.dtype() }),
        };
        r.map_err(|e| cuda::err("nf4 quantize", e))?;
        let absmax = match double_quant {
            false => DeviceAbsmax::Plain(absmax),
            true => {
                let host = cuda::drv(stream.clone_dtoh(&absmax), "device -> host copy")?;
                let Nf4Scales::Double { codes, scales, offset } = Nf4Scales::double_quantize(&host) else {
                    unreachable!("double_quantize returns double scales")
                };
                DeviceAbsmax::Double {
                    codes: cuda::upload(&dev, &codes)?,
                    scales: cuda::upload(&dev, &scales)?,
                    offset,
                    map: cuda::upload(&dev, dynamic_map())?,
                }
            }
        };
        let (rows, cols) = (w.dim(0), w.dim(1));
        Ok(Nf4::Device(Arc::new(DeviceNf4 { packed, absmax, rows, cols, dev })))
    }

    /// A host copy of the weight (device weights are downloaded).
    pub fn to_host(&self) -> Result<Nf4Weight> {
        let w = match self {
            Nf4::Host(w) => return Ok((**w).clone()),
            Nf4::Device(w) => w,
        };
        let s = w.dev.gpu.stream();
        let down = |what| move |e| cuda::err(what, e);
        let packed = s.clone_dtoh(&w.packed).map_err(down("device -> host copy"))?;
        let scales = match &w.absmax {
            DeviceAbsmax::Plain(a) => Nf4Scales::Plain(s.clone_dtoh(a).map_err(down("device -> host copy"))?),
            DeviceAbsmax::Double { codes, scales, offset, .. } => Nf4Scales::Double {
                codes: s.clone_dtoh(codes).map_err(down("device -> host copy"))?,
                scales: s.clone_dtoh(scales).map_err(down("device -> host copy"))?,
                offset: *offset,
            },
        };
        Nf4Weight::from_parts(&[w.rows, w.cols], packed, scales)
    }

    /// The dequantized weight `[out, in]` as `dtype` on the weight's device.
    pub fn dequantize(&self, dtype: DType) -> Result<Tensor> {
        match self {
            Nf4::Host(w) => {
                let (rows, cols) = w.rows_cols();
                cast(&Tensor::from_vec(w.dequantize(), &[rows, cols])?, dtype)
            }
            Nf4::Device(w) => w.dequantize(dtype),
        }
    }
}

impl DeviceNf4 {
    fn upload(w: &Nf4Weight, dev: &Arc<CudaDevice>) -> Result<DeviceNf4> {
        let (rows, cols) = w.rows_cols();
        let absmax = match w.scales() {
            Nf4Scales::Plain(a) => DeviceAbsmax::Plain(cuda::upload(dev, a)?),
            Nf4Scales::Double { codes, scales, offset } => DeviceAbsmax::Double {
                codes: cuda::upload(dev, codes)?,
                scales: cuda::upload(dev, scales)?,
                offset: *offset,
                map: cuda::upload(dev, dynamic_map())?,
            },
        };
        Ok(DeviceNf4 { packed: cuda::upload(dev, w.packed())?, absmax, rows, cols, dev: dev.clone() })
    }

    fn view(&self) -> Nf4Weights<'_> {
        let absmax = match &self.absmax {
            DeviceAbsmax::Plain(a) => Nf4Absmax::Plain(a),
            DeviceAbsmax::Double { codes, scales, offset, map } => {
                Nf4Absmax::Double { codes, scales, offset: *offset, map }
            }
        };
        Nf4Weights { packed: &self.packed, absmax }
    }

    fn dequantize(&self, dtype: DType) -> Result<Tensor> {
        let mut out = CudaStorage::uninit(dtype, self.rows * self.cols, &self.dev)?;
        let g = &self.dev.gpu;
        let r = match &mut out.buf {
            CudaBuf::F32(o) => kernels::nf4_dequantize(g, &self.view(), o),
            CudaBuf::BF16(o) => kernels::nf4_dequantize(g, &self.view(), o),
            _ => return Err(Error::DType { op: "nf4 dequantize (cuda)", dtype }),
        };
        r.map_err(|e| cuda::err("nf4 dequantize", e))?;
        Ok(cuda::tensor(out, &[self.rows, self.cols]))
    }

    /// `x @ W^T` for `x: [m, cols]` with `m <= 8`, through the fused GEMV.
    fn gemv(&self, x: &Tensor) -> Result<Tensor> {
        let x = dense(x)?;
        let m = x.dim(0);
        let gx = x.cuda_storage()?;
        let sx = cuda::cs(&gx);
        let mut y = CudaStorage::uninit(x.dtype(), m * self.rows, &self.dev)?;
        let w = self.view();
        let r = cuda::cuda_float!("nf4 gemv"; a = &sx.buf, o = &mut y.buf
            => kernels::nf4_gemv(&self.dev.gpu, a, &w, o, m, self.rows, self.cols));
        r.map_err(|e| cuda::err("nf4 gemv", e))?;
        Ok(cuda::tensor(y, &[m, self.rows]))
    }

    /// Whether the fused tiled GEMM is the faster way to multiply `m` bf16 rows by this weight.
    fn fused(&self, dtype: DType, m: usize) -> bool {
        dtype == DType::BF16 && m <= NF4_FUSED_MAX_M && nf4_gemm_supports(self.rows, self.cols)
    }

    /// `a @ W^T` (forward) or `a @ W` (backward) for a bf16 `a: [m, _]`, through the fused
    /// tiled GEMM.
    fn gemm(&self, a: &Tensor, product: Nf4Product) -> Result<Tensor> {
        let a = dense(a)?;
        let m = a.dim(0);
        let (n_out, _) = product.dims(self.rows, self.cols);
        let ga = a.cuda_storage()?;
        let CudaBuf::BF16(av) = &cuda::cs(&ga).buf else {
            return Err(Error::DType { op: "nf4 gemm (cuda)", dtype: a.dtype() });
        };
        let mut c = CudaStorage::uninit(DType::BF16, m * n_out, &self.dev)?;
        let ws_len = nf4_gemm_workspace_len(&self.dev.gpu, m, self.rows, self.cols, product);
        let mut ws = match ws_len {
            0 => None,
            n => Some(CudaStorage::uninit(DType::F32, n, &self.dev)?),
        };
        let CudaBuf::BF16(cv) = &mut c.buf else { unreachable!("allocated as bf16") };
        let wv = match ws.as_mut().map(|w| &mut w.buf) {
            Some(CudaBuf::F32(w)) => Some(w),
            _ => None,
        };
        nf4_gemm(&self.dev.gpu, av, &self.view(), cv, wv, (m, self.rows, self.cols), product)
            .map_err(|e| cuda::err("nf4 gemm", e))?;
        Ok(cuda::tensor(c, &[m, n_out]))
    }
}

/// `x @ W^T` for `x: [..., in]` and an NF4 weight of shape `[out, in]` on `x`'s device.
pub fn nf4_matmul_nt(x: &Tensor, w: &Nf4) -> Result<Tensor> {
    let (rows, cols) = w.rows_cols();
    if super::last_dim("nf4_matmul", x)? != cols {
        return Err(Error::shape("nf4_matmul", format!("input {:?} for an NF4 weight [{rows}, {cols}]", x.shape())));
    }
    if x.device() != w.device() {
        return Err(Error::DeviceMismatch { op: "nf4_matmul", a: x.device(), b: w.device() });
    }
    let y = {
        let _g = autograd::no_grad();
        let x = x.detach();
        let m = x.elem_count() / cols;
        let lead = &x.shape()[..x.rank() - 1];
        match w {
            Nf4::Device(d) if m <= GEMV_MAX_M => {
                super::reshape(&d.gemv(&super::reshape(&x, &[m, cols])?)?, &[lead, &[rows]].concat())?
            }
            Nf4::Device(d) if d.fused(x.dtype(), m) => super::reshape(
                &d.gemm(&super::reshape(&x, &[m, cols])?, Nf4Product::Forward)?,
                &[lead, &[rows]].concat(),
            )?,
            _ => matmul_nt(&x, &w.dequantize(x.dtype())?)?,
        }
    };
    Ok(y.track(&[x], || Arc::new(Nf4MatmulBackward { x: x.clone(), w: w.clone() })))
}

struct Nf4MatmulBackward {
    x: Tensor,
    w: Nf4,
}
impl Backward for Nf4MatmulBackward {
    fn name(&self) -> &'static str {
        "nf4_matmul"
    }
    fn inputs(&self) -> Vec<Tensor> {
        vec![self.x.clone()]
    }
    fn backward(&self, g: &Tensor, _: &mut GradStore) -> Result<Vec<Option<Tensor>>> {
        let lead = &g.shape()[..g.rank() - 1];
        let rows: usize = lead.iter().product();
        let g2 = super::reshape(g, &[rows, g.dim(-1)])?;
        let dx = match &self.w {
            Nf4::Device(d) if d.fused(g.dtype(), rows) => d.gemm(&g2, Nf4Product::Backward)?,
            w => matmul(&g2, &w.dequantize(g.dtype())?)?,
        };
        Ok(vec![Some(super::reshape(&dx, self.x.shape())?)])
    }
}
