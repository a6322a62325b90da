//! Helpers shared by the engine's integration tests (`gradcheck`, `ops_reference`).
#![allow(dead_code)]

use engine::rng::Rng;
use engine::{DType, Tensor};

/// A tensor of `shape` with standard-normal f64 values times `std`, from `rng`.
pub fn randn(rng: &mut Rng, shape: &[usize], std: f64) -> Tensor {
    let n: usize = shape.iter().product();
    let v: Vec<f64> = (0..n).map(|_| rng.normal() * std).collect();
    Tensor::from_vec(v, shape).unwrap()
}

/// Like [`randn`] but stored as `dtype` (values rounded to it).
pub fn randn_as(rng: &mut Rng, shape: &[usize], std: f64, dtype: DType) -> Tensor {
    engine::ops::cast(&randn(rng, shape, std), dtype).unwrap()
}

/// The values of `t` as f64, row-major.
pub fn vals(t: &Tensor) -> Vec<f64> {
    t.to_vec::<f64>().unwrap()
}

/// Row-major strides of `shape`.
pub fn strides(shape: &[usize]) -> Vec<usize> {
    let mut s = vec![1; shape.len()];
    for i in (0..shape.len().saturating_sub(1)).rev() {
        s[i] = s[i + 1] * shape[i + 1];
    }
    s
}

/// Asserts `got` and `want` agree elementwise: `|got - want| <= atol + rtol * |want|`.
#[track_caller]
pub fn assert_close(what: &str, got: &[f64], want: &[f64], atol: f64, rtol: f64) {
    assert_eq!(got.len(), want.len(), "{what}: {} values, expected {}", got.len(), want.len());
    let mut worst = (0.0f64, 0usize);
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let excess = (g - w).abs() - (atol + rtol * w.abs());
        assert!(!g.is_nan() || w.is_nan(), "{what}: NaN at {i} (expected {w})");
        if excess > worst.0 {
            worst = (excess, i);
        }
    }
    if worst.0 > 0.0 {
        let i = worst.1;
        panic!(
            "{what}: value {i} is {} but should be {} (|diff| {:.3e} > {atol:.1e} + {rtol:.1e}*|want|)",
            got[i],
            want[i],
            (got[i] - want[i]).abs()
        );
    }
}
