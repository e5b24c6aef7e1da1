"""The interface between the training loop and what it optimises (SFT, the reward model, DPO).

An objective turns data into items, items into batches, and a batch into a loss. It returns SUMS, never means: the
loop adds sums over micro-batches, accumulation steps, logging intervals and processes, and only `metrics` divides.
That keeps every logged number an exact average over everything it covers, however the batch was split.

Objectives run a model on a batch (the policy, or DPO's reference) with `prefalign.scoring.run.score_completions`,
the one place a model is run to score text: change the batch layout there (prefix sharing, packing) and every
objective follows.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from ...data.tokenize import TruncationReport
    from ..config import TrainConfig
    from ..distributed import DistInfo

Sums = dict[str, torch.Tensor]


class Objective(ABC):
    """What one trainer optimises. The loop calls, in order: load (per data source), setup, then collate/loss."""

    name: str  # "dpo", "sft": the command, and the key of its default settings
    unit: str  # what one item is, for rates and reports: "pairs", "examples"

    def __init__(self, config: TrainConfig):
        self.config = config
        self.device = torch.device("cpu")

    @abstractmethod
    def load(self, source: str, tokenizer: PreTrainedTokenizerBase) -> tuple[list[Any], TruncationReport]:
        """Read and tokenize one data source: the trainable items, in source order, and what truncation did."""

    def prepare_model(self, model: torch.nn.Module) -> torch.nn.Module:
        """The module to train, built around the loaded (and, with --lora, wrapped) model; called before `setup`.

        The model itself by default. The reward model returns it under a scalar head, so the head is trained,
        wrapped by DDP, checkpointed and saved with the rest (through the returned module's `save_pretrained`).
        """
        return model

    def setup(self, model: torch.nn.Module, sources: dict[str, list[Any]], info: DistInfo) -> None:
        """Called once with the (not yet wrapped, not yet trained) policy and the items of every loaded source."""
        self.device = info.device

    @abstractmethod
    def collate(self, items: Sequence[Any]) -> Any:
        """A batch of `items` on `self.device`."""

    @abstractmethod
    def loss_denominator(self, batch: Any) -> int:
        """How many units this batch adds to the mean the loss is (pairs for DPO, response tokens for SFT)."""

    @abstractmethod
    def loss(self, model: torch.nn.Module, batch: Any) -> tuple[torch.Tensor, Sums]:
        """(the loss SUMMED over the batch's units, with gradient; metric sums, detached).

        The sums must include "items" (examples or pairs) and "tokens" (non-padding tokens the policy processed).
        """

    @abstractmethod
    def metrics(self, sums: dict[str, float]) -> dict[str, float]:
        """Means from sums accumulated over any number of batches."""

    def sums_before_training(self, batch: Any) -> Sums | None:
        """The metric sums `loss` would return for `batch` before the first update, when the objective knows them
        without running the model (DPO: a policy still equal to its reference scores what the precomputed reference
        log-probs say); None when it does not."""
        return None
