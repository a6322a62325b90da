#!/usr/bin/env python3
"""llamacpp_lora_ref.py: scripts/llamacpp_ref.py with a LoRA adapter GGUF applied by llama.cpp.

Usage (from the repository root):
    .venv/bin/python scripts/llamacpp_lora_ref.py ADAPTER.gguf [--lora-scale 1.0] \
        MODEL.gguf PROMPTS.json OUT.json [llamacpp_ref.py options]

The adapter goes into xllamacpp's CommonParams.lora_adapters (a list of
CommonAdapterLoraInfo(path, scale)), the way llama-server's --lora does; everything else
(requests, output format) is llamacpp_ref.py's.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import llamacpp_ref  # noqa: E402
import xllamacpp  # noqa: E402


def main():
    args = sys.argv[1:]
    if not args or args[0].startswith("-"):
        sys.exit("llamacpp_lora_ref: usage: ADAPTER.gguf [--lora-scale S] MODEL PROMPTS OUT [options]")
    adapter = args.pop(0)
    scale = 1.0
    if args[:1] == ["--lora-scale"]:
        scale = float(args[1])
        args = args[2:]
    if not os.path.isfile(adapter):
        sys.exit(f"llamacpp_lora_ref: {adapter}: no such file")
    start = llamacpp_ref.start_server

    def start_with_lora(*a, **kw):
        orig = xllamacpp.Server

        def server(params):
            info = xllamacpp.CommonAdapterLoraInfo()
            info.path = adapter
            info.scale = scale
            params.lora_adapters = [info]
            if len(params.lora_adapters) != 1:
                sys.exit("llamacpp_lora_ref: could not set CommonParams.lora_adapters")
            return orig(params)

        xllamacpp.Server = server
        try:
            return start(*a, **kw)
        finally:
            xllamacpp.Server = orig

    llamacpp_ref.start_server = start_with_lora
    sys.argv = [sys.argv[0]] + args
    llamacpp_ref.main()


if __name__ == "__main__":
    main()
