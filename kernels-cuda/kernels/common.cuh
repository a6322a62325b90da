// ferrotune: helpers shared by every kernel module.
//
// Handed to NVRTC as an in-memory header named "common.cuh" (see `src/source.rs`), so each .cu
// starts with `#include "common.cuh"`. Storage types are `float` and `__nv_bfloat16`; all
// arithmetic and reductions are done in f32.
#pragma once

#include <cuda_bf16.h>

typedef unsigned long long u64;

namespace ft {

// Widen a stored value to f32.
__device__ __forceinline__ float to_f32(float v) { return v; }
__device__ __forceinline__ float to_f32(__nv_bfloat16 v) { return __bfloat162float(v); }

// Narrow an f32 to the storage type; bf16 rounds to nearest even (NaN stays NaN).
template <typename T> __device__ __forceinline__ T from_f32(float v);
template <> __device__ __forceinline__ float from_f32<float>(float v) { return v; }
template <> __device__ __forceinline__ __nv_bfloat16 from_f32<__nv_bfloat16>(float v) {
    return __float2bfloat16_rn(v);
}

// N consecutive elements moved with one vector load or store.
template <typename T, int N> struct alignas(sizeof(T) * N) Pack {
    T v[N];
};

// How many elements of T fill 16 bytes: the widest single load.
template <typename T> struct Vec16 {
    static constexpr int N = 16 / sizeof(T);
};

// True when `p` can be read or written as `bytes`-byte vectors.
__device__ __forceinline__ bool aligned(const void *p, u64 bytes) {
    return (reinterpret_cast<u64>(p) % bytes) == 0;
}

// Sum over the 32 lanes of a warp; every lane gets the total.
__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
    for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(0xffffffffu, v, offset);
    return v;
}

// Sum over the whole block; every thread gets the total. blockDim.x must be a multiple of 32
// (at most 1024) and every thread of the block must call it. Safe to call repeatedly.
__device__ __forceinline__ float block_sum(float v) {
    __shared__ float partial[32];
    const int lane = threadIdx.x & 31;
    const int warp = threadIdx.x >> 5;
    const int warps = blockDim.x >> 5;
    v = warp_sum(v);
    if (lane == 0) partial[warp] = v;
    __syncthreads();
    if (warp == 0) {
        float t = lane < warps ? partial[lane] : 0.0f;
        t = warp_sum(t);
        if (lane == 0) partial[0] = t;
    }
    __syncthreads();
    const float total = partial[0];
    __syncthreads(); // the next call may overwrite `partial`
    return total;
}

} // namespace ft
