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
// each; the mma / ldmatrix / cp.async helpers of mma.cuh). Forward (FlashAttention-2 style, see
// `attn_fwd_mma`): a block of 4 warps takes 128 query rows (32 per warp) and walks tiles of k and
// v (64 keys for d = 64, 32 for d = 128) through a 3-stage cp.async pipeline, fragments by
// ldmatrix (v row-major, read with ldmatrix.trans), masking only the tiles that cross the causal
// diagonal or the key_lens limit, and stopping at the diagonal. Backward (FlashAttention-2, see
// `attn_bwd_mma`): a pre-kernel computes Delta and zeroes an f32 dQ accumulator; the main kernel
// takes 64 keys of one kv head (16 per warp), keeps their dK and dV in registers, and walks every
// query head of the group and every query tile that can see those keys through a cp.async
// pipeline of 2 stages of q, dO, lse and Delta tiles (64 queries for d = 64, 32 for d = 128; every
// tile row-major, fragments by ldmatrix / ldmatrix.trans, masks only on the tiles that need
// them); dQ is added to the f32 accumulator with atomics (vector reductions on sm_90), and a
// post-kernel rounds it to bf16.
//
// f32: plain CUDA-core kernels (one warp per query row, or per key row for dK/dV), f32 throughout,
// exp/log in f32: a reference-grade twin, not a fast path.
#include "common.cuh"
#include "mma.cuh"

namespace {

typedef __nv_bfloat16 bf16;
typedef unsigned int u32;

constexpr float LOG2E = 1.4426950408889634f;
constexpr float LN2 = 0.6931471805599453f;
#define NEG_INF __int_as_float(0xff800000) // -inf
constexpr int WARPS = 4;       // warps per block of every kernel here
constexpr int THREADS = WARPS * 32;

// The block's tile (along gridDim.x), head (y) and batch (z), numbered so that every (batch,
// head) pair gets its tile 0 before any pair gets its tile 1: the hardware launches blocks in
// linear order (x fastest), so the tile is taken from the slowest-varying part of the linear
// index. The kernels give tile 0 their heaviest work, so the heavy blocks go first and the light
// ones fill the tail (a one-to-one renumbering of the grid).
struct BlockTask {
    int tile, head, batch;
};

__device__ __forceinline__ BlockTask tile_major_block() {
    const u64 pairs = (u64)gridDim.y * gridDim.z;
    const u64 lin = blockIdx.x + (u64)gridDim.x * (blockIdx.y + (u64)gridDim.y * blockIdx.z);
    const int pair = (int)(lin % pairs);
    return BlockTask{(int)(lin / pairs), pair % (int)gridDim.y, pair / (int)gridDim.y};
}

// The number of keys visible to the batch: key_lens[bi] clamped to [0, s], or s.
__device__ __forceinline__ int key_limit(const int *key_lens, int bi, int s) {
    if (key_lens == nullptr) return s;
    return min(max(key_lens[bi], 0), s);
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
            mma::cp_async16(dst + (u32)(j * RSTEP * (D + 8) * 2), p + j * RSTEP * D, true);
    } else {
#pragma unroll
        for (int j = 0; j < ROWS / RSTEP; ++j) {
            const int r = r0 + j * RSTEP;
            mma::cp_async16(dst + (u32)(j * RSTEP * (D + 8) * 2), src + min(r, valid - 1) * D + c, r < valid);
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
    const u32 sq = mma::smem_addr(smem_raw) + 2u * L::Q;
    const u32 sk = mma::smem_addr(smem_raw) + 2u * L::K;
    const u32 sv = mma::smem_addr(smem_raw) + 2u * L::V;

    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, c4 = lane & 3;
    // The last query tiles see the most keys: every (batch, head) starts with its last tile.
    const BlockTask task = tile_major_block();
    const int bi = task.batch, h = task.head;
    const int m0 = (gridDim.x - 1 - task.tile) * BM;
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
        mma::cp_async_commit();
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
        mma::cp_async_wait<STAGES - 2>();
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
            mma::cp_async_commit();
        }
        stage = stage == STAGES - 1 ? 0 : stage + 1;
        if constexpr (QREG) {
            if (it == 0) {
#pragma unroll
                for (int mt = 0; mt < MT; ++mt)
#pragma unroll
                    for (int kk = 0; kk < D / 16; ++kk) mma::ldmatrix_x4(qf[mt][kk], sqw + (u32)(mt * 16 * RS + kk * 16) * 2);
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
                    mma::ldmatrix_x4(qa[mt], sqw + (u32)(mt * 16 * RS + kk * 16) * 2);
                }
            }
#pragma unroll
            for (int np = 0; np < BN / 16; ++np) {
                u32 b[4];
                mma::ldmatrix_x4(b, kb + b_off + (u32)(np * 16 * RS + kk * 16) * 2);
#pragma unroll
                for (int mt = 0; mt < MT; ++mt) {
                    mma::mma_bf16(sacc[mt][2 * np], qa[mt], b[0], b[1]);
                    mma::mma_bf16(sacc[mt][2 * np + 1], qa[mt], b[2], b[3]);
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
                alpha[i] = mnew == NEG_INF ? 1.0f : mma::ex2(mrow[i] - mnew);
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
                    p[e] = mma::ex2(fmaf(sacc[mt][nt][e], sl2, -muse[i]));
                    lrow[i] += p[e];
                }
                pa[mt][nt >> 1][(nt & 1) * 2] = mma::pack_bf16(p[0], p[1]);
                pa[mt][nt >> 1][(nt & 1) * 2 + 1] = mma::pack_bf16(p[2], p[3]);
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
                mma::ldmatrix_x4_trans(b, vb + a_off + (u32)(kk * 16 * RS + np * 16) * 2);
#pragma unroll
                for (int mt = 0; mt < MT; ++mt) {
                    mma::mma_bf16(oacc[mt][2 * np], pa[mt][kk], b[0], b[1]);
                    mma::mma_bf16(oacc[mt][2 * np + 1], pa[mt][kk], b[2], b[3]);
                }
            }
        }
    }
    mma::cp_async_wait<0>(); // nothing real is left in flight; leave no group behind anyway

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
                        mma::pack_bf16(oacc[mt][nt][2 * hf] * inv, oacc[mt][nt][2 * hf + 1] * inv);
                if (c4 == 0)
                    lse[(u64)(bi * hq + h) * t + row] = l > 0.0f ? (mrow[i] + log2f(l)) * LN2 : NEG_INF;
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// bf16 backward (tensor cores)

// Shared memory of the backward for head_dim D (byte offsets): the block's BN keys of k and v,
// STAGES buffers of a BQ-query tile of q and of dO (a cp.async pipeline, as in the forward) with
// their lse and Delta, all row-major ([rows][D], row stride D + 8 bf16), and dS^T ([BN][BQ], row
// stride BQ + 8 bf16: row = key) for dQ. The pads put the 8 rows of one ldmatrix phase, and the
// 8 rows that the 32 lanes of a warp's dS^T stores touch, in different banks.
template <int D> struct BwdSmem {
    static constexpr int BN = 64;                   // keys per block (16 per warp)
    static constexpr int BQ = D == 128 ? 32 : 64;   // queries per tile
    static constexpr int STAGES = 2;                // q / dO / lse / Delta tile buffers
    static constexpr int RS = D + 8;                // row stride of the [rows][D] tiles (bf16)
    static constexpr int SS = BQ + 8;               // row stride of dS^T (bf16)
    static constexpr int KV_BYTES = 2 * BN * RS;    // k or v
    static constexpr int QT_BYTES = 2 * BQ * RS;    // one q or dO buffer
    static constexpr int K = 0;
    static constexpr int V = K + KV_BYTES;
    static constexpr int Q = V + KV_BYTES;             // [STAGES][BQ][RS]
    static constexpr int DO = Q + STAGES * QT_BYTES;   // [STAGES][BQ][RS]
    static constexpr int DST = DO + STAGES * QT_BYTES; // [BN][SS]
    static constexpr int LSE = DST + 2 * BN * SS;      // [STAGES][BQ] f32 (natural log)
    static constexpr int DLT = LSE + 4 * STAGES * BQ;  // [STAGES][BQ] f32
    static constexpr int END = DLT + 4 * STAGES * BQ;  // 65536 (d = 64), 75264 (d = 128)
};

// p[0] += a, p[1] += b in global memory (p 8-byte aligned: the launcher pads Delta in the
// workspace so that the dQ accumulator after it is): one vector reduction on sm_90 (PTX ISA 8.1,
// CUDA 12.1+).
__device__ __forceinline__ void red_add2(float *p, float a, float b) {
#if __CUDA_ARCH__ >= 900 && (__CUDACC_VER_MAJOR__ > 12 || (__CUDACC_VER_MAJOR__ == 12 && __CUDACC_VER_MINOR__ >= 1))
    asm volatile("red.global.add.v2.f32 [%0], {%1, %2};\n" ::"l"(p), "f"(a), "f"(b) : "memory");
#else
    atomicAdd(p, a);
    atomicAdd(p + 1, b);
#endif
}

// Two f32 from shared memory (shared-space address, 8-byte aligned).
__device__ __forceinline__ float2 ld_shared_f2(u32 addr) {
    float2 r;
    asm volatile("ld.shared.v2.f32 {%0, %1}, [%2];\n" : "=f"(r.x), "=f"(r.y) : "r"(addr));
    return r;
}

// A block of 4 warps takes BN = 64 keys of one (batch, kv head), 16 per warp (the blocks of the
// first keys, which see the most queries, launched first), and walks every query head of the GQA
// group and every BQ-query tile that sees some of those keys, as one sequence of tiles through a
// STAGES-deep cp.async pipeline (q, dO, lse, Delta; k and v are copied once, with the first
// tile). Per tile, warp w (keys kw .. kw + 15), skipping the tile when none of its keys is visible
// to a query of it:
//   S^T = K_w Q^T and dP^T = V_w dO^T (16 x BQ, k / v fragments by ldmatrix, held in registers
//   for d = 64; q / dO fragments by ldmatrix from the row-major tiles),
//   P^T = 2^(S^T scale log2(e) - lse log2(e)), dS^T = P^T (dP^T - Delta) scale, masked only when
//   the tile crosses the causal diagonal, the key_lens limit or the end of the queries,
//   dV_w += P^T dO and dK_w += dS^T Q (P^T, dS^T packed to bf16 A fragments in registers;
//   dO / q fragments by ldmatrix.trans), and dS^T to shared memory (32-bit stores).
// After a __syncthreads, dQ[BQ][D] += dS K (dS by ldmatrix.trans from dS^T, k by ldmatrix.trans;
// warp w takes columns w D/4 .. (w+1) D/4 and only the 16-key slices of warps that did not skip)
// is added to the f32 accumulator (vector reductions on sm_90).
template <int D>
__device__ void attn_bwd_mma(const bf16 *__restrict__ q, const bf16 *__restrict__ k,
                             const bf16 *__restrict__ v, const float *__restrict__ lse,
                             const float *__restrict__ delta, const bf16 *__restrict__ dout,
                             const int *__restrict__ key_lens, float *__restrict__ dq_acc,
                             bf16 *__restrict__ dk, bf16 *__restrict__ dv, int hq, int hkv, int t,
                             int s, float scale) {
    typedef BwdSmem<D> L;
    constexpr int BN = L::BN, BQ = L::BQ, RS = L::RS, SS = L::SS, STAGES = L::STAGES;
    constexpr int NC = D / WARPS;   // dQ columns per warp
    constexpr bool KVREG = D <= 64; // k / v fragments of the warp's keys held in registers
    constexpr int QH = BQ;          // queries per pass of S^T, dP^T (a divisor of BQ; QH / 4 f32 registers each)
    // Two blocks per multiprocessor on A100 and H100 (up to 81 KiB each on A100), one on sm_86 /
    // sm_89; two stages suffice with the other block computing while one waits for its copies.
    static_assert(L::END <= 81 * 1024, "two blocks must fit an A100 multiprocessor's shared memory");
    extern __shared__ __align__(16) unsigned char smem_raw[];
    const u32 sbase = mma::smem_addr(smem_raw);
    const u32 sk = sbase + L::K, sv = sbase + L::V, sq = sbase + L::Q, sdo = sbase + L::DO;
    const u32 sdst = sbase + L::DST, slse = sbase + L::LSE, sdlt = sbase + L::DLT;

    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, c4 = lane & 3;
    // The first key blocks see the most queries (every later query sees them): every (batch,
    // kv head) starts with its first key block.
    const BlockTask task = tile_major_block();
    const int bi = task.batch, kvh = task.head, n0 = task.tile * BN;
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
        // Per-lane byte offsets of the ldmatrix row addresses (see attn_fwd_mma):
        // - a_off (lane l: row l % 16, columns 8 (l / 16) .. +7) with row stride RS: the A
        //   fragment of a 16x16 row-major tile (k, v), or with .trans the B fragments of two n8
        //   tiles of a row-major [reduction][n] tile (dO and q for dV, dK; k for dQ).
        // - b_off (lane l: row 8 ((l / 16) % 2) + l % 8, columns 8 ((l / 8) % 2) .. +7): the B
        //   fragments of two n8 tiles of a row-major [n][reduction] tile (q, dO for S^T, dP^T);
        //   with row stride SS and .trans, the A fragment of dS from dS^T ([key][query]):
        //   matrices (keys 0-7, queries 0-7), (keys 0-7, queries 8-15), (keys 8-15, queries
        //   0-7), (keys 8-15, queries 8-15) transposed are a[0..3] of the 16 queries x 16 keys.
        const u32 a_off = (u32)(((lane & 15) * RS + (lane >> 4) * 8) * 2);
        const u32 b_off = (u32)(((((lane >> 4) & 1) * 8 + (lane & 7)) * RS + ((lane >> 3) & 1) * 8) * 2);
        const u32 d_off = (u32)(((((lane >> 4) & 1) * 8 + (lane & 7)) * SS + ((lane >> 3) & 1) * 8) * 2);

        // The first query that sees key n0, as a tile index; tiles qt0 .. nq - 1 of each head.
        const int qt0 = max(0, n0 - offset) / BQ;
        const int nq = (t + BQ - 1) / BQ;
        const int tiles_per_head = nq - qt0;
        const int ntiles = group * tiles_per_head;
        const int bh0 = bi * hq + kvh * group; // first query head of the group

        // Starts copying tile `it` (head bh0 + it / tiles_per_head) into buffer `buf`.
        auto load = [&](int it, int buf) {
            const int hg = it / tiles_per_head;
            const int qs = (qt0 + it - hg * tiles_per_head) * BQ;
            const u64 row0 = (u64)(bh0 + hg) * t + qs;
            const int valid = t - qs;
            load_tile_async<D, BQ>(sq + (u32)(buf * L::QT_BYTES), q + row0 * D, valid);
            load_tile_async<D, BQ>(sdo + (u32)(buf * L::QT_BYTES), dout + row0 * D, valid);
            if (threadIdx.x < 2 * BQ) {
                const int r = threadIdx.x % BQ;
                const float *src = (threadIdx.x < BQ ? lse : delta) + row0 + min(r, valid - 1);
                const u32 dst = (threadIdx.x < BQ ? slse : sdlt) + (u32)((buf * BQ + r) * 4);
                mma::cp_async4(dst, src, r < valid);
            }
        };

        // Prologue: k and v with tile 0, then tiles 1 .. STAGES - 2, one commit group each.
        load_tile_async<D, BN>(sk, k + kvoff + (u64)n0 * D, kv_len - n0);
        load_tile_async<D, BN>(sv, v + kvoff + (u64)n0 * D, kv_len - n0);
#pragma unroll
        for (int st = 0; st < STAGES - 1; ++st) {
            if (st < ntiles) load(st, st);
            mma::cp_async_commit();
        }

        u32 kf[KVREG ? D / 16 : 1][4], vf[KVREG ? D / 16 : 1][4];
        const u32 skw = sk + (u32)(warp * 16 * RS * 2) + a_off; // this warp's key rows
        const u32 svw = sv + (u32)(warp * 16 * RS * 2) + a_off;

        int stage = 0; // the buffer of tile `it`: it % STAGES
        for (int it = 0; it < ntiles; ++it) {
            const int hg = it / tiles_per_head;
            const int q0 = (qt0 + it - hg * tiles_per_head) * BQ;
            const u64 qoff = (u64)(bh0 + hg) * t * D;
            const u32 qb = sq + (u32)(stage * L::QT_BYTES), ob = sdo + (u32)(stage * L::QT_BYTES);
            const u32 lse_t = slse + (u32)(stage * BQ * 4), dlt_t = sdlt + (u32)(stage * BQ * 4);
            mma::cp_async_wait<STAGES - 2>();
            // Tile `it` (and k, v) is visible to every warp; every warp is done with tile it - 1
            // (whose buffer the copy of tile it + STAGES - 1 overwrites) and with dS^T.
            __syncthreads();
            {
                const int nx = it + STAGES - 1;
                if (nx < ntiles) load(nx, stage == 0 ? STAGES - 1 : stage - 1);
                mma::cp_async_commit();
            }
            stage = stage == STAGES - 1 ? 0 : stage + 1;
            if constexpr (KVREG) {
                if (it == 0) {
#pragma unroll
                    for (int kk = 0; kk < D / 16; ++kk) {
                        mma::ldmatrix_x4(kf[kk], skw + (u32)(kk * 16 * 2));
                        mma::ldmatrix_x4(vf[kk], svw + (u32)(kk * 16 * 2));
                    }
                }
            }

            // Keys [n0, vis_end) are visible to some query of the tile (the last valid query
            // sees the most); the warps whose keys all lie beyond skip the tile.
            const int q_last = min(q0 + BQ, t) - 1;
            const int vis_end = min(q_last + offset + 1, kv_len);
            if (kw < vis_end) { // warp-uniform
                u32 *dsw = reinterpret_cast<u32 *>(smem_raw + L::DST + ((warp * 16 + g) * SS + 2 * c4) * 2);
                // Queries q0 + qh .. q0 + qh + QH - 1 of the tile at a time.
#pragma unroll
                for (int qh = 0; qh < BQ; qh += QH) {
                    float st[QH / 8][4], dpt[QH / 8][4];
#pragma unroll
                    for (int nt = 0; nt < QH / 8; ++nt)
#pragma unroll
                        for (int e = 0; e < 4; ++e) st[nt][e] = dpt[nt][e] = 0.0f;
#pragma unroll
                    for (int kk = 0; kk < D / 16; ++kk) {
                        u32 ak[4], av[4];
                        if constexpr (KVREG) {
#pragma unroll
                            for (int e = 0; e < 4; ++e) {
                                ak[e] = kf[kk][e];
                                av[e] = vf[kk][e];
                            }
                        } else {
                            mma::ldmatrix_x4(ak, skw + (u32)(kk * 16 * 2));
                            mma::ldmatrix_x4(av, svw + (u32)(kk * 16 * 2));
                        }
#pragma unroll
                        for (int np = 0; np < QH / 16; ++np) {
                            const u32 off = b_off + (u32)(((qh + np * 16) * RS + kk * 16) * 2);
                            u32 b[4];
                            mma::ldmatrix_x4(b, qb + off);
                            mma::mma_bf16(st[2 * np], ak, b[0], b[1]);
                            mma::mma_bf16(st[2 * np + 1], ak, b[2], b[3]);
                            mma::ldmatrix_x4(b, ob + off);
                            mma::mma_bf16(dpt[2 * np], av, b[0], b[1]);
                            mma::mma_bf16(dpt[2 * np + 1], av, b[2], b[3]);
                        }
                    }

                    // P^T and dS^T. st[nt][e] is key kw + g + 8 (e / 2), query q0 + qh + 8 nt +
                    // 2 c4 + e % 2. Key j is visible to query i when i < t and j < min(i + offset
                    // + 1, kv_len); the mask is needed only when some pair fails that.
                    const int qa = q0 + qh; // first query of this part
                    const bool full = qa + QH <= t && kw + 16 <= kv_len && kw + 15 <= qa + offset;
#pragma unroll
                    for (int nt = 0; nt < QH / 8; ++nt) {
                        const u32 off = (u32)((qh + nt * 8 + 2 * c4) * 4);
                        const float2 l2 = ld_shared_f2(lse_t + off), d2 = ld_shared_f2(dlt_t + off);
#pragma unroll
                        for (int e = 0; e < 4; ++e) {
                            const float lv = (e & 1) ? l2.y : l2.x, dl = (e & 1) ? d2.y : d2.x;
                            float p = mma::ex2(fmaf(st[nt][e], sl2, -lv * LOG2E));
                            if (!full) {
                                const int key = kw + g + (e < 2 ? 0 : 8);
                                const int qi = qa + nt * 8 + 2 * c4 + (e & 1);
                                if (!(qi < t && key < kv_len && key <= qi + offset)) p = 0.0f;
                            }
                            st[nt][e] = p;
                            dpt[nt][e] = p * (dpt[nt][e] - dl) * scale;
                        }
                    }

                    // dV += P^T dO and dK += dS^T Q over these queries (the reduction index), 16
                    // at a time; dS^T goes to shared memory on the way.
#pragma unroll
                    for (int kk = 0; kk < QH / 16; ++kk) {
                        u32 ap[4], as[4];
                        ap[0] = mma::pack_bf16(st[2 * kk][0], st[2 * kk][1]);
                        ap[1] = mma::pack_bf16(st[2 * kk][2], st[2 * kk][3]);
                        ap[2] = mma::pack_bf16(st[2 * kk + 1][0], st[2 * kk + 1][1]);
                        ap[3] = mma::pack_bf16(st[2 * kk + 1][2], st[2 * kk + 1][3]);
                        as[0] = mma::pack_bf16(dpt[2 * kk][0], dpt[2 * kk][1]);
                        as[1] = mma::pack_bf16(dpt[2 * kk][2], dpt[2 * kk][3]);
                        as[2] = mma::pack_bf16(dpt[2 * kk + 1][0], dpt[2 * kk + 1][1]);
                        as[3] = mma::pack_bf16(dpt[2 * kk + 1][2], dpt[2 * kk + 1][3]);
                        // as[0] is (key g, queries qh + 16 kk + 2 c4 ..), as[1] key g + 8, as[2]
                        // and as[3] the same 8 queries later (dsw: u32 units).
                        const int col = qh / 2 + kk * 8;
                        dsw[col] = as[0];
                        dsw[4 * SS + col] = as[1];
                        dsw[col + 4] = as[2];
                        dsw[4 * SS + col + 4] = as[3];
#pragma unroll
                        for (int np = 0; np < D / 16; ++np) {
                            const u32 off = a_off + (u32)(((qh + kk * 16) * RS + np * 16) * 2);
                            u32 b[4];
                            mma::ldmatrix_x4_trans(b, ob + off);
                            mma::mma_bf16(dvacc[2 * np], ap, b[0], b[1]);
                            mma::mma_bf16(dvacc[2 * np + 1], ap, b[2], b[3]);
                            mma::ldmatrix_x4_trans(b, qb + off);
                            mma::mma_bf16(dkacc[2 * np], as, b[0], b[1]);
                            mma::mma_bf16(dkacc[2 * np + 1], as, b[2], b[3]);
                        }
                    }
                }
            }
            __syncthreads(); // dS^T of every warp that did not skip is written

            // dQ[BQ][D] += dS[BQ][BN] K[BN][D] over the 16-key slices kk < nkk (the warps that
            // did not skip: kw < vis_end), this warp's NC columns.
            const int nkk = (vis_end - n0 + 15) / 16; // 1 .. 4
            float acc[BQ / 16][NC / 8][4];
#pragma unroll
            for (int mt = 0; mt < BQ / 16; ++mt)
#pragma unroll
                for (int nt = 0; nt < NC / 8; ++nt)
#pragma unroll
                    for (int e = 0; e < 4; ++e) acc[mt][nt][e] = 0.0f;
#pragma unroll
            for (int kk = 0; kk < BN / 16; ++kk) {
                if (kk < nkk) {
                    u32 bk[NC / 16][4];
#pragma unroll
                    for (int np = 0; np < NC / 16; ++np)
                        mma::ldmatrix_x4_trans(bk[np], sk + a_off + (u32)((kk * 16 * RS + warp * NC + np * 16) * 2));
#pragma unroll
                    for (int mt = 0; mt < BQ / 16; ++mt) {
                        u32 a[4];
                        mma::ldmatrix_x4_trans(a, sdst + d_off + (u32)((kk * 16 * SS + mt * 16) * 2));
#pragma unroll
                        for (int np = 0; np < NC / 16; ++np) {
                            mma::mma_bf16(acc[mt][2 * np], a, bk[np][0], bk[np][1]);
                            mma::mma_bf16(acc[mt][2 * np + 1], a, bk[np][2], bk[np][3]);
                        }
                    }
                }
            }
#pragma unroll
            for (int mt = 0; mt < BQ / 16; ++mt) {
                const int row0 = q0 + mt * 16 + g, row1 = row0 + 8;
#pragma unroll
                for (int nt = 0; nt < NC / 8; ++nt) {
                    const int col = warp * NC + nt * 8 + 2 * c4;
                    if (row0 < t) red_add2(dq_acc + qoff + (u64)row0 * D + col, acc[mt][nt][0], acc[mt][nt][1]);
                    if (row1 < t) red_add2(dq_acc + qoff + (u64)row1 * D + col, acc[mt][nt][2], acc[mt][nt][3]);
                }
            }
        }
        mma::cp_async_wait<0>(); // nothing real is left in flight; leave no group behind anyway
    }

    // dK and dV of this warp's keys (zero for keys >= kv_len).
    const int k0 = kw + g, k1 = k0 + 8;
    const u64 r0 = (u64)(bi * hkv + kvh) * s + k0; // row of key k0 in k, dk (row k1: r0 + 8)
#pragma unroll
    for (int nt = 0; nt < D / 8; ++nt) {
        const int col = nt * 8 + 2 * c4;
        if (k0 < s) {
            *reinterpret_cast<u32 *>(dk + r0 * D + col) = mma::pack_bf16(dkacc[nt][0], dkacc[nt][1]);
            *reinterpret_cast<u32 *>(dv + r0 * D + col) = mma::pack_bf16(dvacc[nt][0], dvacc[nt][1]);
        }
        if (k1 < s) {
            *reinterpret_cast<u32 *>(dk + (r0 + 8) * D + col) = mma::pack_bf16(dkacc[nt][2], dkacc[nt][3]);
            *reinterpret_cast<u32 *>(dv + (r0 + 8) * D + col) = mma::pack_bf16(dvacc[nt][2], dvacc[nt][3]);
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
// by the pre-kernel). Grid: (ceil(s / 64), hkv, b); dynamic shared memory BwdSmem<D>::END bytes
// (65536 for d = 64, 75264 for d = 128).
extern "C" __global__ void __launch_bounds__(THREADS, 2) attention_bwd_bf16_d64(const bf16 *q, const bf16 *k, const bf16 *v,
                                                  const float *lse, const float *delta,
                                                  const bf16 *dout, const int *key_lens,
                                                  float *dq_acc, bf16 *dk, bf16 *dv, int hq,
                                                  int hkv, int t, int s, float scale) {
    attn_bwd_mma<64>(q, k, v, lse, delta, dout, key_lens, dq_acc, dk, dv, hq, hkv, t, s, scale);
}

extern "C" __global__ void __launch_bounds__(THREADS, 2) attention_bwd_bf16_d128(const bf16 *q, const bf16 *k, const bf16 *v,
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
