//! Linear layers without bias, and the LoRA injection point on each of them.

use engine::ops::{add, cast, matmul_nt, nf4_matmul_nt, scale, Nf4};
use engine::{Result, Tensor};

/// A frozen base weight `[out, in]`.
#[derive(Clone)]
pub enum BaseWeight {
    Dense(Tensor),
    /// 4-bit NormalFloat with (optionally double-quantized) block scales, as bitsandbytes.
    Nf4(Nf4),
}

impl BaseWeight {
    /// `(out_features, in_features)`.
    pub fn dims(&self) -> (usize, usize) {
        match self {
            BaseWeight::Dense(w) => (w.dim(0), w.dim(1)),
            BaseWeight::Nf4(w) => w.rows_cols(),
        }
    }
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        match self {
            BaseWeight::Dense(w) => matmul_nt(x, w),
            BaseWeight::Nf4(w) => nf4_matmul_nt(x, w),
        }
    }
}

/// A low-rank adapter: `delta(x) = scale * (x A^T) B^T` with `A: [r, in]`, `B: [out, r]`.
#[derive(Clone)]
pub struct Lora {
    pub a: Tensor,
    pub b: Tensor,
    pub scale: f64,
}

/// `y = x W^T (+ LoRA)`.
#[derive(Clone)]
pub struct Linear {
    pub base: BaseWeight,
    pub lora: Option<Lora>,
}

impl Linear {
    pub fn new(weight: Tensor) -> Linear {
        Linear { base: BaseWeight::Dense(weight), lora: None }
    }
    /// Moves a dense base weight to `device` as `dtype` (adapters are left as they are).
    pub fn base_to(&mut self, device: engine::Device, dtype: engine::DType) -> Result<()> {
        match &self.base {
            BaseWeight::Dense(w) => self.base = BaseWeight::Dense(cast(&w.to_device(device)?, dtype)?),
            BaseWeight::Nf4(w) => self.base = BaseWeight::Nf4(w.to_device(device)?),
        }
        Ok(())
    }

    /// Replaces a dense base weight by its NF4 quantization (bitsandbytes `load_in_4bit`),
    /// computed where the weight lives (on a GPU by the quantization kernel).
    pub fn quantize_nf4(&mut self, double_quant: bool) -> Result<()> {
        if let BaseWeight::Dense(w) = &self.base {
            self.base = BaseWeight::Nf4(Nf4::quantize(w, double_quant)?);
        }
        Ok(())
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let y = self.base.forward(x)?;
        match &self.lora {
            None => Ok(y),
            Some(l) => {
                // Adapters keep f32 master weights; the product runs in the activations' dtype
                // and the gradient flows back through the cast.
                let down = matmul_nt(x, &cast(&l.a, x.dtype())?)?;
                let up = matmul_nt(&down, &cast(&l.b, x.dtype())?)?;
                add(&y, &scale(&up, l.scale)?)
            }
        }
    }
}
