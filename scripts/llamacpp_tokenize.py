#!/usr/bin/env python3
"""llamacpp_tokenize.py: llama.cpp's own tokenizer on a GGUF file, the reference for
ferrotune's `Tokenizer::from_gguf` tests.

    llamacpp_tokenize.py < request.json > reply.json

request: {"model": "path/to/model.gguf", "prompts": ["text", ...], "vocab_only": false}
reply:   {"n_vocab", "bos", "eos" (-1 when none), "add_bos",
          "eog":         ids llama.cpp treats as end of generation (llama_vocab_is_eog),
          "control":     ids of control tokens (llama_vocab_is_control),
          "pieces":      hex of every token's bytes (llama_token_to_piece, special=true),
          "results": [{"with_special":    llama_tokenize(add_special=true,  parse_special=true),
                       "without_special": llama_tokenize(add_special=false, parse_special=true),
                       "detok":           hex of llama_detokenize(with_special, remove_special=false,
                                          unparse_special=true),
                       "detok_skip":      hex of llama_detokenize(with_special, remove_special=true,
                                          unparse_special=false)}]}

It calls libllama's C API (llama.h) inside the `xllamacpp` wheel through ctypes: the wheel's
Python API has no tokenize call, but its extension module exports the whole C API. The model
is loaded with llama_model_default_params() (CPU, mmap), which takes well under a second for
a small model; with "vocab_only" only the vocabulary is loaded (files without tensors, as
written by scripts/tokenizer_json_to_gguf.py). Run with the repository's .venv
(scripts/setup-python.sh).
"""

import ctypes
import json
import os
import sys

import xllamacpp

LIB = ctypes.CDLL(os.path.join(os.path.dirname(xllamacpp.__file__), "xllamacpp.abi3.so"))
c_vocab = ctypes.c_void_p


class ModelParams(ctypes.Structure):
    """struct llama_model_params, treated as opaque bytes: it is only passed back by value.
    512 bytes is larger than the real struct; the extra bytes are never read."""

    _fields_ = [("opaque", ctypes.c_uint8 * 512)]


# Byte offsets in llama_model_params of the llama.cpp in xllamacpp==2026.10.11549 (pinned by
# scripts/setup-python.sh): devices, tensor_buft_overrides (pointers), n_gpu_layers,
# split_mode, load_mode, lazy_mode, main_gpu (int32), tensor_split, progress_callback,
# progress_callback_user_data, kv_overrides (pointers), then the bools vocab_only,
# check_tensors, use_extra_bufts, ...
VOCAB_ONLY, USE_EXTRA_BUFTS = 72, 74


def model_params(vocab_only: bool) -> ModelParams:
    params = llama_model_default_params()
    if vocab_only:
        raw = params.opaque
        # The defaults (vocab_only false, use_extra_bufts true) confirm the layout.
        if raw[VOCAB_ONLY] != 0 or raw[USE_EXTRA_BUFTS] != 1:
            sys.exit("llamacpp_tokenize: unexpected llama_model_params layout; update VOCAB_ONLY")
        raw[VOCAB_ONLY] = 1
    return params


LOG_CALLBACK = ctypes.CFUNCTYPE(None, ctypes.c_int, ctypes.c_char_p, ctypes.c_void_p)


def bind(name, argtypes, restype):
    fn = getattr(LIB, name)
    fn.argtypes = argtypes
    fn.restype = restype
    return fn


llama_log_set = bind("llama_log_set", [LOG_CALLBACK, ctypes.c_void_p], None)
llama_backend_init = bind("llama_backend_init", [], None)
llama_model_default_params = bind("llama_model_default_params", [], ModelParams)
llama_model_load_from_file = bind("llama_model_load_from_file", [ctypes.c_char_p, ModelParams], ctypes.c_void_p)
llama_model_free = bind("llama_model_free", [ctypes.c_void_p], None)
llama_model_get_vocab = bind("llama_model_get_vocab", [ctypes.c_void_p], c_vocab)
llama_vocab_n_tokens = bind("llama_vocab_n_tokens", [c_vocab], ctypes.c_int32)
llama_vocab_bos = bind("llama_vocab_bos", [c_vocab], ctypes.c_int32)
llama_vocab_eos = bind("llama_vocab_eos", [c_vocab], ctypes.c_int32)
llama_vocab_get_add_bos = bind("llama_vocab_get_add_bos", [c_vocab], ctypes.c_bool)
llama_vocab_is_eog = bind("llama_vocab_is_eog", [c_vocab, ctypes.c_int32], ctypes.c_bool)
llama_vocab_is_control = bind("llama_vocab_is_control", [c_vocab, ctypes.c_int32], ctypes.c_bool)
llama_tokenize = bind(
    "llama_tokenize",
    [c_vocab, ctypes.c_char_p, ctypes.c_int32, ctypes.POINTER(ctypes.c_int32), ctypes.c_int32, ctypes.c_bool, ctypes.c_bool],
    ctypes.c_int32,
)
llama_token_to_piece = bind(
    "llama_token_to_piece",
    [c_vocab, ctypes.c_int32, ctypes.c_char_p, ctypes.c_int32, ctypes.c_int32, ctypes.c_bool],
    ctypes.c_int32,
)
llama_detokenize = bind(
    "llama_detokenize",
    [c_vocab, ctypes.POINTER(ctypes.c_int32), ctypes.c_int32, ctypes.c_char_p, ctypes.c_int32, ctypes.c_bool, ctypes.c_bool],
    ctypes.c_int32,
)


def tokenize(vocab, text: str, add_special: bool) -> list:
    data = text.encode("utf-8")
    cap = len(data) + 16
    buf = (ctypes.c_int32 * cap)()
    n = llama_tokenize(vocab, data, len(data), buf, cap, add_special, True)
    if n < 0:
        raise RuntimeError(f"llama_tokenize failed ({n}) for {text!r}")
    return list(buf[:n])


def piece(vocab, token: int) -> bytes:
    buf = ctypes.create_string_buffer(256)
    n = llama_token_to_piece(vocab, token, buf, 256, 0, True)
    if n < 0:
        buf = ctypes.create_string_buffer(-n)
        n = llama_token_to_piece(vocab, token, buf, -n, 0, True)
    return buf.raw[:n]


def detokenize(vocab, ids: list, remove_special: bool, unparse_special: bool) -> bytes:
    arr = (ctypes.c_int32 * max(1, len(ids)))(*ids)
    cap = 64 + 64 * len(ids)
    buf = ctypes.create_string_buffer(cap)
    n = llama_detokenize(vocab, arr, len(ids), buf, cap, remove_special, unparse_special)
    if n < 0:
        raise RuntimeError(f"llama_detokenize failed ({n})")
    return buf.raw[:n]


def main() -> None:
    request = json.load(sys.stdin)
    quiet = LOG_CALLBACK(lambda level, text, user_data: None)
    llama_log_set(quiet, None)
    llama_backend_init()
    params = model_params(bool(request.get("vocab_only", False)))
    model = llama_model_load_from_file(request["model"].encode(), params)
    if not model:
        sys.exit(f"llamacpp_tokenize: cannot load {request['model']}")
    vocab = llama_model_get_vocab(model)
    n_vocab = llama_vocab_n_tokens(vocab)
    results = []
    for text in request["prompts"]:
        with_special = tokenize(vocab, text, True)
        results.append(
            {
                "with_special": with_special,
                "without_special": tokenize(vocab, text, False),
                "detok": detokenize(vocab, with_special, False, True).hex(),
                "detok_skip": detokenize(vocab, with_special, True, False).hex(),
            }
        )
    reply = {
        "n_vocab": n_vocab,
        "bos": llama_vocab_bos(vocab),
        "eos": llama_vocab_eos(vocab),
        "add_bos": bool(llama_vocab_get_add_bos(vocab)),
        "eog": [i for i in range(n_vocab) if llama_vocab_is_eog(vocab, i)],
        "control": [i for i in range(n_vocab) if llama_vocab_is_control(vocab, i)],
        "pieces": [piece(vocab, i).hex() for i in range(n_vocab)],
        "results": results,
    }
    llama_model_free(model)
    json.dump(reply, sys.stdout)


if __name__ == "__main__":
    main()
