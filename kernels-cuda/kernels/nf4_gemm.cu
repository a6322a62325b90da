// ferrotune: tiled GEMM with an NF4 weight decoded on the fly (prefill and training).
//
//   forward:  c[m, rows] = a[m, cols] @ W^T   (a projection: x @ W^T)
//   backward: c[m, cols] = a[m, rows] @ W     (its input gradient: g @ W)
//
// W [rows, cols] is NF4 (nf4.cuh: 64-value blocks along a row, element 2j in the high nibble of
// byte j); a and c are bf16, row-major; sums are f32 on the tensor cores (mma.sync m16n8k16).
// Each weight is decoded exactly as nf4_dequant_bf16 does (code * absmax rounded once in f32,
// then to bf16), so the result is that of dequantizing to bf16 and multiplying, up to the order
// of the f32 sums. The weight is read once per block row of a (4 bits a value instead of the
// 16 + 16 + 4 of writing and reading a bf16 scratch): the win is for small and medium m, where
// the scratch traffic dominates; for large m cuBLAS on the scratch is faster (the launcher's
// caller picks per shape, benches/RESULTS.md has the crossover).
//
// Tiles: a block computes BM x 64 outputs (BM = 64 with 4 warps or 128 with 8 warps, each warp
// 32 x 32) over 64-wide steps of the contraction. Per step the a tile is copied and the 64 x 64
// weight tile (one absmax block per weight row) is decoded into shared memory, both in W's own
// layout: the forward reads B fragments with ldmatrix, the backward with ldmatrix.trans. The
// next step's global loads are issued before the current step's products (registers), and
// shared memory is double-buffered, so one barrier per step suffices.
//
// Split-k: blockIdx.z takes `tiles_per_split` contraction steps; with more than one split every
// split writes f32 partial sums to `partial` [splits, m, n_out] and nf4_gemm_reduce_bf16 adds
// them in split order (deterministic); with one split the block writes c directly.
//
// Requirements (checked by the launcher): cols % 64 == 0, rows % 8 == 0, a and c 16-byte
// aligned. Rows of W and of a beyond the matrix read as zero.
#include "common.cuh"
#include "mma.cuh"
#include "nf4.cuh"

namespace {

typedef __nv_bfloat16 bf16;
typedef unsigned int u32;
typedef unsigned char u8;

constexpr int BN = 64;     // outputs per block along n
constexpr int BK = 64;     // contraction per step: one absmax block of a weight row
constexpr int LDS = BK + 8; // shared row stride (bf16): 144 bytes, ldmatrix without bank conflicts

template <int BM> struct Tiles {
    static constexpr int WARPS = BM / 32 * 2;
    static constexpr int THREADS = WARPS * 32;
    static constexpr int A_CHUNKS = BM * BK / 8 / THREADS; // 16-byte chunks of a per thread
    static constexpr int W_WORDS = BN * BK / 8 / THREADS;  // packed 4-byte words per thread
    static constexpr int A_ELEMS = BM * LDS;
    static constexpr int W_ELEMS = 64 * LDS;
};

// One contraction step's global data, held in registers until it is stored to shared memory.
template <int BM> struct Stage {
    uint4 a[Tiles<BM>::A_CHUNKS];
    u32 w[Tiles<BM>::W_WORDS];
    nf4::RawAbsmax am[Tiles<BM>::W_WORDS];
};

template <int BM, bool BWD>
__device__ __forceinline__ void load_stage(Stage<BM> &st, const bf16 *__restrict__ a, const u32 *__restrict__ packed,
                                           const nf4::Absmax &am, int m, int rows, int cols, int kdim, int m0,
                                           int n0, int kt) {
    using T = Tiles<BM>;
    const int k0 = kt * BK;
#pragma unroll
    for (int i = 0; i < T::A_CHUNKS; ++i) {
        const int ci = threadIdx.x + i * T::THREADS;
        const int r = m0 + ci / 8, col = k0 + (ci % 8) * 8;
        st.a[i] = make_uint4(0u, 0u, 0u, 0u);
        if (r < m && col < kdim) st.a[i] = *reinterpret_cast<const uint4 *>(a + (u64)r * kdim + col);
    }
    // The weight tile: rows [wr0, wr0 + 64) x columns [wc0, wc0 + 64) of W.
    const int wr0 = BWD ? k0 : n0, wc0 = BWD ? n0 : k0;
#pragma unroll
    for (int i = 0; i < T::W_WORDS; ++i) {
        const int wi = threadIdx.x + i * T::THREADS;
        const int r = wr0 + wi / 8;
        st.w[i] = 0x77777777u; // a row beyond W: every nibble is code 7, the value 0
        st.am[i].f = 0.0f;
        st.am[i].code = 0u;
        if (r < rows) {
            const u64 e = (u64)r * cols + wc0 + (wi % 8) * 8;
            st.w[i] = nf4::load_stream(packed + e / 8);
            st.am[i] = nf4::load_raw(am, e / 64);
        }
    }
}

template <int BM>
__device__ __forceinline__ void store_stage(const Stage<BM> &st, bf16 *As, bf16 *Ws, const float *code,
                                            const nf4::Absmax &am) {
    using T = Tiles<BM>;
#pragma unroll
    for (int i = 0; i < T::A_CHUNKS; ++i) {
        const int ci = threadIdx.x + i * T::THREADS;
        *reinterpret_cast<uint4 *>(As + (ci / 8) * LDS + (ci % 8) * 8) = st.a[i];
    }
#pragma unroll
    for (int i = 0; i < T::W_WORDS; ++i) {
        const int wi = threadIdx.x + i * T::THREADS;
        const float s = nf4::decode_raw(am, st.am[i]);
        const u32 w = st.w[i];
        uint4 v;
        u32 *vp = reinterpret_cast<u32 *>(&v);
#pragma unroll
        for (int b = 0; b < 4; ++b)
            vp[b] = mma::pack_bf16(__fmul_rn(code[(w >> (8 * b + 4)) & 15], s), __fmul_rn(code[(w >> (8 * b)) & 15], s));
        *reinterpret_cast<uint4 *>(Ws + (wi / 8) * LDS + (wi % 8) * 8) = v;
    }
}

template <int BM, bool BWD>
__device__ void nf4_gemm(const bf16 *__restrict__ a, const u8 *__restrict__ packed_bytes, nf4::Absmax am,
                         bf16 *__restrict__ c, float *__restrict__ partial, int m, int rows, int cols,
                         int tiles_per_split) {
    using T = Tiles<BM>;
    extern __shared__ __align__(16) unsigned char smem[];
    bf16 *As = reinterpret_cast<bf16 *>(smem);     // [2][BM][LDS]
    bf16 *Ws = As + 2 * T::A_ELEMS;                // [2][64][LDS]
    __shared__ float code[16];
    if (threadIdx.x < 16) code[threadIdx.x] = nf4::kCode[threadIdx.x];

    const u32 *packed = reinterpret_cast<const u32 *>(packed_bytes);
    const int n_out = BWD ? cols : rows, kdim = BWD ? rows : cols;
    const int m0 = blockIdx.y * BM, n0 = blockIdx.x * BN;
    const int ktiles = (kdim + BK - 1) / BK;
    const int kt0 = blockIdx.z * tiles_per_split, kt1 = min(ktiles, kt0 + tiles_per_split);

    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int wm = (warp >> 1) * 32, wn = (warp & 1) * 32; // this warp's 32 x 32 outputs
    float acc[2][4][4];
#pragma unroll
    for (int i = 0; i < 2; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j)
#pragma unroll
            for (int e = 0; e < 4; ++e) acc[i][j][e] = 0.0f;

    Stage<BM> st;
    if (kt0 < kt1) load_stage<BM, BWD>(st, a, packed, am, m, rows, cols, kdim, m0, n0, kt0);
    __syncthreads(); // the code table
    if (kt0 < kt1) store_stage<BM>(st, As, Ws, code, am);
    __syncthreads();

    // ldmatrix row addresses of this lane: lane l feeds row l % 8 of matrix l / 8.
    const int mat = lane >> 3, mrow = lane & 7;
    for (int kt = kt0; kt < kt1; ++kt) {
        const int buf = (kt - kt0) & 1;
        const bf16 *A = As + buf * T::A_ELEMS;
        const bf16 *W = Ws + buf * T::W_ELEMS;
        const bool more = kt + 1 < kt1;
        if (more) load_stage<BM, BWD>(st, a, packed, am, m, rows, cols, kdim, m0, n0, kt + 1);
#pragma unroll
        for (int ks = 0; ks < BK / 16; ++ks) {
            u32 af[2][4];
#pragma unroll
            for (int i = 0; i < 2; ++i) // matrices: rows 0-7 / 8-15 x columns 0-7, then 8-15
                mma::ldmatrix_x4(af[i], A + (wm + i * 16 + (mat & 1) * 8 + mrow) * LDS + ks * 16 + (mat >> 1) * 8);
            u32 bf[4][2];
#pragma unroll
            for (int j = 0; j < 4; j += 2) {
                // Matrices: (n tile j, k 0-7), (j, k 8-15), (j + 1, k 0-7), (j + 1, k 8-15).
                const int nn = wn + (j + (mat >> 1)) * 8, kk = ks * 16 + (mat & 1) * 8;
                u32 r[4];
                if (BWD) // W tile rows are the contraction: B[k][n] = W[k][n]
                    mma::ldmatrix_x4_trans(r, W + (kk + mrow) * LDS + nn);
                else // W tile rows are the outputs: B[k][n] = W[n][k]
                    mma::ldmatrix_x4(r, W + (nn + mrow) * LDS + kk);
                bf[j][0] = r[0];
                bf[j][1] = r[1];
                bf[j + 1][0] = r[2];
                bf[j + 1][1] = r[3];
            }
#pragma unroll
            for (int i = 0; i < 2; ++i)
#pragma unroll
                for (int j = 0; j < 4; ++j) mma::mma_bf16(acc[i][j], af[i], bf[j][0], bf[j][1]);
        }
        if (more) store_stage<BM>(st, As + (buf ^ 1) * T::A_ELEMS, Ws + (buf ^ 1) * T::W_ELEMS, code, am);
        __syncthreads();
    }

    const int g = lane >> 2, c4 = lane & 3;
#pragma unroll
    for (int i = 0; i < 2; ++i) {
#pragma unroll
        for (int h = 0; h < 2; ++h) {
            const int r = m0 + wm + i * 16 + h * 8 + g;
            if (r >= m) continue;
#pragma unroll
            for (int j = 0; j < 4; ++j) {
                const int col = n0 + wn + j * 8 + 2 * c4;
                if (col >= n_out) continue;
                const float x = acc[i][j][2 * h], y = acc[i][j][2 * h + 1];
                const u64 at = (u64)r * n_out + col;
                if (partial)
                    *reinterpret_cast<float2 *>(partial + (u64)blockIdx.z * m * n_out + at) = make_float2(x, y);
                else
                    *reinterpret_cast<u32 *>(c + at) = mma::pack_bf16(x, y);
            }
        }
    }
}

} // namespace

extern "C" __global__ void nf4_gemm_fwd_bf16_m64(const bf16 *a, const u8 *packed, const float *plain, const u8 *codes,
                                                 const float *scales, float offset, const float *map, bf16 *c,
                                                 float *partial, int m, int rows, int cols, int tiles_per_split) {
    nf4_gemm<64, false>(a, packed, nf4::Absmax{plain, codes, scales, offset, map}, c, partial, m, rows, cols,
                        tiles_per_split);
}

extern "C" __global__ void nf4_gemm_fwd_bf16_m128(const bf16 *a, const u8 *packed, const float *plain, const u8 *codes,
                                                 const float *scales, float offset, const float *map, bf16 *c,
                                                 float *partial, int m, int rows, int cols, int tiles_per_split) {
    nf4_gemm<128, false>(a, packed, nf4::Absmax{plain, codes, scales, offset, map}, c, partial, m, rows, cols,
                        tiles_per_split);
}

extern "C" __global__ void nf4_gemm_bwd_bf16_m64(const bf16 *a, const u8 *packed, const float *plain, const u8 *codes,
                                                 const float *scales, float offset, const float *map, bf16 *c,
                                                 float *partial, int m, int rows, int cols, int tiles_per_split) {
    nf4_gemm<64, true>(a, packed, nf4::Absmax{plain, codes, scales, offset, map}, c, partial, m, rows, cols,
                        tiles_per_split);
}

extern "C" __global__ void nf4_gemm_bwd_bf16_m128(const bf16 *a, const u8 *packed, const float *plain, const u8 *codes,
                                                 const float *scales, float offset, const float *map, bf16 *c,
                                                 float *partial, int m, int rows, int cols, int tiles_per_split) {
    nf4_gemm<128, true>(a, packed, nf4::Absmax{plain, codes, scales, offset, map}, c, partial, m, rows, cols,
                        tiles_per_split);
}

// c[i] = sum over s < splits of partial[s * n + i] (in order), rounded to bf16.
extern "C" __global__ void nf4_gemm_reduce_bf16(const float *__restrict__ partial, bf16 *__restrict__ c, u64 n,
                                                int splits) {
    for (u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (u64)gridDim.x * blockDim.x) {
        float s = partial[i];
        for (int z = 1; z < splits; ++z) s += partial[(u64)z * n + i];
        c[i] = __float2bfloat16_rn(s);
    }
}
