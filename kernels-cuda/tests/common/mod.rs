//! Shared by kernels-cuda's GPU test files: opening the device (or skipping), seeded random
//! inputs, the storage types' test constants, host <-> device copies and NaN-poisoned outputs.
#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::OnceLock;

use kernels_cuda::cudarc::driver::{CudaSlice, DeviceRepr, ValidAsZeroBits};
use kernels_cuda::{bf16, Error, Gpu, KernelFloat};

/// This test executable's kernel cache: a fresh folder per process, so that every run compiles.
pub fn cache_dir() -> PathBuf {
    let name = format!("ferrotune-{}-{}", env!("CARGO_CRATE_NAME"), std::process::id());
    std::env::temp_dir().join(name).join("kernels")
}

/// The device shared by the tests of this process, or `None` (with a printed reason) when there
/// is no libcuda or no device. Any other error opening it fails the test.
pub fn gpu() -> Option<&'static Gpu> {
    static GPU: OnceLock<Result<Gpu, String>> = OnceLock::new();
    let opened = GPU.get_or_init(|| match Gpu::with_cache_dir(0, Some(cache_dir())) {
        Ok(gpu) => Ok(gpu),
        Err(e @ (Error::LibraryNotFound { .. } | Error::NoDevice { .. })) => Err(e.to_string()),
        Err(e) => panic!("libcuda is present but opening device 0 failed: {e}"),
    });
    match opened {
        Ok(gpu) => Some(gpu),
        Err(reason) => {
            println!("skipped: no CUDA device ({reason})");
            None
        }
    }
}

/// SplitMix64: a small seeded generator, so every run sees the same inputs.
pub struct Rng(pub u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in [lo, hi).
    pub fn uniform(&mut self, lo: f32, hi: f32) -> f32 {
        let unit = (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32;
        lo + (hi - lo) * unit
    }

    /// `n` values uniform in [lo, hi).
    pub fn vec(&mut self, n: usize, lo: f32, hi: f32) -> Vec<f32> {
        (0..n).map(|_| self.uniform(lo, hi)).collect()
    }

    /// Uniform integer in 0..n.
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    /// Standard normal (Box-Muller).
    pub fn normal(&mut self) -> f32 {
        let u = ((self.next_u64() >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
        let v = ((self.next_u64() >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
        ((-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()) as f32
    }
}

/// What the tests need of a storage type beyond [`KernelFloat`].
pub trait TestFloat: KernelFloat + std::fmt::Debug + ValidAsZeroBits {
    const NAME: &'static str;
    /// Default tolerances of a result stored in this type.
    const ATOL: f64;
    const RTOL: f64;
    const NAN: Self;
    fn from_f32(v: f32) -> Self;
    fn to_f64(self) -> f64;
}

impl TestFloat for f32 {
    const NAME: &'static str = "f32";
    const ATOL: f64 = 1e-5;
    const RTOL: f64 = 1e-5;
    const NAN: Self = f32::NAN;
    fn from_f32(v: f32) -> Self {
        v
    }
    fn to_f64(self) -> f64 {
        self as f64
    }
}

impl TestFloat for bf16 {
    const NAME: &'static str = "bf16";
    const ATOL: f64 = 1e-2;
    const RTOL: f64 = 1e-2;
    const NAN: Self = bf16::NAN;
    fn from_f32(v: f32) -> Self {
        bf16::from_f32(v)
    }
    fn to_f64(self) -> f64 {
        self.to_f64()
    }
}

/// `v` rounded to the storage type.
pub fn to_dtype<T: TestFloat>(v: &[f32]) -> Vec<T> {
    v.iter().map(|&x| T::from_f32(x)).collect()
}

pub fn widen<T: TestFloat>(v: &[T]) -> Vec<f64> {
    v.iter().map(|&x| x.to_f64()).collect()
}

pub fn upload<T: DeviceRepr>(gpu: &Gpu, v: &[T]) -> CudaSlice<T> {
    gpu.stream().clone_htod(v).unwrap_or_else(|e| panic!("upload of {} elements: {e}", v.len()))
}

/// A device buffer of `n` NaNs: any element the kernel leaves unwritten fails the comparison.
pub fn poisoned<T: TestFloat>(gpu: &Gpu, n: usize) -> CudaSlice<T> {
    upload(gpu, &vec![T::NAN; n])
}

pub fn download<T: DeviceRepr>(gpu: &Gpu, d: &CudaSlice<T>) -> Vec<T> {
    gpu.stream().clone_dtoh(d).unwrap_or_else(|e| panic!("download of {} elements: {e}", d.len()))
}

/// Waits for the stream; a failed kernel panics naming `what`.
pub fn sync(gpu: &Gpu, what: &str) {
    gpu.synchronize().unwrap_or_else(|e| panic!("{what}: kernel: {e}"));
}
