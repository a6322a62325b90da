//! Chat templates: render a model's own Jinja chat template the way Hugging Face
//! `transformers` does (`tokenizer.apply_chat_template(..., tokenize=False)`).
//!
//! The template comes from `tokenizer_config.json` (`chat_template`) or from a GGUF file's
//! `tokenizer.chat_template` metadata. It is rendered with [minijinja] configured to behave
//! like the sandboxed Jinja2 environment `transformers` builds:
//!
//! - `trim_blocks` and `lstrip_blocks` on, a single trailing newline of the template dropped;
//! - loop controls (`{% break %}`, `{% continue %}`) and `namespace()`;
//! - the globals `raise_exception(message)` (rendering fails with that message) and
//!   `strftime_now(format)` (local time, Python `strftime` codes);
//! - a `tojson` filter that writes what Python's `json.dumps(x, ensure_ascii=False)` writes
//!   (`", "` and `": "` separators, keys in insertion order, `indent=` and `ensure_ascii=`
//!   supported);
//! - Python string, dict and list methods (`.strip()`, `.startswith()`, `.split()`,
//!   `.items()`, `.get()`, ...) through `minijinja_contrib::pycompat`;
//! - `{{ true }}` prints `True` and `{{ none }}` prints `None`, as Python does.
//!
//! The context holds `messages`, `add_generation_prompt`, `bos_token`, `eos_token`, and
//! `tools` and `documents` set to none (what `transformers` passes when a caller gives none).
//!
//! Not reproduced: Python's `repr` of lists and dicts printed directly with `{{ }}` (minijinja
//! prints them JSON-like) and the `{% generation %}` tag of assistant-mask templates.

use std::fmt::Write as _;
use std::path::Path;

use minijinja::value::{Kwargs, ValueKind};
use minijinja::{Environment, Error, ErrorKind, Value};
use serde::{Deserialize, Serialize};

/// Name under which the template is registered; it appears in render error messages.
const TEMPLATE_NAME: &str = "chat_template";

/// One turn of a conversation, as `transformers` chat templates expect it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessage {
    /// `system`, `user` or `assistant` (templates may accept others, such as `tool`).
    pub role: String,
    /// The text of the turn.
    pub content: String,
}

impl ChatMessage {
    /// A message with the given role and content.
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        ChatMessage { role: role.into(), content: content.into() }
    }
}

/// What can go wrong while loading or rendering a chat template.
#[derive(Debug, thiserror::Error)]
pub enum ChatError {
    /// The template is not valid Jinja.
    #[error("chat template does not compile: {0}")]
    Syntax(#[source] Error),
    /// Rendering failed: an undefined method, a type error, or the template's own
    /// `raise_exception(...)`.
    #[error("chat template failed to render: {0}")]
    Render(#[source] Error),
    /// A `tokenizer_config.json` could not be read or holds no usable template.
    #[error("{path}: {message}")]
    Config {
        /// The file that was read.
        path: String,
        /// What is wrong with it.
        message: String,
    },
}

/// Result type of this module.
pub type Result<T> = std::result::Result<T, ChatError>;

/// A compiled chat template together with the special tokens it refers to.
#[derive(Debug)]
pub struct ChatTemplate {
    env: Environment<'static>,
    bos_token: String,
    eos_token: String,
}

impl ChatTemplate {
    /// Compiles `template` (Jinja source). `bos_token` and `eos_token` are the token
    /// strings the template sees as `bos_token` / `eos_token`.
    pub fn new(template: &str, bos_token: &str, eos_token: &str) -> Result<Self> {
        let mut env = Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_keep_trailing_newline(false);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.set_formatter(python_formatter);
        env.add_function("raise_exception", raise_exception);
        env.add_function("strftime_now", strftime_now);
        env.add_filter("tojson", tojson);
        env.add_template_owned(TEMPLATE_NAME, template.to_owned()).map_err(ChatError::Syntax)?;
        Ok(ChatTemplate { env, bos_token: bos_token.to_owned(), eos_token: eos_token.to_owned() })
    }

    /// Reads the `chat_template`, `bos_token` and `eos_token` of a Hugging Face
    /// `tokenizer_config.json`. A template given as a list of named templates uses the one
    /// named `default`, as `transformers` does. Special tokens may be strings or
    /// `{"content": ...}` objects; absent ones become empty strings.
    pub fn from_tokenizer_config(path: &Path) -> Result<Self> {
        let config_error = |message: String| ChatError::Config { path: path.display().to_string(), message };
        let text = std::fs::read_to_string(path).map_err(|e| config_error(e.to_string()))?;
        let config: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| config_error(format!("invalid JSON: {e}")))?;
        let template = match config.get("chat_template") {
            Some(serde_json::Value::String(t)) => t.as_str(),
            Some(serde_json::Value::Array(named)) => named
                .iter()
                .find(|t| t.get("name").and_then(|n| n.as_str()) == Some("default"))
                .and_then(|t| t.get("template"))
                .and_then(|t| t.as_str())
                .ok_or_else(|| config_error("chat_template is a list without a \"default\" entry".into()))?,
            Some(_) => return Err(config_error("chat_template is not a string or a list".into())),
            None => return Err(config_error("no chat_template".into())),
        };
        let special = |key: &str| match config.get(key) {
            Some(serde_json::Value::String(s)) => s.clone(),
            Some(obj @ serde_json::Value::Object(_)) => {
                obj.get("content").and_then(|c| c.as_str()).unwrap_or_default().to_owned()
            }
            _ => String::new(),
        };
        Self::new(template, &special("bos_token"), &special("eos_token"))
    }

    /// Renders `messages`; with `add_generation_prompt` the text ends with the header that
    /// opens the assistant's turn.
    pub fn render(&self, messages: &[ChatMessage], add_generation_prompt: bool) -> Result<String> {
        let template = self.env.get_template(TEMPLATE_NAME).map_err(ChatError::Render)?;
        template
            .render(minijinja::context! {
                messages => messages,
                add_generation_prompt => add_generation_prompt,
                bos_token => self.bos_token,
                eos_token => self.eos_token,
                tools => Value::from(()),
                documents => Value::from(()),
            })
            .map_err(ChatError::Render)
    }
}

/// Renders `messages` through the Jinja chat `template` (see the module docs for the
/// environment). To render many conversations with one template, build a [`ChatTemplate`]
/// once instead.
pub fn render_chat(
    template: &str,
    messages: &[ChatMessage],
    add_generation_prompt: bool,
    bos_token: &str,
    eos_token: &str,
) -> Result<String> {
    ChatTemplate::new(template, bos_token, eos_token)?.render(messages, add_generation_prompt)
}

/// Prints booleans and none the way Python's `str()` does; everything else as minijinja does.
fn python_formatter(
    out: &mut minijinja::Output,
    state: &minijinja::State,
    value: &Value,
) -> std::result::Result<(), Error> {
    match value.kind() {
        ValueKind::None => out.write_str("None")?,
        ValueKind::Bool if value.is_true() => out.write_str("True")?,
        ValueKind::Bool => out.write_str("False")?,
        _ => minijinja::escape_formatter(out, state, value)?,
    }
    Ok(())
}

/// `raise_exception(message)`: aborts rendering with the template's own message.
fn raise_exception(message: String) -> std::result::Result<Value, Error> {
    Err(Error::new(ErrorKind::InvalidOperation, message))
}

/// `strftime_now(format)`: the local time formatted with Python `strftime` codes.
fn strftime_now(format: String) -> std::result::Result<String, Error> {
    let mut out = String::new();
    write!(out, "{}", chrono::Local::now().format(&format))
        .map_err(|_| Error::new(ErrorKind::InvalidOperation, format!("strftime_now: invalid format {format:?}")))?;
    Ok(out)
}

/// Python `json.dumps` separators without indentation: `", "` and `": "`.
struct PythonCompactFormatter;

impl serde_json::ser::Formatter for PythonCompactFormatter {
    fn begin_array_value<W: ?Sized + std::io::Write>(&mut self, writer: &mut W, first: bool) -> std::io::Result<()> {
        if first {
            Ok(())
        } else {
            writer.write_all(b", ")
        }
    }

    fn begin_object_key<W: ?Sized + std::io::Write>(&mut self, writer: &mut W, first: bool) -> std::io::Result<()> {
        if first {
            Ok(())
        } else {
            writer.write_all(b", ")
        }
    }

    fn begin_object_value<W: ?Sized + std::io::Write>(&mut self, writer: &mut W) -> std::io::Result<()> {
        writer.write_all(b": ")
    }
}

/// The `tojson` filter of `transformers`: `json.dumps(value, ensure_ascii=False,
/// indent=indent)`. Supports the keyword arguments `indent` (spaces) and `ensure_ascii`.
fn tojson(value: &Value, kwargs: Kwargs) -> std::result::Result<String, Error> {
    let indent: Option<usize> = kwargs.get("indent")?;
    let ensure_ascii: Option<bool> = kwargs.get("ensure_ascii")?;
    kwargs.assert_all_used()?;
    let mut bytes = Vec::new();
    let written = match indent {
        Some(n) => {
            let spaces = vec![b' '; n];
            let formatter = serde_json::ser::PrettyFormatter::with_indent(&spaces);
            value.serialize(&mut serde_json::Serializer::with_formatter(&mut bytes, formatter))
        }
        None => value.serialize(&mut serde_json::Serializer::with_formatter(&mut bytes, PythonCompactFormatter)),
    };
    written.map_err(|e| Error::new(ErrorKind::BadSerialization, "tojson: value is not JSON").with_source(e))?;
    let json =
        String::from_utf8(bytes).map_err(|_| Error::new(ErrorKind::BadSerialization, "tojson: output is not UTF-8"))?;
    Ok(if ensure_ascii == Some(true) { escape_non_ascii(&json) } else { json })
}

/// `\uXXXX`-escapes every non-ASCII character (UTF-16 surrogate pairs above U+FFFF), as
/// `json.dumps(..., ensure_ascii=True)` does. Non-ASCII characters only occur inside JSON
/// strings, so the result stays valid JSON.
fn escape_non_ascii(json: &str) -> String {
    let mut out = String::with_capacity(json.len());
    for c in json.chars() {
        if c.is_ascii() {
            out.push(c);
        } else {
            let mut units = [0u16; 2];
            for unit in c.encode_utf16(&mut units) {
                // Writing to a String cannot fail.
                let _ = write!(out, "\\u{unit:04x}");
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    //! The expected strings in `tests/fixtures/chat_templates.json` were rendered once by
    //! Python's jinja2 in the environment `transformers` uses for chat templates, by
    //! `scripts/gen_chat_fixtures.py` (run it again to regenerate). The templates in it are
    //! SmolLM2-135M-Instruct's (from the GGUF's `tokenizer.chat_template`), Llama-3's and
    //! DeepSeek-R1-Distill-Llama-8B's (from `shared/data/tokenizers/*/tokenizer_config.json`),
    //! and a synthetic one that exercises the Jinja features HF templates use.

    use super::*;

    #[derive(Deserialize)]
    struct Fixtures {
        templates: Vec<TemplateCase>,
    }

    #[derive(Deserialize)]
    struct TemplateCase {
        name: String,
        template: String,
        bos_token: String,
        eos_token: String,
        cases: Vec<RenderCase>,
    }

    #[derive(Deserialize)]
    struct RenderCase {
        messages: Vec<ChatMessage>,
        add_generation_prompt: bool,
        expected: String,
    }

    fn fixture_path(name: &str) -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)
    }

    fn fixtures() -> Fixtures {
        let path = fixture_path("chat_templates.json");
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("parsing {}: {e}", path.display()))
    }

    #[test]
    fn renders_like_python_jinja2() {
        let fixtures = fixtures();
        let names: Vec<&str> = fixtures.templates.iter().map(|t| t.name.as_str()).collect();
        for wanted in ["smollm2", "llama3", "deepseek-r1-distill", "features"] {
            assert!(names.contains(&wanted), "fixture lacks template {wanted}");
        }
        for t in &fixtures.templates {
            let compiled = ChatTemplate::new(&t.template, &t.bos_token, &t.eos_token)
                .unwrap_or_else(|e| panic!("{}: {e}", t.name));
            for (i, case) in t.cases.iter().enumerate() {
                let got = compiled
                    .render(&case.messages, case.add_generation_prompt)
                    .unwrap_or_else(|e| panic!("{} case {i}: {e}", t.name));
                assert_eq!(got, case.expected, "{} case {i}", t.name);
                // The one-shot entry point gives the same text.
                let once =
                    render_chat(&t.template, &case.messages, case.add_generation_prompt, &t.bos_token, &t.eos_token)
                        .unwrap();
                assert_eq!(once, got);
            }
        }
    }

    #[test]
    fn smollm2_chatml_shape() {
        let fixtures = fixtures();
        let smol = fixtures.templates.iter().find(|t| t.name == "smollm2").unwrap();
        let out = render_chat(&smol.template, &[ChatMessage::new("user", "Hi")], true, "", "").unwrap();
        assert_eq!(
            out,
            "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by \
             Hugging Face<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
        );
    }

    /// The real `tokenizer_config.json` files of the shared data, when that folder is there
    /// (it sits beside the repository, on developer machines and in CI).
    #[test]
    fn reads_tokenizer_configs() {
        let shared = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/data/tokenizers");
        if !shared.is_dir() {
            eprintln!("skipped: {} not found", shared.display());
            return;
        }
        let fixtures = fixtures();
        for (dir, name) in [("llama3", "llama3"), ("deepseek-r1-distill-llama-8b", "deepseek-r1-distill")] {
            let t = ChatTemplate::from_tokenizer_config(&shared.join(dir).join("tokenizer_config.json")).unwrap();
            let case = fixtures.templates.iter().find(|t| t.name == name).unwrap();
            assert_eq!(t.bos_token, case.bos_token);
            assert_eq!(t.eos_token, case.eos_token);
            let first = &case.cases[0];
            assert_eq!(t.render(&first.messages, first.add_generation_prompt).unwrap(), first.expected);
        }
    }

    #[test]
    fn tokenizer_config_variants_and_errors() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokenizer_config.json");
        std::fs::write(
            &path,
            r#"{"chat_template": [{"name": "tool_use", "template": "T"},
                                  {"name": "default", "template": "{{ bos_token }}D{{ eos_token }}"}],
                "bos_token": {"content": "<s>", "lstrip": false}, "eos_token": "</s>"}"#,
        )
        .unwrap();
        let t = ChatTemplate::from_tokenizer_config(&path).unwrap();
        assert_eq!(t.render(&[], false).unwrap(), "<s>D</s>");

        std::fs::write(&path, r#"{"bos_token": "<s>"}"#).unwrap();
        let err = ChatTemplate::from_tokenizer_config(&path).unwrap_err().to_string();
        assert!(err.contains("tokenizer_config.json") && err.contains("no chat_template"), "{err}");

        std::fs::write(&path, "{not json").unwrap();
        let err = ChatTemplate::from_tokenizer_config(&path).unwrap_err().to_string();
        assert!(err.contains("invalid JSON"), "{err}");

        let missing = dir.path().join("absent.json");
        let err = ChatTemplate::from_tokenizer_config(&missing).unwrap_err().to_string();
        assert!(err.contains("absent.json"), "{err}");
    }

    #[test]
    fn raise_exception_fails_with_message() {
        let template = "{% if messages[0].role != 'user' %}{{ raise_exception('Conversation roles must alternate') }}{% endif %}ok";
        let err = render_chat(template, &[ChatMessage::new("assistant", "x")], false, "", "").unwrap_err().to_string();
        assert!(err.contains("Conversation roles must alternate"), "{err}");
        let ok = render_chat(template, &[ChatMessage::new("user", "x")], false, "", "").unwrap();
        assert_eq!(ok, "ok");
    }

    #[test]
    fn strftime_now_uses_local_time() {
        let out = render_chat("{{ strftime_now('%Y-%m-%d') }}", &[], false, "", "").unwrap();
        let today = chrono::Local::now().format("%Y-%m-%d").to_string();
        assert_eq!(out, today);
        let err = render_chat("{{ strftime_now('%Q') }}", &[], false, "", "").unwrap_err();
        assert!(err.to_string().contains("invalid format"), "{err}");
    }

    #[test]
    fn tojson_options() {
        let msgs = [ChatMessage::new("user", "é")];
        let out = render_chat("{{ messages | tojson(ensure_ascii=true) }}", &msgs, false, "", "").unwrap();
        assert_eq!(out, r#"[{"role": "user", "content": "\u00e9"}]"#);
        let out = render_chat("{{ '😀' | tojson(ensure_ascii=true) }}", &[], false, "", "").unwrap();
        assert_eq!(out, r#""\ud83d\ude00""#);
        let err = render_chat("{{ 1 | tojson(sort_keys=true) }}", &[], false, "", "").unwrap_err();
        assert!(matches!(err, ChatError::Render(_)), "{err}");
    }

    #[test]
    fn bad_templates_are_errors() {
        let err = render_chat("{% for m in messages %}", &[], false, "", "").unwrap_err();
        assert!(matches!(err, ChatError::Syntax(_)), "{err}");
        let err = render_chat("{{ messages.nope() }}", &[], false, "", "").unwrap_err();
        assert!(matches!(err, ChatError::Render(_)), "{err}");
    }
}
