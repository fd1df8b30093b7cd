#!/usr/bin/env bash
# The DeepSet-MoE ablation of issue 11 (CPU, quick preset: 300 steps x 16, two seeds, all four
# tasks; resumable). One run folder per variant under results/ablation/; the default model is
# chosen from these (report: gmd26 report results/ablation/<variant>).
# The first fourteen variants were run before the body-ordered term existed (body_order 0, as
# each cell's result.json model_config says) and, but for the router variants, on the hybrid
# router (the default then); run() pins both for them, and every variant pins
# one cutoff (many_body_cutoff null: all were run before the hierarchy of cutoffs; their
# run.json plans were amended to state both), so a fresh run reproduces them under the later
# defaults (body_order 3, many_body_cutoff 4 Å). The body_order_* variants name their setting.
set -euo pipefail
cd "$(dirname "$0")/../.."
run() {  # run VARIANT_NAME JSON_CONFIG (without "body_order": pinned to 0; router: hybrid)
  case $2 in *router_mode*) ;; *) set -- "$1" "${2%\}}, \"router_mode\": \"hybrid\"}" ;; esac
  pinned "$1" "${2%\}}, \"body_order\": 0}"
}
pinned() {  # pinned VARIANT_NAME JSON_CONFIG (the settings as given, on one cutoff)
  set -- "$1" "${2%\}}, \"many_body_cutoff\": null}"
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
# the body-ordered energy term on the identity router (body_order_3 is the default since)
pinned body_order_2 '{"router_mode": "identity", "body_order": 2}'
pinned body_order_3 '{"router_mode": "identity", "body_order": 3}'
pinned body_order_3_cutoff_4 '{"router_mode": "identity", "body_order": 3, "cutoff": 4.0}'
pinned body_order_3_cutoff_3.5 '{"router_mode": "identity", "body_order": 3, "cutoff": 3.5}'
