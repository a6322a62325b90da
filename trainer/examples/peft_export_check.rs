//! Writes adapters trained by ferrotune on the golden models, with ferrotune's logits beside
//! them, for `trainer/scripts/check_peft_load.py` to load with PEFT and compare:
//!
//!     cargo run --release -p trainer --example peft_export_check -- OUT_DIR
//!
//! `OUT_DIR/gqa_llama3/` holds the fixture's adapters after 3 AdamW steps (all seven
//! projections); `OUT_DIR/tied/` fresh rsLoRA adapters on q/v/down after 3 steps. Each has
//! `adapter_config.json`, `adapter_model.safetensors` and `ferrotune_logits.safetensors`
//! (`input_ids` and `logits`).

use engine::{DType, Tensor};
use model_llama::{Llama, LlamaConfig, SafetensorsDir};
use safetensors::tensor::{Dtype, TensorView};
use std::path::{Path, PathBuf};
use trainer::data::{Dataset, Example};
use trainer::optim::OptimizerKind;
use trainer::{lora, LoraConfig, ScheduleKind, TrainConfig, Trainer};

fn main() {
    let out = PathBuf::from(std::env::args().nth(1).expect("usage: peft_export_check OUT_DIR"));
    let fixtures = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures");
    for name in ["gqa_llama3", "tied"] {
        let st = SafetensorsDir::open_files(&[fixtures.join(format!("golden_{name}.safetensors"))]).unwrap();
        let meta = st.metadata().unwrap();
        let config = LlamaConfig::from_json(&meta["config"]).unwrap();
        let mut model = Llama::load(config, &st, DType::F32).unwrap();
        let cfg = if name == "gqa_llama3" {
            let c = LoraConfig::all_projections(4, 8.0);
            lora::attach(&mut model, &c, |n| st.get(n).map_err(|e| engine::Error::Msg(e.to_string()))).unwrap();
            c
        } else {
            let c = LoraConfig {
                r: 4,
                alpha: 8.0,
                dropout: 0.0,
                target_modules: vec!["q_proj".into(), "v_proj".into(), "down_proj".into()],
                use_rslora: true,
            };
            lora::init(&mut model, &c, 7).unwrap();
            c
        };
        let ids: Vec<i32> = st.get("input_ids").unwrap().to_vec().unwrap();
        let shape = st.get("input_ids").unwrap().shape().to_vec();
        let labels: Vec<i32> = st.get("labels").unwrap().to_vec().unwrap();
        let t = shape[1];
        let examples: Vec<Example> = (0..shape[0])
            .map(|r| Example {
                ids: ids[r * t..(r + 1) * t].iter().map(|&x| x as u32).collect(),
                labels: labels[r * t..(r + 1) * t].to_vec(),
            })
            .collect();
        let data = Dataset::from_examples(examples, name).unwrap();
        let tc = TrainConfig {
            batch_size: 2,
            grad_accum: 1,
            max_steps: Some(3),
            lr: 1e-2,
            schedule: ScheduleKind::Constant,
            warmup_steps: 0,
            optimizer: OptimizerKind::AdamW,
            shuffle: false,
            base_model: Some(format!("ferrotune-golden-{name}")),
            ..TrainConfig::default()
        };
        let dir = out.join(name);
        {
            let mut tr = Trainer::new(&model, cfg.clone(), &data, tc).unwrap();
            tr.train(|l| println!("{name}: {}", l.line())).unwrap();
            tr.save_adapter(&dir).unwrap();
        }
        let ids_t = Tensor::from_vec(ids.iter().map(|&x| x as u32).collect::<Vec<u32>>(), &shape).unwrap();
        let logits = {
            let _g = engine::no_grad();
            model.forward(&ids_t, None).unwrap()
        };
        write_logits(&dir.join("ferrotune_logits.safetensors"), &ids, &shape, &logits);
        println!("{name}: wrote {}", dir.display());
    }
}

fn write_logits(path: &Path, ids: &[i32], shape: &[usize], logits: &Tensor) {
    let ids_b: Vec<u8> = ids.iter().flat_map(|x| (*x as i64).to_le_bytes()).collect();
    let l: Vec<u8> = logits.to_vec_f32().unwrap().iter().flat_map(|x| x.to_le_bytes()).collect();
    let views = vec![
        ("input_ids", TensorView::new(Dtype::I64, shape.to_vec(), &ids_b).unwrap()),
        ("logits", TensorView::new(Dtype::F32, logits.shape().to_vec(), &l).unwrap()),
    ];
    safetensors::tensor::serialize_to_file(views, None, path).unwrap();
}
