"""Run a causal LM on a batch and score its completion tokens only, never building vocabulary logits elsewhere.

A DPO or SFT step needs log pi(token) at completion tokens alone, yet a plain `model(...).logits` projects EVERY
position (prompt, padding) onto the whole vocabulary: for a 49k-word vocabulary that projection is a large share of
the step. Here the model's body runs once for its final hidden states; the hidden states at the positions that predict
a completion token are gathered ([K, H]); the output head is applied to those alone, a chunk of rows at a time, each
chunk checkpointed so that backward never holds more than one chunk's [rows, V] logits.

The model is called at its top level (DDP, peft and transformers all see an ordinary forward call, so DDP prepares its
gradient synchronisation and LoRA layers run), asking for hidden states and for the logits of no position at all. The
head is `get_output_embeddings()` of the model inside any wrappers: the same module object the forward uses. Models
that do more after the head (Gemma's logit soft-capping, Cohere's logit scale) are detected once per model by
comparing with the full logits, and scored from the full logits instead.

Batches say where their completion tokens are with a `CompletionIndex`; `plain_completion_index` builds it for the
right-padded rows of `prefalign.data.collate`, `prefalign.data.shared_prefix` for prompt-sharing packed rows.
"""

from __future__ import annotations

import sys
import weakref
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from ..losses import IGNORE_INDEX, SequenceLogps
from .pair_attention import ATTENTION_NAME, SPANS_KWARG, enable_pair_attention

# Rows of [rows, V] logits built at a time: 256 x 49k fp32 is 50 MB, large enough to keep the matmul efficient.
HEAD_CHUNK = 256
_HEAD_CHECK_TOLERANCE = 1e-4


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


def plain_completion_index(labels: Tensor, ignore_index: int = IGNORE_INDEX) -> CompletionIndex:
    """Index of right-padded rows with labels [N, T] (unshifted): position t predicts label t + 1; row = sequence."""
    rows, steps = labels.shape
    next_labels = labels[:, 1:]
    row, step = (next_labels != ignore_index).nonzero(as_tuple=True)
    return CompletionIndex(row * steps + step, next_labels[row, step], row, rows)


@dataclass
class CompletionStates:
    """A model's final hidden states at the completion-predicting positions of a batch, with the head that turns them
    into logits (`torch.nn.Identity` when `hidden` already holds logits: see the module docstring)."""

    hidden: Tensor  # [K, H]
    head: torch.nn.Module
    index: CompletionIndex

    def token_logps(self, chunk_size: int = HEAD_CHUNK) -> Tensor:
        """[K] fp32 log-probabilities of the completion tokens; differentiable through hidden states and head."""
        pieces = []
        for start in range(0, len(self.hidden), chunk_size):
            hidden = self.hidden[start : start + chunk_size]
            targets = self.index.targets[start : start + chunk_size]
            if torch.is_grad_enabled() and (hidden.requires_grad or _has_trainable_params(self.head)):
                # Backward recomputes this chunk's logits instead of keeping them: one chunk of [rows, V] at a time.
                pieces.append(
                    checkpoint(_label_logps, self.head, hidden, targets, use_reentrant=False, preserve_rng_state=False)
                )
            else:
                pieces.append(_label_logps(self.head, hidden, targets))
        return torch.cat(pieces) if pieces else self.hidden.new_zeros(0, dtype=torch.float32)

    def sequence_logps(self, chunk_size: int = HEAD_CHUNK) -> SequenceLogps:
        """Per-sequence sums of `token_logps` and token counts, like `prefalign.losses.sequence_logps`."""
        return SequenceLogps(self.per_sequence(self.token_logps(chunk_size)), self.tokens_per_sequence())

    def per_sequence(self, per_token: Tensor) -> Tensor:
        """[num_sequences] sums of a [K] per-token tensor."""
        index = self.index
        totals = per_token.new_zeros(index.num_sequences)
        return totals.index_add(0, index.sequences, per_token)

    def tokens_per_sequence(self) -> Tensor:
        return torch.bincount(self.index.sequences, minlength=self.index.num_sequences)


def _has_trainable_params(module: torch.nn.Module) -> bool:
    return any(p.requires_grad for p in module.parameters())


def _label_logps(head: torch.nn.Module, hidden: Tensor, targets: Tensor) -> Tensor:
    logits = head(hidden).float()
    return logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(logits, dim=-1)


def completion_kl(policy: CompletionStates, reference: CompletionStates, chunk_size: int = HEAD_CHUNK) -> Tensor:
    """Exact KL(policy || reference) over the vocabulary, summed over each sequence's completion positions: [S].

    No gradient (a metric). Both states must come from the same batch layout, so their rows line up.
    """
    if policy.hidden.shape[0] != reference.hidden.shape[0]:
        raise ValueError(
            f"policy and reference scored {policy.hidden.shape[0]} and {reference.hidden.shape[0]} "
            "positions; they must score the same batch"
        )
    pieces = []
    with torch.no_grad():
        for start in range(0, len(policy.hidden), chunk_size):
            stop = start + chunk_size
            policy_logp = torch.log_softmax(policy.head(policy.hidden[start:stop]).float(), dim=-1)
            ref_logp = torch.log_softmax(reference.head(reference.hidden[start:stop]).float(), dim=-1)
            pieces.append((policy_logp.exp() * (policy_logp - ref_logp)).sum(-1))
        per_token = torch.cat(pieces) if pieces else policy.hidden.new_zeros(0, dtype=torch.float32)
        return policy.per_sequence(per_token)


# ---------------------------------------------------------------------------------------------------------------------
# Running the model


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The transformers model inside DDP and peft wrappers (the same modules, not a copy)."""
    if isinstance(model, torch.nn.parallel.DistributedDataParallel):
        model = model.module
    get_base_model = getattr(model, "get_base_model", None)  # peft's PeftModel
    return get_base_model() if callable(get_base_model) else model


# Per model: its output head if head(final hidden state) reproduces its logits, else None. Weak keys, so a dropped
# model is not kept alive.
_HEADS: weakref.WeakKeyDictionary[torch.nn.Module, torch.nn.Module | None] = weakref.WeakKeyDictionary()


def _hidden_states(model: torch.nn.Module, inputs: dict[str, Tensor]) -> Tensor:
    """Final (normalised) hidden states [rows, length, H] from a top-level call that projects no position."""
    no_position = torch.zeros(0, dtype=torch.long, device=inputs["input_ids"].device)
    out = model(**inputs, use_cache=False, output_hidden_states=True, logits_to_keep=no_position)
    return out.hidden_states[-1]


def output_head(model: torch.nn.Module) -> torch.nn.Module | None:
    """The module that turns `model`'s last hidden state into its logits, or None when there is no such module
    (logits post-processed, e.g. soft-capped; no `logits_to_keep`; an unknown wrapper). Checked once per model by
    comparing with its full logits on four tokens."""
    inner = unwrap(model)
    if inner in _HEADS:
        return _HEADS[inner]
    get_head = getattr(inner, "get_output_embeddings", None)
    head = get_head() if callable(get_head) else None
    if head is not None:
        inputs = {"input_ids": torch.tensor([[1, 2, 3, 4]], device=head.weight.device)}
        was_training = model.training
        model.eval()  # no dropout, so the two forwards compute the same thing
        try:
            with torch.no_grad():
                logits = model(**inputs, use_cache=False).logits.float()
                projected = head(_hidden_states(model, inputs)).float()
            if projected.shape != logits.shape or not torch.allclose(
                projected, logits, atol=_HEAD_CHECK_TOLERANCE, rtol=_HEAD_CHECK_TOLERANCE
            ):
                head = None
        except (TypeError, ValueError, AttributeError, IndexError):  # no `logits_to_keep` or hidden states
            head = None
        finally:
            model.train(was_training)
    if head is None:
        print(
            f"prefalign: note: {type(inner).__name__}: no plain output head; scoring from full logits (slower)",
            file=sys.stderr,
        )
    _HEADS[inner] = head
    return head


def completion_states(model: torch.nn.Module, inputs: dict[str, Tensor], index: CompletionIndex) -> CompletionStates:
    """Run `model` on `inputs` (input_ids and the attention_mask / position_ids the layout needs) and keep what scores
    the completion tokens of `index`."""
    head = output_head(model)
    if head is not None:
        hidden = _hidden_states(model, inputs)
    else:
        hidden, head = model(**inputs, use_cache=False).logits, torch.nn.Identity()
    flat = hidden.reshape(-1, hidden.shape[-1])
    return CompletionStates(flat[index.positions], head, index)


def supports_block_masks(model: torch.nn.Module) -> bool:
    """Whether `model` takes a custom 4D attention mask (transformers' sdpa and eager attention do; flash does not)."""
    config = getattr(unwrap(model), "config", None)
    return getattr(config, "_attn_implementation", None) in ("sdpa", "eager", ATTENTION_NAME)


def model_inputs(model: torch.nn.Module, batch: Any) -> dict[str, Tensor]:
    """The keyword arguments `batch` passes to `model`: its own `model_inputs()` if it has one, else ids + mask.

    A one-row pair batch (spans instead of a mask) needs a model switched to pair attention. A boolean 4D mask
    becomes additive (0 or the dtype's minimum) for eager attention, which adds it to the scores."""
    if not hasattr(batch, "model_inputs"):
        return {"input_ids": batch.input_ids, "attention_mask": batch.attention_mask}
    inputs = batch.model_inputs()
    mask = inputs.get("attention_mask")
    if SPANS_KWARG in inputs:
        if not enable_pair_attention(model):  # checked once per model, then cached
            raise ValueError("this model's attention cannot run pair attention; use the 4D-mask layout")
        return inputs
    if mask.dim() != 4:
        return inputs
    if not supports_block_masks(model):
        raise ValueError("this model's attention implementation takes no 4D mask; use the plain layout")
    if unwrap(model).config._attn_implementation == "eager" and mask.dtype == torch.bool:
        dtype = unwrap(model).get_output_embeddings().weight.dtype
        additive = torch.zeros(mask.shape, dtype=dtype, device=mask.device)
        inputs["attention_mask"] = additive.masked_fill(~mask, torch.finfo(dtype).min)
    return inputs


def policy_scores(model: torch.nn.Module, batch: Any) -> tuple[CompletionStates, SequenceLogps]:
    """Run `model` on `batch` (plain padded rows or a shared-prefix batch): its completion states and per-sequence
    log-probs."""
    states = completion_states(model, model_inputs(model, batch), completion_index(batch))
    return states, states.sequence_logps()


def completion_index(batch: Any) -> CompletionIndex:
    """The batch's own `index`, or the plain index of its labels."""
    index = getattr(batch, "index", None)
    return index if isinstance(index, CompletionIndex) else plain_completion_index(batch.labels)
