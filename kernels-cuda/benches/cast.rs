//! Elementwise kernels: the f32 <-> bf16 casts and bf16 `add` (the residual) over 4096 x 14336
//! elements. Throughput counts every input read and output written once.

mod common;

use criterion::{Criterion, Throughput};
use kernels_cuda::ops::elementwise::{add, cast_bf16_to_f32, cast_f32_to_bf16};
use kernels_cuda::{bf16, Gpu};

fn bench(c: &mut Criterion, gpu: &Gpu) {
    let n = 4096 * 14336;
    let x32 = common::dev_f32(gpu, n, 1.0, 1);
    let x16 = common::dev_bf16(gpu, n, 1.0, 2);
    let mut y16 = common::zeros::<bf16>(gpu, n);
    let mut y32 = common::zeros::<f32>(gpu, n);

    let mut g = c.benchmark_group("elementwise");
    g.throughput(Throughput::BytesDecimal((n * 6) as u64));
    g.bench_function(format!("cast_f32_to_bf16/{n}"), |b| {
        b.iter_custom(|iters| common::time(gpu, iters, |_| cast_f32_to_bf16(gpu, &x32, &mut y16).unwrap()))
    });
    g.bench_function(format!("cast_bf16_to_f32/{n}"), |b| {
        b.iter_custom(|iters| common::time(gpu, iters, |_| cast_bf16_to_f32(gpu, &x16, &mut y32).unwrap()))
    });
    let other = common::dev_bf16(gpu, n, 1.0, 3);
    g.throughput(Throughput::BytesDecimal((n * 6) as u64));
    g.bench_function(format!("add_bf16/{n}"), |b| {
        b.iter_custom(|iters| common::time(gpu, iters, |_| add(gpu, &x16, &other, &mut y16).unwrap()))
    });
    g.finish();
}

fn main() {
    common::run(bench);
}
