//! RMSNorm forward and backward (dX only) at a training shape: 16384 rows (batch 2 x seq 2048,
//! x 4) of hidden 4096, bf16. Throughput counts the bytes each kernel must move at least:
//! forward x + y + weight + rstd, backward x + dy + dx + weight + rstd.

mod common;

use criterion::{Criterion, Throughput};
use kernels_cuda::ops::rms_norm::{rms_norm_bwd, rms_norm_fwd};
use kernels_cuda::{bf16, Gpu};

fn bench(c: &mut Criterion, gpu: &Gpu) {
    let (rows, width) = (16384, 4096);
    let n = rows * width;
    let x = common::dev_bf16(gpu, n, 2.0, 1);
    let w = common::dev_bf16(gpu, width, 1.0, 2);
    let dy = common::dev_bf16(gpu, n, 1.0, 3);
    let mut y = common::zeros::<bf16>(gpu, n);
    let mut dx = common::zeros::<bf16>(gpu, n);
    let mut rstd = common::zeros::<f32>(gpu, rows);
    let id = common::dims(&[rows, width]);

    let mut g = c.benchmark_group("rms_norm");
    g.throughput(Throughput::BytesDecimal((2 * n * 2 + width * 2 + rows * 4) as u64));
    g.bench_function(format!("fwd_bf16/{id}"), |b| {
        b.iter_custom(|iters| {
            common::time(gpu, iters, |_| rms_norm_fwd(gpu, &x, &w, &mut y, &mut rstd, rows, width, 1e-5).unwrap())
        })
    });
    g.throughput(Throughput::BytesDecimal((3 * n * 2 + width * 2 + rows * 4) as u64));
    g.bench_function(format!("bwd_bf16/{id}"), |b| {
        b.iter_custom(|iters| {
            common::time(gpu, iters, |_| rms_norm_bwd(gpu, &x, &w, &rstd, &dy, &mut dx, rows, width).unwrap())
        })
    });
    g.finish();
}

fn main() {
    common::run(bench);
}
