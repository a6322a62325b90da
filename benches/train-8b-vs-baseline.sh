#!/usr/bin/env bash
# train-8b-vs-baseline.sh: the training comparison of benches/RESULTS.md, on the GPU machine.
# One card, one session: the baseline kit (../shared/baseline: its create step writes the
# random-init 8B model to /tmp/model, then Unsloth and transformers+peft train on it), then
# `ferrotune train --config examples/bench-8b.toml` on that very folder (NF4 double quant,
# r16 on all seven projections, seq 2048, batch 2 x accumulation 4, AdamW-8bit, checkpointing).
#
# Here, first:  ../shared/baseline/prepare-kit.sh   (writes .baseline/, ignored by git)
# There:        FERROTUNE=path/to/ferrotune bash benches/train-8b-vs-baseline.sh [LAYERS] [STEPS]
#               (carry .baseline and the folder holding the ferrotune binary)
# Writes logs, metrics and a summary (summary.json) under $OUT.
set -u
LAYERS=${1:-32}; STEPS=${2:-6}
OUT=${OUT:-/tmp/bench_out}; mkdir -p "$OUT"; export OUT
FERROTUNE=${FERROTUNE:?set FERROTUNE to the ferrotune binary}
cd "$(dirname "$0")/.."

BENCH_TIMEOUT=${BENCH_TIMEOUT:-250} bash .baseline/run-device.sh "$LAYERS" "$STEPS"
python3 scripts/make_token_rows.py /tmp/rows.jsonl --rows 80
echo "== ferrotune"
timeout "${FT_TIMEOUT:-300}" "$FERROTUNE" train --config examples/bench-8b.toml --output-dir "$OUT/ferrotune" \
  > "$OUT/ferrotune.log" 2>&1
echo "ferrotune rc=$?"; grep -E "^(loaded|step|trained)" "$OUT/ferrotune.log" || tail -n 30 "$OUT/ferrotune.log"
python3 - "$OUT" <<'PY'
import json, statistics, sys, os
out = sys.argv[1]
rows = [json.loads(l) for l in open(os.path.join(out, "ferrotune", "metrics.jsonl"))]
timed = rows[1:]  # step 1 is not timed by the kit either (warm-up)
tok = sum(r["tokens"] for r in timed) / sum(r["seconds"] for r in timed)
ft = dict(impl="ferrotune", tokens_per_s=round(tok, 1),
          step_ms_median=round(1000 * statistics.median(r["seconds"] for r in timed), 1),
          peak_tensor_gib=round(max(r["peak_gpu_tensor_bytes"] for r in rows) / 2**30, 3),
          gpu_used_gib=round(max(r["gpu_used_bytes"] for r in rows) / 2**30, 3),
          losses=[round(r["loss"], 4) for r in rows])
res = [ft]
for impl in ("unsloth", "hf"):
    p = os.path.join(out, impl + ".json")
    if os.path.exists(p):
        res.append(json.loads(open(p).read().strip().splitlines()[-1]))
for r in res[1:]:
    if r.get("tokens_per_s"):
        ft["x_" + r["impl"]] = round(ft["tokens_per_s"] / r["tokens_per_s"], 3)
json.dump(res, open(os.path.join(out, "summary.json"), "w"), indent=1)
print(json.dumps(res, indent=1))
PY
