"""Confidence intervals of the evaluation report, on cases small enough to check by hand."""

from __future__ import annotations

import numpy as np
import pytest

from prefalign.evaluate.stats import (
    length_controlled_win_rate,
    mean_ci,
    paired_mean_difference,
    paired_ratio_difference,
    ratio_ci,
    wilson_ci,
    wilson_interval,
)


def test_wilson_interval_matches_published_values():
    # 0/10 and 5/10 at 95%: the classic Wilson bounds (Newcombe 1998, Table I gives 0-0.2775 and 0.2366-0.7634).
    assert wilson_interval(0, 10) == pytest.approx((0.0, 0.27753), abs=1e-5)
    assert wilson_interval(5, 10) == pytest.approx((0.23659, 0.76341), abs=1e-5)
    assert wilson_interval(10, 10) == pytest.approx((0.72247, 1.0), abs=1e-5)
    estimate = wilson_ci([1, 0, None, 0, 1, 1, 0, 0, 0, 1, 1])  # None is left out: 5 of 10
    assert (estimate.value, estimate.n, estimate.method) == (0.5, 10, "wilson")
    assert (estimate.low, estimate.high) == pytest.approx((0.23659, 0.76341), abs=1e-5)


def test_bootstrap_of_constant_values_and_of_all_ties():
    constant = mean_ci([3.0] * 7)
    assert (constant.value, constant.low, constant.high, constant.n) == (3.0, 3.0, 3.0, 7)
    ties = mean_ci([0.5] * 40)  # a win rate made of ties only
    assert (ties.value, ties.low, ties.high) == (0.5, 0.5, 0.5)
    assert mean_ci([None, None]) is None


def test_bootstrap_percentiles_by_hand_and_reproducible():
    # Resampling {0, 1} twice gives means 0, 0.5, 1 with probabilities 1/4, 1/2, 1/4: the 2.5th and 97.5th
    # percentiles are 0 and 1.
    estimate = mean_ci([0.0, 1.0])
    assert (estimate.value, estimate.low, estimate.high) == (0.5, 0.0, 1.0)
    values = list(np.random.default_rng(1).normal(size=50))
    assert mean_ci(values) == mean_ci(values)  # fixed seed: the same interval every run
    assert mean_ci(values).low < float(np.mean(values)) < mean_ci(values).high


def test_win_rates_of_a_over_b_and_b_over_a_mirror_exactly():
    outcomes = [1.0, 0.5, 0.0, 1.0, 1.0, 0.5, 0.0, 1.0, 0.5, 1.0]
    forward = mean_ci(outcomes)
    backward = mean_ci([1.0 - o for o in outcomes])
    assert forward.value + backward.value == pytest.approx(1.0)
    assert forward.low == pytest.approx(1.0 - backward.high)
    assert forward.high == pytest.approx(1.0 - backward.low)


def test_paired_difference_cancels_what_both_models_share():
    rng = np.random.default_rng(0)
    difficulty = rng.normal(0, 10, size=30)  # varies a lot between prompts, the same for both models
    a, b = list(difficulty + 1.0), list(difficulty)
    delta = paired_mean_difference(a, b)
    assert (delta.value, delta.low, delta.high) == pytest.approx((1.0, 1.0, 1.0))
    assert delta.method == "paired bootstrap" and delta.n == 30
    assert mean_ci(a).high - mean_ci(a).low > 4  # each mean alone is uncertain; their paired difference is not
    # Items missing on either side are left out of the pairing.
    assert paired_mean_difference([1.0, None, 3.0], [0.0, 5.0, None]).n == 1


def test_ratio_and_paired_ratio():
    # Instruction-level accuracy: 1 of 2 and 2 of 2 instructions followed -> 3 / 4.
    assert ratio_ci([1.0, 2.0], [2.0, 2.0]).value == pytest.approx(0.75)
    delta = paired_ratio_difference([2.0, 2.0], [2.0, 2.0], [1.0, 2.0], [2.0, 2.0])
    assert delta.value == pytest.approx(0.25) and delta.low >= 0.0 and delta.method == "paired bootstrap"


def test_length_controlled_win_rate_equals_raw_when_length_does_not_matter():
    rng = np.random.default_rng(0)
    n = 400
    lengths = rng.normal(20, 30, size=n)  # the model is usually longer
    wins = (rng.random(n) < 0.7).astype(float)  # but wins 70% regardless of length
    lc = length_controlled_win_rate(list(wins), list(lengths))
    assert lc.value == pytest.approx(wins.mean(), abs=0.03)
    assert lc.low < lc.value < lc.high


def test_length_controlled_win_rate_removes_a_pure_length_effect():
    rng = np.random.default_rng(1)
    n = 2000
    differences = rng.normal(40, 40, size=n)  # the model answers longer, and the judge likes length:
    feature = np.tanh(differences / differences.std())
    wins = (rng.random(n) < 1 / (1 + np.exp(-3.0 * feature))).astype(float)  # P(win) = sigmoid(0 + 3 x)
    assert wins.mean() > 0.75  # the raw win rate rewards length
    lc = length_controlled_win_rate(list(wins), list(differences))
    assert lc.value == pytest.approx(0.5, abs=0.06)  # at equal length there is no preference
    assert lc.low < 0.5 < lc.high


def test_length_controlled_edge_cases():
    ties = length_controlled_win_rate([0.5] * 10, [float(i) for i in range(10)])
    assert ties.value == pytest.approx(0.5) and ties.low == pytest.approx(0.5) and ties.high == pytest.approx(0.5)
    wins = length_controlled_win_rate([1.0] * 10, [0.0] * 10)  # equal lengths, all wins: finite and near 1
    assert 0.99 < wins.value <= 1.0
    assert length_controlled_win_rate([None, None], [1.0, 2.0]) is None
