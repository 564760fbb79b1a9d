"""Validity cards on synthetic scores with known answers."""

from __future__ import annotations

import math

import numpy as np
import pytest

from rlff_utils.validity import auc_with_ci, spearman_with_ci, validity_card


def test_perfect_inverted_and_chance_auc():
    rng = np.random.default_rng(0)
    good, bad = rng.uniform(0.6, 1.0, 80), rng.uniform(-1.0, 0.4, 80)
    auc, (lo, hi), p = auc_with_ci(good, bad, samples=300)
    assert auc == 1.0 and lo == hi == 1.0 and p < 1e-10
    auc, (lo, hi), p = auc_with_ci(bad, good, samples=300)
    assert auc == 0.0 and hi == 0.0 and p < 1e-10
    same_a, same_b = rng.normal(0, 1, 400), rng.normal(0, 1, 400)
    auc, (lo, hi), p = auc_with_ci(same_a, same_b, samples=300)
    assert abs(auc - 0.5) < 0.06 and lo < 0.5 < hi and p > 0.05


def test_ties_count_half_and_constant_scores_are_chance():
    auc, ci, p = auc_with_ci([0.5] * 10, [0.5] * 12, samples=50)
    assert auc == 0.5 and ci == (0.5, 0.5) and p == 1.0


def test_card_counts_missing_verdicts_and_labels_and_baseline():
    card = validity_card(
        "critic", [1.0, 0.5, None, 0.5], [-1.0, -0.5, math.nan],
        success_labels=["solved", "better", None, "better"], failed_labels=["worse", "same", None],
        unparsed_answers=3, answers=30,
        drops=[3, 2, 0, -1], drop_scores=[1.0, 0.5, -0.5, -1.0],
        baseline="turn count", baseline_success=[10, 12, 14, 16], baseline_failed=[11, 13, 15],
        samples=200)
    assert card.auc == 1.0 and card.n_success == 4 and card.n_failed == 3
    assert card.no_verdict_share == pytest.approx(2 / 7) and card.unparsed_answer_share == pytest.approx(0.1)
    assert card.top_labels_success == {"better": 2, "solved": 1}
    assert card.spearman_drop == pytest.approx(1.0) and card.n_with_drop == 4
    assert 0.3 < card.baseline_auc < 0.7
    assert "AUC 1.00" in card.summary() and "turn count" in card.summary()


def test_spearman_interval_contains_the_estimate_and_handles_constants():
    rng = np.random.default_rng(1)
    x = rng.normal(size=200)
    rho, (lo, hi), n = spearman_with_ci(x, x + rng.normal(scale=0.5, size=200), samples=300)
    assert n == 200 and lo <= rho <= hi and rho > 0.8
    assert math.isnan(spearman_with_ci([1, 1, 1, 1], [1, 2, 3, 4])[0])
