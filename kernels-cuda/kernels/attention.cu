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
// each). Forward: a block of 4 warps takes 64 query rows (16 per warp, q fragments held in
// registers) and walks 64-key tiles of k and v (v stored transposed in shared memory), stopping at
// the causal diagonal. Backward (FlashAttention-2): a pre-kernel computes Delta and zeroes an f32
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

template <int D>
__device__ void attn_fwd_mma(const bf16 *__restrict__ q, const bf16 *__restrict__ k,
                             const bf16 *__restrict__ v, const int *__restrict__ key_lens,
                             bf16 *__restrict__ o, float *__restrict__ lse, int hq, int hkv, int t,
                             int s, float scale) {
    constexpr int BM = 64, BN = 64, KS = D + 8, VS = BN + 8;
    __shared__ __align__(16) bf16 Ks[BN * KS];
    __shared__ __align__(16) bf16 Vt[D * VS];

    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, c4 = lane & 3;
    const int bi = blockIdx.z, h = blockIdx.y;
    // The last query tiles see the most keys: launch them first.
    const int m0 = (gridDim.x - 1 - blockIdx.x) * BM;
    const int kvh = h / (hq / hkv);
    const u64 qoff = (u64)(bi * hq + h) * t * D;
    const u64 kvoff = (u64)(bi * hkv + kvh) * s * D;
    const int offset = s - t;
    const int kv_len = key_limit(key_lens, bi, s);
    const int r0 = m0 + warp * 16 + g, r1 = r0 + 8;
    const float sl2 = scale * LOG2E;

    // This warp's 16 query rows as A fragments, all of D.
    u32 qf[D / 16][4];
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk) {
        const int col = kk * 16 + 2 * c4;
        qf[kk][0] = r0 < t ? ld32(q + qoff + (u64)r0 * D + col) : 0u;
        qf[kk][1] = r1 < t ? ld32(q + qoff + (u64)r1 * D + col) : 0u;
        qf[kk][2] = r0 < t ? ld32(q + qoff + (u64)r0 * D + col + 8) : 0u;
        qf[kk][3] = r1 < t ? ld32(q + qoff + (u64)r1 * D + col + 8) : 0u;
    }

    float oacc[D / 8][4];
#pragma unroll
    for (int nt = 0; nt < D / 8; ++nt)
#pragma unroll
        for (int e = 0; e < 4; ++e) oacc[nt][e] = 0.0f;
    // Running max (in units of log2, already scaled) and per-thread partial sums of rows r0, r1.
    float mrow[2] = {NEG_INF, NEG_INF};
    float lrow[2] = {0.0f, 0.0f};

    // Keys [0, n_end) may be visible to some row of this block.
    const int last_row = min(m0 + BM, t) - 1;
    const int n_end = min(last_row + offset + 1, kv_len);
    for (int n0 = 0; n0 < n_end; n0 += BN) {
        __syncthreads(); // the previous tile is no longer read
        load_tile<D>(Ks, nullptr, k + kvoff + (u64)n0 * D, BN, n_end - n0);
        load_tile<D>(nullptr, Vt, v + kvoff + (u64)n0 * D, BN, n_end - n0);
        __syncthreads();

        float sacc[BN / 8][4];
#pragma unroll
        for (int nt = 0; nt < BN / 8; ++nt)
#pragma unroll
            for (int e = 0; e < 4; ++e) sacc[nt][e] = 0.0f;
#pragma unroll
        for (int kk = 0; kk < D / 16; ++kk) {
#pragma unroll
            for (int nt = 0; nt < BN / 8; ++nt) {
                const bf16 *kp = Ks + (nt * 8 + g) * KS + kk * 16 + 2 * c4;
                mma_bf16(sacc[nt], qf[kk], ld32(kp), ld32(kp + 8));
            }
        }

        // Mask, scale to log2 units, row maxima over the 4 lanes sharing a row.
        float mx[2] = {NEG_INF, NEG_INF};
#pragma unroll
        for (int nt = 0; nt < BN / 8; ++nt) {
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                const int row = e < 2 ? r0 : r1;
                const int key = n0 + nt * 8 + 2 * c4 + (e & 1);
                const bool ok = key < kv_len && key <= row + offset;
                const float x = ok ? sacc[nt][e] * sl2 : NEG_INF;
                sacc[nt][e] = x;
                mx[e >> 1] = fmaxf(mx[e >> 1], x);
            }
        }
        float alpha[2], muse[2];
#pragma unroll
        for (int i = 0; i < 2; ++i) {
            mx[i] = fmaxf(mx[i], __shfl_xor_sync(0xffffffffu, mx[i], 1));
            mx[i] = fmaxf(mx[i], __shfl_xor_sync(0xffffffffu, mx[i], 2));
            const float mnew = fmaxf(mrow[i], mx[i]);
            // No key seen yet: keep everything at zero without producing NaN.
            alpha[i] = mnew == NEG_INF ? 1.0f : exp2f(mrow[i] - mnew);
            muse[i] = mnew == NEG_INF ? 0.0f : mnew;
            mrow[i] = mnew;
            lrow[i] *= alpha[i];
        }
#pragma unroll
        for (int nt = 0; nt < BN / 8; ++nt) {
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                const float p = exp2f(sacc[nt][e] - muse[e >> 1]);
                sacc[nt][e] = p;
                lrow[e >> 1] += p;
            }
        }
#pragma unroll
        for (int nt = 0; nt < D / 8; ++nt) {
            oacc[nt][0] *= alpha[0];
            oacc[nt][1] *= alpha[0];
            oacc[nt][2] *= alpha[1];
            oacc[nt][3] *= alpha[1];
        }

        // o += P v, P from the score accumulators, v^T from shared memory.
#pragma unroll
        for (int kk = 0; kk < BN / 16; ++kk) {
            u32 a[4];
            acc_to_a(a, sacc[2 * kk], sacc[2 * kk + 1]);
#pragma unroll
            for (int nt = 0; nt < D / 8; ++nt) {
                const bf16 *vp = Vt + (nt * 8 + g) * VS + kk * 16 + 2 * c4;
                mma_bf16(oacc[nt], a, ld32(vp), ld32(vp + 8));
            }
        }
    }

    float inv[2];
#pragma unroll
    for (int i = 0; i < 2; ++i) {
        lrow[i] += __shfl_xor_sync(0xffffffffu, lrow[i], 1);
        lrow[i] += __shfl_xor_sync(0xffffffffu, lrow[i], 2);
        inv[i] = lrow[i] > 0.0f ? 1.0f / lrow[i] : 0.0f;
    }
#pragma unroll
    for (int nt = 0; nt < D / 8; ++nt) {
        const int col = nt * 8 + 2 * c4;
        if (r0 < t)
            *reinterpret_cast<u32 *>(o + qoff + (u64)r0 * D + col) =
                pack_bf16(oacc[nt][0] * inv[0], oacc[nt][1] * inv[0]);
        if (r1 < t)
            *reinterpret_cast<u32 *>(o + qoff + (u64)r1 * D + col) =
                pack_bf16(oacc[nt][2] * inv[1], oacc[nt][3] * inv[1]);
    }
    if (c4 == 0) {
        const u64 lo = (u64)(bi * hq + h) * t;
        if (r0 < t) lse[lo + r0] = lrow[0] > 0.0f ? (mrow[0] + log2f(lrow[0])) * LN2 : NEG_INF;
        if (r1 < t) lse[lo + r1] = lrow[1] > 0.0f ? (mrow[1] + log2f(lrow[1])) * LN2 : NEG_INF;
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
// Forward, bf16, head_dim 64 / 128. Grid: (ceil(t / 64), hq, b).
extern "C" __global__ void attention_fwd_bf16_d64(const bf16 *q, const bf16 *k, const bf16 *v,
                                                  const int *key_lens, bf16 *o, float *lse, int hq,
                                                  int hkv, int t, int s, float scale) {
    attn_fwd_mma<64>(q, k, v, key_lens, o, lse, hq, hkv, t, s, scale);
}

extern "C" __global__ void attention_fwd_bf16_d128(const bf16 *q, const bf16 *k, const bf16 *v,
                                                   const int *key_lens, bf16 *o, float *lse, int hq,
                                                   int hkv, int t, int s, float scale) {
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
