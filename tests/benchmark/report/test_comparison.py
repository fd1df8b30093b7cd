"""Comparison at matched accuracy on synthetic cells with known answers: numbers, table, figure.

Two models with power-law ID-OOD curves (``robust``: OOD = ID; ``brittle``: OOD = 3 ID and
5 ID, one per seed) and two more (``a``, ``b``) whose results predate curves. Final test points
lie on log10 OOD = log10 2 + log10 ID except ``robust`` (-0.9 and -1.1 decades) and ``brittle``
(+0.9 and +1.1 decades), all four at the same ID error, so the least-squares line is that line
and the residuals are planted.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from benchmark.report.comparison import cell_curve, comparison_summary, task_comparison
from benchmark.report.figures import comparison_figure, save_figure
from benchmark.report.tables import comparison_table

INTERCEPT = math.log10(2.0)


def curve(ids: list[float], factor: float) -> list[dict[str, float]]:
    return [
        {
            "step": 10 * (k + 1),
            "id_force_mae": i,
            "ood_force_mae": factor * i,
            "id_energy_per_atom_mae": 0.01,
            "ood_energy_per_atom_mae": 0.02,
        }
        for k, i in enumerate(ids)
    ]


def cell(seed: int, final_id: float, residual: float, points=None) -> dict:
    ood = 10 ** (INTERCEPT + math.log10(final_id) + residual)
    result = {
        "status": "ok",
        "seed": seed,
        "metrics": {"id_test": {"force_mae": final_id}, "ood_test": {"force_mae": ood}},
    }
    if points is not None:
        result["curve"] = points
    return result


def synthetic_results() -> dict[str, list[dict]]:
    robust_curve = curve([0.5, 0.2, 0.05], 1.0)
    return {
        "robust": [cell(0, 0.05, -0.9, robust_curve), cell(1, 0.05, -1.1, robust_curve)],
        "brittle": [
            cell(0, 0.05, 0.9, curve([0.4, 0.1, 0.02], 3.0)),
            cell(1, 0.05, 1.1, curve([0.6, 0.15, 0.03], 5.0)),
        ],
        "a": [cell(0, 0.01, 0.0)],
        "b": [cell(0, 0.25, 0.0), {"status": "failed", "seed": 1, "reason": "diverged"}],
    }


def table_rows(table: str) -> dict[str, list[str]]:
    rows = {}
    for line in table.splitlines()[2:]:
        cells = [c.strip() for c in line.strip("|").split("|")]
        rows[cells[0].split(" (")[0]] = cells[1:]
    return rows


def test_numbers_on_known_power_laws():
    comparison = task_comparison(synthetic_results(), levels=3)
    matched = comparison["matched_id"]
    # levels between the worst best ID (0.05) and the best worst ID (0.4), geometric
    np.testing.assert_allclose(matched["levels"], [0.4, math.sqrt(0.4 * 0.05), 0.05], rtol=1e-12)
    levels = np.array(matched["levels"])
    assert matched["models"] == ["robust", "brittle"]
    np.testing.assert_allclose(matched["ood"]["robust"], levels, rtol=1e-12)
    np.testing.assert_allclose(matched["ood"]["brittle"], 4.0 * levels, rtol=1e-12)
    np.testing.assert_allclose(matched["ood_std"]["brittle"], math.sqrt(2) * levels, rtol=1e-12)
    assert all(math.isnan(v) for v in matched["ood"]["a"])
    robustness = comparison["effective_robustness"]
    assert robustness["slope"] == pytest.approx(1.0, abs=1e-9)
    assert robustness["intercept"] == pytest.approx(INTERCEPT, abs=1e-9)
    assert robustness["residual"]["robust"] == pytest.approx(-1.0, abs=1e-9)
    assert robustness["residual"]["brittle"] == pytest.approx(1.0, abs=1e-9)
    assert robustness["residual_std"]["brittle"] == pytest.approx(math.sqrt(0.02), abs=1e-9)
    assert robustness["factor"]["robust"] == pytest.approx(0.1, rel=1e-9)
    assert robustness["residual"]["a"] == pytest.approx(0.0, abs=1e-9)
    assert robustness["points"] == 6  # the failed seed of b is left out
    assert comparison["final"]["b"]["seeds"] == [0]
    assert sum("no ID-OOD curve" in note for note in comparison["notes"]) == 2
    summary = comparison_summary(comparison)
    assert summary["models"]["brittle"]["effective_robustness_factor"] == pytest.approx(10.0)
    json.dumps(summary)  # plain JSON-able (NaN aside, which json_safe turns into null)


def test_table_prints_the_numbers():
    comparison = task_comparison(synthetic_results(), levels=3)
    table = comparison_table(comparison, failed=["painn"])
    header = table.splitlines()[0]
    assert header == (
        "| model | ID force MAE | OOD force MAE | OOD/ID | OOD at ID 0.4 eV/Å | "
        "OOD at ID 0.141 eV/Å | OOD at ID 0.05 eV/Å | effective robustness, decades (factor) |"
    )
    rows = table_rows(table)
    robust_ood = [0.1 * 10**-0.9, 0.1 * 10**-1.1]
    assert rows["robust"] == [
        "0.05 ± 0",
        f"{np.mean(robust_ood):.3g} ± {np.std(robust_ood, ddof=1):.3g}",
        f"{np.mean(robust_ood) / 0.05:.3g} ± {np.std(robust_ood, ddof=1) / 0.05:.3g}",
        "0.4 ± 0",
        "0.141 ± 0",
        "0.05 ± 0",
        "−1.00 ± 0.14 (0.10×)",
    ]
    assert rows["brittle"][3:] == [
        "1.6 ± 0.566",
        "0.566 ± 0.2",
        "0.2 ± 0.0707",
        "+1.00 ± 0.14 (10.00×)",
    ]
    assert rows["a"] == ["0.01", "0.02", "2", "–", "–", "–", "0.00 (1.00×)"]
    assert rows["painn"] == ["–"] * 7
    assert "| painn (no seed finished ok) |" in table


def test_curves_that_share_no_id_accuracy():
    results = {
        "fast": [cell(0, 0.02, 0.0, curve([0.05, 0.02], 1.0))],
        "slow": [cell(0, 0.3, 0.0, curve([0.6, 0.3], 2.0))],
    }
    comparison = task_comparison(results)
    assert comparison["matched_id"]["levels"] == []
    assert any("share no ID force MAE" in note for note in comparison["notes"])
    rows = table_rows(comparison_table(comparison))
    assert rows["fast"][3] == "no common level"


def test_curve_json_fallback_and_unusable_points(tmp_path):
    points = curve([0.5, 0.2], 1.0)
    points.append({**points[-1], "step": 30, "ood_force_mae": float("nan")})
    (tmp_path / "curve.json").write_text(json.dumps({"points": points}, allow_nan=True))
    result = {**cell(0, 0.2, 0.0), "cell_dir": str(tmp_path)}
    assert cell_curve(result) is not None and len(cell_curve(result)) == 3
    comparison = task_comparison({"m": [result]})
    assert comparison["curves"]["m"][0]["step"] == [10, 20]
    assert any("1 curve point(s)" in note for note in comparison["notes"])
    assert cell_curve({"cell_dir": str(tmp_path / "absent")}) is None


def test_figure_draws_curves_points_diagonal_fit_and_levels(tmp_path):
    comparison = task_comparison(synthetic_results(), levels=3)
    robustness = comparison["effective_robustness"]
    figure = comparison_figure(
        comparison["curves"],
        {m: comparison["final"][m]["points"] for m in comparison["models"]},
        comparison["matched_id"]["levels"],
        (robustness["slope"], robustness["intercept"]),
        "synthetic",
    )
    (ax,) = figure.axes
    assert ax.get_xscale() == "log" and ax.get_yscale() == "log"
    lines = ax.get_lines()
    # 4 seed curves + 4 models' final points + diagonal + accuracy line + 3 level guides
    assert len(lines) == 13
    solid = [line for line in lines if line.get_linestyle() == "-"]
    assert sum(len(line.get_xdata()) == 3 for line in solid) == 4  # the seeds' curves
    diagonal = [line for line in lines if line.get_linestyle() == "--"]
    assert len(diagonal) == 1
    np.testing.assert_allclose(diagonal[0].get_ydata(), diagonal[0].get_xdata())
    (fit,) = [line for line in lines if line.get_linestyle() == ":"]
    np.testing.assert_allclose(fit.get_ydata(), 2.0 * np.asarray(fit.get_xdata()), rtol=1e-9)
    guides = [line for line in solid if list(line.get_xdata()) == [line.get_xdata()[0]] * 2]
    np.testing.assert_allclose(
        sorted(g.get_xdata()[0] for g in guides), sorted(comparison["matched_id"]["levels"])
    )
    path = save_figure(figure, tmp_path / "comparison.png")
    assert path.stat().st_size > 10_000


def test_figure_without_finite_points():
    figure = comparison_figure({}, {"m": []}, [], None, "empty")
    assert figure.axes[0].texts[0].get_text() == "no finite force MAE"
