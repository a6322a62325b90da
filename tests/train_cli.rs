//! `ferrotune train` end to end: a tiny LoRA run of SmolLM2-135M from a run file (with a flag
//! overriding it), its outputs (adapter, metrics, answers), the adapter applied by
//! `generate --adapter`, and clear errors for bad settings.

mod common;

use common::{ferrotune, text, SMOLLM2 as MODEL};
use std::path::{Path, PathBuf};

/// A fresh folder under the system temp dir, removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        let p = std::env::temp_dir().join(format!("ferrotune-train-cli-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
    fn path(&self, name: &str) -> String {
        self.0.join(name).display().to_string()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn write_config(dir: &TempDir, body: &str) -> String {
    let path = dir.path("run.toml");
    std::fs::write(&path, body).unwrap();
    path
}

#[test]
fn tiny_run_writes_adapter_metrics_and_answers() {
    assert!(
        Path::new(env!("CARGO_MANIFEST_DIR")).join(MODEL).exists(),
        "{MODEL} missing: run scripts/fetch-smollm2.sh (.ci/run does)"
    );
    let dir = TempDir::new("tiny");
    let out_dir = dir.path("out");
    let config = write_config(
        &dir,
        &format!(
            r#"
model = "{MODEL}"
data = "examples/data/medical_en_sample.jsonl"
format = "examples/chatdoctor_template.txt"
rows = "0:6"
max_seq_length = 64
lora_r = 4
lora_alpha = 8
target_modules = ["q_proj", "v_proj", "down_proj"]
batch_size = 2
grad_accum = 1
warmup_steps = 1
max_steps = 100
lr = 1e-3
optimizer = "adamw8bit"
gradient_checkpointing = false
output_dir = "{out_dir}"
question = "Doctor, I have a sore throat. What should I do?"
question_field = "input"
max_new_tokens = 6
"#
        ),
    );
    // The flag overrides the file's 100 steps.
    let out = ferrotune(&["train", "--config", &config, "--max-steps", "3", "--save-merged", "--export-gguf", "f16"]);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "train failed:\n{stdout}\n{}", text(&out.stderr));
    for want in [
        "lora             r 4 alpha 8",
        "steps            3 steps",
        "=== answer before training ===",
        "step 1/3 | loss ",
        "step 3/3 | loss ",
        "=== answer after training ===",
    ] {
        assert!(stdout.contains(want), "stdout lacks {want:?}:\n{stdout}");
    }
    let after = stdout.split("=== answer after training ===").nth(1).unwrap();
    assert!(!after.trim().is_empty(), "no answer after training:\n{stdout}");

    let adapter = Path::new(&out_dir).join("adapter");
    for f in ["adapter_config.json", "adapter_model.safetensors"] {
        assert!(adapter.join(f).is_file(), "{} missing", adapter.join(f).display());
    }
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(adapter.join("adapter_config.json")).unwrap()).unwrap();
    assert_eq!(cfg["r"], 4);
    assert_eq!(cfg["target_modules"], serde_json::json!(["q_proj", "v_proj", "down_proj"]));

    let metrics = std::fs::read_to_string(Path::new(&out_dir).join("metrics.jsonl")).unwrap();
    let lines: Vec<serde_json::Value> = metrics.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 3, "one metrics line per step:\n{metrics}");
    for (i, m) in lines.iter().enumerate() {
        assert_eq!(m["step"], i + 1);
        for k in ["loss", "learning_rate", "epoch", "grad_norm", "tokens_per_second"] {
            assert!(m[k].as_f64().is_some_and(f64::is_finite), "metrics line {} lacks {k}: {m}", i + 1);
        }
    }

    // The loss curve, the merged Hugging Face folder (tokenizer written from the GGUF's) and
    // the GGUF export with its Modelfile; the merged folder and the GGUF load and generate.
    let out_path = Path::new(&out_dir);
    assert!(out_path.join("loss.png").is_file(), "loss.png missing:\n{stdout}");
    for f in ["config.json", "model.safetensors", "tokenizer.json"] {
        assert!(out_path.join("merged").join(f).is_file(), "merged/{f} missing:\n{stdout}");
    }
    let gguf: Vec<_> = std::fs::read_dir(out_path.join("gguf"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "gguf"))
        .collect();
    assert_eq!(gguf.len(), 1, "one GGUF in {}:\n{stdout}", out_path.join("gguf").display());
    let modelfile = std::fs::read_to_string(out_path.join("gguf").join("Modelfile")).unwrap();
    assert!(modelfile.contains("TEMPLATE") && modelfile.contains("num_ctx"), "{modelfile}");
    for model in [out_path.join("merged"), gguf[0].clone()] {
        let m = model.display().to_string();
        let out = ferrotune(&["generate", "--model", &m, "--prompt", "Hello", "--max-new-tokens", "3"]);
        assert!(out.status.success(), "generate from {m}: {}", text(&out.stderr));
    }

    // The saved adapter applies to the same model in `generate`.
    let adapter = adapter.display().to_string();
    let out =
        ferrotune(&["generate", "--model", MODEL, "--prompt", "Hello", "--max-new-tokens", "4", "--adapter", &adapter]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("applied adapter"), "{}", text(&out.stderr));
}

fn fails_naming(args: &[&str], names: &[&str]) {
    let out = ferrotune(args);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "expected exit 1 for {args:?}; stderr:\n{err}");
    for n in names {
        assert!(err.contains(n), "the error for {args:?} should name {n:?}:\n{err}");
    }
}

#[test]
fn unknown_key_is_named() {
    let dir = TempDir::new("badkey");
    let config = write_config(&dir, &format!("model = \"{MODEL}\"\nlearning_rate = 2e-4\n"));
    fails_naming(&["train", "--config", &config], &["learning_rate", "run.toml", "line 2"]);
}

#[test]
fn missing_data_file_is_named() {
    fails_naming(
        &["train", "--model", MODEL, "--data", "no/such/data.jsonl"],
        &["no/such/data.jsonl", "does not exist"],
    );
}

#[test]
fn unknown_target_module_is_named() {
    fails_naming(
        &[
            "train",
            "--model",
            MODEL,
            "--data",
            "examples/data/medical_en_sample.jsonl",
            "--target-modules",
            "q_proj,attn_proj",
        ],
        &["attn_proj", "q_proj, k_proj"],
    );
}

#[test]
fn missing_run_file_and_bad_values_are_named() {
    fails_naming(&["train", "--config", "no/such/run.toml"], &["no/such/run.toml"]);
    let dir = TempDir::new("badvalue");
    let config = write_config(&dir, "batch_size = \"two\"\n");
    fails_naming(&["train", "--config", &config], &["batch_size", "line 1"]);
    fails_naming(
        &["train", "--model", MODEL, "--data", "examples/data/medical_en_sample.jsonl", "--optimizer", "sgd"],
        &["sgd"],
    );
}

#[test]
fn example_run_files_parse() {
    // Both example run files are valid: every key known; stopping at the missing model.
    for f in ["examples/demo.toml", "examples/medical.toml"] {
        let out = ferrotune(&[
            "train",
            "--config",
            f,
            "--model",
            "models/no-such-model.gguf",
            "--data",
            "examples/data/medical_en_sample.jsonl",
        ]);
        let err = text(&out.stderr);
        assert!(!out.status.success());
        assert!(err.contains("models/no-such-model.gguf"), "{f}: {err}");
        assert!(!err.contains("invalid run file"), "{f}: {err}");
    }
}
