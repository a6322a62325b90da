//! Text <-> token ids, over the Hugging Face `tokenizers` crate.
//!
//! A [`Tokenizer`] comes from a `tokenizer.json` ([`Tokenizer::from_file`], with the
//! `tokenizer_config.json` and `generation_config.json` beside it when present), or is rebuilt
//! from a GGUF file's `tokenizer.ggml.*` metadata ([`Tokenizer::from_gguf`]) so that it splits
//! text exactly as llama.cpp does for that file (the `tokenizer/from_gguf.rs` module
//! documentation details how llama.cpp's pre-tokenizers map onto `tokenizers` pieces).
//!
//! Besides encoding and decoding it knows the ids around generation: [`Tokenizer::bos_id`],
//! [`Tokenizer::eos_id`] and [`Tokenizer::eos_ids`], every id that ends generation, found the
//! way llama.cpp finds its end-of-generation tokens. [`TokenStream`] turns ids into text as
//! they are generated, holding back bytes of a character split across tokens.

mod cleanup;
mod from_gguf;
mod special;
mod stream;

pub use stream::TokenStream;

use crate::error::{LoadError, Result};
use cleanup::Cleanup;
use serde_json::Value as Json;
use std::path::{Path, PathBuf};

/// A tokenizer with its special ids and chat template.
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    /// The file it was read from, for messages.
    source: PathBuf,
    bos: Option<u32>,
    eos: Option<u32>,
    /// Sorted ids that end generation.
    eos_ids: Vec<u32>,
    add_bos: bool,
    add_eos: bool,
    cleanup: Cleanup,
    chat_template: Option<String>,
    /// Number of ids (a GGUF token list may repeat a string, so this is not always the size
    /// of `inner`'s vocabulary map).
    n_vocab: usize,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("source", &self.source)
            .field("vocab_size", &self.vocab_size())
            .field("bos", &self.bos)
            .field("eos_ids", &self.eos_ids)
            .field("add_bos", &self.add_bos)
            .finish()
    }
}

/// `tokenizer_config.json` fields this module reads.
#[derive(Default)]
struct TokenizerConfig {
    bos_token: Option<String>,
    eos_token: Option<String>,
    add_bos_token: Option<bool>,
    add_eos_token: Option<bool>,
    clean_up_tokenization_spaces: bool,
    chat_template: Option<String>,
}

/// Reads a JSON file that may be absent (`Ok(None)`); an unreadable or malformed file is an
/// error naming it.
fn read_json(path: &Path) -> Result<Option<Json>> {
    if !path.exists() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(path).map_err(|e| LoadError::io(path, e))?;
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|e| LoadError::InFile { path: path.to_path_buf(), msg: format!("invalid JSON: {e}") })
}

/// A token given as a string or as an added-token object (`{"content": ...}`).
fn token_text(v: &Json) -> Option<String> {
    match v {
        Json::String(s) => Some(s.clone()),
        Json::Object(o) => o.get("content")?.as_str().map(str::to_string),
        _ => None,
    }
}

impl TokenizerConfig {
    fn read(dir: &Path) -> Result<TokenizerConfig> {
        let path = dir.join("tokenizer_config.json");
        let Some(json) = read_json(&path)? else { return Ok(TokenizerConfig::default()) };
        let chat_template = match json.get("chat_template") {
            None | Some(Json::Null) => None,
            Some(Json::String(s)) => Some(s.clone()),
            // A list of named templates: the one called "default".
            Some(Json::Array(list)) => list
                .iter()
                .find(|t| t.get("name").and_then(Json::as_str) == Some("default"))
                .and_then(|t| t.get("template")?.as_str().map(str::to_string)),
            Some(other) => {
                return Err(LoadError::InFile {
                    path,
                    msg: format!("chat_template is neither a string nor a list: {other}"),
                })
            }
        };
        let chat_template = match chat_template {
            Some(t) => Some(t),
            None => {
                let jinja = dir.join("chat_template.jinja");
                if jinja.exists() {
                    Some(std::fs::read_to_string(&jinja).map_err(|e| LoadError::io(&jinja, e))?)
                } else {
                    None
                }
            }
        };
        Ok(TokenizerConfig {
            bos_token: json.get("bos_token").and_then(token_text),
            eos_token: json.get("eos_token").and_then(token_text),
            add_bos_token: json.get("add_bos_token").and_then(Json::as_bool),
            add_eos_token: json.get("add_eos_token").and_then(Json::as_bool),
            clean_up_tokenization_spaces: json.get("clean_up_tokenization_spaces").and_then(Json::as_bool)
                == Some(true),
            chat_template,
        })
    }
}

/// `eos_token_id` of a `generation_config.json` (a number or a list).
fn generation_eos_ids(dir: &Path) -> Result<Vec<u32>> {
    let Some(json) = read_json(&dir.join("generation_config.json"))? else { return Ok(vec![]) };
    let ids = match json.get("eos_token_id") {
        Some(Json::Array(a)) => a.iter().filter_map(Json::as_u64).collect(),
        Some(v) => v.as_u64().into_iter().collect(),
        None => vec![],
    };
    Ok(ids.into_iter().filter_map(|id| u32::try_from(id).ok()).collect())
}

impl Tokenizer {
    /// Reads a Hugging Face `tokenizer.json` (`path` is the file or the folder holding it).
    /// Beside it, when present: `tokenizer_config.json` gives `bos_token`, `eos_token`,
    /// `add_bos_token`, `add_eos_token`, `clean_up_tokenization_spaces` and `chat_template`
    /// (or `chat_template.jinja` does), and `generation_config.json`'s `eos_token_id` adds
    /// end-of-generation ids. Whether BOS/EOS are added, when the config does not say, is
    /// what the `tokenizer.json` post-processor does.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Tokenizer> {
        let path = path.as_ref();
        let file = if path.is_dir() {
            let file = path.join("tokenizer.json");
            if !file.is_file() {
                return Err(LoadError::Invalid(format!("tokenizer.json not found in {}", path.display())));
            }
            file
        } else if path.is_file() {
            path.to_path_buf()
        } else {
            return Err(LoadError::Invalid(format!("{}: tokenizer file not found", path.display())));
        };
        let dir = file.parent().unwrap_or(Path::new("."));
        let inner = tokenizers::Tokenizer::from_file(&file)
            .map_err(|e| LoadError::InFile { path: file.clone(), msg: format!("cannot read tokenizer: {e}") })?;
        let config = TokenizerConfig::read(dir)?;

        // What the post-processor adds around a text: its leading/trailing ids.
        let probe = |add: bool| {
            inner.encode_fast("a", add).map(|e| e.get_ids().to_vec()).map_err(|e| LoadError::InFile {
                path: file.clone(),
                msg: format!("cannot encode with this tokenizer: {e}"),
            })
        };
        let (with, without) = (probe(true)?, probe(false)?);
        let start = with.windows(without.len().max(1)).position(|w| w == without.as_slice()).unwrap_or(0);
        let (prefix, suffix) = (&with[..start], with.get(start + without.len()..).unwrap_or(&[]));

        let lookup = |text: &Option<String>| text.as_deref().and_then(|t| inner.token_to_id(t));
        let bos = lookup(&config.bos_token).or_else(|| (prefix.len() == 1).then(|| prefix[0]));
        let eos = lookup(&config.eos_token).or_else(|| (suffix.len() == 1).then(|| suffix[0]));
        let add_bos = config.add_bos_token.unwrap_or(bos.is_some() && prefix == bos.as_slice());
        let add_eos = config.add_eos_token.unwrap_or(eos.is_some() && suffix == eos.as_slice());

        let mut eos_ids =
            special::end_of_generation(|t| inner.token_to_id(t), &special::ExplicitIds { eos, ..Default::default() });
        eos_ids.extend(generation_eos_ids(dir)?);
        eos_ids.sort_unstable();
        eos_ids.dedup();
        Ok(Tokenizer {
            n_vocab: inner.get_vocab_size(true),
            inner,
            source: file,
            bos,
            eos,
            eos_ids,
            add_bos,
            add_eos,
            cleanup: if config.clean_up_tokenization_spaces { Cleanup::Transformers } else { Cleanup::None },
            chat_template: config.chat_template,
        })
    }

    /// Rebuilds the byte-level BPE tokenizer stored in a GGUF file's metadata
    /// (`tokenizer.ggml.model` = `gpt2`) so that it tokenizes as llama.cpp does for that file:
    /// control/user-defined tokens are matched first (`token_type` 3/4, and tokens llama.cpp
    /// promotes by their text), then each regex llama.cpp lists for `tokenizer.ggml.pre` splits
    /// the text (a `Sequence` of isolating `Split`s, then `ByteLevel`), then BPE merges by rank.
    /// Supported `pre` values: `default` (also when absent), the `llama3`/`llama-bpe` family,
    /// `gpt-2` and alike, `smollm`/`starcoder` and alike, the `qwen2`/`deepseek-r1-qwen`
    /// family, `falcon`, `dbrx`, `glm4`; others are an error naming them. BOS/EOS, `add_bos`,
    /// the end-of-generation ids and the chat template come from the metadata; decoding applies
    /// llama.cpp's space clean-up where llama.cpp does. Errors name the file and the key.
    pub fn from_gguf(file: &gguf::GgufFile) -> Result<Tokenizer> {
        from_gguf::build(file)
    }

    /// The ids of `text`. Special and added tokens written in the text (`<|im_start|>`) are
    /// matched as single tokens; with `add_special`, BOS (and EOS) are added when the
    /// tokenizer adds them ([`Tokenizer::add_bos`]).
    pub fn encode(&self, text: &str, add_special: bool) -> Result<Vec<u32>> {
        let encoding =
            self.inner.encode_fast(text, false).map_err(|e| self.error(format!("cannot encode text: {e}")))?;
        let ids = encoding.get_ids();
        let mut out = Vec::with_capacity(ids.len() + 2);
        if add_special && self.add_bos {
            out.extend(self.bos);
        }
        out.extend_from_slice(ids);
        if add_special && self.add_eos {
            out.extend(self.eos);
        }
        Ok(out)
    }

    /// The text of `ids`; with `skip_special`, special tokens (BOS, EOS, `<|im_end|>`...) are
    /// left out. Bytes that do not form valid UTF-8 become U+FFFD. An id outside the
    /// vocabulary is an error.
    pub fn decode(&self, ids: &[u32], skip_special: bool) -> Result<String> {
        let text = self.decode_raw(ids, skip_special)?;
        Ok(self.cleanup.apply(text))
    }

    /// Decoding without the clean-up of spaces, as used for streaming.
    fn decode_raw(&self, ids: &[u32], skip_special: bool) -> Result<String> {
        let n = self.vocab_size();
        if let Some(&bad) = ids.iter().find(|&&id| id as usize >= n) {
            return Err(self.error(format!("token id {bad} is outside the vocabulary ({n} tokens)")));
        }
        self.inner.decode(ids, skip_special).map_err(|e| self.error(format!("cannot decode ids: {e}")))
    }

    /// A decoder that turns ids into text one at a time (see [`TokenStream`]).
    pub fn stream(&self, skip_special: bool) -> TokenStream<'_> {
        TokenStream::new(self, skip_special)
    }

    /// The beginning-of-sequence id, if the tokenizer has one.
    pub fn bos_id(&self) -> Option<u32> {
        self.bos
    }

    /// The end-of-sequence id, if the tokenizer has one.
    pub fn eos_id(&self) -> Option<u32> {
        self.eos
    }

    /// Every id that ends generation, sorted: EOS plus end-of-turn tokens such as
    /// `<|im_end|>`, `<|eot_id|>`, `<|endoftext|>` found in the vocabulary (llama.cpp's
    /// end-of-generation set).
    pub fn eos_ids(&self) -> &[u32] {
        &self.eos_ids
    }

    /// Whether `id` ends generation.
    pub fn is_eos(&self, id: u32) -> bool {
        self.eos_ids.binary_search(&id).is_ok()
    }

    /// Whether [`Tokenizer::encode`] with `add_special` puts BOS first.
    pub fn add_bos(&self) -> bool {
        self.add_bos && self.bos.is_some()
    }

    /// The Jinja chat template, if the tokenizer ships one.
    pub fn chat_template(&self) -> Option<&str> {
        self.chat_template.as_deref()
    }

    /// The vocabulary string of `id` (byte-level form, e.g. `Ġthe` for " the"), if any.
    pub fn token_to_str(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    /// The id of the vocabulary string `token`, if any.
    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// Number of ids, added tokens included.
    pub fn vocab_size(&self) -> usize {
        self.n_vocab
    }

    /// The file the tokenizer was read from.
    pub fn source(&self) -> &Path {
        &self.source
    }

    /// The tokenizer as a `tokenizer.json` text (for writing a Hugging Face folder).
    pub fn to_json(&self) -> Result<String> {
        self.inner.to_string(false).map_err(|e| self.error(format!("cannot serialize the tokenizer: {e}")))
    }

    fn error(&self, msg: String) -> LoadError {
        LoadError::InFile { path: self.source.clone(), msg }
    }
}
