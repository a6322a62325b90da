//! Gradient accumulation: 4 micro-batches of 2 rows equal one batch of 8 rows (variable
//! lengths, padding, masked prompts), in the loss, the LoRA gradients and the updated weights,
//! because every micro-batch is weighted by its share of the step's target tokens.

mod common;

use common::{golden, max_abs_diff, random_examples};
use trainer::data::{collate, Dataset};
use trainer::optim::OptimizerKind;
use trainer::{accumulate_gradients, named_parameters, ScheduleKind, TrainConfig, Trainer};

fn rel(a: &[f32], b: &[f32]) -> f32 {
    let m = b.iter().fold(0f32, |m, x| m.max(x.abs())).max(1e-12);
    max_abs_diff(a, b) / m
}

#[test]
fn four_by_two_equals_eight_in_loss_and_gradients() {
    let g = golden("gqa_llama3");
    let vocab = g.model.config.vocab_size as u32;
    let rows = random_examples(8, vocab, 14, 11);
    let lens: Vec<usize> = rows.iter().map(|r| r.ids.len()).collect();
    assert!(lens.iter().min() != lens.iter().max(), "rows should differ in length: {lens:?}");
    let params = named_parameters(&g.model);

    let all: Vec<_> = rows.iter().collect();
    let big = collate(&all, 0).unwrap();
    let (loss8, grads8) = accumulate_gradients(&g.model, &params, &[big], false).unwrap();

    let micro: Vec<_> = rows.chunks(2).map(|c| collate(&c.iter().collect::<Vec<_>>(), 0).unwrap()).collect();
    let (loss4x2, grads4x2) = accumulate_gradients(&g.model, &params, &micro, true).unwrap();

    println!("batch 8: loss {loss8}; 4 x 2: loss {loss4x2}");
    assert!((loss8 - loss4x2).abs() < 1e-5, "{loss8} vs {loss4x2}");
    let mut worst = 0f32;
    for ((name, _), (a, b)) in params.iter().zip(grads4x2.iter().zip(&grads8)) {
        let e = rel(&a.to_vec_f32().unwrap(), &b.to_vec_f32().unwrap());
        worst = worst.max(e);
        assert!(e < 1e-5, "gradient of {name}: max|Δ|/max|ref| = {e}");
    }
    println!("worst gradient difference {worst:.2e} over {} tensors", params.len());

    // The naive average of per-micro-batch means differs: the test can fail.
    let means: Vec<f64> = micro
        .iter()
        .map(|b| g.model.loss(&b.ids, &b.labels, false).unwrap().to_scalar::<f32>().unwrap() as f64)
        .collect();
    let naive = means.iter().sum::<f64>() / means.len() as f64;
    println!("naive mean of micro-batch means: {naive}");
    assert!((naive - loss8).abs() > 1e-3, "the rows should make per-micro-batch averaging differ");
}

fn run(batch_size: usize, grad_accum: usize) -> (Vec<f64>, Vec<Vec<f32>>) {
    let g = golden("gqa_llama3");
    let rows = random_examples(16, g.model.config.vocab_size as u32, 14, 5);
    let data = Dataset::from_examples(rows, "random rows").unwrap();
    let cfg = TrainConfig {
        batch_size,
        grad_accum,
        max_steps: Some(4),
        lr: 5e-3,
        schedule: ScheduleKind::Linear,
        warmup_steps: 1,
        optimizer: OptimizerKind::AdamW,
        max_grad_norm: Some(1.0),
        shuffle: true,
        gradient_checkpointing: false,
        ..TrainConfig::default()
    };
    let mut t = Trainer::new(&g.model, g.lora.clone(), &data, cfg).unwrap();
    let losses = t.train(|_| {}).unwrap().iter().map(|l| l.loss).collect();
    let weights = named_parameters(&g.model).iter().map(|(_, p)| p.to_vec_f32().unwrap()).collect();
    (losses, weights)
}

/// Whole training runs: 4 steps of 4 x 2 equal 4 steps of 1 x 8 (same shuffled rows per step),
/// in each step's loss and in the weights after the updates.
#[test]
fn accumulated_training_equals_large_batch_training() {
    let (l8, w8) = run(8, 1);
    let (l2, w2) = run(2, 4);
    println!("1 x 8: {l8:?}\n4 x 2: {l2:?}");
    for (a, b) in l2.iter().zip(&l8) {
        assert!((a - b).abs() < 1e-5, "{a} vs {b}");
    }
    let worst = w2.iter().zip(&w8).map(|(a, b)| rel(a, b)).fold(0f32, f32::max);
    let moved = w8
        .iter()
        .zip(named_parameters(&golden("gqa_llama3").model))
        .map(|(w, (_, p))| rel(w, &p.to_vec_f32().unwrap()))
        .fold(0f32, f32::max);
    println!("updated weights differ by {worst:.2e} (max|Δ|/max|w|); training moved them by {moved:.2e}");
    assert!(worst < 1e-5);
    assert!(moved > 1e-3);
}
