// ferrotune: the NF4 code values and the absmax decoding, shared by nf4.cu and nf4_gemm.cu.
//
// An absmax is either plain f32 or double-quantized: absmax[b] = map[codes[b]] * scales[b / 256]
// + offset (map: the 256-entry signed dynamic map, f32). Products and sums are rounded separately
// (__fmul_rn/__fadd_rn: no fused multiply-add), in the order of the CPU twin
// (engine/src/quant/nf4.rs), so that decoding is bit-identical to it.
#pragma once

namespace nf4 {

typedef unsigned char u8;

// bitsandbytes' NF4 code values, with the digits of engine::quant::nf4::NF4_CODE.
__constant__ float kCode[16] = {
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

// The absmax of block b, plain (`plain` not null) or double-quantized.
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

// What decoding one absmax needs from memory: the plain value, or the code and its scale
// (loaded early, decoded late, so that the loads are in flight meanwhile).
struct RawAbsmax {
    float f;
    unsigned code;
};

__device__ __forceinline__ RawAbsmax load_raw(const Absmax &am, u64 b) {
    RawAbsmax r;
    if (am.plain) {
        r.f = __ldg(am.plain + b);
        r.code = 0;
    } else {
        r.code = __ldg(am.codes + b);
        r.f = __ldg(am.scales + (b >> 8));
    }
    return r;
}

// A 4-byte load of streamed packed codes (read once): by default it bypasses L1, so that the
// activations stay there.
#ifndef NF4_LOAD_QUALIFIERS
#define NF4_LOAD_QUALIFIERS ".nc.L1::no_allocate"
#endif
__device__ __forceinline__ unsigned load_stream(const unsigned *p) {
    unsigned v;
    asm("ld.global" NF4_LOAD_QUALIFIERS ".u32 %0, [%1];" : "=r"(v) : "l"(p));
    return v;
}

__device__ __forceinline__ float decode_raw(const Absmax &am, RawAbsmax r) {
    if (am.plain) return r.f;
    return __fadd_rn(__fmul_rn(__ldg(am.map + r.code), r.f), am.offset);
}

} // namespace nf4
