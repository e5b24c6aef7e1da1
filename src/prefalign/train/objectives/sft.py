"""SFT: next-token NLL on the response tokens only, averaged over every response token of the step.

Data: one example per row, any of
- `{"messages": [...]}`: a conversation; the response is its final assistant message,
- `{"prompt": ..., "completion": ...}` (or `"response"`): strings, or chat messages,
- a preference record (any format `prefalign data` reads): the `chosen` response is the target.

Where the model runs pair attention (checked once, as for DPO), the examples of a batch sit end to end in ONE row with
no padding, each attending only to itself (`prefalign.data.packing`); otherwise each is padded to the batch's longest.
Either way the output layer runs at response-predicting positions only, a chunk at a time (`prefalign.scoring`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch

from ...console import say
from ...data.collate import LMBatch, collate_sft
from ...data.formats import parse_record
from ...data.packing import PackedBatch, collate_sft_row
from ...data.records import Text
from ...data.sources import open_source
from ...data.tokenize import SFTExample, TruncationReport, tokenize_sft_examples
from ...data.validation import RecordRejected
from ...errors import DataError
from ...scoring.run import enable_pair_attention, score_completions
from .base import Objective, Sums

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from ..config import SFTConfig
    from ..distributed import DistInfo

_COMPLETION_KEYS = ("completion", "response")


def _describe(rejected: RecordRejected) -> str:
    return f"{rejected.reason.text}: {rejected.detail}" if rejected.detail else rejected.reason.text


def _example(row: Any, location: str, data_format: str) -> tuple[Text, Text | None, str]:
    if not isinstance(row, dict):
        raise DataError(location, "an SFT record must be a JSON object")
    if isinstance(row.get("messages"), list):
        return row["messages"], None, location
    completion_key = next((key for key in _COMPLETION_KEYS if key in row), None)
    if "prompt" in row and completion_key is not None:
        return row["prompt"], row[completion_key], location
    if "chosen" in row:
        try:
            record = parse_record(row, location, data_format)
        except RecordRejected as exc:
            raise DataError(location, _describe(exc)) from None
        return record.prompt, record.chosen, location
    raise DataError(location, "an SFT record needs `messages`, `prompt` with `completion` (or `response`), or `chosen`")


def read_sft_examples(source: str, data_format: str = "auto") -> list[tuple[Text, Text | None, str]]:
    """(prompt, completion or None for a conversation, location) for every row; the first bad row raises DataError."""
    _, rows = open_source(source)
    examples = []
    for row in rows:
        if row.problem is not None:
            raise DataError(row.location, _describe(row.problem))
        examples.append(_example(row.value, row.location, data_format))
    return examples


class SFTObjective(Objective):
    name = "sft"
    unit = "examples"

    def __init__(self, config: SFTConfig):
        super().__init__(config)
        self.pad_id = 0
        self.packed = False  # setup() turns it on where the model runs pair attention: one padding-free row

    def load(self, source: str, tokenizer: PreTrainedTokenizerBase) -> tuple[list[SFTExample], TruncationReport]:
        examples = read_sft_examples(source, self.config.data_format)
        self.pad_id = tokenizer.pad_token_id
        return tokenize_sft_examples(examples, tokenizer, self.config.tokenize_config())

    def setup(self, model: torch.nn.Module, sources: dict[str, list[Any]], info: DistInfo) -> None:
        super().setup(model, sources, info)
        self.packed = enable_pair_attention(model)
        if not self.packed:
            say("note: this model's attention cannot run pair attention; padding each example instead (slower)")

    def collate(self, items: Sequence[SFTExample]) -> LMBatch | PackedBatch:
        # An example of one token has nothing to predict and no span of its own: pad the batch instead.
        if self.packed and all(len(e.prompt_ids) + len(e.completion_ids) >= 2 for e in items):
            return collate_sft_row(items).to(self.device)
        return collate_sft(items, self.pad_id).to(self.device)

    def loss_denominator(self, batch: LMBatch | PackedBatch) -> int:
        return batch.num_completion_tokens

    def loss(self, model: torch.nn.Module, batch: LMBatch | PackedBatch) -> tuple[torch.Tensor, Sums]:
        _, logps = score_completions(model, batch)
        nll = -logps.sum_logps.sum()
        sums = {
            "items": torch.tensor(batch.num_sequences),
            "tokens": torch.tensor(batch.num_tokens),
            "loss": nll.detach(),
            "completion_tokens": logps.num_tokens.sum(),
        }
        return nll, sums

    def metrics(self, sums: dict[str, float]) -> dict[str, float]:
        return {"loss": sums["loss"] / sums["completion_tokens"]}
