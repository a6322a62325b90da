// ferrotune: elementwise kernels over flat buffers of n elements.
//
//   cast_f32_to_bf16: y = bf16(x), rounded to nearest even
//   cast_bf16_to_f32: y = f32(x), exact
//   add_fwd_<dtype>:  out = a + b (bf16 sums in f32, then rounds once)
//   scale_fwd_<dtype>: out = x * s (bf16: product in f32, rounded once)
//
// Grid-stride loops over packs of 4 or 8 elements when every pointer is aligned for the pack,
// then a scalar tail; any n (including odd n and n < one pack). Any grid and block size work.
#include "common.cuh"

namespace {

// Index of this thread in the grid and the grid's total number of threads.
__device__ __forceinline__ u64 thread_index() { return (u64)blockIdx.x * blockDim.x + threadIdx.x; }
__device__ __forceinline__ u64 thread_count() { return (u64)gridDim.x * blockDim.x; }

// y[i] = Dst(x[i]) for i < n, N elements per step where alignment allows.
template <typename Src, typename Dst, int N>
__device__ void cast(const Src *__restrict__ x, Dst *__restrict__ y, u64 n) {
    typedef ft::Pack<Src, N> PS;
    typedef ft::Pack<Dst, N> PD;
    u64 done = 0;
    if (ft::aligned(x, sizeof(PS)) && ft::aligned(y, sizeof(PD))) {
        const u64 packs = n / N;
        for (u64 p = thread_index(); p < packs; p += thread_count()) {
            const PS s = reinterpret_cast<const PS *>(x)[p];
            PD d;
#pragma unroll
            for (int k = 0; k < N; ++k) d.v[k] = ft::from_f32<Dst>(ft::to_f32(s.v[k]));
            reinterpret_cast<PD *>(y)[p] = d;
        }
        done = packs * N;
    }
    for (u64 i = done + thread_index(); i < n; i += thread_count())
        y[i] = ft::from_f32<Dst>(ft::to_f32(x[i]));
}

// out[i] = a[i] + b[i] for i < n, 16 bytes per step where alignment allows.
template <typename T>
__device__ void add(const T *__restrict__ a, const T *__restrict__ b, T *__restrict__ out, u64 n) {
    constexpr int N = ft::Vec16<T>::N;
    typedef ft::Pack<T, N> P;
    u64 done = 0;
    if (ft::aligned(a, 16) && ft::aligned(b, 16) && ft::aligned(out, 16)) {
        const u64 packs = n / N;
        for (u64 p = thread_index(); p < packs; p += thread_count()) {
            const P pa = reinterpret_cast<const P *>(a)[p];
            const P pb = reinterpret_cast<const P *>(b)[p];
            P o;
#pragma unroll
            for (int k = 0; k < N; ++k) o.v[k] = ft::from_f32<T>(ft::to_f32(pa.v[k]) + ft::to_f32(pb.v[k]));
            reinterpret_cast<P *>(out)[p] = o;
        }
        done = packs * N;
    }
    for (u64 i = done + thread_index(); i < n; i += thread_count())
        out[i] = ft::from_f32<T>(ft::to_f32(a[i]) + ft::to_f32(b[i]));
}

} // namespace

extern "C" __global__ void cast_f32_to_bf16(const float *x, __nv_bfloat16 *y, u64 n) {
    cast<float, __nv_bfloat16, 4>(x, y, n);
}

extern "C" __global__ void cast_bf16_to_f32(const __nv_bfloat16 *x, float *y, u64 n) {
    cast<__nv_bfloat16, float, 4>(x, y, n);
}

extern "C" __global__ void add_fwd_f32(const float *a, const float *b, float *out, u64 n) {
    add<float>(a, b, out, n);
}

extern "C" __global__ void add_fwd_bf16(const __nv_bfloat16 *a, const __nv_bfloat16 *b,
                                        __nv_bfloat16 *out, u64 n) {
    add<__nv_bfloat16>(a, b, out, n);
}

// out[i] = x[i] * s (bf16: product in f32, rounded once).
template <typename T>
__device__ void scale(const T *__restrict__ x, T *__restrict__ out, float s, u64 n) {
    for (u64 i = thread_index(); i < n; i += thread_count()) out[i] = ft::from_f32<T>(ft::to_f32(x[i]) * s);
}

extern "C" __global__ void scale_fwd_f32(const float *x, float *out, float s, u64 n) { scale<float>(x, out, s, n); }

extern "C" __global__ void scale_fwd_bf16(const __nv_bfloat16 *x, __nv_bfloat16 *out, float s, u64 n) {
    scale<__nv_bfloat16>(x, out, s, n);
}
