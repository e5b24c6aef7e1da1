"""The reward model objective: a pairwise (Bradley-Terry) loss on a scalar head, plus an LM loss on the chosen answer.

    loss = rm_loss + lm_weight * lm_loss
    rm_loss = -log sigma(r_chosen - r_rejected - margin)      margin: the pair's optional `margin` field, else 0
    lm_loss = mean NLL per chosen response token               (per pair, so long and short answers weigh the same)

The LM term keeps the language model's hidden states useful while the head and the LM learn to rank (InstructGPT's
reward models start from an SFT model for the same reason); --lm-weight 0 turns it off, and the LM then skips its
output layer over the vocabulary (lm_loss is not logged). The LM term's log-probs come from `prefalign.scoring`, as
SFT's do: the output layer runs at the chosen response's tokens only.
Chosen and rejected sequences sit in one batch, so every pair is scored in ONE forward pass. Where the model runs pair
attention, a pair is one sequence [prompt | chosen | rejected] as DPO lays it out (`prefalign.data.shared_prefix`):
the prompt is computed once, all pairs of a batch sit end to end in one row with no padding, and the head reads the
last token of each response. Otherwise (or for a pair with an empty prompt) chosen and rejected rows are padded.
`rewards/accuracies` is the mean of `prefalign.scoring.preference.preference_outcome`: a tie counts half.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from ...console import say, warn
from ...data.collate import PairBatch
from ...data.loading import load_preferences
from ...data.records import PreferenceRecord
from ...data.shared_prefix import SharedPrefixBatch
from ...data.tokenize import TokenizedPair, TruncationReport, tokenize_pair
from ...errors import DataError
from ...losses import reward_model_loss
from ...models.reward import RewardModel, base_model_spec
from ...scoring.preference import preference_margin, preference_outcome
from ...scoring.run import PairLayout, choose_pair_layout
from ..sparse_rows import use_sparse_embedding_grads
from .base import Objective, Sums

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from ..config import RewardConfig
    from ..distributed import DistInfo


@dataclass
class RewardItem:
    pair: TokenizedPair
    margin: float = 0.0


@dataclass
class RewardBatch:
    pairs: PairBatch | SharedPrefixBatch
    margins: torch.Tensor  # [num_pairs]


def pair_margin(record: PreferenceRecord) -> float:
    """The record's `margin` field (how much the chosen answer must win by), 0 when absent."""
    value = record.extra.get("margin")
    if value is None:
        return 0.0
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise DataError(record.location, f"`margin` must be a finite number, got {value!r}")
    return float(value)


class RewardObjective(Objective):
    name = "rm"
    unit = "pairs"

    def __init__(self, config: RewardConfig):
        super().__init__(config)
        self.config: RewardConfig = config
        self.pad_id = 0
        self.layout = PairLayout("padded", 0)  # setup() picks one row where the LM runs pair attention

    def load(self, source: str, tokenizer: PreTrainedTokenizerBase) -> tuple[list[RewardItem], TruncationReport]:
        data = load_preferences(source, self.config.data_format)
        if data.report.rejected:
            warn(
                f"{source}: {data.report.rejected} of {data.report.read} records rejected "
                f"(`prefalign data inspect {source}` lists them)"
            )
        self.pad_id = tokenizer.pad_token_id
        report, items = TruncationReport(unit="pairs"), []
        for record in data.records:
            margin = pair_margin(record)  # checked first: a bad field fails the run, whatever truncation does
            pair = tokenize_pair(record, tokenizer, self.config.tokenize_config())
            report.add(pair)
            if not pair.dropped:
                items.append(RewardItem(pair, margin))
        return items, report

    def prepare_model(self, model: torch.nn.Module) -> RewardModel:
        # config.model is typed optional in TrainConfig, though every run sets it.
        return RewardModel(model, base_model_spec(self.config.model))  # type: ignore[arg-type]  # see above

    def setup(self, model: torch.nn.Module, sources: dict[str, list[RewardItem]], info: DistInfo) -> None:
        super().setup(model, sources, info)
        # One row or padded rows, not block-mask packing: the reward model's equality tests (rewards, losses and
        # gradients against padded rows) cover the row layout only.
        self.layout = choose_pair_layout([model.lm], self.pad_id, block_masks=False)
        if self.layout.kind != "row":
            say("note: this model's attention cannot run pair attention; padding chosen and rejected rows (slower)")
        # Without the LM term the output layer over the vocabulary never runs: the embedding's gradient is nonzero in
        # the rows of the batch's tokens only, and AdamW keeps state for the rows trained (`sparse_rows`).
        if self.config.lm_weight == 0 and not info.is_distributed:
            use_sparse_embedding_grads(model.lm)

    def collate(self, items: Sequence[RewardItem]) -> RewardBatch:
        pairs = self.layout.collate([item.pair for item in items]).to(self.device)
        margins = torch.tensor([item.margin for item in items], dtype=torch.float32, device=self.device)
        return RewardBatch(pairs, margins)

    def loss_denominator(self, batch: RewardBatch) -> int:
        return batch.pairs.num_pairs

    def loss(self, model: torch.nn.Module, batch: RewardBatch) -> tuple[torch.Tensor, Sums]:
        pairs, lm_weight, n = batch.pairs, self.config.lm_weight, batch.pairs.num_pairs
        # The LM term scores the chosen responses only (sequences 0..n-1); per token, so long and short answers weigh
        # the same.
        lm_index = pairs.index.first_sequences(n) if lm_weight > 0 else None
        rewards, lm_states = model(**pairs.model_inputs(), lm_index=lm_index, reward_positions=pairs.sequence_ends)
        chosen, rejected = pairs.split(rewards)
        losses = rm_losses = reward_model_loss(chosen, rejected, batch.margins)
        sums: Sums = {}
        if lm_states is not None:
            chosen_logps = lm_states.sequence_logps()
            lm_losses = -chosen_logps.sum_logps / chosen_logps.num_tokens
            losses = rm_losses + lm_weight * lm_losses
            sums["lm_loss"] = lm_losses.detach().sum()

        chosen, rejected = chosen.detach(), rejected.detach()
        both = torch.cat([chosen, rejected]).to(torch.float64)
        sums |= {
            "items": torch.tensor(n),
            "tokens": torch.tensor(pairs.num_tokens),
            "loss": losses.detach().sum(),
            "rm_loss": rm_losses.detach().sum(),
            # A tie is half right: a head that gives every answer the same reward scores exactly 0.5.
            "rewards/accuracies": preference_outcome(preference_margin(chosen, rejected)).sum(),
            "rewards/chosen": chosen.sum(),
            "rewards/rejected": rejected.sum(),
            "reward_squares": (both * both).sum(),
        }
        return losses.sum(), sums

    def metrics(self, sums: dict[str, float]) -> dict[str, float]:
        pairs = sums["items"]
        means = {
            key: sums[key] / pairs
            for key in ("loss", "rm_loss", "lm_loss", "rewards/accuracies", "rewards/chosen", "rewards/rejected")
            if key in sums
        }
        means["rewards/margins"] = means["rewards/chosen"] - means["rewards/rejected"]
        mean = (sums["rewards/chosen"] + sums["rewards/rejected"]) / (2 * pairs)
        means["rewards/mean"] = mean
        means["rewards/std"] = math.sqrt(max(sums["reward_squares"] / (2 * pairs) - mean * mean, 0.0))
        return means
