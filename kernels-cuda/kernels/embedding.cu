// ferrotune: embedding lookup by u32 token id, and its scatter-add backward.
//
//   forward:  out[i, :] = table[ids[i], :]                      table: [vocab, h], out: [n, h]
//   backward: dtable[ids[i], :] += dout[i, :]   (f32 atomicAdd)  dtable: [vocab, h] f32
//
// The backward accumulates into dtable as it is (zero it first for a fresh gradient); repeated
// ids add up, in an unspecified order. An id >= vocab is never dereferenced: the forward fills
// its output row with NaN, the backward skips it. Storage of table/out/dout f32 or bf16.
// One block per id (grid-stride over ids), threads stride over h, 16-byte packs when h is a
// multiple of the pack and the pointers allow.
#include "common.cuh"

namespace {

template <typename T>
__device__ void embedding_fwd(const unsigned *__restrict__ ids, const T *__restrict__ table,
                              T *__restrict__ out, u64 n, int h, unsigned vocab) {
    constexpr int N = ft::Vec16<T>::N;
    typedef ft::Pack<T, N> P;
    const bool vec = (h % N == 0) && ft::aligned(table, 16) && ft::aligned(out, 16);
    for (u64 i = blockIdx.x; i < n; i += gridDim.x) {
        const unsigned id = ids[i];
        T *o = out + i * (u64)h;
        if (id >= vocab) {
            const T nan = ft::from_f32<T>(__int_as_float(0x7fffffff));
            for (int j = threadIdx.x; j < h; j += blockDim.x) o[j] = nan;
            continue;
        }
        const T *src = table + (u64)id * h;
        if (vec) {
            for (int j = threadIdx.x * N; j < h; j += blockDim.x * N)
                *reinterpret_cast<P *>(o + j) = *reinterpret_cast<const P *>(src + j);
        } else {
            for (int j = threadIdx.x; j < h; j += blockDim.x) o[j] = src[j];
        }
    }
}

template <typename T>
__device__ void embedding_bwd(const unsigned *__restrict__ ids, const T *__restrict__ dout,
                              float *__restrict__ dtable, u64 n, int h, unsigned vocab) {
    constexpr int N = ft::Vec16<T>::N;
    typedef ft::Pack<T, N> P;
    const bool vec = (h % N == 0) && ft::aligned(dout, 16);
    for (u64 i = blockIdx.x; i < n; i += gridDim.x) {
        const unsigned id = ids[i];
        if (id >= vocab) continue;
        const T *g = dout + i * (u64)h;
        float *d = dtable + (u64)id * h;
        if (vec) {
            for (int j = threadIdx.x * N; j < h; j += blockDim.x * N) {
                const P p = *reinterpret_cast<const P *>(g + j);
#pragma unroll
                for (int k = 0; k < N; ++k) atomicAdd(d + j + k, ft::to_f32(p.v[k]));
            }
        } else {
            for (int j = threadIdx.x; j < h; j += blockDim.x) atomicAdd(d + j, ft::to_f32(g[j]));
        }
    }
}

} // namespace

// ids: [n]; table: [vocab, h]; out: [n, h].
extern "C" __global__ void embedding_fwd_f32(const unsigned *ids, const float *table, float *out,
                                             u64 n, int h, unsigned vocab) {
    embedding_fwd<float>(ids, table, out, n, h, vocab);
}

extern "C" __global__ void embedding_fwd_bf16(const unsigned *ids, const __nv_bfloat16 *table,
                                              __nv_bfloat16 *out, u64 n, int h, unsigned vocab) {
    embedding_fwd<__nv_bfloat16>(ids, table, out, n, h, vocab);
}

// ids: [n]; dout: [n, h]; dtable: [vocab, h] f32, accumulated into.
extern "C" __global__ void embedding_bwd_f32(const unsigned *ids, const float *dout, float *dtable,
                                             u64 n, int h, unsigned vocab) {
    embedding_bwd<float>(ids, dout, dtable, n, h, vocab);
}

extern "C" __global__ void embedding_bwd_bf16(const unsigned *ids, const __nv_bfloat16 *dout,
                                              float *dtable, u64 n, int h, unsigned vocab) {
    embedding_bwd<__nv_bfloat16>(ids, dout, dtable, n, h, vocab);
}
