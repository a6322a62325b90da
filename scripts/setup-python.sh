#!/usr/bin/env bash
# setup-python.sh: create the Python environment ferrotune's reference tooling uses.
#
# Creates `.venv` in the repository root (if missing) and installs pinned versions of
#   xllamacpp  llama.cpp as a Python wheel (the forward/generation reference, CPU),
#   gguf       llama.cpp's GGUF reader/writer (checks the GGUF files ferrotune writes),
#   numpy      used by both,
#   jinja2     renders HF chat templates for the chat fixtures (scripts/gen_chat_fixtures.py).
# No compiler is needed: all four ship wheels for Linux x86_64.
#
# Idempotent and quiet: a stamp file inside .venv records the installed pin set, and when it
# matches nothing is done. Set PYTHON to choose the interpreter (default: python3).
# Usage: scripts/setup-python.sh        (from anywhere; paths are relative to the repo root)
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$root/.venv"
python="${PYTHON:-python3}"
pins="xllamacpp==2026.10.11549 gguf==0.19.0 numpy==2.4.6 jinja2==3.1.6"
stamp="$venv/.ferrotune-pins"

if [[ -f "$stamp" && "$(cat "$stamp")" == "$pins" ]]; then
    exit 0
fi

if [[ ! -x "$venv/bin/python" ]]; then
    echo "setup-python: creating $venv with $("$python" --version 2>&1)"
    "$python" -m venv "$venv"
fi

echo "setup-python: installing $pins"
# shellcheck disable=SC2086 # the pin list is split into arguments on purpose
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-input $pins
printf '%s' "$pins" > "$stamp"
