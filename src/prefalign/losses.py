"""The loss functions of prefalign's trainers (SFT, reward model, DPO), as small pure functions on tensors.

No model code lives here: a trainer runs the model, then hands logits or per-sequence log-probabilities to these
functions. Everything is computed in (at least) fp32 whatever the input dtype, and with log-space primitives
(`F.logsigmoid`, `logsumexp`, `log_softmax`) so that large logits or log-ratios never overflow.

Alignment convention shared by every function that takes logits: `logits[:, t]` predicts `labels[:, t]`. The caller has
already done the causal shift (labels = input_ids[:, 1:], logits = model(...).logits[:, :-1]); positions whose label is
`ignore_index` (prompt, padding) are excluded from every sum and count.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Literal, NamedTuple, get_args

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.checkpoint import checkpoint

IGNORE_INDEX = -100

DPOLossType = Literal["sigmoid", "cdpo", "robust", "ipo", "hinge"]
DPO_LOSS_TYPES: tuple[str, ...] = get_args(DPOLossType)
_SMOOTHED_LOSS_TYPES = ("cdpo", "robust")

KLReduction = Literal["mean", "sum_per_sequence"]
KL_REDUCTIONS: tuple[str, ...] = get_args(KLReduction)


class DPOOutput(NamedTuple):
    """Per-pair DPO losses (not reduced) and the implicit rewards beta * (log pi - log ref), detached."""

    losses: Tensor
    chosen_rewards: Tensor
    rejected_rewards: Tensor


class SequenceLogps(NamedTuple):
    """Per-sequence sum of label log-probabilities and the number of tokens that sum covers."""

    sum_logps: Tensor
    num_tokens: Tensor


def _compute_dtype(x: Tensor) -> torch.dtype:
    """fp32 for half-precision inputs; fp64 stays fp64 (tests use it to check values to 1e-12)."""
    return torch.promote_types(x.dtype, torch.float32)


def check_dpo_args(loss_type: str, beta: float, label_smoothing: float) -> None:
    """Raise ValueError if the DPO hyper-parameters are invalid.

    Public so that a trainer can validate its config before it spends a minute loading a model.
    """
    if loss_type not in DPO_LOSS_TYPES:
        raise ValueError(f"unknown DPO loss_type {loss_type!r}; choose one of {', '.join(DPO_LOSS_TYPES)}")
    if not (math.isfinite(beta) and beta > 0):
        raise ValueError(f"DPO beta must be a finite number > 0, got {beta}")
    if loss_type in _SMOOTHED_LOSS_TYPES:
        if not (0.0 <= label_smoothing < 0.5):
            raise ValueError(
                f"label_smoothing for loss_type {loss_type!r} must satisfy 0 <= label_smoothing < 0.5, "
                f"got {label_smoothing}"
            )
    elif label_smoothing != 0.0:
        # Silently ignoring it would let a user believe they trained with label noise correction.
        raise ValueError(
            f"label_smoothing={label_smoothing} has no effect with loss_type {loss_type!r}; "
            f"it applies only to {' and '.join(_SMOOTHED_LOSS_TYPES)}"
        )


def dpo_loss(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    ref_chosen_logps: Tensor,
    ref_rejected_logps: Tensor,
    *,
    beta: float = 0.1,
    loss_type: DPOLossType = "sigmoid",
    label_smoothing: float = 0.0,
) -> DPOOutput:
    """Direct-preference losses for a batch of (chosen y_w, rejected y_l) pairs, one loss per pair.

    Inputs are per-sequence log-probabilities log pi(y|x) of the response tokens, all of the same shape (usually [B]).
    With the log-ratio margin

        h = (log pi(y_w) - log ref(y_w)) - (log pi(y_l) - log ref(y_l))

    and eps = label_smoothing, the loss types are:

    - "sigmoid" (DPO): -log sigma(beta h).
      Rafailov, Sharma, Mitchell, Ermon, Manning, Finn 2023, "Direct Preference Optimization: Your Language Model is
      Secretly a Reward Model", arXiv:2305.18290.
    - "cdpo" (conservative DPO): -(1 - eps) log sigma(beta h) - eps log sigma(-beta h), i.e. DPO against targets
      smoothed as if each label were flipped with probability eps. Mitchell 2023, "A note on DPO with noisy
      preferences & relationship to IPO" (a technical note, no arXiv id). Bounded below by a positive constant, so
      it stops pushing h once sigma(beta h) = 1 - eps.
    - "robust" (robust DPO): [-(1 - eps) log sigma(beta h) + eps log sigma(-beta h)] / (1 - 2 eps), the unbiased
      estimator of the clean DPO loss under labels flipped with probability eps: its expectation over the flip equals
      -log sigma(beta h). Chowdhury, Kini, Natarajan 2024, "Provably Robust DPO: Aligning Language Models with Noisy
      Feedback", arXiv:2403.00409. Unlike cdpo its value can be negative (it is unbounded below as h grows).
    - "ipo": (h - 1 / (2 beta))^2, with beta in the role of the paper's tau. Azar, Rowland, Piot, Guo, Calandriello,
      Valko, Munos 2023, "A General Theoretical Paradigm to Understand Learning from Human Preferences",
      arXiv:2310.12036. Note on `average_log_prob`: IPO is commonly run on length-averaged log-probs (sum_logps /
      num_tokens from `sequence_logps`), which makes the target margin 1/(2 beta) independent of response length.
      This function does not decide: it uses whatever log-probs the caller passes, for every loss type.
    - "hinge": max(0, 1 - beta h), the hinge loss of SLiC (Zhao, Joshi, Liu, Khalman, Saleh, Liu 2023, "SLiC-HF:
      Sequence Likelihood Calibration with Human Feedback", arXiv:2305.10425) applied to reference-normalised
      log-probs as in RSO's "hinge-norm" (Liu et al. 2023, arXiv:2309.06657); beta scales the margin to 1/beta.

    `label_smoothing` must be in [0, 0.5) for "cdpo" and "robust" (eps = 0 reduces both to "sigmoid") and 0 for the
    others. Invalid arguments raise ValueError naming the valid choices.

    Returns DPOOutput(losses, chosen_rewards, rejected_rewards): per-pair losses (reduce them as you like) and the
    implicit rewards beta (log pi(y) - log ref(y)), detached, for logging reward margins and accuracies.
    """
    check_dpo_args(loss_type, beta, label_smoothing)
    logps = (policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps)
    shapes = {tuple(t.shape) for t in logps}
    if len(shapes) != 1:
        # Broadcasting a [B] against a [B, 1] would silently build a [B, B] loss.
        raise ValueError(f"DPO log-prob tensors must share one shape, got {[tuple(t.shape) for t in logps]}")
    dtype = _compute_dtype(policy_chosen_logps)
    pc, pr, rc, rr = (t.to(dtype) for t in logps)

    chosen_logratio = pc - rc
    rejected_logratio = pr - rr
    h = chosen_logratio - rejected_logratio
    eps = label_smoothing

    if loss_type == "sigmoid":
        losses = -F.logsigmoid(beta * h)
    elif loss_type == "cdpo":
        losses = -(1 - eps) * F.logsigmoid(beta * h) - eps * F.logsigmoid(-beta * h)
    elif loss_type == "robust":
        losses = (-(1 - eps) * F.logsigmoid(beta * h) + eps * F.logsigmoid(-beta * h)) / (1 - 2 * eps)
    elif loss_type == "ipo":
        losses = (h - 1 / (2 * beta)) ** 2
    else:  # "hinge"; check_dpo_args has ruled out anything else
        losses = torch.relu(1 - beta * h)

    return DPOOutput(losses, beta * chosen_logratio.detach(), beta * rejected_logratio.detach())


def reward_model_loss(chosen_rewards: Tensor, rejected_rewards: Tensor, margin: Tensor | float | None = None) -> Tensor:
    """Bradley-Terry pairwise loss of a reward model, one value per pair (not reduced).

        loss = -log sigma(r(x, y_c) - r(x, y_r) - m)

    i.e. the negative log-likelihood that the chosen response wins under a Bradley-Terry model of the scalar rewards.
    Ouyang et al. 2022, "Training language models to follow instructions with human feedback" (InstructGPT),
    arXiv:2203.02155. The optional margin m (a float, or a tensor broadcastable to the rewards, e.g. larger for pairs
    rated "significantly better") demands that the chosen reward win by at least m, as in Touvron et al. 2023,
    "Llama 2: Open Foundation and Fine-Tuned Chat Models", arXiv:2307.09288. m = None is m = 0.
    """
    if chosen_rewards.shape != rejected_rewards.shape:
        raise ValueError(
            f"chosen and rejected rewards must share one shape, got {tuple(chosen_rewards.shape)} "
            f"and {tuple(rejected_rewards.shape)}"
        )
    dtype = _compute_dtype(chosen_rewards)
    diff = chosen_rewards.to(dtype) - rejected_rewards.to(dtype)
    if margin is not None:
        diff = diff - (margin.to(dtype) if isinstance(margin, Tensor) else margin)
    return -F.logsigmoid(diff)


def _check_logits_labels(logits: Tensor, labels: Tensor, labels_name: str = "labels") -> None:
    if logits.dim() != 3 or labels.shape != logits.shape[:2]:
        raise ValueError(
            f"expected logits [B, T, V] and {labels_name} [B, T], got {tuple(logits.shape)} and {tuple(labels.shape)}"
        )


def _check_chunk_size(chunk_size: int | None) -> None:
    if chunk_size is not None and chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive number of time steps or None, got {chunk_size}")


def _masked_time_sum(
    token_fn: Callable[..., Tensor],
    inputs: tuple[Tensor, ...],
    mask: Tensor,
    chunk_size: int | None,
    dtype: torch.dtype,
) -> Tensor:
    """Sum over t of token_fn(inputs[:, t]) at positions where mask[:, t], per sequence: a [B] tensor.

    `token_fn(*input_chunks, mask_chunk)` returns the masked per-sequence sum over one time chunk. With a chunk_size,
    each chunk runs under activation checkpointing: autograd then keeps only the (original-dtype) input slices instead
    of the chunk's fp32 upcast and softmax, and recomputes them chunk by chunk in backward, so neither pass ever holds
    a [B, T, V] fp32 tensor.
    """
    batch, steps = mask.shape
    total = torch.zeros(batch, dtype=dtype, device=mask.device)
    step = steps if chunk_size is None else chunk_size
    for start in range(0, steps, step):
        chunk = tuple(x[:, start : start + step] for x in inputs)
        chunk_mask = mask[:, start : start + step]
        needs_grad = torch.is_grad_enabled() and any(x.requires_grad for x in chunk)
        if chunk_size is not None and needs_grad:
            total = total + checkpoint(token_fn, *chunk, chunk_mask, use_reentrant=False, preserve_rng_state=False)
        else:
            total = total + token_fn(*chunk, chunk_mask)
    return total


def sequence_logps(
    logits: Tensor, labels: Tensor, ignore_index: int = IGNORE_INDEX, *, chunk_size: int | None = None
) -> SequenceLogps:
    """Per-sequence log-probability of the labels: sum_t log softmax(logits[b, t])[labels[b, t]] over unmasked t.

    logits [B, T, V] and labels [B, T] are aligned (logits[:, t] predicts labels[:, t]; see the module docstring);
    positions with label == ignore_index are excluded. Each log-prob is computed in fp32 as the gathered logit minus
    logsumexp over the vocabulary, so the full log_softmax is never built. `chunk_size` bounds the work to that many
    time steps at a time (and checkpoints each chunk when gradients are needed), trading a little recomputation for
    memory; the result is the same up to float summation order.

    Returns SequenceLogps(sum_logps [B], num_tokens [B] int64). Divide one by the other for length-averaged log-probs.
    Labels other than ignore_index must lie in [0, V).
    """
    _check_logits_labels(logits, labels)
    _check_chunk_size(chunk_size)
    dtype = _compute_dtype(logits)
    mask = labels != ignore_index

    def chunk_label_logps(chunk_logits: Tensor, chunk_labels: Tensor, chunk_mask: Tensor) -> Tensor:
        chunk_logits = chunk_logits.to(dtype)
        # Masked labels (e.g. -100) are not valid indices; gather index 0 there and drop it below.
        safe_labels = chunk_labels.masked_fill(~chunk_mask, 0).unsqueeze(-1)
        picked = chunk_logits.gather(-1, safe_labels).squeeze(-1)
        token_logps = picked - torch.logsumexp(chunk_logits, dim=-1)
        return torch.where(chunk_mask, token_logps, 0.0).sum(-1)

    sum_logps = _masked_time_sum(chunk_label_logps, (logits, labels), mask, chunk_size, dtype)
    return SequenceLogps(sum_logps, mask.sum(-1))


def sft_nll_loss(
    logits: Tensor, labels: Tensor, ignore_index: int = IGNORE_INDEX, *, chunk_size: int | None = None
) -> Tensor:
    """Supervised fine-tuning loss: the mean next-token negative log-likelihood over response tokens (a scalar).

        loss = -(1 / N) sum_{b, t : labels[b, t] != ignore_index} log softmax(logits[b, t])[labels[b, t]]

    where N counts the unmasked tokens of the whole batch (a token mean, not a mean of per-sequence means, so long
    responses weigh in proportion to their length). Same alignment convention and `chunk_size` as `sequence_logps`.
    For gradient accumulation with an exact token mean across micro-batches, sum `sequence_logps` yourself instead.

    Raises ValueError when no position is unmasked: the mean is undefined, and such a batch means the data pipeline
    let through examples whose response was entirely masked or truncated away.
    """
    sum_logps, num_tokens = sequence_logps(logits, labels, ignore_index, chunk_size=chunk_size)
    total_tokens = int(num_tokens.sum())
    if total_tokens == 0:
        raise ValueError(f"sft_nll_loss: every label is ignore_index ({ignore_index}); there are no tokens to average")
    return -sum_logps.sum() / total_tokens


def token_kl(
    policy_logits: Tensor,
    ref_logits: Tensor,
    mask: Tensor,
    *,
    reduction: KLReduction = "mean",
    chunk_size: int | None = None,
) -> Tensor:
    """Exact per-token KL(pi || ref) over the vocabulary at the positions where mask is nonzero.

        KL_t = sum_v pi(v | t) (log pi(v | t) - log ref(v | t)),   log pi = log_softmax(policy_logits[:, t])

    computed in fp32 from log_softmax, so it is exactly 0 for identical logits and >= 0 up to rounding otherwise. This
    is the full-vocabulary divergence, not the single-sample estimate log pi(y) - log ref(y) used in PPO-style
    penalties: it has no sampling variance, which makes it the right number to monitor drift from the reference.

    policy_logits and ref_logits are [B, T, V] with the same vocabulary, mask is [B, T] (bool or 0/1, e.g.
    labels != ignore_index) and logits must be finite. reduction "mean" returns the scalar mean over masked-in
    positions (ValueError if there are none); "sum_per_sequence" returns a [B] tensor, the KL summed over each
    sequence's positions, which is the KL between the two models' distributions over that sequence's tokens given
    its prefix. `chunk_size` works as in `sequence_logps`.
    """
    if reduction not in KL_REDUCTIONS:
        raise ValueError(f"unknown token_kl reduction {reduction!r}; choose one of {', '.join(KL_REDUCTIONS)}")
    if policy_logits.shape != ref_logits.shape:
        raise ValueError(
            f"policy and reference logits must share one shape, got {tuple(policy_logits.shape)} "
            f"and {tuple(ref_logits.shape)}"
        )
    _check_logits_labels(policy_logits, mask, labels_name="mask")
    _check_chunk_size(chunk_size)
    dtype = torch.promote_types(_compute_dtype(policy_logits), _compute_dtype(ref_logits))
    mask = mask != 0

    def chunk_kl(chunk_policy: Tensor, chunk_ref: Tensor, chunk_mask: Tensor) -> Tensor:
        policy_logp = F.log_softmax(chunk_policy.to(dtype), dim=-1)
        ref_logp = F.log_softmax(chunk_ref.to(dtype), dim=-1)
        kl = (policy_logp.exp() * (policy_logp - ref_logp)).sum(-1)
        return torch.where(chunk_mask, kl, 0.0).sum(-1)

    kl_per_sequence = _masked_time_sum(chunk_kl, (policy_logits, ref_logits), mask, chunk_size, dtype)
    if reduction == "sum_per_sequence":
        return kl_per_sequence
    num_positions = int(mask.sum())
    if num_positions == 0:
        raise ValueError("token_kl: the mask selects no position; the mean KL is undefined")
    return kl_per_sequence.sum() / num_positions
