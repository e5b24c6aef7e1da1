"""A model's final hidden states at a batch's completion tokens, and the numbers they give.

Scoring needs log pi(token) at completion tokens alone, yet a plain `model(...).logits` projects EVERY position
(prompt, padding) onto the whole vocabulary: for a 49k-word vocabulary that projection is a large share of a training
step. So `CompletionStates` keeps only the final hidden states [K, H] of the K positions that predict a completion
token, with the output head that turns them into logits; the head is applied a chunk of rows at a time, each chunk
checkpointed when gradients are needed, so that backward never holds more than one chunk's [rows, V] logits.

From these states come the per-sequence log-probabilities (DPO, SFT, the reward model's LM term, the implicit reward
of the evaluation) and the exact KL between two models over the vocabulary (DPO's `kl` metric, the evaluation's drift
from the base model). Everything is computed in fp32 at least (fp64 stays fp64), from log-softmax, so large logits
never overflow. `prefalign.scoring.run` runs a model to get the states.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from ..data.collate import CompletionIndex

# Rows of [rows, V] logits built at a time: 256 x 49k fp32 is 50 MB, large enough to keep the matmul efficient.
HEAD_CHUNK = 256


class SequenceLogps(NamedTuple):
    """Per-sequence sum of completion-token log-probabilities and the number of tokens that sum covers."""

    sum_logps: Tensor
    num_tokens: Tensor


@dataclass
class CompletionStates:
    """A model's final hidden states at the completion-predicting positions of a batch, with the head that turns them
    into logits (`torch.nn.Identity` when `hidden` already holds logits: see `prefalign.scoring.run`)."""

    hidden: Tensor  # [K, H]
    head: torch.nn.Module
    index: CompletionIndex

    def __post_init__(self) -> None:
        if self.hidden.shape[0] != self.index.targets.shape[0]:
            raise ValueError(
                f"{self.hidden.shape[0]} hidden states for {self.index.targets.shape[0]} completion tokens"
            )

    def token_logps(self, chunk_size: int = HEAD_CHUNK) -> Tensor:
        """[K] log-probabilities of the completion tokens (fp32 at least); differentiable through states and head."""
        _check_chunk_size(chunk_size)
        pieces = []
        for start in range(0, len(self.hidden), chunk_size):
            hidden = self.hidden[start : start + chunk_size]
            targets = self.index.targets[start : start + chunk_size]
            if torch.is_grad_enabled() and hidden.requires_grad and _is_frozen_linear(self.head):
                # LoRA: nothing in the head trains, so the forward pass can finish its gradient work (below).
                pieces.append(FrozenHeadLogps.apply(hidden, self.head.weight, self.head.bias, targets))
            elif torch.is_grad_enabled() and (hidden.requires_grad or _has_trainable_params(self.head)):
                # Backward recomputes this chunk's logits instead of keeping them: one chunk of [rows, V] at a time.
                pieces.append(
                    checkpoint(label_logps, self.head, hidden, targets, use_reentrant=False, preserve_rng_state=False)
                )
            else:
                pieces.append(label_logps(self.head, hidden, targets))
        return torch.cat(pieces) if pieces else self.hidden.new_zeros(0, dtype=_compute_dtype(self.hidden))

    def sequence_logps(self, chunk_size: int = HEAD_CHUNK) -> SequenceLogps:
        """Per-sequence sums of `token_logps` [num_sequences], and the token counts [num_sequences] (int64) they
        cover; divide one by the other for length-averaged log-probs."""
        return SequenceLogps(self.per_sequence(self.token_logps(chunk_size)), self.tokens_per_sequence())

    def per_sequence(self, per_token: Tensor) -> Tensor:
        """[num_sequences] sums of a [K] per-token tensor."""
        index = self.index
        totals = per_token.new_zeros(index.num_sequences)
        return totals.index_add(0, index.sequences, per_token)

    def tokens_per_sequence(self) -> Tensor:
        return torch.bincount(self.index.sequences, minlength=self.index.num_sequences)


def _compute_dtype(x: Tensor) -> torch.dtype:
    """fp32 for half-precision inputs; fp64 stays fp64 (tests use it to check values by hand to 1e-12)."""
    return torch.promote_types(x.dtype, torch.float32)


def _check_chunk_size(chunk_size: int) -> None:
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive number of rows, got {chunk_size}")


def _has_trainable_params(module: torch.nn.Module) -> bool:
    return any(p.requires_grad for p in module.parameters())


def _is_frozen_linear(head: torch.nn.Module) -> bool:
    return type(head) is torch.nn.Linear and not _has_trainable_params(head)


class FrozenHeadLogps(torch.autograd.Function):
    """`label_logps` through a frozen linear head (LoRA leaves the output head untrained), with its whole gradient
    work done in the forward pass.

    With z = W h + b and p = softmax(z), the gradient of log p[y] with respect to h is J = W[y] - p W: it does not
    depend on the loss, so the forward pass computes it while it holds p and saves only J [rows, H]. Backward is then
    g * J. The checkpointed path instead builds the [rows, V] logits a second time in backward and multiplies by W
    there: one vocabulary-sized matmul per chunk more.
    """

    @staticmethod
    def forward(ctx: Any, hidden: Tensor, weight: Tensor, bias: Tensor | None, targets: Tensor) -> Tensor:
        logits = torch.nn.functional.linear(hidden, weight, bias)
        logits = logits.to(_compute_dtype(logits))
        target_logits = logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
        exps, sums, logsumexp = _shifted_exps_(logits)
        logps = target_logits - logsumexp.squeeze(-1)
        # p W = (exp(z - max) W) / sum: the division on [rows, H] rather than on [rows, V].
        expected = torch.nn.functional.linear(exps.to(weight.dtype), weight.t()).to(exps.dtype).div_(sums)
        jacobian = weight[targets].to(exps.dtype) - expected
        ctx.save_for_backward(jacobian)
        ctx.hidden_dtype = hidden.dtype
        return logps

    @staticmethod
    def backward(ctx: Any, grad_logps: Tensor) -> tuple[Tensor, None, None, None]:
        (jacobian,) = ctx.saved_tensors
        grad_hidden = grad_logps.unsqueeze(-1).to(jacobian.dtype) * jacobian
        return grad_hidden.to(ctx.hidden_dtype), None, None, None


def _log_softmax(head: torch.nn.Module, hidden: Tensor) -> Tensor:
    logits = head(hidden)
    return torch.log_softmax(logits.to(_compute_dtype(logits)), dim=-1)


def label_logps(head: torch.nn.Module, hidden: Tensor, targets: Tensor) -> Tensor:
    """log softmax(head(hidden))[targets] per row, without building the full log-softmax: the target's logit minus
    the logsumexp over the vocabulary."""
    logits = head(hidden)
    logits = logits.to(_compute_dtype(logits))
    target_logits = logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    shares_input = logits.untyped_storage().data_ptr() == hidden.untyped_storage().data_ptr()  # Identity head
    if shares_input or (torch.is_grad_enabled() and logits.requires_grad):  # keep the caller's / autograd's tensor
        return target_logits - torch.logsumexp(logits, dim=-1)
    return target_logits - _shifted_exps_(logits)[2].squeeze(-1)


def _shifted_exps_(logits: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """(exp(logits - max), the sum of that, the logsumexp), per row of `logits` [rows, V], which it overwrites.

    `torch.logsumexp` computes the same sum but allocates a fresh [rows, V] tensor for logits - max: 50 MB a chunk,
    above glibc's mmap threshold, so every chunk pays for new pages. In place, that cost goes."""
    top = logits.amax(dim=-1, keepdim=True)
    top = torch.where(top.isfinite(), top, torch.zeros_like(top))  # a row of -inf: sum 0, logsumexp -inf
    exps = logits.sub_(top).exp_()
    sums = exps.sum(dim=-1, keepdim=True)
    return exps, sums, top + sums.log()


def completion_kl(policy: CompletionStates, reference: CompletionStates, chunk_size: int = HEAD_CHUNK) -> Tensor:
    """Exact KL(policy || reference) over the vocabulary, summed over each sequence's completion positions: [S].

        KL_t = sum_v pi(v | t) (log pi(v | t) - log ref(v | t))

    the full-vocabulary divergence, not the single-sample estimate log pi(y) - log ref(y): it has no sampling
    variance, which makes it the right number to monitor drift from the reference. Exactly 0 for equal states.
    No gradient (a metric). Both states must come from the same batch layout, so their rows line up; the reference's
    may live on another device, and the result is on the policy's.
    """
    _check_chunk_size(chunk_size)
    if policy.hidden.shape[0] != reference.hidden.shape[0]:
        raise ValueError(
            f"policy and reference scored {policy.hidden.shape[0]} and {reference.hidden.shape[0]} "
            "positions; they must score the same batch"
        )
    pieces = []
    with torch.no_grad():
        for start in range(0, len(policy.hidden), chunk_size):
            stop = start + chunk_size
            policy_logp = _log_softmax(policy.head, policy.hidden[start:stop])
            ref_logp = _log_softmax(reference.head, reference.hidden[start:stop]).to(policy_logp.device)
            pieces.append((policy_logp.exp() * (policy_logp - ref_logp)).sum(-1))
        per_token = torch.cat(pieces) if pieces else policy.hidden.new_zeros(0, dtype=_compute_dtype(policy.hidden))
        return policy.per_sequence(per_token)
