//! `ferrotune train`: LoRA fine-tuning from a TOML run file, every field of which is also a
//! flag (flags override the file). Prints the settings, asks the question before training,
//! logs every optimizer step (the trainer also appends it to `<output_dir>/metrics.jsonl`),
//! saves the PEFT adapter to `<output_dir>/adapter` and asks the question again.
//!
//! Paths in the run file (model, data, template, output_dir, resume) are relative to the
//! current directory, as on the command line.

use super::export::{self, ExportOptions};
use anyhow::{bail, Context, Result};
use engine::{DType, Device};
use gguf::mixes::FileType;
use model_llama::chat::{ChatMessage, ChatTemplate};
use model_llama::generate::{generate, Sampler, SamplingParams};
use model_llama::{Llama, Placement, Tokenizer, PROJECTIONS};
use serde::Deserialize;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;
use trainer::data::{self, DataFormat, DataOptions, PromptTemplate, RawData};
use trainer::{LoraConfig, OptimizerKind, ScheduleKind, TrainConfig, Trainer};

/// The run's settings: each field is a key of the run file and a flag; unset ones take the
/// workflow's defaults.
#[derive(clap::Args, Deserialize, Default, Debug)]
#[serde(deny_unknown_fields)]
pub struct Args {
    /// A TOML run file whose keys are these options' names (with underscores).
    #[arg(long)]
    #[serde(skip)]
    config: Option<PathBuf>,
    /// A Hugging Face model folder, a .gguf file, or a repo id (org/name) in the HF cache.
    #[arg(long)]
    model: Option<String>,
    /// Quantize the seven projections of every layer to NF4 with double-quantized scales.
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    load_in_4bit: Option<bool>,
    /// Where to train: auto (the GPU when there is one), cpu, cuda or cuda:N [default: auto].
    #[arg(long)]
    device: Option<String>,
    /// Weights and activations: auto (bf16 on a GPU, f32 on the CPU), bf16 or f32
    /// [default: auto].
    #[arg(long)]
    dtype: Option<String>,
    /// Training data: JSON lines (or a JSON array) of objects.
    #[arg(long)]
    data: Option<PathBuf>,
    /// How rows become text: a prompt-template file with {instruction}/{input}/{output}
    /// placeholders, `messages` (the model's chat template), `text` (one text field) or
    /// `tokens` (pre-tokenized rows).
    #[arg(long)]
    format: Option<String>,
    /// The field of `text` rows [default: text], or of `tokens` rows (arrays of token ids,
    /// taken as they are) [default: input_ids].
    #[arg(long)]
    text_field: Option<String>,
    /// Rows to use, as a Python slice ("0:200").
    #[arg(long)]
    rows: Option<String>,
    /// Longest row in tokens; longer rows are cut [default: 2048].
    #[arg(long)]
    max_seq_length: Option<usize>,
    /// Concatenate the rows and cut them into max_seq_length-token rows (no padding; rows see
    /// their neighbours) [default: false].
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    packing: Option<bool>,
    /// Train only on the responses (the template's part from {output} on, assistant turns).
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    responses_only: Option<bool>,
    /// LoRA rank [default: 16].
    #[arg(long)]
    lora_r: Option<usize>,
    /// LoRA alpha [default: 16].
    #[arg(long)]
    lora_alpha: Option<f64>,
    /// LoRA dropout (only 0 is supported) [default: 0].
    #[arg(long)]
    lora_dropout: Option<f64>,
    /// Projections that get adapters, comma-separated [default: all seven].
    #[arg(long, value_delimiter = ',')]
    target_modules: Option<Vec<String>>,
    /// rsLoRA scaling alpha / sqrt(r).
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    use_rslora: Option<bool>,
    /// Rows per micro-batch [default: 2].
    #[arg(long)]
    batch_size: Option<usize>,
    /// Micro-batches per optimizer step [default: 4].
    #[arg(long)]
    grad_accum: Option<usize>,
    /// [default: 5].
    #[arg(long)]
    warmup_steps: Option<usize>,
    /// Optimizer steps (else `epochs` passes) [default: 75].
    #[arg(long)]
    max_steps: Option<usize>,
    /// Full passes over the data, when max_steps is not set.
    #[arg(long)]
    epochs: Option<usize>,
    /// Peak learning rate [default: 2e-4].
    #[arg(long)]
    lr: Option<f64>,
    /// linear, cosine or constant [default: linear].
    #[arg(long)]
    schedule: Option<String>,
    /// adamw or adamw8bit [default: adamw8bit].
    #[arg(long)]
    optimizer: Option<String>,
    /// [default: 0.01].
    #[arg(long)]
    weight_decay: Option<f64>,
    /// Clip the gradient norm to this (0 = no clipping) [default: 1.0].
    #[arg(long)]
    max_grad_norm: Option<f64>,
    /// [default: 3407].
    #[arg(long)]
    seed: Option<u64>,
    /// Visit the rows in a seeded random order [default: true].
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    shuffle: Option<bool>,
    /// Recompute each layer's activations in backward [default: true].
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    gradient_checkpointing: Option<bool>,
    /// With gradient checkpointing on a GPU, keep each layer's saved input in pinned host
    /// memory instead of on the device [default: true].
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    offload_activations: Option<bool>,
    /// Write a checkpoint every this many steps (and after the last).
    #[arg(long)]
    checkpoint_every: Option<usize>,
    /// Where metrics.jsonl, checkpoints and the adapter go [default: out].
    #[arg(long)]
    output_dir: Option<PathBuf>,
    /// Also write the model with the adapter merged, as a 16-bit (bf16) Hugging Face folder,
    /// to `<output_dir>/merged`.
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    save_merged: Option<bool>,
    /// After training, also export the merged model as GGUF (q8_0, f16, bf16, q4_k_m, ...)
    /// with an Ollama Modelfile into `<output_dir>/gguf`.
    #[arg(long)]
    export_gguf: Option<String>,
    /// Continue from a checkpoint folder, or `latest` (the newest in output_dir, if any).
    #[arg(long)]
    resume: Option<String>,
    /// Asked before and after training, through the prompt template up to the answer.
    #[arg(long)]
    question: Option<String>,
    /// The template placeholder the question fills [default: instruction].
    #[arg(long)]
    question_field: Option<String>,
    /// The prompt ends after this text (following the question); default: just before the
    /// next placeholder after the question's.
    #[arg(long)]
    answer_marker: Option<String>,
    /// Longest answer, in tokens [default: 200].
    #[arg(long)]
    max_new_tokens: Option<usize>,
}

impl Args {
    /// `self`'s values where set, else `file`'s.
    fn over(self, file: Args) -> Args {
        macro_rules! pick {
            ($($f:ident),*) => { Args { config: self.config, $($f: self.$f.or(file.$f)),* } };
        }
        let epochs_flag = self.epochs.is_some() && self.max_steps.is_none();
        let mut a = pick!(
            model,
            load_in_4bit,
            device,
            dtype,
            data,
            format,
            text_field,
            rows,
            max_seq_length,
            packing,
            responses_only,
            lora_r,
            lora_alpha,
            lora_dropout,
            target_modules,
            use_rslora,
            batch_size,
            grad_accum,
            warmup_steps,
            max_steps,
            epochs,
            lr,
            schedule,
            optimizer,
            weight_decay,
            max_grad_norm,
            seed,
            shuffle,
            gradient_checkpointing,
            offload_activations,
            checkpoint_every,
            output_dir,
            save_merged,
            export_gguf,
            resume,
            question,
            question_field,
            answer_marker,
            max_new_tokens
        );
        // `--epochs` on the command line replaces the file's step count.
        if epochs_flag {
            a.max_steps = None;
        }
        a
    }
}

/// Reads a run file: unknown keys and wrong types are errors naming the key and the file.
pub fn read_config(path: &Path) -> Result<Args> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading the run file {}", path.display()))?;
    toml::from_str(&text).map_err(|e| {
        // The line number and the line itself, which names the key.
        let at = e.span().map_or(String::new(), |s| {
            let start = text[..s.start].rfind('\n').map_or(0, |i| i + 1);
            let end = text[start..].find('\n').map_or(text.len(), |i| start + i);
            format!(" line {} (`{}`)", text[..s.start].matches('\n').count() + 1, text[start..end].trim())
        });
        anyhow::anyhow!("invalid run file {}{at}: {}", path.display(), e.message().trim_end())
    })
}

/// The row format as given by `format`.
enum Format {
    Template(PathBuf),
    Messages,
    Text,
    Tokens,
}

/// Every setting resolved.
struct Run {
    model: String,
    load_in_4bit: bool,
    device: Device,
    dtype: DType,
    data: PathBuf,
    format: Format,
    text_field: String,
    rows: Option<String>,
    max_seq_length: usize,
    packing: bool,
    responses_only: bool,
    lora: LoraConfig,
    train: TrainConfig,
    save_merged: bool,
    export_gguf: Option<FileType>,
    resume: Option<String>,
    question: Option<String>,
    question_field: String,
    answer_marker: Option<String>,
    max_new_tokens: usize,
}

fn resolve(a: Args) -> Result<Run> {
    let model = a.model.context("no model given: set `model` in the run file or pass --model")?;
    if model.ends_with(".gguf") && !Path::new(&model).is_file() {
        bail!("model file {model} does not exist");
    }
    let data = a.data.context("no training data given: set `data` in the run file or pass --data")?;
    if !data.is_file() {
        bail!("data file {} does not exist", data.display());
    }
    let format = match a.format.as_deref().unwrap_or("text") {
        "messages" | "chat" => Format::Messages,
        "text" => Format::Text,
        "tokens" => Format::Tokens,
        path => {
            let p = PathBuf::from(path);
            if !p.is_file() {
                bail!("format: template file {path} does not exist (format is a template file, `messages`, `text` or `tokens`)");
            }
            Format::Template(p)
        }
    };
    let lora = LoraConfig {
        r: a.lora_r.unwrap_or(16),
        alpha: a.lora_alpha.unwrap_or(16.0),
        dropout: a.lora_dropout.unwrap_or(0.0),
        target_modules: a.target_modules.unwrap_or_else(|| PROJECTIONS.iter().map(|s| s.to_string()).collect()),
        use_rslora: a.use_rslora.unwrap_or(false),
    };
    lora.validate().map_err(anyhow::Error::msg)?;
    if lora.dropout != 0.0 {
        bail!("lora_dropout {} is not supported yet (the LoRA forward has no dropout); use 0", lora.dropout);
    }
    let mut train = TrainConfig::default();
    train.batch_size = a.batch_size.unwrap_or(train.batch_size);
    train.grad_accum = a.grad_accum.unwrap_or(train.grad_accum);
    train.warmup_steps = a.warmup_steps.unwrap_or(train.warmup_steps);
    match (a.max_steps, a.epochs) {
        (Some(s), _) => train.max_steps = Some(s),
        (None, Some(e)) => {
            train.max_steps = None;
            train.epochs = e;
        }
        (None, None) => {}
    }
    train.lr = a.lr.unwrap_or(train.lr);
    if let Some(s) = &a.schedule {
        train.schedule = ScheduleKind::parse(s)?;
    }
    if let Some(o) = &a.optimizer {
        train.optimizer = OptimizerKind::parse(o)?;
    }
    train.adamw.weight_decay = a.weight_decay.unwrap_or(train.adamw.weight_decay);
    if let Some(g) = a.max_grad_norm {
        train.max_grad_norm = (g > 0.0).then_some(g);
    }
    train.seed = a.seed.unwrap_or(train.seed);
    train.shuffle = a.shuffle.unwrap_or(train.shuffle);
    train.gradient_checkpointing = a.gradient_checkpointing.unwrap_or(train.gradient_checkpointing);
    train.offload_activations = a.offload_activations.unwrap_or(train.offload_activations);
    train.save_steps = a.checkpoint_every.filter(|&n| n > 0);
    train.output_dir = Some(a.output_dir.unwrap_or_else(|| PathBuf::from("out")));
    train.base_model = Some(model.clone());
    if train.batch_size == 0 || train.grad_accum == 0 {
        bail!("batch_size and grad_accum must be at least 1");
    }
    let device = pick_device(a.device.as_deref().unwrap_or("auto"))?;
    let dtype = match (a.dtype.as_deref().unwrap_or("auto"), device) {
        ("auto", Device::Cpu) | ("f32", _) => DType::F32,
        ("auto", Device::Cuda(_)) | ("bf16", _) => DType::BF16,
        (other, _) => bail!("dtype \"{other}\": expected auto, bf16 or f32 (f16 with loss scaling is not implemented)"),
    };
    if let (DType::BF16, Device::Cuda(i)) = (dtype, device) {
        let (major, minor) = engine::cuda::device(i)?.gpu.compute_capability();
        if major < 8 {
            bail!(
                "this GPU (compute capability {major}.{minor}) has no bf16 arithmetic, and f16 with loss scaling \
                 is not implemented: train with dtype = \"f32\""
            );
        }
    }
    let text_field =
        a.text_field.unwrap_or_else(|| if matches!(format, Format::Tokens) { "input_ids" } else { "text" }.into());
    Ok(Run {
        model,
        load_in_4bit: a.load_in_4bit.unwrap_or(false),
        device,
        dtype,
        data,
        format,
        text_field,
        rows: a.rows,
        max_seq_length: a.max_seq_length.unwrap_or(2048),
        packing: a.packing.unwrap_or(false),
        responses_only: a.responses_only.unwrap_or(false),
        lora,
        train,
        save_merged: a.save_merged.unwrap_or(false),
        export_gguf: match &a.export_gguf {
            Some(q) => Some(q.parse::<FileType>().map_err(|e| anyhow::anyhow!("export_gguf: {e}"))?),
            None => None,
        },
        resume: a.resume,
        question: a.question.filter(|q| !q.trim().is_empty()),
        question_field: a.question_field.unwrap_or_else(|| "instruction".into()),
        answer_marker: a.answer_marker,
        max_new_tokens: a.max_new_tokens.unwrap_or(200),
    })
}

impl Run {
    fn print(&self) {
        let t = &self.train;
        let format = match &self.format {
            Format::Template(p) => format!("template {}", p.display()),
            Format::Messages => "messages (the model's chat template)".into(),
            Format::Text => format!("text (field \"{}\")", self.text_field),
            Format::Tokens => format!("token ids (field \"{}\")", self.text_field),
        };
        let steps = match t.max_steps {
            Some(s) => format!("{s} steps"),
            None => format!("{} epoch(s)", t.epochs),
        };
        println!("ferrotune train");
        println!("  model            {}{}", self.model, if self.load_in_4bit { " (NF4, double quant)" } else { "" });
        println!("  device           {} ({:?})", self.device, self.dtype);
        println!("  data             {} rows {}", self.data.display(), self.rows.as_deref().unwrap_or("all"));
        println!("  format           {format}{}", if self.responses_only { ", responses only" } else { "" });
        println!("  max_seq_length   {}{}", self.max_seq_length, if self.packing { ", packed" } else { "" });
        println!(
            "  lora             r {} alpha {} dropout {}{} on {}",
            self.lora.r,
            self.lora.alpha,
            self.lora.dropout,
            if self.lora.use_rslora { " (rsLoRA)" } else { "" },
            self.lora.target_modules.join(", ")
        );
        println!(
            "  batch            {} x accumulation {} (effective {})",
            t.batch_size,
            t.grad_accum,
            t.batch_size * t.grad_accum
        );
        println!("  steps            {steps}, {} warm-up, lr {:e} {}", t.warmup_steps, t.lr, t.schedule.name());
        println!(
            "  optimizer        {} weight_decay {} max_grad_norm {}",
            t.optimizer.name(),
            t.adamw.weight_decay,
            t.max_grad_norm.map_or("none".into(), |g| g.to_string())
        );
        println!(
            "  seed             {}{}{}",
            t.seed,
            if t.shuffle { ", shuffled" } else { ", file order" },
            match (t.gradient_checkpointing, t.offload_activations && !self.device.is_cpu()) {
                (true, true) => ", gradient checkpointing (layer inputs offloaded to pinned host memory)",
                (true, false) => ", gradient checkpointing",
                (false, _) => "",
            }
        );
        println!(
            "  output_dir       {}{}",
            t.output_dir.as_deref().unwrap_or(Path::new("")).display(),
            t.save_steps.map_or(String::new(), |n| format!(", checkpoint every {n} steps"))
        );
        if let Some(r) = &self.resume {
            println!("  resume           {r}");
        }
        if let Some(q) = &self.question {
            println!("  question         {q}");
        }
        let _ = std::io::stdout().flush();
    }
}

pub fn run(args: Args) -> Result<()> {
    let args = match &args.config {
        Some(path) => {
            let file = read_config(path)?;
            args.over(file)
        }
        None => args,
    };
    let run = resolve(args)?;
    run.print();
    let out_dir = run.train.output_dir.clone().expect("resolve sets output_dir");

    let template = match &run.format {
        Format::Template(p) => Some(PromptTemplate::from_file(p)?),
        _ => None,
    };
    if let (Some(t), Some(_)) = (&template, &run.question) {
        if !t.fields().contains(&run.question_field.as_str()) {
            bail!(
                "question_field \"{}\" is not a placeholder of {} (it has {})",
                run.question_field,
                t.source,
                t.fields().join(", ")
            );
        }
    }
    let raw = data::read_rows(&run.data)?;

    let t0 = Instant::now();
    let place = Placement { device: run.device, dtype: run.dtype, nf4: run.load_in_4bit };
    let loaded = model_llama::load_model_placed(&run.model, place).with_context(|| format!("loading {}", run.model))?;
    let mut model = loaded.model;
    let tok = loaded.tokenizer;
    let model_path = loaded.path;
    println!(
        "loaded {} ({} layers, hidden {}, vocab {}) in {:.1}s{}{}",
        model_path.display(),
        model.config.num_hidden_layers,
        model.config.hidden_size,
        model.config.vocab_size,
        t0.elapsed().as_secs_f64(),
        if run.load_in_4bit { "; projections quantized to NF4" } else { "" },
        gpu_memory(run.device).map_or(String::new(), |m| format!("; {m}")),
    );

    let chat = || -> Result<ChatTemplate> {
        let src = tok.chat_template().context("format = messages: the model has no chat template")?;
        let name = |id: Option<u32>| id.and_then(|i| tok.token_to_str(i)).unwrap_or_default();
        Ok(ChatTemplate::new(src, &name(tok.bos_id()), &name(tok.eos_id()))?)
    };
    let format = match (&run.format, &template) {
        (Format::Template(_), Some(t)) => DataFormat::Template { template: t.clone(), response_field: "output".into() },
        (Format::Messages, _) => DataFormat::Chat(chat()?),
        (Format::Tokens, _) => DataFormat::Tokens { field: run.text_field.clone() },
        _ => DataFormat::Text { field: run.text_field.clone() },
    };
    let opts = DataOptions {
        slice: run.rows.clone(),
        max_seq_len: run.max_seq_length,
        responses_only: run.responses_only,
        append_eos: true,
        packing: run.packing,
    };
    let dataset = data::build_dataset(&raw, &format, &tok, &opts)?;
    let lens: Vec<usize> = dataset.examples.iter().map(|e| e.ids.len()).collect();
    println!(
        "data: {} rows, {} target tokens, {}-{} tokens per row{}{}",
        dataset.len(),
        dataset.n_targets(),
        lens.iter().min().unwrap_or(&0),
        lens.iter().max().unwrap_or(&0),
        if dataset.truncated > 0 {
            format!(", {} cut to {}", dataset.truncated, run.max_seq_length)
        } else {
            "".into()
        },
        if dataset.skipped > 0 { format!(", {} skipped (nothing to train on)", dataset.skipped) } else { "".into() },
    );

    let prompt = match &run.question {
        None => None,
        Some(q) => Some(question_prompt(&run, q, template.as_ref(), &raw, &tok, &chat)?),
    };

    trainer::lora::init(&mut model, &run.lora, run.train.seed)?;
    if let Some((text, p)) = &prompt {
        println!("\n=== prompt ({} tokens) ===\n{text}", p.len());
        println!("\n=== answer before training ===");
        answer(&model, &tok, p, run.max_new_tokens)?;
    }

    let mut cfg = run.train.clone();
    cfg.pad_id = tok.eos_id().unwrap_or(0);
    let mut trainer = Trainer::new(&model, run.lora.clone(), &dataset, cfg)?;
    let mut resumed = false;
    if let Some(r) = &run.resume {
        let dir = if r == "latest" { trainer::latest_checkpoint(&out_dir) } else { Some(PathBuf::from(r)) };
        match dir {
            Some(d) => {
                if !d.is_dir() {
                    bail!("resume: checkpoint folder {} does not exist", d.display());
                }
                trainer.resume_from(&d)?;
                resumed = true;
                println!("resumed from {} at step {}", d.display(), trainer.step());
            }
            None => println!("resume = latest: no checkpoint in {}; starting from step 0", out_dir.display()),
        }
    }
    let metrics = out_dir.join(trainer::train::METRICS_FILE);
    if !resumed && metrics.exists() {
        std::fs::remove_file(&metrics).with_context(|| format!("removing the old {}", metrics.display()))?;
    }
    println!(
        "\ntraining {} steps ({} per epoch), {} trainable LoRA parameters",
        trainer.total_steps(),
        trainer.steps_per_epoch(),
        trainer::named_parameters(&model).iter().map(|(_, t)| t.elem_count()).sum::<usize>()
    );
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    // The first Ctrl-C ends the run after the step under way, with a checkpoint; a second
    // one exits at once.
    ctrlc::set_handler(move || {
        if flag.swap(true, Ordering::SeqCst) {
            std::process::exit(130);
        }
        eprintln!("\nCtrl-C: stopping after this step and writing a checkpoint (Ctrl-C again to quit now)");
    })
    .context("installing the Ctrl-C handler")?;
    trainer.set_stop_flag(stop);
    let bar = progress_bar(trainer.total_steps() as u64, trainer.step() as u64);
    let t1 = Instant::now();
    let logs = trainer.train(|log| {
        let line = log.line();
        // A hidden bar (no terminal) prints nothing, so the line goes to stdout itself.
        if bar.is_hidden() {
            println!("{line}");
            let _ = std::io::stdout().flush();
        } else {
            bar.println(line);
        }
        bar.set_position(log.step as u64);
        bar.set_message(format!("loss {:.4}", log.loss));
    });
    bar.finish_and_clear();
    let logs = logs?;
    let secs = t1.elapsed().as_secs_f64();
    let adapter_dir = out_dir.join("adapter");
    trainer.save_adapter(&adapter_dir)?;
    if let (Some(first), Some(last)) = (logs.first(), logs.last()) {
        println!(
            "trained {} steps in {secs:.1}s: loss {:.4} -> {:.4} ({:+.1}%)",
            logs.len(),
            first.loss,
            last.loss,
            100.0 * (last.loss - first.loss) / first.loss
        );
    }
    println!("adapter saved to {}; metrics in {}", adapter_dir.display(), metrics.display());
    let records = trainer::plot::read_metric_records(&metrics)?;
    let png = out_dir.join("loss.png");
    trainer::plot::write_metrics_png(&png, &records, &format!("ferrotune: {}", run.model))?;
    println!("loss curve: {}", png.display());
    if run.save_merged {
        save_merged(&model, &tok, &model_path, &out_dir.join("merged"))?;
    }
    if let Some(quant) = run.export_gguf {
        let opts = ExportOptions {
            quant,
            name: Some(format!("{}-lora", export::default_name(&run.model, &model_path))),
            overwrite: true,
            ..ExportOptions::new(out_dir.join("gguf"))
        };
        let report = export::export(&model, &tok, &model_path, &opts)?;
        println!("{report}");
    }
    drop(trainer);

    if let Some((_, p)) = &prompt {
        println!("\n=== answer after training ===");
        answer(&model, &tok, p, run.max_new_tokens)?;
    }
    Ok(())
}

/// The question's prompt, formatted as the training rows are: its text and its ids.
fn question_prompt(
    run: &Run,
    question: &str,
    template: Option<&PromptTemplate>,
    raw: &RawData,
    tok: &Tokenizer,
    chat: &dyn Fn() -> Result<ChatTemplate>,
) -> Result<(String, Vec<u32>)> {
    let with_bos = |ids: Vec<u32>| match (tok.add_bos(), tok.bos_id()) {
        (true, Some(b)) => std::iter::once(b).chain(ids).collect(),
        _ => ids,
    };
    let text = match (&run.format, template) {
        (Format::Template(_), Some(t)) => {
            let q = run.question_field.as_str();
            let fields = t.fields();
            // Placeholders before the question take the first row's values (a fixed
            // instruction, say); those after it are left empty and cut off.
            let first = raw.rows.first().and_then(|r| r.value.as_object());
            let pos = fields.iter().position(|f| *f == q).expect("checked in run");
            let before: Vec<&str> = fields[..pos].to_vec();
            let value = |f: &str| {
                if f == q {
                    question.to_string()
                } else if before.contains(&f) {
                    first.and_then(|o| o.get(f)).and_then(|v| v.as_str()).unwrap_or_default().to_string()
                } else {
                    String::new()
                }
            };
            let (full, qpos) = t.render_split(value, q);
            match &run.answer_marker {
                Some(m) => {
                    let from = qpos + question.len();
                    let at = full[from..].find(m.as_str()).with_context(|| {
                        format!("answer_marker {m:?} does not appear after the question in {}", t.source)
                    })?;
                    full[..from + at + m.len()].to_string()
                }
                None => match fields.get(pos + 1) {
                    Some(next) => {
                        let (text, split) = t.render_split(value, next);
                        text[..split].to_string()
                    }
                    None => full,
                },
            }
        }
        (Format::Messages, _) => {
            let t = chat()?;
            let text = t.render(&[ChatMessage::new("user", question)], true)?;
            let ids = tok.encode(&text, false)?;
            return Ok((text, ids));
        }
        _ => question.to_string(),
    };
    let ids = with_bos(tok.encode(&text, false)?);
    Ok((text, ids))
}

/// Greedy answer to `prompt`, streamed to stdout, ending at an end-of-sequence token.
fn answer(model: &Llama, tok: &Tokenizer, prompt: &[u32], max_new_tokens: usize) -> Result<()> {
    let mut sampler = Sampler::new(SamplingParams { temperature: 0.0, top_k: 0, top_p: 1.0, seed: 0 });
    let mut stream = tok.stream(true);
    let mut stdout = std::io::stdout().lock();
    let t = Instant::now();
    let (out, finish) = generate(model, prompt, max_new_tokens, tok.eos_ids(), &mut sampler, |id| {
        if let Ok(Some(piece)) = stream.step(id) {
            let _ = stdout.write_all(piece.as_bytes()).and_then(|_| stdout.flush());
        }
        true
    })?;
    let rest = stream.flush()?.unwrap_or_default();
    let _ = writeln!(stdout, "{rest}");
    drop(stdout);
    eprintln!(
        "({} tokens in {:.1}s, {})",
        out.len(),
        t.elapsed().as_secs_f64(),
        match finish {
            model_llama::generate::Finish::Eos(_) => "ended at end-of-sequence".to_string(),
            _ => format!("stopped at max_new_tokens {max_new_tokens}"),
        }
    );
    Ok(())
}

/// `auto` (the first GPU when one answers, else the CPU), `cpu`, `cuda` or `cuda:N`.
fn pick_device(name: &str) -> Result<Device> {
    Ok(match name {
        "auto" => Device::cuda(0).unwrap_or(Device::Cpu),
        "cpu" => Device::Cpu,
        "cuda" => Device::cuda(0)?,
        other => match other.strip_prefix("cuda:").and_then(|n| n.parse().ok()) {
            Some(n) => Device::cuda(n)?,
            None => bail!("device \"{other}\": expected auto, cpu, cuda or cuda:N"),
        },
    })
}

/// "X GiB in use on <GPU>" for a CUDA device (None on the CPU or when the driver cannot say).
fn gpu_memory(device: Device) -> Option<String> {
    let Device::Cuda(i) = device else { return None };
    let dev = engine::cuda::device(i).ok()?;
    let used = engine::cuda::driver_used_bytes(&dev).ok()?;
    Some(format!("{:.2} GiB in use on {}", gib(used), dev.gpu.name()))
}

fn gib(bytes: usize) -> f64 {
    bytes as f64 / (1u64 << 30) as f64
}

/// A step counter with the elapsed time and an estimate of what is left, drawn on stderr
/// (hidden when stderr is not a terminal; the log lines still print).
fn progress_bar(total: u64, done: u64) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(total);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{bar:30} {pos}/{len} steps [{elapsed_precise} < {eta_precise}] {msg}")
            .expect("valid template"),
    );
    bar.set_position(done);
    bar
}

/// Writes the model with its adapters merged as a bf16 Hugging Face folder at `dir`
/// (replacing an earlier one of this run's output folder).
fn save_merged(model: &Llama, tok: &Tokenizer, source: &Path, dir: &Path) -> Result<()> {
    use model_llama::save_hf::{save_merged_hf, SaveHfOptions, TokenizerFiles};
    let t = Instant::now();
    let tokenizer = match source.is_file() {
        // A GGUF file has no tokenizer files to copy: write them from the loaded tokenizer.
        true => Some(TokenizerFiles::from_tokenizer(tok, tok.to_json()?)),
        false => None,
    };
    let opts = SaveHfOptions { overwrite: true, tokenizer, ..SaveHfOptions::default() };
    let s = save_merged_hf(model, Some(source), dir, &opts)?;
    println!(
        "merged bf16 model written to {} ({} tensors in {} shard(s), {:.2} GB) in {:.1}s",
        s.dir.display(),
        s.n_tensors,
        s.shards.len(),
        s.total_size as f64 / 1e9,
        t.elapsed().as_secs_f64()
    );
    Ok(())
}
