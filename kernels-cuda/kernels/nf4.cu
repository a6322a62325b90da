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
//   x [m, k], y [m, rows] in f32 or bf16. Sums are f32; the weights enter unrounded: each
//   8-value word's dot product with the code values is scaled by its block's absmax once.
//
// The GEMV, version 2 (benches/NOTES.md has the measurements and the profile):
//
// - Packed weights are read as 4-byte words (8 values), lanes interleaved: lane l reads word
//   l + 32 j of a row, so each warp load is 128 contiguous bytes, and the x values a lane needs
//   (8 of them, 16 or 32 bytes) sit next to its neighbours': x reads are contiguous across the
//   warp too (version 1 read 16-byte weight chunks, and x 64 bytes apart per lane). Weights are
//   loaded with L1::no_allocate so that x stays in L1; they are prefetched one chunk ahead
//   (two buffers, alternating).
// - Decoding goes through a byte-indexed table in shared memory: entry b holds
//   (code[b >> 4], code[b & 15]), 32 copies, lane l reading copy l, laid out so that the
//   address is one PRMT of the packed word (see s_dynamic below). Per two values: one PRMT, one
//   LDS.64, no bank conflict (profiled: 0.1% of shared wavefronts). Version 1 had one copy read
//   at random entries (3-4 way conflicts) and per-value address arithmetic.
// - A warp works on R rows at once (R per m below): x is loaded and widened once for R rows.
// - The absmax of a chunk's blocks is decoded once: a chunk covers 4 * J blocks of each of its
//   R rows (k % 64 == 0), fetched and decoded by the lanes together and shuffled to the users.
// - Chunks entirely inside the row take a path without per-slot checks.
// - The grid is persistent (one block of 512 threads per multiprocessor), each warp striding
//   over row groups (interleaved across blocks); the table is filled once per block, after the
//   first loads are issued so that it hides behind their latency.
//
// Measured (H200, bf16, m = 1): 22% of copy bandwidth at [4096, 4096], 35% at [14336, 4096],
// 50% at [128256, 4096] (1.7x to 2.8x version 1), short of the 60% target. The kernel is bound
// on the multiprocessor side, not by DRAM: its time scales with the SM clock; with one 512-thread
// block per SM (128 registers, 128 KiB of shared memory) only 4 warps per scheduler hide the
// latency of the table lookups, and the table alone moves 4 bytes of shared memory per weight
// (8x the packed weight). Small matrices are dominated by the launch and the first loads.
//
// The fast path needs k % 64 == 0, x 16-byte aligned and packed 4-byte aligned; any other shape
// takes an element-by-element path (same results within rounding, much slower).
//
// A plain absmax is passed as `plain` (then codes, scales, map are unused and may be null);
// `plain == nullptr` selects double quantization.
#include "common.cuh"
#include "nf4.cuh"

// GEMV tuning per m = 1..8 (src/ops/nf4.rs mirrors all three): threads per block (one block per
// multiprocessor: the 128 KiB of shared memory allow no more; 1024 threads leave 64 registers
// each, 512 leave 128), rows per warp (R) and words per lane per row per chunk (J), with
// 4 * J * R <= 32.
#ifndef NF4_GEMV_THREADS
#define NF4_GEMV_THREADS 512, 512, 512, 512, 512, 512, 512, 512
#endif
#ifndef NF4_GEMV_ROWS
#define NF4_GEMV_ROWS 2, 2, 2, 2, 2, 2, 2, 2
#endif
#ifndef NF4_GEMV_WORDS
#define NF4_GEMV_WORDS 8, 8, 4, 4, 2, 2, 2, 2
#endif

namespace {

typedef unsigned char u8;

constexpr unsigned FULL_MASK = 0xffffffffu;

using nf4::Absmax;
using nf4::decode_raw;
using nf4::load_raw;
using nf4::load_stream;
using nf4::RawAbsmax;

__device__ __forceinline__ u64 thread_index() { return (u64)blockIdx.x * blockDim.x + threadIdx.x; }
__device__ __forceinline__ u64 thread_count() { return (u64)gridDim.x * blockDim.x; }

// ---------------------------------------------------------------------------------------------
// Dequantization: one thread per 4-byte word (8 values), lanes on consecutive words, so a warp
// reads 128 contiguous packed bytes and writes 512 (bf16) or 1024 (f32) contiguous bytes. The
// code table is 16 floats in 16 banks: conflict-free whatever the nibbles.

__shared__ float s_code[16];

// Words per thread in flight.
constexpr int DEQUANT_UNROLL = 4;

template <typename T> __device__ __forceinline__ void store8(T *out, const float (&v)[8]);
template <> __device__ __forceinline__ void store8<float>(float *out, const float (&v)[8]) {
    reinterpret_cast<float4 *>(out)[0] = make_float4(v[0], v[1], v[2], v[3]);
    reinterpret_cast<float4 *>(out)[1] = make_float4(v[4], v[5], v[6], v[7]);
}
template <> __device__ __forceinline__ void store8<__nv_bfloat16>(__nv_bfloat16 *out, const float (&v)[8]) {
    uint4 pk;
    unsigned *w = reinterpret_cast<unsigned *>(&pk);
#pragma unroll
    for (int q = 0; q < 4; ++q) {
        const __nv_bfloat162 h = __floats2bfloat162_rn(v[2 * q], v[2 * q + 1]); // .x: lower address
        w[q] = *reinterpret_cast<const unsigned *>(&h);
    }
    *reinterpret_cast<uint4 *>(out) = pk;
}

template <typename T>
__device__ void dequant(const u8 *__restrict__ packed, Absmax am, T *__restrict__ out, u64 n) {
    if (threadIdx.x < 16) s_code[threadIdx.x] = nf4::kCode[threadIdx.x];
    __syncthreads();
    u64 done = 0;
    if (ft::aligned(packed, 4) && ft::aligned(out, 16)) {
        const u64 words = n >> 3; // word w: values 8w .. 8w + 7, all in block w / 8
        const unsigned *pw = reinterpret_cast<const unsigned *>(packed);
        const u64 stride = thread_count();
        for (u64 w0 = thread_index(); w0 < words; w0 += DEQUANT_UNROLL * stride) {
            unsigned wv[DEQUANT_UNROLL];
            float a[DEQUANT_UNROLL];
#pragma unroll
            for (int u = 0; u < DEQUANT_UNROLL; ++u) {
                const u64 w = w0 + u * stride;
                if (w < words) {
                    wv[u] = load_stream(pw + w);
                    a[u] = am(w >> 3);
                }
            }
#pragma unroll
            for (int u = 0; u < DEQUANT_UNROLL; ++u) {
                const u64 w = w0 + u * stride;
                if (w < words) {
                    float v[8];
#pragma unroll
                    for (int b = 0; b < 4; ++b) {
                        v[2 * b] = __fmul_rn(s_code[(wv[u] >> (8 * b + 4)) & 15], a[u]);
                        v[2 * b + 1] = __fmul_rn(s_code[(wv[u] >> (8 * b)) & 15], a[u]);
                    }
                    store8<T>(out + 8 * w, v);
                }
            }
        }
        done = words * 8;
    }
    for (u64 e = done + thread_index(); e < n; e += thread_count()) {
        const u8 byte = packed[e >> 1];
        const int nib = (e & 1) ? (byte & 15) : (byte >> 4);
        out[e] = ft::from_f32<T>(__fmul_rn(s_code[nib], am(e >> 6)));
    }
}

// ---------------------------------------------------------------------------------------------
// GEMV

// The pair table: entry b = (code[b >> 4], code[b & 15]), 32 copies, entry b of copy c at byte
// b * 256 + c * 8 of a 64 KiB block of dynamic shared memory that starts at a multiple of 64 KiB
// (GEMV_SHARED_BYTES = 128 KiB are requested so that one fits). Lane l reads copy l, so a lookup
// never has a bank conflict, and its address is the table's base with byte 1 replaced by the
// packed byte and byte 0 by l * 8: one PRMT.
extern __shared__ __align__(16) unsigned char s_dynamic[];

constexpr unsigned TABLE_BYTES = 1u << 16;

// The shared-memory address of the table.
__device__ __forceinline__ unsigned table_base() {
    const unsigned start = (unsigned)__cvta_generic_to_shared(s_dynamic);
    return (start + TABLE_BYTES - 1) & ~(TABLE_BYTES - 1);
}

// Fills the table; every thread of the block must call it (then __syncthreads()).
__device__ __forceinline__ void fill_pair_table() {
    const unsigned start = (unsigned)__cvta_generic_to_shared(s_dynamic);
    const unsigned base = table_base();
    unsigned dynamic_bytes;
    asm("mov.u32 %0, %%dynamic_smem_size;" : "=r"(dynamic_bytes));
    if (base + TABLE_BYTES > start + dynamic_bytes) __trap(); // the launcher asked for too little
    float4 *table = reinterpret_cast<float4 *>(s_dynamic + (base - start));
    // float4 i holds copies 2 (i % 16) and 2 (i % 16) + 1 of entry i / 16; within a warp the
    // constant reads touch at most two addresses.
    for (int i = threadIdx.x; i < (int)(TABLE_BYTES / 16); i += blockDim.x) {
        const int b = i >> 4;
        const float hi = nf4::kCode[b >> 4], lo = nf4::kCode[b & 15];
        table[i] = make_float4(hi, lo, hi, lo);
    }
}

// A 64-bit load from the shared-memory address `addr` (explicit, so that the address is the
// PRMT's result as is).
__device__ __forceinline__ float2 lds64(unsigned addr) {
    float2 v;
    asm volatile("ld.shared.v2.f32 {%0, %1}, [%2];" : "=f"(v.x), "=f"(v.y) : "r"(addr));
    return v;
}

// The 8 code values of packed word w (byte j: values 2j, 2j + 1). lane_base = table_base() | l * 8.
__device__ __forceinline__ void decode_word(unsigned w, unsigned lane_base, float (&v)[8]) {
    const float2 p0 = lds64(__byte_perm(w, lane_base, 0x7604));
    const float2 p1 = lds64(__byte_perm(w, lane_base, 0x7614));
    const float2 p2 = lds64(__byte_perm(w, lane_base, 0x7624));
    const float2 p3 = lds64(__byte_perm(w, lane_base, 0x7634));
    v[0] = p0.x, v[1] = p0.y, v[2] = p1.x, v[3] = p1.y;
    v[4] = p2.x, v[5] = p2.y, v[6] = p3.x, v[7] = p3.y;
}

// Eight x values from p (16-byte aligned).
template <typename T> __device__ __forceinline__ void load8(const T *p, float (&v)[8]);
template <> __device__ __forceinline__ void load8<float>(const float *p, float (&v)[8]) {
    const float4 a = __ldg(reinterpret_cast<const float4 *>(p));
    const float4 b = __ldg(reinterpret_cast<const float4 *>(p) + 1);
    v[0] = a.x, v[1] = a.y, v[2] = a.z, v[3] = a.w, v[4] = b.x, v[5] = b.y, v[6] = b.z, v[7] = b.w;
}
template <>
__device__ __forceinline__ void load8<__nv_bfloat16>(const __nv_bfloat16 *p, float (&v)[8]) {
    const uint4 a = __ldg(reinterpret_cast<const uint4 *>(p));
    const unsigned w[4] = {a.x, a.y, a.z, a.w};
#pragma unroll
    for (int q = 0; q < 4; ++q) {
        v[2 * q] = __uint_as_float(w[q] << 16);             // the lower-addressed element
        v[2 * q + 1] = __uint_as_float(w[q] & 0xffff0000u); // the higher one
    }
}

constexpr int kThreads[8] = {NF4_GEMV_THREADS};
constexpr int kRows[8] = {NF4_GEMV_ROWS};
constexpr int kWords[8] = {NF4_GEMV_WORDS};

// Packed word of a slot past the end of a row: every nibble 7, i.e. code 0.0.
constexpr unsigned ZERO_WORD = 0x77777777u;

// Absmax blocks per chunk (4J per row, R rows) and how many of them each lane fetches: lane l
// fetches blocks l, l + 32, ... of the chunk's list (row-major: block index n is block n % 4J
// of row n / 4J), and lanes get theirs with a shuffle.
template <int R, int J> struct Blocks {
    static constexpr int N = 4 * J * R;
    static constexpr int PER_LANE = (N + 31) / 32;
};

// One chunk of a warp's work: J words of each of R rows per lane, and the raw absmax this lane
// decodes for the warp.
template <int R, int J> struct Chunk {
    unsigned w[R][J];
    RawAbsmax raw[Blocks<R, J>::PER_LANE];
};

// Where the next chunk comes from. A task is R consecutive rows; a chunk is 32 * J words of each
// of them (word slot j of lane l: word chunk * 32J + 32j + l of the row). Advanced by one chunk
// with additions; recomputed when the task changes.
template <int R, int J> struct Cursor {
    int task, chunk;
    const unsigned *w[R]; // slot 0 of this lane in each row
    int rem;              // words of the row from slot 0 of this lane on: slot j is in the row iff 32j < rem
    u64 block[Blocks<R, J>::PER_LANE];  // the absmax blocks this lane fetches
    int block_rem[Blocks<R, J>::PER_LANE]; // blocks of their row from them on (> 0: in the row)
};

struct Shape {
    int rows, k, kw, kb, chunks, tasks;
};

template <int R, int J>
__device__ __forceinline__ void cursor_start(Cursor<R, J> &c, const unsigned *__restrict__ packed, const Shape &s,
                                             int task, int lane) {
    c.task = task;
    c.chunk = 0;
#pragma unroll
    for (int r = 0; r < R; ++r) {
        const int row = min(task * R + r, s.rows - 1);
        c.w[r] = packed + (u64)row * (u64)s.kw + lane;
    }
    c.rem = s.kw - lane;
#pragma unroll
    for (int q = 0; q < Blocks<R, J>::PER_LANE; ++q) {
        const int n = (q * 32 + lane) % Blocks<R, J>::N; // lanes past N repeat (unused)
        const int row = min(task * R + n / (4 * J), s.rows - 1);
        c.block[q] = (u64)row * (u64)s.kb + n % (4 * J);
        c.block_rem[q] = s.kb - n % (4 * J);
    }
}

template <int R, int J> __device__ __forceinline__ void cursor_advance(Cursor<R, J> &c) {
    c.chunk += 1;
#pragma unroll
    for (int r = 0; r < R; ++r) c.w[r] += 32 * J;
    c.rem -= 32 * J;
#pragma unroll
    for (int q = 0; q < Blocks<R, J>::PER_LANE; ++q) {
        c.block[q] += 4 * J;
        c.block_rem[q] -= 4 * J;
    }
}

// Moves the cursor to the chunk after its current one, possibly that of the warp's next task.
template <int R, int J>
__device__ __forceinline__ void cursor_next(Cursor<R, J> &c, const unsigned *__restrict__ packed, const Shape &s,
                                            int warps, int lane) {
    if (c.chunk + 1 < s.chunks) {
        cursor_advance<R, J>(c);
    } else {
        cursor_start<R, J>(c, packed, s, c.task + warps, lane);
    }
}

template <int R, int J>
__device__ __forceinline__ void load_chunk(Chunk<R, J> &ch, const Cursor<R, J> &c, const Absmax &am) {
#pragma unroll
    for (int r = 0; r < R; ++r)
#pragma unroll
        for (int j = 0; j < J; ++j) ch.w[r][j] = 32 * j < c.rem ? load_stream(c.w[r] + 32 * j) : ZERO_WORD;
#pragma unroll
    for (int q = 0; q < Blocks<R, J>::PER_LANE; ++q) {
        if (c.block_rem[q] > 0) {
            ch.raw[q] = load_raw(am, c.block[q]);
        } else {
            ch.raw[q].f = 0.0f;
            ch.raw[q].code = 0;
        }
    }
}

// Adds chunk `chunk`'s products to acc. FULL: every slot of the chunk is in the row (no checks).
// Otherwise slots past the row hold ZERO_WORD and read x at the row's start instead (0 * x: only
// a non-finite x there could tell), and whole slots past the row are skipped.
template <typename T, int M, int R, int J, bool FULL>
__device__ __forceinline__ void compute_chunk(const Chunk<R, J> &ch, const T *__restrict__ x, const Absmax &am,
                                              const Shape &s, int chunk, int lane, unsigned lane_base,
                                              float (&acc)[R][M]) {
    float a_mine[Blocks<R, J>::PER_LANE];
#pragma unroll
    for (int q = 0; q < Blocks<R, J>::PER_LANE; ++q) a_mine[q] = decode_raw(am, ch.raw[q]);
    const int first = chunk * 32 * J; // the chunk's first word in the row
    const T *xl = x + 8 * (first + lane);
#pragma unroll
    for (int j = 0; j < J; ++j) {
        const T *xw = xl + 256 * j;
        if (!FULL) {
            if (j > 0 && first + 32 * j >= s.kw) continue; // warp-uniform: the slot is past the row
            if (first + 32 * j + lane >= s.kw) xw = x;
        }
        float a[R];
#pragma unroll
        for (int r = 0; r < R; ++r) {
            const int n0 = r * 4 * J + 4 * j; // this slot's blocks: n0 .. n0 + 3, lane l uses n0 + l / 8
            a[r] = __shfl_sync(FULL_MASK, a_mine[n0 / 32], n0 % 32 + (lane >> 3));
        }
        float cv[R][8];
#pragma unroll
        for (int r = 0; r < R; ++r) decode_word(ch.w[r][j], lane_base, cv[r]);
#pragma unroll
        for (int i = 0; i < M; ++i) {
            float xv[8];
            load8<T>(xw + (u64)i * s.k, xv);
#pragma unroll
            for (int r = 0; r < R; ++r) {
                float part = cv[r][0] * xv[0];
#pragma unroll
                for (int e = 1; e < 8; ++e) part = fmaf(cv[r][e], xv[e], part);
                acc[r][i] = fmaf(a[r], part, acc[r][i]);
            }
        }
    }
}

template <typename T, int M, int R, int J>
__device__ __forceinline__ void compute_any(const Chunk<R, J> &ch, const T *__restrict__ x, const Absmax &am,
                                            const Shape &s, int chunk, int lane, unsigned lane_base,
                                            float (&acc)[R][M]) {
    if ((chunk + 1) * 32 * J <= s.kw) {
        compute_chunk<T, M, R, J, true>(ch, x, am, s, chunk, lane, lane_base, acc);
    } else {
        compute_chunk<T, M, R, J, false>(ch, x, am, s, chunk, lane, lane_base, acc);
    }
}

template <typename T, int M, int R>
__device__ __forceinline__ void store_task(float (&acc)[R][M], T *__restrict__ y, int rows, int task, int lane) {
#pragma unroll
    for (int r = 0; r < R; ++r) {
#pragma unroll
        for (int i = 0; i < M; ++i) {
            const float v = ft::warp_sum(acc[r][i]);
            const int row = task * R + r;
            if (lane == 0 && row < rows) y[(u64)i * rows + row] = ft::from_f32<T>(v);
            acc[r][i] = 0.0f;
        }
    }
}

// k % 64 == 0, aligned buffers. Every thread of the block must call it.
template <typename T, int M, int R, int J>
__device__ __forceinline__ void gemv_fast(const T *__restrict__ x, const unsigned *__restrict__ packed, const Absmax &am,
                                          T *__restrict__ y, int rows, int k) {
    const int lane = threadIdx.x & 31;
    const int warps = (int)(thread_count() >> 5);
    // Task slots interleave the blocks (slot = warp in block * blocks + block): when the tasks
    // do not divide evenly, the warps with one task more are spread over all multiprocessors.
    const int slot = (int)(threadIdx.x >> 5) * (int)gridDim.x + (int)blockIdx.x;
    Shape s;
    s.rows = rows;
    s.k = k;
    s.kw = k >> 3;
    s.kb = k >> 6;
    s.chunks = (s.kw + 32 * J - 1) / (32 * J);
    s.tasks = (rows + R - 1) / R;

    Cursor<R, J> cur;
    cursor_start<R, J>(cur, packed, s, slot, lane);
    Chunk<R, J> a, b;
    if (cur.task < s.tasks) load_chunk<R, J>(a, cur, am);
    fill_pair_table(); // while the first loads are in flight
    __syncthreads();
    if (cur.task >= s.tasks) return;
    const unsigned lane_base = table_base() | (lane << 3);

    float acc[R][M];
#pragma unroll
    for (int r = 0; r < R; ++r)
#pragma unroll
        for (int i = 0; i < M; ++i) acc[r][i] = 0.0f;
    // Two chunks per trip, alternating buffers: issue the next chunk's loads, then use this one's.
    while (true) {
        int task = cur.task, chunk = cur.chunk;
        cursor_next<R, J>(cur, packed, s, warps, lane);
        bool more = cur.task < s.tasks;
        if (more) load_chunk<R, J>(b, cur, am);
        compute_any<T, M, R, J>(a, x, am, s, chunk, lane, lane_base, acc);
        if (cur.chunk == 0) store_task<T, M, R>(acc, y, rows, task, lane);
        if (!more) break;

        task = cur.task, chunk = cur.chunk;
        cursor_next<R, J>(cur, packed, s, warps, lane);
        more = cur.task < s.tasks;
        if (more) load_chunk<R, J>(a, cur, am);
        compute_any<T, M, R, J>(b, x, am, s, chunk, lane, lane_base, acc);
        if (cur.chunk == 0) store_task<T, M, R>(acc, y, rows, task, lane);
        if (!more) break;
    }
}

// Any k and alignment: one warp per row, lanes over columns, one value at a time. Every thread
// of the block must call it.
template <typename T, int M>
__device__ __forceinline__ void gemv_elementwise(const T *__restrict__ x, const u8 *__restrict__ packed, const Absmax &am,
                                                 T *__restrict__ y, int rows, int k) {
    fill_pair_table();
    __syncthreads();
    const int lane = threadIdx.x & 31;
    const unsigned lane_base = table_base() | (lane << 3);
    const int warps = (int)(thread_count() >> 5);
    for (int row = (int)(thread_index() >> 5); row < rows; row += warps) {
        const u64 first = (u64)row * (u64)k;
        float acc[M];
#pragma unroll
        for (int i = 0; i < M; ++i) acc[i] = 0.0f;
        for (int c = lane; c < k; c += 32) {
            const u64 e = first + c;
            const u8 byte = packed[e >> 1];
            const unsigned nib = (e & 1) ? (byte & 15) : (byte >> 4);
            // Entry `nib` is (code[0], code[nib]).
            const float wv = __fmul_rn(lds64(lane_base | (nib << 8)).y, am(e >> 6));
#pragma unroll
            for (int i = 0; i < M; ++i) acc[i] = fmaf(wv, ft::to_f32(x[(u64)i * k + c]), acc[i]);
        }
#pragma unroll
        for (int i = 0; i < M; ++i) {
            const float v = ft::warp_sum(acc[i]);
            if (lane == 0) y[(u64)i * rows + row] = ft::from_f32<T>(v);
        }
    }
}

template <typename T, int M>
__device__ __forceinline__ void gemv_entry(const T *x, const u8 *packed, const float *plain, const u8 *codes,
                                           const float *scales, float offset, const float *map, T *y, int rows,
                                           int k) {
    const Absmax am{plain, codes, scales, offset, map};
    if (k % 64 == 0 && ft::aligned(packed, 4) && ft::aligned(x, 16)) {
        gemv_fast<T, M, kRows[M - 1], kWords[M - 1]>(x, reinterpret_cast<const unsigned *>(packed), am, y, rows, k);
    } else {
        gemv_elementwise<T, M>(x, packed, am, y, rows, k);
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
// so that each gets the registers it needs. Block: kThreads[m - 1] threads; dynamic shared
// memory: 128 KiB (GEMV_SHARED_BYTES); grid: any (persistent: one block per multiprocessor).
// The declarations carry the launch bounds (the register budget); the definitions follow.
extern "C" {
#define NF4_GEMV_DECL(name, T, m)                                                                     \
    __global__ void __launch_bounds__(kThreads[m - 1], 1)                                             \
        name(const T *x, const u8 *packed, const float *plain, const u8 *codes, const float *scales, \
             float offset, const float *map, T *y, int rows, int k);
NF4_GEMV_DECL(nf4_gemv1_f32, float, 1)
NF4_GEMV_DECL(nf4_gemv2_f32, float, 2)
NF4_GEMV_DECL(nf4_gemv3_f32, float, 3)
NF4_GEMV_DECL(nf4_gemv4_f32, float, 4)
NF4_GEMV_DECL(nf4_gemv5_f32, float, 5)
NF4_GEMV_DECL(nf4_gemv6_f32, float, 6)
NF4_GEMV_DECL(nf4_gemv7_f32, float, 7)
NF4_GEMV_DECL(nf4_gemv8_f32, float, 8)
NF4_GEMV_DECL(nf4_gemv1_bf16, __nv_bfloat16, 1)
NF4_GEMV_DECL(nf4_gemv2_bf16, __nv_bfloat16, 2)
NF4_GEMV_DECL(nf4_gemv3_bf16, __nv_bfloat16, 3)
NF4_GEMV_DECL(nf4_gemv4_bf16, __nv_bfloat16, 4)
NF4_GEMV_DECL(nf4_gemv5_bf16, __nv_bfloat16, 5)
NF4_GEMV_DECL(nf4_gemv6_bf16, __nv_bfloat16, 6)
NF4_GEMV_DECL(nf4_gemv7_bf16, __nv_bfloat16, 7)
NF4_GEMV_DECL(nf4_gemv8_bf16, __nv_bfloat16, 8)
#undef NF4_GEMV_DECL
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

// ---------------------------------------------------------------------------------------------
// Quantization: one warp per 64-value block, two values (one packed byte) per lane, exactly as
// engine::quant::nf4::Nf4Weight::quantize (bitsandbytes' kQuantizeBlockwise for NF4): the
// block's absmax (fmaxf skips NaN), its reciprocal, each value times the reciprocal through
// bitsandbytes' decision tree (strict '>' against the midpoints; NaN takes index 0). Values
// past the end of the tensor are 0. Double quantization of the absmax runs on the host.

namespace {

__device__ __forceinline__ unsigned char nf4_index(float x) {
    // The midpoints between neighbouring code values (engine::quant::nf4::NF4_THRESHOLDS).
    const float t0 = -0.8480964004993439f, t1 = -0.6106329262256622f, t2 = -0.4599952697753906f,
                t3 = -0.33967943489551544f, t4 = -0.23460740596055984f, t5 = -0.13791173323988914f,
                t6 = -0.045525018125772476f, t7 = 0.03979014977812767f, t8 = 0.1202552504837513f,
                t9 = 0.2035212516784668f, t10 = 0.2920137718319893f, t11 = 0.3893125355243683f,
                t12 = 0.5016634166240692f, t13 = 0.6427869200706482f, t14 = 0.8614784181118011f;
    if (x > t7) {
        if (x > t11) {
            if (x > t13) return x > t14 ? 15 : 14;
            return x > t12 ? 13 : 12;
        }
        if (x > t9) return x > t10 ? 11 : 10;
        return x > t8 ? 9 : 8;
    }
    if (x > t3) {
        if (x > t5) return x > t6 ? 7 : 6;
        return x > t4 ? 5 : 4;
    }
    if (x > t1) return x > t2 ? 3 : 2;
    return x > t0 ? 1 : 0;
}

template <typename T>
__device__ void nf4_quantize(const T *__restrict__ w, u64 n, unsigned char *__restrict__ packed,
                             float *__restrict__ absmax) {
    const int lane = threadIdx.x & 31;
    const u64 warps = (u64)gridDim.x * (blockDim.x >> 5);
    const u64 blocks = (n + 63) / 64;
    for (u64 b = (u64)blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5); b < blocks; b += warps) {
        const u64 i = b * 64 + 2 * lane;
        const float x0 = i < n ? ft::to_f32(w[i]) : 0.0f;
        const float x1 = i + 1 < n ? ft::to_f32(w[i + 1]) : 0.0f;
        // Starting from 0 keeps an all-NaN block at absmax 0 (fmaxf(NaN, NaN) is NaN).
        float m = fmaxf(fmaxf(0.0f, fabsf(x0)), fabsf(x1));
#pragma unroll
        for (int offset = 16; offset > 0; offset >>= 1) m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, offset));
        const float inv = 1.0f / m;
        if (i < n) packed[i / 2] = (unsigned char)((nf4_index(x0 * inv) << 4) | nf4_index(x1 * inv));
        if (lane == 0) absmax[b] = m;
    }
}

} // namespace

extern "C" __global__ void nf4_quantize_f32(const float *w, u64 n, unsigned char *packed, float *absmax) {
    nf4_quantize(w, n, packed, absmax);
}
extern "C" __global__ void nf4_quantize_bf16(const __nv_bfloat16 *w, u64 n, unsigned char *packed, float *absmax) {
    nf4_quantize(w, n, packed, absmax);
}
