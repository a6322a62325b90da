//! GGML block formats (`engine::quant::ggml`): hand-derived blocks, then llama.cpp's Python
//! codecs (`gguf.quants`) on random blocks, bit for bit.

mod common;

use common::{python, read_f32, run_python, Rng};
use engine::quant::ggml::{dequantize, dequantize_to_vec, quantize, GgmlType};
use half::f16;

fn f16_bytes(x: f32) -> [u8; 2] {
    f16::from_f32(x).to_le_bytes()
}

/// q8_0 (ggml-common.h `block_q8_0`: f16 d, then 32 x i8): value = q * d.
/// Block 0: d = 0.5, q_j = 4j - 64, so value_j = 2j - 32. Block 1: d = -3, q_j = j, value -3j.
#[test]
fn q8_0_by_hand() {
    let mut src = f16_bytes(0.5).to_vec();
    src.extend((0..32).map(|j| (4 * j - 64) as i8 as u8));
    src.extend(f16_bytes(-3.0));
    src.extend(0..32u8);
    let y = dequantize_to_vec(GgmlType::Q8_0, &src, 64).unwrap();
    let want: Vec<f32> = (0..32).map(|j| 2.0 * j as f32 - 32.0).chain((0..32).map(|j| -3.0 * j as f32)).collect();
    assert_eq!(y, want);
}

/// q4_0 (`block_q4_0`: f16 d, 16 bytes; element j is the low nibble of byte j, element j+16
/// its high nibble): value = (q - 8) * d. With d = 2 and byte j = j | (15 - j) << 4:
/// value_j = (j - 8) * 2 and value_{j+16} = (7 - j) * 2.
#[test]
fn q4_0_by_hand() {
    let mut src = f16_bytes(2.0).to_vec();
    src.extend((0..16u8).map(|j| j | ((15 - j) << 4)));
    let y = dequantize_to_vec(GgmlType::Q4_0, &src, 32).unwrap();
    let want: Vec<f32> =
        (0..16).map(|j| (j as f32 - 8.0) * 2.0).chain((0..16).map(|j| (7.0 - j as f32) * 2.0)).collect();
    assert_eq!(y, want);
}

/// q4_1 (`block_q4_1`: f16 d, f16 m, 16 bytes as q4_0): value = q * d + m. With d = 0.25,
/// m = -1 and the bytes of the q4_0 test: value_j = j / 4 - 1, value_{j+16} = (15 - j) / 4 - 1.
#[test]
fn q4_1_by_hand() {
    let mut src = f16_bytes(0.25).to_vec();
    src.extend(f16_bytes(-1.0));
    src.extend((0..16u8).map(|j| j | ((15 - j) << 4)));
    let y = dequantize_to_vec(GgmlType::Q4_1, &src, 32).unwrap();
    let want: Vec<f32> =
        (0..16).map(|j| j as f32 / 4.0 - 1.0).chain((0..16).map(|j| (15 - j) as f32 / 4.0 - 1.0)).collect();
    assert_eq!(y, want);
}

/// Plain types: f32 and f16/bf16 bit patterns (1.0 is 0x3C00 in f16, 0x3F80 in bf16).
#[test]
fn plain_types_by_hand() {
    let y = dequantize_to_vec(GgmlType::F16, &[0x00, 0x3C, 0x00, 0xC0, 0x00, 0x7C], 3).unwrap();
    assert_eq!(y, [1.0, -2.0, f32::INFINITY]);
    let y = dequantize_to_vec(GgmlType::BF16, &[0x80, 0x3F, 0x40, 0xC0], 2).unwrap();
    assert_eq!(y, [1.0, -3.0]);
    let y = dequantize_to_vec(GgmlType::F32, &[0.1f32.to_le_bytes(), (-7f32).to_le_bytes()].concat(), 2).unwrap();
    assert_eq!(y, [0.1, -7.0]);
    let mut out = [0f32; 2];
    dequantize(GgmlType::BF16, &[0x80, 0x3F, 0x80, 0xBF], &mut out).unwrap();
    assert_eq!(out, [1.0, -1.0]);
}

/// Packs 32 4-bit codes the way q4_0/q4_1 store them.
fn nibbles(q: &[u8; 32]) -> Vec<u8> {
    (0..16).map(|j| q[j] | (q[j + 16] << 4)).collect()
}

/// `quantize_row_q8_0_ref`: d = absmax / 127 and q = round-half-away(x / d). With absmax 127,
/// d = 1 and the codes are the rounded values: 0.5 -> 1, -0.5 -> -1, 63.5 -> 64, 1.49 -> 1.
#[test]
fn q8_0_quantize_by_hand() {
    let mut x = [0f32; 32];
    x[..6].copy_from_slice(&[127.0, -127.0, 0.5, -0.5, 1.49, 63.5]);
    let q = quantize(GgmlType::Q8_0, &x).unwrap();
    let mut want = f16_bytes(1.0).to_vec();
    want.extend([127u8, (-127i8) as u8, 1, (-1i8) as u8, 1, 64]);
    want.resize(34, 0);
    assert_eq!(q, want);
}

/// `quantize_row_q4_0_ref`: d = (the value of largest magnitude) / -8, q = min(15,
/// trunc(x / d + 8.5)). Block 0 has -8 as that value: d = 1, so -8 -> 0, 7 -> 15, 7.4 -> 15,
/// 0.49 -> 8, 0.5 -> 9, -0.5 -> 8, -7.6 -> 0, zeros -> 8. Block 1 has +8: d = -1, so 8 -> 0
/// and -7 -> 15 (dequantized: (0 - 8) * -1 = 8 and (15 - 8) * -1 = -7).
#[test]
fn q4_0_quantize_by_hand() {
    let mut x = [0f32; 64];
    x[..7].copy_from_slice(&[-8.0, 7.0, 7.4, 0.49, 0.5, -0.5, -7.6]);
    x[32] = 8.0;
    x[48] = -7.0;
    let q = quantize(GgmlType::Q4_0, &x).unwrap();
    let mut codes = [8u8; 32];
    codes[..7].copy_from_slice(&[0, 15, 15, 8, 9, 8, 0]);
    let mut want = f16_bytes(1.0).to_vec();
    want.extend(nibbles(&codes));
    let mut codes = [8u8; 32];
    codes[0] = 0;
    codes[16] = 15;
    want.extend(f16_bytes(-1.0));
    want.extend(nibbles(&codes));
    assert_eq!(q, want);
    let y = dequantize_to_vec(GgmlType::Q4_0, &q, 64).unwrap();
    assert_eq!((y[32], y[48], y[33]), (8.0, -7.0, 0.0));
}

/// `quantize_row_q4_1_ref`: d = (max - min) / 15, m = min, q = min(15, trunc((x - m) / d +
/// 0.5)). With min 0 and max 15: d = 1, m = 0, 7.49 -> 7, 7.5 -> 8.
#[test]
fn q4_1_quantize_by_hand() {
    let mut x = [0f32; 32];
    x[..5].copy_from_slice(&[0.0, 15.0, 7.49, 7.5, 3.0]);
    let q = quantize(GgmlType::Q4_1, &x).unwrap();
    let mut codes = [0u8; 32];
    codes[..5].copy_from_slice(&[0, 15, 7, 8, 3]);
    let mut want = f16_bytes(1.0).to_vec();
    want.extend(f16_bytes(0.0));
    want.extend(nibbles(&codes));
    assert_eq!(q, want);
}

/// Random blocks of `ty` whose f16 scale fields (at these byte offsets of each block) hold
/// finite values.
fn random_blocks(ty: GgmlType, n_blocks: usize, f16_fields: &[usize], rng: &mut Rng) -> Vec<u8> {
    let mut src = rng.bytes(n_blocks * ty.type_size());
    for block in src.chunks_exact_mut(ty.type_size()) {
        for &at in f16_fields {
            block[at..at + 2].copy_from_slice(&f16_bytes(rng.f32() * 4.0));
        }
    }
    src
}

fn same_bits(a: &[f32], b: &[f32]) -> Option<usize> {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).position(|(x, y)| x.to_bits() != y.to_bits() && !(x.is_nan() && y.is_nan()))
}

/// Every dequantizer against `gguf.quants.dequantize` on random blocks.
#[test]
fn dequantize_matches_gguf_py() {
    let Some(py) = python() else {
        println!("skipped: .venv/bin/python with the gguf package not found (scripts/setup-python.sh)");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let mut rng = Rng(42);
    let cases: [(GgmlType, &str, &[usize]); 10] = [
        (GgmlType::F16, "F16", &[]),
        (GgmlType::BF16, "BF16", &[]),
        (GgmlType::Q8_0, "Q8_0", &[0]),
        (GgmlType::Q4_0, "Q4_0", &[0]),
        (GgmlType::Q4_1, "Q4_1", &[0, 2]),
        (GgmlType::Q5_0, "Q5_0", &[0]),
        (GgmlType::Q5_1, "Q5_1", &[0, 2]),
        (GgmlType::Q4_K, "Q4_K", &[0, 2]),
        (GgmlType::Q5_K, "Q5_K", &[0, 2]),
        (GgmlType::Q6_K, "Q6_K", &[208]),
    ];
    for (ty, name, fields) in cases {
        let n_blocks = 1000 / ty.block_size() + 7;
        let src = random_blocks(ty, n_blocks, fields, &mut rng);
        let (input, output) = (dir.path().join(format!("{name}.bin")), dir.path().join(format!("{name}.f32")));
        std::fs::write(&input, &src).unwrap();
        run_python(&py, "ggml_quants.py", &["dequantize", name, input.to_str().unwrap(), output.to_str().unwrap()]);
        let want = read_f32(&output);
        let got = dequantize_to_vec(ty, &src, n_blocks * ty.block_size()).unwrap();
        if let Some(i) = same_bits(&got, &want) {
            panic!("{name}: element {i}: ferrotune {} vs gguf-py {}", got[i], want[i]);
        }
        println!("{name}: {} values bit-identical to gguf.quants.dequantize", got.len());
    }
}

/// The quantizers against `gguf.quants.quantize` on random values (with zero blocks and
/// exact ties mixed in).
#[test]
fn quantize_matches_gguf_py() {
    let Some(py) = python() else {
        println!("skipped: .venv/bin/python with the gguf package not found (scripts/setup-python.sh)");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let mut rng = Rng(3);
    let mut x: Vec<f32> = (0..32 * 300).map(|i| rng.f32() * (1 + i % 7) as f32).collect();
    x[..32].fill(0.0);
    x[32..64].iter_mut().enumerate().for_each(|(i, v)| *v = i as f32 - 8.0);
    let input = dir.path().join("x.f32");
    std::fs::write(&input, x.iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<u8>>()).unwrap();
    for (ty, name) in [
        (GgmlType::Q8_0, "Q8_0"),
        (GgmlType::Q4_0, "Q4_0"),
        (GgmlType::Q4_1, "Q4_1"),
        (GgmlType::F16, "F16"),
        (GgmlType::BF16, "BF16"),
    ] {
        let output = dir.path().join(format!("{name}.q"));
        run_python(&py, "ggml_quants.py", &["quantize", name, input.to_str().unwrap(), output.to_str().unwrap()]);
        let want = std::fs::read(&output).unwrap();
        let got = quantize(ty, &x).unwrap();
        assert_eq!(got.len(), want.len(), "{name}");
        if let Some(i) = got.iter().zip(&want).position(|(a, b)| a != b) {
            let block = i / ty.type_size();
            panic!(
                "{name}: byte {i} (block {block}) differs: {:?} vs {:?}",
                &got[block * ty.type_size()..][..ty.type_size()],
                &want[block * ty.type_size()..][..ty.type_size()]
            );
        }
        println!("{name}: {} bytes identical to gguf.quants.quantize", got.len());
    }
}
