//! The training loop's bookkeeping: epochs and data order, the learning rate each step uses,
//! the log records and metrics.jsonl, the workflow's defaults, bf16 models with f32 masters,
//! and settings errors.

mod common;

use common::{base_model, golden, random_examples};
use std::collections::BTreeMap;
use trainer::data::Dataset;
use trainer::lora::{self, LoraConfig};
use trainer::optim::OptimizerKind;
use trainer::schedule::Schedule;
use trainer::train::epoch_order;
use trainer::{named_parameters, ScheduleKind, TrainConfig, Trainer};

#[test]
fn workflow_defaults() {
    let c = TrainConfig::default();
    assert_eq!((c.batch_size, c.grad_accum, c.max_steps, c.warmup_steps), (2, 4, Some(75), 5));
    assert_eq!(c.lr, 2e-4);
    assert_eq!(c.schedule, ScheduleKind::Linear);
    assert_eq!(c.optimizer, OptimizerKind::AdamW8bit { min_8bit_size: 4096 });
    assert_eq!(c.adamw.weight_decay, 0.01);
    assert_eq!(c.seed, 3407);
    assert_eq!(c.max_grad_norm, Some(1.0));
    assert!(c.gradient_checkpointing);
    assert_eq!(OptimizerKind::parse("adamw_8bit").unwrap(), c.optimizer);
    assert_eq!(OptimizerKind::parse("adamw_torch").unwrap(), OptimizerKind::AdamW);
    assert!(OptimizerKind::parse("sgd").unwrap_err().to_string().contains("unknown optimizer \"sgd\""));
    assert!(ScheduleKind::parse("poly").unwrap_err().to_string().contains("\"poly\""));
}

#[test]
fn each_epoch_visits_every_row_once() {
    let g = golden("tied");
    // 11 rows, batch 2, accumulation 4: 6 micro-batches (the last holds one row), 2 steps per
    // epoch (the second with 2 micro-batches).
    let data = Dataset::from_examples(random_examples(11, 61, 8, 3), "rows").unwrap();
    let cfg = TrainConfig { max_steps: None, epochs: 3, ..TrainConfig::default() };
    let mut t = Trainer::new(&g.model, g.lora.clone(), &data, cfg).unwrap();
    assert_eq!(t.steps_per_epoch(), 2);
    assert_eq!(t.total_steps(), 6);
    let mut orders = Vec::new();
    for epoch in 0..3 {
        let a = t.micro_batches(2 * epoch);
        let b = t.micro_batches(2 * epoch + 1);
        assert_eq!(a.len(), 4);
        assert_eq!(b.len(), 2);
        assert_eq!(b[1].len(), 1);
        let rows: Vec<usize> = a.iter().chain(&b).flatten().copied().collect();
        let mut sorted = rows.clone();
        sorted.sort();
        assert_eq!(sorted, (0..11).collect::<Vec<_>>(), "epoch {epoch}");
        orders.push(rows);
    }
    assert_ne!(orders[0], orders[1], "epochs should be shuffled differently");
    assert_eq!(epoch_order(11, 3407, 1, true), orders[1]);
    assert_eq!(epoch_order(5, 1, 0, false), vec![0, 1, 2, 3, 4]);
}

#[test]
fn log_records_and_metrics_file() {
    let g = golden("gqa_llama3");
    let data = Dataset::from_examples(random_examples(8, 97, 10, 4), "rows").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cfg = TrainConfig {
        max_steps: Some(4),
        warmup_steps: 2,
        lr: 1e-3,
        grad_accum: 2,
        optimizer: OptimizerKind::AdamW,
        output_dir: Some(dir.path().to_path_buf()),
        ..TrainConfig::default()
    };
    let mut t = Trainer::new(&g.model, g.lora.clone(), &data, cfg).unwrap();
    let mut lines = Vec::new();
    let logs = t.train(|l| lines.push(l.line())).unwrap();
    let sched = Schedule { kind: ScheduleKind::Linear, base_lr: 1e-3, warmup_steps: 2, total_steps: 4 };
    for (i, l) in logs.iter().enumerate() {
        assert_eq!(l.step, i + 1);
        assert_eq!(l.lr, sched.lr(i));
        assert_eq!(l.epoch, (i + 1) as f64 / 2.0);
        assert!(l.loss.is_finite() && l.grad_norm > 0.0 && l.tokens > 0 && l.targets > 0);
    }
    assert_eq!(logs[0].lr, 0.0);
    assert!(
        lines[1].starts_with("step 2/4 | loss ") && lines[1].contains("| lr 5.000e-4 | epoch 1.00 | grad_norm "),
        "{}",
        lines[1]
    );
    let text = std::fs::read_to_string(dir.path().join("metrics.jsonl")).unwrap();
    let recs: Vec<serde_json::Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(recs.len(), 4);
    for (r, l) in recs.iter().zip(&logs) {
        for key in
            ["step", "loss", "learning_rate", "epoch", "grad_norm", "tokens", "target_tokens", "tokens_per_second"]
        {
            assert!(r.get(key).is_some(), "metrics record lacks {key}: {r}");
        }
        assert_eq!(r["loss"].as_f64().unwrap(), l.loss);
    }
    // The last step always writes a checkpoint; the adapter in it is the trained one.
    let last = dir.path().join("checkpoint-4");
    assert!(last.join("adapter_model.safetensors").is_file());
    let (mut fresh, _, _) = base_model("gqa_llama3");
    trainer::load_adapter(&last, &mut fresh).unwrap();
    let now: BTreeMap<String, Vec<f32>> =
        named_parameters(&g.model).into_iter().map(|(n, p)| (n, p.to_vec_f32().unwrap())).collect();
    let loaded: BTreeMap<String, Vec<f32>> =
        named_parameters(&fresh).into_iter().map(|(n, p)| (n, p.to_vec_f32().unwrap())).collect();
    assert_eq!(now, loaded);
}

#[test]
fn bf16_model_keeps_f32_masters() {
    let (mut model, st, meta) = base_model("gqa_llama3");
    drop(model);
    let config = model_llama::LlamaConfig::from_json(&meta["config"]).unwrap();
    model = model_llama::Llama::load(config, &st, engine::DType::BF16).unwrap();
    let lcfg = LoraConfig::all_projections(4, 8.0);
    lora::init(&mut model, &lcfg, 3407).unwrap();
    assert!(named_parameters(&model).iter().all(|(_, p)| p.dtype() == engine::DType::BF16));
    let data = Dataset::from_examples(random_examples(4, 97, 10, 8), "rows").unwrap();
    let cfg = TrainConfig { max_steps: Some(3), lr: 1e-2, warmup_steps: 0, grad_accum: 1, ..TrainConfig::default() };
    let mut t = Trainer::new(&model, lcfg, &data, cfg).unwrap();
    let logs = t.train(|l| println!("bf16: {}", l.line())).unwrap();
    assert!(logs.iter().all(|l| l.loss.is_finite()));
    let states = t.optimizer().states().unwrap();
    for (s, (_, p)) in states.iter().zip(named_parameters(&model)) {
        let stored = p.to_vec_f32().unwrap();
        for (m, v) in s.master.iter().zip(&stored) {
            assert_eq!(
                half::bf16::from_f32(*m).to_f32(),
                *v,
                "{}: the parameter is its master rounded to bf16",
                s.name
            );
        }
    }
    assert!(states.iter().any(|s| s.name.ends_with("lora_B.weight") && s.master.iter().any(|&x| x != 0.0)));
}

#[test]
fn settings_errors() {
    let g = golden("tied");
    let data = Dataset::from_examples(random_examples(4, 61, 8, 1), "rows").unwrap();
    let err = |cfg: TrainConfig, lora: LoraConfig| {
        Trainer::new(&g.model, lora, &data, cfg).err().expect("should fail").to_string()
    };
    let e = err(TrainConfig { batch_size: 0, ..TrainConfig::default() }, g.lora.clone());
    assert!(e.contains("batch_size"), "{e}");
    let e = err(TrainConfig { max_steps: Some(0), ..TrainConfig::default() }, g.lora.clone());
    assert!(e.contains("no steps"), "{e}");
    let e = err(TrainConfig { lr: f64::NAN, ..TrainConfig::default() }, g.lora.clone());
    assert!(e.contains("learning rate"), "{e}");
    let e = err(TrainConfig::default(), LoraConfig { dropout: 0.1, ..g.lora.clone() });
    assert!(e.contains("lora_dropout"), "{e}");
    let big = Dataset::from_examples(random_examples(2, 500, 8, 1), "big ids").unwrap();
    let e = Trainer::new(&g.model, g.lora.clone(), &big, TrainConfig::default()).err().unwrap().to_string();
    assert!(e.contains("outside the model's vocabulary of 61"), "{e}");
    let (bare, _, _) = base_model("tied");
    let e = Trainer::new(&bare, g.lora.clone(), &data, TrainConfig::default()).err().unwrap().to_string();
    assert!(e.contains("no LoRA adapters"), "{e}");
    assert!(Dataset::from_examples(vec![], "none").unwrap_err().to_string().contains("empty"));
}
