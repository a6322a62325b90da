//! Finite-difference gradient checks of every differentiable op, in f64.
//!
//! Method: for an op `f` and f64 inputs (trainable leaves and frozen tensors), the scalar
//! loss is `L = sum(f(inputs) * R)` with a fixed random `R` (built with `ops::mul` and
//! `ops::sum_all`). The analytic gradient of every trainable input comes from
//! `L.backward()`; the numerical one is the central difference
//! `(L(x + h e_j) - L(x - h e_j)) / 2h` with `h = 1e-6`, one element at a time.
//!
//! Tolerances: every element must satisfy `|analytic - numeric| <= 1e-6 + 1e-5 * |numeric|`.
//! In f64 the central difference has truncation error O(h^2 |L'''|) ~ 1e-12 and rounding
//! error ~ eps * |L| / h ~ 1e-10 * |L|; with |L| = O(10) both are far below the bound,
//! while a wrong backward rule is off by O(|grad|) ~ 0.1..10. Frozen inputs must get no
//! gradient at all.
//!
//! Sizes are odd (except rope's head dim, which must be even) so that transposes and
//! row/column mix-ups cannot cancel out.

mod common;

use common::{randn, vals};
use engine::autograd::{backward_from, checkpoint, no_grad, Segment};
use engine::ops::{self, RopeTable};
use engine::rng::Rng;
use engine::{DType, Result, Tensor};
use std::sync::Arc;

const H: f64 = 1e-6;
const ATOL: f64 = 1e-6;
const RTOL: f64 = 1e-5;

/// A trainable f64 leaf with standard-normal values times `std`.
fn var(rng: &mut Rng, shape: &[usize], std: f64) -> Tensor {
    randn(rng, shape, std).into_var()
}

/// `sum(y * r)`.
fn weighted_sum(y: &Tensor, r: &Tensor) -> Result<Tensor> {
    ops::sum_all(&ops::mul(y, r)?)
}

/// Checks the gradients `f` yields for every trainable tensor in `inputs` against central
/// differences (see the module docs), and that frozen inputs get none.
fn check(name: &str, inputs: &[Tensor], f: impl Fn(&[Tensor]) -> Result<Tensor>) {
    let y = f(inputs).unwrap_or_else(|e| panic!("{name}: forward failed: {e}"));
    assert_eq!(y.dtype(), DType::F64, "{name}: f64 inputs must give an f64 result");
    assert!(y.requires_grad(), "{name}: the result of trainable inputs records no graph");
    let r = randn(&mut Rng::new(0x5EED_0F4E), y.shape(), 1.0);
    let grads = weighted_sum(&y, &r).unwrap().backward().unwrap();

    let eval = |xs: &[Tensor]| -> f64 {
        let _g = no_grad();
        weighted_sum(&f(xs).unwrap(), &r).unwrap().to_scalar::<f64>().unwrap()
    };
    let mut plain: Vec<Tensor> = inputs.iter().map(Tensor::detach).collect();
    for (i, x) in inputs.iter().enumerate() {
        if !x.requires_grad() {
            assert!(grads.get(x).is_none(), "{name}: frozen input {i} got a gradient");
            continue;
        }
        let g = grads.get(x).unwrap_or_else(|| panic!("{name}: no gradient for input {i}"));
        assert_eq!(g.shape(), x.shape(), "{name}: gradient shape of input {i}");
        let analytic = vals(g);
        let base = vals(x);
        for j in 0..base.len() {
            let mut p = base.clone();
            let (xp, xm) = (base[j] + H, base[j] - H);
            p[j] = xp;
            plain[i] = Tensor::from_vec(p.clone(), x.shape()).unwrap();
            let lp = eval(&plain);
            p[j] = xm;
            plain[i] = Tensor::from_vec(p, x.shape()).unwrap();
            let lm = eval(&plain);
            let num = (lp - lm) / (xp - xm);
            let err = (analytic[j] - num).abs();
            assert!(
                err <= ATOL + RTOL * num.abs(),
                "{name}: d/d input {i} {:?} element {j}: analytic {} vs numeric {num} (|diff| {err:.2e})",
                x.shape(),
                analytic[j]
            );
        }
        plain[i] = x.detach();
    }
}

// ---------------------------------------------------------------- elementwise, reductions

#[test]
fn add() {
    let mut rng = Rng::new(1);
    let (a, b) = (var(&mut rng, &[3, 5], 1.0), var(&mut rng, &[3, 5], 1.0));
    check("add", &[a, b.clone()], |x| ops::add(&x[0], &x[1]));
    let frozen = randn(&mut rng, &[3, 5], 1.0);
    check("add (frozen rhs)", &[b, frozen], |x| ops::add(&x[0], &x[1]));
}

#[test]
fn mul() {
    let mut rng = Rng::new(2);
    let (a, b) = (var(&mut rng, &[5, 3], 1.0), var(&mut rng, &[5, 3], 1.0));
    check("mul", &[a.clone(), b], |x| ops::mul(&x[0], &x[1]));
    check("mul (same leaf twice)", &[a], |x| ops::mul(&x[0], &x[0]));
}

#[test]
fn scale() {
    let mut rng = Rng::new(3);
    check("scale", &[var(&mut rng, &[3, 7], 1.0)], |x| ops::scale(&x[0], -1.7));
}

#[test]
fn sum_all() {
    let mut rng = Rng::new(4);
    check("sum_all", &[var(&mut rng, &[3, 5, 1], 1.0)], |x| ops::sum_all(&x[0]));
    // A reduction inside a graph: x * sum(x), as [5, 1] @ [1, 1].
    check("x * sum_all(x)", &[var(&mut rng, &[5], 1.0)], |x| {
        let s = ops::reshape(&ops::sum_all(&x[0])?, &[1, 1])?;
        ops::matmul(&ops::reshape(&x[0], &[5, 1])?, &s)
    });
}

#[test]
fn cast_f64_to_f64() {
    let mut rng = Rng::new(5);
    let (a, b) = (var(&mut rng, &[3, 5], 1.0), var(&mut rng, &[3, 5], 1.0));
    check("cast f64->f64", std::slice::from_ref(&a), |x| ops::cast(&x[0], DType::F64));
    check("mul(cast f64->f64, y)", &[a, b], |x| ops::mul(&ops::cast(&x[0], DType::F64)?, &x[1]));
}

/// Through an f64 -> f32 -> f64 round trip finite differences are meaningless (f32
/// rounding), but the analytic gradient must be exactly `R` cast through f32.
#[test]
fn cast_roundtrip_gradient() {
    let mut rng = Rng::new(6);
    let x = var(&mut rng, &[3, 5], 1.0);
    let r = randn(&mut rng, &[3, 5], 1.0);
    let y = ops::cast(&ops::cast(&x, DType::F32).unwrap(), DType::F64).unwrap();
    let g = weighted_sum(&y, &r).unwrap().backward().unwrap();
    let g = g.get(&x).expect("no gradient through cast");
    assert_eq!(g.dtype(), DType::F64);
    let want: Vec<f64> = vals(&r).iter().map(|&v| v as f32 as f64).collect();
    assert_eq!(vals(g), want);
}

// ---------------------------------------------------------------------------- views

#[test]
fn reshape() {
    let mut rng = Rng::new(7);
    let x = var(&mut rng, &[3, 5, 7], 1.0);
    check("reshape", std::slice::from_ref(&x), |x| ops::reshape(&x[0], &[15, 7]));
    check("reshape of a transposed view", &[x], |x| ops::reshape(&ops::transpose(&x[0], 0, 2)?, &[7, 15]));
}

#[test]
fn transpose() {
    let mut rng = Rng::new(8);
    let x = var(&mut rng, &[3, 5, 7], 1.0);
    check("transpose(0,2)", std::slice::from_ref(&x), |x| ops::transpose(&x[0], 0, 2));
    check("transpose twice", &[x], |x| ops::transpose(&ops::transpose(&x[0], 0, 1)?, 1, 2));
}

#[test]
fn narrow() {
    let mut rng = Rng::new(9);
    let x = var(&mut rng, &[3, 5, 7], 1.0);
    check("narrow dim 1", std::slice::from_ref(&x), |x| ops::narrow(&x[0], 1, 1, 3));
    check("narrow dim 0 then reshape", std::slice::from_ref(&x), |x| {
        ops::reshape(&ops::narrow(&x[0], 0, 2, 1)?, &[5, 7])
    });
    check("narrow of a transposed view", std::slice::from_ref(&x), |x| {
        ops::narrow(&ops::transpose(&x[0], 1, 2)?, 2, 3, 2)
    });
    // Two slices of the same leaf: their gradients must add.
    check("narrow twice (overlapping)", &[x], |x| {
        ops::add(&ops::narrow(&x[0], 2, 0, 5)?, &ops::narrow(&x[0], 2, 2, 5)?)
    });
}

#[test]
fn contiguous() {
    let mut rng = Rng::new(10);
    let x = var(&mut rng, &[3, 5, 7], 1.0);
    check("contiguous of a transposed view", std::slice::from_ref(&x), |x| {
        ops::contiguous(&ops::transpose(&x[0], 0, 1)?)
    });
    check("contiguous of a narrowed view", &[x], |x| ops::contiguous(&ops::narrow(&x[0], 2, 1, 5)?));
}

// ------------------------------------------------------------------------- matmul

#[test]
fn matmul_2d() {
    let mut rng = Rng::new(11);
    let (a, b) = (var(&mut rng, &[5, 7], 1.0), var(&mut rng, &[7, 3], 1.0));
    check("matmul 2-D", &[a, b.clone()], |x| ops::matmul(&x[0], &x[1]));
    let frozen = randn(&mut rng, &[5, 7], 1.0);
    check("matmul 2-D (frozen lhs)", &[frozen, b], |x| ops::matmul(&x[0], &x[1]));
}

#[test]
fn matmul_batched() {
    let mut rng = Rng::new(12);
    let (a, b) = (var(&mut rng, &[3, 5, 7], 1.0), var(&mut rng, &[3, 7, 3], 1.0));
    check("matmul batched", &[a, b], |x| ops::matmul(&x[0], &x[1]));
    let (a, b) = (var(&mut rng, &[3, 1, 5, 7], 1.0), var(&mut rng, &[3, 1, 7, 3], 1.0));
    check("matmul 2 batch dims", &[a, b], |x| ops::matmul(&x[0], &x[1]));
}

#[test]
fn matmul_broadcast_rhs() {
    let mut rng = Rng::new(13);
    let (a, b) = (var(&mut rng, &[3, 5, 7], 1.0), var(&mut rng, &[7, 3], 1.0));
    check("matmul [3,5,7] @ [7,3]", &[a, b], |x| ops::matmul(&x[0], &x[1]));
    let (a, b) = (var(&mut rng, &[1, 3, 5, 7], 1.0), var(&mut rng, &[7, 5], 1.0));
    check("matmul [1,3,5,7] @ [7,5]", &[a, b], |x| ops::matmul(&x[0], &x[1]));
}

#[test]
fn matmul_transposed_views() {
    let mut rng = Rng::new(14);
    let (a, b) = (var(&mut rng, &[7, 5], 1.0), var(&mut rng, &[3, 7], 1.0));
    check("matmul a^T @ b^T", &[a, b], |x| ops::matmul(&ops::transpose(&x[0], 0, 1)?, &ops::transpose(&x[1], 0, 1)?));
    let (a, b) = (var(&mut rng, &[3, 7, 5], 1.0), var(&mut rng, &[3, 7, 3], 1.0));
    check("matmul batched a^T @ b", &[a, b], |x| ops::matmul(&ops::transpose(&x[0], 1, 2)?, &x[1]));
    // Batch dims that do not flatten to one stride.
    let (a, b) = (var(&mut rng, &[3, 1, 5, 7], 1.0), var(&mut rng, &[1, 3, 7, 3], 1.0));
    check("matmul with transposed batch dims", &[a, b], |x| ops::matmul(&ops::transpose(&x[0], 0, 1)?, &x[1]));
}

#[test]
fn matmul_nt() {
    let mut rng = Rng::new(15);
    let (x, w) = (var(&mut rng, &[3, 5, 7], 1.0), var(&mut rng, &[3, 7], 1.0));
    check("matmul_nt", &[x.clone(), w], |x| ops::matmul_nt(&x[0], &x[1]));
    let frozen = randn(&mut rng, &[5, 7], 1.0);
    check("matmul_nt (frozen weight)", &[x, frozen], |x| ops::matmul_nt(&x[0], &x[1]));
}

// ----------------------------------------------------------------- nonlinear ops

/// The NF4 weight is frozen: only `x` gets a gradient, `dx = g @ dequant(W)`.
#[test]
fn nf4_matmul_nt() {
    use engine::quant::nf4::Nf4Weight;
    let mut rng = Rng::new(16);
    let w: Vec<f32> = rng.normal_vec(5 * 128, 1.0);
    let q = ops::Nf4::Host(std::sync::Arc::new(Nf4Weight::quantize(&w, &[5, 128], true).unwrap()));
    let x = var(&mut rng, &[2, 3, 128], 1.0);
    check("nf4_matmul_nt", &[x], |x| ops::nf4_matmul_nt(&x[0], &q));
}

#[test]
fn log_softmax() {
    let mut rng = Rng::new(16);
    let x = var(&mut rng, &[3, 5, 7], 2.0);
    check("log_softmax", std::slice::from_ref(&x), |x| ops::log_softmax(&x[0]));
    check("log_softmax of a transposed view", &[x], |x| ops::log_softmax(&ops::transpose(&x[0], 1, 2)?));
}

#[test]
fn swiglu() {
    let mut rng = Rng::new(17);
    let (g, u) = (var(&mut rng, &[3, 7], 2.0), var(&mut rng, &[3, 7], 1.0));
    check("swiglu", &[g.clone(), u.clone()], |x| ops::swiglu(&x[0], &x[1]));
    check("swiglu (frozen up)", &[g.clone(), u.detach()], |x| ops::swiglu(&x[0], &x[1]));
    check("swiglu(x, x)", &[g], |x| ops::swiglu(&x[0], &x[0]));
}

fn norm_weight(rng: &mut Rng, h: usize) -> Tensor {
    let v: Vec<f64> = (0..h).map(|_| 1.0 + 0.3 * rng.normal()).collect();
    Tensor::from_vec(v, &[h]).unwrap()
}

#[test]
fn rms_norm_trainable_weight() {
    let mut rng = Rng::new(18);
    let x = var(&mut rng, &[3, 5, 7], 1.0);
    let w = norm_weight(&mut rng, 7).into_var();
    check("rms_norm (trainable weight)", &[x, w], |x| ops::rms_norm(&x[0], &x[1], 1e-5));
}

#[test]
fn rms_norm_frozen_weight() {
    let mut rng = Rng::new(19);
    let x = var(&mut rng, &[5, 7], 1.0);
    let w = norm_weight(&mut rng, 7);
    check("rms_norm (frozen weight)", &[x.clone(), w.clone()], |x| ops::rms_norm(&x[0], &x[1], 1e-5));
    check("rms_norm of a transposed view", &[x, w], |x| {
        ops::rms_norm(&ops::transpose(&ops::reshape(&x[0], &[7, 5])?, 0, 1)?, &x[1], 1e-6)
    });
}

fn rope_table(half: usize, max_positions: usize) -> RopeTable {
    let inv: Vec<f64> = (0..half).map(|i| 10000f64.powf(-((2 * i) as f64) / (2 * half) as f64)).collect();
    RopeTable::new(&inv, max_positions)
}

#[test]
fn rope() {
    let mut rng = Rng::new(20);
    let table = rope_table(3, 16);
    let x = var(&mut rng, &[2, 3, 3, 6], 1.0);
    check("rope at positions 3,7,4", std::slice::from_ref(&x), |x| ops::rope(&x[0], &table, &[3, 7, 4]));
    check("rope at positions 13..16", &[x], |x| ops::rope(&x[0], &table, &[13, 14, 15]));
}

#[test]
fn attention_gqa() {
    let mut rng = Rng::new(21);
    let q = var(&mut rng, &[1, 4, 5, 3], 1.0);
    let k = var(&mut rng, &[1, 2, 5, 3], 1.0);
    let v = var(&mut rng, &[1, 2, 5, 3], 1.0);
    check("attention GQA 4/2, t = s", &[q, k, v], |x| ops::attention(&x[0], &x[1], &x[2]));
}

#[test]
fn attention_kv_offset() {
    let mut rng = Rng::new(22);
    let q = var(&mut rng, &[2, 4, 3, 5], 1.0);
    let k = var(&mut rng, &[2, 2, 5, 5], 1.0);
    let v = var(&mut rng, &[2, 2, 5, 5], 1.0);
    check("attention GQA 4/2, t=3 < s=5", &[q, k, v], |x| ops::attention(&x[0], &x[1], &x[2]));
    let q = var(&mut rng, &[1, 3, 1, 3], 1.0);
    let k = var(&mut rng, &[1, 3, 7, 3], 1.0);
    let v = randn(&mut rng, &[1, 3, 7, 3], 1.0);
    check("attention MHA, one query over 7 keys, frozen v", &[q, k, v], |x| ops::attention(&x[0], &x[1], &x[2]));
}

#[test]
fn attention_of_transposed_views() {
    let mut rng = Rng::new(23);
    // [b, t, h, d] projections viewed as [b, h, t, d], as a model does.
    let q = var(&mut rng, &[1, 3, 4, 3], 1.0);
    let k = var(&mut rng, &[1, 3, 2, 3], 1.0);
    let v = var(&mut rng, &[1, 3, 2, 3], 1.0);
    check("attention of transposed views", &[q, k, v], |x| {
        let t = |y: &Tensor| ops::transpose(y, 1, 2);
        ops::attention(&t(&x[0])?, &t(&x[1])?, &t(&x[2])?)
    });
}

fn labels(v: &[i32]) -> Tensor {
    Tensor::from_vec(v.to_vec(), &[v.len()]).unwrap()
}

#[test]
fn cross_entropy() {
    let mut rng = Rng::new(24);
    let logits = var(&mut rng, &[7, 11], 2.0);
    let lab = labels(&[3, -100, 0, 10, -100, 5, 5]);
    check("cross_entropy with ignored labels", std::slice::from_ref(&logits), |x| ops::cross_entropy(&x[0], &lab));
    let all = labels(&[1, 2, 3, 4, 5, 6, 7]);
    check("cross_entropy", &[logits], |x| ops::cross_entropy(&x[0], &all));
}

/// The chunked LM head + loss equals the unchunked one and its `dh` passes the check; chunks
/// of 2 rows, one of them all ignored.
#[test]
fn lm_head_cross_entropy_chunked() {
    let mut rng = Rng::new(17);
    let h = var(&mut rng, &[7, 5], 1.0);
    let w = randn(&mut rng, &[11, 5], 1.0);
    let lab = labels(&[3, -100, -100, -100, 10, 0, 7]);
    let fused = ops::lm_head_cross_entropy(&h, &w, &lab, 2).unwrap().to_scalar::<f64>().unwrap();
    let plain = ops::cross_entropy(&ops::matmul_nt(&h, &w).unwrap(), &lab).unwrap().to_scalar::<f64>().unwrap();
    assert!((fused - plain).abs() < 1e-12, "chunked {fused} vs plain {plain}");
    check("lm_head_cross_entropy", &[h], |x| ops::lm_head_cross_entropy(&x[0], &w, &lab, 2));
}

#[test]
fn embedding() {
    let mut rng = Rng::new(25);
    let table = var(&mut rng, &[7, 5], 1.0);
    let ids = Tensor::from_vec(vec![1u32, 4, 1, 0, 4, 1], &[2, 3]).unwrap();
    check("embedding with repeated ids", &[table], |x| ops::embedding(&ids, &x[0]));
}

// ----------------------------------------------------------------------- checkpoint

/// `swiglu(rms_norm(x @ w^T), x @ w^T)`: a multi-op segment using the captured leaf `w`.
fn segment_body(x: &Tensor, w: &Tensor, norm: &Tensor) -> Result<Tensor> {
    let h = ops::matmul_nt(x, w)?;
    ops::swiglu(&ops::rms_norm(&h, norm, 1e-5)?, &h)
}

fn checkpointed(x: &Tensor, w: &Tensor, norm: &Tensor) -> Result<Tensor> {
    let (w, norm) = (w.clone(), norm.clone());
    let seg: Segment = Arc::new(move |xs: &[Tensor]| segment_body(&xs[0], &w, &norm));
    checkpoint(std::slice::from_ref(x), seg)
}

#[test]
fn checkpoint_captured_leaf() {
    let mut rng = Rng::new(26);
    let x = var(&mut rng, &[3, 7], 1.0);
    let w = var(&mut rng, &[5, 7], 0.5);
    let norm = norm_weight(&mut rng, 5);
    // Both the segment input and the captured leaf (not an input) are trainable.
    check("checkpoint (input + captured leaf)", &[x.clone(), w.clone()], |a| checkpointed(&a[0], &a[1], &norm));
    // A frozen input: only the captured leaf makes the output need grad.
    check("checkpoint (captured leaf only)", &[x.detach(), w.clone()], |a| checkpointed(&a[0], &a[1], &norm));
    // The captured leaf also used outside the segment: both contributions must add up.
    check("checkpoint + outside use of the leaf", &[x, w], |a| {
        ops::add(&checkpointed(&a[0], &a[1], &norm)?, &ops::matmul_nt(&a[0], &a[1])?)
    });
}

/// A checkpointed segment gives the same gradients as the plain graph.
#[test]
fn checkpoint_matches_plain_graph() {
    let mut rng = Rng::new(27);
    let x0 = var(&mut rng, &[3, 7], 1.0);
    let w = var(&mut rng, &[5, 7], 0.5);
    let norm = norm_weight(&mut rng, 5);
    let r = randn(&mut rng, &[3, 5], 1.0);
    // x is a non-leaf: the segment's input gradient must flow on to x0.
    let x = ops::scale(&x0, 1.3).unwrap();
    let plain = weighted_sum(&segment_body(&x, &w, &norm).unwrap(), &r).unwrap().backward().unwrap();
    let ckpt_out = checkpointed(&x, &w, &norm).unwrap();
    assert_eq!(vals(&ckpt_out), vals(&segment_body(&x, &w, &norm).unwrap()));
    let ckpt =
        backward_from(&weighted_sum(&ckpt_out, &r).unwrap(), &Tensor::from_vec(vec![1.0f64], &[]).unwrap()).unwrap();
    assert_eq!(ckpt.len(), 2, "gradients of x0 and w expected");
    for (name, t) in [("x0", &x0), ("w", &w)] {
        common::assert_close(name, &vals(ckpt.get(t).unwrap()), &vals(plain.get(t).unwrap()), 1e-13, 1e-12);
    }
}

// ------------------------------------------------------------------- a whole block

/// A tiny transformer step: embedding, rms_norm, q/k/v projections, rope at positions
/// after a KV-cache prefix, GQA attention over prefix + new keys, output projection,
/// swiglu MLP, tied lm head (a narrowed, transposed view of the embedding), cross-entropy.
#[test]
fn tiny_transformer_block() {
    let mut rng = Rng::new(28);
    let (vocab, hid, hq, hkv, d, t, past) = (9, 7, 2, 1, 4, 3, 2);
    let s = past + t;
    let table = rope_table(d / 2, 8);
    let emb = var(&mut rng, &[vocab, hid], 1.0);
    let wq = var(&mut rng, &[hq * d, hid], 0.4);
    let wk = var(&mut rng, &[hkv * d, hid], 0.4);
    let wv = randn(&mut rng, &[hkv * d, hid], 0.4);
    let wo = var(&mut rng, &[hid, hq * d], 0.4);
    let wg = var(&mut rng, &[5, hid], 0.4);
    let k_past = var(&mut rng, &[1, hkv, past, d], 1.0);
    let v_past = randn(&mut rng, &[1, hkv, past, d], 1.0);
    let norm = norm_weight(&mut rng, hid).into_var();
    let ids = Tensor::from_vec(vec![3u32, 8, 3], &[1, t]).unwrap();
    let lab = labels(&[2, -100, 4]);
    let positions: Vec<usize> = (past..s).collect();
    let inputs = [emb, wq, wk, wv, wo, wg, k_past, v_past, norm];
    check("tiny transformer block", &inputs, |p| {
        let [emb, wq, wk, wv, wo, wg, k_past, v_past, norm] = p else { unreachable!() };
        let x = ops::embedding(&ids, emb)?; // [1, t, hid]
        let xn = ops::rms_norm(&x, norm, 1e-5)?;
        let heads = |w: &Tensor, h: usize| -> Result<Tensor> {
            ops::transpose(&ops::reshape(&ops::matmul_nt(&xn, w)?, &[1, t, h, d])?, 1, 2)
        };
        let q = ops::rope(&heads(wq, hq)?, &table, &positions)?;
        let k_new = ops::rope(&heads(wk, hkv)?, &table, &positions)?;
        let k = ops::add(&pad(k_past, s, 0)?, &pad(&k_new, s, past)?)?;
        let v = ops::add(&pad(v_past, s, 0)?, &pad(&heads(wv, hkv)?, s, past)?)?;
        let a = ops::attention(&q, &k, &v)?; // [1, hq, t, d]
        let a = ops::reshape(&ops::transpose(&a, 1, 2)?, &[1, t, hq * d])?;
        let h = ops::add(&x, &ops::matmul_nt(&a, wo)?)?;
        let gate = ops::matmul_nt(&h, wg)?;
        let m = ops::swiglu(&gate, &ops::scale(&gate, 0.7)?)?; // [1, t, 5]
        let head = ops::narrow(&ops::transpose(emb, 0, 1)?, 0, 0, 5)?; // [5, vocab]
        let logits = ops::matmul(&ops::reshape(&m, &[t, 5])?, &head)?;
        let loss = ops::cross_entropy(&logits, &lab)?;
        ops::add(&loss, &ops::scale(&ops::sum_all(&ops::log_softmax(&logits)?)?, 0.01)?)
    });
}

/// `x: [b, h, n, d]` placed at rows `start..start + n` of an otherwise zero
/// `[b, h, len, d]` tensor, built differentiably as `(x^T @ E^T)^T` with a `[len, n]`
/// selection matrix `E` (the engine has no concat op).
fn pad(x: &Tensor, len: usize, start: usize) -> Result<Tensor> {
    let n = x.dim(2);
    let mut e = vec![0.0f64; n * len];
    for i in 0..n {
        e[i * len + start + i] = 1.0;
    }
    let et = Tensor::from_vec(e, &[n, len])?; // E^T
    ops::transpose(&ops::matmul(&ops::transpose(x, 2, 3)?, &et)?, 2, 3)
}

/// The harness itself: a gradient that is wrong by a factor of two (the second factor of
/// `x * x` detached, so backward sees `x * c`) must be caught.
#[test]
#[should_panic(expected = "analytic")]
fn harness_detects_a_wrong_gradient() {
    let mut rng = Rng::new(29);
    check("x * detach(x)", &[var(&mut rng, &[3], 1.0)], |x| ops::mul(&x[0], &x[0].detach()));
}
