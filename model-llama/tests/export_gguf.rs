//! GGUF export checked against llama.cpp (xllamacpp, through scripts/llamacpp_ref.py):
//! SmolLM2-135M with random LoRA adapters on every projection, merged and exported as
//! F32/F16/BF16/Q8_0 and the 4-6 bit mixes; llama.cpp's next-token log-probabilities and
//! greedy text against ferrotune's on the merged f32 weights; the F32 file read back by our
//! reader and loader; the LoRA adapter GGUF applied by llama.cpp on the exported base; and bad
//! inputs. Skipped (with the reason printed) when the model or the Python environment is
//! missing.

use engine::rng::Rng;
use engine::{DType, Tensor};
use gguf::mixes::FileType;
use gguf::{GgmlType, GgufFile, GgufWriter, TensorSpec, Value};
use model_llama::config::Llama3Scaling;
use model_llama::export_gguf::{export_gguf, export_lora_adapter_gguf, merge_adapters, permute_rows};
use model_llama::generate::{generate, Sampler, SamplingParams};
use model_llama::gguf_weights::{unpermute_rows, GgufWeights};
use model_llama::{load_model, Llama, LlamaConfig, Lora, WeightSource, PROJECTIONS};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn model_path() -> PathBuf {
    root().join("models/SmolLM2-135M-Instruct.Q4_1.gguf")
}

/// Why the llama.cpp tests cannot run, if they cannot.
fn skip_reason() -> Option<String> {
    let py = root().join(".venv/bin/python");
    if !py.exists() {
        return Some(format!("{} missing (run scripts/setup-python.sh)", py.display()));
    }
    if !model_path().exists() {
        return Some(format!("{} missing (run scripts/fetch-smollm2.sh)", model_path().display()));
    }
    None
}

/// Attaches LoRA adapters with random nonzero A and B to every projection.
fn attach_random_lora(model: &mut Llama, rank: usize, seed: u64) {
    let mut rng = Rng::new(seed);
    for i in 0..model.layers.len() {
        let layer = model.layer_mut(i).expect("unshared layer");
        for p in PROJECTIONS {
            let lin = layer.projection_mut(p).unwrap();
            let (rows, cols) = lin.base.dims();
            let a: Vec<f32> = (0..rank * cols).map(|_| rng.uniform_range(-0.1, 0.1) as f32).collect();
            let b: Vec<f32> = (0..rows * rank).map(|_| rng.uniform_range(-0.05, 0.05) as f32).collect();
            lin.lora = Some(Lora {
                a: Tensor::from_vec(a, &[rank, cols]).unwrap(),
                b: Tensor::from_vec(b, &[rows, rank]).unwrap(),
                scale: 8.0 / rank as f64,
            });
        }
    }
}

fn next_logprobs(model: &Llama, ids: &[u32]) -> Vec<f32> {
    model.next_token_logprobs(ids).unwrap()
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

struct RefResult {
    logprobs: Vec<f32>,
    greedy: Vec<u32>,
    text: String,
}

/// Runs `script` (llamacpp_ref.py or llamacpp_lora_ref.py with its leading arguments).
fn llamacpp(
    script_args: &[&str],
    model: &Path,
    prompts: &Path,
    out: &Path,
    n_predict: usize,
    f32_cache: bool,
) -> Vec<RefResult> {
    let mut cmd = Command::new(root().join(".venv/bin/python"));
    cmd.current_dir(root()).args(script_args).arg(model).arg(prompts).arg(out);
    cmd.args(["--n-predict", &n_predict.to_string()]);
    if f32_cache {
        cmd.arg("--f32-cache");
    }
    let o = cmd.output().expect("run python");
    assert!(
        o.status.success(),
        "llama.cpp reference failed for {}:\n{}\n{}",
        model.display(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    let json: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out).unwrap()).unwrap();
    json["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| RefResult {
            logprobs: r["logprobs"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap() as f32).collect(),
            greedy: r["greedy"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect(),
            text: r["text"].as_str().unwrap().to_string(),
        })
        .collect()
}

#[test]
fn permute_is_inverse_of_unpermute() {
    let (rows, cols, heads) = (12, 3, 2);
    let w: Vec<f32> = (0..rows * cols).map(|v| v as f32).collect();
    let p = permute_rows(&w, rows, cols, heads);
    assert_ne!(p, w);
    assert_eq!(unpermute_rows(&p, rows, cols, heads), w);
    // Head 0 (d = 6): GGUF rows 0..6 hold HF rows 0, 3, 1, 4, 2, 5.
    let first: Vec<f32> = (0..6).map(|r| p[r * cols] / cols as f32).collect();
    assert_eq!(first, vec![0.0, 3.0, 1.0, 4.0, 2.0, 5.0]);
}

#[test]
fn smollm2_export_matches_llama_cpp() {
    if let Some(why) = skip_reason() {
        eprintln!("skipped: {why}");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let loaded = load_model(model_path().to_str().unwrap(), DType::F32).unwrap();
    let source = GgufFile::open(model_path()).unwrap();
    let (mut model, tok) = (loaded.model, loaded.tokenizer);

    // The unmerged base as F32, for the adapter check.
    let base_path = d.join("base-f32.gguf");
    export_gguf(&model, &tok, Some(&source), &base_path, FileType::F32, "SmolLM2 base").unwrap();

    attach_random_lora(&mut model, 8, 7);
    let prompts: Vec<Vec<u32>> = vec![
        tok.encode("<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n", true)
            .unwrap(),
        tok.encode("The quick brown fox jumps over the lazy dog. Once upon a time", true).unwrap(),
    ];
    let prompts_path = d.join("prompts.json");
    std::fs::write(&prompts_path, serde_json::to_string(&prompts).unwrap()).unwrap();
    let with_lora: Vec<Vec<f32>> = prompts.iter().map(|p| next_logprobs(&model, p)).collect();

    let adapter_path = d.join("adapter.gguf");
    let s = export_lora_adapter_gguf(&model, &adapter_path, "SmolLM2").unwrap();
    assert_eq!(s.n_tensors, 30 * 7 * 2);

    let types = [
        FileType::F32,
        FileType::F16,
        FileType::BF16,
        FileType::Q8_0,
        FileType::Q4_K_M,
        FileType::Q4_0,
        FileType::Q5_K_M,
        FileType::Q6_K,
    ];
    let mut files = Vec::new();
    for ft in types {
        let path = d.join(format!("merged-{ft}.gguf"));
        let t0 = std::time::Instant::now();
        let s = export_gguf(&model, &tok, Some(&source), &path, ft, "SmolLM2 merged").unwrap();
        eprintln!("export {ft}: {} bytes, {} tensors, {:.1} s", s.size, s.n_tensors, t0.elapsed().as_secs_f64());
        assert_eq!(s.n_tensors, 1 + 30 * 9 + 1);
        files.push((ft, path));
    }

    // Ferrotune on the merged f32 weights.
    merge_adapters(&mut model).unwrap();
    assert!(model.layers.iter().all(|l| PROJECTIONS.iter().all(|p| l.projection(p).unwrap().lora.is_none())));
    let ours: Vec<Vec<f32>> = prompts.iter().map(|p| next_logprobs(&model, p)).collect();
    for (a, b) in ours.iter().zip(&with_lora) {
        let dm = max_abs_diff(a, b);
        eprintln!("merged vs unmerged LoRA forward (ferrotune): max|d| {dm:.2e}");
        assert!(dm < 1e-3, "merging changed the model's output by {dm}");
    }

    // Round trip: the F32 export through our reader and loader.
    let f32_path = &files[0].1;
    let f = GgufFile::open(f32_path).unwrap();
    assert_eq!(f.get_str("general.architecture").unwrap(), "llama");
    assert_eq!(f.get_u32("general.file_type").unwrap(), 0);
    assert_eq!(f.get_u32("llama.block_count").unwrap(), 30);
    assert_eq!(f.get_u32("llama.embedding_length").unwrap(), 576);
    assert_eq!(f.get_u32("llama.attention.head_count_kv").unwrap(), 3);
    assert_eq!(f.get_str("tokenizer.ggml.pre").unwrap(), source.get_str("tokenizer.ggml.pre").unwrap());
    assert_eq!(f.get_str_array("tokenizer.ggml.tokens").unwrap().len(), 49152);
    assert!(!f.contains_tensor("output.weight"));
    let q = f.tensor("blk.0.attn_q.weight").unwrap();
    assert_eq!((q.shape(), q.ggml_type()), (vec![576, 576], GgmlType::F32));
    let k = f.tensor("blk.29.attn_k.weight").unwrap();
    assert_eq!(k.shape(), vec![192, 576]);
    assert_eq!(f.tensor("token_embd.weight").unwrap().shape(), vec![49152, 576]);
    let w = GgufWeights::open(f32_path).unwrap();
    let cfg = w.config().unwrap();
    assert_eq!(cfg, model.config.as_ref().clone());
    let back = Llama::load(cfg, &w, DType::F32).unwrap();
    for (p, o) in prompts.iter().zip(&ours) {
        let dm = max_abs_diff(&next_logprobs(&back, p), o);
        eprintln!("round trip F32 export -> GgufWeights: max|d| {dm:.2e}");
        assert_eq!(dm, 0.0, "the F32 export read back gives other log-probs");
    }
    drop(back);
    drop(w);
    let q4km = GgufFile::open(&files[4].1).unwrap();
    assert_eq!(q4km.tensor("blk.0.ffn_down.weight").unwrap().ggml_type(), GgmlType::Q6_K);
    assert_eq!(q4km.tensor("blk.3.ffn_up.weight").unwrap().ggml_type(), GgmlType::Q5_0);

    // llama.cpp on each export.
    let mut greedy_ours = Vec::new();
    for p in &prompts {
        let mut sampler = Sampler::new(SamplingParams::default());
        let (ids, _) = generate(&model, p, 32, tok.eos_ids(), &mut sampler, |_| true).unwrap();
        greedy_ours.push(ids);
    }
    let mut report = Vec::new();
    for (ft, path) in &files {
        // f32 KV cache and no flash attention for every type: what differs is the weights and
        // llama.cpp's dot products (activations rounded to f16/bf16, or to 8 bits for block types).
        let exact = true;
        let n_predict = if *ft == FileType::F16 { 32 } else { 1 };
        let out = d.join(format!("ref-{ft}.json"));
        let refs = llamacpp(&["scripts/llamacpp_ref.py"], path, &prompts_path, &out, n_predict, exact);
        // Ferrotune on the exported (rounded / quantized) weights, read back from the file.
        let w = GgufWeights::open(path).unwrap();
        let back = Llama::load(w.config().unwrap(), &w, DType::F32).unwrap();
        let on_file: Vec<Vec<f32>> = prompts.iter().map(|p| next_logprobs(&back, p)).collect();
        drop(back);
        let worst = |o: &[Vec<f32>]| refs.iter().zip(o).map(|(r, o)| max_abs_diff(&r.logprobs, o)).fold(0.0, f32::max);
        let (dm, df) = (worst(&ours), worst(&on_file));
        eprintln!(
            "{ft}: llama.cpp vs ferrotune next-token log-probs max|d|: {df:.4} on the exported weights, \
             {dm:.4} vs the merged f32 model"
        );
        // Exact arithmetic on the same weights: the file dequantized to F32 by gguf-py, run by
        // llama.cpp in f32 (checks what llama.cpp's own stack reads from the file).
        let dx = if *ft == FileType::F32 {
            df
        } else {
            let f32_copy = d.join(format!("deq-{ft}.gguf"));
            let o = Command::new(root().join(".venv/bin/python"))
                .current_dir(root())
                .arg("scripts/gguf_to_f32.py")
                .arg(path)
                .arg(&f32_copy)
                .output()
                .unwrap();
            assert!(o.status.success(), "gguf_to_f32 {ft}: {}", String::from_utf8_lossy(&o.stderr));
            let x = llamacpp(&["scripts/llamacpp_ref.py"], &f32_copy, &prompts_path, &d.join("x.json"), 1, true);
            std::fs::remove_file(&f32_copy).unwrap();
            x.iter().zip(&on_file).map(|(r, o)| max_abs_diff(&r.logprobs, o)).fold(0.0, f32::max)
        };
        eprintln!("{ft}: llama.cpp in f32 on the file's weights (dequantized by gguf-py) vs ferrotune: {dx:.4}");
        // What rounding the weights to this type costs by itself, in ferrotune's own forward:
        // the part of the gap to the merged f32 model that no exporter can remove (the tensors
        // equal llama_model_quantize's byte for byte: tests/export_cli.rs).
        let dw = on_file.iter().zip(&ours).map(|(a, b)| max_abs_diff(a, b)).fold(0.0, f32::max);
        eprintln!(
            "{ft}: ferrotune on the file's weights vs on the merged f32 weights (weight rounding alone): {dw:.4}"
        );
        // The same on the likely tokens only (ferrotune log-prob above -10).
        let top = refs
            .iter()
            .zip(&on_file)
            .flat_map(|(r, o)| r.logprobs.iter().zip(o).filter(|(_, &b)| b > -10.0).map(|(a, b)| (a - b).abs()))
            .fold(0.0, f32::max);
        eprintln!("{ft}: on tokens with log-prob > -10: max|d| {top:.4}");
        report.push((*ft, df, dm, dx, top));
        assert!(dx < 2e-2, "{ft}: exact-arithmetic max|d| {dx}");
        match ft {
            FileType::F32 | FileType::F16 => assert!(dm < 5e-2 && df < 2e-2, "{ft}: max|d| {dm} / {df}"),
            // llama.cpp's CPU matmul rounds the activations to bf16 (vec_dot_type BF16).
            FileType::BF16 => assert!(df < 0.25, "{ft}: max|d| {df}"),
            // Native Q8_0 dot products quantize the activations to 8 bits: 0.35 on likely
            // tokens, 0.76 over the vocabulary (the exact check above is 2e-4).
            FileType::Q8_0 => assert!(top < 0.6 && df < 2.0, "{ft}: max|d| {top} / {df}"),
            // 4-6 bit: reported; their weights are checked exactly above.
            _ => assert!(df < 3.0, "{ft}: max|d| {df}"),
        }
        if *ft == FileType::F16 {
            for (i, (r, g)) in refs.iter().zip(&greedy_ours).enumerate() {
                let ours_text = tok.decode(g, false).unwrap();
                eprintln!("prompt {i} greedy: llama.cpp F16 {:?}\n               ferrotune {:?}", r.text, ours_text);
                assert_eq!(r.text, ours_text, "prompt {i}: greedy text differs");
                assert_eq!(&r.greedy[..r.greedy.len().min(g.len())], &g[..r.greedy.len().min(g.len())]);
            }
        }
    }

    // The adapter on the unmerged base, applied by llama.cpp, vs the merged F32 export.
    let merged_ref = llamacpp(&["scripts/llamacpp_ref.py"], f32_path, &prompts_path, &d.join("m.json"), 1, true);
    let adapter_s = adapter_path.to_str().unwrap();
    let lora_ref =
        llamacpp(&["scripts/llamacpp_lora_ref.py", adapter_s], &base_path, &prompts_path, &d.join("l.json"), 1, true);
    let base_ref = llamacpp(&["scripts/llamacpp_ref.py"], &base_path, &prompts_path, &d.join("b.json"), 1, true);
    for ((l, m), b) in lora_ref.iter().zip(&merged_ref).zip(&base_ref) {
        let dm = max_abs_diff(&l.logprobs, &m.logprobs);
        let db = max_abs_diff(&b.logprobs, &m.logprobs);
        eprintln!("llama.cpp base+adapter GGUF vs merged F32 export: max|d| {dm:.2e} (base alone: {db:.3})");
        assert!(db > 0.1, "the adapters barely change the model ({db}): the check would prove nothing");
        assert!(dm < 1e-2, "base + adapter differs from the merged export by {dm}");
    }
    eprintln!("summary: {report:?}");
}

/// A tiny random Llama (vocab 49152 so SmolLM2's tokenizer fits), from an in-memory source.
struct MapSource(HashMap<String, Tensor>);

impl WeightSource for MapSource {
    fn get(&self, name: &str) -> model_llama::Result<Tensor> {
        self.0.get(name).cloned().ok_or_else(|| model_llama::LoadError::Invalid(format!("missing {name}")))
    }
    fn contains(&self, name: &str) -> bool {
        self.0.contains_key(name)
    }
}

fn tiny(vocab: usize) -> Llama {
    tiny_with(vocab, None)
}

fn tiny_with(vocab: usize, rope_scaling: Option<Llama3Scaling>) -> Llama {
    let cfg = LlamaConfig {
        hidden_size: 32,
        intermediate_size: 64,
        num_hidden_layers: 2,
        num_attention_heads: 4,
        num_key_value_heads: 2,
        head_dim: 8,
        vocab_size: vocab,
        rms_norm_eps: 1e-5,
        rope_theta: 500000.0,
        rope_scaling,
        rope_freq_factors: None,
        max_position_embeddings: 1024,
        tie_word_embeddings: true,
        bos_token_id: None,
        eos_token_ids: vec![],
    };
    let mut rng = Rng::new(1);
    let mut m = HashMap::new();
    let mut put = |n: String, shape: &[usize]| {
        let len = shape.iter().product();
        let mut v = rng.normal_vec(len, 0.3);
        if n.ends_with("norm.weight") {
            v.iter_mut().for_each(|x| *x = 1.0 + *x * 0.3);
        }
        m.insert(n, Tensor::from_vec(v, shape).unwrap());
    };
    put("model.embed_tokens.weight".into(), &[vocab, 32]);
    put("model.norm.weight".into(), &[32]);
    for i in 0..2 {
        let p = format!("model.layers.{i}");
        put(format!("{p}.input_layernorm.weight"), &[32]);
        put(format!("{p}.post_attention_layernorm.weight"), &[32]);
        put(format!("{p}.self_attn.q_proj.weight"), &[32, 32]);
        put(format!("{p}.self_attn.k_proj.weight"), &[16, 32]);
        put(format!("{p}.self_attn.v_proj.weight"), &[16, 32]);
        put(format!("{p}.self_attn.o_proj.weight"), &[32, 32]);
        put(format!("{p}.mlp.gate_proj.weight"), &[64, 32]);
        put(format!("{p}.mlp.up_proj.weight"), &[64, 32]);
        put(format!("{p}.mlp.down_proj.weight"), &[32, 64]);
    }
    Llama::load(cfg, &MapSource(m), DType::F32).unwrap()
}

#[test]
fn bad_inputs_give_clear_errors_and_no_file() {
    if !model_path().exists() {
        eprintln!("skipped: {} missing (run scripts/fetch-smollm2.sh)", model_path().display());
        return;
    }
    let source = GgufFile::open(model_path()).unwrap();
    let tok = model_llama::Tokenizer::from_gguf(&source).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();

    // A good tiny export works (tokenizer keys copied from the tokenizer's GGUF).
    let mut model = tiny(49152);
    let ok = d.join("ok.gguf");
    let s = export_gguf(&model, &tok, None, &ok, FileType::Q8_0, "tiny").unwrap();
    assert_eq!(s.n_tensors, 1 + 2 * 9 + 1);
    assert_eq!(GgufFile::open(&ok).unwrap().get_str("tokenizer.ggml.pre").unwrap(), "smollm");

    // No adapters: the adapter export refuses.
    let out = d.join("none.gguf");
    let e = export_lora_adapter_gguf(&model, &out, "tiny").unwrap_err().to_string();
    assert!(e.contains("no LoRA adapters") && e.contains("none.gguf"), "{e}");
    assert!(!out.exists());

    // An adapter whose shapes do not fit its base.
    model.layer_mut(1).unwrap().v_proj.lora = Some(Lora {
        a: Tensor::from_vec(vec![0.1f32; 4 * 31], &[4, 31]).unwrap(),
        b: Tensor::from_vec(vec![0.1f32; 16 * 4], &[16, 4]).unwrap(),
        scale: 1.0,
    });
    for adapter in [false, true] {
        let out = d.join("badshape.gguf");
        let e = if adapter {
            export_lora_adapter_gguf(&model, &out, "tiny").unwrap_err().to_string()
        } else {
            export_gguf(&model, &tok, None, &out, FileType::F16, "tiny").unwrap_err().to_string()
        };
        assert!(e.contains("badshape.gguf") && e.contains("layer 1 v_proj") && e.contains("[4, 31]"), "{e}");
        assert!(!out.exists());
    }
    model.layer_mut(1).unwrap().v_proj.lora = None;

    // A vocabulary the tokenizer does not match.
    let out = d.join("vocab.gguf");
    let e = export_gguf(&tiny(300), &tok, None, &out, FileType::F32, "tiny").unwrap_err().to_string();
    assert!(e.contains("49152 tokens") && e.contains("300") && e.contains("vocab.gguf"), "{e}");
    assert!(!out.exists());

    // An unsupported architecture in the source GGUF.
    let qwen = d.join("qwen.gguf");
    let md = vec![("general.architecture".to_string(), Value::String("qwen2".into()))];
    let mut w = GgufWriter::create(&qwen, md, vec![TensorSpec::new("x", &[32], GgmlType::F32)]).unwrap();
    w.write_tensor("x", &[0.0; 32]).unwrap();
    w.finish().unwrap();
    let qsrc = GgufFile::open(&qwen).unwrap();
    let out = d.join("arch.gguf");
    let e = export_gguf(&model, &tok, Some(&qsrc), &out, FileType::F32, "tiny").unwrap_err().to_string();
    assert!(e.contains("unsupported architecture") && e.contains("qwen2") && e.contains("qwen.gguf"), "{e}");
    assert!(!out.exists());

    // An output folder that cannot be written (its parent is a file).
    let out = ok.join("sub.gguf");
    let e = export_gguf(&model, &tok, None, &out, FileType::F32, "tiny").unwrap_err().to_string();
    assert!(e.contains("sub.gguf"), "{e}");
    assert!(!out.exists());
}

/// Tokenizers from Hugging Face folders (Llama-3, DeepSeek-R1-Distill-Llama) with a tiny
/// llama3-rope-scaled model: the exported tokenizer metadata rebuilds a tokenizer that encodes
/// as the original, `rope_freqs.weight` reproduces the scaled frequencies, and llama.cpp
/// (when available) loads the file and agrees with ferrotune.
#[test]
fn hf_tokenizers_and_llama3_rope_export() {
    let dir = tempfile::tempdir().unwrap();
    let scaling = Llama3Scaling {
        factor: 8.0,
        low_freq_factor: 1.0,
        high_freq_factor: 4.0,
        original_max_position_embeddings: 8192,
    };
    for name in ["llama3", "deepseek-r1-distill-llama-8b"] {
        let tdir = root().join("../shared/data/tokenizers").join(name);
        if !tdir.join("tokenizer.json").exists() {
            eprintln!("skipped {name}: {} missing", tdir.display());
            continue;
        }
        let tok = model_llama::Tokenizer::from_file(&tdir).unwrap();
        let model = tiny_with(tok.vocab_size(), Some(scaling.clone()));
        let out = dir.path().join(format!("{name}.gguf"));
        export_gguf(&model, &tok, None, &out, FileType::F32, name).unwrap();
        let f = GgufFile::open(&out).unwrap();
        assert_eq!(f.get_str("tokenizer.ggml.pre").unwrap(), "llama-bpe");
        assert_eq!(f.get_str_array("tokenizer.ggml.tokens").unwrap().len(), tok.vocab_size());
        assert!(f.get_str("tokenizer.chat_template").is_ok());
        let back = model_llama::Tokenizer::from_gguf(&f).unwrap();
        let texts = ["Hello world! It's 2024: naïve café, 12345 tokens.", "<|begin_of_text|>x  y\n\n z"];
        for t in texts {
            assert_eq!(back.encode(t, true).unwrap(), tok.encode(t, true).unwrap(), "{name}: {t:?}");
        }
        assert_eq!((back.bos_id(), back.eos_id()), (tok.bos_id(), tok.eos_id()));
        // The rope factors give back the scaled frequencies.
        let w = GgufWeights::open(&out).unwrap();
        let cfg = w.config().unwrap();
        let (want, got) = (model.config.rope_inv_freq(), cfg.rope_inv_freq());
        for (a, b) in want.iter().zip(&got) {
            assert!((a - b).abs() <= 1e-6 * a.abs(), "{name}: rope inv freq {a} vs {b}");
        }
        assert_eq!(f.tensor("rope_freqs.weight").unwrap().shape(), vec![4]);
        if let Some(why) = skip_reason() {
            eprintln!("llama.cpp part skipped: {why}");
            continue;
        }
        let prompt = tok.encode("The capital of France is Paris, and the capital of Spain is", true).unwrap();
        let prompts_path = dir.path().join("p.json");
        std::fs::write(&prompts_path, serde_json::to_string(&vec![prompt.clone()]).unwrap()).unwrap();
        let refs = llamacpp(&["scripts/llamacpp_ref.py"], &out, &prompts_path, &dir.path().join("r.json"), 1, true);
        let ours = next_logprobs(&model, &prompt);
        let dm = max_abs_diff(&refs[0].logprobs, &ours);
        eprintln!("{name}: tiny llama3-rope model, llama.cpp vs ferrotune max|d| {dm:.2e}");
        assert!(dm < 2e-3, "{name}: {dm}");
    }
}

/// An NF4 base is dequantized before the adapter is merged: the merged model computes what
/// the NF4 + LoRA model computes.
#[test]
fn nf4_base_merges_like_its_forward() {
    let mut model = tiny(256);
    attach_random_lora(&mut model, 4, 3);
    for i in 0..2 {
        let layer = model.layer_mut(i).unwrap();
        for p in PROJECTIONS {
            layer.projection_mut(p).unwrap().quantize_nf4(true).unwrap();
        }
    }
    let ids = [1u32, 17, 42, 255, 3, 9];
    let before = next_logprobs(&model, &ids);
    merge_adapters(&mut model).unwrap();
    let lin = &model.layers[0].q_proj;
    assert!(lin.lora.is_none() && matches!(lin.base, model_llama::BaseWeight::Dense(_)));
    let dm = max_abs_diff(&before, &next_logprobs(&model, &ids));
    eprintln!("NF4 + LoRA vs merged: max|d| {dm:.2e}");
    assert!(dm < 1e-4, "{dm}");
}
