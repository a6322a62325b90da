// ferrotune: causal grouped-query attention, flash-attention style (the [t, s] scores are never
// stored).
//
//   q: [b, hq, t, d]; k, v: [b, hkv, s, d] with s >= t and hq a multiple of hkv (query head h reads
//   kv head h / (hq / hkv)); o: [b, hq, t, d]; lse: [b, hq, t] (f32, natural log).
//   Query row i (0-based among the t queries) sees keys j <= i + s - t (the queries are the last t
//   of the s positions; the others come from a KV cache) and, when `key_lens` is not null, only
//   keys j < key_lens[batch] (clamped to [0, s]): right-padded batches.
//
//   forward:  S = q k^T * scale, P = softmax_row(S masked), o = P v, lse = log(sum_j exp(S_ij))
//   backward: P recomputed from lse; Delta_i = sum_c dO_ic O_ic; dV = P^T dO; dP = dO V^T;
//             dS = P * (dP - Delta); dQ = scale * dS K; dK = scale * dS^T Q. The query heads of a
//             GQA group accumulate into their kv head's dK and dV.
//
// A row that sees no key at all (key_lens[b] == 0) gets o = 0, lse = -inf and zero gradients.
//
// bf16 (tensor cores): `mma.sync.m16n8k16` bf16 x bf16 -> f32 for q k^T, P v and the four
// backward products; online softmax and every accumulator in f32; head_dim 64 or 128 (one kernel
// each). Forward (FlashAttention-2 style, see `attn_fwd_mma`): a block of 4 warps takes 128 query
// rows (32 per warp) and walks tiles of k and v (64 keys for d = 64, 32 for d = 128) through a
// 3-stage cp.async pipeline, fragments by ldmatrix (v row-major, read with ldmatrix.trans),
// masking only the tiles that cross the causal diagonal or the key_lens limit, and stopping at the
// diagonal. Backward (FlashAttention-2): a pre-kernel computes Delta and zeroes an f32
// dQ accumulator; the main kernel takes 64 keys of one kv head (16 per warp), keeps their dK and
// dV in registers, and walks every query head of the group and every query tile that can see those
// keys; dQ is added to the f32 accumulator with atomicAdd, and a post-kernel rounds it to bf16.
//
// f32: plain CUDA-core kernels (one warp per query row, or per key row for dK/dV), f32 throughout,
// exp/log in f32: a reference-grade twin, not a fast path.
#include "common.cuh"

namespace {

typedef __nv_bfloat16 bf16;
typedef unsigned int u32;

constexpr float LOG2E = 1.4426950408889634f;
constexpr float LN2 = 0.6931471805599453f;
#define NEG_INF __int_as_float(0xff800000) // -inf
constexpr int WARPS = 4;       // warps per block of every kernel here
constexpr int THREADS = WARPS * 32;

// The number of keys visible to the batch: key_lens[bi] clamped to [0, s], or s.
__device__ __forceinline__ int key_limit(const int *key_lens, int bi, int s) {
    if (key_lens == nullptr) return s;
    return min(max(key_lens[bi], 0), s);
}

// d += a * b for one 16x8x16 tile: a is 16x16 (row-major fragment), b is 16x8 ("col" fragment).
//   a: a[0] = A[g][2c..2c+1], a[1] = A[g+8][2c..], a[2] = A[g][2c+8..], a[3] = A[g+8][2c+8..]
//   b: b0 = B[2c..2c+1][g], b1 = B[2c+8..2c+9][g]
//   d: d[0..1] = D[g][2c..2c+1], d[2..3] = D[g+8][2c..2c+1]
// where g = lane / 4, c = lane % 4; pairs are packed low element first.
__device__ __forceinline__ void mma_bf16(float (&d)[4], const u32 (&a)[4], u32 b0, u32 b1) {
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 "
                 "{%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// Two f32 rounded to bf16 and packed, `lo` in the low half.
__device__ __forceinline__ u32 pack_bf16(float lo, float hi) {
    __nv_bfloat162 h = __floats2bfloat162_rn(lo, hi);
    return *reinterpret_cast<u32 *>(&h);
}

// Two consecutive bf16 (4-byte aligned) as one register.
__device__ __forceinline__ u32 ld32(const bf16 *p) { return *reinterpret_cast<const u32 *>(p); }

// The A fragment of a 16x16 tile at `p` in a row-major bf16 array with row stride `stride`,
// for this lane (g = lane / 4, c = lane % 4).
__device__ __forceinline__ void load_a(u32 (&a)[4], const bf16 *p, int stride, int g, int c) {
    const bf16 *r = p + g * stride + 2 * c;
    a[0] = ld32(r);
    a[1] = ld32(r + 8 * stride);
    a[2] = ld32(r + 8);
    a[3] = ld32(r + 8 * stride + 8);
}

// The A fragment of a 16-wide k slice built from two 16x8 accumulator tiles (the C layout of
// tile `lo` covers columns 0..7 of the slice, `hi` columns 8..15).
__device__ __forceinline__ void acc_to_a(u32 (&a)[4], const float (&lo)[4], const float (&hi)[4]) {
    a[0] = pack_bf16(lo[0], lo[1]);
    a[1] = pack_bf16(lo[2], lo[3]);
    a[2] = pack_bf16(hi[0], hi[1]);
    a[3] = pack_bf16(hi[2], hi[3]);
}

// Copies `rows` rows of D bf16 (row `r` at src + r * D, rows >= valid read as zero) into shared
// memory: row-major with stride D + 8 into `rm` (if not null) and transposed ([D][rows + 8]) into
// `tr` (if not null). Consecutive threads take consecutive rows of one 16-byte column chunk.
template <int D>
__device__ __forceinline__ void load_tile(bf16 *rm, bf16 *tr, const bf16 *src, int rows, int valid) {
    constexpr int CH = D / 8;
    const int trs = rows + 8;
    for (int i = threadIdx.x; i < rows * CH; i += THREADS) {
        const int r = i % rows, c = (i / rows) * 8;
        uint4 x = make_uint4(0u, 0u, 0u, 0u);
        if (r < valid) x = *reinterpret_cast<const uint4 *>(src + (u64)r * D + c);
        if (rm) *reinterpret_cast<uint4 *>(rm + r * (D + 8) + c) = x;
        if (tr) {
            const bf16 *e = reinterpret_cast<const bf16 *>(&x);
#pragma unroll
            for (int j = 0; j < 8; ++j) tr[(c + j) * trs + r] = e[j];
        }
    }
}

// ---------------------------------------------------------------------------------------------
// bf16 forward (tensor cores)

// Shared memory of the forward for head_dim D (offsets in bf16 elements): the block's BM query
// rows, then STAGES buffers of a BN-key tile of k and STAGES of v (a cp.async pipeline: tiles
// i + 1 .. i + STAGES - 1 are in flight while tile i is used), all row-major with row stride
// D + 8. The 16-byte pad puts the 8 rows that one ldmatrix phase (or one quarter-warp of 16-byte
// cp.async writes) touches in 8 different groups of 4 banks: no bank conflicts.
template <int D> struct FwdSmem {
    static constexpr int BM = 128;                // query rows per block
    static constexpr int BN = D == 128 ? 32 : 64; // keys per tile (32 keeps d = 128 unspilled)
    static constexpr int STAGES = 3;              // k / v tile buffers
    static constexpr int MT = BM / (16 * WARPS);  // 16-row mma tiles per warp (2: 32 rows a warp)
    static constexpr int RS = D + 8;              // row stride
    static constexpr int Q = 0;                   // [BM][RS]
    static constexpr int K = Q + BM * RS;         // [STAGES][BN][RS]
    static constexpr int V = K + STAGES * BN * RS; // [STAGES][BN][RS]
    static constexpr int END = V + STAGES * BN * RS; // x 2 bytes: 73728 (d = 64), 87040 (d = 128)
};

// The shared-space address of a generic pointer into shared memory.
__device__ __forceinline__ u32 smem_addr(const void *p) {
    return static_cast<u32>(__cvta_generic_to_shared(p));
}

// 16 bytes global -> shared without going through registers (cp.async, sm_80+). With `valid`
// false nothing is read and the 16 bytes are zero-filled.
__device__ __forceinline__ void cp_async16(u32 dst, const void *src, bool valid) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src),
                 "r"(valid ? 16 : 0)
                 : "memory");
}

// Closes this thread's current group of cp.async (an empty group is fine).
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }

// Waits until at most N of this thread's groups are still in flight (other threads' copies need a
// __syncthreads after it to be visible).
template <int N> __device__ __forceinline__ void cp_async_wait() {
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}

// ldmatrix x4: lane l gives the address of row l % 8 (16 contiguous bytes) of 8x8 matrix l / 8;
// register j gets matrix j's elements [lane / 4][2 (lane % 4) .. +1] (`.trans`: the transposed
// matrix, i.e. elements [2 (lane % 4) .. +1][lane / 4]), low element in the low half.
__device__ __forceinline__ void ldsm_x4(u32 (&r)[4], u32 addr) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(addr));
}

__device__ __forceinline__ void ldsm_x4_trans(u32 (&r)[4], u32 addr) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(addr));
}

// 2^x by the hardware approximation (ex2.approx.ftz: 2 ulp, results below 2^-126 flush to 0,
// 2^-inf = 0): plain exp2f adds a denormal-range fix-up of three instructions per call.
__device__ __forceinline__ float fast_exp2(float x) {
    float y;
    asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
    return y;
}

// Starts copying ROWS rows of D bf16 (row r at src + r * D; rows >= valid, valid >= 1, are
// zero-filled and not read) into the row-major shared tile at `dst` (stride D + 8). Consecutive
// threads take consecutive 16-byte chunks of a row, so each warp reads whole rows. A full tile
// (the common case) needs one pointer and immediate offsets; a partial one clamps the rows it
// does not read to valid - 1 so that every address stays inside the tensor.
template <int D, int ROWS>
__device__ __forceinline__ void load_tile_async(u32 dst, const bf16 *src, int valid) {
    constexpr int CH = D / 8;           // 16-byte chunks per row
    constexpr int RSTEP = THREADS / CH; // rows between one thread's chunks
    static_assert(THREADS % CH == 0 && ROWS % RSTEP == 0, "tile not a whole number of chunks per thread");
    const int r0 = threadIdx.x / CH, c = (threadIdx.x % CH) * 8;
    dst += (u32)(r0 * (D + 8) + c) * 2u;
    if (valid >= ROWS) {
        const bf16 *p = src + r0 * D + c;
#pragma unroll
        for (int j = 0; j < ROWS / RSTEP; ++j)
            cp_async16(dst + (u32)(j * RSTEP * (D + 8) * 2), p + j * RSTEP * D, true);
    } else {
#pragma unroll
        for (int j = 0; j < ROWS / RSTEP; ++j) {
            const int r = r0 + j * RSTEP;
            cp_async16(dst + (u32)(j * RSTEP * (D + 8) * 2), src + min(r, valid - 1) * D + c, r < valid);
        }
    }
}

// A block of 4 warps takes BM = 128 query rows of one (batch, head), 32 per warp (two 16-row mma
// tiles, so every k / v fragment read from shared memory feeds two mma), and walks BN-key tiles of
// k and v up to the last key its last row sees, through a STAGES-deep cp.async pipeline (one
// __syncthreads per tile). Per tile and warp: S = q k^T (q fragments held in registers for
// d = 64, re-read from shared memory with ldmatrix for d = 128 to leave registers to the 32 x 128
// f32 output accumulator; k fragments by ldmatrix), the mask only where the tile holds a key the
// warp's first row does not see (the tiles crossing the causal diagonal or the key_lens limit),
// online softmax in f32 (log2 units; o rescaled only when some row maximum of the warp moved),
// then o += P v with P packed to bf16 in registers and v fragments by ldmatrix.trans from the
// row-major v tile. A warp skips the tiles none of its rows sees (it still copies and syncs).
template <int D>
__device__ void attn_fwd_mma(const bf16 *__restrict__ q, const bf16 *__restrict__ k,
                             const bf16 *__restrict__ v, const int *__restrict__ key_lens,
                             bf16 *__restrict__ o, float *__restrict__ lse, int hq, int hkv, int t,
                             int s, float scale) {
    typedef FwdSmem<D> L;
    constexpr int BM = L::BM, BN = L::BN, MT = L::MT, RS = L::RS, STAGES = L::STAGES;
    constexpr int WR = 16 * MT;              // query rows per warp
    constexpr bool QREG = D <= 64;           // q fragments held in registers
    constexpr u32 TILE_BYTES = 2u * BN * RS; // one k or v buffer
    static_assert(2 * L::END <= 113 * 1024, "two blocks must fit one multiprocessor's shared memory");
    extern __shared__ __align__(16) unsigned char smem_raw[];
    const u32 sq = smem_addr(smem_raw) + 2u * L::Q;
    const u32 sk = smem_addr(smem_raw) + 2u * L::K;
    const u32 sv = smem_addr(smem_raw) + 2u * L::V;

    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, c4 = lane & 3;
    const int bi = blockIdx.z, h = blockIdx.y;
    // The last query tiles see the most keys: launch them first.
    const int m0 = (gridDim.x - 1 - blockIdx.x) * BM;
    const int kvh = h / (hq / hkv);
    const u64 qoff = (u64)(bi * hq + h) * t * D;
    const bf16 *kp = k + (u64)(bi * hkv + kvh) * s * D;
    const bf16 *vp = v + (u64)(bi * hkv + kvh) * s * D;
    const int offset = s - t;
    const int kv_len = key_limit(key_lens, bi, s);
    const float sl2 = scale * LOG2E;

    // Keys [0, n_end) may be visible to some row of this block (n_end >= 0).
    const int last_row = min(m0 + BM, t) - 1;
    const int n_end = min(last_row + offset + 1, kv_len);
    const int ntiles = (n_end + BN - 1) / BN;
    // This warp's rows wr0 .. wr0 + WR - 1: keys [0, w_all) are visible to all of them (to the
    // first, hence to every later row), keys [0, w_end) to at least one row < t (0 if none).
    const int wr0 = m0 + warp * WR;
    const int w_all = min(wr0 + offset + 1, kv_len);
    const int w_end = wr0 < t ? min(min(wr0 + WR, t) + offset, kv_len) : 0;

    // Per-lane byte offsets of the ldmatrix row addresses inside a tile:
    // - the A fragment of a 16x16 row-major tile (q), and the trans B fragments of two n8 tiles
    //   of v (rows = keys, the reduction index): lane l reads row l % 16, columns 8 (l / 16) ..
    //   +7. Matrices 0..3 are (rows 0-7, cols 0-7), (8-15, 0-7), (0-7, 8-15), (8-15, 8-15): for
    //   q a[0..3]; for v b0, b1 of the n8 tile of columns 0-7, then b0, b1 of columns 8-15.
    // - the B fragments of two n8 tiles of k (rows = keys = n, columns = the reduction index):
    //   lane l reads row 8 ((l / 16) % 2) + l % 8, columns 8 ((l / 8) % 2) .. +7. Matrices are
    //   (keys 0-7, cols 0-7) = b0, (keys 0-7, cols 8-15) = b1 of the n8 tile of keys 0-7, then the
    //   same for keys 8-15.
    const u32 a_off = (u32)(((lane & 15) * RS + (lane >> 4) * 8) * 2);
    const u32 b_off = (u32)(((((lane >> 4) & 1) * 8 + (lane & 7)) * RS + ((lane >> 3) & 1) * 8) * 2);
    const u32 sqw = sq + (u32)(warp * WR * RS * 2) + a_off; // this warp's q rows

    // Prologue: q with tile 0, then tiles 1 .. STAGES - 2, one commit group each (empty groups
    // past the last tile keep the count uniform for cp_async_wait).
    if (ntiles > 0) load_tile_async<D, BM>(sq, q + qoff + (u64)m0 * D, t - m0);
#pragma unroll
    for (int st = 0; st < STAGES - 1; ++st) {
        if (st < ntiles) {
            load_tile_async<D, BN>(sk + st * TILE_BYTES, kp + (u64)st * BN * D, n_end - st * BN);
            load_tile_async<D, BN>(sv + st * TILE_BYTES, vp + (u64)st * BN * D, n_end - st * BN);
        }
        cp_async_commit();
    }

    u32 qf[QREG ? MT : 1][QREG ? D / 16 : 1][4];
    float oacc[MT][D / 8][4];
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
        for (int nt = 0; nt < D / 8; ++nt)
#pragma unroll
            for (int e = 0; e < 4; ++e) oacc[mt][nt][e] = 0.0f;
    // Running max (log2 units, scaled) and per-thread partial sums of rows
    // wr0 + 16 mt + 8 hf + g, index 2 mt + hf.
    float mrow[2 * MT], lrow[2 * MT];
#pragma unroll
    for (int i = 0; i < 2 * MT; ++i) {
        mrow[i] = NEG_INF;
        lrow[i] = 0.0f;
    }

    int stage = 0; // the buffer of tile `it`: it % STAGES
    for (int it = 0; it < ntiles; ++it) {
        const int n0 = it * BN;
        const u32 kb = sk + (u32)stage * TILE_BYTES, vb = sv + (u32)stage * TILE_BYTES;
        // Groups committed so far: STAGES - 1 + it, the one of tile `it` the (it + 1)-th.
        cp_async_wait<STAGES - 2>();
        // Tile `it` (and q) is now visible to every warp, and every warp is done with tile it - 1,
        // whose buffer the copy of tile it + STAGES - 1 overwrites.
        __syncthreads();
        {
            const int nx = it + STAGES - 1;
            const u32 xb = (u32)(stage == 0 ? STAGES - 1 : stage - 1) * TILE_BYTES;
            if (nx < ntiles) {
                load_tile_async<D, BN>(sk + xb, kp + (u64)nx * BN * D, n_end - nx * BN);
                load_tile_async<D, BN>(sv + xb, vp + (u64)nx * BN * D, n_end - nx * BN);
            }
            cp_async_commit();
        }
        stage = stage == STAGES - 1 ? 0 : stage + 1;
        if constexpr (QREG) {
            if (it == 0) {
#pragma unroll
                for (int mt = 0; mt < MT; ++mt)
#pragma unroll
                    for (int kk = 0; kk < D / 16; ++kk) ldsm_x4(qf[mt][kk], sqw + (u32)(mt * 16 * RS + kk * 16) * 2);
            }
        }
        if (n0 >= w_end) continue; // warp-uniform: no row of this warp sees a key of this tile

        // S = q k^T for the warp's 32 rows and the tile's BN keys.
        float sacc[MT][BN / 8][4];
#pragma unroll
        for (int mt = 0; mt < MT; ++mt)
#pragma unroll
            for (int nt = 0; nt < BN / 8; ++nt)
#pragma unroll
                for (int e = 0; e < 4; ++e) sacc[mt][nt][e] = 0.0f;
#pragma unroll
        for (int kk = 0; kk < D / 16; ++kk) {
            u32 qa[MT][4];
#pragma unroll
            for (int mt = 0; mt < MT; ++mt) {
                if constexpr (QREG) {
#pragma unroll
                    for (int e = 0; e < 4; ++e) qa[mt][e] = qf[mt][kk][e];
                } else {
                    ldsm_x4(qa[mt], sqw + (u32)(mt * 16 * RS + kk * 16) * 2);
                }
            }
#pragma unroll
            for (int np = 0; np < BN / 16; ++np) {
                u32 b[4];
                ldsm_x4(b, kb + b_off + (u32)(np * 16 * RS + kk * 16) * 2);
#pragma unroll
                for (int mt = 0; mt < MT; ++mt) {
                    mma_bf16(sacc[mt][2 * np], qa[mt], b[0], b[1]);
                    mma_bf16(sacc[mt][2 * np + 1], qa[mt], b[2], b[3]);
                }
            }
        }

        // Mask, only when some key of the tile is hidden from the warp's first row: key n0 + j is
        // visible to row r when n0 + j < min(r + offset + 1, kv_len). (sacc[mt][nt][2 hf + e] is
        // row wr0 + 16 mt + 8 hf + g, key n0 + 8 nt + 2 c4 + e.)
        if (n0 + BN > w_all) {
#pragma unroll
            for (int mt = 0; mt < MT; ++mt) {
#pragma unroll
                for (int hf = 0; hf < 2; ++hf) {
                    const int row = wr0 + mt * 16 + hf * 8 + g;
                    const int lim = min(row + offset + 1, kv_len) - n0;
#pragma unroll
                    for (int nt = 0; nt < BN / 8; ++nt) {
#pragma unroll
                        for (int e = 0; e < 2; ++e)
                            if (nt * 8 + 2 * c4 + e >= lim) sacc[mt][nt][2 * hf + e] = NEG_INF;
                    }
                }
            }
        }

        // Online softmax: row maxima over the 4 lanes sharing a row, in raw score units, then
        // scaled to log2 units (scale > 0 keeps the order; -inf stays -inf).
        float alpha[2 * MT], muse[2 * MT];
        bool moved = false;
#pragma unroll
        for (int mt = 0; mt < MT; ++mt) {
#pragma unroll
            for (int hf = 0; hf < 2; ++hf) {
                const int i = 2 * mt + hf;
                float mx = NEG_INF;
#pragma unroll
                for (int nt = 0; nt < BN / 8; ++nt)
                    mx = fmaxf(mx, fmaxf(sacc[mt][nt][2 * hf], sacc[mt][nt][2 * hf + 1]));
                mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
                mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
                const float mnew = fmaxf(mrow[i], mx * sl2);
                // No key seen yet: keep everything at zero without producing NaN.
                alpha[i] = mnew == NEG_INF ? 1.0f : fast_exp2(mrow[i] - mnew);
                muse[i] = mnew == NEG_INF ? 0.0f : mnew;
                moved |= alpha[i] != 1.0f;
                mrow[i] = mnew;
                lrow[i] *= alpha[i];
            }
        }
        // P = 2^(S * scale * log2(e) - m), packed to bf16 A fragments right away (half the
        // registers of the f32 scores): pa[mt][kk] is the 16x16 slice of keys 16 kk .. +15.
        u32 pa[MT][BN / 16][4];
#pragma unroll
        for (int mt = 0; mt < MT; ++mt) {
#pragma unroll
            for (int nt = 0; nt < BN / 8; ++nt) {
                float p[4];
#pragma unroll
                for (int e = 0; e < 4; ++e) {
                    const int i = 2 * mt + (e >> 1);
                    p[e] = fast_exp2(fmaf(sacc[mt][nt][e], sl2, -muse[i]));
                    lrow[i] += p[e];
                }
                pa[mt][nt >> 1][(nt & 1) * 2] = pack_bf16(p[0], p[1]);
                pa[mt][nt >> 1][(nt & 1) * 2 + 1] = pack_bf16(p[2], p[3]);
            }
        }
        // Rescale o, unless no row maximum of the warp moved (alpha = 1 everywhere).
        if (__any_sync(0xffffffffu, moved)) {
#pragma unroll
            for (int mt = 0; mt < MT; ++mt) {
#pragma unroll
                for (int nt = 0; nt < D / 8; ++nt) {
                    oacc[mt][nt][0] *= alpha[2 * mt];
                    oacc[mt][nt][1] *= alpha[2 * mt];
                    oacc[mt][nt][2] *= alpha[2 * mt + 1];
                    oacc[mt][nt][3] *= alpha[2 * mt + 1];
                }
            }
        }

        // o += P v, v fragments by ldmatrix.trans.
#pragma unroll
        for (int kk = 0; kk < BN / 16; ++kk) {
#pragma unroll
            for (int np = 0; np < D / 16; ++np) {
                u32 b[4];
                ldsm_x4_trans(b, vb + a_off + (u32)(kk * 16 * RS + np * 16) * 2);
#pragma unroll
                for (int mt = 0; mt < MT; ++mt) {
                    mma_bf16(oacc[mt][2 * np], pa[mt][kk], b[0], b[1]);
                    mma_bf16(oacc[mt][2 * np + 1], pa[mt][kk], b[2], b[3]);
                }
            }
        }
    }
    cp_async_wait<0>(); // nothing real is left in flight; leave no group behind anyway

#pragma unroll
    for (int mt = 0; mt < MT; ++mt) {
#pragma unroll
        for (int hf = 0; hf < 2; ++hf) {
            const int i = 2 * mt + hf;
            const int row = wr0 + mt * 16 + hf * 8 + g;
            float l = lrow[i];
            l += __shfl_xor_sync(0xffffffffu, l, 1);
            l += __shfl_xor_sync(0xffffffffu, l, 2);
            const float inv = l > 0.0f ? 1.0f / l : 0.0f;
            if (row < t) {
                bf16 *orow = o + qoff + (u64)row * D + 2 * c4;
#pragma unroll
                for (int nt = 0; nt < D / 8; ++nt)
                    *reinterpret_cast<u32 *>(orow + nt * 8) =
                        pack_bf16(oacc[mt][nt][2 * hf] * inv, oacc[mt][nt][2 * hf + 1] * inv);
                if (c4 == 0)
                    lse[(u64)(bi * hq + h) * t + row] = l > 0.0f ? (mrow[i] + log2f(l)) * LN2 : NEG_INF;
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// bf16 backward (tensor cores)

// Shared memory layout of the backward kernel for head_dim D (offsets in bf16 elements).
template <int D> struct BwdSmem {
    static constexpr int BN = 64;                // keys per block (16 per warp)
    static constexpr int BQ = D == 128 ? 32 : 64; // queries per inner tile
    static constexpr int RS = D + 8;             // row stride of row-major [rows][D] tiles
    static constexpr int KTS = BN + 8;           // row stride of K^T [D][BN]
    static constexpr int QTS = BQ + 8;           // row stride of Q^T, dO^T [D][BQ]
    static constexpr int SS = BN + 8;            // row stride of dS [BQ][BN]
    static constexpr int K = 0;
    static constexpr int V = K + BN * RS;
    static constexpr int KT = V + BN * RS;
    static constexpr int Q = KT + D * KTS;
    static constexpr int QT = Q + BQ * RS;
    static constexpr int DO = QT + D * QTS;
    static constexpr int DOT = DO + BQ * RS;
    static constexpr int DS = DOT + D * QTS;
    static constexpr int END = DS + BQ * SS;      // then 2 * BQ floats: lse * log2(e), Delta
};

template <int D>
__device__ void attn_bwd_mma(const bf16 *__restrict__ q, const bf16 *__restrict__ k,
                             const bf16 *__restrict__ v, const float *__restrict__ lse,
                             const float *__restrict__ delta, const bf16 *__restrict__ dout,
                             const int *__restrict__ key_lens, float *__restrict__ dq_acc,
                             bf16 *__restrict__ dk, bf16 *__restrict__ dv, int hq, int hkv, int t,
                             int s, float scale) {
    typedef BwdSmem<D> L;
    constexpr int BN = L::BN, BQ = L::BQ, RS = L::RS;
    extern __shared__ __align__(16) unsigned char smem_raw[];
    bf16 *sm = reinterpret_cast<bf16 *>(smem_raw);
    bf16 *Ks = sm + L::K, *Vs = sm + L::V, *Kt = sm + L::KT, *Qs = sm + L::Q, *Qt = sm + L::QT;
    bf16 *dOs = sm + L::DO, *dOt = sm + L::DOT, *dSs = sm + L::DS;
    float *lse_s = reinterpret_cast<float *>(sm + L::END);
    float *delta_s = lse_s + BQ;

    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, c4 = lane & 3;
    const int bi = blockIdx.z, kvh = blockIdx.y, n0 = blockIdx.x * BN;
    const int group = hq / hkv;
    const int offset = s - t;
    const int kv_len = key_limit(key_lens, bi, s);
    const u64 kvoff = (u64)(bi * hkv + kvh) * s * D;
    const int kw = n0 + warp * 16; // this warp's first key
    const float sl2 = scale * LOG2E;

    float dkacc[D / 8][4], dvacc[D / 8][4];
#pragma unroll
    for (int nt = 0; nt < D / 8; ++nt)
#pragma unroll
        for (int e = 0; e < 4; ++e) dkacc[nt][e] = dvacc[nt][e] = 0.0f;

    if (n0 < kv_len) { // uniform over the block
        load_tile<D>(Ks, Kt, k + kvoff + (u64)n0 * D, BN, kv_len - n0);
        load_tile<D>(Vs, nullptr, v + kvoff + (u64)n0 * D, BN, kv_len - n0);
        // The first query that sees key n0, rounded down to a tile.
        const int q_first = (max(0, n0 - offset) / BQ) * BQ;
        for (int hg = 0; hg < group; ++hg) {
            const int bh = bi * hq + kvh * group + hg;
            const u64 qoff = (u64)bh * t * D;
            for (int q0 = q_first; q0 < t; q0 += BQ) {
                __syncthreads(); // the previous tile (and dS) is no longer read
                load_tile<D>(Qs, Qt, q + qoff + (u64)q0 * D, BQ, t - q0);
                load_tile<D>(dOs, dOt, dout + qoff + (u64)q0 * D, BQ, t - q0);
                for (int i = threadIdx.x; i < BQ; i += THREADS) {
                    const bool in = q0 + i < t;
                    lse_s[i] = in ? lse[(u64)bh * t + q0 + i] * LOG2E : 0.0f;
                    delta_s[i] = in ? delta[(u64)bh * t + q0 + i] : 0.0f;
                }
                __syncthreads();

                // S^T = K Q^T and dP^T = V dO^T for this warp's 16 keys x BQ queries.
                float st[BQ / 8][4], dpt[BQ / 8][4];
#pragma unroll
                for (int nt = 0; nt < BQ / 8; ++nt)
#pragma unroll
                    for (int e = 0; e < 4; ++e) st[nt][e] = dpt[nt][e] = 0.0f;
#pragma unroll
                for (int kk = 0; kk < D / 16; ++kk) {
                    u32 ak[4], av[4];
                    load_a(ak, Ks + warp * 16 * RS + kk * 16, RS, g, c4);
                    load_a(av, Vs + warp * 16 * RS + kk * 16, RS, g, c4);
#pragma unroll
                    for (int nt = 0; nt < BQ / 8; ++nt) {
                        const bf16 *qp = Qs + (nt * 8 + g) * RS + kk * 16 + 2 * c4;
                        const bf16 *op = dOs + (nt * 8 + g) * RS + kk * 16 + 2 * c4;
                        mma_bf16(st[nt], ak, ld32(qp), ld32(qp + 8));
                        mma_bf16(dpt[nt], av, ld32(op), ld32(op + 8));
                    }
                }

                // P^T and dS^T = P^T * (dP^T - Delta) * scale, masked.
#pragma unroll
                for (int nt = 0; nt < BQ / 8; ++nt) {
#pragma unroll
                    for (int e = 0; e < 4; ++e) {
                        const int key = kw + g + (e < 2 ? 0 : 8);
                        const int ql = nt * 8 + 2 * c4 + (e & 1);
                        const int qi = q0 + ql;
                        const bool ok = qi < t && key < kv_len && key <= qi + offset;
                        const float p = ok ? exp2f(st[nt][e] * sl2 - lse_s[ql]) : 0.0f;
                        st[nt][e] = p;
                        dpt[nt][e] = p * (dpt[nt][e] - delta_s[ql]) * scale;
                    }
                }

                // dV += P^T dO and dK += dS^T Q.
#pragma unroll
                for (int kk = 0; kk < BQ / 16; ++kk) {
                    u32 ap[4], as[4];
                    acc_to_a(ap, st[2 * kk], st[2 * kk + 1]);
                    acc_to_a(as, dpt[2 * kk], dpt[2 * kk + 1]);
#pragma unroll
                    for (int nt = 0; nt < D / 8; ++nt) {
                        const bf16 *op = dOt + (nt * 8 + g) * L::QTS + kk * 16 + 2 * c4;
                        const bf16 *qp = Qt + (nt * 8 + g) * L::QTS + kk * 16 + 2 * c4;
                        mma_bf16(dvacc[nt], ap, ld32(op), ld32(op + 8));
                        mma_bf16(dkacc[nt], as, ld32(qp), ld32(qp + 8));
                    }
                }

                // dS (queries x keys) to shared memory for dQ += dS K.
#pragma unroll
                for (int nt = 0; nt < BQ / 8; ++nt) {
#pragma unroll
                    for (int e = 0; e < 4; ++e) {
                        const int kl = warp * 16 + g + (e < 2 ? 0 : 8);
                        const int ql = nt * 8 + 2 * c4 + (e & 1);
                        dSs[ql * L::SS + kl] = __float2bfloat16_rn(dpt[nt][e]);
                    }
                }
                __syncthreads();

                // dQ[BQ][D] += dS[BQ][BN] K[BN][D]: warp w takes columns w * D/4 .. (w+1) * D/4.
                constexpr int NC = D / 4;
#pragma unroll
                for (int mt = 0; mt < BQ / 16; ++mt) {
                    float acc[NC / 8][4];
#pragma unroll
                    for (int nt = 0; nt < NC / 8; ++nt)
#pragma unroll
                        for (int e = 0; e < 4; ++e) acc[nt][e] = 0.0f;
#pragma unroll
                    for (int kk = 0; kk < BN / 16; ++kk) {
                        u32 a[4];
                        load_a(a, dSs + mt * 16 * L::SS + kk * 16, L::SS, g, c4);
#pragma unroll
                        for (int nt = 0; nt < NC / 8; ++nt) {
                            const bf16 *kp = Kt + (warp * NC + nt * 8 + g) * L::KTS + kk * 16 + 2 * c4;
                            mma_bf16(acc[nt], a, ld32(kp), ld32(kp + 8));
                        }
                    }
                    const int row0 = q0 + mt * 16 + g, row1 = row0 + 8;
#pragma unroll
                    for (int nt = 0; nt < NC / 8; ++nt) {
                        const int col = warp * NC + nt * 8 + 2 * c4;
                        if (row0 < t) {
                            float *p = dq_acc + qoff + (u64)row0 * D + col;
                            atomicAdd(p, acc[nt][0]);
                            atomicAdd(p + 1, acc[nt][1]);
                        }
                        if (row1 < t) {
                            float *p = dq_acc + qoff + (u64)row1 * D + col;
                            atomicAdd(p, acc[nt][2]);
                            atomicAdd(p + 1, acc[nt][3]);
                        }
                    }
                }
            }
        }
    }

    // dK and dV of this warp's keys (zero for keys >= kv_len).
    const int k0 = kw + g, k1 = k0 + 8;
#pragma unroll
    for (int nt = 0; nt < D / 8; ++nt) {
        const int col = nt * 8 + 2 * c4;
        if (k0 < s) {
            *reinterpret_cast<u32 *>(dk + kvoff + (u64)k0 * D + col) = pack_bf16(dkacc[nt][0], dkacc[nt][1]);
            *reinterpret_cast<u32 *>(dv + kvoff + (u64)k0 * D + col) = pack_bf16(dvacc[nt][0], dvacc[nt][1]);
        }
        if (k1 < s) {
            *reinterpret_cast<u32 *>(dk + kvoff + (u64)k1 * D + col) = pack_bf16(dkacc[nt][2], dkacc[nt][3]);
            *reinterpret_cast<u32 *>(dv + kvoff + (u64)k1 * D + col) = pack_bf16(dvacc[nt][2], dvacc[nt][3]);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Backward pre- and post-kernels (any dtype)

// Delta[row] = sum_c dO[row, c] * O[row, c] in f32, one warp per row; zeroes row `row` of the f32
// dQ accumulator when it is not null.
template <typename T>
__device__ void attn_bwd_pre(const T *__restrict__ o, const T *__restrict__ dout,
                             float *__restrict__ delta, float *__restrict__ dq_acc, u64 rows, int d) {
    const u64 row = (u64)blockIdx.x * WARPS + (threadIdx.x >> 5);
    const int lane = threadIdx.x & 31;
    if (row >= rows) return;
    const T *orow = o + row * d, *grow = dout + row * d;
    float sum = 0.0f;
    for (int c = lane; c < d; c += 32) sum += ft::to_f32(orow[c]) * ft::to_f32(grow[c]);
    sum = ft::warp_sum(sum);
    if (lane == 0) delta[row] = sum;
    if (dq_acc)
        for (int c = lane; c < d; c += 32) dq_acc[row * d + c] = 0.0f;
}

// ---------------------------------------------------------------------------------------------
// Plain CUDA-core kernels (f32): one warp per row, NPL = d / 32 elements per lane (lane l holds
// columns l, l + 32, ...).

template <typename T, int NPL>
__device__ __forceinline__ void load_row(float (&r)[NPL], const T *p) {
    const int lane = threadIdx.x & 31;
#pragma unroll
    for (int j = 0; j < NPL; ++j) r[j] = ft::to_f32(p[lane + 32 * j]);
}

template <int NPL>
__device__ __forceinline__ float dot_row(const float (&a)[NPL], const float (&b)[NPL]) {
    float x = 0.0f;
#pragma unroll
    for (int j = 0; j < NPL; ++j) x += a[j] * b[j];
    return ft::warp_sum(x);
}

template <typename T, int NPL>
__device__ void attn_fwd_plain(const T *__restrict__ q, const T *__restrict__ k,
                               const T *__restrict__ v, const int *__restrict__ key_lens,
                               T *__restrict__ o, float *__restrict__ lse, int hq, int hkv, int t,
                               int s, float scale) {
    constexpr int D = NPL * 32;
    const int i = blockIdx.x * WARPS + (threadIdx.x >> 5);
    const int lane = threadIdx.x & 31;
    if (i >= t) return;
    const int bi = blockIdx.z, h = blockIdx.y, kvh = h / (hq / hkv);
    const u64 row = (u64)(bi * hq + h) * t + i;
    const u64 kvoff = (u64)(bi * hkv + kvh) * s * D;
    const int n = min(i + s - t + 1, key_limit(key_lens, bi, s));
    float qr[NPL], acc[NPL], kr[NPL], vr[NPL];
    load_row<T, NPL>(qr, q + row * D);
#pragma unroll
    for (int j = 0; j < NPL; ++j) acc[j] = 0.0f;
    float m = NEG_INF, l = 0.0f;
    for (int j = 0; j < n; ++j) {
        load_row<T, NPL>(kr, k + kvoff + (u64)j * D);
        load_row<T, NPL>(vr, v + kvoff + (u64)j * D);
        const float x = dot_row<NPL>(qr, kr) * scale;
        const float mnew = fmaxf(m, x);
        const float alpha = expf(m - mnew); // 0 on the first key (m = -inf)
        const float p = expf(x - mnew);
        l = l * alpha + p;
#pragma unroll
        for (int c = 0; c < NPL; ++c) acc[c] = acc[c] * alpha + p * vr[c];
        m = mnew;
    }
    const float inv = l > 0.0f ? 1.0f / l : 0.0f;
#pragma unroll
    for (int c = 0; c < NPL; ++c) o[row * D + lane + 32 * c] = ft::from_f32<T>(acc[c] * inv);
    if (lane == 0) lse[row] = l > 0.0f ? m + logf(l) : NEG_INF;
}

// dQ row i = scale * sum_j P_ij (dP_ij - Delta_i) k_j.
template <typename T, int NPL>
__device__ void attn_bwd_dq_plain(const T *__restrict__ q, const T *__restrict__ k,
                                  const T *__restrict__ v, const float *__restrict__ lse,
                                  const float *__restrict__ delta, const T *__restrict__ dout,
                                  const int *__restrict__ key_lens, T *__restrict__ dq, int hq,
                                  int hkv, int t, int s, float scale) {
    constexpr int D = NPL * 32;
    const int i = blockIdx.x * WARPS + (threadIdx.x >> 5);
    const int lane = threadIdx.x & 31;
    if (i >= t) return;
    const int bi = blockIdx.z, h = blockIdx.y, kvh = h / (hq / hkv);
    const u64 row = (u64)(bi * hq + h) * t + i;
    const u64 kvoff = (u64)(bi * hkv + kvh) * s * D;
    const int n = min(i + s - t + 1, key_limit(key_lens, bi, s));
    float qr[NPL], gr[NPL], acc[NPL], kr[NPL], vr[NPL];
    load_row<T, NPL>(qr, q + row * D);
    load_row<T, NPL>(gr, dout + row * D);
#pragma unroll
    for (int c = 0; c < NPL; ++c) acc[c] = 0.0f;
    const float lr = lse[row], dr = delta[row];
    for (int j = 0; j < n; ++j) {
        load_row<T, NPL>(kr, k + kvoff + (u64)j * D);
        load_row<T, NPL>(vr, v + kvoff + (u64)j * D);
        const float p = expf(dot_row<NPL>(qr, kr) * scale - lr);
        const float ds = p * (dot_row<NPL>(gr, vr) - dr) * scale;
#pragma unroll
        for (int c = 0; c < NPL; ++c) acc[c] += ds * kr[c];
    }
#pragma unroll
    for (int c = 0; c < NPL; ++c) dq[row * D + lane + 32 * c] = ft::from_f32<T>(acc[c]);
}

// dK, dV row j of kv head kvh, summed over the query heads of its group and the queries that see j.
template <typename T, int NPL>
__device__ void attn_bwd_dkdv_plain(const T *__restrict__ q, const T *__restrict__ k,
                                    const T *__restrict__ v, const float *__restrict__ lse,
                                    const float *__restrict__ delta, const T *__restrict__ dout,
                                    const int *__restrict__ key_lens, T *__restrict__ dk,
                                    T *__restrict__ dv, int hq, int hkv, int t, int s, float scale) {
    constexpr int D = NPL * 32;
    const int j = blockIdx.x * WARPS + (threadIdx.x >> 5);
    const int lane = threadIdx.x & 31;
    if (j >= s) return;
    const int bi = blockIdx.z, kvh = blockIdx.y, group = hq / hkv;
    const u64 kvrow = (u64)(bi * hkv + kvh) * s + j;
    float kr[NPL], vr[NPL], qr[NPL], gr[NPL], dka[NPL], dva[NPL];
#pragma unroll
    for (int c = 0; c < NPL; ++c) dka[c] = dva[c] = 0.0f;
    if (j < key_limit(key_lens, bi, s)) {
        load_row<T, NPL>(kr, k + kvrow * D);
        load_row<T, NPL>(vr, v + kvrow * D);
        for (int hg = 0; hg < group; ++hg) {
            const u64 bh = (u64)bi * hq + kvh * group + hg;
            for (int i = max(0, j - (s - t)); i < t; ++i) {
                const u64 row = bh * t + i;
                load_row<T, NPL>(qr, q + row * D);
                load_row<T, NPL>(gr, dout + row * D);
                const float p = expf(dot_row<NPL>(qr, kr) * scale - lse[row]);
                const float ds = p * (dot_row<NPL>(gr, vr) - delta[row]) * scale;
#pragma unroll
                for (int c = 0; c < NPL; ++c) {
                    dva[c] += p * gr[c];
                    dka[c] += ds * qr[c];
                }
            }
        }
    }
#pragma unroll
    for (int c = 0; c < NPL; ++c) {
        dk[kvrow * D + lane + 32 * c] = ft::from_f32<T>(dka[c]);
        dv[kvrow * D + lane + 32 * c] = ft::from_f32<T>(dva[c]);
    }
}

} // namespace

// Every kernel: 128 threads per block. key_lens: [b] int32 or null. scale: usually 1/sqrt(d).
//
// Forward, bf16, head_dim 64 / 128. Grid: (ceil(t / 128), hq, b); dynamic shared memory
// 2 * FwdSmem<D>::END bytes (73728 for d = 64, 87040 for d = 128).
extern "C" __global__ void __launch_bounds__(THREADS, 2)
    attention_fwd_bf16_d64(const bf16 *q, const bf16 *k, const bf16 *v, const int *key_lens, bf16 *o,
                           float *lse, int hq, int hkv, int t, int s, float scale) {
    attn_fwd_mma<64>(q, k, v, key_lens, o, lse, hq, hkv, t, s, scale);
}

extern "C" __global__ void __launch_bounds__(THREADS, 2)
    attention_fwd_bf16_d128(const bf16 *q, const bf16 *k, const bf16 *v, const int *key_lens, bf16 *o,
                            float *lse, int hq, int hkv, int t, int s, float scale) {
    attn_fwd_mma<128>(q, k, v, key_lens, o, lse, hq, hkv, t, s, scale);
}

// Forward, f32, head_dim 64 or 128 (`d`). Grid: (ceil(t / 4), hq, b).
extern "C" __global__ void attention_fwd_f32(const float *q, const float *k, const float *v,
                                             const int *key_lens, float *o, float *lse, int hq,
                                             int hkv, int t, int s, float scale, int d) {
    if (d == 64)
        attn_fwd_plain<float, 2>(q, k, v, key_lens, o, lse, hq, hkv, t, s, scale);
    else
        attn_fwd_plain<float, 4>(q, k, v, key_lens, o, lse, hq, hkv, t, s, scale);
}

// Backward pre-kernel: delta [rows] = rowsum(dO * O); zeroes dq_acc [rows, d] unless null.
// Grid: (ceil(rows / 4)).
extern "C" __global__ void attention_bwd_pre_bf16(const bf16 *o, const bf16 *dout, float *delta,
                                                  float *dq_acc, u64 rows, int d) {
    attn_bwd_pre<bf16>(o, dout, delta, dq_acc, rows, d);
}

extern "C" __global__ void attention_bwd_pre_f32(const float *o, const float *dout, float *delta,
                                                 float *dq_acc, u64 rows, int d) {
    attn_bwd_pre<float>(o, dout, delta, dq_acc, rows, d);
}

// Backward main kernel, bf16, head_dim 64 / 128: dK, dV written, dQ added to dq_acc (f32, zeroed
// by the pre-kernel). Grid: (ceil(s / 64), hkv, b); dynamic shared memory 2 * BwdSmem<D>::END +
// 8 * BQ bytes (74240 for d = 64, 96000 for d = 128).
extern "C" __global__ void attention_bwd_bf16_d64(const bf16 *q, const bf16 *k, const bf16 *v,
                                                  const float *lse, const float *delta,
                                                  const bf16 *dout, const int *key_lens,
                                                  float *dq_acc, bf16 *dk, bf16 *dv, int hq,
                                                  int hkv, int t, int s, float scale) {
    attn_bwd_mma<64>(q, k, v, lse, delta, dout, key_lens, dq_acc, dk, dv, hq, hkv, t, s, scale);
}

extern "C" __global__ void attention_bwd_bf16_d128(const bf16 *q, const bf16 *k, const bf16 *v,
                                                   const float *lse, const float *delta,
                                                   const bf16 *dout, const int *key_lens,
                                                   float *dq_acc, bf16 *dk, bf16 *dv, int hq,
                                                   int hkv, int t, int s, float scale) {
    attn_bwd_mma<128>(q, k, v, lse, delta, dout, key_lens, dq_acc, dk, dv, hq, hkv, t, s, scale);
}

// Backward post-kernel: dq = bf16(dq_acc), n elements, grid-stride.
extern "C" __global__ void attention_bwd_post_bf16(const float *dq_acc, bf16 *dq, u64 n) {
    for (u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (u64)gridDim.x * blockDim.x)
        dq[i] = __float2bfloat16_rn(dq_acc[i]);
}

// Backward, f32, head_dim 64 or 128 (`d`), after attention_bwd_pre_f32 (dq_acc null).
// dQ: grid (ceil(t / 4), hq, b); dK and dV: grid (ceil(s / 4), hkv, b).
extern "C" __global__ void attention_bwd_dq_f32(const float *q, const float *k, const float *v,
                                                const float *lse, const float *delta,
                                                const float *dout, const int *key_lens, float *dq,
                                                int hq, int hkv, int t, int s, float scale, int d) {
    if (d == 64)
        attn_bwd_dq_plain<float, 2>(q, k, v, lse, delta, dout, key_lens, dq, hq, hkv, t, s, scale);
    else
        attn_bwd_dq_plain<float, 4>(q, k, v, lse, delta, dout, key_lens, dq, hq, hkv, t, s, scale);
}

extern "C" __global__ void attention_bwd_dkdv_f32(const float *q, const float *k, const float *v,
                                                  const float *lse, const float *delta,
                                                  const float *dout, const int *key_lens,
                                                  float *dk, float *dv, int hq, int hkv, int t,
                                                  int s, float scale, int d) {
    if (d == 64)
        attn_bwd_dkdv_plain<float, 2>(q, k, v, lse, delta, dout, key_lens, dk, dv, hq, hkv, t, s,
                                      scale);
    else
        attn_bwd_dkdv_plain<float, 4>(q, k, v, lse, delta, dout, key_lens, dk, dv, hq, hkv, t, s,
                                      scale);
}
