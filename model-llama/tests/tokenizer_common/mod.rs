//! Shared by the tokenizer tests: test prompts, llama.cpp's tokenizer as a reference
//! (scripts/llamacpp_tokenize.py), and the comparison against it.

#![allow(dead_code)] // each test file uses a different subset

use model_llama::tokenizer::Tokenizer;
use serde_json::{json, Value as Json};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

/// The repository's `.venv` Python, or `None` after printing that the test is skipped.
pub fn python() -> Option<PathBuf> {
    let py = repo_root().join(".venv/bin/python");
    if py.exists() {
        Some(py)
    } else {
        println!("skipped: {} not found (scripts/setup-python.sh)", py.display());
        None
    }
}

/// Runs a script of `scripts/` with the .venv Python from the repository root, feeding it
/// `stdin`; panics with its stderr when it fails.
pub fn run_script(py: &Path, script: &str, args: &[&str], stdin: &[u8]) -> Vec<u8> {
    let mut child = Command::new(py)
        .current_dir(repo_root())
        .arg(repo_root().join("scripts").join(script))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(stdin).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{script} failed:\n{}", String::from_utf8_lossy(&out.stderr));
    out.stdout
}

/// Hand-picked prompts (scripts, digits, whitespace runs, contractions, ChatML and Llama-3
/// markers, emoji) and real SFT records.
pub fn prompts() -> Vec<String> {
    let fixed = [
        "Hello world",
        "Hello, world! How are you today?",
        "",
        " ",
        "  leading spaces and trailing   ",
        "tabs\tand\nnew\nlines\r\n\r\n\n\n  indented",
        "I'm sure they'll say it's fine, WE'RE done; don't. You've, I'd",
        "Hello , world ! It 's a ' quoted ' word .",
        "1234567890 3.14159 -42 1,000,000 0x1F 2024-06-01 ٣٤٥ ½",
        "你好，世界！今天天气怎么样？",
        "高血压患者应该注意饮食，少吃盐。",
        "日本語のテキストとカタカナ、한국어 텍스트",
        "Привет, мир! Как дела? مرحبا بالعالم",
        "Emoji: 😀🎉👍🏽 👨‍👩‍👧‍👦 🇫🇷 ❤️",
        "Accents: café naïve résumé Ångström e\u{301} n\u{303}",
        "Special spaces:\u{a0}non-breaking\u{3000}ideographic\u{2009}thin",
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n",
        "x<|im_end|>y<|endoftext|>z<|im_start|><|im_start|>",
        "<|im_start |> not special, <im_start> neither, <|im_end|",
        "<repo_name>ferrotune<file_sep>src/main.rs<filename>a.py<gh_stars>10",
        "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nHi!<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n",
        "<｜begin▁of▁sentence｜><｜User｜>Why?<｜Assistant｜><think>\nHmm.\n</think>\n\nBecause.<｜end▁of▁sentence｜>",
        "fn main() {\n    println!(\"{}\", 1 + 2);\n}\n",
        "def f(x):\n\treturn x**2  # square\n",
        "    \n\n    ",
        "a  b   c    d",
        "!!! ??? ... ,,, ;;; ::: ''' \"\"\"",
        "URL: https://example.com/path?q=1&b=2#frag <html><body>Hi</body></html>",
        "Math: ∑_{i=1}^{n} i² = n(n+1)/2, ∀x∈ℝ, √2 ≈ 1.414",
        "\u{feff}BOM and \u{200b}zero width",
    ];
    let mut all: Vec<String> = fixed.iter().map(|s| s.to_string()).collect();
    all.extend(shared_data_texts(40));
    all
}

/// Up to `per_file` records of each medical SFT set in ../shared/data (instruction, input,
/// output joined by newlines), when that folder is there.
fn shared_data_texts(per_file: usize) -> Vec<String> {
    let dir = repo_root().join("../shared/data");
    let mut out = vec![];
    for name in ["medical_zh_sft.jsonl", "medical_en_chatdoctor5k.jsonl", "medical_zh_huatuo_sft.jsonl"] {
        let Ok(text) = std::fs::read_to_string(dir.join(name)) else { continue };
        for line in text.lines().take(per_file) {
            let rec: Json = serde_json::from_str(line).unwrap();
            let field = |k: &str| rec[k].as_str().unwrap_or("").to_string();
            out.push(format!("{}\n{}\n{}", field("instruction"), field("input"), field("output")));
        }
    }
    out
}

/// llama.cpp's tokenization of `prompts` with the GGUF `model` (see the script's doc).
pub fn llama_cpp(py: &Path, model: &Path, vocab_only: bool, prompts: &[String]) -> Json {
    let request = json!({"model": model, "vocab_only": vocab_only, "prompts": prompts});
    serde_json::from_slice(&run_script(py, "llamacpp_tokenize.py", &[], request.to_string().as_bytes())).unwrap()
}

pub fn ids(v: &Json) -> Vec<u32> {
    v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect()
}

/// Bytes from hex, as text (invalid UTF-8 as U+FFFD, as decoding does).
pub fn unhex(v: &Json) -> String {
    let s = v.as_str().unwrap();
    let bytes: Vec<u8> = (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect();
    String::from_utf8_lossy(&bytes).into_owned()
}

/// What to compare with llama.cpp.
pub struct Checks {
    /// BOS/EOS ids, add_bos, the end-of-generation set.
    pub specials: bool,
    /// Every token's text (`llama_token_to_piece`), and detokenized prompts with and without
    /// special tokens (`llama_detokenize`).
    pub decoding: bool,
}

/// Compares `tok` with llama.cpp's answers for `prompts`: token ids with and without BOS
/// always, the rest as `checks` says. Panics listing every prompt that differs.
pub fn assert_matches_llama_cpp(tok: &Tokenizer, reference: &Json, prompts: &[String], checks: Checks) {
    assert_eq!(reference["n_vocab"], json!(tok.vocab_size()));
    if checks.specials {
        assert_eq!(reference["bos"], json!(tok.bos_id().map_or(-1, |b| b as i64)));
        assert_eq!(reference["eos"], json!(tok.eos_id().map_or(-1, |e| e as i64)));
        assert_eq!(reference["add_bos"], json!(tok.add_bos()));
        assert_eq!(ids(&reference["eog"]), tok.eos_ids(), "end-of-generation ids");
    }
    if checks.decoding {
        // A token's piece is its text without the clean-up `decode` may apply (llama.cpp's
        // `llama_token_to_piece` does not clean up either): what a stream yields for it.
        for (i, p) in reference["pieces"].as_array().unwrap().iter().enumerate() {
            let mut stream = tok.stream(false);
            let mut piece = stream.step(i as u32).unwrap().unwrap_or_default();
            piece.extend(stream.flush().unwrap());
            assert_eq!(piece, unhex(p), "token {i}");
        }
        for id in ids(&reference["control"]) {
            assert_eq!(tok.decode(&[id], true).unwrap(), "", "control token {id} is special");
        }
    }
    let mut mismatches = vec![];
    for (text, r) in prompts.iter().zip(reference["results"].as_array().unwrap()) {
        let (with, without) = (tok.encode(text, true).unwrap(), tok.encode(text, false).unwrap());
        let (want_with, want_without) = (ids(&r["with_special"]), ids(&r["without_special"]));
        if with != want_with || without != want_without {
            mismatches.push(format!("{text:?}\n  ferrotune {with:?}\n  llama.cpp {want_with:?}"));
        } else if checks.decoding {
            assert_eq!(tok.decode(&with, false).unwrap(), unhex(&r["detok"]), "{text:?}");
            assert_eq!(tok.decode(&with, true).unwrap(), unhex(&r["detok_skip"]), "{text:?}");
        }
    }
    assert!(
        mismatches.is_empty(),
        "{} of {} prompts differ:\n{}",
        mismatches.len(),
        prompts.len(),
        mismatches.join("\n")
    );
}
