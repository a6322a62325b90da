// ferrotune: rotary position embedding, Hugging Face "rotate half" layout, in place.
//
// x holds `rows` rows of head_dim = 2*half elements; row r belongs to token
// tok = (r / heads_inner) % seq, which sits at position p = pos[tok]. With c = cos[p, j] and
// s = sign * sin[p, j] (tables [max_pos, half], f32):
//
//   x[r, j]        <- x[r, j] * c - x[r, j + half] * s
//   x[r, j + half] <- x[r, j + half] * c + x[r, j] * s          for j < half
//
// sign = +1 is the forward; the backward is the same rotation with sin negated (sign = -1),
// applied in place to the incoming gradient (DESIGN.md, convention 5). Layouts:
// [b, h, t, d] has heads_inner = 1, [b, t, h, d] has heads_inner = h.
//
// A position >= max_pos fills its row with NaN (the tables are never read out of bounds and the
// error shows). Storage f32 or bf16, arithmetic f32. Grid-stride over (row, group of pairs);
// pairs are moved as 16-byte packs when half is a multiple of the pack and the pointers allow,
// one at a time otherwise. Any grid and block size work.
#include "common.cuh"

namespace {

// One 16-byte pack of N pairs starting at j: x[j..j+N] with x[half+j..half+j+N].
template <typename T, int N>
__device__ __forceinline__ void rotate_pack(T *__restrict__ xr, const float *__restrict__ cr,
                                            const float *__restrict__ sr, int half, int j,
                                            float sign) {
    typedef ft::Pack<T, N> P;
    typedef ft::Pack<float, 4> F; // N is a multiple of 4: the tables move 16 bytes at a time
    P a = *reinterpret_cast<const P *>(xr + j);
    P b = *reinterpret_cast<const P *>(xr + half + j);
    float c_[N], s_[N];
#pragma unroll
    for (int q = 0; q < N; q += 4) {
        const F fc = *reinterpret_cast<const F *>(cr + j + q);
        const F fs = *reinterpret_cast<const F *>(sr + j + q);
#pragma unroll
        for (int k = 0; k < 4; ++k) {
            c_[q + k] = fc.v[k];
            s_[q + k] = fs.v[k];
        }
    }
#pragma unroll
    for (int k = 0; k < N; ++k) {
        const float c = c_[k];
        const float s = sign * s_[k];
        const float x1 = ft::to_f32(a.v[k]);
        const float x2 = ft::to_f32(b.v[k]);
        a.v[k] = ft::from_f32<T>(x1 * c - x2 * s);
        b.v[k] = ft::from_f32<T>(x2 * c + x1 * s);
    }
    *reinterpret_cast<P *>(xr + j) = a;
    *reinterpret_cast<P *>(xr + half + j) = b;
}

template <typename T>
__device__ void rope(T *__restrict__ x, const float *__restrict__ cos_t,
                     const float *__restrict__ sin_t, const unsigned *__restrict__ pos, u64 rows,
                     int seq, int heads_inner, int half, int max_pos, float sign) {
    constexpr int N = ft::Vec16<T>::N;
    const bool vec = (half % N == 0) && ft::aligned(x, 16) && ft::aligned(cos_t, 16) &&
                     ft::aligned(sin_t, 16);
    const int per_row = vec ? half / N : half; // work items per row
    const int step = vec ? N : 1;
    const u64 items = rows * (u64)per_row;
    const u64 stride = (u64)gridDim.x * blockDim.x;
    for (u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x; i < items; i += stride) {
        const u64 row = i / per_row;
        const int j = (int)(i - row * per_row) * step;
        T *xr = x + row * (u64)(2 * half);
        const int tok = (int)((row / (u64)heads_inner) % (u64)seq);
        const unsigned p = pos[tok];
        if (p >= (unsigned)max_pos) {
            const T nan = ft::from_f32<T>(__int_as_float(0x7fffffff));
            for (int k = 0; k < step; ++k) {
                xr[j + k] = nan;
                xr[half + j + k] = nan;
            }
            continue;
        }
        const float *cr = cos_t + (u64)p * half;
        const float *sr = sin_t + (u64)p * half;
        if (vec) {
            rotate_pack<T, N>(xr, cr, sr, half, j, sign);
        } else {
            const float c = cr[j];
            const float s = sign * sr[j];
            const float x1 = ft::to_f32(xr[j]);
            const float x2 = ft::to_f32(xr[half + j]);
            xr[j] = ft::from_f32<T>(x1 * c - x2 * s);
            xr[half + j] = ft::from_f32<T>(x2 * c + x1 * s);
        }
    }
}

} // namespace

// x: [rows, 2*half] rotated in place; cos, sin: [max_pos, half]; pos: [seq].
extern "C" __global__ void rope_fwd_f32(float *x, const float *cos_t, const float *sin_t,
                                        const unsigned *pos, u64 rows, int seq, int heads_inner,
                                        int half, int max_pos) {
    rope<float>(x, cos_t, sin_t, pos, rows, seq, heads_inner, half, max_pos, 1.0f);
}

extern "C" __global__ void rope_fwd_bf16(__nv_bfloat16 *x, const float *cos_t, const float *sin_t,
                                         const unsigned *pos, u64 rows, int seq, int heads_inner,
                                         int half, int max_pos) {
    rope<__nv_bfloat16>(x, cos_t, sin_t, pos, rows, seq, heads_inner, half, max_pos, 1.0f);
}

// The backward: the same rotation with sin negated, on the gradient in place.
extern "C" __global__ void rope_bwd_f32(float *x, const float *cos_t, const float *sin_t,
                                        const unsigned *pos, u64 rows, int seq, int heads_inner,
                                        int half, int max_pos) {
    rope<float>(x, cos_t, sin_t, pos, rows, seq, heads_inner, half, max_pos, -1.0f);
}

extern "C" __global__ void rope_bwd_bf16(__nv_bfloat16 *x, const float *cos_t, const float *sin_t,
                                         const unsigned *pos, u64 rows, int seq, int heads_inner,
                                         int half, int max_pos) {
    rope<__nv_bfloat16>(x, cos_t, sin_t, pos, rows, seq, heads_inner, half, max_pos, -1.0f);
}
