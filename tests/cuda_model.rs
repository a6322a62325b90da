//! A random Llama with GQA and head_dim 64 (the kernels' sizes) on the GPU in bf16 against
//! the CPU in f32: the forward logits, the loss, and the LoRA gradients through checkpointed
//! layers. Skips (with a message) without a GPU; runs on the GPU machine.
//!
//! Tolerances (bf16 weights and activations, f32 accumulation, 4 layers):
//! next-token log-softmax max |Δ| < 0.5 over the top-100 tokens and the same argmax;
//! each LoRA gradient ‖Δ‖/‖ref‖ < 0.1.

use engine::rng::Rng;
use engine::{ops, DType, Device, Tensor};
use model_llama::{Llama, LlamaConfig, Lora, WeightSource, PROJECTIONS};
use std::collections::HashMap;

const LAYERS: usize = 4;

struct Random(HashMap<String, Tensor>);

impl WeightSource for Random {
    fn get(&self, name: &str) -> model_llama::Result<Tensor> {
        Ok(self.0[name].clone())
    }
    fn contains(&self, name: &str) -> bool {
        self.0.contains_key(name)
    }
}

fn config() -> LlamaConfig {
    LlamaConfig::from_json(
        r#"{"model_type": "llama", "hidden_size": 256, "intermediate_size": 688, "num_hidden_layers": 4,
            "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 1000, "rms_norm_eps": 1e-5,
            "rope_theta": 10000.0, "max_position_embeddings": 128, "tie_word_embeddings": true}"#,
    )
    .unwrap()
}

/// The same random weights every call (std 0.05; norms around 1).
fn model() -> Llama {
    let c = config();
    let mut rng = Rng::new(11);
    let mut w = HashMap::new();
    for (name, shape) in c.weight_shapes() {
        let norm = name.ends_with("norm.weight");
        let v: Vec<f32> =
            rng.normal_vec(shape.iter().product(), 0.05).into_iter().map(|x| if norm { 1.0 + x } else { x }).collect();
        w.insert(name, Tensor::from_vec(v, &shape).unwrap());
    }
    Llama::load(c, &Random(w), DType::F32).unwrap()
}

/// Rank-4 adapters with small random A and B on every projection of the first and last layer.
fn attach(m: &mut Llama) -> Vec<Tensor> {
    let mut rng = Rng::new(7);
    let mut params = Vec::new();
    for i in [0, LAYERS - 1] {
        let layer = m.layer_mut(i).unwrap();
        for p in PROJECTIONS {
            let lin = layer.projection_mut(p).unwrap();
            let (out, inp) = lin.base.dims();
            let a = Tensor::from_vec(rng.normal_vec(4 * inp, 0.05), &[4, inp]).unwrap().into_var();
            let b = Tensor::from_vec(rng.normal_vec(out * 4, 0.05), &[out, 4]).unwrap().into_var();
            params.extend([a.clone(), b.clone()]);
            lin.lora = Some(Lora { a, b, scale: 2.0 });
        }
    }
    params
}

#[test]
fn cuda_random_llama_bf16_matches_cpu() {
    compare(false);
}

/// The same with every projection quantized to NF4 (double quant) on both sides: the GPU
/// dequantizes for cuBLAS in the loss and uses the fused GEMV for one-token decode.
#[test]
fn cuda_random_llama_nf4_matches_cpu() {
    compare(true);
}

fn quantize(m: &mut Llama) {
    for i in 0..LAYERS {
        for p in PROJECTIONS {
            m.layer_mut(i).unwrap().projection_mut(p).unwrap().quantize_nf4(true).unwrap();
        }
    }
}

fn compare(nf4: bool) {
    let dev = match Device::cuda(0) {
        Ok(d) => d,
        Err(e) => return println!("skipped: no CUDA device ({e})"),
    };
    let ids: Vec<u32> = (0..37u32).map(|i| (i * 7919 + 13) % 1000).collect();
    let t = ids.len();
    let input = Tensor::from_vec(ids.clone(), &[1, t]).unwrap();
    let labels = Tensor::from_vec(ids.iter().map(|&i| i as i32).collect::<Vec<i32>>(), &[1, t]).unwrap();

    let mut cpu = model();
    let mut gpu = model();
    if nf4 {
        quantize(&mut cpu);
        quantize(&mut gpu);
    }
    let cpu_params = attach(&mut cpu);
    gpu.to_device(dev, DType::BF16).unwrap();
    let gpu_params: Vec<Tensor> =
        attach(&mut gpu).iter().map(|p| p.detach().to_device(dev).unwrap().into_var()).collect();
    // Re-point the GPU adapters at the device copies.
    let mut k = 0;
    for i in [0, LAYERS - 1] {
        for p in PROJECTIONS {
            let lin = gpu.layer_mut(i).unwrap().projection_mut(p).unwrap();
            lin.lora = Some(Lora { a: gpu_params[k].clone(), b: gpu_params[k + 1].clone(), scale: 2.0 });
            k += 2;
        }
    }

    let last = |m: &Llama| {
        let _ng = engine::no_grad();
        let logits = m.forward(&input, None).unwrap();
        let row = ops::narrow(&logits, 1, t - 1, 1).unwrap();
        ops::log_softmax(&ops::cast(&row.to_device(Device::Cpu).unwrap(), DType::F32).unwrap())
            .unwrap()
            .to_vec_f32()
            .unwrap()
    };
    let (want, got) = (last(&cpu), last(&gpu));
    let mut order: Vec<usize> = (0..want.len()).collect();
    order.sort_by(|&a, &b| want[b].total_cmp(&want[a]));
    let err = order[..100].iter().map(|&i| (want[i] - got[i]).abs()).fold(0.0f32, f32::max);
    println!("nf4 {nf4}: bf16 GPU vs f32 CPU: top-100 log-softmax max |Δ| = {err:.3e}");
    assert!(err < 0.5, "log-softmax differs by {err}");
    assert_eq!(model_llama::generate::argmax(&got), model_llama::generate::argmax(&want));

    // Prefill all but the last token through the KV cache, then decode it alone (the GEMV
    // path for NF4): the same last logits as the full forward on the GPU.
    {
        let _ng = engine::no_grad();
        let c = &gpu.config;
        let mut cache =
            model_llama::KvCache::new(c.num_hidden_layers, 1, c.num_key_value_heads, c.head_dim, t, DType::BF16, dev)
                .unwrap();
        let head = Tensor::from_vec(ids[..t - 1].to_vec(), &[1, t - 1]).unwrap();
        gpu.forward(&head, Some(&mut cache)).unwrap();
        let step = gpu.forward(&Tensor::from_vec(vec![ids[t - 1]], &[1, 1]).unwrap(), Some(&mut cache)).unwrap();
        let step = ops::log_softmax(&ops::cast(&step.to_device(Device::Cpu).unwrap(), DType::F32).unwrap()).unwrap();
        let step = step.to_vec_f32().unwrap();
        let err = order[..100].iter().map(|&i| (step[i] - got[i]).abs()).fold(0.0f32, f32::max);
        println!("cached decode vs full forward on the GPU: top-100 max |Δ| = {err:.3e}");
        assert!(err < 0.25, "cached decode differs by {err}");
    }

    let lc = cpu.loss(&input, &labels, true).unwrap();
    let lg = gpu.loss(&input, &labels, true).unwrap();
    let (vc, vg) = (lc.to_scalar::<f32>().unwrap(), lg.to_scalar::<f32>().unwrap());
    println!("loss: cpu f32 {vc}, gpu bf16 {vg}");
    assert!((vc - vg).abs() < 0.05 * vc.abs(), "loss {vg} vs {vc}");
    let (gc, gg) = (lc.backward().unwrap(), lg.backward().unwrap());
    let mut worst = 0.0f64;
    for (pc, pg) in cpu_params.iter().zip(&gpu_params) {
        let a = gc.get(pc).unwrap().to_vec_f32().unwrap();
        let b = gg.get(pg).unwrap().to_device(Device::Cpu).unwrap().to_vec_f32().unwrap();
        let d: f64 = a.iter().zip(&b).map(|(x, y)| ((x - y) as f64).powi(2)).sum::<f64>().sqrt();
        let n: f64 = a.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
        worst = worst.max(d / n);
    }
    println!("worst LoRA gradient ‖Δ‖/‖ref‖ = {worst:.3e} over {} tensors", cpu_params.len());
    assert!(worst < 0.1, "LoRA gradients differ: {worst}");
}
