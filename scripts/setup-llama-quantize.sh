#!/usr/bin/env bash
# setup-llama-quantize.sh: fetch a prebuilt libllama that exports `llama_model_quantize` (the
# engine of llama.cpp's `llama-quantize`), for scripts/llama_quantize_ref.py.
#
# The xllamacpp wheel (scripts/setup-python.sh) leaves llama_model_quantize out of its
# library, so the reference for which tensor gets which type in a Q4_K_M/Q5_K_M file comes
# from the npm package @node-llama-cpp/linux-x64, a CPU build of llama.cpp's shared libraries
# (libllama, libggml-base, libggml, CPU backends), fetched with `npm pack` (no compiler, no
# Node.js code is run). Unpacked into .venv/node-llama-cpp/ (ignored by git).
#
# Idempotent: does nothing when the pinned version is already there.
# Usage: scripts/setup-llama-quantize.sh      (needs npm)
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
pin="@node-llama-cpp/linux-x64@3.22.1"
dest="$root/.venv/node-llama-cpp"
stamp="$dest/.pin"

if [[ -f "$stamp" && "$(cat "$stamp")" == "$pin" ]]; then
    exit 0
fi
command -v npm >/dev/null || { echo "setup-llama-quantize: npm is needed" >&2; exit 1; }

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
echo "setup-llama-quantize: fetching $pin"
(cd "$tmp" && npm pack --silent "$pin" >/dev/null)
rm -rf "$dest"
mkdir -p "$dest"
tar -xzf "$tmp"/*.tgz -C "$dest" --strip-components=1
test -f "$dest/bins/linux-x64/libllama.v0.5.0.so" || { echo "setup-llama-quantize: libllama missing from $pin" >&2; exit 1; }
printf '%s' "$pin" > "$stamp"
echo "setup-llama-quantize: libllama in $dest/bins/linux-x64"
