"""The loss functions of prefalign's preference trainers (DPO and its variants, SimPO, ORPO, KTO, the reward model), as
small pure functions on tensors, one value per pair (or per completion for KTO), not reduced.

No model code lives here: a trainer scores its sequences with `prefalign.scoring` (per-sequence log-probabilities,
rewards), then hands those numbers to these functions; `prefalign.train.objectives.mixture` decides which numbers
(summed or per-token log-probs) each `--loss` term gets. (SFT's loss is the negative of those log-probabilities; it
needs no function of its own.) Everything is computed in (at least) fp32 whatever the input dtype, and with log-space
primitives (`F.logsigmoid`) so that large log-ratios never overflow.

Notation: for a pair (chosen y_w, rejected y_l), c = log pi(y_w) - log ref(y_w) and r = log pi(y_l) - log ref(y_l)
are the log-ratios, h = c - r the margin, sigma the logistic function.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from .scoring.preference import (
    DPO_LOSS_TYPES,
    SMOOTHED_LOSSES,
    DPOLossType,
    implicit_reward,
    logratio_margin,
)

__all__ = [
    "DPO_LOSS_TYPES",
    "DPOLossType",
    "DPOOutput",
    "apo_down_loss",
    "apo_zero_loss",
    "bco_pair_loss",
    "check_dpo_args",
    "check_loss_args",
    "dpo_loss",
    "dpop_loss",
    "exo_pair_loss",
    "kto_loss",
    "kto_reference_point",
    "nca_pair_loss",
    "orpo_loss",
    "reward_model_loss",
    "simpo_loss",
]


class DPOOutput(NamedTuple):
    """Per-pair DPO losses (not reduced) and the implicit rewards beta * (log pi - log ref), detached."""

    losses: Tensor
    chosen_rewards: Tensor
    rejected_rewards: Tensor


def _compute_dtype(x: Tensor) -> torch.dtype:
    """fp32 for half-precision inputs; fp64 stays fp64 (tests use it to check values to 1e-12)."""
    return torch.promote_types(x.dtype, torch.float32)


def check_dpo_args(loss_type: str, beta: float, label_smoothing: float) -> None:
    """Raise ValueError if the arguments of `dpo_loss` are invalid."""
    if loss_type not in DPO_LOSS_TYPES:
        raise ValueError(f"unknown DPO loss_type {loss_type!r}; choose one of {', '.join(DPO_LOSS_TYPES)}")
    check_loss_args({loss_type: 1.0}, beta, label_smoothing)


def check_loss_args(terms: Mapping[str, float], beta: float, label_smoothing: float) -> None:
    """Raise ValueError if beta or label_smoothing are invalid for a mixture of loss terms ({name: weight}).

    Public so that a trainer can validate its config before it spends a minute loading a model.
    """
    if not (math.isfinite(beta) and beta > 0):
        raise ValueError(f"DPO beta must be a finite number > 0, got {beta}")
    smoothed = [name for name in terms if name in SMOOTHED_LOSSES]
    if smoothed:
        if not (0.0 <= label_smoothing < 0.5):
            raise ValueError(
                f"label_smoothing for the {smoothed[0]} loss must satisfy 0 <= label_smoothing < 0.5, "
                f"got {label_smoothing}"
            )
    elif label_smoothing != 0.0:
        # Silently ignoring it would let a user believe they trained with label noise correction.
        raise ValueError(
            f"label_smoothing={label_smoothing} has no effect with loss {','.join(terms)!r}; "
            f"it applies only to {' and '.join(SMOOTHED_LOSSES)}"
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


def _promoted(*tensors: Tensor) -> tuple[Tensor, ...]:
    """The inputs in the compute dtype, after checking that they share one shape (a [B] against a [B, 1] would
    silently broadcast to [B, B])."""
    shapes = [tuple(t.shape) for t in tensors]
    if len(set(shapes)) != 1:
        raise ValueError(f"loss inputs must share one shape, got {shapes}")
    dtype = _compute_dtype(tensors[0])
    return tuple(t.to(dtype) for t in tensors)


def dpop_loss(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    ref_chosen_logps: Tensor,
    ref_rejected_logps: Tensor,
    *,
    beta: float,
    lam: float,
) -> Tensor:
    """DPO-Positive: -log sigma(beta (h - lam * max(0, log ref(y_w) - log pi(y_w)))).

    The penalty is zero while the policy keeps the chosen response at least as likely as the reference does, and
    grows as soon as the chosen log-prob falls below it: plain DPO can raise h by lowering both log-probs, which this
    forbids. Pal, Karkhanis, Dooley, Roberts, Naidu, White 2024, "Smaug: Fixing Failure Modes of Preference
    Optimisation with DPO-Positive", arXiv:2402.13228 (lambda 5 to 500 there; 50 is their usual choice).
    """
    pc, pr, rc, rr = _promoted(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps)
    penalty = torch.relu(rc - pc)
    return -F.logsigmoid(beta * (logratio_margin(pc, pr, rc, rr) - lam * penalty))


def apo_zero_loss(chosen_logratios: Tensor, rejected_logratios: Tensor, *, beta: float) -> Tensor:
    """APO-zero: (1 - sigma(beta c)) + sigma(beta r): raise the chosen likelihood and lower the rejected one, each
    against the reference (for data whose chosen answers are better than the model's own).
    D'Oosterlinck, Xu, Develder, Demeester, Singh, Potts, Kiela, Mehri 2024, "Anchored Preference Optimization and
    Contrastive Revisions", arXiv:2408.06266, eq. 7, with TRL's constant 1 (the loss is 1 at c = r = 0).
    """
    c, r = _promoted(chosen_logratios, rejected_logratios)
    return (1 - torch.sigmoid(beta * c)) + torch.sigmoid(beta * r)


def apo_down_loss(chosen_logratios: Tensor, rejected_logratios: Tensor, *, beta: float) -> Tensor:
    """APO-down: sigma(beta c) + (1 - sigma(beta (c - r))): lower both likelihoods, the rejected one more (for data
    whose chosen answers are worse than the model's own). D'Oosterlinck et al. 2024, arXiv:2408.06266, eq. 8, with
    TRL's constant 1.
    """
    c, r = _promoted(chosen_logratios, rejected_logratios)
    return torch.sigmoid(beta * c) + (1 - torch.sigmoid(beta * (c - r)))


def bco_pair_loss(chosen_rewards: Tensor, rejected_rewards: Tensor, delta: Tensor | float) -> Tensor:
    """BCO on pairs: -log sigma(beta c - delta) - log sigma(-(beta r - delta)), with the rewards beta c and beta r
    passed in.

    A binary classifier of "chosen" vs "rejected" on the implicit reward, shifted by the reward baseline delta.
    Jung, Park, Jang, Kim, Cho 2024, "Binary Classifier Optimization for Large Language Model Alignment",
    arXiv:2404.04656. The paper's delta is a moving average of the rewards; the caller picks it (prefalign's trainer
    uses the batch's mean reward, detached, so the loss depends on no state a resumed run would lack).
    """
    cr, rr = _promoted(chosen_rewards, rejected_rewards)
    return -F.logsigmoid(cr - delta) - F.logsigmoid(-(rr - delta))


def exo_pair_loss(
    chosen_logratios: Tensor, rejected_logratios: Tensor, *, beta: float, epsilon: float = 1e-3
) -> Tensor:
    """EXO on pairs: KL(p || q) from the model's preference p = (sigma(beta h), sigma(-beta h)) to the smoothed label
    q = (1 - epsilon, epsilon):

        sigma(beta h) (log sigma(beta h) - log(1 - epsilon)) + sigma(-beta h) (log sigma(-beta h) - log epsilon)

    The reverse KL of DPO's forward one: it seeks the mode instead of covering every answer. Ji, Zhou, Ke, Lu, Zhu,
    Wang, Zheng, Huang 2024, "Towards Efficient Exact Optimization of Language Model Alignment", arXiv:2402.00856
    (epsilon 1e-3 as there and in TRL).
    """
    c, r = _promoted(chosen_logratios, rejected_logratios)
    z = beta * (c - r)
    return torch.sigmoid(z) * (F.logsigmoid(z) - math.log1p(-epsilon)) + torch.sigmoid(-z) * (
        F.logsigmoid(-z) - math.log(epsilon)
    )


def nca_pair_loss(chosen_logratios: Tensor, rejected_logratios: Tensor, *, beta: float) -> Tensor:
    """NCA on pairs: -log sigma(beta c) - 1/2 log sigma(-beta c) - 1/2 log sigma(-beta r).

    Noise-contrastive alignment judges each response's own reward, not only their difference, so the chosen
    likelihood is pushed up rather than merely above the rejected one. Chen, Lu, Sun, Wang, Zhu 2024, "Noise
    Contrastive Alignment of Language Models with Explicit Rewards", arXiv:2402.05369.
    """
    c, r = _promoted(chosen_logratios, rejected_logratios)
    return -F.logsigmoid(beta * c) - 0.5 * F.logsigmoid(-beta * c) - 0.5 * F.logsigmoid(-beta * r)


def simpo_loss(chosen_avg_logps: Tensor, rejected_avg_logps: Tensor, *, beta: float, gamma: float) -> Tensor:
    """SimPO: -log sigma(beta (avg log pi(y_w) - avg log pi(y_l)) - gamma), on per-token (length-averaged) log-probs.

    Reference-free: the implicit reward is beta times the average log-prob, and gamma is the target margin between
    the rewards. Meng, Xia, Chen 2024, "SimPO: Simple Preference Optimization with a Reference-Free Reward",
    arXiv:2405.14734 (beta 2 to 10, gamma/beta 0.3 to 0.5 there).
    """
    c, r = _promoted(chosen_avg_logps, rejected_avg_logps)
    return -F.logsigmoid(beta * (c - r) - gamma)


class ORPOOutput(NamedTuple):
    """Per-pair ORPO losses (not reduced) and the log odds ratio log odds(y_w) - log odds(y_l), detached."""

    losses: Tensor
    log_odds_ratio: Tensor


def _log_odds(avg_logps: Tensor) -> Tensor:
    """log(p / (1 - p)) for p = exp(avg_logps), with log(1 - p) computed without cancellation."""
    # A per-token probability of 1 would make the odds infinite: cap it just below.
    x = avg_logps.clamp(max=-1e-6)
    log1m_p = torch.where(x > -math.log(2), torch.log(-torch.expm1(x)), torch.log1p(-torch.exp(x)))
    return x - log1m_p


def orpo_loss(chosen_avg_logps: Tensor, rejected_avg_logps: Tensor, *, beta: float) -> ORPOOutput:
    """ORPO: -avg log pi(y_w) - beta log sigma(log odds(y_w) - log odds(y_l)), with odds(y) = p / (1 - p) for the
    per-token probability p = exp(avg log pi(y)).

    Reference-free and SFT in one: the first term is the NLL of the chosen response per token, the second pushes the
    odds of chosen over rejected; beta is the paper's lambda. Hong, Lee, Thorne 2024, "ORPO: Monolithic Preference
    Optimization without Reference Model", arXiv:2403.07691 (lambda 0.1 to 1 there).
    """
    c, r = _promoted(chosen_avg_logps, rejected_avg_logps)
    log_odds_ratio = _log_odds(c) - _log_odds(r)
    return ORPOOutput(-c - beta * F.logsigmoid(log_odds_ratio), log_odds_ratio.detach())


def kto_reference_point(kl_logratios: Tensor) -> Tensor:
    """KTO's reference point z_0 = max(0, mean_i log pi(y'_i|x_i) / ref(y'_i|x_i)), detached.

    The estimate of KL(pi || ref) of Ethayarajh et al. (2024, section 4.1): the log-ratios of MISMATCHED pairs
    (x_i, y'_i), each prompt with the completion of another example of the batch, so that the estimate does not
    reward the behaviour being trained. No gradient flows through it.
    """
    (kl,) = _promoted(kl_logratios)
    return kl.mean().clamp(min=0).detach()


def kto_loss(logratios: Tensor, desirable: Tensor, reference_point: Tensor | float, *, beta: float) -> Tensor:
    """KTO: 1 - sigma(beta (rho - z_0)) for a desirable completion, 1 - sigma(beta (z_0 - rho)) for an undesirable
    one, where rho = log pi(y|x) - log ref(y|x) and z_0 is `kto_reference_point`.

    Kahneman-Tversky optimisation learns from single completions labelled good or bad: each is valued against the
    reference point, with a sigmoid value function that saturates. Weights lambda_D = lambda_U = 1 (the paper's
    default for balanced data). Ethayarajh, Xu, Muennighoff, Jurafsky, Kiela 2024, "KTO: Model Alignment as Prospect
    Theoretic Optimization", arXiv:2402.01306. Pairs are passed as their two completions, chosen desirable and
    rejected undesirable.
    """
    (rho,) = _promoted(logratios)
    if desirable.shape != rho.shape:
        raise ValueError(f"KTO labels have shape {tuple(desirable.shape)}, the log-ratios {tuple(rho.shape)}")
    return torch.where(
        desirable.bool(),
        1 - torch.sigmoid(beta * (rho - reference_point)),
        1 - torch.sigmoid(beta * (reference_point - rho)),
    )
