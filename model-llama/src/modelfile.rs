//! Ollama `Modelfile` export: `FROM` the exported GGUF, a `TEMPLATE` in Go `text/template`
//! syntax that reproduces the model's own chat format, a `PARAMETER stop` for every token that
//! ends a turn, `PARAMETER num_ctx` and, when given, a `SYSTEM` prompt.
//!
//! Three chat formats are known ([`TemplateFamily`]): ChatML (`<|im_start|>`, SmolLM2, Qwen),
//! Llama-3 (`<|start_header_id|>`) and DeepSeek-R1 (`<｜User｜>` / `<｜Assistant｜>`). The
//! family of a Hugging Face Jinja chat template is detected from those markers, and then
//! checked: probe conversations are rendered through the Jinja template ([`crate::chat`]) and
//! must give exactly what the generated Go template gives (plus the BOS text that Ollama adds
//! through the tokenizer instead). A template without the markers, or one that renders
//! differently (Llama-3.1's dated system header, tool-calling variants), is an error naming
//! what did not match, never a guess.
//!
//! The Go templates are written the way Ollama's own library templates are: `range` over
//! `.Messages` with `$last := eq (len (slice $.Messages $i)) 1`, the generation prompt after the
//! last message unless it is the assistant's (which Ollama then continues), `.System` for
//! formats that place the system prompt outside the turns. Modern Ollama always renders such a
//! template through `.Messages`, so no legacy `.Prompt`/`.Response` branch is written.
//!
//! Translation details per family:
//! - ChatML: a default system prompt that the Jinja template inserts when the conversation does
//!   not start with a system message (SmolLM2's "You are a helpful AI assistant named
//!   SmolLM...") is inserted by the Go template under the same condition.
//! - Llama-3: no `<|begin_of_text|>` in the template; Ollama's tokenizer adds BOS. The Jinja
//!   template `trim`s each message; Go templates cannot, so contents are used as given.
//! - DeepSeek-R1: BOS again comes from the tokenizer; `.System` goes first. The Jinja template
//!   drops everything up to `</think>` from earlier assistant turns. Ollama separates a thinking
//!   model's reasoning into the message's `.Thinking` (the template mentions `.Thinking` between
//!   `<think>` tags so that Ollama detects the capability), so earlier turns render `.Content`
//!   only, preceded by the `\n\n` the model wrote after `</think>` (what the Jinja `split` keeps)
//!   when the turn had thinking. The generation prompt opens `<think>\n` when the model's
//!   template does; with Ollama's `think: false` it writes an empty think block instead.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use crate::chat::{ChatMessage, ChatTemplate};
use crate::error::{LoadError, Result};
use crate::tokenizer::Tokenizer;

/// The chat formats a Modelfile template can be written for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TemplateFamily {
    /// `<|im_start|>role\ncontent<|im_end|>\n` (SmolLM2, Qwen, ...).
    ChatMl,
    /// `<|start_header_id|>role<|end_header_id|>\n\ncontent<|eot_id|>` (Llama-3 Instruct).
    Llama3,
    /// `system<｜User｜>...<｜Assistant｜>...<｜end▁of▁sentence｜>` (DeepSeek-R1 and its distills).
    DeepSeekR1,
}

const DEEPSEEK_USER: &str = "<｜User｜>";
const DEEPSEEK_ASSISTANT: &str = "<｜Assistant｜>";
const DEEPSEEK_EOS: &str = "<｜end▁of▁sentence｜>";
const DEEPSEEK_BOS: &str = "<｜begin▁of▁sentence｜>";

impl TemplateFamily {
    /// A readable name, for messages.
    pub fn name(self) -> &'static str {
        match self {
            TemplateFamily::ChatMl => "ChatML",
            TemplateFamily::Llama3 => "Llama-3",
            TemplateFamily::DeepSeekR1 => "DeepSeek-R1",
        }
    }

    /// The stop strings Ollama's library uses for this format.
    pub fn default_stops(self) -> &'static [&'static str] {
        match self {
            TemplateFamily::ChatMl => &["<|im_start|>", "<|im_end|>"],
            TemplateFamily::Llama3 => &["<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"],
            TemplateFamily::DeepSeekR1 => &[DEEPSEEK_BOS, DEEPSEEK_EOS, DEEPSEEK_USER, DEEPSEEK_ASSISTANT],
        }
    }
}

/// The family whose markers a Jinja chat template contains. A template with none of them is an
/// error that lists the markers looked for.
pub fn detect_family(jinja: &str) -> Result<TemplateFamily> {
    if jinja.contains(DEEPSEEK_USER) && jinja.contains(DEEPSEEK_ASSISTANT) {
        Ok(TemplateFamily::DeepSeekR1)
    } else if jinja.contains("<|start_header_id|>") && jinja.contains("<|end_header_id|>") {
        Ok(TemplateFamily::Llama3)
    } else if jinja.contains("<|im_start|>") && jinja.contains("<|im_end|>") {
        Ok(TemplateFamily::ChatMl)
    } else {
        let head: String = jinja.chars().take(120).collect();
        Err(LoadError::Unsupported(format!(
            "chat template for an Ollama Modelfile: none of the known chat formats was recognized \
             (looked for <|im_start|>/<|im_end|> (ChatML), <|start_header_id|>/<|end_header_id|> \
             (Llama-3), <｜User｜>/<｜Assistant｜> (DeepSeek-R1)); the template begins {head:?}"
        )))
    }
}

/// A chat format ready to be written as a Modelfile: the family plus what the model's own
/// template adds to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChatFormat {
    /// The turn format.
    pub family: TemplateFamily,
    /// ChatML: the system prompt inserted when a conversation does not start with one.
    pub default_system: Option<String>,
    /// DeepSeek-R1: whether the generation prompt opens a `<think>\n` block.
    pub think_prefill: bool,
    /// `PARAMETER stop` values, in order, without duplicates.
    pub stops: Vec<String>,
}

impl ChatFormat {
    /// The plain format of `family`: no default system prompt, DeepSeek-R1's generation prompt
    /// opening `<think>\n` (as the current DeepSeek-R1 templates do), Ollama's stop strings.
    pub fn new(family: TemplateFamily) -> ChatFormat {
        ChatFormat {
            family,
            default_system: None,
            think_prefill: family == TemplateFamily::DeepSeekR1,
            stops: family.default_stops().iter().map(|s| s.to_string()).collect(),
        }
    }

    /// The format of a Hugging Face Jinja chat template with its `bos_token` and `eos_token`:
    /// the family is detected ([`detect_family`]), the details read off probe renderings, and
    /// the result checked against the Jinja rendering of probe conversations (an error shows
    /// both texts where they differ). `eos_token` joins the stop strings.
    pub fn from_jinja(jinja: &str, bos_token: &str, eos_token: &str) -> Result<ChatFormat> {
        let family = detect_family(jinja)?;
        let template = ChatTemplate::new(jinja, bos_token, eos_token)
            .map_err(|e| LoadError::Invalid(format!("chat template: {e}")))?;
        let render = |messages: &[ChatMessage], generation: bool| {
            template.render(messages, generation).map_err(|e| LoadError::Invalid(format!("chat template: {e}")))
        };
        let mut format = ChatFormat::new(family);
        let user_only = [ChatMessage::new("user", "Hello")];
        match family {
            TemplateFamily::ChatMl => {
                let text = render(&user_only, false)?;
                let start = "<|im_start|>system\n";
                if let (Some(rest), Some(user_at)) = (text.strip_prefix(start), text.find("<|im_start|>user\n")) {
                    if let Some(system) = rest[..user_at - start.len()].strip_suffix("<|im_end|>\n") {
                        format.default_system = Some(system.to_string());
                    }
                }
            }
            TemplateFamily::DeepSeekR1 => {
                let with = render(&user_only, true)?;
                let without = render(&user_only, false)?;
                format.think_prefill = with.strip_prefix(without.as_str()) == Some("<｜Assistant｜><think>\n");
            }
            TemplateFamily::Llama3 => {}
        }
        if !eos_token.is_empty() && !format.stops.iter().any(|s| s == eos_token) {
            format.stops.push(eos_token.to_string());
        }
        let bos = match family {
            TemplateFamily::ChatMl => "",
            TemplateFamily::Llama3 | TemplateFamily::DeepSeekR1 => bos_token,
        };
        for probe in probes() {
            let want = format!("{bos}{}", format.render(&probe, None));
            let got = render(&probe, true)?;
            if got != want {
                return Err(LoadError::Unsupported(format!(
                    "chat template: it has the {} markers but renders differently from the {} format \
                     ferrotune writes for Ollama; for {probe:?} the template gives {got:?}, the {} format \
                     {want:?}",
                    family.name(),
                    family.name(),
                    family.name()
                )));
            }
        }
        Ok(format)
    }

    /// The format of a tokenizer's chat template ([`Tokenizer::chat_template`]), with its BOS and
    /// EOS strings; every end-of-generation token of the tokenizer ([`Tokenizer::eos_ids`])
    /// that is a `<...>` special token becomes a stop string too.
    pub fn from_tokenizer(tokenizer: &Tokenizer) -> Result<ChatFormat> {
        let jinja = tokenizer.chat_template().ok_or_else(|| {
            LoadError::Invalid(format!(
                "{}: the tokenizer has no chat template to write an Ollama TEMPLATE from",
                tokenizer.source().display()
            ))
        })?;
        let token = |id: Option<u32>| id.and_then(|id| tokenizer.token_to_str(id)).unwrap_or_default();
        let mut format = ChatFormat::from_jinja(jinja, &token(tokenizer.bos_id()), &token(tokenizer.eos_id()))?;
        for &id in tokenizer.eos_ids() {
            if let Some(s) = tokenizer.token_to_str(id) {
                if s.starts_with('<')
                    && s.ends_with('>')
                    && !s.contains(char::is_whitespace)
                    && !format.stops.contains(&s)
                {
                    format.stops.push(s);
                }
            }
        }
        Ok(format)
    }

    /// What the Go template of [`ChatFormat::go_template`] renders in Ollama for `messages`
    /// (roles and contents; no thinking), `think` being Ollama's `think` request option. The
    /// Modelfile's own SYSTEM is not applied here. Used to check a Jinja template's format.
    fn render(&self, messages: &[ChatMessage], think: Option<bool>) -> String {
        let mut out = String::new();
        let n = messages.len();
        match self.family {
            TemplateFamily::ChatMl => {
                if let (Some(first), Some(system)) = (messages.first(), &self.default_system) {
                    if first.role != "system" {
                        out += &format!("<|im_start|>system\n{system}<|im_end|>\n");
                    }
                }
                for (i, m) in messages.iter().enumerate() {
                    let last = i + 1 == n;
                    out += &format!("<|im_start|>{}\n{}", m.role, m.content);
                    if m.role != "assistant" || !last {
                        out += "<|im_end|>\n";
                    }
                    if last && m.role != "assistant" {
                        out += "<|im_start|>assistant\n";
                    }
                }
            }
            TemplateFamily::Llama3 => {
                for (i, m) in messages.iter().enumerate() {
                    let last = i + 1 == n;
                    out += &format!("<|start_header_id|>{}<|end_header_id|>\n\n{}", m.role, m.content);
                    if m.role != "assistant" || !last {
                        out += "<|eot_id|>";
                    }
                    if last && m.role != "assistant" {
                        out += "<|start_header_id|>assistant<|end_header_id|>\n\n";
                    }
                }
            }
            TemplateFamily::DeepSeekR1 => {
                let systems: Vec<&str> =
                    messages.iter().filter(|m| m.role == "system").map(|m| m.content.as_str()).collect();
                out += &systems.join("\n\n");
                for (i, m) in messages.iter().enumerate() {
                    let last = i + 1 == n;
                    if m.role == "user" {
                        out += DEEPSEEK_USER;
                        out += &m.content;
                    } else if m.role == "assistant" {
                        out += DEEPSEEK_ASSISTANT;
                        out += &m.content;
                        if !last {
                            out += DEEPSEEK_EOS;
                        }
                    }
                    if last && m.role != "assistant" {
                        out += DEEPSEEK_ASSISTANT;
                        if self.think_prefill {
                            out += if think == Some(false) { "<think>\n\n</think>\n\n" } else { "<think>\n" };
                        }
                    }
                }
            }
        }
        out
    }

    /// The Modelfile `TEMPLATE`, Go `text/template` source.
    pub fn go_template(&self) -> String {
        match self.family {
            TemplateFamily::ChatMl => {
                let default_system = match &self.default_system {
                    Some(system) => format!(
                        "{{{{- if and .Messages (ne (index .Messages 0).Role \"system\") }}}}<|im_start|>system\n\
                         {system}<|im_end|>\n{{{{ end }}}}\n"
                    ),
                    None => String::new(),
                };
                format!(
                    "{default_system}\
{{{{- range $i, $_ := .Messages }}}}
{{{{- $last := eq (len (slice $.Messages $i)) 1 }}}}<|im_start|>{{{{ .Role }}}}
{{{{ .Content }}}}
{{{{- if or (ne .Role \"assistant\") (not $last) }}}}<|im_end|>
{{{{ end }}}}
{{{{- if and $last (ne .Role \"assistant\") }}}}<|im_start|>assistant
{{{{ end }}}}
{{{{- end }}}}"
                )
            }
            TemplateFamily::Llama3 => "\
{{- range $i, $_ := .Messages }}
{{- $last := eq (len (slice $.Messages $i)) 1 }}<|start_header_id|>{{ .Role }}<|end_header_id|>

{{ .Content }}
{{- if or (ne .Role \"assistant\") (not $last) }}<|eot_id|>{{ end }}
{{- if and $last (ne .Role \"assistant\") }}<|start_header_id|>assistant<|end_header_id|>

{{ end }}
{{- end }}"
                .to_string(),
            TemplateFamily::DeepSeekR1 => {
                let generation = if self.think_prefill {
                    "<｜Assistant｜>{{ if and $.IsThinkSet (not $.Think) }}<think>\n\n</think>\n\n{{ else }}<think>\n{{ end }}"
                } else {
                    "<｜Assistant｜>"
                };
                format!(
                    "\
{{{{- if .System }}}}{{{{ .System }}}}{{{{ end }}}}
{{{{- range $i, $_ := .Messages }}}}
{{{{- $last := eq (len (slice $.Messages $i)) 1 }}}}
{{{{- if eq .Role \"user\" }}}}<｜User｜>{{{{ .Content }}}}
{{{{- else if eq .Role \"assistant\" }}}}<｜Assistant｜>
{{{{- if and $last .Thinking }}}}<think>
{{{{ .Thinking }}}}
</think>

{{{{ else if .Thinking }}}}

{{{{ end }}}}
{{{{- .Content }}}}
{{{{- if not $last }}}}<｜end▁of▁sentence｜>{{{{ end }}}}
{{{{- end }}}}
{{{{- if and $last (ne .Role \"assistant\") }}}}{generation}{{{{ end }}}}
{{{{- end }}}}"
                )
            }
        }
    }
}

/// Probe conversations a Jinja template must render as the detected format does.
fn probes() -> Vec<Vec<ChatMessage>> {
    vec![
        vec![ChatMessage::new("user", "Hello")],
        vec![
            ChatMessage::new("system", "Be brief."),
            ChatMessage::new("user", "What is 2+2?"),
            ChatMessage::new("assistant", "4."),
            ChatMessage::new("user", "And 3+3?"),
        ],
        vec![
            ChatMessage::new("user", "Hi"),
            ChatMessage::new("assistant", "Hello! How can I help?"),
            ChatMessage::new("user", "Tell me a joke."),
        ],
    ]
}

/// A Modelfile argument: bare when it has no whitespace or quotes, else quoted.
fn argument(value: &str) -> String {
    if value.is_empty() || value.contains(|c: char| c.is_whitespace() || c == '"') {
        format!("\"{}\"", value.replace('"', "\\\""))
    } else {
        value.to_string()
    }
}

/// The text of an Ollama Modelfile for the GGUF file `gguf_file_name` (a name beside the
/// Modelfile, written `FROM ./name`; a path with a directory is written as given), in `format`,
/// with `system` as its default system prompt and a context of `num_ctx` tokens.
pub fn modelfile(gguf_file_name: &str, format: &ChatFormat, system: Option<&str>, num_ctx: usize) -> Result<String> {
    if gguf_file_name.is_empty() || gguf_file_name.contains(['\n', '\r', '"']) {
        return Err(LoadError::Invalid(format!("Modelfile: unusable GGUF file name {gguf_file_name:?}")));
    }
    if num_ctx == 0 {
        return Err(LoadError::Invalid("Modelfile: num_ctx must be at least 1".into()));
    }
    let from = if gguf_file_name.contains('/') || gguf_file_name.contains('\\') {
        gguf_file_name.to_string()
    } else {
        format!("./{gguf_file_name}")
    };
    let mut out = String::new();
    out += &format!("# Ollama Modelfile written by ferrotune ({} chat format)\n", format.family.name());
    out += &format!("FROM {}\n\n", argument(&from));
    out += &format!("TEMPLATE \"\"\"{}\"\"\"\n\n", format.go_template());
    if let Some(system) = system {
        if system.contains("\"\"\"") {
            return Err(LoadError::Invalid("Modelfile: the system prompt may not contain \"\"\"".into()));
        }
        out += &format!("SYSTEM \"\"\"{system}\"\"\"\n\n");
    }
    for stop in &format.stops {
        out += &format!("PARAMETER stop {}\n", argument(stop));
    }
    out += &format!("PARAMETER num_ctx {num_ctx}\n");
    Ok(out)
}

/// Writes [`modelfile`]'s text to `dir/Modelfile` (through a temporary file renamed into place)
/// and returns that path.
pub fn write_modelfile(
    dir: &Path,
    gguf_file_name: &str,
    format: &ChatFormat,
    system: Option<&str>,
    num_ctx: usize,
) -> Result<PathBuf> {
    let text = modelfile(gguf_file_name, format, system, num_ctx)?;
    let path = dir.join("Modelfile");
    let tmp = dir.join(".Modelfile.tmp");
    let write = || -> std::io::Result<()> {
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(text.as_bytes())?;
        file.sync_all()?;
        std::fs::rename(&tmp, &path)
    };
    write().map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        LoadError::io(&path, e)
    })?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> (String, String, String) {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/chat_templates.json");
        let json: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        let t = json["templates"].as_array().unwrap().iter().find(|t| t["name"] == name).unwrap();
        let s = |k: &str| t[k].as_str().unwrap().to_string();
        (s("template"), s("bos_token"), s("eos_token"))
    }

    fn format_of(name: &str) -> ChatFormat {
        let (t, bos, eos) = fixture(name);
        ChatFormat::from_jinja(&t, &bos, &eos).unwrap_or_else(|e| panic!("{name}: {e}"))
    }

    #[test]
    fn detects_the_three_families() {
        assert_eq!(detect_family(&fixture("smollm2").0).unwrap(), TemplateFamily::ChatMl);
        assert_eq!(detect_family(&fixture("llama3").0).unwrap(), TemplateFamily::Llama3);
        assert_eq!(detect_family(&fixture("deepseek-r1-distill").0).unwrap(), TemplateFamily::DeepSeekR1);
        let smol = format_of("smollm2");
        assert_eq!(
            smol.default_system.as_deref(),
            Some("You are a helpful AI assistant named SmolLM, trained by Hugging Face")
        );
        assert!(format_of("deepseek-r1-distill").think_prefill);
        assert_eq!(format_of("llama3").family, TemplateFamily::Llama3);
    }

    #[test]
    fn stop_tokens() {
        assert_eq!(format_of("smollm2").stops, ["<|im_start|>", "<|im_end|>"]);
        assert_eq!(format_of("llama3").stops, ["<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]);
        let ds = format_of("deepseek-r1-distill");
        assert!(ds.stops.iter().any(|s| s == "<｜end▁of▁sentence｜>"), "{:?}", ds.stops);
        let text = modelfile("m.gguf", &ds, None, 2048).unwrap();
        assert!(text.contains("PARAMETER stop <｜end▁of▁sentence｜>\n"), "{text}");
        assert!(text.contains("PARAMETER stop <｜User｜>\n"), "{text}");
        let chatml = modelfile("m.gguf", &format_of("smollm2"), None, 2048).unwrap();
        assert!(chatml.contains("PARAMETER stop <|im_end|>\n"), "{chatml}");
        let llama = modelfile("m.gguf", &format_of("llama3"), None, 2048).unwrap();
        assert!(llama.contains("PARAMETER stop <|eot_id|>\n"), "{llama}");
    }

    #[test]
    fn modelfile_layout_and_system() {
        let format = ChatFormat::new(TemplateFamily::ChatMl);
        let text = modelfile("model.Q8_0.gguf", &format, Some("You are a doctor."), 2048).unwrap();
        assert!(text.contains("\nFROM ./model.Q8_0.gguf\n"), "{text}");
        assert!(text.contains("\nTEMPLATE \"\"\"{{- range $i, $_ := .Messages }}"), "{text}");
        assert!(text.contains("\nSYSTEM \"\"\"You are a doctor.\"\"\"\n"), "{text}");
        assert!(text.ends_with("PARAMETER num_ctx 2048\n"), "{text}");
        let without = modelfile("model.Q8_0.gguf", &format, None, 4096).unwrap();
        assert!(!without.contains("SYSTEM"), "{without}");
        assert!(without.contains("PARAMETER num_ctx 4096\n"));
        let spaced = modelfile("my model.gguf", &format, None, 8).unwrap();
        assert!(spaced.contains("FROM \"./my model.gguf\"\n"), "{spaced}");
        assert!(modelfile("m.gguf", &format, Some("a \"\"\" b"), 8).is_err());
        assert!(modelfile("", &format, None, 8).is_err());
        assert!(modelfile("m.gguf", &format, None, 0).is_err());
    }

    #[test]
    fn unknown_template_is_an_error() {
        let alpaca = "{% for m in messages %}### Instruction:\n{{ m.content }}\n{% endfor %}### Response:\n";
        let err = detect_family(alpaca).unwrap_err().to_string();
        assert!(err.contains("none of the known chat formats") && err.contains("### Instruction"), "{err}");
        assert!(ChatFormat::from_jinja(alpaca, "<s>", "</s>").is_err());
        // ChatML markers but another layout: the probe renderings catch it.
        let odd = "{% for m in messages %}<|im_start|>{{ m.role }}: {{ m.content }}<|im_end|>{% endfor %}";
        let err = ChatFormat::from_jinja(odd, "", "<|im_end|>").unwrap_err().to_string();
        assert!(err.contains("renders differently from the ChatML format"), "{err}");
    }

    #[test]
    fn llama31_dated_system_header_is_rejected() {
        // Llama-3.1's template puts a dated header in the system turn; the Llama-3 format does not.
        let llama31 = "{{ bos_token }}<|start_header_id|>system<|end_header_id|>\n\nCutting Knowledge Date: \
                       December 2023\n\n{% if messages[0].role == 'system' %}{{ messages[0].content }}{% endif %}\
                       <|eot_id|>{% for m in messages %}{% if m.role != 'system' %}<|start_header_id|>{{ m.role }}\
                       <|end_header_id|>\n\n{{ m.content }}<|eot_id|>{% endif %}{% endfor %}\
                       {% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}";
        assert_eq!(detect_family(llama31).unwrap(), TemplateFamily::Llama3);
        let err = ChatFormat::from_jinja(llama31, "<|begin_of_text|>", "<|eot_id|>").unwrap_err().to_string();
        assert!(
            err.contains("renders differently from the Llama-3 format") && err.contains("Cutting Knowledge"),
            "{err}"
        );
    }

    #[test]
    fn writes_modelfile_atomically() {
        let dir = tempfile::tempdir().unwrap();
        let format = ChatFormat::new(TemplateFamily::Llama3);
        let path = write_modelfile(dir.path(), "m.gguf", &format, None, 2048).unwrap();
        assert_eq!(path, dir.path().join("Modelfile"));
        assert_eq!(std::fs::read_to_string(&path).unwrap(), modelfile("m.gguf", &format, None, 2048).unwrap());
        assert!(!dir.path().join(".Modelfile.tmp").exists());
        assert!(write_modelfile(&dir.path().join("absent"), "m.gguf", &format, None, 2048).is_err());
    }
}
