//! Checkpoints and resume: a run interrupted after a checkpoint and resumed from it gives the
//! uninterrupted run's losses, metrics and adapter bit for bit; a NaN loss stops training with
//! an error naming the step and keeps the last good checkpoint.

mod common;

use common::{base_model, random_examples};
use engine::Tensor;
use model_llama::Llama;
use std::path::Path;
use trainer::data::Dataset;
use trainer::lora::{self, LoraConfig};
use trainer::optim::OptimizerKind;
use trainer::{latest_checkpoint, named_parameters, ScheduleKind, TrainConfig, TrainError, Trainer};

fn fresh_model() -> (Llama, LoraConfig) {
    let (mut model, _, _) = base_model("gqa_llama3");
    let lora = LoraConfig::all_projections(4, 8.0);
    lora::init(&mut model, &lora, 3407).unwrap();
    (model, lora)
}

fn data() -> Dataset {
    // 10 rows, batch 2, accumulation 2: 5 micro-batches and 3 steps per epoch (the last step
    // of an epoch has one micro-batch); 7 steps cross two epoch boundaries.
    Dataset::from_examples(random_examples(10, 97, 16, 21), "random rows").unwrap()
}

fn config(dir: &Path, optimizer: OptimizerKind) -> TrainConfig {
    TrainConfig {
        batch_size: 2,
        grad_accum: 2,
        max_steps: Some(7),
        lr: 2e-2,
        schedule: ScheduleKind::Linear,
        warmup_steps: 2,
        optimizer,
        max_grad_norm: Some(1.0),
        seed: 3407,
        shuffle: true,
        gradient_checkpointing: true,
        save_steps: Some(3),
        output_dir: Some(dir.to_path_buf()),
        base_model: Some("golden/gqa_llama3".into()),
        ..TrainConfig::default()
    }
}

fn metrics_losses(dir: &Path) -> Vec<(u64, u64)> {
    std::fs::read_to_string(dir.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            (v["step"].as_u64().unwrap(), v["loss"].as_f64().unwrap().to_bits())
        })
        .collect()
}

fn check_resume(optimizer: OptimizerKind) {
    let data = data();
    let tmp = tempfile::tempdir().unwrap();
    let (a_dir, b_dir) = (tmp.path().join("a"), tmp.path().join("b"));

    // Uninterrupted.
    let (model, lora) = fresh_model();
    let mut t = Trainer::new(&model, lora.clone(), &data, config(&a_dir, optimizer)).unwrap();
    assert_eq!(t.steps_per_epoch(), 3);
    let full = t.train(|l| println!("full:    {}", l.line())).unwrap();
    assert_eq!(full.len(), 7);
    let full_weights: Vec<Vec<f32>> = named_parameters(&model).iter().map(|(_, p)| p.to_vec_f32().unwrap()).collect();

    // Interrupted after step 5 (checkpoint-3 written), then a fresh process resumes.
    {
        let (model, lora) = fresh_model();
        let mut t = Trainer::new(&model, lora, &data, config(&b_dir, optimizer)).unwrap();
        let part = t.train_until(5, |l| println!("first:   {}", l.line())).unwrap();
        assert_eq!(part.len(), 5);
        for (a, b) in part.iter().zip(&full) {
            assert_eq!(a.loss.to_bits(), b.loss.to_bits(), "step {}: runs differ before any resume", a.step);
        }
    }
    let ckpt = latest_checkpoint(&b_dir).unwrap();
    assert!(ckpt.ends_with("checkpoint-3"), "{}", ckpt.display());
    assert!(!b_dir.join("checkpoint-3.tmp").exists());
    for f in ["adapter_config.json", "adapter_model.safetensors", "optimizer.safetensors", "trainer_state.json"] {
        assert!(ckpt.join(f).is_file(), "checkpoint lacks {f}");
    }
    let state: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(ckpt.join("trainer_state.json")).unwrap()).unwrap();
    assert_eq!(state["global_step"], 3);
    assert_eq!(state["data"]["epoch"], 1);
    assert_eq!(state["data"]["next_micro_batch"], 0);
    assert_eq!(state["rng"]["seed"], 3407);
    assert_eq!(state["scheduler"]["next_step"], 3);

    let (model, lora) = fresh_model();
    let mut t = Trainer::new(&model, lora, &data, config(&b_dir, optimizer)).unwrap();
    t.resume_from(&ckpt).unwrap();
    assert_eq!(t.step(), 3);
    let rest = t.train(|l| println!("resumed: {}", l.line())).unwrap();
    assert_eq!(rest.len(), 4);
    for (a, b) in rest.iter().zip(&full[3..]) {
        assert_eq!(a.step, b.step);
        assert_eq!(a.loss.to_bits(), b.loss.to_bits(), "step {}: resumed loss {} vs {}", a.step, a.loss, b.loss);
        assert_eq!(a.lr.to_bits(), b.lr.to_bits());
        assert_eq!(a.grad_norm.to_bits(), b.grad_norm.to_bits());
        assert_eq!(a.epoch, b.epoch);
    }
    let weights: Vec<Vec<f32>> = named_parameters(&model).iter().map(|(_, p)| p.to_vec_f32().unwrap()).collect();
    assert!(weights == full_weights, "adapter after resume differs from the uninterrupted one");
    // metrics.jsonl holds steps 1..7 once each, with the uninterrupted losses.
    assert_eq!(metrics_losses(&b_dir), metrics_losses(&a_dir));
    // The final checkpoints are identical files (adapter and optimizer state).
    for f in ["adapter_model.safetensors", "optimizer.safetensors", "adapter_config.json"] {
        let (x, y) = (
            std::fs::read(a_dir.join("checkpoint-7").join(f)).unwrap(),
            std::fs::read(b_dir.join("checkpoint-7").join(f)).unwrap(),
        );
        assert!(x == y, "checkpoint-7/{f} differs");
    }
}

#[test]
fn resume_is_bit_identical_adamw() {
    check_resume(OptimizerKind::AdamW);
}

#[test]
fn resume_is_bit_identical_adamw_8bit() {
    check_resume(OptimizerKind::AdamW8bit { min_8bit_size: 0 });
}

#[test]
fn resume_with_other_settings_is_refused() {
    let data = data();
    let tmp = tempfile::tempdir().unwrap();
    let (model, lora) = fresh_model();
    let mut t = Trainer::new(&model, lora, &data, config(tmp.path(), OptimizerKind::AdamW)).unwrap();
    t.train_until(3, |_| {}).unwrap();
    let ckpt = latest_checkpoint(tmp.path()).unwrap();

    let (model, lora) = fresh_model();
    let mut cfg = config(tmp.path(), OptimizerKind::AdamW);
    cfg.batch_size = 1;
    let mut t = Trainer::new(&model, lora.clone(), &data, cfg).unwrap();
    let e = t.resume_from(&ckpt).unwrap_err().to_string();
    assert!(e.contains("batch_size") && e.contains("checkpoint-3"), "{e}");

    let mut t =
        Trainer::new(&model, lora, &data, config(tmp.path(), OptimizerKind::AdamW8bit { min_8bit_size: 0 })).unwrap();
    let e = t.resume_from(&ckpt).unwrap_err().to_string();
    assert!(e.contains("optimizer.kind"), "{e}");
}

#[test]
fn nan_loss_stops_with_step_and_keeps_last_checkpoint() {
    let data = data();
    let tmp = tempfile::tempdir().unwrap();
    let (model, lora) = fresh_model();
    let mut cfg = config(tmp.path(), OptimizerKind::AdamW8bit { min_8bit_size: 0 });
    cfg.save_steps = Some(2);
    let mut t = Trainer::new(&model, lora, &data, cfg).unwrap();
    t.train_until(2, |_| {}).unwrap();
    let good = tmp.path().join("checkpoint-2");
    let before = std::fs::read(good.join("adapter_model.safetensors")).unwrap();

    // Poison one adapter value: the next forward yields a NaN loss.
    let (_, a) = &named_parameters(&model)[0];
    a.write_slice(0, 0, &Tensor::from_vec(vec![f32::NAN; a.dim(1)], &[1, a.dim(1)]).unwrap()).unwrap();
    let err = t.train(|_| {}).unwrap_err();
    assert!(matches!(err, TrainError::NonFinite { step: 3, .. }), "{err:?}");
    let msg = err.to_string();
    println!("{msg}");
    assert!(msg.contains("step 3") && msg.contains("NaN") && msg.contains("checkpoint-2"), "{msg}");
    assert_eq!(t.step(), 2);
    assert_eq!(latest_checkpoint(tmp.path()).unwrap(), good);
    assert_eq!(std::fs::read(good.join("adapter_model.safetensors")).unwrap(), before);
    // metrics.jsonl has the two good steps only.
    assert_eq!(metrics_losses(tmp.path()).len(), 2);
}

/// A stop request (what Ctrl-C sets) ends the run after the step under way with a checkpoint
/// of that step, from which a resumed run finishes as the uninterrupted one does.
#[test]
fn stop_flag_checkpoints_and_resumes() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    let data = data();
    let tmp = tempfile::tempdir().unwrap();
    let (a_dir, b_dir) = (tmp.path().join("a"), tmp.path().join("b"));
    let (model, lora) = fresh_model();
    let full = Trainer::new(&model, lora, &data, config(&a_dir, OptimizerKind::AdamW)).unwrap().train(|_| {}).unwrap();

    let (model, lora) = fresh_model();
    let mut t = Trainer::new(&model, lora.clone(), &data, config(&b_dir, OptimizerKind::AdamW)).unwrap();
    let flag = Arc::new(AtomicBool::new(false));
    t.set_stop_flag(flag.clone());
    let err = t
        .train(|l| {
            if l.step == 2 {
                flag.store(true, Ordering::SeqCst);
            }
        })
        .unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, TrainError::Interrupted { step: 2, .. }), "{msg}");
    assert!(msg.contains("checkpoint-2") && msg.contains("--resume latest"), "{msg}");
    assert_eq!(latest_checkpoint(&b_dir).unwrap(), b_dir.join("checkpoint-2"));
    drop(t);

    let (model, lora) = fresh_model();
    let mut t = Trainer::new(&model, lora, &data, config(&b_dir, OptimizerKind::AdamW)).unwrap();
    t.resume_from(&b_dir.join("checkpoint-2")).unwrap();
    let rest = t.train(|_| {}).unwrap();
    assert_eq!(rest.first().unwrap().step, 3);
    for (a, b) in rest.iter().zip(&full[2..]) {
        assert_eq!(a.loss.to_bits(), b.loss.to_bits(), "step {} differs after the interrupted resume", a.step);
    }
}
