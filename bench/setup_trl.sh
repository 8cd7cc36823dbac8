#!/usr/bin/env bash
# Creates the TRL side of the benchmark (issue 7):
#   bench/.venv-trl     trl >= 1.16 (SFT, reward, DPO, generation through transformers)
#   bench/.venv-trl112  trl == 1.12.0 (PPO: trl.experimental.ppo, removed in 1.13)   [--ppo]
# torch==2.13.0 is installed FIRST and pinned: it resolves to the local CPU wheel
# (PIP_FIND_LINKS); an unpinned torch pulled in by trl would fetch GBs of CUDA packages.
# transformers / accelerate / peft are pinned to the versions of the main interpreter, so both
# sides run the same model code. httpx too: the TRL side of bench/grpo.py imports rlhfkit's
# reward functions (rlhfkit/online/rewards.py needs it). Idempotent: an existing venv with trl
# and httpx importable is kept.
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3}
TORCH=2.13.0
pins=$("$PY" - <<'PY'
import importlib.metadata as m
out = []
for name in ("transformers", "accelerate", "peft", "datasets"):
    try:
        out.append(f"{name}=={m.version(name)}")
    except m.PackageNotFoundError:
        pass
print(" ".join(out))
PY
)

make_venv() {  # make_venv DIR TRL_SPEC
    local dir=$1 spec=$2
    if [ -x "$dir/bin/python" ] && "$dir/bin/python" -c "import trl, httpx" 2>/dev/null; then
        echo "$dir: trl $("$dir/bin/python" -c 'import trl; print(trl.__version__)') already there"
        return
    fi
    if [ -x "$dir/bin/python" ] && "$dir/bin/python" -c "import trl" 2>/dev/null; then
        "$dir/bin/pip" install -q -c "$dir/constraints.txt" "httpx>=0.27"  # a venv made before
        return
    fi
    "$PY" -m venv "$dir"
    "$dir/bin/pip" install -q --upgrade pip
    "$dir/bin/pip" install -q "torch==$TORCH"
    # The constraint keeps torch where it is whatever trl asks for.
    echo "torch==$TORCH" > "$dir/constraints.txt"
    # shellcheck disable=SC2086
    "$dir/bin/pip" install -q -c "$dir/constraints.txt" "$spec" "httpx>=0.27" $pins \
        || "$dir/bin/pip" install -q -c "$dir/constraints.txt" "$spec" "httpx>=0.27" peft  # pins clash: let pip pick
    "$dir/bin/python" -c "import torch, transformers, trl; print('$dir:', 'torch', torch.__version__, 'transformers', transformers.__version__, 'trl', trl.__version__)"
}

make_venv .venv-trl "trl>=1.16"
if [ "${1:-}" = "--ppo" ] || [ "${1:-}" = "--all" ]; then
    make_venv .venv-trl112 "trl==1.12.0"
fi
