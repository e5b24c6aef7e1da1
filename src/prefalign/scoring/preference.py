"""What preference training, evaluation and the pair tools agree on, for floats and tensors alike (no torch here).

- The implicit reward of DPO (Rafailov et al. 2023, arXiv:2305.18290): r(x, y) = beta * (log pi(y|x) - log ref(y|x)),
  and the margin of a pair: r(chosen) - r(rejected), computed as beta * (chosen log-ratio - rejected log-ratio).
- A pair's outcome for an accuracy: 1 when its margin (chosen score minus rejected score, any scorer) is positive,
  0.5 when it is exactly 0, and 0 when negative. A tie counts half, so a scorer that cannot tell answers apart (a
  policy still equal to its reference, a reward head of zeros) scores exactly 0.5, chance, not 0. Every
  `rewards/accuracies` and every held-out accuracy is the mean of these outcomes.
- The names of the preference losses, kept torch-free so that building the command line does not load torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal, TypeVar, get_args

if TYPE_CHECKING:
    from torch import Tensor

DPOLossType = Literal["sigmoid", "cdpo", "robust", "ipo", "hinge"]
DPO_LOSS_TYPES: tuple[str, ...] = get_args(DPOLossType)

Number = TypeVar("Number", float, "Tensor")


def implicit_reward(policy_logps: Number, ref_logps: Number, beta: float) -> Number:
    """beta * (log pi(y|x) - log ref(y|x)) of sequence log-probabilities."""
    return beta * (policy_logps - ref_logps)


def logratio_margin(policy_chosen: Number, policy_rejected: Number, ref_chosen: Number, ref_rejected: Number) -> Number:
    """(log pi - log ref)(chosen) - (log pi - log ref)(rejected): the implicit-reward margin before beta scales it."""
    return (policy_chosen - ref_chosen) - (policy_rejected - ref_rejected)


def implicit_reward_margin(
    policy_chosen: Number, policy_rejected: Number, ref_chosen: Number, ref_rejected: Number, beta: float
) -> Number:
    """The implicit reward of the chosen response minus that of the rejected one. Its sign does not depend on beta."""
    return beta * logratio_margin(policy_chosen, policy_rejected, ref_chosen, ref_rejected)


def preference_margin(chosen_score: Number, rejected_score: Number) -> Number:
    """How much a scorer (a reward model, a judge's scores) prefers the chosen response: chosen minus rejected."""
    return chosen_score - rejected_score


def preference_outcome(margin: Number) -> Number:
    """1 for a positive margin, 0.5 for exactly 0 (a tie counts half), 0 for a negative one; elementwise on tensors.

    For finite floats a - b is 0 exactly when a == b, so the outcome of `preference_margin(a, b)` is that of
    comparing a with b."""
    return (margin > 0) + 0.5 * (margin == 0)
