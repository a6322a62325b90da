#!/usr/bin/env bash
# The criterion benches and benches/pytorch_ref.py on the GPU machine, in one device call.
#
# Here (no GPU needed), stage the bench executables, tests/cuda_generate.rs and the ferrotune
# binary into .gpu/benches.tar.gz (about 20 MiB):
#   bash benches/run-gpu.sh --stage
# There, with the device tool:
#   run(command="bash benches/run-gpu.sh", carry=[".gpu"])
# Logs, a summary and criterion's estimates (criterion.tar.gz) come back under $OUT. First the
# generate test (seconds), then the benches with short measurements (0.5 s warm-up, 1 s per
# benchmark, 10 samples), then PyTorch: about 4 minutes in all. Extra arguments go to
# every bench (e.g. a name filter: `bash benches/run-gpu.sh nf4_decode`).
#
# `../shared/tools/gpu-stage --bench` stages the same executables (plus every test executable,
# which is far more than 64 MiB for this workspace); whichever staged them, this script runs
# the ones named in BENCHES below and nothing else.
set -uo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
BENCHES=(ceiling rms_norm rope swiglu cast nf4 attention loss cpu_ops)

if [[ ${1:-} == --stage ]]; then
  set -e
  cd "$repo"
  grep -qx '/.gpu/' .git/info/exclude 2>/dev/null || echo '/.gpu/' >> .git/info/exclude
  stage=.gpu/stage
  rm -rf "$stage" .gpu/bench .gpu/bin .gpu/gen .gpu/benches.tar.gz
  mkdir -p "$stage/bench" "$stage/bin" "$stage/gen"
  collect() { # stdin: cargo's JSON messages; copies bench executables, the generate test, the CLI
    python3 -c '
import json, os, shutil, sys
stage = sys.argv[1]
for line in sys.stdin:
    try: m = json.loads(line)
    except ValueError: continue
    if m.get("reason") != "compiler-artifact" or not m.get("executable"): continue
    kind, name, exe = m["target"]["kind"], m["target"]["name"], m["executable"]
    if kind == ["bench"]: dest = f"{stage}/bench/{name}-" + os.path.basename(exe).rsplit("-", 1)[-1]
    elif kind == ["test"] and name == "cuda_generate": dest = f"{stage}/gen/{name}"
    elif kind == ["bin"] and name == "ferrotune" and not m["profile"]["test"]: dest = f"{stage}/bin/ferrotune"
    else: continue
    shutil.copy2(exe, dest)
    print("  staged", dest)
' "$stage"
  }
  cargo bench -p kernels-cuda -p ferrotune --benches --no-run --message-format=json 2>/dev/null | collect
  cargo test --release -p ferrotune --test cuda_generate --no-run --message-format=json 2>/dev/null | collect
  strip "$stage"/*/*
  echo "$repo" > .gpu/origin
  # Compressed: the executables are about 65 MiB stripped, the carry limit is 64 MiB.
  tar -czf .gpu/benches.tar.gz -C "$stage" bench bin gen && rm -rf "$stage"
  echo "staged in .gpu/benches.tar.gz: $(du -sm .gpu/benches.tar.gz | cut -f1) MiB; .gpu/ in all $(du -sm .gpu | cut -f1) MiB (64 MiB may travel)"
  exit 0
fi

out=${OUT:-$repo/target/bench-out}
mkdir -p "$out"
cd "$repo"
[[ -f .gpu/benches.tar.gz ]] && tar -xzf .gpu/benches.tar.gz -C .gpu
# Tests find files through the absolute path of the checkout they were built in: link it here.
origin=$(cat .gpu/origin 2>/dev/null || echo "$repo")
if [[ $origin != "$repo" && ! -e $origin ]]; then mkdir -p "$(dirname "$origin")" && ln -s "$repo" "$origin"; fi
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}
export CUDA_HOME=${CUDA_HOME:-/usr/local/cuda}
# criterion's estimates (JSON, one folder per benchmark) come back as one archive.
export CRITERION_HOME=$(mktemp -d)/criterion
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm,clocks.max.mem,power.limit,driver_version \
  --format=csv | tee "$out/gpu.csv"
args=(--bench --noplot --warm-up-time 0.5 --measurement-time 1 --sample-size 10 --nresamples 10000 "$@")
status=0
start=$SECONDS
# `ferrotune generate --device cuda` against the CPU (tests/cuda_generate.rs), through the CLI.
for t in .gpu/gen/cuda_generate; do
  [[ -x $t ]] || { echo "=== cuda_generate: not staged"; continue; }
  echo "=== cuda_generate"
  (cd "$origin" && timeout 120 "$repo/$t" --nocapture --test-threads=1) 2>&1 | tee "$out/cuda_generate.log"
  ((PIPESTATUS[0] == 0)) || { echo "=== cuda_generate failed"; status=1; }
done
# The ceiling first: the card's copy bandwidth and GEMM rate, for the ratios of the others.
for name in "${BENCHES[@]}"; do
  found=0
  for b in "$repo"/.gpu/bench/"$name"-*; do
    [[ -x $b ]] || continue
    found=1
    echo "=== $name ($(basename "$b")) at $((SECONDS - start)) s"
    timeout 240 "$b" "${args[@]}" 2>&1 | tee "$out/$name.log"
    rc=${PIPESTATUS[0]}
    ((rc == 0)) || { echo "=== $name failed (exit $rc)"; status=1; }
  done
  ((found)) || { echo "=== $name: not staged"; status=1; }
done
echo "=== pytorch_ref.py at $((SECONDS - start)) s"
timeout 240 python3 "$repo/benches/pytorch_ref.py" 2> >(tee "$out/pytorch_ref.stderr" >&2) | tee "$out/pytorch_ref.jsonl"
((PIPESTATUS[0] == 0)) || status=1
# One block per benchmark: its name, criterion's time and throughput lines.
grep -h -A3 -E '^[a-z_0-9]+/' "$out"/*.log | grep -E '^[a-z_0-9]+/|time:|thrpt:' > "$out/summary.txt" || true
# A markdown table for benches/RESULTS.md: each benchmark's median beside its ceiling from
# the same run (copy bandwidth for bytes, cuBLAS / PyTorch at the same shape for FLOPs).
python3 - "$out" > "$out/table.md" <<'PY' || echo "(table.md failed)"
import glob, json, os, re, sys
out = sys.argv[1]
units = {"B/s": 1, "KB/s": 1e3, "MB/s": 1e6, "GB/s": 1e9, "elem/s": 1, "Kelem/s": 1e3, "Melem/s": 1e6, "Gelem/s": 1e9}
tunits = {"ps": 1e-12, "ns": 1e-9, "µs": 1e-6, "us": 1e-6, "ms": 1e-3, "s": 1}
rows, name = {}, None
for log in sorted(glob.glob(os.path.join(out, "*.log"))):
    for line in open(log, errors="replace"):
        line = line.rstrip()
        if re.match(r"^[a-z_0-9]+/\S", line) and "Benchmarking" not in line:
            name = line.split()[0] if " " not in line.strip() else line.strip()
        m = re.search(r"time:\s+\[\S+ \S+ (\S+) (\S+)", line)
        if m and name:
            rows.setdefault(name, {})["s"] = float(m.group(1)) * tunits[m.group(2)]
        m = re.search(r"thrpt:\s+\[\S+ \S+ (\S+) (\S+)", line)
        if m and name:
            rows[name]["rate"], rows[name]["bytes"] = float(m.group(1)) * units[m.group(2)], "B/s" in m.group(2)
torch = [json.loads(l) for l in open(os.path.join(out, "pytorch_ref.jsonl")) if l.startswith("{")] if os.path.exists(os.path.join(out, "pytorch_ref.jsonl")) else []
copy = rows.get("ceiling/copy_dtod/512MiB", {}).get("rate")
def torch_ref(name):
    for t in torch:
        if "error" in t: continue
        if name.startswith("ceiling/gemm_bf16/") and t.get("bench") == "matmul_bf16":
            if name.endswith(f"/{t['m']}x{t['n']}x{t['k']}"): return t["tflops"] * 1e12, "torch matmul"
        if name.startswith("attention/") and t.get("bench") == "sdpa" and t["backend"] == "flash":
            phase = name.split("/")[1].rsplit("_", 1)[0]
            if t["phase"] == phase: return t["tflops"] * 1e12, f"SDPA flash ({t['gqa']})"
        if name.startswith("loss/chunked_") and t.get("bench") == "cross_entropy" and t["variant"] == "materialized_f32":
            phase = name.split("/")[1].split("_", 1)[1]
            if t["phase"] == phase: return t["tflops"] * 1e12, "torch matmul + F.cross_entropy (f32 logits)"
    return None
print(f"device: {torch[0].get('device') if torch else '?'}; copy ceiling {copy / 1e9 if copy else float('nan'):.0f} GB/s\n")
print("| benchmark | median time | achieved | reference | ratio |\n|---|---|---|---|---|")
for name, r in rows.items():
    if "rate" not in r: continue
    t = r["s"]
    if r["bytes"]:
        ach, ref = f"{r['rate'] / 1e9:.0f} GB/s", (copy, "copy") if copy and not name.startswith(("ceiling/", "cpu/")) else None
    else:
        ach, ref = f"{r['rate'] / 1e12:.1f} TFLOP/s", torch_ref(name)
    t_s = f"{t * 1e6:.1f} µs" if t < 1e-3 else f"{t * 1e3:.3f} ms"
    if ref and ref[0]:
        unit = "GB/s" if r["bytes"] else "TFLOP/s"
        scale = 1e9 if r["bytes"] else 1e12
        print(f"| {name} | {t_s} | {ach} | {ref[1]} {ref[0] / scale:.1f} {unit} | {r['rate'] / ref[0]:.0%} |")
    else:
        print(f"| {name} | {t_s} | {ach} | | |")
for t in torch:
    print(f"\ntorch: {json.dumps(t)}", end="")
print()
PY
tar -czf "$out/criterion.tar.gz" -C "$(dirname "$CRITERION_HOME")" criterion 2>/dev/null || true
echo "=== done in $((SECONDS - start)) s (status $status); logs in $out"
exit $status
