//! AdamW 8-bit against bitsandbytes 0.50.2 itself (CUDA kernels, H200):
//! `trainer/tests/fixtures/bnb_adamw8bit.safetensors`, made by
//! `trainer/scripts/bnb_peft_reference.py`. The CUDA kernel computes its bias corrections with
//! the fast `__powf` and divides with `__fdividef`, so values agree to float rounding of those
//! approximations, not bit for bit.

mod common;

use common::{adamw_settings, golden};
use engine::Tensor;
use model_llama::SafetensorsDir;
use std::path::PathBuf;
use trainer::named_parameters;
use trainer::optim::{Moments, Optimizer, OptimizerKind};
use trainer::quant8::create_dynamic_map;

fn reference() -> SafetensorsDir {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/bnb_adamw8bit.safetensors");
    SafetensorsDir::open_files(&[p]).unwrap()
}

fn f32s(st: &SafetensorsDir, name: &str) -> Vec<f32> {
    st.get(name).unwrap().to_vec_f32().unwrap()
}

fn codes(name: &str) -> Vec<u8> {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/bnb_adamw8bit.safetensors");
    let bytes = std::fs::read(p).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let t = st.tensor(name).unwrap();
    assert_eq!(t.dtype(), safetensors::Dtype::U8);
    t.data().to_vec()
}

#[test]
fn dynamic_maps_equal_bitsandbytes() {
    let st = reference();
    assert_eq!(create_dynamic_map(true).to_vec(), f32s(&st, "map_signed"));
    assert_eq!(create_dynamic_map(false).to_vec(), f32s(&st, "map_unsigned"));
}

/// Six steps on one 700-value tensor (two full blocks and a partial one) with gradients over
/// six decades and exact zeros: parameters, block absmax and 8-bit codes follow bitsandbytes.
#[test]
fn blockwise_update_follows_bitsandbytes() {
    let st = reference();
    let meta: serde_json::Value = serde_json::from_str(&st.metadata().unwrap()["tensor_optimizer"]).unwrap();
    let p0 = f32s(&st, "tensor.p0");
    let n = p0.len();
    let p = Tensor::from_vec(p0, &[n]).unwrap().into_var();
    let (lr, cfg) = adamw_settings(&meta);
    let mut opt =
        Optimizer::new(OptimizerKind::AdamW8bit { min_8bit_size: 0 }, cfg, &[("p".into(), p.clone())]).unwrap();
    for s in 1..=meta["steps"].as_u64().unwrap() as usize {
        let g = f32s(&st, &format!("tensor.grad{}", s - 1));
        // Each step starts from bitsandbytes' parameters, so that its update is compared alone
        // (the states are never reset: they must follow bitsandbytes' by themselves).
        let prev = f32s(&st, &format!("tensor.p{}", s - 1));
        opt.set_masters(vec![prev.clone()]).unwrap();
        opt.step(&[Tensor::from_vec(g, &[n]).unwrap()], 1.0, lr).unwrap();
        let got = p.to_vec_f32().unwrap();
        let want = f32s(&st, &format!("tensor.p{s}"));
        // Each value's update against bitsandbytes' update (its step size comes from the fast
        // __powf, about 3e-5 off the exact value; __fdividef adds a little more).
        let p_err = (0..n)
            .map(|i| ((got[i] - prev[i]) - (want[i] - prev[i])).abs() / (want[i] - prev[i]).abs().max(lr as f32 * 1e-3))
            .fold(0f32, f32::max);
        // Allowed: 2e-4 of the update plus two roundings of the parameter.
        let worst = (0..n)
            .map(|i| {
                let d = ((got[i] - prev[i]) - (want[i] - prev[i])).abs();
                d / (2e-4 * (want[i] - prev[i]).abs() + 2.0 * f32::EPSILON * want[i].abs().max(prev[i].abs()))
            })
            .fold(0f32, f32::max);
        assert!(worst <= 1.0, "step {s}: an update differs by {worst} times the allowance");
        let states = opt.states().unwrap();
        let Moments::Q8 { m, v } = &states[0].moments else { panic!("8-bit states expected") };
        let (a1, a2) = (f32s(&st, &format!("tensor.absmax1_{s}")), f32s(&st, &format!("tensor.absmax2_{s}")));
        let rel = |x: &[f32], y: &[f32]| {
            x.iter().zip(y).map(|(a, b)| (a - b).abs() / b.abs().max(1e-30)).fold(0f32, f32::max)
        };
        let (e1, e2) = (rel(&m.absmax, &a1), rel(&v.absmax, &a2));
        let (c1, c2) = (codes(&format!("tensor.state1_{s}")), codes(&format!("tensor.state2_{s}")));
        let diff = |x: &[u8], y: &[u8]| x.iter().zip(y).filter(|(a, b)| a != b).count();
        let far = |x: &[u8], y: &[u8]| x.iter().zip(y).filter(|(a, b)| (**a as i32 - **b as i32).abs() > 1).count();
        let (d1, d2) = (diff(&m.codes, &c1), diff(&v.codes, &c2));
        println!(
            "step {s}: update rel err {p_err:.1e}; absmax rel err {e1:.1e} / {e2:.1e}; codes differing {d1} / {d2} of {n}"
        );
        assert!(e1 < 1e-5 && e2 < 1e-5, "step {s}: absmax differs ({e1}, {e2})");
        // Codes may differ by one step where a value sits on a midpoint to within rounding.
        assert!(far(&m.codes, &c1) == 0 && far(&v.codes, &c2) == 0, "step {s}: a code differs by more than one");
        assert!(d1 + d2 <= 3, "step {s}: {d1} + {d2} codes differ");
    }
}

/// Five AdamW8bit steps (all states 8-bit) on the golden models: ferrotune's losses against
/// bitsandbytes' on the GPU.
#[test]
fn golden_losses_follow_bitsandbytes() {
    let st = reference();
    for name in ["gqa_llama3", "tied"] {
        let g = golden(name);
        let (lr, cfg) = g.adamw();
        let params = named_parameters(&g.model);
        let mut opt = Optimizer::new(OptimizerKind::AdamW8bit { min_8bit_size: 0 }, cfg, &params).unwrap();
        let want = f32s(&st, &format!("{name}.adamw8bit_losses"));
        let mut got = Vec::new();
        for _ in 0..want.len() {
            let loss = g.model.loss(&g.ids, &g.labels, false).unwrap();
            got.push(loss.to_scalar::<f32>().unwrap());
            let store = loss.backward().unwrap();
            let grads: Vec<_> = params.iter().map(|(_, p)| store.get(p).unwrap().clone()).collect();
            opt.step(&grads, 1.0, lr).unwrap();
        }
        println!("{name}: ferrotune {got:?}\n{name}: bnb       {want:?}");
        for (i, (a, b)) in got.iter().zip(&want).enumerate() {
            assert!((a - b).abs() < 1e-4, "{name}: loss before step {} is {a}, bitsandbytes {b}", i + 1);
        }
    }
}
