//! The doctor's quick GPU measurement: about a second each of bf16 GEMM through the engine
//! (cuBLAS, f32 accumulation) and of device-to-device copies.

use anyhow::{anyhow, Result};
use engine::{ops, DType, Device, Tensor};
use std::time::{Duration, Instant};

/// `(TFLOP/s, GB/s)` seen on GPU 0.
pub fn measure() -> Result<(f64, f64)> {
    let dev = Device::cuda(0)?;
    let cuda = engine::cuda::device(0)?;
    let sync = || cuda.gpu.synchronize().map_err(|e| anyhow!("{e}"));
    let n = 8192;
    let a = ops::cast(&Tensor::zeros(&[n, n], DType::F32, dev)?, DType::BF16)?;
    let b = a.clone();
    let gemm_flops = 2.0 * (n as f64).powi(3);
    let gemms = repeat_for(Duration::from_secs(1), &sync, || ops::matmul(&a, &b).map(drop).map_err(Into::into))?;

    let bytes = 1usize << 29;
    let stream = cuda.gpu.stream();
    let src = stream.alloc_zeros::<u8>(bytes).map_err(|e| anyhow!("{e}"))?;
    let mut dst = stream.alloc_zeros::<u8>(bytes).map_err(|e| anyhow!("{e}"))?;
    let copies =
        repeat_for(Duration::from_secs(1), &sync, || stream.memcpy_dtod(&src, &mut dst).map_err(|e| anyhow!("{e}")))?;
    // A copy reads and writes every byte.
    Ok((gemm_flops / gemms / 1e12, 2.0 * bytes as f64 / copies / 1e9))
}

/// Runs `f` until `budget` has passed (after one warm-up call); seconds per call.
fn repeat_for(budget: Duration, sync: &dyn Fn() -> Result<()>, mut f: impl FnMut() -> Result<()>) -> Result<f64> {
    f()?;
    sync()?;
    let (start, mut calls) = (Instant::now(), 0u32);
    while start.elapsed() < budget {
        for _ in 0..10 {
            f()?;
        }
        sync()?;
        calls += 10;
    }
    Ok(start.elapsed().as_secs_f64() / calls as f64)
}
