//! GPU tests of `kernels/attention.cu` (causal GQA flash attention). Every test name contains
//! `cuda`; without libcuda or a device each prints `skipped: no CUDA device (<reason>)`.
//!
//! The kernels are compared with plain f64 loops written here (naive masked softmax, the full
//! score row materialized), on seeded random inputs: q, k, v, dO uniform in [-1, 1). For bf16 the
//! reference is computed on the bf16-rounded inputs, so only the kernels' own rounding counts.
//! Every output buffer (and the backward's workspace) is poisoned with NaN before the launch, so
//! an element the kernels do not write fails.
//!
//! Tolerances, `|got - want| <= atol + rtol * |want|`:
//! - bf16 outputs (o, dq, dk, dv): atol 2e-2, rtol 2e-2. The kernels round P and dS to bf16
//!   before their tensor-core products (relative error 2^-9 per term) and round each output to
//!   bf16 (2^-9); with |o| <= 1 and gradients of order 1 that is well inside 2e-2.
//! - lse (always f32): atol 1e-3, rtol 1e-3 for bf16 inputs (f32 scores of exact bf16 products),
//!   1e-4 for f32; `-inf` (a row that sees no key) must be exactly `-inf`.
//! - f32 outputs: atol 1e-4, rtol 1e-4 (f32 sums of up to ~1000 terms of exp-weighted products).

use kernels_cuda::cudarc::driver::sys::CUevent_flags;
use kernels_cuda::ops::attention::{attention_bwd, attention_bwd_workspace_len, attention_fwd, AttentionDims};
use kernels_cuda::{bf16, Error, Gpu};

mod common;
use common::*;

/// The attention tests' tolerances per storage type.
trait AttnFloat: TestFloat {
    /// Tolerance of o, dq, dk, dv.
    const TOL: f64;
    /// Tolerance of lse.
    const LSE_TOL: f64;
}

impl AttnFloat for f32 {
    const TOL: f64 = 1e-4;
    const LSE_TOL: f64 = 1e-4;
}

impl AttnFloat for bf16 {
    const TOL: f64 = 2e-2;
    const LSE_TOL: f64 = 1e-3;
}

// ---------------------------------------------------------------------------------------------
// Comparisons

/// `Ok(summary)` when `|got - want| <= atol + rtol*|want|` everywhere (NaN fails; a `-inf` want
/// needs a `-inf`), else `Err` listing the first failures as (row, column) of a `width`-wide
/// layout.
fn compare(what: &str, got: &[f64], want: &[f64], width: usize, tol: f64) -> Result<String, String> {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let mut failures = Vec::new();
    let (mut max_abs, mut max_rel) = (0.0f64, 0.0f64);
    for i in 0..got.len() {
        let ok = if want[i].is_infinite() {
            got[i] == want[i]
        } else {
            let err = (got[i] - want[i]).abs();
            if err.is_finite() {
                max_abs = max_abs.max(err);
                max_rel = max_rel.max(err / want[i].abs().max(1e-3));
            }
            err <= tol + tol * want[i].abs()
        };
        if !ok {
            failures.push(i);
        }
    }
    if failures.is_empty() {
        return Ok(format!(
            "{what}: ok ({} elements, max abs err {max_abs:.3e}, max rel err (|want| >= 1e-3) {max_rel:.3e})",
            got.len()
        ));
    }
    let listed: Vec<String> = failures
        .iter()
        .take(6)
        .map(|&i| format!("    [row {}, col {}] got {:e}, want {:e}", i / width, i % width, got[i], want[i]))
        .collect();
    Err(format!(
        "{what}: {} of {} out of tolerance {tol:e} (max finite abs err {max_abs:e}); first:\n{}",
        failures.len(),
        got.len(),
        listed.join("\n")
    ))
}

// ---------------------------------------------------------------------------------------------
// The f64 reference

/// Keys visible to query row `i`: `0..visible`.
fn visible(dims: &AttentionDims, lens: Option<&[i32]>, bi: usize, i: usize) -> usize {
    let causal = i + dims.kv_len - dims.q_len + 1;
    match lens {
        Some(l) => causal.min(l[bi].clamp(0, dims.kv_len as i32) as usize),
        None => causal,
    }
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// (o, lse) by the textbook formula, one full score row at a time.
fn fwd_ref(dims: &AttentionDims, q: &[f64], k: &[f64], v: &[f64], lens: Option<&[i32]>) -> (Vec<f64>, Vec<f64>) {
    let (t, s, d) = (dims.q_len, dims.kv_len, dims.head_dim);
    let group = dims.q_heads / dims.kv_heads;
    let scale = 1.0 / (d as f64).sqrt();
    let mut o = vec![0.0; dims.q_elems()];
    let mut lse = vec![0.0; dims.lse_elems()];
    for bi in 0..dims.batch {
        for h in 0..dims.q_heads {
            let kv = (bi * dims.kv_heads + h / group) * s * d;
            for i in 0..t {
                let row = (bi * dims.q_heads + h) * t + i;
                let qr = &q[row * d..(row + 1) * d];
                let n = visible(dims, lens, bi, i);
                if n == 0 {
                    lse[row] = f64::NEG_INFINITY;
                    continue;
                }
                let sc: Vec<f64> = (0..n).map(|j| scale * dot(qr, &k[kv + j * d..kv + (j + 1) * d])).collect();
                let m = sc.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                let l = m + sc.iter().map(|x| (x - m).exp()).sum::<f64>().ln();
                lse[row] = l;
                for (j, x) in sc.iter().enumerate() {
                    let p = (x - l).exp();
                    for c in 0..d {
                        o[row * d + c] += p * v[kv + j * d + c];
                    }
                }
            }
        }
    }
    (o, lse)
}

/// (dq, dk, dv) given dO, recomputing o and lse in f64.
#[allow(clippy::too_many_arguments)]
fn bwd_ref(
    dims: &AttentionDims,
    q: &[f64],
    k: &[f64],
    v: &[f64],
    go: &[f64],
    lens: Option<&[i32]>,
) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let (t, s, d) = (dims.q_len, dims.kv_len, dims.head_dim);
    let group = dims.q_heads / dims.kv_heads;
    let scale = 1.0 / (d as f64).sqrt();
    let (o, lse) = fwd_ref(dims, q, k, v, lens);
    let mut dq = vec![0.0; dims.q_elems()];
    let mut dk = vec![0.0; dims.kv_elems()];
    let mut dv = vec![0.0; dims.kv_elems()];
    for bi in 0..dims.batch {
        for h in 0..dims.q_heads {
            let kv = (bi * dims.kv_heads + h / group) * s * d;
            for i in 0..t {
                let row = (bi * dims.q_heads + h) * t + i;
                let r = row * d..(row + 1) * d;
                let (qr, gr) = (&q[r.clone()], &go[r.clone()]);
                let delta = dot(gr, &o[r]);
                for j in 0..visible(dims, lens, bi, i) {
                    let kr = kv + j * d..kv + (j + 1) * d;
                    let p = (scale * dot(qr, &k[kr.clone()]) - lse[row]).exp();
                    let ds = p * (dot(gr, &v[kr.clone()]) - delta);
                    for c in 0..d {
                        dq[row * d + c] += scale * ds * k[kv + j * d + c];
                        dk[kv + j * d + c] += scale * ds * qr[c];
                        dv[kv + j * d + c] += p * gr[c];
                    }
                }
            }
        }
    }
    (dq, dk, dv)
}

// ---------------------------------------------------------------------------------------------
// Correctness

/// (b, hq, hkv, t, s, d).
type Shape = (usize, usize, usize, usize, usize, usize);

/// Shapes and the key lengths of their padded variant.
const CASES: &[(Shape, &[i32])] = &[
    ((1, 1, 1, 1, 1, 64), &[1]),
    ((2, 4, 2, 37, 37, 64), &[23, 0]),
    ((1, 8, 2, 5, 133, 128), &[70]),
    ((1, 32, 8, 257, 257, 128), &[200]),
];

fn dims_of(&(b, hq, hkv, t, s, d): &Shape) -> AttentionDims {
    AttentionDims { batch: b, q_heads: hq, kv_heads: hkv, q_len: t, kv_len: s, head_dim: d }
}

/// Forward and backward of every case, with and without key lengths; panics at the end listing
/// every comparison that failed.
fn check_attention<T: AttnFloat>(gpu: &Gpu, seed: u64) {
    let mut rng = Rng(seed);
    let mut failures = Vec::new();
    for (shape, case_lens) in CASES {
        let dims = dims_of(shape);
        let q: Vec<T> = to_dtype(&rng.vec(dims.q_elems(), -1.0, 1.0));
        let k: Vec<T> = to_dtype(&rng.vec(dims.kv_elems(), -1.0, 1.0));
        let v: Vec<T> = to_dtype(&rng.vec(dims.kv_elems(), -1.0, 1.0));
        let go: Vec<T> = to_dtype(&rng.vec(dims.q_elems(), -1.0, 1.0));
        let (qf, kf, vf, gof) = (widen(&q), widen(&k), widen(&v), widen(&go));
        let (d_q, d_k, d_v, d_go) = (upload(gpu, &q), upload(gpu, &k), upload(gpu, &v), upload(gpu, &go));
        for lens in [None, Some(*case_lens)] {
            let what = format!("attention {} {shape:?} key_lens {lens:?}", T::NAME);
            let d_lens = lens.map(|l| upload(gpu, l));
            let mut check = |r: Result<String, String>| match r {
                Ok(line) => println!("  {line}"),
                Err(e) => {
                    println!("  FAIL {e}");
                    failures.push(format!("{what}: {e}"));
                }
            };
            println!("{what}:");

            // Forward.
            let mut d_o = poisoned::<T>(gpu, dims.q_elems());
            let mut d_lse = poisoned::<f32>(gpu, dims.lse_elems());
            attention_fwd(gpu, &dims, &d_q, &d_k, &d_v, d_lens.as_ref(), &mut d_o, &mut d_lse)
                .unwrap_or_else(|e| panic!("{what}: forward launch: {e}"));
            gpu.synchronize().unwrap_or_else(|e| panic!("{what}: forward kernel: {e}"));
            let (o_ref, lse_ref) = fwd_ref(&dims, &qf, &kf, &vf, lens);
            let o = widen(&download(gpu, &d_o));
            let lse: Vec<f64> = download(gpu, &d_lse).iter().map(|&x| x as f64).collect();
            check(compare("o", &o, &o_ref, dims.head_dim, T::TOL));
            check(compare("lse", &lse, &lse_ref, dims.q_len, T::LSE_TOL));

            // Backward from the kernel's own o and lse.
            let mut d_dq = poisoned::<T>(gpu, dims.q_elems());
            let mut d_dk = poisoned::<T>(gpu, dims.kv_elems());
            let mut d_dv = poisoned::<T>(gpu, dims.kv_elems());
            let mut ws = poisoned::<f32>(gpu, attention_bwd_workspace_len::<T>(&dims));
            attention_bwd(
                gpu,
                &dims,
                &d_q,
                &d_k,
                &d_v,
                &d_o,
                &d_lse,
                &d_go,
                d_lens.as_ref(),
                &mut d_dq,
                &mut d_dk,
                &mut d_dv,
                &mut ws,
            )
            .unwrap_or_else(|e| panic!("{what}: backward launch: {e}"));
            gpu.synchronize().unwrap_or_else(|e| panic!("{what}: backward kernel: {e}"));
            let (dq_ref, dk_ref, dv_ref) = bwd_ref(&dims, &qf, &kf, &vf, &gof, lens);
            for (name, got, want) in [("dq", &d_dq, &dq_ref), ("dk", &d_dk, &dk_ref), ("dv", &d_dv, &dv_ref)] {
                let got = widen(&download(gpu, got));
                check(compare(name, &got, want, dims.head_dim, T::TOL));
            }
        }
    }
    assert!(failures.is_empty(), "{} comparisons failed:\n{}", failures.len(), failures.join("\n"));
}

#[test]
fn cuda_attention_bf16() {
    let Some(gpu) = gpu() else { return };
    check_attention::<bf16>(gpu, 11);
}

#[test]
fn cuda_attention_f32() {
    let Some(gpu) = gpu() else { return };
    check_attention::<f32>(gpu, 12);
}

#[test]
fn cuda_attention_rejects_bad_arguments() {
    let Some(gpu) = gpu() else { return };
    let dims = dims_of(&(1, 4, 2, 3, 5, 64));
    let q = upload(gpu, &vec![0.0f32; dims.q_elems()]);
    let kv = upload(gpu, &vec![0.0f32; dims.kv_elems()]);
    let mut o = poisoned::<f32>(gpu, dims.q_elems());
    let mut lse = poisoned::<f32>(gpu, dims.lse_elems());
    let expect = |r: kernels_cuda::Result<()>, needle: &str| {
        let err = r.expect_err("bad arguments were accepted");
        let message = err.to_string();
        assert!(matches!(err, Error::InvalidArgument { .. }), "{message}");
        assert!(message.contains(needle), "{needle:?} not in {message:?}");
    };
    let mut short = poisoned::<f32>(gpu, dims.q_elems() - 1);
    expect(attention_fwd(gpu, &dims, &q, &kv, &kv, None, &mut short, &mut lse), "o has");
    let lens = upload(gpu, &[1i32, 2]);
    expect(attention_fwd(gpu, &dims, &q, &kv, &kv, Some(&lens), &mut o, &mut lse), "key_lens has 2");
    let odd = AttentionDims { head_dim: 96, ..dims };
    expect(attention_fwd(gpu, &odd, &q, &kv, &kv, None, &mut o, &mut lse), "head_dim 96");
    let (mut dq, mut dk, mut dv) = (
        poisoned::<f32>(gpu, dims.q_elems()),
        poisoned::<f32>(gpu, dims.kv_elems()),
        poisoned::<f32>(gpu, dims.kv_elems()),
    );
    let mut ws = poisoned::<f32>(gpu, attention_bwd_workspace_len::<f32>(&dims) - 1);
    expect(
        attention_bwd(gpu, &dims, &q, &kv, &kv, &o, &lse, &q, None, &mut dq, &mut dk, &mut dv, &mut ws),
        "workspace",
    );
    // A zero batch launches nothing.
    let empty = AttentionDims { batch: 0, ..dims };
    let null = || gpu.stream().null::<f32>().unwrap();
    let (eq, ekv) = (null(), null());
    let (mut eo, mut else_) = (null(), null());
    attention_fwd(gpu, &empty, &eq, &ekv, &ekv, None, &mut eo, &mut else_).unwrap();
    gpu.synchronize().unwrap();
}

// ---------------------------------------------------------------------------------------------
// Throughput (informational)

/// Median milliseconds of 10 runs of `f`, each timed with CUDA events after 3 warm-ups.
fn time_ms(gpu: &Gpu, mut f: impl FnMut()) -> f64 {
    for _ in 0..3 {
        f();
    }
    let ctx = gpu.context();
    let mut times = Vec::new();
    for _ in 0..10 {
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

/// bf16 at b=2, hq=32, hkv=8, t=s=2048 for d = 128 and 64. Forward FLOPs: 4*b*hq*d*(t(t+1)/2)
/// (the visible half of q k^T and P v); backward counted as 2.5x that (five products of the same
/// size instead of two), as FlashAttention does. A few forward rows are spot-checked.
#[test]
fn cuda_attention_throughput() {
    let Some(gpu) = gpu() else { return };
    for d in [128, 64] {
        let dims = dims_of(&(2, 32, 8, 2048, 2048, d));
        let mut rng = Rng(13);
        let q: Vec<bf16> = to_dtype(&rng.vec(dims.q_elems(), -1.0, 1.0));
        let k: Vec<bf16> = to_dtype(&rng.vec(dims.kv_elems(), -1.0, 1.0));
        let v: Vec<bf16> = to_dtype(&rng.vec(dims.kv_elems(), -1.0, 1.0));
        let go: Vec<bf16> = to_dtype(&rng.vec(dims.q_elems(), -1.0, 1.0));
        let (d_q, d_k, d_v, d_go) = (upload(gpu, &q), upload(gpu, &k), upload(gpu, &v), upload(gpu, &go));
        let mut d_o = poisoned::<bf16>(gpu, dims.q_elems());
        let mut d_lse = poisoned::<f32>(gpu, dims.lse_elems());
        let mut d_dq = poisoned::<bf16>(gpu, dims.q_elems());
        let mut d_dk = poisoned::<bf16>(gpu, dims.kv_elems());
        let mut d_dv = poisoned::<bf16>(gpu, dims.kv_elems());
        let mut ws = poisoned::<f32>(gpu, attention_bwd_workspace_len::<bf16>(&dims));
        let fwd_ms = time_ms(gpu, || attention_fwd(gpu, &dims, &d_q, &d_k, &d_v, None, &mut d_o, &mut d_lse).unwrap());
        let bwd_ms = time_ms(gpu, || {
            attention_bwd(
                gpu, &dims, &d_q, &d_k, &d_v, &d_o, &d_lse, &d_go, None, &mut d_dq, &mut d_dk, &mut d_dv, &mut ws,
            )
            .unwrap()
        });
        gpu.synchronize().unwrap();
        let flops = dims.fwd_flops();
        println!(
            "attention bf16 on {} ({}), b=2 hq=32 hkv=8 t=s=2048 d={d}:\n  forward  {fwd_ms:.3} ms = \
             {:.1} TFLOP/s\n  backward {bwd_ms:.3} ms = {:.1} TFLOP/s (2.5x forward FLOPs; includes \
             the Delta pre-kernel and the dQ cast)",
            gpu.name(),
            gpu.arch(),
            flops / (fwd_ms * 1e-3) / 1e12,
            2.5 * flops / (bwd_ms * 1e-3) / 1e12
        );

        // Spot checks: a few forward rows of head (0, 5) against f64, every gradient finite.
        let o = download(gpu, &d_o);
        let lse = download(gpu, &d_lse);
        let (t, hd) = (dims.q_len, dims.head_dim);
        let h = 5;
        let kv0 = (h / 4) * t * hd;
        for i in [0, 1, 63, 64, 1000, 2047] {
            let row = h * t + i;
            let qr = widen(&q[row * hd..(row + 1) * hd]);
            let sc: Vec<f64> =
                (0..=i).map(|j| dot(&qr, &widen(&k[kv0 + j * hd..kv0 + (j + 1) * hd])) / (hd as f64).sqrt()).collect();
            let m = sc.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let l = m + sc.iter().map(|x| (x - m).exp()).sum::<f64>().ln();
            let mut want = vec![0.0; hd];
            for (j, x) in sc.iter().enumerate() {
                for c in 0..hd {
                    want[c] += (x - l).exp() * v[kv0 + j * hd + c].to_f64();
                }
            }
            let got = widen(&o[row * hd..(row + 1) * hd]);
            compare(&format!("big o row {i}"), &got, &want, hd, 2e-2).unwrap_or_else(|e| panic!("{e}"));
            compare(&format!("big lse row {i}"), &[lse[row] as f64], &[l], 1, 1e-3).unwrap_or_else(|e| panic!("{e}"));
        }
        for (name, g) in [("dq", &d_dq), ("dk", &d_dk), ("dv", &d_dv)] {
            let g = download(gpu, g);
            let bad = g.iter().filter(|x| !x.to_f32().is_finite()).count();
            assert_eq!(bad, 0, "{name}: {bad} non-finite elements");
        }
    }
}
