#!/usr/bin/env bash
# DeepSet-MoE design probes at the protocol budget (results/ablation_protocol/README.md; CPU,
# resumable). The default model's own cells are results/protocol (tools/runs/protocol.sh).
# interactions_1 was run before the body-ordered term existed: it pins body_order 0. The
# variants before the hierarchy of cutoffs run on one cutoff (run() pins many_body_cutoff null).
set -euo pipefail
cd "$(dirname "$0")/../.."
run() {  # run VARIANT_NAME JSON_CONFIG TASKS SEEDS (on one cutoff unless JSON_CONFIG sets it)
  case $2 in *many_body_cutoff*) ;; *) set -- "$1" "${2%\}}, \"many_body_cutoff\": null}" "$3" "$4" ;; esac
  gmd26 run --tasks $3 --models deepset_moe --preset protocol --seeds "$4" --workers 1 \
    --threads-per-cell 1 --model-configs "{\"deepset_moe\": $2}" \
    --out "results/ablation_protocol/$1" --no-report
}
run interactions_1 '{"num_interactions": 1, "body_order": 0}' substitution 2
run body_order_2 '{"body_order": 2}' substitution 2
run body_order_3_interactions_1 '{"body_order": 3, "num_interactions": 1}' substitution 2
run body_order_3_cutoff_3.5 '{"body_order": 3, "cutoff": 3.5}' substitution 2
run body_order_3_cutoff_4 '{"body_order": 3, "cutoff": 4.0}' \
  "duplication combination elongation substitution" 3
# the hierarchy of cutoffs (many_body_cutoff 4 Å is the default since: results/protocol);
# one_cutoff holds the cells of the default before it (moved from results/protocol)
run one_cutoff '{"many_body_cutoff": null}' "duplication combination elongation substitution" 3
run many_body_cutoff_3.5 '{"many_body_cutoff": 3.5}' \
  "substitution duplication combination elongation" 3
# the many-body part within 3 Å; wider descriptors (num_channels 32, 48)
run many_body_cutoff_3 '{"many_body_cutoff": 3.0}' substitution 3
run channels_32 '{"num_channels": 32, "many_body_cutoff": 4.0}' "duplication substitution" 2
run channels_32 '{"num_channels": 32, "many_body_cutoff": 4.0}' substitution 3
run channels_48 '{"num_channels": 48, "many_body_cutoff": 4.0}' "duplication substitution" 2
run channels_32_interactions_1 '{"num_channels": 32, "num_interactions": 1, "many_body_cutoff": 4.0}' \
  duplication 1
gmd26 ablation results/ablation_protocol results/protocol results/ablation_protocol/*/
