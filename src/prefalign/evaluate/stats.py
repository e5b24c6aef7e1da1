"""Confidence intervals for evaluation numbers.

Every aggregate is reported with a 95% interval:

* means of per-prompt values (lengths, scores, win rates, KL): the percentile bootstrap over prompts;
* proportions of prompts (all instructions followed, refusals, truncations): the Wilson score interval, which stays
  sensible at 0% and 100% where a bootstrap of 0/1 values collapses to a point;
* differences between two models (the Δ column): the paired bootstrap, resampling prompts and taking both models'
  values of each resampled prompt, so prompt difficulty (shared by both) cancels out;
* the length-controlled win rate: the bootstrap of the whole logistic fit.

The bootstrap uses `RESAMPLES` resamples drawn from a generator seeded with `SEED`: a rerun reproduces every interval,
and two statistics over the same number of items see the same resamples (so the win rate of a against b and that of b
against a have exactly mirrored intervals).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

RESAMPLES = 2000
SEED = 0
LEVEL = 0.95
_Z = 1.959963984540054  # the standard normal quantile at 1 - (1 - LEVEL) / 2

# Ridge penalty of the length-controlled fit: enough to keep the coefficients finite when wins are perfectly separated
# by length (or all wins), small enough to leave a fit on real data unchanged to three decimals.
LC_PENALTY = 0.01


@dataclass(frozen=True)
class Estimate:
    """A number with its 95% interval, over `n` items (prompts or pairs), and how the interval was computed."""

    value: float
    low: float
    high: float
    n: int
    method: str  # "bootstrap", "wilson", "paired bootstrap"

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def excludes_zero(self) -> bool:
        return self.low > 0 or self.high < 0


def _resample_indices(n: int) -> np.ndarray:
    return np.random.default_rng(SEED).integers(0, n, size=(RESAMPLES, n))


def bootstrap(columns: Sequence[Sequence[float]], statistic: Callable[..., np.ndarray]) -> tuple[float, float, float]:
    """(statistic on the data, 2.5th and 97.5th percentiles of the statistic over resamples of the items).

    `columns` are equally long per-item arrays resampled together (item i of every column stays together: that is
    what makes a two-model difference paired). `statistic(*arrays)` maps arrays of shape (k, n) to k values.
    """
    arrays = [np.asarray(column, dtype=np.float64) for column in columns]
    n = len(arrays[0])
    point = float(statistic(*(a[None, :] for a in arrays))[0])
    indices = _resample_indices(n)
    values = statistic(*(a[indices] for a in arrays))
    low, high = np.percentile(values, [100 * (1 - LEVEL) / 2, 100 * (1 + LEVEL) / 2])
    return point, float(low), float(high)


def _present(*columns: Sequence[float | None]) -> list[list[float]]:
    """The items where every column has a value (None marks a missing one: a failed judge, no instructions)."""
    kept = [row for row in zip(*columns) if all(value is not None for value in row)]
    return [list(column) for column in zip(*kept)] if kept else [[] for _ in columns]


def _mean(x: np.ndarray) -> np.ndarray:
    return x.mean(axis=-1)


def mean_ci(values: Sequence[float | None]) -> Estimate | None:
    """The mean of the present values with a percentile-bootstrap interval; None when no value is present."""
    (present,) = _present(values)
    if not present:
        return None
    return Estimate(*bootstrap([present], _mean), n=len(present), method="bootstrap")


def wilson_ci(values: Sequence[float | bool | None]) -> Estimate | None:
    """The proportion of true (1) among the present 0/1 values with its Wilson score interval."""
    (present,) = _present(values)
    if not present:
        return None
    n, k = len(present), sum(bool(v) for v in present)
    low, high = wilson_interval(k, n)
    return Estimate(k / n, low, high, n=n, method="wilson")


def wilson_interval(successes: int, n: int) -> tuple[float, float]:
    """The 95% Wilson score interval of a binomial proportion (Wilson 1927)."""
    if n <= 0:
        raise ValueError("the Wilson interval needs at least one trial")
    p = successes / n
    denominator = 1 + _Z**2 / n
    centre = (p + _Z**2 / (2 * n)) / denominator
    half = _Z * math.sqrt(p * (1 - p) / n + _Z**2 / (4 * n**2)) / denominator
    return max(0.0, centre - half), min(1.0, centre + half)


def ratio_ci(numerators: Sequence[float | None], denominators: Sequence[float | None]) -> Estimate | None:
    """sum(numerators) / sum(denominators) with a bootstrap over items: e.g. the fraction of all instructions
    followed, where a prompt carries one to three instructions (IFEval's instruction-level accuracy)."""
    num, den = _present(numerators, denominators)
    if not num or sum(den) <= 0:
        return None
    return Estimate(*bootstrap([num, den], _ratio), n=len(num), method="bootstrap")


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    return num.sum(axis=-1) / np.maximum(den.sum(axis=-1), 1e-300)


def paired_mean_difference(a: Sequence[float | None], b: Sequence[float | None]) -> Estimate | None:
    """mean(a) - mean(b) over the items where both are present, with a paired bootstrap interval."""
    x, y = _present(a, b)
    if not x:
        return None
    point, low, high = bootstrap([x, y], lambda u, v: u.mean(axis=-1) - v.mean(axis=-1))
    return Estimate(point, low, high, n=len(x), method="paired bootstrap")


def paired_ratio_difference(
    num_a: Sequence[float | None],
    den_a: Sequence[float | None],
    num_b: Sequence[float | None],
    den_b: Sequence[float | None],
) -> Estimate | None:
    """ratio(a) - ratio(b) (see `ratio_ci`) over the items where both are present, with a paired bootstrap."""
    columns = _present(num_a, den_a, num_b, den_b)
    if not columns[0] or sum(columns[1]) <= 0 or sum(columns[3]) <= 0:
        return None
    point, low, high = bootstrap(columns, lambda na, da, nb, db: _ratio(na, da) - _ratio(nb, db))
    return Estimate(point, low, high, n=len(columns[0]), method="paired bootstrap")


# ---------------------------------------------------------------------------------------------------------------------
# Length-controlled win rate


def length_controlled_win_rate(
    outcomes: Sequence[float | None], length_differences: Sequence[float]
) -> Estimate | None:
    """The win rate at zero length difference, in the sense of AlpacaEval 2's length-controlled win rate.

    A logistic regression of the outcome (1 win, 0.5 tie, 0 loss; a tie is a half-weight win and a half-weight loss)
    on the feature tanh(d / sd(d)), d = model length - baseline length, as AlpacaEval does (Dubois et al. 2024,
    arXiv 2404.04475; their model also has a per-instruction difficulty term, which needs many models and is left
    out here). The reported number is sigmoid(intercept): the predicted win rate when both answers are equally long.
    The interval is the bootstrap over prompts of the whole fit. A small ridge penalty (`LC_PENALTY`) keeps the fit
    finite when length separates wins from losses perfectly.
    """
    y, d = _present(outcomes, length_differences)
    if not y:
        return None
    d_array = np.asarray(d, dtype=np.float64)
    scale = float(d_array.std())
    feature = np.tanh(d_array / scale) if scale > 0 else np.zeros_like(d_array)
    point, low, high = bootstrap([y, feature], _logistic_intercept_win_rate)
    return Estimate(point, low, high, n=len(y), method="bootstrap")


def _logistic_intercept_win_rate(y: np.ndarray, x: np.ndarray, iterations: int = 30) -> np.ndarray:
    """sigmoid(theta0) of the ridge-penalised logistic fit of y on [1, x], for every row at once (Newton's method).

    The penalised log-likelihood is strictly concave, so Newton converges; steps are clipped so that the first
    iterations of a nearly separable resample cannot overshoot.
    """
    theta0 = np.zeros(y.shape[0])
    theta1 = np.zeros(y.shape[0])
    for _ in range(iterations):
        p = 1.0 / (1.0 + np.exp(-(theta0[:, None] + theta1[:, None] * x)))
        residual = y - p
        g0 = residual.sum(axis=-1) - LC_PENALTY * theta0
        g1 = (residual * x).sum(axis=-1) - LC_PENALTY * theta1
        w = p * (1 - p)
        h00 = w.sum(axis=-1) + LC_PENALTY
        h01 = (w * x).sum(axis=-1)
        h11 = (w * x * x).sum(axis=-1) + LC_PENALTY
        det = h00 * h11 - h01 * h01
        step0 = np.clip((h11 * g0 - h01 * g1) / det, -5.0, 5.0)
        step1 = np.clip((h00 * g1 - h01 * g0) / det, -5.0, 5.0)
        theta0, theta1 = theta0 + step0, theta1 + step1
        if max(np.abs(step0).max(), np.abs(step1).max()) < 1e-9:
            break
    return 1.0 / (1.0 + np.exp(-theta0))
