//! The training loop: micro-batches with gradient accumulation, optimizer steps on the LoRA
//! tensors, a learning-rate schedule, one log record per step (also appended to
//! `metrics.jsonl`), checkpoints, and resume.
//!
//! **Loss normalization.** The loss of an optimizer step is the mean cross-entropy over every
//! target token (label != -100 after the causal shift) of all its micro-batches together, as
//! if they were one batch: micro-batch `i`, whose mean loss covers `n_i` targets, is
//! back-propagated with weight `n_i / N`, `N = sum n_i`. So accumulation 4 x batch 2 equals
//! batch 8 (what transformers computes since 4.46 with `num_items_in_batch`).
//!
//! **Data order and randomness.** Epoch `e` visits the rows in a permutation drawn from
//! [`engine::rng::Rng`] seeded with `(seed, e)` (or in file order without shuffling); step `s`
//! takes micro-batches `[k * accum, (k + 1) * accum)` of epoch `s / steps_per_epoch`, with
//! `k = s % steps_per_epoch` (the last step of an epoch takes what is left). Every random
//! choice is a function of the seed and the position, so the RNG state saved in a checkpoint
//! is the seed and the step, and a resumed run replays the uninterrupted one bit for bit.
//!
//! **Checkpoints** (`<output_dir>/checkpoint-<step>/`): the adapter in PEFT format, the
//! optimizer's master weights and moments (`optimizer.safetensors`), and `trainer_state.json`
//! (step, epoch, data position, schedule, RNG seed, the settings a resume must share). A
//! checkpoint is written to `checkpoint-<step>.tmp` and renamed when complete.

use crate::adapter;
use crate::data::{collate, Batch, Dataset};
use crate::lora::{self, LoraConfig};
use crate::optim::{clip_grad_norm, AdamWConfig, Moments, Optimizer, OptimizerKind, ParamState};
use crate::quant8::Blockwise8;
use crate::schedule::{Schedule, ScheduleKind};
use crate::st::{self, Stored};
use crate::{Result, TrainError};
use engine::rng::Rng;
use engine::{ops, DType, Tensor};
use model_llama::{Checkpointing, Llama};
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

pub const METRICS_FILE: &str = "metrics.jsonl";
pub const STATE_FILE: &str = "trainer_state.json";
pub const OPTIMIZER_FILE: &str = "optimizer.safetensors";
const STATE_FORMAT: u64 = 1;

/// Trainer settings. [`TrainConfig::default`] is the workflow's: batch 2, accumulation 4,
/// 75 steps, 5 warm-up steps, lr 2e-4 with linear decay, AdamW 8-bit, weight decay 0.01,
/// gradient clipping at 1.0, seed 3407, gradient checkpointing.
#[derive(Debug, Clone)]
pub struct TrainConfig {
    /// Rows per micro-batch.
    pub batch_size: usize,
    /// Micro-batches per optimizer step.
    pub grad_accum: usize,
    /// Optimizer steps; when `None`, `epochs` full passes over the data.
    pub max_steps: Option<usize>,
    pub epochs: usize,
    pub lr: f64,
    pub schedule: ScheduleKind,
    pub warmup_steps: usize,
    pub optimizer: OptimizerKind,
    pub adamw: AdamWConfig,
    /// Clip the global gradient norm to this value (transformers' `max_grad_norm`).
    pub max_grad_norm: Option<f64>,
    pub seed: u64,
    /// Visit the rows of each epoch in a seeded random order (else in file order).
    pub shuffle: bool,
    /// Recompute each layer's activations in backward instead of keeping them.
    pub gradient_checkpointing: bool,
    /// With checkpointing on a GPU, park each layer's saved input in pinned host memory
    /// (Unsloth's "unsloth" mode); no effect on the CPU.
    pub offload_activations: bool,
    /// Write a checkpoint every this many steps (and after the last step) into `output_dir`.
    pub save_steps: Option<usize>,
    /// Where `metrics.jsonl` and checkpoints go; nothing is written when `None`.
    pub output_dir: Option<PathBuf>,
    /// Id used for padding (its labels are -100, so its value does not matter).
    pub pad_id: u32,
    /// Written into adapter_config.json as `base_model_name_or_path`.
    pub base_model: Option<String>,
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            batch_size: 2,
            grad_accum: 4,
            max_steps: Some(75),
            epochs: 1,
            lr: 2e-4,
            schedule: ScheduleKind::Linear,
            warmup_steps: 5,
            optimizer: OptimizerKind::AdamW8bit { min_8bit_size: OptimizerKind::BNB_MIN_8BIT_SIZE },
            adamw: AdamWConfig::default(),
            max_grad_norm: Some(1.0),
            seed: 3407,
            shuffle: true,
            gradient_checkpointing: true,
            offload_activations: true,
            save_steps: None,
            output_dir: None,
            pad_id: 0,
            base_model: None,
        }
    }
}

/// What one optimizer step did.
#[derive(Debug, Clone, PartialEq)]
pub struct StepLog {
    /// 1-based step number.
    pub step: usize,
    pub total_steps: usize,
    /// Mean loss over the step's target tokens (before the update).
    pub loss: f64,
    /// Learning rate the update used.
    pub lr: f64,
    /// Fractional epoch reached at the end of the step.
    pub epoch: f64,
    /// Global gradient norm before clipping.
    pub grad_norm: f64,
    /// Real (non-padding) input tokens and target tokens of the step.
    pub tokens: usize,
    pub targets: usize,
    pub tokens_per_second: f64,
    pub seconds: f64,
    /// On a GPU: the most bytes held by tensors during the step, and the device memory in
    /// use at its end by the driver's count (tensors, NF4 weights, optimizer states, the
    /// allocator's pool and the CUDA context).
    pub gpu_memory: Option<GpuMemory>,
}

/// Device memory of one step, in bytes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GpuMemory {
    pub peak_tensors: usize,
    pub driver_used: usize,
}

impl StepLog {
    pub fn to_json(&self) -> Value {
        json!({
            "step": self.step,
            "loss": self.loss,
            "learning_rate": self.lr,
            "epoch": self.epoch,
            "grad_norm": self.grad_norm,
            "tokens": self.tokens,
            "target_tokens": self.targets,
            "tokens_per_second": self.tokens_per_second,
            "seconds": self.seconds,
            "peak_gpu_tensor_bytes": self.gpu_memory.map(|m| m.peak_tensors),
            "gpu_used_bytes": self.gpu_memory.map(|m| m.driver_used),
        })
    }

    /// One line for a terminal: step, loss, learning rate, epoch, grad norm, speed, and on a
    /// GPU the peak memory.
    pub fn line(&self) -> String {
        let gib = |b: usize| b as f64 / (1u64 << 30) as f64;
        format!(
            "step {}/{} | loss {:.4} | lr {:.3e} | epoch {:.2} | grad_norm {:.4} | {:.0} tok/s{}",
            self.step,
            self.total_steps,
            self.loss,
            self.lr,
            self.epoch,
            self.grad_norm,
            self.tokens_per_second,
            self.gpu_memory.map_or(String::new(), |m| format!(
                " | peak {:.2} GiB tensors, {:.2} GiB in use",
                gib(m.peak_tensors),
                gib(m.driver_used)
            ))
        )
    }
}

/// Sum over micro-batches of the weighted loss, and each parameter's gradient summed over
/// them (on the parameter's device): micro-batch `i` counts with weight `n_i / N` (see the
/// module docs). A parameter the loss does not reach gets a zero gradient.
pub fn accumulate_gradients(
    model: &Llama,
    params: &[(String, Tensor)],
    batches: &[Batch],
    checkpoint: impl Into<Checkpointing>,
) -> Result<(f64, Vec<Tensor>)> {
    let checkpoint = checkpoint.into();
    let total: usize = batches.iter().map(|b| b.n_targets).sum();
    if total == 0 {
        return Err(TrainError::Data("a step's micro-batches hold no target token".into()));
    }
    let mut grads: Vec<Option<Tensor>> = vec![None; params.len()];
    let mut loss_sum = 0f64;
    for b in batches {
        if b.n_targets == 0 {
            continue;
        }
        let w = b.n_targets as f64 / total as f64;
        let loss = model.loss(&b.ids, &b.labels, checkpoint)?;
        let l = loss.to_scalar::<f32>()? as f64;
        if !l.is_finite() {
            return Err(TrainError::NonFinite { step: 0, what: "loss", value: l, last_checkpoint: None });
        }
        loss_sum += l * w;
        let weighted = if batches.len() == 1 { loss } else { ops::scale(&loss, w)? };
        let store = weighted.backward()?;
        for ((_, p), acc) in params.iter().zip(grads.iter_mut()) {
            if let Some(g) = store.get(p) {
                let g = ops::cast(g, DType::F32)?;
                *acc = Some(match acc.take() {
                    None => g,
                    Some(a) => ops::add(&a, &g)?,
                });
            }
        }
    }
    let grads = grads
        .into_iter()
        .zip(params)
        .map(|(g, (_, p))| match g {
            Some(g) => Ok(g),
            None => Tensor::zeros(p.shape(), DType::F32, p.device()),
        })
        .collect::<engine::Result<Vec<Tensor>>>()?;
    Ok((loss_sum, grads))
}

/// The row order of epoch `epoch`: a seeded Fisher-Yates permutation, or `0..n`.
pub fn epoch_order(n: usize, seed: u64, epoch: usize, shuffle: bool) -> Vec<usize> {
    let mut order: Vec<usize> = (0..n).collect();
    if shuffle {
        let mut rng = Rng::new(seed ^ (epoch as u64 + 1).wrapping_mul(0xA24B_AED4_963E_E407));
        for i in (1..n).rev() {
            let j = (rng.next_u64() % (i as u64 + 1)) as usize;
            order.swap(i, j);
        }
    }
    order
}

/// Runs training of the adapters attached to a model over a data set.
pub struct Trainer<'a> {
    model: &'a Llama,
    lora: LoraConfig,
    data: &'a Dataset,
    cfg: TrainConfig,
    params: Vec<(String, Tensor)>,
    optimizer: Optimizer,
    schedule: Schedule,
    /// Completed optimizer steps.
    step: usize,
    micro_per_epoch: usize,
    steps_per_epoch: usize,
    /// Row order of the epoch `order.0`.
    order: (usize, Vec<usize>),
    last_checkpoint: Option<PathBuf>,
    /// Set (by a Ctrl-C handler, say) to end the run after the current step.
    stop: Option<Arc<AtomicBool>>,
}

impl<'a> Trainer<'a> {
    /// A trainer for the adapters of `model` (attached with `lora`, e.g. by [`lora::init`]).
    pub fn new(model: &'a Llama, lora: LoraConfig, data: &'a Dataset, cfg: TrainConfig) -> Result<Trainer<'a>> {
        lora.validate().map_err(TrainError::Config)?;
        if lora.dropout != 0.0 {
            return Err(TrainError::Config(format!(
                "lora_dropout {} is not supported yet (the model's LoRA forward has no dropout); use 0",
                lora.dropout
            )));
        }
        if cfg.batch_size == 0 || cfg.grad_accum == 0 {
            return Err(TrainError::Config("batch_size and grad_accum must be at least 1".into()));
        }
        if data.is_empty() {
            return Err(TrainError::Data(format!("{}: the data set is empty", data.source)));
        }
        if !(cfg.lr.is_finite() && cfg.lr >= 0.0) {
            return Err(TrainError::Config(format!("learning rate must be finite and non-negative, got {}", cfg.lr)));
        }
        let vocab = model.config.vocab_size;
        if let Some((i, id)) = data
            .examples
            .iter()
            .enumerate()
            .find_map(|(i, e)| e.ids.iter().find(|&&x| x as usize >= vocab).map(|&x| (i, x)))
        {
            return Err(TrainError::Data(format!(
                "{}: example {i} holds token id {id}, outside the model's vocabulary of {vocab}",
                data.source
            )));
        }
        let params = lora::named_parameters(model);
        if params.is_empty() {
            return Err(TrainError::Config("the model has no LoRA adapters attached; nothing to train".into()));
        }
        let micro_per_epoch = data.len().div_ceil(cfg.batch_size);
        let steps_per_epoch = micro_per_epoch.div_ceil(cfg.grad_accum);
        let total = cfg.max_steps.unwrap_or(cfg.epochs * steps_per_epoch);
        if total == 0 {
            return Err(TrainError::Config("no steps to run (max_steps or epochs is 0)".into()));
        }
        let schedule =
            Schedule { kind: cfg.schedule, base_lr: cfg.lr, warmup_steps: cfg.warmup_steps, total_steps: total };
        let optimizer = Optimizer::new(cfg.optimizer, cfg.adamw, &params)?;
        let order = (0, epoch_order(data.len(), cfg.seed, 0, cfg.shuffle));
        Ok(Trainer {
            model,
            lora,
            data,
            cfg,
            params,
            optimizer,
            schedule,
            step: 0,
            micro_per_epoch,
            steps_per_epoch,
            order,
            last_checkpoint: None,
            stop: None,
        })
    }

    /// Completed steps.
    pub fn step(&self) -> usize {
        self.step
    }
    pub fn total_steps(&self) -> usize {
        self.schedule.total_steps
    }
    pub fn steps_per_epoch(&self) -> usize {
        self.steps_per_epoch
    }
    pub fn optimizer(&self) -> &Optimizer {
        &self.optimizer
    }
    pub fn config(&self) -> &TrainConfig {
        &self.cfg
    }
    pub fn last_checkpoint(&self) -> Option<&Path> {
        self.last_checkpoint.as_deref()
    }

    /// The rows (indices into the data set) of each micro-batch of step `s` (0-based).
    pub fn micro_batches(&mut self, s: usize) -> Vec<Vec<usize>> {
        let epoch = s / self.steps_per_epoch;
        if self.order.0 != epoch {
            self.order = (epoch, epoch_order(self.data.len(), self.cfg.seed, epoch, self.cfg.shuffle));
        }
        let k = s % self.steps_per_epoch;
        let first = k * self.cfg.grad_accum;
        let last = ((k + 1) * self.cfg.grad_accum).min(self.micro_per_epoch);
        let order = &self.order.1;
        (first..last)
            .map(|m| order[m * self.cfg.batch_size..((m + 1) * self.cfg.batch_size).min(order.len())].to_vec())
            .collect()
    }

    fn checkpointing(&self) -> Checkpointing {
        match (self.cfg.gradient_checkpointing, self.cfg.offload_activations) {
            (false, _) => Checkpointing::Off,
            (true, false) => Checkpointing::Recompute,
            (true, true) => Checkpointing::Offload,
        }
    }

    /// When `flag` becomes true, [`Trainer::train_until`] finishes the step under way, writes a
    /// checkpoint (when there is an output_dir) and returns [`TrainError::Interrupted`].
    pub fn set_stop_flag(&mut self, flag: Arc<AtomicBool>) {
        self.stop = Some(flag);
    }

    /// Runs one optimizer step and returns its record (not written anywhere).
    pub fn train_step(&mut self) -> Result<StepLog> {
        let gpu = match self.params.first().map(|(_, p)| p.device()) {
            Some(engine::Device::Cuda(i)) => Some(engine::cuda::device(i)?),
            _ => None,
        };
        if gpu.is_some() {
            engine::cuda::reset_peak();
        }
        let start = Instant::now();
        let s = self.step;
        let groups = self.micro_batches(s);
        let batches = groups
            .iter()
            .map(|rows| {
                let ex: Vec<_> = rows.iter().map(|&r| &self.data.examples[r]).collect();
                collate(&ex, self.cfg.pad_id)
            })
            .collect::<Result<Vec<Batch>>>()?;
        let nonfinite = |what, value| TrainError::NonFinite {
            step: s + 1,
            what,
            value,
            last_checkpoint: self.last_checkpoint.clone(),
        };
        let (loss, grads) = match accumulate_gradients(self.model, &self.params, &batches, self.checkpointing()) {
            Err(TrainError::NonFinite { what, value, .. }) => return Err(nonfinite(what, value)),
            Err(e) if e.is_out_of_memory() => {
                return Err(TrainError::OutOfMemory {
                    step: s + 1,
                    batch_size: self.cfg.batch_size,
                    longest: batches.iter().map(|b| b.ids.dim(1)).max().unwrap_or(0),
                    checkpointing: self.cfg.gradient_checkpointing,
                    detail: e.to_string(),
                })
            }
            other => other?,
        };
        let (grad_norm, grad_scale) = clip_grad_norm(&grads, self.cfg.max_grad_norm)?;
        if !grad_norm.is_finite() {
            return Err(nonfinite("the gradient norm", grad_norm));
        }
        let lr = self.schedule.lr(s);
        self.optimizer.step(&grads, grad_scale, lr)?;
        drop(grads);
        self.step += 1;
        let gpu_memory = match &gpu {
            Some(dev) => {
                // Waits for the step's last kernels, so that the time below is the step's.
                let driver_used = engine::cuda::driver_used_bytes(dev)?;
                dev.gpu.synchronize().map_err(|e| engine::Error::Msg(format!("synchronizing the GPU: {e}")))?;
                Some(GpuMemory { peak_tensors: engine::cuda::tensor_bytes().1, driver_used })
            }
            None => None,
        };
        let seconds = start.elapsed().as_secs_f64();
        let tokens: usize = batches.iter().map(|b| b.n_tokens).sum();
        Ok(StepLog {
            step: self.step,
            total_steps: self.total_steps(),
            loss,
            lr,
            epoch: self.step as f64 / self.steps_per_epoch as f64,
            grad_norm,
            tokens,
            targets: batches.iter().map(|b| b.n_targets).sum(),
            tokens_per_second: if seconds > 0.0 { tokens as f64 / seconds } else { 0.0 },
            seconds,
            gpu_memory,
        })
    }

    /// Trains to the last step; see [`Trainer::train_until`].
    pub fn train(&mut self, on_log: impl FnMut(&StepLog)) -> Result<Vec<StepLog>> {
        let total = self.total_steps();
        self.train_until(total, on_log)
    }

    /// Runs steps until `stop` steps are complete (at most the total): each record goes to
    /// `on_log` and to `metrics.jsonl`; a checkpoint is written every `save_steps` steps and
    /// after the last step. A non-finite loss or gradient norm stops training with an error
    /// naming the step and the last checkpoint (which stays as it was).
    pub fn train_until(&mut self, stop: usize, mut on_log: impl FnMut(&StepLog)) -> Result<Vec<StepLog>> {
        let stop = stop.min(self.total_steps());
        let mut logs = Vec::new();
        if let Some(dir) = &self.cfg.output_dir {
            std::fs::create_dir_all(dir).map_err(|e| TrainError::io(dir, e))?;
        }
        while self.step < stop {
            if self.stop.as_ref().is_some_and(|f| f.load(Ordering::SeqCst)) {
                let checkpoint = match &self.cfg.output_dir {
                    Some(_) if self.last_checkpoint_step() != Some(self.step) => Some(self.save_checkpoint()?),
                    Some(_) => self.last_checkpoint.clone(),
                    None => None,
                };
                return Err(TrainError::Interrupted { step: self.step, checkpoint });
            }
            let log = self.train_step()?;
            if let Some(dir) = &self.cfg.output_dir {
                append_metrics(&dir.join(METRICS_FILE), &log)?;
            }
            on_log(&log);
            logs.push(log);
            let due = self.cfg.save_steps.and_then(|n| self.step.checked_rem(n)) == Some(0)
                || self.step == self.total_steps();
            if due && self.cfg.output_dir.is_some() {
                self.save_checkpoint()?;
            }
        }
        Ok(logs)
    }

    fn last_checkpoint_step(&self) -> Option<usize> {
        let name = self.last_checkpoint.as_ref()?.file_name()?.to_str()?.to_string();
        name.strip_prefix("checkpoint-")?.parse().ok()
    }

    /// Writes the adapter (the optimizer's f32 masters) to `dir` in PEFT format.
    pub fn save_adapter(&self, dir: &Path) -> Result<()> {
        let states = self.optimizer.states()?;
        adapter::write_adapter_files(dir, &self.lora, self.cfg.base_model.as_deref(), master_tensors(&states))
    }

    /// Writes `<output_dir>/checkpoint-<step>/` (through a `.tmp` folder and a rename) and
    /// returns its path.
    pub fn save_checkpoint(&mut self) -> Result<PathBuf> {
        let out = self
            .cfg
            .output_dir
            .clone()
            .ok_or_else(|| TrainError::Config("no output_dir to write checkpoints into".into()))?;
        let path = out.join(format!("checkpoint-{}", self.step));
        self.save_checkpoint_to(&path)?;
        self.last_checkpoint = Some(path.clone());
        Ok(path)
    }

    /// Writes a checkpoint folder at `path` (through `path.tmp` and a rename).
    pub fn save_checkpoint_to(&self, path: &Path) -> Result<()> {
        let tmp = st::tmp_path(path);
        if tmp.exists() {
            std::fs::remove_dir_all(&tmp).map_err(|e| TrainError::io(&tmp, e))?;
        }
        std::fs::create_dir_all(&tmp).map_err(|e| TrainError::io(&tmp, e))?;
        let states = self.optimizer.states()?;
        adapter::write_adapter_files(&tmp, &self.lora, self.cfg.base_model.as_deref(), master_tensors(&states))?;
        self.write_optimizer(&states, &tmp.join(OPTIMIZER_FILE))?;
        let state = serde_json::to_string_pretty(&self.state_json()).expect("JSON value serializes");
        std::fs::write(tmp.join(STATE_FILE), state).map_err(|e| TrainError::io(&tmp.join(STATE_FILE), e))?;
        if path.exists() {
            std::fs::remove_dir_all(path).map_err(|e| TrainError::io(path, e))?;
        }
        std::fs::rename(&tmp, path).map_err(|e| TrainError::io(path, e))
    }

    fn state_json(&self) -> Value {
        let s = self.step;
        let epoch = s / self.steps_per_epoch;
        json!({
            "format": STATE_FORMAT,
            "global_step": s,
            "total_steps": self.total_steps(),
            "epoch": s as f64 / self.steps_per_epoch as f64,
            "data": {
                "source": self.data.source,
                "rows": self.data.len(),
                "target_tokens": self.data.n_targets(),
                "batch_size": self.cfg.batch_size,
                "grad_accum": self.cfg.grad_accum,
                "steps_per_epoch": self.steps_per_epoch,
                "shuffle": self.cfg.shuffle,
                "epoch": epoch,
                "next_micro_batch": (s % self.steps_per_epoch) * self.cfg.grad_accum,
            },
            "rng": {
                "seed": self.cfg.seed,
                "kind": "engine::rng::Rng (SplitMix64), one generator per epoch seeded from (seed, epoch)",
                "epoch": epoch,
            },
            "scheduler": {
                "kind": self.schedule.kind.name(),
                "base_lr": self.schedule.base_lr,
                "warmup_steps": self.schedule.warmup_steps,
                "total_steps": self.schedule.total_steps,
                "next_step": s,
                "next_lr": self.schedule.lr(s),
            },
            "optimizer": {
                "kind": self.optimizer.kind.name(),
                "min_8bit_size": match self.optimizer.kind {
                    OptimizerKind::AdamW8bit { min_8bit_size } => Some(min_8bit_size),
                    OptimizerKind::AdamW => None,
                },
                "step": self.optimizer.step,
                "beta1": self.cfg.adamw.beta1,
                "beta2": self.cfg.adamw.beta2,
                "eps": self.cfg.adamw.eps,
                "weight_decay": self.cfg.adamw.weight_decay,
                "max_grad_norm": self.cfg.max_grad_norm,
            },
        })
    }

    fn write_optimizer(&self, states: &[ParamState], path: &Path) -> Result<()> {
        let mut t = BTreeMap::new();
        for s in states {
            let n = &s.name;
            t.insert(format!("{n}.master"), Stored::f32(&s.shape, s.master.clone()));
            match &s.moments {
                Moments::F32 { m, v } => {
                    t.insert(format!("{n}.exp_avg"), Stored::f32(&s.shape, m.clone()));
                    t.insert(format!("{n}.exp_avg_sq"), Stored::f32(&s.shape, v.clone()));
                }
                Moments::Q8 { m, v } => {
                    t.insert(format!("{n}.state1"), Stored::u8(&s.shape, m.codes.clone()));
                    t.insert(format!("{n}.absmax1"), Stored::f32(&[m.absmax.len()], m.absmax.clone()));
                    t.insert(format!("{n}.state2"), Stored::u8(&s.shape, v.codes.clone()));
                    t.insert(format!("{n}.absmax2"), Stored::f32(&[v.absmax.len()], v.absmax.clone()));
                }
            }
        }
        // One metadata key: safetensors writes a map's keys in no fixed order, and checkpoint
        // files should be byte-identical across identical runs.
        let info = json!({"kind": self.optimizer.kind.name(), "step": self.optimizer.step});
        let meta = HashMap::from([("ferrotune_optimizer".to_string(), info.to_string())]);
        st::write(path, &t, meta)
    }

    /// Continues from the checkpoint folder `dir`: restores the adapter values, the optimizer
    /// state and the step, after checking that the data and settings are the ones the
    /// checkpoint was trained with. `metrics.jsonl` keeps only the records up to that step.
    pub fn resume_from(&mut self, dir: &Path) -> Result<()> {
        let bad = |m: String| TrainError::Checkpoint(format!("{}: {m}", dir.display()));
        let state_path = dir.join(STATE_FILE);
        let text = std::fs::read_to_string(&state_path).map_err(|e| TrainError::io(&state_path, e))?;
        let state: Value = serde_json::from_str(&text).map_err(|e| bad(format!("{STATE_FILE}: invalid JSON: {e}")))?;
        if state["format"].as_u64() != Some(STATE_FORMAT) {
            return Err(bad(format!("{STATE_FILE} has an unknown format")));
        }
        let expected = self.state_json();
        for (section, key) in [
            ("data", "rows"),
            ("data", "target_tokens"),
            ("data", "batch_size"),
            ("data", "grad_accum"),
            ("data", "shuffle"),
            ("rng", "seed"),
            ("scheduler", "kind"),
            ("scheduler", "base_lr"),
            ("scheduler", "warmup_steps"),
            ("scheduler", "total_steps"),
            ("optimizer", "kind"),
            ("optimizer", "min_8bit_size"),
            ("optimizer", "beta1"),
            ("optimizer", "beta2"),
            ("optimizer", "eps"),
            ("optimizer", "weight_decay"),
            ("optimizer", "max_grad_norm"),
        ] {
            let (was, now) = (&state[section][key], &expected[section][key]);
            if was != now {
                return Err(bad(format!(
                    "it was trained with {section}.{key} = {was}, this run has {now}; resume with the same data and settings"
                )));
            }
        }
        let step = state["global_step"].as_u64().ok_or_else(|| bad(format!("{STATE_FILE}: no global_step")))? as usize;
        if step > self.total_steps() {
            return Err(bad(format!("its step {step} is past this run's {} steps", self.total_steps())));
        }
        let (cfg, _) = adapter::read_adapter_config(dir)?;
        if cfg.r != self.lora.r || cfg.alpha != self.lora.alpha || cfg.use_rslora != self.lora.use_rslora {
            return Err(bad(format!(
                "its adapter has r = {}, alpha = {}, rslora = {}; this run has r = {}, alpha = {}, rslora = {}",
                cfg.r, cfg.alpha, cfg.use_rslora, self.lora.r, self.lora.alpha, self.lora.use_rslora
            )));
        }
        self.read_optimizer(&dir.join(OPTIMIZER_FILE))?;
        self.step = step;
        self.last_checkpoint = Some(dir.to_path_buf());
        if let Some(out) = &self.cfg.output_dir {
            truncate_metrics(&out.join(METRICS_FILE), step)?;
        }
        Ok(())
    }

    fn read_optimizer(&mut self, path: &Path) -> Result<()> {
        let (mut t, meta) = st::read(path)?;
        let bad = |m: String| TrainError::Checkpoint(format!("{}: {m}", path.display()));
        let info: Value = meta
            .get("ferrotune_optimizer")
            .and_then(|s| serde_json::from_str(s).ok())
            .ok_or_else(|| bad("no ferrotune_optimizer metadata".into()))?;
        if info["kind"].as_str() != Some(self.optimizer.kind.name()) {
            return Err(bad(format!("optimizer kind {}, this run uses {}", info["kind"], self.optimizer.kind.name())));
        }
        let opt_step = info["step"].as_u64().ok_or_else(|| bad("no optimizer step".into()))?;
        let mut masters = Vec::new();
        let mut moments = Vec::new();
        for s in &self.optimizer.states()? {
            let n = &s.name;
            let (shape, master) = st::take_f32(&mut t, &format!("{n}.master"), path)?;
            if shape != s.shape {
                return Err(bad(format!("{n} has shape {shape:?}, the model's adapter {:?}", s.shape)));
            }
            masters.push(master);
            let len = s.master.len();
            let m = match &s.moments {
                Moments::F32 { .. } => Moments::F32 {
                    m: st::take_f32(&mut t, &format!("{n}.exp_avg"), path)?.1,
                    v: st::take_f32(&mut t, &format!("{n}.exp_avg_sq"), path)?.1,
                },
                Moments::Q8 { .. } => Moments::Q8 {
                    m: Blockwise8 {
                        codes: st::take_u8(&mut t, &format!("{n}.state1"), path)?,
                        absmax: st::take_f32(&mut t, &format!("{n}.absmax1"), path)?.1,
                        signed: true,
                    },
                    v: Blockwise8 {
                        codes: st::take_u8(&mut t, &format!("{n}.state2"), path)?,
                        absmax: st::take_f32(&mut t, &format!("{n}.absmax2"), path)?.1,
                        signed: false,
                    },
                },
            };
            let ok = match &m {
                Moments::F32 { m, v } => m.len() == len && v.len() == len,
                Moments::Q8 { m, v } => {
                    m.codes.len() == len
                        && v.codes.len() == len
                        && m.absmax.len() == Blockwise8::zeros(len, true).absmax.len()
                        && v.absmax.len() == m.absmax.len()
                }
            };
            if !ok {
                return Err(bad(format!("the moments of {n} do not have {len} values")));
            }
            moments.push(m);
        }
        self.optimizer.set_masters(masters)?;
        self.optimizer.set_moments(moments)?;
        self.optimizer.step = opt_step;
        Ok(())
    }
}

/// The adapter tensors (the optimizer's f32 masters) by name.
fn master_tensors(states: &[ParamState]) -> BTreeMap<String, Stored> {
    states.iter().map(|s| (s.name.clone(), Stored::f32(&s.shape, s.master.clone()))).collect()
}

/// The checkpoint folder of the highest step in `output_dir`, if any.
pub fn latest_checkpoint(output_dir: &Path) -> Option<PathBuf> {
    let entries = std::fs::read_dir(output_dir).ok()?;
    entries
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let step: usize = name.strip_prefix("checkpoint-")?.parse().ok()?;
            e.path().join(STATE_FILE).is_file().then_some((step, e.path()))
        })
        .max_by_key(|(s, _)| *s)
        .map(|(_, p)| p)
}

fn append_metrics(path: &Path, log: &StepLog) -> Result<()> {
    let mut f =
        std::fs::OpenOptions::new().create(true).append(true).open(path).map_err(|e| TrainError::io(path, e))?;
    writeln!(f, "{}", log.to_json()).map_err(|e| TrainError::io(path, e))
}

/// Keeps the records of `metrics.jsonl` up to `step`.
fn truncate_metrics(path: &Path, step: usize) -> Result<()> {
    let Ok(text) = std::fs::read_to_string(path) else { return Ok(()) };
    let kept: String = text
        .lines()
        .filter(|l| {
            serde_json::from_str::<Value>(l).ok().and_then(|v| v["step"].as_u64()).is_some_and(|s| s as usize <= step)
        })
        .map(|l| format!("{l}\n"))
        .collect();
    st::write_atomic(path, kept.as_bytes())
}
