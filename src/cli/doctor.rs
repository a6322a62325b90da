//! `ferrotune doctor`: what this machine offers for training and inference.

use std::fmt::Write;

/// The report, one `name: value` line each.
pub fn report() -> String {
    let mut out = String::new();
    let _ = writeln!(out, "ferrotune {}", env!("CARGO_PKG_VERSION"));
    let _ = writeln!(out, "cpu: {}", cpu_model().unwrap_or_else(|| "unknown".into()));
    let _ = writeln!(out, "threads: {} (set RAYON_NUM_THREADS to change)", engine::cpu_threads());
    if let Some((total, avail)) = memory_kib() {
        let _ = writeln!(out, "memory: {:.1} GiB total, {:.1} GiB available", gib(total), gib(avail));
    }
    match kernels_cuda::probe() {
        Ok(info) => {
            let _ = write!(out, "{info}");
            match super::gpu_check::measure() {
                Ok((tflops, gbs)) => {
                    let _ = writeln!(
                        out,
                        "gpu check: bf16 GEMM 8192^3 at {tflops:.0} TFLOP/s, device copy at {gbs:.0} GB/s"
                    );
                }
                Err(e) => {
                    let _ = writeln!(out, "gpu check failed: {e:#}");
                }
            }
        }
        Err(e) => {
            let _ = writeln!(out, "gpu: none ({e})");
        }
    }
    out
}

fn gib(kib: u64) -> f64 {
    kib as f64 / (1024.0 * 1024.0)
}

fn cpu_model() -> Option<String> {
    let info = std::fs::read_to_string("/proc/cpuinfo").ok()?;
    info.lines().find(|l| l.starts_with("model name")).and_then(|l| l.split(':').nth(1)).map(|s| s.trim().to_string())
}

/// (total, available) memory in KiB from /proc/meminfo.
fn memory_kib() -> Option<(u64, u64)> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let field = |name: &str| -> Option<u64> {
        info.lines().find(|l| l.starts_with(name))?.split_whitespace().nth(1)?.parse().ok()
    };
    Some((field("MemTotal:")?, field("MemAvailable:")?))
}
