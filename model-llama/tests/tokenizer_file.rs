//! `Tokenizer::from_file` on the Llama-3 and DeepSeek-R1-Distill-Llama tokenizers of
//! ../shared/data/tokenizers, and both those vocabularies through GGUF: each is written as a
//! vocabulary-only GGUF (scripts/tokenizer_json_to_gguf.py, as llama.cpp's converter writes
//! them) and tokenized by llama.cpp and by `Tokenizer::from_gguf`, which exercises the
//! `llama-bpe` pre-tokenizer, `ignore_merges` and llama.cpp's decode clean-up. Tests print
//! "skipped" when the shared folder or .venv is absent.

mod tokenizer_common;

use model_llama::tokenizer::Tokenizer;
use std::path::PathBuf;
use tokenizer_common::{assert_matches_llama_cpp, llama_cpp, prompts, python, repo_root, run_script, Checks};

fn shared_tokenizer(name: &str) -> Option<PathBuf> {
    let dir = repo_root().join("../shared/data/tokenizers").join(name);
    if dir.join("tokenizer.json").exists() {
        Some(dir)
    } else {
        println!("skipped: {} not found", dir.display());
        None
    }
}

#[test]
fn llama3_from_file() {
    let Some(dir) = shared_tokenizer("llama3") else { return };
    let tok = Tokenizer::from_file(&dir).unwrap();
    assert_eq!(tok.vocab_size(), 128256);
    // BOS comes from the tokenizer.json post-processor, EOS from tokenizer_config.json.
    assert_eq!((tok.bos_id(), tok.eos_id(), tok.add_bos()), (Some(128000), Some(128009), true));
    assert_eq!(tok.encode("Hello world", true).unwrap(), [128000, 9906, 1917]);
    assert_eq!(tok.encode("Hello world", false).unwrap(), [9906, 1917]);
    assert_eq!(tok.eos_ids(), [128001, 128009], "<|end_of_text|> and <|eot_id|>");
    assert!(tok.chat_template().unwrap().contains("<|start_header_id|>"));
    let ids = tok.encode("<|start_header_id|>user<|end_header_id|>", false).unwrap();
    assert_eq!(ids.len(), 3);
    assert_eq!(tok.decode(&ids, true).unwrap(), "user");
    // clean_up_tokenization_spaces: true.
    let ids = tok.encode("Hello , world !", false).unwrap();
    assert_eq!(tok.decode(&ids, false).unwrap(), "Hello, world!");
    // The same tokenizer from the file path itself.
    let same = Tokenizer::from_file(dir.join("tokenizer.json")).unwrap();
    assert_eq!(same.encode("Hello world", true).unwrap(), [128000, 9906, 1917]);
}

#[test]
fn deepseek_from_file() {
    let Some(dir) = shared_tokenizer("deepseek-r1-distill-llama-8b") else { return };
    let tok = Tokenizer::from_file(&dir).unwrap();
    assert_eq!((tok.bos_id(), tok.eos_id(), tok.add_bos()), (Some(128000), Some(128001), true));
    assert_eq!(tok.token_to_str(128001).as_deref(), Some("<｜end▁of▁sentence｜>"));
    assert!(tok.is_eos(128001));
    let ids = tok.encode("<｜User｜>Hi<｜Assistant｜>", true).unwrap();
    assert_eq!((ids[0], ids.len()), (128000, 4));
    assert!(tok.chat_template().unwrap().contains("<｜Assistant｜>"));
}

#[test]
fn from_file_errors_name_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let err = Tokenizer::from_file(dir.path()).unwrap_err().to_string();
    assert_eq!(err, format!("tokenizer.json not found in {}", dir.path().display()));
    let missing = dir.path().join("nope.json");
    let err = Tokenizer::from_file(&missing).unwrap_err().to_string();
    assert_eq!(err, format!("{}: tokenizer file not found", missing.display()));
    let bad = dir.path().join("tokenizer.json");
    std::fs::write(&bad, "{ not json").unwrap();
    let err = Tokenizer::from_file(&bad).unwrap_err().to_string();
    assert!(err.starts_with(&format!("{}: cannot read tokenizer:", bad.display())), "{err}");
    let Some(src) = shared_tokenizer("llama3") else { return };
    std::fs::copy(src.join("tokenizer.json"), &bad).unwrap();
    let config = dir.path().join("tokenizer_config.json");
    std::fs::write(&config, "[1, 2").unwrap();
    let err = Tokenizer::from_file(dir.path()).unwrap_err().to_string();
    assert!(err.starts_with(&format!("{}: invalid JSON", config.display())), "{err}");
}

/// Writes the vocabulary-only GGUF of a shared tokenizer and checks `from_gguf` (everything)
/// and `from_file` (ids) against llama.cpp.
fn check_through_gguf(name: &str) {
    let Some(dir) = shared_tokenizer(name) else { return };
    let Some(py) = python() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join(format!("{name}.gguf"));
    run_script(&py, "tokenizer_json_to_gguf.py", &[dir.to_str().unwrap(), path.to_str().unwrap()], b"");
    let prompts = prompts();
    let reference = llama_cpp(&py, &path, true, &prompts);

    let file = gguf::GgufFile::open(&path).unwrap();
    let from_gguf = Tokenizer::from_gguf(&file).unwrap();
    assert_matches_llama_cpp(&from_gguf, &reference, &prompts, Checks { specials: true, decoding: true });
    let from_file = Tokenizer::from_file(&dir).unwrap();
    assert_matches_llama_cpp(&from_file, &reference, &prompts, Checks { specials: true, decoding: false });
    println!("{name}: {} prompts tokenized as llama.cpp does, from the GGUF and from tokenizer.json", prompts.len());
}

#[test]
fn llama3_matches_llama_cpp() {
    check_through_gguf("llama3");
}

#[test]
fn deepseek_matches_llama_cpp() {
    check_through_gguf("deepseek-r1-distill-llama-8b");
}
