//! GPU tests of the RoPE, SwiGLU, embedding, cross-entropy and NF4 kernels. Every test name
//! contains `cuda`.
//!
//! Each test first opens device 0; without libcuda or a device it prints
//! `skipped: no CUDA device (<reason>)` and returns. Kernels are compared with plain f64 loops
//! written here (the semantics of the CPU twins in `engine/src/ops/{rope,swiglu,embedding,
//! cross_entropy}.rs`), on seeded random inputs of several shapes including odd sizes, with every
//! output poisoned with NaN before the launch. Tolerances are `atol + rtol * scale` per dtype,
//! `scale` being `|ref|` or, where terms cancel, the sum of their magnitudes. NF4 dequantization
//! is compared bit for bit with `engine::quant::nf4::Nf4Weight::dequantize()` (engine is a
//! dev-dependency only). `cuda_ops_bandwidth` prints informational GB/s at Llama-3-8B shapes.

use engine::quant::nf4::{dynamic_map, Nf4Scales, Nf4Weight};
use kernels_cuda::cudarc::driver::sys::CUevent_flags;
use kernels_cuda::cudarc::driver::CudaSlice;
use kernels_cuda::ops::cross_entropy::{
    count_targets, cross_entropy_bwd, cross_entropy_fused, cross_entropy_fwd, IGNORE_INDEX,
};
use kernels_cuda::ops::embedding::{embedding_bwd, embedding_fwd};
use kernels_cuda::ops::nf4::{nf4_dequantize, nf4_gemv, Nf4Absmax, Nf4Weights};
use kernels_cuda::ops::nf4_gemm::{nf4_gemm, nf4_gemm_workspace_len, Nf4Product};
use kernels_cuda::ops::rope::{rope_bwd, rope_fwd, rope_table, RopeLayout, RopeShape};
use kernels_cuda::ops::swiglu::{swiglu_bwd, swiglu_bwd_inplace, swiglu_bwd_inplace_h, swiglu_fwd};
use kernels_cuda::{bf16, Error, Gpu};

mod common;
use common::*;

// ---------------------------------------------------------------------------------------------
// Comparisons (the device, inputs and copies are in common/)

/// Asserts `|got - want| <= tol` everywhere (NaN fails, and so does a NaN reference unless
/// `got` is NaN too), listing the first failures with their (row, column) in a `width`-wide
/// layout.
fn assert_within(what: &str, got: &[f64], want: &[f64], tol: &[f64], width: usize) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let mut failures = Vec::new();
    let (mut max_abs, mut max_rel) = (0.0f64, 0.0f64);
    for i in 0..got.len() {
        if want[i].is_nan() {
            if !got[i].is_nan() {
                failures.push((i, f64::NAN, tol[i]));
            }
            continue;
        }
        if want[i].is_infinite() {
            if got[i] != want[i] {
                failures.push((i, f64::INFINITY, tol[i]));
            }
            continue;
        }
        let err = (got[i] - want[i]).abs();
        if err.is_finite() {
            max_abs = max_abs.max(err);
            max_rel = max_rel.max(err / want[i].abs().max(f64::MIN_POSITIVE));
        }
        if err.is_nan() || err > tol[i] {
            failures.push((i, err, tol[i]));
        }
    }
    if !failures.is_empty() {
        let listed: Vec<String> = failures
            .iter()
            .take(8)
            .map(|&(i, err, tol)| {
                format!(
                    "  [row {}, col {}] got {:e}, want {:e} (err {:e} > tol {:e})",
                    i / width.max(1),
                    i % width.max(1),
                    got[i],
                    want[i],
                    err,
                    tol
                )
            })
            .collect();
        panic!(
            "{what}: {} of {} elements out of tolerance; max finite abs err {max_abs:e}, \
             max rel err {max_rel:e}; first failures:\n{}",
            failures.len(),
            got.len(),
            listed.join("\n")
        );
    }
    println!("{what}: ok ({} elements, max abs err {max_abs:e}, max rel err {max_rel:e})", got.len());
}

/// `atol + rtol * |scale|` per element.
fn tolerance(scale: &[f64], atol: f64, rtol: f64) -> Vec<f64> {
    scale.iter().map(|s| atol + rtol * s.abs()).collect()
}

/// [`assert_within`] with `atol + rtol * |want|`.
fn assert_close(what: &str, got: &[f64], want: &[f64], width: usize, atol: f64, rtol: f64) {
    assert_within(what, got, want, &tolerance(want, atol, rtol), width);
}

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

/// Like [`time_ms`] for work shorter than its launch overhead: each run first enqueues a copy
/// from `src` to `dst` (hundreds of microseconds) and records the start event after it, so that
/// `f`'s launches are all queued before the device reaches them and run back to back.
fn time_queued_ms(gpu: &Gpu, iters: usize, src: &CudaSlice<f32>, dst: &mut CudaSlice<f32>, mut f: impl FnMut()) -> f64 {
    f();
    let ctx = gpu.context();
    let mut times = Vec::with_capacity(iters);
    for _ in 0..iters {
        let start = ctx.new_event(Some(CUevent_flags::CU_EVENT_DEFAULT)).unwrap();
        let end = ctx.new_event(Some(CUevent_flags::CU_EVENT_DEFAULT)).unwrap();
        gpu.stream().memcpy_dtod(src, dst).unwrap();
        start.record(gpu.stream()).unwrap();
        f();
        end.record(gpu.stream()).unwrap();
        end.synchronize().unwrap();
        times.push(start.elapsed_ms(&end).unwrap() as f64);
    }
    times.sort_by(f64::total_cmp);
    times[times.len() / 2]
}

/// Runs `f` with cudarc's per-launch event tracking off, then restores it. `Gpu` launches on a
/// non-default stream, which puts the context in cudarc's multi-stream mode: every launch then
/// waits on and records events for each buffer argument. The bandwidth test times the short
/// kernels both ways to show what that costs on the device (on an H200: nothing measurable once
/// the launches are queued ahead, see `time_queued_ms`).
fn untracked<R>(gpu: &Gpu, f: impl FnOnce() -> R) -> R {
    let ctx = gpu.context();
    let was = ctx.is_event_tracking();
    // SAFETY: every launch and copy of these tests is on the one stream `gpu.stream()`, which
    // orders them; no buffer is used on another stream.
    unsafe { ctx.disable_event_tracking() };
    let r = f();
    if was {
        // SAFETY: as above.
        unsafe { ctx.enable_event_tracking() };
    }
    r
}

// ---------------------------------------------------------------------------------------------
// RoPE

/// Llama-3's inverse frequencies for `head_dim` (theta 500000, no scaling).
fn inv_freq(head_dim: usize) -> Vec<f64> {
    (0..head_dim / 2).map(|j| 500000f64.powf(-((2 * j) as f64) / head_dim as f64)).collect()
}

/// The rotation in f64 with the f32 tables: (y, per-element scale |x1 c| + |x2 s|).
#[allow(clippy::too_many_arguments)]
fn rope_ref(x: &[f64], cos: &[f32], sin: &[f32], pos: &[u32], shape: RopeShape, sign: f64) -> (Vec<f64>, Vec<f64>) {
    let d = shape.head_dim;
    let half = d / 2;
    let inner = match shape.layout {
        RopeLayout::Bhtd => 1,
        RopeLayout::Bthd => shape.heads,
    };
    let mut y = vec![0.0; x.len()];
    let mut scale = vec![0.0; x.len()];
    for row in 0..x.len() / d {
        let p = pos[(row / inner) % shape.seq] as usize;
        for j in 0..half {
            let c = cos[p * half + j] as f64;
            let s = sign * sin[p * half + j] as f64;
            let (x1, x2) = (x[row * d + j], x[row * d + half + j]);
            y[row * d + j] = x1 * c - x2 * s;
            y[row * d + half + j] = x2 * c + x1 * s;
            scale[row * d + j] = (x1 * c).abs() + (x2 * s).abs();
            scale[row * d + half + j] = (x2 * c).abs() + (x1 * s).abs();
        }
    }
    (y, scale)
}

const ROPE_SHAPES: &[(usize, usize, usize, usize, RopeLayout)] = &[
    (1, 1, 1, 2, RopeLayout::Bhtd),
    (2, 3, 5, 6, RopeLayout::Bhtd), // half = 3: not a pack multiple
    (1, 4, 7, 64, RopeLayout::Bhtd),
    (2, 8, 17, 128, RopeLayout::Bhtd),
    (2, 5, 3, 128, RopeLayout::Bthd),
    (1, 3, 9, 10, RopeLayout::Bthd),
];

fn check_rope<T: TestFloat>(gpu: &Gpu, seed: u64) {
    let mut rng = Rng(seed);
    for &(b, h, t, d, layout) in ROPE_SHAPES {
        let shape = RopeShape { batch: b, heads: h, seq: t, head_dim: d, layout };
        let n = shape.numel().unwrap();
        let what = format!("rope_{} {b}x{h}x{t}x{d} {layout:?}", T::NAME);
        let max_pos = t + 13;
        let (cos, sin) = rope_table(&inv_freq(d), max_pos);
        // Positions in any order (a KV-cache offset, packed sequences): random below max_pos.
        let pos: Vec<u32> = (0..t).map(|_| rng.below(max_pos) as u32).collect();
        let x: Vec<T> = to_dtype(&rng.vec(n, -1.0, 1.0));
        let (d_cos, d_sin, d_pos) = (upload(gpu, &cos), upload(gpu, &sin), upload(gpu, &pos));

        // Forward, in place.
        let mut d_x = upload(gpu, &x);
        rope_fwd(gpu, &mut d_x, &d_cos, &d_sin, &d_pos, shape).unwrap_or_else(|e| panic!("{what}: launch: {e}"));
        sync(gpu, &what);
        let y: Vec<T> = download(gpu, &d_x);
        let (y_ref, scale) = rope_ref(&widen(&x), &cos, &sin, &pos, shape, 1.0);
        assert_within(&format!("{what} fwd"), &widen(&y), &y_ref, &tolerance(&scale, T::ATOL, T::RTOL), d);

        // Backward on a fresh gradient: the rotation with sin negated.
        let g: Vec<T> = to_dtype(&rng.vec(n, -1.0, 1.0));
        let mut d_g = upload(gpu, &g);
        rope_bwd(gpu, &mut d_g, &d_cos, &d_sin, &d_pos, shape).unwrap_or_else(|e| panic!("{what}: bwd launch: {e}"));
        sync(gpu, &what);
        let dx: Vec<T> = download(gpu, &d_g);
        let (dx_ref, scale) = rope_ref(&widen(&g), &cos, &sin, &pos, shape, -1.0);
        assert_within(&format!("{what} bwd"), &widen(&dx), &dx_ref, &tolerance(&scale, T::ATOL, T::RTOL), d);

        // The backward undoes the forward (up to rounding).
        rope_bwd(gpu, &mut d_x, &d_cos, &d_sin, &d_pos, shape).unwrap();
        sync(gpu, &what);
        let back = widen(&download::<T>(gpu, &d_x));
        let xs = widen(&x);
        assert_within(&format!("{what} bwd(fwd(x)) = x"), &back, &xs, &vec![2.0 * T::ATOL + 2.0 * T::RTOL; n], d);
    }
}

#[test]
fn cuda_rope_f32() {
    let Some(gpu) = gpu() else { return };
    check_rope::<f32>(gpu, 11);
}

#[test]
fn cuda_rope_bf16() {
    let Some(gpu) = gpu() else { return };
    check_rope::<bf16>(gpu, 12);
}

#[test]
fn cuda_rope_position_beyond_table_gives_nan_rows() {
    let Some(gpu) = gpu() else { return };
    let shape = RopeShape::bhtd(1, 2, 3, 16);
    let (cos, sin) = rope_table(&inv_freq(16), 4);
    let pos = [0u32, 4, 3]; // token 1 is beyond the 4-position table
    let x = vec![0.5f32; shape.numel().unwrap()];
    let mut d_x = upload(gpu, &x);
    rope_fwd(gpu, &mut d_x, &upload(gpu, &cos), &upload(gpu, &sin), &upload(gpu, &pos), shape).unwrap();
    sync(gpu, "rope nan rows");
    let y: Vec<f32> = download(gpu, &d_x);
    for (row, chunk) in y.chunks(16).enumerate() {
        let bad = row % 3 == 1;
        assert!(chunk.iter().all(|v| v.is_nan() == bad), "row {row}: {chunk:?}");
    }
    println!("rope: out-of-table position -> NaN rows, others finite: ok");
}

// ---------------------------------------------------------------------------------------------
// SwiGLU

const SWIGLU_SIZES: &[usize] = &[1, 7, 4032, 4097, 64 * 4096 + 3];

fn sigmoid(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

fn check_swiglu<T: TestFloat>(gpu: &Gpu, seed: u64) {
    let mut rng = Rng(seed);
    for &n in SWIGLU_SIZES {
        let what = format!("swiglu_{} n={n}", T::NAME);
        let g: Vec<T> = to_dtype(&rng.vec(n, -6.0, 6.0));
        let u: Vec<T> = to_dtype(&rng.vec(n, -2.0, 2.0));
        let dy: Vec<T> = to_dtype(&rng.vec(n, -1.0, 1.0));
        let (gf, uf, df) = (widen(&g), widen(&u), widen(&dy));
        let h_ref: Vec<f64> = (0..n).map(|i| gf[i] * sigmoid(gf[i]) * uf[i]).collect();
        let dg_ref: Vec<f64> = (0..n)
            .map(|i| {
                let s = sigmoid(gf[i]);
                df[i] * uf[i] * s * (1.0 + gf[i] * (1.0 - s))
            })
            .collect();
        let du_ref: Vec<f64> = (0..n).map(|i| df[i] * gf[i] * sigmoid(gf[i])).collect();
        let (d_g, d_u, d_dy) = (upload(gpu, &g), upload(gpu, &u), upload(gpu, &dy));

        let mut d_out = poisoned::<T>(gpu, n);
        swiglu_fwd(gpu, &d_g, &d_u, &mut d_out).unwrap_or_else(|e| panic!("{what}: {e}"));
        sync(gpu, &what);
        let out = widen(&download::<T>(gpu, &d_out));
        assert_close(&format!("{what} fwd"), &out, &h_ref, n, T::ATOL, T::RTOL);

        let (mut d_dg, mut d_du) = (poisoned::<T>(gpu, n), poisoned::<T>(gpu, n));
        swiglu_bwd(gpu, &d_g, &d_u, &d_dy, &mut d_dg, &mut d_du).unwrap_or_else(|e| panic!("{what}: {e}"));
        sync(gpu, &what);
        let (dg, du) = (widen(&download::<T>(gpu, &d_dg)), widen(&download::<T>(gpu, &d_du)));
        assert_close(&format!("{what} bwd dgate"), &dg, &dg_ref, n, T::ATOL, T::RTOL);
        assert_close(&format!("{what} bwd dup"), &du, &du_ref, n, T::ATOL, T::RTOL);

        // In place over gate and up; dy untouched.
        let (mut d_g2, mut d_u2) = (upload(gpu, &g), upload(gpu, &u));
        swiglu_bwd_inplace(gpu, &mut d_g2, &mut d_u2, &d_dy).unwrap_or_else(|e| panic!("{what}: {e}"));
        sync(gpu, &what);
        let (dg2, du2) = (download::<T>(gpu, &d_g2), download::<T>(gpu, &d_u2));
        assert_close(&format!("{what} bwd_inplace dgate"), &widen(&dg2), &dg_ref, n, T::ATOL, T::RTOL);
        assert_close(&format!("{what} bwd_inplace dup"), &widen(&du2), &du_ref, n, T::ATOL, T::RTOL);
        assert_eq!(widen(&download::<T>(gpu, &d_dy)), df, "{what}: dy was modified");

        // Unsloth-style: h written over dy as well.
        let (mut d_g3, mut d_u3, mut d_dy3) = (upload(gpu, &g), upload(gpu, &u), upload(gpu, &dy));
        swiglu_bwd_inplace_h(gpu, &mut d_g3, &mut d_u3, &mut d_dy3).unwrap_or_else(|e| panic!("{what}: {e}"));
        sync(gpu, &what);
        assert_close(
            &format!("{what} bwd_inplace_h dgate"),
            &widen(&download::<T>(gpu, &d_g3)),
            &dg_ref,
            n,
            T::ATOL,
            T::RTOL,
        );
        assert_close(
            &format!("{what} bwd_inplace_h dup"),
            &widen(&download::<T>(gpu, &d_u3)),
            &du_ref,
            n,
            T::ATOL,
            T::RTOL,
        );
        let h = widen(&download::<T>(gpu, &d_dy3));
        assert_close(&format!("{what} bwd_inplace_h h"), &h, &h_ref, n, T::ATOL, T::RTOL);
    }
}

#[test]
fn cuda_swiglu_f32() {
    let Some(gpu) = gpu() else { return };
    check_swiglu::<f32>(gpu, 21);
}

#[test]
fn cuda_swiglu_bf16() {
    let Some(gpu) = gpu() else { return };
    check_swiglu::<bf16>(gpu, 22);
}

// ---------------------------------------------------------------------------------------------
// Embedding

/// (vocab, hidden, ids).
const EMBEDDING_SHAPES: &[(usize, usize, usize)] =
    &[(1, 1, 3), (50, 7, 33), (1000, 576, 64), (512, 4096, 100), (97, 4097, 20)];

fn check_embedding<T: TestFloat>(gpu: &Gpu, seed: u64) {
    let mut rng = Rng(seed);
    for &(vocab, hidden, n) in EMBEDDING_SHAPES {
        let what = format!("embedding_{} vocab={vocab} hidden={hidden} ids={n}", T::NAME);
        // Few distinct ids so that the backward sees repeats.
        let ids: Vec<u32> = (0..n).map(|_| rng.below(vocab.min(17)) as u32).collect();
        let table: Vec<T> = to_dtype(&rng.vec(vocab * hidden, -1.0, 1.0));
        let d_ids = upload(gpu, &ids);
        let d_table = upload(gpu, &table);
        let mut d_out = poisoned::<T>(gpu, n * hidden);
        embedding_fwd(gpu, &d_ids, &d_table, &mut d_out, vocab, hidden).unwrap_or_else(|e| panic!("{what}: {e}"));
        sync(gpu, &what);
        let out = widen(&download::<T>(gpu, &d_out));
        let want: Vec<f64> =
            ids.iter().flat_map(|&id| widen(&table[id as usize * hidden..(id as usize + 1) * hidden])).collect();
        assert_close(&format!("{what} fwd"), &out, &want, hidden, 0.0, 0.0);

        // Backward: accumulates into an existing f32 table.
        let dout: Vec<T> = to_dtype(&rng.vec(n * hidden, -1.0, 1.0));
        let init = rng.vec(vocab * hidden, -1.0, 1.0);
        let mut d_dtable = upload(gpu, &init);
        embedding_bwd(gpu, &d_ids, &upload(gpu, &dout), &mut d_dtable, vocab, hidden)
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        sync(gpu, &what);
        let got: Vec<f64> = download::<f32>(gpu, &d_dtable).iter().map(|&v| v as f64).collect();
        let mut want: Vec<f64> = init.iter().map(|&v| v as f64).collect();
        let mut mag: Vec<f64> = want.iter().map(|v| v.abs()).collect();
        let doutf = widen(&dout);
        for (t, &id) in ids.iter().enumerate() {
            for j in 0..hidden {
                want[id as usize * hidden + j] += doutf[t * hidden + j];
                mag[id as usize * hidden + j] += doutf[t * hidden + j].abs();
            }
        }
        // f32 sums in any order: a few ulps of the summed magnitudes.
        assert_within(&format!("{what} bwd"), &got, &want, &tolerance(&mag, 1e-6, 1e-6), hidden);
    }
}

#[test]
fn cuda_embedding_f32() {
    let Some(gpu) = gpu() else { return };
    check_embedding::<f32>(gpu, 31);
}

#[test]
fn cuda_embedding_bf16() {
    let Some(gpu) = gpu() else { return };
    check_embedding::<bf16>(gpu, 32);
}

#[test]
fn cuda_embedding_id_beyond_vocab() {
    let Some(gpu) = gpu() else { return };
    let (vocab, hidden) = (4, 8);
    let ids = [1u32, 4, 3];
    let table: Vec<f32> = (0..vocab * hidden).map(|i| i as f32).collect();
    let d_ids = upload(gpu, &ids);
    let mut d_out = poisoned::<f32>(gpu, 3 * hidden);
    embedding_fwd(gpu, &d_ids, &upload(gpu, &table), &mut d_out, vocab, hidden).unwrap();
    let mut d_dtable = upload(gpu, &vec![0.0f32; vocab * hidden]);
    embedding_bwd(gpu, &d_ids, &upload(gpu, &vec![1.0f32; 3 * hidden]), &mut d_dtable, vocab, hidden).unwrap();
    sync(gpu, "embedding id beyond vocab");
    let out: Vec<f32> = download(gpu, &d_out);
    assert_eq!(&out[..hidden], &table[hidden..2 * hidden]);
    assert!(out[hidden..2 * hidden].iter().all(|v| v.is_nan()));
    assert_eq!(&out[2 * hidden..], &table[3 * hidden..]);
    let dtable: Vec<f32> = download(gpu, &d_dtable);
    for (i, &v) in dtable.iter().enumerate() {
        let want = if i / hidden == 1 || i / hidden == 3 { 1.0 } else { 0.0 };
        assert_eq!(v, want, "dtable[{i}]");
    }
    println!("embedding: id >= vocab -> NaN row, skipped by the backward: ok");
}

// ---------------------------------------------------------------------------------------------
// Cross-entropy

/// (rows, vocab).
const CE_SHAPES: &[(usize, usize)] = &[(1, 1), (3, 7), (5, 1000), (6, 4097), (4, 49152), (3, 128256)];

/// Per row in f64: (lse, loss); ignored rows (0, 0); a bad label gives loss NaN.
fn ce_ref(x: &[f64], labels: &[i32], vocab: usize) -> (Vec<f64>, Vec<f64>) {
    let mut lse = vec![0.0; labels.len()];
    let mut loss = vec![0.0; labels.len()];
    for (r, &l) in labels.iter().enumerate() {
        if l == IGNORE_INDEX {
            continue;
        }
        let row = &x[r * vocab..(r + 1) * vocab];
        let m = row.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        lse[r] = m + row.iter().map(|v| (v - m).exp()).sum::<f64>().ln();
        loss[r] = if l >= 0 && (l as usize) < vocab { lse[r] - row[l as usize] } else { f64::NAN };
    }
    (lse, loss)
}

/// The gradient in f64 given the lse to use: (exp(x - lse) - onehot) * scale.
fn ce_grad_ref(x: &[f64], labels: &[i32], lse: &[f64], vocab: usize, scale: f64) -> Vec<f64> {
    let mut g = vec![0.0; x.len()];
    for (r, &l) in labels.iter().enumerate() {
        let out = &mut g[r * vocab..(r + 1) * vocab];
        if l == IGNORE_INDEX {
            continue;
        }
        if l < 0 || l as usize >= vocab {
            out.iter_mut().for_each(|v| *v = f64::NAN);
            continue;
        }
        for j in 0..vocab {
            let p = (x[r * vocab + j] - lse[r]).exp();
            out[j] = (p - if j == l as usize { 1.0 } else { 0.0 }) * scale;
        }
    }
    g
}

/// Random logits with a per-row offset, a few -inf entries in row 0 of wide rows, labels with
/// every third row ignored (when there is more than one row).
fn ce_inputs<T: TestFloat>(rng: &mut Rng, rows: usize, vocab: usize) -> (Vec<T>, Vec<i32>) {
    let mut x = Vec::with_capacity(rows * vocab);
    for r in 0..rows {
        let offset = r as f32 * 3.0 - 4.0;
        x.extend(rng.vec(vocab, -8.0, 8.0).iter().map(|v| v + offset));
    }
    let labels: Vec<i32> =
        (0..rows).map(|r| if rows > 1 && r % 3 == 1 { IGNORE_INDEX } else { rng.below(vocab) as i32 }).collect();
    if vocab > 100 {
        for _ in 0..5 {
            let j = rng.below(vocab);
            if j as i32 != labels[0] {
                x[j] = f32::NEG_INFINITY;
            }
        }
    }
    (to_dtype(&x), labels)
}

fn check_cross_entropy<T: TestFloat>(gpu: &Gpu, seed: u64) {
    let mut rng = Rng(seed);
    // Loss and lse of exact inputs: f32 sums of up to 128256 terms.
    let (l_atol, l_rtol) = (2e-5, 2e-6);
    // Gradients: f32 exp; bf16 storage rounds the result once.
    let (g_atol, g_rtol) = match T::DTYPE {
        kernels_cuda::Dtype::F32 => (1e-10, 1e-4),
        kernels_cuda::Dtype::Bf16 => (1e-10, 1e-2),
    };
    for &(rows, vocab) in CE_SHAPES {
        let what = format!("cross_entropy_{} {rows}x{vocab}", T::NAME);
        let (x, labels) = ce_inputs::<T>(&mut rng, rows, vocab);
        let xf = widen(&x);
        let count = count_targets(&labels).max(1);
        let scale = 0.7f32 / count as f32;
        let (lse_ref, loss_ref) = ce_ref(&xf, &labels, vocab);
        let d_labels = upload(gpu, &labels);

        // Forward.
        let d_x = upload(gpu, &x);
        let (mut d_loss, mut d_lse) = (poisoned::<f32>(gpu, rows), poisoned::<f32>(gpu, rows));
        cross_entropy_fwd(gpu, &d_x, &d_labels, &mut d_loss, &mut d_lse, rows, vocab)
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        sync(gpu, &what);
        let f32s = |d: &CudaSlice<f32>| -> Vec<f64> { download(gpu, d).iter().map(|&v: &f32| v as f64).collect() };
        assert_close(&format!("{what} fwd loss"), &f32s(&d_loss), &loss_ref, 1, l_atol, l_rtol);
        assert_close(&format!("{what} fwd lse"), &f32s(&d_lse), &lse_ref, 1, l_atol, l_rtol);

        // Backward from a given lse (the reference's, rounded to f32 as the forward saves it).
        let lse32: Vec<f32> = lse_ref.iter().map(|&v| v as f32).collect();
        let lse_used: Vec<f64> = lse32.iter().map(|&v| v as f64).collect();
        let g_ref = ce_grad_ref(&xf, &labels, &lse_used, vocab, scale as f64);
        let mut d_g = upload(gpu, &x);
        cross_entropy_bwd(gpu, &mut d_g, &d_labels, &upload(gpu, &lse32), scale, rows, vocab)
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        sync(gpu, &what);
        let g = widen(&download::<T>(gpu, &d_g));
        assert_close(&format!("{what} bwd"), &g, &g_ref, vocab, g_atol, g_rtol);

        // Fused: loss, lse and the gradient in one launch.
        let mut d_f = upload(gpu, &x);
        let (mut d_loss2, mut d_lse2) = (poisoned::<f32>(gpu, rows), poisoned::<f32>(gpu, rows));
        cross_entropy_fused(gpu, &mut d_f, &d_labels, &mut d_loss2, &mut d_lse2, scale, rows, vocab)
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        sync(gpu, &what);
        assert_close(&format!("{what} fused loss"), &f32s(&d_loss2), &loss_ref, 1, l_atol, l_rtol);
        let lse2 = f32s(&d_lse2);
        assert_close(&format!("{what} fused lse"), &lse2, &lse_ref, 1, l_atol, l_rtol);
        let g2 = widen(&download::<T>(gpu, &d_f));
        let g2_ref = ce_grad_ref(&xf, &labels, &lse_ref, vocab, scale as f64);
        assert_close(&format!("{what} fused grad"), &g2, &g2_ref, vocab, g_atol, g_rtol);

        // The mean loss as the engine defines it.
        let mean_gpu: f64 = f32s(&d_loss2).iter().sum::<f64>() / count as f64;
        let mean_ref: f64 = loss_ref.iter().sum::<f64>() / count as f64;
        assert!(
            (mean_gpu - mean_ref).abs() <= 1e-5 * (1.0 + mean_ref.abs()),
            "{what}: mean loss {mean_gpu} vs {mean_ref}"
        );
    }
}

#[test]
fn cuda_cross_entropy_f32() {
    let Some(gpu) = gpu() else { return };
    check_cross_entropy::<f32>(gpu, 41);
}

#[test]
fn cuda_cross_entropy_bf16() {
    let Some(gpu) = gpu() else { return };
    check_cross_entropy::<bf16>(gpu, 42);
}

#[test]
fn cuda_cross_entropy_bad_label_gives_nan() {
    let Some(gpu) = gpu() else { return };
    let (rows, vocab) = (3, 40);
    let labels = [5i32, 40, -7];
    let mut rng = Rng(43);
    let x = rng.vec(rows * vocab, -2.0, 2.0);
    let mut d_x = upload(gpu, &x);
    let (mut d_loss, mut d_lse) = (poisoned::<f32>(gpu, rows), poisoned::<f32>(gpu, rows));
    cross_entropy_fused(gpu, &mut d_x, &upload(gpu, &labels), &mut d_loss, &mut d_lse, 1.0, rows, vocab).unwrap();
    sync(gpu, "cross_entropy bad label");
    let loss: Vec<f32> = download(gpu, &d_loss);
    let g: Vec<f32> = download(gpu, &d_x);
    assert!(loss[0].is_finite() && loss[1].is_nan() && loss[2].is_nan(), "{loss:?}");
    assert!(g[..vocab].iter().all(|v| v.is_finite()));
    assert!(g[vocab..].iter().all(|v| v.is_nan()));
    println!("cross_entropy: labels outside the vocabulary -> NaN loss and gradient: ok");
}

// ---------------------------------------------------------------------------------------------
// NF4

/// Weights like a linear layer's: N(0, 0.02) with rare outliers.
fn nf4_values(rng: &mut Rng, n: usize) -> Vec<f32> {
    (0..n)
        .map(|i| {
            let v = rng.normal() * 0.02;
            if i % 997 == 5 {
                v * 30.0
            } else {
                v
            }
        })
        .collect()
}

/// A CPU-quantized weight's parts on the device.
struct DeviceNf4 {
    packed: CudaSlice<u8>,
    plain: Option<CudaSlice<f32>>,
    codes: Option<CudaSlice<u8>>,
    scales: Option<CudaSlice<f32>>,
    offset: f32,
    map: CudaSlice<f32>,
}

impl DeviceNf4 {
    fn new(gpu: &Gpu, w: &Nf4Weight) -> Self {
        let map = upload(gpu, &dynamic_map()[..]);
        let packed = upload(gpu, w.packed());
        match w.scales() {
            Nf4Scales::Plain(a) => {
                DeviceNf4 { packed, plain: Some(upload(gpu, a)), codes: None, scales: None, offset: 0.0, map }
            }
            Nf4Scales::Double { codes, scales, offset } => DeviceNf4 {
                packed,
                plain: None,
                codes: Some(upload(gpu, codes)),
                scales: Some(upload(gpu, scales)),
                offset: *offset,
                map,
            },
        }
    }

    fn view(&self) -> Nf4Weights<'_> {
        let absmax = match &self.plain {
            Some(a) => Nf4Absmax::Plain(a),
            None => Nf4Absmax::Double {
                codes: self.codes.as_ref().unwrap(),
                scales: self.scales.as_ref().unwrap(),
                offset: self.offset,
                map: &self.map,
            },
        };
        Nf4Weights { packed: &self.packed, absmax }
    }
}

/// (rows, cols) of the dequantization tests: blocks straddling rows, an odd count, a partial
/// last block, several double-quant scales, and more words than threads.
const NF4_SHAPES: &[(usize, usize)] = &[(1, 64), (3, 100), (7, 33), (37, 576), (64, 4096), (300, 129), (1024, 4100)];

fn check_nf4_dequant<T: TestFloat>(gpu: &Gpu, seed: u64, bits: impl Fn(T) -> u32) {
    let mut rng = Rng(seed);
    for &(rows, cols) in NF4_SHAPES {
        for double_quant in [true, false] {
            let n = rows * cols;
            let what = format!(
                "nf4_dequant_{} {rows}x{cols} {}",
                T::NAME,
                if double_quant { "double-quant" } else { "plain" }
            );
            let w = Nf4Weight::quantize(&nf4_values(&mut rng, n), &[rows, cols], double_quant).unwrap();
            let cpu = w.dequantize();
            let dev = DeviceNf4::new(gpu, &w);
            let mut d_out = poisoned::<T>(gpu, n);
            nf4_dequantize(gpu, &dev.view(), &mut d_out).unwrap_or_else(|e| panic!("{what}: {e}"));
            sync(gpu, &what);
            let got: Vec<T> = download(gpu, &d_out);
            let wrong: Vec<String> = got
                .iter()
                .zip(&cpu)
                .enumerate()
                .filter(|(_, (&g, &c))| bits(g) != bits(T::from_f32(c)))
                .take(8)
                .map(|(i, (&g, &c))| format!("  [{i}] got {g:?}, want {c:e} (nibble {})", w.index(i)))
                .collect();
            assert!(wrong.is_empty(), "{what}: not bit-identical to Nf4Weight::dequantize():\n{}", wrong.join("\n"));
            println!("{what}: bit-identical ({n} values)");
        }
    }
}

#[test]
fn cuda_nf4_dequant_f32_bit_exact() {
    let Some(gpu) = gpu() else { return };
    check_nf4_dequant::<f32>(gpu, 51, |v| v.to_bits());
}

#[test]
fn cuda_nf4_dequant_bf16_bit_exact() {
    let Some(gpu) = gpu() else { return };
    check_nf4_dequant::<bf16>(gpu, 52, |v| v.to_bits() as u32);
}

/// (rows, k, m) of the GEMV tests: the fast path (k % 64 == 0) with full and partial chunks
/// (a chunk is 2048 columns for m <= 2, 1024 for m <= 4, 512 above), rows not a multiple of the
/// two per task, warps with several tasks (more than 2 * 16 * 132 rows), many chunks; and the
/// element path (other k, including k % 64 == 32 where odd rows start mid-block).
const GEMV_SHAPES: &[(usize, usize, usize)] = &[
    (5, 64, 1),
    (17, 576, 2),
    (9, 96, 3),
    (33, 1536, 4),
    (256, 4096, 1),
    (64, 4096, 8),
    (3, 100, 5),
    (4, 33, 6),
    (11, 448, 7),
    (5001, 64, 1),
    (4500, 2048, 2),
    (3, 14336, 2),
    (4100, 192, 5),
    (701, 4096, 3),
    (50, 1088, 7),
    (33, 4160, 8),
];

fn check_nf4_gemv<T: TestFloat>(gpu: &Gpu, seed: u64) {
    let mut rng = Rng(seed);
    // Dot products of k terms in f32 (different order from the f64 sum), then the storage
    // rounding of y.
    let out_rtol = match T::DTYPE {
        kernels_cuda::Dtype::F32 => 1e-6,
        kernels_cuda::Dtype::Bf16 => 4e-3,
    };
    let mut cases: Vec<(usize, usize, usize, bool)> = GEMV_SHAPES.iter().map(|&(r, k, m)| (r, k, m, true)).collect();
    // Every m on one shape, and the plain absmax.
    cases.extend((1..=8).map(|m| (17, 576, m, true)));
    cases.push((40, 256, 3, false));
    cases.push((6, 70, 2, false));
    for (rows, k, m, double_quant) in cases {
        let what = format!("nf4_gemv_{} rows={rows} k={k} m={m}{}", T::NAME, if double_quant { "" } else { " plain" });
        let w = Nf4Weight::quantize(&nf4_values(&mut rng, rows * k), &[rows, k], double_quant).unwrap();
        let wf = w.dequantize();
        let x: Vec<T> = to_dtype(&rng.vec(m * k, -1.0, 1.0));
        let xf = widen(&x);
        let dev = DeviceNf4::new(gpu, &w);
        let mut d_y = poisoned::<T>(gpu, m * rows);
        nf4_gemv(gpu, &upload(gpu, &x), &dev.view(), &mut d_y, m, rows, k).unwrap_or_else(|e| panic!("{what}: {e}"));
        sync(gpu, &what);
        let y = widen(&download::<T>(gpu, &d_y));
        let mut want = vec![0.0; m * rows];
        let mut tol = vec![0.0; m * rows];
        for i in 0..m {
            for r in 0..rows {
                let (mut s, mut mag) = (0.0f64, 0.0f64);
                for c in 0..k {
                    let t = xf[i * k + c] * wf[r * k + c] as f64;
                    s += t;
                    mag += t.abs();
                }
                want[i * rows + r] = s;
                tol[i * rows + r] = 4e-6 * mag + out_rtol * s.abs() + 1e-7;
            }
        }
        assert_within(&what, &y, &want, &tol, rows);
    }
}

#[test]
fn cuda_nf4_gemv_f32() {
    let Some(gpu) = gpu() else { return };
    check_nf4_gemv::<f32>(gpu, 61);
}

#[test]
fn cuda_nf4_gemv_bf16() {
    let Some(gpu) = gpu() else { return };
    check_nf4_gemv::<bf16>(gpu, 62);
}

/// (rows, cols, m) of the fused NF4 GEMM tests: one tile, partial weight tiles (rows % 64 != 0),
/// m across the 64- and 128-row block sizes with partial block rows, contractions long enough to
/// be split (and split unevenly), and the plain absmax.
const GEMM_SHAPES: &[(usize, usize, usize, bool)] = &[
    (64, 64, 1, true),
    (200, 128, 9, true),
    (192, 576, 64, true),
    (1536, 576, 65, true),
    (576, 1536, 130, true),
    (4104, 256, 16, true),
    (256, 4160, 300, true),
    (136, 64, 33, false),
    (512, 1024, 128, false),
];

fn check_nf4_gemm(gpu: &Gpu, seed: u64, product: Nf4Product) {
    let mut rng = Rng(seed);
    for &(rows, cols, m, double_quant) in GEMM_SHAPES {
        let (n_out, kdim) = product.dims(rows, cols);
        let what = format!("nf4_gemm {product:?} W [{rows}, {cols}] m={m}{}", if double_quant { "" } else { " plain" });
        let w = Nf4Weight::quantize(&nf4_values(&mut rng, rows * cols), &[rows, cols], double_quant).unwrap();
        // The kernel multiplies the weight as nf4_dequant_bf16 rounds it.
        let wf: Vec<f64> = w.dequantize().iter().map(|&v| bf16::from_f32(v).to_f64()).collect();
        let a: Vec<bf16> = to_dtype(&rng.vec(m * kdim, -1.0, 1.0));
        let af = widen(&a);
        let dev = DeviceNf4::new(gpu, &w);
        let mut d_c = poisoned::<bf16>(gpu, m * n_out);
        let ws_len = nf4_gemm_workspace_len(gpu, m, rows, cols, product);
        let mut ws = (ws_len > 0).then(|| poisoned::<f32>(gpu, ws_len));
        nf4_gemm(gpu, &upload(gpu, &a), &dev.view(), &mut d_c, ws.as_mut(), (m, rows, cols), product)
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        sync(gpu, &what);
        let got = widen(&download::<bf16>(gpu, &d_c));
        let (mut want, mut tol) = (vec![0.0; m * n_out], vec![0.0; m * n_out]);
        for i in 0..m {
            for o in 0..n_out {
                let (mut s, mut mag) = (0.0f64, 0.0f64);
                for k in 0..kdim {
                    let wv = match product {
                        Nf4Product::Forward => wf[o * cols + k],
                        Nf4Product::Backward => wf[k * cols + o],
                    };
                    let t = af[i * kdim + k] * wv;
                    s += t;
                    mag += t.abs();
                }
                want[i * n_out + o] = s;
                // f32 sums in another order, then the bf16 rounding of c.
                tol[i * n_out + o] = 4e-6 * mag + 4e-3 * s.abs() + 1e-7;
            }
        }
        assert_within(&format!("{what} (workspace {ws_len})"), &got, &want, &tol, n_out);
    }
}

#[test]
fn cuda_nf4_gemm_forward() {
    let Some(gpu) = gpu() else { return };
    check_nf4_gemm(gpu, 71, Nf4Product::Forward);
}

#[test]
fn cuda_nf4_gemm_backward() {
    let Some(gpu) = gpu() else { return };
    check_nf4_gemm(gpu, 72, Nf4Product::Backward);
}

// ---------------------------------------------------------------------------------------------
// Argument checks

#[test]
fn cuda_ops_launchers_reject_bad_sizes() {
    let Some(gpu) = gpu() else { return };
    let expect_invalid = |result: kernels_cuda::Result<()>, needle: &str| {
        let err = result.expect_err("bad arguments were accepted");
        let message = err.to_string();
        assert!(matches!(err, Error::InvalidArgument { .. }), "{message}");
        assert!(message.contains(needle), "{needle:?} not in {message:?}");
    };
    let f = |n: usize| upload(gpu, &vec![0.0f32; n]);
    let (cos, sin) = (f(8), f(8));
    let pos = upload(gpu, &[0u32, 1]);
    expect_invalid(
        rope_fwd(gpu, &mut f(31), &cos, &sin, &pos, RopeShape::bhtd(1, 2, 2, 8)),
        "x has 31 elements, expected 32",
    );
    expect_invalid(rope_fwd(gpu, &mut f(30), &cos, &sin, &pos, RopeShape::bhtd(1, 2, 3, 5)), "head_dim 5");
    expect_invalid(
        rope_fwd(gpu, &mut f(24), &cos, &sin, &pos, RopeShape::bhtd(1, 1, 2, 12)),
        "not a positive multiple",
    );
    expect_invalid(swiglu_fwd(gpu, &f(4), &f(5), &mut f(4)), "up has 5");
    expect_invalid(swiglu_bwd_inplace(gpu, &mut f(4), &mut f(4), &f(3)), "dy has 3");
    let ids = upload(gpu, &[0u32, 1, 2]);
    expect_invalid(embedding_fwd(gpu, &ids, &f(12), &mut f(11), 3, 4), "out has 11");
    expect_invalid(embedding_bwd(gpu, &ids, &f(12), &mut f(12), 4, 4), "dtable has 12 elements, expected 16");
    let labels = upload(gpu, &[0i32, 1]);
    expect_invalid(cross_entropy_fwd(gpu, &f(10), &labels, &mut f(2), &mut f(1), 2, 5), "lse has 1");
    expect_invalid(cross_entropy_fused(gpu, &mut f(10), &labels, &mut f(2), &mut f(2), 1.0, 2, 0), "vocab 0");
    let packed = upload(gpu, &[0u8; 64]);
    let absmax = f(2);
    let w = Nf4Weights { packed: &packed, absmax: Nf4Absmax::Plain(&absmax) };
    expect_invalid(nf4_dequantize(gpu, &w, &mut f(130)), "packed has 64");
    expect_invalid(nf4_gemv(gpu, &f(9 * 64), &w, &mut f(18), 9, 2, 64), "m = 9");
    expect_invalid(nf4_gemv(gpu, &f(64), &w, &mut f(3), 1, 2, 64), "y has 3");
    let codes = upload(gpu, &[0u8; 2]);
    let short_map = f(255);
    let w = Nf4Weights {
        packed: &packed,
        absmax: Nf4Absmax::Double { codes: &codes, scales: &absmax, offset: 0.0, map: &short_map },
    };
    expect_invalid(nf4_dequantize(gpu, &w, &mut f(128)), "absmax scales has 2");
    println!("bad sizes rejected: ok");
}

// ---------------------------------------------------------------------------------------------
// Throughput (informational)

#[test]
fn cuda_ops_bandwidth() {
    let Some(gpu) = gpu() else { return };
    let gbps = |bytes: usize, ms: f64| bytes as f64 / (ms * 1e-3) / 1e9;
    let s = gpu.stream();

    // The ceiling: a device-to-device copy of 512 MiB (read + write counted).
    let copy_n = 128usize << 20;
    let src = s.alloc_zeros::<f32>(copy_n).unwrap();
    let mut dst = s.alloc_zeros::<f32>(copy_n).unwrap();
    let copy_ms = time_ms(gpu, 20, || s.memcpy_dtod(&src, &mut dst).unwrap());
    let copy = gbps(2 * copy_n * 4, copy_ms);
    drop((src, dst));
    // A 1 GiB copy (~0.5 ms) queued ahead of short kernels (see `time_queued_ms`).
    let blocker_src = s.alloc_zeros::<f32>(256 << 20).unwrap();
    let mut blocker_dst = s.alloc_zeros::<f32>(256 << 20).unwrap();
    let pct = |g: f64| 100.0 * g / copy;
    println!("on {} ({}): device copy 512 MiB {copy_ms:.4} ms = {copy:.0} GB/s (read + write)", gpu.name(), gpu.arch());
    let mut rng = Rng(71);

    // RoPE on Q and K of Llama-3-8B, 4096 tokens, bf16 [1, h, 4096, 128], in place.
    let (t, d) = (4096usize, 128usize);
    let (cos, sin) = rope_table(&inv_freq(d), 8192);
    let (d_cos, d_sin) = (upload(gpu, &cos), upload(gpu, &sin));
    let pos: Vec<u32> = (0..t as u32).collect();
    let d_pos = upload(gpu, &pos);
    for heads in [32usize, 8] {
        let shape = RopeShape::bhtd(1, heads, t, d);
        let n = shape.numel().unwrap();
        let mut d_x = upload(gpu, &to_dtype::<bf16>(&rng.vec(n, -1.0, 1.0)));
        let tracked = time_queued_ms(gpu, 20, &blocker_src, &mut blocker_dst, || {
            rope_fwd(gpu, &mut d_x, &d_cos, &d_sin, &d_pos, shape).unwrap()
        });
        let ms = untracked(gpu, || {
            time_queued_ms(gpu, 20, &blocker_src, &mut blocker_dst, || {
                rope_fwd(gpu, &mut d_x, &d_cos, &d_sin, &d_pos, shape).unwrap()
            })
        });
        let bytes = 2 * n * 2; // x read and written; the tables (t * 64 * 8 bytes) not counted
        println!(
            "  rope_fwd_bf16 [1, {heads}, {t}, {d}] in place: {ms:.4} ms = {:.0} GB/s ({:.0}% of copy); \
             with event tracking {tracked:.4} ms",
            gbps(bytes, ms),
            pct(gbps(bytes, ms))
        );
    }

    // SwiGLU of Llama-3-8B's MLP, 4096 tokens x 14336, bf16.
    let n = 4096 * 14336;
    let g = upload(gpu, &to_dtype::<bf16>(&rng.vec(n, -4.0, 4.0)));
    let u = upload(gpu, &to_dtype::<bf16>(&rng.vec(n, -2.0, 2.0)));
    let mut out = s.alloc_zeros::<bf16>(n).unwrap();
    let ms = time_ms(gpu, 20, || swiglu_fwd(gpu, &g, &u, &mut out).unwrap());
    println!(
        "  swiglu_fwd_bf16 n = 4096 x 14336: {ms:.4} ms = {:.0} GB/s ({:.0}% of copy)",
        gbps(3 * n * 2, ms),
        pct(gbps(3 * n * 2, ms))
    );
    let (mut g2, mut u2) = (g.clone(), u.clone());
    let ms = time_ms(gpu, 20, || swiglu_bwd_inplace_h(gpu, &mut g2, &mut u2, &mut out).unwrap());
    println!(
        "  swiglu_bwd_inplace_bf16 (with h) n = 4096 x 14336: {ms:.4} ms = {:.0} GB/s ({:.0}% of copy)",
        gbps(6 * n * 2, ms),
        pct(gbps(6 * n * 2, ms))
    );
    drop((g, u, out, g2, u2));

    // Cross-entropy of 1024 tokens over Llama-3's vocabulary, bf16, fused, in place.
    let (rows, vocab) = (1024usize, 128256usize);
    let x = to_dtype::<bf16>(&rng.vec(rows * vocab, -8.0, 8.0));
    let labels: Vec<i32> = (0..rows).map(|_| rng.below(vocab) as i32).collect();
    let (d_labels, mut d_logits) = (upload(gpu, &labels), upload(gpu, &x));
    let (mut d_loss, mut d_lse) = (poisoned::<f32>(gpu, rows), poisoned::<f32>(gpu, rows));
    let ms = time_ms(gpu, 20, || {
        cross_entropy_fused(gpu, &mut d_logits, &d_labels, &mut d_loss, &mut d_lse, 1.0 / rows as f32, rows, vocab)
            .unwrap()
    });
    println!(
        "  cross_entropy_fused_bf16 [{rows}, {vocab}]: {ms:.4} ms = {:.0} GB/s of DRAM minimum \
         (read + write; the kernel reads twice) ({:.0}% of copy)",
        gbps(2 * rows * vocab * 2, ms),
        pct(gbps(2 * rows * vocab * 2, ms))
    );
    drop((d_logits, d_labels));

    // NF4 GEMV for decode, Llama-3-8B shapes (q/o, k/v, gate/up, down, LM head), double-quant.
    // Weights rotate over enough copies (> 160 MB) that L2 (50 MB) cannot serve them; the time
    // is per GEMV.
    let map = upload(gpu, &dynamic_map()[..]);
    let gemv_cases: &[(usize, usize, usize, bool)] = &[
        (4096, 4096, 1, true),
        (1024, 4096, 1, true),
        (14336, 4096, 1, true),
        (4096, 14336, 1, true),
        (128256, 4096, 1, true),
        (4096, 4096, 1, false),
        (14336, 4096, 2, true),
        (14336, 4096, 4, true),
        (4096, 4096, 8, true),
        (14336, 4096, 8, true),
    ];
    for &(rows, k, m, bf) in gemv_cases {
        let numel = rows * k;
        let blocks = numel / 64;
        let packed_bytes = numel / 2;
        let nf4_bytes = packed_bytes + blocks + blocks.div_ceil(256) * 4;
        let copies = (160usize << 20).div_ceil(nf4_bytes).max(1);
        // Random packed codes and absmax codes are valid NF4 weights.
        let packed_host: Vec<u8> = (0..packed_bytes).map(|_| rng.next_u64() as u8).collect();
        let codes_host: Vec<u8> = (0..blocks).map(|_| rng.next_u64() as u8).collect();
        let scales_host: Vec<f32> = rng.vec(blocks.div_ceil(256), 0.01, 0.05);
        let offset = 0.03f32;
        let packed = upload(gpu, &packed_host);
        let codes = upload(gpu, &codes_host);
        let scales = upload(gpu, &scales_host);
        let mut weights: Vec<(CudaSlice<u8>, CudaSlice<u8>)> = Vec::new();
        for _ in 1..copies {
            weights.push((packed.clone(), codes.clone()));
        }
        weights.push((packed, codes));
        let xv = rng.vec(m * k, -1.0, 1.0);
        let (y, ms, tracked) = if bf {
            bench_gemv::<bf16>(gpu, &weights, &scales, offset, &map, &xv, m, rows, k, &blocker_src, &mut blocker_dst)
        } else {
            bench_gemv::<f32>(gpu, &weights, &scales, offset, &map, &xv, m, rows, k, &blocker_src, &mut blocker_dst)
        };
        println!(
            "  nf4_gemv{m}_{} [{rows}, {k}] (m = {m}): {:.2} us = {:.0} GB/s of NF4 bytes \
             ({nf4_bytes} B) ({:.0}% of copy; {copies} rotating copies); with event tracking \
             {:.2} us",
            if bf { "bf16" } else { "f32" },
            ms * 1e3,
            gbps(nf4_bytes, ms),
            pct(gbps(nf4_bytes, ms)),
            tracked * 1e3
        );

        // Spot-check a few output rows of the last run against the CPU twin.
        let cpu = Nf4Weight::from_parts(
            &[rows, k],
            packed_host,
            Nf4Scales::Double { codes: codes_host, scales: scales_host, offset },
        )
        .unwrap();
        let xf: Vec<f64> = if bf { widen(&to_dtype::<bf16>(&xv)) } else { xv.iter().map(|&v| v as f64).collect() };
        let mut wrow = vec![0.0f32; k];
        for r in [0, rows / 2 + 1, rows - 1] {
            cpu.dequantize_rows(r, 1, &mut wrow).unwrap();
            for i in 0..m {
                let (mut s, mut mag) = (0.0f64, 0.0f64);
                for c in 0..k {
                    let t = xf[i * k + c] * wrow[c] as f64;
                    s += t;
                    mag += t.abs();
                }
                let got = y[i * rows + r];
                assert!(
                    (got - s).abs() <= 1e-5 * mag + 4e-3 * s.abs(),
                    "gemv [{rows}, {k}] m={m} y[{i}, {r}] = {got}, want {s}"
                );
            }
        }
    }

    // NF4 dequantization (feeds cuBLAS in training): NF4 bytes read + output written.
    for &(rows, k) in &[(4096usize, 4096usize), (14336, 4096)] {
        let numel = rows * k;
        let blocks = numel / 64;
        let packed = upload(gpu, &(0..numel / 2).map(|_| rng.next_u64() as u8).collect::<Vec<u8>>());
        let codes = upload(gpu, &(0..blocks).map(|_| rng.next_u64() as u8).collect::<Vec<u8>>());
        let scales = upload(gpu, &rng.vec(blocks.div_ceil(256), 0.01, 0.05));
        let nf4_bytes = numel / 2 + blocks + blocks.div_ceil(256) * 4;
        let w = Nf4Weights {
            packed: &packed,
            absmax: Nf4Absmax::Double { codes: &codes, scales: &scales, offset: 0.03, map: &map },
        };
        let mut out16 = s.alloc_zeros::<bf16>(numel).unwrap();
        let ms = untracked(gpu, || {
            time_queued_ms(gpu, 20, &blocker_src, &mut blocker_dst, || nf4_dequantize(gpu, &w, &mut out16).unwrap())
        });
        let bytes = nf4_bytes + 2 * numel;
        println!(
            "  nf4_dequant_bf16 [{rows}, {k}]: {:.2} us = {:.0} GB/s (NF4 read + bf16 written) ({:.0}% of copy)",
            ms * 1e3,
            gbps(bytes, ms),
            pct(gbps(bytes, ms))
        );
        drop(out16);
        let mut out32 = s.alloc_zeros::<f32>(numel).unwrap();
        let ms = untracked(gpu, || {
            time_queued_ms(gpu, 20, &blocker_src, &mut blocker_dst, || nf4_dequantize(gpu, &w, &mut out32).unwrap())
        });
        let bytes = nf4_bytes + 4 * numel;
        println!(
            "  nf4_dequant_f32 [{rows}, {k}]: {:.2} us = {:.0} GB/s (NF4 read + f32 written) ({:.0}% of copy)",
            ms * 1e3,
            gbps(bytes, ms),
            pct(gbps(bytes, ms))
        );
    }
}

/// Times `nf4_gemv` over the rotating `weights` (per GEMV, median of 20, launches queued behind
/// a copy; see `time_queued_ms`), with and without cudarc's event tracking; returns the last
/// output (widened) and the two times in ms.
#[allow(clippy::too_many_arguments)]
fn bench_gemv<T: TestFloat>(
    gpu: &Gpu,
    weights: &[(CudaSlice<u8>, CudaSlice<u8>)],
    scales: &CudaSlice<f32>,
    offset: f32,
    map: &CudaSlice<f32>,
    x: &[f32],
    m: usize,
    rows: usize,
    k: usize,
    blocker_src: &CudaSlice<f32>,
    blocker_dst: &mut CudaSlice<f32>,
) -> (Vec<f64>, f64, f64) {
    let d_x = upload(gpu, &to_dtype::<T>(x));
    let mut d_y = poisoned::<T>(gpu, m * rows);
    let mut run = || {
        for (p, c) in weights {
            let w = Nf4Weights { packed: p, absmax: Nf4Absmax::Double { codes: c, scales, offset, map } };
            nf4_gemv(gpu, &d_x, &w, &mut d_y, m, rows, k).unwrap();
        }
    };
    let copies = weights.len() as f64;
    let tracked = time_queued_ms(gpu, 20, blocker_src, blocker_dst, &mut run) / copies;
    let ms = untracked(gpu, || time_queued_ms(gpu, 20, blocker_src, blocker_dst, &mut run)) / copies;
    (widen(&download::<T>(gpu, &d_y)), ms, tracked)
}
