//! Data formatting: templates, chat conversations, plain text, slicing, EOS, truncation,
//! padding and labels, and every bad-input error with the file, line and field it names.

use model_llama::chat::ChatTemplate;
use std::path::{Path, PathBuf};
use trainer::data::{self, collate, DataFormat, DataOptions, Example, PromptTemplate, TextEncoder, IGNORE_INDEX};
use trainer::TrainError;

/// One id per byte; BOS 256, EOS 257.
struct Bytes;
const BOS: u32 = 256;
const EOS: u32 = 257;
impl TextEncoder for Bytes {
    fn encode_plain(&self, text: &str) -> Result<Vec<u32>, String> {
        Ok(text.bytes().map(u32::from).collect())
    }
    fn bos(&self) -> Option<u32> {
        Some(BOS)
    }
    fn eos(&self) -> Option<u32> {
        Some(EOS)
    }
    fn is_eos(&self, id: u32) -> bool {
        id == EOS
    }
}

fn ids(text: &str) -> Vec<u32> {
    text.bytes().map(u32::from).collect()
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

const TEMPLATE: &str = "Q: {instruction}\nA: <think>{input}</think>\n{output}";

fn template_format() -> DataFormat {
    DataFormat::Template {
        template: PromptTemplate::parse(TEMPLATE, "t.txt").unwrap(),
        response_field: "output".into(),
    }
}

fn err_text(r: Result<impl std::fmt::Debug, TrainError>) -> String {
    r.unwrap_err().to_string()
}

#[test]
fn template_rows_render_with_bos_and_eos() {
    let dir = tempfile::tempdir().unwrap();
    let p = write(
        dir.path(),
        "d.jsonl",
        "{\"instruction\": \"why?\", \"input\": \"think\", \"output\": \"because\"}\n\n{\"instruction\": \"b\", \"input\": \"\", \"output\": \"c\", \"extra\": 1}\n",
    );
    let ds = data::load_dataset(&p, &template_format(), &Bytes, &DataOptions::default()).unwrap();
    assert_eq!(ds.len(), 2);
    let text = "Q: why?\nA: <think>think</think>\nbecause";
    let mut want = vec![BOS];
    want.extend(ids(text));
    want.push(EOS);
    assert_eq!(ds.examples[0].ids, want);
    assert_eq!(ds.examples[0].labels, want.iter().map(|&x| x as i32).collect::<Vec<_>>());
    assert_eq!(ds.truncated, 0);

    // Responses only: the prompt (BOS + text before {output}) is -100; the answer and EOS are targets.
    let opts = DataOptions { responses_only: true, ..DataOptions::default() };
    let ds = data::load_dataset(&p, &template_format(), &Bytes, &opts).unwrap();
    let prompt_len = 1 + "Q: why?\nA: <think>think</think>\n".len();
    let e = &ds.examples[0];
    assert!(e.labels[..prompt_len].iter().all(|&l| l == IGNORE_INDEX));
    assert_eq!(&e.labels[prompt_len..], &want[prompt_len..].iter().map(|&x| x as i32).collect::<Vec<_>>()[..]);
    assert_eq!(e.n_targets(), "because".len() + 1);

    // The response may start at another placeholder (the reasoning, for instance).
    let fmt = DataFormat::Template {
        template: PromptTemplate::parse(TEMPLATE, "t.txt").unwrap(),
        response_field: "input".into(),
    };
    let ds = data::load_dataset(&p, &fmt, &Bytes, &opts).unwrap();
    assert_eq!(ds.examples[0].n_targets(), "think</think>\nbecause".len() + 1);
}

#[test]
fn template_syntax() {
    let t = PromptTemplate::parse("{{literal}} {instruction} }}{output}{{", "t").unwrap();
    assert_eq!(t.fields(), vec!["instruction", "output"]);
    let get = |f: &str| if f == "instruction" { "I".to_string() } else { "O".to_string() };
    assert_eq!(t.render(get), "{literal} I }O{");

    let e = err_text(PromptTemplate::parse("line one\n### Q: {question}\n{output}", "prompt.txt"));
    assert!(e.contains("prompt.txt") && e.contains("line 2") && e.contains("{question}"), "{e}");
    let e = err_text(PromptTemplate::parse("{instruction} {} {output}", "p"));
    assert!(e.contains("unknown placeholder {}"), "{e}");
    let e = err_text(PromptTemplate::parse("{instruction", "p"));
    assert!(e.contains("unclosed"), "{e}");
    let e = err_text(PromptTemplate::parse("{output} }", "p"));
    assert!(e.contains("unmatched"), "{e}");
    let e = err_text(PromptTemplate::parse("no placeholder", "p"));
    assert!(e.contains("no placeholder"), "{e}");

    let dir = tempfile::tempdir().unwrap();
    let tp = write(dir.path(), "tmpl.txt", "### 问题:\n{instruction}\n### 回答:\n<思考>{input}</思考>\n{output}");
    let t = PromptTemplate::from_file(&tp).unwrap();
    assert_eq!(t.fields(), vec!["instruction", "input", "output"]);
    let e = err_text(PromptTemplate::from_file(&dir.path().join("missing.txt")));
    assert!(e.contains("missing.txt"), "{e}");
}

#[test]
fn bad_rows_name_file_line_and_field() {
    let dir = tempfile::tempdir().unwrap();
    let fmt = template_format();
    let opts = DataOptions::default();
    let load = |name: &str, text: &str| data::load_dataset(&write(dir.path(), name, text), &fmt, &Bytes, &opts);

    let e = err_text(load(
        "missing.jsonl",
        "{\"instruction\": \"a\", \"input\": \"b\", \"output\": \"c\"}\n{\"instruction\": \"a\", \"input\": \"b\"}\n",
    ));
    assert!(e.contains("missing.jsonl") && e.contains("line 2") && e.contains("missing field \"output\""), "{e}");

    let e = err_text(load(
        "badjson.jsonl",
        "{\"instruction\": \"a\", \"input\": \"b\", \"output\": \"c\"}\n\n{\"instruction\": \"a\",\n",
    ));
    assert!(e.contains("badjson.jsonl") && e.contains("line 3") && e.contains("invalid JSON"), "{e}");

    let e = err_text(load("type.jsonl", "{\"instruction\": 5, \"input\": \"b\", \"output\": \"c\"}\n"));
    assert!(e.contains("line 1") && e.contains("field \"instruction\" is a number"), "{e}");

    let e = err_text(load("notobj.jsonl", "[1, 2]\n"));
    assert!(e.contains("line 1") && e.contains("expected a JSON object"), "{e}");

    let e = err_text(load("empty.jsonl", "\n  \n"));
    assert!(e.contains("empty.jsonl") && e.contains("empty"), "{e}");

    let e = err_text(load("emptyarr.json", "[]"));
    assert!(e.contains("empty"), "{e}");

    // A JSON array reports the line its element starts on.
    let e = err_text(load(
        "arr.json",
        "[\n  {\"instruction\": \"a\", \"input\": \"b\", \"output\": \"c\"},\n  {\"instruction\": \"a\",\n   \"output\": \"c\"}\n]",
    ));
    assert!(e.contains("arr.json") && e.contains("line 3") && e.contains("missing field \"input\""), "{e}");
    let e = err_text(load("arrbad.json", "[\n{\"instruction\": \"a\"},\n{oops}\n]"));
    assert!(e.contains("line 3") && e.contains("invalid JSON"), "{e}");

    let e = err_text(data::load_dataset(&dir.path().join("nope.jsonl"), &fmt, &Bytes, &opts));
    assert!(e.contains("nope.jsonl"), "{e}");
}

#[test]
fn json_array_and_slices() {
    let dir = tempfile::tempdir().unwrap();
    let rows: Vec<String> =
        (0..5).map(|i| format!("{{\"instruction\": \"q{i}\", \"input\": \"\", \"output\": \"a{i}\"}}")).collect();
    let p = write(dir.path(), "d.json", &format!("[{}]", rows.join(",\n")));
    let mut opts = DataOptions { slice: Some("1:3".into()), ..DataOptions::default() };
    let ds = data::load_dataset(&p, &template_format(), &Bytes, &opts).unwrap();
    assert_eq!(ds.len(), 2);
    assert!(String::from_utf8(ds.examples[0].ids[1..].iter().filter(|&&x| x < 256).map(|&x| x as u8).collect())
        .unwrap()
        .contains("q1"));

    assert_eq!(data::parse_slice("0:200", 1000).unwrap(), 0..200);
    assert_eq!(data::parse_slice("0:200", 50).unwrap(), 0..50);
    assert_eq!(data::parse_slice(":3", 10).unwrap(), 0..3);
    assert_eq!(data::parse_slice("-2:", 10).unwrap(), 8..10);
    assert_eq!(data::parse_slice("5:1", 10).unwrap(), 5..5);
    assert!(err_text(data::parse_slice("0-200", 10)).contains("invalid row slice \"0-200\""));
    assert!(data::parse_slice("a:b", 10).is_err());
    assert!(data::parse_slice("1:2:3", 10).is_err());

    // Only the selected rows must be complete.
    let p2 = write(dir.path(), "d2.jsonl", &format!("{}\n{{\"instruction\": \"x\"}}\n", rows[0]));
    opts.slice = Some("0:1".into());
    assert_eq!(data::load_dataset(&p2, &template_format(), &Bytes, &opts).unwrap().len(), 1);
    opts.slice = Some("7:9".into());
    let e = err_text(data::load_dataset(&p, &template_format(), &Bytes, &opts));
    assert!(e.contains("empty") && e.contains("7:9"), "{e}");
}

#[test]
fn truncation_is_counted() {
    let dir = tempfile::tempdir().unwrap();
    let p = write(dir.path(), "t.jsonl", "{\"text\": \"short\"}\n{\"text\": \"a much longer row of text\"}\n");
    let fmt = DataFormat::Text { field: "text".into() };
    let opts = DataOptions { max_seq_len: 8, ..DataOptions::default() };
    let ds = data::load_dataset(&p, &fmt, &Bytes, &opts).unwrap();
    assert_eq!(ds.truncated, 1);
    assert_eq!(ds.examples[0].ids, [vec![BOS], ids("short"), vec![EOS]].concat());
    assert_eq!(ds.examples[1].ids.len(), 8);
    assert_eq!(ds.examples[1].ids, [vec![BOS], ids("a much ")].concat());

    let e = err_text(data::load_dataset(&p, &DataFormat::Text { field: "body".into() }, &Bytes, &opts));
    assert!(e.contains("line 1") && e.contains("missing field \"body\""), "{e}");
    let e = err_text(data::load_dataset(&p, &fmt, &Bytes, &DataOptions { responses_only: true, ..opts.clone() }));
    assert!(e.contains("responses only"), "{e}");
    let no_eos = DataOptions { append_eos: false, max_seq_len: 100, ..DataOptions::default() };
    let ds = data::load_dataset(&p, &fmt, &Bytes, &no_eos).unwrap();
    assert_eq!(*ds.examples[0].ids.last().unwrap(), b't' as u32);
}

const CHATML: &str = "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}";

#[test]
fn chat_rows_use_the_chat_template() {
    let dir = tempfile::tempdir().unwrap();
    let p = write(
        dir.path(),
        "chat.jsonl",
        "{\"messages\": [{\"role\": \"system\", \"content\": \"be brief\"}, {\"role\": \"user\", \"content\": \"hi\"}, {\"role\": \"assistant\", \"content\": \"hello\"}, {\"role\": \"user\", \"content\": \"again\"}, {\"role\": \"assistant\", \"content\": \"yes\"}]}\n",
    );
    let fmt = DataFormat::Chat(ChatTemplate::new(CHATML, "", "<|im_end|>").unwrap());
    let ds = data::load_dataset(&p, &fmt, &Bytes, &DataOptions::default()).unwrap();
    let text = "<|im_start|>system\nbe brief<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\nhello<|im_end|>\n<|im_start|>user\nagain<|im_end|>\n<|im_start|>assistant\nyes<|im_end|>\n";
    // No BOS is prepended to chat rows (the template writes its own); EOS is appended.
    assert_eq!(ds.examples[0].ids, [ids(text), vec![EOS]].concat());

    let opts = DataOptions { responses_only: true, ..DataOptions::default() };
    let ds = data::load_dataset(&p, &fmt, &Bytes, &opts).unwrap();
    let e = &ds.examples[0];
    let trained: Vec<u8> = e
        .ids
        .iter()
        .zip(&e.labels)
        .filter(|(_, &l)| l != IGNORE_INDEX)
        .filter(|(&i, _)| i < 256)
        .map(|(&i, _)| i as u8)
        .collect();
    assert_eq!(String::from_utf8(trained).unwrap(), "hello<|im_end|>\nyes<|im_end|>\n");
    assert_eq!(*e.labels.last().unwrap(), EOS as i32);

    let bad = |name: &str, text: &str| {
        err_text(data::load_dataset(&write(dir.path(), name, text), &fmt, &Bytes, &DataOptions::default()))
    };
    let e = bad("c1.jsonl", "{\"text\": \"x\"}\n");
    assert!(e.contains("c1.jsonl") && e.contains("line 1") && e.contains("missing field \"messages\""), "{e}");
    let e = bad(
        "c2.jsonl",
        "{\"messages\": [{\"role\": \"user\", \"content\": \"a\"}]}\n{\"messages\": [{\"role\": \"user\"}]}\n",
    );
    assert!(e.contains("line 2") && e.contains("messages[0]") && e.contains("\"content\""), "{e}");
    let e = bad("c3.jsonl", "{\"messages\": \"hi\"}\n");
    assert!(e.contains("is a string, expected an array"), "{e}");
}

#[test]
fn collate_pads_right_with_ignored_labels() {
    let a = Example { ids: vec![1, 2, 3, 4], labels: vec![-100, -100, 3, 4] };
    let b = Example { ids: vec![5, 6], labels: vec![5, 6] };
    let batch = collate(&[&a, &b], 9).unwrap();
    assert_eq!(batch.ids.shape(), &[2, 4]);
    assert_eq!(batch.ids.to_vec::<u32>().unwrap(), vec![1, 2, 3, 4, 5, 6, 9, 9]);
    assert_eq!(batch.labels.to_vec::<i32>().unwrap(), vec![-100, -100, 3, 4, 5, 6, -100, -100]);
    assert_eq!(batch.n_targets, 2 + 1);
    assert_eq!(batch.n_tokens, 6);
    assert!(collate(&[], 0).is_err());
}

/// The workflow's data through the real DeepSeek-R1-Distill tokenizer (skipped when the shared
/// data folder is absent): rows [0:200] of the medical set, the reasoning between <思考> tags,
/// BOS first and EOS last.
#[test]
fn medical_rows_with_the_real_tokenizer() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/data");
    let tok_dir = root.join("tokenizers/deepseek-r1-distill-llama-8b");
    let data_file = root.join("medical_zh_sft.jsonl");
    if !tok_dir.exists() || !data_file.exists() {
        eprintln!("skipped: {} not found", root.display());
        return;
    }
    let tok = model_llama::Tokenizer::from_file(&tok_dir).unwrap();
    let template = "Below is an instruction that describes a task, paired with an input that provides further context.\n\n### Instruction:\nYou are a medical expert.\n\n### 问题:\n{instruction}\n\n### 回答:\n<思考>\n{input}\n</思考>\n{output}";
    let fmt = DataFormat::Template {
        template: PromptTemplate::parse(template, "template").unwrap(),
        response_field: "output".into(),
    };
    let opts = DataOptions { slice: Some("0:200".into()), max_seq_len: 2048, ..DataOptions::default() };
    let ds = data::load_dataset(&data_file, &fmt, &tok, &opts).unwrap();
    assert_eq!(ds.len(), 200);
    let bos = tok.bos_id().unwrap();
    let eos = tok.eos_id().unwrap();
    for e in &ds.examples {
        assert_eq!(e.ids[0], bos);
        assert_eq!(*e.ids.last().unwrap(), eos);
    }
    let text = tok.decode(&ds.examples[2].ids, true).unwrap();
    assert!(text.contains("### 问题:\n精子生成减少的病因是什么？") && text.contains("支持细胞错位"), "{text}");
    println!(
        "200 rows, {} target tokens, {} truncated, longest {}",
        ds.n_targets(),
        ds.truncated,
        ds.examples.iter().map(|e| e.ids.len()).max().unwrap()
    );
}

#[test]
fn token_rows_are_taken_as_they_are() {
    let dir = tempfile::tempdir().unwrap();
    let p = write(dir.path(), "t.jsonl", "{\"input_ids\": [5, 6, 7]}\n{\"input_ids\": [1, 2, 3, 4, 9, 9]}\n");
    let format = DataFormat::Tokens { field: "input_ids".into() };
    let opts = DataOptions { max_seq_len: 5, ..DataOptions::default() };
    let ds = data::load_dataset(&p, &format, &Bytes, &opts).unwrap();
    assert_eq!(ds.examples[0].ids, vec![5, 6, 7, EOS]);
    assert_eq!(ds.examples[0].labels, vec![5, 6, 7, EOS as i32]);
    assert_eq!(ds.examples[1].ids, vec![1, 2, 3, 4, 9]);
    assert_eq!(ds.truncated, 1);

    let bad = write(dir.path(), "b.jsonl", "{\"input_ids\": [5, 6]}\n{\"input_ids\": [5, \"x\"]}\n");
    let e = err_text(data::load_dataset(&bad, &format, &Bytes, &opts));
    assert!(e.contains("b.jsonl line 2") && e.contains("item 1") && e.contains("token id"), "{e}");
    let missing = write(dir.path(), "m.jsonl", "{\"text\": \"hi\"}\n");
    let e = err_text(data::load_dataset(&missing, &format, &Bytes, &opts));
    assert!(e.contains("m.jsonl line 1") && e.contains("missing field \"input_ids\""), "{e}");
}

#[test]
fn packing_cuts_the_token_stream_into_full_rows() {
    let dir = tempfile::tempdir().unwrap();
    let p = write(dir.path(), "p.jsonl", "{\"text\": \"ab\"}\n{\"text\": \"cde\"}\n{\"text\": \"fghi\"}\n");
    let format = DataFormat::Text { field: "text".into() };
    let plain =
        data::load_dataset(&p, &format, &Bytes, &DataOptions { max_seq_len: 5, ..DataOptions::default() }).unwrap();
    let opts = DataOptions { max_seq_len: 5, packing: true, ..DataOptions::default() };
    let packed = data::load_dataset(&p, &format, &Bytes, &opts).unwrap();
    // BOS + text + EOS per row: 4 + 5 + 6 tokens (the last cut to 5) = 14 tokens in rows of 5.
    let stream: Vec<u32> = plain.examples.iter().flat_map(|e| e.ids.clone()).collect();
    assert_eq!(stream.len(), 14);
    let lens: Vec<usize> = packed.examples.iter().map(|e| e.ids.len()).collect();
    assert_eq!(lens, vec![5, 5, 4]);
    let joined: Vec<u32> = packed.examples.iter().flat_map(|e| e.ids.clone()).collect();
    assert_eq!(joined, stream);
    assert_eq!(packed.examples[0].ids, [BOS, b'a' as u32, b'b' as u32, EOS, BOS]);
    let labels: Vec<i32> = packed.examples.iter().flat_map(|e| e.labels.clone()).collect();
    let want: Vec<i32> = plain.examples.iter().flat_map(|e| e.labels.clone()).collect();
    assert_eq!(labels, want);
}
