//! A Hugging Face model folder with sharded safetensors, config.json and tokenizer.json loads
//! through `load_model` (by path and as a repo id in an offline HF cache) and computes the
//! same logits as the same weights read from one file.

use engine::{DType, Tensor};
use model_llama::{load_model, Llama, LlamaConfig, SafetensorsDir};
use safetensors::tensor::TensorView;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/golden_gqa_llama3.safetensors")
}

fn tempdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("ferrotune-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Writes the fixture's base weights as two shards plus index, config and tokenizer.
fn write_folder(dir: &Path) -> String {
    let st = SafetensorsDir::open_files(&[fixture()]).unwrap();
    let config = st.metadata().unwrap()["config"].clone();
    let mut names: Vec<&str> = st.names().filter(|n| n.starts_with("model.") || n.starts_with("lm_head")).collect();
    names.sort();
    let values: BTreeMap<&str, (Vec<usize>, Vec<u8>)> = names
        .iter()
        .map(|&n| {
            let t = st.get(n).unwrap();
            let bytes = t.to_vec_f32().unwrap().iter().flat_map(|v| v.to_le_bytes()).collect();
            (n, (t.shape().to_vec(), bytes))
        })
        .collect();
    let mut weight_map = serde_json::Map::new();
    for (i, part) in names.chunks(names.len() / 2 + 1).enumerate() {
        let file = format!("model-0000{}-of-00002.safetensors", i + 1);
        let views: Vec<(&str, TensorView)> = part
            .iter()
            .map(|&n| {
                let (shape, bytes) = &values[n];
                (n, TensorView::new(safetensors::Dtype::F32, shape.clone(), bytes).unwrap())
            })
            .collect();
        safetensors::serialize_to_file(views, None, &dir.join(&file)).unwrap();
        for n in part {
            weight_map.insert(n.to_string(), file.clone().into());
        }
    }
    let index = serde_json::json!({ "metadata": {}, "weight_map": weight_map });
    std::fs::write(dir.join("model.safetensors.index.json"), index.to_string()).unwrap();
    std::fs::write(dir.join("config.json"), &config).unwrap();
    let tok = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data/tokenizers/llama3/tokenizer.json");
    std::fs::copy(&tok, dir.join("tokenizer.json")).unwrap_or_else(|e| panic!("{}: {e}", tok.display()));
    config
}

fn logits(model: &Llama) -> Vec<f32> {
    let _ng = engine::no_grad();
    let ids = Tensor::from_vec(vec![3u32, 14, 15, 92, 65, 35, 89, 79], &[1, 8]).unwrap();
    model.forward(&ids, None).unwrap().to_vec_f32().unwrap()
}

#[test]
fn sharded_folder_loads_like_the_single_file() {
    let dir = tempdir("hf-folder");
    let config = write_folder(&dir);
    let loaded = load_model(dir.to_str().unwrap(), DType::F32).unwrap();
    assert_eq!(loaded.tokenizer.encode("hello world", false).unwrap().len(), 2);
    let st = SafetensorsDir::open_files(&[fixture()]).unwrap();
    let direct = Llama::load(LlamaConfig::from_json(&config).unwrap(), &st, DType::F32).unwrap();
    assert_eq!(logits(&loaded.model), logits(&direct), "sharded folder and single file differ");
}

#[test]
fn repo_id_resolves_through_an_offline_cache() {
    let cache = tempdir("hf-cache");
    let repo = cache.join("models--tiny--golden");
    let snapshot = repo.join("snapshots/0123456789abcdef");
    std::fs::create_dir_all(&snapshot).unwrap();
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    std::fs::write(repo.join("refs/main"), "0123456789abcdef").unwrap();
    write_folder(&snapshot);
    // The cache root comes from the environment; this test is the only one in this binary
    // that sets it.
    std::env::set_var("HF_HUB_CACHE", &cache);
    std::env::set_var("HF_HUB_OFFLINE", "1");
    let loaded = load_model("tiny/golden", DType::F32).unwrap();
    assert_eq!(loaded.path, snapshot);
    std::fs::remove_file(snapshot.join("model-00002-of-00002.safetensors")).unwrap();
    let err = load_model("tiny/golden", DType::F32).err().expect("a missing shard must fail").to_string();
    assert!(err.contains("model-00002-of-00002.safetensors"), "{err}");
}
