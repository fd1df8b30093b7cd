#!/usr/bin/env bash
# Install the library with every baseline (and, with `./install.sh test`, the test tools).
# torch is pinned to the local CPU wheel through constraints.txt; mace-torch is added with
# --no-deps because it pins e3nn==0.4.4 while nequip needs e3nn>=0.5 (MACE runs unchanged
# on e3nn 0.6; its real runtime dependencies come with the `baselines` extra).
set -euo pipefail
cd "$(dirname "$0")"
extras="baselines"
if [ "${1:-}" = "test" ]; then extras="baselines,test"; fi
python -m pip install -q -c constraints.txt -e ".[${extras}]"
python -m pip install -q -c constraints.txt --no-deps "mace-torch==0.3.16"
