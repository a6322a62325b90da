#!/usr/bin/env python3
"""llama_quantize_ref.py: llama.cpp's `llama_model_quantize` (what `llama-quantize` runs) as
the reference for which GGML type each tensor gets in a file type such as Q4_K_M, for
ferrotune's `gguf::mixes` tests.

    llama_quantize_ref.py quantize IN.gguf OUT.gguf FTYPE
        quantizes IN (an F32/F16 GGUF) to FTYPE (a LlamaFileType name: MOSTLY_Q4_K_M, ...)
        and prints {"tensors": [[name, shape (row-major), ggml type name], ...]} as JSON
    llama_quantize_ref.py fixture OUT.json
        writes gguf/tests/fixtures/llama_quantize_types.json: for SmolLM2-135M (F32 version,
        models/SmolLM2-135M-Instruct.f32.gguf, made from the Q4_1 file when absent) and two
        synthetic llama models (32 layers untied with rope_freqs; 80 layers with grouped-query
        attention, llama.cpp's "70B"), every tensor's name and shape and, per file type, the
        types llama.cpp chose, in tensor order.

The library: libllama from the npm package @node-llama-cpp/linux-x64 (a CPU build of
llama.cpp's shared libraries), fetched into .venv/node-llama-cpp by
scripts/setup-llama-quantize.sh; the xllamacpp wheel does not export llama_model_quantize.
llama_model_quantize_params is treated as opaque bytes from llama_model_quantize_default_params
(no importance matrix, no overrides, not pure); only its first two fields, nthread and ftype
(int32 each, the same in every llama.cpp version), are set.
Run with the repository's .venv (scripts/setup-python.sh).
"""

import ctypes
import json
import os
import subprocess
import sys
import tempfile

import gguf
import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = os.path.join(ROOT, ".venv", "node-llama-cpp")
LIB_DIR = os.path.join(PACKAGE, "bins", "linux-x64")

FTYPES = ["ALL_F32", "MOSTLY_F16", "MOSTLY_BF16", "MOSTLY_Q8_0", "MOSTLY_Q4_0", "MOSTLY_Q4_1",
          "MOSTLY_Q5_0", "MOSTLY_Q5_1", "MOSTLY_Q4_K_M", "MOSTLY_Q5_K_M", "MOSTLY_Q6_K"]


def fail(message):
    sys.exit(f"llama_quantize_ref: {message}")


class QuantizeParams(ctypes.Structure):
    """struct llama_model_quantize_params as opaque bytes, larger than the real struct."""

    _fields_ = [("opaque", ctypes.c_uint8 * 512)]


def load_library():
    if not os.path.isdir(LIB_DIR):
        fail(f"{LIB_DIR} missing: run scripts/setup-llama-quantize.sh")
    for name in ("libggml-base.so", "libggml.v0.5.0.so"):
        ctypes.CDLL(os.path.join(LIB_DIR, name), mode=ctypes.RTLD_GLOBAL)
    lib = ctypes.CDLL(os.path.join(LIB_DIR, "libllama.v0.5.0.so"))
    lib.llama_model_quantize_default_params.restype = QuantizeParams
    lib.llama_model_quantize.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.POINTER(QuantizeParams)]
    lib.llama_model_quantize.restype = ctypes.c_uint32
    log_cb = ctypes.CFUNCTYPE(None, ctypes.c_int, ctypes.c_char_p, ctypes.c_void_p)
    lib.llama_log_set.argtypes = [log_cb, ctypes.c_void_p]
    lib._quiet = log_cb(lambda level, text, data: None)  # keep a reference
    lib.llama_log_set(lib._quiet, None)
    lib.llama_backend_init()
    return lib


def quantize(lib, src, dst, ftype_name):
    params = lib.llama_model_quantize_default_params()
    raw = params.opaque
    ftype = int(gguf.LlamaFileType[ftype_name])
    ctypes.memmove(ctypes.addressof(raw), ctypes.byref(ctypes.c_int32(2)), 4)  # nthread
    ctypes.memmove(ctypes.addressof(raw) + 4, ctypes.byref(ctypes.c_int32(ftype)), 4)  # ftype
    rc = lib.llama_model_quantize(src.encode(), dst.encode(), ctypes.byref(params))
    if rc != 0:
        fail(f"llama_model_quantize({src}, {ftype_name}) returned {rc}")


def tensor_table(path):
    reader = gguf.GGUFReader(path)
    return [[t.name, [int(d) for d in reversed(t.shape)], t.tensor_type.name.lower().replace("_k", "_K")]
            for t in reader.tensors]


def synthetic_model(path, n_layers, n_embd, n_ff, n_head, n_head_kv, n_vocab, tied, rope_freqs):
    """A llama-architecture F32 GGUF with random weights of the given shapes."""
    rng = np.random.default_rng(n_layers)
    head_dim = n_embd // n_head
    w = gguf.GGUFWriter(path, "llama")
    w.add_context_length(256)
    w.add_embedding_length(n_embd)
    w.add_block_count(n_layers)
    w.add_feed_forward_length(n_ff)
    w.add_head_count(n_head)
    w.add_head_count_kv(n_head_kv)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_dimension_count(head_dim)
    w.add_vocab_size(n_vocab)
    w.add_file_type(int(gguf.LlamaFileType.ALL_F32))

    def add(name, *shape):
        w.add_tensor(name, (rng.standard_normal(shape) * 0.02).astype(np.float32))

    add("token_embd.weight", n_vocab, n_embd)
    if rope_freqs:
        add("rope_freqs.weight", head_dim // 2)
    for i in range(n_layers):
        add(f"blk.{i}.attn_norm.weight", n_embd)
        add(f"blk.{i}.attn_q.weight", n_embd, n_embd)
        add(f"blk.{i}.attn_k.weight", n_head_kv * head_dim, n_embd)
        add(f"blk.{i}.attn_v.weight", n_head_kv * head_dim, n_embd)
        add(f"blk.{i}.attn_output.weight", n_embd, n_embd)
        add(f"blk.{i}.ffn_norm.weight", n_embd)
        add(f"blk.{i}.ffn_gate.weight", n_ff, n_embd)
        add(f"blk.{i}.ffn_up.weight", n_ff, n_embd)
        add(f"blk.{i}.ffn_down.weight", n_embd, n_ff)
    add("output_norm.weight", n_embd)
    if not tied:
        add("output.weight", n_vocab, n_embd)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def model_entry(lib, name, src, tmp, n_layers, n_head, n_head_kv):
    entry = {"name": name, "n_layers": n_layers, "n_head": n_head, "n_head_kv": n_head_kv}
    source = tensor_table(src)
    entry["tensors"] = [[n, shape] for n, shape, _ in source]
    entry["types"] = {}
    for ftype in FTYPES:
        out = os.path.join(tmp, f"{ftype}.gguf")
        quantize(lib, src, out, ftype)
        table = tensor_table(out)
        os.remove(out)
        by_name = {n: t for n, _, t in table}
        if sorted(by_name) != sorted(n for n, _ in entry["tensors"]):
            fail(f"{name} {ftype}: the quantized file has other tensors")
        entry["types"][ftype.removeprefix("MOSTLY_").removeprefix("ALL_")] = [by_name[n] for n, _ in entry["tensors"]]
        print(f"{name} {ftype}: done", file=sys.stderr)
    return entry


def fixture(out_path):
    lib = load_library()
    with open(os.path.join(PACKAGE, "package.json"), encoding="utf-8") as f:
        package = json.load(f)
    models = []
    with tempfile.TemporaryDirectory() as tmp:
        smol = os.path.join(ROOT, "models", "SmolLM2-135M-Instruct.f32.gguf")
        if not os.path.exists(smol):
            q41 = os.path.join(ROOT, "models", "SmolLM2-135M-Instruct.Q4_1.gguf")
            smol = os.path.join(tmp, "smol-f32.gguf")
            subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "gguf_to_f32.py"), q41, smol], check=True)
        models.append(model_entry(lib, "SmolLM2-135M-Instruct", smol, tmp, 30, 9, 3))
        syn = os.path.join(tmp, "syn32.gguf")
        synthetic_model(syn, 32, 256, 512, 8, 2, 512, tied=False, rope_freqs=True)
        models.append(model_entry(lib, "synthetic 32 layers, untied, rope_freqs", syn, tmp, 32, 8, 2))
        os.remove(syn)
        syn = os.path.join(tmp, "syn80.gguf")
        synthetic_model(syn, 80, 256, 256, 4, 1, 256, tied=False, rope_freqs=False)
        models.append(model_entry(lib, "synthetic 80 layers, grouped-query attention (llama.cpp's 70B)", syn, tmp, 80, 4, 1))
    doc = {
        "source": f"llama_model_quantize of {package['name']}@{package['version']} (scripts/llama_quantize_ref.py fixture)",
        "models": models,
    }
    with open(out_path, "w", encoding="utf-8") as f:
        json.dump(doc, f, separators=(",", ":"))
        f.write("\n")


def main():
    args = sys.argv[1:]
    if len(args) == 4 and args[0] == "quantize":
        lib = load_library()
        quantize(lib, args[1], args[2], args[3])
        print(json.dumps({"tensors": tensor_table(args[2])}))
    elif len(args) == 2 and args[0] == "fixture":
        fixture(args[1])
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
