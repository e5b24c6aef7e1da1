"""The trainers' loss functions, checked against values worked out by hand with `math` on tiny inputs."""

from __future__ import annotations

import math

import pytest
import torch

from prefalign.losses import (
    DPO_LOSS_TYPES,
    apo_down_loss,
    apo_zero_loss,
    bco_pair_loss,
    check_dpo_args,
    dpo_loss,
    dpop_loss,
    exo_pair_loss,
    kto_loss,
    kto_reference_point,
    nca_pair_loss,
    orpo_loss,
    reward_model_loss,
    simpo_loss,
)
from prefalign.scoring.preference import LOSS_NAMES, implicit_reward, is_reference_free, parse_loss_mixture
from prefalign.train.config import DPOConfig
from prefalign.train.objectives.mixture import PairLogps, mixture_losses


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


def sigma(x: float) -> float:
    return 1 / (1 + math.exp(-x))


# PAIR's log-ratios: c = 1.0 (chosen), r = -0.5 (rejected), beta = 0.4.
C, R = t64(1.0), t64(-0.5)


def test_dpop_adds_a_penalty_only_once_the_chosen_log_prob_falls_below_the_reference() -> None:
    # PAIR: log pi(y_w) = -1 > log ref(y_w) = -2, no penalty: plain DPO.
    assert dpop_loss(**_positional(PAIR), beta=BETA, lam=2.0).item() == pytest.approx(softplus(-Z), rel=1e-12)
    # log pi(y_w) = -3 < log ref(y_w) = -2: penalty 1; h = -1 - (-1.5) = 0.5; beta (0.5 - 2 * 1) = -0.6.
    loss = dpop_loss(t64(-3.0), t64(-4.0), t64(-2.0), t64(-2.5), beta=BETA, lam=2.0)
    assert loss.item() == pytest.approx(softplus(0.6), rel=1e-12)


def _positional(pair: dict) -> dict:
    names = ("policy_chosen_logps", "policy_rejected_logps", "ref_chosen_logps", "ref_rejected_logps")
    return {name: pair[name] for name in names}


def test_apo_nca_and_exo_match_hand_computation() -> None:
    assert apo_zero_loss(C, R, beta=BETA).item() == pytest.approx((1 - sigma(0.4)) + sigma(-0.2), rel=1e-12)
    assert apo_down_loss(C, R, beta=BETA).item() == pytest.approx(sigma(0.4) + (1 - sigma(0.6)), rel=1e-12)
    nca = softplus(-0.4) + 0.5 * softplus(0.4) + 0.5 * softplus(-0.2)  # -log s(0.4) - log s(-0.4)/2 - log s(0.2)/2
    assert nca_pair_loss(C, R, beta=BETA).item() == pytest.approx(nca, rel=1e-12)
    eps = 1e-3
    exo = sigma(Z) * (math.log(sigma(Z)) - math.log(1 - eps)) + sigma(-Z) * (math.log(sigma(-Z)) - math.log(eps))
    assert exo_pair_loss(C, R, beta=BETA).item() == pytest.approx(exo, rel=1e-12)


def test_bco_pair_classifies_rewards_around_the_baseline() -> None:
    # Rewards 0.4 and -0.2 around delta = 0.1: -log s(0.3) - log s(0.3).
    loss = bco_pair_loss(BETA * C, BETA * R, 0.1)
    assert loss.item() == pytest.approx(2 * softplus(-0.3), rel=1e-12)


def test_simpo_on_per_token_log_probs_with_a_target_margin() -> None:
    # beta 2, gamma 0.5: 2 * (-0.5 - (-1.25)) - 0.5 = 1.0.
    assert simpo_loss(t64(-0.5), t64(-1.25), beta=2.0, gamma=0.5).item() == pytest.approx(softplus(-1.0), rel=1e-12)


def test_orpo_is_the_chosen_nll_plus_the_log_odds_ratio_term() -> None:
    # p(y_w) per token 0.5 (odds 1), p(y_l) 0.2 (odds 1/4): log odds ratio ln 4, -log s(ln 4) = ln(5/4).
    out = orpo_loss(t64(math.log(0.5)), t64(math.log(0.2)), beta=0.1)
    assert out.log_odds_ratio.item() == pytest.approx(math.log(4), rel=1e-12)
    assert out.losses.item() == pytest.approx(math.log(2) + 0.1 * math.log(1.25), rel=1e-12)
    # Near-certain tokens keep the odds finite, and so the gradient.
    chosen = t64(-1e-9).requires_grad_()
    orpo_loss(chosen, t64(-2.0), beta=0.1).losses.sum().backward()
    assert torch.isfinite(chosen.grad).all()


def test_kto_values_completions_against_the_mismatched_kl_reference_point() -> None:
    kl = t64(0.3, -0.1, 0.4).requires_grad_()
    z0 = kto_reference_point(kl)
    assert z0.item() == pytest.approx(0.2, rel=1e-12) and not z0.requires_grad
    assert kto_reference_point(t64(-0.3, 0.1)).item() == 0.0  # a KL estimate is never negative
    logratios = t64(1.0, -0.5).requires_grad_()
    losses = kto_loss(logratios, torch.tensor([True, False]), z0, beta=BETA)
    # desirable: 1 - s(0.4 (1.0 - 0.2)); undesirable: 1 - s(0.4 (0.2 - (-0.5))).
    assert losses.tolist() == pytest.approx([1 - sigma(0.32), 1 - sigma(0.28)], rel=1e-12)
    losses.sum().backward()
    assert logratios.grad[0] < 0 < logratios.grad[1]  # push the desirable up, the undesirable down


def _config(loss: str, **options: float) -> DPOConfig:
    return DPOConfig(model="m", data="d", output_dir="o", loss=loss, **options)


def test_mixture_normalises_by_length_where_the_method_says_and_weighs_each_term() -> None:
    # Sums: policy chosen -2 over 4 tokens, rejected -3 over 2; reference chosen -4, rejected -2.
    logps = PairLogps((t64(-2.0), t64(-3.0)), (t64(4.0), t64(2.0)), (t64(-4.0), t64(-2.0)))
    out = mixture_losses({"sigmoid": 1.0, "sigmoid_norm": 0.5, "sft": 2.0}, logps, _config("sigmoid", beta=0.4))
    # sigmoid on sums: h = 2 - (-1) = 3; sigmoid_norm per token: h = 0.5 - (-0.5) = 1; sft: 2 / 4 = 0.5.
    hand = {"sigmoid": softplus(-1.2), "sigmoid_norm": softplus(-0.4), "sft": 0.5}
    assert {name: value.item() for name, value in out.terms.items()} == pytest.approx(hand, rel=1e-12)
    assert out.losses.item() == pytest.approx(hand["sigmoid"] + 0.5 * hand["sigmoid_norm"] + 2 * 0.5, rel=1e-12)
    assert out.rewards is not None and [r.item() for r in out.rewards] == pytest.approx([0.8, -0.4], rel=1e-12)


def test_reference_free_mixtures_need_no_reference_and_define_rewards_only_for_simpo() -> None:
    logps = PairLogps((t64(-2.0), t64(-3.0)), (t64(4.0), t64(2.0)), None)
    simpo = mixture_losses({"simpo": 1.0}, logps, _config("simpo", beta=2.0))
    assert simpo.losses.item() == pytest.approx(softplus(-(2.0 * (-0.5 + 1.5) - 0.5)), rel=1e-12)
    assert simpo.rewards is not None and [r.item() for r in simpo.rewards] == pytest.approx([-1.0, -3.0])
    orpo = mixture_losses({"orpo": 1.0, "sft": 0.5}, logps, _config("orpo"))
    assert orpo.rewards is None and orpo.log_odds_ratio is not None
    assert orpo.losses.item() == pytest.approx(orpo.terms["orpo"].item() + 0.25, rel=1e-12)
    with pytest.raises(AssertionError, match="needs the reference"):
        mixture_losses({"sigmoid": 1.0}, logps, _config("sigmoid"))


def test_loss_mixture_syntax() -> None:
    assert parse_loss_mixture("simpo") == {"simpo": 1.0}
    assert parse_loss_mixture("sigmoid:1.0, bco_pair:0.2,sft:1") == {"sigmoid": 1.0, "bco_pair": 0.2, "sft": 1.0}
    assert is_reference_free(parse_loss_mixture("simpo,sft:0.1")) and not is_reference_free({"orpo": 1, "ipo": 1})
    assert len(LOSS_NAMES) >= 12 and set(DPO_LOSS_TYPES) < set(LOSS_NAMES)
    for bad in ("", "sigmoid:", "sigmoid:-1", "sigmoid:inf", "kto:1,sigmoid"):
        with pytest.raises(ValueError, match="--loss"):
            parse_loss_mixture(bad)


def test_the_losses_match_trls_on_identical_inputs() -> None:
    """TRL's expressions (huggingface/trl at f2cd577: DPOTrainer's loss types, CPO's simpo, ORPO's odds_ratio_loss,
    KTOTrainer's kto loss), transcribed here since TRL is not a dependency, on the same random log-probs."""
    torch.manual_seed(0)
    pc, pr, rc, rr = (torch.randn(32, dtype=torch.float64) - 3 for _ in range(4))
    beta, c, r = 0.3, pc - rc, pr - rr
    delta = c - r
    F = torch.nn.functional
    trl = {
        "apo_zero": (1 - torch.sigmoid(beta * c)) + torch.sigmoid(beta * r),
        "apo_down": torch.sigmoid(beta * c) + (1 - torch.sigmoid(beta * delta)),
        "nca_pair": -F.logsigmoid(beta * c) - 0.5 * F.logsigmoid(-beta * c) - 0.5 * F.logsigmoid(-beta * r),
        "bco_pair": -F.logsigmoid(beta * c) - F.logsigmoid(-beta * r),  # today's TRL: no reward baseline
        "exo_pair": torch.sigmoid(beta * delta) * (F.logsigmoid(beta * delta) - math.log1p(-1e-3))
        + torch.sigmoid(-beta * delta) * (F.logsigmoid(-beta * delta) - math.log(1e-3)),
    }
    ours = {
        "apo_zero": apo_zero_loss(c, r, beta=beta),
        "apo_down": apo_down_loss(c, r, beta=beta),
        "nca_pair": nca_pair_loss(c, r, beta=beta),
        "bco_pair": bco_pair_loss(beta * c, beta * r, 0.0),
        "exo_pair": exo_pair_loss(c, r, beta=beta),
    }
    for name, expected in trl.items():
        torch.testing.assert_close(ours[name], expected, rtol=1e-12, atol=1e-12, msg=name)
    # CPO trainer, loss_type "simpo" (average log-probs): logits = (c - r) - gamma / beta; -logsigmoid(beta * logits).
    gamma, avg_c, avg_r = 0.5, pc / 7, pr / 5
    simpo = -F.logsigmoid(beta * ((avg_c - avg_r) - gamma / beta))
    torch.testing.assert_close(simpo_loss(avg_c, avg_r, beta=beta, gamma=gamma), simpo, rtol=1e-12, atol=1e-12)

    # ORPO: loss = nll - beta * logsigmoid(log_odds), log_odds with log1mexp; per pair the nll is -avg log-prob.
    def log1mexp(x: torch.Tensor) -> torch.Tensor:  # TRL's helper, as written there
        return torch.where(x < -math.log(2), torch.log1p(-torch.exp(x)), torch.log(-torch.expm1(x)))

    log_odds = (avg_c - avg_r) - (log1mexp(avg_c) - log1mexp(avg_r))
    orpo = orpo_loss(avg_c, avg_r, beta=beta)
    torch.testing.assert_close(orpo.losses, -avg_c - beta * F.logsigmoid(log_odds), rtol=1e-12, atol=1e-12)
    # KTO: kl = (KL_logps - ref_KL_logps).mean().clamp(min=0); 1 - sigmoid(beta (logratio - kl)) and its mirror.
    kl = (pr - rc).mean().clamp(min=0)
    desirable = torch.arange(32) % 3 != 0
    expected = torch.where(desirable, 1 - torch.sigmoid(beta * (c - kl)), 1 - torch.sigmoid(beta * (kl - c)))
    ours_kto = kto_loss(c, desirable, kto_reference_point(pr - rc), beta=beta)
    torch.testing.assert_close(ours_kto, expected, rtol=1e-12, atol=1e-12)
