"""The loss functions of prefalign's preference trainers (DPO and its variants, the reward model), as small pure
functions on tensors.

No model code lives here: a trainer scores its sequences with `prefalign.scoring` (per-sequence log-probabilities,
rewards), then hands those numbers to these functions. (SFT's loss is the negative of those log-probabilities; it
needs no function of its own.) Everything is computed in (at least) fp32 whatever the input dtype, and with log-space
primitives (`F.logsigmoid`) so that large log-ratios never overflow.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from .scoring.preference import DPO_LOSS_TYPES, DPOLossType, implicit_reward, logratio_margin

__all__ = ["DPO_LOSS_TYPES", "DPOLossType", "DPOOutput", "check_dpo_args", "dpo_loss", "reward_model_loss"]

_SMOOTHED_LOSS_TYPES = ("cdpo", "robust")


class DPOOutput(NamedTuple):
    """Per-pair DPO losses (not reduced) and the implicit rewards beta * (log pi - log ref), detached."""

    losses: Tensor
    chosen_rewards: Tensor
    rejected_rewards: Tensor


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
      num_tokens of `prefalign.scoring`'s `sequence_logps`), which makes the target margin 1/(2 beta) independent
      of response length.
      This function does not decide: it uses whatever log-probs the caller passes, for every loss type.
    - "hinge": max(0, 1 - beta h), the hinge loss of SLiC (Zhao, Joshi, Liu, Khalman, Saleh, Liu 2023, "SLiC-HF:
      Sequence Likelihood Calibration with Human Feedback", arXiv:2305.10425) applied to reference-normalised
      log-probs as in RSO's "hinge-norm" (Liu et al. 2023, arXiv:2309.06657); beta scales the margin to 1/beta.

    `label_smoothing` must be in [0, 0.5) for "cdpo" and "robust" (eps = 0 reduces both to "sigmoid") and 0 for the
    others. Invalid arguments raise ValueError naming the valid choices.

    Returns DPOOutput(losses, chosen_rewards, rejected_rewards): per-pair losses (reduce them as you like) and the
    implicit rewards beta (log pi(y) - log ref(y)) (`prefalign.scoring.preference.implicit_reward`), detached, for
    logging reward margins and accuracies.
    """
    check_dpo_args(loss_type, beta, label_smoothing)
    logps = (policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps)
    shapes = {tuple(t.shape) for t in logps}
    if len(shapes) != 1:
        # Broadcasting a [B] against a [B, 1] would silently build a [B, B] loss.
        raise ValueError(f"DPO log-prob tensors must share one shape, got {[tuple(t.shape) for t in logps]}")
    dtype = _compute_dtype(policy_chosen_logps)
    pc, pr, rc, rr = (t.to(dtype) for t in logps)

    h = logratio_margin(pc, pr, rc, rr)
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

    return DPOOutput(
        losses, implicit_reward(pc.detach(), rc.detach(), beta), implicit_reward(pr.detach(), rr.detach(), beta)
    )


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
