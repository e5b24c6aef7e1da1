"""Held-out preference accuracy, as RewardBench reports it: does a scorer rank the chosen response above the rejected?

For a DPO policy the scorer is its implicit reward (Rafailov et al. 2023, arXiv 2305.18290):
r(x, y) = beta * (log pi(y|x) - log ref(y|x)), log-probs summed over the response tokens exactly as DPO training sums
them (same tokenization, `tokenize_pair`; the same scoring, `prefalign.scoring`). A pair is ranked correctly when
margin = beta * ((log pi - log ref)(chosen) - (log pi - log ref)(rejected)) > 0
(`prefalign.scoring.preference.implicit_reward_margin`). The sign does not depend on beta; beta only scales the
reported margin. For a judge (a reward model, an LLM, the verifier) the scorer is
`Judge.compare(prompt, chosen, rejected)`.

Accuracy counts a correct ranking as 1, a tie (margin exactly 0, or a judge's tie) as 0.5 and a wrong one as 0
(`prefalign.scoring.preference.preference_outcome`, as in training), so a policy identical to its reference scores
exactly 0.5, chance. Pairs that tokenization drops (an empty or identical
completion) are left out, and pairs a judge fails on are left out of that judge's accuracy; both are counted.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..data.records import PreferenceRecord, Text
from ..data.tokenize import TokenizeConfig, tokenize_pair
from ..judges.base import Judge
from ..scoring.preference import implicit_reward_margin, preference_outcome
from .models import EvalModel
from .stats import Estimate, mean_ci

_OUTCOME = {"a": 1.0, "tie": 0.5, "b": 0.0}


@dataclass
class PairLogps:
    """Per pair (None where tokenization dropped it): the model's summed log-prob of the chosen and the rejected."""

    chosen: list[float | None]
    rejected: list[float | None]

    @property
    def dropped(self) -> int:
        return sum(c is None for c in self.chosen)


@dataclass
class HeldoutAccuracy:
    """One scorer's accuracy on the held-out pairs: per-pair outcomes (1, 0.5, 0; None when not scored)."""

    scorer: str
    outcomes: list[float | None]
    accuracy: Estimate | None
    margin: Estimate | None = None  # mean implicit-reward margin (DPO scorers only)
    margins: list[float | None] | None = None
    failures: int = 0
    first_error: str | None = None  # why the first failed pair failed (judges only)

    def to_json(self) -> dict[str, Any]:
        return {
            "scorer": self.scorer,
            "accuracy": self.accuracy.to_json() if self.accuracy else None,
            "margin": self.margin.to_json() if self.margin else None,
            "failures": self.failures,
        }


def load_pairs(source: str, limit: int | None = None) -> list[PreferenceRecord]:
    """The first `limit` (all when None) valid records of a preference file, in any format `load_preferences` reads."""
    from ..data.loading import load_preferences

    records = load_preferences(source).records
    return records[:limit] if limit is not None else records


def pair_logps(
    model: EvalModel, records: list[PreferenceRecord], config: TokenizeConfig, batch_size: int, bf16: bool = False
) -> PairLogps:
    """Summed response log-probs of every pair's chosen and rejected completion under `model`, `batch_size` rows
    (half as many pairs) per forward pass; under bf16 autocast when `bf16` (the sums stay fp32).

    The pairs are laid out as DPO trains on them (`prefalign.scoring.run.choose_pair_layout`): each prompt computed
    once, and no padding where the model's attention allows; the log-probs equal those of padded rows."""
    import torch  # torch loads on first use, not when the evaluation's options are read

    from ..models.precision import bf16_autocast
    from ..scoring.run import choose_pair_layout, score_completions

    tokenizer, device = model.tokenizer, model.model.device
    pairs = [tokenize_pair(record, tokenizer, config) for record in records]
    kept = [i for i, pair in enumerate(pairs) if not pair.dropped]
    chosen: list[float | None] = [None] * len(records)
    rejected: list[float | None] = [None] * len(records)
    pairs_per_batch = max(1, batch_size // 2)  # a pair is two rows: chosen and rejected
    layout = choose_pair_layout([model.model], tokenizer.pad_token_id)
    with torch.inference_mode(), bf16_autocast(bf16, device):
        for first in range(0, len(kept), pairs_per_batch):
            indices = kept[first : first + pairs_per_batch]
            batch = layout.collate([pairs[i] for i in indices]).to(device)
            _, logps = score_completions(model.model, batch)
            batch_chosen, batch_rejected = batch.split(logps.sum_logps)
            for i, c, r in zip(indices, batch_chosen.tolist(), batch_rejected.tolist()):
                chosen[i], rejected[i] = c, r
    return PairLogps(chosen, rejected)


def implicit_reward_accuracy(scorer: str, policy: PairLogps, reference: PairLogps, beta: float) -> HeldoutAccuracy:
    """The policy's implicit-reward accuracy and mean margin against `reference` (ties count half)."""
    margins: list[float | None] = []
    for pc, pr, rc, rr in zip(policy.chosen, policy.rejected, reference.chosen, reference.rejected):
        if pc is None or pr is None or rc is None or rr is None:
            margins.append(None)
        else:
            margins.append(implicit_reward_margin(pc, pr, rc, rr, beta))
    outcomes = [None if m is None else preference_outcome(m) for m in margins]
    return HeldoutAccuracy(scorer, outcomes, mean_ci(outcomes), mean_ci(margins), margins)


def completion_text(completion: Text) -> str:
    """A completion as a judge reads it: a string as is, assistant messages as their contents."""
    if isinstance(completion, str):
        return completion
    return "\n\n".join(message["content"] for message in completion)


def judge_accuracy(judge: Judge, records: list[PreferenceRecord]) -> HeldoutAccuracy:
    """How often `judge` prefers the chosen completion (ties count half; failures are left out and counted)."""
    verdicts = judge.compare(
        [r.prompt for r in records],
        [completion_text(r.chosen) for r in records],
        [completion_text(r.rejected) for r in records],
        [dict(r.extra) for r in records],
    )
    outcomes = [_OUTCOME[v.preferred] if v.preferred is not None else None for v in verdicts]
    first_error = next((v.error for v in verdicts if v.preferred is None), None)
    return HeldoutAccuracy(
        judge.name, outcomes, mean_ci(outcomes), failures=sum(o is None for o in outcomes), first_error=first_error
    )
