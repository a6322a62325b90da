//! `ferrotune generate`: answer a prompt with a model, streaming the text to stdout.
//!
//! On the CPU the model runs in f32. On a GPU (`--device cuda`, or `auto` where one is present)
//! the weights are read in bf16, the seven projections of every layer optionally quantized to
//! NF4 (`--nf4`, bitsandbytes' double-quantized format; decode then multiplies through the
//! fused NF4 GEMV), everything moved to the device, and the KV cache allocated there in bf16.

use anyhow::{bail, Context, Result};
use engine::{DType, Device};
use model_llama::chat::{ChatMessage, ChatTemplate};
use model_llama::generate::{generate, Finish, Sampler, SamplingParams, StopMatcher};
use model_llama::Placement;
use std::io::Write;
use std::time::Instant;

#[derive(clap::Args)]
pub struct Args {
    /// A Hugging Face model folder, a .gguf file, or a repo id (org/name) in the HF cache.
    #[arg(long)]
    model: String,
    /// The prompt text.
    #[arg(long)]
    prompt: String,
    /// Wrap the prompt as a user message in the model's own chat template.
    #[arg(long)]
    chat: bool,
    /// A system message (with --chat).
    #[arg(long)]
    system: Option<String>,
    #[arg(long, default_value_t = 256)]
    max_new_tokens: usize,
    /// 0 = greedy.
    #[arg(long, default_value_t = 0.0)]
    temperature: f32,
    /// Keep the k most likely tokens when sampling (0 = all).
    #[arg(long, default_value_t = 0)]
    top_k: usize,
    /// Nucleus sampling threshold (1 = off).
    #[arg(long, default_value_t = 1.0)]
    top_p: f32,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Stop when this text appears (repeatable); the stop text is not printed.
    #[arg(long)]
    stop: Vec<String>,
    /// cpu, cuda, or auto (cuda where a GPU is present, else cpu).
    #[arg(long, default_value = "auto")]
    device: String,
    /// Quantize the seven projections of every layer to NF4 (double-quantized, as bitsandbytes'
    /// load_in_4bit) before generating.
    #[arg(long)]
    nf4: bool,
    /// A PEFT LoRA adapter folder (adapter_config.json + adapter_model.safetensors), as
    /// `ferrotune train` writes to <output_dir>/adapter, applied to the model.
    #[arg(long)]
    adapter: Option<std::path::PathBuf>,
}

/// The device `--device` names; `auto` falls back to the CPU where no GPU can be opened (and
/// says why in the second value, reported once the model has loaded).
fn pick_device(name: &str) -> Result<(Device, Option<String>)> {
    match name {
        "cpu" => Ok((Device::Cpu, None)),
        "cuda" => Ok((Device::cuda(0)?, None)),
        "auto" => Ok(Device::cuda(0).map_or_else(|e| (Device::Cpu, Some(e.to_string())), |d| (d, None))),
        other => bail!("--device {other}: expected cpu, cuda or auto"),
    }
}

pub fn run(args: Args) -> Result<()> {
    if args.top_p <= 0.0 || args.top_p > 1.0 {
        bail!("--top-p {}: expected a value in (0, 1]", args.top_p);
    }
    let (device, no_gpu) = pick_device(&args.device)?;
    let t0 = Instant::now();
    // f32 on the CPU (its reference precision); bf16 on the GPU. The weights are quantized
    // (with --nf4) and moved layer by layer as they are read.
    let dtype = if device.is_cpu() { DType::F32 } else { DType::BF16 };
    let place = Placement { device, dtype, nf4: args.nf4 };
    let mut loaded =
        model_llama::load_model_placed(&args.model, place).with_context(|| format!("loading {}", args.model))?;
    let on = match device {
        Device::Cuda(i) => {
            let cuda = engine::cuda::device(i)?;
            let used = engine::cuda::driver_used_bytes(&cuda)? as f64 / (1u64 << 30) as f64;
            format!(" onto {} ({used:.2} GiB in use)", cuda.gpu.name())
        }
        Device::Cpu => String::new(),
    };
    let how = if args.nf4 { ", NF4 projections" } else { "" };
    eprintln!("loaded {}{on} in {:.1}s ({dtype:?}{how})", loaded.path.display(), t0.elapsed().as_secs_f64());
    if let Some(why) = no_gpu {
        eprintln!("generating on the CPU (no GPU: {why})");
    }
    if let Some(dir) = &args.adapter {
        // Attached adapters follow the model's device (f32 masters on a GPU).
        let cfg = trainer::adapter::load_adapter(dir, &mut loaded.model)
            .with_context(|| format!("applying the adapter {}", dir.display()))?;
        eprintln!(
            "applied adapter {} (r {}, alpha {}, on {})",
            dir.display(),
            cfg.r,
            cfg.alpha,
            cfg.target_modules.join(", ")
        );
    }
    let tok = &loaded.tokenizer;

    let text = if args.chat {
        let template = tok.chat_template().context("--chat: the model has no chat template")?;
        let name = |id: Option<u32>| id.and_then(|i| tok.token_to_str(i)).unwrap_or_default();
        let t = ChatTemplate::new(template, &name(tok.bos_id()), &name(tok.eos_id()))?;
        let mut messages = Vec::new();
        if let Some(s) = &args.system {
            messages.push(ChatMessage::new("system", s.clone()));
        }
        messages.push(ChatMessage::new("user", args.prompt.clone()));
        t.render(&messages, true)?
    } else {
        args.prompt.clone()
    };
    // A chat template writes its own BOS; plain prompts get the tokenizer's default.
    let ids = tok.encode(&text, !args.chat)?;

    let mut sampler = Sampler::new(SamplingParams {
        temperature: args.temperature,
        top_k: args.top_k,
        top_p: args.top_p,
        seed: args.seed,
    });
    let mut stream = tok.stream(true);
    let mut stops = StopMatcher::new(args.stop.clone());
    let mut stdout = std::io::stdout().lock();
    let mut failure = None;
    let mut first_token_at = None;
    let t1 = Instant::now();
    let (out, finish) = generate(&loaded.model, &ids, args.max_new_tokens, tok.eos_ids(), &mut sampler, |id| {
        first_token_at.get_or_insert_with(Instant::now);
        let piece = match stream.step(id) {
            Ok(p) => p.unwrap_or_default(),
            Err(e) => {
                failure = Some(e);
                return false;
            }
        };
        let (show, stop) = stops.push(&piece);
        let _ = stdout.write_all(show.as_bytes()).and_then(|_| stdout.flush());
        !stop
    })?;
    if let Some(e) = failure {
        return Err(e.into());
    }
    if finish != Finish::Stopped {
        let rest = stream.flush()?.unwrap_or_default();
        let (show, _) = stops.push(&rest);
        let tail = stops.finish();
        let _ = write!(stdout, "{show}{tail}");
    }
    let _ = writeln!(stdout);
    let prefill = first_token_at.map_or(t1.elapsed(), |t| t - t1).as_secs_f64();
    let decode = first_token_at.map_or(0.0, |t| t.elapsed().as_secs_f64());
    eprintln!(
        "prompt {} tokens in {prefill:.2}s ({:.1} tokens/s); generated {} tokens in {decode:.2}s ({:.1} tokens/s); stop: {finish:?}",
        ids.len(),
        ids.len() as f64 / prefill,
        out.len(),
        out.len().saturating_sub(1) as f64 / decode.max(1e-9),
    );
    Ok(())
}
