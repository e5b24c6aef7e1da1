"""The trainers' loss functions, checked against values worked out by hand with `math` on tiny inputs."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from prefalign.losses import (
    DPO_LOSS_TYPES,
    check_dpo_args,
    dpo_loss,
    reward_model_loss,
    sequence_logps,
    sft_nll_loss,
    token_kl,
)


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


# logits [1, 3, 4]; position 1 is masked, and its logits are deliberately extreme to show they do not count.
HAND_LOGITS = torch.tensor(
    [[[0.0, 0.0, 0.0, 0.0], [50.0, -20.0, 1.0, 0.0], [2.0, 1.0, 0.0, -1.0]]], dtype=torch.float64
)
HAND_LABELS = torch.tensor([[0, -100, 3]])
# log p(0 | uniform over 4) + log p(3 | [2, 1, 0, -1])
HAND_SUM_LOGP = (0.0 - math.log(4)) + (-1.0 - math.log(math.exp(2) + math.exp(1) + 1 + math.exp(-1)))


def test_sequence_logps_by_hand_with_a_masked_position() -> None:
    result = sequence_logps(HAND_LOGITS, HAND_LABELS)
    assert result.sum_logps.tolist() == pytest.approx([HAND_SUM_LOGP], rel=1e-12)
    assert result.num_tokens.tolist() == [2]
    assert result.num_tokens.dtype == torch.int64


def test_sequence_logps_honours_a_custom_ignore_index_and_fully_masked_rows() -> None:
    logits = torch.cat([HAND_LOGITS, HAND_LOGITS])
    labels = torch.tensor([[0, 7, 3], [7, 7, 7]])
    result = sequence_logps(logits, labels, ignore_index=7)
    assert result.sum_logps.tolist() == pytest.approx([HAND_SUM_LOGP, 0.0], rel=1e-12)
    assert result.num_tokens.tolist() == [2, 0]


def _random_batch(dtype: torch.dtype = torch.float32, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    logits = (torch.randn(3, 7, 11, generator=generator) * 4).to(dtype)
    labels = torch.randint(0, 11, (3, 7), generator=generator)
    labels[0, :2] = -100  # a prompt
    labels[2, 5:] = -100  # padding
    return logits, labels


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("chunk_size", [1, 3, 7, 100])
def test_sequence_logps_chunked_equals_unchunked_in_value_and_gradient(dtype: torch.dtype, chunk_size: int) -> None:
    logits, labels = _random_batch(dtype)
    full_logits = logits.clone().requires_grad_()
    chunked_logits = logits.clone().requires_grad_()
    full = sequence_logps(full_logits, labels)
    chunked = sequence_logps(chunked_logits, labels, chunk_size=chunk_size)
    assert full.sum_logps.dtype == torch.float32
    torch.testing.assert_close(chunked.sum_logps, full.sum_logps, rtol=1e-6, atol=1e-5)
    assert torch.equal(chunked.num_tokens, full.num_tokens)
    weights = torch.tensor([1.0, -2.0, 0.5])  # a non-trivial upstream gradient
    (full.sum_logps * weights).sum().backward()
    (chunked.sum_logps * weights).sum().backward()
    torch.testing.assert_close(chunked_logits.grad, full_logits.grad)
    assert full_logits.grad[0, :2].abs().sum() == 0  # masked positions get no gradient


def _saved_fp32_vocab_tensors(fn, vocab: int) -> int:
    """How many fp32 tensors with a vocabulary axis autograd saves while running fn."""
    count = 0

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        nonlocal count
        count += tensor.dtype == torch.float32 and tensor.dim() == 3 and tensor.shape[-1] == vocab
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        fn()
    return count


def test_chunked_sequence_logps_keeps_no_fp32_copy_of_bf16_logits_for_backward() -> None:
    logits, labels = _random_batch(torch.bfloat16)
    logits.requires_grad_()
    vocab = logits.shape[-1]
    # The control shows the probe works: unchunked, the fp32 upcast is saved for backward.
    assert _saved_fp32_vocab_tensors(lambda: sequence_logps(logits, labels), vocab) > 0
    assert _saved_fp32_vocab_tensors(lambda: sequence_logps(logits, labels, chunk_size=2), vocab) == 0


def test_sft_nll_loss_is_the_token_mean_and_ignores_masked_positions() -> None:
    loss = sft_nll_loss(HAND_LOGITS, HAND_LABELS)
    assert loss.item() == pytest.approx(-HAND_SUM_LOGP / 2, rel=1e-12)
    changed = HAND_LOGITS.clone()
    changed[0, 1] = torch.tensor([-9.0, 9.0, 3.0, 0.0], dtype=torch.float64)  # the masked position
    assert sft_nll_loss(changed, HAND_LABELS).item() == loss.item()


def test_sft_nll_loss_averages_over_tokens_of_the_whole_batch() -> None:
    logits, labels = _random_batch()
    expected = F.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=-100)
    torch.testing.assert_close(sft_nll_loss(logits, labels), expected)
    torch.testing.assert_close(sft_nll_loss(logits, labels, chunk_size=2), expected)


def test_sft_nll_loss_and_sequence_logps_reject_bad_input() -> None:
    with pytest.raises(ValueError, match="no tokens"):
        sft_nll_loss(HAND_LOGITS, torch.full((1, 3), -100))
    with pytest.raises(ValueError, match=r"logits \[B, T, V\] and labels \[B, T\]"):
        sequence_logps(HAND_LOGITS, HAND_LABELS[:, :2])
    with pytest.raises(ValueError, match="chunk_size"):
        sequence_logps(HAND_LOGITS, HAND_LABELS, chunk_size=0)


def test_token_kl_is_zero_for_equal_logits_with_zero_gradient() -> None:
    logits, labels = _random_batch()
    policy = logits.clone().requires_grad_()
    kl = token_kl(policy, logits, labels != -100)
    assert kl.item() == 0.0
    kl.backward()
    assert policy.grad.abs().max().item() < 1e-6


def test_token_kl_two_token_vocabulary_by_hand() -> None:
    # Position 0: pi = (1/2, 1/2), ref = (3/4, 1/4): KL = 1/2 ln(2/3) + 1/2 ln 2 = 1/2 ln(4/3).
    # Position 1: pi = (3/4, 1/4), ref = (1/3, 2/3): KL = 3/4 ln(9/4) + 1/4 ln(3/8).
    # (KL is asymmetric: swapping policy and reference changes both values.)
    # Position 2: masked out; its logits differ wildly and must not count.
    policy = torch.tensor([[[0.0, 0.0], [math.log(3), 0.0], [9.0, -9.0]]], dtype=torch.float64)
    ref = torch.tensor([[[math.log(3), 0.0], [0.0, math.log(2)], [-9.0, 9.0]]], dtype=torch.float64)
    mask = torch.tensor([[True, True, False]])
    kl0 = 0.5 * math.log(4 / 3)
    kl1 = 0.75 * math.log(9 / 4) + 0.25 * math.log(3 / 8)
    assert token_kl(policy, ref, mask).item() == pytest.approx((kl0 + kl1) / 2, rel=1e-12)
    per_sequence = token_kl(policy, ref, mask, reduction="sum_per_sequence")
    assert per_sequence.tolist() == pytest.approx([kl0 + kl1], rel=1e-12)
    # A 0/1 integer mask means the same as a bool one.
    assert token_kl(policy, ref, mask.long()).item() == pytest.approx((kl0 + kl1) / 2, rel=1e-12)


def test_token_kl_is_nonnegative_on_random_logits() -> None:
    generator = torch.Generator().manual_seed(1)
    policy = torch.randn(4, 6, 13, generator=generator) * 3
    ref = torch.randn(4, 6, 13, generator=generator) * 3
    mask = torch.ones(4, 6, dtype=torch.bool)
    for t in range(6):  # one position at a time, so a single negative token cannot hide in a sum
        single = torch.zeros_like(mask)
        single[:, t] = True
        assert (token_kl(policy, ref, single, reduction="sum_per_sequence") >= 0).all()
    assert token_kl(policy, ref, mask).item() > 0


@pytest.mark.parametrize("reduction", ["mean", "sum_per_sequence"])
def test_token_kl_chunked_equals_unchunked_in_value_and_gradient(reduction: str) -> None:
    logits, labels = _random_batch()
    ref = _random_batch(seed=1)[0]
    mask = labels != -100
    full_policy = logits.clone().requires_grad_()
    chunked_policy = logits.clone().requires_grad_()
    full = token_kl(full_policy, ref, mask, reduction=reduction)
    chunked = token_kl(chunked_policy, ref, mask, reduction=reduction, chunk_size=3)
    torch.testing.assert_close(chunked, full)
    full.sum().backward()
    chunked.sum().backward()
    torch.testing.assert_close(chunked_policy.grad, full_policy.grad)


def test_token_kl_argument_validation() -> None:
    logits, labels = _random_batch()
    mask = labels != -100
    with pytest.raises(ValueError, match="mean, sum_per_sequence"):
        token_kl(logits, logits, mask, reduction="sum")
    with pytest.raises(ValueError, match="share one shape"):
        token_kl(logits, logits[..., :5], mask)
    with pytest.raises(ValueError, match="mask"):
        token_kl(logits, logits, mask[:, :3])
    with pytest.raises(ValueError, match="selects no position"):
        token_kl(logits, logits, torch.zeros_like(mask))
