"""Preference pairs as ONE sequence each, [prompt | chosen | rejected], packed several to a row: the prompt is
computed once instead of twice, and rows carry almost no padding.

A block attention mask keeps the result equal to scoring prompt + chosen and prompt + rejected separately:

* prompt tokens attend causally to the prompt;
* chosen tokens attend to the prompt and causally to chosen;
* rejected tokens attend to the prompt and causally to rejected, never to chosen;
* tokens of different pairs packed into one row never attend to each other (document masking).

Position ids restart at 0 for each pair, and the rejected response's continue from the end of the prompt, as chosen's
do: each response sees exactly the positions it would alone. The first token of BOTH responses is predicted by the
last prompt position; every later token by the position before it in its own branch.

Two layouts:

* `collate_pair_row` (the default where the model allows it): every pair of the batch end to end in ONE row with no
  padding at all; attention runs per pair over its own blocks only (`prefalign.models.pair_attention`).
* `collate_shared_prefix`: for models whose attention takes a 4D mask but not pair attention. Pairs are packed
  first-fit decreasing into rows as long as the longest pair, so attention (quadratic in row length, whatever the mask
  keeps) costs no more than one row per pair would, and padding shrinks to the gaps the packing leaves.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from .collate import CompletionIndex
from .tokenize import TokenizedPair

# The keyword argument that carries a row's pair spans through the model to `prefalign.models.pair_attention`.
SPANS_KWARG = "prefalign_pair_spans"
# (start, prompt length, chosen length, rejected length) of each pair in the row, as Python ints (no device sync);
# a prompt group's span carries each of its responses' lengths after the prompt's (`collate_prompt_groups`).
PairSpans = tuple[tuple[int, ...], ...]
_PROMPT, _CHOSEN, _REJECTED, _PADDING = 0, 1, 2, -1


@dataclass
class SharedPrefixBatch:
    """Rows [R, L] of pairs laid out as [prompt | chosen | rejected], with what the model and the loss need.

    Either `attention_mask` is boolean [R, 1, L, L] (True: may attend), or R is 1 and `spans` says where each pair
    is, for pair attention. `index` scores sequence i < num_pairs as pair i's chosen response and num_pairs + i as its
    rejected one, the order of `prefalign.data.collate.PairBatch`.
    """

    input_ids: Tensor
    position_ids: Tensor
    attention_mask: Tensor | None
    index: CompletionIndex
    num_pairs: int
    num_tokens: int  # real (non-padding) tokens the model processes
    sequence_ends: Tensor  # [2 * num_pairs] flat position of each response's last token, in `index`'s order
    spans: PairSpans | None = None

    def model_inputs(self) -> dict[str, Any]:
        if self.spans is not None:
            return {"input_ids": self.input_ids, "position_ids": self.position_ids, SPANS_KWARG: self.spans}
        return {"input_ids": self.input_ids, "attention_mask": self.attention_mask, "position_ids": self.position_ids}

    @property
    def num_completion_tokens(self) -> int:
        return int(self.index.targets.numel())

    def split(self, per_sequence: Tensor) -> tuple[Tensor, Tensor]:
        """(chosen, rejected) halves of a per-sequence tensor."""
        return per_sequence[: self.num_pairs], per_sequence[self.num_pairs :]

    def to(self, device: torch.device | str) -> SharedPrefixBatch:
        mask = self.attention_mask.to(device) if self.attention_mask is not None else None
        return SharedPrefixBatch(
            self.input_ids.to(device),
            self.position_ids.to(device),
            mask,
            self.index.to(device),
            self.num_pairs,
            self.num_tokens,
            self.sequence_ends.to(device),
            self.spans,
        )


def pack_rows(lengths: Sequence[int]) -> list[list[int]]:
    """Indices of `lengths` grouped into rows of capacity max(lengths), first-fit decreasing (longest first)."""
    capacity = max(lengths)
    rows: list[list[int]] = []
    room: list[int] = []
    for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        row = next((r for r, free in enumerate(room) if free >= lengths[i]), None)
        if row is None:
            rows.append([])
            room.append(capacity)
            row = len(rows) - 1
        rows[row].append(i)
        room[row] -= lengths[i]
    return rows


def collate_shared_prefix(pairs: Sequence[TokenizedPair], pad_id: int) -> SharedPrefixBatch:
    """Lay out and pack `pairs` (see the module docstring). Prompts and responses must be non-empty."""
    if not pairs:
        raise ValueError("collate_shared_prefix needs at least one pair")
    num_pairs = len(pairs)
    lengths = [len(p.prompt_ids) + len(p.chosen_ids) + len(p.rejected_ids) for p in pairs]
    rows = pack_rows(lengths)
    width = max(lengths)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    position_ids = torch.zeros((len(rows), width), dtype=torch.long)
    document = torch.full((len(rows), width), _PADDING, dtype=torch.long)
    branch = torch.full((len(rows), width), _PADDING, dtype=torch.long)
    scoring = _Scoring(num_pairs)
    for r, members in enumerate(rows):
        start = 0
        for i in members:
            end = start + lengths[i]
            _place(pairs[i], i, input_ids[r], position_ids[r], r * width + start, start, scoring)
            document[r, start:end] = i
            branch[r, start:end] = _branches(pairs[i])
            start = end
    return SharedPrefixBatch(
        input_ids,
        position_ids,
        block_mask(document, branch),
        scoring.index(),
        num_pairs,
        sum(lengths),
        torch.tensor(scoring.ends),
    )


def collate_pair_row(pairs: Sequence[TokenizedPair], pad_id: int = 0) -> SharedPrefixBatch:
    """All `pairs` end to end in one [1, T] row, no padding, for pair attention (see the module docstring).
    `pad_id` is unused (there is no padding); it is accepted so both layouts collate alike."""
    if not pairs:
        raise ValueError("collate_pair_row needs at least one pair")
    lengths = [len(p.prompt_ids) + len(p.chosen_ids) + len(p.rejected_ids) for p in pairs]
    total = sum(lengths)
    input_ids = torch.empty((1, total), dtype=torch.long)
    position_ids = torch.empty((1, total), dtype=torch.long)
    scoring = _Scoring(len(pairs))
    spans = []
    start = 0
    for i, pair in enumerate(pairs):
        _place(pair, i, input_ids[0], position_ids[0], start, start, scoring)
        spans.append((start, len(pair.prompt_ids), len(pair.chosen_ids), len(pair.rejected_ids)))
        start += lengths[i]
    return SharedPrefixBatch(
        input_ids, position_ids, None, scoring.index(), len(pairs), total, torch.tensor(scoring.ends), tuple(spans)
    )


@dataclass
class PromptGroupRow:
    """Prompts each followed by all of its responses, [p1 a1 b1 c1 | p2 a2 | ...], in one padding-free row for pair
    attention: each response sees its prompt and itself, never a sibling, so each is scored as it would be alone, and
    the prompt is computed once for all of them (a reward model judging several models' answers to one prompt)."""

    input_ids: Tensor  # [1, T]
    position_ids: Tensor  # [1, T]
    spans: PairSpans
    response_ends: Tensor  # flat position of each response's last token: group by group, responses in order

    def model_inputs(self) -> dict[str, Any]:
        return {"input_ids": self.input_ids, "position_ids": self.position_ids, SPANS_KWARG: self.spans}


def collate_prompt_groups(groups: Sequence[tuple[Sequence[int], Sequence[Sequence[int]]]]) -> PromptGroupRow:
    """Lay out (prompt ids, [response ids, ...]) groups end to end in one row. Prompts and responses must be non-empty;
    each response's position ids continue from the end of its prompt, as they would alone."""
    if not groups:
        raise ValueError("collate_prompt_groups needs at least one group")
    ids: list[int] = []
    positions: list[int] = []
    spans = []
    ends = []
    for prompt, responses in groups:
        if not prompt or not responses or not all(responses):
            raise ValueError("a prompt group needs a non-empty prompt and at least one response, each non-empty")
        spans.append((len(ids), len(prompt), *(len(response) for response in responses)))
        ids += prompt
        positions += range(len(prompt))
        for response in responses:
            ids += response
            positions += range(len(prompt), len(prompt) + len(response))
            ends.append(len(ids) - 1)
    return PromptGroupRow(
        torch.tensor([ids], dtype=torch.long),
        torch.tensor([positions], dtype=torch.long),
        tuple(spans),
        torch.tensor(ends, dtype=torch.long),
    )


class _Scoring:
    """The completion index of a batch, built pair by pair."""

    def __init__(self, num_pairs: int):
        self.num_pairs = num_pairs
        self.positions: list[int] = []
        self.targets: list[int] = []
        self.sequences: list[int] = []
        self.ends = [0] * (2 * num_pairs)  # flat position of each response's last token: chosen ones, then rejected

    def index(self) -> CompletionIndex:
        return CompletionIndex(
            torch.tensor(self.positions), torch.tensor(self.targets), torch.tensor(self.sequences), 2 * self.num_pairs
        )


def _place(
    pair: TokenizedPair, i: int, ids: Tensor, positions: Tensor, flat_start: int, start: int, scoring: _Scoring
) -> None:
    """Write pair i's tokens and position ids into a row at `start` (flat position `flat_start` in the batch), and
    add its completion tokens to `scoring`."""
    prompt, chosen, rejected = len(pair.prompt_ids), len(pair.chosen_ids), len(pair.rejected_ids)
    if not (prompt and chosen and rejected):
        raise ValueError(f"{pair.location or 'a pair'}: empty prompt or response; each needs a token")
    end = start + prompt + chosen + rejected
    ids[start:end] = torch.tensor([*pair.prompt_ids, *pair.chosen_ids, *pair.rejected_ids])
    positions[start:end] = torch.cat([torch.arange(prompt + chosen), torch.arange(prompt, prompt + rejected)])
    last_prompt = flat_start + prompt - 1
    chosen_start = flat_start + prompt
    rejected_start = chosen_start + chosen
    # Chosen token k is predicted at the position before it; so is rejected token k >= 1, but rejected's first token
    # is predicted at the last prompt position, like chosen's.
    scoring.positions += [last_prompt, *range(chosen_start, chosen_start + chosen - 1)]
    scoring.positions += [last_prompt, *range(rejected_start, rejected_start + rejected - 1)]
    scoring.targets += [*pair.chosen_ids, *pair.rejected_ids]
    scoring.sequences += [i] * chosen + [scoring.num_pairs + i] * rejected
    scoring.ends[i], scoring.ends[scoring.num_pairs + i] = rejected_start - 1, rejected_start + rejected - 1


def _branches(pair: TokenizedPair) -> Tensor:
    return torch.tensor(
        [_PROMPT] * len(pair.prompt_ids) + [_CHOSEN] * len(pair.chosen_ids) + [_REJECTED] * len(pair.rejected_ids)
    )


def block_mask(document: Tensor, branch: Tensor) -> Tensor:
    """Boolean [R, 1, L, L] mask from per-token pair ids and branches (-1: padding); see the module docstring.

    A padding position attends to itself only: a query row with nothing to attend to would make softmax NaN, and NaN
    in a padding row still poisons the gradients through the attention backward."""
    width = document.shape[1]
    query_doc, key_doc = document.unsqueeze(2), document.unsqueeze(1)
    causal = torch.ones(width, width, dtype=torch.bool).tril()
    same_pair = (query_doc == key_doc) & (query_doc != _PADDING)
    rejected_sees_chosen = (branch.unsqueeze(2) == _REJECTED) & (branch.unsqueeze(1) == _CHOSEN)
    allowed = same_pair & causal & ~rejected_sees_chosen
    allowed |= torch.eye(width, dtype=torch.bool) & (query_doc == _PADDING)
    return allowed.unsqueeze(1)
