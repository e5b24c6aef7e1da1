"""Continuous batching: a fixed number of row slots decoding together, refilled from the queue as rows finish.

A batch of prompts with answers of different lengths drains: rows stop one by one and the last steps run a few rows
while the longest answer finishes. Here a row that emits a stop token (or reaches `max_new_tokens`) hands its slot to
the next waiting prompt at once: the waiting prompts are prefilled together, their first token sampled from the
prefill's logits, and their keys and values copied into the free slots (`SlotCache`), left-padded so that they end at
the column every row writes next. Only when the queue is empty does the batch shrink, the last rows moving into the
free slots. Each prompt samples with its own uniform draws, indexed by its own step, so what it generates does not
depend on which prompts it shared the batch with.

Prefill is a large share of the work (a prompt is often as long as its answer), and much of it is the same for every
prompt: a chat template's system turn opens all of them. The tokens every prompt starts with are prefilled once, in
one row, and each joining prompt prefills only the rest of itself on top of them. Joining prompts are prefilled in
groups of similar length (`length_groups`), so that little of a prefill goes to padding.

With a `reference` model, the reference decodes the same tokens in lockstep (its own `SlotCache`, the same slot moves)
and each step adds, per row, the exact next-token KL(model || reference) over the whole vocabulary and the log-ratio
of the chosen token: a KL estimate without a second pass over the answers.

A lane given `PromptPrefills` takes a joining prompt's prefill from there when an earlier call kept it, and keeps the
ones it computes for a later call (`prefills`).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from transformers import DynamicCache, PreTrainedModel

from .attention import needs_upcast
from .prefills import PromptPrefills
from .sampling import sample_next
from .slots import SlotCache

# Leading columns no row in use reaches back to are dropped once they are this many and a quarter of the cache.
_DROP_COLUMNS_AT = 32
# A prefill group's shortest prompt is at least this fraction of its longest: at most 1/8 of a group is padding.
_GROUP_LENGTH_RATIO = 7 / 8


def shared_prefix_length(prompts: list[list[int]]) -> int:
    """How many first tokens all `prompts` (two or more) share, leaving each at least one of its own: the prefill of
    its last token gives the logits of its first new one."""
    if len(prompts) < 2:
        return 0
    first, length = prompts[0], min(map(len, prompts)) - 1
    for ids in prompts[1:]:
        same = 0
        while same < length and ids[same] == first[same]:
            same += 1
        length = same
    return length


def length_groups(lengths: list[int]) -> list[list[int]]:
    """Indices into `lengths`, longest first, cut into groups whose shortest is at least 7/8 of their longest."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    groups: list[list[int]] = []
    for i in order:
        if groups and lengths[i] >= _GROUP_LENGTH_RATIO * lengths[groups[-1][0]]:
            groups[-1].append(i)
        else:
            groups.append([i])
    return groups


@dataclass
class DecodeSettings:
    max_new_tokens: int
    temperature: float
    top_p: float
    slots: int
    stop_ids: list[int]
    pad_id: int


@dataclass
class Decoded:
    """One prompt's new tokens and, with a reference, the sums along them of the per-token KL and log-ratio."""

    token_ids: list[int]
    kl: float | None = None
    logratio: float | None = None


class _Lane:
    """One model of the batch and its cache: the model that samples, or the reference that follows its tokens."""

    def __init__(self, model: PreTrainedModel, slots: int, capacity: int) -> None:
        core = model.get_base_model() if hasattr(model, "get_base_model") else model
        parameters = inspect.signature(core.forward).parameters
        self.model = model
        # A remote-code model may not take `logits_to_keep`.
        self.keeps_logits = "logits_to_keep" in parameters
        # transformers renamed the KV cache argument `past_key_values` -> `cache` (5.x) and warns on the old name.
        self.cache_name = "cache" if "cache" in parameters else "past_key_values"
        # A bf16 model on a CPU attends in fp32 (see `attention`): its cache is kept in fp32, converted once per token.
        cache_dtype = torch.float32 if needs_upcast(model) else None
        self.cache = SlotCache(core.config.get_text_config().num_hidden_layers, slots, capacity, cache_dtype)
        self.prefix: list[tuple[torch.Tensor, torch.Tensor]] = []  # per layer: the shared prefix's keys and values

    def logits(self, **inputs: Any) -> torch.Tensor:
        """The last position's logits only, not (rows, length, vocab). The position goes in as an index tensor: the
        head then gets a contiguous copy of the last hidden states (a strided slice sends bf16 down a slow path)."""
        length = inputs["input_ids"].shape[1]
        if self.keeps_logits:
            inputs["logits_to_keep"] = torch.tensor([length - 1], device=inputs["input_ids"].device)
        out = self.model(**inputs, use_cache=True)
        return out.logits[:, -1, :]

    def keep_prefix(self, ids: list[int]) -> None:
        """Prefill the tokens every prompt starts with, once, in one row; `prefill` then starts from them."""
        cache = DynamicCache(config=self.model.config)
        input_ids = torch.tensor([ids], device=self.model.device)
        self.logits(input_ids=input_ids, attention_mask=torch.ones_like(input_ids), **{self.cache_name: cache})
        self.prefix = [(layer.keys, layer.values) for layer in cache.layers]

    def prefill(self, input_ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, DynamicCache]:
        """Prefill `input_ids` (left-padded); `mask` covers the kept prefix's columns too, when there is one."""
        cache = DynamicCache(config=self.model.config)
        rows = len(input_ids)
        for layer, (keys, values) in enumerate(self.prefix):
            cache.update(keys.expand(rows, -1, -1, -1), values.expand(rows, -1, -1, -1), layer)
        position_ids = (mask.cumsum(dim=-1) - 1).clamp(min=0)[:, -input_ids.shape[1] :]
        logits = self.logits(
            input_ids=input_ids, attention_mask=mask, position_ids=position_ids, **{self.cache_name: cache}
        )
        return logits, cache

    def step(self, tokens: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        self.cache.rows = len(tokens)
        logits = self.logits(
            input_ids=tokens[:, None],
            attention_mask=mask,
            position_ids=positions[:, None],
            **{self.cache_name: self.cache},
        )
        self.cache.advance(1)
        return logits


class ContinuousBatch:
    """Decode `prompts` (token ids, longest first is best) through `settings.slots` slots; `run` returns each one's
    `Decoded` in the prompts' order, calling `on_done(i)` as prompt i finishes."""

    def __init__(
        self,
        model: PreTrainedModel,
        prompts: list[list[int]],
        uniforms: Callable[[int], torch.Tensor] | None,
        settings: DecodeSettings,
        reference: PreTrainedModel | None = None,
        prefills: list[PromptPrefills | None] | None = None,
    ) -> None:
        self.prompts, self.uniforms, self.settings = prompts, uniforms, settings
        slots = settings.slots
        capacity = max(map(len, prompts)) + settings.max_new_tokens + 1
        self.device = model.device
        self.lanes = [_Lane(m, slots, capacity) for m in (model, reference) if m is not None]
        self.prefills = list(prefills or [])[: len(self.lanes)]
        self.prefills += [None] * (len(self.lanes) - len(self.prefills))  # per lane: kept prompt prefills, if any
        new = {"dtype": torch.long, "device": self.device}
        self.mask = torch.zeros((slots, capacity), **new)
        self.tokens, self.positions, self.steps = (torch.zeros(slots, **new) for _ in range(3))
        self.starts = torch.zeros(slots, **new)  # each row's first real column
        self.draws = torch.zeros((slots, settings.max_new_tokens), device=self.device)
        self.kl = torch.zeros(slots, dtype=torch.float64, device=self.device)
        self.logratio = torch.zeros(slots, dtype=torch.float64, device=self.device)
        self.stop = torch.tensor(settings.stop_ids, dtype=torch.long, device=self.device)
        self.row_prompt: list[int] = [-1] * slots
        self.prefix_length = shared_prefix_length(prompts)
        self.queue = list(range(len(prompts)))[::-1]  # popped from the end
        self.generated: list[list[int]] = [[] for _ in prompts]
        self.done: dict[int, Decoded] = {}

    @property
    def rows(self) -> int:
        return self.lanes[0].cache.rows

    @property
    def length(self) -> int:
        return self.lanes[0].cache.length

    def run(self, on_done: Callable[[int], None] = lambda index: None) -> list[Decoded]:
        self.on_done = on_done
        if self.prefix_length:
            for lane in self.lanes:
                lane.keep_prefix(self.prompts[0][: self.prefix_length])
        free = list(range(self.settings.slots))
        while True:
            free = self._fill(free)
            self._shrink(free)
            if self.rows == 0:
                break
            self._drop_unused_columns()
            free = self._step()
        return [self.done[i] for i in range(len(self.prompts))]

    # --- one decode step -------------------------------------------------------------------------------------------

    def _step(self) -> list[int]:
        """Every row in use decodes one token; returns the slots whose prompt finished."""
        rows, length = self.rows, self.length
        self._reserve(length + 1)
        self.mask[:rows, length] = 1
        mask = self.mask[:rows, : length + 1]
        logits = [lane.step(self.tokens[:rows], mask, self.positions[:rows]) for lane in self.lanes]
        tokens = self._sample(logits[0], self.steps[:rows], self.draws[:rows])
        self._accumulate_kl(logits, tokens, slice(0, rows))
        self.positions[:rows] += 1
        return self._record(list(range(rows)), tokens)

    def _sample(self, logits: torch.Tensor, steps: torch.Tensor, draws: torch.Tensor) -> torch.Tensor:
        settings = self.settings
        uniforms = draws.gather(1, steps[:, None]).squeeze(1) if self.uniforms is not None else None
        return sample_next(logits, settings.temperature, settings.top_p, uniforms)

    def _accumulate_kl(self, logits: list[torch.Tensor], tokens: torch.Tensor, rows: slice | list[int]) -> None:
        if len(logits) < 2:
            return
        log_p = torch.log_softmax(logits[0].float(), dim=-1)
        log_q = torch.log_softmax(logits[1].float().to(log_p.device), dim=-1)
        kl = (log_p.exp() * (log_p - log_q)).sum(dim=-1)
        chosen = tokens[:, None]
        ratio = (log_p.gather(-1, chosen) - log_q.gather(-1, chosen)).squeeze(-1)
        self.kl[rows] += kl.double()
        self.logratio[rows] += ratio.double()

    def _record(self, slots: list[int], tokens: torch.Tensor) -> list[int]:
        """Append each slot's new token; finish the slots that stopped or ran out of budget; return those slots."""
        index = torch.tensor(slots, device=self.device)
        self.tokens[index] = tokens
        self.steps[index] += 1
        finished = torch.isin(tokens, self.stop) | (self.steps[index] >= self.settings.max_new_tokens)
        for slot, token in zip(slots, tokens.tolist()):
            self.generated[self.row_prompt[slot]].append(token)
        ended = [slots[i] for i in finished.nonzero().flatten().tolist()]
        for slot in ended:
            self._finish(slot)
        return ended

    def _finish(self, slot: int) -> None:
        prompt = self.row_prompt[slot]
        reference = len(self.lanes) > 1
        self.done[prompt] = Decoded(
            self.generated[prompt],
            float(self.kl[slot]) if reference else None,
            float(self.logratio[slot]) if reference else None,
        )
        self.row_prompt[slot] = -1
        self.on_done(prompt)

    # --- joining and leaving ---------------------------------------------------------------------------------------

    def _fill(self, free: list[int]) -> list[int]:
        """Prefill waiting prompts into the `free` slots until none is free or none waits; returns the still free."""
        while free and self.queue:
            joining = [self.queue.pop() for _ in range(min(len(free), len(self.queue)))]
            for group in length_groups([len(self.prompts[i]) for i in joining]):
                for members in self._by_kept_prefills([joining[i] for i in group]):
                    free = self._join(members, free)
        return free

    def _by_kept_prefills(self, joining: list[int]) -> list[list[int]]:
        """`joining` split by which lanes hold a kept prefill of each prompt: each part prefills in one go per lane."""
        parts: dict[tuple[bool, ...], list[int]] = {}
        for index in joining:
            kept = tuple(p is not None and p.usable(self.prompts[index], self.prefix_length) for p in self.prefills)
            parts.setdefault(kept, []).append(index)
        return list(parts.values())

    def _join(self, joining: list[int], free: list[int]) -> list[int]:
        skip = self.prefix_length  # prefilled once for all (`_Lane.keep_prefix`)
        width = max(len(self.prompts[i]) for i in joining) - skip
        input_ids = torch.full((len(joining), width), self.settings.pad_id, dtype=torch.long)
        pad_mask = torch.zeros((len(joining), skip + width), dtype=torch.long)
        pad_mask[:, :skip] = 1
        for row, index in enumerate(joining):
            ids = self.prompts[index][skip:]
            input_ids[row, width - len(ids) :] = torch.tensor(ids)
            pad_mask[row, skip + width - len(ids) :] = 1
        input_ids, pad_mask = input_ids.to(self.device), pad_mask.to(self.device)
        prefilled = [
            self._prefill(lane, kept, joining, input_ids, pad_mask) for lane, kept in zip(self.lanes, self.prefills)
        ]
        slots = free[: len(joining)]
        for slot, index in zip(slots, joining):
            self.row_prompt[slot] = index
            self.steps[slot] = 0
            self.kl[slot] = self.logratio[slot] = 0.0
            if self.uniforms is not None:
                self.draws[slot] = self.uniforms(index).to(self.device)
        tokens = self._sample(prefilled[0][0], self.steps[slots], self.draws[slots])
        self._accumulate_kl([logits for logits, _ in prefilled], tokens, slots)
        ended = set(self._record(slots, tokens))
        staying = [row for row, slot in enumerate(slots) if slot not in ended]
        if staying:
            self._place(staying, [slots[row] for row in staying], pad_mask, [cache for _, cache in prefilled])
        return [slot for slot in free if slot in ended or slot not in slots]

    def _prefill(
        self,
        lane: _Lane,
        kept: PromptPrefills | None,
        joining: list[int],
        input_ids: torch.Tensor,
        pad_mask: torch.Tensor,
    ) -> tuple[torch.Tensor, DynamicCache]:
        """One lane's prefill of `joining`: taken from `kept` when it holds every one, else computed (and kept)."""
        skip, prompts = self.prefix_length, [self.prompts[i] for i in joining]
        if kept is not None and all(kept.usable(ids, skip) for ids in prompts):
            return kept.restore(prompts, skip, lane.prefix, lane.model.config)
        logits, cache = lane.prefill(input_ids, pad_mask)
        if kept is not None:
            for row, ids in enumerate(prompts):
                kept.save(ids, skip, cache, row, logits)
        return logits, cache

    def _place(self, rows: list[int], slots: list[int], pad_mask: torch.Tensor, caches: list[DynamicCache]) -> None:
        """Copy prefill rows `rows` into `slots`, ending at the current column, and mark their real columns."""
        width = pad_mask.shape[1]
        if self.rows == 0:
            for lane in self.lanes:
                lane.cache.reset()
            self.mask.zero_()
        if width > self.length:
            self._insert_columns(width - self.length)
        rows_in_use = max(self.rows, max(slots) + 1)
        end = self.length
        for lane, cache in zip(self.lanes, caches):
            lane.cache.rows = rows_in_use
            lane.cache.write_rows(slots, cache, rows)
        index = torch.tensor(slots, device=self.device)
        real = pad_mask[rows]
        self.mask[index] = 0
        self.mask[index, end - width : end] = real
        self.positions[index] = real.sum(dim=-1)
        self.starts[index] = end - width + real.argmax(dim=-1)  # the first real column (padding may follow a prefix)

    def _shrink(self, free: list[int]) -> None:
        """With nobody waiting: move the last rows in use into the free slots below them, then use fewer rows."""
        rows = self.rows
        holes = sorted(slot for slot in free if slot < rows)
        while holes:
            last = rows - 1
            if holes[-1] == last:
                holes.pop()
            else:
                self._move_row(last, holes.pop(0))
            rows -= 1
        for lane in self.lanes:
            lane.cache.rows = rows

    def _move_row(self, source: int, target: int) -> None:
        for lane in self.lanes:
            lane.cache.move_row(source, target)
        for state in (
            self.mask,
            self.tokens,
            self.positions,
            self.steps,
            self.starts,
            self.draws,
            self.kl,
            self.logratio,
        ):
            state[target] = state[source]
        self.row_prompt[target], self.row_prompt[source] = self.row_prompt[source], -1

    # --- columns ---------------------------------------------------------------------------------------------------

    def _drop_unused_columns(self) -> None:
        unused = int(self.starts[: self.rows].min())
        if unused >= max(_DROP_COLUMNS_AT, self.length // 4):
            for lane in self.lanes:
                lane.cache.drop_columns(unused)
            length = self.length + unused
            self.mask[:, : length - unused] = self.mask[:, unused:length].clone()
            self.mask[:, length - unused :] = 0
            self.starts -= unused

    def _insert_columns(self, count: int) -> None:
        length = self.length
        self._reserve(length + count)
        for lane in self.lanes:
            lane.cache.insert_columns(count)
        self.mask[:, count : length + count] = self.mask[:, :length].clone()
        self.mask[:, :count] = 0
        self.starts += count

    def _reserve(self, length: int) -> None:
        for lane in self.lanes:
            lane.cache.reserve(length)
        if length > self.mask.shape[1]:
            grown = self.mask.new_zeros((self.mask.shape[0], max(length, 2 * self.mask.shape[1])))
            grown[:, : self.mask.shape[1]] = self.mask
            self.mask = grown
