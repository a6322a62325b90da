//! GPU tests of the NVRTC pipeline and the first kernels. Every test name contains `cuda`.
//!
//! Each test first opens device 0; without libcuda or a device it prints
//! `skipped: no CUDA device (<reason>)` and returns (any other failure to open it fails the test).
//! Kernels are compared with plain f64 loops written here, on seeded random inputs of several
//! shapes, with every output buffer poisoned with NaN before the launch so that an element the
//! kernel does not write fails. Tolerance: `atol + rtol * scale` with (atol, rtol) = (1e-5, 1e-5)
//! for f32 and (1e-2, 1e-2) for bf16; `scale` is `|ref|`, except in the RMSNorm backward where it
//! is the sum of the magnitudes of the two terms that are subtracted (`|rstd*dy*w| + |c*x|`): for
//! tiny widths they nearly cancel, and f32 cannot do better than its epsilon times the terms.

use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

use kernels_cuda::compile::{self, CacheSource};
use kernels_cuda::cudarc::driver::sys::CUevent_flags;
use kernels_cuda::ops::elementwise::{add, cast_bf16_to_f32, cast_f32_to_bf16};
use kernels_cuda::ops::rms_norm::{rms_norm_bwd, rms_norm_fwd};
use kernels_cuda::source::{KernelModule, MODULES};
use kernels_cuda::{bf16, cache_stats, probe, CudaLibrary, Error, Gpu};

mod common;
use common::*;

/// (rows, width) of every correctness test.
const SHAPES: &[(usize, usize)] = &[(1, 1), (3, 7), (17, 576), (64, 4096), (5, 4097)];

/// RMSNorm epsilon of the tests (Llama's).
const EPS: f32 = 1e-5;

/// Set in the environment of the child processes of `cuda_disk_cache_fresh_process`.
const CHILD_ENV: &str = "FERROTUNE_TEST_CACHE_CHILD";

// ---------------------------------------------------------------------------------------------
// The device (opened in common/)

/// The architecture to compile for when only NVRTC is needed: the device's when there is one,
/// else `sm_90`; `None` (with a printed reason) without libnvrtc.
fn nvrtc_arch() -> Option<String> {
    if !CudaLibrary::Nvrtc.is_loadable() {
        println!("skipped: libnvrtc not loadable");
        return None;
    }
    if CudaLibrary::Driver.is_loadable() {
        if let Some(gpu) = gpu() {
            return Some(gpu.arch());
        }
    }
    Some("sm_90".to_string())
}

// ---------------------------------------------------------------------------------------------
// References and comparisons

/// Asserts `|got - want| <= atol + rtol * scale` everywhere (NaN fails), listing the first
/// failures with their (row, column) in a `width`-wide layout.
#[allow(clippy::too_many_arguments)]
fn assert_close(what: &str, got: &[f64], want: &[f64], scale: &[f64], width: usize, atol: f64, rtol: f64) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let mut failures = Vec::new();
    let (mut max_abs, mut max_rel) = (0.0f64, 0.0f64);
    for i in 0..got.len() {
        let err = (got[i] - want[i]).abs();
        let tol = atol + rtol * scale[i].abs();
        if err.is_finite() {
            max_abs = max_abs.max(err);
            max_rel = max_rel.max(err / want[i].abs().max(f64::MIN_POSITIVE));
        }
        if err.is_nan() || err > tol {
            failures.push((i, err, tol));
        }
    }
    if !failures.is_empty() {
        let listed: Vec<String> = failures
            .iter()
            .take(8)
            .map(|&(i, err, tol)| {
                format!(
                    "  [row {}, col {}] got {:e}, want {:e} (err {:e} > tol {:e})",
                    i / width,
                    i % width,
                    got[i],
                    want[i],
                    err,
                    tol
                )
            })
            .collect();
        panic!(
            "{what}: {} of {} elements out of tolerance (atol {atol:e}, rtol {rtol:e}); \
             max finite abs err {max_abs:e}, max rel err {max_rel:e}; first failures:\n{}",
            failures.len(),
            got.len(),
            listed.join("\n")
        );
    }
    println!("{what}: ok ({} elements, max abs err {max_abs:e}, max rel err {max_rel:e})", got.len());
}

/// RMSNorm forward in f64: (y, rstd). Plain index loops, to read like the kernel.
#[allow(clippy::needless_range_loop)]
fn rms_norm_fwd_ref(x: &[f64], w: &[f64], rows: usize, width: usize, eps: f64) -> (Vec<f64>, Vec<f64>) {
    let mut y = vec![0.0; rows * width];
    let mut rstd = vec![0.0; rows];
    for r in 0..rows {
        let row = &x[r * width..(r + 1) * width];
        let mean_sq = row.iter().map(|v| v * v).sum::<f64>() / width as f64;
        rstd[r] = 1.0 / (mean_sq + eps).sqrt();
        for i in 0..width {
            y[r * width + i] = row[i] * rstd[r] * w[i];
        }
    }
    (y, rstd)
}

/// RMSNorm backward (dx only) in f64, given the saved rstd: (dx, per-element error scale).
#[allow(clippy::needless_range_loop)]
fn rms_norm_bwd_ref(x: &[f64], w: &[f64], rstd: &[f64], dy: &[f64], rows: usize, width: usize) -> (Vec<f64>, Vec<f64>) {
    let mut dx = vec![0.0; rows * width];
    let mut scale = vec![0.0; rows * width];
    for r in 0..rows {
        let s = r * width;
        let dot: f64 = (0..width).map(|i| dy[s + i] * w[i] * x[s + i]).sum();
        let c = rstd[r].powi(3) * dot / width as f64;
        for i in 0..width {
            let a = rstd[r] * dy[s + i] * w[i];
            let b = c * x[s + i];
            dx[s + i] = a - b;
            scale[s + i] = a.abs() + b.abs();
        }
    }
    (dx, scale)
}

// ---------------------------------------------------------------------------------------------
// The pipeline: probe, compile, caches

#[test]
fn cuda_probe_reports_the_device() {
    let Some(gpu) = gpu() else { return };
    let info = probe().unwrap_or_else(|e| panic!("probe() failed with a device present: {e}"));
    println!("{info}");
    let device = info.devices.first().unwrap_or_else(|| panic!("probe() lists no device: {info:?}"));
    assert_eq!(device.compute_capability, gpu.compute_capability());
    assert_eq!(device.arch, gpu.arch());
    assert_eq!(device.bf16, device.compute_capability.0 >= 8);
    assert!(device.total_memory >= device.free_memory && device.free_memory > 0, "{device:?}");
    assert!(info.nvrtc_version.is_some(), "NVRTC not loadable: {info:?}");
    let libcuda = info.libraries.iter().find(|l| l.library == CudaLibrary::Driver).unwrap();
    assert!(libcuda.loaded && libcuda.path.is_some(), "{libcuda:?}");
}

/// NVRTC needs no device: with libnvrtc and the CUDA headers reachable (LD_LIBRARY_PATH,
/// CUDA_HOME) this runs on any machine, for Ampere and Hopper.
#[test]
fn cuda_nvrtc_compiles_every_module_without_a_device() {
    if nvrtc_arch().is_none() {
        return;
    }
    println!("NVRTC {:?}, include dirs {:?}", compile::nvrtc_version().unwrap(), compile::include_dirs());
    for arch in ["sm_80", "sm_90"] {
        for module in MODULES {
            let compiled = compile::compile_module(module, arch, None)
                .unwrap_or_else(|e| panic!("{} for {arch}: {e}", module.file));
            println!("{} for {arch}: {} bytes ({})", module.file, compiled.image.len(), compiled.source);
            assert!(compiled.image.starts_with(b"\x7fELF"), "not a cubin");
        }
    }
}

#[test]
fn cuda_modules_compile_and_load() {
    let Some(gpu) = gpu() else { return };
    for module in MODULES {
        let loaded = gpu.module(module).unwrap_or_else(|e| panic!("module {} failed: {e}", module.name));
        println!(
            "{} for {}: {} in {:.1} ms, cache file {:?}, write error {:?}",
            module.file,
            gpu.arch(),
            loaded.source,
            loaded.load_time.as_secs_f64() * 1e3,
            loaded.disk_path,
            loaded.disk_error
        );
        assert_eq!(loaded.kernels.len(), module.kernels.len());
        assert!(loaded.disk_error.is_none(), "{:?}", loaded.disk_error);
        let path = loaded.disk_path.as_ref().expect("a cache dir was given");
        assert!(compile::read_cached(path).is_some(), "no cubin at {}", path.display());
    }
}

/// A module no other test compiles, so its first compile in this process is a real one.
const CACHE_PROBE: KernelModule = KernelModule {
    name: "cache_probe",
    file: "cache_probe.cu",
    source: "extern \"C\" __global__ void cache_probe_fwd_f32(float *x) { x[threadIdx.x] = 1.0f; }\n",
    headers: &[],
    kernels: &["cache_probe_fwd_f32"],
};

#[test]
fn cuda_second_compile_hits_memory_cache() {
    let Some(arch) = nvrtc_arch() else { return };
    let before = cache_stats();
    let t = Instant::now();
    let first = compile::compile_module(&CACHE_PROBE, &arch, None).unwrap_or_else(|e| panic!("first compile: {e}"));
    let first_ms = t.elapsed().as_secs_f64() * 1e3;
    let t = Instant::now();
    let second = compile::compile_module(&CACHE_PROBE, &arch, None).unwrap_or_else(|e| panic!("second compile: {e}"));
    let second_ms = t.elapsed().as_secs_f64() * 1e3;
    let after = cache_stats();
    println!(
        "first: {} in {first_ms:.2} ms; second: {} in {second_ms:.3} ms; stats {before:?} -> {after:?}",
        first.source, second.source
    );
    assert_eq!(first.source, CacheSource::Compiled);
    assert_eq!(second.source, CacheSource::Memory);
    // The counters are process-wide: other tests running in parallel may add to them.
    assert!(after.compiles > before.compiles && after.memory_hits > before.memory_hits);
    assert!(std::sync::Arc::ptr_eq(&first.image, &second.image), "the second request did not get the first cubin");
    assert!(first.image.starts_with(b"\x7fELF"), "not a cubin");
}

#[test]
fn cuda_compile_error_names_the_file() {
    let Some(arch) = nvrtc_arch() else { return };
    let broken = KernelModule {
        name: "broken",
        file: "broken.cu",
        source: "extern \"C\" __global__ void broken_fwd_f32(float *x) { x[0] = undefined_name; }\n",
        headers: &[],
        kernels: &["broken_fwd_f32"],
    };
    let err = compile::compile_module(&broken, &arch, None).expect_err("a broken source compiled");
    let message = err.to_string();
    println!("{message}");
    assert!(matches!(err, Error::Compile { .. }), "{message}");
    assert!(message.contains("broken.cu"), "{message}");
    assert!(message.contains("undefined_name"), "log missing: {message}");
}

/// Runs this test executable's `cuda_disk_cache_child` in a fresh process with `FERROTUNE_CACHE`
/// set to `root`; returns (module name, source, milliseconds) per module it loaded.
fn run_child(root: &std::path::Path) -> Vec<(String, String, f64)> {
    let exe = std::env::current_exe().unwrap();
    let out = Command::new(&exe)
        .args(["cuda_disk_cache_child", "--exact", "--nocapture", "--test-threads=1"])
        .env("FERROTUNE_CACHE", root)
        .env(CHILD_ENV, "1")
        .output()
        .unwrap_or_else(|e| panic!("running {}: {e}", exe.display()));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "child failed ({}):\n{stdout}\n{stderr}", out.status);
    let lines: Vec<(String, String, f64)> = stdout
        .lines()
        // libtest may print "test cuda_disk_cache_child ... " on the same line.
        .filter_map(|l| l.split_once("CACHE-CHILD ").map(|(_, rest)| rest))
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f[0].to_string(), f[1].to_string(), f[2].parse().unwrap())
        })
        .collect();
    assert_eq!(lines.len(), MODULES.len(), "child output:\n{stdout}\n{stderr}");
    lines
}

#[test]
fn cuda_disk_cache_fresh_process() {
    let Some(gpu) = gpu() else { return };
    let root = std::env::temp_dir().join(format!(
        "ferrotune-disk-cache-{}-{}",
        std::process::id(),
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos()
    ));
    let sources = |run: &[(String, String, f64)]| -> Vec<String> { run.iter().map(|(_, s, _)| s.clone()).collect() };

    let first = run_child(&root);
    println!("fresh process, empty cache: {first:?}");
    assert!(sources(&first).iter().all(|s| s == "compiled"), "{first:?}");
    let files: Vec<PathBuf> = std::fs::read_dir(root.join("kernels")).unwrap().map(|e| e.unwrap().path()).collect();
    println!("cache files: {files:?}");
    assert_eq!(files.len(), MODULES.len(), "{files:?}");
    assert!(files.iter().all(|f| f.extension().is_some_and(|e| e == "cubin")));

    let second = run_child(&root);
    println!("fresh process, warm cache: {second:?}");
    assert!(sources(&second).iter().all(|s| s == "disk"), "{second:?}");

    // A corrupt file is ignored, recompiled and rewritten.
    let victim = files.iter().find(|f| f.file_name().unwrap().to_string_lossy().starts_with("rms_norm-")).unwrap();
    std::fs::write(victim, b"not a cubin").unwrap();
    let third = run_child(&root);
    println!("fresh process, corrupt rms_norm file: {third:?}");
    for (module, source, _) in &third {
        let want = if module == "rms_norm" { "compiled" } else { "disk" };
        assert_eq!(source, want, "{module}: {third:?}");
    }
    assert!(compile::read_cached(victim).is_some(), "not rewritten");

    // A well-formed cubin the driver rejects (built for another architecture) is compiled afresh.
    let arch = gpu.arch();
    let other_arch = if arch == "sm_80" { "sm_90" } else { "sm_80" };
    let foreign = compile::compile_module(&kernels_cuda::source::RMS_NORM, other_arch, None)
        .unwrap_or_else(|e| panic!("compiling for {other_arch}: {e}"));
    std::fs::write(victim, foreign.image.as_slice()).unwrap();
    let fourth = run_child(&root);
    println!("fresh process, {other_arch} cubin in the {arch} rms_norm file: {fourth:?}");
    for (module, source, _) in &fourth {
        let want = if module == "rms_norm" { "compiled" } else { "disk" };
        assert_eq!(source, want, "{module}: {fourth:?}");
    }
    let replaced = compile::read_cached(victim).expect("no cubin left");
    assert!(replaced != *foreign.image, "the {other_arch} cubin was not replaced by the {arch} one");
    let _ = std::fs::remove_dir_all(&root);
}

/// The child half of `cuda_disk_cache_fresh_process`; does nothing when run on its own.
#[test]
fn cuda_disk_cache_child() {
    if std::env::var_os(CHILD_ENV).is_none() {
        println!("helper of cuda_disk_cache_fresh_process: nothing to do on its own");
        return;
    }
    let gpu = Gpu::new(0).unwrap_or_else(|e| panic!("child could not open the GPU: {e}"));
    for module in MODULES {
        let loaded = gpu.module(module).unwrap_or_else(|e| panic!("child: module {}: {e}", module.name));
        println!("CACHE-CHILD {} {} {:.3}", module.name, loaded.source, loaded.load_time.as_secs_f64() * 1e3);
    }
    println!("child cache stats: {:?}", cache_stats());
}

// ---------------------------------------------------------------------------------------------
// RMSNorm

fn check_rms_norm_fwd<T: TestFloat>(gpu: &Gpu, seed: u64) {
    let mut rng = Rng::new(seed);
    for &(rows, width) in SHAPES {
        let what = format!("rms_norm_fwd_{} {rows}x{width}", T::NAME);
        let x: Vec<T> = to_dtype(&rng.vec(rows * width, -1.0, 1.0));
        let w: Vec<T> = to_dtype(&rng.vec(width, 0.5, 1.5));
        let (dx, dw) = (upload(gpu, &x), upload(gpu, &w));
        let mut dy = poisoned::<T>(gpu, rows * width);
        let mut drstd = poisoned::<f32>(gpu, rows);
        rms_norm_fwd(gpu, &dx, &dw, &mut dy, &mut drstd, rows, width, EPS)
            .unwrap_or_else(|e| panic!("{what}: launch: {e}"));
        gpu.synchronize().unwrap_or_else(|e| panic!("{what}: kernel: {e}"));
        let (y_ref, rstd_ref) = rms_norm_fwd_ref(&widen(&x), &widen(&w), rows, width, EPS as f64);
        let y = widen(&download(gpu, &dy));
        let rstd = widen(&download(gpu, &drstd));
        assert_close(&format!("{what} y"), &y, &y_ref, &y_ref, width, T::ATOL, T::RTOL);
        assert_close(&format!("{what} rstd"), &rstd, &rstd_ref, &rstd_ref, 1, 1e-5, 1e-5);
    }
}

fn check_rms_norm_bwd<T: TestFloat>(gpu: &Gpu, seed: u64) {
    let mut rng = Rng::new(seed);
    for &(rows, width) in SHAPES {
        let what = format!("rms_norm_bwd_{} {rows}x{width}", T::NAME);
        let x: Vec<T> = to_dtype(&rng.vec(rows * width, -1.0, 1.0));
        let w: Vec<T> = to_dtype(&rng.vec(width, 0.5, 1.5));
        let g: Vec<T> = to_dtype(&rng.vec(rows * width, -1.0, 1.0));
        let (xf, wf, gf) = (widen(&x), widen(&w), widen(&g));
        // rstd as the forward saves it: f32.
        let (_, rstd64) = rms_norm_fwd_ref(&xf, &wf, rows, width, EPS as f64);
        let rstd: Vec<f32> = rstd64.iter().map(|&r| r as f32).collect();
        let rstd_used: Vec<f64> = rstd.iter().map(|&r| r as f64).collect();
        let (d_x, d_w, d_rstd, d_g) = (upload(gpu, &x), upload(gpu, &w), upload(gpu, &rstd), upload(gpu, &g));
        let mut d_dx = poisoned::<T>(gpu, rows * width);
        rms_norm_bwd(gpu, &d_x, &d_w, &d_rstd, &d_g, &mut d_dx, rows, width)
            .unwrap_or_else(|e| panic!("{what}: launch: {e}"));
        gpu.synchronize().unwrap_or_else(|e| panic!("{what}: kernel: {e}"));
        let (dx_ref, scale) = rms_norm_bwd_ref(&xf, &wf, &rstd_used, &gf, rows, width);
        let dx = widen(&download(gpu, &d_dx));
        assert_close(&format!("{what} dx"), &dx, &dx_ref, &scale, width, T::ATOL, T::RTOL);
    }
}

#[test]
fn cuda_rms_norm_fwd_f32() {
    let Some(gpu) = gpu() else { return };
    check_rms_norm_fwd::<f32>(gpu, 1);
}

#[test]
fn cuda_rms_norm_fwd_bf16() {
    let Some(gpu) = gpu() else { return };
    check_rms_norm_fwd::<bf16>(gpu, 2);
}

#[test]
fn cuda_rms_norm_bwd_f32() {
    let Some(gpu) = gpu() else { return };
    check_rms_norm_bwd::<f32>(gpu, 3);
}

#[test]
fn cuda_rms_norm_bwd_bf16() {
    let Some(gpu) = gpu() else { return };
    check_rms_norm_bwd::<bf16>(gpu, 4);
}

// ---------------------------------------------------------------------------------------------
// Elementwise

/// Values the casts must get right besides random ones.
const SPECIALS: &[f32] = &[
    0.0,
    -0.0,
    1.0,
    -1.0,
    f32::INFINITY,
    f32::NEG_INFINITY,
    f32::MAX,
    -f32::MAX,
    f32::MIN_POSITIVE,
    1e-40, // subnormal
    3.0e38,
    1.0 + 1.0 / 256.0, // a tie between bf16 neighbours: rounds to even (1.0)
    1.0 + 3.0 / 256.0, // a tie: rounds to even (1 + 2/128)
    65504.0,
    f32::NAN,
];

/// Random values over many magnitudes, then the specials.
fn cast_inputs(rng: &mut Rng, n: usize) -> Vec<f32> {
    let mut v: Vec<f32> = (0..n).map(|i| rng.uniform(-1.0, 1.0) * 10f32.powi((i % 9) as i32 - 4)).collect();
    v.extend_from_slice(SPECIALS);
    v
}

#[test]
fn cuda_cast_f32_to_bf16() {
    let Some(gpu) = gpu() else { return };
    let mut rng = Rng::new(5);
    for &(rows, width) in SHAPES {
        let what = format!("cast_f32_to_bf16 n={}+{}", rows * width, SPECIALS.len());
        let x = cast_inputs(&mut rng, rows * width);
        let mut d_y = poisoned::<bf16>(gpu, x.len());
        cast_f32_to_bf16(gpu, &upload(gpu, &x), &mut d_y).unwrap_or_else(|e| panic!("{what}: launch: {e}"));
        gpu.synchronize().unwrap_or_else(|e| panic!("{what}: kernel: {e}"));
        let y = download(gpu, &d_y);
        // Round to nearest even, like half's conversion: bit for bit (NaN only needs to stay NaN).
        let wrong: Vec<String> = x
            .iter()
            .zip(&y)
            .enumerate()
            .filter(|(_, (&xi, &yi))| {
                let want = bf16::from_f32(xi);
                if xi.is_nan() {
                    !yi.is_nan()
                } else {
                    yi.to_bits() != want.to_bits()
                }
            })
            .take(8)
            .map(|(i, (&xi, &yi))| {
                format!(
                    "  [{i}] x {xi:e} ({:#010x}): got {:#06x}, want {:#06x}",
                    xi.to_bits(),
                    yi.to_bits(),
                    bf16::from_f32(xi).to_bits()
                )
            })
            .collect();
        assert!(wrong.is_empty(), "{what}: not rounded to nearest even:\n{}", wrong.join("\n"));
        // And within the bf16 tolerance of the f64 value (finite inputs of bf16 range).
        let (got, want): (Vec<f64>, Vec<f64>) = x
            .iter()
            .zip(&y)
            .filter(|(xi, _)| xi.is_finite() && xi.abs() < 3.0e38)
            .map(|(&xi, &yi)| (yi.to_f64(), xi as f64))
            .unzip();
        assert_close(&what, &got, &want, &want, got.len(), 1e-2, 1e-2);
    }
}

#[test]
fn cuda_cast_bf16_to_f32() {
    let Some(gpu) = gpu() else { return };
    let mut rng = Rng::new(6);
    for &(rows, width) in SHAPES {
        let what = format!("cast_bf16_to_f32 n={}+{}", rows * width, SPECIALS.len());
        let x: Vec<bf16> = to_dtype(&cast_inputs(&mut rng, rows * width));
        let mut d_y = poisoned::<f32>(gpu, x.len());
        cast_bf16_to_f32(gpu, &upload(gpu, &x), &mut d_y).unwrap_or_else(|e| panic!("{what}: launch: {e}"));
        gpu.synchronize().unwrap_or_else(|e| panic!("{what}: kernel: {e}"));
        let y = download(gpu, &d_y);
        // Exact: every bf16 is an f32.
        let wrong: Vec<String> = x
            .iter()
            .zip(&y)
            .enumerate()
            .filter(|(_, (&xi, &yi))| if xi.is_nan() { !yi.is_nan() } else { yi.to_bits() != xi.to_f32().to_bits() })
            .take(8)
            .map(|(i, (&xi, &yi))| format!("  [{i}] x {xi} got {yi:e} want {:e}", xi.to_f32()))
            .collect();
        assert!(wrong.is_empty(), "{what}: not exact:\n{}", wrong.join("\n"));
        println!("{what}: ok ({} elements, exact)", x.len());
    }
}

fn check_add<T: TestFloat>(gpu: &Gpu, seed: u64) {
    let mut rng = Rng::new(seed);
    for &(rows, width) in SHAPES {
        let n = rows * width;
        let what = format!("add_fwd_{} n={n}", T::NAME);
        let a: Vec<T> = to_dtype(&rng.vec(n, -2.0, 2.0));
        let b: Vec<T> = to_dtype(&rng.vec(n, -2.0, 2.0));
        let mut d_out = poisoned::<T>(gpu, n);
        add(gpu, &upload(gpu, &a), &upload(gpu, &b), &mut d_out).unwrap_or_else(|e| panic!("{what}: launch: {e}"));
        gpu.synchronize().unwrap_or_else(|e| panic!("{what}: kernel: {e}"));
        let want: Vec<f64> = widen(&a).iter().zip(widen(&b)).map(|(x, y)| x + y).collect();
        let got = widen(&download(gpu, &d_out));
        assert_close(&what, &got, &want, &want, width, T::ATOL, T::RTOL);
    }
}

#[test]
fn cuda_add_f32() {
    let Some(gpu) = gpu() else { return };
    check_add::<f32>(gpu, 7);
}

#[test]
fn cuda_add_bf16() {
    let Some(gpu) = gpu() else { return };
    check_add::<bf16>(gpu, 8);
}

// ---------------------------------------------------------------------------------------------
// Argument checks

#[test]
fn cuda_launchers_reject_bad_sizes_and_accept_empty_inputs() {
    let Some(gpu) = gpu() else { return };
    let x = upload(gpu, &[1.0f32; 12]);
    let w = upload(gpu, &[1.0f32; 4]);
    let mut y = poisoned::<f32>(gpu, 12);
    let mut short = poisoned::<f32>(gpu, 11);
    let mut rstd = poisoned::<f32>(gpu, 3);
    let expect_invalid = |result: kernels_cuda::Result<()>, needle: &str| {
        let err = result.expect_err("bad arguments were accepted");
        let message = err.to_string();
        assert!(matches!(err, Error::InvalidArgument { .. }), "{message}");
        assert!(message.contains(needle), "{needle:?} not in {message:?}");
    };
    expect_invalid(rms_norm_fwd(gpu, &x, &w, &mut short, &mut rstd, 3, 4, EPS), "y has 11 elements, expected 12");
    expect_invalid(rms_norm_fwd(gpu, &x, &w, &mut y, &mut rstd, 4, 3, EPS), "weight has 4 elements, expected 3");
    expect_invalid(rms_norm_fwd(gpu, &x, &w, &mut y, &mut rstd, 3, 4, f32::NAN), "eps");
    expect_invalid(rms_norm_fwd(gpu, &x, &w, &mut y, &mut rstd, 12, 0, EPS), "width 0");
    expect_invalid(add(gpu, &x, &y, &mut short), "out has 11 elements");
    let mut half_out = poisoned::<bf16>(gpu, 11);
    expect_invalid(cast_f32_to_bf16(gpu, &x, &mut half_out), "y has 11");

    // Zero elements: no launch, no error.
    let null = || gpu.stream().null::<f32>().unwrap();
    let (empty, mut empty_out, mut empty_rstd) = (null(), null(), null());
    add(gpu, &empty, &empty, &mut empty_out).unwrap();
    rms_norm_fwd(gpu, &empty, &w, &mut empty_out, &mut empty_rstd, 0, 4, EPS).unwrap();
    gpu.synchronize().unwrap();
}

// ---------------------------------------------------------------------------------------------
// Throughput (informational)

/// Median milliseconds of `iters` runs of `f`, each timed with CUDA events after 3 warm-ups.
fn time_ms(gpu: &Gpu, iters: usize, mut f: impl FnMut()) -> f64 {
    for _ in 0..3 {
        f();
    }
    let ctx = gpu.context();
    let mut times = Vec::with_capacity(iters);
    for _ in 0..iters {
        let start = ctx.new_event(Some(CUevent_flags::CU_EVENT_DEFAULT)).unwrap();
        let end = ctx.new_event(Some(CUevent_flags::CU_EVENT_DEFAULT)).unwrap();
        start.record(gpu.stream()).unwrap();
        f();
        end.record(gpu.stream()).unwrap();
        end.synchronize().unwrap();
        times.push(start.elapsed_ms(&end).unwrap() as f64);
    }
    times.sort_by(f64::total_cmp);
    times[times.len() / 2]
}

#[test]
fn cuda_rms_norm_bandwidth() {
    let Some(gpu) = gpu() else { return };
    let (rows, width) = (16384usize, 4096usize);
    let n = rows * width;
    let mut rng = Rng::new(9);
    let x: Vec<bf16> = to_dtype(&rng.vec(n, -1.0, 1.0));
    let w: Vec<bf16> = to_dtype(&rng.vec(width, 0.5, 1.5));
    let g: Vec<bf16> = to_dtype(&rng.vec(n, -1.0, 1.0));
    let (d_x, d_w, d_g) = (upload(gpu, &x), upload(gpu, &w), upload(gpu, &g));
    let mut d_y = poisoned::<bf16>(gpu, n);
    let mut d_dx = poisoned::<bf16>(gpu, n);
    let mut d_rstd = poisoned::<f32>(gpu, rows);

    let fwd_ms = time_ms(gpu, 20, || rms_norm_fwd(gpu, &d_x, &d_w, &mut d_y, &mut d_rstd, rows, width, EPS).unwrap());
    let bwd_ms = time_ms(gpu, 20, || rms_norm_bwd(gpu, &d_x, &d_w, &d_rstd, &d_g, &mut d_dx, rows, width).unwrap());
    let mut d_sum = poisoned::<bf16>(gpu, n);
    let add_ms = time_ms(gpu, 20, || add(gpu, &d_x, &d_g, &mut d_sum).unwrap());
    gpu.synchronize().unwrap();

    // Bytes that must move: fwd reads x, writes y and rstd; bwd reads x, dy, rstd, writes dx;
    // add reads two and writes one (the weight is 8 KiB and ignored).
    let gbps = |bytes: usize, ms: f64| bytes as f64 / (ms * 1e-3) / 1e9;
    let fwd_bytes = 2 * n * 2 + rows * 4;
    let bwd_bytes = 3 * n * 2 + rows * 4;
    let add_bytes = 3 * n * 2;
    println!(
        "on {} ({}), bf16 {rows}x{width}:\n  rms_norm_fwd_bf16 {fwd_ms:.4} ms = {:.0} GB/s\n  \
         rms_norm_bwd_bf16 {bwd_ms:.4} ms = {:.0} GB/s\n  add_fwd_bf16 {add_ms:.4} ms = {:.0} GB/s",
        gpu.name(),
        gpu.arch(),
        gbps(fwd_bytes, fwd_ms),
        gbps(bwd_bytes, bwd_ms),
        gbps(add_bytes, add_ms)
    );

    // Spot-check the first and last rows of the big forward against the reference.
    let y = download(gpu, &d_y);
    let rstd = download(gpu, &d_rstd);
    for r in [0, rows - 1] {
        let xs = widen(&x[r * width..(r + 1) * width]);
        let (y_ref, rstd_ref) = rms_norm_fwd_ref(&xs, &widen(&w), 1, width, EPS as f64);
        let got = widen(&y[r * width..(r + 1) * width]);
        assert_close(&format!("big fwd row {r}"), &got, &y_ref, &y_ref, width, 1e-2, 1e-2);
        assert_close(&format!("big fwd rstd {r}"), &[rstd[r] as f64], &rstd_ref, &rstd_ref, 1, 1e-5, 1e-5);
    }
}
