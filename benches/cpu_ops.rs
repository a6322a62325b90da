//! CPU reference backend throughput of the ops on the Llama hot path, at SmolLM2-135M
//! sizes (hidden 576, 9 heads of 64, 3 kv heads, MLP 1536) for a 256-token sequence.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use engine::ops::{self, RopeTable};
use engine::rng::Rng;
use engine::Tensor;

fn randn(shape: &[usize], seed: u64) -> Tensor {
    let n = shape.iter().product();
    Tensor::from_vec(Rng::new(seed).normal_vec(n, 1.0), shape).unwrap()
}

fn bench(c: &mut Criterion) {
    let _ng = engine::no_grad();
    let (t, h, inter) = (256, 576, 1536);
    let mut g = c.benchmark_group("cpu");

    let x = randn(&[t, h], 1);
    let w = randn(&[inter, h], 2);
    g.throughput(Throughput::Elements((2 * t * h * inter) as u64));
    g.bench_function("matmul_nt 256x576 @ 1536x576^T (FLOP)", |b| b.iter(|| ops::matmul_nt(&x, &w).unwrap()));

    let x1 = randn(&[1, h], 3);
    g.throughput(Throughput::Bytes((inter * h * 4) as u64));
    g.bench_function("matmul_nt decode 1x576 @ 1536x576^T (weight bytes)", |b| {
        b.iter(|| ops::matmul_nt(&x1, &w).unwrap())
    });

    let norm_w = randn(&[h], 4);
    g.throughput(Throughput::Bytes((2 * t * h * 4) as u64));
    g.bench_function("rms_norm 256x576 (bytes)", |b| b.iter(|| ops::rms_norm(&x, &norm_w, 1e-5).unwrap()));

    let q = randn(&[1, 9, t, 64], 5);
    let k = randn(&[1, 3, t, 64], 6);
    let v = randn(&[1, 3, t, 64], 7);
    g.throughput(Throughput::Elements((4 * 9 * t * t / 2 * 64) as u64));
    g.bench_function("attention causal 9q/3kv heads x 256 x 64 (FLOP)", |b| {
        b.iter(|| ops::attention(&q, &k, &v).unwrap())
    });

    let inv: Vec<f64> = (0..32).map(|i| 1.0 / 10000f64.powf(i as f64 / 32.0)).collect();
    let table = RopeTable::new(&inv, t);
    let pos: Vec<usize> = (0..t).collect();
    g.throughput(Throughput::Bytes((2 * 9 * t * 64 * 4) as u64));
    g.bench_function("rope 9 heads x 256 x 64 (bytes)", |b| b.iter(|| ops::rope(&q, &table, &pos).unwrap()));
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
