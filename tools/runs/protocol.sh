#!/usr/bin/env bash
# The committed step-budget runs of issue 10 (CPU, resumable: rerun to continue; finished cells
# are skipped, unfinished ones continue from their last round).
#   results/protocol/        the comparison matrix, protocol preset
#   results/decomposition/   duplication under the GMD-26 authors' choices (interleaved ID split,
#                            no E0, both), against results/protocol's honest protocol
set -euo pipefail
cd "$(dirname "$0")/../.."
baselines="schnet painn nequip mace"
gmd26 run --tasks duplication --models $baselines --preset protocol --seeds 1 \
  --out results/protocol --no-report --workers "${WORKERS:-2}"
for variant in interleaved e0_none interleaved_e0_none; do
  case $variant in
    interleaved) overrides='{"id_split": "interleaved"}' ;;
    e0_none) overrides='{"e0": "none"}' ;;
    interleaved_e0_none) overrides='{"id_split": "interleaved", "e0": "none"}' ;;
  esac
  gmd26 run --tasks duplication --models $baselines deepset_moe --preset protocol --seeds 1 \
    --preset-overrides "$overrides" --out "results/decomposition/$variant" --no-report --workers "${WORKERS:-2}"
done
# DeepSet-MoE with the default the ablation chose (identity router, body_order 3,
# many_body_cutoff 4 Å), three seeds:
# ~3 min a cell
gmd26 run --tasks duplication combination elongation substitution --models deepset_moe \
  --preset protocol --seeds 3 --out results/protocol --no-report --workers "${WORKERS:-2}"
# every task with one seed first, then the second seed, then DimeNet++ (the slowest on CPU)
for seeds in 1 2; do
  gmd26 run --tasks duplication combination elongation substitution --models $baselines \
    --preset protocol --seeds $seeds --out results/protocol --no-report --workers "${WORKERS:-2}"
done
gmd26 run --tasks duplication combination elongation substitution --models dimenet++ \
  --preset protocol --seeds 2 --out results/protocol --no-report --workers "${WORKERS:-2}"
