#!/usr/bin/env python3
"""ggml_quantize_ref.py: llama.cpp's own quantizer, `ggml_quantize_chunk`, as the bit-exact
reference for ferrotune's `engine::quant::ggml::quantize`.

    ggml_quantize_ref.py TYPE N_PER_ROW IN.f32 OUT.bin

IN.f32 holds little-endian f32 rows of N_PER_ROW values (N_PER_ROW a multiple of TYPE's
block size); OUT.bin receives the rows quantized to TYPE, exactly the bytes llama.cpp's
`llama-quantize` writes for a tensor of that type without an importance matrix:
`ggml_quantize_chunk(type, src, dst, 0, nrows, n_per_row, imatrix=NULL)`, which for the
block types calls `quantize_<type>` and, with no importance matrix, the reference
`quantize_row_<type>_ref`. TYPE is a ggml type name (Q8_0, Q4_K, F16, ...).

    ggml_quantize_ref.py --batch JOBS.json
        JOBS.json: a JSON list of {"type", "n_per_row", "src", "dst"}, each done as above
        (one process for many jobs: loading the wheel's library takes most of a run)
    ggml_quantize_ref.py --version      prints the llama.cpp build's system info

How: the `xllamacpp` wheel links ggml statically into its extension module and exports
ggml's C API, `ggml_quantize_chunk` included; it is called through ctypes. Run with the
repository's .venv (scripts/setup-python.sh).
"""

import ctypes
import json
import os
import sys

import numpy as np
import xllamacpp
from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType

LIB = ctypes.CDLL(os.path.join(os.path.dirname(xllamacpp.__file__), "xllamacpp.abi3.so"))

# size_t ggml_quantize_chunk(enum ggml_type type, const float * src, void * dst, int64_t start,
#                            int64_t nrows, int64_t n_per_row, const float * imatrix);
ggml_quantize_chunk = LIB.ggml_quantize_chunk
ggml_quantize_chunk.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64,
                                ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p]
ggml_quantize_chunk.restype = ctypes.c_size_t
# bool ggml_quantize_requires_imatrix(enum ggml_type type);
ggml_quantize_requires_imatrix = LIB.ggml_quantize_requires_imatrix
ggml_quantize_requires_imatrix.argtypes = [ctypes.c_int]
ggml_quantize_requires_imatrix.restype = ctypes.c_bool


def fail(message):
    sys.exit(f"ggml_quantize_ref: {message}")


def quantize_file(type_name, n_per_row, src, dst):
    try:
        qtype = GGMLQuantizationType[type_name.upper()]
    except KeyError:
        fail(f"unknown ggml type {type_name!r}")
    block_size, type_size = GGML_QUANT_SIZES[qtype]
    if n_per_row <= 0 or n_per_row % block_size:
        fail(f"N_PER_ROW {n_per_row} is not a positive multiple of the {qtype.name} block size {block_size}")
    if ggml_quantize_requires_imatrix(int(qtype)):
        fail(f"{qtype.name} needs an importance matrix")
    values = np.ascontiguousarray(np.fromfile(src, dtype="<f4"))
    if values.size % n_per_row:
        fail(f"{src}: {values.size} values is not a whole number of {n_per_row}-value rows")
    nrows = values.size // n_per_row
    out = np.zeros(nrows * (n_per_row // block_size) * type_size, dtype=np.uint8)
    written = ggml_quantize_chunk(int(qtype), values.ctypes.data, out.ctypes.data, 0, nrows, n_per_row, None)
    if written != out.size:
        fail(f"ggml_quantize_chunk wrote {written} bytes, expected {out.size}")
    out.tofile(dst)


def main() -> None:
    if sys.argv[1:] == ["--version"]:
        LIB.llama_print_system_info.restype = ctypes.c_char_p
        print(f"xllamacpp {xllamacpp.__version__}: {LIB.llama_print_system_info().decode()}")
    elif len(sys.argv) == 3 and sys.argv[1] == "--batch":
        with open(sys.argv[2], encoding="utf-8") as f:
            jobs = json.load(f)
        for job in jobs:
            quantize_file(job["type"], int(job["n_per_row"]), job["src"], job["dst"])
    elif len(sys.argv) == 5:
        quantize_file(sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4])
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
