//! A byte-level BPE tokenizer rebuilt from GGUF metadata, splitting text as llama.cpp does.
//!
//! llama.cpp (`llama-vocab.cpp`) tokenizes a `gpt2`-model vocabulary in three steps, each
//! mapped here onto a `tokenizers` piece:
//!
//! 1. **Special tokens**: control (`token_type` 3), unknown (2) and user-defined (4) tokens
//!    written in the text are cut out first and become their own ids. Control and unknown
//!    tokens become *special* added tokens (left out by `decode(.., skip_special)`, as
//!    llama.cpp renders them empty without `special`), user-defined ones plain added tokens.
//!    Tokens llama.cpp promotes to control by their text (`<|im_end|>`, `<|eot_id|>`, FIM
//!    tokens; [`super::special`]) are promoted here too.
//! 2. **Pre-tokenizer**: `unicode_regex_split` applies the regexes listed for the
//!    `tokenizer.ggml.pre` value one after the other; each regex splits every current piece
//!    into its matches *and* the text between them. That is `tokenizers`' `Split` with
//!    `Isolated` behaviour, so the pre-tokenizer is a `Sequence` of one `Split` per llama.cpp
//!    regex (the same patterns, with C escapes resolved), then `ByteLevel` without its own
//!    regex to map bytes to the GPT-2 byte alphabet.
//!
//!    For `smollm` (also `starcoder`, `refact`, `command-r`, `codeshell`, `exaone`,
//!    `minerva-7b`) llama.cpp lists `\p{N}` (every digit on its own) and then the GPT-2 regex
//!    `'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)`, which is what
//!    SmolLM2's `tokenizer.json` says with `Digits(individual_digits)` + `ByteLevel`.
//! 3. **BPE**: merges by rank (lowest first, leftmost on ties) over the byte-level symbols;
//!    for `llama3`-style vocabularies (`ignore_merges`) a word that is itself a token is kept
//!    whole. `tokenizers`' BPE does the same.
//!
//! The flags that come with each `pre` value follow llama.cpp: `add_bos` (llama3 family),
//! `ignore_merges`, and `clean_spaces` (its decode-time clean-up). `tokenizer.ggml.pre`
//! values llama.cpp knows but that are not listed here are rejected with an error naming
//! them, rather than silently tokenized another way.

use super::cleanup::Cleanup;
use super::special::{self, ExplicitIds};
use super::Tokenizer;
use crate::error::{LoadError, Result};
use gguf::GgufFile;
use std::borrow::Cow;
use std::collections::HashMap;
use tokenizers::models::bpe::{Vocab, BPE};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{AddedToken, PreTokenizerWrapper, SplitDelimiterBehavior};

/// GPT-2's pre-tokenizer regex (llama.cpp's `LLAMA_VOCAB_PRE_TYPE_GPT2`).
const GPT2: &str = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)";
/// Llama-3's regex as llama.cpp adapts it (case-insensitive contractions spelled out).
const LLAMA3: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// Qwen2's regex (single digits), as llama.cpp adapts it.
const QWEN2: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// How llama.cpp pre-tokenizes one family of `tokenizer.ggml.pre` values.
struct PreSpec {
    /// Applied in order, each splitting every piece into matches and the text between.
    regexes: &'static [&'static str],
    /// Keep a word whole when it is a token (before any merge).
    ignore_merges: bool,
    /// Add BOS by default (when `tokenizer.ggml.add_bos_token` is absent).
    add_bos: bool,
    /// llama.cpp's `clean_spaces` decode pass.
    clean_spaces: bool,
}

/// llama.cpp's handling of `pre` (`llama_vocab::impl::load` and `llm_tokenizer_bpe`), or
/// `None` for values not supported here.
fn pre_spec(pre: &str) -> Option<PreSpec> {
    let spec =
        |regexes, ignore_merges, add_bos, clean_spaces| PreSpec { regexes, ignore_merges, add_bos, clean_spaces };
    Some(match pre {
        "default" => spec(&[r"[\p{P}\$\+<=>\^~\|]+", GPT2, r"\p{N}+", "[0-9][0-9][0-9]"], false, false, true),
        "llama3" | "llama-v3" | "llama-bpe" | "falcon3" | "falcon-h1" | "pixtral" | "midm-2.0" | "lfm2" => {
            spec(&[LLAMA3], true, true, true)
        }
        "dbrx" | "smaug-bpe" | "glm4" | "chatglm-bpe" => spec(&[LLAMA3], false, false, true),
        "gpt-2" | "phi-2" | "jina-es" | "jina-de" | "gigachat" | "jina-v2-es" | "jina-v2-de" | "a.x-4.0" | "mellum"
        | "mpt" | "olmo" | "jais" | "exaone4" => spec(&[GPT2], false, false, true),
        "trillion" | "granite-docling" => spec(&[GPT2], false, false, false),
        "smollm" | "command-r" => spec(&[r"\p{N}", GPT2], false, false, false),
        "starcoder" | "refact" | "codeshell" | "exaone" | "minerva-7b" => spec(&[r"\p{N}", GPT2], false, false, true),
        "qwen2" | "deepseek-r1-qwen" | "kormo" | "hunyuan" => spec(&[QWEN2], false, false, false),
        "stablelm2" | "megrez" => spec(&[QWEN2], false, false, true),
        "falcon" => spec(&[r"[\p{P}\$\+<=>\^~\|`]+", GPT2, "[0-9][0-9][0-9]"], false, false, true),
        _ => return None,
    })
}

/// llama.cpp's token types (`llama_token_type`).
const TYPE_NORMAL: i32 = 1;
const TYPE_UNKNOWN: i32 = 2;
const TYPE_CONTROL: i32 = 3;
const TYPE_USER_DEFINED: i32 = 4;

/// Builds the tokenizer of a GGUF file.
pub(super) fn build(file: &GgufFile) -> Result<Tokenizer> {
    let path = file.path();
    let in_file = |msg: String| LoadError::InFile { path: path.to_path_buf(), msg };

    let model: &str = file.get("tokenizer.ggml.model")?;
    if model != "gpt2" {
        return Err(in_file(format!(
            "tokenizer.ggml.model is '{model}'; only byte-level BPE vocabularies ('gpt2') are supported"
        )));
    }
    // llama.cpp uses its default pre-tokenizer when the key is absent.
    let pre = file.get_opt::<&str>("tokenizer.ggml.pre")?.unwrap_or("default");
    let spec = pre_spec(pre).ok_or_else(|| in_file(format!("tokenizer.ggml.pre '{pre}' is not supported")))?;

    let tokens: &[String] = file.get("tokenizer.ggml.tokens")?;
    let n = tokens.len();
    if n == 0 || u32::try_from(n).is_err() {
        return Err(in_file(format!("tokenizer.ggml.tokens holds {n} tokens")));
    }
    let types: Option<&[i32]> = file.get_opt("tokenizer.ggml.token_type")?;
    if let Some(t) = types.filter(|t| t.len() != n) {
        return Err(in_file(format!("tokenizer.ggml.token_type has {} entries for {n} tokens", t.len())));
    }
    let merges: &[String] = file.get("tokenizer.ggml.merges")?;

    // llama.cpp renames empty tokens, and a repeated string maps to its last id.
    let texts: Vec<Cow<str>> = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| if t.is_empty() { Cow::Owned(format!("[EMPTY_{i}]")) } else { Cow::Borrowed(t.as_str()) })
        .collect();
    let ids: HashMap<&str, u32> = texts.iter().enumerate().map(|(i, t)| (t.as_ref(), i as u32)).collect();
    let lookup = |t: &str| ids.get(t).copied();

    let id_key = |key: &str| -> Result<Option<u32>> { Ok(file.get_opt::<u32>(key)?.filter(|&id| (id as usize) < n)) };
    let either = |deprecated: &str, key: &str| -> Result<Option<u32>> { Ok(id_key(deprecated)?.or(id_key(key)?)) };
    let explicit = ExplicitIds {
        eos: id_key("tokenizer.ggml.eos_token_id")?,
        eot: id_key("tokenizer.ggml.eot_token_id")?,
        eom: id_key("tokenizer.ggml.eom_token_id")?,
        fim_pre: either("tokenizer.ggml.prefix_token_id", "tokenizer.ggml.fim_pre_token_id")?,
        fim_suf: either("tokenizer.ggml.suffix_token_id", "tokenizer.ggml.fim_suf_token_id")?,
        fim_mid: either("tokenizer.ggml.middle_token_id", "tokenizer.ggml.fim_mid_token_id")?,
        fim_pad: id_key("tokenizer.ggml.fim_pad_token_id")?,
        fim_rep: id_key("tokenizer.ggml.fim_rep_token_id")?,
        fim_sep: id_key("tokenizer.ggml.fim_sep_token_id")?,
    };
    let bos = id_key("tokenizer.ggml.bos_token_id")?;
    let add_bos = file.get_opt::<bool>("tokenizer.ggml.add_bos_token")?.unwrap_or(spec.add_bos);
    let add_eos = file.get_opt::<bool>("tokenizer.ggml.add_eos_token")?.unwrap_or(false);
    let eos_ids = special::end_of_generation(lookup, &explicit);

    // Token types, with llama.cpp's promotions.
    let mut attr: Vec<i32> = types.map_or_else(|| vec![TYPE_NORMAL; n], <[i32]>::to_vec);
    for id in special::detected_control(lookup, &explicit) {
        attr[id as usize] = TYPE_CONTROL;
    }
    for id in special::ALWAYS_RENDERED.iter().filter_map(|t| lookup(t)) {
        attr[id as usize] = TYPE_USER_DEFINED;
    }
    if let (Some(_), Some(_), Some(end)) = (lookup("<|return|>"), lookup("<|call|>"), lookup("<|end|>")) {
        if !eos_ids.contains(&end) {
            attr[end as usize] = TYPE_USER_DEFINED;
        }
    }

    let bpe = bpe_model(&texts, merges, spec.ignore_merges)
        .map_err(|e| in_file(format!("cannot build the BPE model: {e}")))?;
    let pre_tokenizer = pre_tokenizer(spec.regexes).map_err(|e| in_file(format!("pre-tokenizer '{pre}': {e}")))?;
    let mut inner = tokenizers::Tokenizer::new(bpe);
    inner.with_pre_tokenizer(Some(pre_tokenizer));
    inner.with_decoder(Some(ByteLevel::default()));
    let added = |special: bool| -> Vec<AddedToken> {
        (0..n)
            .filter(|&i| match attr[i] {
                TYPE_CONTROL | TYPE_UNKNOWN => special,
                TYPE_USER_DEFINED => !special,
                _ => false,
            })
            .map(|i| AddedToken::from(texts[i].as_ref(), special).normalized(false))
            .collect()
    };
    inner.add_special_tokens(&added(true));
    inner.add_tokens(&added(false));

    let chat_template = file.get_opt::<&str>("tokenizer.chat_template")?.map(str::to_string);
    Ok(Tokenizer {
        inner,
        source: path.to_path_buf(),
        bos,
        eos: explicit.eos,
        eos_ids,
        add_bos,
        add_eos,
        cleanup: if spec.clean_spaces { Cleanup::LlamaCpp } else { Cleanup::None },
        chat_template,
        n_vocab: n,
    })
}

/// The BPE model: vocabulary and the merges `tokenizers` can use. llama.cpp splits a merge
/// at its first space after the first byte; merges whose parts or result are not tokens
/// could never produce a token and are left out (`tokenizers` rejects them).
fn bpe_model(texts: &[Cow<str>], merges: &[String], ignore_merges: bool) -> tokenizers::Result<BPE> {
    let vocab: Vocab = texts.iter().enumerate().map(|(i, t)| (t.to_string(), i as u32)).collect();
    let pairs: Vec<(String, String)> = merges
        .iter()
        .filter_map(|m| {
            let at = m.bytes().skip(1).position(|b| b == b' ')? + 1;
            let (a, b) = (&m[..at], &m[at + 1..]);
            let known = vocab.contains_key(a) && vocab.contains_key(b) && vocab.contains_key(&format!("{a}{b}"));
            known.then(|| (a.to_string(), b.to_string()))
        })
        .collect();
    BPE::builder().vocab_and_merges(vocab, pairs).ignore_merges(ignore_merges).build()
}

/// One isolating `Split` per llama.cpp regex, then the byte-level mapping.
fn pre_tokenizer(regexes: &[&str]) -> tokenizers::Result<Sequence> {
    let mut steps: Vec<PreTokenizerWrapper> = Vec::with_capacity(regexes.len() + 1);
    for r in regexes {
        steps.push(Split::new(SplitPattern::Regex(r.to_string()), SplitDelimiterBehavior::Isolated, false)?.into());
    }
    steps.push(ByteLevel::new(false, false, false).into());
    Ok(Sequence::new(steps))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_listed_pre_tokenizer_compiles() {
        for pre in
            ["default", "llama-bpe", "dbrx", "gpt-2", "trillion", "smollm", "starcoder", "qwen2", "megrez", "falcon"]
        {
            let spec = pre_spec(pre).unwrap();
            pre_tokenizer(spec.regexes).unwrap_or_else(|e| panic!("{pre}: {e}"));
        }
        assert!(pre_spec("deepseek-llm").is_none());
        assert!(pre_spec("llama-bpe").unwrap().ignore_merges);
    }
}
