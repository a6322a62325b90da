//! NF4 (4-bit NormalFloat) weights, bit-compatible with bitsandbytes.
//!
//! This is the storage format of QLoRA base weights, as written by
//! `bitsandbytes.functional.quantize_4bit(w, quant_type="nf4", blocksize=64,
//! compress_statistics=True)`:
//!
//! - The tensor is flattened (row-major) and cut into blocks of [`NF4_BLOCK_SIZE`] = 64
//!   values; the last block may be shorter. Blocks run across row boundaries when the last
//!   dimension is not a multiple of 64, exactly as in bitsandbytes.
//! - Each block stores its absmax (largest |x|). Each value `x` becomes the index of the
//!   nearest of the 16 [`NF4_CODE`] values to `x * (1 / absmax)`, chosen by the decision tree
//!   of bitsandbytes' CUDA `dQuantizeNF4` ([`nf4_index`]).
//! - Two indices share a byte: element `2j` in the high nibble, `2j + 1` in the low nibble. An
//!   odd element count leaves a padding nibble in the last byte, holding the index of
//!   `0.0 * (1 / absmax)` (bitsandbytes loads missing elements as zero).
//! - With double quantization (`compress_statistics=True`, [`Nf4Scales::Double`]) the absmax
//!   vector is itself quantized: `offset = mean(absmax)`, and `absmax - offset` is quantized
//!   blockwise in blocks of [`DOUBLE_QUANT_BLOCK_SIZE`] = 256 to 8-bit indices into the signed
//!   dynamic map ([`dynamic_map`]), with one f32 scale (that block's largest |absmax - offset|)
//!   per block. Decoding is `dynamic_map[code] * scale + offset`.
//!
//! # Which bitsandbytes
//!
//! The reference is bitsandbytes' CUDA path (`csrc/kernels.cu`: `kQuantizeBlockwiseSmall` for
//! NF4, `kQuantizeBlockwise` + `dQuantize<0>` for the 8-bit absmax codes,
//! `kDequantizeBlockwise` for dequantization), which produced the QLoRA checkpoints in the wild.
//! `engine/tests/nf4_bnb.rs` checks this module bit for bit against a fixture that
//! `scripts/nf4_reference.py` makes with bitsandbytes on a GPU. Known, documented differences:
//!
//! - bitsandbytes builds its CUDA kernels with `--use_fast_math`, so `1.0f / absmax` is the
//!   approximate reciprocal instruction, and subnormals are flushed to zero. Here the
//!   reciprocal is IEEE. The two differ by one ulp for about 13% of inputs (measured on an
//!   H200 over all 2^23 mantissas), but a value only lands on a different code when
//!   `x * (1 / absmax)` is within an ulp of a decision threshold: 1 nibble in 33 million in
//!   a stress run against bitsandbytes 0.50.2 on an H200, and no 8-bit absmax code.
//! - `offset` is torch's `mean()` of the absmax vector, a float32 reduction whose summation
//!   order depends on the device. Here the sum is taken in f64, rounded to f32, and multiplied
//!   by `1 / n` as torch's CUDA mean does; it can differ from bitsandbytes' offset by an ulp
//!   or two (seen: 4 of 10 tensors, from 33 to 262144 blocks), which can move an 8-bit code
//!   that sits on a rounding edge. [`Nf4Scales::double_quantize_with_offset`] takes the offset
//!   as given (e.g. one read from a checkpoint) and is then bit-exact.
//! - bitsandbytes' CPU backend differs from its own CUDA kernels, and this module follows
//!   CUDA: the CPU backend (bitsandbytes 0.50.2) gives an all-zero block the index of 0.0 (7)
//!   where CUDA gives 0 (`0 * (1/0)` is NaN and NaN falls through `dQuantizeNF4` to index 0),
//!   uses f32 midpoints as NF4 thresholds (four are one ulp off the kernel's literals, see
//!   [`NF4_THRESHOLDS`]), divides rather than multiplies by the reciprocal in a trailing
//!   partial block, and picks 8-bit codes through a 65536-entry lookup table rather than the
//!   exact nearest-value search (57 of 32768 absmax codes differed in a trial).
//! - A block whose values are all NaN gets absmax 0 here (CUDA reports `-FLT_MAX`).

use rayon::prelude::*;

use crate::{Error, Result};

/// Number of values sharing one absmax in an NF4 tensor (bitsandbytes' default `blocksize`).
pub const NF4_BLOCK_SIZE: usize = 64;

/// Number of absmax values sharing one f32 scale under double quantization (bitsandbytes
/// quantizes the absmax vector with `quantize_blockwise(..., blocksize=256)`).
pub const DOUBLE_QUANT_BLOCK_SIZE: usize = 256;

/// The 16 NF4 code values, indexed by the 4-bit code (bitsandbytes `get_4bit_type("nf4")` and
/// `nf4_dequantization_lut` in `csrc/kernels.cu`): quantiles of N(0, 1) scaled to [-1, 1], with
/// an exact zero at index 7.
// The decimals are kept exactly as bitsandbytes writes them.
#[allow(clippy::excessive_precision)]
pub const NF4_CODE: [f32; 16] = [
    -1.0,
    -0.696_192_800_998_687_7,
    -0.525_073_051_452_636_7,
    -0.394_917_488_098_144_53,
    -0.284_441_381_692_886_35,
    -0.184_773_430_228_233_34,
    -0.091_050_036_251_544_95,
    0.0,
    0.079_580_299_556_255_34,
    0.160_930_201_411_247_25,
    0.246_112_301_945_686_34,
    0.337_915_241_718_292_24,
    0.440_709_829_330_444_34,
    0.562_617_003_917_694_1,
    0.722_956_836_223_602_3,
    1.0,
];

/// The decision thresholds of bitsandbytes' `dQuantizeNF4` (`csrc/kernels.cu`), as the same
/// decimal literals, which rustc and nvcc both round directly to the nearest f32.
/// `NF4_THRESHOLDS[i]` separates codes `i` and `i + 1`: a normalized value strictly greater
/// than it gets an index above `i`, a value equal to it gets `i`. Each is the midpoint of the
/// two codes, but four (indices 0, 8, 12, 14) are one ulp away from the midpoint computed in
/// f32 as `(NF4_CODE[i] + NF4_CODE[i + 1]) / 2`, which bitsandbytes' CPU backend uses; the CUDA
/// kernel, and so this table, uses the literals (unit test `thresholds_are_the_kernel_literals`
/// and the fixture case `nf4_ties` check this).
// The decimals are kept exactly as kernels.cu writes them (rounded once, directly to f32).
#[allow(clippy::excessive_precision)]
pub const NF4_THRESHOLDS: [f32; 15] = [
    -0.848_096_400_499_343_9,
    -0.610_632_926_225_662_2,
    -0.459_995_269_775_390_6,
    -0.339_679_434_895_515_44,
    -0.234_607_405_960_559_84,
    -0.137_911_733_239_889_14,
    -0.045_525_018_125_772_476,
    0.039_790_149_778_127_67,
    0.120_255_250_483_751_3,
    0.203_521_251_678_466_8,
    0.292_013_771_831_989_3,
    0.389_312_535_524_368_3,
    0.501_663_416_624_069_2,
    0.642_786_920_070_648_2,
    0.861_478_418_111_801_1,
];

/// The 4-bit NF4 index of a value already divided by its block's absmax, by the exact decision
/// tree of bitsandbytes' `dQuantizeNF4`: strict `>` comparisons against [`NF4_THRESHOLDS`], so
/// a value exactly on a threshold takes the lower index. NaN fails every comparison and gets
/// index 0, as in bitsandbytes.
pub fn nf4_index(x: f32) -> u8 {
    let t = &NF4_THRESHOLDS;
    if x > t[7] {
        if x > t[11] {
            if x > t[13] {
                if x > t[14] {
                    0b1111
                } else {
                    0b1110
                }
            } else if x > t[12] {
                0b1101
            } else {
                0b1100
            }
        } else if x > t[9] {
            if x > t[10] {
                0b1011
            } else {
                0b1010
            }
        } else if x > t[8] {
            0b1001
        } else {
            0b1000
        }
    } else if x > t[3] {
        if x > t[5] {
            if x > t[6] {
                0b0111
            } else {
                0b0110
            }
        } else if x > t[4] {
            0b0101
        } else {
            0b0100
        }
    } else if x > t[1] {
        if x > t[2] {
            0b0011
        } else {
            0b0010
        }
    } else if x > t[0] {
        0b0001
    } else {
        0b0000
    }
}

/// The signed dynamic 8-bit map that double quantization indexes (bitsandbytes'
/// `create_dynamic_map(signed=True)`), built once.
pub fn dynamic_map() -> &'static [f32; 256] {
    super::dynamic_map::signed_map()
}

/// The 8-bit index of `x` (already divided by its block's absmax) in a sorted 256-entry `code`,
/// exactly as bitsandbytes' CUDA `dQuantize<0>` finds it: a 7-step binary search from index
/// 127, then a choice between the last probe and its bracketing neighbour by comparing `x`
/// with their float32 midpoint `(a + b) * 0.5`. Above the last probe, `x > midpoint` picks the
/// upper neighbour (a tie stays); below it, `x < midpoint` picks the lower one (a tie stays).
pub fn dynamic_index(code: &[f32; 256], x: f32) -> u8 {
    use super::dynamic_map::{closest, probe};
    let mut p = probe(code, x, -1.0);
    // dQuantize compares against the map's own end values where the bracket never moved.
    if p.upper_pivot == 255 {
        p.upper = code[255];
    }
    if p.lower_pivot == 0 {
        p.lower = code[0];
    }
    closest(&p, x)
}

/// Largest |x| of a block, as bitsandbytes' `fmaxf` reduction (NaN is skipped).
fn block_absmax(block: &[f32]) -> f32 {
    block.iter().fold(0.0f32, |m, &x| m.max(x.abs()))
}

/// bitsandbytes' `quantize_blockwise(values, code=dynamic_map, blocksize)` (the 8-bit CUDA
/// kernel, non-stochastic): per block of `blocksize` values (the last may be shorter) the
/// absmax, and each value's [`dynamic_index`] of `x * (1 / absmax)`. Returns
/// `(codes, absmax)` with one code per value and one absmax per block. An all-zero block has
/// absmax 0 and codes 0 (`0 * (1/0)` is NaN, which [`dynamic_index`] sends to 0).
pub fn quantize_blockwise_dynamic(values: &[f32], blocksize: usize) -> (Vec<u8>, Vec<f32>) {
    assert!(blocksize > 0, "blocksize must be positive");
    let code = dynamic_map();
    let n_blocks = values.len().div_ceil(blocksize);
    let mut codes = vec![0u8; values.len()];
    let mut absmax = vec![0f32; n_blocks];
    codes.par_chunks_mut(blocksize).zip(absmax.par_iter_mut()).zip(values.par_chunks(blocksize)).for_each(
        |((out, am), block)| {
            let m = block_absmax(block);
            *am = m;
            let inv = 1.0f32 / m;
            for (o, &x) in out.iter_mut().zip(block) {
                *o = dynamic_index(code, x * inv);
            }
        },
    );
    (codes, absmax)
}

/// bitsandbytes' `dequantize_blockwise`: `dynamic_map[code] * absmax[i / blocksize]` in f32.
pub fn dequantize_blockwise_dynamic(codes: &[u8], absmax: &[f32], blocksize: usize) -> Vec<f32> {
    assert!(blocksize > 0, "blocksize must be positive");
    assert_eq!(absmax.len(), codes.len().div_ceil(blocksize), "one absmax per block");
    let code = dynamic_map();
    codes.iter().enumerate().map(|(i, &c)| code[c as usize] * absmax[i / blocksize]).collect()
}

/// The mean that double quantization subtracts, in the manner of torch's CUDA `mean()` on a
/// float32 tensor: the sum rounded to f32, times the f32 factor `1 / n`. (The sum is taken in
/// f64 here; torch sums in f32 in a device-dependent order, so the two can differ in the last
/// bit.) Returns 0 for an empty slice.
pub fn absmax_mean(absmax: &[f32]) -> f32 {
    if absmax.is_empty() {
        return 0.0;
    }
    let sum: f64 = absmax.iter().map(|&x| x as f64).sum();
    let factor = 1.0f32 / absmax.len() as f32;
    (sum as f32) * factor
}

/// The per-block absmax of an NF4 tensor: plain f32, or double-quantized.
#[derive(Clone, Debug, PartialEq)]
pub enum Nf4Scales {
    /// One f32 absmax per 64-value block (`compress_statistics=False`).
    Plain(Vec<f32>),
    /// Double quantization (`compress_statistics=True`): `absmax[i]` is
    /// `dynamic_map()[codes[i]] * scales[i / 256] + offset`.
    Double {
        /// One 8-bit index into [`dynamic_map`] per 64-value block (bitsandbytes'
        /// `quant_state.absmax`).
        codes: Vec<u8>,
        /// One f32 scale per 256 blocks: the largest |absmax - offset| of those blocks
        /// (bitsandbytes' `quant_state.state2.absmax`).
        scales: Vec<f32>,
        /// The mean of the absmax vector (bitsandbytes' `quant_state.offset`).
        offset: f32,
    },
}

impl Nf4Scales {
    /// Double-quantizes an absmax vector as bitsandbytes' `quantize_4bit(...,
    /// compress_statistics=True)` does, with `offset` = [`absmax_mean`].
    pub fn double_quantize(absmax: &[f32]) -> Nf4Scales {
        Self::double_quantize_with_offset(absmax, absmax_mean(absmax))
    }

    /// Double-quantizes with a given offset: `absmax - offset` (f32) goes through
    /// [`quantize_blockwise_dynamic`] with blocks of 256. Bit-exact with bitsandbytes when
    /// `offset` is the one bitsandbytes computed.
    pub fn double_quantize_with_offset(absmax: &[f32], offset: f32) -> Nf4Scales {
        let centered: Vec<f32> = absmax.iter().map(|&a| a - offset).collect();
        let (codes, scales) = quantize_blockwise_dynamic(&centered, DOUBLE_QUANT_BLOCK_SIZE);
        Nf4Scales::Double { codes, scales, offset }
    }

    /// Number of 64-value blocks these scales describe.
    pub fn n_blocks(&self) -> usize {
        match self {
            Nf4Scales::Plain(a) => a.len(),
            Nf4Scales::Double { codes, .. } => codes.len(),
        }
    }

    /// Decoded absmax of block `i`, with bitsandbytes' f32 arithmetic
    /// (`dequantize_blockwise(codes, state2)` then `+= offset`).
    pub fn block_absmax(&self, i: usize) -> f32 {
        match self {
            Nf4Scales::Plain(a) => a[i],
            Nf4Scales::Double { codes, scales, offset } => {
                dynamic_map()[codes[i] as usize] * scales[i / DOUBLE_QUANT_BLOCK_SIZE] + offset
            }
        }
    }

    /// Decoded absmax of blocks `start..end`.
    pub fn decode_range(&self, start: usize, end: usize) -> Vec<f32> {
        (start..end).map(|i| self.block_absmax(i)).collect()
    }

    /// Bytes these scales occupy: 4 per block when plain; 1 per block, 4 per scale and 4 for
    /// the offset when double-quantized.
    pub fn storage_bytes(&self) -> usize {
        match self {
            Nf4Scales::Plain(a) => 4 * a.len(),
            Nf4Scales::Double { codes, scales, .. } => codes.len() + 4 * scales.len() + 4,
        }
    }
}

/// A frozen weight stored as NF4, laid out exactly as bitsandbytes stores it (see the module
/// docs). Values are addressed in row-major order of `shape`.
#[derive(Clone, Debug, PartialEq)]
pub struct Nf4Weight {
    shape: Vec<usize>,
    packed: Vec<u8>,
    scales: Nf4Scales,
}

/// Elements per rayon task when dequantizing (a multiple of the block size).
const DEQUANT_CHUNK: usize = 64 * NF4_BLOCK_SIZE;

fn checked_numel(shape: &[usize]) -> Result<usize> {
    if shape.is_empty() {
        return Err(Error::Msg("nf4: shape must have at least one dimension".into()));
    }
    let n = shape
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| Error::Msg(format!("nf4: shape {shape:?} overflows usize")))?;
    if n == 0 {
        return Err(Error::Msg(format!("nf4: shape {shape:?} has no elements")));
    }
    Ok(n)
}

impl Nf4Weight {
    /// Quantizes `values` (row-major, `shape.iter().product()` of them) to NF4 with blocks of
    /// 64, as `bitsandbytes.functional.quantize_4bit(w, quant_type="nf4", blocksize=64,
    /// compress_statistics=double_quant)` does on CUDA. For bf16/f16 weights, widen to f32
    /// first (exact, as bitsandbytes does in its kernel).
    ///
    /// Errors: an empty shape, a zero-sized shape, or a `values` length that does not match.
    pub fn quantize(values: &[f32], shape: &[usize], double_quant: bool) -> Result<Nf4Weight> {
        let n = checked_numel(shape)?;
        if values.len() != n {
            return Err(Error::Msg(format!("nf4: {} values for shape {shape:?} ({n} elements)", values.len())));
        }
        let n_blocks = n.div_ceil(NF4_BLOCK_SIZE);
        let mut packed = vec![0u8; n.div_ceil(2)];
        let mut absmax = vec![0f32; n_blocks];
        packed
            .par_chunks_mut(NF4_BLOCK_SIZE / 2)
            .zip(absmax.par_iter_mut())
            .zip(values.par_chunks(NF4_BLOCK_SIZE))
            .for_each(|((out, am), block)| {
                let m = block_absmax(block);
                *am = m;
                // bitsandbytes multiplies by the reciprocal (it never divides by absmax).
                let inv = 1.0f32 / m;
                for (byte, pair) in out.iter_mut().zip(block.chunks(2)) {
                    let hi = nf4_index(pair[0] * inv);
                    // A missing odd element is loaded as 0.0 by the CUDA kernel.
                    let lo = nf4_index(pair.get(1).copied().unwrap_or(0.0) * inv);
                    *byte = (hi << 4) | lo;
                }
            });
        let scales = if double_quant { Nf4Scales::double_quantize(&absmax) } else { Nf4Scales::Plain(absmax) };
        Ok(Nf4Weight { shape: shape.to_vec(), packed, scales })
    }

    /// Builds a weight from stored parts, e.g. the tensors of a bitsandbytes / Hugging Face
    /// 4-bit checkpoint: `weight` (the packed bytes, flattened), and either `absmax` (plain) or
    /// `absmax` (u8 codes) + `nested_absmax` (scales) + `nested_offset`, for checkpoints made
    /// with blocksize 64, nested blocksize 256 and the signed dynamic map as
    /// `nested_quant_map` (the caller checks those). Checks that every length matches
    /// `shape`.
    pub fn from_parts(shape: &[usize], packed: Vec<u8>, scales: Nf4Scales) -> Result<Nf4Weight> {
        let n = checked_numel(shape)?;
        let n_blocks = n.div_ceil(NF4_BLOCK_SIZE);
        if packed.len() != n.div_ceil(2) {
            return Err(Error::Msg(format!(
                "nf4: {} packed bytes for {n} elements (expected {})",
                packed.len(),
                n.div_ceil(2)
            )));
        }
        if scales.n_blocks() != n_blocks {
            return Err(Error::Msg(format!(
                "nf4: {} absmax entries for {n} elements (expected {n_blocks})",
                scales.n_blocks()
            )));
        }
        if let Nf4Scales::Double { scales: s, .. } = &scales {
            let expected = n_blocks.div_ceil(DOUBLE_QUANT_BLOCK_SIZE);
            if s.len() != expected {
                return Err(Error::Msg(format!(
                    "nf4: {} double-quant scales for {n_blocks} blocks (expected {expected})",
                    s.len()
                )));
            }
        }
        Ok(Nf4Weight { shape: shape.to_vec(), packed, scales })
    }

    /// The logical shape, e.g. `[out_features, in_features]`.
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// Number of logical elements.
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    /// Number of 64-value blocks (= number of absmax values).
    pub fn n_blocks(&self) -> usize {
        self.scales.n_blocks()
    }

    /// The packed 4-bit indices, `ceil(numel / 2)` bytes: element `2j` in the high nibble of
    /// byte `j`, element `2j + 1` in its low nibble (bitsandbytes' `quantize_4bit` output,
    /// flattened).
    pub fn packed(&self) -> &[u8] {
        &self.packed
    }

    /// The stored absmax, plain or double-quantized.
    pub fn scales(&self) -> &Nf4Scales {
        &self.scales
    }

    /// Whether the absmax is double-quantized.
    pub fn is_double_quant(&self) -> bool {
        matches!(self.scales, Nf4Scales::Double { .. })
    }

    /// The 4-bit index of element `i` (flat, row-major).
    pub fn index(&self, i: usize) -> u8 {
        let byte = self.packed[i / 2];
        if i & 1 == 0 {
            byte >> 4
        } else {
            byte & 0x0F
        }
    }

    /// The decoded absmax of every block (exact when plain).
    pub fn absmax(&self) -> Vec<f32> {
        self.scales.decode_range(0, self.n_blocks())
    }

    /// The 2-D view this weight is streamed in: `(rows, cols)` with `cols` the last dimension
    /// and `rows` the product of the others (1 for a 1-D shape).
    pub fn rows_cols(&self) -> (usize, usize) {
        let cols = *self.shape.last().expect("shape is never empty");
        (self.numel() / cols, cols)
    }

    /// Dequantizes the whole tensor to f32, as bitsandbytes' `dequantize_4bit` does:
    /// `NF4_CODE[index] * absmax` in f32, with the absmax decoded first when double-quantized.
    pub fn dequantize(&self) -> Vec<f32> {
        let mut out = vec![0f32; self.numel()];
        self.dequantize_flat(0, &mut out);
        out
    }

    /// Dequantizes rows `row_start..row_start + n_rows` of the [`rows_cols`](Self::rows_cols)
    /// view into `out` (length `n_rows * cols`), for streaming a weight in row panels. Blocks
    /// that straddle the panel's edges are handled.
    pub fn dequantize_rows(&self, row_start: usize, n_rows: usize, out: &mut [f32]) -> Result<()> {
        let (rows, cols) = self.rows_cols();
        let row_end = row_start.checked_add(n_rows).filter(|&e| e <= rows).ok_or_else(|| {
            Error::Msg(format!("nf4: rows {row_start}..{row_start}+{n_rows} out of range for {rows} rows"))
        })?;
        if out.len() != n_rows * cols {
            return Err(Error::Msg(format!(
                "nf4: output holds {} values, rows {row_start}..{row_end} need {}",
                out.len(),
                n_rows * cols
            )));
        }
        self.dequantize_flat(row_start * cols, out);
        Ok(())
    }

    /// Dequantizes flat elements `start..start + out.len()` into `out`.
    fn dequantize_flat(&self, start: usize, out: &mut [f32]) {
        if out.is_empty() {
            return;
        }
        let end = start + out.len();
        let first_block = start / NF4_BLOCK_SIZE;
        let absmax = self.scales.decode_range(first_block, end.div_ceil(NF4_BLOCK_SIZE));
        out.par_chunks_mut(DEQUANT_CHUNK).enumerate().for_each(|(c, chunk)| {
            let base = start + c * DEQUANT_CHUNK;
            for (k, o) in chunk.iter_mut().enumerate() {
                let e = base + k;
                let scale = absmax[e / NF4_BLOCK_SIZE - first_block];
                *o = NF4_CODE[self.index(e) as usize] * scale;
            }
        });
    }

    /// Bytes this weight occupies: the packed indices plus the scales (about 4.127 bits per
    /// value with double quantization, 4.5 without).
    pub fn storage_bytes(&self) -> usize {
        self.packed.len() + self.scales.storage_bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::dynamic_map::torch_linspace_f32;

    /// Small deterministic generator (xorshift64*), so the tests need no extra crates.
    struct Rng(u64);

    impl Rng {
        fn next_u64(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
        }
        /// Uniform in (0, 1).
        fn uniform(&mut self) -> f64 {
            ((self.next_u64() >> 11) as f64 + 0.5) / (1u64 << 53) as f64
        }
        /// Standard normal (Box-Muller).
        fn normal(&mut self) -> f32 {
            let (u, v) = (self.uniform(), self.uniform());
            ((-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()) as f32
        }
    }

    fn randn(n: usize, std: f32, seed: u64) -> Vec<f32> {
        let mut rng = Rng(seed);
        (0..n).map(|_| rng.normal() * std).collect()
    }

    fn next_up(x: f32) -> f32 {
        if x == 0.0 {
            f32::from_bits(1)
        } else if x > 0.0 {
            f32::from_bits(x.to_bits() + 1)
        } else {
            f32::from_bits(x.to_bits() - 1)
        }
    }

    fn next_down(x: f32) -> f32 {
        -next_up(-x)
    }

    /// Half the largest gap between neighbouring NF4 codes: (1.0 - 0.7229568) / 2, the worst
    /// rounding error of a normalized value.
    fn nf4_half_max_gap() -> f32 {
        NF4_CODE.windows(2).map(|w| w[1] - w[0]).fold(0.0, f32::max) / 2.0
    }

    #[test]
    fn thresholds_are_the_kernel_literals() {
        // kernels.cu's dQuantizeNF4 literals are the midpoints of neighbouring code values
        // (generated by bitsandbytes' tests/test_functional.py::test_normal_map_tree), printed
        // as decimals. Eleven of them round to the f32 midpoint (code[i] + code[i+1]) / 2;
        // four (0, 8, 12, 14) lie within 1e-16 of halfway between two floats and nvcc, like
        // rustc, rounds the decimal directly to the float one ulp away. Bits below were printed
        // by device code built with nvcc 13.0 --use_fast_math (`bf591cd9 3df64863 3f006d03
        // 3f5c89d9`), and the `nf4_ties` case of the bitsandbytes fixture confirms them.
        let kernel_bits: [(usize, u32); 4] = [(0, 0xbf591cd9), (8, 0x3df64863), (12, 0x3f006d03), (14, 0x3f5c89d9)];
        for (i, bits) in kernel_bits {
            assert_eq!(NF4_THRESHOLDS[i].to_bits(), bits, "threshold {i}");
        }
        for i in 0..15 {
            let mid = (NF4_CODE[i] + NF4_CODE[i + 1]) / 2.0;
            let ulps = (mid.to_bits() as i64 - NF4_THRESHOLDS[i].to_bits() as i64).abs();
            let expected = if kernel_bits.iter().any(|&(k, _)| k == i) { 1 } else { 0 };
            assert_eq!(ulps, expected, "threshold {i} vs the f32 midpoint");
        }
        // From DESIGN.md's codes: the midpoint of codes 7 and 8 is (0 + 0.0796)/2.
        assert_eq!(NF4_THRESHOLDS[7], NF4_CODE[8] / 2.0);
    }

    #[test]
    fn nf4_index_at_each_threshold() {
        // dQuantizeNF4 compares with strict `>`: a value exactly on the midpoint between codes
        // i and i+1 takes i; one ulp above takes i+1; one ulp below takes i.
        for (i, &t) in NF4_THRESHOLDS.iter().enumerate() {
            assert_eq!(nf4_index(t), i as u8, "on threshold {i} ({t})");
            assert_eq!(nf4_index(next_up(t)), i as u8 + 1, "above threshold {i}");
            assert_eq!(nf4_index(next_down(t)), i as u8, "below threshold {i}");
        }
        for (i, &c) in NF4_CODE.iter().enumerate() {
            assert_eq!(nf4_index(c), i as u8, "code value {i} maps to itself");
        }
        // Out-of-range values saturate; NaN fails every `>` and lands on index 0 as in CUDA.
        assert_eq!(nf4_index(1.5), 15);
        assert_eq!(nf4_index(-1.5), 0);
        assert_eq!(nf4_index(f32::NAN), 0);
        assert_eq!(nf4_index(-0.0), 7);
    }

    #[test]
    fn nf4_index_is_nearest_code() {
        let mut rng = Rng(7);
        for _ in 0..100_000 {
            let x = (rng.uniform() * 2.0 - 1.0) as f32;
            let q = nf4_index(x) as usize;
            let d = (NF4_CODE[q] - x).abs();
            for (j, &c) in NF4_CODE.iter().enumerate() {
                assert!(d <= (c - x).abs(), "x={x}: picked {q}, code {j} is nearer");
            }
        }
    }

    #[test]
    fn linspace_matches_torch() {
        // torch.linspace(0.1, 1, n, dtype=torch.float32).view(torch.int32), printed by torch
        // 2.15 on x86-64. Element 3 of n=9 is 0x3ee00000 (0.4375) only with torch's
        // fused multiply-add; a plain `start + step * i` gives the neighbouring float.
        let expect9: [u32; 9] = [
            0x3dcccccd, 0x3e59999a, 0x3ea66666, 0x3ee00000, 0x3f0ccccd, 0x3f29999a, 0x3f466666, 0x3f633333, 0x3f800000,
        ];
        let expect17: [u32; 17] = [
            0x3dcccccd, 0x3e200000, 0x3e59999a, 0x3e89999a, 0x3ea66666, 0x3ec33333, 0x3ee00000, 0x3efccccc, 0x3f0ccccd,
            0x3f1b3333, 0x3f29999a, 0x3f380000, 0x3f466666, 0x3f54cccd, 0x3f633333, 0x3f71999a, 0x3f800000,
        ];
        let got9: Vec<u32> = torch_linspace_f32(0.1, 1.0, 9).iter().map(|x| x.to_bits()).collect();
        let got17: Vec<u32> = torch_linspace_f32(0.1, 1.0, 17).iter().map(|x| x.to_bits()).collect();
        assert_eq!(got9, expect9);
        assert_eq!(got17, expect17);
    }

    #[test]
    fn dynamic_map_matches_bitsandbytes() {
        let m = dynamic_map();
        // Values printed from bitsandbytes 0.50.2 `create_dynamic_map(signed=True)` (torch 2.15):
        let spots: [(usize, u32); 9] = [
            (0, 0xbf7e3333),   // -0.99296874: the map has no -1.0
            (1, 0xbf7a999a),   // -0.97890627
            (63, 0xbddb3334),  // -0.10703126
            (126, 0xb513a3b7), // -5.5e-7
            (127, 0x0000_0000),
            (128, 0x3513a3b7),
            (200, 0x3e6f3333), // 0.23359375
            (254, 0x3f7e3333),
            (255, 0x3f80_0000), // 1.0
        ];
        for (i, bits) in spots {
            assert_eq!(m[i].to_bits(), bits, "entry {i} = {}", m[i]);
        }
        // Order-sensitive checksum of all 256 bit patterns, sum((i + 1) * bits[i]), of the
        // same bitsandbytes map.
        let sum: u64 = m.iter().enumerate().map(|(i, x)| (i as u64 + 1) * x.to_bits() as u64).sum();
        assert_eq!(sum, 51_200_865_550_848);
        assert!(m.windows(2).all(|w| w[0] < w[1]), "sorted, distinct");
        for k in 0..127 {
            assert_eq!(m[126 - k], -m[128 + k], "symmetric around index 127");
        }
    }

    #[test]
    fn dynamic_index_nearest_and_ties() {
        let m = dynamic_map();
        for (j, &c) in m.iter().enumerate() {
            assert_eq!(dynamic_index(m, c) as usize, j, "code value {j} maps to itself");
        }
        for j in 0..255 {
            let mid = (m[j] + m[j + 1]) * 0.5;
            // Off the midpoint the choice is the nearest code.
            assert_eq!(dynamic_index(m, next_up(mid)) as usize, j + 1, "above mid {j}");
            assert_eq!(dynamic_index(m, next_down(mid)) as usize, j, "below mid {j}");
            // On it, dQuantize keeps its last probe: either neighbour, fixed by the search path
            // (the fixture test checks the exact choice against bitsandbytes).
            let tie = dynamic_index(m, mid) as usize;
            assert!(tie == j || tie == j + 1, "tie {j} -> {tie}");
        }
        assert_eq!(dynamic_index(m, -1.0), 0);
        assert_eq!(dynamic_index(m, 1.0), 255);
        assert_eq!(dynamic_index(m, f32::NAN), 0);
    }

    #[test]
    fn packing_order_high_nibble_first() {
        // absmax is 1.0 (element 0), so each value is its own normalized value; the values are
        // code points, so the indices are known: 1.0 -> 15, -1.0 -> 0, 0.0 -> 7, 0.0796 -> 8,
        // -0.0911 -> 6, 0.5626 -> 13.
        let mut v = vec![0.0f32; 64];
        v[..6].copy_from_slice(&[1.0, -1.0, 0.0, NF4_CODE[8], NF4_CODE[6], NF4_CODE[13]]);
        let w = Nf4Weight::quantize(&v, &[64], false).unwrap();
        assert_eq!(&w.packed()[..3], &[0xF0, 0x78, 0x6D]);
        assert!(w.packed()[3..].iter().all(|&b| b == 0x77), "zeros are index 7");
        assert_eq!(w.index(0), 15);
        assert_eq!(w.index(1), 0);
        assert_eq!(w.index(5), 13);
        assert_eq!(w.absmax(), vec![1.0]);
    }

    #[test]
    fn round_trip_error_bound() {
        let (rows, cols) = (37, 200); // 7400 values: blocks straddle rows, last block partial
        let mut v = randn(rows * cols, 0.02, 1);
        v[123] = 0.9; // an outlier
        let half_gap = nf4_half_max_gap();
        let w = Nf4Weight::quantize(&v, &[rows, cols], false).unwrap();
        let am = w.absmax();
        let d = w.dequantize();
        for (i, (&x, &y)) in v.iter().zip(&d).enumerate() {
            let a = am[i / NF4_BLOCK_SIZE];
            // |x/a - code| <= half gap; the f32 reciprocal and products add a few ulps.
            let bound = a * half_gap * (1.0 + 1e-6);
            assert!((x - y).abs() <= bound, "element {i}: {x} vs {y}, bound {bound}");
        }
        // Each block's absmax element is reproduced exactly (index 0 or 15 times absmax).
        for (b, &a) in am.iter().enumerate() {
            let block = &v[b * 64..((b + 1) * 64).min(v.len())];
            assert_eq!(a, block.iter().fold(0.0f32, |m, x| m.max(x.abs())));
        }
    }

    #[test]
    fn zero_block_has_no_nan() {
        let mut v = randn(64 * 3, 1.0, 2);
        v[64..128].iter_mut().for_each(|x| *x = 0.0);
        for dq in [false, true] {
            let w = Nf4Weight::quantize(&v, &[3, 64], dq).unwrap();
            // bitsandbytes' CUDA kernel: 0 * (1/0) = NaN, which dQuantizeNF4 sends to 0.
            assert!(w.packed()[32..64].iter().all(|&b| b == 0x00));
            let d = w.dequantize();
            assert!(d.iter().all(|x| x.is_finite()), "no NaN/inf (double quant {dq})");
            if !dq {
                assert_eq!(w.absmax()[1], 0.0);
                assert!(d[64..128].iter().all(|&x| x == 0.0));
            } else {
                // The decoded absmax is only near 0: error of the 8-bit code of -offset.
                let a = w.absmax()[1];
                assert!(a.abs() < 0.02 * w.absmax()[0].max(w.absmax()[2]), "{a}");
                assert!(d[64..128].iter().all(|&x| x == -a));
            }
        }
    }

    #[test]
    fn partial_trailing_block_and_odd_count() {
        let n = 2 * 64 + 37; // odd, last block holds 37 values
        let v = randn(n, 0.5, 3);
        let w = Nf4Weight::quantize(&v, &[n], false).unwrap();
        assert_eq!(w.packed().len(), n.div_ceil(2));
        assert_eq!(w.n_blocks(), 3);
        // The last block quantizes exactly as the 37 values on their own.
        let tail = Nf4Weight::quantize(&v[128..], &[37], false).unwrap();
        assert_eq!(&w.packed()[64..], tail.packed());
        assert_eq!(w.absmax()[2], tail.absmax()[0]);
        // The padding nibble is the index of 0.0 (7): bitsandbytes loads missing values as 0.
        assert_eq!(w.packed()[n / 2] & 0x0F, 7);
        let d = w.dequantize();
        assert_eq!(d.len(), n);
        assert_eq!(&d[128..], &tail.dequantize()[..]);
    }

    #[test]
    fn double_quant_absmax_error_bound() {
        // 300 blocks: two 256-blocks of absmax codes, the second partial.
        let n = 300 * 64 + 10;
        let mut v = randn(n, 0.02, 4);
        for i in (0..n).step_by(997) {
            v[i] *= 40.0; // outliers spread the absmax distribution
        }
        let plain = Nf4Weight::quantize(&v, &[n], false).unwrap();
        let dq = Nf4Weight::quantize(&v, &[n], true).unwrap();
        assert_eq!(plain.packed(), dq.packed(), "the 4-bit indices do not depend on dq");
        let exact = plain.absmax();
        let decoded = dq.absmax();
        let Nf4Scales::Double { codes, scales, offset } = dq.scales() else { panic!("expected double quant") };
        assert_eq!(codes.len(), 301);
        assert_eq!(scales.len(), 2);
        assert_eq!(*offset, absmax_mean(&exact));
        // Worst rounding of a normalized value onto the dynamic map: half its largest gap, or
        // the distance from -1 to its smallest entry -0.99296874.
        let m = dynamic_map();
        let half_gap = m.windows(2).map(|w| w[1] - w[0]).fold(0.0, f32::max) / 2.0;
        let worst = half_gap.max(1.0 + m[0]);
        for (i, (&a, &b)) in exact.iter().zip(&decoded).enumerate() {
            let s = scales[i / DOUBLE_QUANT_BLOCK_SIZE];
            let bound = s * worst * 1.0001 + 4.0 * f32::EPSILON * a;
            assert!((a - b).abs() <= bound, "block {i}: {a} vs {b} (bound {bound})");
            assert_eq!(s, {
                let blk = i / 256 * 256;
                exact[blk..(blk + 256).min(exact.len())].iter().fold(0.0f32, |mx, &x| mx.max((x - offset).abs()))
            });
        }
        // The dequantized weight uses the decoded absmax.
        let d = dq.dequantize();
        for i in (0..n).step_by(61) {
            assert_eq!(d[i], NF4_CODE[dq.index(i) as usize] * decoded[i / 64]);
        }
    }

    #[test]
    fn dequantize_rows_matches_full() {
        let (rows, cols) = (13, 100); // 100 is not a multiple of 64: blocks straddle rows
        let v = randn(rows * cols, 1.0, 5);
        for dq in [false, true] {
            let w = Nf4Weight::quantize(&v, &[rows, cols], dq).unwrap();
            let full = w.dequantize();
            for (start, len) in [(0, 13), (0, 1), (3, 4), (12, 1), (5, 0)] {
                let mut out = vec![f32::NAN; len * cols];
                w.dequantize_rows(start, len, &mut out).unwrap();
                assert_eq!(&out[..], &full[start * cols..(start + len) * cols]);
            }
            let mut out = vec![0.0; 2 * cols];
            assert!(w.dequantize_rows(12, 2, &mut out).is_err(), "past the last row");
            assert!(w.dequantize_rows(0, 1, &mut out).is_err(), "wrong out length");
        }
        // A 3-D shape streams as [2*3, 70].
        let v = randn(2 * 3 * 70, 1.0, 6);
        let w = Nf4Weight::quantize(&v, &[2, 3, 70], true).unwrap();
        assert_eq!(w.rows_cols(), (6, 70));
        let mut out = vec![0.0; 2 * 70];
        w.dequantize_rows(4, 2, &mut out).unwrap();
        assert_eq!(&out[..], &w.dequantize()[4 * 70..]);
    }

    #[test]
    fn bad_shapes_are_errors() {
        assert!(Nf4Weight::quantize(&[1.0; 6], &[2, 4], false).is_err());
        assert!(Nf4Weight::quantize(&[], &[0, 4], false).is_err());
        assert!(Nf4Weight::quantize(&[1.0], &[], false).is_err());
        assert!(Nf4Weight::quantize(&[1.0], &[usize::MAX, 2], false).is_err());
        assert!(Nf4Weight::from_parts(&[4], vec![0; 3], Nf4Scales::Plain(vec![1.0])).is_err());
        assert!(Nf4Weight::from_parts(&[4], vec![0; 2], Nf4Scales::Plain(vec![])).is_err());
        let bad = Nf4Scales::Double { codes: vec![0; 1], scales: vec![], offset: 0.0 };
        assert!(Nf4Weight::from_parts(&[4], vec![0; 2], bad).is_err());
    }

    #[test]
    fn from_parts_round_trip_and_storage() {
        let v = randn(4096 + 64, 1.0, 8);
        let w = Nf4Weight::quantize(&v, &[65, 64], true).unwrap();
        let again = Nf4Weight::from_parts(w.shape(), w.packed().to_vec(), w.scales().clone()).unwrap();
        assert_eq!(again, w);
        // 65 blocks: 2080 packed bytes, 65 codes, 1 scale, 1 offset.
        assert_eq!(w.storage_bytes(), 2080 + 65 + 4 + 4);
        let plain = Nf4Weight::quantize(&v, &[65, 64], false).unwrap();
        assert_eq!(plain.storage_bytes(), 2080 + 65 * 4);
        assert!(!plain.is_double_quant() && w.is_double_quant());
    }

    #[test]
    fn blockwise_dynamic_round_trip() {
        let v = randn(1000, 3.0, 9);
        let (codes, absmax) = quantize_blockwise_dynamic(&v, 256);
        assert_eq!(absmax.len(), 4);
        let d = dequantize_blockwise_dynamic(&codes, &absmax, 256);
        let m = dynamic_map();
        let half_gap = m.windows(2).map(|w| w[1] - w[0]).fold(0.0, f32::max) / 2.0;
        for (i, (&x, &y)) in v.iter().zip(&d).enumerate() {
            assert!((x - y).abs() <= absmax[i / 256] * half_gap * 1.0001, "{i}: {x} vs {y}");
        }
    }
}
