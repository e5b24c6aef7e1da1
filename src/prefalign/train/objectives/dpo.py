"""DPO (and IPO, hinge, cDPO, robust DPO): the policy against a frozen reference on preference pairs.

Each batch holds every pair's chosen and rejected sequence, so the policy and the reference each score both
completions in ONE forward pass. By default (`--prefix-sharing`) a pair is one sequence [prompt | chosen | rejected]
(`prefalign.data.shared_prefix`), so the prompt is computed once: all pairs of a batch end to end in one row with no
padding, under pair attention (`prefalign.models.pair_attention`), or, for models whose attention cannot run it,
packed several to a row under a block attention mask. `--no-prefix-sharing` pads chosen and rejected rows side by
side. A sequence's log-probability sums its completion tokens only, and vocabulary logits are built at those tokens
alone (`prefalign.scoring`).

`rewards/accuracies` is the mean of `prefalign.scoring.preference.preference_outcome` over pairs: a pair whose
implicit rewards tie counts half, as for the reward model and the evaluation. So a policy still equal to its
reference (every reward 0, as at step 0) scores 0.5, not 0.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from ...console import say, warn
from ...data.collate import PairBatch, collate_pairs
from ...data.loading import load_preferences
from ...data.shared_prefix import SharedPrefixBatch, collate_pair_row, collate_shared_prefix
from ...data.tokenize import TokenizedPair, TruncationReport, tokenize_preferences
from ...losses import dpo_loss
from ...scoring.completions import completion_kl
from ...scoring.preference import preference_margin, preference_outcome
from ...scoring.run import enable_pair_attention, score_completions, supports_block_masks
from .base import Objective, Sums
from .reference import (
    Reference,
    build_reference,
    cache_settings,
    cached_reference_logps,
)

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from ..config import DPOConfig
    from ..distributed import DistInfo


@dataclass
class DPOItem:
    pair: TokenizedPair
    ref_logps: tuple[float, float] | None = None  # (chosen, rejected), filled by --precompute-ref


@dataclass
class DPOBatch:
    pairs: PairBatch | SharedPrefixBatch
    ref_logps: torch.Tensor | None  # [2 * num_pairs], chosen then rejected, when precomputed


class DPOObjective(Objective):
    name = "dpo"
    unit = "pairs"

    def __init__(self, config: DPOConfig):
        super().__init__(config)
        self.config: DPOConfig = config
        self.reference: Reference | None = None
        self.pad_id = 0
        self.prefix_sharing = config.prefix_sharing  # setup() turns it off for models that take no block mask
        self.pair_rows = False  # setup() turns it on where the models run pair attention: one padding-free row
        self.precompute_seconds = 0.0  # wall time of the --precompute-ref pass (or of reading its cache)

    def load(self, source: str, tokenizer: PreTrainedTokenizerBase) -> tuple[list[DPOItem], TruncationReport]:
        data = load_preferences(source, self.config.data_format)
        if data.report.rejected:
            warn(
                f"{source}: {data.report.rejected} of {data.report.read} records rejected "
                f"(`prefalign data inspect {source}` lists them)"
            )
        pairs, report = tokenize_preferences(data.records, tokenizer, self.config.tokenize_config())
        self.pad_id = tokenizer.pad_token_id
        return [DPOItem(pair) for pair in pairs], report

    def setup(self, model: torch.nn.Module, sources: dict[str, list[DPOItem]], info: DistInfo) -> None:
        super().setup(model, sources, info)
        precompute = self.config.precompute_ref
        reference = build_reference(model, self.config, info.device, borrow=precompute)
        if self.prefix_sharing and not (supports_block_masks(model) and supports_block_masks(reference.model)):
            say("note: this model's attention takes no block mask; --prefix-sharing off (slower)")
            self.prefix_sharing = False
        if self.prefix_sharing:
            self.pair_rows = enable_pair_attention(model) and enable_pair_attention(reference.model)
        if not precompute:
            self.reference = reference
            return
        started = time.perf_counter()
        for source, items in sources.items():
            settings = cache_settings(self.config, source, items, info.device)
            logps, _ = cached_reference_logps(reference, items, settings, self.collate, self.config.batch_size, info)
            for item, (chosen, rejected) in zip(items, logps.tolist()):
                item.ref_logps = (chosen, rejected)
        self.precompute_seconds = time.perf_counter() - started
        # No reference model is kept: full fine-tuning scored with the policy itself (not yet updated), LoRA with its
        # adapter off, --ref-model's copy is dropped here. Training reads the log-probs from the items.

    def collate(self, items: Sequence[DPOItem]) -> DPOBatch:
        tokenized = [item.pair for item in items]
        # A pair with an empty prompt has no position to predict its responses' first tokens from: pad it instead.
        if self.prefix_sharing and all(pair.prompt_ids for pair in tokenized):
            collate = collate_pair_row if self.pair_rows else collate_shared_prefix
            pairs: PairBatch | SharedPrefixBatch = collate(tokenized, self.pad_id).to(self.device)
        else:
            pairs = collate_pairs(tokenized, self.pad_id).to(self.device)
        ref_logps = None
        precomputed = [item.ref_logps for item in items if item.ref_logps is not None]
        if len(precomputed) == len(items):
            chosen, rejected = zip(*precomputed)
            ref_logps = torch.tensor([*chosen, *rejected], dtype=torch.float32, device=self.device)
        return DPOBatch(pairs, ref_logps)

    def loss_denominator(self, batch: DPOBatch) -> int:
        return batch.pairs.num_pairs

    def loss(self, model: torch.nn.Module, batch: DPOBatch) -> tuple[torch.Tensor, Sums]:
        pairs, config = batch.pairs, self.config
        policy_states, policy = score_completions(model, pairs)
        sums: Sums = {}
        if batch.ref_logps is not None:
            ref_logps = batch.ref_logps
        else:
            assert self.reference is not None, "setup() builds a live reference unless log-probs are precomputed"
            ref_states, ref = self.reference.forward(pairs)
            ref_logps = ref.sum_logps
            kl = completion_kl(policy_states, ref_states)
            sums |= {"kl": kl.sum(), "kl_tokens": policy.num_tokens.sum()}

        scored_policy, scored_ref = policy.sum_logps, ref_logps.to(policy.sum_logps.dtype)
        if config.loss_type == "ipo":  # IPO's margin target 1/(2 beta) is meant for length-averaged log-probs
            scored_policy, scored_ref = scored_policy / policy.num_tokens, scored_ref / policy.num_tokens
        policy_chosen, policy_rejected = pairs.split(scored_policy)
        ref_chosen, ref_rejected = pairs.split(scored_ref)
        out = dpo_loss(
            policy_chosen,
            policy_rejected,
            ref_chosen,
            ref_rejected,
            beta=config.beta,
            loss_type=config.loss_type,
            label_smoothing=config.label_smoothing,
        )
        losses = out.losses
        if config.sft_weight > 0:  # NLL per chosen token, so long and short answers weigh the same
            chosen_sum, _ = pairs.split(policy.sum_logps)
            chosen_tokens, _ = pairs.split(policy.num_tokens)
            nll = -chosen_sum / chosen_tokens
            losses = losses + config.sft_weight * nll
            sums["nll"] = nll.detach().sum()

        logps_chosen, logps_rejected = pairs.split(policy.sum_logps.detach())
        sums |= {
            "items": torch.tensor(pairs.num_pairs),
            "tokens": torch.tensor(pairs.num_tokens),
            "loss": losses.detach().sum(),
            "rewards/chosen": out.chosen_rewards.sum(),
            "rewards/rejected": out.rejected_rewards.sum(),
            "rewards/accuracies": preference_outcome(preference_margin(out.chosen_rewards, out.rejected_rewards)).sum(),
            "logps/chosen": logps_chosen.sum(),
            "logps/rejected": logps_rejected.sum(),
            "logratio": (policy.sum_logps.detach() - ref_logps).sum(),
        }
        return losses.sum(), sums

    def metrics(self, sums: dict[str, float]) -> dict[str, float]:
        pairs = sums["items"]
        means = {
            key: sums[key] / pairs
            for key in (
                "loss",
                "rewards/chosen",
                "rewards/rejected",
                "rewards/accuracies",
                "logps/chosen",
                "logps/rejected",
            )
        }
        means["rewards/margins"] = means["rewards/chosen"] - means["rewards/rejected"]
        means["logratio"] = sums["logratio"] / (2 * pairs)  # per sequence: chosen and rejected alike
        if sums.get("kl_tokens"):
            means["kl"] = sums["kl"] / sums["kl_tokens"]
        if "nll" in sums:
            means["nll"] = sums["nll"] / pairs
        return means
