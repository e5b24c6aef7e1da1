"""Run-health warnings: the signs, visible in the metrics, that preference training is going wrong.

`HealthMonitor.update` is fed every record the loop logs and returns one-line warnings to print. Each condition warns
once when it starts and stays quiet while it lasts; it can warn again after it has cleared (a new episode).

* KL spike: KL(policy || reference) jumps well above its recent median, e.g. a learning rate too high or a bad batch.
* Reward gap stalled: the validation reward margin has not reached a new best for several evaluations, so more
  training is no longer teaching the preference (judged on evaluations only; training margins are too noisy).
* Chosen log-probs falling: the policy lowers the likelihood of the chosen responses log after log while the margin
  grows. DPO only constrains the difference, so it can widen the gap by pushing both responses down, the known
  failure mode (Pal et al. 2024, arXiv 2402.13228); an NLL term on the chosen responses (`--loss sigmoid,sft:0.5`)
  or DPO-Positive (`--loss dpop`) counters it.

`HealthMonitor.check` is fed every training step's metrics (means of the step's sums, before its update) and every
validation, and returns `Finding`s: divergence, a model being destroyed (the loop stops the run or warns, per
--on-divergence), and a zero gradient at a non-zero loss (always a warning). Divergence is judged on what every
objective's metrics hold, each check where its metric exists:

* Loss blow-up (SFT, the reward model, DPO): the loss above `loss_factor` x its mean over the split's first
  `baseline_steps` values (at least `LOSS_FLOOR`, so a loss near 0 does not make every wobble a blow-up).
* KL (DPO with a live reference): KL(policy || reference) per response token above `max_kl` nats.
* Log-probability collapse (DPO): the policy's log-probability of the step's responses (chosen and rejected; the
  same tokens, so also per token) more than `logp_factor` x the reference's. It needs no reference model
  (--precompute-ref too): reference = policy - log-ratio, both from the metrics.
"""

from __future__ import annotations

import itertools
import math
import statistics
from collections import defaultdict, deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..data.tokenize import TruncationReport

_SPLIT_NAMES = {"train": "train", "eval": "validation"}
LOSS_FLOOR = 0.1  # nats: the least loss a blow-up factor multiplies
ZERO_GRAD_MIN_LOSS = 1e-3  # below this loss a gradient may round to exactly zero without anything being wrong


@dataclass(frozen=True)
class DivergenceLimits:
    """When a step's metrics say training is destroying the model; 0 turns a check off (see the module docstring)."""

    loss_factor: float = 10.0
    max_kl: float = 5.0
    logp_factor: float = 4.0
    baseline_steps: int = 5


@dataclass(frozen=True)
class Finding:
    """One thing `HealthMonitor.check` saw: `message` is one line; `diverged` says whether it is divergence (the loop
    stops or warns, per --on-divergence) or a warning only."""

    message: str
    diverged: bool


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
        limits: DivergenceLimits | None = None,
    ):
        self.limits = limits if limits is not None else DivergenceLimits()
        self._baseline: defaultdict[str, list[float]] = defaultdict(list)  # the first losses of each split
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
            "consider --loss sigmoid,sft:0.5 (an NLL term on chosen), --loss dpop, or a lower learning rate"
        ]

    def check(self, step: int, split: str, metrics: dict[str, float]) -> list[Finding]:
        """Judge one step's metrics (split "train", with its "grad_norm", before its update) or one validation
        ("eval"): divergence, and a zero gradient at a non-zero loss. Each condition is reported once per episode."""
        where = _SPLIT_NAMES.get(split, split)
        findings = [
            Finding(f"step {step}: diverged: {where} {message}", diverged=True)
            for condition, message in self._divergence(split, metrics)
            if self._episode(condition, split, True)
        ]
        loss, grad_norm = _finite(metrics.get("loss")), metrics.get("grad_norm")
        dead = grad_norm == 0.0 and loss is not None and abs(loss) > ZERO_GRAD_MIN_LOSS
        if self._episode("zero_grad", split, dead):
            findings.append(
                Finding(
                    f"step {step}: the gradient norm is exactly 0 at a {where} loss of {loss:.4g}: nothing is "
                    "learning (a saturated or broken model, e.g. after too high a --learning-rate?)",
                    diverged=False,
                )
            )
        return findings

    def _divergence(self, split: str, metrics: dict[str, float]) -> list[tuple[str, str]]:
        """(condition, what is wrong) for each divergence check `metrics` fails; episodes end when it passes."""
        limits, failed = self.limits, []
        loss = _finite(metrics.get("loss"))
        if loss is not None and limits.loss_factor > 0:
            baseline = self._baseline[split]
            if baseline:
                reference = max(statistics.fmean(baseline), LOSS_FLOOR)
                if loss > limits.loss_factor * reference:
                    failed.append(
                        (
                            "loss_blowup",
                            f"loss {loss:.4g} is above --divergence-loss-factor {limits.loss_factor:g} x "
                            f"{reference:.4g} (its mean over the first {len(baseline)} values)",
                        )
                    )
            if len(baseline) < limits.baseline_steps and not failed:
                baseline.append(loss)
        kl = _finite(metrics.get("kl"))
        if kl is not None and 0 < limits.max_kl < kl:
            failed.append(
                ("kl", f"KL from the reference {kl:.4g} nats/token is above --divergence-max-kl {limits.max_kl:g}")
            )
        if (ratio := _logp_ratio(metrics)) is not None and 0 < limits.logp_factor < ratio[0]:
            factor, policy, reference = ratio
            failed.append(
                (
                    "logp_collapse",
                    f"log-probability of the responses {policy:.4g} is {factor:.3g}x the reference's {reference:.4g} "
                    f"(per pair; as much per token), above --divergence-logp-factor {limits.logp_factor:g}",
                )
            )
        for condition in {"loss_blowup", "kl", "logp_collapse"} - {condition for condition, _ in failed}:
            self._active.discard((condition, split))
        return failed

    def state(self) -> dict[str, Any]:
        """What a checkpoint keeps so that a resumed run judges losses against the same baseline."""
        return {"loss_baseline": {split: list(losses) for split, losses in self._baseline.items()}}

    def load_state(self, state: dict[str, Any] | None) -> None:
        """Restore `state()` (None, from a checkpoint of an older version: the baseline starts again)."""
        for split, losses in (state or {}).get("loss_baseline", {}).items():
            self._baseline[split] = [float(loss) for loss in losses]

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


def _logp_ratio(metrics: dict[str, float]) -> tuple[float, float, float] | None:
    """(policy / reference, policy, reference): DPO's summed log-probability of a pair's two responses under each,
    the reference's as the policy's minus the log-ratio (a mean per sequence); None without those metrics."""
    chosen, rejected, logratio = (_finite(metrics.get(key)) for key in ("logps/chosen", "logps/rejected", "logratio"))
    if chosen is None or rejected is None or logratio is None:
        return None
    policy = chosen + rejected
    reference = policy - 2 * logratio
    if reference >= 0 or policy >= 0:  # log-probabilities are negative; anything else is no ratio to judge
        return None
    return policy / reference, policy, reference


def _finite(value: float | None) -> float | None:
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None
