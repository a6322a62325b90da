//! Causal GQA flash attention, bf16, at the Llama-3-8B training shape: batch 2, 32 query heads,
//! 8 kv heads, seq 2048, head_dim 128. Throughput in FLOPs (criterion's "elements"), counted as
//! PyTorch/FlashAttention do for a causal mask: forward `4 * b * hq * s * s * d / 2` (two
//! products over half the scores), backward 2.5x that (five products), forward + backward 3.5x.
//! `benches/pytorch_ref.py` measures SDPA's flash backend on the same shapes.

mod common;

use criterion::{Criterion, Throughput};
use kernels_cuda::ops::attention::{attention_bwd, attention_bwd_workspace_len, attention_fwd, AttentionDims};
use kernels_cuda::{bf16, Gpu};

fn bench(c: &mut Criterion, gpu: &Gpu) {
    let dims = AttentionDims { batch: 2, q_heads: 32, kv_heads: 8, q_len: 2048, kv_len: 2048, head_dim: 128 };
    let (b, h, s, d) = (dims.batch, dims.q_heads, dims.q_len, dims.head_dim);
    let fwd_flops = 4.0 * (b * h * s * s * d) as f64 / 2.0;
    let (nq, nkv) = (dims.q_elems(), dims.kv_elems());
    let q = common::dev_bf16(gpu, nq, 1.0, 1);
    let k = common::dev_bf16(gpu, nkv, 1.0, 2);
    let v = common::dev_bf16(gpu, nkv, 1.0, 3);
    let d_o = common::dev_bf16(gpu, nq, 1.0, 4);
    let mut o = common::zeros::<bf16>(gpu, nq);
    let mut lse = common::zeros::<f32>(gpu, dims.lse_elems());
    let (mut dq, mut dk, mut dv) =
        (common::zeros::<bf16>(gpu, nq), common::zeros::<bf16>(gpu, nkv), common::zeros::<bf16>(gpu, nkv));
    let mut ws = common::zeros::<f32>(gpu, attention_bwd_workspace_len::<bf16>(&dims));
    let id = format!("b{b}_hq{h}_hkv{}_s{s}_d{d}", dims.kv_heads);

    let mut g = c.benchmark_group("attention");
    g.throughput(Throughput::Elements(fwd_flops as u64));
    g.bench_function(format!("fwd_bf16/{id}"), |bn| {
        bn.iter_custom(|iters| {
            common::time(gpu, iters, |_| attention_fwd(gpu, &dims, &q, &k, &v, None, &mut o, &mut lse).unwrap())
        })
    });
    // The backward needs the forward's o and lse: the last forward above left them.
    common::sync(gpu);
    g.throughput(Throughput::Elements((2.5 * fwd_flops) as u64));
    g.bench_function(format!("bwd_bf16/{id}"), |bn| {
        bn.iter_custom(|iters| {
            common::time(gpu, iters, |_| {
                attention_bwd(gpu, &dims, &q, &k, &v, &o, &lse, &d_o, None, &mut dq, &mut dk, &mut dv, &mut ws).unwrap()
            })
        })
    });
    g.throughput(Throughput::Elements((3.5 * fwd_flops) as u64));
    g.bench_function(format!("fwd+bwd_bf16/{id}"), |bn| {
        bn.iter_custom(|iters| {
            common::time(gpu, iters, |_| {
                attention_fwd(gpu, &dims, &q, &k, &v, None, &mut o, &mut lse).unwrap();
                attention_bwd(gpu, &dims, &q, &k, &v, &o, &lse, &d_o, None, &mut dq, &mut dk, &mut dv, &mut ws).unwrap()
            })
        })
    });
    g.finish();
}

fn main() {
    common::run(bench);
}
