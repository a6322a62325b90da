//! Forward values of every op against naive, obviously-correct f64 loops written here;
//! 16-bit inputs against the f32 results; autograd bookkeeping; shape errors.
//!
//! Tolerances (`|got - want| <= atol + rtol * |want|`):
//! - f64 kernels vs the f64 reference: 1e-12 + 1e-11 (only summation order differs).
//! - f32 kernels vs the f64 reference on the same (f32-rounded) inputs: 1e-5 + 1e-5.
//! - bf16/f16 results vs the f32 results on the same (16-bit-rounded) inputs: one unit in
//!   the last place of the 16-bit type (2^-7 for bf16, 2^-10 for f16, relative), plus
//!   1e-7 absolute for f16 subnormals. Kernels widen to f32, compute in f32 and round the
//!   result once, so the only difference is that final rounding; reductions done in 16 bits
//!   (k = 301 terms) would be off by far more.

mod common;

use common::{assert_close, randn, strides, vals};
use engine::ops::{self, RopeTable};
use engine::rng::Rng;
use engine::{autograd, DType, Result, Tensor};

fn tol(dt: DType) -> (f64, f64) {
    match dt {
        DType::F64 => (1e-12, 1e-11),
        DType::F32 => (1e-5, 1e-5),
        _ => unreachable!(),
    }
}

/// A random tensor stored as `dt`, and its values after that rounding.
fn rand_as(rng: &mut Rng, shape: &[usize], std: f64, dt: DType) -> (Tensor, Vec<f64>) {
    let t = ops::cast(&randn(rng, shape, std), dt).unwrap();
    let v = vals(&t);
    (t, v)
}

#[track_caller]
fn check_against(what: &str, got: &Tensor, shape: &[usize], want: &[f64], dt: DType) {
    check_scaled(what, got, shape, want, dt, 0.0);
}

/// [`check_against`] for inputs of magnitude up to `mag`: `x - lse(x)` of logits near 1000
/// loses precision proportional to the inputs, not the result: atol grows by 4 eps * `mag`.
#[track_caller]
fn check_scaled(what: &str, got: &Tensor, shape: &[usize], want: &[f64], dt: DType, mag: f64) {
    assert_eq!(got.shape(), shape, "{what}: shape");
    assert_eq!(got.dtype(), dt, "{what}: dtype");
    let (atol, rtol) = tol(dt);
    let eps = if dt == DType::F64 { f64::EPSILON } else { f32::EPSILON as f64 };
    let atol = atol + 4.0 * eps * mag;
    assert_close(&format!("{what} ({})", dt.name()), &vals(got), want, atol, rtol);
}

// ------------------------------------------------------------------ naive references

fn unravel(mut i: usize, shape: &[usize]) -> Vec<usize> {
    let mut idx = vec![0; shape.len()];
    for d in (0..shape.len()).rev() {
        idx[d] = i % shape[d];
        i /= shape[d];
    }
    idx
}

fn ravel(idx: &[usize], shape: &[usize]) -> usize {
    idx.iter().zip(strides(shape)).map(|(i, s)| i * s).sum()
}

/// Values of `v: shape` with dims `a` and `b` swapped, and the new shape.
fn ref_transpose(v: &[f64], shape: &[usize], a: usize, b: usize) -> (Vec<f64>, Vec<usize>) {
    let mut out_shape = shape.to_vec();
    out_shape.swap(a, b);
    let out = (0..v.len())
        .map(|i| {
            let mut idx = unravel(i, &out_shape);
            idx.swap(a, b);
            v[ravel(&idx, shape)]
        })
        .collect();
    (out, out_shape)
}

/// Values of `v: shape` restricted to `start..start + len` along `dim`, and the new shape.
fn ref_narrow(v: &[f64], shape: &[usize], dim: usize, start: usize, len: usize) -> (Vec<f64>, Vec<usize>) {
    let mut out_shape = shape.to_vec();
    out_shape[dim] = len;
    let n: usize = out_shape.iter().product();
    let out = (0..n)
        .map(|i| {
            let mut idx = unravel(i, &out_shape);
            idx[dim] += start;
            v[ravel(&idx, shape)]
        })
        .collect();
    (out, out_shape)
}

/// `a: [batch.., m, k] @ b: [batch.., k, n]` or `@ b: [k, n]`.
fn ref_matmul(a: &[f64], ash: &[usize], b: &[f64], bsh: &[usize]) -> (Vec<f64>, Vec<usize>) {
    let (ra, rb) = (ash.len(), bsh.len());
    let (m, k, n) = (ash[ra - 2], ash[ra - 1], bsh[rb - 1]);
    assert_eq!(bsh[rb - 2], k);
    let batch: usize = ash[..ra - 2].iter().product();
    let mut out = vec![0.0; batch * m * n];
    for bi in 0..batch {
        let boff = if rb > 2 { bi * k * n } else { 0 };
        for i in 0..m {
            for j in 0..n {
                let mut acc = 0.0;
                for p in 0..k {
                    acc += a[bi * m * k + i * k + p] * b[boff + p * n + j];
                }
                out[(bi * m + i) * n + j] = acc;
            }
        }
    }
    let mut shape = ash[..ra - 2].to_vec();
    shape.extend([m, n]);
    (out, shape)
}

/// Causal GQA attention with an explicit mask and softmax. Query row `i` of `t` is
/// position `s - t + i`; it sees keys `j <= s - t + i`. Head `h` uses kv head `h / (hq/hkv)`.
#[allow(clippy::too_many_arguments)]
fn ref_attention(
    q: &[f64],
    k: &[f64],
    v: &[f64],
    b: usize,
    hq: usize,
    hkv: usize,
    t: usize,
    s: usize,
    d: usize,
) -> Vec<f64> {
    let scale = 1.0 / (d as f64).sqrt();
    let mut out = vec![0.0; b * hq * t * d];
    for bi in 0..b {
        for h in 0..hq {
            let kvh = h / (hq / hkv);
            for i in 0..t {
                let qrow = &q[((bi * hq + h) * t + i) * d..][..d];
                let mut scores = vec![f64::NEG_INFINITY; s];
                for (j, sc) in scores.iter_mut().enumerate() {
                    if j <= s - t + i {
                        let krow = &k[((bi * hkv + kvh) * s + j) * d..][..d];
                        *sc = (0..d).map(|c| qrow[c] * krow[c]).sum::<f64>() * scale;
                    }
                }
                let mx = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let e: Vec<f64> = scores.iter().map(|&x| (x - mx).exp()).collect();
                let z: f64 = e.iter().sum();
                for j in 0..s {
                    let vrow = &v[((bi * hkv + kvh) * s + j) * d..][..d];
                    for c in 0..d {
                        out[((bi * hq + h) * t + i) * d + c] += e[j] / z * vrow[c];
                    }
                }
            }
        }
    }
    out
}

fn ref_rms_norm(x: &[f64], w: &[f64], eps: f64) -> Vec<f64> {
    let h = w.len();
    let mut out = Vec::with_capacity(x.len());
    for row in x.chunks(h) {
        let ms = row.iter().map(|v| v * v).sum::<f64>() / h as f64;
        let r = (ms + eps).sqrt();
        out.extend(row.iter().zip(w).map(|(v, wj)| v / r * wj));
    }
    out
}

/// Hugging Face "rotate half" RoPE on `x: [b, h, t, d]`. The angle `pos * inv_freq` is
/// computed in f32, as transformers does (`positions.float() @ inv_freq.float()`), which
/// is RopeTable's documented convention.
fn ref_rope(x: &[f64], shape: &[usize], inv_freq: &[f64], positions: &[usize]) -> Vec<f64> {
    let (t, d) = (shape[2], shape[3]);
    let half = d / 2;
    let mut out = vec![0.0; x.len()];
    for (r, row) in x.chunks(d).enumerate() {
        let p = positions[r % t];
        for j in 0..half {
            let angle = (p as f32 * inv_freq[j] as f32) as f64;
            let (c, s) = (angle.cos(), angle.sin());
            // rotate_half(x) = [-x2, x1]; y = x * cos + rotate_half(x) * sin.
            out[r * d + j] = row[j] * c + (-row[j + half]) * s;
            out[r * d + j + half] = row[j + half] * c + row[j] * s;
        }
    }
    out
}

fn ref_swiglu(g: &[f64], u: &[f64]) -> Vec<f64> {
    g.iter().zip(u).map(|(&g, &u)| g / (1.0 + (-g).exp()) * u).collect()
}

fn ref_log_softmax(x: &[f64], n: usize) -> Vec<f64> {
    let mut out = Vec::with_capacity(x.len());
    for row in x.chunks(n) {
        let m = row.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let lse = m + row.iter().map(|v| (v - m).exp()).sum::<f64>().ln();
        out.extend(row.iter().map(|v| v - lse));
    }
    out
}

fn ref_cross_entropy(logits: &[f64], vocab: usize, labels: &[i32]) -> f64 {
    let lsm = ref_log_softmax(logits, vocab);
    let kept: Vec<(usize, i32)> = labels.iter().copied().enumerate().filter(|&(_, l)| l != -100).collect();
    -kept.iter().map(|&(r, l)| lsm[r * vocab + l as usize]).sum::<f64>() / kept.len() as f64
}

fn ref_embedding(table: &[f64], h: usize, ids: &[u32]) -> Vec<f64> {
    ids.iter().flat_map(|&i| table[i as usize * h..(i as usize + 1) * h].to_vec()).collect()
}

// --------------------------------------------------------------- views and matmul

#[derive(Clone, Copy, Debug)]
enum View {
    T(usize, usize),
    N(usize, usize, usize),
}

/// A random tensor of `stored` shape (as `dt`) seen through `views`, without copies, plus
/// the reference values and shape of that view.
fn view_of(rng: &mut Rng, stored: &[usize], views: &[View], dt: DType) -> (Tensor, Vec<f64>, Vec<usize>) {
    let (mut t, mut v) = rand_as(rng, stored, 1.0, dt);
    let mut shape = stored.to_vec();
    for &op in views {
        (t, (v, shape)) = match op {
            View::T(a, b) => (ops::transpose(&t, a, b).unwrap(), ref_transpose(&v, &shape, a, b)),
            View::N(d, s, l) => (ops::narrow(&t, d, s, l).unwrap(), ref_narrow(&v, &shape, d, s, l)),
        };
    }
    assert_eq!(t.shape(), shape.as_slice(), "view shape");
    assert_eq!(vals(&t), v, "values of the view {views:?} of {stored:?}");
    (t, v, shape)
}

#[test]
fn view_ops_match_reference() {
    let mut rng = Rng::new(100);
    for dt in [DType::F64, DType::F32] {
        let (x, xv, sh) = view_of(&mut rng, &[3, 5, 7], &[View::T(0, 2), View::N(1, 1, 3), View::T(1, 2)], dt);
        assert!(!x.is_contiguous());
        let c = ops::contiguous(&x).unwrap();
        assert!(c.is_contiguous());
        check_against("contiguous", &c, &sh, &xv, dt);
        let r = ops::reshape(&x, &[7 * 3, 3]).unwrap();
        check_against("reshape of a view", &r, &[21, 3], &xv, dt);
    }
}

#[test]
fn matmul_matches_reference() {
    use View::{N, T};
    type Case = (&'static str, &'static [usize], &'static [View], &'static [usize], &'static [View]);
    let cases: &[Case] = &[
        ("2-D", &[5, 7], &[], &[7, 3], &[]),
        ("a^T @ b^T", &[7, 5], &[T(0, 1)], &[3, 7], &[T(0, 1)]),
        ("batched", &[3, 5, 7], &[], &[3, 7, 4], &[]),
        ("batched a^T @ b^T", &[3, 7, 5], &[T(1, 2)], &[3, 4, 7], &[T(1, 2)]),
        ("broadcast 2-D rhs", &[2, 3, 5, 7], &[], &[7, 3], &[]),
        ("broadcast transposed rhs", &[2, 3, 5, 7], &[], &[3, 7], &[T(0, 1)]),
        ("transposed batch dims", &[3, 2, 5, 7], &[T(0, 1)], &[2, 3, 7, 4], &[]),
        ("narrowed columns", &[5, 9], &[N(1, 1, 7)], &[7, 3], &[]),
        ("narrowed rows of b^T", &[5, 7], &[], &[6, 7], &[N(0, 2, 3), T(0, 1)]),
        ("narrowed batch dim", &[2, 5, 5, 7], &[N(1, 1, 3)], &[2, 3, 7, 2], &[]),
        ("narrowed leading batch", &[4, 5, 7], &[N(0, 1, 2)], &[2, 7, 3], &[]),
        ("all-transposed 4-D", &[3, 2, 7, 5], &[T(0, 1), T(2, 3)], &[2, 3, 7, 3], &[]),
    ];
    let mut rng = Rng::new(101);
    for dt in [DType::F64, DType::F32] {
        for &(name, ash, av, bsh, bv) in cases {
            let (a, avals, ashape) = view_of(&mut rng, ash, av, dt);
            let (b, bvals, bshape) = view_of(&mut rng, bsh, bv, dt);
            let (want, shape) = ref_matmul(&avals, &ashape, &bvals, &bshape);
            let got = ops::matmul(&a, &b).unwrap_or_else(|e| panic!("matmul {name}: {e}"));
            check_against(&format!("matmul {name}"), &got, &shape, &want, dt);
        }
        // matmul_nt: x @ w^T for x: [2, 3, 7] (and a transposed view of it), w: [5, 7].
        let (x, xv, xs) = view_of(&mut rng, &[2, 7, 3], &[T(1, 2)], dt);
        let (w, wv) = rand_as(&mut rng, &[5, 7], 1.0, dt);
        let (wt, wts) = ref_transpose(&wv, &[5, 7], 0, 1);
        let (want, shape) = ref_matmul(&xv, &xs, &wt, &wts);
        check_against("matmul_nt", &ops::matmul_nt(&x, &w).unwrap(), &shape, &want, dt);
    }
}

// ----------------------------------------------------------------------- attention

#[test]
fn attention_matches_reference() {
    // (b, hq, hkv, t, s, d)
    let cases = [(2, 4, 2, 5, 5, 3), (1, 4, 2, 3, 7, 5), (1, 3, 3, 1, 6, 4), (2, 6, 2, 4, 4, 8), (1, 2, 1, 7, 9, 1)];
    let mut rng = Rng::new(102);
    for dt in [DType::F64, DType::F32] {
        for (b, hq, hkv, t, s, d) in cases {
            let (q, qv) = rand_as(&mut rng, &[b, hq, t, d], 1.0, dt);
            let (k, kv) = rand_as(&mut rng, &[b, hkv, s, d], 1.0, dt);
            let (v, vv) = rand_as(&mut rng, &[b, hkv, s, d], 1.0, dt);
            let want = ref_attention(&qv, &kv, &vv, b, hq, hkv, t, s, d);
            let got = ops::attention(&q, &k, &v).unwrap();
            check_against(&format!("attention {:?}", (b, hq, hkv, t, s, d)), &got, &[b, hq, t, d], &want, dt);
        }
        // Queries, keys and values as transposed views of [b, t, h, d] projections.
        let (q, qv, _) = view_of(&mut rng, &[2, 5, 4, 3], &[View::T(1, 2)], dt);
        let (k, kv, _) = view_of(&mut rng, &[2, 6, 2, 3], &[View::T(1, 2)], dt);
        let (v, vv, _) = view_of(&mut rng, &[2, 6, 2, 3], &[View::T(1, 2)], dt);
        let want = ref_attention(&qv, &kv, &vv, 2, 4, 2, 5, 6, 3);
        check_against("attention of views", &ops::attention(&q, &k, &v).unwrap(), &[2, 4, 5, 3], &want, dt);
    }
}

// --------------------------------------------------------------- row-wise ops

#[test]
fn rms_norm_matches_reference() {
    let mut rng = Rng::new(103);
    for dt in [DType::F64, DType::F32] {
        let (x, xv) = rand_as(&mut rng, &[3, 5, 7], 2.0, dt);
        let (w, wv) = rand_as(&mut rng, &[7], 1.0, dt);
        check_against("rms_norm", &ops::rms_norm(&x, &w, 1e-5).unwrap(), &[3, 5, 7], &ref_rms_norm(&xv, &wv, 1e-5), dt);
        // Tiny rows: eps matters.
        let (x, xv) = rand_as(&mut rng, &[2, 7], 1e-3, dt);
        check_against(
            "rms_norm, eps-dominated",
            &ops::rms_norm(&x, &w, 1e-5).unwrap(),
            &[2, 7],
            &ref_rms_norm(&xv, &wv, 1e-5),
            dt,
        );
        let (x, xv, sh) = view_of(&mut rng, &[7, 5], &[View::T(0, 1)], dt);
        check_against(
            "rms_norm of a view",
            &ops::rms_norm(&x, &w, 1e-6).unwrap(),
            &sh,
            &ref_rms_norm(&xv, &wv, 1e-6),
            dt,
        );
    }
}

#[test]
fn rope_matches_reference() {
    let mut rng = Rng::new(104);
    let d = 6;
    let inv: Vec<f64> = (0..d / 2).map(|i| 500000f64.powf(-((2 * i) as f64) / d as f64)).collect();
    let table = RopeTable::new(&inv, 64);
    assert_eq!(table.head_dim(), d);
    assert_eq!(table.max_positions(), 64);
    let positions = [0, 4, 9, 2, 63];
    for dt in [DType::F64, DType::F32] {
        let (x, xv) = rand_as(&mut rng, &[2, 3, 5, d], 1.0, dt);
        let got = ops::rope(&x, &table, &positions).unwrap();
        check_against("rope", &got, &[2, 3, 5, d], &ref_rope(&xv, &[2, 3, 5, d], &inv, &positions), dt);
        let (x, xv, sh) = view_of(&mut rng, &[2, 5, 3, d], &[View::T(1, 2)], dt);
        let got = ops::rope(&x, &table, &positions).unwrap();
        check_against("rope of a view", &got, &sh, &ref_rope(&xv, &sh, &inv, &positions), dt);
        // Position 0 is the identity.
        let got = ops::rope(&x, &table, &[0; 5]).unwrap();
        assert_eq!(vals(&got), xv, "rope at position 0 must not change x");
    }
}

#[test]
fn swiglu_matches_reference() {
    let mut rng = Rng::new(105);
    for dt in [DType::F64, DType::F32] {
        let (g, gv) = rand_as(&mut rng, &[3, 7], 3.0, dt);
        let (u, uv) = rand_as(&mut rng, &[3, 7], 1.0, dt);
        check_against("swiglu", &ops::swiglu(&g, &u).unwrap(), &[3, 7], &ref_swiglu(&gv, &uv), dt);
    }
}

#[test]
fn log_softmax_matches_reference() {
    let mut rng = Rng::new(106);
    for dt in [DType::F64, DType::F32] {
        let (x, xv) = rand_as(&mut rng, &[3, 5, 7], 3.0, dt);
        check_against("log_softmax", &ops::log_softmax(&x).unwrap(), &[3, 5, 7], &ref_log_softmax(&xv, 7), dt);
        // Large logits: exp would overflow without the max shift.
        let big: Vec<f64> = vec![1000.0, 999.0, -1000.0, 1000.5, 0.0, -3.0];
        let x = ops::cast(&Tensor::from_vec(big.clone(), &[2, 3]).unwrap(), dt).unwrap();
        let got = ops::log_softmax(&x).unwrap();
        check_scaled("log_softmax, large logits", &got, &[2, 3], &ref_log_softmax(&big, 3), dt, 1000.0);
    }
}

#[test]
fn cross_entropy_matches_reference() {
    let mut rng = Rng::new(107);
    let labels = [3, -100, 0, 10, -100, 5, 5];
    let lab = Tensor::from_vec(labels.to_vec(), &[7]).unwrap();
    for dt in [DType::F64, DType::F32] {
        let (x, xv) = rand_as(&mut rng, &[7, 11], 3.0, dt);
        let got = ops::cross_entropy(&x, &lab).unwrap();
        check_against("cross_entropy", &got, &[], &[ref_cross_entropy(&xv, 11, &labels)], dt);
        let big: Vec<f64> = vec![1000.0, 990.0, -1000.0, -5.0, 800.0, 801.0];
        let x = ops::cast(&Tensor::from_vec(big.clone(), &[2, 3]).unwrap(), dt).unwrap();
        let l2 = Tensor::from_vec(vec![1i32, 2], &[2]).unwrap();
        let got = ops::cross_entropy(&x, &l2).unwrap();
        check_scaled("cross_entropy, large logits", &got, &[], &[ref_cross_entropy(&big, 3, &[1, 2])], dt, 1000.0);
    }
}

#[test]
fn embedding_matches_reference() {
    let mut rng = Rng::new(108);
    for dt in [DType::F64, DType::F32] {
        let (table, tv) = rand_as(&mut rng, &[7, 5], 1.0, dt);
        for shape in [vec![6], vec![2, 3], vec![1, 2, 3]] {
            let ids_v = vec![1u32, 6, 1, 0, 6, 1];
            let ids = Tensor::from_vec(ids_v.clone(), &shape).unwrap();
            let mut out_shape = shape.clone();
            out_shape.push(5);
            // A gather is exact.
            let got = ops::embedding(&ids, &table).unwrap();
            assert_eq!(got.shape(), out_shape.as_slice());
            assert_eq!(got.dtype(), dt);
            assert_eq!(vals(&got), ref_embedding(&tv, 5, &ids_v), "embedding ids {shape:?}");
        }
    }
}

#[test]
fn elementwise_match_reference() {
    let mut rng = Rng::new(109);
    for dt in [DType::F64, DType::F32] {
        let (a, av) = rand_as(&mut rng, &[3, 5], 1.0, dt);
        let (b, bv) = rand_as(&mut rng, &[3, 5], 1.0, dt);
        let zip = |f: fn(f64, f64) -> f64| av.iter().zip(&bv).map(|(&x, &y)| f(x, y)).collect::<Vec<_>>();
        check_against("add", &ops::add(&a, &b).unwrap(), &[3, 5], &zip(|x, y| x + y), dt);
        check_against("mul", &ops::mul(&a, &b).unwrap(), &[3, 5], &zip(|x, y| x * y), dt);
        check_against("scale", &ops::scale(&a, -2.5).unwrap(), &[3, 5], &zip(|x, _| -2.5 * x), dt);
        check_against("sum_all", &ops::sum_all(&a).unwrap(), &[], &[av.iter().sum()], dt);
        check_against("ones_like", &ops::ones_like(&a).unwrap(), &[3, 5], &[1.0; 15], dt);
        check_against("zeros_like", &ops::zeros_like(&a).unwrap(), &[3, 5], &[0.0; 15], dt);
        let (at, atv, ats) = view_of(&mut rng, &[5, 3], &[View::T(0, 1)], dt);
        let want: Vec<f64> = atv.iter().zip(&av).map(|(x, y)| x + y).collect();
        check_against("add of a view", &ops::add(&at, &a).unwrap(), &ats, &want, dt);
    }
}

// ------------------------------------------------------------- 16-bit vs f32

/// Unit in the last place (at 1.0) of a 16-bit type.
fn ulp(dt: DType) -> f64 {
    match dt {
        DType::BF16 => 2f64.powi(-7),
        DType::F16 => 2f64.powi(-10),
        _ => unreachable!(),
    }
}

type Op = Box<dyn Fn(&[Tensor]) -> Result<Tensor>>;
/// A 16-bit test case: name, input shapes with their std, op.
type HalfCase = (&'static str, Vec<(Vec<usize>, f64)>, Op);

/// (name, input shapes with their std, op). Reductions run over 301 terms.
fn half_cases() -> Vec<HalfCase> {
    let d = 16;
    let inv: Vec<f64> = (0..d / 2).map(|i| 10000f64.powf(-((2 * i) as f64) / d as f64)).collect();
    let table = RopeTable::new(&inv, 32);
    let labels = Tensor::from_vec(vec![3i32, -100, 300, 0, 17], &[5]).unwrap();
    let ids = Tensor::from_vec(vec![4u32, 0, 4, 2], &[2, 2]).unwrap();
    vec![
        ("matmul", vec![(vec![3, 5, 301], 1.0), (vec![301, 7], 1.0)], Box::new(|x| ops::matmul(&x[0], &x[1]))),
        (
            "matmul of transposed views",
            vec![(vec![3, 301, 5], 1.0), (vec![7, 301], 1.0)],
            Box::new(|x| ops::matmul(&ops::transpose(&x[0], 1, 2)?, &ops::transpose(&x[1], 0, 1)?)),
        ),
        ("matmul_nt", vec![(vec![2, 3, 301], 1.0), (vec![7, 301], 1.0)], Box::new(|x| ops::matmul_nt(&x[0], &x[1]))),
        (
            "attention",
            vec![(vec![1, 4, 5, d], 1.0), (vec![1, 2, 37, d], 1.0), (vec![1, 2, 37, d], 1.0)],
            Box::new(|x| ops::attention(&x[0], &x[1], &x[2])),
        ),
        ("rms_norm", vec![(vec![3, 301], 2.0), (vec![301], 1.0)], Box::new(|x| ops::rms_norm(&x[0], &x[1], 1e-5))),
        ("rope", vec![(vec![1, 2, 3, d], 1.0)], Box::new(move |x| ops::rope(&x[0], &table, &[5, 30, 7]))),
        ("swiglu", vec![(vec![3, 7], 3.0), (vec![3, 7], 1.0)], Box::new(|x| ops::swiglu(&x[0], &x[1]))),
        ("log_softmax", vec![(vec![3, 301], 3.0)], Box::new(|x| ops::log_softmax(&x[0]))),
        ("cross_entropy", vec![(vec![5, 301], 3.0)], Box::new(move |x| ops::cross_entropy(&x[0], &labels))),
        ("embedding", vec![(vec![5, 7], 1.0)], Box::new(move |x| ops::embedding(&ids, &x[0]))),
        ("add", vec![(vec![3, 7], 1.0), (vec![3, 7], 1.0)], Box::new(|x| ops::add(&x[0], &x[1]))),
        ("mul", vec![(vec![3, 7], 1.0), (vec![3, 7], 1.0)], Box::new(|x| ops::mul(&x[0], &x[1]))),
        ("scale", vec![(vec![3, 7], 1.0)], Box::new(|x| ops::scale(&x[0], 0.3))),
        ("sum_all", vec![(vec![301], 1.0)], Box::new(|x| ops::sum_all(&x[0]))),
    ]
}

/// 16-bit inputs rounded once; the same values in f32.
fn half_and_f32(rng: &mut Rng, shapes: &[(Vec<usize>, f64)], dt: DType, var: bool) -> (Vec<Tensor>, Vec<Tensor>) {
    shapes
        .iter()
        .map(|(s, std)| {
            let h = common::randn_as(rng, s, *std, dt);
            let f = ops::cast(&h, DType::F32).unwrap();
            if var {
                (h.into_var(), f.into_var())
            } else {
                (h, f)
            }
        })
        .unzip()
}

#[test]
fn half_precision_forward_matches_f32() {
    let mut rng = Rng::new(110);
    for dt in [DType::BF16, DType::F16] {
        for (name, shapes, f) in half_cases() {
            let (xh, xf) = half_and_f32(&mut rng, &shapes, dt, false);
            let (yh, yf) = (f(&xh).unwrap(), f(&xf).unwrap());
            assert_eq!(yh.shape(), yf.shape(), "{name}");
            // The loss is f32 even for 16-bit logits; everything else keeps the input dtype.
            let out_dt = if name == "cross_entropy" { DType::F32 } else { dt };
            assert_eq!(yh.dtype(), out_dt, "{name} ({})", dt.name());
            let (atol, rtol) = if out_dt == DType::F32 { (1e-6, 1e-6) } else { (1e-7, ulp(dt)) };
            assert_close(&format!("{name} ({} vs f32)", dt.name()), &vals(&yh), &vals(&yf), atol, rtol);
        }
    }
}

/// Gradients through 16-bit inputs against the f32 gradients of the same values. Each
/// backward rule computes in f32 and rounds once, but some reuse 16-bit saved results
/// (attention's output), so the bound is one ulp of the element plus two ulps of the
/// tensor's largest gradient.
#[test]
fn half_precision_gradients_match_f32() {
    let mut rng = Rng::new(111);
    for dt in [DType::BF16, DType::F16] {
        for (name, shapes, f) in half_cases() {
            let (xh, xf) = half_and_f32(&mut rng, &shapes, dt, true);
            let (yh, yf) = (f(&xh).unwrap(), f(&xf).unwrap());
            let r = common::randn_as(&mut rng, yh.shape(), 1.0, yh.dtype());
            let rf = ops::cast(&r, DType::F32).unwrap();
            let gh = ops::sum_all(&ops::mul(&yh, &r).unwrap()).unwrap().backward().unwrap();
            let gf = ops::sum_all(&ops::mul(&yf, &rf).unwrap()).unwrap().backward().unwrap();
            for (i, (a, b)) in xh.iter().zip(&xf).enumerate() {
                let (ga, gb) = (gh.get(a).unwrap(), gf.get(b).unwrap());
                assert_eq!(ga.dtype(), dt, "{name}: gradient dtype of input {i}");
                let want = vals(gb);
                let big = want.iter().fold(0.0f64, |m, v| m.max(v.abs()));
                let what = format!("{name} ({}) d/d input {i}", dt.name());
                assert_close(&what, &vals(ga), &want, 2.0 * ulp(dt) * big + 1e-7, ulp(dt));
            }
        }
    }
}

// ---------------------------------------------------------------- autograd bookkeeping

/// Every op applied once to `x` (and, where it needs more, frozen tensors).
fn every_op(x: &Tensor, frozen: &Tensor) -> Vec<(&'static str, Tensor)> {
    let table = RopeTable::new(&[1.0, 0.1], 8);
    let ids = Tensor::from_vec(vec![1u32, 0], &[2]).unwrap();
    let lab = Tensor::from_vec(vec![1i32, -100, 0], &[3]).unwrap();
    let x4 = ops::reshape(x, &[1, 1, 3, 4]).unwrap();
    let f4 = ops::reshape(frozen, &[1, 1, 3, 4]).unwrap();
    let w4 = ops::narrow(&ops::reshape(frozen, &[12]).unwrap(), 0, 0, 4).unwrap();
    vec![
        ("add", ops::add(x, frozen).unwrap()),
        ("mul", ops::mul(frozen, x).unwrap()),
        ("scale", ops::scale(x, 2.0).unwrap()),
        ("cast", ops::cast(x, DType::F32).unwrap()),
        ("sum_all", ops::sum_all(x).unwrap()),
        ("matmul", ops::matmul(x, &ops::transpose(frozen, 0, 1).unwrap()).unwrap()),
        ("matmul_nt", ops::matmul_nt(frozen, x).unwrap()),
        ("rms_norm", ops::rms_norm(x, &w4, 1e-5).unwrap()),
        ("rope", ops::rope(&x4, &table, &[0, 3, 5]).unwrap()),
        ("attention", ops::attention(&x4, &f4, &f4).unwrap()),
        ("swiglu", ops::swiglu(x, frozen).unwrap()),
        ("cross_entropy", ops::cross_entropy(x, &lab).unwrap()),
        ("embedding", ops::embedding(&ids, x).unwrap()),
        ("log_softmax", ops::log_softmax(x).unwrap()),
        ("reshape", ops::reshape(x, &[4, 3]).unwrap()),
        ("transpose", ops::transpose(x, 0, 1).unwrap()),
        ("narrow", ops::narrow(x, 1, 1, 2).unwrap()),
        ("contiguous", ops::contiguous(&ops::transpose(x, 0, 1).unwrap()).unwrap()),
    ]
}

#[test]
fn frozen_tensors_record_nothing() {
    let mut rng = Rng::new(112);
    let (x, frozen) = (randn(&mut rng, &[3, 4], 1.0), randn(&mut rng, &[3, 4], 1.0));
    for (name, y) in every_op(&x, &frozen) {
        assert!(!y.requires_grad(), "{name} of frozen tensors requires grad");
        assert!(y.grad_fn().is_none(), "{name} of frozen tensors recorded a grad_fn");
    }
    // The same ops with a trainable x record their node.
    let x = x.into_var();
    for (name, y) in every_op(&x, &frozen) {
        assert!(y.requires_grad(), "{name} of a trainable tensor does not require grad");
        assert!(y.grad_fn().is_some(), "{name} of a trainable tensor recorded nothing");
    }
    // Frozen inputs of a recorded op get no gradient.
    let g = ops::sum_all(&ops::mul(&x, &frozen).unwrap()).unwrap().backward().unwrap();
    assert_eq!(g.len(), 1);
    assert!(g.get(&frozen).is_none());
    assert_eq!(vals(g.get(&x).unwrap()), vals(&frozen));
}

#[test]
fn no_grad_stops_recording() {
    let mut rng = Rng::new(113);
    let (x, frozen) = (randn(&mut rng, &[3, 4], 1.0).into_var(), randn(&mut rng, &[3, 4], 1.0));
    assert!(autograd::is_grad_enabled());
    {
        let _g = autograd::no_grad();
        assert!(!autograd::is_grad_enabled());
        for (name, y) in every_op(&x, &frozen) {
            assert!(!y.requires_grad() && y.grad_fn().is_none(), "{name} recorded under no_grad");
        }
        {
            let _inner = autograd::no_grad();
        }
        assert!(!autograd::is_grad_enabled(), "an inner guard re-enabled grad when dropped");
        let seg: autograd::Segment = std::sync::Arc::new(|xs: &[Tensor]| ops::scale(&xs[0], 2.0));
        let y = autograd::checkpoint(std::slice::from_ref(&x), seg).unwrap();
        assert!(y.grad_fn().is_none(), "checkpoint recorded under no_grad");
    }
    assert!(autograd::is_grad_enabled(), "dropping the guard must restore recording");
    assert!(ops::scale(&x, 2.0).unwrap().grad_fn().is_some());
    assert!(x.grad_fn().is_none(), "a leaf has no history");
    assert!(x.detach().grad_fn().is_none() && !x.detach().requires_grad());
}

#[test]
fn gradients_accumulate_over_uses() {
    let mut rng = Rng::new(114);
    let x = randn(&mut rng, &[3, 5], 1.0).into_var();
    let (r, s) = (randn(&mut rng, &[3, 5], 1.0), randn(&mut rng, &[3, 5], 1.0));
    let (xv, rv, sv) = (vals(&x), vals(&r), vals(&s));
    let grad = |loss: Tensor| vals(loss.backward().unwrap().get(&x).unwrap());
    let sum = |y: Tensor| ops::sum_all(&y).unwrap();
    // Two separate branches.
    let l = ops::add(&sum(ops::mul(&x, &r).unwrap()), &sum(ops::mul(&x, &s).unwrap())).unwrap();
    let want: Vec<f64> = rv.iter().zip(&sv).map(|(a, b)| a + b).collect();
    assert_close("x*r + x*s", &grad(l), &want, 1e-15, 1e-15);
    // One op using the leaf twice.
    let l = sum(ops::mul(&ops::mul(&x, &x).unwrap(), &r).unwrap());
    let want: Vec<f64> = xv.iter().zip(&rv).map(|(a, b)| 2.0 * a * b).collect();
    assert_close("x*x*r", &grad(l), &want, 1e-15, 1e-15);
    let l = sum(ops::mul(&ops::add(&x, &x).unwrap(), &r).unwrap());
    let want: Vec<f64> = rv.iter().map(|b| 2.0 * b).collect();
    assert_close("(x+x)*r", &grad(l), &want, 1e-15, 1e-15);
    // Through views: two overlapping narrows of the same leaf.
    let a = ops::narrow(&x, 1, 0, 3).unwrap();
    let b = ops::narrow(&x, 1, 2, 3).unwrap();
    let g = grad(sum(ops::add(&a, &b).unwrap()));
    let want: Vec<f64> = (0..15).map(|i| if i % 5 == 2 { 2.0 } else { 1.0 }).collect();
    assert_eq!(g, want, "overlapping narrows");
    // Each backward starts from zero: a second call gives the same gradients, not double.
    let l = sum(ops::mul(&x, &r).unwrap());
    assert_eq!(grad(l.clone()), rv);
    assert_eq!(grad(l), rv);
}

// -------------------------------------------------------------------- shape errors

/// `None` when `f` returns `Err` without panicking, else what it did instead.
fn probe<T>(what: &str, f: impl FnOnce() -> Result<T>) -> Option<String> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(Ok(_)) => Some(format!("{what}: returned Ok, expected an error")),
        Ok(Err(_)) => None,
        Err(p) => {
            let msg = p.downcast_ref::<String>().cloned().or(p.downcast_ref::<&str>().map(|s| s.to_string()));
            Some(format!("{what}: panicked ({}) instead of returning Err", msg.unwrap_or_default()))
        }
    }
}

#[track_caller]
fn expect_err<T>(what: &str, f: impl FnOnce() -> Result<T>) {
    if let Some(msg) = probe(what, f) {
        panic!("{msg}");
    }
}

/// Asserts that every probe returned `Err`, listing all that did not.
#[track_caller]
fn expect_all_err(probes: Vec<Option<String>>) {
    let bad: Vec<String> = probes.into_iter().flatten().collect();
    assert!(bad.is_empty(), "{} call(s) did not return Err:\n  {}", bad.len(), bad.join("\n  "));
}

fn z(shape: &[usize]) -> Tensor {
    Tensor::zeros(shape, DType::F32, engine::Device::Cpu).unwrap()
}

#[test]
fn shape_errors_are_errors() {
    let table = RopeTable::new(&[1.0, 0.5], 4);
    let ids = |v: Vec<u32>| Tensor::from_vec(v.clone(), &[v.len()]).unwrap();
    let lab = |v: Vec<i32>| Tensor::from_vec(v.clone(), &[v.len()]).unwrap();
    expect_err("from_vec with too few values", || Tensor::from_vec(vec![1.0f32; 5], &[2, 3]));
    expect_err("to_scalar of [2]", || z(&[2]).to_scalar::<f32>());
    expect_err("add [2,3] + [3,2]", || ops::add(&z(&[2, 3]), &z(&[3, 2])));
    expect_err("mul [2,3] * [6]", || ops::mul(&z(&[2, 3]), &z(&[6])));
    expect_err("add f32 + f64", || ops::add(&z(&[2]), &Tensor::from_vec(vec![0.0f64; 2], &[2]).unwrap()));
    expect_err("matmul mismatched k", || ops::matmul(&z(&[3, 4]), &z(&[5, 2])));
    expect_err("matmul mismatched batch", || ops::matmul(&z(&[2, 3, 4]), &z(&[3, 4, 2])));
    expect_err("matmul 2-D @ 3-D", || ops::matmul(&z(&[3, 4]), &z(&[2, 4, 2])));
    expect_err("matmul 1-D", || ops::matmul(&z(&[4]), &z(&[4, 2])));
    expect_err("matmul_nt mismatched k", || ops::matmul_nt(&z(&[3, 4]), &z(&[2, 5])));
    expect_err("matmul_nt 3-D weight", || ops::matmul_nt(&z(&[3, 4]), &z(&[1, 2, 4])));
    expect_err("attention hq not a multiple of hkv", || {
        ops::attention(&z(&[1, 3, 2, 4]), &z(&[1, 2, 2, 4]), &z(&[1, 2, 2, 4]))
    });
    expect_err("attention s < t", || ops::attention(&z(&[1, 2, 3, 4]), &z(&[1, 2, 2, 4]), &z(&[1, 2, 2, 4])));
    expect_err("attention head dims differ", || {
        ops::attention(&z(&[1, 2, 2, 4]), &z(&[1, 2, 2, 3]), &z(&[1, 2, 2, 3]))
    });
    expect_err("attention k and v differ", || ops::attention(&z(&[1, 2, 2, 4]), &z(&[1, 2, 2, 4]), &z(&[1, 2, 3, 4])));
    expect_err("attention batch differs", || ops::attention(&z(&[2, 2, 2, 4]), &z(&[1, 2, 2, 4]), &z(&[1, 2, 2, 4])));
    expect_err("attention rank 3", || ops::attention(&z(&[2, 2, 4]), &z(&[2, 2, 4]), &z(&[2, 2, 4])));
    expect_err("attention zero kv heads", || ops::attention(&z(&[1, 2, 2, 4]), &z(&[1, 0, 2, 4]), &z(&[1, 0, 2, 4])));
    expect_err("rms_norm weight size", || ops::rms_norm(&z(&[3, 4]), &z(&[3]), 1e-5));
    expect_err("rope head dim", || ops::rope(&z(&[1, 1, 2, 6]), &table, &[0, 1]));
    expect_err("rope positions count", || ops::rope(&z(&[1, 1, 2, 4]), &table, &[0]));
    expect_err("rope position beyond table", || ops::rope(&z(&[1, 1, 2, 4]), &table, &[0, 4]));
    expect_err("rope rank 3", || ops::rope(&z(&[1, 2, 4]), &table, &[0, 1]));
    expect_err("swiglu shapes", || ops::swiglu(&z(&[2, 3]), &z(&[3, 2])));
    expect_err("cross_entropy label count", || ops::cross_entropy(&z(&[3, 5]), &lab(vec![1, 2])));
    expect_err("cross_entropy label >= vocab", || ops::cross_entropy(&z(&[2, 5]), &lab(vec![1, 5])));
    expect_err("cross_entropy negative label", || ops::cross_entropy(&z(&[2, 5]), &lab(vec![1, -1])));
    expect_err("cross_entropy all ignored", || ops::cross_entropy(&z(&[2, 5]), &lab(vec![-100, -100])));
    expect_err("cross_entropy u32 labels", || ops::cross_entropy(&z(&[2, 5]), &ids(vec![1, 2])));
    expect_err("cross_entropy 3-D logits", || ops::cross_entropy(&z(&[1, 2, 5]), &lab(vec![1, 2])));
    expect_err("embedding id >= vocab", || ops::embedding(&ids(vec![0, 7]), &z(&[7, 3])));
    expect_err("embedding 1-D table", || ops::embedding(&ids(vec![0]), &z(&[7])));
    expect_err("embedding i32 ids", || ops::embedding(&lab(vec![0]), &z(&[7, 3])));
    expect_err("reshape element count", || ops::reshape(&z(&[2, 3]), &[4, 2]));
    expect_err("transpose dim out of range", || ops::transpose(&z(&[2, 3]), 0, 2));
    expect_err("narrow past the end", || ops::narrow(&z(&[2, 3]), 1, 2, 2));
    expect_err("narrow dim out of range", || ops::narrow(&z(&[2, 3]), 2, 0, 1));
    expect_err("write_slice shape", || z(&[4, 3]).write_slice(0, 1, &z(&[2, 2])));
    expect_err("write_slice past the end", || z(&[4, 3]).write_slice(0, 3, &z(&[2, 3])));
}

/// Rank-0 (scalar) and zero-width inputs to ops that work on the last dimension must be
/// errors too (`Tensor::dim(-1)` of a rank-0 tensor indexes out of bounds).
#[test]
fn degenerate_inputs_are_errors_not_panics() {
    let s = || Tensor::from_vec(vec![1.0f32], &[]).unwrap();
    expect_all_err(vec![
        probe("log_softmax of a scalar", || ops::log_softmax(&s())),
        probe("rms_norm of a scalar", || ops::rms_norm(&s(), &z(&[1]), 1e-5)),
        probe("matmul_nt of a scalar", || ops::matmul_nt(&s(), &z(&[2, 1]))),
        probe("rms_norm of a [2, 0] tensor", || ops::rms_norm(&z(&[2, 0]), &z(&[0]), 1e-5)),
    ]);
}

/// Float ops reject integer tensors (they do not promote implicitly).
#[test]
fn integer_inputs_are_dtype_errors() {
    let u = Tensor::from_vec(vec![1u32, 2, 3, 4], &[2, 2]).unwrap();
    let i = Tensor::from_vec(vec![1i32, 2, 3, 4], &[2, 2]).unwrap();
    expect_all_err(vec![
        probe("add u32", || ops::add(&u, &u)),
        probe("log_softmax i32", || ops::log_softmax(&i)),
        probe("swiglu u32", || ops::swiglu(&u, &u)),
        probe("matmul u32", || ops::matmul(&u, &u)),
        probe("matmul i32", || ops::matmul(&i, &i)),
        probe("matmul_nt i32", || ops::matmul_nt(&i, &i)),
    ]);
}
