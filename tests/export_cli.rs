//! `ferrotune export` end to end on SmolLM2-135M with a LoRA adapter (trainer's PEFT init,
//! then a random nonzero B): the GGUF equals the library's export of the same merged model
//! byte for byte, the F32 file computes what the model with its adapter computes, llama.cpp
//! loads the default Q8_0 file, and the Modelfile is the model's own ChatML template with its
//! stop tokens, SYSTEM and num_ctx. Every file type, and the LoRA adapter GGUF, read back
//! equal through our reader and the `gguf` Python package (`GGUFReader`, via
//! scripts/gguf_reference.py). Bad input: an unsupported architecture, an adapter of another
//! base, unwritable output folders, a full disk mid-write, and files that exist already: a
//! clear error naming the file, and nothing under a final name that the user did not ask for.
//!
//! The Python parts are skipped (with the reason printed) without the .venv
//! (scripts/setup-python.sh); the model must exist (scripts/fetch-smollm2.sh).

mod common;
#[path = "../gguf/tests/common/gguf_py.rs"]
mod gguf_py;

use common::{ferrotune, text, SMOLLM2 as MODEL};

use engine::rng::Rng;
use engine::{DType, Tensor};
use gguf::mixes::FileType;
use gguf::{GgufFile, GgufWriter, TensorSpec, Value};
use gguf_py::{json_close, type_name, value_json};
use model_llama::export_gguf::{export_gguf, export_lora_adapter_gguf};
use model_llama::gguf_weights::GgufWeights;
use model_llama::modelfile::{modelfile, ChatFormat};
use model_llama::{load_model, Llama, Tokenizer, PROJECTIONS};
use serde_json::{json, Value as Json};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use trainer::lora::LoraConfig;

const STEM: &str = "SmolLM2-135M-Instruct";

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn require_model() {
    assert!(root().join(MODEL).exists(), "{MODEL} missing: run scripts/fetch-smollm2.sh (.ci/run does)");
}

/// The repository's Python, or why the Python checks are skipped.
fn python() -> Result<PathBuf, String> {
    let py = root().join(".venv/bin/python");
    if py.exists() {
        Ok(py)
    } else {
        Err(format!("{} missing (run scripts/setup-python.sh)", py.display()))
    }
}

/// A fresh folder under the system temp dir, removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        let p = std::env::temp_dir().join(format!("ferrotune-export-cli-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
    fn join(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// File names in `dir`, sorted (empty when it does not exist).
fn listing(dir: &Path) -> Vec<String> {
    let Ok(rd) = std::fs::read_dir(dir) else { return vec![] };
    let mut v: Vec<String> = rd.map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    v.sort();
    v
}

/// SmolLM2 with a PEFT-initialized rank-8 adapter on all seven projections whose B is then
/// made random and nonzero (as after training), saved to `dir`. Returns the model with the
/// adapter attached and its tokenizer.
fn model_with_adapter(dir: &Path) -> (Llama, Tokenizer) {
    let loaded = load_model(MODEL, DType::F32).unwrap();
    let (mut model, tok) = (loaded.model, loaded.tokenizer);
    let cfg = LoraConfig::all_projections(8, 16.0);
    trainer::lora::init(&mut model, &cfg, 5).unwrap();
    let mut rng = Rng::new(9);
    for i in 0..model.layers.len() {
        for p in PROJECTIONS {
            let lora = model.layer_mut(i).unwrap().projection_mut(p).unwrap().lora.as_mut().unwrap();
            let shape = lora.b.shape().to_vec();
            let b: Vec<f32> = (0..shape[0] * shape[1]).map(|_| rng.uniform_range(-0.02, 0.02) as f32).collect();
            lora.b = Tensor::from_vec(b, &shape).unwrap();
        }
    }
    trainer::adapter::save_adapter(dir, &model, &cfg, Some(MODEL)).unwrap();
    (model, tok)
}

fn next_logprobs(model: &Llama, ids: &[u32]) -> Vec<f32> {
    model.next_token_logprobs(ids).unwrap()
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

fn argmax(v: &[f32]) -> usize {
    (0..v.len()).fold(0, |best, i| if v[i] > v[best] { i } else { best })
}

#[test]
fn export_with_adapter_end_to_end() {
    require_model();
    let dir = TempDir::new("e2e");
    let adapter = dir.join("adapter");
    let (model, tok) = model_with_adapter(&adapter);
    let out = dir.join("ollama");
    let system = "You are a careful doctor.";
    let o = ferrotune(&[
        "export",
        "--model",
        MODEL,
        "--adapter",
        s(&adapter),
        "--out",
        s(&out),
        "--system",
        system,
        "--num-ctx",
        "4096",
    ]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let stdout = text(&o.stdout);
    let file_name = format!("{STEM}-lora.Q8_0.gguf");
    let gguf_path = out.join(&file_name);
    let size = std::fs::metadata(&gguf_path).unwrap().len();
    eprintln!("{stdout}");
    assert!(stdout.contains(&format!(
        "wrote {} ({:.1} MB, 272 tensors, Q8_0)",
        gguf_path.display(),
        size as f64 / 1e6
    )));
    let command = format!("ollama create smollm2-135m-instruct-lora -f {}", out.join("Modelfile").display());
    assert!(stdout.contains(&command), "no `{command}` in:\n{stdout}");
    assert_eq!(listing(&out), vec!["Modelfile".to_string(), file_name.clone()], "only the two files, no temp files");

    // The Modelfile: the model's own chat format, its stops, SYSTEM and num_ctx.
    let mf = std::fs::read_to_string(out.join("Modelfile")).unwrap();
    let format = ChatFormat::from_tokenizer(&tok).unwrap();
    assert_eq!(mf, modelfile(&file_name, &format, Some(system), 4096).unwrap());
    for line in [
        &format!("FROM ./{file_name}\n"),
        "PARAMETER stop <|im_end|>\n",
        "PARAMETER num_ctx 4096\n",
        &format!("SYSTEM \"\"\"{system}\"\"\"\n"),
        "<|im_start|>assistant\n",
    ] {
        assert!(mf.contains(line), "Modelfile lacks {line:?}:\n{mf}");
    }

    // The file is what the library writes for the model with its adapter merged.
    let source = GgufFile::open(root().join(MODEL)).unwrap();
    let lib_path = dir.join("lib.gguf");
    export_gguf(&model, &tok, Some(&source), &lib_path, FileType::Q8_0, &format!("{STEM}-lora")).unwrap();
    assert!(std::fs::read(&gguf_path).unwrap() == std::fs::read(&lib_path).unwrap(), "CLI and library files differ");
    std::fs::remove_file(&lib_path).unwrap();

    // F32 through the CLI: read back, it computes what the model with the adapter computes,
    // and not what the base computes.
    let out32 = dir.join("f32");
    let o = ferrotune(&["export", "--model", MODEL, "--adapter", s(&adapter), "--quant", "f32", "--out", s(&out32)]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let f32_path = out32.join(format!("{STEM}-lora.F32.gguf"));
    let w = GgufWeights::open(&f32_path).unwrap();
    let back = Llama::load(w.config().unwrap(), &w, DType::F32).unwrap();
    let prompt = tok
        .encode("<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n", true)
        .unwrap();
    let ours = next_logprobs(&model, &prompt);
    let dm = max_abs_diff(&next_logprobs(&back, &prompt), &ours);
    let base = load_model(MODEL, DType::F32).unwrap().model;
    let db = max_abs_diff(&next_logprobs(&base, &prompt), &ours);
    eprintln!("F32 export vs model + adapter: max|d| {dm:.2e}; base vs model + adapter: {db:.3}");
    assert!(db > 0.05, "the adapter barely changes the model ({db}): the check proves nothing");
    assert!(dm < 1e-3, "the exported F32 file computes other log-probs ({dm})");
    drop((back, w, base));

    // llama.cpp loads the default (Q8_0) export; its next token is ferrotune's on the file.
    let py = match python() {
        Ok(py) => py,
        Err(why) => return eprintln!("llama.cpp part skipped: {why}"),
    };
    let prompts = dir.join("prompts.json");
    std::fs::write(&prompts, serde_json::to_string(&vec![prompt.clone()]).unwrap()).unwrap();
    let refs = dir.join("ref.json");
    let o = Command::new(&py)
        .current_dir(root())
        .args(["scripts/llamacpp_ref.py", s(&gguf_path), s(&prompts), s(&refs), "--n-predict", "4"])
        .output()
        .unwrap();
    assert!(o.status.success(), "llama.cpp on {}: {}", gguf_path.display(), text(&o.stderr));
    let r: Json = serde_json::from_str(&std::fs::read_to_string(&refs).unwrap()).unwrap();
    let theirs: Vec<f32> =
        r["results"][0]["logprobs"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap() as f32).collect();
    let w = GgufWeights::open(&gguf_path).unwrap();
    let on_file = next_logprobs(&Llama::load(w.config().unwrap(), &w, DType::F32).unwrap(), &prompt);
    eprintln!(
        "llama.cpp on the CLI's Q8_0 file vs ferrotune on its weights: max|d| {:.3}",
        max_abs_diff(&theirs, &on_file)
    );
    assert_eq!(argmax(&theirs), argmax(&on_file), "llama.cpp picks another next token");
}

// ---- round trip through gguf-py ----

/// Reads `path` with gguf-py and checks it against our reader: version, alignment, data
/// offset, every metadata key (type and value), every tensor's name, dims, type, offset and
/// size; and, for the first tensor of each GGML type in the file plus the permuted Q and K of
/// layer 0, the values gguf-py dequantizes equal ours bit for bit. Returns the types seen.
fn check_with_gguf_py(py: &Path, path: &Path) -> Vec<String> {
    let ours = GgufFile::open(path).unwrap();
    let dir = TempDir::new(&format!("py-{}", path.file_name().unwrap().to_string_lossy()));
    let mut picked: Vec<String> = Vec::new();
    let mut types: Vec<String> = Vec::new();
    for t in ours.tensors() {
        let ty = t.ggml_type().name().to_uppercase();
        let qk = t.name().starts_with("blk.0.attn_q.") || t.name().starts_with("blk.0.attn_k.");
        if !types.contains(&ty) || qk {
            picked.push(t.name().to_string());
        }
        if !types.contains(&ty) {
            types.push(ty);
        }
    }
    let mut cmd = Command::new(py);
    cmd.current_dir(root()).arg("scripts/gguf_reference.py").arg(path).arg(&dir.0).args(&picked);
    let o = cmd.output().unwrap();
    assert!(o.status.success(), "gguf_reference.py {}: {}", path.display(), text(&o.stderr));
    let r: Json = serde_json::from_slice(&std::fs::read(dir.join("reference.json")).unwrap()).unwrap();
    let what = path.display();
    assert_eq!(r["version"], json!(3), "{what}");
    assert_eq!(r["alignment"], json!(ours.alignment()), "{what}");
    assert_eq!(r["data_offset"], json!(ours.data_offset()), "{what}");
    let meta = r["metadata"].as_array().unwrap();
    assert_eq!(meta.len(), ours.metadata().len(), "{what}: number of metadata keys");
    for (want, (key, value)) in meta.iter().zip(ours.metadata()) {
        assert_eq!(want["key"], json!(key), "{what}");
        assert_eq!(want["type"], json!(type_name(value)), "{what}: {key}");
        assert!(json_close(&want["value"], &value_json(value)), "{what}: {key} differs in gguf-py");
    }
    let tensors = r["tensors"].as_array().unwrap();
    assert_eq!(tensors.len(), ours.tensors().len(), "{what}: number of tensors");
    for (want, t) in tensors.iter().zip(ours.tensors()) {
        let got = json!({"name": t.name(), "dims": t.dims(), "type": t.ggml_type().name().to_uppercase(),
                         "offset": t.offset(), "n_bytes": t.n_bytes()});
        assert_eq!(want, &got, "{what}");
    }
    for name in &picked {
        let bytes = std::fs::read(dir.join(&format!("{name}.f32"))).unwrap();
        let theirs = bytes.chunks_exact(4).map(|c| u32::from_le_bytes(c.try_into().unwrap()));
        let mine = ours.dequantize_f32(ours.tensor(name).unwrap()).unwrap();
        assert!(theirs.eq(mine.iter().map(|x| x.to_bits())), "{what}: gguf-py dequantizes {name} to other values");
    }
    types
}

#[test]
fn every_file_type_round_trips_through_gguf_py() {
    require_model();
    let py = match python() {
        Ok(py) => py,
        Err(why) => return eprintln!("skipped: {why}"),
    };
    let dir = TempDir::new("types");
    let adapter = dir.join("adapter");
    let (model, _) = model_with_adapter(&adapter);
    for ft in FileType::all() {
        let out = dir.join(ft.name());
        let o = ferrotune(&[
            "export",
            "--model",
            MODEL,
            "--adapter",
            s(&adapter),
            "--quant",
            &ft.name().to_lowercase(),
            "--out",
            s(&out),
        ]);
        assert!(o.status.success(), "{ft}: {}", text(&o.stderr));
        let path = out.join(format!("{STEM}-lora.{ft}.gguf"));
        let f = GgufFile::open(&path).unwrap();
        assert_eq!(f.get_u32("general.file_type").unwrap(), ft.id(), "{ft}");
        assert_eq!(f.get_str("general.name").unwrap(), format!("{STEM}-lora"));
        let types = check_with_gguf_py(&py, &path);
        eprintln!(
            "{ft}: {} bytes, tensor types {types:?}: gguf-py reads what we read",
            std::fs::metadata(&path).unwrap().len()
        );
        drop(f);
        std::fs::remove_dir_all(&out).unwrap();
    }
    // The LoRA adapter GGUF (library export).
    let path = dir.join("adapter.gguf");
    export_lora_adapter_gguf(&model, &path, STEM).unwrap();
    let f = GgufFile::open(&path).unwrap();
    assert_eq!(f.get_str("general.type").unwrap(), "adapter");
    assert_eq!(f.get_str("adapter.type").unwrap(), "lora");
    check_with_gguf_py(&py, &path);
}

// ---- bad input ----

/// Runs `ferrotune export` expecting failure; returns stderr.
fn export_fails(args: &[&str]) -> String {
    let mut all = vec!["export"];
    all.extend_from_slice(args);
    let o = ferrotune(&all);
    assert!(!o.status.success(), "export {args:?} succeeded");
    text(&o.stderr)
}

#[test]
fn bad_inputs_fail_clearly_and_write_nothing() {
    require_model();
    let dir = TempDir::new("bad");

    // An architecture other than llama.
    let qwen = dir.join("qwen.gguf");
    let md = vec![("general.architecture".to_string(), Value::String("qwen2".into()))];
    let mut w = GgufWriter::create(&qwen, md, vec![TensorSpec::new("x", &[32], gguf::GgmlType::F32)]).unwrap();
    w.write_tensor("x", &[0.0; 32]).unwrap();
    w.finish().unwrap();
    let out = dir.join("out-arch");
    let e = export_fails(&["--model", s(&qwen), "--out", s(&out)]);
    assert!(e.contains("unsupported architecture") && e.contains("qwen2") && e.contains("qwen.gguf"), "{e}");
    assert!(listing(&out).is_empty(), "{:?}", listing(&out));

    // An adapter trained on another base (hidden size 960, SmolLM2-360M's).
    let other = dir.join("adapter-360m");
    std::fs::create_dir_all(&other).unwrap();
    let cfg = LoraConfig { target_modules: vec!["q_proj".into()], ..LoraConfig::all_projections(8, 16.0) };
    let config = trainer::adapter::adapter_config_json(&cfg, Some("HuggingFaceTB/SmolLM2-360M-Instruct"));
    std::fs::write(other.join("adapter_config.json"), config.to_string()).unwrap();
    let (a, b) = (vec![0u8; 8 * 960 * 4], vec![0u8; 960 * 8 * 4]);
    let p = "base_model.model.model.layers.0.self_attn.q_proj";
    let views = vec![
        (
            format!("{p}.lora_A.weight"),
            safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![8, 960], &a).unwrap(),
        ),
        (
            format!("{p}.lora_B.weight"),
            safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![960, 8], &b).unwrap(),
        ),
    ];
    let st = safetensors::tensor::serialize(views, None).unwrap();
    std::fs::write(other.join("adapter_model.safetensors"), st).unwrap();
    let out = dir.join("out-shape");
    let e = export_fails(&["--model", MODEL, "--adapter", s(&other), "--out", s(&out)]);
    assert!(
        e.contains("adapter_model.safetensors") && e.contains("q_proj.lora_A.weight") && e.contains("[8, 960]"),
        "{e}"
    );
    assert!(e.contains("does not fit this model"), "{e}");
    assert!(listing(&out).is_empty(), "{:?}", listing(&out));

    // Output folders that cannot be written: below a regular file; an existing folder where
    // no file can be created (/proc/self, even for root); a read-only folder (not for root).
    let file = dir.join("a-file");
    std::fs::write(&file, "x").unwrap();
    let below = file.join("out");
    let e = export_fails(&["--model", MODEL, "--out", s(&below)]);
    assert!(e.contains("cannot create the output folder") && e.contains(s(&below)), "{e}");
    if Path::new("/proc/self/status").exists() {
        let e = export_fails(&["--model", MODEL, "--quant", "f16", "--out", "/proc/self"]);
        assert!(e.contains(&format!("/proc/self/{STEM}.F16.gguf")) && e.contains("cannot create a file"), "{e}");
    }
    let ro = dir.join("read-only");
    std::fs::create_dir_all(&ro).unwrap();
    set_mode(&ro, 0o555);
    if std::fs::write(ro.join("probe"), "x").is_ok() {
        eprintln!("read-only folder case skipped: running as root");
    } else {
        let e = export_fails(&["--model", MODEL, "--out", s(&ro)]);
        assert!(e.contains(&format!("{STEM}.Q8_0.gguf")) && e.contains(s(&ro)), "{e}");
        assert!(listing(&ro).is_empty());
    }
    set_mode(&ro, 0o755);
}

#[cfg(unix)]
fn set_mode(p: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
}

#[cfg(not(unix))]
fn set_mode(_: &Path, _: u32) {}

/// `ferrotune export` under a file size limit of `kib` KiB (`ulimit -f`, SIGXFSZ ignored so
/// writes past it fail with EFBIG as they would on a full disk).
fn export_with_size_limit(kib: u64, args: &[&str]) -> Output {
    let quoted: Vec<String> = args.iter().map(|a| format!("'{a}'")).collect();
    let script = format!(
        "trap '' XFSZ; ulimit -f {kib}; exec '{}' export {}",
        env!("CARGO_BIN_EXE_ferrotune"),
        quoted.join(" ")
    );
    Command::new("bash").arg("-c").arg(script).current_dir(root()).output().unwrap()
}

#[test]
fn full_disk_and_existing_files() {
    require_model();
    if Command::new("bash").arg("-c").arg("true").output().is_err() {
        return eprintln!("skipped: no bash");
    }
    let dir = TempDir::new("full");
    let out = dir.join("out");
    let gguf_name = format!("{STEM}.F16.gguf");

    // A full disk mid-write (20 MB of a 270 MB file): an error naming the file, nothing left.
    let o = export_with_size_limit(20_000, &["--model", MODEL, "--quant", "f16", "--out", s(&out)]);
    let e = text(&o.stderr);
    assert!(!o.status.success(), "export under a 20 MB file size limit succeeded");
    assert!(e.contains(&gguf_name) && e.contains("File too large"), "{e}");
    assert!(listing(&out).is_empty(), "left behind: {:?}", listing(&out));

    // Files the user has are not replaced without --force.
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(out.join("Modelfile"), "mine").unwrap();
    let e = export_fails(&["--model", MODEL, "--quant", "f16", "--out", s(&out)]);
    assert!(e.contains(s(&out.join("Modelfile"))) && e.contains("already exists") && e.contains("--force"), "{e}");
    assert_eq!(listing(&out), vec!["Modelfile"]);
    std::fs::remove_file(out.join("Modelfile")).unwrap();
    std::fs::write(out.join(&gguf_name), "old model").unwrap();
    let e = export_fails(&["--model", MODEL, "--quant", "f16", "--out", s(&out)]);
    assert!(e.contains(&gguf_name) && e.contains("already exists"), "{e}");
    assert_eq!(std::fs::read_to_string(out.join(&gguf_name)).unwrap(), "old model");
    assert_eq!(listing(&out), vec![gguf_name.clone()], "no Modelfile written either");

    // --force with a full disk: the old file survives the failed write.
    let o = export_with_size_limit(20_000, &["--model", MODEL, "--quant", "f16", "--out", s(&out), "--force"]);
    assert!(!o.status.success(), "{}", text(&o.stderr));
    assert_eq!(std::fs::read_to_string(out.join(&gguf_name)).unwrap(), "old model");
    assert_eq!(listing(&out), vec![gguf_name.clone()]);

    // --force replaces both.
    std::fs::write(out.join("Modelfile"), "mine").unwrap();
    let o = ferrotune(&["export", "--model", MODEL, "--quant", "f16", "--out", s(&out), "--force"]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert!(std::fs::metadata(out.join(&gguf_name)).unwrap().len() > 200_000_000);
    assert!(std::fs::read_to_string(out.join("Modelfile")).unwrap().starts_with("# Ollama Modelfile"));
    assert_eq!(listing(&out), vec!["Modelfile".to_string(), gguf_name]);
}

/// The exported F16, BF16, Q8_0, Q4_K_M and Q5_K_M files hold exactly the tensors (types and
/// bytes) that llama.cpp's own quantizer (`llama_model_quantize`, what `llama-quantize` runs;
/// scripts/llama_quantize_ref.py) makes from the exported F32 file: whatever these formats
/// cost in accuracy is what llama.cpp's own tools would give for the same merged model.
#[test]
fn quantized_exports_equal_llama_quantize() {
    require_model();
    let py = match python() {
        Ok(py) => py,
        Err(why) => return eprintln!("skipped: {why}"),
    };
    if !root().join(".venv/node-llama-cpp/bins").exists() {
        return eprintln!("skipped: .venv/node-llama-cpp missing (run scripts/setup-llama-quantize.sh)");
    }
    let dir = TempDir::new("lq");
    let adapter = dir.join("adapter");
    model_with_adapter(&adapter);
    let export = |ft: FileType| {
        let out = dir.join(ft.name());
        let args = ["export", "--model", MODEL, "--adapter", s(&adapter), "--quant", ft.name(), "--out", s(&out)];
        let o = ferrotune(&args);
        assert!(o.status.success(), "{ft}: {}", text(&o.stderr));
        out.join(format!("{STEM}-lora.{ft}.gguf"))
    };
    let f32_path = export(FileType::F32);
    for (ft, llama_name) in [
        (FileType::F16, "MOSTLY_F16"),
        (FileType::BF16, "MOSTLY_BF16"),
        (FileType::Q8_0, "MOSTLY_Q8_0"),
        (FileType::Q4_K_M, "MOSTLY_Q4_K_M"),
        (FileType::Q5_K_M, "MOSTLY_Q5_K_M"),
    ] {
        let ours_path = export(ft);
        let theirs_path = dir.join(&format!("llama-{ft}.gguf"));
        let o = Command::new(&py)
            .current_dir(root())
            .args(["scripts/llama_quantize_ref.py", "quantize", s(&f32_path), s(&theirs_path), llama_name])
            .output()
            .unwrap();
        assert!(o.status.success(), "llama_model_quantize {ft}: {}", text(&o.stderr));
        let (ours, theirs) = (GgufFile::open(&ours_path).unwrap(), GgufFile::open(&theirs_path).unwrap());
        assert_eq!(ours.tensors().len(), theirs.tensors().len(), "{ft}");
        // llama.cpp writes the tensors in its own order: compare by name.
        for a in ours.tensors() {
            let b = theirs.tensor(a.name()).unwrap_or_else(|e| panic!("{ft}: {e}"));
            assert_eq!((a.shape(), a.ggml_type()), (b.shape(), b.ggml_type()), "{ft}: {}", a.name());
            assert!(
                ours.tensor_bytes(a).unwrap() == theirs.tensor_bytes(b).unwrap(),
                "{ft}: {} differs from llama_model_quantize's",
                a.name()
            );
        }
        eprintln!("{ft}: all {} tensors byte-identical with llama_model_quantize", ours.tensors().len());
        drop((ours, theirs));
        std::fs::remove_file(&theirs_path).unwrap();
        std::fs::remove_dir_all(ours_path.parent().unwrap()).unwrap();
    }
}
