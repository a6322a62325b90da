#!/usr/bin/env python3
"""Make the bitsandbytes NF4 reference fixture for engine/tests/nf4_bnb.rs.

Usage:
    python scripts/nf4_reference.py [OUT]            # default engine/tests/fixtures/nf4_bnb.safetensors
    python scripts/nf4_reference.py --stress OUT     # large inputs (~700 MB), not for the repo
    python scripts/nf4_reference.py --device cpu OUT # bitsandbytes' CPU backend (see below)

Needs torch, bitsandbytes, safetensors and numpy. Runs bitsandbytes
`quantize_4bit(quant_type="nf4", blocksize=64, compress_statistics=False/True)` on seeded random
inputs (sizes that are not multiples of 64 or 256, odd element counts, a zero block, outliers,
a bf16 input) and on hand-made inputs that sit exactly on the NF4 decision thresholds and on
the midpoints of the 8-bit dynamic map. Writes, per case NAME:

    NAME.input                    the input (f32 or bf16), in its shape
    NAME.plain.packed             u8 [(n+1)//2]   compress_statistics=False
    NAME.plain.absmax             f32 [blocks]
    NAME.plain.dequant            dequantize_4bit output (input dtype)
    NAME.dq.packed                u8 [(n+1)//2]   compress_statistics=True
    NAME.dq.absmax_codes          u8 [blocks]     quant_state.absmax
    NAME.dq.absmax_scales         f32 [ceil(blocks/256)]  quant_state.state2.absmax
    NAME.dq.offset                f32 [1]         quant_state.offset
    NAME.dq.absmax_decoded        f32 [blocks]    dequantize_blockwise(absmax, state2) + offset
    NAME.dq.dequant               dequantize_4bit output (input dtype)

plus `dyn_ties.{input,codes,absmax}` (quantize_blockwise with the dynamic map, blocksize 256),
`dynamic_map` (create_dynamic_map(signed=True)) and `nf4_code` (get_4bit_type("nf4")). The
metadata records the versions, the device and the case list.

The reference is bitsandbytes on CUDA, the path that made the QLoRA checkpoints in the wild, so
CUDA is required unless `--device cpu` is given. bitsandbytes' CPU backend is a different
implementation (it picks 8-bit codes through a 65536-entry lookup table and treats all-zero
blocks differently) and its fixture does not match the CUDA one.
"""

import argparse
import os
import sys

import numpy as np
import torch
import bitsandbytes
import bitsandbytes.functional as F
from safetensors.torch import save_file

BLOCK = 64


def flat_u8(t):
    return t.detach().reshape(-1).to("cpu", torch.uint8).contiguous()


def cpu(t):
    return t.detach().to("cpu").contiguous()


def nf4_thresholds():
    """The 15 dQuantizeNF4 thresholds as f32 midpoints of the NF4 code values."""
    code = F.get_4bit_type("nf4", device="cpu").numpy().astype(np.float32)
    return ((code[:-1] + code[1:]) / np.float32(2)).astype(np.float32)


def nf4_ties_block():
    """One block of 64 f32 values whose absmax is 1.0, holding every decision threshold of
    dQuantizeNF4, each as its f32 midpoint, as the correctly rounded f32 of the decimal literal
    in csrc/kernels.cu (the two differ by one ulp for four thresholds), and one ulp outside
    either. With absmax 1 the normalized value is the value itself, so this pins the exact
    comparison against each threshold."""
    literals = [
        "-0.8480964004993439", "-0.6106329262256622", "-0.4599952697753906",
        "-0.33967943489551544", "-0.23460740596055984", "-0.13791173323988914",
        "-0.045525018125772476", "0.03979014977812767", "0.1202552504837513",
        "0.2035212516784668", "0.2920137718319893", "0.3893125355243683",
        "0.5016634166240692", "0.6427869200706482", "0.8614784181118011",
    ]
    from fractions import Fraction

    vals = [np.float32(1.0)]
    for mid, lit in zip(nf4_thresholds(), literals):
        x = np.float32(float(lit))
        cands = [np.nextafter(x, np.float32(-2)), x, np.nextafter(x, np.float32(2))]
        direct = min(cands, key=lambda c: abs(Fraction(float(c)) - Fraction(lit)))
        lo, hi = min(mid, direct), max(mid, direct)
        group = {lo, hi, np.nextafter(lo, np.float32(-2)), np.nextafter(hi, np.float32(2))}
        vals.extend(sorted(group))
    code = F.get_4bit_type("nf4", device="cpu").numpy().astype(np.float32)
    i = 0
    while len(vals) < BLOCK:
        vals.append(code[i % 16])
        i += 1
    return torch.from_numpy(np.array(vals[:BLOCK], dtype=np.float32))


def dyn_ties_input():
    """Blocks of 256 f32 values, each starting with 1.0 (so absmax is 1 and the normalized
    value is the value), holding every midpoint (a + b) * 0.5 of neighbouring dynamic-map
    entries, exactly and one ulp either side."""
    m = F.create_dynamic_map(signed=True).numpy().astype(np.float32)
    vals = []
    for j in range(255):
        mid = np.float32((m[j] + m[j + 1]) * np.float32(0.5))
        vals += [np.nextafter(mid, np.float32(-2)), mid, np.nextafter(mid, np.float32(2))]
    blocks = []
    for k in range(0, len(vals), 255):
        chunk = vals[k : k + 255]
        blocks.append([np.float32(1.0)] + chunk + [np.float32(0.0)] * (255 - len(chunk)))
    return torch.from_numpy(np.array(sum(blocks, []), dtype=np.float32))


def randn(shape, std, seed, dtype=torch.float32, outliers=0.0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g) * std
    if outliers > 0:
        mask = torch.rand(shape, generator=g) < outliers
        x = torch.where(mask, x * 50.0, x)
    return x.to(dtype)


def small_cases():
    cases = {}
    w = randn((64, 96), 0.02, 1)
    w.view(-1)[128:192] = 0.0  # block 2 is all zeros
    cases["w64x96_zero_block"] = w
    cases["odd33x65"] = randn((33, 65), 1.0, 2)  # 2145 values: odd, last block holds 33
    cases["outliers7x300"] = randn((7, 300), 0.02, 3, outliers=0.01)
    cases["bf16_96x200"] = randn((96, 200), 0.02, 4, dtype=torch.bfloat16, outliers=0.002)
    cases["tiny3"] = torch.tensor([0.5, -2.0, 0.25], dtype=torch.float32)
    cases["nf4_ties"] = nf4_ties_block()
    return cases


def stress_cases():
    return {
        "stress_bf16_4096x4096": randn((4096, 4096), 0.02, 10, dtype=torch.bfloat16, outliers=1e-4),
        "stress_f32_4097x1001": randn((4097, 1001), 1.0, 11),
        "stress_f32_uniform": (torch.rand((3000, 2048), generator=torch.Generator().manual_seed(12)) * 2 - 1),
        "stress_f32_heavy": randn((2048, 3072), 0.02, 13, outliers=0.05),
    }


def run_case(name, x, device, out):
    xd = x.to(device)
    out[f"{name}.input"] = cpu(x)
    for mode, cs in (("plain", False), ("dq", True)):
        packed, st = F.quantize_4bit(xd, blocksize=BLOCK, compress_statistics=cs, quant_type="nf4")
        out[f"{name}.{mode}.packed"] = flat_u8(packed)
        if cs:
            out[f"{name}.{mode}.absmax_codes"] = flat_u8(st.absmax)
            out[f"{name}.{mode}.absmax_scales"] = cpu(st.state2.absmax).float().reshape(-1)
            offset = st.offset if torch.is_tensor(st.offset) else torch.tensor(st.offset)
            out[f"{name}.{mode}.offset"] = cpu(offset).float().reshape(1)
            dec = F.dequantize_blockwise(st.absmax, st.state2) + st.offset
            out[f"{name}.{mode}.absmax_decoded"] = cpu(dec).float().reshape(-1)
        else:
            out[f"{name}.{mode}.absmax"] = cpu(st.absmax).float().reshape(-1)
        deq = F.dequantize_4bit(packed, st, quant_type="nf4")
        # bitsandbytes' CPU backend returns a 1-D shape as [1, n].
        assert deq.numel() == x.numel() and deq.dtype == x.dtype, (deq.shape, deq.dtype)
        out[f"{name}.{mode}.dequant"] = cpu(deq).reshape(x.shape)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    here = os.path.dirname(os.path.abspath(__file__))
    default_out = os.path.join(here, "..", "engine", "tests", "fixtures", "nf4_bnb.safetensors")
    ap.add_argument("out", nargs="?", default=default_out)
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    ap.add_argument("--stress", action="store_true", help="large inputs instead of the small fixture")
    args = ap.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("nf4_reference.py: CUDA is not available; the reference is bitsandbytes on CUDA "
                 "(pass --device cpu to record the CPU backend instead)")

    out = {}
    cases = stress_cases() if args.stress else small_cases()
    for name, x in cases.items():
        run_case(name, x, args.device, out)
    out["dynamic_map"] = F.create_dynamic_map(signed=True).float().contiguous()
    out["nf4_code"] = F.get_4bit_type("nf4", device="cpu").float().contiguous()
    d = dyn_ties_input()
    codes, st = F.quantize_blockwise(d.to(args.device), blocksize=256)
    out["dyn_ties.input"] = d
    out["dyn_ties.codes"] = flat_u8(codes)
    out["dyn_ties.absmax"] = cpu(st.absmax).float().reshape(-1)

    meta = {
        "bitsandbytes": bitsandbytes.__version__,
        "torch": torch.__version__,
        "device": args.device,
        "device_name": torch.cuda.get_device_name() if args.device == "cuda" else "cpu",
        "cases": ",".join(cases),
        "blocksize": str(BLOCK),
    }
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    save_file(out, args.out, metadata=meta)
    print(f"wrote {args.out}: {os.path.getsize(args.out)} bytes, {meta}")


if __name__ == "__main__":
    main()
