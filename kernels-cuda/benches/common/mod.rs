//! Shared by the criterion benches: opening the GPU (or skipping), random device buffers, and
//! timing with CUDA events.
//!
//! Every bench's `main` starts with [`gpu`]: without libcuda or a device it prints
//! `skipped: no CUDA device (...)` and the bench exits 0 having measured nothing. Timing goes
//! through [`time`], which criterion calls via `iter_custom`: a large device copy is enqueued
//! first so that the measured launches are queued while the card is still busy, then the
//! launches are bracketed by two CUDA events and the end event is synchronized before the time
//! is read. Results count the card's time for the launches, not the host's.
//!
//! Shared with the root package's benches through `#[path]` (see `benches/loss.rs`).
#![allow(dead_code)]

use std::sync::OnceLock;
use std::time::Duration;

use criterion::Criterion;
use kernels_cuda::cudarc::driver::sys::CUevent_flags;
use kernels_cuda::cudarc::driver::CudaSlice;
use kernels_cuda::{bf16, Error, Gpu};

/// The device the benches of this process share, or `None` (after printing why) where there is
/// no libcuda or no device. Any other error opening it is a bug worth a panic.
pub fn gpu() -> Option<&'static Gpu> {
    static GPU: OnceLock<Option<Gpu>> = OnceLock::new();
    GPU.get_or_init(|| match Gpu::new(0) {
        Ok(gpu) => {
            println!("device: {} ({} SMs, {})", gpu.name(), gpu.multiprocessors(), gpu.arch());
            Some(gpu)
        }
        Err(e @ (Error::LibraryNotFound { .. } | Error::NoDevice { .. })) => {
            println!("skipped: no CUDA device ({e})");
            None
        }
        Err(e) => panic!("libcuda is present but opening device 0 failed: {e}"),
    })
    .as_ref()
}

/// Criterion with defaults short enough for a device session (overridable from the command
/// line: `--warm-up-time`, `--measurement-time`, `--sample-size`).
/// The body of every kernel bench's `main`: without a GPU, a skip message; else `bench`
/// under [`criterion`], then criterion's summary.
pub fn run(bench: fn(&mut Criterion, &Gpu)) {
    let Some(gpu) = gpu() else { return };
    let mut c = criterion();
    bench(&mut c, gpu);
    c.final_summary();
}

pub fn criterion() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .sample_size(20)
        .configure_from_args()
}

/// Bytes of the copy enqueued ahead of every timed batch (read + write take ~0.2 ms).
const HEAD_START_BYTES: usize = 256 << 20;

/// The device time of `iters` calls of `launch(i)` (`i` = 0, 1, ...), measured with CUDA events.
/// The launches must all go to `gpu.stream()` (every launcher of kernels-cuda does, and so does
/// a cuBLAS handle created on that stream).
pub fn time(gpu: &Gpu, iters: u64, mut launch: impl FnMut(usize)) -> Duration {
    static HEAD: OnceLock<(CudaSlice<u8>, std::sync::Mutex<CudaSlice<u8>>)> = OnceLock::new();
    let s = gpu.stream();
    let (src, dst) = HEAD.get_or_init(|| {
        let src = s.alloc_zeros::<u8>(HEAD_START_BYTES).expect("allocating the head-start buffer");
        let dst = s.alloc_zeros::<u8>(HEAD_START_BYTES).expect("allocating the head-start buffer");
        (src, std::sync::Mutex::new(dst))
    });
    let ctx = gpu.context();
    let start = ctx.new_event(Some(CUevent_flags::CU_EVENT_DEFAULT)).expect("cuEventCreate");
    let end = ctx.new_event(Some(CUevent_flags::CU_EVENT_DEFAULT)).expect("cuEventCreate");
    s.memcpy_dtod(src, &mut *dst.lock().unwrap()).expect("head-start copy");
    start.record(s).expect("cuEventRecord");
    for i in 0..iters as usize {
        launch(i);
    }
    end.record(s).expect("cuEventRecord");
    end.synchronize().expect("synchronizing the end event (a launch failed?)");
    let ms = start.elapsed_ms(&end).expect("cuEventElapsedTime") as f64;
    Duration::from_secs_f64(ms / 1e3)
}

/// Waits for the stream, panicking with the launch error if there was one.
pub fn sync(gpu: &Gpu) {
    gpu.synchronize().expect("synchronizing the stream");
}

/// `n` values uniform in [-scale, scale) from a seeded SplitMix64 (every run sees the same data).
pub fn uniform(n: usize, scale: f32, seed: u64) -> Vec<f32> {
    let mut state = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ 0x2545_f491_4f6c_dd1d;
    (0..n)
        .map(|_| {
            state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            let unit = ((z ^ (z >> 31)) >> 40) as f32 / (1u64 << 24) as f32;
            scale * (2.0 * unit - 1.0)
        })
        .collect()
}

/// Random bytes (NF4 codes, absmax codes).
pub fn random_bytes(n: usize, seed: u64) -> Vec<u8> {
    uniform(n, 1.0, seed).into_iter().map(|v| ((v + 1.0) * 127.99) as u8).collect()
}

/// `n` f32 values uniform in [-scale, scale) on the device.
pub fn dev_f32(gpu: &Gpu, n: usize, scale: f32, seed: u64) -> CudaSlice<f32> {
    gpu.stream().clone_htod(&uniform(n, scale, seed)).expect("host -> device copy")
}

/// `n` bf16 values uniform in [-scale, scale) on the device.
pub fn dev_bf16(gpu: &Gpu, n: usize, scale: f32, seed: u64) -> CudaSlice<bf16> {
    let v: Vec<bf16> = uniform(n, scale, seed).into_iter().map(bf16::from_f32).collect();
    gpu.stream().clone_htod(&v).expect("host -> device copy")
}

/// `n` zeros of `T` on the device.
pub fn zeros<T: kernels_cuda::cudarc::driver::DeviceRepr + kernels_cuda::cudarc::driver::ValidAsZeroBits>(
    gpu: &Gpu,
    n: usize,
) -> CudaSlice<T> {
    gpu.stream().alloc_zeros::<T>(n).expect("device allocation")
}

/// How many copies of a `bytes`-sized input to rotate through so that consecutive launches do
/// not find it in L2 (50-60 MB on H100/H200): enough for 256 MB, at least one.
pub fn copies_for(bytes: usize) -> usize {
    (256usize << 20).div_ceil(bytes.max(1)).clamp(1, 64)
}

/// Formats `rows x cols` for benchmark ids.
pub fn dims(d: &[usize]) -> String {
    d.iter().map(|x| x.to_string()).collect::<Vec<_>>().join("x")
}

/// `y[m, n] = x[m, k] @ w[n, k]^T` with cuBLAS (bf16, f32 accumulation), all row-major.
pub fn gemm_nt(
    blas: &kernels_cuda::cudarc::cublas::CudaBlas,
    x: &CudaSlice<bf16>,
    w: &CudaSlice<bf16>,
    y: &mut CudaSlice<bf16>,
    (m, n, k): (usize, usize, usize),
) {
    gemm(blas, x, w, y, (m, n, k), true);
}

/// `y[m, n] = x[m, k] @ w[k, n]` with cuBLAS (bf16, f32 accumulation), all row-major.
pub fn gemm_nn(
    blas: &kernels_cuda::cudarc::cublas::CudaBlas,
    x: &CudaSlice<bf16>,
    w: &CudaSlice<bf16>,
    y: &mut CudaSlice<bf16>,
    (m, n, k): (usize, usize, usize),
) {
    gemm(blas, x, w, y, (m, n, k), false);
}

fn gemm(
    blas: &kernels_cuda::cudarc::cublas::CudaBlas,
    x: &CudaSlice<bf16>,
    w: &CudaSlice<bf16>,
    y: &mut CudaSlice<bf16>,
    (m, n, k): (usize, usize, usize),
    w_transposed: bool,
) {
    use kernels_cuda::cudarc::cublas::{sys::cublasOperation_t, Gemm, GemmConfig};
    // Column-major view: y^T [n, m] = op(w) [n, k] @ x^T [k, m]; w [n, k] row-major is w^T in
    // column-major (op T), w [k, n] row-major is [n, k] column-major already (op N).
    let (transa, lda) =
        if w_transposed { (cublasOperation_t::CUBLAS_OP_T, k) } else { (cublasOperation_t::CUBLAS_OP_N, n) };
    let cfg = GemmConfig {
        transa,
        transb: cublasOperation_t::CUBLAS_OP_N,
        m: n as i32,
        n: m as i32,
        k: k as i32,
        alpha: bf16::ONE,
        lda: lda as i32,
        ldb: k as i32,
        beta: bf16::ZERO,
        ldc: n as i32,
    };
    assert!(x.len() >= m * k && w.len() >= n * k && y.len() >= m * n, "gemm operands too small");
    // SAFETY: the buffers hold [m, k], [n, k] (or [k, n]) and [m, n] row-major (checked above),
    // which is what the column-major dimensions and leading dimensions describe.
    unsafe { blas.gemm(cfg, w, x, y) }.expect("cuBLAS gemm");
}

/// A cuBLAS handle on the benches' stream.
pub fn blas(gpu: &Gpu) -> kernels_cuda::cudarc::cublas::CudaBlas {
    kernels_cuda::cudarc::cublas::CudaBlas::new(gpu.stream().clone()).expect("creating a cuBLAS handle")
}
