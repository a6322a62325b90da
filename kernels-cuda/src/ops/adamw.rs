//! Launchers for `kernels/adamw.cu`: one AdamW step over a flat f32 parameter buffer (the LoRA
//! master weights), with f32 moments ([`adamw_f32`], `torch.optim.AdamW`) or blockwise 8-bit
//! moments ([`adamw_8bit`], bitsandbytes' `AdamW8bit`). Gradients are f32 or bf16; a global-norm
//! clipping factor is passed as `grad_scale` (the gradient is multiplied by it first, in f32, as
//! `clip_grad_norm_` scales gradients in place).
//!
//! The kernels round every operation separately, in the order of the CPU twins in
//! `trainer/src/optim.rs` (`torch_adamw`, `bnb_adam8_blockwise`), and take the f32 scalars that
//! [`TorchScalars`] and [`Bnb8bitScalars`] compute the way those twins do: a step on the device
//! equals the twin's step bit for bit.
//!
//! The 8-bit states are per block of [`STATE_BLOCK`] values: one u8 code per value into the
//! signed (first moment) or unsigned (second moment) 256-entry dynamic map of bitsandbytes'
//! `create_dynamic_map(signed)`, and one f32 absmax per block. The two maps are passed as one
//! 512-value buffer, signed first (`trainer::quant8` builds them). Fresh states are all-zero
//! codes and absmax.

use cudarc::driver::{CudaSlice, PushKernelArg};

use super::{check_len, grid_stride, invalid, KernelFloat};
use crate::error::{DriverContext, Result};
use crate::gpu::Gpu;
use crate::source::ADAMW;

/// Values per quantization block of the 8-bit states (bitsandbytes' `blocksize = 256`).
pub const STATE_BLOCK: usize = 256;
/// Entries of the two dynamic maps together (signed, then unsigned).
pub const MAPS_LEN: usize = 512;

/// Threads per block of both kernels.
const BLOCK: u32 = 256;

/// AdamW hyperparameters of one step (the learning rate of this step, the others fixed).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdamWHyper {
    /// Learning rate.
    pub lr: f64,
    /// First-moment decay.
    pub beta1: f64,
    /// Second-moment decay.
    pub beta2: f64,
    /// Added to the denominator.
    pub eps: f64,
    /// Decoupled weight decay.
    pub weight_decay: f64,
}

/// The f32 scalars of `torch.optim.AdamW`'s step `step` (from 1), computed as torch computes
/// them from Python floats (in f64, then rounded where they meet f32 tensors).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct TorchScalars {
    /// Whether weight decay applies (`weight_decay != 0`).
    pub apply_decay: bool,
    /// `1 - lr * wd`.
    pub decay: f32,
    /// `1 - beta1`.
    pub w1: f32,
    /// `beta2`.
    pub b2: f32,
    /// `1 - beta2`.
    pub w2: f32,
    /// `-lr / (1 - beta1^step)`.
    pub step_size: f32,
    /// `sqrt(1 - beta2^step)`.
    pub bc2_sqrt: f32,
    /// `eps`.
    pub eps: f32,
}

impl TorchScalars {
    /// The scalars of step `step` (>= 1).
    pub fn new(h: &AdamWHyper, step: u64) -> TorchScalars {
        let t = step.min(i32::MAX as u64) as i32;
        let bc1 = 1.0 - h.beta1.powi(t);
        let bc2 = 1.0 - h.beta2.powi(t);
        TorchScalars {
            apply_decay: h.weight_decay != 0.0,
            decay: (1.0 - h.lr * h.weight_decay) as f32,
            w1: (1.0 - h.beta1) as f32,
            b2: h.beta2 as f32,
            w2: (1.0 - h.beta2) as f32,
            step_size: (-(h.lr / bc1)) as f32,
            bc2_sqrt: bc2.sqrt() as f32,
            eps: h.eps as f32,
        }
    }
}

/// The f32 scalars of bitsandbytes' 8-bit step `step` (from 1), computed in f32 as its kernels
/// do: `c1 = 1 - b1^t`, `c2 = sqrt(1 - b2^t)`, `step_size = -lr * c2 / c1`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Bnb8bitScalars {
    /// `beta1`.
    pub b1: f32,
    /// `beta2`.
    pub b2: f32,
    /// `c2 * eps`.
    pub c2_eps: f32,
    /// `-lr * c2 / c1`.
    pub step_size: f32,
    /// Whether weight decay applies (`weight_decay > 0`).
    pub apply_decay: bool,
    /// `1 - lr * wd`.
    pub decay: f32,
}

impl Bnb8bitScalars {
    /// The scalars of step `step` (>= 1).
    pub fn new(h: &AdamWHyper, step: u64) -> Bnb8bitScalars {
        let (b1, b2, eps, lr, wd) = (h.beta1 as f32, h.beta2 as f32, h.eps as f32, h.lr as f32, h.weight_decay as f32);
        let c1 = 1.0 - b1.powf(step as f32);
        let c2 = (1.0 - b2.powf(step as f32)).sqrt();
        Bnb8bitScalars {
            b1,
            b2,
            c2_eps: c2 * eps,
            step_size: (-lr * c2) / c1,
            apply_decay: wd > 0.0,
            decay: 1.0 - lr * wd,
        }
    }
}

/// One blockwise 8-bit moment of `n` values on the device.
#[derive(Debug)]
pub struct State8bit<'a> {
    /// `n` codes.
    pub codes: &'a mut CudaSlice<u8>,
    /// `ceil(n / STATE_BLOCK)` absmax.
    pub absmax: &'a mut CudaSlice<f32>,
}

fn check_step(kernel: &str, h: &AdamWHyper, step: u64, grad_scale: f32) -> Result<()> {
    if step == 0 {
        return Err(invalid(kernel, "step counts from 1".into()));
    }
    let ok = |v: f64| v.is_finite();
    if !(ok(h.lr) && ok(h.eps) && ok(h.weight_decay) && (0.0..1.0).contains(&h.beta1) && (0.0..1.0).contains(&h.beta2))
    {
        return Err(invalid(kernel, format!("hyperparameters out of range: {h:?}")));
    }
    if !grad_scale.is_finite() {
        return Err(invalid(kernel, format!("grad_scale {grad_scale} is not finite")));
    }
    Ok(())
}

/// One `torch.optim.AdamW` step (step number `step`, from 1) over `p` with moments `m`, `v` and
/// gradient `g * grad_scale`; all of equal length (zero is a no-op). Bit-identical to the f32
/// CPU twin given the same [`TorchScalars`].
#[allow(clippy::too_many_arguments)]
pub fn adamw_f32<G: KernelFloat>(
    gpu: &Gpu,
    p: &mut CudaSlice<f32>,
    m: &mut CudaSlice<f32>,
    v: &mut CudaSlice<f32>,
    g: &CudaSlice<G>,
    hyper: &AdamWHyper,
    step: u64,
    grad_scale: f32,
) -> Result<()> {
    let kernel = G::pick("adamw_f32_gf32", "adamw_f32_gbf16");
    check_step(kernel, hyper, step, grad_scale)?;
    let n = p.len();
    check_len(kernel, "m", m.len(), n)?;
    check_len(kernel, "v", v.len(), n)?;
    check_len(kernel, "g", g.len(), n)?;
    if n == 0 {
        return Ok(());
    }
    let s = TorchScalars::new(hyper, step);
    let function = gpu.kernel(&ADAMW, kernel)?;
    let (apply, n_arg) = (s.apply_decay as i32, n as u64);
    let mut launch = gpu.stream().launch_builder(&function);
    launch.arg(p).arg(m).arg(v).arg(g);
    launch.arg(&s.decay).arg(&apply).arg(&s.w1).arg(&s.b2).arg(&s.w2);
    launch.arg(&s.step_size).arg(&s.bc2_sqrt).arg(&s.eps).arg(&grad_scale).arg(&n_arg);
    let config = grid_stride(n.div_ceil(BLOCK as usize), BLOCK, 8, gpu.multiprocessors());
    // SAFETY: (pointer x4, float, int, float x7, u64) matches the kernel; p, m, v and g hold n
    // elements each.
    unsafe { launch.launch(config) }.during(kernel)?;
    Ok(())
}

/// One bitsandbytes `AdamW8bit` step (step number `step`, from 1) over `p` with blockwise 8-bit
/// moments `m` (signed map) and `v` (unsigned map) and gradient `g * grad_scale`. `maps` holds
/// the signed then the unsigned dynamic map. Bit-identical to the CPU twin given the same
/// [`Bnb8bitScalars`].
#[allow(clippy::too_many_arguments)]
pub fn adamw_8bit<G: KernelFloat>(
    gpu: &Gpu,
    p: &mut CudaSlice<f32>,
    m: State8bit<'_>,
    v: State8bit<'_>,
    g: &CudaSlice<G>,
    maps: &CudaSlice<f32>,
    hyper: &AdamWHyper,
    step: u64,
    grad_scale: f32,
) -> Result<()> {
    let kernel = G::pick("adamw_8bit_gf32", "adamw_8bit_gbf16");
    check_step(kernel, hyper, step, grad_scale)?;
    let n = p.len();
    let blocks = n.div_ceil(STATE_BLOCK);
    check_len(kernel, "m codes", m.codes.len(), n)?;
    check_len(kernel, "m absmax", m.absmax.len(), blocks)?;
    check_len(kernel, "v codes", v.codes.len(), n)?;
    check_len(kernel, "v absmax", v.absmax.len(), blocks)?;
    check_len(kernel, "g", g.len(), n)?;
    check_len(kernel, "maps", maps.len(), MAPS_LEN)?;
    if n == 0 {
        return Ok(());
    }
    let s = Bnb8bitScalars::new(hyper, step);
    let function = gpu.kernel(&ADAMW, kernel)?;
    let (apply, n_arg) = (s.apply_decay as i32, n as u64);
    let mut launch = gpu.stream().launch_builder(&function);
    launch.arg(p).arg(m.codes).arg(m.absmax).arg(v.codes).arg(v.absmax).arg(g).arg(maps);
    launch.arg(&s.b1).arg(&s.b2).arg(&s.c2_eps).arg(&s.step_size).arg(&s.decay).arg(&apply);
    launch.arg(&grad_scale).arg(&n_arg);
    // One warp per block of values; the kernel loops over the rest.
    let warps_per_block = BLOCK as usize / 32;
    let config = grid_stride(blocks.div_ceil(warps_per_block), BLOCK, 8, gpu.multiprocessors());
    // SAFETY: (pointer x7, float x5, int, float, u64) matches the kernel; every buffer's length
    // was checked for n values above.
    unsafe { launch.launch(config) }.during(kernel)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scalars_follow_torch_and_bitsandbytes() {
        let h = AdamWHyper { lr: 1e-3, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.01 };
        let t = TorchScalars::new(&h, 1);
        assert!(t.apply_decay);
        assert_eq!(t.decay, (1.0 - 1e-5f64) as f32);
        assert_eq!(t.step_size, (-(1e-3 / (1.0 - 0.9f64))) as f32);
        assert_eq!(t.bc2_sqrt, ((1.0 - 0.999f64).sqrt()) as f32);
        let b = Bnb8bitScalars::new(&h, 1);
        let c2 = (1.0f32 - 0.999f32).sqrt();
        assert_eq!(b.c2_eps, c2 * 1e-8f32);
        assert_eq!(b.step_size, (-1e-3f32 * c2) / (1.0f32 - 0.9f32));
        let no_decay = AdamWHyper { weight_decay: 0.0, ..h };
        assert!(!TorchScalars::new(&no_decay, 3).apply_decay);
        assert!(!Bnb8bitScalars::new(&no_decay, 3).apply_decay);
    }

    #[test]
    fn kernel_names_are_in_the_module() {
        for name in ["adamw_f32_gf32", "adamw_f32_gbf16", "adamw_8bit_gf32", "adamw_8bit_gbf16"] {
            assert!(ADAMW.kernels.contains(&name));
        }
    }
}
