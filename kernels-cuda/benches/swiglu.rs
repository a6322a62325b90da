//! SwiGLU at the Llama-3-8B MLP width for 4096 tokens (batch 2 x seq 2048): `[4096, 14336]`
//! bf16. Throughput counts the bytes moved: forward reads gate and up and writes the output (3
//! tensors), the in-place backward reads gate, up and dy and writes dgate, dup and h over them
//! (6 tensors).

mod common;

use criterion::{Criterion, Throughput};
use kernels_cuda::ops::swiglu::{swiglu_bwd_inplace_h, swiglu_fwd};
use kernels_cuda::{bf16, Gpu};

fn bench(c: &mut Criterion, gpu: &Gpu) {
    let (tokens, width) = (4096, 14336);
    let n = tokens * width;
    let gate = common::dev_bf16(gpu, n, 4.0, 1);
    let up = common::dev_bf16(gpu, n, 1.0, 2);
    let mut out = common::zeros::<bf16>(gpu, n);
    let id = common::dims(&[tokens, width]);

    let mut g = c.benchmark_group("swiglu");
    g.throughput(Throughput::BytesDecimal((3 * n * 2) as u64));
    g.bench_function(format!("fwd_bf16/{id}"), |b| {
        b.iter_custom(|iters| common::time(gpu, iters, |_| swiglu_fwd(gpu, &gate, &up, &mut out).unwrap()))
    });
    // The in-place backward overwrites its inputs; their values (finite, whatever they have
    // become) do not change its speed.
    let (mut gate_b, mut up_b, mut dy) = (gate.clone(), up.clone(), common::dev_bf16(gpu, n, 1.0, 3));
    g.throughput(Throughput::BytesDecimal((6 * n * 2) as u64));
    g.bench_function(format!("bwd_inplace_h_bf16/{id}"), |b| {
        b.iter_custom(|iters| {
            common::time(gpu, iters, |_| swiglu_bwd_inplace_h(gpu, &mut gate_b, &mut up_b, &mut dy).unwrap())
        })
    });
    g.finish();
}

fn main() {
    common::run(bench);
}
