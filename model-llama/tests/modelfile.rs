//! The Ollama Modelfile's TEMPLATE renders conversations as the model's own Jinja chat template
//! does. For SmolLM2 (ChatML), Llama-3 and DeepSeek-R1-Distill, a conversation is rendered
//! (1) by the model's Jinja template through `chat::ChatTemplate` with the generation prompt, and
//! (2) by the generated Modelfile's TEMPLATE (and SYSTEM) through Go's `text/template`, the way
//! Ollama renders it (`tests/go/render.go`, run with `go run`; CI installs Debian's golang-go).
//!
//! Which comparison is used:
//! - ChatML: the two strings must be equal. SmolLM2's template writes no BOS text, and the
//!   token ids of the two strings are then equal too (also checked).
//! - Llama-3 and DeepSeek-R1: the Jinja template writes the BOS token's text first
//!   (`<|begin_of_text|>`, `<｜begin▁of▁sentence｜>`), while Ollama adds BOS through the
//!   tokenizer (the GGUF's `add_bos_token`). So the string comparison is "Jinja = BOS text + Go",
//!   and the token comparison is `encode(jinja, add_special = false) == encode(go, add_special =
//!   true)` with the model's tokenizer (which must add BOS).

use model_llama::chat::{ChatMessage, ChatTemplate};
use model_llama::modelfile::{modelfile, write_modelfile, ChatFormat, TemplateFamily};
use model_llama::tokenizer::Tokenizer;
use serde_json::json;
use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};

fn crate_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// One turn as both sides see it: the Jinja side gets `jinja_content`; Ollama gets `content` and
/// `thinking` (Ollama's thinking parser moves a reasoning model's `<think>` block there).
struct Turn {
    role: &'static str,
    jinja_content: String,
    content: String,
    thinking: String,
}

fn turn(role: &'static str, content: &str) -> Turn {
    Turn { role, jinja_content: content.into(), content: content.into(), thinking: String::new() }
}

/// The Modelfile's TEMPLATE and SYSTEM (`"""`-quoted values).
fn modelfile_value(text: &str, key: &str) -> Option<String> {
    let start = text.find(&format!("\n{key} \"\"\""))? + key.len() + 5;
    let end = text[start..].find("\"\"\"")? + start;
    Some(text[start..end].to_string())
}

/// Renders `turns` through `render.go`, as Ollama does with the Modelfile `text` (its SYSTEM
/// included); `think` is Ollama's `think` request option.
fn ollama_render(text: &str, turns: &[Turn], think: Option<bool>) -> String {
    if Command::new("go").arg("version").output().is_err() {
        panic!("`go` is not installed: install Debian's golang-go (apt-get install golang-go); .ci/run does");
    }
    let template = modelfile_value(text, "TEMPLATE").expect("Modelfile has a TEMPLATE");
    let system = modelfile_value(text, "SYSTEM").unwrap_or_default();
    let dir = tempfile::tempdir().unwrap();
    let template_path = dir.path().join("template.gotmpl");
    std::fs::write(&template_path, template).unwrap();
    let messages: Vec<_> =
        turns.iter().map(|t| json!({"Role": t.role, "Content": t.content, "Thinking": t.thinking})).collect();
    let request = json!({"System": system, "Think": think, "Messages": messages});
    let mut go = Command::new("go");
    if ["GOCACHE", "XDG_CACHE_HOME", "HOME"].iter().all(|v| std::env::var_os(v).is_none()) {
        go.env("GOCACHE", PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("go-cache"));
    }
    let mut child = go
        .current_dir(crate_dir().join("tests/go"))
        .args(["run", "render.go"])
        .arg(&template_path)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(request.to_string().as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "render.go failed:\n{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

fn jinja_render(tokenizer: &Tokenizer, turns: &[Turn]) -> String {
    let token = |id: Option<u32>| id.and_then(|id| tokenizer.token_to_str(id)).unwrap_or_default();
    let template =
        ChatTemplate::new(tokenizer.chat_template().unwrap(), &token(tokenizer.bos_id()), &token(tokenizer.eos_id()))
            .unwrap();
    let messages: Vec<_> = turns.iter().map(|t| ChatMessage::new(t.role, t.jinja_content.clone())).collect();
    template.render(&messages, true).unwrap()
}

/// The conversations compared: (Modelfile SYSTEM, turns).
fn conversations(thinking_model: bool) -> Vec<(Option<&'static str>, Vec<Turn>)> {
    let mut answer = turn("assistant", "Drink water, rest, and see a doctor if it lasts more than three days.");
    if thinking_model {
        // The model wrote `<think>\n...\n</think>\n\n` before its answer; Ollama keeps the reasoning
        // in .Thinking and the answer in .Content, the Jinja template strips it from the content.
        answer.thinking = "The patient has a mild fever; advise fluids.".into();
        answer.jinja_content = format!("<think>\n{}\n</think>\n\n{}", answer.thinking, answer.content);
    }
    let two_turns = |system: Option<&str>| {
        let mut turns = vec![];
        if let Some(system) = system {
            turns.push(turn("system", system));
        }
        turns.push(turn("user", "I have had a fever since yesterday. What should I do?"));
        turns.push(Turn {
            role: answer.role,
            jinja_content: answer.jinja_content.clone(),
            content: answer.content.clone(),
            thinking: answer.thinking.clone(),
        });
        turns.push(turn("user", "Is ibuprofen 发烧 safe with \"aspirin\" {{ not a template }}?"));
        turns
    };
    vec![
        // system, user, assistant, user as messages
        (None, two_turns(Some("You are a doctor. Answer briefly."))),
        // no system prompt at all (ChatML: the template's default system prompt)
        (None, two_turns(None)),
    ]
}

/// Renders each conversation both ways and compares; `bos_text` is what the Jinja template
/// writes first that Ollama adds as a token instead.
fn check_family(tokenizer: &Tokenizer, family: TemplateFamily, bos_text: &str) -> ChatFormat {
    let format = ChatFormat::from_tokenizer(tokenizer).unwrap();
    assert_eq!(format.family, family);
    for with_modelfile_system in [false, true] {
        for (i, (_, turns)) in conversations(family == TemplateFamily::DeepSeekR1).into_iter().enumerate() {
            let jinja = jinja_render(tokenizer, &turns);
            // With a Modelfile SYSTEM, the system message is left out of the request: Ollama puts it first.
            let (system, request): (Option<String>, Vec<Turn>) = if with_modelfile_system && turns[0].role == "system" {
                (Some(turns[0].content.clone()), turns.into_iter().skip(1).collect())
            } else {
                (None, turns)
            };
            let text = modelfile("model.Q8_0.gguf", &format, system.as_deref(), 2048).unwrap();
            let go = ollama_render(&text, &request, None);
            let case = format!("{} conversation {i} (Modelfile SYSTEM: {with_modelfile_system})", family.name());
            assert_eq!(jinja, format!("{bos_text}{go}"), "{case}\n--- Modelfile:\n{text}");
            let jinja_ids = tokenizer.encode(&jinja, false).unwrap();
            let go_ids = tokenizer.encode(&go, true).unwrap();
            if bos_text.is_empty() {
                assert!(!tokenizer.add_bos(), "{case}: the tokenizer adds BOS but the template writes none");
            } else {
                assert!(tokenizer.add_bos(), "{case}: the tokenizer must add the BOS that the template writes");
                assert_eq!(jinja_ids[0], tokenizer.bos_id().unwrap(), "{case}");
            }
            assert_eq!(jinja_ids, go_ids, "{case}: token ids differ");
        }
    }
    format
}

fn shared_tokenizer(name: &str) -> Option<Tokenizer> {
    let path = crate_dir().join("../../shared/data/tokenizers").join(name).join("tokenizer.json");
    if !path.exists() {
        println!("skipped: {} not found", path.display());
        return None;
    }
    Some(Tokenizer::from_file(&path).unwrap())
}

#[test]
fn chatml_smollm2_matches_jinja() {
    let path = crate_dir().join("../models/SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(path.exists(), "{} not found: run scripts/fetch-smollm2.sh", path.display());
    let tokenizer = Tokenizer::from_gguf(&gguf::GgufFile::open(&path).unwrap()).unwrap();
    // String equality: SmolLM2's ChatML template writes no BOS.
    let format = check_family(&tokenizer, TemplateFamily::ChatMl, "");
    assert_eq!(
        format.default_system.as_deref(),
        Some("You are a helpful AI assistant named SmolLM, trained by Hugging Face")
    );
    assert!(format.stops.iter().any(|s| s == "<|im_end|>"), "{:?}", format.stops);
}

#[test]
fn llama3_matches_jinja() {
    let Some(tokenizer) = shared_tokenizer("llama3") else { return };
    // Token equality: the template writes <|begin_of_text|>, Ollama's tokenizer adds it.
    let format = check_family(&tokenizer, TemplateFamily::Llama3, "<|begin_of_text|>");
    assert!(format.stops.iter().any(|s| s == "<|eot_id|>"), "{:?}", format.stops);
}

#[test]
fn deepseek_r1_distill_matches_jinja() {
    let Some(tokenizer) = shared_tokenizer("deepseek-r1-distill-llama-8b") else { return };
    // Token equality: the template writes <｜begin▁of▁sentence｜>, Ollama's tokenizer adds it.
    // The earlier assistant turn carries a <think> block, which both sides leave out.
    let format = check_family(&tokenizer, TemplateFamily::DeepSeekR1, "<｜begin▁of▁sentence｜>");
    assert!(format.think_prefill);
    assert!(format.stops.iter().any(|s| s == "<｜end▁of▁sentence｜>"), "{:?}", format.stops);

    // Ollama's `think: false` closes an empty think block; `think: true` keeps `<think>\n` open.
    let text = modelfile("m.gguf", &format, None, 2048).unwrap();
    let turns = [turn("user", "Hi")];
    assert_eq!(ollama_render(&text, &turns, Some(false)), "<｜User｜>Hi<｜Assistant｜><think>\n\n</think>\n\n");
    assert_eq!(ollama_render(&text, &turns, Some(true)), "<｜User｜>Hi<｜Assistant｜><think>\n");
    // A trailing assistant turn is continued (no end of sentence), with its thinking shown.
    let mut prefill = turn("assistant", "Hello");
    prefill.thinking = "greet".into();
    assert_eq!(
        ollama_render(&text, &[turn("user", "Hi"), prefill], None),
        "<｜User｜>Hi<｜Assistant｜><think>\ngreet\n</think>\n\nHello"
    );
}

#[test]
fn written_modelfile_round_trips() {
    let dir = tempfile::tempdir().unwrap();
    let format = ChatFormat::new(TemplateFamily::ChatMl);
    let path = write_modelfile(dir.path(), "model.Q8_0.gguf", &format, Some("Be kind."), 2048).unwrap();
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.contains("FROM ./model.Q8_0.gguf\n") && text.contains("PARAMETER num_ctx 2048\n"), "{text}");
    let go = ollama_render(&text, &[turn("user", "Hi")], None);
    assert_eq!(go, "<|im_start|>system\nBe kind.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n");
}
