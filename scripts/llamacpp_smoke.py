#!/usr/bin/env python3
"""llamacpp_smoke.py: does llama.cpp load a GGUF file and generate from it?

    llamacpp_smoke.py PROMPT N_PREDICT MODEL.gguf [MODEL.gguf ...]

For each model, in turn, starts llama.cpp's server in-process (the `xllamacpp` wheel, CPU,
one thread) and asks for a greedy completion of PROMPT (text, tokenized by llama.cpp with
its special tokens) of N_PREDICT tokens. Prints one JSON object:
    {"results": [{"model", "ok", "text", "n_prompt", "n_generated", "error"}]}
`ok` is true when the server started and answered a completion with at least one token.
Exit status 0 even when a model fails (the caller reads `ok` and `error`). Run with the
repository's .venv (scripts/setup-python.sh).
"""

import json
import os
import sys

import xllamacpp


def smoke(model, prompt, n_predict):
    result = {"model": model, "ok": False, "text": None, "n_prompt": 0, "n_generated": 0, "error": None}
    if not os.path.isfile(model):
        result["error"] = "no such file"
        return result
    params = xllamacpp.CommonParams()
    params.model.path = model
    params.n_ctx = 256
    params.n_parallel = 1
    params.n_gpu_layers = 0
    params.cpuparams.n_threads = 1
    params.cpuparams_batch.n_threads = 1
    params.sampling.seed = 0
    params.warmup = False
    params.verbosity = 0
    try:
        server = xllamacpp.Server(params)
        response = server.handle_completions({
            "prompt": prompt, "n_predict": n_predict, "temperature": 0.0, "top_k": 1,
            "cache_prompt": False, "seed": 0,
        })
    except Exception as e:  # a model llama.cpp rejects raises here
        result["error"] = f"{type(e).__name__}: {e}"
        return result
    if not isinstance(response, dict) or "choices" not in response:
        result["error"] = f"server answered {response!r}"
        return result
    result["text"] = response["choices"][0]["text"]
    result["n_prompt"] = response["usage"]["prompt_tokens"]
    result["n_generated"] = response["usage"]["completion_tokens"]
    result["ok"] = result["n_generated"] > 0
    del server
    return result


def main():
    if len(sys.argv) < 4:
        sys.exit(__doc__)
    prompt, n_predict, models = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
    results = [smoke(m, prompt, n_predict) for m in models]
    print(json.dumps({"results": results}))


if __name__ == "__main__":
    main()
