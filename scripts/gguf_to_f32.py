#!/usr/bin/env python3
"""gguf_to_f32.py: rewrite a GGUF model with every tensor dequantized to F32.

Usage: .venv/bin/python scripts/gguf_to_f32.py IN.gguf OUT.gguf

The metadata is copied unchanged (general.file_type is set to ALL_F32); tensors keep their
names, shapes and row order (the Q/K permutation included) and are dequantized with the
`gguf` package's reference dequantizers. llama.cpp then computes the same weights in f32
instead of with block-quantized dot products (which quantize the activations to 8 bits),
so its logits are an exact-arithmetic reference for the weights of IN.gguf.
Written to OUT.gguf.tmp and renamed.
"""
import os
import sys

import gguf
import numpy as np
from gguf.quants import dequantize


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    src, dst = sys.argv[1], sys.argv[2]
    reader = gguf.GGUFReader(src)
    arch = reader.fields["general.architecture"].contents()
    tmp = dst + ".tmp"
    writer = gguf.GGUFWriter(tmp, arch)
    for name, field in reader.fields.items():
        if name.startswith("GGUF.") or name == "general.architecture":
            continue
        if name == "general.file_type":
            writer.add_uint32(name, int(gguf.LlamaFileType.ALL_F32))
            continue
        vtype = field.types[0]
        if vtype == gguf.GGUFValueType.ARRAY:
            writer.add_key_value(name, field.contents(), vtype, sub_type=field.types[-1])
        else:
            writer.add_key_value(name, field.contents(), vtype)
    for t in reader.tensors:
        values = dequantize(t.data, t.tensor_type).astype(np.float32)
        writer.add_tensor(t.name, values.reshape([int(d) for d in reversed(t.shape)]))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    os.replace(tmp, dst)
    print(f"gguf_to_f32: wrote {dst} ({os.path.getsize(dst)} bytes)")


if __name__ == "__main__":
    main()
