#!/usr/bin/env python3
"""gguf_reference.py: what llama.cpp's own GGUF reader (package `gguf`, `GGUFReader`) sees in
a GGUF file, for ferrotune's `gguf` tests to compare against.

    gguf_reference.py FILE.gguf OUT_DIR [TENSOR ...]

Writes OUT_DIR/reference.json:
    {"version", "alignment", "data_offset",
     "metadata": [{"key", "type", "value"}]   every key in file order; "type" is the GGUF
                                              value type name ("UINT32", "ARRAY[STRING]", ...);
                                              arrays are given whole, nested arrays as nested
                                              lists (decoded from the reader's raw parts:
                                              GGUFReader.contents() flattens them)
     "tensors":  [{"name", "dims", "type", "offset", "n_bytes"}]   dims in GGML order,
                                              offset relative to the tensor-data section}
and, for each TENSOR named, OUT_DIR/<TENSOR>.f32: the tensor dequantized by
`gguf.quants.dequantize`, as little-endian f32 in GGML element order.
Run with the repository's .venv (scripts/setup-python.sh).
"""

import json
import os
import sys

import numpy as np
from gguf import GGUFReader, GGUFValueType
from gguf.quants import dequantize


def type_name(field) -> str:
    names = [t.name for t in field.types]
    if names[0] == "ARRAY":
        return "ARRAY[" + ",".join(names[1:]) + "]"
    return names[0]


def decode_parts(parts, i, gtype):
    """The value of type `gtype` whose raw parts start at parts[i] (GGUFReader's layout: a
    scalar is one part, a string its length and its bytes, an array its element type, its
    count, then each element's parts); returns (value, index after it)."""
    if gtype == GGUFValueType.STRING:
        return str(parts[i + 1].tobytes(), encoding="utf-8"), i + 2
    if gtype == GGUFValueType.ARRAY:
        itype, count = GGUFValueType(int(parts[i][0])), int(parts[i + 1][0])
        i += 2
        items = []
        for _ in range(count):
            item, i = decode_parts(parts, i, itype)
            items.append(item)
        return items, i
    v = parts[i].tolist()[0]
    return (float(v) if isinstance(v, float) else v), i + 1


def value(field):
    if len(field.types) >= 2 and field.types[1] == GGUFValueType.ARRAY:
        # The field's parts start with the key (length, bytes) and the value type.
        return decode_parts(field.parts, 3, GGUFValueType.ARRAY)[0]
    v = field.contents()
    if isinstance(v, float):
        # f32 values are widened exactly; JSON keeps the double.
        return float(v)
    return v


def main() -> None:
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    path, out_dir, wanted = sys.argv[1], sys.argv[2], sys.argv[3:]
    reader = GGUFReader(path)
    version = int(reader.fields["GGUF.version"].contents())
    metadata = [
        {"key": key, "type": type_name(f), "value": value(f)}
        for key, f in reader.fields.items()
        if not key.startswith("GGUF.")
    ]
    tensors = [
        {
            "name": t.name,
            "dims": [int(d) for d in t.shape],
            "type": t.tensor_type.name,
            "offset": int(t.data_offset) - int(reader.data_offset),
            "n_bytes": int(t.n_bytes),
        }
        for t in reader.tensors
    ]
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "reference.json"), "w", encoding="utf-8") as f:
        json.dump(
            {
                "version": version,
                "alignment": int(reader.alignment),
                "data_offset": int(reader.data_offset),
                "metadata": metadata,
                "tensors": tensors,
            },
            f,
            ensure_ascii=False,
        )
    by_name = {t.name: t for t in reader.tensors}
    for name in wanted:
        t = by_name[name]
        values = dequantize(t.data, t.tensor_type).astype("<f4")
        values.tofile(os.path.join(out_dir, name + ".f32"))


if __name__ == "__main__":
    main()
