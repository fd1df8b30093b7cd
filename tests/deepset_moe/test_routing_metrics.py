"""Routing metrics: exact values on hand-built routings, degenerate cases, JSON summary."""

from __future__ import annotations

import json
import math

import pytest
import torch

from deepset_moe.routing_metrics import (
    RoutingStats,
    expert_utilisation,
    fragment_expert_counts,
    fragment_js_divergence,
    jensen_shannon_divergence,
    load_balance_cv,
    mean_routing_entropy,
    normalised_mutual_information,
    routing_entropy,
    routing_summary,
    row_normalise,
)


def test_utilisation_counts_every_slot():
    experts = torch.tensor([[0, 1], [0, 2], [0, 1]])
    utilisation = expert_utilisation(experts, num_experts=4)
    assert utilisation.dtype == torch.float64
    torch.testing.assert_close(utilisation, torch.tensor([3, 2, 1, 0], dtype=torch.float64) / 6)


def test_load_balance_cv_extremes():
    assert load_balance_cv(torch.full((5,), 0.2, dtype=torch.float64)) == pytest.approx(0.0)
    one_hot = torch.tensor([1.0, 0.0, 0.0, 0.0, 0.0], dtype=torch.float64)
    assert load_balance_cv(one_hot) == pytest.approx(math.sqrt(4))
    assert math.isnan(load_balance_cv(torch.zeros(3)))


def test_entropy_uniform_and_hard_gates():
    uniform = torch.full((3, 4), 0.25)
    hard = torch.eye(4)[:3]
    torch.testing.assert_close(
        routing_entropy(uniform), torch.full((3,), math.log(4), dtype=torch.float64)
    )
    assert mean_routing_entropy(uniform, normalised=True) == pytest.approx(1.0)
    assert mean_routing_entropy(hard) == 0.0
    mixed = torch.cat([uniform, hard])
    assert mean_routing_entropy(mixed) == pytest.approx(math.log(4) / 2)


def test_fragment_expert_counts_and_rows():
    fragment = torch.tensor([0, 0, 2])
    experts = torch.tensor([[1, 0], [1, 2], [2, 1]])
    counts = fragment_expert_counts(fragment, experts, num_fragments=3, num_experts=3)
    expected = torch.tensor([[1, 2, 1], [0, 0, 0], [0, 1, 1]], dtype=torch.float64)
    torch.testing.assert_close(counts, expected)
    top1 = fragment_expert_counts(fragment, experts[:, 0], 3, 3)
    torch.testing.assert_close(top1.sum(), torch.tensor(3.0, dtype=torch.float64))
    rows = row_normalise(counts)
    torch.testing.assert_close(rows[0], torch.tensor([0.25, 0.5, 0.25], dtype=torch.float64))
    assert rows[1].isnan().all()


def _nmi_by_hand(table: list[list[float]]) -> float:
    total = sum(map(sum, table))
    p = [[v / total for v in row] for row in table]
    rows = [sum(row) for row in p]
    cols = [sum(col) for col in zip(*p)]
    mutual = sum(
        p[i][j] * math.log(p[i][j] / (rows[i] * cols[j]))
        for i in range(len(rows))
        for j in range(len(cols))
        if p[i][j] > 0
    )
    h_rows = -sum(x * math.log(x) for x in rows if x > 0)
    h_cols = -sum(x * math.log(x) for x in cols if x > 0)
    return mutual / ((h_rows + h_cols) / 2)


def test_nmi_values_and_degenerate_cases():
    perfect = torch.tensor([[5.0, 0, 0], [0, 3, 0], [0, 0, 2]])
    assert normalised_mutual_information(perfect) == pytest.approx(1.0)
    # relabelling experts does not change NMI
    assert normalised_mutual_information(perfect[:, [2, 0, 1]]) == pytest.approx(1.0)
    independent = torch.outer(torch.tensor([1.0, 3.0]), torch.tensor([2.0, 2.0, 4.0]))
    assert normalised_mutual_information(independent) == pytest.approx(0.0, abs=1e-12)
    table = [[4.0, 1.0, 0.0], [1.0, 2.0, 3.0]]
    assert normalised_mutual_information(torch.tensor(table)) == pytest.approx(
        _nmi_by_hand(table), rel=1e-12
    )
    assert normalised_mutual_information(torch.tensor([[0.0, 7.0], [0.0, 0.0]])) == 1.0
    assert normalised_mutual_information(torch.tensor([[3.0, 7.0], [0.0, 0.0]])) == 0.0
    assert math.isnan(normalised_mutual_information(torch.zeros(2, 2)))


def test_jensen_shannon_bits():
    p = torch.tensor([1.0, 0.0])
    q = torch.tensor([0.5, 0.5])
    expected = 0.5 * (math.log2(1 / 0.75) + 0.5 * math.log2(0.5 / 0.75) + 0.5 * math.log2(2.0))
    assert float(jensen_shannon_divergence(p, q)) == pytest.approx(expected)
    assert float(jensen_shannon_divergence(p, p)) == 0.0
    assert float(jensen_shannon_divergence(p, torch.tensor([0.0, 3.0]))) == pytest.approx(1.0)
    # symmetric and scale-free
    assert float(jensen_shannon_divergence(q * 4, p)) == pytest.approx(expected)


def test_fragment_js_nan_for_absent_fragment():
    id_counts = torch.tensor([[4.0, 0.0], [2.0, 2.0], [0.0, 0.0]])
    ood_counts = torch.tensor([[0.0, 1.0], [1.0, 1.0], [3.0, 0.0]])
    js = fragment_js_divergence(id_counts, ood_counts)
    assert js[0] == pytest.approx(1.0)
    assert js[1] == pytest.approx(0.0)
    assert js[2].isnan()


def _random_stats(seed: int, num_atoms: int, num_fragments_used: int) -> RoutingStats:
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(num_atoms, 4, generator=generator)
    probs = logits.softmax(-1).double()
    experts = probs.topk(2, dim=-1).indices
    fragment = torch.randint(0, num_fragments_used, (num_atoms,), generator=generator)
    return RoutingStats(probs=probs, experts=experts, fragment=fragment)


def test_routing_summary_is_strict_json_and_consistent():
    id_stats = _random_stats(0, 200, num_fragments_used=5)
    ood_stats = _random_stats(1, 150, num_fragments_used=8)
    summary = routing_summary(id_stats, ood_stats)
    text = json.dumps(summary, allow_nan=False)
    assert json.loads(text)["num_experts"] == 4
    assert summary["top_k"] == 2
    assert summary["id"]["num_atoms"] == 200
    assert sum(summary["id"]["utilisation"]) == pytest.approx(1.0)
    assert 0.0 <= summary["ood"]["entropy_normalised"] <= 1.0
    # fragments 5..7 are absent from the ID split: JS undefined, fractions missing
    names = summary["fragment_names"]
    assert all(summary["js_divergence"][names[f]] is None for f in (5, 6, 7))
    assert all(0.0 <= summary["js_divergence"][names[f]] <= 1.0 for f in range(5))
    assert summary["id"]["fragment_expert_fraction"][6] == [None] * 4
    assert summary["js_divergence_mean"] == pytest.approx(
        sum(summary["js_divergence"][names[f]] for f in range(5)) / 5
    )


def test_routing_summary_rejects_mismatched_experts():
    stats = _random_stats(0, 10, 3)
    other = RoutingStats(
        probs=torch.full((10, 3), 1 / 3, dtype=torch.float64),
        experts=torch.zeros(10, 1, dtype=torch.long),
        fragment=stats.fragment,
    )
    with pytest.raises(ValueError, match="expert counts"):
        routing_summary(stats, other)
