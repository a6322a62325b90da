//! The engine's fused LM head + cross-entropy (`engine::ops::lm_head_cross_entropy`, 256-row
//! chunks as `Llama::loss` uses) at the Llama-3-8B shape of one batch of 2 x 2048 tokens, the
//! last position of each sequence dropped: 4094 rows x hidden 4096 x vocab 128256, bf16, against
//! the materialized path (`matmul_nt` to the whole `[4094, 128256]` logits, then
//! `cross_entropy`) through the same engine.
//!
//! Throughput in FLOPs ("elements") of the products that cannot be avoided: forward
//! `2 n h v`, forward + backward `4 n h v` (logits and dh); the chunked backward recomputes the
//! logits (another `2 n h v`, not counted), so its FLOP/s shows that cost. The time includes
//! the host round trips the engine makes (labels read once, one loss per chunk).
//!
//! Peak memory: before the timings, one forward + backward of each path runs alone and prints
//! the peak bytes of tensor storage it added (`engine::cuda::tensor_bytes`, live inputs
//! excluded), next to the `4 n v` bytes of f32 logits that a materializing loss would hold.
//! `benches/pytorch_ref.py` measures F.cross_entropy on materialized logits at the same shape.

#[path = "../kernels-cuda/benches/common/mod.rs"]
mod common;

use criterion::{Criterion, SamplingMode, Throughput};
use engine::ops::{cross_entropy, lm_head_cross_entropy, matmul_nt};
use engine::{Device, Tensor};
use half::bf16;

const ROWS: usize = 4094;
const HIDDEN: usize = 4096;
const VOCAB: usize = 128256;
const CHUNK: usize = model_llama::model::LOSS_CHUNK_ROWS;

/// The loss and (with `backward`) dh, by either path; returns once the stream is idle.
fn step(h: &Tensor, w: &Tensor, labels: &Tensor, chunked: bool, backward: bool) {
    let _grad = (!backward).then(engine::no_grad);
    let loss = if chunked {
        lm_head_cross_entropy(h, w, labels, CHUNK).unwrap()
    } else {
        cross_entropy(&matmul_nt(h, w).unwrap(), labels).unwrap()
    };
    if backward {
        let grads = loss.backward().unwrap();
        assert!(grads.get(h).is_some(), "no gradient for h");
    }
    loss.to_scalar::<f32>().unwrap();
}

fn bf16_tensor(n_shape: &[usize], scale: f32, seed: u64, dev: Device) -> Tensor {
    let n = n_shape.iter().product();
    let v: Vec<bf16> = common::uniform(n, scale, seed).into_iter().map(bf16::from_f32).collect();
    Tensor::from_vec(v, n_shape).unwrap().to_device(dev).unwrap()
}

fn bench(c: &mut Criterion, cuda: &engine::cuda::CudaDevice) {
    let dev = Device::Cuda(cuda.ordinal);
    let h = bf16_tensor(&[ROWS, HIDDEN], 1.0, 1, dev).into_var();
    let w = bf16_tensor(&[VOCAB, HIDDEN], 0.02, 2, dev);
    let ids: Vec<i32> = common::uniform(ROWS, 0.5, 3).iter().map(|u| ((u + 0.5) * (VOCAB - 1) as f32) as i32).collect();
    // Host labels, as `Llama::loss` passes them (the engine reads them on the host either way).
    let labels = Tensor::from_vec(ids, &[ROWS]).unwrap();
    let logits_f32 = (ROWS * VOCAB * 4) as f64;

    for (name, chunked) in [("chunked", true), ("materialized", false)] {
        cuda.gpu.synchronize().unwrap();
        let live = engine::cuda::tensor_bytes().0;
        engine::cuda::reset_peak();
        step(&h, &w, &labels, chunked, true);
        let peak = engine::cuda::tensor_bytes().1 - live;
        println!(
            "loss_memory {{\"path\": \"{name}\", \"rows\": {ROWS}, \"vocab\": {VOCAB}, \"peak_extra_bytes\": {peak}, \
             \"f32_logits_bytes\": {logits_f32}, \"ratio\": {:.4}}}",
            peak as f64 / logits_f32
        );
    }

    let flops = (2 * ROWS * HIDDEN * VOCAB) as u64;
    let mut g = c.benchmark_group("loss");
    // Tens of milliseconds per call: the same iteration count in every sample (criterion's
    // default linear sampling would need at least 55 calls per benchmark).
    g.sampling_mode(SamplingMode::Flat);
    for (name, chunked) in [("chunked", true), ("materialized", false)] {
        for (pass, backward) in [("fwd", false), ("fwd+bwd", true)] {
            g.throughput(Throughput::Elements(if backward { 2 * flops } else { flops }));
            g.bench_function(format!("{name}_{pass}/{ROWS}x{HIDDEN}x{VOCAB}"), |b| {
                b.iter_custom(|iters| common::time(&cuda.gpu, iters, |_| step(&h, &w, &labels, chunked, backward)))
            });
        }
    }
    g.finish();
}

fn main() {
    let cuda = match engine::cuda::device(0) {
        Ok(d) => d,
        Err(e) => return println!("skipped: no CUDA device ({e})"),
    };
    println!("device: {}", cuda.gpu.name());
    let mut c = common::criterion();
    bench(&mut c, &cuda);
    c.final_summary();
}
