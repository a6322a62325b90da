//! GGML tensor types and block formats, as llama.cpp stores them in GGUF files.
//!
//! [`GgmlType`] lists every type id of `enum ggml_type` in llama.cpp's `ggml.h` (ids 4, 5 and
//! 31..=33, 36..=38 were removed upstream and are unknown here too), with its block size and
//! bytes per block (`ggml_blck_size` / `ggml_type_size`).
//!
//! [`dequantize`] expands blocks to f32 exactly as `ggml-quants.c`'s `dequantize_row_*` do
//! (same operations in the same order, so results are bit-identical) for f32, f16, bf16,
//! q4_0, q4_1, q5_0, q5_1, q8_0, q4_K, q5_K and q6_K. [`quantize`] packs f32 values the way
//! the reference `quantize_row_*_ref` functions do (what llama.cpp's `ggml_quantize_chunk`
//! runs without an importance matrix, so `llama-quantize` writes the same bytes) for the
//! same eleven types: same float operations in the same order, so the bytes are identical
//! (checked against `ggml_quantize_chunk` of the llama.cpp build in the `xllamacpp` wheel).
//! Other types are recognized but report an error naming the type.
//!
//! Block layouts (little-endian, `d`/`m` are f16):
//! - q8_0: `d`, 32 x i8; value = q * d.
//! - q4_0: `d`, 16 bytes; element j in the low nibble of byte j, element j+16 in its high
//!   nibble; value = (q - 8) * d.
//! - q4_1: `d`, `m`, 16 bytes as q4_0; value = q * d + m.
//! - q5_0 / q5_1: as q4_0 / q4_1 with a 32-bit mask `qh` (after `d`/`m`) giving each
//!   element's fifth bit; q5_0 subtracts 16.
//! - q4_K / q5_K / q6_K: 256-element super-blocks with 6-bit (K4/K5) or 8-bit (K6) sub-block
//!   scales, see the functions below.

use crate::{bail, Error, Result};
use half::{bf16, f16};
use rayon::prelude::*;
use std::fmt;

/// A GGML tensor element type, with llama.cpp's numeric id (`enum ggml_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[allow(non_camel_case_types)]
pub enum GgmlType {
    F32,
    F16,
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q8_0,
    Q8_1,
    Q2_K,
    Q3_K,
    Q4_K,
    Q5_K,
    Q6_K,
    Q8_K,
    IQ2_XXS,
    IQ2_XS,
    IQ3_XXS,
    IQ1_S,
    IQ4_NL,
    IQ3_S,
    IQ2_S,
    IQ4_XS,
    I8,
    I16,
    I32,
    I64,
    F64,
    IQ1_M,
    BF16,
    TQ1_0,
    TQ2_0,
    MXFP4,
    NVFP4,
    Q1_0,
    Q2_0,
}

/// Every known type with (id, name, elements per block, bytes per block), from ggml's
/// `type_traits` table (checked against `ggml_type_name`/`ggml_blck_size`/`ggml_type_size`
/// of the llama.cpp build in the `xllamacpp` wheel).
const TYPES: [(GgmlType, u32, &str, usize, usize); 35] = [
    (GgmlType::F32, 0, "f32", 1, 4),
    (GgmlType::F16, 1, "f16", 1, 2),
    (GgmlType::Q4_0, 2, "q4_0", 32, 18),
    (GgmlType::Q4_1, 3, "q4_1", 32, 20),
    (GgmlType::Q5_0, 6, "q5_0", 32, 22),
    (GgmlType::Q5_1, 7, "q5_1", 32, 24),
    (GgmlType::Q8_0, 8, "q8_0", 32, 34),
    (GgmlType::Q8_1, 9, "q8_1", 32, 36),
    (GgmlType::Q2_K, 10, "q2_K", 256, 84),
    (GgmlType::Q3_K, 11, "q3_K", 256, 110),
    (GgmlType::Q4_K, 12, "q4_K", 256, 144),
    (GgmlType::Q5_K, 13, "q5_K", 256, 176),
    (GgmlType::Q6_K, 14, "q6_K", 256, 210),
    (GgmlType::Q8_K, 15, "q8_K", 256, 292),
    (GgmlType::IQ2_XXS, 16, "iq2_xxs", 256, 66),
    (GgmlType::IQ2_XS, 17, "iq2_xs", 256, 74),
    (GgmlType::IQ3_XXS, 18, "iq3_xxs", 256, 98),
    (GgmlType::IQ1_S, 19, "iq1_s", 256, 50),
    (GgmlType::IQ4_NL, 20, "iq4_nl", 32, 18),
    (GgmlType::IQ3_S, 21, "iq3_s", 256, 110),
    (GgmlType::IQ2_S, 22, "iq2_s", 256, 82),
    (GgmlType::IQ4_XS, 23, "iq4_xs", 256, 136),
    (GgmlType::I8, 24, "i8", 1, 1),
    (GgmlType::I16, 25, "i16", 1, 2),
    (GgmlType::I32, 26, "i32", 1, 4),
    (GgmlType::I64, 27, "i64", 1, 8),
    (GgmlType::F64, 28, "f64", 1, 8),
    (GgmlType::IQ1_M, 29, "iq1_m", 256, 56),
    (GgmlType::BF16, 30, "bf16", 1, 2),
    (GgmlType::TQ1_0, 34, "tq1_0", 256, 54),
    (GgmlType::TQ2_0, 35, "tq2_0", 256, 66),
    (GgmlType::MXFP4, 39, "mxfp4", 32, 17),
    (GgmlType::NVFP4, 40, "nvfp4", 64, 36),
    (GgmlType::Q1_0, 41, "q1_0", 128, 18),
    (GgmlType::Q2_0, 42, "q2_0", 64, 18),
];

impl GgmlType {
    /// Every known type, in id order.
    pub fn all() -> impl Iterator<Item = GgmlType> {
        TYPES.iter().map(|t| t.0)
    }

    /// The type with llama.cpp id `id`, or `None` for ids ggml does not define (or removed).
    pub fn from_id(id: u32) -> Option<GgmlType> {
        TYPES.iter().find(|t| t.1 == id).map(|t| t.0)
    }

    fn entry(self) -> &'static (GgmlType, u32, &'static str, usize, usize) {
        // Every variant has exactly one row in TYPES (checked by a unit test).
        TYPES.iter().find(|t| t.0 == self).unwrap_or(&TYPES[0])
    }

    /// llama.cpp's numeric id.
    pub fn id(self) -> u32 {
        self.entry().1
    }

    /// ggml's name (`ggml_type_name`), e.g. `"q4_0"`, `"q6_K"`, `"bf16"`.
    pub fn name(self) -> &'static str {
        self.entry().2
    }

    /// Elements per block (1 for plain element types).
    pub fn block_size(self) -> usize {
        self.entry().3
    }

    /// Bytes per block.
    pub fn type_size(self) -> usize {
        self.entry().4
    }

    /// Bytes taken by `n_elements` elements, or `None` when `n_elements` is not a whole
    /// number of blocks (or the size overflows).
    pub fn bytes_for(self, n_elements: u64) -> Option<u64> {
        let bs = self.block_size() as u64;
        if !n_elements.is_multiple_of(bs) {
            return None;
        }
        (n_elements / bs).checked_mul(self.type_size() as u64)
    }

    /// Whether [`dequantize`] supports this type.
    pub fn can_dequantize(self) -> bool {
        dequant_block(self).is_some()
    }

    /// Whether [`quantize`] supports this type.
    pub fn can_quantize(self) -> bool {
        quant_block(self).is_some()
    }
}

impl fmt::Display for GgmlType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Blocks handed to one rayon task.
const BLOCKS_PER_TASK: usize = 512;

fn f16_at(b: &[u8], i: usize) -> f32 {
    f16::from_le_bytes([b[i], b[i + 1]]).to_f32()
}

/// Checks that `src` holds exactly the blocks of `n` elements of type `ty`.
fn check_sizes(op: &str, ty: GgmlType, src_bytes: usize, n: usize) -> Result<()> {
    let bs = ty.block_size();
    if !n.is_multiple_of(bs) {
        bail!("{op} {ty}: {n} elements is not a multiple of the block size {bs}");
    }
    let want = n / bs * ty.type_size();
    if src_bytes != want {
        bail!("{op} {ty}: {n} elements take {want} bytes, got {src_bytes}");
    }
    Ok(())
}

/// The error for a type `op` does not support, listing those it does.
fn unsupported(op: &str, ty: GgmlType, supported: fn(GgmlType) -> bool) -> Error {
    let list: Vec<&str> = GgmlType::all().filter(|&t| supported(t)).map(GgmlType::name).collect();
    Error::Msg(format!("{op}: GGML type {ty} (id {}) is not supported (supported: {})", ty.id(), list.join(", ")))
}

/// Dequantizes one block (`type_size` bytes into `block_size` values).
type DequantBlock = fn(&[u8], &mut [f32]);

fn dequant_block(ty: GgmlType) -> Option<DequantBlock> {
    Some(match ty {
        GgmlType::F32 => |s, d| d[0] = f32::from_le_bytes([s[0], s[1], s[2], s[3]]),
        GgmlType::F16 => |s, d| d[0] = f16_at(s, 0),
        GgmlType::BF16 => |s, d| d[0] = bf16::from_le_bytes([s[0], s[1]]).to_f32(),
        GgmlType::Q8_0 => dequant_q8_0,
        GgmlType::Q4_0 => dequant_q4_0,
        GgmlType::Q4_1 => dequant_q4_1,
        GgmlType::Q5_0 => dequant_q5_0,
        GgmlType::Q5_1 => dequant_q5_1,
        GgmlType::Q4_K => dequant_q4_k,
        GgmlType::Q5_K => dequant_q5_k,
        GgmlType::Q6_K => dequant_q6_k,
        _ => return None,
    })
}

/// Expands `src` (whole blocks of type `ty`) into `dst`, one f32 per element, exactly as
/// ggml's `dequantize_row_*`. `dst.len()` is the element count; `src` must be its size.
pub fn dequantize(ty: GgmlType, src: &[u8], dst: &mut [f32]) -> Result<()> {
    let block = dequant_block(ty).ok_or_else(|| unsupported("dequantize", ty, GgmlType::can_dequantize))?;
    check_sizes("dequantize", ty, src.len(), dst.len())?;
    let (bs, ts) = (ty.block_size(), ty.type_size());
    dst.par_chunks_mut(bs * BLOCKS_PER_TASK).zip(src.par_chunks(ts * BLOCKS_PER_TASK)).for_each(|(d, s)| {
        for (db, sb) in d.chunks_exact_mut(bs).zip(s.chunks_exact(ts)) {
            block(sb, db);
        }
    });
    Ok(())
}

/// [`dequantize`] into a new vector of `n` elements.
pub fn dequantize_to_vec(ty: GgmlType, src: &[u8], n: usize) -> Result<Vec<f32>> {
    check_sizes("dequantize", ty, src.len(), n)?;
    let mut out = vec![0f32; n];
    dequantize(ty, src, &mut out)?;
    Ok(out)
}

/// `dequantize_row_q8_0`: `d`, then 32 signed bytes.
fn dequant_q8_0(s: &[u8], y: &mut [f32]) {
    let d = f16_at(s, 0);
    for (y, &q) in y.iter_mut().zip(&s[2..34]) {
        *y = (q as i8) as f32 * d;
    }
}

/// `dequantize_row_q4_0`: `d`, then 16 bytes of two 4-bit values offset by 8.
fn dequant_q4_0(s: &[u8], y: &mut [f32]) {
    let d = f16_at(s, 0);
    for (j, &q) in s[2..18].iter().enumerate() {
        y[j] = ((q & 0x0F) as i32 - 8) as f32 * d;
        y[j + 16] = ((q >> 4) as i32 - 8) as f32 * d;
    }
}

/// `dequantize_row_q4_1`: `d`, `m`, then 16 bytes of two 4-bit values.
fn dequant_q4_1(s: &[u8], y: &mut [f32]) {
    let (d, m) = (f16_at(s, 0), f16_at(s, 2));
    for (j, &q) in s[4..20].iter().enumerate() {
        y[j] = (q & 0x0F) as f32 * d + m;
        y[j + 16] = (q >> 4) as f32 * d + m;
    }
}

/// The 5-bit values of a q5_0/q5_1 block: low nibbles from `qs`, fifth bits from `qh`.
fn q5_values(qh: &[u8], qs: &[u8], j: usize) -> (i32, i32) {
    let qh = u32::from_le_bytes([qh[0], qh[1], qh[2], qh[3]]);
    let xh0 = ((qh >> j) << 4) & 0x10;
    let xh1 = (qh >> (j + 12)) & 0x10;
    (((qs[j] as u32 & 0x0F) | xh0) as i32, ((qs[j] as u32 >> 4) | xh1) as i32)
}

/// `dequantize_row_q5_0`: `d`, `qh`, 16 bytes; values offset by 16.
fn dequant_q5_0(s: &[u8], y: &mut [f32]) {
    let d = f16_at(s, 0);
    for j in 0..16 {
        let (x0, x1) = q5_values(&s[2..6], &s[6..22], j);
        y[j] = (x0 - 16) as f32 * d;
        y[j + 16] = (x1 - 16) as f32 * d;
    }
}

/// `dequantize_row_q5_1`: `d`, `m`, `qh`, 16 bytes.
fn dequant_q5_1(s: &[u8], y: &mut [f32]) {
    let (d, m) = (f16_at(s, 0), f16_at(s, 2));
    for j in 0..16 {
        let (x0, x1) = q5_values(&s[4..8], &s[8..24], j);
        y[j] = x0 as f32 * d + m;
        y[j + 16] = x1 as f32 * d + m;
    }
}

/// ggml's `get_scale_min_k4`: the 6-bit scale and min of sub-block `j` of a K4/K5 block.
fn scale_min_k4(j: usize, q: &[u8]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        ((q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4), (q[j + 4] >> 4) | ((q[j] >> 6) << 4))
    }
}

/// `dequantize_row_q4_K`: `d`, `dmin`, 12 bytes of scales/mins, 128 bytes of nibbles; four
/// groups of 64 (32 low nibbles, then the same 32 bytes' high nibbles).
fn dequant_q4_k(s: &[u8], y: &mut [f32]) {
    let (d, min) = (f16_at(s, 0), f16_at(s, 2));
    let scales = &s[4..16];
    for g in 0..4 {
        let q = &s[16 + 32 * g..16 + 32 * (g + 1)];
        let (sc1, m1) = scale_min_k4(2 * g, scales);
        let (sc2, m2) = scale_min_k4(2 * g + 1, scales);
        let (d1, m1) = (d * sc1 as f32, min * m1 as f32);
        let (d2, m2) = (d * sc2 as f32, min * m2 as f32);
        let out = &mut y[64 * g..64 * (g + 1)];
        for l in 0..32 {
            out[l] = d1 * (q[l] & 0xF) as f32 - m1;
            out[l + 32] = d2 * (q[l] >> 4) as f32 - m2;
        }
    }
}

/// `dequantize_row_q5_K`: as q4_K with 32 bytes of high bits (`qh`) before the nibbles.
fn dequant_q5_k(s: &[u8], y: &mut [f32]) {
    let (d, min) = (f16_at(s, 0), f16_at(s, 2));
    let scales = &s[4..16];
    let qh = &s[16..48];
    for g in 0..4 {
        let ql = &s[48 + 32 * g..48 + 32 * (g + 1)];
        let (u1, u2) = (1u8 << (2 * g), 2u8 << (2 * g));
        let (sc1, m1) = scale_min_k4(2 * g, scales);
        let (sc2, m2) = scale_min_k4(2 * g + 1, scales);
        let (d1, m1) = (d * sc1 as f32, min * m1 as f32);
        let (d2, m2) = (d * sc2 as f32, min * m2 as f32);
        let out = &mut y[64 * g..64 * (g + 1)];
        for l in 0..32 {
            let hi1 = if qh[l] & u1 != 0 { 16 } else { 0 };
            let hi2 = if qh[l] & u2 != 0 { 16 } else { 0 };
            out[l] = d1 * ((ql[l] & 0xF) + hi1) as f32 - m1;
            out[l + 32] = d2 * ((ql[l] >> 4) + hi2) as f32 - m2;
        }
    }
}

/// `dequantize_row_q6_K`: 128 bytes of low nibbles, 64 bytes of 2-bit highs, 16 signed 8-bit
/// scales, then `d`; two halves of 128 elements.
fn dequant_q6_k(s: &[u8], y: &mut [f32]) {
    let d = f16_at(s, 208);
    for h in 0..2 {
        let ql = &s[64 * h..64 * (h + 1)];
        let qh = &s[128 + 32 * h..128 + 32 * (h + 1)];
        let sc = &s[192 + 8 * h..192 + 8 * (h + 1)];
        let out = &mut y[128 * h..128 * (h + 1)];
        for l in 0..32 {
            let is = l / 16;
            let q1 = ((ql[l] & 0xF) | ((qh[l] & 3) << 4)) as i32 - 32;
            let q2 = ((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) as i32 - 32;
            let q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i32 - 32;
            let q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i32 - 32;
            out[l] = d * (sc[is] as i8) as f32 * q1 as f32;
            out[l + 32] = d * (sc[is + 2] as i8) as f32 * q2 as f32;
            out[l + 64] = d * (sc[is + 4] as i8) as f32 * q3 as f32;
            out[l + 96] = d * (sc[is + 6] as i8) as f32 * q4 as f32;
        }
    }
}

/// Quantizes one block (`block_size` values into `type_size` bytes).
type QuantBlock = fn(&[f32], &mut [u8]);

fn quant_block(ty: GgmlType) -> Option<QuantBlock> {
    Some(match ty {
        GgmlType::F32 => |x, y| y.copy_from_slice(&x[0].to_le_bytes()),
        GgmlType::F16 => |x, y| y.copy_from_slice(&f16::from_f32(x[0]).to_le_bytes()),
        GgmlType::BF16 => |x, y| y.copy_from_slice(&bf16::from_f32(x[0]).to_le_bytes()),
        GgmlType::Q8_0 => quant_q8_0,
        GgmlType::Q4_0 => quant_q4_0,
        GgmlType::Q4_1 => quant_q4_1,
        GgmlType::Q5_0 => quant_q5_0,
        GgmlType::Q5_1 => quant_q5_1,
        GgmlType::Q4_K => quant_q4_k,
        GgmlType::Q5_K => quant_q5_k,
        GgmlType::Q6_K => quant_q6_k,
        _ => return None,
    })
}

/// Packs `src` into blocks of type `ty` as ggml's reference `quantize_row_*_ref` do.
/// `src.len()` must be a multiple of the block size.
pub fn quantize(ty: GgmlType, src: &[f32]) -> Result<Vec<u8>> {
    let bs = ty.block_size();
    if !src.len().is_multiple_of(bs) {
        bail!("quantize {ty}: {} elements is not a multiple of the block size {bs}", src.len());
    }
    let mut out = vec![0u8; src.len() / bs * ty.type_size()];
    quantize_into(ty, src, &mut out)?;
    Ok(out)
}

/// [`quantize`] into `dst`, which must be exactly the size of `src.len()` elements of `ty`.
/// Blocks are independent, so a tensor may be quantized a few rows at a time.
pub fn quantize_into(ty: GgmlType, src: &[f32], dst: &mut [u8]) -> Result<()> {
    let block = quant_block(ty).ok_or_else(|| unsupported("quantize", ty, GgmlType::can_quantize))?;
    let (bs, ts) = (ty.block_size(), ty.type_size());
    if !src.len().is_multiple_of(bs) {
        bail!("quantize {ty}: {} elements is not a multiple of the block size {bs}", src.len());
    }
    let want = src.len() / bs * ts;
    if dst.len() != want {
        bail!("quantize {ty}: {} elements take {want} bytes, got a buffer of {}", src.len(), dst.len());
    }
    dst.par_chunks_mut(ts * BLOCKS_PER_TASK).zip(src.par_chunks(bs * BLOCKS_PER_TASK)).for_each(|(y, x)| {
        for (yb, xb) in y.chunks_exact_mut(ts).zip(x.chunks_exact(bs)) {
            block(xb, yb);
        }
    });
    Ok(())
}

/// `quantize_row_q8_0_ref`: d = absmax / 127, q = round(x / d).
fn quant_q8_0(x: &[f32], y: &mut [u8]) {
    let amax = x.iter().fold(0f32, |a, v| a.max(v.abs()));
    let d = amax / 127.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    y[..2].copy_from_slice(&f16::from_f32(d).to_le_bytes());
    for (q, &v) in y[2..34].iter_mut().zip(x) {
        *q = ((v * id).round() as i8) as u8;
    }
}

/// `quantize_row_q4_0_ref`: d = (the value of largest magnitude) / -8,
/// The smallest and largest value of a block, as ggml's reference loops find them (strict
/// comparisons from `(f32::MAX, -f32::MAX)`: NaN is skipped).
fn min_max(x: &[f32]) -> (f32, f32) {
    x.iter()
        .fold((f32::MAX, -f32::MAX), |(min, max), &v| (if v < min { v } else { min }, if v > max { v } else { max }))
}

/// The value of largest magnitude, with its sign (the first of equal magnitudes; 0 for an
/// all-zero block), as ggml's `q4_0`/`q5_0` reference loops find it.
fn largest_magnitude(x: &[f32]) -> f32 {
    x.iter().fold((0f32, 0f32), |(amax, max), &v| if amax < v.abs() { (v.abs(), v) } else { (amax, max) }).1
}

/// q = min(15, trunc(x / d + 8.5)).
fn quant_q4_0(x: &[f32], y: &mut [u8]) {
    let max = largest_magnitude(x);
    let d = max / -8.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    y[..2].copy_from_slice(&f16::from_f32(d).to_le_bytes());
    for j in 0..16 {
        let xi0 = ((x[j] * id + 8.5) as i8).min(15) as u8;
        let xi1 = ((x[j + 16] * id + 8.5) as i8).min(15) as u8;
        y[2 + j] = xi0 | (xi1 << 4);
    }
}

/// `quantize_row_q4_1_ref`: d = (max - min) / 15, m = min, q = min(15, trunc((x - m) / d + 0.5)).
fn quant_q4_1(x: &[f32], y: &mut [u8]) {
    let (min, max) = min_max(x);
    let d = (max - min) / 15.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    y[..2].copy_from_slice(&f16::from_f32(d).to_le_bytes());
    y[2..4].copy_from_slice(&f16::from_f32(min).to_le_bytes());
    for j in 0..16 {
        let xi0 = (((x[j] - min) * id + 0.5) as i8).min(15) as u8;
        let xi1 = (((x[j + 16] - min) * id + 0.5) as i8).min(15) as u8;
        y[4 + j] = xi0 | (xi1 << 4);
    }
}

/// `quantize_row_q5_0_ref`: d = (the value of largest magnitude) / -16,
/// q = min(31, trunc(x / d + 16.5)); low nibbles as q4_0, fifth bits in `qh`.
fn quant_q5_0(x: &[f32], y: &mut [u8]) {
    let max = largest_magnitude(x);
    let d = max / -16.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    y[..2].copy_from_slice(&f16::from_f32(d).to_le_bytes());
    let mut qh = 0u32;
    for j in 0..16 {
        let xi0 = ((x[j] * id + 16.5) as i8).min(31) as u8;
        let xi1 = ((x[j + 16] * id + 16.5) as i8).min(31) as u8;
        y[6 + j] = (xi0 & 0x0F) | ((xi1 & 0x0F) << 4);
        qh |= (((xi0 & 0x10) >> 4) as u32) << j;
        qh |= (((xi1 & 0x10) >> 4) as u32) << (j + 16);
    }
    y[2..6].copy_from_slice(&qh.to_le_bytes());
}

/// `quantize_row_q5_1_ref`: d = (max - min) / 31, m = min, q = trunc((x - m) / d + 0.5).
fn quant_q5_1(x: &[f32], y: &mut [u8]) {
    let (min, max) = min_max(x);
    let d = (max - min) / 31.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    y[..2].copy_from_slice(&f16::from_f32(d).to_le_bytes());
    y[2..4].copy_from_slice(&f16::from_f32(min).to_le_bytes());
    let mut qh = 0u32;
    for j in 0..16 {
        let xi0 = ((x[j] - min) * id + 0.5) as u8;
        let xi1 = ((x[j + 16] - min) * id + 0.5) as u8;
        y[8 + j] = (xi0 & 0x0F) | ((xi1 & 0x0F) << 4);
        qh |= (((xi0 & 0x10) >> 4) as u32) << j;
        qh |= (((xi1 & 0x10) >> 4) as u32) << (j + 16);
    }
    y[4..8].copy_from_slice(&qh.to_le_bytes());
}

/// ggml's `GROUP_MAX_EPS`: a group whose largest magnitude is below this is all zeros.
const GROUP_MAX_EPS: f32 = 1e-15;

/// ggml's `nearest_int`: round to nearest, ties to even, by adding 1.5 * 2^23 and reading the
/// mantissa (valid for |x| <= 4194303, as in ggml).
#[inline]
fn nearest_int(x: f32) -> i32 {
    let val = x + 12_582_912.0;
    (val.to_bits() as i32 & 0x007F_FFFF) - 0x0040_0000
}

/// ggml's `make_qkx2_quants` with `use_mad = false`: an affine fit x ~ scale * l - min with
/// l in [0, nmax], weighted least squares over `nstep + 1` trial scales. Writes the levels to
/// `l` and returns (scale, min) with min >= 0 (the value subtracted).
fn make_qkx2_quants(
    nmax: i32,
    x: &[f32],
    weights: &[f32],
    l: &mut [u8],
    rmin: f32,
    rdelta: f32,
    nstep: i32,
) -> (f32, f32) {
    let n = x.len();
    let (mut min, mut max) = (x[0], x[0]);
    let mut sum_w = weights[0];
    let mut sum_x = sum_w * x[0];
    for i in 1..n {
        if x[i] < min {
            min = x[i];
        }
        if x[i] > max {
            max = x[i];
        }
        let w = weights[i];
        sum_w += w;
        sum_x += w * x[i];
    }
    if min > 0.0 {
        min = 0.0;
    }
    if max == min {
        l[..n].fill(0);
        return (0.0, -min);
    }
    let mut iscale = nmax as f32 / (max - min);
    let mut scale = 1.0 / iscale;
    let mut best_error = 0f32;
    for i in 0..n {
        let q = nearest_int(iscale * (x[i] - min)).clamp(0, nmax);
        l[i] = q as u8;
        let diff = scale * q as f32 + min - x[i];
        best_error += weights[i] * (diff * diff);
    }
    if nstep < 1 {
        return (scale, -min);
    }
    let mut laux = [0u8; 32];
    for is in 0..=nstep {
        iscale = (rmin + rdelta * is as f32 + nmax as f32) / (max - min);
        let (mut sum_l, mut sum_l2, mut sum_xl) = (0f32, 0f32, 0f32);
        for i in 0..n {
            let q = nearest_int(iscale * (x[i] - min)).clamp(0, nmax);
            laux[i] = q as u8;
            let (w, lf) = (weights[i], q as f32);
            sum_l += w * lf;
            sum_l2 += w * lf * lf;
            sum_xl += w * lf * x[i];
        }
        let d = sum_w * sum_l2 - sum_l * sum_l;
        if d > 0.0 {
            let mut this_scale = (sum_w * sum_xl - sum_x * sum_l) / d;
            let mut this_min = (sum_l2 * sum_x - sum_l * sum_xl) / d;
            if this_min > 0.0 {
                this_min = 0.0;
                this_scale = sum_xl / sum_l2;
            }
            let mut cur_error = 0f32;
            for i in 0..n {
                let diff = this_scale * laux[i] as f32 + this_min - x[i];
                cur_error += weights[i] * (diff * diff);
            }
            if cur_error < best_error {
                l[..n].copy_from_slice(&laux[..n]);
                best_error = cur_error;
                scale = this_scale;
                min = this_min;
            }
        }
    }
    (scale, -min)
}

/// ggml's `make_qx_quants` with `rmse_type = 1` and no importance weights (weights x^2): a
/// symmetric fit x ~ scale * (l - nmax), l in [0, 2 nmax), over 19 trial scales. Writes the
/// levels to `l` and returns the scale.
fn make_qx_quants(nmax: i32, x: &[f32], l: &mut [i8]) -> f32 {
    let (mut max, mut amax) = (0f32, 0f32);
    for &v in x {
        let ax = v.abs();
        if ax > amax {
            amax = ax;
            max = v;
        }
    }
    if amax < GROUP_MAX_EPS {
        l[..x.len()].fill(0);
        return 0.0;
    }
    let mut iscale = -(nmax as f32) / max;
    let (mut sumlx, mut suml2) = (0f32, 0f32);
    for (i, &v) in x.iter().enumerate() {
        let q = nearest_int(iscale * v).clamp(-nmax, nmax - 1);
        l[i] = (q + nmax) as i8;
        let (w, qf) = (v * v, q as f32);
        sumlx += w * v * qf;
        suml2 += w * qf * qf;
    }
    let mut scale = if suml2 != 0.0 { sumlx / suml2 } else { 0.0 };
    let mut best = scale * sumlx;
    for is in -9..=9 {
        if is == 0 {
            continue;
        }
        iscale = -(nmax as f32 + 0.1 * is as f32) / max;
        sumlx = 0.0;
        suml2 = 0.0;
        for &v in x {
            let q = nearest_int(iscale * v).clamp(-nmax, nmax - 1);
            let (w, qf) = (v * v, q as f32);
            sumlx += w * v * qf;
            suml2 += w * qf * qf;
        }
        if suml2 > 0.0 && sumlx * sumlx > best * suml2 {
            for (i, &v) in x.iter().enumerate() {
                l[i] = (nmax + nearest_int(iscale * v).clamp(-nmax, nmax - 1)) as i8;
            }
            scale = sumlx / suml2;
            best = scale * sumlx;
        }
    }
    scale
}

/// The sub-block scales and mins of a q4_K/q5_K block: eight (scale, min) pairs quantized to
/// 6 bits against the largest of each, packed into 12 bytes (the inverse of
/// [`scale_min_k4`]). Writes `d`, `dmin` and the scales, and returns the packed 12 bytes.
fn pack_scales_k4(scales: &[f32; 8], mins: &[f32; 8], y: &mut [u8]) -> [u8; 12] {
    let max_scale = scales.iter().fold(0f32, |a, &s| if s > a { s } else { a });
    let max_min = mins.iter().fold(0f32, |a, &m| if m > a { m } else { a });
    let inv_scale = if max_scale > 0.0 { 63.0 / max_scale } else { 0.0 };
    let inv_min = if max_min > 0.0 { 63.0 / max_min } else { 0.0 };
    let mut packed = [0u8; 12];
    for j in 0..8 {
        let ls = (nearest_int(inv_scale * scales[j]) as u8).min(63);
        let lm = (nearest_int(inv_min * mins[j]) as u8).min(63);
        if j < 4 {
            packed[j] = ls;
            packed[j + 4] = lm;
        } else {
            packed[j + 4] = (ls & 0xF) | ((lm & 0xF) << 4);
            packed[j - 4] |= (ls >> 4) << 6;
            packed[j] |= (lm >> 4) << 6;
        }
    }
    y[0..2].copy_from_slice(&f16::from_f32(max_scale / 63.0).to_le_bytes());
    y[2..4].copy_from_slice(&f16::from_f32(max_min / 63.0).to_le_bytes());
    y[4..16].copy_from_slice(&packed);
    packed
}

/// The shared part of `quantize_row_q4_K_ref` and `quantize_row_q5_K_ref`: per 32-element
/// sub-block an affine fit (`make_qkx2_quants` with weights av_x + |x|), 6-bit scales and mins,
/// then every value re-quantized against the rounded scales. Returns the levels (0..=nmax).
fn quant_k4_levels(x: &[f32], y: &mut [u8], nmax: i32, rmin: f32, rdelta: f32, nstep: i32) -> [u8; 256] {
    let mut l = [0u8; 256];
    let mut scales = [0f32; 8];
    let mut mins = [0f32; 8];
    let mut weights = [0f32; 32];
    for j in 0..8 {
        let xs = &x[32 * j..32 * (j + 1)];
        let mut sum_x2 = 0f32;
        for &v in xs {
            sum_x2 += v * v;
        }
        let av_x = (sum_x2 / 32.0).sqrt();
        for (w, &v) in weights.iter_mut().zip(xs) {
            *w = av_x + v.abs();
        }
        let (scale, min) = make_qkx2_quants(nmax, xs, &weights, &mut l[32 * j..32 * (j + 1)], rmin, rdelta, nstep);
        scales[j] = scale;
        mins[j] = min;
    }
    let packed = pack_scales_k4(&scales, &mins, y);
    let (d_all, dmin_all) = (f16_at(y, 0), f16_at(y, 2));
    for j in 0..8 {
        let (sc, m) = scale_min_k4(j, &packed);
        let d = d_all * sc as f32;
        if d == 0.0 {
            continue;
        }
        let dm = dmin_all * m as f32;
        for ii in 0..32 {
            l[32 * j + ii] = nearest_int((x[32 * j + ii] + dm) / d).clamp(0, nmax) as u8;
        }
    }
    l
}

/// `quantize_row_q4_K_ref`: 8 sub-blocks of 32 with 6-bit scales and mins, 4-bit levels.
fn quant_q4_k(x: &[f32], y: &mut [u8]) {
    let l = quant_k4_levels(x, y, 15, -1.0, 0.1, 20);
    let q = &mut y[16..144];
    for (g, chunk) in q.chunks_exact_mut(32).enumerate() {
        for (i, b) in chunk.iter_mut().enumerate() {
            *b = l[64 * g + i] | (l[64 * g + i + 32] << 4);
        }
    }
}

/// `quantize_row_q5_K_ref`: as q4_K with 5-bit levels, the fifth bits in `qh`.
fn quant_q5_k(x: &[f32], y: &mut [u8]) {
    let l = quant_k4_levels(x, y, 31, -0.5, 0.1, 15);
    let (qh, ql) = y[16..176].split_at_mut(32);
    qh.fill(0);
    for g in 0..4 {
        let (m1, m2) = (1u8 << (2 * g), 2u8 << (2 * g));
        for j in 0..32 {
            let mut l1 = l[64 * g + j];
            if l1 > 15 {
                l1 -= 16;
                qh[j] |= m1;
            }
            let mut l2 = l[64 * g + j + 32];
            if l2 > 15 {
                l2 -= 16;
                qh[j] |= m2;
            }
            ql[32 * g + j] = l1 | (l2 << 4);
        }
    }
}

/// `quantize_row_q6_K_ref`: 16 sub-blocks of 16 with symmetric fits (`make_qx_quants`, 6-bit
/// levels), 8-bit signed scales against the largest, then every value re-quantized.
fn quant_q6_k(x: &[f32], y: &mut [u8]) {
    let mut l = [0i8; 256];
    let mut scales = [0f32; 16];
    let (mut max_scale, mut max_abs_scale) = (0f32, 0f32);
    for ib in 0..16 {
        let scale = make_qx_quants(32, &x[16 * ib..16 * (ib + 1)], &mut l[16 * ib..16 * (ib + 1)]);
        scales[ib] = scale;
        if scale.abs() > max_abs_scale {
            max_abs_scale = scale.abs();
            max_scale = scale;
        }
    }
    if max_abs_scale < GROUP_MAX_EPS {
        y.fill(0);
        return;
    }
    let iscale = -128.0 / max_scale;
    y[208..210].copy_from_slice(&f16::from_f32(1.0 / iscale).to_le_bytes());
    let d_all = f16_at(y, 208);
    let mut sc = [0i8; 16];
    for ib in 0..16 {
        sc[ib] = nearest_int(iscale * scales[ib]).min(127) as i8;
        y[192 + ib] = sc[ib] as u8;
    }
    for j in 0..16 {
        let d = d_all * sc[j] as f32;
        if d == 0.0 {
            continue;
        }
        for ii in 0..16 {
            l[16 * j + ii] = (nearest_int(x[16 * j + ii] / d).clamp(-32, 31) + 32) as i8;
        }
    }
    let l = l.map(|v| v as u8);
    for h in 0..2 {
        let j = 128 * h;
        for i in 0..32 {
            let (q1, q2) = (l[j + i] & 0xF, l[j + i + 32] & 0xF);
            let (q3, q4) = (l[j + i + 64] & 0xF, l[j + i + 96] & 0xF);
            y[64 * h + i] = q1 | (q3 << 4);
            y[64 * h + i + 32] = q2 | (q4 << 4);
            y[128 + 32 * h + i] = (l[j + i] >> 4)
                | ((l[j + i + 32] >> 4) << 2)
                | ((l[j + i + 64] >> 4) << 4)
                | ((l[j + i + 96] >> 4) << 6);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip_and_gaps_are_unknown() {
        for t in GgmlType::all() {
            assert_eq!(GgmlType::from_id(t.id()), Some(t));
            assert_eq!(TYPES.iter().filter(|e| e.0 == t).count(), 1, "{t}");
        }
        for id in [4, 5, 31, 32, 33, 36, 37, 38, 43, 1000, u32::MAX] {
            assert_eq!(GgmlType::from_id(id), None, "id {id}");
        }
        assert_eq!(GgmlType::Q4_K.name(), "q4_K");
        assert_eq!(GgmlType::BF16.id(), 30);
        assert_eq!(GgmlType::Q8_0.bytes_for(64), Some(68));
        assert_eq!(GgmlType::Q8_0.bytes_for(33), None);
        let deq: Vec<&str> = GgmlType::all().filter(|t| t.can_dequantize()).map(GgmlType::name).collect();
        assert_eq!(deq, ["f32", "f16", "q4_0", "q4_1", "q5_0", "q5_1", "q8_0", "q4_K", "q5_K", "q6_K", "bf16"]);
        let quant: Vec<&str> = GgmlType::all().filter(|t| t.can_quantize()).map(GgmlType::name).collect();
        assert_eq!(quant, deq);
    }

    #[test]
    fn size_and_type_errors_name_the_type() {
        let err = dequantize(GgmlType::Q2_K, &[0; 84], &mut [0.0; 256]).unwrap_err().to_string();
        assert!(
            err.starts_with("dequantize: GGML type q2_K (id 10) is not supported (supported: f32, f16, q4_0"),
            "{err}"
        );
        let err = dequantize(GgmlType::Q8_0, &[0; 33], &mut [0.0; 32]).unwrap_err().to_string();
        assert!(err.contains("q8_0") && err.contains("34 bytes"), "{err}");
        let err = dequantize(GgmlType::Q4_0, &[0; 18], &mut [0.0; 31]).unwrap_err().to_string();
        assert!(err.contains("multiple of the block size 32"), "{err}");
        let err = quantize(GgmlType::Q2_K, &[0.0; 256]).unwrap_err().to_string();
        assert!(err.contains("q2_K"), "{err}");
        let err = quantize(GgmlType::Q6_K, &[0.0; 255]).unwrap_err().to_string();
        assert!(err.contains("q6_K") && err.contains("block size 256"), "{err}");
        let err = quantize_into(GgmlType::Q8_0, &[0.0; 32], &mut [0; 33]).unwrap_err().to_string();
        assert!(err.contains("34 bytes"), "{err}");
    }
}
