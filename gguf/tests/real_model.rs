//! The real SmolLM2-135M-Instruct Q4_1 GGUF (scripts/fetch-smollm2.sh) against llama.cpp's
//! Python reader (`gguf.GGUFReader`, via scripts/gguf_reference.py): every metadata entry
//! with its type and full value, every tensor's name, dims, type, offset and size, and whole
//! dequantized tensors bit for bit. Skips (with a message) when the model or .venv is absent.

mod common;

use common::gguf_py::{type_name, value_json};
use common::{python, read_f32, repo_root, run_python};
use gguf::{GgmlType, GgufFile};
use serde_json::{json, Value as Json};
use std::collections::HashMap;

const MODEL: &str = "models/SmolLM2-135M-Instruct.Q4_1.gguf";
/// Tensors dequantized by both sides: q8_0, two q4_1 and an f32 one.
const COMPARED: [&str; 4] =
    ["token_embd.weight", "blk.0.attn_q.weight", "blk.29.ffn_down.weight", "output_norm.weight"];

fn open_model() -> Option<GgufFile> {
    let path = repo_root().join(MODEL);
    if !path.exists() {
        println!("skipped: {} not found (scripts/fetch-smollm2.sh)", path.display());
        return None;
    }
    Some(GgufFile::open(&path).unwrap())
}

/// Facts about the file that do not need Python (DESIGN.md; gguf-dump prints the same).
#[test]
fn smollm2_structure() {
    let Some(f) = open_model() else { return };
    assert_eq!((f.version(), f.alignment(), f.tensors().len(), f.metadata().len()), (3, 32, 272, 33));
    assert_eq!(f.get_str("general.architecture").unwrap(), "llama");
    assert_eq!(f.get_u32("llama.block_count").unwrap(), 30);
    assert_eq!(f.get_u32("llama.embedding_length").unwrap(), 576);
    assert_eq!(f.get_u32("llama.attention.head_count").unwrap(), 9);
    assert_eq!(f.get_u32("llama.attention.head_count_kv").unwrap(), 3);
    assert_eq!(f.get_f32("llama.rope.freq_base").unwrap(), 100000.0);
    assert_eq!(f.get_str_array("tokenizer.ggml.tokens").unwrap().len(), 49152);
    assert!(f.get_str("tokenizer.chat_template").unwrap().contains("<|im_start|>"));
    let mut counts: HashMap<GgmlType, usize> = HashMap::new();
    for t in f.tensors() {
        *counts.entry(t.ggml_type()).or_default() += 1;
    }
    assert_eq!(counts, HashMap::from([(GgmlType::Q4_1, 210), (GgmlType::F32, 61), (GgmlType::Q8_0, 1)]));
    assert!(!f.contains_tensor("output.weight"), "embeddings are tied");
    let embd = f.tensor("token_embd.weight").unwrap();
    assert_eq!((embd.dims(), embd.shape(), embd.ggml_type()), (&[576u64, 49152][..], vec![49152, 576], GgmlType::Q8_0));
    for l in 0..30 {
        for p in
            ["attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down", "attn_norm", "ffn_norm"]
        {
            assert!(f.contains_tensor(&format!("blk.{l}.{p}.weight")), "blk.{l}.{p}.weight");
        }
    }
}

#[test]
fn smollm2_matches_gguf_py() {
    let Some(f) = open_model() else { return };
    let Some(py) = python() else {
        println!("skipped: .venv/bin/python with the gguf package not found (scripts/setup-python.sh)");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().to_str().unwrap();
    let mut args = vec![MODEL, out];
    args.extend(COMPARED);
    run_python(&py, "gguf_reference.py", &args);
    let reference: Json = serde_json::from_slice(&std::fs::read(dir.path().join("reference.json")).unwrap()).unwrap();

    assert_eq!(reference["version"], json!(f.version()));
    assert_eq!(reference["alignment"], json!(f.alignment()));
    assert_eq!(reference["data_offset"], json!(f.data_offset()));

    let meta = reference["metadata"].as_array().unwrap();
    assert_eq!(meta.len(), f.metadata().len());
    for (want, (key, value)) in meta.iter().zip(f.metadata()) {
        assert_eq!(want["key"], json!(key));
        assert_eq!(want["type"], json!(type_name(value)), "{key}");
        assert!(want["value"] == value_json(value), "{key}: value differs");
    }

    let tensors = reference["tensors"].as_array().unwrap();
    assert_eq!(tensors.len(), f.tensors().len());
    for (want, t) in tensors.iter().zip(f.tensors()) {
        let got = json!({
            "name": t.name(),
            "dims": t.dims(),
            "type": t.ggml_type().name().to_uppercase(),
            "offset": t.offset(),
            "n_bytes": t.n_bytes(),
        });
        assert_eq!(want, &got);
    }

    for name in COMPARED {
        let want = read_f32(&dir.path().join(format!("{name}.f32")));
        let got = f.dequantize_f32(f.tensor(name).unwrap()).unwrap();
        assert_eq!(got.len(), want.len(), "{name}");
        let diff = got.iter().zip(&want).position(|(a, b)| a.to_bits() != b.to_bits());
        assert_eq!(diff, None, "{name}: first differing element");
        println!("{name}: {} values bit-identical to gguf.quants.dequantize", got.len());
    }
}
