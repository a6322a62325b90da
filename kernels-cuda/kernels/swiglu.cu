// ferrotune: the SwiGLU gate of the Llama MLP, elementwise over n elements.
//
//   forward:  out = silu(g) * u = g * sigmoid(g) * u
//   backward: with s = sigmoid(g) and dy the gradient of out,
//             dg = dy * u * s * (1 + g * (1 - s))
//             du = dy * g * s
//             h  = g * s * u        (the forward output, recomputed)
//
// swiglu_bwd_<dtype> writes dg and du to separate buffers. swiglu_bwd_inplace_<dtype> overwrites
// its inputs, Unsloth-style (DESIGN.md, convention 5): g <- dg, u <- du, and, when store_h is set,
// dy <- h (the input of the down projection, which its LoRA gradients need), so the backward
// allocates nothing. Every element is read before any is written, by the same thread.
//
// Storage f32 or bf16, arithmetic f32. Grid-stride loops over 16-byte packs when the pointers
// allow, then a scalar tail; any n, any grid and block size.
#include "common.cuh"

namespace {

__device__ __forceinline__ u64 thread_index() { return (u64)blockIdx.x * blockDim.x + threadIdx.x; }
__device__ __forceinline__ u64 thread_count() { return (u64)gridDim.x * blockDim.x; }

__device__ __forceinline__ float sigmoid(float x) { return 1.0f / (1.0f + expf(-x)); }

template <typename T>
__device__ void swiglu_fwd(const T *__restrict__ g, const T *__restrict__ u, T *__restrict__ out,
                           u64 n) {
    constexpr int N = ft::Vec16<T>::N;
    typedef ft::Pack<T, N> P;
    u64 done = 0;
    if (ft::aligned(g, 16) && ft::aligned(u, 16) && ft::aligned(out, 16)) {
        const u64 packs = n / N;
        for (u64 p = thread_index(); p < packs; p += thread_count()) {
            const P pg = reinterpret_cast<const P *>(g)[p];
            const P pu = reinterpret_cast<const P *>(u)[p];
            P o;
#pragma unroll
            for (int k = 0; k < N; ++k) {
                const float x = ft::to_f32(pg.v[k]);
                o.v[k] = ft::from_f32<T>(x * sigmoid(x) * ft::to_f32(pu.v[k]));
            }
            reinterpret_cast<P *>(out)[p] = o;
        }
        done = packs * N;
    }
    for (u64 i = done + thread_index(); i < n; i += thread_count()) {
        const float x = ft::to_f32(g[i]);
        out[i] = ft::from_f32<T>(x * sigmoid(x) * ft::to_f32(u[i]));
    }
}

// dg, du (and h) of one element.
__device__ __forceinline__ void grads(float x, float up, float d, float &dg, float &du, float &h) {
    const float s = sigmoid(x);
    const float xs = x * s;
    dg = d * up * s * (1.0f + x * (1.0f - s));
    du = d * xs;
    h = xs * up;
}

// No __restrict__: in the in-place variant dg aliases g, du aliases u, and h aliases dy.
template <typename T, bool H>
__device__ void swiglu_bwd(const T *g, const T *u, const T *dy, T *dg, T *du, T *h, u64 n) {
    constexpr int N = ft::Vec16<T>::N;
    typedef ft::Pack<T, N> P;
    u64 done = 0;
    if (ft::aligned(g, 16) && ft::aligned(u, 16) && ft::aligned(dy, 16) && ft::aligned(dg, 16) &&
        ft::aligned(du, 16) && (!H || ft::aligned(h, 16))) {
        const u64 packs = n / N;
        for (u64 p = thread_index(); p < packs; p += thread_count()) {
            const P pg = reinterpret_cast<const P *>(g)[p];
            const P pu = reinterpret_cast<const P *>(u)[p];
            const P pd = reinterpret_cast<const P *>(dy)[p];
            P og, ou, oh;
#pragma unroll
            for (int k = 0; k < N; ++k) {
                float a, b, c;
                grads(ft::to_f32(pg.v[k]), ft::to_f32(pu.v[k]), ft::to_f32(pd.v[k]), a, b, c);
                og.v[k] = ft::from_f32<T>(a);
                ou.v[k] = ft::from_f32<T>(b);
                oh.v[k] = ft::from_f32<T>(c);
            }
            reinterpret_cast<P *>(dg)[p] = og;
            reinterpret_cast<P *>(du)[p] = ou;
            if (H) reinterpret_cast<P *>(h)[p] = oh;
        }
        done = packs * N;
    }
    for (u64 i = done + thread_index(); i < n; i += thread_count()) {
        float a, b, c;
        grads(ft::to_f32(g[i]), ft::to_f32(u[i]), ft::to_f32(dy[i]), a, b, c);
        dg[i] = ft::from_f32<T>(a);
        du[i] = ft::from_f32<T>(b);
        if (H) h[i] = ft::from_f32<T>(c);
    }
}

} // namespace

// g, u, out: [n].
extern "C" __global__ void swiglu_fwd_f32(const float *g, const float *u, float *out, u64 n) {
    swiglu_fwd<float>(g, u, out, n);
}

extern "C" __global__ void swiglu_fwd_bf16(const __nv_bfloat16 *g, const __nv_bfloat16 *u,
                                           __nv_bfloat16 *out, u64 n) {
    swiglu_fwd<__nv_bfloat16>(g, u, out, n);
}

// g, u, dy: [n] read; dg, du: [n] written.
extern "C" __global__ void swiglu_bwd_f32(const float *g, const float *u, const float *dy,
                                          float *dg, float *du, u64 n) {
    swiglu_bwd<float, false>(g, u, dy, dg, du, nullptr, n);
}

extern "C" __global__ void swiglu_bwd_bf16(const __nv_bfloat16 *g, const __nv_bfloat16 *u,
                                           const __nv_bfloat16 *dy, __nv_bfloat16 *dg,
                                           __nv_bfloat16 *du, u64 n) {
    swiglu_bwd<__nv_bfloat16, false>(g, u, dy, dg, du, nullptr, n);
}

// In place: g <- dg, u <- du, and dy <- h when store_h != 0.
extern "C" __global__ void swiglu_bwd_inplace_f32(float *g, float *u, float *dy, int store_h,
                                                  u64 n) {
    if (store_h)
        swiglu_bwd<float, true>(g, u, dy, g, u, dy, n);
    else
        swiglu_bwd<float, false>(g, u, dy, g, u, nullptr, n);
}

extern "C" __global__ void swiglu_bwd_inplace_bf16(__nv_bfloat16 *g, __nv_bfloat16 *u,
                                                   __nv_bfloat16 *dy, int store_h, u64 n) {
    if (store_h)
        swiglu_bwd<__nv_bfloat16, true>(g, u, dy, g, u, dy, n);
    else
        swiglu_bwd<__nv_bfloat16, false>(g, u, dy, g, u, nullptr, n);
}
