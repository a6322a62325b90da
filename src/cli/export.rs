//! `ferrotune export`: merge a LoRA adapter into its base model and write a llama.cpp GGUF
//! (`<out>/<name>.<QUANT>.gguf`) and an Ollama `Modelfile` beside it.
//!
//! [`export`] is the library entry point (also called by `ferrotune train --export-gguf`): the
//! Modelfile text is made first (so an untranslatable chat template fails before the long
//! write), then the GGUF is streamed to a temporary file and renamed
//! ([`model_llama::export_gguf::export_gguf`]), then the Modelfile is written the same way.
//! Existing files under either name are an error unless `overwrite` is set.

use anyhow::{bail, Context, Result};
use engine::DType;
use gguf::mixes::FileType;
use gguf::GgufFile;
use model_llama::export_gguf::export_gguf;
use model_llama::modelfile::{modelfile, ChatFormat};
use model_llama::{Llama, Tokenizer};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

#[derive(clap::Args)]
pub struct Args {
    /// A Hugging Face model folder, a .gguf file, or a repo id (org/name) in the HF cache.
    #[arg(long)]
    model: String,
    /// A PEFT LoRA adapter folder (as `ferrotune train` writes to <output_dir>/adapter) to
    /// merge into the model.
    #[arg(long)]
    adapter: Option<PathBuf>,
    /// GGUF file type: q8_0, f16, bf16, f32, q4_k_m, q5_k_m, q6_k, q4_0, q4_1, q5_0, q5_1.
    #[arg(long, default_value = "q8_0")]
    quant: FileType,
    /// Output folder (created if missing) for <name>.<QUANT>.gguf and Modelfile.
    #[arg(long)]
    out: PathBuf,
    /// Model name, for the file and `ollama create` [default: from --model, plus "-lora" with
    /// an adapter].
    #[arg(long)]
    name: Option<String>,
    /// A system prompt for the Modelfile (SYSTEM).
    #[arg(long)]
    system: Option<String>,
    /// Context length for Ollama (PARAMETER num_ctx).
    #[arg(long, default_value_t = 2048)]
    num_ctx: usize,
    /// Replace a GGUF or Modelfile that already exists in --out.
    #[arg(long)]
    force: bool,
}

/// What [`export`] writes.
#[derive(Debug, Clone)]
pub struct ExportOptions {
    pub quant: FileType,
    /// Output folder, created if missing.
    pub out_dir: PathBuf,
    /// Model name (file `<name>.<QUANT>.gguf`); `None`: derived from the source path.
    pub name: Option<String>,
    /// Modelfile SYSTEM prompt.
    pub system: Option<String>,
    /// Modelfile `PARAMETER num_ctx`.
    pub num_ctx: usize,
    /// Replace existing files instead of refusing.
    pub overwrite: bool,
}

impl ExportOptions {
    /// q8_0 into `out_dir`, name from the source, no SYSTEM, num_ctx 2048, no overwriting.
    pub fn new(out_dir: impl Into<PathBuf>) -> ExportOptions {
        ExportOptions {
            quant: FileType::Q8_0,
            out_dir: out_dir.into(),
            name: None,
            system: None,
            num_ctx: 2048,
            overwrite: false,
        }
    }
}

/// What [`export`] wrote.
#[derive(Debug, Clone)]
pub struct ExportReport {
    pub gguf: PathBuf,
    pub modelfile: PathBuf,
    /// GGUF size in bytes.
    pub size: u64,
    pub n_tensors: usize,
    pub quant: FileType,
    /// The name for `ollama create`.
    pub ollama_name: String,
}

impl ExportReport {
    /// The command that imports the export into Ollama.
    pub fn ollama_command(&self) -> String {
        format!("ollama create {} -f {}", self.ollama_name, shell_quote(&self.modelfile.display().to_string()))
    }
}

impl std::fmt::Display for ExportReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "wrote {} ({:.1} MB, {} tensors, {})",
            self.gguf.display(),
            self.size as f64 / 1e6,
            self.n_tensors,
            self.quant
        )?;
        writeln!(f, "wrote {}", self.modelfile.display())?;
        write!(f, "to run it in Ollama:\n  {}", self.ollama_command())
    }
}

pub fn run(args: Args) -> Result<()> {
    let t0 = Instant::now();
    let mut loaded =
        model_llama::load_model(&args.model, DType::F32).with_context(|| format!("loading {}", args.model))?;
    eprintln!("loaded {} in {:.1}s", loaded.path.display(), t0.elapsed().as_secs_f64());
    let mut name = args.name.clone().unwrap_or_else(|| default_name(&args.model, &loaded.path));
    if let Some(dir) = &args.adapter {
        let cfg = trainer::adapter::load_adapter(dir, &mut loaded.model)
            .with_context(|| format!("applying the adapter {}", dir.display()))?;
        eprintln!("merging adapter {} (r {}, alpha {})", dir.display(), cfg.r, cfg.alpha);
        if args.name.is_none() {
            name += "-lora";
        }
    }
    let opts = ExportOptions {
        quant: args.quant,
        name: Some(name),
        system: args.system,
        num_ctx: args.num_ctx,
        overwrite: args.force,
        ..ExportOptions::new(args.out)
    };
    let t1 = Instant::now();
    let report = export(&loaded.model, &loaded.tokenizer, &loaded.path, &opts)?;
    eprintln!("exported in {:.1}s", t1.elapsed().as_secs_f64());
    println!("{report}");
    Ok(())
}

/// Writes `model` (its LoRA adapters merged in f32) with `tokenizer` as a GGUF of
/// `opts.quant` plus an Ollama Modelfile into `opts.out_dir`. `source` is the file or folder
/// the model was loaded from ([`model_llama::LoadedModel::path`]): a `.gguf` source has its
/// tokenizer metadata copied and gives the default name. Errors name the file or folder;
/// nothing is left under a final name that is not complete, and nothing existing is replaced
/// unless `opts.overwrite`.
pub fn export(model: &Llama, tokenizer: &Tokenizer, source: &Path, opts: &ExportOptions) -> Result<ExportReport> {
    let name = opts.name.clone().unwrap_or_else(|| default_name("", source));
    if name.is_empty() || name.contains(|c: char| c.is_whitespace() || "/\\\"".contains(c)) || name.starts_with('.') {
        bail!("model name {name:?}: use letters, digits, '-', '_' and '.' (it becomes a file name)");
    }
    let dir = &opts.out_dir;
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create the output folder {}", dir.display()))?;
    let file_name = format!("{name}.{}.gguf", opts.quant);
    let gguf_path = dir.join(&file_name);
    let modelfile_path = dir.join("Modelfile");
    for p in [&gguf_path, &modelfile_path] {
        if p.exists() && !opts.overwrite {
            bail!("{} already exists: choose another --out or --name, or pass --force to replace it", p.display());
        }
    }
    let text =
        modelfile_text(tokenizer, &file_name, opts).with_context(|| format!("writing {}", modelfile_path.display()))?;

    let is_gguf = source.is_file() && source.extension().is_some_and(|e| e.eq_ignore_ascii_case("gguf"));
    let src = if is_gguf { Some(GgufFile::open(source)?) } else { None };
    // The error names the file and its cause; plain text, as its source is already in it.
    let summary = export_gguf(model, tokenizer, src.as_ref(), &gguf_path, opts.quant, &name)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    write_atomic(&modelfile_path, text.as_bytes()).with_context(|| format!("writing {}", modelfile_path.display()))?;
    Ok(ExportReport {
        gguf: summary.path,
        modelfile: modelfile_path,
        size: summary.size,
        n_tensors: summary.n_tensors,
        quant: opts.quant,
        ollama_name: ollama_name(&name),
    })
}

/// The Modelfile: TEMPLATE and stops from the model's chat template; a model without one
/// (a base model) gets FROM, SYSTEM and num_ctx only, and Ollama passes prompts through as
/// they are.
fn modelfile_text(tokenizer: &Tokenizer, file_name: &str, opts: &ExportOptions) -> Result<String> {
    let system = opts.system.as_deref();
    if tokenizer.chat_template().is_some() {
        let format = ChatFormat::from_tokenizer(tokenizer)?;
        return Ok(modelfile(file_name, &format, system, opts.num_ctx)?);
    }
    eprintln!("note: the model has no chat template; the Modelfile has no TEMPLATE");
    if opts.num_ctx == 0 {
        bail!("num_ctx must be at least 1");
    }
    let mut text = format!("# Ollama Modelfile written by ferrotune (no chat template)\nFROM ./{file_name}\n\n");
    if let Some(s) = system {
        if s.contains("\"\"\"") {
            bail!("the system prompt may not contain \"\"\"");
        }
        text += &format!("SYSTEM \"\"\"{s}\"\"\"\n\n");
    }
    text += &format!("PARAMETER num_ctx {}\n", opts.num_ctx);
    Ok(text)
}

/// Writes `bytes` to `path` through a temporary file in the same folder, renamed into place.
fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut tmp_name = path.file_name().unwrap_or_default().to_os_string();
    tmp_name.push(format!(".{}.tmp", std::process::id()));
    let tmp = path.with_file_name(tmp_name);
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// The model's name from what the user typed (`spec`: a repo id gives its last part) or
/// the loaded path: a HF cache snapshot gives the repo's name, a file its stem without a
/// trailing file type (`SmolLM2-135M-Instruct.Q4_1.gguf` -> `SmolLM2-135M-Instruct`), a
/// folder its name.
pub fn default_name(spec: &str, path: &Path) -> String {
    let base = |p: &Path| p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let in_cache = path.parent().is_some_and(|p| base(p) == "snapshots");
    let name = if !spec.is_empty() && !Path::new(spec).exists() {
        spec.rsplit('/').next().unwrap_or(spec).to_string()
    } else if in_cache {
        let repo = path.parent().and_then(Path::parent).map(base).unwrap_or_default();
        repo.rsplit("--").next().unwrap_or_default().to_string()
    } else if path.is_file() {
        let stem = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
        match stem.rsplit_once('.') {
            Some((head, tail)) if FileType::from_name(tail).is_some() => head.to_string(),
            _ => stem,
        }
    } else {
        base(path)
    };
    if name.is_empty() {
        "model".into()
    } else {
        name
    }
}

/// An Ollama model name: lowercase, characters other than `a-z 0-9 . _ -` replaced by `-`.
fn ollama_name(name: &str) -> String {
    name.to_lowercase().chars().map(|c| if c.is_ascii_alphanumeric() || "._-".contains(c) { c } else { '-' }).collect()
}

/// `s` as one shell word.
fn shell_quote(s: &str) -> String {
    if !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || "/._-+:=,".contains(c)) {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        let gguf = Path::new("../models/SmolLM2-135M-Instruct.Q4_1.gguf");
        assert_eq!(default_name("org/Llama-3-8B", gguf), "Llama-3-8B", "a repo id that is not a path");
        let snapshot = Path::new("/hf/hub/models--unsloth--DeepSeek-R1-Distill-Llama-8B/snapshots/0123abc");
        assert_eq!(default_name("", snapshot), "DeepSeek-R1-Distill-Llama-8B");
        assert_eq!(default_name("", Path::new("/data/my-model")), "my-model");
        assert_eq!(ollama_name("SmolLM2-135M Instruct+lora"), "smollm2-135m-instruct-lora");
        assert_eq!(shell_quote("/tmp/out/Modelfile"), "/tmp/out/Modelfile");
        assert_eq!(shell_quote("/tmp/my out/it's"), "'/tmp/my out/it'\\''s'");
        let file = std::env::temp_dir().join(format!("ferrotune-name-{}.Q8_0.gguf", std::process::id()));
        std::fs::write(&file, "x").unwrap();
        let got = default_name(file.to_str().unwrap(), &file);
        std::fs::remove_file(&file).unwrap();
        assert_eq!(got, format!("ferrotune-name-{}", std::process::id()), "the file type suffix is dropped");
    }
}
