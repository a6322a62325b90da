//! RoPE in place on Q `[2, 32, 2048, 128]` and K `[2, 8, 2048, 128]` (Llama-3-8B, batch 2 x seq
//! 2048), bf16, forward and backward (the same rotation with sin negated). Throughput counts the
//! tensor read and written once; the cos/sin tables (2048 x 64 f32 each) and positions are
//! small and stay in L2.

mod common;

use criterion::{Criterion, Throughput};
use kernels_cuda::ops::rope::{rope_bwd, rope_fwd, rope_table, RopeShape};
use kernels_cuda::Gpu;

fn bench(c: &mut Criterion, gpu: &Gpu) {
    let (batch, seq, d) = (2, 2048, 128);
    let inv_freq: Vec<f64> = (0..d / 2).map(|j| 500000f64.powf(-((2 * j) as f64) / d as f64)).collect();
    let (cos, sin) = rope_table(&inv_freq, seq);
    let s = gpu.stream();
    let (cos, sin) = (s.clone_htod(&cos).unwrap(), s.clone_htod(&sin).unwrap());
    let positions = s.clone_htod(&(0..seq as u32).collect::<Vec<u32>>()).unwrap();

    let mut g = c.benchmark_group("rope");
    for heads in [32, 8] {
        let shape = RopeShape::bhtd(batch, heads, seq, d);
        let n = shape.numel().unwrap();
        let mut x = common::dev_bf16(gpu, n, 1.0, heads as u64);
        let id = common::dims(&[batch, heads, seq, d]);
        g.throughput(Throughput::BytesDecimal((2 * n * 2) as u64));
        g.bench_function(format!("fwd_bf16/{id}"), |b| {
            b.iter_custom(|iters| {
                common::time(gpu, iters, |_| rope_fwd(gpu, &mut x, &cos, &sin, &positions, shape).unwrap())
            })
        });
        g.bench_function(format!("bwd_bf16/{id}"), |b| {
            b.iter_custom(|iters| {
                common::time(gpu, iters, |_| rope_bwd(gpu, &mut x, &cos, &sin, &positions, shape).unwrap())
            })
        });
    }
    g.finish();
}

fn main() {
    common::run(bench);
}
