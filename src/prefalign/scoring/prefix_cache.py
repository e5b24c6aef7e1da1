"""The frozen-prefix cache: the blocks below a LoRA adapter computed once per sequence, not once per epoch.

With `--lora-layers N` only the last N blocks carry an adapter. The embedding and every block below them have nothing
to train and no dropout, so a sequence's hidden state after them is the same in every epoch, in the policy and in
DPO's reference (the adapter switched off changes only the blocks above), in training and in validation. The cache
keeps that state per sequence the first time a batch computes it; a later batch whose every sequence is cached runs
only the blocks above the prefix, handed the cached states as `inputs_embeds`. Forward and backward results are
those of the full model: the prefix has no parameter to differentiate and its input is fixed.

Only one-row batches (pair attention, `SPANS_KWARG`) are cached: there each sequence (a pair's [prompt | chosen |
rejected], an SFT example) is one contiguous slice of the row that depends on its own tokens, positions and span alone,
so slices computed in one batch can be laid end to end for any other. A state is stored in the dtype it was computed
in (the fp32 residual stream, also under bf16 autocast), under a key that includes the autocast setting, so a cached
batch computes what an uncached one would, up to the last bits in which kernels differ between batch shapes. Whether
a model can be resumed from a block's output this way (some models scale their embeddings inside `forward`) is checked
once per model on a toy row, as pair attention is (`attach`).

The cache stops growing once it holds `budget_bytes` (the batch that crosses the line is still kept); sequences
beyond it are computed in full every time.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor

from ..data.shared_prefix import SPANS_KWARG, PairSpans

HiddenRun = Callable[[dict[str, Any]], Tensor]  # model inputs -> final hidden states [rows, length, H]

_CACHES: weakref.WeakKeyDictionary[torch.nn.Module, PrefixCache] = weakref.WeakKeyDictionary()
_CHECK_TOLERANCE = 1e-4


def _decoder_layers(inner: torch.nn.Module) -> tuple[torch.nn.Module, torch.nn.ModuleList] | None:
    """(the decoder, its ModuleList of blocks) of a transformers causal LM, or None for another structure."""
    get_decoder = getattr(inner, "get_decoder", None)
    decoder = get_decoder() if callable(get_decoder) else None
    layers = getattr(decoder, "layers", None)
    if decoder is None or not isinstance(layers, torch.nn.ModuleList) or not hasattr(decoder, "embed_tokens"):
        return None
    return decoder, layers


def frozen_depth(inner: torch.nn.Module) -> int:
    """How many leading blocks of `inner` (a transformers causal LM) compute the same thing every time: no trainable
    parameter in them or in the embedding, and no dropout. 0 when there are none or the structure is unknown."""
    found = _decoder_layers(inner)
    if found is None:
        return 0
    decoder, layers = found
    if any(p.requires_grad for p in decoder.embed_tokens.parameters()):
        return 0
    config = getattr(inner, "config", None)
    if any(float(getattr(config, name, 0.0) or 0.0) > 0 for name in ("attention_dropout", "hidden_dropout", "dropout")):
        return 0
    depth = 0
    for layer in layers:
        has_dropout = any(isinstance(m, torch.nn.Dropout) and m.p > 0 for m in layer.modules())
        if has_dropout or any(p.requires_grad for p in layer.parameters()):
            break
        depth += 1
    return depth


class PrefixCache:
    """Hidden states after the first `depth` blocks of one model, per sequence of a one-row batch."""

    def __init__(self, decoder: torch.nn.Module, layers: torch.nn.ModuleList, depth: int, budget_bytes: int):
        self.decoder, self.layers, self.depth, self.budget_bytes = decoder, layers, depth, budget_bytes
        self.states: dict[tuple[Any, ...], Tensor] = {}
        self.bytes = 0
        self.hits = self.misses = 0  # forwards resumed above the prefix / run in full

    def summary(self) -> dict[str, Any]:
        return {"depth": self.depth, "resumed": self.hits, "full": self.misses, "mib": round(self.bytes / 2**20, 1)}

    def hidden_states(self, inputs: dict[str, Any], run: HiddenRun) -> Tensor:
        """`run(inputs)`, resumed above the prefix from cached states when every sequence of the row has them, else
        in full, keeping each sequence's prefix output for next time."""
        spans: PairSpans | None = inputs.get(SPANS_KWARG)
        if spans is None or "input_ids" not in inputs:
            return run(inputs)
        keys = self._keys(inputs, spans)
        found = [self.states.get(key) for key in keys]
        if all(state is not None for state in found):
            self.hits += 1
            resumed = {name: value for name, value in inputs.items() if name != "input_ids"}
            resumed["inputs_embeds"] = torch.cat(found, dim=0)[None]  # type: ignore[arg-type]  # none is None here
            with self.above_prefix():
                return run(resumed)
        self.misses += 1
        with self.capture() as captured:
            out = run(inputs)
        if self.bytes < self.budget_bytes:
            self._store(keys, spans, captured[0])
        return out

    @contextmanager
    def capture(self) -> Iterator[list[Tensor]]:
        """Within: the forward's hidden state after the prefix is appended to the yielded list (detached)."""
        captured: list[Tensor] = []

        def keep(module: torch.nn.Module, args: Any, output: Any) -> None:
            captured.append((output[0] if isinstance(output, tuple) else output).detach())

        handle = self.layers[self.depth - 1].register_forward_hook(keep)
        try:
            yield captured
        finally:
            handle.remove()

    @contextmanager
    def above_prefix(self) -> Iterator[None]:
        """Within: the decoder has only the blocks above the prefix (its input is then the prefix's output)."""
        self.decoder.layers = torch.nn.ModuleList(list(self.layers)[self.depth :])
        try:
            yield
        finally:
            self.decoder.layers = self.layers

    def _keys(self, inputs: dict[str, Any], spans: PairSpans) -> list[tuple[Any, ...]]:
        ids, positions = inputs["input_ids"][0].cpu(), inputs["position_ids"][0].cpu()
        device = inputs["input_ids"].device.type
        precision = (torch.is_autocast_enabled(device), torch.get_autocast_dtype(device))
        keys = []
        for start, prompt, chosen, rejected in spans:
            end = start + prompt + chosen + rejected
            keys.append(
                (
                    precision,
                    (prompt, chosen, rejected),
                    ids[start:end].numpy().tobytes(),
                    positions[start:end].numpy().tobytes(),
                )
            )
        return keys

    def _store(self, keys: list[tuple[Any, ...]], spans: PairSpans, states: Tensor) -> None:
        for key, (start, prompt, chosen, rejected) in zip(keys, spans):
            if key in self.states:
                continue
            state = states[0, start : start + prompt + chosen + rejected].clone()
            self.states[key] = state
            self.bytes += state.numel() * state.element_size()


def attach(model: torch.nn.Module, inner: torch.nn.Module, budget_bytes: int) -> PrefixCache | None:
    """Give `inner` (the transformers model inside `model`'s wrappers) a prefix cache when it has frozen leading blocks
    and resuming above them reproduces its full forward on a toy row; returns the cache, or None."""
    found = _decoder_layers(inner)
    depth = frozen_depth(inner)
    if found is None or depth == 0 or budget_bytes <= 0:
        return None
    cache = PrefixCache(*found, depth, budget_bytes)
    if not _resumes_exactly(model, inner, cache):
        return None
    _CACHES[inner] = cache
    return cache


def release(model: torch.nn.Module) -> PrefixCache | None:
    """Drop the cache of the model inside `model` (any wrapper: peft, the reward model's head): it runs in full again
    and the states are freed. Returns the cache, for its counts."""
    for module in model.modules():
        cache = _CACHES.pop(module, None)
        if cache is not None:
            cache.states.clear()
            return cache
    return None


def cache_of(inner: torch.nn.Module) -> PrefixCache | None:
    return _CACHES.get(inner)


def _resumes_exactly(model: torch.nn.Module, inner: torch.nn.Module, cache: PrefixCache) -> bool:
    """Whether `model` resumed above the prefix from its captured output gives the full forward's final states."""
    device = inner.get_input_embeddings().weight.device
    ids = torch.tensor([[3, 7, 11, 5, 2, 9, 4]], device=device) % inner.get_input_embeddings().weight.shape[0]
    inputs = {"input_ids": ids, "position_ids": torch.arange(ids.shape[1], device=device)[None]}

    def run(call: dict[str, Any]) -> Tensor:
        no_position = torch.zeros(0, dtype=torch.long, device=device)
        out = model(**call, use_cache=False, output_hidden_states=True, logits_to_keep=no_position)
        return out.hidden_states[-1]

    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            with cache.capture() as captured:
                full = run(inputs)
            resumed = {name: value for name, value in inputs.items() if name != "input_ids"}
            resumed["inputs_embeds"] = captured[0]
            with cache.above_prefix():
                again = run(resumed)
    except (TypeError, ValueError, RuntimeError, IndexError):
        return False
    finally:
        model.train(was_training)
    return bool(torch.allclose(full.float(), again.float(), atol=_CHECK_TOLERANCE, rtol=0))
