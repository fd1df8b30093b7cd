#!/usr/bin/env bash
# The DeepSet-MoE ablation of issue 11 (CPU, quick preset: 300 steps x 16, two seeds, all four
# tasks; resumable). One run folder per variant under results/ablation/; the default model is
# chosen from these (report: gmd26 report results/ablation/<variant>).
set -euo pipefail
cd "$(dirname "$0")/../.."
run() {  # run VARIANT_NAME JSON_CONFIG
  for task in duplication combination elongation substitution; do
    gmd26 run --tasks "$task" --models deepset_moe --preset quick --seeds 2 --workers 1 \
      --model-configs "{\"deepset_moe\": $2}" --out "results/ablation/$1" --no-report
  done
}
for mode in hybrid learned fragment identity spatial; do
  run "router_$mode" "{\"router_mode\": \"$mode\"}"
done
run router_none '{"router_mode": "none", "num_experts": 1, "top_k": 1, "expert_hidden": 521}'
run experts_4_k1 '{"num_experts": 4, "top_k": 1}'
run pooling_mean '{"pooling": "mean"}'
run pooling_attention '{"pooling": "attention"}'
run rho_mlp '{"readout": "mlp"}'
run cutoff_3.5 '{"cutoff": 3.5}'
run cutoff_6 '{"cutoff": 6.0}'
run experts_16_k2 '{"num_experts": 16, "top_k": 2}'
run gate_topk '{"gate": "topk"}'  # smoothness, not generalisation: last
