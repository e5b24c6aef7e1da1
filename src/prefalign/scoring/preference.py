"""What preference training, evaluation and the pair tools agree on, for floats and tensors alike (no torch here).

- The implicit reward of DPO (Rafailov et al. 2023, arXiv:2305.18290): r(x, y) = beta * (log pi(y|x) - log ref(y|x)),
  and the margin of a pair: r(chosen) - r(rejected), computed as beta * (chosen log-ratio - rejected log-ratio).
- A pair's outcome for an accuracy: 1 when its margin (chosen score minus rejected score, any scorer) is positive,
  0.5 when it is exactly 0, and 0 when negative. A tie counts half, so a scorer that cannot tell answers apart (a
  policy still equal to its reference, a reward head of zeros) scores exactly 0.5, chance, not 0. Every
  `rewards/accuracies` and every held-out accuracy is the mean of these outcomes.
- The names of the preference losses and the `--loss` mixture syntax, kept torch-free so that building the command
  line does not load torch. This is the one list of loss names: `prefalign.losses`, the DPO objective and `--help`
  read it from here.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Literal, TypeVar, get_args

if TYPE_CHECKING:
    from torch import Tensor

# Functions of the log-ratio margin alone, computed by `prefalign.losses.dpo_loss`.
DPOLossType = Literal["sigmoid", "cdpo", "robust", "ipo", "hinge"]
DPO_LOSS_TYPES: tuple[str, ...] = get_args(DPOLossType)
# Every term `--loss` accepts: the ones above, the other pair losses (with a reference, then without one), KTO (single
# completions labelled desirable or not) and `sft` (the NLL of the chosen response per token).
LossName = Literal[
    DPOLossType,
    "sigmoid_norm",
    "dpop",
    "apo_zero",
    "apo_down",
    "bco_pair",
    "exo_pair",
    "nca_pair",
    "simpo",
    "orpo",
    "kto",
    "sft",
]
LOSS_NAMES: tuple[str, ...] = get_args(LossName)
# Terms that need no reference model: a mixture made of these alone builds none and computes no reference log-probs.
REFERENCE_FREE_LOSSES: tuple[str, ...] = ("simpo", "orpo", "sft")
# Terms with a label-smoothing parameter (--label-smoothing).
SMOOTHED_LOSSES: tuple[str, ...] = ("cdpo", "robust")

Number = TypeVar("Number", float, "Tensor")


def parse_loss_mixture(text: str) -> dict[str, float]:
    """`--loss` text as {term: weight}, in the order given: "simpo" is {"simpo": 1.0}, and
    "sigmoid:1.0,bco_pair:0.2,sft:1.0" three weighted terms. Raises ValueError with a one-line reason."""
    terms: dict[str, float] = {}
    for part in text.split(","):
        name, colon, weight_text = part.strip().partition(":")
        if name not in LOSS_NAMES:
            raise ValueError(f"--loss {text!r}: unknown term {name!r}; choose from {', '.join(LOSS_NAMES)}")
        if name in terms:
            raise ValueError(f"--loss {text!r}: {name} appears twice")
        try:
            weight = float(weight_text) if colon else 1.0
        except ValueError:
            raise ValueError(f"--loss {text!r}: the weight of {name} is {weight_text!r}, not a number") from None
        if not (math.isfinite(weight) and weight > 0):
            raise ValueError(f"--loss {text!r}: the weight of {name} must be a number > 0, got {weight_text}")
        terms[name] = weight
    if "kto" in terms and len(terms) > 1:
        raise ValueError(f"--loss {text!r}: kto trains on single labelled completions and mixes with no pair term")
    return terms


def is_reference_free(terms: dict[str, float]) -> bool:
    """Whether every term of a mixture is computed without a reference model."""
    return all(name in REFERENCE_FREE_LOSSES for name in terms)


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
