//! The merged Hugging Face folder ([`model_llama::save_hf`]) reloaded by ferrotune's own
//! loader, against the unmerged model with its adapters.
//!
//! Models: the golden fixtures (`tests/fixtures/golden_*.safetensors`, tiny random Llamas with
//! weights of std 0.3), with random nonzero LoRA adapters (A and B of std 0.3, scale 2) on all
//! seven projections and, when untied, the LM head.
//!
//! Tolerances (logits max|Δ| / max|ref|): f32 storage 1e-5 (the merge is the only
//! difference); bf16 storage 4e-2 (every weight rounded once to 8 significant bits,
//! relative error ≤ 2^-9, through two layers of a random model whose logits are O(10): 2.4e-2
//! measured). The bf16 tensors must also equal the f32 merged values rounded to bf16 bit for
//! bit, and leaving out one projection's merge must exceed the tolerance.

use engine::rng::Rng;
use engine::{DType, Tensor};
use model_llama::save_hf::{save_merged_hf, HfDtype, SaveHfOptions, TokenizerFiles, INDEX_FILE, SINGLE_FILE};
use model_llama::{Llama, LlamaConfig, Lora, SafetensorsDir, PROJECTIONS};
use std::path::{Path, PathBuf};

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(format!("../tests/fixtures/golden_{name}.safetensors"))
}

/// A source model folder materialized from the fixture (config.json from its metadata, a
/// copy of the weights, small tokenizer files), the model with random adapters, and ids.
struct Case {
    _tmp: tempfile::TempDir,
    src: PathBuf,
    model: Llama,
    ids: Tensor,
}

fn random(rng: &mut Rng, shape: &[usize], std: f64) -> Tensor {
    Tensor::from_vec(rng.normal_vec(shape.iter().product(), std), shape).unwrap()
}

fn case(name: &str) -> Case {
    let st = SafetensorsDir::open_files(&[fixture(name)]).expect("golden fixture");
    let meta = st.metadata().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    std::fs::create_dir(&src).unwrap();
    std::fs::write(src.join("config.json"), &meta["config"]).unwrap();
    std::fs::write(src.join("tokenizer.json"), "{\"fake\": \"tokenizer\"}").unwrap();
    std::fs::write(src.join("generation_config.json"), "{\"eos_token_id\": 2}").unwrap();
    let config = LlamaConfig::from_json(&meta["config"]).unwrap();
    let mut model = Llama::load(config, &st, DType::F32).unwrap();
    let mut rng = Rng::new(7);
    let r = 3;
    for i in 0..model.layers.len() {
        let layer = model.layer_mut(i).unwrap();
        for p in PROJECTIONS {
            let lin = layer.projection_mut(p).unwrap();
            let (out, inp) = lin.base.dims();
            lin.lora =
                Some(Lora { a: random(&mut rng, &[r, inp], 0.3), b: random(&mut rng, &[out, r], 0.3), scale: 2.0 });
        }
    }
    if let Some(head) = &mut model.lm_head {
        let (out, inp) = head.base.dims();
        head.lora = Some(Lora { a: random(&mut rng, &[r, inp], 0.3), b: random(&mut rng, &[out, r], 0.3), scale: 2.0 });
    }
    let ids: Vec<i32> = st.get("input_ids").unwrap().to_vec().unwrap();
    let shape = st.get("input_ids").unwrap().shape().to_vec();
    let ids = Tensor::from_vec(ids.iter().map(|&v| v as u32).collect::<Vec<u32>>(), &shape).unwrap();
    Case { _tmp: tmp, src, model, ids }
}

fn logits(model: &Llama, ids: &Tensor) -> Vec<f32> {
    let _ng = engine::no_grad();
    model.forward(ids, None).unwrap().to_vec_f32().unwrap()
}

fn reload(dir: &Path) -> Llama {
    let config = LlamaConfig::from_file(&dir.join("config.json")).unwrap();
    Llama::load(config, &SafetensorsDir::open(dir).unwrap(), DType::F32).unwrap()
}

fn rel_err(got: &[f32], want: &[f32]) -> f32 {
    assert_eq!(got.len(), want.len());
    let d = got.iter().zip(want).fold(0.0f32, |m, (a, b)| m.max((a - b).abs()));
    d / want.iter().fold(0.0f32, |m, b| m.max(b.abs()))
}

fn opts(dtype: HfDtype) -> SaveHfOptions {
    SaveHfOptions { dtype, ..Default::default() }
}

fn config_of(dir: &Path) -> serde_json::Value {
    config_of_file(&dir.join("config.json"))
}

fn config_of_file(path: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

#[test]
fn merged_f32_folder_matches_the_unmerged_model() {
    for name in ["gqa_llama3", "tied"] {
        let c = case(name);
        let want = logits(&c.model, &c.ids);
        let out = c.src.parent().unwrap().join("merged");
        let s = save_merged_hf(&c.model, Some(&c.src), &out, &opts(HfDtype::F32)).unwrap();
        assert_eq!(s.shards, vec![SINGLE_FILE.to_string()]);
        assert!(!out.join(INDEX_FILE).exists());
        let st = SafetensorsDir::open(&out).unwrap();
        let tied = name == "tied";
        assert_eq!(st.contains("lm_head.weight"), !tied, "{name}: lm_head.weight only when untied");
        assert_eq!(st.names().count(), s.n_tensors);
        let cfg = config_of(&out);
        let orig: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(c.src.join("config.json")).unwrap()).unwrap();
        for (k, v) in orig.as_object().unwrap() {
            if k != "dtype" && k != "torch_dtype" && k != "tie_word_embeddings" {
                assert_eq!(&cfg[k], v, "{name}: config key {k} kept");
            }
        }
        assert_eq!(cfg["tie_word_embeddings"], serde_json::json!(tied));
        let dtype_keys: Vec<_> = ["dtype", "torch_dtype"].into_iter().filter(|k| cfg.get(*k).is_some()).collect();
        assert!(!dtype_keys.is_empty());
        for k in dtype_keys {
            assert_eq!(cfg[k], "float32", "{name}: {k}");
        }
        assert_eq!(
            std::fs::read(out.join("tokenizer.json")).unwrap(),
            std::fs::read(c.src.join("tokenizer.json")).unwrap()
        );
        assert!(out.join("generation_config.json").exists());
        assert!(!out.join("special_tokens_map.json").exists(), "absent files are not invented");
        assert!(!out.parent().unwrap().join("merged.tmp").exists());

        let got = logits(&reload(&out), &c.ids);
        let err = rel_err(&got, &want);
        println!("{name}: f32 merged folder logits max|Δ|/max|ref| = {err:.3e}");
        assert!(err < 1e-5, "{name}: {err}");
        // The adapters matter: without them the logits differ a lot.
        let mut base = reload(&out);
        for i in 0..base.layers.len() {
            let l = base.layer_mut(i).unwrap();
            l.q_proj = model_llama::Linear::new(c.model.layers[i].q_proj.base_dense());
        }
        let miss = rel_err(&logits(&base, &c.ids), &want);
        println!("{name}: without the q_proj merges: {miss:.3e}");
        assert!(miss > 1e-2, "{name}: the test could not see a missing merge");
    }
}

/// Helper trait: the dense base of a projection (fixture models are dense).
trait BaseDense {
    fn base_dense(&self) -> Tensor;
}
impl BaseDense for model_llama::Linear {
    fn base_dense(&self) -> Tensor {
        match &self.base {
            model_llama::BaseWeight::Dense(w) => w.clone(),
            _ => panic!("dense base expected"),
        }
    }
}

#[test]
fn merged_bf16_folder_is_the_rounded_merge() {
    let c = case("gqa_llama3");
    let want = logits(&c.model, &c.ids);
    let out = c.src.parent().unwrap().join("merged-bf16");
    save_merged_hf(&c.model, Some(&c.src), &out, &opts(HfDtype::Bf16)).unwrap();
    assert!(["dtype", "torch_dtype"].iter().any(|k| config_of(&out)[*k] == "bfloat16"));
    let st = SafetensorsDir::open(&out).unwrap();
    for i in 0..c.model.layers.len() {
        let q = st.get(&format!("model.layers.{i}.self_attn.q_proj.weight")).unwrap();
        assert_eq!(q.dtype(), DType::BF16);
        let merged = model_llama::export_gguf::merged_weight(&c.model.layers[i].q_proj, "q").unwrap();
        let rounded: Vec<f32> = merged.iter().map(|&v| half::bf16::from_f32(v).to_f32()).collect();
        assert_eq!(q.to_vec_f32().unwrap(), rounded, "layer {i} q_proj: stored values are bf16(merge)");
    }
    let got = logits(&reload(&out), &c.ids);
    let err = rel_err(&got, &want);
    println!("bf16 merged folder logits max|Δ|/max|ref| = {err:.3e} (tolerance 4e-2)");
    assert!(err < 4e-2, "{err}");
    let mut unmerged_q = reload(&out);
    unmerged_q.layer_mut(1).unwrap().q_proj = model_llama::Linear::new(c.model.layers[1].q_proj.base_dense());
    let miss = rel_err(&logits(&unmerged_q, &c.ids), &want);
    println!("bf16 folder without layer 1's q_proj merge: {miss:.3e}");
    assert!(miss > 4e-2, "the tolerance could not see a missing merge: {miss}");
}

#[test]
fn tiny_shard_limit_writes_an_index_of_every_tensor() {
    let c = case("gqa_llama3");
    let out = c.src.parent().unwrap().join("sharded");
    let o = SaveHfOptions { dtype: HfDtype::Bf16, max_shard_bytes: 4096, ..Default::default() };
    let s = save_merged_hf(&c.model, Some(&c.src), &out, &o).unwrap();
    assert!(s.shards.len() > 3, "{:?}", s.shards);
    assert!(!out.join(SINGLE_FILE).exists());
    let index: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join(INDEX_FILE)).unwrap()).unwrap();
    let map = index["weight_map"].as_object().unwrap();
    assert_eq!(map.len(), s.n_tensors);
    let mut total = 0u64;
    for shard in &s.shards {
        let one = SafetensorsDir::open_files(&[out.join(shard)]).unwrap();
        let names: Vec<String> = one.names().map(String::from).collect();
        assert!(!names.is_empty());
        let size: u64 = names.iter().map(|n| 2 * one.get(n).unwrap().shape().iter().product::<usize>() as u64).sum();
        // A shard over the limit holds one tensor only.
        assert!(size <= 4096 || names.len() == 1, "{shard}: {size} bytes in {} tensors", names.len());
        for n in &names {
            assert_eq!(map[n], serde_json::json!(shard), "{n} listed in its shard");
        }
        total += size;
    }
    assert_eq!(index["metadata"]["total_size"], serde_json::json!(total));
    let expected = 2 + 9 * c.model.layers.len() + 1;
    assert_eq!(map.len(), expected, "embed, 9 per layer, norm, lm_head");
    // Same values as the single-file save.
    let single = c.src.parent().unwrap().join("single");
    save_merged_hf(&c.model, Some(&c.src), &single, &opts(HfDtype::Bf16)).unwrap();
    assert_eq!(logits(&reload(&out), &c.ids), logits(&reload(&single), &c.ids));
}

#[test]
fn existing_folder_is_refused_unless_overwrite() {
    let c = case("tied");
    let out = c.src.parent().unwrap().join("taken");
    std::fs::create_dir(&out).unwrap();
    std::fs::write(out.join("keep.txt"), "x").unwrap();
    let e = save_merged_hf(&c.model, Some(&c.src), &out, &opts(HfDtype::Bf16)).unwrap_err().to_string();
    assert!(e.contains("taken") && e.contains("not empty"), "{e}");
    assert!(out.join("keep.txt").exists());
    let o = SaveHfOptions { overwrite: true, ..opts(HfDtype::Bf16) };
    save_merged_hf(&c.model, Some(&c.src), &out, &o).unwrap();
    assert!(!out.join("keep.txt").exists() && out.join(SINGLE_FILE).exists());
    // Never over the source folder, even with overwrite.
    let e = save_merged_hf(&c.model, Some(&c.src), &c.src, &o).unwrap_err().to_string();
    assert!(e.contains("source model's folder"), "{e}");
    assert!(c.src.join("config.json").exists());
    // An empty folder is fine without overwrite.
    let empty = c.src.parent().unwrap().join("empty");
    std::fs::create_dir(&empty).unwrap();
    save_merged_hf(&c.model, Some(&c.src), &empty, &opts(HfDtype::Bf16)).unwrap();
}

#[test]
fn unwritable_parent_is_named() {
    let c = case("tied");
    // A regular file as the parent (permission bits do not stop root).
    let blocker = c.src.parent().unwrap().join("a-file");
    std::fs::write(&blocker, "x").unwrap();
    let out = blocker.join("merged");
    let e = save_merged_hf(&c.model, Some(&c.src), &out, &opts(HfDtype::Bf16)).unwrap_err().to_string();
    assert!(e.contains("a-file"), "{e}");
}

#[test]
fn gguf_source_without_tokenizer_json_is_an_error() {
    let c = case("tied");
    let gguf = c.src.parent().unwrap().join("model.gguf");
    std::fs::write(&gguf, "not really").unwrap();
    let out = c.src.parent().unwrap().join("from-gguf");
    let e = save_merged_hf(&c.model, Some(&gguf), &out, &opts(HfDtype::Bf16)).unwrap_err().to_string();
    assert!(e.contains("model.gguf") && e.contains("tokenizer"), "{e}");
    assert!(!out.exists());
    // With the tokenizer given, the folder has a config built from the model.
    let files = TokenizerFiles {
        tokenizer_json: "{}".into(),
        tokenizer_config: serde_json::json!({"bos_token": "<s>"}),
        generation_config: None,
    };
    let o = SaveHfOptions { tokenizer: Some(files), ..opts(HfDtype::F32) };
    save_merged_hf(&c.model, Some(&gguf), &out, &o).unwrap();
    assert_eq!(std::fs::read_to_string(out.join("tokenizer.json")).unwrap(), "{}");
    assert_eq!(config_of_file(&out.join("tokenizer_config.json"))["bos_token"], "<s>");
    assert!(!out.join("generation_config.json").exists());
    let cfg = config_of(&out);
    assert_eq!(cfg["architectures"][0], "LlamaForCausalLM");
    assert_eq!(cfg["torch_dtype"], "float32");
    assert_eq!(cfg["tie_word_embeddings"], true);
    assert_eq!(logits(&reload(&out), &c.ids), logits(&reload_via_copy(&c), &c.ids));
}

/// The same model saved from its folder (reference for the built config).
fn reload_via_copy(c: &Case) -> Llama {
    let out = c.src.parent().unwrap().join("from-folder");
    save_merged_hf(&c.model, Some(&c.src), &out, &opts(HfDtype::F32)).unwrap();
    reload(&out)
}

#[test]
fn nf4_base_is_dequantized_before_merging() {
    let mut c = case("gqa_llama3");
    for i in 0..c.model.layers.len() {
        let layer = c.model.layer_mut(i).unwrap();
        for p in PROJECTIONS {
            layer.projection_mut(p).unwrap().quantize_nf4(true).unwrap();
        }
    }
    assert!(matches!(c.model.layers[0].q_proj.base, model_llama::BaseWeight::Nf4(_)));
    let want = logits(&c.model, &c.ids);
    let out = c.src.parent().unwrap().join("merged-nf4");
    save_merged_hf(&c.model, Some(&c.src), &out, &opts(HfDtype::F32)).unwrap();
    let err = rel_err(&logits(&reload(&out), &c.ids), &want);
    println!("NF4 base: f32 merged folder logits max|Δ|/max|ref| = {err:.3e}");
    assert!(err < 1e-5, "{err}");
}

#[test]
fn tokenizer_files_from_a_tokenizer() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/data/tokenizers/llama3/tokenizer.json");
    if !path.exists() {
        println!("skipped: {} not found", path.display());
        return;
    }
    let tok = model_llama::Tokenizer::from_file(&path).unwrap();
    let f = TokenizerFiles::from_tokenizer(&tok, "{}".into());
    assert_eq!(f.tokenizer_config["bos_token"], "<|begin_of_text|>");
    assert_eq!(f.tokenizer_config["add_bos_token"], true);
    assert!(f.tokenizer_config["chat_template"].as_str().is_some_and(|t| t.contains("start_header_id")));
    let g = f.generation_config.unwrap();
    assert_eq!(g["bos_token_id"], 128000);
    let eos: Vec<u64> = match &g["eos_token_id"] {
        serde_json::Value::Array(a) => a.iter().map(|v| v.as_u64().unwrap()).collect(),
        v => vec![v.as_u64().unwrap()],
    };
    assert!(eos.contains(&128009), "{eos:?}");
}
