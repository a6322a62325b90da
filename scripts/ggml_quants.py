#!/usr/bin/env python3
"""ggml_quants.py: llama.cpp's Python GGML block codecs (package `gguf`, module `gguf.quants`)
as a reference for ferrotune's `engine::quant::ggml` tests.

    ggml_quants.py dequantize TYPE IN OUT   IN: raw blocks of TYPE, OUT: little-endian f32
    ggml_quants.py quantize   TYPE IN OUT   IN: little-endian f32, OUT: raw blocks of TYPE

TYPE is a ggml type name as `GGMLQuantizationType` spells it (Q8_0, Q4_K, BF16, ...).
Run with the repository's .venv (scripts/setup-python.sh).
"""

import sys

import numpy as np
from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType
from gguf.quants import dequantize, quantize


def main() -> None:
    if len(sys.argv) != 5 or sys.argv[1] not in ("dequantize", "quantize"):
        sys.exit(__doc__)
    mode, type_name, src, dst = sys.argv[1:]
    qtype = GGMLQuantizationType[type_name.upper()]
    block_size, type_size = GGML_QUANT_SIZES[qtype]
    if mode == "dequantize":
        raw = np.fromfile(src, dtype=np.uint8).reshape(-1, type_size)
        out = dequantize(raw, qtype).astype("<f4")
        assert out.size == raw.shape[0] * block_size
    else:
        values = np.fromfile(src, dtype="<f4").reshape(-1, block_size)
        out = quantize(values, qtype)
    out.tofile(dst)


if __name__ == "__main__":
    main()
