//! Hugging Face interop: what ferrotune writes, loaded by peft and transformers.
//!
//! For each golden fixture model (`tests/fixtures/golden_*.safetensors`, config in its
//! metadata) this test materializes a Hugging Face base folder (config.json +
//! model.safetensors, f32), loads it with ferrotune's loader, attaches LoRA adapters with
//! nonzero random A and B on all seven projections, computes f32 logits, and writes the
//! adapter (PEFT format, `trainer::save_adapter`) and the merged bf16 folder
//! (`model_llama::save_hf`). Then `scripts/hf_interop.py` loads base + adapter with peft and
//! the merged folder with transformers and compares their logits with ferrotune's (adapter:
//! max|Δ| < 1e-3 in f32; merged: no further from ferrotune's logits than peft's own f32 merge
//! rounded to bf16 is (x1.05, + 1e-4 max|ref|), and every stored weight within bf16 rounding
//! of peft's merge; the script's docstring explains).
//!
//! It needs a python with torch, transformers and peft (`FERROTUNE_PYTHON`, default
//! `python3`); without one it prints why it skipped, unless `FERROTUNE_HF_INTEROP_REQUIRED=1`
//! makes that a failure. `FERROTUNE_HF_INTEROP_KEEP=DIR` keeps the generated folders there.

use engine::rng::Rng;
use engine::{DType, Tensor};
use model_llama::save_hf::{save_merged_hf, HfDtype, SaveHfOptions};
use model_llama::{Llama, LlamaConfig, SafetensorsDir};
use safetensors::tensor::{Dtype, TensorView};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use trainer::{attach, save_adapter, LoraConfig};

/// The repository root: the build's, or the working folder when the test binary runs
/// elsewhere (a staged binary on another machine, run from a copy of the repository).
fn root() -> PathBuf {
    let built = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    if built.join("tests/fixtures").is_dir() {
        built
    } else {
        std::env::current_dir().unwrap()
    }
}

fn python() -> String {
    std::env::var("FERROTUNE_PYTHON").unwrap_or_else(|_| "python3".into())
}

/// Why the python cannot run the check, if it cannot.
fn python_missing() -> Option<String> {
    let out = Command::new(python()).args(["-c", "import torch, transformers, peft, safetensors"]).output();
    match out {
        Err(e) => Some(format!("{}: {e}", python())),
        Ok(o) if !o.status.success() => {
            let err = String::from_utf8_lossy(&o.stderr);
            Some(format!("{}: {}", python(), err.lines().last().unwrap_or("import failed")))
        }
        Ok(_) => None,
    }
}

fn write_st(path: &Path, tensors: &[(String, Dtype, Vec<usize>, Vec<u8>)]) {
    let views: Vec<(&str, TensorView)> =
        tensors.iter().map(|(n, dt, shape, b)| (n.as_str(), TensorView::new(*dt, shape.clone(), b).unwrap())).collect();
    let meta = HashMap::from([("format".to_string(), "pt".to_string())]);
    safetensors::tensor::serialize_to_file(views, Some(meta), path).unwrap();
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// Writes the inputs of the check for fixture `name` into `dir`: the base folder, the adapter
/// folder, the merged folder and the logits file (with the ids), returned in that order.
fn build_inputs(name: &str, dir: &Path) -> (PathBuf, PathBuf, PathBuf, PathBuf) {
    let st = SafetensorsDir::open_files(&[root().join(format!("tests/fixtures/golden_{name}.safetensors"))]).unwrap();
    let meta = st.metadata().unwrap();
    let (base, adapter, merged, logits) =
        (dir.join("base"), dir.join("adapter"), dir.join("merged"), dir.join("logits.safetensors"));
    std::fs::create_dir_all(&base).unwrap();
    std::fs::write(base.join("config.json"), &meta["config"]).unwrap();
    let mut names: Vec<&str> = st.names().filter(|n| n.starts_with("model.") || *n == "lm_head.weight").collect();
    names.sort();
    let tensors: Vec<_> = names
        .iter()
        .map(|n| {
            let t = st.get(n).unwrap();
            (n.to_string(), Dtype::F32, t.shape().to_vec(), f32_bytes(&t.to_vec_f32().unwrap()))
        })
        .collect();
    write_st(&base.join("model.safetensors"), &tensors);

    // The base through ferrotune's loader, with random nonzero adapters.
    let config = LlamaConfig::from_file(&base.join("config.json")).unwrap();
    let mut model = Llama::load(config, &SafetensorsDir::open(&base).unwrap(), DType::F32).unwrap();
    let lora = LoraConfig::all_projections(4, 8.0);
    let mut rng = Rng::new(2024);
    attach(&mut model, &lora, |n| {
        let (out, inp) = model_dims(&st, n);
        let shape = if n.contains("lora_A") { [lora.r, inp] } else { [out, lora.r] };
        Tensor::from_vec(rng.normal_vec(shape[0] * shape[1], 0.3), &shape)
    })
    .unwrap();
    let ids: Vec<i32> = st.get("input_ids").unwrap().to_vec().unwrap();
    let ids_shape = st.get("input_ids").unwrap().shape().to_vec();
    let ids_t = Tensor::from_vec(ids.iter().map(|&v| v as u32).collect::<Vec<u32>>(), &ids_shape).unwrap();
    let out = {
        let _ng = engine::no_grad();
        model.forward(&ids_t, None).unwrap()
    };
    let ids_bytes: Vec<u8> = ids.iter().flat_map(|&v| (v as i64).to_le_bytes()).collect();
    write_st(
        &logits,
        &[
            ("logits".into(), Dtype::F32, out.shape().to_vec(), f32_bytes(&out.to_vec_f32().unwrap())),
            ("input_ids".into(), Dtype::I64, ids_shape, ids_bytes),
        ],
    );
    save_adapter(&adapter, &model, &lora, Some(base.to_str().unwrap())).unwrap();
    save_merged_hf(&model, Some(&base), &merged, &SaveHfOptions::default()).unwrap();
    let opts = SaveHfOptions { dtype: HfDtype::F32, ..SaveHfOptions::default() };
    save_merged_hf(&model, Some(&base), &merged.with_extension("f32"), &opts).unwrap();
    (base, adapter, merged, logits)
}

/// `(out, in)` of the base weight that the adapter tensor `peft_name` belongs to.
fn model_dims(st: &SafetensorsDir, peft_name: &str) -> (usize, usize) {
    let module = peft_name.trim_start_matches("base_model.model.").split(".lora_").next().unwrap();
    let w = st.get(&format!("{module}.weight")).unwrap();
    (w.dim(0), w.dim(1))
}

#[test]
fn peft_and_transformers_load_what_ferrotune_writes() {
    let keep = std::env::var_os("FERROTUNE_HF_INTEROP_KEEP").map(PathBuf::from);
    let work = keep
        .clone()
        .unwrap_or_else(|| std::env::temp_dir().join(format!("ferrotune-hf-interop-{}", std::process::id())));
    let _ = std::fs::remove_dir_all(&work);
    let missing = python_missing();
    for name in ["gqa_llama3", "tied"] {
        let dir = work.join(name);
        let (base, adapter, merged, logits) = build_inputs(name, &dir);
        // The inputs are complete whether or not python can check them.
        for f in ["adapter_config.json", "adapter_model.safetensors"] {
            assert!(adapter.join(f).is_file(), "{name}: {f}");
        }
        assert!(merged.join("config.json").is_file() && merged.join("model.safetensors").is_file());
        if let Some(why) = &missing {
            continue_or_fail(why);
            continue;
        }
        // The bf16 folder (within bf16 rounding) and the f32 one (max |delta| < 1e-3).
        for folder in [merged.clone(), merged.with_extension("f32")] {
            let out = Command::new(python())
                .arg(root().join("scripts/hf_interop.py"))
                .args(["--base", base.to_str().unwrap(), "--adapter", adapter.to_str().unwrap()])
                .args(["--merged", folder.to_str().unwrap(), "--logits", logits.to_str().unwrap()])
                .output()
                .expect("run scripts/hf_interop.py");
            println!("{name} {}: {}", folder.display(), String::from_utf8_lossy(&out.stdout));
            eprintln!("{}", String::from_utf8_lossy(&out.stderr));
            assert!(out.status.success(), "{name}: hf_interop.py failed on {} ({})", folder.display(), out.status);
        }
    }
    if keep.is_none() {
        let _ = std::fs::remove_dir_all(&work);
    }
}

fn continue_or_fail(why: &str) {
    let required = std::env::var("FERROTUNE_HF_INTEROP_REQUIRED").is_ok_and(|v| v == "1");
    assert!(!required, "FERROTUNE_HF_INTEROP_REQUIRED=1 but no usable python: {why}");
    println!("skipped the peft/transformers check (no python with torch, transformers and peft: {why})");
}
