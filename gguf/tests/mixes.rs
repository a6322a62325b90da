//! `gguf::mixes::tensor_type` against llama.cpp's own choices: every tensor of SmolLM2-135M
//! and of two synthetic llama models (32 layers untied with `rope_freqs`; 80 layers with
//! grouped-query attention, llama.cpp's "70B"), for every file type, as `llama_model_quantize`
//! decided them (fixtures/llama_quantize_types.json, written by
//! `scripts/llama_quantize_ref.py fixture`).
//!
//! With the llama.cpp library of scripts/setup-llama-quantize.sh present, a second test goes
//! further: SmolLM2 written as F32 by our writer, quantized by llama.cpp to Q4_K_M and Q5_K_M,
//! must hold, tensor for tensor, the bytes of our mix and our quantizers.

mod common;

use common::{python, repo_root, run_python};
use engine::quant::ggml::quantize;
use gguf::mixes::{tensor_types, FileType};
use gguf::{GgmlType, GgufFile, GgufWriter, TensorSpec};
use serde_json::Value as Json;

fn fixture() -> Json {
    let path = repo_root().join("gguf/tests/fixtures/llama_quantize_types.json");
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

#[test]
fn mixes_match_llama_quantize_for_every_tensor() {
    let fixture = fixture();
    let mut checked = 0;
    let mut failures = vec![];
    for model in fixture["models"].as_array().unwrap() {
        let name = model["name"].as_str().unwrap();
        let n = |k: &str| model[k].as_u64().unwrap() as usize;
        let tensors: Vec<(String, Vec<usize>)> = model["tensors"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| (t[0].as_str().unwrap().to_string(), serde_json::from_value(t[1].clone()).unwrap()))
            .collect();
        let types = model["types"].as_object().unwrap();
        assert_eq!(types.len(), FileType::all().count(), "{name}: every file type is in the fixture");
        for (ft_name, want) in types {
            let ft: FileType = ft_name.parse().unwrap();
            let ours = tensor_types(ft, &tensors, n("n_layers"), n("n_head"), n("n_head_kv"));
            for (((tensor, shape), got), want) in tensors.iter().zip(&ours).zip(want.as_array().unwrap()) {
                checked += 1;
                if got.name() != want.as_str().unwrap() {
                    failures.push(format!("{name} {ft}: {tensor} {shape:?}: ours {got}, llama.cpp {want}"));
                }
            }
        }
    }
    assert!(failures.is_empty(), "{} differences:\n{}", failures.len(), failures.join("\n"));
    assert!(checked > 10_000, "only {checked} tensor types checked");
    eprintln!("{checked} tensor types identical to llama_model_quantize ({})", fixture["source"]);
}

/// SmolLM2's tensors in a Q4_K_M file pick the types that the brief and llama.cpp's logs
/// spell out (a readable subset of the fixture test).
#[test]
fn smollm2_q4_k_m_by_name() {
    let fixture = fixture();
    let model = &fixture["models"][0];
    assert_eq!(model["name"], "SmolLM2-135M-Instruct");
    let tensors: Vec<(String, Vec<usize>)> = model["tensors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| (t[0].as_str().unwrap().to_string(), serde_json::from_value(t[1].clone()).unwrap()))
        .collect();
    let types = tensor_types(FileType::Q4_K_M, &tensors, 30, 9, 3);
    let of = |name: &str| types[tensors.iter().position(|t| t.0 == name).unwrap()];
    assert_eq!(of("token_embd.weight"), GgmlType::Q8_0);
    assert_eq!(of("blk.0.attn_q.weight"), GgmlType::Q5_0);
    assert_eq!(of("blk.0.attn_v.weight"), GgmlType::Q8_0);
    assert_eq!(of("blk.3.attn_v.weight"), GgmlType::Q5_0);
    assert_eq!(of("blk.5.ffn_down.weight"), GgmlType::Q6_K);
    assert_eq!(of("blk.6.ffn_down.weight"), GgmlType::Q4_K);
    assert_eq!(of("output_norm.weight"), GgmlType::F32);
}

/// Path of the llama.cpp library fetched by scripts/setup-llama-quantize.sh, if present.
fn llama_quantize_available() -> bool {
    repo_root().join(".venv/node-llama-cpp/bins/linux-x64/libllama.v0.5.0.so").exists()
}

#[test]
fn smollm2_k_mixes_match_llama_quantize_bytes() {
    let src = repo_root().join("models/SmolLM2-135M-Instruct.Q4_1.gguf");
    let Some(py) = python() else {
        eprintln!("SKIPPED: .venv missing (scripts/setup-python.sh)");
        return;
    };
    if !src.exists() || !llama_quantize_available() {
        eprintln!("SKIPPED: needs {} and scripts/setup-llama-quantize.sh", src.display());
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    // SmolLM2 as F32, through our writer: llama.cpp's input.
    let model = GgufFile::open(&src).unwrap();
    let f32_path = dir.path().join("smol-f32.gguf");
    let mut metadata = model.metadata().to_vec();
    for (k, v) in metadata.iter_mut() {
        if k == "general.file_type" {
            *v = FileType::F32.id().into();
        }
    }
    let specs: Vec<TensorSpec> =
        model.tensors().iter().map(|t| TensorSpec::new(t.name(), &t.shape(), GgmlType::F32)).collect();
    let mut w = GgufWriter::create(&f32_path, metadata, specs).unwrap();
    for t in model.tensors() {
        w.write_tensor(t.name(), &model.dequantize_f32(t).unwrap()).unwrap();
    }
    w.finish().unwrap();
    let f32_file = GgufFile::open(&f32_path).unwrap();
    let tensors: Vec<(String, Vec<usize>)> =
        f32_file.tensors().iter().map(|t| (t.name().to_string(), t.shape())).collect();

    for ft in [FileType::Q4_K_M, FileType::Q5_K_M] {
        let out = dir.path().join(format!("smol-{ft}.gguf"));
        let ftype = format!("MOSTLY_{ft}");
        run_python(
            &py,
            "llama_quantize_ref.py",
            &["quantize", f32_path.to_str().unwrap(), out.to_str().unwrap(), &ftype],
        );
        let theirs = GgufFile::open(&out).unwrap();
        let types = tensor_types(ft, &tensors, 30, 9, 3);
        let mut mismatches = vec![];
        for ((name, _), ty) in tensors.iter().zip(types) {
            let t = theirs.tensor(name).unwrap();
            assert_eq!(t.ggml_type(), ty, "{ft} {name}");
            let ours = quantize(ty, &f32_file.dequantize_f32(f32_file.tensor(name).unwrap()).unwrap()).unwrap();
            if ours != theirs.tensor_bytes(t).unwrap() {
                mismatches.push(format!("{name} ({ty})"));
            }
        }
        assert!(mismatches.is_empty(), "{ft}: tensors whose bytes differ from llama.cpp's: {mismatches:?}");
        assert_eq!(theirs.get_u32("general.file_type").unwrap(), ft.id());
        eprintln!("{ft}: all {} tensors byte-identical to llama_model_quantize", tensors.len());
        std::fs::remove_file(&out).unwrap();
    }
}
