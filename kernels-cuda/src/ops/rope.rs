//! Launchers for `kernels/rope.cu`: rotary position embedding in place, in the Hugging Face
//! "rotate half" layout, on Q or K stored `[b, h, t, d]` (or `[b, t, h, d]`).
//!
//! With `c = cos[p, j]`, `s = sin[p, j]` for the token's position `p` and `j < d/2`:
//! `x[j] <- x[j]*c - x[j+d/2]*s`, `x[j+d/2] <- x[j+d/2]*c + x[j]*s`. The backward
//! ([`rope_bwd`]) is the same rotation with `sin` negated, applied to the gradient in place.
//! The tables are f32 `[max_positions, d/2]`, as [`rope_table`] builds them; token `i` of every
//! sequence sits at `positions[i]` (u32). A position beyond the table fills its rows with NaN.

use cudarc::driver::{CudaSlice, PushKernelArg};

use super::{check_len, grid_stride, invalid, KernelFloat};
use crate::error::{DriverContext, Result};
use crate::gpu::Gpu;
use crate::source::ROPE;

/// Threads per block.
const BLOCK: u32 = 256;

/// Where the head dimension sits relative to the token dimension.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RopeLayout {
    /// `[batch, heads, seq, head_dim]` (attention's layout).
    Bhtd,
    /// `[batch, seq, heads, head_dim]` (the projections' output before the transpose).
    Bthd,
}

/// The shape of the tensor to rotate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RopeShape {
    /// Sequences.
    pub batch: usize,
    /// Heads (query or key/value heads).
    pub heads: usize,
    /// Tokens per sequence (= the length of `positions`).
    pub seq: usize,
    /// Elements per head, even.
    pub head_dim: usize,
    /// The order of the heads and tokens.
    pub layout: RopeLayout,
}

impl RopeShape {
    /// `[batch, heads, seq, head_dim]`.
    pub fn bhtd(batch: usize, heads: usize, seq: usize, head_dim: usize) -> Self {
        RopeShape { batch, heads, seq, head_dim, layout: RopeLayout::Bhtd }
    }

    /// `[batch, seq, heads, head_dim]`.
    pub fn bthd(batch: usize, seq: usize, heads: usize, head_dim: usize) -> Self {
        RopeShape { batch, heads, seq, head_dim, layout: RopeLayout::Bthd }
    }

    /// Number of elements, if it fits in `usize`.
    pub fn numel(&self) -> Option<usize> {
        self.batch.checked_mul(self.heads)?.checked_mul(self.seq)?.checked_mul(self.head_dim)
    }
}

/// The cos and sin tables (`[max_positions, inv_freq.len()]` each, row-major, f32) of the CPU
/// twin `engine::ops::rope::RopeTable`: angle `(p as f32) * (inv_freq[j] as f32)` in f32, as
/// transformers computes it, then cos and sin in f64 rounded to f32.
pub fn rope_table(inv_freq: &[f64], max_positions: usize) -> (Vec<f32>, Vec<f32>) {
    let n = max_positions * inv_freq.len();
    let (mut cos, mut sin) = (Vec::with_capacity(n), Vec::with_capacity(n));
    for p in 0..max_positions {
        for &f in inv_freq {
            let angle = (p as f32 * f as f32) as f64;
            cos.push(angle.cos() as f32);
            sin.push(angle.sin() as f32);
        }
    }
    (cos, sin)
}

/// Rotates `x` in place (the forward).
pub fn rope_fwd<T: KernelFloat>(
    gpu: &Gpu,
    x: &mut CudaSlice<T>,
    cos: &CudaSlice<f32>,
    sin: &CudaSlice<f32>,
    positions: &CudaSlice<u32>,
    shape: RopeShape,
) -> Result<()> {
    let kernel = T::pick("rope_fwd_f32", "rope_fwd_bf16");
    launch(gpu, kernel, x, cos, sin, positions, shape)
}

/// Rotates the gradient `dx` in place by the inverse rotation (the backward: sin negated).
pub fn rope_bwd<T: KernelFloat>(
    gpu: &Gpu,
    dx: &mut CudaSlice<T>,
    cos: &CudaSlice<f32>,
    sin: &CudaSlice<f32>,
    positions: &CudaSlice<u32>,
    shape: RopeShape,
) -> Result<()> {
    let kernel = T::pick("rope_bwd_f32", "rope_bwd_bf16");
    launch(gpu, kernel, dx, cos, sin, positions, shape)
}

fn launch<T: KernelFloat>(
    gpu: &Gpu,
    kernel: &'static str,
    x: &mut CudaSlice<T>,
    cos: &CudaSlice<f32>,
    sin: &CudaSlice<f32>,
    positions: &CudaSlice<u32>,
    shape: RopeShape,
) -> Result<()> {
    let d = shape.head_dim;
    if d == 0 || !d.is_multiple_of(2) || d / 2 > i32::MAX as usize {
        return Err(invalid(kernel, format!("head_dim {d} must be even, positive and fit an int")));
    }
    let half = d / 2;
    let n = shape.numel().ok_or_else(|| invalid(kernel, format!("{shape:?} overflows")))?;
    check_len(kernel, "x", x.len(), n)?;
    check_len(kernel, "positions", positions.len(), shape.seq)?;
    check_len(kernel, "sin", sin.len(), cos.len())?;
    if cos.is_empty() || !cos.len().is_multiple_of(half) {
        return Err(invalid(
            kernel,
            format!("cos has {} elements, not a positive multiple of head_dim/2 = {half}", cos.len()),
        ));
    }
    let max_pos = cos.len() / half;
    let inner = match shape.layout {
        RopeLayout::Bhtd => 1,
        RopeLayout::Bthd => shape.heads,
    };
    for (what, v) in [("seq", shape.seq), ("heads", inner), ("max positions", max_pos)] {
        if v > i32::MAX as usize {
            return Err(invalid(kernel, format!("{what} {v} does not fit an int")));
        }
    }
    if n == 0 {
        return Ok(());
    }
    let rows = (n / d) as u64;
    let function = gpu.kernel(&ROPE, kernel)?;
    let (seq, inner, half_arg, max_pos) = (shape.seq as i32, inner as i32, half as i32, max_pos as i32);
    let mut launch = gpu.stream().launch_builder(&function);
    launch.arg(x).arg(cos).arg(sin).arg(positions).arg(&rows).arg(&seq).arg(&inner).arg(&half_arg).arg(&max_pos);
    // One thread per rotated pair, at most 32 blocks per multiprocessor.
    let config = grid_stride((n / 2).div_ceil(BLOCK as usize), BLOCK, 32, gpu.multiprocessors());
    // SAFETY: the arguments match the kernel's signature (4 pointers, u64, 4 ints); x holds the
    // rows * head_dim elements, positions `seq`, the tables max_pos * half each (checked above);
    // positions are bounds-checked in the kernel.
    unsafe { launch.launch(config) }.during(kernel)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_matches_the_cpu_formula() {
        let inv_freq: Vec<f64> = (0..4).map(|i| 10000f64.powf(-(2 * i) as f64 / 8.0)).collect();
        let (cos, sin) = rope_table(&inv_freq, 3);
        assert_eq!(cos.len(), 12);
        assert_eq!(cos[0], 1.0);
        assert_eq!(sin[0], 0.0);
        let angle = (2.0f32 * inv_freq[1] as f32) as f64;
        assert_eq!(cos[2 * 4 + 1], angle.cos() as f32);
        assert_eq!(sin[2 * 4 + 1], angle.sin() as f32);
    }

    #[test]
    fn shape_numel() {
        assert_eq!(RopeShape::bhtd(2, 3, 5, 8).numel(), Some(240));
        assert_eq!(RopeShape::bhtd(usize::MAX, 2, 1, 2).numel(), None);
    }
}
