"""Running a causal LM on a batch for its `CompletionStates`: the one place prefalign runs a model to score text.

The model is called at its top level (DDP, peft and transformers all see an ordinary forward call, so DDP prepares its
gradient synchronisation and LoRA layers run), asking for hidden states and for the logits of no position at all. The
head is `get_output_embeddings()` of the model inside any wrappers: the same module object the forward uses. Models
that do more after the head (Gemma's logit soft-capping, Cohere's logit scale) are detected once per model by
comparing with the full logits, and scored from the full logits instead.

A batch is anything with `model_inputs()` (the keyword arguments the model takes) and `index` (a `CompletionIndex`):
the right-padded rows of `prefalign.data.collate`, the prompt-sharing rows of `prefalign.data.shared_prefix`, or the
packed SFT row of `prefalign.data.packing`. A one-row batch needs the model switched to pair attention
(`prefalign.models.pair_attention`), which `enable_pair_attention` does after checking that the model then scores a
toy batch as the 4D-mask layout does.
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor

from ..console import say
from ..data.collate import CompletionIndex, PairBatch, collate_pairs
from ..data.shared_prefix import SPANS_KWARG, SharedPrefixBatch, collate_pair_row, collate_shared_prefix
from ..data.tokenize import TokenizedPair
from ..models import pair_attention
from . import prefix_cache
from .completions import CompletionStates, SequenceLogps

_HEAD_CHECK_TOLERANCE = 1e-4
# Kernels differ (causal flag vs mask) in their last bits; a wrong layout is off by whole nats.
_PAIR_CHECK_TOLERANCE = {torch.float32: 1e-3, torch.float64: 1e-8}  # other dtypes: 5e-2

# Per model (weak keys, so a dropped model is not kept alive): its output head if head(final hidden state)
# reproduces its logits, else None; and whether it runs pair attention correctly.
_HEADS: weakref.WeakKeyDictionary[torch.nn.Module, torch.nn.Module | None] = weakref.WeakKeyDictionary()
_PAIR_ATTENTION_CHECKED: weakref.WeakKeyDictionary[torch.nn.Module, bool] = weakref.WeakKeyDictionary()


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The transformers model inside DDP and peft wrappers (the same modules, not a copy)."""
    if isinstance(model, torch.nn.parallel.DistributedDataParallel):
        model = model.module
    get_base_model = getattr(model, "get_base_model", None)  # peft's PeftModel
    return get_base_model() if callable(get_base_model) else model


def final_hidden_states(model: torch.nn.Module, inputs: dict[str, Any]) -> Tensor:
    """Final (normalised) hidden states [rows, length, H] from a top-level call that projects no position; above the
    frozen prefix only where the model has a prefix cache holding the batch (`prefalign.scoring.prefix_cache`)."""
    no_position = torch.zeros(0, dtype=torch.long, device=inputs["input_ids"].device)

    def run(call: dict[str, Any]) -> Tensor:
        out = model(**call, use_cache=False, output_hidden_states=True, logits_to_keep=no_position)
        return out.hidden_states[-1]

    cache = prefix_cache.cache_of(unwrap(model))
    return run(inputs) if cache is None else cache.hidden_states(inputs, run)


def output_head(model: torch.nn.Module) -> torch.nn.Module | None:
    """The module that turns `model`'s last hidden state into its logits, or None when there is no such module
    (logits post-processed, e.g. soft-capped; no `logits_to_keep`; an unknown wrapper). Checked once per model by
    comparing with its full logits on four tokens."""
    inner = unwrap(model)
    if inner in _HEADS:
        return _HEADS[inner]
    get_head = getattr(inner, "get_output_embeddings", None)
    head = get_head() if callable(get_head) else None
    if head is not None and not _head_reproduces_logits(model, head):
        head = None
    if head is None:
        say(f"note: {type(inner).__name__}: no plain output head; scoring from full logits (slower)")
    _HEADS[inner] = head
    return head


def _head_reproduces_logits(model: torch.nn.Module, head: torch.nn.Module) -> bool:
    inputs = {"input_ids": torch.tensor([[1, 2, 3, 4]], device=head.weight.device)}
    was_training = model.training
    model.eval()  # no dropout, so the two forwards compute the same thing
    try:
        with torch.no_grad():
            logits = model(**inputs, use_cache=False).logits.float()
            projected = head(final_hidden_states(model, inputs)).float()
        return projected.shape == logits.shape and torch.allclose(
            projected, logits, atol=_HEAD_CHECK_TOLERANCE, rtol=_HEAD_CHECK_TOLERANCE
        )
    except (TypeError, ValueError, AttributeError, IndexError):  # no `logits_to_keep` or hidden states
        return False
    finally:
        model.train(was_training)


def _states(scored: Tensor, head: torch.nn.Module, index: CompletionIndex) -> CompletionStates:
    """The rows of `scored` [rows, length, H or V] at the index's positions."""
    flat = scored.reshape(-1, scored.shape[-1])
    return CompletionStates(flat[index.positions], head, index)


def completion_states(model: torch.nn.Module, inputs: dict[str, Any], index: CompletionIndex) -> CompletionStates:
    """Run `model` on `inputs` (input_ids and the attention_mask / position_ids the layout needs) and keep what scores
    the completion tokens of `index`."""
    head = output_head(model)
    if head is None:
        return _states(model(**inputs, use_cache=False).logits, torch.nn.Identity(), index)
    return _states(final_hidden_states(model, inputs), head, index)


def hidden_and_completion_states(
    model: torch.nn.Module, inputs: dict[str, Any], index: CompletionIndex
) -> tuple[Tensor, CompletionStates]:
    """One forward of `model`: its final hidden states [rows, length, H] (for a head of one's own, like the reward
    model's) and the completion states of `index`."""
    head = output_head(model)
    if head is None:
        out = model(**inputs, use_cache=False, output_hidden_states=True)
        return out.hidden_states[-1], _states(out.logits, torch.nn.Identity(), index)
    hidden = final_hidden_states(model, inputs)
    return hidden, _states(hidden, head, index)


def supports_block_masks(model: torch.nn.Module) -> bool:
    """Whether `model` takes a custom 4D attention mask (transformers' sdpa and eager attention do; flash does not)."""
    config = getattr(unwrap(model), "config", None)
    return getattr(config, "_attn_implementation", None) in ("sdpa", "eager", pair_attention.ATTENTION_NAME)


def enable_pair_attention(model: torch.nn.Module) -> bool:
    """Switch `model` (its transformers config, shared by every layer) from SDPA to pair attention if that gives the
    same log-probabilities as the 4D-mask layout on a toy batch; True when the model now runs pair attention."""
    inner = unwrap(model)
    config = getattr(inner, "config", None)
    implementation = getattr(config, "_attn_implementation", None)
    if config is None or implementation not in ("sdpa", pair_attention.ATTENTION_NAME):
        return False
    if implementation == pair_attention.ATTENTION_NAME and _PAIR_ATTENTION_CHECKED.get(inner):
        return True
    pair_attention.register()
    config._attn_implementation = pair_attention.ATTENTION_NAME
    works = _pair_row_scores_as_mask_layout(model)
    _PAIR_ATTENTION_CHECKED[inner] = works
    if not works:
        config._attn_implementation = "sdpa"
    return works


@dataclass(frozen=True)
class PairLayout:
    """How a batch of pairs meets the model, the fastest layout every scoring model takes: "row" (every pair in one
    padding-free row under pair attention), "shared_prefix" (packed rows under a block mask, each prompt once) or
    "padded" (chosen rows then rejected rows, each prompt twice)."""

    kind: Literal["row", "shared_prefix", "padded"]
    pad_id: int

    def collate(self, pairs: Sequence[TokenizedPair]) -> PairBatch | SharedPrefixBatch:
        # A pair with an empty prompt has no position to predict its responses' first tokens from: pad it instead.
        if self.kind == "padded" or not all(pair.prompt_ids for pair in pairs):
            return collate_pairs(pairs, self.pad_id)
        return (collate_pair_row if self.kind == "row" else collate_shared_prefix)(pairs, self.pad_id)


def choose_pair_layout(
    models: Sequence[torch.nn.Module], pad_id: int, *, share_prompts: bool = True, block_masks: bool = True
) -> PairLayout:
    """The layout that scores pairs under every model of `models` with the least work: one row under pair attention
    (switching the models to it, see `enable_pair_attention`), else, with `block_masks`, packed rows under a block
    mask, else padded rows. `share_prompts` False: always padded (`--no-prefix-sharing`)."""
    if not share_prompts or not all(supports_block_masks(model) for model in models):
        return PairLayout("padded", pad_id)
    if all(enable_pair_attention(model) for model in models):
        return PairLayout("row", pad_id)
    return PairLayout("shared_prefix" if block_masks else "padded", pad_id)


def _pair_row_scores_as_mask_layout(model: torch.nn.Module) -> bool:
    """Score two toy pairs in one row with pair attention and in 4D-mask packed rows; compare the log-probs."""
    weight = unwrap(model).get_input_embeddings().weight
    vocab = weight.shape[0]

    def ids(*tokens: int) -> list[int]:
        return [token % vocab for token in tokens]

    pairs = [TokenizedPair(ids(3, 7, 11), ids(5, 2), ids(9, 4, 6)), TokenizedPair(ids(8), ids(1, 12, 10), ids(13))]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():  # inputs straight to the model: `model_inputs` would ask for this very check
            row, packed = (
                completion_states(model, batch.model_inputs(), batch.index).sequence_logps()
                for batch in (
                    collate_pair_row(pairs).to(weight.device),
                    collate_shared_prefix(pairs, pad_id=0).to(weight.device),
                )
            )
    except (TypeError, ValueError, RuntimeError):
        return False
    finally:
        model.train(was_training)
    tolerance = _PAIR_CHECK_TOLERANCE.get(weight.dtype, 5e-2)
    return bool(torch.allclose(row.sum_logps, packed.sum_logps, atol=tolerance, rtol=0))


def model_inputs(model: torch.nn.Module, batch: Any) -> dict[str, Any]:
    """The keyword arguments `batch` passes to `model`, checked against what the model's attention can take."""
    return checked_inputs(model, batch.model_inputs())


def checked_inputs(model: torch.nn.Module, inputs: dict[str, Any]) -> dict[str, Any]:
    """A batch layout's keyword arguments for `model`, checked against what the model's attention can take.

    A one-row batch (spans instead of a mask) needs a model switched to pair attention. A boolean 4D mask becomes
    additive (0 or the dtype's minimum) for eager attention, which adds it to the scores."""
    inputs = dict(inputs)
    mask = inputs.get("attention_mask")
    if SPANS_KWARG in inputs:
        if not enable_pair_attention(model):  # checked once per model, then cached
            raise ValueError("this model's attention cannot run pair attention; use the 4D-mask layout")
        return inputs
    if mask is None or mask.dim() != 4:
        return inputs
    if not supports_block_masks(model):
        raise ValueError("this model's attention implementation takes no 4D mask; use the plain layout")
    if unwrap(model).config._attn_implementation == "eager" and mask.dtype == torch.bool:
        dtype = unwrap(model).get_output_embeddings().weight.dtype
        additive = torch.zeros(mask.shape, dtype=dtype, device=mask.device)
        inputs["attention_mask"] = additive.masked_fill(~mask, torch.finfo(dtype).min)
    return inputs


def score_completions(model: torch.nn.Module, batch: Any) -> tuple[CompletionStates, SequenceLogps]:
    """Run `model` (a policy, a reference, a model under evaluation) on `batch` (plain padded rows or a shared-prefix
    batch): its completion states, and the per-sequence log-probs of the completion tokens."""
    states = completion_states(model, model_inputs(model, batch), batch.index)
    return states, states.sequence_logps()
