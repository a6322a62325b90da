//! Shared helpers of the trainer tests: the golden fixtures of `tests/fixtures/` (built by
//! `scripts/make_golden.py` with PyTorch + transformers + peft) and small data sets.
#![allow(dead_code)]

use engine::{DType, Tensor};
use model_llama::{Llama, LlamaConfig, SafetensorsDir};
use std::collections::HashMap;
use std::path::PathBuf;
use trainer::data::Example;
use trainer::{attach, LoraConfig};

pub fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(format!("../tests/fixtures/golden_{name}.safetensors"))
}

pub struct Golden {
    pub model: Llama,
    pub st: SafetensorsDir,
    pub meta: HashMap<String, String>,
    pub lora: LoraConfig,
    pub ids: Tensor,
    pub labels: Tensor,
}

impl Golden {
    /// The fixture's AdamW settings (see [`adamw_settings`]).
    pub fn adamw(&self) -> (f64, trainer::AdamWConfig) {
        adamw_settings(&serde_json::from_str(&self.meta["adamw"]).unwrap())
    }
    pub fn reference(&self, name: &str) -> Vec<f32> {
        self.st.get(name).unwrap().to_vec_f32().unwrap()
    }
    /// The fixture's batch as examples (one per row).
    pub fn examples(&self) -> Vec<Example> {
        let (b, t) = (self.ids.dim(0), self.ids.dim(1));
        let ids: Vec<u32> = self.ids.to_vec().unwrap();
        let labels: Vec<i32> = self.labels.to_vec().unwrap();
        (0..b)
            .map(|r| Example { ids: ids[r * t..(r + 1) * t].to_vec(), labels: labels[r * t..(r + 1) * t].to_vec() })
            .collect()
    }
}

/// `(lr, AdamWConfig)` from the settings the fixture scripts record:
/// `{"lr": .., "betas": [b1, b2], "eps": .., "weight_decay": ..}`.
pub fn adamw_settings(v: &serde_json::Value) -> (f64, trainer::AdamWConfig) {
    let cfg = trainer::AdamWConfig {
        beta1: v["betas"][0].as_f64().unwrap(),
        beta2: v["betas"][1].as_f64().unwrap(),
        eps: v["eps"].as_f64().unwrap(),
        weight_decay: v["weight_decay"].as_f64().unwrap(),
    };
    (v["lr"].as_f64().unwrap(), cfg)
}

/// The base model of fixture `name` without adapters.
pub fn base_model(name: &str) -> (Llama, SafetensorsDir, HashMap<String, String>) {
    let st = SafetensorsDir::open_files(&[fixture(name)]).expect("fixture (run scripts/make_golden.py)");
    let meta = st.metadata().unwrap();
    let config = LlamaConfig::from_json(&meta["config"]).unwrap();
    let model = Llama::load(config, &st, DType::F32).unwrap();
    (model, st, meta)
}

/// The fixture's model with its (nonzero) PEFT adapters attached.
pub fn golden(name: &str) -> Golden {
    let (mut model, st, meta) = base_model(name);
    let lora = LoraConfig::all_projections(meta["lora_r"].parse().unwrap(), meta["lora_alpha"].parse().unwrap());
    attach(&mut model, &lora, |n| st.get(n).map_err(|e| engine::Error::Msg(e.to_string()))).unwrap();
    let ids_i32: Vec<i32> = st.get("input_ids").unwrap().to_vec().unwrap();
    let shape = st.get("input_ids").unwrap().shape().to_vec();
    let ids = Tensor::from_vec(ids_i32.iter().map(|&v| v as u32).collect::<Vec<u32>>(), &shape).unwrap();
    let labels = st.get("labels").unwrap();
    Golden { model, st, meta, lora, ids, labels }
}

/// `n` rows of varying lengths (3..=max_len tokens) over `vocab`, deterministic; some with a
/// masked prompt part.
pub fn random_examples(n: usize, vocab: u32, max_len: usize, seed: u64) -> Vec<Example> {
    let mut rng = engine::rng::Rng::new(seed);
    (0..n)
        .map(|i| {
            let len = 3 + (rng.next_u64() as usize) % (max_len - 2);
            let ids: Vec<u32> = (0..len).map(|_| (rng.next_u64() % vocab as u64) as u32).collect();
            let masked = if i % 2 == 0 { (rng.next_u64() as usize) % (len - 2) } else { 0 };
            let labels = ids.iter().enumerate().map(|(j, &x)| if j < masked { -100 } else { x as i32 }).collect();
            Example { ids, labels }
        })
        .collect()
}

pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).fold(0.0, |m, (x, y)| m.max((x - y).abs()))
}
