"""SFT examples end to end in ONE padding-free row, [p1 c1 | p2 c2 | ...], each attending only to itself.

The row runs under pair attention (`prefalign.models.pair_attention`), the interface DPO's one-row pair batches use:
each example is a span of its own (`causal_span`), so no token attends to another example's and none is padding.
Position ids restart at 0 for each example, so each sees exactly the positions it would alone, and token t of an
example (t >= 1, a completion token) is predicted by its token t - 1: the same positions, targets and sums as the
right-padded rows of `prefalign.data.collate.collate_sft`, without the padding. The scoring head then runs at the
completion-predicting positions only (`prefalign.scoring.completions`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from .collate import CompletionIndex
from .shared_prefix import SPANS_KWARG, PairSpans
from .tokenize import SFTExample


@dataclass
class PackedBatch:
    """One [1, T] row of whole examples, with the spans pair attention needs and the completion index to score."""

    input_ids: Tensor
    position_ids: Tensor
    spans: PairSpans
    index: CompletionIndex
    num_tokens: int  # every token of the row is real

    def model_inputs(self) -> dict[str, Any]:
        return {"input_ids": self.input_ids, "position_ids": self.position_ids, SPANS_KWARG: self.spans}

    @property
    def num_sequences(self) -> int:
        return self.index.num_sequences

    @property
    def num_completion_tokens(self) -> int:
        return int(self.index.targets.numel())

    def to(self, device: torch.device | str) -> PackedBatch:
        return PackedBatch(
            self.input_ids.to(device), self.position_ids.to(device), self.spans, self.index.to(device), self.num_tokens
        )


def causal_span(start: int, length: int) -> tuple[int, int, int, int]:
    """The pair span under which pair attention is plain causal attention over `length` (>= 2) tokens from `start`.

    A "prompt" of every token but the last, no chosen response, and the last token as a one-token rejected response:
    rejected tokens see the whole prompt and themselves, so the last token sees every token before it, as causal
    attention does. Unlike (prompt, completion, no rejected response), no piece of it is empty: no attention kernel is
    handed a zero-length query."""
    if length < 2:
        raise ValueError(f"a causal span needs at least 2 tokens, got {length}")
    return (start, length - 1, 0, 1)


def collate_sft_row(examples: Sequence[SFTExample]) -> PackedBatch:
    """All `examples` end to end in one row (see the module docstring). Each needs at least 2 tokens; a completion
    token at an example's first position (an empty prompt) is not scored, as in right-padded rows."""
    if not examples:
        raise ValueError("collate_sft_row needs at least one example")
    lengths = [len(e.prompt_ids) + len(e.completion_ids) for e in examples]
    total = sum(lengths)
    input_ids = torch.empty((1, total), dtype=torch.long)
    position_ids = torch.empty((1, total), dtype=torch.long)
    positions: list[int] = []
    targets: list[int] = []
    sequences: list[int] = []
    spans = []
    start = 0
    for i, (example, length) in enumerate(zip(examples, lengths)):
        if length < 2:
            raise ValueError(f"{example.location or 'an example'}: fewer than 2 tokens; pad it instead")
        spans.append(causal_span(start, length))
        input_ids[0, start : start + length] = torch.tensor([*example.prompt_ids, *example.completion_ids])
        position_ids[0, start : start + length] = torch.arange(length)
        first = max(len(example.prompt_ids), 1)  # token 0 has no position before it to be predicted from
        positions += range(start + first - 1, start + length - 1)
        targets += example.completion_ids[first - len(example.prompt_ids) :]
        sequences += [i] * (length - first)
        start += length
    index = CompletionIndex(
        *(torch.tensor(x, dtype=torch.long) for x in (positions, targets, sequences)), len(examples)
    )
    return PackedBatch(input_ids, position_ids, tuple(spans), index, total)
