//! `ferrotune bench step`: one QLoRA training step (forward + backward) of a random-init model
//! of a given architecture on the GPU: NF4 (double-quantized) frozen base in bf16 compute,
//! LoRA on all seven projections, per-layer checkpointing. Prints time, tokens/s and memory.

use anyhow::{bail, Context, Result};
use engine::rng::Rng;
use engine::{DType, Device, Tensor};
use half::bf16;
use model_llama::{Checkpointing, Llama, LlamaConfig, WeightSource, PROJECTIONS};
use rayon::prelude::*;
use std::collections::HashMap;
use std::time::Instant;

#[derive(clap::Args)]
pub struct Args {
    /// What to measure (only `step` so far).
    what: String,
    /// A Hugging Face config.json of the architecture (weights are random).
    #[arg(long)]
    config: std::path::PathBuf,
    /// Use only this many decoder layers (default: the config's).
    #[arg(long)]
    layers: Option<usize>,
    #[arg(long, default_value_t = 2048)]
    seq: usize,
    #[arg(long, default_value_t = 2)]
    batch: usize,
    #[arg(long, default_value_t = 16)]
    rank: usize,
    /// Park each layer's saved input in pinned host memory (offloaded checkpointing).
    #[arg(long)]
    offload: bool,
    /// Timed steps after one warm-up step.
    #[arg(long, default_value_t = 2)]
    steps: usize,
}

/// Random bf16 weights, generated on demand from the tensor's name (normal(0, 0.02) as the
/// baseline kit's `create` step; norms 1), in the shapes the config implies.
struct RandomWeights(HashMap<String, Vec<usize>>);

impl WeightSource for RandomWeights {
    fn get(&self, name: &str) -> model_llama::Result<Tensor> {
        let shape =
            self.0.get(name).ok_or_else(|| model_llama::LoadError::Invalid(format!("no random weight for {name}")))?;
        let n: usize = shape.iter().product();
        if shape.len() == 1 {
            return Ok(Tensor::from_vec(vec![bf16::ONE; n], shape)?);
        }
        let seed = name.bytes().fold(3407u64, |s, b| s.wrapping_mul(31).wrapping_add(b as u64));
        let mut data = vec![bf16::ZERO; n];
        data.par_chunks_mut(1 << 16).enumerate().for_each(|(k, chunk)| {
            let mut rng = Rng::new(seed ^ (k as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
            chunk.iter_mut().for_each(|x| *x = bf16::from_f64(rng.normal() * 0.02));
        });
        Ok(Tensor::from_vec(data, shape)?)
    }
    fn contains(&self, name: &str) -> bool {
        self.0.contains_key(name)
    }
}

pub fn run(args: Args) -> Result<()> {
    if args.what != "step" {
        bail!("bench {}: expected `step`", args.what);
    }
    let dev = Device::cuda(0)?;
    let mut config = LlamaConfig::from_file(&args.config)?;
    if let Some(n) = args.layers {
        config.num_hidden_layers = n;
    }
    let t0 = Instant::now();
    let mut model =
        Llama::load(config.clone(), &RandomWeights(config.weight_shapes().into_iter().collect()), DType::BF16)?;
    for i in 0..model.layers.len() {
        let layer = model.layer_mut(i).context("model shared")?;
        for p in PROJECTIONS {
            layer.projection_mut(p).expect("known projection").quantize_nf4(true)?;
        }
    }
    model.to_device(dev, DType::BF16)?;
    let lora = trainer::LoraConfig::all_projections(args.rank, args.rank as f64);
    trainer::lora::init(&mut model, &lora, 3407)?;
    // LoRA masters stay f32 on the device; the forward casts them to bf16.
    for i in 0..model.layers.len() {
        let layer = model.layer_mut(i).context("model shared")?;
        for p in PROJECTIONS {
            let l = layer.projection_mut(p).expect("known projection").lora.as_mut().context("adapter")?;
            l.a = engine::ops::cast(&l.a.detach(), DType::F32)?.to_device(dev)?.into_var();
            l.b = engine::ops::cast(&l.b.detach(), DType::F32)?.to_device(dev)?.into_var();
        }
    }
    let cuda = engine::cuda::device(0)?;
    cuda.gpu.synchronize().map_err(|e| anyhow::anyhow!("{e}"))?;
    eprintln!(
        "built {} layers (NF4 + LoRA r{}) in {:.1}s; {:.2} GiB in use on {}",
        model.layers.len(),
        args.rank,
        t0.elapsed().as_secs_f64(),
        gib(engine::cuda::driver_used_bytes(&cuda)?),
        cuda.gpu.name()
    );

    let tokens = args.batch * args.seq;
    let mut rng = Rng::new(1);
    let ids: Vec<u32> = (0..tokens).map(|_| (rng.next_u64() % config.vocab_size as u64) as u32).collect();
    let input = Tensor::from_vec(ids.clone(), &[args.batch, args.seq])?;
    let labels = Tensor::from_vec(ids.iter().map(|&i| i as i32).collect::<Vec<i32>>(), &[args.batch, args.seq])?;
    let mut times = Vec::new();
    for step in 0..=args.steps {
        engine::cuda::reset_peak();
        let t = Instant::now();
        let checkpointing = if args.offload { Checkpointing::Offload } else { Checkpointing::Recompute };
        let loss = model.loss(&input, &labels, checkpointing)?;
        let grads = loss.backward()?;
        cuda.gpu.synchronize().map_err(|e| anyhow::anyhow!("{e}"))?;
        let secs = t.elapsed().as_secs_f64();
        let (_, peak) = engine::cuda::tensor_bytes();
        eprintln!(
            "step {step}{}: loss {:.4}, {} LoRA gradients, {:.3}s, {:.0} tokens/s, peak tensor memory {:.2} GiB, driver {:.2} GiB",
            if step == 0 { " (warm-up)" } else { "" },
            loss.to_scalar::<f32>()?,
            grads.len(),
            secs,
            tokens as f64 / secs,
            gib(peak),
            gib(engine::cuda::driver_used_bytes(&cuda)?),
        );
        if step > 0 {
            times.push(secs);
        }
    }
    times.sort_by(f64::total_cmp);
    let median = times[times.len() / 2];
    println!(
        "bench step: {} layers, batch {} x seq {}, LoRA r{}: median {:.3}s per forward+backward, {:.0} tokens/s on {}",
        model.layers.len(),
        args.batch,
        args.seq,
        args.rank,
        median,
        tokens as f64 / median,
        cuda.gpu.name()
    );
    Ok(())
}

fn gib(bytes: usize) -> f64 {
    bytes as f64 / (1u64 << 30) as f64
}
