"""The trainers' loss functions, checked against values worked out by hand with `math` on tiny inputs."""

from __future__ import annotations

import math

import pytest
import torch

from prefalign.losses import DPO_LOSS_TYPES, check_dpo_args, dpo_loss, reward_model_loss
from prefalign.scoring.preference import implicit_reward


def softplus(x: float) -> float:
    """-log sigma(-x) = log(1 + e^x), by hand."""
    return math.log1p(math.exp(x))


def t64(*values: float) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64)


# One preference pair, beta = 0.4:
#   chosen log-ratio   = -1.0 - (-2.0) = 1.0     -> chosen reward   = 0.4 * 1.0  = 0.4
#   rejected log-ratio = -3.0 - (-2.5) = -0.5    -> rejected reward = 0.4 * -0.5 = -0.2
#   h = 1.5, beta * h = 0.6
PAIR = {
    "policy_chosen_logps": t64(-1.0),
    "policy_rejected_logps": t64(-3.0),
    "ref_chosen_logps": t64(-2.0),
    "ref_rejected_logps": t64(-2.5),
}
BETA = 0.4
Z = 0.6  # beta * h
EPS = 0.1

HAND_LOSSES = {
    "sigmoid": softplus(-Z),  # -log sigma(z)
    "cdpo": (1 - EPS) * softplus(-Z) + EPS * softplus(Z),
    "robust": ((1 - EPS) * softplus(-Z) - EPS * softplus(Z)) / (1 - 2 * EPS),
    "ipo": (1.5 - 1 / (2 * BETA)) ** 2,  # (1.5 - 1.25)^2 = 0.0625
    "hinge": max(0.0, 1 - Z),  # 0.4
}


@pytest.mark.parametrize("loss_type", DPO_LOSS_TYPES)
def test_dpo_loss_matches_hand_computation(loss_type: str) -> None:
    eps = EPS if loss_type in ("cdpo", "robust") else 0.0
    out = dpo_loss(**PAIR, beta=BETA, loss_type=loss_type, label_smoothing=eps)
    assert out.losses.item() == pytest.approx(HAND_LOSSES[loss_type], rel=1e-12, abs=1e-15)
    assert out.chosen_rewards.item() == pytest.approx(0.4, rel=1e-12)
    assert out.rejected_rewards.item() == pytest.approx(-0.2, rel=1e-12)
    # The rewards are the one implicit reward of prefalign.scoring, exactly.
    assert out.chosen_rewards.item() == implicit_reward(-1.0, -2.0, BETA)


def test_sigmoid_loss_is_ln2_and_rewards_zero_when_policy_equals_reference() -> None:
    logps = t64(-12.5, -3.0, -40.25)
    out = dpo_loss(logps, logps - 1.0, logps, logps - 1.0, beta=0.1)
    assert out.losses.tolist() == pytest.approx([math.log(2)] * 3, rel=1e-15)
    assert out.chosen_rewards.tolist() == [0.0, 0.0, 0.0]
    assert out.rejected_rewards.tolist() == [0.0, 0.0, 0.0]


def test_dpo_returns_one_unreduced_loss_per_pair() -> None:
    # Pair 0 is PAIR; pair 1 has the roles of chosen and rejected swapped, so beta * h = -0.6.
    out = dpo_loss(t64(-1.0, -3.0), t64(-3.0, -1.0), t64(-2.0, -2.5), t64(-2.5, -2.0), beta=BETA)
    assert out.losses.shape == (2,)
    assert out.losses.tolist() == pytest.approx([softplus(-Z), softplus(Z)], rel=1e-12)


def test_hinge_is_zero_once_the_margin_is_met() -> None:
    # h = 1.5 with beta = 1 gives 1 - 1.5 < 0.
    assert dpo_loss(**PAIR, beta=1.0, loss_type="hinge").losses.item() == 0.0


@pytest.mark.parametrize("loss_type", ["cdpo", "robust"])
def test_smoothed_losses_with_zero_eps_equal_sigmoid(loss_type: str) -> None:
    torch.manual_seed(0)
    logps = [torch.randn(16, dtype=torch.float64) * 5 for _ in range(4)]
    sigmoid = dpo_loss(*logps, beta=0.3).losses
    smoothed = dpo_loss(*logps, beta=0.3, loss_type=loss_type, label_smoothing=0.0).losses
    torch.testing.assert_close(smoothed, sigmoid, rtol=1e-14, atol=0)


def test_robust_loss_is_unbiased_under_label_flips() -> None:
    # Chowdhury et al.'s defining property: if each label is flipped with probability eps, the expected robust loss
    # equals the clean sigmoid loss: (1 - eps) * robust(pair) + eps * robust(swapped pair) == sigmoid(pair).
    torch.manual_seed(0)
    pc, pr, rc, rr = (torch.randn(8, dtype=torch.float64) * 3 for _ in range(4))
    eps = 0.2
    kept = dpo_loss(pc, pr, rc, rr, beta=0.5, loss_type="robust", label_smoothing=eps).losses
    flipped = dpo_loss(pr, pc, rr, rc, beta=0.5, loss_type="robust", label_smoothing=eps).losses
    clean = dpo_loss(pc, pr, rc, rr, beta=0.5).losses
    torch.testing.assert_close((1 - eps) * kept + eps * flipped, clean, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("loss_type", DPO_LOSS_TYPES)
def test_raising_chosen_logp_lowers_loss_and_raising_rejected_logp_raises_it(loss_type: str) -> None:
    # At policy == reference (h = 0) every loss type is still pushing: hinge is active and IPO's target 1/(2 beta) > 0.
    chosen = t64(-5.0).requires_grad_()
    rejected = t64(-6.0).requires_grad_()
    eps = 0.2 if loss_type in ("cdpo", "robust") else 0.0
    out = dpo_loss(chosen, rejected, t64(-5.0), t64(-6.0), beta=0.1, loss_type=loss_type, label_smoothing=eps)
    out.losses.sum().backward()
    assert chosen.grad.item() < 0
    assert rejected.grad.item() > 0
    assert rejected.grad.item() == pytest.approx(-chosen.grad.item(), rel=1e-12)


def test_dpo_rewards_are_detached_and_low_precision_inputs_are_computed_in_fp32() -> None:
    logps = [torch.tensor([-4.0, -7.0], dtype=torch.bfloat16, requires_grad=True) for _ in range(4)]
    out = dpo_loss(*logps)
    assert out.losses.dtype == torch.float32
    assert out.losses.requires_grad
    assert not out.chosen_rewards.requires_grad and not out.rejected_rewards.requires_grad


def test_dpo_argument_validation_names_the_valid_choices() -> None:
    with pytest.raises(ValueError, match="sigmoid, cdpo, robust, ipo, hinge"):
        dpo_loss(**PAIR, loss_type="kto")
    for beta in (0.0, -0.1, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="beta"):
            dpo_loss(**PAIR, beta=beta)
    for loss_type in ("cdpo", "robust"):
        for eps in (0.5, 0.7, -0.01):
            with pytest.raises(ValueError, match=r"0 <= label_smoothing < 0.5"):
                dpo_loss(**PAIR, loss_type=loss_type, label_smoothing=eps)
    with pytest.raises(ValueError, match="applies only to cdpo and robust"):
        dpo_loss(**PAIR, loss_type="ipo", label_smoothing=0.1)
    with pytest.raises(ValueError, match="share one shape"):
        dpo_loss(t64(-1.0, -2.0), t64(-1.0, -2.0), t64(-1.0, -2.0), t64(-1.0, -2.0).unsqueeze(-1))
    check_dpo_args("robust", 0.1, 0.49)  # the boundary that is allowed


def test_reward_model_loss_without_and_with_margin() -> None:
    chosen, rejected = t64(2.0, 0.0), t64(1.0, 0.5)  # differences 1.0 and -0.5
    assert reward_model_loss(chosen, rejected).tolist() == pytest.approx([softplus(-1.0), softplus(0.5)], rel=1e-12)
    # A float margin of 0.5: differences become 0.5 and -1.0.
    assert reward_model_loss(chosen, rejected, margin=0.5).tolist() == pytest.approx(
        [softplus(-0.5), softplus(1.0)], rel=1e-12
    )
    # A per-pair margin (Llama 2 uses a larger one for pairs rated "significantly better").
    assert reward_model_loss(chosen, rejected, margin=t64(1.0, 0.0)).tolist() == pytest.approx(
        [math.log(2), softplus(0.5)], rel=1e-12
    )
    with pytest.raises(ValueError, match="share one shape"):
        reward_model_loss(t64(1.0, 2.0), t64(1.0))


def test_reward_model_loss_gradient_pushes_chosen_up() -> None:
    chosen = t64(0.3).requires_grad_()
    rejected = t64(0.1).requires_grad_()
    reward_model_loss(chosen, rejected).sum().backward()
    # d/dr_c of -log sigma(r_c - r_r) = -(1 - sigma(0.2)) = -1 / (1 + e^0.2)
    assert chosen.grad.item() == pytest.approx(-1 / (1 + math.exp(0.2)), rel=1e-12)
    assert rejected.grad.item() == pytest.approx(1 / (1 + math.exp(0.2)), rel=1e-12)
