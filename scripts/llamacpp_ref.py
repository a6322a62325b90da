#!/usr/bin/env python3
"""llamacpp_ref.py: llama.cpp reference outputs (next-token log-probabilities and greedy
continuations) for ferrotune's forward-pass and generation tests.

Usage (from the repository root, after scripts/setup-python.sh):
    .venv/bin/python scripts/llamacpp_ref.py MODEL.gguf PROMPTS.json OUT.json \
        [--threads 1] [--n-predict 32]

PROMPTS.json is a JSON list of prompts, each a list of token ids, used exactly as given: no
BOS or other token is added. For each prompt OUT.json gets

  logprobs       the log-softmax over the whole vocabulary of the logits after the last
                 prompt token (n_vocab float32 values, indexed by token id)
  text           the greedy continuation's text (EOG token excluded)
  n_generated    how many tokens it generated (EOG included)
  greedy         the greedy continuation: up to --n-predict token ids (temperature 0, top-k
                 1, no repetition/presence/frequency/DRY penalty); it ends early with the
                 end-of-generation token included when the model emits one
  finish_reason  "stop" (an end-of-generation token) or "length"

With --f32-cache the KV cache is f32 (llama.cpp's default is f16) and flash attention is
off (on the CPU it rounds queries to f16): together with an F32
model file (scripts/gguf_to_f32.py) llama.cpp then computes in f32 throughout.

plus the run's settings (model, n_vocab, threads, n_predict, xllamacpp version).

How: xllamacpp (llama.cpp's Python wheel) runs llama.cpp's server in-process on the CPU.
Two completion requests per prompt, both with "cache_prompt": false so every prompt is
evaluated from scratch:
  1. {"prompt": ids, "n_predict": 1, "n_probs": n_vocab, "post_sampling_probs": false, ...}
     -> choices[0].logprobs.content[0].top_logprobs: every token id with its log-probability
     (llama.cpp takes the softmax of the raw logits in float32, then the log);
  2. {"prompt": ids, "n_predict": N, "n_probs": 1, "temperature": 0, "top_k": 1, ...}
     -> choices[0].text, usage.completion_tokens, and choices[0].logprobs.content[i].id:
     the generated ids, except that the server lists a token only once its text is
     complete UTF-8 (byte-fallback tokens of one character appear as one entry).
The thread count is fixed (--threads), one slot, no prompt cache, a fixed seed: two runs on
one machine give identical files (1 and 2 threads gave identical files too). The default is one
thread: llama.cpp's OpenMP threads spin while waiting, and on a 2-core machine that is busy
with other work (a cargo build) two threads ran 7x slower than one. SmolLM2-135M takes about
one second per prompt; loading the model and writing the file add about 3 s.
"""

import argparse
import json
import os
import sys
import time

import gguf
import numpy as np
import xllamacpp


def fail(message):
    sys.exit(f"llamacpp_ref: {message}")


def load_prompts(path, n_vocab):
    """Reads and checks the prompt file: a non-empty list of non-empty lists of token ids."""
    try:
        with open(path, encoding="utf-8") as f:
            prompts = json.load(f)
    except (OSError, ValueError) as e:
        fail(f"{path}: {e}")
    if not isinstance(prompts, list) or not prompts:
        fail(f"{path}: expected a non-empty JSON list of prompts (lists of token ids)")
    for i, prompt in enumerate(prompts):
        if not isinstance(prompt, list) or not prompt:
            fail(f"{path}: prompt {i} is not a non-empty list of token ids")
        for t in prompt:
            if type(t) is not int or not 0 <= t < n_vocab:
                fail(f"{path}: prompt {i} holds {t!r}, not a token id in [0, {n_vocab})")
    return prompts


def vocab_size(model_path):
    """The number of tokens in the GGUF's tokenizer (the length of the logits)."""
    try:
        reader = gguf.GGUFReader(model_path)
    except Exception as e:  # the gguf package raises several types on bad files
        fail(f"{model_path}: cannot read as GGUF: {e}")
    field = reader.fields.get("tokenizer.ggml.tokens")
    if field is None:
        fail(f"{model_path}: no tokenizer.ggml.tokens in the metadata")
    return len(field.data)


def start_server(model_path, threads, n_ctx, f32_cache):
    params = xllamacpp.CommonParams()
    if f32_cache:
        params.cache_type_k = xllamacpp.ggml_type.GGML_TYPE_F32
        params.cache_type_v = xllamacpp.ggml_type.GGML_TYPE_F32
        # CPU flash attention rounds Q to f16; the plain path keeps f32.
        params.flash_attn_type = xllamacpp.llama_flash_attn_type.LLAMA_FLASH_ATTN_TYPE_DISABLED
    params.model.path = model_path
    params.n_ctx = n_ctx
    params.n_parallel = 1
    params.n_gpu_layers = 0
    params.cpuparams.n_threads = threads
    params.cpuparams_batch.n_threads = threads
    params.sampling.seed = 0
    params.warmup = False
    params.verbosity = 0
    return xllamacpp.Server(params)


def complete(server, request):
    response = server.handle_completions(request)
    if not isinstance(response, dict) or "choices" not in response:
        fail(f"llama.cpp server error: {response}")
    choice = response["choices"][0]
    prompt_tokens = response["usage"]["prompt_tokens"]
    if prompt_tokens != len(request["prompt"]):
        fail(f"llama.cpp evaluated {prompt_tokens} prompt tokens, not the "
             f"{len(request['prompt'])} given")
    return choice


# Sampling settings shared by both requests: greedy, no penalties, no prompt cache.
GREEDY = {
    "temperature": 0.0,
    "top_k": 1,
    "repeat_penalty": 1.0,
    "presence_penalty": 0.0,
    "frequency_penalty": 0.0,
    "dry_multiplier": 0.0,
    "cache_prompt": False,
    "post_sampling_probs": False,
    "seed": 0,
}


def next_token_logprobs(server, prompt, n_vocab):
    choice = complete(server, {"prompt": prompt, "n_predict": 1, "n_probs": n_vocab, **GREEDY})
    entries = choice["logprobs"]["content"][0]["top_logprobs"]
    logprobs = np.full(n_vocab, np.nan, dtype=np.float32)
    for entry in entries:
        if entry["logprob"] is None:
            fail(f"llama.cpp returned a non-finite log-probability for token {entry['id']}")
        logprobs[entry["id"]] = entry["logprob"]
    if len(entries) != n_vocab or np.isnan(logprobs).any():
        fail(f"llama.cpp returned {len(entries)} log-probabilities, not one per token of the "
             f"{n_vocab}-token vocabulary")
    return logprobs


def greedy_continuation(server, prompt, n_predict):
    """Greedy continuation: (listed ids, text, number of tokens generated, finish reason).
    The server lists a token only once its text is complete UTF-8, so byte-fallback tokens
    that form one character appear as a single entry; `text` and the count are exact."""
    request = {"prompt": prompt, "n_predict": n_predict, "n_probs": 1, **GREEDY, "return_tokens": True}
    response = server.handle_completions(request)
    if not isinstance(response, dict) or "choices" not in response:
        fail(f"llama.cpp server error: {response}")
    choice = response["choices"][0]
    ids = [entry["id"] for entry in (choice["logprobs"] or {}).get("content", [])]
    return ids, choice["text"], response["usage"]["completion_tokens"], choice["finish_reason"]


def float32_list(values):
    """JSON text of float32 values, each in the shortest form that reads back exactly."""
    return "[" + ",".join(str(v) for v in values) + "]"


def main():
    parser = argparse.ArgumentParser(
        description="llama.cpp next-token log-probabilities and greedy continuations")
    parser.add_argument("model", help="GGUF model file")
    parser.add_argument("prompts", help="JSON file: a list of prompts, each a list of token ids")
    parser.add_argument("out", help="output JSON file")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads (default 1)")
    parser.add_argument("--f32-cache", action="store_true",
                        help="keep the KV cache in f32 instead of llama.cpp's default f16")
    parser.add_argument("--n-predict", type=int, default=32,
                        help="greedy tokens to generate per prompt (default 32)")
    args = parser.parse_args()
    if args.threads < 1 or args.n_predict < 1:
        fail("--threads and --n-predict must be at least 1")
    if not os.path.isfile(args.model):
        fail(f"{args.model}: no such file")

    n_vocab = vocab_size(args.model)
    prompts = load_prompts(args.prompts, n_vocab)
    longest = max(len(p) for p in prompts) + args.n_predict
    n_ctx = max(256, -(-longest // 256) * 256)

    start = time.perf_counter()
    server = start_server(args.model, args.threads, n_ctx, args.f32_cache)
    loaded = time.perf_counter()
    results = []
    for i, prompt in enumerate(prompts):
        logprobs = next_token_logprobs(server, prompt, n_vocab)
        greedy, text, n_generated, finish_reason = greedy_continuation(server, prompt, args.n_predict)
        if greedy and greedy[0] != int(np.argmax(logprobs)):
            print(f"llamacpp_ref: warning: prompt {i}: first greedy token {greedy[0]} is not "
                  f"the argmax {int(np.argmax(logprobs))} of the log-probabilities",
                  file=sys.stderr)
        results.append((prompt, logprobs, greedy, text, n_generated, finish_reason))
        top = np.argsort(-logprobs, kind="stable")[:5]
        print(f"prompt {i}: {len(prompt)} tokens; top-5 next "
              + ", ".join(f"{t}:{logprobs[t]:.4f}" for t in top)
              + f"; greedy {greedy} ({finish_reason})")
    done = time.perf_counter()

    header = {"model": os.path.basename(args.model), "xllamacpp": xllamacpp.__version__,
              "n_vocab": n_vocab, "threads": args.threads, "n_predict": args.n_predict}
    tmp = args.out + ".tmp"
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(json.dumps(header)[:-1] + ', "results": [\n')
            for j, (prompt, logprobs, greedy, text, n_generated, finish_reason) in enumerate(results):
                f.write(f'{{"prompt": {json.dumps(prompt)}, "greedy": {json.dumps(greedy)}, '
                        f'"text": {json.dumps(text)}, "n_generated": {n_generated}, '
                        f'"finish_reason": {json.dumps(finish_reason)}, '
                        f'"logprobs": {float32_list(logprobs)}}}')
                f.write(",\n" if j + 1 < len(results) else "\n")
            f.write("]}\n")
        os.replace(tmp, args.out)
    except OSError as e:
        fail(f"{args.out}: {e}")
    print(f"llamacpp_ref: wrote {args.out} ({os.path.getsize(args.out)} bytes): "
          f"{len(prompts)} prompts, load {loaded - start:.2f} s, "
          f"inference {done - loaded:.2f} s")


if __name__ == "__main__":
    main()
