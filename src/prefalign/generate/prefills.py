"""Prompt prefills kept from one `generate` call for a later one of the same model on the same prompts.

An evaluation decodes each model twice over the same prompts: its greedy answers, then, on the first of those prompts,
the samples of its KL estimate, with the base model following each sample. Each call starts by prefilling its prompts,
which costs as much as a few dozen decode steps per prompt: for the KL pass, that is the policy's prefill its greedy
pass already ran, and the base's its own greedy pass (or the previous policy's KL pass) already ran. A
`PromptPrefills` given to both calls keeps what the first computed (each prompt's keys and values past the call's
shared prefix, and its next-token logits) and hands it to the second, which then prefills only what it lacks.

Kept prefills are exact for their prompt: keys and values depend only on the tokens before them. They were computed in
another batch, so they can differ from a fresh prefill in the last float bits, as any two batch shapes can.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..data.records import Text

if TYPE_CHECKING:  # torch is imported where it is used: `prefalign --help` imports this module and never torch
    import torch
    from transformers import DynamicCache, PreTrainedModel

__all__ = ["PromptPrefills"]


@dataclass(frozen=True)
class _Prefill:
    start: int  # the first token covered: the ones before it were the call's shared prefix
    keys: list[torch.Tensor]  # per layer: [heads, tokens, head_dim]
    values: list[torch.Tensor]
    logits: torch.Tensor  # the next-token logits after the whole prompt


class PromptPrefills:
    """The prefills of one model at one precision, kept for the `keep` prompts only (None: every prompt the model
    prefills). Give the same object to each `generate` call of that model (its `prefills` argument, or
    `reference_prefills` where the model follows another's samples); a call with another model or precision is an
    error, not a silent miss."""

    def __init__(self, keep: list[Text] | None = None) -> None:
        self.keep_prompts = keep
        self.keep: set[tuple[int, ...]] | None = None  # the kept prompts' token ids, once bound to a tokenizer
        self.owner: tuple[int, torch.dtype] | None = None
        self.entries: dict[tuple[int, ...], _Prefill] = {}
        self.reused = 0  # prompts whose prefill was taken from here instead of computed

    def bind(self, model: PreTrainedModel, dtype: torch.dtype, encode: Callable[[Text], list[int]]) -> None:
        """Tie these prefills to `model` at `dtype` (by the first call; later calls must match), with `encode`
        turning a prompt into the token ids the call decodes."""
        owner = (id(model), dtype)
        if self.owner is not None and self.owner != owner:
            raise ValueError("these prompt prefills belong to another model or precision")
        self.owner = owner
        if self.keep is None and self.keep_prompts is not None:
            self.keep = {tuple(encode(prompt)) for prompt in self.keep_prompts}

    def usable(self, ids: list[int], skip: int) -> bool:
        """Whether a prefill of `ids` from token `skip` on can be taken from here."""
        entry = self.entries.get(tuple(ids))
        return entry is not None and entry.start <= skip

    def save(self, ids: list[int], skip: int, cache: DynamicCache, row: int, logits: torch.Tensor) -> None:
        """Keep row `row` of a prefill `cache` (left-padded, `skip` prefix columns first) for prompt `ids`."""
        key = tuple(ids)
        if (self.keep is not None and key not in self.keep) or key in self.entries:
            return
        own = len(ids) - skip
        keys = [layer.keys[row, :, -own:].clone() for layer in cache.layers]
        values = [layer.values[row, :, -own:].clone() for layer in cache.layers]
        self.entries[key] = _Prefill(skip, keys, values, logits[row].clone())

    def restore(
        self, prompts: list[list[int]], skip: int, prefix: list[tuple[torch.Tensor, torch.Tensor]], config: object
    ) -> tuple[torch.Tensor, DynamicCache]:
        """The next-token logits and a left-padded prefill cache of `prompts` (each `usable`), as a fresh prefill
        after the shared `prefix` (the first `skip` tokens) would give them."""
        import torch
        from transformers import DynamicCache

        entries = [self.entries[tuple(ids)] for ids in prompts]
        own = [len(ids) - skip for ids in prompts]
        width = max(own)
        cache = DynamicCache(config=config)
        for layer in range(len(entries[0].keys)):
            parts = []
            for tensors in ([e.keys[layer] for e in entries], [e.values[layer] for e in entries]):
                first = tensors[0]
                padded = first.new_zeros((len(prompts), first.shape[0], width, first.shape[-1]))
                for row, (tensor, entry, length) in enumerate(zip(tensors, entries, own)):
                    # The entry covers tokens from entry.start on: drop the ones this call's prefix already holds.
                    padded[row, :, width - length :] = tensor[:, skip - entry.start :]
                parts.append(padded)
            keys, values = parts
            if prefix:
                prefix_keys, prefix_values = prefix[layer]
                keys = torch.cat([prefix_keys.expand(len(prompts), -1, -1, -1), keys], dim=2)
                values = torch.cat([prefix_values.expand(len(prompts), -1, -1, -1), values], dim=2)
            cache.update(keys, values, layer)
        self.reused += len(prompts)
        return torch.stack([e.logits for e in entries]), cache
