// ferrotune: strided copy between two views of the same shape (rank <= 8).
//
//   copy_strided_b16 / _b32: dst[dst_offset + sum idx_k * dst_strides[k]]
//                          = src[src_offset + sum idx_k * src_strides[k]]
//
// Elements are moved as raw 2- or 4-byte words, so one kernel serves every dtype of that
// size. It makes a transposed or narrowed view contiguous, and writes a tensor into a slice of
// another (KV caches, gradient assembly). Grid-stride loop; any grid and block size work.

typedef unsigned long long u64;

struct Strided {
    u64 n;
    u64 shape[8];
    u64 src_strides[8];
    u64 dst_strides[8];
    u64 src_offset;
    u64 dst_offset;
    int rank;
};

template <typename T>
__device__ void copy(const T *__restrict__ src, T *__restrict__ dst, const Strided &p) {
    const u64 step = (u64)gridDim.x * blockDim.x;
    for (u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x; i < p.n; i += step) {
        u64 rem = i, s = p.src_offset, d = p.dst_offset;
        for (int k = p.rank - 1; k >= 0; --k) {
            const u64 idx = rem % p.shape[k];
            rem /= p.shape[k];
            s += idx * p.src_strides[k];
            d += idx * p.dst_strides[k];
        }
        dst[d] = src[s];
    }
}

extern "C" __global__ void copy_strided_b16(const unsigned short *src, unsigned short *dst, Strided p) {
    copy(src, dst, p);
}

extern "C" __global__ void copy_strided_b32(const unsigned int *src, unsigned int *dst, Strided p) {
    copy(src, dst, p);
}
