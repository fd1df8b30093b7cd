"""Matched-ID interpolation and effective robustness on synthetic curves with known answers."""

from __future__ import annotations

import math

import numpy as np
import pytest

from benchmark.evaluation.robustness import (
    Curve,
    common_id_levels,
    effective_robustness,
    ood_at_matched_id,
)


def power_law_curve(prefactor: float, exponent: float, ids: list[float]) -> Curve:
    """OOD = prefactor * ID**exponent at decreasing ID errors (a straight line in log-log)."""
    ids_array = np.array(ids)
    return Curve(np.arange(len(ids)) * 100, ids_array, prefactor * ids_array**exponent)


def test_log_log_interpolation_is_exact_on_a_power_law() -> None:
    curve = power_law_curve(3.0, 0.5, [0.4, 0.1, 0.01])
    for level in (0.3, 0.05, 0.02):
        assert curve.ood_when_id_reaches(level) == pytest.approx(3.0 * level**0.5, rel=1e-12)
    assert math.isnan(curve.ood_when_id_reaches(0.001))  # never reached


def test_first_crossing_is_used_when_the_curve_goes_back_up() -> None:
    curve = Curve(np.array([0, 1, 2]), np.array([0.2, 0.05, 0.3]), np.array([0.4, 0.1, 9.0]))
    # 0.1 is the geometric midpoint of 0.2 and 0.05, so the OOD value is that of 0.4 and 0.1;
    # the later point (0.3, 9.0), where ID rose again, plays no part.
    assert curve.ood_when_id_reaches(0.1) == pytest.approx(0.2, rel=1e-12)


def test_common_levels_span_the_shared_range() -> None:
    a = power_law_curve(1.0, 1.0, [0.5, 0.1, 0.02])
    b = power_law_curve(1.0, 1.0, [0.3, 0.05])
    levels = common_id_levels([a, b], count=3)
    assert levels[0] == pytest.approx(0.3) and levels[-1] == pytest.approx(0.05)
    assert common_id_levels([a, power_law_curve(1.0, 1.0, [0.01, 0.005])]).size == 0


def test_matched_id_separates_a_more_robust_model() -> None:
    robust = [power_law_curve(1.0, 1.0, [0.5, 0.05, 0.01])]  # OOD = ID
    brittle = [power_law_curve(4.0, 1.0, [0.6, 0.1, 0.02])]  # OOD = 4 ID
    result = ood_at_matched_id({"robust": robust, "brittle": brittle}, count=4)
    levels = np.array(result["levels"])
    np.testing.assert_allclose(result["ood"]["robust"], levels, rtol=1e-12)
    np.testing.assert_allclose(result["ood"]["brittle"], 4 * levels, rtol=1e-12)


def test_a_model_outside_the_shared_range_is_left_out_not_the_comparison() -> None:
    """A model that starts below the ID error the slowest model ever reaches shares no level
    with it; the others are compared at their shared levels and that model is named."""
    robust = [power_law_curve(1.0, 1.0, [0.5, 0.05, 0.02])]
    brittle = [power_law_curve(4.0, 1.0, [0.6, 0.1, 0.04])]
    slow = [power_law_curve(2.0, 1.0, [0.9, 0.3])]  # never better than 0.3
    fast = [power_law_curve(1.0, 1.0, [0.2, 0.01])]  # never worse than 0.2
    result = ood_at_matched_id({"robust": robust, "brittle": brittle, "slow": slow, "fast": fast})
    # {robust, brittle, slow} share [0.3, 0.5]; {robust, brittle, fast} share [0.04, 0.2],
    # the wider range in log: fast is kept, slow left out
    assert result["left_out"] == ["slow"]
    levels = np.array(result["levels"])
    assert levels.max() == pytest.approx(0.2) and levels.min() == pytest.approx(0.04)
    np.testing.assert_allclose(result["ood"]["brittle"], 4 * levels, rtol=1e-12)
    np.testing.assert_allclose(result["ood"]["fast"], levels, rtol=1e-12)
    assert all(math.isnan(v) for v in result["ood"]["slow"])
    everyone = ood_at_matched_id({"robust": robust, "brittle": brittle})
    assert everyone["left_out"] == []


def test_effective_robustness_recovers_planted_residuals() -> None:
    # Models on the line log OOD = 0.2 + 0.9 log ID, except "good" (10x lower) and "bad" (10x
    # higher) at the same ID error, whose residuals cancel, so the fit is the line itself.
    line = {
        name: [(i, 10 ** (0.2 + 0.9 * math.log10(i)))]
        for name, i in (("a", 0.01), ("b", 0.03), ("c", 0.1), ("d", 0.3))
    }
    line["good"] = [(0.05, 0.1 * 10 ** (0.2 + 0.9 * math.log10(0.05)))]
    line["bad"] = [(0.05, 10 * 10 ** (0.2 + 0.9 * math.log10(0.05)))]
    result = effective_robustness(line)
    assert result["slope"] == pytest.approx(0.9, abs=1e-9)
    assert result["residual"]["good"] == pytest.approx(-1.0, abs=1e-9)
    assert result["residual"]["bad"] == pytest.approx(1.0, abs=1e-9)
    assert result["residual"]["a"] == pytest.approx(0.0, abs=1e-9)


def test_effective_robustness_needs_two_id_errors() -> None:
    result = effective_robustness({"only": [(0.1, 0.2)]})
    assert math.isnan(result["slope"]) and math.isnan(result["residual"]["only"])
