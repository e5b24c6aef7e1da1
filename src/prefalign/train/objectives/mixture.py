"""The `--loss` mixture of the preference objective: which log-probs each term is computed on, and the weighted sum.

A term gets summed sequence log-probs, except the length-normalised ones (`LENGTH_NORMALISED_LOSSES`), which get
log-probs per completion token: IPO (its target margin 1/(2 beta) is meant for them), `sigmoid_norm` (DPO on per-token
log-probs, the length-normalised DPO of Tulu 3: Lambert et al. 2024, "Tulu 3: Pushing Frontiers in Open Language Model
Post-Training", arXiv:2411.15124), SimPO and ORPO (as their papers define them), and `sft` (the NLL of the chosen
response per token, so long and short answers weigh the same). The loss functions themselves are in
`prefalign.losses`; KTO, which scores single completions, is in `prefalign.train.objectives.kto`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, cast

import torch

from ...losses import (
    apo_down_loss,
    apo_zero_loss,
    bco_pair_loss,
    dpo_loss,
    dpop_loss,
    exo_pair_loss,
    nca_pair_loss,
    orpo_loss,
    simpo_loss,
)
from ...scoring.preference import DPO_LOSS_TYPES, SMOOTHED_LOSSES, DPOLossType, implicit_reward

if TYPE_CHECKING:
    from ..config import DPOConfig

LENGTH_NORMALISED_LOSSES = ("ipo", "sigmoid_norm", "simpo", "orpo", "sft")
# Terms that are functions of the two log-ratios (chosen, rejected) and beta alone.
_LOGRATIO_TERMS = {
    "apo_zero": apo_zero_loss,
    "apo_down": apo_down_loss,
    "exo_pair": exo_pair_loss,
    "nca_pair": nca_pair_loss,
}


@dataclass(frozen=True)
class PairLogps:
    """One batch's per-pair numbers: summed completion log-probs of the policy (and of the reference, None without
    one), and the completion token counts, each as (chosen, rejected) tensors of shape [pairs]."""

    policy: tuple[torch.Tensor, torch.Tensor]
    tokens: tuple[torch.Tensor, torch.Tensor]
    reference: tuple[torch.Tensor, torch.Tensor] | None

    def per_token(self, sums: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        return sums[0] / self.tokens[0], sums[1] / self.tokens[1]

    def four(self, normalised: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(policy chosen, policy rejected, reference chosen, reference rejected), per token when `normalised`."""
        assert self.reference is not None, "a term that needs the reference got none"
        policy, reference = self.policy, self.reference
        if normalised:
            policy, reference = self.per_token(policy), self.per_token(reference)
        return (*policy, *reference)


@dataclass
class MixtureOutput:
    """The weighted per-pair loss (with gradient), each term's per-pair loss before its weight (detached), the
    implicit rewards (chosen, rejected) where the mixture defines them, and ORPO's log odds ratio when it has a term."""

    losses: torch.Tensor
    terms: dict[str, torch.Tensor]
    rewards: tuple[torch.Tensor, torch.Tensor] | None
    log_odds_ratio: torch.Tensor | None = None


def mixture_losses(terms: Mapping[str, float], logps: PairLogps, config: DPOConfig) -> MixtureOutput:
    """Every term of `terms` ({name: weight}, pair terms only) on one batch, and their weighted sum per pair."""
    per_term: dict[str, torch.Tensor] = {}
    log_odds_ratio = None
    for name in terms:
        if name == "orpo":
            out = orpo_loss(*logps.per_token(logps.policy), beta=config.beta)
            per_term[name], log_odds_ratio = out.losses, out.log_odds_ratio
        else:
            per_term[name] = pair_term(name, logps, config)
    losses = sum(weight * per_term[name] for name, weight in terms.items())
    assert isinstance(losses, torch.Tensor)
    detached = {name: values.detach() for name, values in per_term.items()}
    return MixtureOutput(losses, detached, mixture_rewards(terms, logps, config.beta), log_odds_ratio)


def pair_term(name: str, logps: PairLogps, config: DPOConfig) -> torch.Tensor:
    """The per-pair loss of one term (any but orpo and kto) before its weight."""
    beta = config.beta
    if name == "sft":
        chosen, _ = logps.per_token(logps.policy)
        return -chosen
    if name == "simpo":
        return simpo_loss(*logps.per_token(logps.policy), beta=beta, gamma=config.simpo_gamma)
    pc, pr, rc, rr = logps.four(normalised=name in LENGTH_NORMALISED_LOSSES)
    if name in DPO_LOSS_TYPES or name == "sigmoid_norm":
        loss_type = cast(DPOLossType, "sigmoid" if name == "sigmoid_norm" else name)
        smoothing = config.label_smoothing if name in SMOOTHED_LOSSES else 0.0
        return dpo_loss(pc, pr, rc, rr, beta=beta, loss_type=loss_type, label_smoothing=smoothing).losses
    if name == "dpop":
        return dpop_loss(pc, pr, rc, rr, beta=beta, lam=config.dpop_lambda)
    chosen, rejected = pc - rc, pr - rr
    if name == "bco_pair":
        rewards = beta * chosen, beta * rejected
        delta = torch.cat(rewards).mean().detach()  # the batch's mean reward: the baseline, with no state to resume
        return bco_pair_loss(*rewards, delta)
    if name not in _LOGRATIO_TERMS:
        raise ValueError(f"{name!r} is not a pair loss term")
    return _LOGRATIO_TERMS[name](chosen, rejected, beta=beta)


def mixture_rewards(
    terms: Mapping[str, float], logps: PairLogps, beta: float
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The implicit rewards of (chosen, rejected), detached, where the mixture defines them: DPO's beta * (log pi -
    log ref) of the sequence when there is a reference; SimPO's beta * (per-token log pi) when SimPO is a term and
    there is none; else None (ORPO and SFT define no reward)."""
    if logps.reference is not None:
        (pc, pr), (rc, rr) = logps.policy, logps.reference
        return implicit_reward(pc.detach(), rc.detach(), beta), implicit_reward(pr.detach(), rr.detach(), beta)
    if "simpo" in terms:
        chosen, rejected = logps.per_token(logps.policy)
        return beta * chosen.detach(), beta * rejected.detach()
    return None
