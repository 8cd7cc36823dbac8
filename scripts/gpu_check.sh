#!/usr/bin/env bash
# The GPU check (issue 12 item 5), for a machine with one CUDA GPU and rlhfkit installed:
#   1. the test suite's CUDA-parametrised tests (every device-dependent test runs once per device
#      in tests/conftest.py::DEVICES; here only the "cuda" ones are selected);
#   2. a short bf16 run of each stage on the embedded model (SmolLM2-135M, MiniLM for the RM),
#      printing seconds per optimiser step / iteration from each run's wall time.
# Budget: under 8 minutes on one H200. Usage: bash scripts/gpu_check.sh [OUT_DIR]
# DEVICE=cpu STEPS_SCALE=0 runs the same script on a CPU (a check of the script itself: the
# tests are not run, each stage takes 1 step on at most 16 training and 8 held-out rows, so the
# reference precompute and the evaluations stay short: 2 min 45 s for the five stages on the
# 2-core VM, 2026-11-30; 8 min without the row caps).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-${OUT:-/tmp/rlhfkit-gpu-check}}
mkdir -p "$OUT"
DEVICE=${DEVICE:-cuda}
DTYPE=${DTYPE:-$([ "$DEVICE" = cuda ] && echo bfloat16 || echo float32)}
if [ "$DEVICE" = cuda ]; then python - <<'EOF'
import torch
assert torch.cuda.is_available(), "no CUDA device: this script checks the GPU path"
print("device:", torch.cuda.get_device_name(0), "| torch", torch.__version__,
      "| bf16:", torch.cuda.is_bf16_supported())
EOF
  [ $? -eq 0 ] || exit 1
  echo "== 1. CUDA-parametrised tests"
  start=$(date +%s)
  python -m pytest tests -k cuda -p no:cacheprovider -q 2>&1 | tail -n 15
  echo "tests: $(( $(date +%s) - start )) s"
fi

COMMON=(model.device="$DEVICE" model.dtype="$DTYPE" train.save_every=0 train.eval_every=0)
[ "${STEPS_SCALE:-1}" = 0 ] && COMMON+=(data.max_rows=16 data.max_eval_rows=8)
status=0
stage() {  # stage NAME STEPS CONFIG overrides...
  local name=$1 steps=$2 config=$3; shift 3
  [ "${STEPS_SCALE:-1}" = 0 ] && steps=1
  local t0 t1
  t0=$(date +%s.%N)
  if python -m rlhfkit "$name" --config "$config" "${COMMON[@]}" train.max_steps="$steps" \
      output_dir="$OUT/$name" "$@" > "$OUT/$name.log" 2>&1; then
    t1=$(date +%s.%N)
    python - "$name" "$steps" "$t0" "$t1" "$OUT/$name/metrics.jsonl" <<'EOF'
import json, sys
name, steps, t0, t1, path = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4]), sys.argv[5]
rows = [json.loads(line) for line in open(path) if line.strip()]
last = rows[-1] if rows else {}
keys = [k for k in ("loss", "score_mean", "kl_mean", "eval_loss", "eval_accuracy") if k in last]
print(f"{name:5s} {steps} steps in {t1 - t0:6.1f} s (with loading) -> {(t1 - t0) / steps:5.2f} s/step;",
      ", ".join(f"{k}={last[k]:.4g}" for k in keys))
EOF
  else
    echo "$name FAILED (tail of $OUT/$name.log):"; tail -n 20 "$OUT/$name.log"; status=1
  fi
}

echo "== 2. bf16 stage runs on the embedded model"
stage sft 20 examples/sft_smollm2.yaml
stage rm 30 examples/rm_imdb.yaml
stage dpo 20 examples/dpo_imdb.yaml
stage ppo 4 examples/ppo_smollm2.yaml reward.model_path="$OUT/rm/final" critic.model_name=smollm2-135m-instruct
stage grpo 4 examples/grpo_smollm2.yaml reward.model_path="$OUT/rm/final"
exit $status
