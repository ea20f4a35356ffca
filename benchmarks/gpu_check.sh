#!/usr/bin/env bash
# The checks that need a CUDA machine, in one command and under 8 minutes, printed as one table:
#   1. the tests marked `gpu` (pytest -m gpu);
#   2. a bench_train row at the original shape (512/8/8, vocabulary 12,000) in bf16, torch.compile'd;
#   3. a short `wikipedia`-preset build (collect -> ... -> register) from a synthetic dump
#      (benchmarks/bench_data_scale.py --dump-only), training on CUDA for GPU_CHECK_TRAIN_MINUTES.
# Limits: tests 60 s, bench 120 s, build GPU_CHECK_TRAIN_MINUTES (default 2) + 150 s: 7.7 minutes at most.
# On a machine without CUDA it says so and exits 0, so it can run anywhere (CUDA_VISIBLE_DEVICES= forces
# that branch). Each step has its own time limit; a step that fails or runs out shows so in the table
# and the script exits 1.
#
#   bash benchmarks/gpu_check.sh            # from the repository root or anywhere
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
PY=${PYTHON:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
TRAIN_MINUTES=${GPU_CHECK_TRAIN_MINUTES:-2}

if ! "$PY" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
  echo "gpu_check: no CUDA device on this machine (torch.cuda.is_available() is False); nothing to check here"
  exit 0
fi

WORK=$(mktemp -d "${TMPDIR:-/tmp}/gpu-check-XXXXXX")
ROWS="$WORK/rows.tsv"
FAILED=0
row() { printf '%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" >>"$ROWS"; }
verdict() { case $1 in 0) echo ok ;; 124) echo "timed out" ;; *) echo "failed (exit $1)" ;; esac; }
echo "gpu_check: work folder $WORK"
"$PY" -c "import torch; from tinyllama_model.hardware import machine_line; \
print('#', torch.cuda.get_device_name(0), '|', machine_line())"

# 1. the gpu-marked tests
start=$SECONDS
mapfile -t files < <(grep -rl "pytest.mark.gpu" tests --include='*.py')
timeout 60 "$PY" -m pytest -q -p no:cacheprovider -m gpu "${files[@]}" >"$WORK/tests.log" 2>&1
rc=$?
[ $rc -ne 0 ] && FAILED=1
row "pytest -m gpu (${#files[@]} files)" "$(verdict $rc)" $((SECONDS - start)) "$(tail -n 1 "$WORK/tests.log")"

# 2. one training-throughput row: 512/8/8 in bf16, compiled (bench_train's default preset, on CUDA)
start=$SECONDS
timeout 120 "$PY" - >"$WORK/bench.log" 2>&1 <<'EOF'
import dataclasses, sys
sys.path.insert(0, "benchmarks")
import bench_train
from tinyllama_model.training import sizing

shape = sizing.PRESETS["default"]
def on_cuda():
    model, train, vocab = shape()
    return model, dataclasses.replace(train, device="cuda", dtype="bfloat16", compile=True), vocab
sizing.PRESETS["default"] = on_cuda
r = bench_train.bench_preset("default", steps=10, warmup=5, threads=None)
print(f"RESULT {r['params'] / 1e6:.1f}M params, {r['tokens/step']:,} tokens/step: {r['tokens/s']:,.0f} tokens/s")
EOF
rc=$?
[ $rc -ne 0 ] && FAILED=1
row "bench_train 512/8/8 bf16 compile" "$(verdict $rc)" $((SECONDS - start)) \
  "$(grep -h '^RESULT' "$WORK/bench.log" | cut -c8- || true)"

# 3. a short wikipedia-preset build from a synthetic dump, trained on CUDA
start=$SECONDS
"$PY" benchmarks/bench_data_scale.py --dump-only "$WORK/dump" --sizes 0.01 >"$WORK/dump.log" 2>&1
timeout $((TRAIN_MINUTES * 60 + 150)) "$PY" -m flows.cli run --preset wikipedia \
  --set "data_root=$WORK/data" --set collect.wikipedia.enabled=false --set "collect.local.paths=[$WORK/dump]" \
  --set "train.max_minutes=$TRAIN_MINUTES" --set train.device=cuda \
  --set "register.tracking_uri=sqlite:///$WORK/mlflow.db" >"$WORK/build.out" 2>"$WORK/build.log"
rc=$?
[ $rc -ne 0 ] && FAILED=1
note=$("$PY" - "$WORK/build.out" <<'EOF'
import json, sys
text = open(sys.argv[1]).read()
start = text.rfind("\n{") + 1
try:
    ev = json.loads(text[start:])["evaluation"]
    print(", ".join(f"{k} {v:.4g}" for k, v in ev.items() if isinstance(v, float) and k.startswith("val"))[:90])
except (ValueError, KeyError):
    print("no summary (see build.log)")
EOF
)
row "wikipedia preset, ${TRAIN_MINUTES} min on CUDA" "$(verdict $rc)" $((SECONDS - start)) "$note"

echo
"$PY" - "$ROWS" <<'EOF'
import sys
rows = [line.rstrip("\n").split("\t") for line in open(sys.argv[1])]
header = ["check", "result", "seconds", "note"]
widths = [max(len(r[i]) for r in [header, *rows]) for i in range(4)]
for r in [header, ["-" * w for w in widths], *rows]:
    print("| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |")
EOF
echo "logs: $WORK"
exit $FAILED
