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

use super::{check_len, invalid, KernelFloat};
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
/// Output rows (warps) per block of the GEMV (`GEMV_WARPS` in the kernel).
const GEMV_WARPS: usize = 8;

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
    fn check(&self, kernel: &str, numel: usize) -> Result<()> {
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
    // One thread per 32 values; at most 32 blocks of 256 per multiprocessor (the kernel loops).
    let cap = gpu.multiprocessors().max(1) as usize * 32;
    let config = LaunchConfig {
        grid_dim: (n.div_ceil(32).div_ceil(256).clamp(1, cap) as u32, 1, 1),
        block_dim: (256, 1, 1),
        shared_mem_bytes: 0,
    };
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
/// `[m, rows]`, `1 <= m <= 8`. The packed weight is read once (one warp per output row, 16-byte
/// loads, absmax decoded in the kernel); the weights enter the f32 dot products unrounded. Fast
/// when `k` is a multiple of 32; any `k` works.
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
        grid_dim: (rows.div_ceil(GEMV_WARPS) as u32, 1, 1),
        block_dim: (32 * GEMV_WARPS as u32, 1, 1),
        shared_mem_bytes: 0,
    };
    // SAFETY: (pointer x2, pointer or null x4, float, pointer, pointer, int, int) matches the
    // kernel; x, y and the weight's buffers hold what [m, k], [m, rows] and rows * k values need.
    unsafe { launch.launch(config) }.during(kernel)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

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
