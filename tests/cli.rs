//! The `ferrotune` binary end to end: doctor, generate on the real model, clear errors.

mod common;

use common::{ferrotune, text, SMOLLM2};
use std::path::Path;

#[test]
fn doctor_reports_cpu_and_gpu() {
    let out = ferrotune(&["doctor"]);
    assert!(out.status.success());
    let s = text(&out.stdout);
    for line in ["ferrotune ", "cpu: ", "threads: ", "memory: "] {
        assert!(s.contains(line), "doctor output lacks {line:?}:\n{s}");
    }
    assert!(s.contains("gpu: none (") || s.contains("device 0: "), "no GPU line:\n{s}");
}

#[test]
fn generate_answers_with_the_chat_template() {
    let model = SMOLLM2;
    assert!(
        Path::new(env!("CARGO_MANIFEST_DIR")).join(model).exists(),
        "{model} missing: run scripts/fetch-smollm2.sh (.ci/run does)"
    );
    let out = ferrotune(&[
        "generate",
        "--model",
        model,
        "--chat",
        "--prompt",
        "What is the capital of France?",
        "--max-new-tokens",
        "24",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let answer = text(&out.stdout);
    assert!(answer.contains("Paris"), "greedy answer: {answer:?}");
    assert!(!answer.contains("<|im_end|>"), "the end-of-turn token must stop generation: {answer:?}");
    assert!(text(&out.stderr).contains("tokens/s"), "{}", text(&out.stderr));
}

#[test]
fn stop_string_ends_the_output() {
    let model = SMOLLM2;
    let out = ferrotune(&[
        "generate",
        "--model",
        model,
        "--chat",
        "--prompt",
        "What is the capital of France?",
        "--stop",
        "Paris",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let answer = text(&out.stdout);
    assert!(!answer.contains("Paris") && answer.contains("capital"), "{answer:?}");
}

#[test]
fn missing_model_is_a_clear_error() {
    let out = ferrotune(&["generate", "--model", "no/such-model-here", "--prompt", "hi"]);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(err.contains("no/such-model-here") && err.starts_with("error:"), "{err}");
    // A mistyped .gguf path is said to be missing, not looked up on the hub as a repo id.
    let out = ferrotune(&["generate", "--model", "models/no-such-file.gguf", "--prompt", "hi"]);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(err.contains("models/no-such-file.gguf") && err.contains("not an existing file"), "{err}");
    assert!(!err.contains("cache") && !err.contains("download"), "{err}");
}

#[test]
fn cuda_without_a_gpu_is_a_clear_error() {
    let out = ferrotune(&["generate", "--model", "x.gguf", "--prompt", "hi", "--device", "cuda"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("CUDA device 0 is not available"), "{}", text(&out.stderr));
}
