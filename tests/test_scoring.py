"""The one scoring module (`prefalign.scoring`), checked against values worked out by hand with `math` on tiny inputs:
per-sequence log-probs, the exact KL, the implicit reward and its margin, and the tie-aware preference outcome.

Completion states are built here straight from logits (an identity head), so every number is a hand computation;
tests/test_train_forward.py checks that a real model's completion states equal its full logits."""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F

from prefalign.data.collate import IGNORE_INDEX, CompletionIndex, plain_completion_index
from prefalign.scoring.completions import CompletionStates, completion_kl, label_logps
from prefalign.scoring.preference import (
    implicit_reward,
    implicit_reward_margin,
    logratio_margin,
    preference_margin,
    preference_outcome,
)


def hand_states(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = IGNORE_INDEX) -> CompletionStates:
    """Completion states of aligned logits [B, T, V] and labels [B, T] (`logits[:, t]` predicts `labels[:, t]`),
    through `plain_completion_index`: an unlabelled column is put in front of the labels, so position t predicts the
    label after it, and a spare logits position at the end, which predicts nothing."""
    rows = labels.shape[0]
    unshifted = torch.cat([torch.full((rows, 1), ignore_index), labels], dim=1)
    padded = torch.cat([logits, logits[:, :1]], dim=1)
    index = plain_completion_index(unshifted, ignore_index)
    return CompletionStates(padded.reshape(-1, logits.shape[-1])[index.positions], torch.nn.Identity(), index)


# logits [1, 3, 4]; position 1 is masked, and its logits are deliberately extreme to show they do not count.
HAND_LOGITS = torch.tensor(
    [[[0.0, 0.0, 0.0, 0.0], [50.0, -20.0, 1.0, 0.0], [2.0, 1.0, 0.0, -1.0]]], dtype=torch.float64
)
HAND_LABELS = torch.tensor([[0, -100, 3]])
# log p(0 | uniform over 4) + log p(3 | [2, 1, 0, -1])
HAND_SUM_LOGP = (0.0 - math.log(4)) + (-1.0 - math.log(math.exp(2) + math.exp(1) + 1 + math.exp(-1)))


def test_sequence_logps_by_hand_with_a_masked_position() -> None:
    result = hand_states(HAND_LOGITS, HAND_LABELS).sequence_logps()
    assert result.sum_logps.tolist() == pytest.approx([HAND_SUM_LOGP], rel=1e-12)
    assert result.num_tokens.tolist() == [2]
    assert result.num_tokens.dtype == torch.int64


def test_sequence_logps_honours_a_custom_ignore_index_and_fully_masked_rows() -> None:
    logits = torch.cat([HAND_LOGITS, HAND_LOGITS])
    labels = torch.tensor([[0, 7, 3], [7, 7, 7]])
    result = hand_states(logits, labels, ignore_index=7).sequence_logps()
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
    full = hand_states(full_logits, labels).sequence_logps(chunk_size=1000)  # every row in one chunk
    chunked = hand_states(chunked_logits, labels).sequence_logps(chunk_size=chunk_size)
    assert full.sum_logps.dtype == torch.float32
    torch.testing.assert_close(chunked.sum_logps, full.sum_logps, rtol=1e-6, atol=1e-5)
    assert torch.equal(chunked.num_tokens, full.num_tokens)
    weights = torch.tensor([1.0, -2.0, 0.5])  # a non-trivial upstream gradient
    (full.sum_logps * weights).sum().backward()
    (chunked.sum_logps * weights).sum().backward()
    torch.testing.assert_close(chunked_logits.grad, full_logits.grad)
    assert full_logits.grad[0, :2].abs().sum() == 0  # masked positions get no gradient


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("bias", [False, True])
def test_a_frozen_linear_head_gives_the_same_logps_and_gradients_without_recomputing(
    dtype: torch.dtype, bias: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    from prefalign.scoring.completions import FrozenHeadLogps

    generator = torch.Generator().manual_seed(1)
    head = torch.nn.Linear(6, 13, bias=bias).to(dtype).requires_grad_(False)
    hidden = (torch.randn(9, 6, generator=generator) * 2).to(dtype)
    targets = torch.randint(0, 13, (9,), generator=generator)
    index = CompletionIndex(torch.arange(9), targets, torch.tensor([0, 0, 0, 1, 1, 2, 2, 2, 2]), 3)
    weights = torch.tensor([1.0, -2.0, 0.5], dtype=dtype)

    calls = 0
    original = FrozenHeadLogps.forward

    def counted(*args: object) -> torch.Tensor:
        nonlocal calls
        calls += 1
        return original(*args)

    fast_hidden, plain_hidden = hidden.clone().requires_grad_(), hidden.clone().requires_grad_()
    with monkeypatch.context() as patch:
        patch.setattr(FrozenHeadLogps, "forward", staticmethod(counted))
        fast = CompletionStates(fast_hidden, head, index).sequence_logps(chunk_size=4)
    assert calls == 3  # 9 rows in chunks of 4: the frozen-head path ran for each chunk
    plain = index_sums(label_logps(head, plain_hidden, targets), index)  # autograd through the plain computation
    tolerance = 1e-12 if dtype == torch.float64 else 1e-5
    torch.testing.assert_close(fast.sum_logps, plain, rtol=tolerance, atol=tolerance)
    (fast.sum_logps * weights).sum().backward()
    (plain * weights).sum().backward()
    torch.testing.assert_close(fast_hidden.grad, plain_hidden.grad, rtol=tolerance, atol=tolerance)


@pytest.mark.parametrize("head_kind", ["linear", "identity"])
def test_label_logps_without_autograd_match_log_softmax_and_leave_the_states_alone(head_kind: str) -> None:
    # Without autograd the log-sum-exp is taken in place over the head's logits; an Identity head's "logits" are the
    # caller's states, which must not be overwritten (they are read again for the KL).
    generator = torch.Generator().manual_seed(3)
    head = torch.nn.Linear(6, 13).double() if head_kind == "linear" else torch.nn.Identity()
    hidden = torch.randn(9, 6 if head_kind == "linear" else 13, generator=generator, dtype=torch.float64) * 3
    hidden[0] += 1e4  # large logits: the max-shift keeps exp() finite
    targets = torch.randint(0, 13, (9,), generator=generator)
    before = hidden.clone()
    with torch.no_grad():
        got = label_logps(head, hidden, targets)
        want = torch.log_softmax(head(hidden), dim=-1).gather(-1, targets[:, None]).squeeze(-1)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    assert torch.equal(hidden, before)


def index_sums(per_token: torch.Tensor, index: CompletionIndex) -> torch.Tensor:
    return per_token.new_zeros(index.num_sequences).index_add(0, index.sequences, per_token)


def _saved_fp32_vocab_tensors(fn: Callable[[], object], vocab: int) -> int:
    """How many fp32 tensors with a vocabulary axis autograd saves while running fn."""
    count = 0

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        nonlocal count
        count += tensor.dtype == torch.float32 and tensor.shape[-1:] == (vocab,)
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        fn()
    return count


def test_sequence_logps_keep_no_fp32_copy_of_bf16_logits_for_backward() -> None:
    logits, labels = _random_batch(torch.bfloat16)
    logits.requires_grad_()
    states = hand_states(logits, labels)
    vocab = logits.shape[-1]

    def unchecked() -> object:
        return label_logps(states.head, states.hidden, states.index.targets)

    # The control shows the probe works: the same computation without checkpointing saves the fp32 upcast.
    assert _saved_fp32_vocab_tensors(unchecked, vocab) > 0
    assert _saved_fp32_vocab_tensors(lambda: states.sequence_logps(chunk_size=2), vocab) == 0


def _sft_loss(states: CompletionStates) -> torch.Tensor:
    """SFT's loss as its objective computes it: minus the summed log-probs over the number of response tokens."""
    logps = states.sequence_logps(chunk_size=2)
    return -logps.sum_logps.sum() / logps.num_tokens.sum()


def test_sft_loss_is_the_token_mean_and_ignores_masked_positions() -> None:
    loss = _sft_loss(hand_states(HAND_LOGITS, HAND_LABELS))
    assert loss.item() == pytest.approx(-HAND_SUM_LOGP / 2, rel=1e-12)
    changed = HAND_LOGITS.clone()
    changed[0, 1] = torch.tensor([-9.0, 9.0, 3.0, 0.0], dtype=torch.float64)  # the masked position
    assert _sft_loss(hand_states(changed, HAND_LABELS)).item() == loss.item()


def test_sft_loss_averages_over_tokens_of_the_whole_batch() -> None:
    logits, labels = _random_batch()
    expected = F.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=-100)
    torch.testing.assert_close(_sft_loss(hand_states(logits, labels)), expected)


def test_completion_states_reject_bad_input() -> None:
    states = hand_states(HAND_LOGITS, HAND_LABELS)
    index = states.index
    first_only = CompletionIndex(index.positions[:1], index.targets[:1], index.sequences[:1], 1)
    with pytest.raises(ValueError, match="2 hidden states for 1 completion tokens"):
        CompletionStates(states.hidden, states.head, first_only)
    with pytest.raises(ValueError, match="chunk_size"):
        states.sequence_logps(chunk_size=0)
    with pytest.raises(ValueError, match="chunk_size"):
        completion_kl(states, states, chunk_size=0)


def test_kl_is_exactly_zero_for_equal_states_and_carries_no_gradient() -> None:
    logits, labels = _random_batch()
    policy = hand_states(logits.clone().requires_grad_(), labels)
    kl = completion_kl(policy, hand_states(logits, labels))
    assert kl.tolist() == [0.0, 0.0, 0.0]
    assert not kl.requires_grad  # a metric: it never joins the loss


def test_kl_two_token_vocabulary_by_hand() -> None:
    # Position 0: pi = (1/2, 1/2), ref = (3/4, 1/4): KL = 1/2 ln(2/3) + 1/2 ln 2 = 1/2 ln(4/3).
    # Position 1: pi = (3/4, 1/4), ref = (1/3, 2/3): KL = 3/4 ln(9/4) + 1/4 ln(3/8).
    # (KL is asymmetric: swapping policy and reference changes both values.)
    # Position 2: masked out; its logits differ wildly and must not count.
    policy = torch.tensor([[[0.0, 0.0], [math.log(3), 0.0], [9.0, -9.0]]], dtype=torch.float64)
    ref = torch.tensor([[[math.log(3), 0.0], [0.0, math.log(2)], [-9.0, 9.0]]], dtype=torch.float64)
    labels = torch.tensor([[0, 1, -100]])
    kl0 = 0.5 * math.log(4 / 3)
    kl1 = 0.75 * math.log(9 / 4) + 0.25 * math.log(3 / 8)
    policy_states = hand_states(policy, labels)
    per_sequence = completion_kl(policy_states, hand_states(ref, labels))
    assert per_sequence.tolist() == pytest.approx([kl0 + kl1], rel=1e-12)
    # The mean over positions, as DPO's `kl` metric reports it: the per-sequence sums over the token count.
    mean = per_sequence.sum() / policy_states.tokens_per_sequence().sum()
    assert mean.item() == pytest.approx((kl0 + kl1) / 2, rel=1e-12)


def test_kl_is_nonnegative_on_random_logits() -> None:
    generator = torch.Generator().manual_seed(1)
    policy = torch.randn(4, 6, 13, generator=generator) * 3
    ref = torch.randn(4, 6, 13, generator=generator) * 3
    labels = torch.zeros(4, 6, dtype=torch.long)
    for t in range(6):  # one position at a time, so a single negative token cannot hide in a sum
        single = torch.full_like(labels, IGNORE_INDEX)
        single[:, t] = 0
        assert (completion_kl(hand_states(policy, single), hand_states(ref, single)) >= 0).all()
    assert completion_kl(hand_states(policy, labels), hand_states(ref, labels)).sum().item() > 0


def test_kl_chunked_equals_unchunked() -> None:
    logits, labels = _random_batch()
    ref = _random_batch(seed=1)[0]
    full = completion_kl(hand_states(logits, labels), hand_states(ref, labels), chunk_size=1000)
    chunked = completion_kl(hand_states(logits, labels), hand_states(ref, labels), chunk_size=3)
    torch.testing.assert_close(chunked, full)


def test_kl_needs_both_states_from_the_same_batch() -> None:
    logits, labels = _random_batch()
    fewer = labels.clone()
    fewer[1] = IGNORE_INDEX
    with pytest.raises(ValueError, match="same batch"):
        completion_kl(hand_states(logits, labels), hand_states(logits, fewer))


def test_implicit_reward_and_margin_by_hand() -> None:
    # beta = 0.4; chosen log-ratio -1 - (-2) = 1, rejected log-ratio -3 - (-2.5) = -0.5: rewards 0.4 and -0.2.
    assert implicit_reward(-1.0, -2.0, 0.4) == pytest.approx(0.4, rel=1e-12)
    assert logratio_margin(-1.0, -3.0, -2.0, -2.5) == 1.5
    assert implicit_reward_margin(-1.0, -3.0, -2.0, -2.5, 0.4) == pytest.approx(0.6, rel=1e-12)
    # Floats and tensors alike.
    margin = implicit_reward_margin(*(torch.tensor([v], dtype=torch.float64) for v in (-1.0, -3.0, -2.0, -2.5)), 0.4)
    assert margin.tolist() == pytest.approx([0.6], rel=1e-12)


def test_preference_outcome_counts_a_tie_half_for_floats_and_tensors_alike() -> None:
    assert [preference_outcome(m) for m in (0.3, 0.0, -2.0)] == [1.0, 0.5, 0.0]
    assert preference_outcome(preference_margin(1.0, 1.0)) == 0.5
    chosen, rejected = torch.tensor([2.0, 1.0, 0.0, -1.0]), torch.tensor([1.0, 1.0, 0.5, -1.0])
    outcomes = preference_outcome(preference_margin(chosen, rejected))
    assert outcomes.tolist() == [1.0, 0.5, 0.0, 0.5]
    # Zero rewards everywhere (a policy equal to its reference): chance, 0.5, not 0.
    assert preference_outcome(torch.zeros(3)).mean().item() == 0.5
