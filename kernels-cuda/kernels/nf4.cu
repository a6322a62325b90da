// ferrotune: NF4 (bitsandbytes) weights: dequantization and a fused GEMV for decoding.
//
// Format (DESIGN.md; engine/src/quant/nf4.rs): a tensor of n values, flattened row-major, in
// blocks of 64 with one absmax each; value e is code[nibble(e)] * absmax[e / 64], element 2j in
// the high nibble of byte j, 2j+1 in the low one. The absmax is either plain f32 or
// double-quantized: absmax[b] = map[codes[b]] * scales[b / 256] + offset (map: the 256-entry
// signed dynamic map, f32). Every product and sum of the decoding is rounded separately
// (__fmul_rn/__fadd_rn: no fused multiply-add), in the order of the CPU twin, so that
//
//   nf4_dequant_f32  is bit-identical to Nf4Weight::dequantize(), and
//   nf4_dequant_bf16 is that rounded to bf16 (nearest even).
//
//   nf4_gemv<m>_<dt>: y[i, r] = sum_c x[i, c] * W[r, c] for i < m <= 8, with W [rows, k] NF4 and
//   x [m, k], y [m, rows] in f32 or bf16. The packed weight is read once, 16 bytes (32 values)
//   at a time, one warp per output row, with the absmax decoded in the kernel; each 32-value
//   chunk lies in one 64-block, so its partial dot product is scaled by the absmax once. The
//   weights are used unrounded (f32), sums are f32. Needs k % 32 == 0 and 16-byte aligned
//   buffers for the fast path; any other k takes an element-by-element path.
//
// Measured (H200, bf16, m = 1, double quant): [4096, 4096] 16.1 us, [14336, 4096] 50.7 us, i.e.
// about 600 GB/s of NF4 bytes, 14% of copy bandwidth; m = 8 takes 48.6 us. The kernel is bound by
// on-chip traffic, not DRAM: the 256-entry float2 LUT is read with random indices (bank conflicts,
// about 8 wavefronts per LDS.64) and each lane's x reads are 64 bytes apart (16 L1 wavefronts per
// 16-byte load, times m). To do: a 16-entry f32 LUT (conflict-free) or PRMT-based decoding, and
// lanes interleaved over 8-byte weight loads so that x reads are contiguous across the warp.
//
// A plain absmax is passed as `plain` (then codes, scales, map are unused and may be null);
// `plain == nullptr` selects double quantization.
#include "common.cuh"

namespace {

// bitsandbytes' NF4 code values, with the digits of engine::quant::nf4::NF4_CODE.
__constant__ float kNf4[16] = {
    -1.0f,
    -0.6961928009986877f,
    -0.5250730514526367f,
    -0.39491748809814453f,
    -0.28444138169288635f,
    -0.18477343022823334f,
    -0.09105003625154495f,
    0.0f,
    0.07958029955625534f,
    0.16093020141124725f,
    0.24611230194568634f,
    0.33791524171829224f,
    0.44070982933044434f,
    0.5626170039176941f,
    0.7229568362236023f,
    1.0f,
};

typedef unsigned char u8;

// The absmax of block b, plain or double-quantized.
struct Absmax {
    const float *plain;
    const u8 *codes;
    const float *scales;
    float offset;
    const float *map;

    __device__ __forceinline__ float operator()(u64 b) const {
        if (plain) return __ldg(plain + b);
        const float q = __ldg(map + __ldg(codes + b));
        return __fadd_rn(__fmul_rn(q, __ldg(scales + (b >> 8))), offset);
    }
};

// lut[byte] = (code[byte >> 4], code[byte & 15]): the two values of a packed byte (element 2j
// first). lut[nibble].y is code[nibble]. Every thread of the block must call it.
__device__ __forceinline__ void fill_lut(float2 *lut) {
    for (int b = threadIdx.x; b < 256; b += blockDim.x) lut[b] = make_float2(kNf4[b >> 4], kNf4[b & 15]);
    __syncthreads();
}

__device__ __forceinline__ u64 thread_index() { return (u64)blockIdx.x * blockDim.x + threadIdx.x; }
__device__ __forceinline__ u64 thread_count() { return (u64)gridDim.x * blockDim.x; }

template <typename T>
__device__ void dequant(const u8 *__restrict__ packed, Absmax am, T *__restrict__ out, u64 n) {
    __shared__ float2 lut[256];
    fill_lut(lut);
    constexpr int N = ft::Vec16<T>::N; // outputs per 16-byte store
    typedef ft::Pack<T, N> P;
    u64 done = 0;
    if (ft::aligned(packed, 16) && ft::aligned(out, 16)) {
        const u64 chunks = n / 32; // 16 packed bytes, 32 values, all in block c / 2
        for (u64 c = thread_index(); c < chunks; c += thread_count()) {
            const uint4 w = reinterpret_cast<const uint4 *>(packed)[c];
            const float a = am(c >> 1);
            const unsigned words[4] = {w.x, w.y, w.z, w.w};
            float v[32];
#pragma unroll
            for (int q = 0; q < 4; ++q) {
#pragma unroll
                for (int b = 0; b < 4; ++b) {
                    const float2 p = lut[(words[q] >> (8 * b)) & 0xff];
                    v[8 * q + 2 * b] = __fmul_rn(p.x, a);
                    v[8 * q + 2 * b + 1] = __fmul_rn(p.y, a);
                }
            }
            P *o = reinterpret_cast<P *>(out + 32 * c);
#pragma unroll
            for (int s = 0; s < 32 / N; ++s) {
                P pk;
#pragma unroll
                for (int k = 0; k < N; ++k) pk.v[k] = ft::from_f32<T>(v[s * N + k]);
                o[s] = pk;
            }
        }
        done = chunks * 32;
    }
    for (u64 e = done + thread_index(); e < n; e += thread_count()) {
        const u8 byte = packed[e >> 1];
        const int nib = (e & 1) ? (byte & 15) : (byte >> 4);
        out[e] = ft::from_f32<T>(__fmul_rn(lut[nib].y, am(e >> 6)));
    }
}

// Eight x values of row i from element c on (16-byte aligned).
template <typename T> __device__ __forceinline__ void load8(const T *p, float (&v)[8]);
template <> __device__ __forceinline__ void load8<float>(const float *p, float (&v)[8]) {
    const float4 a = *reinterpret_cast<const float4 *>(p);
    const float4 b = *reinterpret_cast<const float4 *>(p + 4);
    v[0] = a.x, v[1] = a.y, v[2] = a.z, v[3] = a.w, v[4] = b.x, v[5] = b.y, v[6] = b.z, v[7] = b.w;
}
template <>
__device__ __forceinline__ void load8<__nv_bfloat16>(const __nv_bfloat16 *p, float (&v)[8]) {
    const uint4 a = *reinterpret_cast<const uint4 *>(p);
    const unsigned w[4] = {a.x, a.y, a.z, a.w};
#pragma unroll
    for (int q = 0; q < 4; ++q) {
        v[2 * q] = __uint_as_float(w[q] << 16);             // the lower-addressed element
        v[2 * q + 1] = __uint_as_float(w[q] & 0xffff0000u); // the higher one
    }
}

// Chunks of 16 packed bytes loaded per lane before any is used.
constexpr int UNROLL = 4;
// Warps (output rows) per block.
constexpr int GEMV_WARPS = 8;

template <typename T, int M>
__device__ __forceinline__ void gemv(const T *__restrict__ x, const u8 *__restrict__ packed, Absmax am,
                     T *__restrict__ y, int rows, int k, const float2 *__restrict__ lut) {
    const int lane = threadIdx.x & 31;
    const int row = blockIdx.x * GEMV_WARPS + (threadIdx.x >> 5);
    if (row >= rows) return;
    const u64 first = (u64)row * (u64)k; // flat index of the row's first element
    float acc[M];
#pragma unroll
    for (int i = 0; i < M; ++i) acc[i] = 0.0f;

    if (k % 32 == 0 && ft::aligned(packed, 16) && ft::aligned(x, 16)) {
        const int chunks = k / 32;
        const uint4 *wrow = reinterpret_cast<const uint4 *>(packed + first / 2);
        for (int c0 = lane; c0 < chunks; c0 += 32 * UNROLL) {
            uint4 w[UNROLL];
            float a[UNROLL];
#pragma unroll
            for (int u = 0; u < UNROLL; ++u) {
                const int c = c0 + 32 * u;
                if (c < chunks) {
                    w[u] = __ldcs(wrow + c); // streamed: read once, keep x in cache
                    a[u] = am((first + 32 * (u64)c) >> 6);
                }
            }
#pragma unroll
            for (int u = 0; u < UNROLL; ++u) {
                const int c = c0 + 32 * u;
                if (c >= chunks) break;
                const unsigned words[4] = {w[u].x, w[u].y, w[u].z, w[u].w};
                float part[M];
#pragma unroll
                for (int i = 0; i < M; ++i) part[i] = 0.0f;
#pragma unroll
                for (int q = 0; q < 4; ++q) {
                    float wv[8];
#pragma unroll
                    for (int b = 0; b < 4; ++b) {
                        const float2 p = lut[(words[q] >> (8 * b)) & 0xff];
                        wv[2 * b] = p.x;
                        wv[2 * b + 1] = p.y;
                    }
#pragma unroll
                    for (int i = 0; i < M; ++i) {
                        float xv[8];
                        load8<T>(x + (u64)i * k + 32 * c + 8 * q, xv);
#pragma unroll
                        for (int e = 0; e < 8; ++e) part[i] = fmaf(wv[e], xv[e], part[i]);
                    }
                }
#pragma unroll
                for (int i = 0; i < M; ++i) acc[i] = fmaf(a[u], part[i], acc[i]);
            }
        }
    } else {
        for (int c = lane; c < k; c += 32) {
            const u64 e = first + c;
            const u8 byte = packed[e >> 1];
            const int nib = (e & 1) ? (byte & 15) : (byte >> 4);
            const float wv = __fmul_rn(lut[nib].y, am(e >> 6));
#pragma unroll
            for (int i = 0; i < M; ++i) acc[i] = fmaf(wv, ft::to_f32(x[(u64)i * k + c]), acc[i]);
        }
    }
#pragma unroll
    for (int i = 0; i < M; ++i) {
        const float s = ft::warp_sum(acc[i]);
        if (lane == 0) y[(u64)i * rows + row] = ft::from_f32<T>(s);
    }
}

} // namespace

// packed: [ceil(n/2)]; plain: [ceil(n/64)] or null; codes: [ceil(n/64)]; scales:
// [ceil(n/64/256)]; map: [256]; out: [n]. Any grid and block size.
extern "C" __global__ void nf4_dequant_f32(const u8 *packed, const float *plain, const u8 *codes,
                                           const float *scales, float offset, const float *map,
                                           float *out, u64 n) {
    dequant<float>(packed, Absmax{plain, codes, scales, offset, map}, out, n);
}

extern "C" __global__ void nf4_dequant_bf16(const u8 *packed, const float *plain, const u8 *codes,
                                            const float *scales, float offset, const float *map,
                                            __nv_bfloat16 *out, u64 n) {
    dequant<__nv_bfloat16>(packed, Absmax{plain, codes, scales, offset, map}, out, n);
}

// nf4_gemv<m>_<dt>, m = 1..8: x: [m, k]; W: [rows, k] as above; y: [m, rows]. One kernel per m,
// so that each gets the registers it needs (m = 1 the fewest, for occupancy).
// Block: 32 * GEMV_WARPS threads; grid: ceil(rows / GEMV_WARPS).
template <typename T, int M>
__device__ __forceinline__ void gemv_entry(const T *x, const u8 *packed, const float *plain,
                                           const u8 *codes, const float *scales, float offset,
                                           const float *map, T *y, int rows, int k) {
    __shared__ float2 lut[256];
    fill_lut(lut);
    gemv<T, M>(x, packed, Absmax{plain, codes, scales, offset, map}, y, rows, k, lut);
}

extern "C" __global__ void nf4_gemv1_f32(const float *x, const u8 *packed, const float *plain,
    const u8 *codes, const float *scales, float offset, const float *map, float *y, int rows, int k) {
    gemv_entry<float, 1>(x, packed, plain, codes, scales, offset, map, y, rows, k);
}

extern "C" __global__ void nf4_gemv2_f32(const float *x, const u8 *packed, const float *plain,
    const u8 *codes, const float *scales, float offset, const float *map, float *y, int rows, int k) {
    gemv_entry<float, 2>(x, packed, plain, codes, scales, offset, map, y, rows, k);
}

extern "C" __global__ void nf4_gemv3_f32(const float *x, const u8 *packed, const float *plain,
    const u8 *codes, const float *scales, float offset, const float *map, float *y, int rows, int k) {
    gemv_entry<float, 3>(x, packed, plain, codes, scales, offset, map, y, rows, k);
}

extern "C" __global__ void nf4_gemv4_f32(const float *x, const u8 *packed, const float *plain,
    const u8 *codes, const float *scales, float offset, const float *map, float *y, int rows, int k) {
    gemv_entry<float, 4>(x, packed, plain, codes, scales, offset, map, y, rows, k);
}

extern "C" __global__ void nf4_gemv5_f32(const float *x, const u8 *packed, const float *plain,
    const u8 *codes, const float *scales, float offset, const float *map, float *y, int rows, int k) {
    gemv_entry<float, 5>(x, packed, plain, codes, scales, offset, map, y, rows, k);
}

extern "C" __global__ void nf4_gemv6_f32(const float *x, const u8 *packed, const float *plain,
    const u8 *codes, const float *scales, float offset, const float *map, float *y, int rows, int k) {
    gemv_entry<float, 6>(x, packed, plain, codes, scales, offset, map, y, rows, k);
}

extern "C" __global__ void nf4_gemv7_f32(const float *x, const u8 *packed, const float *plain,
    const u8 *codes, const float *scales, float offset, const float *map, float *y, int rows, int k) {
    gemv_entry<float, 7>(x, packed, plain, codes, scales, offset, map, y, rows, k);
}

extern "C" __global__ void nf4_gemv8_f32(const float *x, const u8 *packed, const float *plain,
    const u8 *codes, const float *scales, float offset, const float *map, float *y, int rows, int k) {
    gemv_entry<float, 8>(x, packed, plain, codes, scales, offset, map, y, rows, k);
}

extern "C" __global__ void nf4_gemv1_bf16(const __nv_bfloat16 *x, const u8 *packed, const float *plain,
    const u8 *codes, const float *scales, float offset, const float *map, __nv_bfloat16 *y, int rows, int k) {
    gemv_entry<__nv_bfloat16, 1>(x, packed, plain, codes, scales, offset, map, y, rows, k);
}

extern "C" __global__ void nf4_gemv2_bf16(const __nv_bfloat16 *x, const u8 *packed, const float *plain,
    const u8 *codes, const float *scales, float offset, const float *map, __nv_bfloat16 *y, int rows, int k) {
    gemv_entry<__nv_bfloat16, 2>(x, packed, plain, codes, scales, offset, map, y, rows, k);
}

extern "C" __global__ void nf4_gemv3_bf16(const __nv_bfloat16 *x, const u8 *packed, const float *plain,
    const u8 *codes, const float *scales, float offset, const float *map, __nv_bfloat16 *y, int rows, int k) {
    gemv_entry<__nv_bfloat16, 3>(x, packed, plain, codes, scales, offset, map, y, rows, k);
}

extern "C" __global__ void nf4_gemv4_bf16(const __nv_bfloat16 *x, const u8 *packed, const float *plain,
    const u8 *codes, const float *scales, float offset, const float *map, __nv_bfloat16 *y, int rows, int k) {
    gemv_entry<__nv_bfloat16, 4>(x, packed, plain, codes, scales, offset, map, y, rows, k);
}

extern "C" __global__ void nf4_gemv5_bf16(const __nv_bfloat16 *x, const u8 *packed, const float *plain,
    const u8 *codes, const float *scales, float offset, const float *map, __nv_bfloat16 *y, int rows, int k) {
    gemv_entry<__nv_bfloat16, 5>(x, packed, plain, codes, scales, offset, map, y, rows, k);
}

extern "C" __global__ void nf4_gemv6_bf16(const __nv_bfloat16 *x, const u8 *packed, const float *plain,
    const u8 *codes, const float *scales, float offset, const float *map, __nv_bfloat16 *y, int rows, int k) {
    gemv_entry<__nv_bfloat16, 6>(x, packed, plain, codes, scales, offset, map, y, rows, k);
}

extern "C" __global__ void nf4_gemv7_bf16(const __nv_bfloat16 *x, const u8 *packed, const float *plain,
    const u8 *codes, const float *scales, float offset, const float *map, __nv_bfloat16 *y, int rows, int k) {
    gemv_entry<__nv_bfloat16, 7>(x, packed, plain, codes, scales, offset, map, y, rows, k);
}

extern "C" __global__ void nf4_gemv8_bf16(const __nv_bfloat16 *x, const u8 *packed, const float *plain,
    const u8 *codes, const float *scales, float offset, const float *map, __nv_bfloat16 *y, int rows, int k) {
    gemv_entry<__nv_bfloat16, 8>(x, packed, plain, codes, scales, offset, map, y, rows, k);
}
