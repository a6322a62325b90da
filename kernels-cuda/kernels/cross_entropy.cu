// ferrotune: cross-entropy of a chunk of logits [rows, vocab] against i32 labels, row by row,
// so that the LM head + loss can be chunked over tokens and the [tokens x vocab] f32 logits are
// never held (DESIGN.md, convention 5).
//
//   lse[r]  = log(sum_j exp(x[r, j]))                      (f32; online max + rescaled sum)
//   loss[r] = lse[r] - x[r, labels[r]]
//   dx[r,j] = (exp(x[r, j] - lse[r]) - [j == labels[r]]) * scale      written over x, in place
//
// The mean over non-ignored labels is the caller's: scale = dloss / count, sum(loss) / count.
// A label of -100 is ignored: loss 0, lse 0 (not computed), gradient row 0, and its logits are
// never read. Any other label outside 0..vocab gives loss NaN and a NaN gradient row.
//
//   cross_entropy_fwd_<dt>:   loss and lse per row (logits read once)
//   cross_entropy_bwd_<dt>:   the gradient in place from the saved lse (read once, written once)
//   cross_entropy_fused_<dt>: loss, lse and the gradient in place in one launch (read twice,
//                             the second time mostly from L2, written once)
//
// Storage f32 or bf16, every sum and exp in f32. One block per row; blockDim.x a multiple of 32,
// at most 1024; any vocab >= 1 (128256 and 49152 included). Rows whose start is 16-byte aligned
// and whose vocab is a multiple of the pack move as 16-byte packs, others element by element.
#include "common.cuh"

namespace {

constexpr int IGNORE_INDEX = -100;

__device__ __forceinline__ float neg_inf() { return __int_as_float(0xff800000); }
__device__ __forceinline__ float nan_f() { return __int_as_float(0x7fffffff); }

// Running (max, sum of exp(x - max)) merged with another; -inf maxima contribute nothing.
__device__ __forceinline__ void merge(float &m, float &s, float m2, float s2) {
    const float mm = fmaxf(m, m2);
    if (mm == neg_inf()) {
        m = mm;
        s = 0.0f;
        return;
    }
    s = s * expf(m - mm) + s2 * expf(m2 - mm);
    m = mm;
}

// Adds n values to the running (m, s).
template <int N>
__device__ __forceinline__ void accumulate(float &m, float &s, const float (&v)[N]) {
    float mx = v[0];
#pragma unroll
    for (int k = 1; k < N; ++k) mx = fmaxf(mx, v[k]);
    if (mx > m) {
        s = (m == neg_inf()) ? 0.0f : s * expf(m - mx);
        m = mx;
    }
    if (m == neg_inf()) return; // every value so far is -inf: nothing to add
    float t = 0.0f;
#pragma unroll
    for (int k = 0; k < N; ++k) t += expf(v[k] - m);
    s += t;
}

// log(sum(exp(row))) over the block; every thread gets it. All threads must call it.
template <typename T>
__device__ float row_lse(const T *__restrict__ row, int vocab, bool vec) {
    constexpr int N = ft::Vec16<T>::N;
    typedef ft::Pack<T, N> P;
    float m = neg_inf(), s = 0.0f;
    if (vec) {
        for (int j = threadIdx.x * N; j < vocab; j += blockDim.x * N) {
            const P p = *reinterpret_cast<const P *>(row + j);
            float v[N];
#pragma unroll
            for (int k = 0; k < N; ++k) v[k] = ft::to_f32(p.v[k]);
            accumulate<N>(m, s, v);
        }
    } else {
        for (int j = threadIdx.x; j < vocab; j += blockDim.x) {
            const float v[1] = {ft::to_f32(row[j])};
            accumulate<1>(m, s, v);
        }
    }
    // Warp, then block.
#pragma unroll
    for (int offset = 16; offset > 0; offset >>= 1) {
        const float m2 = __shfl_xor_sync(0xffffffffu, m, offset);
        const float s2 = __shfl_xor_sync(0xffffffffu, s, offset);
        merge(m, s, m2, s2);
    }
    __shared__ float pm[32], ps[32];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
    if (lane == 0) {
        pm[warp] = m;
        ps[warp] = s;
    }
    __syncthreads();
    if (warp == 0) {
        m = lane < warps ? pm[lane] : neg_inf();
        s = lane < warps ? ps[lane] : 0.0f;
#pragma unroll
        for (int offset = 16; offset > 0; offset >>= 1) {
            const float m2 = __shfl_xor_sync(0xffffffffu, m, offset);
            const float s2 = __shfl_xor_sync(0xffffffffu, s, offset);
            merge(m, s, m2, s2);
        }
        if (lane == 0) {
            pm[0] = m;
            ps[0] = s;
        }
    }
    __syncthreads();
    const float lse = pm[0] + logf(ps[0]);
    __syncthreads(); // a later call may overwrite pm, ps
    return lse;
}

// row <- (exp(row - lse) - onehot(label)) * scale.
template <typename T>
__device__ void row_grad(T *__restrict__ row, int vocab, bool vec, float lse, int label,
                         float scale) {
    constexpr int N = ft::Vec16<T>::N;
    typedef ft::Pack<T, N> P;
    if (vec) {
        for (int j = threadIdx.x * N; j < vocab; j += blockDim.x * N) {
            P p = *reinterpret_cast<const P *>(row + j);
#pragma unroll
            for (int k = 0; k < N; ++k) {
                const float sm = expf(ft::to_f32(p.v[k]) - lse);
                p.v[k] = ft::from_f32<T>((sm - (j + k == label ? 1.0f : 0.0f)) * scale);
            }
            *reinterpret_cast<P *>(row + j) = p;
        }
    } else {
        for (int j = threadIdx.x; j < vocab; j += blockDim.x) {
            const float sm = expf(ft::to_f32(row[j]) - lse);
            row[j] = ft::from_f32<T>((sm - (j == label ? 1.0f : 0.0f)) * scale);
        }
    }
}

// row <- value everywhere.
template <typename T>
__device__ void row_fill(T *__restrict__ row, int vocab, bool vec, float value) {
    constexpr int N = ft::Vec16<T>::N;
    typedef ft::Pack<T, N> P;
    const T v = ft::from_f32<T>(value);
    if (vec) {
        P p;
#pragma unroll
        for (int k = 0; k < N; ++k) p.v[k] = v;
        for (int j = threadIdx.x * N; j < vocab; j += blockDim.x * N)
            *reinterpret_cast<P *>(row + j) = p;
    } else {
        for (int j = threadIdx.x; j < vocab; j += blockDim.x) row[j] = v;
    }
}

template <typename T> __device__ __forceinline__ bool row_vec(const T *row, int vocab) {
    return (vocab % ft::Vec16<T>::N == 0) && ft::aligned(row, 16);
}

__device__ __forceinline__ bool label_ok(int label, int vocab) {
    return label >= 0 && label < vocab;
}

template <typename T>
__device__ void ce_fwd(const T *__restrict__ logits, const int *__restrict__ labels,
                       float *__restrict__ loss, float *__restrict__ lse_out, int vocab) {
    const u64 r = blockIdx.x;
    const int label = labels[r];
    if (label == IGNORE_INDEX) {
        if (threadIdx.x == 0) {
            loss[r] = 0.0f;
            lse_out[r] = 0.0f;
        }
        return;
    }
    const T *row = logits + r * (u64)vocab;
    const float lse = row_lse<T>(row, vocab, row_vec(row, vocab));
    if (threadIdx.x == 0) {
        lse_out[r] = lse;
        loss[r] = label_ok(label, vocab) ? lse - ft::to_f32(row[label]) : nan_f();
    }
}

template <typename T>
__device__ void ce_bwd(T *__restrict__ logits, const int *__restrict__ labels,
                       const float *__restrict__ lse_in, float scale, int vocab) {
    const u64 r = blockIdx.x;
    const int label = labels[r];
    T *row = logits + r * (u64)vocab;
    const bool vec = row_vec(row, vocab);
    if (label == IGNORE_INDEX)
        row_fill<T>(row, vocab, vec, 0.0f);
    else if (!label_ok(label, vocab))
        row_fill<T>(row, vocab, vec, nan_f());
    else
        row_grad<T>(row, vocab, vec, lse_in[r], label, scale);
}

template <typename T>
__device__ void ce_fused(T *__restrict__ logits, const int *__restrict__ labels,
                         float *__restrict__ loss, float *__restrict__ lse_out, float scale,
                         int vocab) {
    const u64 r = blockIdx.x;
    const int label = labels[r];
    T *row = logits + r * (u64)vocab;
    const bool vec = row_vec(row, vocab);
    if (label == IGNORE_INDEX) {
        if (threadIdx.x == 0) {
            loss[r] = 0.0f;
            lse_out[r] = 0.0f;
        }
        row_fill<T>(row, vocab, vec, 0.0f);
        return;
    }
    const float lse = row_lse<T>(row, vocab, vec);
    const bool ok = label_ok(label, vocab);
    if (threadIdx.x == 0) {
        lse_out[r] = lse;
        loss[r] = ok ? lse - ft::to_f32(row[label]) : nan_f();
    }
    // The label's logit is read above before any thread overwrites it.
    __syncthreads();
    if (ok)
        row_grad<T>(row, vocab, vec, lse, label, scale);
    else
        row_fill<T>(row, vocab, vec, nan_f());
}

} // namespace

// logits: [rows, vocab]; labels, loss, lse: [rows]. Grid: (rows, 1, 1).
extern "C" __global__ void cross_entropy_fwd_f32(const float *logits, const int *labels,
                                                 float *loss, float *lse, int vocab) {
    ce_fwd<float>(logits, labels, loss, lse, vocab);
}

extern "C" __global__ void cross_entropy_fwd_bf16(const __nv_bfloat16 *logits, const int *labels,
                                                  float *loss, float *lse, int vocab) {
    ce_fwd<__nv_bfloat16>(logits, labels, loss, lse, vocab);
}

// logits: [rows, vocab] overwritten with the gradient; labels, lse: [rows]. Grid: (rows, 1, 1).
extern "C" __global__ void cross_entropy_bwd_f32(float *logits, const int *labels,
                                                 const float *lse, float scale, int vocab) {
    ce_bwd<float>(logits, labels, lse, scale, vocab);
}

extern "C" __global__ void cross_entropy_bwd_bf16(__nv_bfloat16 *logits, const int *labels,
                                                  const float *lse, float scale, int vocab) {
    ce_bwd<__nv_bfloat16>(logits, labels, lse, scale, vocab);
}

// Both at once: loss and lse written, logits overwritten with the gradient. Grid: (rows, 1, 1).
extern "C" __global__ void cross_entropy_fused_f32(float *logits, const int *labels, float *loss,
                                                   float *lse, float scale, int vocab) {
    ce_fused<float>(logits, labels, loss, lse, scale, vocab);
}

extern "C" __global__ void cross_entropy_fused_bf16(__nv_bfloat16 *logits, const int *labels,
                                                    float *loss, float *lse, float scale,
                                                    int vocab) {
    ce_fused<__nv_bfloat16>(logits, labels, loss, lse, scale, vocab);
}
