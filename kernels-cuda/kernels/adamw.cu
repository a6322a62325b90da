// ferrotune: AdamW steps for the LoRA parameters (f32 master weights), with f32 moments or with
// bitsandbytes-style blockwise 8-bit moments. Gradients are f32 or bf16 and are multiplied by
// `grad_scale` first (a global-norm clipping factor, 1 for none).
//
// Every product, sum, quotient and square root is rounded separately (__fmul_rn, __fadd_rn,
// __fdiv_rn, __fsqrt_rn; the one fused multiply-add is torch's lerp), in the order of the CPU
// twins in trainer/src/optim.rs, with the scalars the launcher (src/ops/adamw.rs) computes the
// way those twins do, so that the results are the twins' bit for bit.
//
//   adamw_f32_g<dt>: torch.optim.AdamW (single-tensor path):
//     p *= 1 - lr wd (when wd != 0);  m += (1 - b1) (g - m);  v = v b2 + (1 - b2) g g;
//     p += -(lr / bc1) * m / (sqrt(v) / sqrt(bc2) + eps)      with bc_i = 1 - b_i^t.
//
//   adamw_8bit_g<dt>: bitsandbytes' AdamW8bit (kOptimizerStatic8bit2StateBlockwise): per block of
//     256 values, m and v are 8-bit codes into the signed and the unsigned dynamic map times the
//     block's absmax. Each block is dequantized, updated
//       m = m b1 + (1 - b1) g;  v = v b2 + (1 - b2) g g;
//       p += -lr c2 / c1 * m / (sqrt(v) + c2 eps);  p *= 1 - lr wd (when wd > 0)
//     (c1 = 1 - b1^t, c2 = sqrt(1 - b2^t)), and quantized again against its new absmax: the code
//     of value / absmax found by bitsandbytes' binary search (quantize_2D), a signed code whose
//     sign differs from the value's moved one step toward it. A non-finite gradient leaves its
//     parameter unchanged and zeroes its moments.
//
// One warp per 256-value block, 8 consecutive values per lane; the absmax is a warp reduction.
#include "common.cuh"

namespace {

typedef unsigned char u8;

constexpr unsigned FULL_MASK = 0xffffffffu;
// Values per quantization block of the 8-bit states (src/ops/adamw.rs: STATE_BLOCK).
constexpr int STATE_BLOCK = 256;
// Values per lane.
constexpr int PER_LANE = STATE_BLOCK / 32;

__device__ __forceinline__ u64 thread_index() { return (u64)blockIdx.x * blockDim.x + threadIdx.x; }
__device__ __forceinline__ u64 thread_count() { return (u64)gridDim.x * blockDim.x; }

template <typename G>
__device__ void adamw32(float *__restrict__ p, float *__restrict__ m, float *__restrict__ v, const G *__restrict__ g,
                        float decay, int apply_decay, float w1, float b2, float w2, float step_size, float bc2_sqrt,
                        float eps, float grad_scale, u64 n) {
    for (u64 i = thread_index(); i < n; i += thread_count()) {
        const float gi = __fmul_rn(ft::to_f32(g[i]), grad_scale);
        float pi = p[i];
        if (apply_decay) pi = __fmul_rn(pi, decay);
        const float mi = __fmaf_rn(w1, __fsub_rn(gi, m[i]), m[i]); // torch.lerp(m, g, 1 - b1)
        const float vi = __fadd_rn(__fmul_rn(v[i], b2), __fmul_rn(__fmul_rn(w2, gi), gi));
        const float denom = __fadd_rn(__fdiv_rn(__fsqrt_rn(vi), bc2_sqrt), eps);
        p[i] = __fadd_rn(pi, __fmul_rn(step_size, __fdiv_rn(mi, denom)));
        m[i] = mi;
        v[i] = vi;
    }
}

// bitsandbytes' quantize_2D<SIGNED>: the code of x (already divided by the absmax) in the sorted
// 256-entry `code`: a 7-step binary search from 127, then the last probe or its bracketing
// neighbour, by comparing x with their midpoint. The bracket starts as [-1, 1] (signed) or
// [0, 1]. NaN ends at 0.
__device__ __forceinline__ unsigned quantize_2d(const float *code, bool is_signed, float x) {
    int pivot = 127, upper_pivot = 255, lower_pivot = 0;
    float lower = is_signed ? -1.0f : 0.0f, upper = 1.0f;
    float val = code[pivot];
#pragma unroll
    for (int i = 64; i > 0; i >>= 1) {
        if (x > val) {
            lower_pivot = pivot;
            lower = val;
            pivot += i;
        } else {
            upper_pivot = pivot;
            upper = val;
            pivot -= i;
        }
        val = code[pivot];
    }
    if (x > val) return x > __fmul_rn(__fadd_rn(upper, val), 0.5f) ? upper_pivot : pivot;
    return x < __fmul_rn(__fadd_rn(lower, val), 0.5f) ? lower_pivot : pivot;
}

__device__ __forceinline__ bool finite(float x) { return fabsf(x) <= 3.402823466e38f; }

// maps: [512], the signed map then the unsigned one. One warp per block of STATE_BLOCK values.
template <typename G>
__device__ void adamw8(float *__restrict__ p, u8 *__restrict__ m_codes, float *__restrict__ m_absmax,
                       u8 *__restrict__ v_codes, float *__restrict__ v_absmax, const G *__restrict__ g,
                       const float *__restrict__ maps, float b1, float b2, float c2_eps, float step_size, float decay,
                       int apply_decay, float grad_scale, u64 n) {
    __shared__ float smap[256], umap[256];
    for (int i = threadIdx.x; i < 256; i += blockDim.x) {
        smap[i] = maps[i];
        umap[i] = maps[256 + i];
    }
    __syncthreads();
    const int lane = threadIdx.x & 31;
    const u64 blocks = (n + STATE_BLOCK - 1) / STATE_BLOCK;
    const float w1 = __fsub_rn(1.0f, b1), w2 = __fsub_rn(1.0f, b2);
    for (u64 b = thread_index() >> 5; b < blocks; b += thread_count() >> 5) {
        const u64 first = b * STATE_BLOCK + PER_LANE * lane; // this lane's values: first .. first + 7
        const float m_scale = m_absmax[b], v_scale = v_absmax[b];
        float s1[PER_LANE], s2[PER_LANE];
        bool ok[PER_LANE];
        float max1 = -3.402823466e38f, max2 = -3.402823466e38f;
#pragma unroll
        for (int e = 0; e < PER_LANE; ++e) {
            const u64 i = first + e;
            ok[e] = false;
            s1[e] = 0.0f;
            s2[e] = 0.0f;
            if (i < n) {
                const float gi = __fmul_rn(ft::to_f32(g[i]), grad_scale);
                if (finite(gi)) {
                    ok[e] = true;
                    const float mi = __fmul_rn(smap[m_codes[i]], m_scale);
                    const float vi = __fmul_rn(umap[v_codes[i]], v_scale);
                    s2[e] = __fadd_rn(__fmul_rn(vi, b2), __fmul_rn(__fmul_rn(w2, gi), gi));
                    s1[e] = __fadd_rn(__fmul_rn(mi, b1), __fmul_rn(w1, gi));
                }
                max1 = fmaxf(max1, fabsf(s1[e]));
                max2 = fmaxf(max2, fabsf(s2[e]));
            }
        }
#pragma unroll
        for (int off = 16; off > 0; off >>= 1) {
            max1 = fmaxf(max1, __shfl_xor_sync(FULL_MASK, max1, off));
            max2 = fmaxf(max2, __shfl_xor_sync(FULL_MASK, max2, off));
        }
#pragma unroll
        for (int e = 0; e < PER_LANE; ++e) {
            const u64 i = first + e;
            if (i >= n) continue;
            if (ok[e]) {
                const float denom = __fadd_rn(__fsqrt_rn(s2[e]), c2_eps);
                float pi = __fadd_rn(p[i], __fmul_rn(step_size, __fdiv_rn(s1[e], denom)));
                if (apply_decay) pi = __fmul_rn(pi, decay);
                p[i] = pi;
            }
            unsigned c1 = quantize_2d(smap, true, __fdiv_rn(s1[e], max1));
            if (signbit(smap[c1]) != signbit(s1[e])) c1 = (c1 + (s1[e] > 0.0f ? 1u : 255u)) & 255u;
            m_codes[i] = (u8)c1;
            v_codes[i] = (u8)quantize_2d(umap, false, __fdiv_rn(s2[e], max2));
        }
        if (lane == 0) {
            m_absmax[b] = max1;
            v_absmax[b] = max2;
        }
    }
}

} // namespace

// p, m, v: [n] f32; g: [n]. Any grid and block size. apply_decay: wd != 0; decay = 1 - lr wd;
// w1 = 1 - b1; w2 = 1 - b2; step_size = -lr / (1 - b1^t); bc2_sqrt = sqrt(1 - b2^t).
extern "C" __global__ void adamw_f32_gf32(float *p, float *m, float *v, const float *g, float decay, int apply_decay,
                                          float w1, float b2, float w2, float step_size, float bc2_sqrt, float eps,
                                          float grad_scale, u64 n) {
    adamw32<float>(p, m, v, g, decay, apply_decay, w1, b2, w2, step_size, bc2_sqrt, eps, grad_scale, n);
}

extern "C" __global__ void adamw_f32_gbf16(float *p, float *m, float *v, const __nv_bfloat16 *g, float decay,
                                           int apply_decay, float w1, float b2, float w2, float step_size,
                                           float bc2_sqrt, float eps, float grad_scale, u64 n) {
    adamw32<__nv_bfloat16>(p, m, v, g, decay, apply_decay, w1, b2, w2, step_size, bc2_sqrt, eps, grad_scale, n);
}

// p: [n]; m_codes, v_codes: [n]; m_absmax, v_absmax: [ceil(n / 256)]; g: [n]; maps: [512].
// Block: a multiple of 32 threads; any grid. c2_eps = sqrt(1 - b2^t) * eps; step_size =
// -lr sqrt(1 - b2^t) / (1 - b1^t); apply_decay: wd > 0; decay = 1 - lr wd (all f32, as
// bitsandbytes computes them).
extern "C" __global__ void adamw_8bit_gf32(float *p, u8 *m_codes, float *m_absmax, u8 *v_codes, float *v_absmax,
                                           const float *g, const float *maps, float b1, float b2, float c2_eps,
                                           float step_size, float decay, int apply_decay, float grad_scale, u64 n) {
    adamw8<float>(p, m_codes, m_absmax, v_codes, v_absmax, g, maps, b1, b2, c2_eps, step_size, decay, apply_decay,
                  grad_scale, n);
}

extern "C" __global__ void adamw_8bit_gbf16(float *p, u8 *m_codes, float *m_absmax, u8 *v_codes, float *v_absmax,
                                            const __nv_bfloat16 *g, const float *maps, float b1, float b2,
                                            float c2_eps, float step_size, float decay, int apply_decay,
                                            float grad_scale, u64 n) {
    adamw8<__nv_bfloat16>(p, m_codes, m_absmax, v_codes, v_absmax, g, maps, b1, b2, c2_eps, step_size, decay,
                          apply_decay, grad_scale, n);
}
