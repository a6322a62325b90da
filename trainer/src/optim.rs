//! Optimizers over the LoRA tensors: AdamW with f32 states (as `torch.optim.AdamW`) and
//! AdamW with blockwise 8-bit states (as bitsandbytes' `AdamW8bit`), plus gradient clipping
//! by global norm (as `torch.nn.utils.clip_grad_norm_`).
//!
//! The optimizer keeps an f32 master copy of every parameter. A step updates the masters and
//! writes them into the parameter tensors in place (the tensors are shared handles that the
//! model holds, so the model sees the new values; a 16-bit parameter receives its master
//! rounded to its dtype).

use crate::optim_cuda::{upload_maps, DeviceMoments};
use crate::quant8::{Blockwise8, STATE_BLOCK};
use crate::TrainError;
use engine::cuda::CudaDevice;
use engine::{DType, Device, Tensor};
use kernels_cuda::cudarc::driver::CudaSlice;
use std::sync::Arc;

/// Which update rule and state storage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OptimizerKind {
    /// `torch.optim.AdamW`: f32 moments, decoupled weight decay `p -= lr * wd * p` before
    /// the Adam update, `eps` added to `sqrt(v_hat)`.
    AdamW,
    /// bitsandbytes `AdamW8bit` (`optim_bits=8`, block-wise): moments stored as 8-bit codes
    /// of the signed / unsigned dynamic maps per block of 256 values; tensors with fewer
    /// than `min_8bit_size` values keep f32 moments (bitsandbytes' 32-bit kernel). Weight
    /// decay is applied after the update (`p *= 1 - lr * wd`), as bitsandbytes does.
    AdamW8bit { min_8bit_size: usize },
}

impl OptimizerKind {
    /// bitsandbytes' default `min_8bit_size`.
    pub const BNB_MIN_8BIT_SIZE: usize = 4096;

    /// `adamw` / `adamw_torch` or `adamw_8bit` / `adamw_bnb_8bit` (transformers' names).
    pub fn parse(name: &str) -> Result<OptimizerKind, TrainError> {
        match name {
            "adamw" | "adamw_torch" | "adamw_32bit" => Ok(OptimizerKind::AdamW),
            "adamw_8bit" | "adamw_bnb_8bit" | "adamw8bit" => {
                Ok(OptimizerKind::AdamW8bit { min_8bit_size: Self::BNB_MIN_8BIT_SIZE })
            }
            other => Err(TrainError::Config(format!("unknown optimizer \"{other}\" (supported: adamw, adamw_8bit)"))),
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            OptimizerKind::AdamW => "adamw",
            OptimizerKind::AdamW8bit { .. } => "adamw_8bit",
        }
    }
}

/// AdamW hyperparameters (the learning rate comes from the schedule at each step).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamWConfig {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
}

impl Default for AdamWConfig {
    /// transformers' `TrainingArguments` defaults (betas 0.9 / 0.999, eps 1e-8) with weight
    /// decay 0.01 as the workflow sets it.
    fn default() -> Self {
        AdamWConfig { beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.01 }
    }
}

/// The moments of one parameter.
#[derive(Debug, Clone, PartialEq)]
pub enum Moments {
    F32 { m: Vec<f32>, v: Vec<f32> },
    Q8 { m: Blockwise8, v: Blockwise8 },
}

/// One optimized tensor: its name, its shape, the f32 master values and the moments.
#[derive(Debug, Clone)]
pub struct ParamState {
    pub name: String,
    pub shape: Vec<usize>,
    pub master: Vec<f32>,
    pub moments: Moments,
}

/// Where one parameter's master and moments live.
enum Slot {
    /// On the host; the parameter tensor (on any device) receives the master after each step.
    Host(ParamState),
    /// On the GPU: the f32 parameter tensor is the master; the moments are device buffers.
    Device { name: String, shape: Vec<usize>, moments: DeviceMoments, dev: Arc<CudaDevice> },
}

/// An optimizer over a fixed list of named parameters. An f32 parameter on a CUDA device is
/// updated there by the AdamW kernels (its moments stay on the device); any other parameter
/// (and, for AdamW-8bit, a CUDA tensor below `min_8bit_size`, whose bitsandbytes rule has no
/// kernel here) keeps an f32 master and moments on the host.
pub struct Optimizer {
    pub kind: OptimizerKind,
    pub config: AdamWConfig,
    /// Steps taken so far (the next step uses `step + 1` for bias correction).
    pub step: u64,
    slots: Vec<Slot>,
    params: Vec<Tensor>,
    /// bitsandbytes' dynamic maps on the device, for 8-bit device states.
    maps: Option<CudaSlice<f32>>,
}

impl Optimizer {
    /// An optimizer over `params` (name, tensor), whose current values become the masters.
    pub fn new(kind: OptimizerKind, config: AdamWConfig, params: &[(String, Tensor)]) -> Result<Optimizer, TrainError> {
        let mut slots = Vec::with_capacity(params.len());
        let mut maps = None;
        for (name, t) in params {
            let n = t.elem_count();
            let eight_bit = matches!(kind, OptimizerKind::AdamW8bit { min_8bit_size } if n >= min_8bit_size);
            let moments = if eight_bit {
                Moments::Q8 { m: Blockwise8::zeros(n, true), v: Blockwise8::zeros(n, false) }
            } else {
                Moments::F32 { m: vec![0.0; n], v: vec![0.0; n] }
            };
            let on_device = match t.device() {
                Device::Cuda(i) if t.dtype() == DType::F32 && (eight_bit || kind == OptimizerKind::AdamW) => {
                    Some(engine::cuda::device(i)?)
                }
                _ => None,
            };
            let shape = t.shape().to_vec();
            slots.push(match on_device {
                Some(dev) => {
                    if eight_bit && maps.is_none() {
                        maps = Some(upload_maps(&dev)?);
                    }
                    let moments = DeviceMoments::upload(&dev, &moments)?;
                    Slot::Device { name: name.clone(), shape, moments, dev }
                }
                None => Slot::Host(ParamState { name: name.clone(), shape, master: t.to_vec_f32()?, moments }),
            });
        }
        Ok(Optimizer { kind, config, step: 0, slots, params: params.iter().map(|(_, t)| t.clone()).collect(), maps })
    }

    /// The tensors this optimizer updates, in order.
    pub fn params(&self) -> &[Tensor] {
        &self.params
    }

    /// A host copy of every parameter's state, in order (device states are downloaded).
    pub fn states(&self) -> Result<Vec<ParamState>, TrainError> {
        self.slots
            .iter()
            .zip(&self.params)
            .map(|(slot, p)| match slot {
                Slot::Host(st) => Ok(st.clone()),
                Slot::Device { name, shape, moments, dev } => Ok(ParamState {
                    name: name.clone(),
                    shape: shape.clone(),
                    master: p.to_vec_f32()?,
                    moments: moments.download(dev)?,
                }),
            })
            .collect()
    }

    /// One update with learning rate `lr` from `grads` (one per parameter, in the order given
    /// to [`Optimizer::new`], on the parameter's device), each multiplied by `grad_scale` first
    /// (the clipping factor); writes the new values into the parameter tensors.
    pub fn step(&mut self, grads: &[Tensor], grad_scale: f32, lr: f64) -> Result<(), TrainError> {
        if grads.len() != self.slots.len() {
            return Err(TrainError::Config(format!(
                "optimizer step: {} gradients for {} parameters",
                grads.len(),
                self.slots.len()
            )));
        }
        self.step += 1;
        let step = self.step;
        let c = self.config;
        for ((slot, g), p) in self.slots.iter_mut().zip(grads).zip(&self.params) {
            if g.elem_count() != p.elem_count() {
                return Err(TrainError::Config(format!(
                    "optimizer step: a gradient has {} values, its parameter {}",
                    g.elem_count(),
                    p.elem_count()
                )));
            }
            match slot {
                Slot::Device { moments, .. } => moments.step(p, g, self.maps.as_ref(), c, lr, step, grad_scale)?,
                Slot::Host(st) => {
                    let mut g = g.to_vec_f32()?;
                    if grad_scale != 1.0 {
                        g.iter_mut().for_each(|x| *x *= grad_scale);
                    }
                    match (&self.kind, &mut st.moments) {
                        (OptimizerKind::AdamW, Moments::F32 { m, v }) => {
                            torch_adamw(&mut st.master, m, v, &g, c, lr, step)
                        }
                        (OptimizerKind::AdamW8bit { .. }, Moments::F32 { m, v }) => {
                            bnb_adam32(&mut st.master, m, v, &g, c, lr, step)
                        }
                        (OptimizerKind::AdamW8bit { .. }, Moments::Q8 { m, v }) => {
                            bnb_adam8_blockwise(&mut st.master, m, v, &g, c, lr, step)
                        }
                        (OptimizerKind::AdamW, Moments::Q8 { .. }) => unreachable!("AdamW keeps f32 moments"),
                    }
                    write_values(p, &st.master, &st.shape)?;
                }
            }
        }
        Ok(())
    }

    /// Replaces the masters (and the parameter tensors' values) by `values`, in parameter
    /// order; used when resuming.
    pub fn set_masters(&mut self, values: Vec<Vec<f32>>) -> Result<(), TrainError> {
        for ((slot, v), p) in self.slots.iter_mut().zip(values).zip(&self.params) {
            if v.len() != p.elem_count() {
                return Err(TrainError::Checkpoint(format!(
                    "{}: {} values, expected {}",
                    slot_name(slot),
                    v.len(),
                    p.elem_count()
                )));
            }
            write_values(p, &v, p.shape())?;
            if let Slot::Host(st) = slot {
                st.master = v;
            }
        }
        Ok(())
    }

    /// Replaces the moments, in parameter order (each of the kind and size it had); used when
    /// resuming.
    pub fn set_moments(&mut self, moments: Vec<Moments>) -> Result<(), TrainError> {
        for (slot, m) in self.slots.iter_mut().zip(moments) {
            match slot {
                Slot::Host(st) => st.moments = m,
                Slot::Device { moments, dev, .. } => *moments = DeviceMoments::upload(dev, &m)?,
            }
        }
        Ok(())
    }
}

fn slot_name(slot: &Slot) -> &str {
    match slot {
        Slot::Host(st) => &st.name,
        Slot::Device { name, .. } => name,
    }
}

fn write_values(p: &Tensor, values: &[f32], shape: &[usize]) -> Result<(), TrainError> {
    if p.rank() == 0 {
        return Err(TrainError::Config("cannot optimize a rank-0 tensor".into()));
    }
    let t = Tensor::from_vec(values.to_vec(), shape)?.to_device(p.device())?;
    p.write_slice(0, 0, &t)?;
    Ok(())
}

/// `torch.optim.AdamW` (single-tensor path, f32): `p *= 1 - lr*wd`; `m = lerp(m, g, 1-b1)`;
/// `v = v*b2 + (1-b2)*g*g`; `p += -(lr/bc1) * m / (sqrt(v)/sqrt(bc2) + eps)`. Python floats
/// (f64) become f32 scalars where torch applies them to f32 tensors.
fn torch_adamw(p: &mut [f32], m: &mut [f32], v: &mut [f32], g: &[f32], c: AdamWConfig, lr: f64, step: u64) {
    let decay = (1.0 - lr * c.weight_decay) as f32;
    let w1 = (1.0 - c.beta1) as f32;
    let b2 = c.beta2 as f32;
    let w2 = (1.0 - c.beta2) as f32;
    let bc1 = 1.0 - c.beta1.powi(step as i32);
    let bc2 = 1.0 - c.beta2.powi(step as i32);
    let step_size = (-(lr / bc1)) as f32;
    let bc2_sqrt = bc2.sqrt() as f32;
    let eps = c.eps as f32;
    for i in 0..p.len() {
        if c.weight_decay != 0.0 {
            p[i] *= decay;
        }
        // lerp with a small weight: start + w * (end - start), one fused multiply-add.
        m[i] = w1.mul_add(g[i] - m[i], m[i]);
        v[i] = v[i] * b2 + w2 * g[i] * g[i];
        let denom = v[i].sqrt() / bc2_sqrt + eps;
        p[i] += step_size * (m[i] / denom);
    }
}

/// bitsandbytes' f32 bias corrections: `c1 = 1 - b1^t`, `c2 = sqrt(1 - b2^t)`,
/// `step_size = -lr * c2 / c1`.
fn bnb_corrections(c: AdamWConfig, lr: f64, step: u64) -> (f32, f32, f32) {
    let (b1, b2) = (c.beta1 as f32, c.beta2 as f32);
    let c1 = 1.0 - b1.powf(step as f32);
    let c2 = (1.0 - b2.powf(step as f32)).sqrt();
    let step_size = (-(lr as f32) * c2) / c1;
    (c1, c2, step_size)
}

/// bitsandbytes' `kOptimizer32bit2State<ADAM>` (tensors below `min_8bit_size`).
fn bnb_adam32(p: &mut [f32], m: &mut [f32], v: &mut [f32], g: &[f32], c: AdamWConfig, lr: f64, step: u64) {
    let (b1, b2, eps, lr32, wd) = (c.beta1 as f32, c.beta2 as f32, c.eps as f32, lr as f32, c.weight_decay as f32);
    let (_, c2, step_size) = bnb_corrections(c, lr, step);
    for i in 0..p.len() {
        m[i] = m[i] * b1 + (1.0 - b1) * g[i];
        v[i] = v[i] * b2 + (1.0 - b2) * (g[i] * g[i]);
        p[i] += step_size * (m[i] / (v[i].sqrt() + eps * c2));
        if wd > 0.0 {
            p[i] *= 1.0 - lr32 * wd;
        }
    }
}

/// bitsandbytes' `kOptimizerStatic8bit2StateBlockwise<ADAM>` per block of 256: dequantize
/// both moments, update them, take each block's new absmax, update the parameter (then weight
/// decay), and quantize the moments again against the new absmax. A non-finite gradient
/// leaves its parameter unchanged and zeroes its moments, as the kernel does.
fn bnb_adam8_blockwise(
    p: &mut [f32],
    m: &mut Blockwise8,
    v: &mut Blockwise8,
    g: &[f32],
    c: AdamWConfig,
    lr: f64,
    step: u64,
) {
    let (b1, b2, eps, lr32, wd) = (c.beta1 as f32, c.beta2 as f32, c.eps as f32, lr as f32, c.weight_decay as f32);
    let (_, c2, step_size) = bnb_corrections(c, lr, step);
    let mut s1 = vec![0f32; STATE_BLOCK];
    let mut s2 = vec![0f32; STATE_BLOCK];
    for (b, start) in (0..p.len()).step_by(STATE_BLOCK).enumerate() {
        let end = (start + STATE_BLOCK).min(p.len());
        let n = end - start;
        let (mut max1, mut max2) = (-f32::MAX, -f32::MAX);
        for j in 0..n {
            let i = start + j;
            let gv = g[i];
            if gv.is_finite() {
                s2[j] = v.get(i) * b2 + (1.0 - b2) * gv * gv;
                s1[j] = m.get(i) * b1 + (1.0 - b1) * gv;
            } else {
                s1[j] = 0.0;
                s2[j] = 0.0;
            }
            max1 = max1.max(s1[j].abs());
            max2 = max2.max(s2[j].abs());
        }
        for j in 0..n {
            let i = start + j;
            if g[i].is_finite() {
                p[i] += step_size * (s1[j] / (s2[j].sqrt() + c2 * eps));
                if wd > 0.0 {
                    p[i] *= 1.0 - lr32 * wd;
                }
            }
        }
        m.store_block(b, &s1[..n], max1);
        v.store_block(b, &s2[..n], max2);
    }
}

/// The global L2 norm of `grads` (as `clip_grad_norm_` computes it: the norm of the
/// per-tensor norms) and the factor every gradient is to be multiplied by:
/// `min(1, max_norm / (norm + 1e-6))` when `max_norm` is given, else 1. Gradients on the GPU
/// are reduced there, all in one pass that comes back in one copy.
pub fn clip_grad_norm(grads: &[Tensor], max_norm: Option<f64>) -> Result<(f64, f32), TrainError> {
    let mut total = 0f64;
    for sum in engine::ops::sum_squares_each(grads)? {
        let n = sum.sqrt() as f32;
        total += (n as f64) * (n as f64);
    }
    let total = total.sqrt() as f32;
    let coef = match max_norm {
        Some(max) => ((max as f32) / (total + 1e-6)).min(1.0),
        None => 1.0,
    };
    Ok((total as f64, coef))
}
