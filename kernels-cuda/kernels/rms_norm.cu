// ferrotune: RMSNorm over the last dimension, with a per-column weight.
//
//   forward:  rstd[r] = 1 / sqrt(mean_i(x[r,i]^2) + eps)
//             y[r,i]  = x[r,i] * rstd[r] * w[i]
//   backward: g = dy * w, xhat = x * rstd,
//             dx[r,i] = rstd[r] * (g[r,i] - xhat[r,i] * mean_j(g[r,j] * xhat[r,j]))
//
// Only 1/rms per row is saved by the forward, and the backward computes dx only: the norm weight
// is frozen during LoRA training (DESIGN.md, convention 5). Storage is f32 or bf16; every sum is
// f32. One block per row; blockDim.x is a multiple of 32, at most 1024; any width >= 1. Rows whose
// width is a multiple of the 16-byte vector (and whose pointers are 16-byte aligned) are moved with
// vector loads and stores, any other width element by element.
#include "common.cuh"

namespace {

template <typename T>
__device__ void rms_norm_fwd(const T *__restrict__ x, const T *__restrict__ w, T *__restrict__ y,
                             float *__restrict__ rstd, int width, float eps) {
    constexpr int N = ft::Vec16<T>::N;
    typedef ft::Pack<T, N> P;
    const u64 row = blockIdx.x;
    const T *xr = x + row * (u64)width;
    T *yr = y + row * (u64)width;
    const bool vec = (width % N == 0) && ft::aligned(x, 16) && ft::aligned(w, 16) && ft::aligned(y, 16);

    float ss = 0.0f;
    if (vec) {
        for (int i = threadIdx.x * N; i < width; i += blockDim.x * N) {
            const P p = *reinterpret_cast<const P *>(xr + i);
#pragma unroll
            for (int k = 0; k < N; ++k) {
                const float v = ft::to_f32(p.v[k]);
                ss += v * v;
            }
        }
    } else {
        for (int i = threadIdx.x; i < width; i += blockDim.x) {
            const float v = ft::to_f32(xr[i]);
            ss += v * v;
        }
    }
    ss = ft::block_sum(ss);
    // Correctly rounded sqrt and division (no rsqrtf): one per row, and the backward's
    // cancellation for tiny widths amplifies every ulp of rstd.
    const float r = 1.0f / sqrtf(ss / (float)width + eps);
    if (threadIdx.x == 0) rstd[row] = r;

    if (vec) {
        for (int i = threadIdx.x * N; i < width; i += blockDim.x * N) {
            const P px = *reinterpret_cast<const P *>(xr + i);
            const P pw = *reinterpret_cast<const P *>(w + i);
            P out;
#pragma unroll
            for (int k = 0; k < N; ++k)
                out.v[k] = ft::from_f32<T>(ft::to_f32(px.v[k]) * r * ft::to_f32(pw.v[k]));
            *reinterpret_cast<P *>(yr + i) = out;
        }
    } else {
        for (int i = threadIdx.x; i < width; i += blockDim.x)
            yr[i] = ft::from_f32<T>(ft::to_f32(xr[i]) * r * ft::to_f32(w[i]));
    }
}

template <typename T>
__device__ void rms_norm_bwd(const T *__restrict__ x, const T *__restrict__ w,
                             const float *__restrict__ rstd, const T *__restrict__ dy,
                             T *__restrict__ dx, int width) {
    constexpr int N = ft::Vec16<T>::N;
    typedef ft::Pack<T, N> P;
    const u64 row = blockIdx.x;
    const T *xr = x + row * (u64)width;
    const T *dyr = dy + row * (u64)width;
    T *dxr = dx + row * (u64)width;
    const bool vec = (width % N == 0) && ft::aligned(x, 16) && ft::aligned(w, 16) &&
                     ft::aligned(dy, 16) && ft::aligned(dx, 16);
    const float r = rstd[row];

    // dot = sum_j dy*w*x; then mean_j(g * xhat) = r * dot / width.
    float dot = 0.0f;
    if (vec) {
        for (int i = threadIdx.x * N; i < width; i += blockDim.x * N) {
            const P px = *reinterpret_cast<const P *>(xr + i);
            const P pw = *reinterpret_cast<const P *>(w + i);
            const P pd = *reinterpret_cast<const P *>(dyr + i);
#pragma unroll
            for (int k = 0; k < N; ++k)
                dot += ft::to_f32(pd.v[k]) * ft::to_f32(pw.v[k]) * ft::to_f32(px.v[k]);
        }
    } else {
        for (int i = threadIdx.x; i < width; i += blockDim.x)
            dot += ft::to_f32(dyr[i]) * ft::to_f32(w[i]) * ft::to_f32(xr[i]);
    }
    dot = ft::block_sum(dot);
    // dx = r * g - x * (r^3 * dot / width)
    const float c = r * r * r * dot / (float)width;

    if (vec) {
        for (int i = threadIdx.x * N; i < width; i += blockDim.x * N) {
            const P px = *reinterpret_cast<const P *>(xr + i);
            const P pw = *reinterpret_cast<const P *>(w + i);
            const P pd = *reinterpret_cast<const P *>(dyr + i);
            P out;
#pragma unroll
            for (int k = 0; k < N; ++k)
                out.v[k] = ft::from_f32<T>(r * ft::to_f32(pd.v[k]) * ft::to_f32(pw.v[k]) -
                                           c * ft::to_f32(px.v[k]));
            *reinterpret_cast<P *>(dxr + i) = out;
        }
    } else {
        for (int i = threadIdx.x; i < width; i += blockDim.x)
            dxr[i] = ft::from_f32<T>(r * ft::to_f32(dyr[i]) * ft::to_f32(w[i]) -
                                     c * ft::to_f32(xr[i]));
    }
}

} // namespace

// x, y: [rows, width]; w: [width]; rstd: [rows]. Grid: (rows, 1, 1).
extern "C" __global__ void rms_norm_fwd_f32(const float *x, const float *w, float *y, float *rstd,
                                            int width, float eps) {
    rms_norm_fwd<float>(x, w, y, rstd, width, eps);
}

extern "C" __global__ void rms_norm_fwd_bf16(const __nv_bfloat16 *x, const __nv_bfloat16 *w,
                                             __nv_bfloat16 *y, float *rstd, int width, float eps) {
    rms_norm_fwd<__nv_bfloat16>(x, w, y, rstd, width, eps);
}

// x, dy, dx: [rows, width]; w: [width]; rstd: [rows] as written by the forward. Grid: (rows, 1, 1).
extern "C" __global__ void rms_norm_bwd_f32(const float *x, const float *w, const float *rstd,
                                            const float *dy, float *dx, int width) {
    rms_norm_bwd<float>(x, w, rstd, dy, dx, width);
}

extern "C" __global__ void rms_norm_bwd_bf16(const __nv_bfloat16 *x, const __nv_bfloat16 *w,
                                             const float *rstd, const __nv_bfloat16 *dy,
                                             __nv_bfloat16 *dx, int width) {
    rms_norm_bwd<__nv_bfloat16>(x, w, rstd, dy, dx, width);
}
