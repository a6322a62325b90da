//! `Tokenizer::from_gguf` on the real SmolLM2 GGUF against llama.cpp's own tokenizer of the
//! same file (scripts/llamacpp_tokenize.py calls libllama from the `xllamacpp` wheel):
//! token ids with and without BOS, detokenized text with and without special tokens, every
//! token's bytes, the end-of-generation set. Then round trips, streaming, and the errors of
//! hand-built GGUF vocabularies. Tests needing the model or .venv print "skipped" without them.

mod tokenizer_common;

use model_llama::tokenizer::Tokenizer;
use tokenizer_common::{assert_matches_llama_cpp, llama_cpp, prompts, python, repo_root, Checks};

const MODEL: &str = "models/SmolLM2-135M-Instruct.Q4_1.gguf";

fn smollm2() -> Option<(gguf::GgufFile, Tokenizer)> {
    let path = repo_root().join(MODEL);
    if !path.exists() {
        println!("skipped: {} not found (scripts/fetch-smollm2.sh)", path.display());
        return None;
    }
    let file = gguf::GgufFile::open(&path).unwrap();
    let tok = Tokenizer::from_gguf(&file).unwrap();
    Some((file, tok))
}

#[test]
fn smollm2_matches_llama_cpp() {
    let Some((file, tok)) = smollm2() else { return };
    let Some(py) = python() else { return };
    let prompts = prompts();
    let reference = llama_cpp(&py, file.path(), false, &prompts);
    assert_matches_llama_cpp(&tok, &reference, &prompts, Checks { specials: true, decoding: true });
    println!("{} prompts tokenized as llama.cpp does; {} token pieces identical", prompts.len(), tok.vocab_size());
}

#[test]
fn smollm2_metadata_and_round_trips() {
    let Some((file, tok)) = smollm2() else { return };
    assert_eq!((tok.vocab_size(), tok.bos_id(), tok.eos_id(), tok.add_bos()), (49152, Some(1), Some(2), false));
    assert_eq!(tok.eos_ids(), [0, 2, 4]);
    assert!(tok.is_eos(2) && !tok.is_eos(1));
    assert_eq!(tok.token_to_str(1).as_deref(), Some("<|im_start|>"));
    assert_eq!(tok.token_to_id("<|im_end|>"), Some(2));
    assert_eq!(tok.chat_template(), file.get_str("tokenizer.chat_template").ok());
    assert_eq!(tok.encode("<|im_start|>user", false).unwrap()[0], 1, "ChatML markers are single tokens");
    assert_eq!(tok.encode("12", false).unwrap().len(), 2, "digits are split one by one");
    for text in prompts() {
        let ids = tok.encode(&text, true).unwrap();
        assert_eq!(tok.decode(&ids, false).unwrap(), text, "round trip");
    }
    let err = tok.decode(&[49152], false).unwrap_err().to_string();
    assert!(err.contains(MODEL) && err.contains("token id 49152 is outside the vocabulary (49152 tokens)"), "{err}");
}

/// Streaming yields the same text as decoding everything, never splits a character, and
/// holds back bytes of a character spread over several tokens.
#[test]
fn smollm2_streaming() {
    let Some((_file, tok)) = smollm2() else { return };
    let mut held_back = false;
    for text in prompts() {
        for skip in [false, true] {
            let ids = tok.encode(&text, false).unwrap();
            let mut stream = tok.stream(skip);
            let mut out = String::new();
            for &id in &ids {
                match stream.step(id).unwrap() {
                    Some(piece) => {
                        assert!(!piece.contains('\u{FFFD}'), "{text:?}: piece {piece:?}");
                        out.push_str(&piece);
                    }
                    None => held_back = true,
                }
            }
            out.extend(stream.flush().unwrap());
            assert_eq!(out, tok.decode(&ids, skip).unwrap(), "{text:?}");
        }
    }
    assert!(held_back, "some emoji or CJK character spans several tokens");
    // An incomplete character at the end comes out of flush as U+FFFD.
    let ids = tok.encode("😀", false).unwrap();
    assert!(ids.len() > 1);
    let mut stream = tok.stream(false);
    assert_eq!(stream.step(ids[0]).unwrap(), None);
    assert_eq!(stream.flush().unwrap().as_deref(), Some("\u{FFFD}"));
}

/// A minimal GGUF writer for hand-made vocabularies: string, bool, u32 and array entries.
mod gguf_writer {
    pub enum V<'a> {
        Str(&'a str),
        U32(u32),
        Bool(bool),
        Strs(Vec<String>),
        I32s(Vec<i32>),
    }

    fn string(out: &mut Vec<u8>, s: &str) {
        out.extend((s.len() as u64).to_le_bytes());
        out.extend(s.as_bytes());
    }

    pub fn write(path: &std::path::Path, kvs: &[(&str, V)]) {
        let mut out = b"GGUF".to_vec();
        out.extend(3u32.to_le_bytes());
        out.extend(0u64.to_le_bytes());
        out.extend((kvs.len() as u64).to_le_bytes());
        for (key, v) in kvs {
            string(&mut out, key);
            match v {
                V::Str(s) => {
                    out.extend(8u32.to_le_bytes());
                    string(&mut out, s);
                }
                V::U32(x) => {
                    out.extend(4u32.to_le_bytes());
                    out.extend(x.to_le_bytes());
                }
                V::Bool(b) => {
                    out.extend(7u32.to_le_bytes());
                    out.push(*b as u8);
                }
                V::Strs(list) => {
                    out.extend(9u32.to_le_bytes());
                    out.extend(8u32.to_le_bytes());
                    out.extend((list.len() as u64).to_le_bytes());
                    list.iter().for_each(|s| string(&mut out, s));
                }
                V::I32s(list) => {
                    out.extend(9u32.to_le_bytes());
                    out.extend(5u32.to_le_bytes());
                    out.extend((list.len() as u64).to_le_bytes());
                    list.iter().for_each(|x| out.extend(x.to_le_bytes()));
                }
            }
        }
        std::fs::write(path, out).unwrap();
    }
}

/// GPT-2's byte-to-character map: printable bytes stand for themselves, the others map to
/// U+0100 onwards.
fn byte_chars() -> Vec<String> {
    let printable = |b: u8| matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
    let mut next = 256u32;
    (0..=255u8)
        .map(|b| {
            if printable(b) {
                char::from(b).to_string()
            } else {
                next += 1;
                char::from_u32(next - 1).unwrap().to_string()
            }
        })
        .collect()
}

/// A tiny vocabulary: the 256 byte characters, "Ġh", "Ġhi", "hi", two specials and a
/// user-defined token.
fn tiny_vocab() -> (Vec<String>, Vec<i32>, Vec<String>) {
    let mut tokens = byte_chars();
    let mut types = vec![1; 256];
    for (t, ty) in [("Ġh", 1), ("hi", 1), ("Ġhi", 1), ("<|begin_of_text|>", 3), ("<|eot_id|>", 3), ("<tool>", 4)] {
        tokens.push(t.to_string());
        types.push(ty);
    }
    let merges = vec!["Ġ h".to_string(), "h i".to_string(), "Ġh i".to_string()];
    (tokens, types, merges)
}

#[test]
fn hand_built_vocabulary() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tiny.gguf");
    let (tokens, types, merges) = tiny_vocab();
    gguf_writer::write(
        &path,
        &[
            ("tokenizer.ggml.model", gguf_writer::V::Str("gpt2")),
            ("tokenizer.ggml.pre", gguf_writer::V::Str("llama-bpe")),
            ("tokenizer.ggml.tokens", gguf_writer::V::Strs(tokens)),
            ("tokenizer.ggml.token_type", gguf_writer::V::I32s(types)),
            ("tokenizer.ggml.merges", gguf_writer::V::Strs(merges)),
            ("tokenizer.ggml.bos_token_id", gguf_writer::V::U32(259)),
            ("tokenizer.ggml.eos_token_id", gguf_writer::V::U32(259)),
        ],
    );
    let tok = Tokenizer::from_gguf(&gguf::GgufFile::open(&path).unwrap()).unwrap();
    // llama-bpe adds BOS by default; <|eot_id|> ends generation besides EOS.
    assert!(tok.add_bos());
    assert_eq!(tok.eos_ids(), [259, 260]);
    let ids = tok.encode("hi hi<|eot_id|><tool>!", true).unwrap();
    assert_eq!(ids, [259, 257, 258, 260, 261, b'!' as u32]);
    assert_eq!(tok.decode(&ids, false).unwrap(), "<|begin_of_text|>hi hi<|eot_id|><tool>!");
    assert_eq!(tok.decode(&ids, true).unwrap(), "hi hi<tool>!", "user-defined tokens are not special");
}

#[test]
fn gguf_vocabulary_errors_name_file_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("v.gguf");
    let p = path.display().to_string();
    let (tokens, types, merges) = tiny_vocab();
    let err = |kvs: &[(&str, gguf_writer::V)]| {
        gguf_writer::write(&path, kvs);
        Tokenizer::from_gguf(&gguf::GgufFile::open(&path).unwrap()).unwrap_err().to_string()
    };
    use gguf_writer::V;
    assert_eq!(err(&[]), format!("{p}: metadata key 'tokenizer.ggml.model' missing"));
    assert_eq!(
        err(&[("tokenizer.ggml.model", V::Str("llama"))]),
        format!("{p}: tokenizer.ggml.model is 'llama'; only byte-level BPE vocabularies ('gpt2') are supported")
    );
    assert_eq!(
        err(&[("tokenizer.ggml.model", V::Str("gpt2")), ("tokenizer.ggml.pre", V::Str("deepseek-llm"))]),
        format!("{p}: tokenizer.ggml.pre 'deepseek-llm' is not supported")
    );
    assert_eq!(
        err(&[("tokenizer.ggml.model", V::Str("gpt2")), ("tokenizer.ggml.pre", V::Str("gpt-2"))]),
        format!("{p}: metadata key 'tokenizer.ggml.tokens' missing")
    );
    assert_eq!(
        err(&[("tokenizer.ggml.model", V::Str("gpt2")), ("tokenizer.ggml.tokens", V::Strs(tokens.clone()))]),
        format!("{p}: metadata key 'tokenizer.ggml.merges' missing")
    );
    assert_eq!(
        err(&[
            ("tokenizer.ggml.model", V::Str("gpt2")),
            ("tokenizer.ggml.tokens", V::Strs(tokens.clone())),
            ("tokenizer.ggml.token_type", V::I32s(types[..10].to_vec())),
            ("tokenizer.ggml.merges", V::Strs(merges.clone())),
        ]),
        format!("{p}: tokenizer.ggml.token_type has 10 entries for 262 tokens")
    );
    assert_eq!(
        err(&[("tokenizer.ggml.model", V::Str("gpt2")), ("tokenizer.ggml.tokens", V::Bool(true))]),
        format!("{p}: metadata key 'tokenizer.ggml.tokens' is bool, expected array of string")
    );
}
