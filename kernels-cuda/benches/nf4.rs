//! NF4 (bitsandbytes, double-quantized absmax) at the Llama-3-8B projection shapes `[rows, k]`:
//! 4096x4096 (q/o), 14336x4096 (gate/up), 4096x14336 (down).
//!
//! - `nf4_dequant`: to bf16, as fed to cuBLAS for prefill and training. Bytes: the NF4 weight
//!   read + the bf16 output written.
//! - `nf4_decode`: `y[m, rows] = x[m, k] @ W^T` for m = 1..8 (decode batch sizes), two ways on
//!   the same weights: the fused GEMV (`gemv`) and dequantize-to-scratch + cuBLAS
//!   (`dequant+cublas`). Bytes: the NF4 weight only (packed codes + absmax codes + scales), the
//!   traffic a decode step cannot avoid, so both variants report comparable GB/s.
//!
//! - `nf4_gemm`: the products of prefill and training, `c[m, rows] = a[m, k] @ W^T` (forward)
//!   and `c[m, k] = a[m, rows] @ W` (backward, the input gradient), for m = 16 .. 4096 rows of
//!   activations, two ways: the fused tiled kernel (`fused`) and dequantize-to-scratch + cuBLAS
//!   (`dequant+cublas`). Throughput in FLOPs (criterion's "elements"), 2 m rows k.
//!
//! Weights are random bytes (speed does not depend on the codes) and every launch reads another
//! of several copies totalling >= 256 MB, so that no weight is still in L2 from the launch before.

mod common;

use criterion::{Criterion, Throughput};
use kernels_cuda::cudarc::driver::CudaSlice;
use kernels_cuda::ops::nf4::{
    nf4_dequantize, nf4_gemv, Nf4Absmax, Nf4Weights, DOUBLE_QUANT_BLOCK, DYNAMIC_MAP_LEN, GEMV_MAX_M, NF4_BLOCK,
};
use kernels_cuda::ops::nf4_gemm::{nf4_gemm, nf4_gemm_workspace_len, Nf4Product};
use kernels_cuda::{bf16, Gpu};

const SHAPES: [(usize, usize); 3] = [(4096, 4096), (14336, 4096), (4096, 14336)];
/// Activation rows of the `nf4_gemm` group: prompts and micro-batches.
const GEMM_M: [usize; 7] = [16, 32, 64, 128, 256, 1024, 4096];

/// One NF4 weight on the device (its dynamic map is shared).
struct Weight {
    packed: CudaSlice<u8>,
    codes: CudaSlice<u8>,
    scales: CudaSlice<f32>,
}

impl Weight {
    fn view<'a>(&'a self, map: &'a CudaSlice<f32>) -> Nf4Weights<'a> {
        Nf4Weights {
            packed: &self.packed,
            absmax: Nf4Absmax::Double { codes: &self.codes, scales: &self.scales, offset: 0.05, map },
        }
    }

    /// Bytes a kernel must read: packed codes, absmax codes, scales.
    fn bytes(&self) -> usize {
        self.packed.len() + self.codes.len() + 4 * self.scales.len()
    }
}

/// Enough copies of a random `[rows, k]` weight to defeat L2.
fn weights(gpu: &Gpu, rows: usize, k: usize) -> Vec<Weight> {
    let n = rows * k;
    let blocks = n.div_ceil(NF4_BLOCK);
    let packed = common::random_bytes(n / 2, 1);
    let codes = common::random_bytes(blocks, 2);
    let scales: Vec<f32> =
        common::uniform(blocks.div_ceil(DOUBLE_QUANT_BLOCK), 0.01, 3).iter().map(|s| 0.02 + s).collect();
    let s = gpu.stream();
    let copies = common::copies_for(n / 2 + blocks);
    (0..copies)
        .map(|_| Weight {
            packed: s.clone_htod(&packed).unwrap(),
            codes: s.clone_htod(&codes).unwrap(),
            scales: s.clone_htod(&scales).unwrap(),
        })
        .collect()
}

fn bench(c: &mut Criterion, gpu: &Gpu) {
    let blas = common::blas(gpu);
    // The signed dynamic map's range; its exact values do not matter for speed.
    let map: Vec<f32> = (0..DYNAMIC_MAP_LEN).map(|i| i as f32 / 127.5 - 1.0).collect();
    let map = gpu.stream().clone_htod(&map).unwrap();
    let sets: Vec<_> = SHAPES.iter().map(|&(rows, k)| (rows, k, weights(gpu, rows, k))).collect();

    let mut g = c.benchmark_group("nf4_dequant");
    for (rows, k, ws) in &sets {
        let mut out = common::zeros::<bf16>(gpu, rows * k);
        g.throughput(Throughput::BytesDecimal((ws[0].bytes() + rows * k * 2) as u64));
        g.bench_function(format!("bf16/{}", common::dims(&[*rows, *k])), |b| {
            b.iter_custom(|iters| {
                common::time(gpu, iters, |i| nf4_dequantize(gpu, &ws[i % ws.len()].view(&map), &mut out).unwrap())
            })
        });
    }
    g.finish();

    let mut g = c.benchmark_group("nf4_decode");
    for (rows, k, ws) in &sets {
        let (rows, k) = (*rows, *k);
        let mut scratch = common::zeros::<bf16>(gpu, rows * k);
        g.throughput(Throughput::BytesDecimal(ws[0].bytes() as u64));
        for m in 1..=GEMV_MAX_M {
            let x = common::dev_bf16(gpu, m * k, 1.0, m as u64);
            let mut y = common::zeros::<bf16>(gpu, m * rows);
            let id = format!("m{m}/{}", common::dims(&[rows, k]));
            g.bench_function(format!("gemv/{id}"), |b| {
                b.iter_custom(|iters| {
                    common::time(gpu, iters, |i| {
                        nf4_gemv(gpu, &x, &ws[i % ws.len()].view(&map), &mut y, m, rows, k).unwrap()
                    })
                })
            });
            g.bench_function(format!("dequant+cublas/{id}"), |b| {
                b.iter_custom(|iters| {
                    common::time(gpu, iters, |i| {
                        nf4_dequantize(gpu, &ws[i % ws.len()].view(&map), &mut scratch).unwrap();
                        common::gemm_nt(&blas, &x, &scratch, &mut y, (m, rows, k));
                    })
                })
            });
        }
    }
    g.finish();

    let mut g = c.benchmark_group("nf4_gemm");
    for (rows, k, ws) in &sets {
        let (rows, k) = (*rows, *k);
        let mut scratch = common::zeros::<bf16>(gpu, rows * k);
        for product in [Nf4Product::Forward, Nf4Product::Backward] {
            let (n_out, kdim) = product.dims(rows, k);
            for m in GEMM_M {
                let a = common::dev_bf16(gpu, m * kdim, 1.0, m as u64);
                let mut out = common::zeros::<bf16>(gpu, m * n_out);
                let ws_len = nf4_gemm_workspace_len(gpu, m, rows, k, product);
                let mut partial = (ws_len > 0).then(|| common::zeros::<f32>(gpu, ws_len));
                g.throughput(Throughput::Elements((2 * m * rows * k) as u64));
                let id = format!(
                    "{}/m{m}/{}",
                    if product == Nf4Product::Forward { "fwd" } else { "bwd" },
                    common::dims(&[rows, k])
                );
                g.bench_function(format!("fused/{id}"), |b| {
                    b.iter_custom(|iters| {
                        common::time(gpu, iters, |i| {
                            let w = ws[i % ws.len()].view(&map);
                            nf4_gemm(gpu, &a, &w, &mut out, partial.as_mut(), (m, rows, k), product).unwrap()
                        })
                    })
                });
                g.bench_function(format!("dequant+cublas/{id}"), |b| {
                    b.iter_custom(|iters| {
                        common::time(gpu, iters, |i| {
                            nf4_dequantize(gpu, &ws[i % ws.len()].view(&map), &mut scratch).unwrap();
                            match product {
                                Nf4Product::Forward => common::gemm_nt(&blas, &a, &scratch, &mut out, (m, rows, k)),
                                Nf4Product::Backward => common::gemm_nn(&blas, &a, &scratch, &mut out, (m, k, rows)),
                            }
                        })
                    })
                });
            }
        }
    }
    g.finish();
}

fn main() {
    common::run(bench);
}
