"""Run-health warnings: the signs, visible in the metrics, that preference training is going wrong.

`HealthMonitor.update` is fed every record the loop logs and returns one-line warnings to print. Each condition warns
once when it starts and stays quiet while it lasts; it can warn again after it has cleared (a new episode).

* KL spike: KL(policy || reference) jumps well above its recent median, e.g. a learning rate too high or a bad batch.
* Reward gap stalled: the validation reward margin has not reached a new best for several evaluations, so more
  training is no longer teaching the preference (judged on evaluations only; training margins are too noisy).
* Chosen log-probs falling: the policy lowers the likelihood of the chosen responses log after log while the margin
  grows. DPO only constrains the difference, so it can widen the gap by pushing both responses down, the known
  failure mode (Pal et al. 2024, arXiv 2402.13228); an NLL term on the chosen responses (`--sft-weight`) counters it.
"""

from __future__ import annotations

import itertools
import math
import statistics
from collections import defaultdict, deque
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..data.tokenize import TruncationReport

_SPLIT_NAMES = {"train": "train", "eval": "validation"}


class HealthMonitor:
    """Watches logged metrics (the DPO names: kl, rewards/margins, logps/chosen) and returns warnings as they arise.

    kl_spike_factor / kl_floor: a KL value warns when above `factor` x the median of the last `kl_window` values of its
    split and above `kl_floor` nats (tiny early KLs tripling is not a problem); judged once `kl_min_history` values
    are known. gap_patience / gap_min_delta: the validation margin must beat its previous best by more than
    `gap_min_delta` within `gap_patience` evaluations. logp_window: how many consecutive records of a split must show
    chosen log-probs falling (each lower than the one before) while the margin rises from first to last.
    """

    def __init__(
        self,
        *,
        kl_spike_factor: float = 3.0,
        kl_floor: float = 0.1,
        kl_window: int = 50,
        kl_min_history: int = 5,
        gap_patience: int = 3,
        gap_min_delta: float = 0.0,
        logp_window: int = 6,
    ):
        self.kl_spike_factor = kl_spike_factor
        self.kl_floor = kl_floor
        self.kl_min_history = kl_min_history
        self.gap_patience = gap_patience
        self.gap_min_delta = gap_min_delta
        self._kl: defaultdict[str, deque[float]] = defaultdict(lambda: deque(maxlen=kl_window))
        self._eval_margins: list[float] = []
        self._logps: defaultdict[str, deque[tuple[float, float]]] = defaultdict(lambda: deque(maxlen=logp_window))
        self._active: set[tuple[str, str]] = set()  # (condition, split) episodes already warned about

    def update(self, step: int, split: str, metrics: dict[str, float]) -> list[str]:
        """Take one logged record; return the warnings (possibly none) it starts."""
        where = _SPLIT_NAMES.get(split, split)
        warnings = []
        kl = _finite(metrics.get("kl"))
        if kl is not None:
            warnings += self._check_kl(step, split, where, kl)
        margin = _finite(metrics.get("rewards/margins"))
        if margin is not None and split == "eval":
            warnings += self._check_gap(step, margin)
        chosen = _finite(metrics.get("logps/chosen"))
        if chosen is not None and margin is not None:
            warnings += self._check_chosen_logps(step, split, where, chosen, margin)
        return warnings

    def _check_kl(self, step: int, split: str, where: str, kl: float) -> list[str]:
        history = self._kl[split]
        median = statistics.median(history) if len(history) >= self.kl_min_history else None
        history.append(kl)
        spiking = median is not None and kl > self.kl_floor and kl > self.kl_spike_factor * median
        if not self._episode("kl_spike", split, spiking):
            return []
        assert median is not None
        ratio = f"{kl / median:.1f}x" if median > 0 else "far above"
        return [
            f"step {step}: {where} KL spike: {kl:.4g} nats/token is {ratio} its recent median {median:.4g} "
            "(learning rate too high, or an unusual batch?)"
        ]

    def _check_gap(self, step: int, margin: float) -> list[str]:
        margins = self._eval_margins
        margins.append(margin)
        if len(margins) <= self.gap_patience:
            return []
        best_before = max(margins[: -self.gap_patience])
        best_recent = max(margins[-self.gap_patience :])
        stalled = best_recent <= best_before + self.gap_min_delta
        if not self._episode("gap_stalled", "eval", stalled):
            return []
        return [
            f"step {step}: the validation reward gap stopped growing: best {best_recent:.4g} over the last "
            f"{self.gap_patience} evaluations vs {best_before:.4g} before (converged, or overfitting the train pairs?)"
        ]

    def _check_chosen_logps(self, step: int, split: str, where: str, chosen: float, margin: float) -> list[str]:
        window = self._logps[split]
        window.append((chosen, margin))
        logps = [logp for logp, _ in window]
        falling = (
            len(window) == window.maxlen
            and all(later < earlier for earlier, later in itertools.pairwise(logps))
            and window[-1][1] > window[0][1]
        )
        if not self._episode("chosen_falling", split, falling):
            return []
        return [
            f"step {step}: {where} chosen log-probs fell in each of the last {len(window)} records "
            f"({logps[0]:.4g} -> {logps[-1]:.4g}) while the reward gap grew ({window[0][1]:.4g} -> "
            f"{window[-1][1]:.4g}): the policy is pushing down both responses, a known DPO failure; "
            "consider --sft-weight or a lower learning rate"
        ]

    def _episode(self, condition: str, split: str, holds: bool) -> bool:
        """True when `condition` starts holding (warn now); False while it lasts or does not hold."""
        key = (condition, split)
        if not holds:
            self._active.discard(key)
            return False
        if key in self._active:
            return False
        self._active.add(key)
        return True


def truncation_warning(report: TruncationReport) -> str | None:
    """A one-line warning when tokenization cut or dropped any record, None when everything fit."""
    if not (report.prompt_truncated or report.completion_truncated or report.dropped):
        return None
    return (
        f"tokenization cut or dropped {report.unit}: {report.summary()}; "
        "raise --max-length / --max-prompt-length to keep more"
    )


def _finite(value: float | None) -> float | None:
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None
