#!/usr/bin/env bash
# Every benchmark that takes --device, on CUDA, in one go (meant to finish in under 8 minutes
# on an H100/H200), then the gpu-marked tests. Output: bench/gpu-<date>.txt, whose tables go
# into docs/benchmarks.md by hand with the machine and the date.
#   bash bench/gpu.sh            (from the repository root, with .venv made by `make`)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
out="bench/gpu-$(date +%Y%m%d-%H%M).txt"
{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  "$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"
  for bench in "step_cost.py --steps 300" "metric_cost.py --reps 20" "metric_peers.py --reps 20" \
               "sparsity_step.py" "data_cost.py" "diversity_cost.py --reps 20" \
               "precision.py --steps 30" "lockstep.py --reps 10" "lockstep_runs.py --reps 1 --ks 1 8" \
               "lockstep_runs.py --reps 1 --ks 8 --rule natural"; do
    echo; echo "== python bench/$bench --device cuda"
    timeout 150 "$PY" bench/$bench --device cuda || echo "(exit $?)"
  done
  echo; echo "== pytest -m gpu"
  timeout 240 "$PY" -m pytest -q -m gpu tests/gpu || echo "(exit $?)"
} 2>&1 | tee "$out"
echo "written: $out"
