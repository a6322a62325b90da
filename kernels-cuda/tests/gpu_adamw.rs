//! GPU tests of the AdamW kernels (`kernels/adamw.cu`). Every test name contains `cuda`; without
//! libcuda or a device each prints `skipped: no CUDA device (<reason>)` and returns.
//!
//! - `adamw_f32` against an f64 loop of `torch.optim.AdamW` over several steps (tolerances), and
//!   against the f32 CPU twin (the arithmetic of `trainer::optim::torch_adamw`), bit for bit.
//! - `adamw_8bit` against a CPU reimplementation of bitsandbytes' blockwise 8-bit step (the
//!   arithmetic of `trainer::optim::bnb_adam8_blockwise`), one step at a time from the device's
//!   state: codes within one code step (equal is expected), absmax and parameters within 1e-6.
//! - On a small quadratic problem, the 8-bit trajectory stays close to the f32 one.

use engine::quant::dynamic_map::{quantize_2d, signed_map, unsigned_map};

use kernels_cuda::cudarc::driver::{CudaSlice, DeviceRepr};
use kernels_cuda::ops::adamw::{
    adamw_8bit, adamw_f32, AdamWHyper, Bnb8bitScalars, State8bit, TorchScalars, MAPS_LEN, STATE_BLOCK,
};
use kernels_cuda::{bf16, Error, Gpu, KernelFloat};

mod common;
use common::*;

/// Gradient-like values: N(0, 0.1), every 97th times 100, every 89th times 1e-3.
fn grads(rng: &mut Rng, n: usize) -> Vec<f32> {
    (0..n)
        .map(|i| {
            let g = rng.normal() * 0.1;
            if i % 97 == 13 {
                g * 100.0
            } else if i % 89 == 7 {
                g * 1e-3
            } else {
                g
            }
        })
        .collect()
}

/// A gradient dtype of the tests.
trait Grad: KernelFloat + DeviceRepr {
    const NAME: &'static str;
    fn from_f32(v: f32) -> Self;
    fn to_f32(self) -> f32;
}

impl Grad for f32 {
    const NAME: &'static str = "f32";
    fn from_f32(v: f32) -> Self {
        v
    }
    fn to_f32(self) -> f32 {
        self
    }
}

impl Grad for bf16 {
    const NAME: &'static str = "bf16";
    fn from_f32(v: f32) -> Self {
        bf16::from_f32(v)
    }
    fn to_f32(self) -> f32 {
        bf16::to_f32(self)
    }
}

/// Asserts `|got - want| <= tol(i)` everywhere, listing the first failures.
fn assert_within(what: &str, got: &[f32], want: &[f64], tol: impl Fn(usize) -> f64) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let bad: Vec<String> = (0..got.len())
        .filter(|&i| (got[i] as f64 - want[i]).abs().is_nan() || (got[i] as f64 - want[i]).abs() > tol(i))
        .take(8)
        .map(|i| format!("  [{i}] got {:e}, want {:e} (tol {:e})", got[i], want[i], tol(i)))
        .collect();
    assert!(bad.is_empty(), "{what}: out of tolerance:\n{}", bad.join("\n"));
}

/// Asserts bitwise equality, listing the first differences.
fn assert_bits(what: &str, got: &[f32], want: &[f32]) {
    let bad: Vec<String> = (0..got.len())
        .filter(|&i| got[i].to_bits() != want[i].to_bits())
        .take(8)
        .map(|i| format!("  [{i}] got {:e}, want {:e}", got[i], want[i]))
        .collect();
    assert!(bad.is_empty(), "{what}: not bit-identical to the CPU twin:\n{}", bad.join("\n"));
}

// ---------------------------------------------------------------------------------------------
// f32 moments

/// `trainer::optim::torch_adamw`'s arithmetic: the f32 CPU twin.
fn torch_step_f32(p: &mut [f32], m: &mut [f32], v: &mut [f32], g: &[f32], s: &TorchScalars) {
    for i in 0..p.len() {
        if s.apply_decay {
            p[i] *= s.decay;
        }
        m[i] = s.w1.mul_add(g[i] - m[i], m[i]);
        v[i] = v[i] * s.b2 + s.w2 * g[i] * g[i];
        let denom = v[i].sqrt() / s.bc2_sqrt + s.eps;
        p[i] += s.step_size * (m[i] / denom);
    }
}

/// `torch.optim.AdamW` in f64.
fn torch_step_f64(p: &mut [f64], m: &mut [f64], v: &mut [f64], g: &[f64], h: &AdamWHyper, step: u64) {
    let bc1 = 1.0 - h.beta1.powi(step as i32);
    let bc2 = 1.0 - h.beta2.powi(step as i32);
    for i in 0..p.len() {
        p[i] *= 1.0 - h.lr * h.weight_decay;
        m[i] = h.beta1 * m[i] + (1.0 - h.beta1) * g[i];
        v[i] = h.beta2 * v[i] + (1.0 - h.beta2) * g[i] * g[i];
        let denom = (v[i] / bc2).sqrt() + h.eps;
        p[i] -= h.lr * (m[i] / bc1) / denom;
    }
}

fn check_adamw_f32<G: Grad>(gpu: &Gpu, seed: u64) {
    let mut rng = Rng(seed);
    for &(n, wd, scale) in &[
        (1usize, 0.01, 1.0f32),
        (255, 0.0, 1.0),
        (256, 0.01, 0.37),
        (1000, 0.1, 1.0),
        (4099, 0.01, 0.5),
        (65537, 0.0, 1.0),
    ] {
        let what = format!("adamw_f32_g{} n={n} wd={wd} grad_scale={scale}", G::NAME);
        let p0: Vec<f32> = (0..n).map(|_| rng.uniform(-1.0, 1.0)).collect();
        let (mut p, mut m, mut v) = (p0.clone(), vec![0f32; n], vec![0f32; n]);
        let mut p64: Vec<f64> = p0.iter().map(|&x| x as f64).collect();
        let (mut m64, mut v64) = (vec![0f64; n], vec![0f64; n]);
        let (mut d_p, mut d_m, mut d_v) = (upload(gpu, &p), upload(gpu, &m), upload(gpu, &v));
        for step in 1..=6u64 {
            let h = AdamWHyper {
                lr: 1e-2 * (1.0 - 0.1 * step as f64),
                beta1: 0.9,
                beta2: 0.999,
                eps: 1e-8,
                weight_decay: wd,
            };
            let g: Vec<G> = grads(&mut rng, n).into_iter().map(G::from_f32).collect();
            adamw_f32(gpu, &mut d_p, &mut d_m, &mut d_v, &upload(gpu, &g), &h, step, scale)
                .unwrap_or_else(|e| panic!("{what}: {e}"));
            sync(gpu, &what);
            // The twin sees the gradient the kernel sees: stored value times the scale, in f32.
            let g32: Vec<f32> = g.iter().map(|&x| x.to_f32() * scale).collect();
            torch_step_f32(&mut p, &mut m, &mut v, &g32, &TorchScalars::new(&h, step));
            let g64: Vec<f64> = g.iter().map(|&x| x.to_f32() as f64 * scale as f64).collect();
            torch_step_f64(&mut p64, &mut m64, &mut v64, &g64, &h, step);
            let (gp, gm, gv) = (download(gpu, &d_p), download(gpu, &d_m), download(gpu, &d_v));
            let at = format!("{what} step {step}");
            assert_bits(&format!("{at} p"), &gp, &p);
            assert_bits(&format!("{at} m"), &gm, &m);
            assert_bits(&format!("{at} v"), &gv, &v);
            let gmax = g64.iter().fold(0.0f64, |a, &x| a.max(x.abs()));
            assert_within(&format!("{at} p vs f64"), &gp, &p64, |i| 2e-6 * (1.0 + p64[i].abs()));
            assert_within(&format!("{at} m vs f64"), &gm, &m64, |i| 1e-5 * m64[i].abs() + 1e-7 * gmax);
            assert_within(&format!("{at} v vs f64"), &gv, &v64, |i| 1e-5 * v64[i].abs() + 1e-9 * gmax * gmax);
        }
        println!("{what}: 6 steps bit-identical to the f32 twin, within tolerance of f64");
    }
}

#[test]
fn cuda_adamw_f32_grad_f32() {
    let Some(gpu) = gpu() else { return };
    check_adamw_f32::<f32>(gpu, 81);
}

#[test]
fn cuda_adamw_f32_grad_bf16() {
    let Some(gpu) = gpu() else { return };
    check_adamw_f32::<bf16>(gpu, 82);
}

// ---------------------------------------------------------------------------------------------
// 8-bit moments

/// The signed map then the unsigned one (engine's, checked against bitsandbytes there).
fn maps() -> Vec<f32> {
    let (signed, unsigned) = (*signed_map(), *unsigned_map());
    assert_eq!((unsigned[0], unsigned[255]), (0.0, 1.0));
    assert!((unsigned[1] - 1e-6 * 0.325).abs() < 1e-12 && unsigned.windows(2).all(|w| w[0] < w[1]));
    let mut both = signed.to_vec();
    both.extend_from_slice(&unsigned);
    assert_eq!(both.len(), MAPS_LEN);
    both
}

/// A blockwise 8-bit state on the host.
#[derive(Clone)]
struct Q8 {
    codes: Vec<u8>,
    absmax: Vec<f32>,
}

/// bitsandbytes' blockwise 8-bit AdamW step on the CPU (`trainer::optim::bnb_adam8_blockwise`'s
/// arithmetic); `g` already scaled.
fn bnb_step(p: &mut [f32], m: &mut Q8, v: &mut Q8, g: &[f32], maps: &[f32], s: &Bnb8bitScalars) {
    let (smap, umap): (&[f32; 256], &[f32; 256]) = (maps[..256].try_into().unwrap(), maps[256..].try_into().unwrap());
    let n = p.len();
    for (b, start) in (0..n).step_by(STATE_BLOCK).enumerate() {
        let end = (start + STATE_BLOCK).min(n);
        let (mut s1, mut s2) = (vec![0f32; end - start], vec![0f32; end - start]);
        let (mut max1, mut max2) = (-f32::MAX, -f32::MAX);
        for i in start..end {
            let j = i - start;
            if g[i].is_finite() {
                s2[j] = umap[v.codes[i] as usize] * v.absmax[b] * s.b2 + (1.0 - s.b2) * g[i] * g[i];
                s1[j] = smap[m.codes[i] as usize] * m.absmax[b] * s.b1 + (1.0 - s.b1) * g[i];
            }
            max1 = max1.max(s1[j].abs());
            max2 = max2.max(s2[j].abs());
        }
        for i in start..end {
            let j = i - start;
            if g[i].is_finite() {
                p[i] += s.step_size * (s1[j] / (s2[j].sqrt() + s.c2_eps));
                if s.apply_decay {
                    p[i] *= s.decay;
                }
            }
            let mut c = quantize_2d(smap, true, s1[j] / max1);
            if smap[c as usize].is_sign_negative() != s1[j].is_sign_negative() {
                c = if s1[j] > 0.0 { c.wrapping_add(1) } else { c.wrapping_sub(1) };
            }
            m.codes[i] = c;
            v.codes[i] = quantize_2d(umap, false, s2[j] / max2);
        }
        m.absmax[b] = max1;
        v.absmax[b] = max2;
    }
}

/// A blockwise 8-bit state on the device.
struct DeviceQ8 {
    codes: CudaSlice<u8>,
    absmax: CudaSlice<f32>,
}

impl DeviceQ8 {
    fn zeros(gpu: &Gpu, n: usize) -> DeviceQ8 {
        DeviceQ8 { codes: upload(gpu, &vec![0u8; n]), absmax: upload(gpu, &vec![0f32; n.div_ceil(STATE_BLOCK)]) }
    }

    fn state(&mut self) -> State8bit<'_> {
        State8bit { codes: &mut self.codes, absmax: &mut self.absmax }
    }

    fn host(&self, gpu: &Gpu) -> Q8 {
        Q8 { codes: download(gpu, &self.codes), absmax: download(gpu, &self.absmax) }
    }
}

/// Codes within one step of each other (returns how many differ at all).
fn check_codes(what: &str, got: &[u8], want: &[u8]) -> usize {
    let far: Vec<String> = (0..got.len())
        .filter(|&i| (got[i] as i32 - want[i] as i32).abs() > 1)
        .take(8)
        .map(|i| format!("  [{i}] got {}, want {}", got[i], want[i]))
        .collect();
    assert!(far.is_empty(), "{what}: codes more than one step apart:\n{}", far.join("\n"));
    (0..got.len()).filter(|&i| got[i] != want[i]).count()
}

fn check_adamw_8bit<G: Grad>(gpu: &Gpu, seed: u64) {
    let mut rng = Rng(seed);
    let maps = maps();
    let d_maps = upload(gpu, &maps);
    for &(n, wd, scale) in &[
        (1usize, 0.01, 1.0f32),
        (200, 0.0, 1.0),
        (256, 0.01, 0.5),
        (257, 0.1, 1.0),
        (4196, 0.01, 1.0),
        (65543, 0.0, 0.37),
    ] {
        let what = format!("adamw_8bit_g{} n={n} wd={wd} grad_scale={scale}", G::NAME);
        let mut d_p = upload(gpu, &(0..n).map(|_| rng.uniform(-1.0, 1.0)).collect::<Vec<f32>>());
        let (mut d_m, mut d_v) = (DeviceQ8::zeros(gpu, n), DeviceQ8::zeros(gpu, n));
        let mut differing = 0usize;
        for step in 1..=6u64 {
            let h = AdamWHyper {
                lr: 1e-2 * (1.0 - 0.1 * step as f64),
                beta1: 0.9,
                beta2: 0.999,
                eps: 1e-8,
                weight_decay: wd,
            };
            let mut g32 = grads(&mut rng, n);
            if n > 300 {
                // Non-finite gradients: the parameter stays, the moments are zeroed.
                g32[3] = f32::NAN;
                g32[n - 5] = f32::INFINITY;
            }
            let g: Vec<G> = g32.into_iter().map(G::from_f32).collect();
            // The CPU step starts from the device's state before the step.
            let mut p = download(gpu, &d_p);
            let (mut m, mut v) = (d_m.host(gpu), d_v.host(gpu));
            let p_before = p.clone();
            adamw_8bit(gpu, &mut d_p, d_m.state(), d_v.state(), &upload(gpu, &g), &d_maps, &h, step, scale)
                .unwrap_or_else(|e| panic!("{what}: {e}"));
            sync(gpu, &what);
            let gs: Vec<f32> = g.iter().map(|&x| x.to_f32() * scale).collect();
            bnb_step(&mut p, &mut m, &mut v, &gs, &maps, &Bnb8bitScalars::new(&h, step));
            let at = format!("{what} step {step}");
            let gp = download(gpu, &d_p);
            let want: Vec<f64> = p.iter().map(|&x| x as f64).collect();
            assert_within(&format!("{at} p"), &gp, &want, |i| 1e-6 * want[i].abs() + 1e-9);
            let (gm, gv) = (d_m.host(gpu), d_v.host(gpu));
            for (name, got, want) in [("m absmax", &gm.absmax, &m.absmax), ("v absmax", &gv.absmax, &v.absmax)] {
                let w64: Vec<f64> = want.iter().map(|&x| x as f64).collect();
                assert_within(&format!("{at} {name}"), got, &w64, |i| 1e-6 * w64[i].abs());
            }
            differing += check_codes(&format!("{at} m codes"), &gm.codes, &m.codes);
            differing += check_codes(&format!("{at} v codes"), &gv.codes, &v.codes);
            if n > 300 {
                assert_eq!(gp[3].to_bits(), p_before[3].to_bits(), "{at}: NaN gradient changed p");
                assert_eq!(gp[n - 5].to_bits(), p_before[n - 5].to_bits(), "{at}: inf gradient changed p");
            }
        }
        println!("{what}: 6 steps match the CPU twin ({differing} of {} codes one step off)", 12 * n);
    }
}

#[test]
fn cuda_adamw_8bit_grad_f32() {
    let Some(gpu) = gpu() else { return };
    check_adamw_8bit::<f32>(gpu, 91);
}

#[test]
fn cuda_adamw_8bit_grad_bf16() {
    let Some(gpu) = gpu() else { return };
    check_adamw_8bit::<bf16>(gpu, 92);
}

/// Minimizes 0.5 sum h_i (p_i - t_i)^2 (curvatures h from 0.1 to 10) with both kernels from the
/// same start: from step 50 on the 8-bit parameters stay within 15% (of the distance travelled)
/// of the f32 ones, and both converge.
#[test]
fn cuda_adamw_8bit_tracks_f32_on_a_quadratic() {
    let Some(gpu) = gpu() else { return };
    let mut rng = Rng(93);
    let n = 4096 + 77;
    let h: Vec<f32> = (0..n).map(|_| 10f32.powf(rng.uniform(-1.0, 1.0))).collect();
    let t: Vec<f32> = (0..n).map(|_| rng.uniform(-1.0, 1.0)).collect();
    let p0: Vec<f32> = (0..n).map(|_| rng.uniform(-0.1, 0.1)).collect();
    let loss = |p: &[f32]| -> f64 { (0..n).map(|i| 0.5 * h[i] as f64 * ((p[i] - t[i]) as f64).powi(2)).sum() };
    let grad = |p: &[f32]| -> Vec<f32> { (0..n).map(|i| h[i] * (p[i] - t[i])).collect() };
    let hyper = AdamWHyper { lr: 1e-2, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.0 };
    let d_maps = upload(gpu, &maps());
    let (mut p32, mut m32, mut v32) = (upload(gpu, &p0), upload(gpu, &vec![0f32; n]), upload(gpu, &vec![0f32; n]));
    let mut p8 = upload(gpu, &p0);
    let (mut m8, mut v8) = (DeviceQ8::zeros(gpu, n), DeviceQ8::zeros(gpu, n));
    let loss0 = loss(&p0);
    for step in 1..=300u64 {
        let g32 = upload(gpu, &grad(&download(gpu, &p32)));
        adamw_f32(gpu, &mut p32, &mut m32, &mut v32, &g32, &hyper, step, 1.0).unwrap();
        let g8 = upload(gpu, &grad(&download(gpu, &p8)));
        adamw_8bit(gpu, &mut p8, m8.state(), v8.state(), &g8, &d_maps, &hyper, step, 1.0).unwrap();
        if [10, 50, 100, 200, 300].contains(&step) {
            let (a, b) = (download(gpu, &p32), download(gpu, &p8));
            let moved: f64 = a.iter().zip(&p0).map(|(x, y)| ((x - y) as f64).powi(2)).sum::<f64>().sqrt();
            let apart: f64 = a.iter().zip(&b).map(|(x, y)| ((x - y) as f64).powi(2)).sum::<f64>().sqrt();
            let (l32, l8) = (loss(&a), loss(&b));
            println!(
                "step {step}: loss f32 {l32:.5e}, 8-bit {l8:.5e} (start {loss0:.5e}); |p8 - p32| / |p32 - p0| = {:.4}",
                apart / moved
            );
            // Early on the parameters have moved little, so the ratio is large (CPU run of the
            // same arithmetic: 0.28 at step 10, 0.077 at 50, 0.001 at 300).
            let limit = if step < 50 { 0.5 } else { 0.15 };
            assert!(apart / moved < limit, "step {step}: the 8-bit trajectory left the f32 one ({:.4})", apart / moved);
            assert!(l8 <= 2.0 * l32 + 1e-2 * loss0, "step {step}: 8-bit loss {l8} vs f32 {l32}");
        }
    }
    let (l32, l8) = (loss(&download(gpu, &p32)), loss(&download(gpu, &p8)));
    assert!(l32 < 0.02 * loss0 && l8 < 0.02 * loss0, "no convergence: f32 {l32}, 8-bit {l8}, start {loss0}");
}

#[test]
fn cuda_adamw_launchers_reject_bad_sizes() {
    let Some(gpu) = gpu() else { return };
    let expect_invalid = |result: kernels_cuda::Result<()>, needle: &str| {
        let err = result.expect_err("bad arguments were accepted");
        let message = err.to_string();
        assert!(matches!(err, Error::InvalidArgument { .. }), "{message}");
        assert!(message.contains(needle), "{needle:?} not in {message:?}");
    };
    let f = |n: usize| upload(gpu, &vec![0.0f32; n]);
    let h = AdamWHyper { lr: 1e-3, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.0 };
    expect_invalid(adamw_f32(gpu, &mut f(4), &mut f(4), &mut f(3), &f(4), &h, 1, 1.0), "v has 3");
    expect_invalid(adamw_f32(gpu, &mut f(4), &mut f(4), &mut f(4), &f(4), &h, 0, 1.0), "step counts from 1");
    expect_invalid(adamw_f32(gpu, &mut f(4), &mut f(4), &mut f(4), &f(4), &h, 1, f32::NAN), "grad_scale");
    let bad = AdamWHyper { beta2: 1.0, ..h };
    expect_invalid(adamw_f32(gpu, &mut f(4), &mut f(4), &mut f(4), &f(4), &bad, 1, 1.0), "out of range");
    let maps = f(MAPS_LEN);
    let (mut m, mut v) = (DeviceQ8::zeros(gpu, 300), DeviceQ8::zeros(gpu, 300));
    expect_invalid(adamw_8bit(gpu, &mut f(300), m.state(), v.state(), &f(299), &maps, &h, 1, 1.0), "g has 299");
    let mut short = DeviceQ8 { codes: upload(gpu, &vec![0u8; 300]), absmax: f(1) };
    expect_invalid(
        adamw_8bit(gpu, &mut f(300), m.state(), short.state(), &f(300), &maps, &h, 1, 1.0),
        "v absmax has 1",
    );
    expect_invalid(adamw_8bit(gpu, &mut f(300), m.state(), v.state(), &f(300), &f(256), &h, 1, 1.0), "maps has 256");
    println!("bad sizes rejected: ok");
}
