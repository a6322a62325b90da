//! Block quantizers (`engine::quant::ggml::quantize`) against llama.cpp's own
//! `ggml_quantize_chunk` (scripts/ggml_quantize_ref.py, through the `xllamacpp` wheel), byte
//! for byte, for every type we quantize, on rows of several lengths: random values, outliers,
//! zero and near-zero blocks, constant and one-signed blocks, exact ties for the rounding,
//! sub-blocks of wildly different magnitude, and real SmolLM2 weights.

mod common;

use common::{python, repo_root, Rng};
use engine::quant::ggml::{dequantize_to_vec, quantize, GgmlType};
use std::path::Path;
use std::process::Command;

const TYPES: [GgmlType; 11] = [
    GgmlType::F32,
    GgmlType::F16,
    GgmlType::BF16,
    GgmlType::Q8_0,
    GgmlType::Q4_0,
    GgmlType::Q4_1,
    GgmlType::Q5_0,
    GgmlType::Q5_1,
    GgmlType::Q4_K,
    GgmlType::Q5_K,
    GgmlType::Q6_K,
];

/// One row of `n` values following pattern `p` (0..PATTERNS).
const PATTERNS: usize = 12;

fn row(rng: &mut Rng, p: usize, n: usize) -> Vec<f32> {
    // An approximately normal value (sum of uniforms).
    let normal = |rng: &mut Rng| (0..4).map(|_| rng.f32()).sum::<f32>() * 0.5;
    (0..n)
        .map(|i| match p {
            // Plain random weights of a typical magnitude.
            0 => normal(rng) * 0.02,
            // Random with rare large outliers (one in ~40), both signs.
            1 => {
                let v = normal(rng) * 0.05;
                if rng.next_u64().is_multiple_of(40) {
                    v * 300.0
                } else {
                    v
                }
            }
            // Every other 32-block zero, the rest random.
            2 => {
                if (i / 32) % 2 == 0 {
                    0.0
                } else {
                    normal(rng)
                }
            }
            // Whole 256-blocks zero or below GROUP_MAX_EPS, others random.
            3 => match (i / 256) % 3 {
                0 => 0.0,
                1 => rng.f32() * 1e-17,
                _ => normal(rng),
            },
            // Constant blocks (max == min) with different constants.
            4 => ((i / 32) % 5) as f32 * 0.25 - 0.5,
            // All positive (the K-quant min clamps to 0) then all negative, per 64.
            5 => {
                let v = rng.f32().abs() + 0.01;
                if (i / 64) % 2 == 0 {
                    v
                } else {
                    -v
                }
            }
            // Small integers and halves: exact ties for roundf / nearest_int.
            6 => ((rng.next_u64() % 33) as f32 - 16.0) * 0.5,
            // Sub-blocks of very different magnitudes (some 6-bit scales round to zero).
            7 => normal(rng) * 10f32.powi(-2 * ((i / 16) % 6) as i32),
            // One huge value per 256-block, the rest tiny.
            8 => {
                if i % 256 == 17 {
                    1000.0
                } else {
                    normal(rng) * 1e-3
                }
            }
            // Uniform in [-1, 1).
            9 => rng.f32(),
            // Values that are exact f16 numbers, skewed positive.
            10 => half::f16::from_f32(rng.f32() * 3.0 + 1.0).to_f32(),
            // A ramp within each block.
            _ => (i % 256) as f32 / 128.0 - 1.0 + normal(rng) * 1e-3,
        })
        .collect()
}

/// SmolLM2's `blk.0.ffn_down.weight` (1536 wide) dequantized, its first `rows` rows; `None`
/// when the model file is absent.
fn real_rows(rows: usize) -> Option<Vec<f32>> {
    let path = repo_root().join("models/SmolLM2-135M-Instruct.Q4_1.gguf");
    if !path.exists() {
        return None;
    }
    let file = gguf::GgufFile::open(&path).unwrap();
    let info = file.tensor("blk.0.ffn_down.weight").unwrap();
    let values = file.dequantize_f32(info).unwrap();
    Some(values[..rows * 1536].to_vec())
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// The index of the first differing block and a description, or `None` when equal.
fn first_diff(ty: GgmlType, ours: &[u8], theirs: &[u8]) -> Option<String> {
    if ours.len() != theirs.len() {
        return Some(format!("lengths differ: {} vs {}", ours.len(), theirs.len()));
    }
    let ts = ty.type_size();
    let b = ours.chunks(ts).zip(theirs.chunks(ts)).position(|(a, b)| a != b)?;
    Some(format!(
        "block {b} differs:\n ours   {:02x?}\n ggml   {:02x?}",
        &ours[b * ts..(b + 1) * ts],
        &theirs[b * ts..(b + 1) * ts]
    ))
}

struct Case {
    name: String,
    n_per_row: usize,
    values: Vec<f32>,
}

fn cases() -> Vec<Case> {
    let mut rng = Rng(0x005E_ED0F_6617);
    let mut cases = vec![];
    for n_per_row in [256, 512, 1536] {
        // Three rows of every pattern, so multi-row calls are covered.
        let values: Vec<f32> =
            (0..PATTERNS).flat_map(|p| (0..3).flat_map(|_| row(&mut rng, p, n_per_row)).collect::<Vec<_>>()).collect();
        cases.push(Case { name: format!("synthetic x{n_per_row}"), n_per_row, values });
    }
    if let Some(values) = real_rows(64) {
        cases.push(Case { name: "SmolLM2 blk.0.ffn_down rows".into(), n_per_row: 1536, values });
    } else {
        eprintln!("models/SmolLM2-135M-Instruct.Q4_1.gguf absent: real-weight rows skipped");
    }
    cases
}

/// Runs scripts/ggml_quantize_ref.py on every (case, type) in one process; returns the bytes.
fn ggml_reference(py: &Path, dir: &Path, cases: &[Case]) -> Vec<Vec<Vec<u8>>> {
    let mut jobs = vec![];
    for (ci, case) in cases.iter().enumerate() {
        let src = dir.join(format!("case{ci}.f32"));
        std::fs::write(&src, f32_bytes(&case.values)).unwrap();
        for ty in TYPES {
            jobs.push(serde_json::json!({
                "type": ty.name().to_uppercase(),
                "n_per_row": case.n_per_row,
                "src": src,
                "dst": dir.join(format!("case{ci}.{}", ty.name())),
            }));
        }
    }
    let jobs_path = dir.join("jobs.json");
    std::fs::write(&jobs_path, serde_json::to_vec(&jobs).unwrap()).unwrap();
    let out = Command::new(py)
        .arg(repo_root().join("scripts/ggml_quantize_ref.py"))
        .arg("--batch")
        .arg(&jobs_path)
        .output()
        .unwrap();
    assert!(out.status.success(), "ggml_quantize_ref.py failed:\n{}", String::from_utf8_lossy(&out.stderr));
    (0..cases.len())
        .map(|ci| TYPES.iter().map(|ty| std::fs::read(dir.join(format!("case{ci}.{}", ty.name()))).unwrap()).collect())
        .collect()
}

fn xllamacpp_python() -> Option<std::path::PathBuf> {
    let py = python()?;
    let ok = Command::new(&py).args(["-c", "import xllamacpp"]).output().map(|o| o.status.success()).unwrap_or(false);
    ok.then_some(py)
}

#[test]
fn quantizers_match_ggml_quantize_chunk_bit_for_bit() {
    let Some(py) = xllamacpp_python() else {
        eprintln!("SKIPPED: .venv with xllamacpp missing (run scripts/setup-python.sh)");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let cases = cases();
    let reference = ggml_reference(&py, dir.path(), &cases);
    let mut failures = vec![];
    let mut compared = 0;
    for (case, refs) in cases.iter().zip(&reference) {
        for (&ty, theirs) in TYPES.iter().zip(refs) {
            let ours = quantize(ty, &case.values).unwrap();
            assert_eq!(theirs.len(), case.values.len() / ty.block_size() * ty.type_size(), "{ty} reference size");
            compared += theirs.len();
            if let Some(diff) = first_diff(ty, &ours, theirs) {
                failures.push(format!("{ty} on {} (rows of {}): {diff}", case.name, case.n_per_row));
            }
        }
    }
    assert!(failures.is_empty(), "{} mismatches:\n{}", failures.len(), failures.join("\n"));
    eprintln!("{} types x {} cases: {compared} bytes identical to ggml_quantize_chunk", TYPES.len(), cases.len());
}

/// The K-quants round-trip with a bounded error relative to each block's range: a sanity
/// check of the level packing that needs no reference.
#[test]
fn k_quants_round_trip_closely() {
    let mut rng = Rng(42);
    let x: Vec<f32> = (0..4096).map(|_| rng.f32()).collect();
    for (ty, tol) in [
        (GgmlType::Q4_K, 0.1),
        (GgmlType::Q5_K, 0.06),
        (GgmlType::Q6_K, 0.03),
        (GgmlType::Q5_0, 0.07),
        (GgmlType::Q5_1, 0.04),
    ] {
        let q = quantize(ty, &x).unwrap();
        let y = dequantize_to_vec(ty, &q, x.len()).unwrap();
        let max_err = x.iter().zip(&y).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        assert!(max_err < tol, "{ty}: max error {max_err}");
    }
    // All-zero input gives all-zero blocks.
    for ty in [GgmlType::Q4_K, GgmlType::Q5_K, GgmlType::Q6_K] {
        let q = quantize(ty, &[0.0; 512]).unwrap();
        assert!(q.iter().all(|&b| b == 0), "{ty}");
    }
}

/// Q5_0 and Q5_1, the two new types that the `gguf` Python package also quantizes, against
/// `gguf.quants.quantize` (scripts/ggml_quants.py) on the same synthetic rows.
#[test]
fn q5_0_and_q5_1_match_gguf_py() {
    let Some(py) = python() else {
        eprintln!("SKIPPED: .venv/bin/python with the gguf package not found (scripts/setup-python.sh)");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let mut rng = Rng(7);
    let x: Vec<f32> = (0..PATTERNS).flat_map(|p| row(&mut rng, p, 512)).collect();
    let input = dir.path().join("x.f32");
    std::fs::write(&input, f32_bytes(&x)).unwrap();
    for ty in [GgmlType::Q5_0, GgmlType::Q5_1] {
        let name = ty.name().to_uppercase();
        let output = dir.path().join(format!("{name}.q"));
        common::run_python(
            &py,
            "ggml_quants.py",
            &["quantize", &name, input.to_str().unwrap(), output.to_str().unwrap()],
        );
        let theirs = std::fs::read(&output).unwrap();
        let ours = quantize(ty, &x).unwrap();
        if let Some(diff) = first_diff(ty, &ours, &theirs) {
            panic!("{ty} vs gguf.quants: {diff}");
        }
    }
}
