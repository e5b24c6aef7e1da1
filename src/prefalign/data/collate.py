"""Tokenized examples -> padded tensors for a causal LM: input ids, attention mask, and labels for the loss.

Sequences are prompt + completion, padded on the right. Labels equal the input ids on completion tokens and
`IGNORE_INDEX` on prompt and padding, so every loss and log-probability counts the completion only. Labels are not
shifted here: the trainer shifts logits and labels together (`logits[:, :-1]` predicts `labels[:, 1:]`).

A preference pair becomes TWO rows of one batch, chosen rows first, then rejected rows: a model scores both
completions in one forward pass, and `PairBatch.split` takes the per-sequence results apart again.

Every batch layout says where its completion tokens are with a `CompletionIndex` (its `index`), which is all
`prefalign.scoring` needs to score them; `plain_completion_index` builds it for the right-padded rows made here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from .tokenize import SFTExample, TokenizedPair

# The label of a position no loss or log-probability counts (prompt, padding); PyTorch's cross-entropy default.
IGNORE_INDEX = -100


@dataclass
class CompletionIndex:
    """Where a batch's completion tokens are: token k is predicted by the hidden state at flat position
    `positions[k]` (into the batch's [rows * length] positions), is `targets[k]`, and belongs to sequence
    `sequences[k]` of `num_sequences` (for pairs: chosen sequences 0..N-1, then rejected N..2N-1)."""

    positions: Tensor
    targets: Tensor
    sequences: Tensor
    num_sequences: int

    def to(self, device: torch.device | str) -> CompletionIndex:
        return CompletionIndex(
            self.positions.to(device), self.targets.to(device), self.sequences.to(device), self.num_sequences
        )

    def first_sequences(self, count: int) -> CompletionIndex:
        """The tokens of sequences 0..count-1 only (for pairs of `count` pairs: the chosen responses)."""
        keep = self.sequences < count
        return CompletionIndex(self.positions[keep], self.targets[keep], self.sequences[keep], count)


def plain_completion_index(labels: Tensor, ignore_index: int = IGNORE_INDEX) -> CompletionIndex:
    """Index of right-padded rows with labels [N, T] (unshifted): position t predicts label t + 1; row = sequence."""
    rows, steps = labels.shape
    next_labels = labels[:, 1:]
    row, step = (next_labels != ignore_index).nonzero(as_tuple=True)
    return CompletionIndex(row * steps + step, next_labels[row, step], row, rows)


@dataclass
class LMBatch:
    """Right-padded rows: input_ids and labels [N, T] (int64), attention_mask [N, T] (1 on real tokens)."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor

    @property
    def num_completion_tokens(self) -> int:
        return int((self.labels != IGNORE_INDEX).sum())

    @property
    def num_tokens(self) -> int:
        return int(self.attention_mask.sum())

    @property
    def num_sequences(self) -> int:
        return self.input_ids.shape[0]

    @property
    def sequence_ends(self) -> Tensor:
        """[N] flat position (into the batch's [N * T] positions) of each row's last real token."""
        rows, width = self.attention_mask.shape
        return torch.arange(rows, device=self.attention_mask.device) * width + self.attention_mask.sum(-1) - 1

    @property
    def index(self) -> CompletionIndex:
        """Where the completion tokens are (computed from the labels on each access)."""
        return plain_completion_index(self.labels)

    def model_inputs(self) -> dict[str, Tensor]:
        """The keyword arguments a model takes for these rows."""
        return {"input_ids": self.input_ids, "attention_mask": self.attention_mask}

    def to(self, device: torch.device | str) -> LMBatch:
        return LMBatch(self.input_ids.to(device), self.attention_mask.to(device), self.labels.to(device))


@dataclass
class PairBatch(LMBatch):
    """An LMBatch of 2 * num_pairs rows: rows [0, num_pairs) are the chosen sequences, the rest the rejected ones."""

    num_pairs: int = 0

    def split(self, per_sequence: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(chosen, rejected) halves of a per-row tensor."""
        return per_sequence[: self.num_pairs], per_sequence[self.num_pairs :]

    def to(self, device: torch.device | str) -> PairBatch:
        moved = super().to(device)
        return PairBatch(moved.input_ids, moved.attention_mask, moved.labels, self.num_pairs)


def pad_sequences(prompts: Sequence[Sequence[int]], completions: Sequence[Sequence[int]], pad_id: int) -> LMBatch:
    """One row per (prompt, completion): ids right-padded with `pad_id`, labels masked on prompt and padding."""
    if len(prompts) != len(completions) or not prompts:
        raise ValueError(f"need as many prompts as completions (at least one), got {len(prompts)}, {len(completions)}")
    width = max(len(p) + len(c) for p, c in zip(prompts, completions))
    input_ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(prompts), width), dtype=torch.long)
    labels = torch.full((len(prompts), width), IGNORE_INDEX, dtype=torch.long)
    for row, (prompt, completion) in enumerate(zip(prompts, completions)):
        start, end = len(prompt), len(prompt) + len(completion)
        input_ids[row, :end] = torch.tensor([*prompt, *completion], dtype=torch.long)
        attention_mask[row, :end] = 1
        labels[row, start:end] = input_ids[row, start:end]
    return LMBatch(input_ids, attention_mask, labels)


def collate_pairs(pairs: Sequence[TokenizedPair], pad_id: int) -> PairBatch:
    """Chosen rows then rejected rows, each pair's prompt repeated in both."""
    prompts = [p.prompt_ids for p in pairs] * 2
    completions = [p.chosen_ids for p in pairs] + [p.rejected_ids for p in pairs]
    batch = pad_sequences(prompts, completions, pad_id)
    return PairBatch(batch.input_ids, batch.attention_mask, batch.labels, num_pairs=len(pairs))


def collate_sft(examples: Sequence[SFTExample], pad_id: int) -> LMBatch:
    """One row per example; only its completion (the response) is labelled."""
    return pad_sequences([e.prompt_ids for e in examples], [e.completion_ids for e in examples], pad_id)
