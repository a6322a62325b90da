//! GGML tensor types and block formats, as llama.cpp stores them in GGUF files.
//!
//! [`GgmlType`] lists every type id of `enum ggml_type` in llama.cpp's `ggml.h` (ids 4, 5 and
//! 31..=33, 36..=38 were removed upstream and are unknown here too), with its block size and
//! bytes per block (`ggml_blck_size` / `ggml_type_size`).
//!
//! [`dequantize`] expands blocks to f32 exactly as `ggml-quants.c`'s `dequantize_row_*` do
//! (same operations in the same order, so results are bit-identical) for f32, f16, bf16,
//! q4_0, q4_1, q5_0, q5_1, q8_0, q4_K, q5_K and q6_K. [`quantize`] packs f32 values the way
//! the reference `quantize_row_*_ref` functions do for f32, f16, bf16, q8_0, q4_0 and q4_1.
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
        if n_elements % bs != 0 {
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
    if n % bs != 0 {
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
        _ => return None,
    })
}

/// Packs `src` into blocks of type `ty` as ggml's reference `quantize_row_*_ref` do.
/// `src.len()` must be a multiple of the block size.
pub fn quantize(ty: GgmlType, src: &[f32]) -> Result<Vec<u8>> {
    let block = quant_block(ty).ok_or_else(|| unsupported("quantize", ty, GgmlType::can_quantize))?;
    let (bs, ts) = (ty.block_size(), ty.type_size());
    if src.len() % bs != 0 {
        bail!("quantize {ty}: {} elements is not a multiple of the block size {bs}", src.len());
    }
    let mut out = vec![0u8; src.len() / bs * ts];
    out.par_chunks_mut(ts * BLOCKS_PER_TASK).zip(src.par_chunks(bs * BLOCKS_PER_TASK)).for_each(|(y, x)| {
        for (yb, xb) in y.chunks_exact_mut(ts).zip(x.chunks_exact(bs)) {
            block(xb, yb);
        }
    });
    Ok(out)
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
/// q = min(15, trunc(x / d + 8.5)).
fn quant_q4_0(x: &[f32], y: &mut [u8]) {
    let (mut amax, mut max) = (0f32, 0f32);
    for &v in x {
        if amax < v.abs() {
            amax = v.abs();
            max = v;
        }
    }
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
    let (mut min, mut max) = (f32::MAX, -f32::MAX);
    for &v in x {
        if v < min {
            min = v;
        }
        if v > max {
            max = v;
        }
    }
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
        assert!(GgmlType::Q4_1.can_quantize() && !GgmlType::Q4_K.can_quantize());
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
        let err = quantize(GgmlType::Q6_K, &[0.0; 256]).unwrap_err().to_string();
        assert!(err.contains("q6_K"), "{err}");
    }
}
