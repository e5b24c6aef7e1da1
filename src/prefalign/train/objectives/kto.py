"""KTO in the preference objective (`--loss kto`): single completions labelled desirable or not.

Each example x_i, y_i travels as a pair [prompt x_i | y_i | y'_i], so the policy and the reference score it with the
same one-forward-pass batch layouts, caches and prefix sharing as DPO's pairs. The second completion y'_i is the
completion of ANOTHER example (the next one in the file with a different prompt): its log-ratio enters KTO's reference
point z_0, the estimate of KL(pi || ref) on mismatched pairs (`prefalign.losses.kto_reference_point`). Pairing is fixed
when the data is loaded, as TRL does it, so the reference's log-probs of y'_i can be precomputed and cached like the
others; z_0 is then the mean over the micro-batch's examples, as in the paper.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from ...console import warn
from ...data.tokenize import SFTExample, TokenizedPair, TruncationReport, tokenize_sft
from ...data.unpaired import load_unpaired
from ...losses import kto_loss, kto_reference_point
from ...scoring.preference import implicit_reward

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from ...data.collate import PairBatch
    from ...data.shared_prefix import SharedPrefixBatch
    from ...scoring.completions import SequenceLogps
    from ..config import DPOConfig
    from .base import Sums


@dataclass
class KTOItem:
    """One labelled example as a pair (its completion as `chosen`, a mismatched one as `rejected`) and its label."""

    pair: TokenizedPair
    desirable: bool
    ref_logps: tuple[float, float] | None = None  # (completion, mismatched completion), filled by --precompute-ref


def load_kto_items(
    source: str, tokenizer: PreTrainedTokenizerBase, config: DPOConfig
) -> tuple[list[KTOItem], TruncationReport]:
    """The labelled completions of `source` (an unpaired file, or pairs converted), tokenized, each with the
    mismatched completion its KL estimate scores."""
    data = load_unpaired(source, config.data_format)
    if data.report.rejected:
        report = data.report
        warn(f"{source}: {report.rejected} of {report.read} records rejected; first: {report.rejections[0]}")
    report = TruncationReport(unit="completions")
    kept: list[tuple[SFTExample, bool]] = []
    for record in data.records:
        example = tokenize_sft(record.prompt, record.completion, tokenizer, config.tokenize_config(), record.location)
        report.add(example)
        if not example.dropped:
            kept.append((example, record.desirable))
    examples = [example for example, _ in kept]
    items = []
    for i, (example, desirable) in enumerate(kept):
        mismatched = examples[_mismatched_index(examples, i)].completion_ids
        room = max(1, config.max_length - len(example.prompt_ids))
        pair = TokenizedPair(example.prompt_ids, example.completion_ids, mismatched[:room], location=example.location)
        items.append(KTOItem(pair, desirable))
    return items, report


def _mismatched_index(examples: list[SFTExample], i: int) -> int:
    """The next example after i (cyclically) with a different prompt; the next one when every prompt is the same."""
    n = len(examples)
    for step in range(1, n):
        if examples[(i + step) % n].prompt_ids != examples[i].prompt_ids:
            return (i + step) % n
    return (i + 1) % n


def kto_sums(
    pairs: PairBatch | SharedPrefixBatch,
    policy: SequenceLogps,
    ref_logps: torch.Tensor,
    desirable: torch.Tensor,
    beta: float,
) -> tuple[torch.Tensor, Sums]:
    """(per-example KTO losses, metric sums) of one batch: `pairs` hold (completion, mismatched completion) rows."""
    policy_logps, policy_mismatched = pairs.split(policy.sum_logps)
    ref, ref_mismatched = pairs.split(ref_logps.to(policy.sum_logps.dtype))
    reference_point = kto_reference_point(policy_mismatched.detach() - ref_mismatched)
    losses = kto_loss(policy_logps - ref, desirable, reference_point, beta=beta)
    rewards = implicit_reward(policy_logps.detach(), ref, beta)
    logps = policy_logps.detach()
    undesirable = ~desirable
    sums = {
        "loss": losses.detach().sum(),
        "loss/kto": losses.detach().sum(),
        "kto/reference_point": reference_point * pairs.num_pairs,  # the micro-batch's z_0, weighted by its examples
        "desirable": desirable.sum(),
        "rewards/desirable": rewards[desirable].sum(),
        "rewards/undesirable": rewards[undesirable].sum(),
        "logps/desirable": logps[desirable].sum(),
        "logps/undesirable": logps[undesirable].sum(),
    }
    return losses, sums


def kto_metrics(sums: dict[str, float]) -> dict[str, float]:
    """Means of `kto_sums` over any number of batches: per example, or per desirable / undesirable example."""
    examples, desirable = sums["items"], sums["desirable"]
    means = {key: sums[key] / examples for key in ("loss", "loss/kto", "kto/reference_point")}
    for label, count in (("desirable", desirable), ("undesirable", examples - desirable)):
        if count:
            means[f"rewards/{label}"] = sums[f"rewards/{label}"] / count
            means[f"logps/{label}"] = sums[f"logps/{label}"] / count
    return means
