//! Launchers for `kernels/nf4_gemm.cu`: bf16 GEMMs with an NF4 weight decoded tile by tile in
//! shared memory, never written out (prefill and training; decode uses
//! [`nf4_gemv`](super::nf4::nf4_gemv)).
//!
//! Each weight is decoded as [`nf4_dequantize`](super::nf4::nf4_dequantize) does into bf16, so the
//! result is the GEMM on the dequantized weight up to the order of the f32 sums. Which of the two
//! is faster depends on the shape (benches/RESULTS.md): the fused kernel reads 4 bits per weight
//! instead of writing and reading a 16-bit scratch, while cuBLAS multiplies faster once there are
//! enough rows to hide that traffic.

use cudarc::driver::{CudaSlice, LaunchConfig, PushKernelArg};
use half::bf16;

use super::nf4::{Nf4Absmax, Nf4Weights, NF4_BLOCK};
use super::{check_len, grid_stride, invalid, launch_with_shared_memory};
use crate::error::{DriverContext, Result};
use crate::gpu::Gpu;
use crate::source::NF4_GEMM;

/// The product [`nf4_gemm`] computes with an NF4 weight `W [rows, cols]` (a linear layer's
/// `[out_features, in_features]`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Nf4Product {
    /// `c[m, rows] = a[m, cols] @ W^T`: the layer's output.
    Forward,
    /// `c[m, cols] = a[m, rows] @ W`: the gradient of the layer's input.
    Backward,
}

impl Nf4Product {
    /// `(outputs per row of a, contraction length)` for a weight `[rows, cols]`.
    pub fn dims(self, rows: usize, cols: usize) -> (usize, usize) {
        match self {
            Nf4Product::Forward => (rows, cols),
            Nf4Product::Backward => (cols, rows),
        }
    }
}

/// Outputs per block along n and contraction per step (`BN`, `BK` in the kernel).
const TILE: usize = 64;
/// Shared-memory row stride of the tiles, in bf16 (`LDS`).
const TILE_STRIDE: usize = TILE + 8;
/// At least this many contraction steps per split.
const MIN_STEPS_PER_SPLIT: usize = 2;
/// Blocks per multiprocessor a split launch aims for: about as many as fit at once (5 of
/// 64 rows by registers), so that enough weight loads are in flight to stream at full speed.
const BLOCKS_PER_MULTIPROCESSOR: usize = 4;

/// Whether the fused kernel takes a weight `[rows, cols]`: whole absmax blocks per row
/// (`cols % 64 == 0`) and rows in 16-byte chunks (`rows % 8 == 0`). Llama projections all are.
pub fn nf4_gemm_supports(rows: usize, cols: usize) -> bool {
    let fits = |n: usize| n > 0 && n <= i32::MAX as usize;
    fits(rows) && fits(cols) && cols.is_multiple_of(NF4_BLOCK) && rows.is_multiple_of(8)
}

/// How one product is cut into blocks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Plan {
    /// Rows of `a` per block: 64 (4 warps) or 128 (8 warps).
    block_m: usize,
    /// Contraction splits (`gridDim.z`); above 1 the partial sums go through the workspace.
    splits: usize,
    steps_per_split: usize,
    n_out: usize,
}

impl Plan {
    fn new(m: usize, rows: usize, cols: usize, product: Nf4Product, multiprocessors: u32) -> Plan {
        let (n_out, kdim) = product.dims(rows, cols);
        let block_m = if m <= 64 { 64 } else { 128 };
        let blocks = m.div_ceil(block_m) * n_out.div_ceil(TILE);
        let steps = kdim.div_ceil(TILE);
        // Small grids leave the memory system idle while the weight streams (each block has
        // one step's loads in flight): split the contraction until every multiprocessor has
        // several blocks.
        let want = BLOCKS_PER_MULTIPROCESSOR * multiprocessors.max(1) as usize;
        let splits = want.div_ceil(blocks).min(steps / MIN_STEPS_PER_SPLIT).max(1);
        let steps_per_split = steps.div_ceil(splits);
        Plan { block_m, splits: steps.div_ceil(steps_per_split), steps_per_split, n_out }
    }

    fn threads(&self) -> usize {
        self.block_m / 32 * 2 * 32
    }

    /// Double-buffered tiles of `a` (block_m rows) and of the weight (64 rows).
    fn shared_bytes(&self) -> usize {
        2 * (self.block_m + TILE) * TILE_STRIDE * 2
    }

    fn workspace_len(&self, m: usize) -> usize {
        if self.splits > 1 {
            self.splits * m * self.n_out
        } else {
            0
        }
    }
}

/// f32 elements of the workspace [`nf4_gemm`] needs for this product (0: none).
pub fn nf4_gemm_workspace_len(gpu: &Gpu, m: usize, rows: usize, cols: usize, product: Nf4Product) -> usize {
    Plan::new(m, rows, cols, product, gpu.multiprocessors()).workspace_len(m)
}

/// The fused product of `a` with the NF4 weight `w` (`[rows, cols]`, see [`Nf4Product`]) into
/// `c`, bf16 in and out, f32 sums. `a` has `m` rows of the contraction length, `c` `m` rows of
/// the output length. `workspace` must hold [`nf4_gemm_workspace_len`] f32 when that is not 0
/// (its contents are overwritten). Needs [`nf4_gemm_supports`]`(rows, cols)`.
#[allow(clippy::too_many_arguments)]
pub fn nf4_gemm(
    gpu: &Gpu,
    a: &CudaSlice<bf16>,
    w: &Nf4Weights,
    c: &mut CudaSlice<bf16>,
    workspace: Option<&mut CudaSlice<f32>>,
    (m, rows, cols): (usize, usize, usize),
    product: Nf4Product,
) -> Result<()> {
    let plan = Plan::new(m, rows, cols, product, gpu.multiprocessors());
    let kernel = match (product, plan.block_m) {
        (Nf4Product::Forward, 64) => "nf4_gemm_fwd_bf16_m64",
        (Nf4Product::Forward, _) => "nf4_gemm_fwd_bf16_m128",
        (Nf4Product::Backward, 64) => "nf4_gemm_bwd_bf16_m64",
        (Nf4Product::Backward, _) => "nf4_gemm_bwd_bf16_m128",
    };
    if !nf4_gemm_supports(rows, cols) {
        return Err(invalid(kernel, format!("weight [{rows}, {cols}]: needs cols % 64 == 0 and rows % 8 == 0")));
    }
    if m == 0 || m > i32::MAX as usize / 2 {
        return Err(invalid(kernel, format!("m = {m} outside 1..2^30")));
    }
    let (n_out, kdim) = product.dims(rows, cols);
    w.check(kernel, rows * cols)?;
    check_len(kernel, "a", a.len(), m * kdim)?;
    check_len(kernel, "c", c.len(), m * n_out)?;
    let want = plan.workspace_len(m);
    let mut workspace = match workspace {
        _ if want == 0 => None,
        Some(ws) => {
            check_len(kernel, "workspace", ws.len(), want)?;
            Some(ws)
        }
        None => return Err(invalid(kernel, format!("needs a workspace of {want} f32"))),
    };
    let function = gpu.kernel(&NF4_GEMM, kernel)?;
    let shared = plan.shared_bytes();
    let (null, zero) = (0u64, 0f32);
    let (m_arg, rows_arg, cols_arg, steps_arg) = (m as i32, rows as i32, cols as i32, plan.steps_per_split as i32);
    {
        let mut launch = gpu.stream().launch_builder(&function);
        launch.arg(a).arg(w.packed);
        match &w.absmax {
            Nf4Absmax::Plain(p) => launch.arg(*p).arg(&null).arg(&null).arg(&zero).arg(&null),
            Nf4Absmax::Double { codes, scales, offset, map } => {
                launch.arg(&null).arg(*codes).arg(*scales).arg(offset).arg(*map)
            }
        };
        launch.arg(&mut *c);
        match workspace.as_mut() {
            Some(ws) => launch.arg(&mut **ws),
            None => launch.arg(&null),
        };
        launch.arg(&m_arg).arg(&rows_arg).arg(&cols_arg).arg(&steps_arg);
        let config = LaunchConfig {
            grid_dim: (n_out.div_ceil(TILE) as u32, m.div_ceil(plan.block_m) as u32, plan.splits as u32),
            block_dim: (plan.threads() as u32, 1, 1),
            shared_mem_bytes: shared as u32,
        };
        // SAFETY: (pointer x2, pointer or null x4, float, pointer, pointer, pointer or null,
        // int x4) matches the kernel; a, c, the workspace and the weight's buffers hold what
        // [m, kdim], [m, n_out], [splits, m, n_out] and rows * cols values need (checked above);
        // the dynamic shared memory is what the kernel's tiles take for this block_m.
        unsafe { launch_with_shared_memory(&function, &mut launch, config, kernel) }?;
    }
    if let Some(ws) = workspace {
        reduce(gpu, ws, c, plan.splits)?;
    }
    Ok(())
}

/// `c = sum of the workspace's `splits` slices`, in order.
fn reduce(gpu: &Gpu, ws: &CudaSlice<f32>, c: &mut CudaSlice<bf16>, splits: usize) -> Result<()> {
    const THREADS: usize = 256;
    let kernel = "nf4_gemm_reduce_bf16";
    let function = gpu.kernel(&NF4_GEMM, kernel)?;
    let (len, splits_arg) = (c.len(), splits as i32);
    let n = len as u64;
    let mut launch = gpu.stream().launch_builder(&function);
    launch.arg(ws).arg(c).arg(&n).arg(&splits_arg);
    let config = grid_stride(len.div_ceil(THREADS), THREADS as u32, 8, gpu.multiprocessors());
    // SAFETY: (pointer, pointer, u64, int) matches the kernel; the workspace holds splits * n
    // values (checked by the caller) and c holds n.
    unsafe { launch.launch(config) }.during(kernel)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_grids_split_the_contraction() {
        // m = 16 on a 4096 x 4096 weight: 64 blocks on 132 multiprocessors, 4 x 132 = 528
        // wanted -> 9 splits of the 64 steps, 8 steps each -> 8 splits.
        let p = Plan::new(16, 4096, 4096, Nf4Product::Forward, 132);
        assert_eq!((p.block_m, p.splits, p.steps_per_split), (64, 8, 8));
        assert_eq!(p.workspace_len(16), 8 * 16 * 4096);
        // Enough blocks already: no split, no workspace.
        let p = Plan::new(4096, 4096, 4096, Nf4Product::Forward, 132);
        assert_eq!((p.block_m, p.splits, p.workspace_len(4096)), (128, 1, 0));
        // A short contraction is not split below 2 steps per split.
        let p = Plan::new(8, 4096, 192, Nf4Product::Forward, 132);
        assert_eq!((p.splits, p.steps_per_split), (1, 3));
        // The backward contracts over rows: [14336, 4096] -> 224 steps, outputs 4096; 64
        // blocks -> 9 splits of 25 steps.
        let p = Plan::new(100, 14336, 4096, Nf4Product::Backward, 132);
        assert_eq!((p.block_m, p.n_out, p.splits, p.steps_per_split), (128, 4096, 9, 25));
    }

    #[test]
    fn shapes_the_kernel_takes() {
        assert!(nf4_gemm_supports(4096, 4096));
        assert!(nf4_gemm_supports(192, 576));
        assert!(!nf4_gemm_supports(4096, 100));
        assert!(!nf4_gemm_supports(4097, 64));
        assert!(!nf4_gemm_supports(0, 64));
    }
}
