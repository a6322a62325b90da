//! Launchers for `kernels/attention.cu`: causal grouped-query attention, flash-attention style
//! (the `[t, s]` scores are never stored).
//!
//! Layouts (row-major): `q, o: [b, hq, t, d]`, `k, v: [b, hkv, s, d]`, `lse: [b, hq, t]` (f32,
//! natural log). `s >= t`: query row `i` sees keys `0..=i + s - t` (the queries are the last `t`
//! of `s` positions, the others come from a KV cache). Query head `h` reads kv head
//! `h / (hq / hkv)`. The scale is `1/sqrt(d)`, as in the engine's CPU reference
//! (`engine/src/ops/attention.rs`). With `key_lens` (`[b]` int32, each clamped to `0..=s`),
//! keys `j >= key_lens[batch]` are masked too (right-padded batches); a query row that then sees
//! no key gets `o = 0`, `lse = -inf` and zero gradients.
//!
//! - bf16, head_dim 64 or 128: tensor cores (`mma.sync` m16n8k16, f32 accumulation), online
//!   softmax; backward FlashAttention-2 style with an f32 dQ accumulator in a caller-provided
//!   workspace ([`attention_bwd_workspace_len`]).
//! - f32, head_dim 64 or 128: plain CUDA-core kernels, f32 throughout (a reference-grade twin,
//!   not fast).

use cudarc::driver::{CudaSlice, LaunchConfig, PushKernelArg};

use super::{check_len, invalid, launch_with_shared_memory, Dtype, KernelFloat};
use crate::error::{DriverContext, Result};
use crate::gpu::Gpu;
use crate::source::ATTENTION;

/// The head dimensions the kernels take.
pub const HEAD_DIMS: [usize; 2] = [64, 128];

/// The largest `batch`, `q_heads` or `kv_heads` (CUDA's grid y/z limit).
pub const MAX_GRID_YZ: usize = 65_535;

/// The longest sequence (`q_len`, `kv_len`) the kernels' int indices take.
pub const MAX_SEQ: usize = i32::MAX as usize - 1024;

/// Threads per block of every attention kernel.
const THREADS: u32 = 128;

/// Keys per block of the bf16 backward.
const TILE: usize = 64;

/// Query rows per block of the bf16 forward (`FwdSmem::BM` in `attention.cu`).
const FWD_ROWS: usize = 128;

/// Rows (one warp each) per block of the f32 kernels and the backward pre-kernel.
const ROWS_PER_BLOCK: usize = 4;

/// The shape of one attention call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AttentionDims {
    /// Batch size `b`.
    pub batch: usize,
    /// Query heads `hq`, a multiple of `kv_heads`.
    pub q_heads: usize,
    /// Key/value heads `hkv`.
    pub kv_heads: usize,
    /// Query positions `t` (at least 1).
    pub q_len: usize,
    /// Key/value positions `s >= t`.
    pub kv_len: usize,
    /// Head dimension `d`: one of [`HEAD_DIMS`].
    pub head_dim: usize,
}

impl AttentionDims {
    /// Elements of `q`, `o`, `dq`: `b * hq * t * d`.
    pub fn q_elems(&self) -> usize {
        self.lse_elems() * self.head_dim
    }

    /// Elements of `k`, `v`, `dk`, `dv`: `b * hkv * s * d`.
    pub fn kv_elems(&self) -> usize {
        self.batch * self.kv_heads * self.kv_len * self.head_dim
    }

    /// Elements of `lse`: `b * hq * t`.
    pub fn lse_elems(&self) -> usize {
        self.batch * self.q_heads * self.q_len
    }

    /// The softmax scale `1/sqrt(d)`.
    pub fn scale(&self) -> f32 {
        (1.0 / (self.head_dim as f64).sqrt()) as f32
    }

    /// Multiply-adds x 2 of the forward's two products over the visible (causal, unpadded)
    /// entries: `4 * d * sum_i (i + s - t + 1)` per (batch, query head).
    pub fn fwd_flops(&self) -> f64 {
        let (t, s) = (self.q_len as f64, self.kv_len as f64);
        let visible = t * (s - t) + t * (t + 1.0) / 2.0;
        4.0 * self.head_dim as f64 * visible * (self.batch * self.q_heads) as f64
    }

    /// Checks the shape for `kernel`.
    fn check(&self, kernel: &str) -> Result<()> {
        let bad = |m: String| Err(invalid(kernel, m));
        if !HEAD_DIMS.contains(&self.head_dim) {
            return bad(format!("head_dim {} not one of {HEAD_DIMS:?}", self.head_dim));
        }
        if self.kv_heads == 0 || self.q_heads == 0 || !self.q_heads.is_multiple_of(self.kv_heads) {
            return bad(format!("q_heads {} is not a positive multiple of kv_heads {}", self.q_heads, self.kv_heads));
        }
        if self.q_len == 0 || self.kv_len < self.q_len {
            return bad(format!("need 1 <= q_len ({}) <= kv_len ({})", self.q_len, self.kv_len));
        }
        if self.kv_len > MAX_SEQ {
            return bad(format!("kv_len {} exceeds {MAX_SEQ}", self.kv_len));
        }
        for (what, n) in [("batch", self.batch), ("q_heads", self.q_heads)] {
            if n > MAX_GRID_YZ {
                return bad(format!("{what} {n} exceeds {MAX_GRID_YZ}"));
            }
        }
        // The kernels index heads with int(b * hq) and rows with u64.
        let heads = self.batch * self.q_heads;
        if heads > i32::MAX as usize || heads.checked_mul(self.kv_len * self.head_dim).is_none() {
            return bad(format!("{self:?} overflows"));
        }
        Ok(())
    }

    fn grid(&self, rows: usize, per_block: usize, heads: usize) -> (u32, u32, u32) {
        (rows.div_ceil(per_block) as u32, heads as u32, self.batch as u32)
    }
}

/// The f32 workspace [`attention_bwd`] needs: `b*hq*t` (Delta) for f32; for bf16 Delta padded to
/// a multiple of [`DQ_ALIGN`], then `b*hq*t*d` (the dQ accumulator).
pub fn attention_bwd_workspace_len<T: KernelFloat>(dims: &AttentionDims) -> usize {
    match T::DTYPE {
        Dtype::F32 => dims.lse_elems(),
        Dtype::Bf16 => delta_len(dims) + dims.q_elems(),
    }
}

/// The dQ accumulator starts a multiple of this many f32 into the workspace: the kernel adds
/// pairs of f32 with one 8-byte reduction (`red.global.add.v2.f32`), which needs the alignment.
const DQ_ALIGN: usize = 4;

/// The workspace's Delta part for bf16 (Delta, then padding up to [`DQ_ALIGN`]).
fn delta_len(dims: &AttentionDims) -> usize {
    dims.lse_elems().next_multiple_of(DQ_ALIGN)
}

/// Dynamic shared memory of the bf16 backward kernel for head_dim `d` (mirrors `BwdSmem` in
/// `attention.cu`): the block's 64 keys of k and v, 2 buffers each of a q and a dO tile (64
/// queries for d = 64, 32 for d = 128; rows padded to `d + 8` bf16) and of the tile's lse and
/// Delta (f32), and dS^T (`[64][queries + 8]` bf16).
pub fn bwd_shared_bytes(d: usize) -> usize {
    let (keys, queries, stages) = (TILE, if d == 128 { 32 } else { 64 }, 2);
    let rs = d + 8;
    (2 * keys * rs + 2 * stages * queries * rs + keys * (queries + 8)) * 2 + 2 * stages * queries * 4
}

/// Dynamic shared memory of the bf16 forward kernel for head_dim `d` (mirrors `FwdSmem` in
/// `attention.cu`): the block's 128 query rows and 3 buffers each of a k and a v tile (64 keys for
/// d = 64, 32 for d = 128), rows padded to `d + 8` bf16.
pub fn fwd_shared_bytes(d: usize) -> usize {
    let (keys, stages) = (if d == 128 { 32 } else { 64 }, 3);
    (FWD_ROWS + 2 * stages * keys) * (d + 8) * 2
}

fn check_key_lens(kernel: &str, dims: &AttentionDims, key_lens: Option<&CudaSlice<i32>>) -> Result<()> {
    match key_lens {
        Some(lens) => check_len(kernel, "key_lens", lens.len(), dims.batch),
        None => Ok(()),
    }
}

fn launch_config(grid: (u32, u32, u32), shared: u32) -> LaunchConfig {
    LaunchConfig { grid_dim: grid, block_dim: (THREADS, 1, 1), shared_mem_bytes: shared }
}

/// Causal GQA attention forward: `o = softmax(q k^T / sqrt(d) + mask) v` and the row log-sum-exp
/// `lse` (f32).
///
/// Buffers: `q`, `o` hold [`AttentionDims::q_elems`], `k`, `v` [`AttentionDims::kv_elems`], `lse`
/// [`AttentionDims::lse_elems`], `key_lens` (optional) `batch`. A zero batch is a no-op.
#[allow(clippy::too_many_arguments)]
pub fn attention_fwd<T: KernelFloat>(
    gpu: &Gpu,
    dims: &AttentionDims,
    q: &CudaSlice<T>,
    k: &CudaSlice<T>,
    v: &CudaSlice<T>,
    key_lens: Option<&CudaSlice<i32>>,
    o: &mut CudaSlice<T>,
    lse: &mut CudaSlice<f32>,
) -> Result<()> {
    let kernel = match (T::DTYPE, dims.head_dim) {
        (Dtype::Bf16, 64) => "attention_fwd_bf16_d64",
        (Dtype::Bf16, _) => "attention_fwd_bf16_d128",
        (Dtype::F32, _) => "attention_fwd_f32",
    };
    dims.check(kernel)?;
    check_len(kernel, "q", q.len(), dims.q_elems())?;
    check_len(kernel, "k", k.len(), dims.kv_elems())?;
    check_len(kernel, "v", v.len(), dims.kv_elems())?;
    check_len(kernel, "o", o.len(), dims.q_elems())?;
    check_len(kernel, "lse", lse.len(), dims.lse_elems())?;
    check_key_lens(kernel, dims, key_lens)?;
    if dims.batch == 0 {
        return Ok(());
    }
    let function = gpu.kernel(&ATTENTION, kernel)?;
    let shared = match T::DTYPE {
        Dtype::Bf16 => fwd_shared_bytes(dims.head_dim),
        Dtype::F32 => 0,
    };
    let (hq, hkv, t, s) = (dims.q_heads as i32, dims.kv_heads as i32, dims.q_len as i32, dims.kv_len as i32);
    let (scale, d) = (dims.scale(), dims.head_dim as i32);
    let null = 0u64;
    let mut launch = gpu.stream().launch_builder(&function);
    launch.arg(q).arg(k).arg(v);
    match key_lens {
        Some(lens) => launch.arg(lens),
        None => launch.arg(&null),
    };
    launch.arg(o).arg(lse).arg(&hq).arg(&hkv).arg(&t).arg(&s).arg(&scale);
    let grid = match T::DTYPE {
        Dtype::Bf16 => dims.grid(dims.q_len, FWD_ROWS, dims.q_heads),
        Dtype::F32 => {
            launch.arg(&d);
            dims.grid(dims.q_len, ROWS_PER_BLOCK, dims.q_heads)
        }
    };
    let config = launch_config(grid, shared as u32);
    // SAFETY: the arguments match the kernel's signature (pointers or a null u64 for key_lens,
    // ints, a float, and for f32 the head dim); every buffer holds what the kernel touches
    // (checked above); the grid matches the kernel's documented launch shape, and the bf16
    // kernel's dynamic shared memory is what it carves (FwdSmem).
    unsafe { launch_with_shared_memory(&function, &mut launch, config, kernel) }?;
    Ok(())
}

/// Causal GQA attention backward: `dq`, `dk`, `dv` from `q, k, v`, the forward's `o` and `lse`,
/// and the output gradient `d_o`. Probabilities are recomputed from `lse`; the query heads of a
/// GQA group accumulate into their kv head's `dk`, `dv`.
///
/// `workspace` holds at least [`attention_bwd_workspace_len`] f32 (its contents on entry do not
/// matter); the other buffers as in [`attention_fwd`] (`d_o`, `dq` like `q`; `dk`, `dv` like
/// `k`). `key_lens` must be the forward's. A zero batch is a no-op.
#[allow(clippy::too_many_arguments)]
pub fn attention_bwd<T: KernelFloat>(
    gpu: &Gpu,
    dims: &AttentionDims,
    q: &CudaSlice<T>,
    k: &CudaSlice<T>,
    v: &CudaSlice<T>,
    o: &CudaSlice<T>,
    lse: &CudaSlice<f32>,
    d_o: &CudaSlice<T>,
    key_lens: Option<&CudaSlice<i32>>,
    dq: &mut CudaSlice<T>,
    dk: &mut CudaSlice<T>,
    dv: &mut CudaSlice<T>,
    workspace: &mut CudaSlice<f32>,
) -> Result<()> {
    let main = match (T::DTYPE, dims.head_dim) {
        (Dtype::Bf16, 64) => "attention_bwd_bf16_d64",
        (Dtype::Bf16, _) => "attention_bwd_bf16_d128",
        (Dtype::F32, _) => "attention_bwd_dq_f32",
    };
    dims.check(main)?;
    for (what, len) in [("q", q.len()), ("o", o.len()), ("d_o", d_o.len()), ("dq", dq.len())] {
        check_len(main, what, len, dims.q_elems())?;
    }
    for (what, len) in [("k", k.len()), ("v", v.len()), ("dk", dk.len()), ("dv", dv.len())] {
        check_len(main, what, len, dims.kv_elems())?;
    }
    check_len(main, "lse", lse.len(), dims.lse_elems())?;
    check_key_lens(main, dims, key_lens)?;
    let need = attention_bwd_workspace_len::<T>(dims);
    if workspace.len() < need {
        return Err(invalid(main, format!("workspace has {} f32, needs {need}", workspace.len())));
    }
    if dims.batch == 0 {
        return Ok(());
    }
    let (hq, hkv, t, s) = (dims.q_heads as i32, dims.kv_heads as i32, dims.q_len as i32, dims.kv_len as i32);
    let (scale, d) = (dims.scale(), dims.head_dim as i32);
    let null = 0u64;
    let rows = dims.lse_elems();
    let rows_arg = rows as u64;
    let bf16 = T::DTYPE == Dtype::Bf16;
    let (mut delta, mut rest) = workspace.split_at_mut(if bf16 { delta_len(dims) } else { rows });

    // Delta = rowsum(dO * O); for bf16 also zero the dQ accumulator.
    let pre = T::pick("attention_bwd_pre_f32", "attention_bwd_pre_bf16");
    let function = gpu.kernel(&ATTENTION, pre)?;
    let mut launch = gpu.stream().launch_builder(&function);
    launch.arg(o).arg(d_o).arg(&mut delta);
    if bf16 {
        launch.arg(&mut rest);
    } else {
        launch.arg(&null);
    }
    launch.arg(&rows_arg).arg(&d);
    let grid = (rows.div_ceil(ROWS_PER_BLOCK) as u32, 1, 1);
    // SAFETY: (pointer, pointer, pointer, pointer or null, u64, int) matches the kernel; o and
    // d_o hold rows * d elements, delta rows, the accumulator (bf16) rows * d.
    unsafe { launch.launch(launch_config(grid, 0)) }.during(pre)?;

    if bf16 {
        let function = gpu.kernel(&ATTENTION, main)?;
        let shared = bwd_shared_bytes(dims.head_dim);
        let mut launch = gpu.stream().launch_builder(&function);
        launch.arg(q).arg(k).arg(v).arg(lse).arg(&mut delta).arg(d_o);
        match key_lens {
            Some(lens) => launch.arg(lens),
            None => launch.arg(&null),
        };
        launch.arg(&mut rest).arg(&mut *dk).arg(&mut *dv).arg(&hq).arg(&hkv).arg(&t).arg(&s).arg(&scale);
        let grid = dims.grid(dims.kv_len, TILE, dims.kv_heads);
        // SAFETY: the arguments match the kernel's signature; buffers checked above; the dynamic
        // shared memory is what the kernel carves (BwdSmem).
        unsafe { launch_with_shared_memory(&function, &mut launch, launch_config(grid, shared as u32), main) }?;

        let post = "attention_bwd_post_bf16";
        let function = gpu.kernel(&ATTENTION, post)?;
        let n = dims.q_elems();
        let n_arg = n as u64;
        let blocks = n.div_ceil(THREADS as usize).clamp(1, gpu.multiprocessors().max(1) as usize * 32);
        let mut launch = gpu.stream().launch_builder(&function);
        launch.arg(&mut rest).arg(&mut *dq).arg(&n_arg);
        // SAFETY: (pointer, pointer, u64) matches; both hold n elements.
        unsafe { launch.launch(launch_config((blocks as u32, 1, 1), 0)) }.during(post)?;
    } else {
        let function = gpu.kernel(&ATTENTION, main)?;
        let mut launch = gpu.stream().launch_builder(&function);
        launch.arg(q).arg(k).arg(v).arg(lse).arg(&mut delta).arg(d_o);
        match key_lens {
            Some(lens) => launch.arg(lens),
            None => launch.arg(&null),
        };
        launch.arg(&mut *dq).arg(&hq).arg(&hkv).arg(&t).arg(&s).arg(&scale).arg(&d);
        let grid = dims.grid(dims.q_len, ROWS_PER_BLOCK, dims.q_heads);
        // SAFETY: as above.
        unsafe { launch.launch(launch_config(grid, 0)) }.during(main)?;

        let dkdv = "attention_bwd_dkdv_f32";
        let function = gpu.kernel(&ATTENTION, dkdv)?;
        let mut launch = gpu.stream().launch_builder(&function);
        launch.arg(q).arg(k).arg(v).arg(lse).arg(&mut delta).arg(d_o);
        match key_lens {
            Some(lens) => launch.arg(lens),
            None => launch.arg(&null),
        };
        launch.arg(&mut *dk).arg(&mut *dv).arg(&hq).arg(&hkv).arg(&t).arg(&s).arg(&scale).arg(&d);
        let grid = dims.grid(dims.kv_len, ROWS_PER_BLOCK, dims.kv_heads);
        // SAFETY: as above.
        unsafe { launch.launch(launch_config(grid, 0)) }.during(dkdv)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dims(b: usize, hq: usize, hkv: usize, t: usize, s: usize, d: usize) -> AttentionDims {
        AttentionDims { batch: b, q_heads: hq, kv_heads: hkv, q_len: t, kv_len: s, head_dim: d }
    }

    #[test]
    fn shapes_are_checked() {
        dims(2, 4, 2, 37, 37, 64).check("k").unwrap();
        dims(1, 8, 2, 5, 133, 128).check("k").unwrap();
        dims(0, 8, 2, 5, 133, 128).check("k").unwrap();
        for (bad, needle) in [
            (dims(1, 4, 2, 3, 3, 96), "head_dim"),
            (dims(1, 4, 3, 3, 3, 64), "multiple"),
            (dims(1, 4, 0, 3, 3, 64), "multiple"),
            (dims(1, 4, 2, 0, 3, 64), "q_len"),
            (dims(1, 4, 2, 4, 3, 64), "q_len"),
            (dims(70_000, 4, 2, 4, 4, 64), "batch"),
        ] {
            let err = bad.check("k").unwrap_err().to_string();
            assert!(err.starts_with("k: ") && err.contains(needle), "{err}");
        }
    }

    #[test]
    fn sizes_and_flops() {
        let d = dims(2, 4, 2, 3, 5, 64);
        assert_eq!(d.q_elems(), 2 * 4 * 3 * 64);
        assert_eq!(d.kv_elems(), 2 * 2 * 5 * 64);
        assert_eq!(d.lse_elems(), 24);
        assert_eq!(attention_bwd_workspace_len::<f32>(&d), 24);
        assert_eq!(attention_bwd_workspace_len::<half::bf16>(&d), 24 + 24 * 64);
        // One row: Delta is padded to 4 f32, so that the dQ accumulator is 16-byte aligned.
        assert_eq!(attention_bwd_workspace_len::<half::bf16>(&dims(1, 1, 1, 1, 1, 64)), 4 + 64);
        assert_eq!(attention_bwd_workspace_len::<f32>(&dims(1, 1, 1, 1, 1, 64)), 1);
        // rows see 3, 4, 5 keys.
        assert_eq!(d.fwd_flops(), 4.0 * 64.0 * 12.0 * 8.0);
        let sq = dims(2, 32, 8, 2048, 2048, 128);
        let approx = 4.0 * 2.0 * 32.0 * 2048.0 * 2048.0 * 128.0 / 2.0;
        assert!((sq.fwd_flops() / approx - 1.0).abs() < 1e-3);
        assert!((dims(1, 1, 1, 1, 1, 64).scale() - 0.125).abs() < 1e-9);
    }

    #[test]
    fn forward_shared_memory_matches_the_kernel_layout() {
        // The numbers quoted in attention.cu; two blocks must fit an H100 / A100 multiprocessor.
        assert_eq!(fwd_shared_bytes(64), 73_728);
        assert_eq!(fwd_shared_bytes(128), 87_040);
        assert!(fwd_shared_bytes(64).max(fwd_shared_bytes(128)) <= 113 * 1024);
    }

    #[test]
    fn backward_shared_memory_matches_the_kernel_layout() {
        // The numbers quoted in attention.cu.
        assert_eq!(bwd_shared_bytes(64), 65_536);
        assert_eq!(bwd_shared_bytes(128), 75_264);
        // Two blocks must fit an A100 multiprocessor (164 KiB, 1 KiB reserved per block).
        assert!(bwd_shared_bytes(64).max(bwd_shared_bytes(128)) <= 81 * 1024);
    }
}
