//! The engine's CUDA backend against its CPU twin: transfers, strided copies, cuBLAS matmul,
//! add, casts, RMSNorm forward/backward, and autograd through device tensors. Every test
//! prints "skipped: no CUDA device (...)" and returns on machines without a GPU; they run on
//! the GPU machine through ../shared/tools/gpu-stage.
//!
//! Tolerances: f32 |Δ| <= 1e-4 + 1e-4 |ref| (cuBLAS and the kernels sum in another order);
//! bf16 |Δ| <= 2e-2 + 2e-2 |ref| (one bf16 rounding of results summed in f32).

use engine::autograd::backward_from;
use engine::ops;
use engine::rng::Rng;
use engine::{DType, Device, Tensor};

fn gpu() -> Option<Device> {
    match Device::cuda(0) {
        Ok(d) => Some(d),
        Err(e) => {
            println!("skipped: no CUDA device ({e})");
            None
        }
    }
}

fn randn(shape: &[usize], seed: u64) -> Tensor {
    let n = shape.iter().product();
    Tensor::from_vec(Rng::new(seed).normal_vec(n, 1.0), shape).unwrap()
}

fn assert_close(name: &str, got: &Tensor, want: &Tensor, tol: f32) {
    assert_eq!(got.shape(), want.shape(), "{name}: shape");
    let (g, w) = (got.to_vec_f32().unwrap(), want.to_vec_f32().unwrap());
    for (i, (a, b)) in g.iter().zip(&w).enumerate() {
        assert!((a - b).abs() <= tol + tol * b.abs(), "{name}: element {i}: gpu {a} vs cpu {b}");
    }
}

#[test]
fn cuda_transfers_round_trip() {
    let Some(dev) = gpu() else { return };
    let x = randn(&[3, 5], 1);
    assert_eq!(x.to_device(dev).unwrap().to_vec_f32().unwrap(), x.to_vec_f32().unwrap());
    let b = ops::cast(&x, DType::BF16).unwrap();
    let back = b.to_device(dev).unwrap().to_device(Device::Cpu).unwrap();
    assert_eq!(back.to_vec::<half::bf16>().unwrap(), b.to_vec::<half::bf16>().unwrap());
    let ids = Tensor::from_vec(vec![7u32, 0, 3], &[3]).unwrap();
    assert_eq!(ids.to_device(dev).unwrap().to_vec::<u32>().unwrap(), vec![7, 0, 3]);
    assert!(x.to_device(dev).unwrap().device() == dev);
}

#[test]
fn cuda_strided_copies() {
    let Some(dev) = gpu() else { return };
    let x = randn(&[4, 7, 5], 2);
    let g = x.to_device(dev).unwrap();
    let t = ops::contiguous(&ops::transpose(&g, 0, 2).unwrap()).unwrap();
    assert_close("transpose", &t, &ops::contiguous(&ops::transpose(&x, 0, 2).unwrap()).unwrap(), 0.0);
    let n = ops::contiguous(&ops::narrow(&g, 1, 2, 3).unwrap()).unwrap();
    assert_close("narrow", &n, &ops::contiguous(&ops::narrow(&x, 1, 2, 3).unwrap()).unwrap(), 0.0);
    let cache = Tensor::zeros(&[2, 9, 3], DType::F32, dev).unwrap();
    let part = randn(&[2, 4, 3], 3);
    cache.write_slice(1, 5, &part.to_device(dev).unwrap()).unwrap();
    let host = Tensor::zeros(&[2, 9, 3], DType::F32, Device::Cpu).unwrap();
    host.write_slice(1, 5, &part).unwrap();
    assert_close("write_slice", &cache, &host, 0.0);
}

#[test]
fn cuda_matmul_matches_cpu() {
    let Some(dev) = gpu() else { return };
    let cases: [(&[usize], &[usize], bool); 5] = [
        (&[1, 7], &[5, 7], true),        // decode row against a weight (x @ w^T)
        (&[33, 64], &[96, 64], true),    // odd rows
        (&[2, 3, 17], &[17, 9], false),  // 2-D right operand broadcast over the batch
        (&[3, 5, 8], &[3, 8, 6], false), // batched
        (&[129, 257], &[257, 65], false),
    ];
    for (i, (sa, sb, nt)) in cases.into_iter().enumerate() {
        let (a, b) = (randn(sa, 10 + i as u64), randn(sb, 20 + i as u64));
        let f = |a: &Tensor, b: &Tensor| if nt { ops::matmul_nt(a, b) } else { ops::matmul(a, b) };
        let want = f(&a, &b).unwrap();
        let got = f(&a.to_device(dev).unwrap(), &b.to_device(dev).unwrap()).unwrap();
        assert_close(&format!("matmul f32 case {i}"), &got, &want, 1e-4);
        let (a16, b16) = (ops::cast(&a, DType::BF16).unwrap(), ops::cast(&b, DType::BF16).unwrap());
        let want = f(&a16, &b16).unwrap();
        let got = f(&a16.to_device(dev).unwrap(), &b16.to_device(dev).unwrap()).unwrap();
        assert_eq!(got.dtype(), DType::BF16);
        assert_close(&format!("matmul bf16 case {i}"), &got, &want, 2e-2);
    }
}

#[test]
fn cuda_add_and_casts_match_cpu() {
    let Some(dev) = gpu() else { return };
    let (a, b) = (randn(&[3, 1001], 30), randn(&[3, 1001], 31));
    let (ga, gb) = (a.to_device(dev).unwrap(), b.to_device(dev).unwrap());
    assert_close("add f32", &ops::add(&ga, &gb).unwrap(), &ops::add(&a, &b).unwrap(), 1e-6);
    let (a16, b16) = (ops::cast(&a, DType::BF16).unwrap(), ops::cast(&b, DType::BF16).unwrap());
    let g16 = ops::cast(&ga, DType::BF16).unwrap();
    assert_eq!(g16.to_vec::<half::bf16>().unwrap(), a16.to_vec::<half::bf16>().unwrap(), "f32 -> bf16 rounding");
    let sum = ops::add(&g16, &ops::cast(&gb, DType::BF16).unwrap()).unwrap();
    assert_eq!(sum.to_vec::<half::bf16>().unwrap(), ops::add(&a16, &b16).unwrap().to_vec::<half::bf16>().unwrap());
    let back = ops::cast(&g16, DType::F32).unwrap();
    assert_eq!(back.to_vec_f32().unwrap(), ops::cast(&a16, DType::F32).unwrap().to_vec_f32().unwrap());
}

#[test]
fn cuda_rms_norm_and_autograd_match_cpu() {
    let Some(dev) = gpu() else { return };
    for (dtype, tol) in [(DType::F32, 1e-4), (DType::BF16, 2e-2)] {
        let x = ops::cast(&randn(&[2, 5, 576], 40), dtype).unwrap();
        let w = ops::cast(&randn(&[576], 41), dtype).unwrap();
        let proj = ops::cast(&randn(&[96, 576], 42), dtype).unwrap();
        let seed = ops::cast(&randn(&[2, 5, 96], 43), dtype).unwrap();
        // y = rms_norm(x) @ proj^T + ... : gradients flow to x through cuBLAS and the kernels.
        let run = |d: Device| {
            let xv = x.to_device(d).unwrap().into_var();
            let h = ops::rms_norm(&xv, &w.to_device(d).unwrap(), 1e-5).unwrap();
            let y = ops::matmul_nt(&h, &proj.to_device(d).unwrap()).unwrap();
            let grads = backward_from(&y, &seed.to_device(d).unwrap()).unwrap();
            (h, y, grads.get(&xv).unwrap().clone())
        };
        let (hc, yc, gc) = run(Device::Cpu);
        let (hg, yg, gg) = run(dev);
        assert_close(&format!("rms_norm {dtype:?}"), &hg, &hc, tol);
        assert_close(&format!("rms_norm @ proj {dtype:?}"), &yg, &yc, tol);
        assert_close(&format!("dx {dtype:?}"), &gg, &gc, tol);
    }
}

#[test]
fn cuda_ops_without_kernels_say_so() {
    let Some(dev) = gpu() else { return };
    let x = randn(&[2, 3], 50).to_device(dev).unwrap();
    let err = ops::mul(&x, &x).unwrap_err().to_string();
    assert!(err.contains("no CUDA kernel"), "{err}");
    let err = ops::add(&x, &randn(&[2, 3], 51)).unwrap_err().to_string();
    assert!(err.contains("different devices"), "{err}");
}

/// `sum_squares` (gradient norms): the device's f64 partial sums against the CPU's sequential
/// f64 sum, f32 and bf16, odd sizes (one element, one partial block, many blocks, a strided
/// view); relative difference <= 1e-12 (f64 reassociation only).
#[test]
fn cuda_sum_squares_matches_cpu() {
    let Some(dev) = gpu() else { return };
    for (i, n) in [1usize, 1000, 257 * 1024 + 3, 5_000_001].into_iter().enumerate() {
        for dtype in [DType::F32, DType::BF16] {
            let x = ops::cast(&randn(&[n], 40 + i as u64), dtype).unwrap();
            let want = ops::sum_squares(&x).unwrap();
            let got = ops::sum_squares(&x.to_device(dev).unwrap()).unwrap();
            assert!((got - want).abs() <= 1e-12 * want, "n {n} {dtype:?}: gpu {got} vs cpu {want}");
        }
    }
    let m = randn(&[300, 7], 9);
    let view = ops::transpose(&m, 0, 1).unwrap();
    let want = ops::sum_squares(&view).unwrap();
    let got = ops::sum_squares(&ops::transpose(&m.to_device(dev).unwrap(), 0, 1).unwrap()).unwrap();
    assert!((got - want).abs() <= 1e-12 * want, "strided view: gpu {got} vs cpu {want}");

    // Many tensors at once (one buffer of partials, one download), mixed with a host tensor:
    // each sum bit for bit as alone.
    let xs: Vec<Tensor> = [1usize, 1000, 257 * 1024 + 3]
        .iter()
        .enumerate()
        .map(|(i, &n)| ops::cast(&randn(&[n], 50 + i as u64), DType::BF16).unwrap().to_device(dev).unwrap())
        .chain([randn(&[77], 60)])
        .collect();
    let each = ops::sum_squares_each(&xs).unwrap();
    let alone: Vec<f64> = xs.iter().map(|x| ops::sum_squares(x).unwrap()).collect();
    assert_eq!(
        each.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
        alone.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
    );
}

/// Offloading: a tensor parked in pinned host memory comes back bit for bit (f32, bf16), and
/// eight checkpointed segments give the same gradients (bit for bit: the same kernels run in
/// the same order) whether their saved inputs stay on the GPU or are parked.
#[test]
fn cuda_offloaded_checkpoint_matches_checkpoint() {
    use engine::autograd::{checkpoint, checkpoint_offloaded, Segment};
    use engine::offload::HostCopy;
    use std::sync::Arc;
    let Some(dev) = gpu() else { return };
    for dtype in [DType::F32, DType::BF16] {
        let x = ops::cast(&randn(&[33, 65], 3), dtype).unwrap().to_device(dev).unwrap();
        let parked = HostCopy::start(&x).unwrap();
        assert_eq!(parked.pinned_bytes(), 33 * 65 * dtype.size_in_bytes());
        let back = parked.restore().unwrap();
        assert_eq!(back.device(), dev);
        assert_eq!(back.to_vec_f32().unwrap(), x.to_vec_f32().unwrap(), "{dtype:?} round trip");
    }
    // Eight segments of 512-wide products with temporaries: the allocator reuses freed blocks
    // while parked inputs travel, as in a model (a missing stream order shows up here).
    let ws: Vec<Tensor> = (0..8).map(|i| randn(&[512, 512], 20 + i).to_device(dev).unwrap().into_var()).collect();
    let x0 = randn(&[256, 512], 30).to_device(dev).unwrap().into_var();
    let run = |offload: bool| -> Vec<Vec<f32>> {
        let mut x = x0.clone();
        for w in &ws {
            let w = w.clone();
            let seg: Segment = Arc::new(move |xs| {
                let h = ops::matmul_nt(&xs[0], &w)?;
                let h = ops::matmul_nt(&ops::scale(&h, 0.05)?, &w)?;
                ops::add(&ops::scale(&h, 0.05)?, &xs[0])
            });
            x = if offload { checkpoint_offloaded(&[x], seg).unwrap() } else { checkpoint(&[x], seg).unwrap() };
        }
        let seed = randn(&[256, 512], 40).to_device(dev).unwrap();
        let g = backward_from(&x, &seed).unwrap();
        std::iter::once(&x0).chain(&ws).map(|t| g.get(t).expect("a gradient").to_vec_f32().unwrap()).collect()
    };
    let (kept, parked) = (run(false), run(true));
    for (i, (a, b)) in kept.iter().zip(&parked).enumerate() {
        assert_eq!(a, b, "gradient {i} differs with offloading");
        assert!(a.iter().any(|&v| v != 0.0));
    }
}

/// NF4 quantization on the GPU against the CPU twin, bit for bit: packed codes, absmax (plain)
/// or the double-quantized codes, scales and offset; f32 and bf16 weights; odd sizes (a short
/// last block, an odd element count), a block of zeros, NaNs, an all-NaN block, and a weight
/// large enough that every warp loops over several blocks.
#[test]
fn cuda_nf4_quantize_matches_cpu() {
    use engine::ops::Nf4;
    use engine::quant::nf4::Nf4Weight;
    let Some(dev) = gpu() else { return };
    for (i, shape) in [[7usize, 99], [64, 64], [300, 257], [4096, 1024]].into_iter().enumerate() {
        let n = shape[0] * shape[1];
        let mut v = Rng::new(60 + i as u64).normal_vec(n, 0.02);
        if n > 400 {
            v[64..128].iter_mut().for_each(|x| *x = 0.0);
            v[128..192].iter_mut().for_each(|x| *x = f32::NAN);
            v[200] = f32::NAN;
            v[300] = 5.0;
        }
        for dtype in [DType::F32, DType::BF16] {
            let host = ops::cast(&Tensor::from_vec(v.clone(), &shape).unwrap(), dtype).unwrap();
            let values = host.to_vec_f32().unwrap();
            for double_quant in [false, true] {
                let want = Nf4Weight::quantize(&values, &shape, double_quant).unwrap();
                let got = Nf4::quantize(&host.to_device(dev).unwrap(), double_quant).unwrap();
                assert!(matches!(got, Nf4::Device(_)), "quantized on the GPU");
                let got = got.to_host().unwrap();
                assert!(
                    got == want,
                    "{shape:?} {dtype:?} double_quant {double_quant}: GPU and CPU quantizations differ"
                );
            }
        }
    }
}

/// `x @ W^T` with an NF4 weight and its input gradient `g @ W` on the GPU against the CPU, in
/// bf16, for row counts that take each GPU path: the GEMV (1, 8 rows; forward only), the fused
/// tiled GEMM (9 rows up to NF4_FUSED_MAX_M) and dequantize + cuBLAS (above).
#[test]
fn cuda_nf4_matmul_paths_match_cpu() {
    use engine::ops::{nf4_matmul_nt, Nf4, NF4_FUSED_MAX_M};
    use engine::quant::nf4::Nf4Weight;
    let Some(dev) = gpu() else { return };
    let (rows, cols) = (192, 576);
    let values = Rng::new(70).normal_vec(rows * cols, 0.02);
    let w = Nf4::Host(std::sync::Arc::new(Nf4Weight::quantize(&values, &[rows, cols], true).unwrap()));
    let wd = w.to_device(dev).unwrap();
    for m in [1, 8, 9, 40, NF4_FUSED_MAX_M, NF4_FUSED_MAX_M + 1, 300] {
        let x = ops::cast(&randn(&[m, cols], 71 + m as u64), DType::BF16).unwrap();
        let seed = ops::cast(&randn(&[m, rows], 72 + m as u64), DType::BF16).unwrap();
        let run = |x: &Tensor, w: &Nf4, seed: &Tensor| {
            let xv = x.clone().into_var();
            let y = nf4_matmul_nt(&xv, w).unwrap();
            let grads = backward_from(&y, seed).unwrap();
            (y, grads.get(&xv).unwrap().clone())
        };
        let (yc, gc) = run(&x, &w, &seed);
        let (yg, gg) = run(&x.to_device(dev).unwrap(), &wd, &seed.to_device(dev).unwrap());
        assert_eq!((yg.dtype(), gg.dtype()), (DType::BF16, DType::BF16));
        assert_close(&format!("nf4 x @ W^T, {m} rows"), &yg, &yc, 2e-2);
        assert_close(&format!("nf4 g @ W, {m} rows"), &gg, &gc, 2e-2);
    }
}
