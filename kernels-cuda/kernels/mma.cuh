// ferrotune: bf16 tensor-core building blocks (sm_80 and later): mma.sync m16n8k16, ldmatrix,
// cp.async and ex2.approx.
//
// Fragment layouts of one 16x8x16 product d += a * b, for lane l, g = l / 4, c = l % 4, pairs
// packed low element first:
//   a (16x16, row-major): a[0] = A[g][2c..2c+1], a[1] = A[g+8][2c..], a[2] = A[g][2c+8..],
//                         a[3] = A[g+8][2c+8..]
//   b (16x8, "col"):      b0 = B[2c..2c+1][g], b1 = B[2c+8..2c+9][g]
//   d (16x8, f32):        d[0..1] = D[g][2c..2c+1], d[2..3] = D[g+8][2c..2c+1]
#pragma once

#include <cuda_bf16.h>

namespace mma {

typedef unsigned int u32;

__device__ __forceinline__ void mma_bf16(float (&d)[4], const u32 (&a)[4], u32 b0, u32 b1) {
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 "
                 "{%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// The 32-bit shared-memory address of a generic pointer into shared memory.
__device__ __forceinline__ u32 smem_addr(const void *p) {
    return static_cast<u32>(__cvta_generic_to_shared(p));
}

// Four 8x8 bf16 matrices from shared memory: lanes 8j..8j+7 give the addresses of the 8 rows
// (16 bytes each) of matrix j; r[j] receives this lane's element pair of matrix j (row g,
// columns 2c..2c+1).
__device__ __forceinline__ void ldmatrix_x4(u32 (&r)[4], const void *row) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(smem_addr(row)));
}

// As ldmatrix_x4, transposed: r[j] receives the pair (column g, rows 2c..2c+1) of matrix j.
__device__ __forceinline__ void ldmatrix_x4_trans(u32 (&r)[4], const void *row) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(smem_addr(row)));
}

// As ldmatrix_x4 / ldmatrix_x4_trans, given this lane's row address in the shared space
// (smem_addr), for callers that keep precomputed shared-space addresses.
__device__ __forceinline__ void ldmatrix_x4(u32 (&r)[4], u32 row) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(row));
}

__device__ __forceinline__ void ldmatrix_x4_trans(u32 (&r)[4], u32 row) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(row));
}

// 16 bytes global -> shared (shared-space address `dst`) without going through registers
// (cp.async.cg, sm_80+; both addresses 16-byte aligned). With `valid` false nothing is read and
// the 16 bytes are zero-filled.
__device__ __forceinline__ void cp_async16(u32 dst, const void *src, bool valid) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src),
                 "r"(valid ? 16 : 0)
                 : "memory");
}

// As cp_async16 for 4 bytes (cp.async.ca; both addresses 4-byte aligned).
__device__ __forceinline__ void cp_async4(u32 dst, const void *src, bool valid) {
    asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;\n" ::"r"(dst), "l"(src),
                 "r"(valid ? 4 : 0)
                 : "memory");
}

// Closes this thread's current group of cp.async (an empty group is fine).
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }

// Waits until at most N of this thread's groups are still in flight (other threads' copies need a
// __syncthreads after it to be visible).
template <int N> __device__ __forceinline__ void cp_async_wait() {
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}

// 2^x by the hardware approximation (ex2.approx.ftz: 2 ulp, results below 2^-126 flush to 0,
// 2^-inf = 0): plain exp2f adds a denormal-range fix-up of three instructions per call.
__device__ __forceinline__ float ex2(float x) {
    float y;
    asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
    return y;
}

// Two f32 rounded to bf16 (nearest even) and packed, `lo` in the low half.
__device__ __forceinline__ u32 pack_bf16(float lo, float hi) {
    __nv_bfloat162 h = __floats2bfloat162_rn(lo, hi);
    return *reinterpret_cast<u32 *>(&h);
}

} // namespace mma
