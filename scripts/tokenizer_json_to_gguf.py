#!/usr/bin/env python3
"""tokenizer_json_to_gguf.py: a vocabulary-only GGUF from a Hugging Face byte-level BPE
`tokenizer.json`, written the way llama.cpp's convert_hf_to_gguf.py writes a Llama-3-style
vocabulary (`_set_vocab_gpt2`), so that llama.cpp's tokenizer can be run on tokenizers that
ship without a GGUF (Llama-3, DeepSeek-R1-Distill-Llama) for ferrotune's tokenizer tests.

    tokenizer_json_to_gguf.py TOKENIZER_DIR OUT.gguf [--pre llama-bpe]

TOKENIZER_DIR holds tokenizer.json and, optionally, tokenizer_config.json (bos/eos tokens,
add_bos_token, chat_template). The file has `general.architecture` = llama with small
placeholder hyper-parameters and no tensors: load it with llama.cpp's `vocab_only`.
Token types follow convert_hf_to_gguf.py: added tokens marked special are CONTROL (3), other
added tokens USER_DEFINED (4), the rest NORMAL (1); ids missing from the vocabulary become
"[PAD<id>]" (UNUSED, 5). Run with the repository's .venv (scripts/setup-python.sh).
"""

import argparse
import json
import os

import gguf


def token_text(value):
    if isinstance(value, dict):
        return value.get("content")
    return value


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("tokenizer_dir")
    ap.add_argument("out")
    ap.add_argument("--pre", default="llama-bpe")
    args = ap.parse_args()

    with open(os.path.join(args.tokenizer_dir, "tokenizer.json"), encoding="utf-8") as f:
        tok = json.load(f)
    config_path = os.path.join(args.tokenizer_dir, "tokenizer_config.json")
    config = {}
    if os.path.exists(config_path):
        with open(config_path, encoding="utf-8") as f:
            config = json.load(f)

    model = tok["model"]
    assert model["type"] == "BPE", model["type"]
    vocab = dict(model["vocab"])
    added = {t["id"]: t for t in tok.get("added_tokens", [])}
    for i, t in added.items():
        vocab[t["content"]] = i
    n = max(vocab.values()) + 1
    tokens = [f"[PAD{i}]" for i in range(n)]
    types = [gguf.TokenType.UNUSED] * n
    for text, i in vocab.items():
        tokens[i] = text
        if i in added:
            types[i] = gguf.TokenType.CONTROL if added[i]["special"] else gguf.TokenType.USER_DEFINED
        else:
            types[i] = gguf.TokenType.NORMAL
    merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]

    w = gguf.GGUFWriter(args.out, arch="llama")
    w.add_context_length(8192)
    w.add_embedding_length(64)
    w.add_block_count(1)
    w.add_feed_forward_length(128)
    w.add_head_count(2)
    w.add_head_count_kv(2)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_dimension_count(32)
    w.add_vocab_size(n)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(args.pre)
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges)
    for key, add in (("bos_token", w.add_bos_token_id), ("eos_token", w.add_eos_token_id)):
        text = token_text(config.get(key))
        if text is not None and text in vocab:
            add(vocab[text])
    if isinstance(config.get("add_bos_token"), bool):
        w.add_add_bos_token(config["add_bos_token"])
    if isinstance(config.get("chat_template"), str):
        w.add_chat_template(config["chat_template"])
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


if __name__ == "__main__":
    main()
