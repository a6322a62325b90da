// ferrotune: reductions over flat buffers.
//
// sum_squares_<dtype>: each block sums x[i]^2 over a grid-stride slice of the buffer in f64 and
// writes one partial per block; the host adds the partials (also in f64). With a fixed grid the
// summation order is fixed, so the result is the same on every run (gradient norms).
#include "common.cuh"

namespace {

__device__ __forceinline__ double warp_sum_f64(double v) {
#pragma unroll
    for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(0xffffffffu, v, offset);
    return v;
}

template <typename T> __device__ void sum_squares(const T *__restrict__ x, u64 n, double *__restrict__ partials) {
    double acc = 0.0;
    const u64 stride = (u64)gridDim.x * blockDim.x;
    for (u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
        const double v = ft::to_f32(x[i]);
        acc += v * v;
    }
    __shared__ double partial[32];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
    acc = warp_sum_f64(acc);
    if (lane == 0) partial[warp] = acc;
    __syncthreads();
    if (warp == 0) {
        double t = lane < warps ? partial[lane] : 0.0;
        t = warp_sum_f64(t);
        if (lane == 0) partials[blockIdx.x] = t;
    }
}

} // namespace

extern "C" __global__ void sum_squares_f32(const float *x, u64 n, double *partials) { sum_squares(x, n, partials); }
extern "C" __global__ void sum_squares_bf16(const __nv_bfloat16 *x, u64 n, double *partials) {
    sum_squares(x, n, partials);
}
