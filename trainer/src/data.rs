//! Training data: JSON-lines or JSON-array files, rendered into token ids and labels.
//!
//! Three row formats:
//! - **template**: rows with `instruction` / `input` / `output` fields rendered through a
//!   prompt template with named placeholders ([`PromptTemplate`]);
//! - **chat**: rows with `messages` (`[{"role", "content"}, ...]`) rendered with the
//!   tokenizer's own chat template ([`ChatTemplate`]);
//! - **text**: rows with one text field (`text` by default).
//!
//! Each row becomes ids (BOS first where the tokenizer adds one, EOS appended) and labels
//! (the ids, or -100 for the prompt part when only responses are trained on). Rows longer
//! than the maximum length are truncated and counted. [`collate`] pads a micro-batch on the
//! right with labels -100, which (with causal attention) leaves every real position's loss
//! unchanged.

use crate::{Result, TrainError};
use engine::Tensor;
use model_llama::chat::{ChatMessage, ChatTemplate};
use serde_json::Value;
use std::ops::Range;
use std::path::{Path, PathBuf};

/// Labels with this value contribute no loss.
pub const IGNORE_INDEX: i32 = -100;

/// What the data pipeline needs from a tokenizer.
pub trait TextEncoder {
    /// The ids of `text` with no BOS/EOS added (special tokens written in the text, such as
    /// `<|eot_id|>`, become their ids).
    fn encode_plain(&self, text: &str) -> std::result::Result<Vec<u32>, String>;
    /// The id put before every template/text row, if the tokenizer adds one.
    fn bos(&self) -> Option<u32>;
    /// The end-of-sequence id appended to every row.
    fn eos(&self) -> Option<u32>;
    /// Whether `id` ends generation (EOS, `<|eot_id|>`, ...).
    fn is_eos(&self, id: u32) -> bool;
}

impl TextEncoder for model_llama::Tokenizer {
    fn encode_plain(&self, text: &str) -> std::result::Result<Vec<u32>, String> {
        self.encode(text, false).map_err(|e| e.to_string())
    }
    fn bos(&self) -> Option<u32> {
        if self.add_bos() {
            self.bos_id()
        } else {
            None
        }
    }
    fn eos(&self) -> Option<u32> {
        self.eos_id()
    }
    fn is_eos(&self, id: u32) -> bool {
        model_llama::Tokenizer::is_eos(self, id)
    }
}

/// The placeholders a prompt template may use.
pub const TEMPLATE_FIELDS: [&str; 3] = ["instruction", "input", "output"];

#[derive(Debug, Clone, PartialEq)]
enum Piece {
    Text(String),
    Field(String),
}

/// A prompt template: text with `{instruction}`, `{input}` and `{output}` placeholders
/// (`{{` and `}}` stand for literal braces).
#[derive(Debug, Clone, PartialEq)]
pub struct PromptTemplate {
    pieces: Vec<Piece>,
    /// Where the template came from, for error messages.
    pub source: String,
}

impl PromptTemplate {
    /// Parses template text. An unknown placeholder or an unmatched brace is an error naming
    /// it (and `source`).
    pub fn parse(text: &str, source: &str) -> Result<PromptTemplate> {
        let mut pieces = Vec::new();
        let mut lit = String::new();
        let mut chars = text.char_indices().peekable();
        let line_of = |pos: usize| text[..pos].matches('\n').count() + 1;
        while let Some((pos, c)) = chars.next() {
            match c {
                '{' if chars.peek().map(|p| p.1) == Some('{') => {
                    chars.next();
                    lit.push('{');
                }
                '}' if chars.peek().map(|p| p.1) == Some('}') => {
                    chars.next();
                    lit.push('}');
                }
                '{' => {
                    let rest = &text[pos + 1..];
                    let Some(end) = rest.find('}') else {
                        return Err(TrainError::Data(format!(
                            "{source} line {}: unclosed '{{' (write {{{{ for a literal brace)",
                            line_of(pos)
                        )));
                    };
                    let name = &rest[..end];
                    if !TEMPLATE_FIELDS.contains(&name) {
                        return Err(TrainError::Data(format!(
                            "{source} line {}: unknown placeholder {{{name}}}; the template may use {{instruction}}, {{input}} and {{output}} (write {{{{ and }}}} for literal braces)",
                            line_of(pos)
                        )));
                    }
                    if !lit.is_empty() {
                        pieces.push(Piece::Text(std::mem::take(&mut lit)));
                    }
                    pieces.push(Piece::Field(name.to_string()));
                    for _ in 0..name.chars().count() + 1 {
                        chars.next();
                    }
                }
                '}' => {
                    return Err(TrainError::Data(format!(
                        "{source} line {}: unmatched '}}' (write }}}} for a literal brace)",
                        line_of(pos)
                    )));
                }
                c => lit.push(c),
            }
        }
        if !lit.is_empty() {
            pieces.push(Piece::Text(lit));
        }
        if !pieces.iter().any(|p| matches!(p, Piece::Field(_))) {
            return Err(TrainError::Data(format!(
                "{source}: the template has no placeholder ({{instruction}}, {{input}} or {{output}})"
            )));
        }
        Ok(PromptTemplate { pieces, source: source.to_string() })
    }

    /// Reads a template file.
    pub fn from_file(path: &Path) -> Result<PromptTemplate> {
        let text = std::fs::read_to_string(path).map_err(|e| TrainError::io(path, e))?;
        PromptTemplate::parse(&text, &path.display().to_string())
    }

    /// The placeholders used, each once, in order of first use.
    pub fn fields(&self) -> Vec<&str> {
        let mut out: Vec<&str> = Vec::new();
        for p in &self.pieces {
            if let Piece::Field(f) = p {
                if !out.contains(&f.as_str()) {
                    out.push(f);
                }
            }
        }
        out
    }

    /// The text with every placeholder replaced by `value(name)`, and the length in bytes of
    /// its part before the first `{split_at}` (the whole text when absent).
    pub fn render_split(&self, value: impl Fn(&str) -> String, split_at: &str) -> (String, usize) {
        let mut out = String::new();
        let mut split = None;
        for p in &self.pieces {
            match p {
                Piece::Text(t) => out.push_str(t),
                Piece::Field(f) => {
                    if split.is_none() && f == split_at {
                        split = Some(out.len());
                    }
                    out.push_str(&value(f));
                }
            }
        }
        let split = split.unwrap_or(out.len());
        (out, split)
    }

    /// The text with every placeholder replaced by `value(name)`.
    pub fn render(&self, value: impl Fn(&str) -> String) -> String {
        self.render_split(value, "").0
    }
}

/// How rows become text.
pub enum DataFormat {
    /// `instruction`/`input`/`output` rows through a prompt template. With
    /// `responses_only`, the prompt is everything before the first `{response_field}`
    /// placeholder (normally `output`).
    Template { template: PromptTemplate, response_field: String },
    /// `messages` rows through a chat template; with `responses_only`, only assistant turns
    /// are trained on.
    Chat(ChatTemplate),
    /// One text field per row (`text` by default); no prompt part.
    Text { field: String },
    /// Rows already tokenized: an array of token ids in `field` (`input_ids` by default),
    /// taken as they are (no BOS added); every token is a target.
    Tokens { field: String },
}

/// Options of [`build_dataset`].
#[derive(Debug, Clone)]
pub struct DataOptions {
    /// Python-style row slice (`"0:200"`, `":100"`, `"-50:"`), taken before formatting.
    pub slice: Option<String>,
    /// Longest row in tokens; longer rows are cut to this length and counted.
    pub max_seq_len: usize,
    /// Label the prompt part -100 (train on responses only).
    pub responses_only: bool,
    /// Append the tokenizer's EOS id to each row (chat rows already ending in an EOS id get
    /// none).
    pub append_eos: bool,
    /// Concatenate the rows (each ending in its EOS) and cut the stream into rows of
    /// `max_seq_len` tokens: no padding, at the price of rows seeing their neighbours in the
    /// same sequence (TRL's classic `ConstantLengthDataset` packing).
    pub packing: bool,
}

impl Default for DataOptions {
    fn default() -> Self {
        DataOptions { slice: None, max_seq_len: 2048, responses_only: false, append_eos: true, packing: false }
    }
}

/// One parsed row and the line of the file it starts on (1-based).
#[derive(Debug, Clone)]
pub struct Row {
    pub line: usize,
    pub value: Value,
}

/// The rows of a data file.
#[derive(Debug, Clone)]
pub struct RawData {
    pub path: PathBuf,
    pub rows: Vec<Row>,
}

/// Reads a JSON-lines file (one object per line; blank lines skipped) or a JSON array of
/// objects (when the first non-blank character is `[`). Invalid JSON is an error naming the
/// file and line.
pub fn read_rows(path: &Path) -> Result<RawData> {
    let text = std::fs::read_to_string(path).map_err(|e| TrainError::io(path, e))?;
    parse_rows(&text, path)
}

/// [`read_rows`] on text already read from `path`.
pub fn parse_rows(text: &str, path: &Path) -> Result<RawData> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let file = path.display();
    let mut rows = Vec::new();
    if text.trim_start().starts_with('[') {
        let items: Vec<&serde_json::value::RawValue> = serde_json::from_str(text)
            .map_err(|e| TrainError::Data(format!("{file} line {}: invalid JSON: {e}", e.line())))?;
        for item in items {
            let offset = item.get().as_ptr() as usize - text.as_ptr() as usize;
            let line = text[..offset].matches('\n').count() + 1;
            let value: Value = serde_json::from_str(item.get())
                .map_err(|e| TrainError::Data(format!("{file} line {line}: invalid JSON: {e}")))?;
            rows.push(Row { line, value });
        }
    } else {
        for (i, l) in text.lines().enumerate() {
            if l.trim().is_empty() {
                continue;
            }
            let value: Value = serde_json::from_str(l)
                .map_err(|e| TrainError::Data(format!("{file} line {}: invalid JSON: {e}", i + 1)))?;
            rows.push(Row { line: i + 1, value });
        }
    }
    if rows.is_empty() {
        return Err(TrainError::Data(format!("{file}: the data set is empty (no rows)")));
    }
    Ok(RawData { path: path.to_path_buf(), rows })
}

/// The rows `spec` selects out of `n`, with Python's slice rules (negative indices count from
/// the end; bounds are clamped).
pub fn parse_slice(spec: &str, n: usize) -> Result<Range<usize>> {
    let bad = || TrainError::Config(format!("invalid row slice \"{spec}\": expected start:end, as in 0:200"));
    let (a, b) = spec.split_once(':').ok_or_else(bad)?;
    if b.contains(':') {
        return Err(bad());
    }
    let index = |s: &str, default: usize| -> Result<usize> {
        let s = s.trim();
        if s.is_empty() {
            return Ok(default);
        }
        let v: i64 = s.parse().map_err(|_| bad())?;
        Ok(if v < 0 { (n as i64 + v).max(0) as usize } else { (v as usize).min(n) })
    };
    let (start, end) = (index(a, 0)?, index(b, n)?);
    Ok(start..end.max(start))
}

/// A tokenized training row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Example {
    pub ids: Vec<u32>,
    /// `ids` where the loss applies, -100 elsewhere (same length as `ids`).
    pub labels: Vec<i32>,
}

impl Example {
    /// Targets this row contributes: labels after the causal shift (`labels[1..]`) that are
    /// not -100.
    pub fn n_targets(&self) -> usize {
        self.labels.iter().skip(1).filter(|&&l| l != IGNORE_INDEX).count()
    }
}

/// A tokenized data set.
#[derive(Debug, Clone)]
pub struct Dataset {
    pub examples: Vec<Example>,
    /// Rows cut to the maximum length.
    pub truncated: usize,
    /// Rows left out because no target token remained (after truncation, or with an empty
    /// response when training on responses only).
    pub skipped: usize,
    /// Where the rows came from.
    pub source: String,
}

impl Dataset {
    /// A data set of already tokenized examples.
    pub fn from_examples(examples: Vec<Example>, source: &str) -> Result<Dataset> {
        if examples.is_empty() {
            return Err(TrainError::Data(format!("{source}: the data set is empty")));
        }
        if let Some(i) = examples.iter().position(|e| e.ids.len() != e.labels.len() || e.n_targets() == 0) {
            return Err(TrainError::Data(format!(
                "{source}: example {i} has no target token or labels of another length than its ids"
            )));
        }
        Ok(Dataset { examples, truncated: 0, skipped: 0, source: source.to_string() })
    }

    pub fn len(&self) -> usize {
        self.examples.len()
    }
    pub fn is_empty(&self) -> bool {
        self.examples.is_empty()
    }
    /// Target tokens of the whole set.
    pub fn n_targets(&self) -> usize {
        self.examples.iter().map(Example::n_targets).sum()
    }
}

/// Reads `path` and builds its data set ([`read_rows`] then [`build_dataset`]).
pub fn load_dataset(path: &Path, format: &DataFormat, enc: &dyn TextEncoder, opts: &DataOptions) -> Result<Dataset> {
    build_dataset(&read_rows(path)?, format, enc, opts)
}

/// Tokenizes the rows of `raw` selected by `opts.slice`.
pub fn build_dataset(raw: &RawData, format: &DataFormat, enc: &dyn TextEncoder, opts: &DataOptions) -> Result<Dataset> {
    let file = raw.path.display().to_string();
    if opts.max_seq_len < 2 {
        return Err(TrainError::Config(format!("max_seq_len must be at least 2, got {}", opts.max_seq_len)));
    }
    if opts.responses_only && matches!(format, DataFormat::Text { .. } | DataFormat::Tokens { .. }) {
        return Err(TrainError::Config(
            "training on responses only needs a template or chat data set; plain text rows have no prompt part".into(),
        ));
    }
    if let DataFormat::Template { template, response_field } = format {
        if opts.responses_only && !template.fields().contains(&response_field.as_str()) {
            return Err(TrainError::Config(format!(
                "{}: training on responses only splits the template at {{{response_field}}}, which it does not use",
                template.source
            )));
        }
    }
    let range = match &opts.slice {
        Some(s) => parse_slice(s, raw.rows.len())?,
        None => 0..raw.rows.len(),
    };
    if range.is_empty() {
        return Err(TrainError::Data(format!(
            "{file}: the data set is empty: slice \"{}\" selects none of its {} rows",
            opts.slice.as_deref().unwrap_or(""),
            raw.rows.len()
        )));
    }
    let mut ds = Dataset { examples: Vec::new(), truncated: 0, skipped: 0, source: file.clone() };
    for row in &raw.rows[range] {
        let at = |m: String| TrainError::Data(format!("{file} line {}: {m}", row.line));
        let obj =
            row.value.as_object().ok_or_else(|| at(format!("expected a JSON object, found {}", kind(&row.value))))?;
        let (mut ids, mut labels) = match format {
            DataFormat::Template { template, response_field } => {
                let mut values = Vec::new();
                for f in template.fields() {
                    values.push((f, string_field(obj, f).map_err(&at)?));
                }
                let get =
                    |f: &str| values.iter().find(|(k, _)| *k == f).map(|(_, v)| v.to_string()).unwrap_or_default();
                let (text, split) = template.render_split(get, response_field);
                let ids = with_bos(enc, encode(enc, &text).map_err(&at)?);
                let prompt_len = if opts.responses_only {
                    common_prefix(&with_bos(enc, encode(enc, &text[..split]).map_err(&at)?), &ids)
                } else {
                    0
                };
                let labels = label(&ids, std::iter::once(prompt_len..ids.len()));
                (ids, labels)
            }
            DataFormat::Text { field } => {
                let text = string_field(obj, field).map_err(&at)?;
                let ids = with_bos(enc, encode(enc, text).map_err(&at)?);
                let labels = label(&ids, std::iter::once(0..ids.len()));
                (ids, labels)
            }
            DataFormat::Tokens { field } => {
                let ids = ids_field(obj, field).map_err(&at)?;
                let labels = label(&ids, std::iter::once(0..ids.len()));
                (ids, labels)
            }
            DataFormat::Chat(tmpl) => {
                let messages = messages_field(obj).map_err(&at)?;
                let render = |m: &[ChatMessage], gen: bool| tmpl.render(m, gen).map_err(|e| at(e.to_string()));
                let text = render(&messages, false)?;
                let ids = encode(enc, &text).map_err(&at)?;
                let spans: Vec<Range<usize>> = if opts.responses_only {
                    let mut spans = Vec::new();
                    for (i, m) in messages.iter().enumerate().filter(|(_, m)| m.role == "assistant") {
                        let before = render(&messages[..i], true)?;
                        let through = render(&messages[..=i], false)?;
                        if !through.starts_with(&before) || !text.starts_with(&through) {
                            return Err(at(format!(
                                "the chat template does not render this conversation turn by turn (turn {i}, {}), so its responses cannot be located; train on whole conversations instead",
                                m.role
                            )));
                        }
                        let start = common_prefix(&encode(enc, &before).map_err(&at)?, &ids);
                        let end = common_prefix(&encode(enc, &through).map_err(&at)?, &ids);
                        spans.push(start..end.max(start));
                    }
                    spans
                } else {
                    std::iter::once(0..ids.len()).collect()
                };
                let labels = label(&ids, spans);
                (ids, labels)
            }
        };
        if opts.append_eos {
            let already = matches!(format, DataFormat::Chat(_)) && ids.last().is_some_and(|&l| enc.is_eos(l));
            if !already {
                let eos = enc.eos().ok_or_else(|| {
                    TrainError::Config("the tokenizer has no EOS token to append; turn EOS appending off".into())
                })?;
                // The EOS is a target unless the row ends inside a masked part.
                let last_is_target = labels.last().is_none_or(|&l| l != IGNORE_INDEX);
                ids.push(eos);
                labels.push(if last_is_target || matches!(format, DataFormat::Template { .. }) {
                    eos as i32
                } else {
                    IGNORE_INDEX
                });
            }
        }
        if ids.len() > opts.max_seq_len {
            ids.truncate(opts.max_seq_len);
            labels.truncate(opts.max_seq_len);
            ds.truncated += 1;
        }
        let ex = Example { ids, labels };
        if ex.n_targets() == 0 {
            ds.skipped += 1;
            continue;
        }
        ds.examples.push(ex);
    }
    if ds.examples.is_empty() {
        return Err(TrainError::Data(format!(
            "{file}: the data set is empty: none of its selected rows has a token to train on"
        )));
    }
    if opts.packing {
        ds.examples = pack(std::mem::take(&mut ds.examples), opts.max_seq_len);
    }
    Ok(ds)
}

/// The examples' tokens and labels end to end, cut into rows of `len` (the last one shorter);
/// rows left with nothing to train on are dropped.
pub fn pack(examples: Vec<Example>, len: usize) -> Vec<Example> {
    let ids: Vec<u32> = examples.iter().flat_map(|e| e.ids.iter().copied()).collect();
    let labels: Vec<i32> = examples.iter().flat_map(|e| e.labels.iter().copied()).collect();
    ids.chunks(len)
        .zip(labels.chunks(len))
        .map(|(i, l)| Example { ids: i.to_vec(), labels: l.to_vec() })
        .filter(|e| e.n_targets() > 0)
        .collect()
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn string_field<'a>(obj: &'a serde_json::Map<String, Value>, name: &str) -> std::result::Result<&'a str, String> {
    match obj.get(name) {
        None => Err(format!("missing field \"{name}\"")),
        Some(Value::String(s)) => Ok(s),
        Some(v) => Err(format!("field \"{name}\" is {}, expected a string", kind(v))),
    }
}

fn ids_field(obj: &serde_json::Map<String, Value>, name: &str) -> std::result::Result<Vec<u32>, String> {
    let list = match obj.get(name) {
        None => return Err(format!("missing field \"{name}\"")),
        Some(Value::Array(a)) => a,
        Some(v) => return Err(format!("field \"{name}\" is {}, expected an array of token ids", kind(v))),
    };
    list.iter()
        .enumerate()
        .map(|(i, v)| match v.as_u64() {
            Some(id) if id <= u32::MAX as u64 => Ok(id as u32),
            _ => Err(format!("field \"{name}\" item {i} is {v}, expected a token id (a non-negative integer)")),
        })
        .collect()
}

fn messages_field(obj: &serde_json::Map<String, Value>) -> std::result::Result<Vec<ChatMessage>, String> {
    let list = match obj.get("messages") {
        None => return Err("missing field \"messages\"".into()),
        Some(Value::Array(a)) => a,
        Some(v) => return Err(format!("field \"messages\" is {}, expected an array", kind(v))),
    };
    if list.is_empty() {
        return Err("field \"messages\" is empty".into());
    }
    let mut out = Vec::with_capacity(list.len());
    for (i, m) in list.iter().enumerate() {
        let o = m.as_object().ok_or_else(|| format!("messages[{i}] is {}, expected an object", kind(m)))?;
        let role = string_field(o, "role").map_err(|e| format!("messages[{i}]: {e}"))?;
        let content = string_field(o, "content").map_err(|e| format!("messages[{i}]: {e}"))?;
        out.push(ChatMessage::new(role, content));
    }
    Ok(out)
}

fn encode(enc: &dyn TextEncoder, text: &str) -> std::result::Result<Vec<u32>, String> {
    enc.encode_plain(text).map_err(|e| format!("cannot tokenize: {e}"))
}

fn with_bos(enc: &dyn TextEncoder, ids: Vec<u32>) -> Vec<u32> {
    match enc.bos() {
        Some(b) => std::iter::once(b).chain(ids).collect(),
        None => ids,
    }
}

/// Length of the common prefix of `a` and `b` (token boundaries that merge across the
/// prompt/response border count as prompt).
fn common_prefix(a: &[u32], b: &[u32]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

/// `ids` as labels inside `spans`, -100 outside.
fn label(ids: &[u32], spans: impl IntoIterator<Item = Range<usize>>) -> Vec<i32> {
    let mut labels = vec![IGNORE_INDEX; ids.len()];
    for s in spans {
        for i in s {
            labels[i] = ids[i] as i32;
        }
    }
    labels
}

/// A padded micro-batch.
#[derive(Debug, Clone)]
pub struct Batch {
    /// `[b, t]` u32 ids, right-padded.
    pub ids: Tensor,
    /// `[b, t]` i32 labels, -100 at padding.
    pub labels: Tensor,
    /// Targets after the causal shift (labels[:, 1:] != -100).
    pub n_targets: usize,
    /// Real (non-padding) tokens.
    pub n_tokens: usize,
}

/// Pads `examples` on the right to the longest one, with `pad_id` and label -100.
pub fn collate(examples: &[&Example], pad_id: u32) -> Result<Batch> {
    if examples.is_empty() {
        return Err(TrainError::Data("cannot build an empty micro-batch".into()));
    }
    let t = examples.iter().map(|e| e.ids.len()).max().unwrap_or(0).max(2);
    let b = examples.len();
    let mut ids = vec![pad_id; b * t];
    let mut labels = vec![IGNORE_INDEX; b * t];
    for (r, e) in examples.iter().enumerate() {
        ids[r * t..r * t + e.ids.len()].copy_from_slice(&e.ids);
        labels[r * t..r * t + e.labels.len()].copy_from_slice(&e.labels);
    }
    Ok(Batch {
        ids: Tensor::from_vec(ids, &[b, t])?,
        labels: Tensor::from_vec(labels, &[b, t])?,
        n_targets: examples.iter().map(|e| e.n_targets()).sum(),
        n_tokens: examples.iter().map(|e| e.ids.len()).sum(),
    })
}
