#!/usr/bin/env bash
# The one script of a GPU session for the kernels (issue 15): environment, kernel check,
# kernel benchmarks, model speed. Logs and JSON reports go to $OUT (default /tmp/gpu_out):
#
#   env.log                 nvidia-smi, versions, installation of carried wheels
#   kernels_check.log/json  python -m kernels.check: every kernel vs its reference
#   kernels_bench.log/json  python -m kernels.bench: copy bandwidth, segment sums, routing,
#                           grouped MLP, tuning sweep
#   model_speed.log/json    python -m benchmark.evaluation.speed --sections training inference:
#                           DeepSet-MoE training step (kernels on/off), MD-step inference vs MACE
#
#   bash tools/gpu/run_all.sh
#
# Pure-Python packages the GPU machine lacks (mace-torch and its import-time dependencies) can
# be carried as wheels in .whl/ (git-ignored through .git/info/exclude); they are installed into
# /tmp/site first, and PYTHONPATH is /tmp/site plus the repository root. Each step has its own
# timeout, so that a hang cannot eat the device budget, and every step runs even when an
# earlier one fails. Expected: check ~1-2 min, kernel bench < 1 min, model speed ~1 min;
# worst case (every timeout) ~8 min, 2 more if the wheel install hangs. Exit status: the
# first non-zero one of check, bench and speed.
#
# Environment: OUT; CHECK_TIMEOUT, BENCH_TIMEOUT, SPEED_TIMEOUT (s); CHECK_ARGS, BENCH_ARGS,
# SPEED_ARGS (extra options, e.g. BENCH_ARGS="--sections segment routing" or, for a dry run on
# a CPU, TRITON_INTERPRET=1 CHECK_ARGS="--device cpu" BENCH_ARGS="--quick --device cpu"
# SPEED_ARGS="--quick --device cpu").
set -uo pipefail
export PYTHONUNBUFFERED=1
cd "$(dirname "$0")/../.." || exit 2
OUT=${OUT:-/tmp/gpu_out}
mkdir -p "$OUT"
CHECK_TIMEOUT=${CHECK_TIMEOUT:-170}
BENCH_TIMEOUT=${BENCH_TIMEOUT:-120}
SPEED_TIMEOUT=${SPEED_TIMEOUT:-170}
read -r -a check_args <<< "${CHECK_ARGS:-}"
read -r -a bench_args <<< "${BENCH_ARGS:-}"
read -r -a speed_args <<< "${SPEED_ARGS:-}"
export PYTHONPATH=/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH}

step() { printf '\n=== %s (%s)\n' "$*" "$(date +%T)"; }

{
  step "environment"
  nvidia-smi || echo "nvidia-smi: not available"
  if compgen -G ".whl/*.whl" > /dev/null; then
    step "installing carried wheels: $(ls .whl | tr '\n' ' ')"
    timeout 120 python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
      --target /tmp/site .whl/*.whl
  fi
  python3 - <<'EOF'
import importlib.metadata as md
import platform

import torch

print("python", platform.python_version(), "| torch", torch.__version__, "| CUDA", torch.version.cuda)
if torch.cuda.is_available():
    print("device", torch.cuda.get_device_name(0), "capability", torch.cuda.get_device_capability(0))
for name in ("triton", "e3nn", "numpy", "mace-torch", "ase", "torchmetrics", "torch-scatter"):
    try:
        print(f"{name} {md.version(name)}")
    except md.PackageNotFoundError:
        print(f"{name}: not installed")
EOF
} 2>&1 | tee "$OUT/env.log"

step "python -m kernels.check (timeout ${CHECK_TIMEOUT} s)"
timeout -k 10 "$CHECK_TIMEOUT" python3 -m kernels.check --deadline $((CHECK_TIMEOUT - 40)) \
  --json "$OUT/kernels_check.json" ${check_args[@]+"${check_args[@]}"} 2>&1 | tee "$OUT/kernels_check.log"
check_rc=$?

step "python -m kernels.bench (timeout ${BENCH_TIMEOUT} s)"
timeout -k 10 "$BENCH_TIMEOUT" python3 -m kernels.bench --budget $((BENCH_TIMEOUT - 60)) \
  --json "$OUT/kernels_bench.json" ${bench_args[@]+"${bench_args[@]}"} 2>&1 | tee "$OUT/kernels_bench.log"
bench_rc=$?

step "python -m benchmark.evaluation.speed (timeout ${SPEED_TIMEOUT} s)"
timeout -k 10 "$SPEED_TIMEOUT" python3 -m benchmark.evaluation.speed --sections training inference \
  --budget $((SPEED_TIMEOUT - 80)) --json "$OUT/model_speed.json" \
  ${speed_args[@]+"${speed_args[@]}"} 2>&1 | tee "$OUT/model_speed.log"
speed_rc=$?

step "done: kernels.check exit ${check_rc}, kernels.bench exit ${bench_rc}," \
  "benchmark.evaluation.speed exit ${speed_rc} (124: timed out)"
ls -l "$OUT"
for rc in "$check_rc" "$bench_rc" "$speed_rc"; do
  if [ "$rc" -ne 0 ]; then exit "$rc"; fi
done
exit 0
