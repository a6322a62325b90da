//! Causal grouped-query attention: `softmax(q k^T * scale + causal mask) v`.
//! The CPU reference never stores the `[t, s]` probabilities: forward keeps the row
//! log-sum-exp, backward recomputes each row's probabilities from it (as flash attention
//! does).

use super::dense;
use super::{output, run_cpu, CpuKernel};
use crate::autograd::{Backward, GradStore};
use crate::cuda::{self, CudaBuf, CudaStorage};
use crate::storage::StorageElem;
use crate::{DType, Error, Real, Result, Tensor};
use kernels_cuda::ops::attention::{self as kernels, AttentionDims};
use rayon::prelude::*;
use std::sync::Arc;

#[derive(Clone, Copy)]
struct Dims {
    b: usize,
    hq: usize,
    hkv: usize,
    t: usize,
    s: usize,
    d: usize,
    scale: f64,
}

impl Dims {
    /// Query row `i` sees keys `0..=i + s - t` (queries are the last `t` of `s` positions).
    fn visible(&self, i: usize) -> usize {
        i + self.s - self.t + 1
    }
    fn group(&self) -> usize {
        self.hq / self.hkv
    }
}

/// Scores of query row `qi` against its visible keys, shifted by `lse` to probabilities.
fn probs<T: Real>(q: &[T], k: &[T], dims: &Dims, n: usize, lse: Option<T>, p: &mut Vec<T>) -> T {
    let d = dims.d;
    let scale = T::from_f64(dims.scale);
    p.clear();
    p.extend((0..n).map(|j| q.iter().zip(&k[j * d..(j + 1) * d]).map(|(&a, &b)| a * b).sum::<T>() * scale));
    let lse = lse.unwrap_or_else(|| {
        let m = p.iter().copied().fold(T::NEG_INFINITY, T::max);
        m + p.iter().map(|&x| (x - m).exp()).sum::<T>().ln()
    });
    for x in p.iter_mut() {
        *x = (*x - lse).exp();
    }
    lse
}

struct Fwd(Dims);
impl CpuKernel for Fwd {
    fn run<T: Real + StorageElem>(&self, i: &[&[T]]) -> Result<Vec<Vec<T>>> {
        let (q, k, v, dm) = (i[0], i[1], i[2], self.0);
        let (t, s, d, g) = (dm.t, dm.s, dm.d, dm.group());
        let mut out = vec![T::ZERO; q.len()];
        let mut lse = vec![T::ZERO; dm.b * dm.hq * t];
        out.par_chunks_mut(t * d).zip(lse.par_chunks_mut(t)).enumerate().for_each(|(bh, (o, l))| {
            let (bi, h) = (bh / dm.hq, bh % dm.hq);
            let kv = (bi * dm.hkv + h / g) * s * d;
            let (kh, vh) = (&k[kv..kv + s * d], &v[kv..kv + s * d]);
            let mut p = Vec::with_capacity(s);
            for r in 0..t {
                let qr = &q[(bh * t + r) * d..(bh * t + r + 1) * d];
                l[r] = probs(qr, kh, &dm, dm.visible(r), None, &mut p);
                let orow = &mut o[r * d..(r + 1) * d];
                for (j, &pj) in p.iter().enumerate() {
                    for c in 0..d {
                        orow[c] += pj * vh[j * d + c];
                    }
                }
            }
        });
        Ok(vec![out, lse])
    }
}

struct Bwd(Dims);
impl CpuKernel for Bwd {
    fn run<T: Real + StorageElem>(&self, i: &[&[T]]) -> Result<Vec<Vec<T>>> {
        let (q, k, v, o, lse, go, dm) = (i[0], i[1], i[2], i[3], i[4], i[5], self.0);
        let (t, s, d, g) = (dm.t, dm.s, dm.d, dm.group());
        let scale = T::from_f64(dm.scale);
        let mut dq = vec![T::ZERO; q.len()];
        let mut dk = vec![T::ZERO; k.len()];
        let mut dv = vec![T::ZERO; v.len()];
        // One task per (batch, kv head): it owns that head's dk/dv and its query heads' dq.
        dq.par_chunks_mut(g * t * d).zip(dk.par_chunks_mut(s * d).zip(dv.par_chunks_mut(s * d))).enumerate().for_each(
            |(bkv, (dqg, (dkh, dvh)))| {
                let kh = &k[bkv * s * d..(bkv + 1) * s * d];
                let vh = &v[bkv * s * d..(bkv + 1) * s * d];
                let mut p = Vec::with_capacity(s);
                for hg in 0..g {
                    let bh = bkv * g + hg;
                    for r in 0..t {
                        let row = (bh * t + r) * d;
                        let (qr, orow, gr) = (&q[row..row + d], &o[row..row + d], &go[row..row + d]);
                        let n = dm.visible(r);
                        probs(qr, kh, &dm, n, Some(lse[bh * t + r]), &mut p);
                        let delta = gr.iter().zip(orow).map(|(&a, &b)| a * b).sum::<T>();
                        let dqr = &mut dqg[(hg * t + r) * d..(hg * t + r + 1) * d];
                        for j in 0..n {
                            let (kj, vj) = (&kh[j * d..(j + 1) * d], &vh[j * d..(j + 1) * d]);
                            let dp = gr.iter().zip(vj).map(|(&a, &b)| a * b).sum::<T>();
                            let ds = p[j] * (dp - delta) * scale;
                            for c in 0..d {
                                dvh[j * d + c] += p[j] * gr[c];
                                dqr[c] += ds * kj[c];
                                dkh[j * d + c] += ds * qr[c];
                            }
                        }
                    }
                }
            },
        );
        Ok(vec![dq, dk, dv])
    }
}

/// Causal attention of `q: [b, hq, t, d]` over `k, v: [b, hkv, s, d]` with `s >= t`
/// (the queries are the last `t` positions; earlier ones come from a KV cache) and
/// `hq` a multiple of `hkv` (grouped-query attention). Scale `1/sqrt(d)`.
pub fn attention(q: &Tensor, k: &Tensor, v: &Tensor) -> Result<Tensor> {
    let dims = check(q, k, v)?;
    let (out, lse) = if q.device().is_cpu() {
        let mut o = run_cpu("attention", &Fwd(dims), &[q, k, v])?;
        let lse = output(o.remove(1), &[dims.b, dims.hq, dims.t], q.dtype().compute());
        (output(o.remove(0), q.shape(), q.dtype()), lse)
    } else {
        cuda_fwd(q, k, v, &dims)?
    };
    let saved = out.detach();
    Ok(out.track(&[q, k, v], || {
        Arc::new(AttentionBackward { q: q.clone(), k: k.clone(), v: v.clone(), out: saved, lse, dims })
    }))
}

fn check(q: &Tensor, k: &Tensor, v: &Tensor) -> Result<Dims> {
    super::same_dtype("attention", q, k)?;
    super::same_dtype("attention", q, v)?;
    let bad = || Error::shape("attention", format!("q {:?}, k {:?}, v {:?}", q.shape(), k.shape(), v.shape()));
    if q.rank() != 4 || k.rank() != 4 || k.shape() != v.shape() {
        return Err(bad());
    }
    let (b, hq, t, d) = (q.dim(0), q.dim(1), q.dim(2), q.dim(3));
    let (hkv, s) = (k.dim(1), k.dim(2));
    if k.dim(0) != b || k.dim(3) != d || hkv == 0 || hq % hkv != 0 || s < t || t == 0 || d == 0 {
        return Err(bad());
    }
    Ok(Dims { b, hq, hkv, t, s, d, scale: 1.0 / (d as f64).sqrt() })
}

struct AttentionBackward {
    q: Tensor,
    k: Tensor,
    v: Tensor,
    out: Tensor,
    lse: Tensor,
    dims: Dims,
}
impl Backward for AttentionBackward {
    fn name(&self) -> &'static str {
        "attention"
    }
    fn inputs(&self) -> Vec<Tensor> {
        vec![self.q.clone(), self.k.clone(), self.v.clone()]
    }
    fn backward(&self, g: &Tensor, _: &mut GradStore) -> Result<Vec<Option<Tensor>>> {
        if !g.device().is_cpu() {
            let (dq, dk, dv) = cuda_bwd(self, g)?;
            return Ok(vec![Some(dq), Some(dk), Some(dv)]);
        }
        let lse = super::cast(&self.lse, self.q.dtype().compute())?;
        let mut o = run_cpu("attention_bwd", &Bwd(self.dims), &[&self.q, &self.k, &self.v, &self.out, &lse, g])?;
        let dv = output(o.remove(2), self.v.shape(), self.v.dtype());
        let dk = output(o.remove(1), self.k.shape(), self.k.dtype());
        let dq = output(o.remove(0), self.q.shape(), self.q.dtype());
        Ok(vec![Some(dq), Some(dk), Some(dv)])
    }
}

fn kernel_dims(d: &Dims) -> AttentionDims {
    AttentionDims { batch: d.b, q_heads: d.hq, kv_heads: d.hkv, q_len: d.t, kv_len: d.s, head_dim: d.d }
}

/// Flash-attention forward on the GPU: `(out, lse)`, lse in f32.
fn cuda_fwd(q: &Tensor, k: &Tensor, v: &Tensor, dims: &Dims) -> Result<(Tensor, Tensor)> {
    let (q, k, v) = (dense(q)?, dense(k)?, dense(v)?);
    let (gq, gk, gv) = (q.cuda_storage()?, k.cuda_storage()?, v.cuda_storage()?);
    let (sq, sk, sv) = (cuda::cs(&gq), cuda::cs(&gk), cuda::cs(&gv));
    let kd = kernel_dims(dims);
    let mut o = CudaStorage::uninit(sq.dtype(), q.elem_count(), &sq.dev)?;
    let mut lse = CudaStorage::uninit(DType::F32, kd.lse_elems(), &sq.dev)?;
    let CudaBuf::F32(l) = &mut lse.buf else { unreachable!("allocated as f32") };
    let g = &sq.dev.gpu;
    let r = cuda::cuda_float!("attention"; a = &sq.buf, b = &sk.buf, c = &sv.buf, out = &mut o.buf
        => kernels::attention_fwd(g, &kd, a, b, c, None, out, l));
    r.map_err(|e| cuda::err("attention", e))?;
    Ok((cuda::tensor(o, q.shape()), cuda::tensor(lse, &[dims.b, dims.hq, dims.t])))
}

fn cuda_bwd(saved: &AttentionBackward, g: &Tensor) -> Result<(Tensor, Tensor, Tensor)> {
    let (q, k, v) = (dense(&saved.q)?, dense(&saved.k)?, dense(&saved.v)?);
    let (o, d_o) = (dense(&saved.out)?, dense(g)?);
    let guards = [q.cuda_storage()?, k.cuda_storage()?, v.cuda_storage()?, o.cuda_storage()?, d_o.cuda_storage()?];
    let [sq, sk, sv, so, sd] = guards.each_ref().map(|g| cuda::cs(g));
    let glse = saved.lse.cuda_storage()?;
    let CudaBuf::F32(lse) = &cuda::cs(&glse).buf else { unreachable!("lse is f32") };
    let kd = kernel_dims(&saved.dims);
    let dev = &sq.dev;
    let work_len = match q.dtype() {
        DType::BF16 => kernels::attention_bwd_workspace_len::<half::bf16>(&kd),
        _ => kernels::attention_bwd_workspace_len::<f32>(&kd),
    };
    let mut work = CudaStorage::uninit(DType::F32, work_len, dev)?;
    let CudaBuf::F32(w) = &mut work.buf else { unreachable!("allocated as f32") };
    let mut dq = CudaStorage::uninit(q.dtype(), q.elem_count(), dev)?;
    let mut dk = CudaStorage::uninit(q.dtype(), k.elem_count(), dev)?;
    let mut dv = CudaStorage::uninit(q.dtype(), v.elem_count(), dev)?;
    let r = cuda::cuda_float!("attention backward";
        a = &sq.buf, b = &sk.buf, c = &sv.buf, oo = &so.buf, gg = &sd.buf, x = &mut dq.buf, y = &mut dk.buf, z = &mut dv.buf
        => kernels::attention_bwd(&dev.gpu, &kd, a, b, c, oo, lse, gg, None, x, y, z, w));
    r.map_err(|e| cuda::err("attention backward", e))?;
    Ok((cuda::tensor(dq, q.shape()), cuda::tensor(dk, k.shape()), cuda::tensor(dv, v.shape())))
}
