//! `ferrotune generate` on the GPU against the CPU f32 path, end to end through the binary, on a
//! small random Llama written as a Hugging Face folder (config.json, model.safetensors, and a
//! word-level tokenizer.json whose tokens are `w1` ... `w999`, so the printed text gives the
//! token ids back).
//!
//! The reference is the library's greedy generation on the CPU in f32. Without a GPU, the test
//! checks that `--device auto` falls back to the CPU and prints exactly the reference tokens,
//! checks the tolerance below on a CPU model stored in bf16, and prints that the GPU part was
//! skipped. With one, `--device cuda` (bf16 weights and activations, f32 accumulation, KV cache
//! on the device) and `--device cuda --nf4` are checked step by step:
//!
//! every token the GPU printed must be a greedy choice of the CPU f32 model *given the GPU's
//! own context* (prompt + the GPU's earlier tokens): its CPU logit must lie within [`NEAR_TIE`]
//! of the CPU's top logit. Why a tolerance: bf16 keeps 8 significant bits (relative error <=
//! 2^-9 per rounding); on this model (logit rms about 1.6, 4 layers) the logits of a CPU run
//! with bf16 storage differ from the f32 ones by at most 0.06-0.10 (measured over 12 steps,
//! dense and NF4), so the gap between two tokens moves by at most about 0.2: a greedy choice
//! can flip only where the f32 top two are that close (gaps of 0.001-0.1 occur in these
//! sequences). A wrong token of a broken kernel would sit several logits below the top (the
//! logits spread over +-5). At least [`MIN_EXACT`] steps must also pick the CPU's exact argmax.
//! For NF4 the CPU reference quantizes the same bf16-rounded weights the CLI quantizes (`--nf4`
//! reads bf16 for the GPU), so both sides hold identical NF4 codes and only the compute
//! precision differs.

use engine::rng::Rng;
use engine::{ops, DType, Device, Tensor};
use model_llama::generate::{generate, Sampler, SamplingParams};
use model_llama::{load_model, Llama, LlamaConfig, PROJECTIONS};
use safetensors::tensor::TensorView;
use std::path::{Path, PathBuf};
use std::process::Command;

const VOCAB: usize = 1000;
const LAYERS: usize = 4;
const NEW_TOKENS: usize = 12;
const PROMPT: &str = "w17 w503 w42 w999 w7 w250 w31";
/// The largest gap between the CPU's top logit and its logit of the GPU's token (see above).
const NEAR_TIE: f32 = 0.3;
/// Steps (of [`NEW_TOKENS`]) that must pick exactly the CPU's argmax.
const MIN_EXACT: usize = NEW_TOKENS / 2;

fn config_json() -> String {
    format!(
        r#"{{"model_type": "llama", "architectures": ["LlamaForCausalLM"], "hidden_size": 256,
            "intermediate_size": 688, "num_hidden_layers": {LAYERS}, "num_attention_heads": 4,
            "num_key_value_heads": 2, "vocab_size": {VOCAB}, "rms_norm_eps": 1e-5,
            "rope_theta": 10000.0, "max_position_embeddings": 128, "tie_word_embeddings": true}}"#
    )
}

/// A word-level tokenizer: `<unk>` is id 0, `w{i}` id i; split on whitespace.
fn tokenizer_json() -> String {
    let mut vocab = serde_json::Map::new();
    vocab.insert("<unk>".into(), 0.into());
    for i in 1..VOCAB {
        vocab.insert(format!("w{i}"), i.into());
    }
    serde_json::json!({
        "version": "1.0", "truncation": null, "padding": null, "added_tokens": [],
        "normalizer": null, "pre_tokenizer": {"type": "WhitespaceSplit"}, "post_processor": null,
        "decoder": null, "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "<unk>"}
    })
    .to_string()
}

/// Writes the random model folder (f32 weights; projections std 0.05, embeddings std 0.1, norm
/// weights 1 + N(0, 0.05)) and returns its path.
fn write_model() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("ferrotune-cuda-generate-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    // (name, shape, std, mean): embeddings std 0.1, norms around 1, the rest std 0.05.
    let config = LlamaConfig::from_json(&config_json()).unwrap();
    let shapes: Vec<(String, Vec<usize>, f64, f32)> = config
        .weight_shapes()
        .into_iter()
        .map(|(name, shape)| match name.as_str() {
            "model.embed_tokens.weight" => (name, shape, 0.1, 0.0),
            n if n.ends_with("norm.weight") => (name, shape, 0.05, 1.0),
            _ => (name, shape, 0.05, 0.0),
        })
        .collect();
    let mut rng = Rng::new(11);
    let bytes: Vec<Vec<u8>> = shapes
        .iter()
        .map(|(_, shape, std, mean)| {
            let n = shape.iter().product();
            rng.normal_vec(n, *std).into_iter().flat_map(|x| (x + mean).to_le_bytes()).collect()
        })
        .collect();
    let views: Vec<(&str, TensorView)> = shapes
        .iter()
        .zip(&bytes)
        .map(|((name, shape, _, _), b)| {
            (name.as_str(), TensorView::new(safetensors::Dtype::F32, shape.clone(), b).unwrap())
        })
        .collect();
    safetensors::serialize_to_file(views, None, &dir.join("model.safetensors")).unwrap();
    std::fs::write(dir.join("config.json"), config_json()).unwrap();
    std::fs::write(dir.join("tokenizer.json"), tokenizer_json()).unwrap();
    dir
}

fn prompt_ids() -> Vec<u32> {
    PROMPT.split_whitespace().map(|w| w[1..].parse().unwrap()).collect()
}

/// Greedy tokens of the library path.
fn greedy(model: &Llama) -> Vec<u32> {
    let mut sampler = Sampler::new(SamplingParams::default());
    generate(model, &prompt_ids(), NEW_TOKENS, &[], &mut sampler, |_| true).unwrap().0
}

/// The CPU reference model: f32 weights, or (with `nf4`) the projections quantized from the
/// bf16-rounded weights, as the CLI quantizes for the GPU, and the rest in f32.
fn cpu_model(dir: &Path, nf4: bool) -> Llama {
    if !nf4 {
        return load_model(dir.to_str().unwrap(), DType::F32).unwrap().model;
    }
    let mut m = cpu_bf16_model(dir, true);
    m.to_device(Device::Cpu, DType::F32).unwrap();
    m
}

/// The `ferrotune` binary: cargo's, or a copy staged at `.gpu/bin/ferrotune` for the GPU
/// machine (target/ does not travel there; `.gpu/` does, and `CARGO_MANIFEST_DIR` resolves to
/// the copy of the checkout through gpu-stage's link).
fn binary() -> Option<PathBuf> {
    [PathBuf::from(env!("CARGO_BIN_EXE_ferrotune")), Path::new(env!("CARGO_MANIFEST_DIR")).join(".gpu/bin/ferrotune")]
        .into_iter()
        .find(|p| p.is_file())
}

/// Greedy tokens of `ferrotune generate --device <device> [--nf4]` on the folder: through the
/// binary where there is one (checking what it reports on stderr), else through the library
/// calls the CLI makes (bf16 weights for the GPU, NF4 projections with `nf4`, then `to_device`).
fn generate_with(dir: &Path, device: &str, nf4: bool) -> Vec<u32> {
    let Some(bin) = binary() else {
        println!("(no ferrotune binary here: the CLI's library path, --device {device}, nf4 {nf4})");
        let dev = match device {
            "cpu" => Device::Cpu,
            "cuda" => Device::cuda(0).unwrap(),
            _ => Device::cuda(0).unwrap_or(Device::Cpu),
        };
        let dtype = if dev.is_cpu() { DType::F32 } else { DType::BF16 };
        let mut m = load_model(dir.to_str().unwrap(), dtype).unwrap().model;
        if nf4 {
            quantize(&mut m);
        }
        if !dev.is_cpu() {
            m.to_device(dev, DType::BF16).unwrap();
        }
        return greedy(&m);
    };
    let n = NEW_TOKENS.to_string();
    let mut args = vec!["generate", "--model", dir.to_str().unwrap(), "--prompt", PROMPT];
    args.extend(["--max-new-tokens", &n, "--device", device]);
    if nf4 {
        args.push("--nf4");
    }
    let out = Command::new(bin).args(&args).output().expect("run ferrotune");
    let (stdout, stderr) =
        (String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned());
    assert!(out.status.success(), "ferrotune {args:?} failed:\n{stderr}");
    let on_gpu = device == "cuda" || (device == "auto" && Device::cuda(0).is_ok());
    assert_eq!(stderr.contains(" onto "), on_gpu, "--device {device}: {stderr}");
    assert_eq!(stderr.contains("generating on the CPU"), device == "auto" && !on_gpu, "{stderr}");
    assert_eq!(stderr.contains("NF4"), nf4, "{stderr}");
    // Words may or may not be separated by spaces in the streamed text: split before each `w`.
    stdout
        .replace("<unk>", " w0 ")
        .replace('w', " w")
        .split_whitespace()
        .map(|w| w[1..].parse().unwrap_or_else(|_| panic!("unexpected output {stdout:?}")))
        .collect()
}

/// CPU f32 logits after `prompt + generated` (full forward, no cache).
fn cpu_logits(model: &Llama, generated: &[u32]) -> Vec<f32> {
    let _ng = engine::no_grad();
    let ids: Vec<u32> = prompt_ids().into_iter().chain(generated.iter().copied()).collect();
    let t = ids.len();
    let logits = model.forward(&Tensor::from_vec(ids, &[1, t]).unwrap(), None).unwrap();
    ops::narrow(&logits, 1, t - 1, 1).unwrap().to_vec_f32().unwrap()
}

/// Checks every step of `got` against the CPU model on the same context (module docs).
fn compare(what: &str, cpu: &Llama, got: &[u32]) {
    assert_eq!(got.len(), NEW_TOKENS, "{what}: {got:?}");
    let mut exact = 0;
    for k in 0..got.len() {
        let logits = cpu_logits(cpu, &got[..k]);
        let top = model_llama::generate::argmax(&logits) as usize;
        let gap = logits[top] - logits[got[k] as usize];
        exact += usize::from(gap == 0.0);
        assert!(
            gap <= NEAR_TIE,
            "{what}: step {k} picked w{} whose CPU f32 logit is {gap} below the top (w{top}); tokens {got:?}",
            got[k]
        );
        if gap > 0.0 {
            println!("{what}: step {k} took w{} over the CPU's w{top} (a near-tie: gap {gap:.4})", got[k]);
        }
    }
    println!("{what}: {exact} of {} steps equal the CPU f32 argmax, the rest near-ties", got.len());
    assert!(exact >= MIN_EXACT, "{what}: only {exact} exact steps: {got:?}");
}

/// The model stored in bf16 on the CPU (projections quantized to NF4 with `nf4`).
fn cpu_bf16_model(dir: &Path, nf4: bool) -> Llama {
    let mut m = load_model(dir.to_str().unwrap(), DType::BF16).unwrap().model;
    if nf4 {
        quantize(&mut m);
    }
    m
}

/// Quantizes the seven projections of every layer to NF4 (double quant), as `--nf4` does.
fn quantize(m: &mut Llama) {
    for l in 0..LAYERS {
        for p in PROJECTIONS {
            m.layer_mut(l).unwrap().projection_mut(p).unwrap().quantize_nf4(true).unwrap();
        }
    }
}

#[test]
fn cuda_generate_matches_cpu_greedy() {
    let dir = write_model();
    let cpu = cpu_model(&dir, false);
    let want = greedy(&cpu);
    println!("CPU f32 greedy: {want:?}");
    // On the CPU the CLI is the library path exactly, with and without NF4.
    assert_eq!(generate_with(&dir, "cpu", false), want, "the CLI on the CPU differs from the library");
    let mut nf4_f32 = load_model(dir.to_str().unwrap(), DType::F32).unwrap().model;
    quantize(&mut nf4_f32);
    assert_eq!(generate_with(&dir, "cpu", true), greedy(&nf4_f32), "--nf4 on the CPU differs from the library");

    if let Err(e) = Device::cuda(0) {
        assert_eq!(generate_with(&dir, "auto", false), want, "--device auto (CPU) differs from the library");
        // The tolerance holds for bf16 storage on the CPU, the nearest thing to the GPU here.
        compare("cpu bf16", &cpu, &greedy(&cpu_bf16_model(&dir, false)));
        compare("cpu bf16 nf4", &cpu_model(&dir, true), &greedy(&cpu_bf16_model(&dir, true)));
        println!("skipped the GPU part: no CUDA device ({e})");
        let _ = std::fs::remove_dir_all(&dir);
        return;
    }
    let got = generate_with(&dir, "cuda", false);
    compare("cuda bf16", &cpu, &got);
    assert_eq!(generate_with(&dir, "auto", false), got, "--device auto should pick the GPU");
    compare("cuda nf4", &cpu_model(&dir, true), &generate_with(&dir, "cuda", true));
    let _ = std::fs::remove_dir_all(&dir);
}
