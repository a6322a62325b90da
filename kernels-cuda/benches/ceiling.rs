//! The card's ceilings, measured in the same run as the kernel benches: device-to-device copy
//! bandwidth (bytes read + written) and cuBLAS bf16 GEMM throughput (f32 accumulation, the
//! `x @ W^T` layout of a linear layer) at 8192^3 and at the Llama-3-8B training shapes for 4096
//! tokens: `m x n x k` = 4096x4096x4096 (q/o), 4096x14336x4096 (gate/up), 4096x4096x14336
//! (down). FLOPs = 2 m n k.

mod common;

use criterion::{Criterion, Throughput};
use kernels_cuda::{bf16, Gpu};

fn bench(c: &mut Criterion, gpu: &Gpu) {
    let mut g = c.benchmark_group("ceiling");
    let n = 512usize << 20;
    let src = common::zeros::<u8>(gpu, n);
    let mut dst = common::zeros::<u8>(gpu, n);
    g.throughput(Throughput::BytesDecimal(2 * n as u64));
    g.bench_function("copy_dtod/512MiB", |b| {
        b.iter_custom(|iters| common::time(gpu, iters, |_| gpu.stream().memcpy_dtod(&src, &mut dst).unwrap()))
    });
    drop((src, dst));

    let blas = common::blas(gpu);
    for (m, n, k) in [(8192, 8192, 8192), (4096, 4096, 4096), (4096, 14336, 4096), (4096, 4096, 14336)] {
        let x = common::dev_bf16(gpu, m * k, 1.0, 1);
        let w = common::dev_bf16(gpu, n * k, 1.0, 2);
        let mut y = common::zeros::<bf16>(gpu, m * n);
        g.throughput(Throughput::Elements((2 * m * n * k) as u64));
        g.bench_function(format!("gemm_bf16/{}", common::dims(&[m, n, k])), |b| {
            b.iter_custom(|iters| common::time(gpu, iters, |_| common::gemm_nt(&blas, &x, &w, &mut y, (m, n, k))))
        });
    }
    g.finish();
}

fn main() {
    common::run(bench);
}
