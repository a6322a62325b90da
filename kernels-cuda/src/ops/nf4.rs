//! Launchers for `kernels/nf4.cu`: NF4 (bitsandbytes) weights on the device, dequantized to
//! f32 or bf16, or multiplied by a few activation rows without being dequantized to memory.
//!
//! Layout (DESIGN.md; the CPU twin is `engine::quant::nf4::Nf4Weight`): `n` values flattened
//! row-major, two 4-bit codes per byte (element `2j` in the high nibble), one absmax per block of
//! [`NF4_BLOCK`] values, plain f32 or double-quantized: `map[codes[b]] * scales[b / 256] +
//! offset` with the 256-entry signed dynamic map. The decoding rounds like the CPU twin, so
//! [`nf4_dequantize`] into f32 is bit-identical to `Nf4Weight::dequantize()`, and into bf16 is
//! that rounded to nearest even.

use cudarc::driver::{CudaSlice, LaunchConfig, PushKernelArg};

use super::{check_len, grid_stride, invalid, launch_with_shared_memory, KernelFloat};
use crate::error::{DriverContext, Result};
use crate::gpu::Gpu;
use crate::source::NF4;

/// Values per absmax block.
pub const NF4_BLOCK: usize = 64;
/// Absmax blocks per double-quantization scale.
pub const DOUBLE_QUANT_BLOCK: usize = 256;
/// Entries of the dynamic map.
pub const DYNAMIC_MAP_LEN: usize = 256;
/// The most activation rows [`nf4_gemv`] takes.
pub const GEMV_MAX_M: usize = 8;
/// Threads per block of the GEMV, by m (`NF4_GEMV_THREADS` in the kernel).
const GEMV_THREADS: [usize; GEMV_MAX_M] = [512; GEMV_MAX_M];
/// Weight rows per warp task of the GEMV, by m (`NF4_GEMV_ROWS` in the kernel).
const GEMV_ROWS: [usize; GEMV_MAX_M] = [2; GEMV_MAX_M];
/// Dynamic shared memory of a GEMV block: room for the 64 KiB decoding table at a 64 KiB
/// boundary. One block per multiprocessor fits.
pub const GEMV_SHARED_BYTES: usize = 128 << 10;
/// Threads per block of the dequantization.
const DEQUANT_THREADS: usize = 256;

/// The per-block absmax of an NF4 weight on the device.
#[derive(Clone, Copy, Debug)]
pub enum Nf4Absmax<'a> {
    /// One f32 per block.
    Plain(&'a CudaSlice<f32>),
    /// Double quantization: `map[codes[b]] * scales[b / 256] + offset`.
    Double {
        /// One u8 code per block.
        codes: &'a CudaSlice<u8>,
        /// One f32 per 256 blocks.
        scales: &'a CudaSlice<f32>,
        /// The mean subtracted before quantizing.
        offset: f32,
        /// The signed dynamic map, 256 f32.
        map: &'a CudaSlice<f32>,
    },
}

/// An NF4 weight of `numel` values on the device: its packed codes and absmax.
#[derive(Clone, Copy, Debug)]
pub struct Nf4Weights<'a> {
    /// `ceil(numel / 2)` bytes.
    pub packed: &'a CudaSlice<u8>,
    /// The absmax, plain or double-quantized.
    pub absmax: Nf4Absmax<'a>,
}

impl Nf4Weights<'_> {
    /// Checks every buffer's length for `numel` values.
    pub(super) fn check(&self, kernel: &str, numel: usize) -> Result<()> {
        if numel == 0 {
            return Err(invalid(kernel, "an NF4 weight of no values".into()));
        }
        let blocks = numel.div_ceil(NF4_BLOCK);
        check_len(kernel, "packed", self.packed.len(), numel.div_ceil(2))?;
        match self.absmax {
            Nf4Absmax::Plain(a) => check_len(kernel, "absmax", a.len(), blocks),
            Nf4Absmax::Double { codes, scales, map, .. } => {
                check_len(kernel, "absmax codes", codes.len(), blocks)?;
                check_len(kernel, "absmax scales", scales.len(), blocks.div_ceil(DOUBLE_QUANT_BLOCK))?;
                check_len(kernel, "dynamic map", map.len(), DYNAMIC_MAP_LEN)
            }
        }
    }
}

/// Pushes `packed, plain, codes, scales, offset, map` (the absmax the kernel does not use as
/// null pointers) and runs `f` with the builder.
macro_rules! push_weights {
    ($launch:expr, $w:expr, $null:expr, $zero:expr) => {{
        $launch.arg($w.packed);
        match &$w.absmax {
            Nf4Absmax::Plain(a) => {
                $launch.arg(*a).arg($null).arg($null).arg($zero).arg($null);
            }
            Nf4Absmax::Double { codes, scales, offset, map } => {
                $launch.arg($null).arg(*codes).arg(*scales).arg(offset).arg(*map);
            }
        }
    }};
}

/// Quantizes the `w.len()` values of `w` to NF4: `packed` (two codes per byte, the even
/// element in the high nibble) and one f32 `absmax` per 64 values, bit-identical to the CPU
/// twin `engine::quant::nf4::Nf4Weight::quantize` before double quantization.
pub fn nf4_quantize<T: KernelFloat>(
    gpu: &Gpu,
    w: &CudaSlice<T>,
    packed: &mut CudaSlice<u8>,
    absmax: &mut CudaSlice<f32>,
) -> Result<()> {
    let kernel = T::pick("nf4_quantize_f32", "nf4_quantize_bf16");
    let n = w.len();
    if n == 0 {
        return Err(invalid(kernel, "an NF4 weight of no values".into()));
    }
    let blocks = n.div_ceil(NF4_BLOCK);
    check_len(kernel, "packed", packed.len(), n.div_ceil(2))?;
    check_len(kernel, "absmax", absmax.len(), blocks)?;
    let function = gpu.kernel(&NF4, kernel)?;
    let n_arg = n as u64;
    let mut launch = gpu.stream().launch_builder(&function);
    launch.arg(w).arg(&n_arg).arg(packed).arg(absmax);
    // One warp per 64-value block, 8 warps per thread block; the kernel loops over the rest.
    let warps = 8usize;
    let config = grid_stride(blocks.div_ceil(warps), 32 * warps as u32, 16, gpu.multiprocessors());
    // SAFETY: (pointer, u64, pointer, pointer) matches the kernel; w holds n values, packed
    // ceil(n / 2) bytes and absmax one value per 64-value block (checked above).
    unsafe { launch.launch(config) }.during(kernel)?;
    Ok(())
}

/// Dequantizes all `out.len()` values of `w` into `out` (f32: bit-identical to the CPU twin;
/// bf16: that rounded to nearest even).
pub fn nf4_dequantize<T: KernelFloat>(gpu: &Gpu, w: &Nf4Weights, out: &mut CudaSlice<T>) -> Result<()> {
    let kernel = T::pick("nf4_dequant_f32", "nf4_dequant_bf16");
    let n = out.len();
    w.check(kernel, n)?;
    let function = gpu.kernel(&NF4, kernel)?;
    let (null, zero, n_arg) = (0u64, 0f32, n as u64);
    let mut launch = gpu.stream().launch_builder(&function);
    push_weights!(launch, w, &null, &zero);
    launch.arg(out).arg(&n_arg);
    // One thread per packed 4-byte word (8 values), at most 8 blocks of 256 per multiprocessor
    // (a full one; the kernel loops over the rest).
    let config = grid_stride(n.div_ceil(8).div_ceil(DEQUANT_THREADS), DEQUANT_THREADS as u32, 8, gpu.multiprocessors());
    // SAFETY: (pointer x3 or null, pointer, float, pointer, pointer, u64) matches the kernel;
    // every buffer's length was checked for n values, and the kernel reads the plain absmax or
    // the double-quantized one, whichever is not null.
    unsafe { launch.launch(config) }.during(kernel)?;
    Ok(())
}

/// GEMV kernel names by m, f32 then bf16.
const GEMV_F32: [&str; GEMV_MAX_M] = [
    "nf4_gemv1_f32",
    "nf4_gemv2_f32",
    "nf4_gemv3_f32",
    "nf4_gemv4_f32",
    "nf4_gemv5_f32",
    "nf4_gemv6_f32",
    "nf4_gemv7_f32",
    "nf4_gemv8_f32",
];
const GEMV_BF16: [&str; GEMV_MAX_M] = [
    "nf4_gemv1_bf16",
    "nf4_gemv2_bf16",
    "nf4_gemv3_bf16",
    "nf4_gemv4_bf16",
    "nf4_gemv5_bf16",
    "nf4_gemv6_bf16",
    "nf4_gemv7_bf16",
    "nf4_gemv8_bf16",
];

/// `y = x @ W^T` for the decode step: `x` `[m, k]`, `W` an NF4 weight `[rows, k]`, `y`
/// `[m, rows]`, `1 <= m <= 8`. The packed weight is read once, straight from memory (no
/// dequantized copy); the weights enter the f32 dot products unrounded. Fast when `k` is a
/// multiple of 64; any `k` works.
///
/// Launch: one block of 512 threads per multiprocessor at most, each warp working through tasks
/// of two weight rows.
pub fn nf4_gemv<T: KernelFloat>(
    gpu: &Gpu,
    x: &CudaSlice<T>,
    w: &Nf4Weights,
    y: &mut CudaSlice<T>,
    m: usize,
    rows: usize,
    k: usize,
) -> Result<()> {
    let kernel = if (1..=GEMV_MAX_M).contains(&m) {
        T::pick(GEMV_F32[m - 1], GEMV_BF16[m - 1])
    } else {
        return Err(invalid(T::pick("nf4_gemv_f32", "nf4_gemv_bf16"), format!("m = {m} outside 1..={GEMV_MAX_M}")));
    };
    if rows == 0 || k == 0 || rows > i32::MAX as usize || k > i32::MAX as usize {
        return Err(invalid(kernel, format!("rows {rows} and k {k} must be in 1..=i32::MAX")));
    }
    let numel = rows.checked_mul(k).ok_or_else(|| invalid(kernel, format!("{rows} x {k} overflows")))?;
    w.check(kernel, numel)?;
    check_len(kernel, "x", x.len(), m * k)?;
    check_len(kernel, "y", y.len(), m * rows)?;
    let function = gpu.kernel(&NF4, kernel)?;
    let (null, zero) = (0u64, 0f32);
    let (rows_arg, k_arg) = (rows as i32, k as i32);
    let mut launch = gpu.stream().launch_builder(&function);
    launch.arg(x);
    push_weights!(launch, w, &null, &zero);
    launch.arg(y).arg(&rows_arg).arg(&k_arg);
    let config = LaunchConfig {
        grid_dim: (gemv_blocks(rows, GEMV_ROWS[m - 1], GEMV_THREADS[m - 1] / 32, gpu.multiprocessors()), 1, 1),
        block_dim: (GEMV_THREADS[m - 1] as u32, 1, 1),
        shared_mem_bytes: GEMV_SHARED_BYTES as u32,
    };
    // SAFETY: (pointer x2, pointer or null x4, float, pointer, pointer, int, int) matches the
    // kernel; x, y and the weight's buffers hold what [m, k], [m, rows] and rows * k values need;
    // the dynamic shared memory is what the kernel expects.
    unsafe { launch_with_shared_memory(&function, &mut launch, config, kernel) }?;
    Ok(())
}

/// GEMV blocks for `rows` rows in tasks of `rows_per_task`, `warps` warps per block: enough for
/// every task to have a warp, at most one block per multiprocessor (the kernel's warps stride
/// over the tasks, interleaved across blocks so that every multiprocessor gets an even share).
pub fn gemv_blocks(rows: usize, rows_per_task: usize, warps: usize, multiprocessors: u32) -> u32 {
    let tasks = rows.div_ceil(rows_per_task);
    tasks.div_ceil(warps.max(1)).clamp(1, multiprocessors.max(1) as usize) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gemv_grid_fills_the_multiprocessors() {
        // 4096 rows: 2048 tasks, 16 warps a block: 128 blocks.
        assert_eq!(gemv_blocks(4096, 2, 16, 132), 128);
        // 14336 rows: 7168 tasks: every multiprocessor.
        assert_eq!(gemv_blocks(14336, 2, 16, 132), 132);
        assert_eq!(gemv_blocks(1, 2, 16, 132), 1);
        assert_eq!(gemv_blocks(33, 2, 16, 132), 2);
        assert_eq!(gemv_blocks(1 << 20, 2, 16, 132), 132);
    }

    #[test]
    fn gemv_names_follow_m() {
        for m in 1..=GEMV_MAX_M {
            assert_eq!(GEMV_F32[m - 1], format!("nf4_gemv{m}_f32"));
            assert_eq!(GEMV_BF16[m - 1], format!("nf4_gemv{m}_bf16"));
            assert!(NF4.kernels.contains(&GEMV_F32[m - 1]));
            assert!(NF4.kernels.contains(&GEMV_BF16[m - 1]));
        }
    }
}
