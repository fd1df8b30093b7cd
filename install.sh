#!/usr/bin/env bash
# Install the library with every baseline.
#   ./install.sh            library + baselines (SchNet, DimeNet++, PaiNN, MACE, NequIP, Allegro)
#                           + dask.distributed (the `cluster` extra: --scheduler, docs/cluster.md)
#   ./install.sh test       ... + test tools (pytest, ruff, triton)
#   ./install.sh fairchem   ... + GemNet-OC and EquiformerV2 (fairchem-core 1.3.0; compiles
#                           torch-scatter and torch-sparse from source: ~25 min on 2 cores)
# torch is pinned to the local CPU wheel through constraints.txt. mace-torch is added with
# --no-deps because it pins e3nn==0.4.4 while nequip needs e3nn>=0.5 (MACE runs unchanged on
# e3nn 0.6); its real runtime dependencies come with the `baselines` extra. fairchem-core is
# added with --no-deps because it pins numpy<2; its models need only lmdb, numba, orjson,
# pyyaml and requests.
set -euo pipefail
cd "$(dirname "$0")"
extras="baselines,cluster"
fairchem=0
for option in "$@"; do
  case "$option" in
    test) extras="$extras,test" ;;
    fairchem) fairchem=1 ;;
    *) echo "install.sh: unknown option '$option' (test, fairchem)" >&2; exit 2 ;;
  esac
done
pip() { python -m pip install -q -c constraints.txt "$@"; }
pip -e ".[${extras}]"
pip --no-deps "mace-torch==0.3.16"
if [ "$fairchem" = 1 ]; then
  pip --no-build-isolation torch-scatter torch-sparse
  pip --no-deps "fairchem-core==1.3.0"
  pip lmdb numba orjson pyyaml requests
fi
