"""The preference objective of `prefalign dpo`: DPO and the methods `--loss` names, alone or as a weighted mixture.

Each batch holds every pair's chosen and rejected sequence, so the policy and the reference each score both
completions in ONE forward pass. By default (`--prefix-sharing`) a pair is one sequence [prompt | chosen | rejected]
(`prefalign.data.shared_prefix`), so the prompt is computed once: all pairs of a batch end to end in one row with no
padding, under pair attention (`prefalign.models.pair_attention`), or, for models whose attention cannot run it,
packed several to a row under a block attention mask. `--no-prefix-sharing` pads chosen and rejected rows side by
side. A sequence's log-probability sums its completion tokens only, and vocabulary logits are built at those tokens
alone (`prefalign.scoring`).

The terms of `--loss` are computed by `prefalign.train.objectives.mixture` (KTO, on single labelled completions, by
`.kto`). A mixture of reference-free terms only (simpo, orpo, sft) builds no reference model and scores nothing with
one. Every term is logged as `loss/<name>` (before its weight), `loss` is the weighted sum.

`rewards/accuracies` is the mean of `prefalign.scoring.preference.preference_outcome` over pairs: a pair whose
implicit rewards tie counts half, as for the reward model and the evaluation. So a policy still equal to its
reference (every reward 0, as at step 0) scores 0.5, not 0. Rewards are logged only where the mixture defines them
(see `mixture_rewards`).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from ...console import say, warn
from ...data.collate import PairBatch
from ...data.loading import load_preferences
from ...data.shared_prefix import SharedPrefixBatch
from ...data.tokenize import TokenizedPair, TruncationReport, tokenize_preferences
from ...scoring.completions import CompletionStates, SequenceLogps, completion_kl
from ...scoring.preference import preference_margin, preference_outcome
from ...scoring.run import PairLayout, choose_pair_layout, score_completions
from .base import Objective, Sums
from .kto import KTOItem, kto_metrics, kto_sums, load_kto_items
from .mixture import PairLogps, mixture_losses
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
    desirable: torch.Tensor | None = None  # KTO: [num_pairs] labels of the (completion, mismatched completion) pairs


class DPOObjective(Objective):
    name = "dpo"
    unit = "pairs"

    def __init__(self, config: DPOConfig):
        super().__init__(config)
        self.config: DPOConfig = config
        self.terms = config.loss_terms
        self.unpaired = "kto" in self.terms  # KTO: items are labelled completions, not pairs
        self.reference_free = config.reference_free  # then no reference model is built and none scores a batch
        if self.unpaired:
            self.unit = "completions"
        self.reference: Reference | None = None
        self.pad_id = 0
        self.layout = PairLayout("padded", 0)  # setup() picks the fastest layout every scoring model takes
        self.precompute_seconds = 0.0  # wall time of the --precompute-ref pass (or of reading its cache)

    def load(
        self, source: str, tokenizer: PreTrainedTokenizerBase
    ) -> tuple[list[DPOItem] | list[KTOItem], TruncationReport]:
        self.pad_id = tokenizer.pad_token_id
        if self.unpaired:
            return load_kto_items(source, tokenizer, self.config)
        data = load_preferences(source, self.config.data_format)
        if data.report.rejected:
            warn(
                f"{source}: {data.report.rejected} of {data.report.read} records rejected "
                f"(`prefalign data inspect {source}` lists them)"
            )
        pairs, report = tokenize_preferences(data.records, tokenizer, self.config.tokenize_config())
        return [DPOItem(pair) for pair in pairs], report

    def setup(self, model: torch.nn.Module, sources: dict[str, list[Any]], info: DistInfo) -> None:
        super().setup(model, sources, info)
        if self.reference_free:
            self._choose_layout([model])
            return
        precompute = self.config.precompute_ref
        reference = build_reference(model, self.config, info.device, borrow=precompute)
        self._choose_layout([model, reference.model])
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

    def _choose_layout(self, models: list[torch.nn.Module]) -> None:
        """One row where every model that scores the batches runs pair attention, else prefix sharing under a block
        mask, else (or with --no-prefix-sharing) padded rows."""
        self.layout = choose_pair_layout(models, self.pad_id, share_prompts=self.config.prefix_sharing)
        if self.config.prefix_sharing and self.layout.kind == "padded":
            say("note: this model's attention takes no block mask; --prefix-sharing off (slower)")

    def collate(self, items: Sequence[Any]) -> DPOBatch:
        pairs = self.layout.collate([item.pair for item in items]).to(self.device)
        ref_logps = None
        precomputed = [item.ref_logps for item in items if item.ref_logps is not None]
        if len(precomputed) == len(items):
            chosen, rejected = zip(*precomputed)
            ref_logps = torch.tensor([*chosen, *rejected], dtype=torch.float32, device=self.device)
        desirable = None
        if self.unpaired:
            desirable = torch.tensor([item.desirable for item in items], dtype=torch.bool, device=self.device)
        return DPOBatch(pairs, ref_logps, desirable)

    def loss_denominator(self, batch: DPOBatch) -> int:
        return batch.pairs.num_pairs

    def loss(self, model: torch.nn.Module, batch: DPOBatch) -> tuple[torch.Tensor, Sums]:
        pairs = batch.pairs
        policy_states, policy = score_completions(model, pairs)
        sums = _counts(pairs)
        ref_logps = None
        if not self.reference_free:
            ref_logps, reference_sums = self._reference_logps(batch, policy_states, policy)
            sums |= reference_sums
        if batch.desirable is not None:
            assert ref_logps is not None, "KTO needs the reference"
            losses, loss_sums = kto_sums(pairs, policy, ref_logps, batch.desirable, self.config.beta)
        else:
            losses, loss_sums = self._pair_loss(pairs, policy, ref_logps)
        return losses.sum(), sums | loss_sums

    def sums_before_training(self, batch: DPOBatch) -> Sums | None:
        """Before its first update the policy IS the reference (the LoRA adapter's B is 0; a full model borrowed the
        policy for the precompute pass), so its log-probs are the precomputed ones and its validation needs no
        forward pass: every implicit reward 0, the loss of each term at the reference. Not with --ref-model (another
        model), without precomputed log-probs, or for KTO."""
        if batch.ref_logps is None or batch.desirable is not None or self.config.ref_model:
            return None
        pairs, index = batch.pairs, batch.pairs.index
        policy = SequenceLogps(batch.ref_logps, torch.bincount(index.sequences, minlength=index.num_sequences))
        sums = _counts(pairs)
        sums["logratio"] = torch.zeros((), dtype=batch.ref_logps.dtype)
        return sums | self._pair_loss(pairs, policy, batch.ref_logps)[1]

    def _reference_logps(
        self, batch: DPOBatch, policy_states: CompletionStates, policy: SequenceLogps
    ) -> tuple[torch.Tensor, Sums]:
        """The reference's completion log-probs of the batch (precomputed, or scored now, with the exact KL then), and
        the sums that compare the policy with it."""
        sums: Sums = {}
        if batch.ref_logps is not None:
            ref_logps = batch.ref_logps
        else:
            assert self.reference is not None, "setup() builds a live reference unless log-probs are precomputed"
            ref_states, ref = self.reference.forward(batch.pairs)
            ref_logps = ref.sum_logps
            kl = completion_kl(policy_states, ref_states)
            sums |= {"kl": kl.sum(), "kl_tokens": policy.num_tokens.sum()}
        sums["logratio"] = (policy.sum_logps.detach() - ref_logps).sum()
        return ref_logps, sums

    def _pair_loss(
        self, pairs: PairBatch | SharedPrefixBatch, policy: SequenceLogps, ref_logps: torch.Tensor | None
    ) -> tuple[torch.Tensor, Sums]:
        """(per-pair losses of the --loss mixture, metric sums) of one batch of pairs."""
        reference = None if ref_logps is None else pairs.split(ref_logps.to(policy.sum_logps.dtype))
        logps = PairLogps(pairs.split(policy.sum_logps), pairs.split(policy.num_tokens), reference)
        out = mixture_losses(self.terms, logps, self.config)
        logps_chosen, logps_rejected = pairs.split(policy.sum_logps.detach())
        sums: Sums = {
            "loss": out.losses.detach().sum(),
            "logps/chosen": logps_chosen.sum(),
            "logps/rejected": logps_rejected.sum(),
        }
        sums |= {f"loss/{name}": values.sum() for name, values in out.terms.items()}
        if out.rewards is not None:
            chosen, rejected = out.rewards
            outcomes = preference_outcome(preference_margin(chosen, rejected))
            sums |= {
                "rewards/chosen": chosen.sum(),
                "rewards/rejected": rejected.sum(),
                "rewards/accuracies": outcomes.sum(),
            }
        if out.log_odds_ratio is not None:
            sums["log_odds_ratio"] = out.log_odds_ratio.sum()
        return out.losses, sums

    def metrics(self, sums: dict[str, float]) -> dict[str, float]:
        means = kto_metrics(sums) if self.unpaired else self._pair_metrics(sums)
        if "logratio" in sums:
            means["logratio"] = sums["logratio"] / (2 * sums["items"])  # per sequence: both of each pair alike
        if sums.get("kl_tokens"):
            means["kl"] = sums["kl"] / sums["kl_tokens"]
        return means

    @staticmethod
    def _pair_metrics(sums: dict[str, float]) -> dict[str, float]:
        per_pair = ("loss", "rewards/", "logps/", "log_odds_ratio")
        means = {key: value / sums["items"] for key, value in sums.items() if key.startswith(per_pair)}
        if "rewards/chosen" in means:
            means["rewards/margins"] = means["rewards/chosen"] - means["rewards/rejected"]
        return means


def _counts(pairs: PairBatch | SharedPrefixBatch) -> Sums:
    """The sums every DPO batch reports, run or not: its pairs and its completion tokens."""
    return {"items": torch.tensor(pairs.num_pairs), "tokens": torch.tensor(pairs.num_tokens)}
